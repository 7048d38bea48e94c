//! The adapters to merge, as llama.cpp would apply them: for every adapted base tensor, each adapter's factors in
//! f32 (ggml memory order, exactly the GGUF tensors' values) and its runtime factor `scale · α / rank`.
//!
//! Adapters are small next to a model (an r = 64 all-linear adapter of an 8B model is ~0.7 GB in f32, of a 1B one
//! ~0.1 GB), so their factors are held in memory for the whole merge; the model is streamed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::MergeError;
use super::ggml;
use crate::gguf::{GgmlType, GgufFile};
use crate::gguf_adapter::GgufAdapter;

/// How a pair's factors are laid out against its base tensor (ggml `ne`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// W ne [in, out]; A ne [in, r]; B ne [r, out]: ΔW = B·A (rows of W are outputs).
    Linear,
    /// `token_embd`: W ne [n_embd, n_vocab]; A ne [r, n_vocab] (Aᵀ, a row per token); B ne [r, n_embd]:
    /// ΔW row v = Σₖ A[v][k] · B[·][k].
    Embedding,
    /// Stacked experts: W ne [in, out, E]; A ne [in, r, E]; B ne [r, out, E]: a Linear pair per expert.
    Experts,
}

/// One LoRA pair of one adapter, ready to merge.
#[derive(Clone, Debug)]
pub struct Pair {
    /// The base tensor it changes.
    pub target: String,
    /// `lora_a` values in ggml order.
    pub a: Vec<f32>,
    /// `lora_b` values in ggml order.
    pub b: Vec<f32>,
    /// Rank (`lora_b` ne[0]).
    pub rank: usize,
    /// ΔW multiplier: the adapter's scale × α / rank, computed in f32 as llama.cpp does (just the scale when α is
    /// 0 or absent).
    pub factor: f32,
    /// The layout.
    pub layout: Layout,
    /// DoRA's magnitude per row of the target, for a DoRA adapter's pair ([`super::dora`]).
    pub magnitude: Option<super::dora::Magnitude>,
}

/// One adapter: where it came from, its scale, its pairs by target.
#[derive(Clone, Debug)]
pub struct Adapter {
    /// The file or directory as given.
    pub path: PathBuf,
    /// The user's scale (`ADAPTER:SCALE`).
    pub scale: f32,
    /// `adapter.lora.alpha` (0 when absent).
    pub alpha: f32,
    /// Pairs by target name.
    pub pairs: BTreeMap<String, Pair>,
}

/// llama.cpp's runtime factor (`llama_adapter_lora_weight::get_scale`): `alpha ? scale * alpha / rank : scale`,
/// in f32, left to right.
pub fn runtime_factor(scale: f32, alpha: f32, rank: usize) -> f32 {
    if alpha == 0.0 {
        scale
    } else {
        scale * alpha / rank as f32
    }
}

/// The layout of a pair on base tensor `target` with `dims`.
pub fn layout_of(target: &str, dims: &[u64]) -> Layout {
    if target == "token_embd.weight" {
        Layout::Embedding
    } else if dims.len() == 3 {
        Layout::Experts
    } else {
        Layout::Linear
    }
}

/// Read a GGUF LoRA adapter after checking it against the base with the fit check `lora-validate` runs. An
/// embedding pair on a base whose output head is tied to the embedding, which llama.cpp cannot run, is merged into
/// the embedding alone (see [`super::tied`]); its shape is checked like any other pair's.
pub fn load_gguf(path: &Path, scale: f32, base: &GgufFile) -> Result<Adapter, MergeError> {
    let mut adapter = GgufAdapter::open(path)?;
    let tied_embedding = base
        .ties_output_to_embedding()
        .then(|| {
            adapter
                .pairs
                .iter()
                .position(|p| p.target == super::tied::EMBEDDING)
        })
        .flatten()
        .map(|i| adapter.pairs.remove(i));
    let mut mismatches: Vec<String> = match adapter.fit(base) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    };
    if let Some(pair) = &tied_embedding {
        let (a, b) = (&adapter.lora_a(pair).dims, &adapter.lora_b(pair).dims);
        if let Some(w) = base.tensor(&pair.target) {
            let d = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(1);
            if !(d(&w.dims, 0) == d(b, 1) && d(&w.dims, 1) == d(a, 1) && d(a, 0) == d(b, 0)) {
                mismatches.push(format!(
                    "`{}`: lora_a ne {a:?} and lora_b ne {b:?} do not fit the base tensor ne {:?}",
                    pair.target, w.dims
                ));
            }
        }
    }
    if !mismatches.is_empty() {
        return Err(MergeError::DoesNotFit {
            adapter: path.to_path_buf(),
            base: base.path.clone(),
            mismatches,
        });
    }
    adapter.pairs.extend(tied_embedding);
    let alpha = adapter.runtime_alpha();
    let mut pairs = BTreeMap::new();
    for pair in &adapter.pairs {
        let (a_info, b_info) = (adapter.lora_a(pair), adapter.lora_b(pair));
        let a = read_f32(&adapter.file, &a_info.name, a_info.ggml_type)?;
        let b = read_f32(&adapter.file, &b_info.name, b_info.ggml_type)?;
        let rank = pair.rank as usize;
        let dims = base
            .tensor(&pair.target)
            .map(|w| w.dims.clone())
            .unwrap_or_default();
        pairs.insert(
            pair.target.clone(),
            Pair {
                target: pair.target.clone(),
                a,
                b,
                rank,
                factor: runtime_factor(scale, alpha, rank),
                layout: layout_of(&pair.target, &dims),
                magnitude: None,
            },
        );
    }
    Ok(Adapter {
        path: path.to_path_buf(),
        scale,
        alpha,
        pairs,
    })
}

