//! What the converter knows about the base model: its GGUF architecture, head counts for the row transforms,
//! and — from a base GGUF — every tensor's shape, so each target is checked against the model users deploy.
//! Base weights are never read: a GGUF header or a `config.json` is enough.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::factor::{DeltaNetHeads, HeadCounts};
use crate::arch::geometry::{self, Geometry};
use crate::gguf::{self, GgufFile, keys};

/// Where the base description came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseSource {
    /// A base model GGUF (the model users deploy): full tensor-shape checks.
    Gguf(PathBuf),
    /// A Hugging Face `config.json`: architecture and geometry only.
    HfConfig(PathBuf),
}

/// The base model as far as conversion needs it.
#[derive(Clone, Debug)]
pub struct BaseModel {
    /// Where this came from.
    pub source: BaseSource,
    /// `general.architecture` of the base GGUF, or the GGUF arch the HF architecture converts to.
    pub gguf_arch: Option<String>,
    /// The HF `architectures[0]` (config only).
    pub hf_architecture: Option<String>,
    /// Head counts, when known.
    pub heads: Option<HeadCounts>,
    /// Vocabulary size (rows of `token_embd`), when known.
    pub n_vocab: Option<u64>,
    /// Experts per MoE layer, when the model has experts.
    pub n_expert: Option<u64>,
    /// Hidden size, when known.
    pub n_embd: Option<u64>,
    /// FFN width of one expert, when known (config only; a GGUF base has the tensors themselves).
    pub n_ff_exp: Option<u64>,
    /// Whether the output head shares the token embedding (no `output.weight` / `tie_word_embeddings`).
    pub tied_embeddings: Option<bool>,
    /// GGUF tensor name → ggml dims (`ne`), only for a GGUF base.
    pub tensors: Option<BTreeMap<String, Vec<u64>>>,
    /// The values of the base's small `….scale` tensors (per-expert output scales), only for a GGUF base. A scale
    /// whose weight is NVFP4 is left out: there it also holds the quantization's own scale.
    pub scales: BTreeMap<String, Vec<f32>>,
    /// The base GGUF's header (metadata and tensor infos, no weights), kept for the fingerprint the adapter records.
    pub header: Option<std::sync::Arc<GgufFile>>,
}

