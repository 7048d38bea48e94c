//! mlx-lm LoRA adapters, converted directly (no `mlx_lm fuse`): a directory with `adapters.safetensors` and the
//! `adapter_config.json` that `mlx_lm lora` writes, read into the same [`peft::Adapter`] every other stage uses.
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

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

pub use config::MlxConfig;

use crate::peft::{
    self, Adapter, AdapterConfig, Framework, LoraPair, OtherTensor, Packing, PairKind, Scaling,
};
use crate::peft::{Error as ReadError, SourceDtype, TensorRef};
use tensors::KeyKind;

/// The adapter weights file `mlx_lm lora` writes when training ends.
pub const SAFETENSORS_FILE: &str = "adapters.safetensors";
/// The configuration file it writes beside it.
pub const CONFIG_FILE: &str = "adapter_config.json";

const WHERE: &str = "point lora-convert at the directory `mlx_lm lora --adapter-path` wrote";

/// Why an mlx-lm adapter could not be read, or what it uses that a GGUF LoRA cannot express.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The directory lacks a file we need.
    #[error("`{dir}` has no `{file}` (found: {found}); {hint}")]
    MissingFile {
        /// The adapter directory.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
        /// What is there.
        found: String,
        /// What to do.
        hint: String,
    },
    /// What every adapter reader can meet — an unreadable file, invalid JSON, a missing or malformed field, an
    /// unsupported setting or tensor, a corrupt safetensors file, a factor dtype — with PEFT's messages.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Keys that are not mlx-lm adapter parameters at all.
    #[error(
        "`{path}`: {count} tensor(s) are not mlx-lm LoRA factors, e.g. {examples}; expected keys like \
         `model.layers.0.self_attn.q_proj.lora_a` — is this an adapter written by `mlx_lm lora`?"
    )]
    UnknownTensors {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
        /// A few of them.
        examples: String,
    },
    /// One half of a pair is missing.
    #[error("`{path}`: module `{module}` has {present} but no {missing}; the file is incomplete")]
    HalfPair {
        /// The file.
        path: PathBuf,
        /// The module.
        module: String,
        /// The half present.
        present: &'static str,
        /// The half missing.
        missing: &'static str,
    },
    /// Factor shapes that do not form an mlx-lm LoRA pair.
    #[error(
        "`{path}`: module `{module}`: {message} (lora_a {a_shape:?}, lora_b {b_shape:?}; mlx-lm stores lora_a \
         (in, r) and lora_b (r, out))"
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// The module.
        module: String,
        /// What is wrong.
        message: String,
        /// lora_a's shape as stored.
        a_shape: Vec<usize>,
        /// lora_b's shape as stored.
        b_shape: Vec<usize>,
    },
    /// A module the configuration does not adapt: mlx-lm's own `load_adapters` refuses such a file.
    #[error(
        "`{path}`: module `{module}` has LoRA factors, but {why}, so mlx-lm itself would not load this adapter \
         (\"not an adapter parameter in the model\"); the adapter_config.json does not belong to these weights"
    )]
    NotAdapted {
        /// The weights file.
        path: PathBuf,
        /// The module.
        module: String,
        /// Which setting excludes it.
        why: String,
    },
}

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

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn found(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// One factor as the file stores it.
struct Stored {
    key: String,
    dtype: SourceDtype,
    shape: Vec<usize>,
}

impl Stored {
    /// The factor as a tensor that is not part of a pair (its pair was refused).
    fn other(&self, module: &str, is_a: bool) -> OtherTensor {
        OtherTensor {
            key: self.key.clone(),
            dtype: format!("{:?}", self.dtype),
            shape: self.shape.clone(),
            kind: factor_kind(module, is_a),
        }
    }
}

fn factor_kind(module: &str, is_a: bool) -> peft::KeyKind {
    peft::KeyKind::Factor {
        module: module.to_string(),
        kind: if tensors::is_embedding(module) {
            PairKind::Embedding
        } else {
            PairKind::Linear
        },
        is_a,
    }
}

/// Open and validate an mlx-lm adapter directory; anything a GGUF LoRA cannot express is an error (the first such).
pub fn open(dir: &Path) -> Result<Adapter, Error> {
    let scanned = scan(dir)?;
    crate::peft::unless_refused(scanned.adapter, scanned.refusals)
}

/// An mlx-lm adapter read as far as it can be, with every refusal instead of the first (as [`peft::Scan`]).
#[derive(Debug)]
pub struct Scan {
    /// The adapter, without the refused pairs (their tensors are in `adapter.others`).
    pub adapter: Adapter,
    /// The configuration as mlx-lm wrote it.
    pub config: MlxConfig,
    /// Everything that stops conversion, in the order found (configuration first, then tensors by key).
    pub refusals: Vec<Error>,
}

/// Read an mlx-lm adapter directory, collecting refusals. Errors only when there is nothing to read: missing files,
/// invalid JSON, missing or malformed LoRA settings, a corrupt safetensors file.
pub fn scan(dir: &Path) -> Result<Scan, Error> {
    let config_path = dir.join(CONFIG_FILE);
    let st_path = dir.join(SAFETENSORS_FILE);
    if !dir.is_dir() {
        return Err(ReadError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        }
        .into());
    }
    let names = listing(dir);
    if !config_path.is_file() {
        return Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            file: CONFIG_FILE,
            found: found(&names),
            hint: WHERE.into(),
        });
    }
    let text = std::fs::read_to_string(&config_path).map_err(|source| ReadError::Io {
        path: config_path.clone(),
        source,
    })?;
    let (config, mut refusals) = MlxConfig::read(&text, &config_path)?;
    if !st_path.is_file() {
        let hint = match names.iter().find(|n| n.ends_with("_adapters.safetensors")) {
            Some(checkpoint) => format!(
                "mlx-lm writes {SAFETENSORS_FILE} when training ends; to convert the checkpoint `{checkpoint}`, \
                 copy it to {SAFETENSORS_FILE} in a directory with this adapter_config.json"
            ),
            None => WHERE.into(),
        };
        return Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            file: SAFETENSORS_FILE,
            found: found(&names),
            hint,
        });
    }

    let file = File::open(&st_path).map_err(|source| ReadError::Io {
        path: st_path.clone(),
        source,
    })?;
    let mmap = peft::map(&file).map_err(|source| ReadError::Io {
        path: st_path.clone(),
        source,
    })?;
    let st_err = |source| ReadError::Safetensors {
        path: st_path.clone(),
        source,
    };
    // `read_metadata` checks that the header's offsets cover the data exactly (no gaps, no trailing bytes); the map
    // is gone before any tensor is read (tensors are read with positioned reads, as for PEFT).
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(st_err)?;
    drop(mmap);
    let data_start = (header_len + 8) as u64;

    let mut ranges = BTreeMap::new();
    let mut halves: BTreeMap<String, [Option<Stored>; 2]> = BTreeMap::new();
    let mut others = Vec::new();
    // modules with a refusal of their own: their factors are listed, not paired
    let mut refused_modules = BTreeSet::new();
    let mut unknown = Vec::new();
    let mut tensors: Vec<(String, &safetensors::tensor::TensorInfo)> =
        metadata.tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, info) in tensors {
        let unsupported = |message: String| {
            Error::Read(ReadError::UnsupportedTensor {
                path: st_path.clone(),
                key: key.clone(),
                message,
            })
        };
        let other = |kind: peft::KeyKind| OtherTensor {
            key: key.clone(),
            dtype: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
            kind,
        };
        match tensors::classify(&key) {
            KeyKind::Factor { module, is_a } => {
                let dtype = match info.dtype {
                    Dtype::F32 => SourceDtype::F32,
                    Dtype::F16 => SourceDtype::F16,
                    Dtype::BF16 => SourceDtype::BF16,
                    other_dtype => {
                        refusals.push(Error::Read(ReadError::Dtype {
                            path: st_path.clone(),
                            key: key.clone(),
                            dtype: format!("{other_dtype:?}"),
                        }));
                        others.push(other(factor_kind(&module, is_a)));
                        refused_modules.insert(module);
                        continue;
                    }
                };
                if info.shape.len() == 3 && tensors::switch_module(&module).is_none() {
                    refusals.push(unsupported(format!(
                        "is a SwitchLinear (mixture-of-experts) factor of shape {:?} on a module lora-convert \
                         does not know how mlx-lm stacked (it knows `block_sparse_moe.switch_mlp.*` and \
                         `mlp.switch_mlp.*`) — fuse the adapter with `mlx_lm fuse` and convert the fused model",
                        info.shape
                    )));
                    others.push(other(factor_kind(&module, is_a)));
                    refused_modules.insert(module);
                    continue;
                }
                if !tensors::selected(&module, config.keys.as_deref()) {
                    let why = match &config.keys {
                        Some(keys) => format!(
                            "`lora_parameters.keys` ({}) does not name it",
                            keys.iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        None => {
                            "it is outside the model's blocks and `lora_parameters.keys` is not set"
                                .into()
                        }
                    };
                    others.push(other(factor_kind(&module, is_a)));
                    if refused_modules.insert(module.clone()) {
                        refusals.push(Error::NotAdapted {
                            path: st_path.clone(),
                            module,
                            why,
                        });
                    }
                    continue;
                }
                let (start, end) = info.data_offsets;
                ranges.insert(
                    key.clone(),
                    (data_start + start as u64, data_start + end as u64),
                );
                halves.entry(module).or_default()[usize::from(!is_a)] = Some(Stored {
                    key,
                    dtype,
                    shape: info.shape.clone(),
                });
            }
            KeyKind::DoraMagnitude => {
                refusals.push(unsupported(
                    "is a DoRA magnitude vector: DoRA cannot be expressed as a GGUF LoRA — fuse the adapter with \
                     `mlx_lm fuse` and convert the fused model instead"
                        .into(),
                ));
                others.push(other(peft::KeyKind::DoraMagnitude));
            }
            KeyKind::FullWeight => {
                refusals.push(unsupported(
                    "is a full weight, not a LoRA factor (a full fine-tune, or trained non-LoRA parameters): \
                     llama.cpp cannot swap full tensors at run time — fuse with `mlx_lm fuse` and convert the whole \
                     model"
                        .into(),
                ));
                others.push(other(peft::KeyKind::FullWeight));
            }
            KeyKind::Unknown => {
                others.push(other(peft::KeyKind::Unknown));
                unknown.push(key);
            }
        }
    }
    if !unknown.is_empty() {
        let examples = unknown
            .iter()
            .take(3)
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        refusals.push(Error::UnknownTensors {
            path: st_path.clone(),
            count: unknown.len(),
            examples,
        });
    }

    let scaling = Scaling {
        alpha: config.scale * f64::from(config.rank),
        rank: config.rank,
        rslora: false,
        absolute: Some(config.scale),
    };
    let mut pairs = Vec::with_capacity(halves.len());
    let mut blocks = BTreeSet::new();
    for (module, [a, b]) in halves {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) if !refused_modules.contains(&module) => (a, b),
            (a, b) => {
                if !refused_modules.contains(&module) {
                    refusals.push(Error::HalfPair {
                        path: st_path.clone(),
                        module: module.clone(),
                        present: if a.is_some() { "lora_a" } else { "lora_b" },
                        missing: if a.is_some() { "lora_b" } else { "lora_a" },
                    });
                }
                others.extend(a.map(|t| t.other(&module, true)));
                others.extend(b.map(|t| t.other(&module, false)));
                continue;
            }
        };
        let shape_err = |message: String| Error::Shape {
            path: st_path.clone(),
            module: module.clone(),
            message,
            a_shape: a.shape.clone(),
            b_shape: b.shape.clone(),
        };
        let checked = match (a.shape.as_slice(), b.shape.as_slice()) {
            (&[inp, ra], &[rb, out]) => Ok((None, inp, ra, rb, out)),
            // LoRASwitchLinear: lora_a (E, r, in), lora_b (E, out, r)
            (&[ea, ra, inp], &[eb, out, rb]) if ea == eb => Ok((Some(ea), inp, ra, rb, out)),
            (&[_, _, _], &[_, _, _]) => Err(shape_err(
                "lora_a and lora_b hold different numbers of experts".into(),
            )),
            _ => Err(shape_err(
                "the factors must be both 2-D (Linear) or both 3-D (SwitchLinear)".into(),
            )),
        }
        .and_then(|(n_expert, inp, ra, rb, out)| {
            if ra != rb {
                Err(shape_err(format!(
                    "lora_a has rank {ra} but lora_b has rank {rb}"
                )))
            } else if ra == 0 || inp == 0 || out == 0 || n_expert == Some(0) {
                Err(shape_err("a factor is empty".into()))
            } else if ra != config.rank as usize {
                Err(shape_err(format!(
                    "the tensors have rank {ra} but adapter_config.json gives lora_parameters.rank = {}",
                    config.rank
                )))
            } else {
                Ok((n_expert, inp, ra, out))
            }
        });
        let (n_expert, inp, ra, out) = match checked {
            Ok(dims) => dims,
            Err(e) => {
                refusals.push(e);
                others.push(a.other(&module, true));
                others.push(b.other(&module, false));
                continue;
            }
        };
        blocks.extend(tensors::block_index(&module));
        let pair = match n_expert {
            None => LoraPair {
                saved_as: module.clone(),
                kind: if tensors::is_embedding(&module) {
                    PairKind::Embedding
                } else {
                    PairKind::Linear
                },
                module,
                parameter: None,
                candidates: Vec::new(),
                packing: Packing::Single,
                // PEFT orientation: A (r, in), B (out, r); the file holds their transposes.
                a: TensorRef {
                    key: a.key,
                    dtype: a.dtype,
                    shape: vec![ra, inp],
                    transposed: true,
                },
                b: TensorRef {
                    key: b.key,
                    dtype: b.dtype,
                    shape: vec![out, ra],
                    transposed: true,
                },
                rank: ra,
                scaling,
            },
            // Each expert's factors are already PEFT-oriented blocks; the packing says where expert e's are.
            Some(e) => LoraPair {
                module: tensors::switch_module(&module).unwrap_or_else(|| module.clone()),
                saved_as: module,
                parameter: None,
                candidates: Vec::new(),
                packing: Packing::MlxExperts { n_expert: e },
                kind: PairKind::Linear,
                a: TensorRef {
                    key: a.key,
                    dtype: a.dtype,
                    shape: vec![e * ra, inp],
                    transposed: false,
                },
                b: TensorRef {
                    key: b.key,
                    dtype: b.dtype,
                    shape: vec![out, e * ra],
                    transposed: false,
                },
                rank: ra,
                scaling,
            },
        };
        pairs.push(pair);
    }
    if let Some(n) = config.last_blocks()
        && blocks.len() as u64 > n
    {
        let module = pairs
            .iter()
            .find(|p| tensors::block_index(&p.module) == blocks.first().copied())
            .map(|p| p.module.clone())
            .unwrap_or_default();
        refusals.push(Error::NotAdapted {
            path: st_path.clone(),
            module,
            why: format!(
                "`num_layers` is {n} and the file has LoRA factors in {} blocks",
                blocks.len()
            ),
        });
    }
    let equivalent = equivalent_peft_config(&config, &config_path)?;
    let adapter = Adapter::from_parts(
        dir.to_path_buf(),
        Framework::MlxLm,
        equivalent,
        pairs,
        others,
        st_path,
        file,
        ranges,
    );
    Ok(Scan {
        adapter,
        config,
        refusals,
    })
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
    AdapterConfig::from_json(&json.to_string(), path).map_err(|e| {
        Error::Read(ReadError::ConfigField {
            path: path.to_path_buf(),
            key: "lora_parameters".into(),
            message: format!("has no PEFT equivalent: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
                Error::Read(ReadError::Unsupported { key, .. }) => format!("config {key}"),
                Error::Read(ReadError::UnsupportedTensor { key, .. }) => format!("tensor {key}"),
                Error::Read(ReadError::Dtype { key, dtype, .. }) => format!("dtype {key} {dtype}"),
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
        assert_eq!(s.config.fine_tune_type, "dora");
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
