//! mlx-lm LoRA adapters, converted directly (no `mlx_lm fuse`): a directory with `adapters.safetensors` and the
//! `adapter_config.json` that `mlx_lm lora` writes, read into the same [`Adapter`] every other stage uses.
//!
//! The math (mlx-lm 0.32.2 `tuner/lora.py`): `LoRALinear` computes y = W x + scale · (x @ lora_a) @ lora_b with
//! lora_a (in, r) and lora_b (r, out), so ΔW = scale · (lora_a @ lora_b)ᵀ = scale · lora_bᵀ · lora_aᵀ: PEFT's
//! B·A with A = lora_aᵀ (r, in), B = lora_bᵀ (out, r), and s = scale exactly — an absolute factor, not alpha/r.
//! `LoRAEmbedding` keeps lora_a (vocab, r), lora_b (r, hidden) with ΔE = scale · lora_a @ lora_b, which is PEFT's
//! embedding LoRA (ΔE = s·(B·A)ᵀ) with the same transposes. So each factor is a [`TensorRef`] marked `transposed`,
//! its scaling is `Scaling::absolute`, and module paths go through the family tables unchanged (mlx-lm's model
//! trees use the Hugging Face module names for the families here; the logits tests check each fixture family).
//!
//! `LoRASwitchLinear` (mixture-of-experts) keeps lora_a (E, r, in) and lora_b (E, out, r), ΔW_e = scale ·
//! lora_b[e] · lora_a[e]: per expert already PEFT's orientation, which is exactly llama.cpp's `*_exps` layout
//! (lora_a ne [in, r, E], lora_b ne [r, out, E]); such a pair gets `Packing::MlxExperts` and the Hugging Face name
//! of the stack it was built from (`switch_mlp.gate_proj` → `experts.w1` for Mixtral), so the family tables map it.
//! mlx-lm also adapts the router (`block_sparse_moe.gate`, an ordinary Linear) by default.
//!
//! Refused: DoRA (`fine_tune_type: dora`, `.m` tensors), full fine-tunes, unknown fine-tune types, SwitchLinear
//! modules of unknown naming, and files mlx-lm itself would not load onto its model (a module the configuration's
//! `keys`/`num_layers` does not adapt).

pub mod config;
pub mod tensors;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

pub use config::MlxConfig;

use crate::adapter::scan::{self, Key, KeyScheme, Refused, Stored};
use crate::adapter::{
    Adapter, Error, Framework, KeyKind, LoraPair, Packing, PairKind, Scaling, Scan, TensorRef,
};
use crate::peft::{self, AdapterConfig};

/// The adapter weights file `mlx_lm lora` writes when training ends.
pub const SAFETENSORS_FILE: &str = "adapters.safetensors";
/// The configuration file it writes beside it.
pub const CONFIG_FILE: &str = "adapter_config.json";

const WHERE: &str = "point lora-convert at the directory `mlx_lm lora --adapter-path` wrote";

/// Whether `dir` holds an mlx-lm adapter: its weights file without PEFT's, or an mlx-lm style configuration
/// (`lora_parameters` / `fine_tune_type`, no PEFT `r`).
pub fn detect(dir: &Path) -> bool {
    if dir.join(SAFETENSORS_FILE).is_file() && !dir.join(peft::SAFETENSORS_FILE).is_file() {
        return true;
    }
    let Ok(text) = std::fs::read_to_string(dir.join(CONFIG_FILE)) else {
        return false;
    };
    matches!(serde_json::from_str::<Value>(&text), Ok(Value::Object(m)) if config::looks_like_mlx(&m))
}

/// Open and validate an mlx-lm adapter directory; anything a GGUF LoRA cannot express is an error (the first such).
pub fn open(dir: &Path) -> Result<Adapter, Error> {
    scan(dir)?.into_adapter()
}