/// Convert an adapter directory (PEFT, mlx-lm and the other trainers `lora-convert` reads) in memory with the
/// converter's own code: its plan (names, transforms, scaling folds, every refusal and check against the base)
/// and its factors as the GGUF adapter would hold them in f32 (`--outtype f32`, which is exact). The one difference:
/// an embedding LoRA on a tied base is planned rather than refused ([`super::tied`]), and a DoRA adapter is merged
/// ([`super::dora`]) rather than refused.
pub fn load_dir(
    dir: &Path,
    scale: f32,
    base_path: &Path,
    base: &GgufFile,
) -> Result<Adapter, MergeError> {
    use crate::convert::plan::PairShape;
    use crate::convert::{self, Quirks, materialize};
    let refused = |e: convert::ConvertError| MergeError::Convert {
        adapter: dir.to_path_buf(),
        source: Box::new(e),
    };
    let quirks = Quirks {
        merge_tied_embedding: true,
        ..Default::default()
    };
    let mut prepared = convert::prepare(
        dir,
        Some(base_path),
        None,
        None,
        convert::OutType::F32,
        &quirks,
    )
    .map_err(refused)?;
    let magnitudes = super::dora::take(&mut prepared, dir)?;
    if !prepared.refusals.is_empty() {
        return Err(refused(prepared.refusals.remove(0)));
    }
    let (Some(plan), Some(model)) = (&prepared.plan, &prepared.base) else {
        return Err(MergeError::NothingToMerge);
    };
    let heads = model.factor_heads();
    let mut pairs = BTreeMap::new();
    for planned in &plan.pairs {
        let f = materialize::materialize(&prepared.adapter, planned, heads).map_err(refused)?;
        let layout = match planned.shape {
            PairShape::Linear => Layout::Linear,
            PairShape::Embedding { .. } => Layout::Embedding,
            PairShape::Experts { .. } => Layout::Experts,
        };
        debug_assert_eq!(
            layout,
            layout_of(
                &planned.target,
                &base
                    .tensor(&planned.target)
                    .map(|t| t.dims.clone())
                    .unwrap_or_default()
            )
        );
        let magnitude = magnitudes
            .as_ref()
            .map(|m| super::dora::for_target(planned, &prepared.adapter, m, heads))
            .transpose()?;
        pairs.insert(
            planned.target.clone(),
            Pair {
                target: planned.target.clone(),
                a: f.a,
                b: f.b,
                rank: planned.rank,
                factor: runtime_factor(scale, plan.alpha, planned.rank),
                layout,
                magnitude,
            },
        );
    }
    Ok(Adapter {
        path: dir.to_path_buf(),
        scale,
        alpha: plan.alpha,
        pairs,
    })
}

/// The file that identifies an adapter for provenance: a GGUF adapter itself, or a directory's weights file.
pub fn identity_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        for name in ["adapter_model.safetensors", "adapters.safetensors"] {
            if path.join(name).is_file() {
                return path.join(name);
            }
        }
    }
    path.to_path_buf()
}

/// A tensor of the adapter in f32, through ggml's own dequantizer (any type llama.cpp could load).
fn read_f32(file: &GgufFile, name: &str, ty: GgmlType) -> Result<Vec<f32>, MergeError> {
    let bytes = file.read_tensor_bytes(name)?;
    let n = file.tensor(name).map_or(0, |t| t.n_elements()) as usize;
    let mut out = vec![0f32; n];
    ggml::dequantize(ty, &bytes, &mut out).map_err(|source| MergeError::Quant {
        tensor: format!("{} in `{}`", name, file.path.display()),
        source,
    })?;
    Ok(out)
}