/// Why the base description could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaseError {
    /// The base GGUF is unreadable or malformed.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// The base GGUF is an adapter or has no architecture.
    #[error("`{path}`: {what}")]
    NotAModel {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The Hugging Face config is unreadable or malformed.
    #[error(transparent)]
    Config(#[from] geometry::GeometryError),
}

impl BaseModel {
    /// Read a base model GGUF header (no weights).
    pub fn from_gguf(path: &Path) -> Result<Self, BaseError> {
        let file = GgufFile::open(path)?;
        let not_a_model = |what: String| BaseError::NotAModel {
            path: path.to_path_buf(),
            what,
        };
        if file.get_str(keys::GENERAL_TYPE) == Some("adapter") {
            return Err(not_a_model(
                "this is a LoRA adapter, not a base model — pass the model the adapter was trained on".into(),
            ));
        }
        let arch = file
            .architecture()
            .ok_or_else(|| {
                not_a_model("no `general.architecture` key: not a llama.cpp model file".into())
            })?
            .to_string();
        let tensors: BTreeMap<String, Vec<u64>> = file
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone()))
            .collect();
        let n_head = uniform_u64(&file, &keys::arch_key(&arch, "attention.head_count"));
        let n_head_kv =
            uniform_u64(&file, &keys::arch_key(&arch, "attention.head_count_kv")).or(n_head);
        let heads = match (n_head, n_head_kv) {
            (Some(q), Some(kv)) => Some(HeadCounts {
                n_head: to_u32(q),
                n_head_kv: to_u32(kv),
                delta_net: delta_net_heads(&file, &arch),
            }),
            _ => None,
        };
        let n_vocab = tensors
            .get("token_embd.weight")
            .and_then(|d| d.get(1).copied());
        let n_expert = file
            .get_u64(&keys::arch_key(&arch, "expert_count"))
            .filter(|&e| e > 0);
        let tied = file.ties_output_to_embedding();
        let n_embd = file.get_u64(&keys::arch_key(&arch, "embedding_length"));
        let mut scales = BTreeMap::new();
        for t in &file.tensors {
            let Some(stem) = t.name.strip_suffix(".scale") else {
                continue;
            };
            let nvfp4 = file
                .tensor(&format!("{stem}.weight"))
                .is_some_and(|w| w.ggml_type == gguf::GgmlType::NVFP4);
            if t.n_elements() <= 1 << 16 && !nvfp4 {
                scales.insert(t.name.clone(), file.read_tensor_f32(&t.name)?);
            }
        }
        Ok(BaseModel {
            source: BaseSource::Gguf(path.to_path_buf()),
            gguf_arch: Some(arch),
            hf_architecture: None,
            heads,
            n_vocab,
            n_expert,
            n_embd,
            n_ff_exp: None,
            tied_embeddings: Some(tied),
            tensors: Some(tensors),
            scales,
            header: Some(std::sync::Arc::new(file)),
        })
    }

    /// The head counts the factor ops use: the base's, or 1 and 1 when it gives none (planning has then refused
    /// every target whose transform needs them).
    pub fn factor_heads(&self) -> HeadCounts {
        self.heads.unwrap_or(HeadCounts::new(1, 1))
    }

    /// Read a Hugging Face `config.json` (or the directory holding it).
    pub fn from_hf_config(path: &Path) -> Result<Self, BaseError> {
        let g: Geometry = geometry::from_hf_config(path)?;
        let heads = g.n_head.map(|q| HeadCounts {
            n_head: q,
            n_head_kv: g.n_head_kv.unwrap_or(q),
            delta_net: g.delta_net,
        });
        Ok(BaseModel {
            source: BaseSource::HfConfig(path.to_path_buf()),
            gguf_arch: g.gguf_arch,
            hf_architecture: g.hf_architecture,
            heads,
            n_vocab: g.n_vocab,
            n_expert: g.n_expert.map(u64::from),
            n_embd: g.n_embd,
            n_ff_exp: g.n_ff_exp,
            tied_embeddings: g.tie_word_embeddings,
            tensors: None,
            scales: BTreeMap::new(),
            header: None,
        })
    }

    /// The ne of a base tensor (`blk.0.ffn_down_exps.weight`): from the base GGUF, or — for the MoE tensors a
    /// `target_parameters` pair is told apart by — derived from the config as llama.cpp's loader expects them
    /// (`ffn_{gate,up}_exps` [H, ff, E], `ffn_down_exps` [ff, H, E], `ffn_gate_inp` [H, E]).
    pub fn target_dims(&self, target: &str) -> Option<Vec<u64>> {
        if let Some(tensors) = &self.tensors {
            return tensors.get(target).cloned();
        }
        let stem = target.strip_suffix(".weight")?;
        let role = stem.rsplit('.').next()?;
        let (h, e) = (self.n_embd?, self.n_expert?);
        match role {
            "ffn_gate_exps" | "ffn_up_exps" => Some(vec![h, self.n_ff_exp?, e]),
            "ffn_down_exps" => Some(vec![self.n_ff_exp?, h, e]),
            "ffn_gate_inp" => Some(vec![h, e]),
            _ => None,
        }
    }

    /// Whether the base GGUF has this tensor (None: the base is a config, its tensors are not known).
    pub fn has_tensor(&self, name: &str) -> Option<bool> {
        self.tensors.as_ref().map(|t| t.contains_key(name))
    }

    /// A short description for messages: the file name.
    pub fn describe(&self) -> String {
        match &self.source {
            BaseSource::Gguf(p) | BaseSource::HfConfig(p) => p.display().to_string(),
        }
    }
}

/// A hybrid model's Gated DeltaNet heads, as llama.cpp's loader reads them (src/models/qwen35.cpp): key heads =
/// `ssm.group_count`, value heads = `ssm.time_step_rank`, key head dim = `ssm.state_size`, value head dim =
/// `ssm.inner_size` / value heads.
fn delta_net_heads(file: &GgufFile, arch: &str) -> Option<DeltaNetHeads> {
    let get = |k: &str| file.get_u64(&keys::arch_key(arch, k)).map(to_u32);
    let (k_heads, v_heads) = (get("ssm.group_count")?, get("ssm.time_step_rank")?);
    let (k_head_dim, inner) = (get("ssm.state_size")?, get("ssm.inner_size")?);
    (k_heads > 0 && v_heads > 0 && inner.is_multiple_of(v_heads)).then_some(DeltaNetHeads {
        k_heads,
        v_heads,
        k_head_dim,
        v_head_dim: inner / v_heads,
    })
}

/// A per-arch integer key; when the file stores a per-layer array, its value if all layers agree.
fn uniform_u64(file: &GgufFile, key: &str) -> Option<u64> {
    let v = file.get(key)?;
    if let Some(x) = v.as_u64() {
        return Some(x);
    }
    let arr = v.as_array()?;
    let mut values = arr
        .values
        .iter()
        .filter_map(|v| v.as_u64())
        .filter(|&x| x > 0);
    let first = values.next()?;
    values.all(|x| x == first).then_some(first)
}

fn to_u32(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}