/// Read an mlx-lm adapter directory, collecting refusals. Errors only when there is nothing to read: missing files,
/// invalid JSON, missing or malformed LoRA settings, a corrupt safetensors file.
pub fn scan(dir: &Path) -> Result<Scan, Error> {
    let config_path = scan::require_config(dir, CONFIG_FILE, WHERE)?;
    let st_path = dir.join(SAFETENSORS_FILE);
    let text = scan::read_text(&config_path)?;
    let (config, mut refusals) = MlxConfig::read(&text, &config_path)?;
    if !st_path.is_file() {
        let found = scan::listing(dir);
        let hint = match found
            .split(", ")
            .find(|n| n.ends_with("_adapters.safetensors"))
        {
            Some(checkpoint) => format!(
                "mlx-lm writes {SAFETENSORS_FILE} when training ends; to convert the checkpoint `{checkpoint}`, \
                 copy it to {SAFETENSORS_FILE} in a directory with this adapter_config.json"
            ),
            None => WHERE.into(),
        };
        return Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            file: SAFETENSORS_FILE,
            found,
            hint,
        });
    }

    // Tensors are read with positioned reads, as for PEFT.
    let scanned = scan::scan(&st_path, &Scheme { config: &config })?;
    let equivalent = equivalent_peft_config(&config, &config_path)?;
    let (adapter, pair_refusals) = Adapter::new(
        dir.to_path_buf(),
        Framework::MlxLm,
        equivalent,
        st_path,
        scanned,
        Vec::new(),
    );
    refusals.extend(pair_refusals);
    Ok(Scan {
        adapter,
        refusals,
        mlx: Some(config),
    })
}

/// mlx-lm's keys (`<module>.lora_a`, `.lora_b`, DoRA's `.m`), the modules its configuration adapts, and its
/// transposed and SwitchLinear factors.
struct Scheme<'c> {
    config: &'c MlxConfig,
}

impl Scheme<'_> {
    /// The scaling of every pair: mlx-lm's `scale`, absolute.
    fn scaling(&self) -> Scaling {
        Scaling {
            alpha: self.config.scale * f64::from(self.config.rank),
            rank: self.config.rank,
            rslora: false,
            absolute: Some(self.config.scale),
        }
    }
}

impl KeyScheme for Scheme<'_> {
    const HALVES: [&'static str; 2] = ["lora_a", "lora_b"];
    const UNKNOWN: [&'static str; 3] = [
        "mlx-lm LoRA factors",
        "model.layers.0.self_attn.q_proj.lora_a",
        "an adapter written by `mlx_lm lora`",
    ];

    fn classify(&self, key: &str, _shape: &[usize]) -> Key {
        match tensors::classify(key) {
            tensors::KeyKind::Factor { module, is_a } => Key::Factor {
                kind: if tensors::is_embedding(&module) {
                    PairKind::Embedding
                } else {
                    PairKind::Linear
                },
                module,
                is_a,
            },
            tensors::KeyKind::DoraMagnitude => Key::Other {
                kind: KeyKind::DoraMagnitude,
                refusal: Some(
                    "is a DoRA magnitude vector: DoRA cannot be a GGUF LoRA adapter — merge the adapter into \
                     the base model with `lora-convert merge` instead"
                        .into(),
                ),
            },
            tensors::KeyKind::FullWeight => Key::Other {
                kind: KeyKind::FullWeight,
                refusal: Some(
                    "is a full weight, not a LoRA factor (a full fine-tune, or trained non-LoRA parameters): \
                     llama.cpp cannot swap full tensors at run time — fuse with `mlx_lm fuse` and convert the whole \
                     model"
                        .into(),
                ),
            },
            tensors::KeyKind::Unknown => Key::Unknown,
        }
    }

    fn admit(&self, path: &Path, module: &str, factor: &Stored) -> Result<(), Refused> {
        if factor.shape.len() == 3 && tensors::switch_module(module).is_none() {
            return Err(Refused {
                error: Error::UnsupportedTensor {
                    path: path.to_path_buf(),
                    key: factor.key.clone(),
                    message: format!(
                        "is a SwitchLinear (mixture-of-experts) factor of shape {:?} on a module lora-convert \
                         does not know how mlx-lm stacked (it knows `block_sparse_moe.switch_mlp.*` and \
                         `mlp.switch_mlp.*`) — fuse the adapter with `mlx_lm fuse` and convert the fused model",
                        factor.shape
                    ),
                },
                once_per_module: false,
            });
        }
        if !tensors::selected(module, self.config.keys.as_deref()) {
            let why = match &self.config.keys {
                Some(keys) => format!(
                    "`lora_parameters.keys` ({}) does not name it",
                    keys.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => {
                    "it is outside the model's blocks and `lora_parameters.keys` is not set".into()
                }
            };
            return Err(Refused {
                error: Error::NotAdapted {
                    path: path.to_path_buf(),
                    module: module.to_string(),
                    why,
                },
                once_per_module: true,
            });
        }
        Ok(())
    }

    fn pair(
        &self,
        path: &Path,
        module: &str,
        kind: PairKind,
        a: &Stored,
        b: &Stored,
    ) -> Result<LoraPair, Error> {
        let shape_err = |message: String| Error::Shape {
            path: path.to_path_buf(),
            module: module.to_string(),
            message,
            factors: format!(
                "lora_a {:?}, lora_b {:?}; mlx-lm stores lora_a (in, r) and lora_b (r, out)",
                a.shape, b.shape
            ),
        };
        let rank = self.config.rank as usize;
        let (n_expert, inp, ra, rb, out) = match (a.shape.as_slice(), b.shape.as_slice()) {
            (&[inp, ra], &[rb, out]) => (None, inp, ra, rb, out),
            // LoRASwitchLinear: lora_a (E, r, in), lora_b (E, out, r)
            (&[ea, ra, inp], &[eb, out, rb]) if ea == eb => (Some(ea), inp, ra, rb, out),
            (&[_, _, _], &[_, _, _]) => {
                return Err(shape_err(
                    "lora_a and lora_b hold different numbers of experts".into(),
                ));
            }
            _ => {
                return Err(shape_err(
                    "the factors must be both 2-D (Linear) or both 3-D (SwitchLinear)".into(),
                ));
            }
        };
        if ra != rb {
            return Err(shape_err(format!(
                "lora_a has rank {ra} but lora_b has rank {rb}"
            )));
        }
        if ra == 0 || inp == 0 || out == 0 || n_expert == Some(0) {
            return Err(shape_err("a factor is empty".into()));
        }
        if ra != rank {
            return Err(shape_err(format!(
                "the tensors have rank {ra} but adapter_config.json gives lora_parameters.rank = {rank}"
            )));
        }
        let factor = |t: &Stored, shape: Vec<usize>, transposed: bool| TensorRef {
            key: t.key.clone(),
            dtype: t.dtype,
            shape,
            transposed,
        };
        Ok(match n_expert {
            None => LoraPair {
                module: module.to_string(),
                saved_as: module.to_string(),
                parameter: None,
                candidates: Vec::new(),
                packing: Packing::Single,
                kind,
                // PEFT orientation: A (r, in), B (out, r); the file holds their transposes.
                a: factor(a, vec![ra, inp], true),
                b: factor(b, vec![out, ra], true),
                rank: ra,
                scaling: self.scaling(),
            },
            // Each expert's factors are already PEFT-oriented blocks; the packing says where expert e's are.
            Some(e) => LoraPair {
                module: tensors::switch_module(module).unwrap_or_else(|| module.to_string()),
                saved_as: module.to_string(),
                parameter: None,
                candidates: Vec::new(),
                packing: Packing::MlxExperts { n_expert: e },
                kind: PairKind::Linear,
                a: factor(a, vec![e * ra, inp], false),
                b: factor(b, vec![out, e * ra], false),
                rank: ra,
                scaling: self.scaling(),
            },
        })
    }

    /// `num_layers`: mlx-lm adapts only the last N blocks, so factors in more blocks do not belong to this config.
    fn finish(&self, path: &Path, pairs: &[LoraPair], refusals: &mut Vec<Error>) {
        let blocks: BTreeSet<u64> = pairs
            .iter()
            .filter_map(|p| tensors::block_index(&p.saved_as))
            .collect();
        if let Some(n) = self.config.last_blocks()
            && blocks.len() as u64 > n
        {
            let module = pairs
                .iter()
                .find(|p| tensors::block_index(&p.module) == blocks.first().copied())
                .map(|p| p.module.clone())
                .unwrap_or_default();
            refusals.push(Error::NotAdapted {
                path: path.to_path_buf(),
                module,
                why: format!(
                    "`num_layers` is {n} and the file has LoRA factors in {} blocks",
                    blocks.len()
                ),
            });
        }
    }
}

/// The PEFT configuration this adapter is equivalent to (r, lora_alpha = scale·r, the keys as target_modules, the
/// base model), so that everything reading `Adapter::config` sees the same adapter. The exact factor is carried by
/// each pair's `Scaling::absolute`.
fn equivalent_peft_config(config: &MlxConfig, path: &Path) -> Result<AdapterConfig, Error> {
    let json = serde_json::json!({
        "peft_type": "LORA",
        "r": config.rank,
        "lora_alpha": config.scale * f64::from(config.rank),
        "target_modules": config.keys,
        "base_model_name_or_path": config.model,
    });
    AdapterConfig::from_json(&json.to_string(), path).map_err(|e| Error::ConfigField {
        path: path.to_path_buf(),
        key: "lora_parameters".into(),
        message: format!("has no PEFT equivalent: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;

    /// An adapter directory with one pair of index-valued factors: lora_a (in 3, r 2), lora_b (r 2, out 4).
    fn tiny(dir: &Path, config: &str) {
        let a: Vec<u8> = (0..6).flat_map(|x| (x as f32).to_le_bytes()).collect();
        let b: Vec<u8> = (0..8)
            .flat_map(|x| (10.0 + x as f32).to_le_bytes())
            .collect();
        let m = "model.layers.0.self_attn.v_proj";
        let views = vec![
            (
                format!("{m}.lora_a"),
                TensorView::new(Dtype::F32, vec![3, 2], &a).unwrap(),
            ),
            (
                format!("{m}.lora_b"),
                TensorView::new(Dtype::F32, vec![2, 4], &b).unwrap(),
            ),
        ];
        std::fs::write(
            dir.join(SAFETENSORS_FILE),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(CONFIG_FILE), config).unwrap();
    }

    #[test]
    fn factors_read_back_in_peft_orientation_with_the_absolute_scale() {
        let dir = tempfile::tempdir().unwrap();
        tiny(
            dir.path(),
            r#"{"fine_tune_type":"lora","num_layers":-1,"model":"m","lora_parameters":{"rank":2,"scale":0.1,"dropout":0.0}}"#,
        );
        assert!(detect(dir.path()));
        let adapter = open(dir.path()).unwrap();
        assert_eq!(adapter.framework, Framework::MlxLm);
        let p = &adapter.pairs[0];
        assert_eq!((p.kind, p.rank), (PairKind::Linear, 2));
        assert_eq!(
            (p.a.shape.clone(), p.b.shape.clone()),
            (vec![2, 3], vec![4, 2])
        );
        let mut a = Vec::new();
        adapter.tensor_f32(&p.a, &mut a).unwrap();
        // A = lora_aᵀ: row k is column k of lora_a [[0,1],[2,3],[4,5]].
        assert_eq!(a, vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
        let mut b = Vec::new();
        adapter.tensor_f32(&p.b, &mut b).unwrap();
        // B = lora_bᵀ: row i is column i of lora_b [[10..13],[14..17]].
        assert_eq!(b, vec![10.0, 14.0, 11.0, 15.0, 12.0, 16.0, 13.0, 17.0]);
        // s = scale exactly (0.1·2/2 would not be), and the equivalent PEFT alpha is scale·r.
        assert_eq!(p.scaling.factor(), 0.1);
        assert_eq!(adapter.config.alpha, 0.2);
        assert_eq!(adapter.config.rank, 2);
        assert_eq!(adapter.config.base_model_name_or_path.as_deref(), Some("m"));
    }

    #[test]
    fn scan_collects_every_refusal_and_lists_the_unpaired_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let four: Vec<u8> = (0..4).flat_map(|x| (x as f32).to_le_bytes()).collect();
        let i32s: Vec<u8> = (0..6).flat_map(|x: i32| x.to_le_bytes()).collect();
        let views = vec![
            (
                "model.layers.0.self_attn.q_proj.m".to_string(),
                TensorView::new(Dtype::F32, vec![4], &four).unwrap(),
            ),
            (
                "model.layers.0.self_attn.k_proj.lora_a".to_string(),
                TensorView::new(Dtype::F32, vec![2, 2], &four).unwrap(),
            ),
            (
                "model.layers.0.self_attn.v_proj.lora_a".to_string(),
                TensorView::new(Dtype::I32, vec![3, 2], &i32s).unwrap(),
            ),
            (
                "model.layers.0.self_attn.v_proj.lora_b".to_string(),
                TensorView::new(Dtype::F32, vec![2, 2], &four).unwrap(),
            ),
        ];
        std::fs::write(
            dir.path().join(SAFETENSORS_FILE),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"fine_tune_type":"dora","lora_parameters":{"rank":2,"scale":20.0}}"#,
        )
        .unwrap();
        let s = scan(dir.path()).unwrap();
        let found: Vec<String> = s
            .refusals
            .iter()
            .map(|e| match e {
                Error::Unsupported { key, .. } => format!("config {key}"),
                Error::UnsupportedTensor { key, .. } => format!("tensor {key}"),
                Error::Dtype { key, dtype, .. } => format!("dtype {key} {dtype}"),
                Error::HalfPair {
                    module, missing, ..
                } => format!("half {module} {missing}"),
                other => panic!("unexpected {other}"),
            })
            .collect();
        // in file order; the I32 factor's module gets no second "half pair" refusal
        assert_eq!(
            found,
            [
                "config fine_tune_type",
                "tensor model.layers.0.self_attn.q_proj.m",
                "dtype model.layers.0.self_attn.v_proj.lora_a I32",
                "half model.layers.0.self_attn.k_proj lora_b",
            ]
        );
        assert!(s.adapter.pairs.is_empty());
        let mut others: Vec<&str> = s.adapter.others.iter().map(|t| t.key.as_str()).collect();
        others.sort_unstable();
        assert_eq!(
            others,
            [
                "model.layers.0.self_attn.k_proj.lora_a",
                "model.layers.0.self_attn.q_proj.m",
                "model.layers.0.self_attn.v_proj.lora_a",
                "model.layers.0.self_attn.v_proj.lora_b",
            ]
        );
        assert_eq!(s.mlx.as_ref().unwrap().fine_tune_type, "dora");
        // `open` keeps its contract: the first refusal is the error.
        assert!(
            open(dir.path())
                .unwrap_err()
                .to_string()
                .contains("`fine_tune_type` is `dora`")
        );
    }

    #[test]
    fn a_peft_directory_is_not_taken_for_mlx() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(peft::SAFETENSORS_FILE),
            safetensors::serialize(Vec::<(String, TensorView<'_>)>::new(), None).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"peft_type":"LORA","r":8,"lora_alpha":16}"#,
        )
        .unwrap();
        assert!(!detect(dir.path()));
    }
}
