//! The training side: a Hugging Face PEFT LoRA adapter directory (`adapter_config.json` +
//! `adapter_model.safetensors`) read into typed pairs with PEFT's exact per-module scaling. The safetensors file is
//! validated at open (its header, through a short-lived memory map); tensor data is read with positioned reads
//! into the caller's buffers when the converter asks for one tensor, so memory use does not grow with the file.

pub mod config;
pub mod scaling;
pub mod tensors;
pub mod trainer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

pub use config::AdapterConfig;
pub use scaling::Scaling;
pub use tensors::{KeyKind, LoraPair, Packing, PairKind, SourceDtype, TensorRef};

/// The adapter weights file PEFT writes.
pub const SAFETENSORS_FILE: &str = "adapter_model.safetensors";
/// The adapter configuration file PEFT writes.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The pickle file older PEFT versions (or `safe_serialization=False`) write.
pub const PICKLE_FILE: &str = "adapter_model.bin";

/// Why an adapter could not be read, or what it uses that a GGUF LoRA cannot express.
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
        hint: &'static str,
    },
    /// Only a pickle checkpoint is present.
    #[error(
        "`{path}` is a pickle checkpoint, which can run arbitrary code when loaded, so lora-convert never reads it; \
         re-save the adapter as safetensors: `PeftModel.from_pretrained(base, DIR).save_pretrained(OUT, \
         safe_serialization=True)`, or `safetensors.torch.save_file(torch.load(\"{path}\", weights_only=True), \
         \"adapter_model.safetensors\")` on a machine you trust"
    )]
    Pickle {
        /// The pickle file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("reading `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid JSON.
    #[error("`{path}`:{line}:{column}: invalid JSON: {message}")]
    ConfigJson {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A configuration field is missing or has the wrong type.
    #[error("`{path}`: `{key}`: {message}")]
    ConfigField {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration asks for something a GGUF LoRA cannot express.
    #[error("`{path}`: `{key}` {message}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why, and what to do.
        message: String,
    },
    /// The safetensors file is truncated or corrupt.
    #[error(
        "`{path}` is not a valid safetensors file ({source}); the file is truncated or corrupt — copy it again"
    )]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// Tensors in the file that a GGUF LoRA cannot carry.
    #[error("`{path}`: tensor `{key}` {message}")]
    UnsupportedTensor {
        /// The file.
        path: PathBuf,
        /// The first such key.
        key: String,
        /// Why, and what to do.
        message: String,
    },
    /// Keys that are not LoRA factors at all.
    #[error(
        "`{path}`: {count} tensor(s) are not LoRA factors, e.g. {examples}; expected keys like \
         `base_model.model.<module>.lora_A.weight` — is this a PEFT LoRA adapter?"
    )]
    UnknownTensors {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
        /// A few of them.
        examples: String,
    },
    /// A factor with an unsupported element type.
    #[error("`{path}`: tensor `{key}` has dtype {dtype}; LoRA factors must be F32, F16 or BF16")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The dtype found.
        dtype: String,
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
    /// Factor shapes that do not form a LoRA pair.
    #[error(
        "`{path}`: module `{module}`: {message} (A `{a_key}` {a_shape:?}, B `{b_key}` {b_shape:?})"
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// The module.
        module: String,
        /// What is wrong.
        message: String,
        /// A's key.
        a_key: String,
        /// A's shape.
        a_shape: Vec<usize>,
        /// B's key.
        b_key: String,
        /// B's shape.
        b_shape: Vec<usize>,
    },
    /// A tensor holds NaN or infinity.
    #[error(
        "`{path}`: tensor `{key}` contains {what} at element {index} — the training diverged or the export is \
         corrupt; export a good checkpoint"
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// "NaN" or "infinity".
        what: &'static str,
        /// Flat element index.
        index: usize,
    },
}

/// The trainer that wrote an adapter directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// Hugging Face PEFT (`adapter_model.safetensors`).
    Peft,
    /// mlx-lm's `mlx_lm lora` (`adapters.safetensors`, read by `crate::mlx`).
    MlxLm,
}

impl Framework {
    /// The name users know it by.
    pub fn name(self) -> &'static str {
        match self {
            Framework::Peft => "PEFT",
            Framework::MlxLm => "mlx-lm",
        }
    }

    /// The `adapter_config.json` key that names the base model.
    pub fn base_model_key(self) -> &'static str {
        match self {
            Framework::Peft => "base_model_name_or_path",
            Framework::MlxLm => "model",
        }
    }
}

/// A tensor of the file that is not part of a LoRA pair: skipped (a base-layer copy) or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherTensor {
    /// The safetensors key.
    pub key: String,
    /// The safetensors dtype, as named there (`F32`, `BF16`, `I64` …).
    pub dtype: String,
    /// Shape (numpy order).
    pub shape: Vec<usize>,
    /// What it is.
    pub kind: KeyKind,
}

/// An opened adapter: configuration, pairs, and the open weights file. Every trainer's adapter is read into this
/// one shape (PEFT orientation, per-pair scaling), so planning, writing and verifying never ask who wrote it.
#[derive(Debug)]
pub struct Adapter {
    /// The adapter directory.
    pub dir: PathBuf,
    /// Who wrote it.
    pub framework: Framework,
    /// `adapter_config.json`, or for another trainer the PEFT configuration its adapter is equivalent to.
    pub config: AdapterConfig,
    /// LoRA pairs, sorted by module path.
    pub pairs: Vec<LoraPair>,
    /// Copies of wrapped base layers found in the file and ignored (PEFT saves them next to embedding LoRAs).
    pub ignored: Vec<String>,
    /// Every tensor that is not a factor of a pair (base-layer copies, full weights, DoRA vectors …), by key.
    pub others: Vec<OtherTensor>,
    /// Traces of the trainer that wrote the directory.
    pub trainers: Vec<trainer::Hint>,
    path: PathBuf,
    file: File,
    /// key → absolute byte range in the file.
    ranges: BTreeMap<String, (u64, u64)>,
}

/// Open and validate a PEFT adapter directory; anything a GGUF LoRA cannot express is an error (the first such).
pub fn open(dir: &Path) -> Result<Adapter, Error> {
    let scanned = scan(dir)?;
    unless_refused(scanned.adapter, scanned.refusals)
}

/// `value`, or the first of `refusals` (the readers collect every refusal for `inspect`; conversion stops at one).
pub(crate) fn unless_refused<T, E>(value: T, refusals: Vec<E>) -> Result<T, E> {
    match refusals.into_iter().next() {
        Some(refusal) => Err(refusal),
        None => Ok(value),
    }
}

/// An adapter read as far as it can be, with every refusal instead of the first (`lora-convert inspect` and the
/// manifest list them all). Pairs with a problem of their own (a missing half, bad shapes) are left out of
/// `adapter.pairs`; their refusal says why.
#[derive(Debug)]
pub struct Scan {
    /// The adapter, without the refused pairs.
    pub adapter: Adapter,
    /// Everything that stops conversion, in the order found (configuration first, then tensors by key).
    pub refusals: Vec<Error>,
}

/// Read an adapter directory, collecting refusals. Errors only when there is nothing to read: missing or pickle
/// files, invalid JSON, a malformed configuration, a corrupt safetensors file.
pub fn scan(dir: &Path) -> Result<Scan, Error> {
    let config_path = dir.join(CONFIG_FILE);
    let st_path = dir.join(SAFETENSORS_FILE);
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        if names.is_empty() {
            "nothing".to_string()
        } else {
            names.join(", ")
        }
    };
    if !dir.is_dir() {
        return Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    if !config_path.is_file() {
        return Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            file: CONFIG_FILE,
            found: listing(),
            hint: "point lora-convert at the directory PEFT's save_pretrained wrote",
        });
    }
    if !st_path.is_file() {
        if dir.join(PICKLE_FILE).is_file() {
            return Err(Error::Pickle {
                path: dir.join(PICKLE_FILE),
            });
        }
        return Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            file: SAFETENSORS_FILE,
            found: listing(),
            hint: "point lora-convert at the directory PEFT's save_pretrained wrote",
        });
    }
    let text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
        path: config_path.clone(),
        source,
    })?;
    let (config, mut refusals) = AdapterConfig::read(&text, &config_path)?;
    let trainers = trainer::detect(dir, &config.keys, config.base_model_name_or_path.as_deref());
    if let Some(converted) = trainer::pissa_sibling(dir) {
        refusals.insert(
            0,
            Error::Unsupported {
                path: config_path.clone(),
                key: "init_lora_weights".into(),
                message: format!(
                    "says `true`, but `{}` is LLaMA-Factory's {} PiSSA adapter: its factors only work on the base \
                     that PiSSA modified at initialisation; convert `{}` (the same adapter converted to a plain \
                     LoRA of the original base) instead",
                    dir.display(),
                    if dir.ends_with("pissa_init") {
                        "initial"
                    } else {
                        "trained (backup)"
                    },
                    converted.display()
                ),
            },
        );
    }
    let converted_here = dir.join("pissa_converted");
    if converted_here.join(CONFIG_FILE).is_file() {
        for r in &mut refusals {
            if let Error::Unsupported { key, message, .. } = r
                && key == "init_lora_weights"
            {
                *message = format!(
                    "{message}; LLaMA-Factory already did: convert `{}`",
                    converted_here.display()
                );
            }
        }
    }

    let file = File::open(&st_path).map_err(|source| Error::Io {
        path: st_path.clone(),
        source,
    })?;
    // The map only lets the safetensors crate validate the header against the file's length; parsing touches the
    // header's pages alone, and the map is gone before any tensor is read.
    let mmap = map(&file).map_err(|source| Error::Io {
        path: st_path.clone(),
        source,
    })?;
    let st_err = |source| Error::Safetensors {
        path: st_path.clone(),
        source,
    };
    // `read_metadata` checks that the header's offsets cover the data exactly (no gaps, no trailing bytes).
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(st_err)?;
    drop(mmap);
    let data_start = (header_len + 8) as u64;

    let mut ranges = BTreeMap::new();
    let mut halves: BTreeMap<(String, PairKind), (Option<TensorRef>, Option<TensorRef>)> =
        BTreeMap::new();
    let mut ignored = Vec::new();
    let mut others = Vec::new();
    // modules with a refusal of their own (a factor's dtype): their other half is listed, not paired
    let mut refused_modules = std::collections::BTreeSet::new();
    let mut unknown = Vec::new();
    let mut tensors: Vec<(String, &safetensors::tensor::TensorInfo)> =
        metadata.tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, info) in tensors {
        let kind = tensors::classify(&key);
        let mut other = |kind: KeyKind| {
            others.push(OtherTensor {
                key: key.clone(),
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                kind,
            })
        };
        let unsupported = |message: String| Error::UnsupportedTensor {
            path: st_path.clone(),
            key: key.clone(),
            message,
        };
        match kind {
            KeyKind::Factor { module, kind, is_a } => {
                let dtype = match info.dtype {
                    Dtype::F32 => SourceDtype::F32,
                    Dtype::F16 => SourceDtype::F16,
                    Dtype::BF16 => SourceDtype::BF16,
                    other_dtype => {
                        refusals.push(Error::Dtype {
                            path: st_path.clone(),
                            key: key.clone(),
                            dtype: format!("{other_dtype:?}"),
                        });
                        other(KeyKind::Factor {
                            module: module.clone(),
                            kind,
                            is_a,
                        });
                        refused_modules.insert(module);
                        continue;
                    }
                };
                let (start, end) = info.data_offsets;
                ranges.insert(
                    key.clone(),
                    (data_start + start as u64, data_start + end as u64),
                );
                let t = TensorRef {
                    key: key.clone(),
                    dtype,
                    shape: info.shape.clone(),
                    transposed: false,
                };
                let slot = halves.entry((module, kind)).or_default();
                if is_a {
                    slot.0 = Some(t)
                } else {
                    slot.1 = Some(t)
                }
            }
            KeyKind::BaseLayerCopy => {
                other(KeyKind::BaseLayerCopy);
                ignored.push(key);
            }
            KeyKind::DoraMagnitude => {
                refusals.push(unsupported(
                    "is a DoRA magnitude vector: DoRA cannot be expressed as a GGUF LoRA — merge the adapter into \
                     the base model instead"
                        .into(),
                ));
                other(KeyKind::DoraMagnitude);
            }
            KeyKind::LoraBias => {
                refusals.push(unsupported(
                    "is a LoRA bias: llama.cpp LoRA has no bias term — retrain with lora_bias=False, or merge".into(),
                ));
                other(KeyKind::LoraBias);
            }
            KeyKind::TrainableTokens => {
                refusals.push(unsupported(
                    "is a trainable-token delta: llama.cpp cannot apply it — merge instead".into(),
                ));
                other(KeyKind::TrainableTokens);
            }
            KeyKind::FullWeight => {
                refusals.push(unsupported(format!(
                    "is a full weight {:?}, not a LoRA factor ({}): llama.cpp cannot swap full tensors at run time \
                     — merge the adapter into the base and convert the merged model, or retrain without \
                     modules_to_save / added tokens",
                    info.shape,
                    if tensors::is_vocabulary_key(&key) {
                        "modules_to_save or a resized embedding — trainers save these when tokens are added"
                    } else {
                        "modules_to_save"
                    }
                )));
                other(KeyKind::FullWeight);
            }
            KeyKind::Unknown => {
                other(KeyKind::Unknown);
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

    let mut pairs = Vec::with_capacity(halves.len());
    for ((module, kind), (a, b)) in halves {
        // a refused pair's factors are still listed (inspect, manifest), as tensors outside any pair
        let unpaired = |t: &TensorRef, is_a: bool| OtherTensor {
            key: t.key.clone(),
            dtype: format!("{:?}", t.dtype),
            shape: t.shape.clone(),
            kind: KeyKind::Factor {
                module: module.clone(),
                kind,
                is_a,
            },
        };
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) if !refused_modules.contains(&module) => (a, b),
            (a, b) => {
                if !refused_modules.contains(&module) {
                    refusals.push(Error::HalfPair {
                        path: st_path.clone(),
                        module: module.clone(),
                        present: if a.is_some() { "lora_A" } else { "lora_B" },
                        missing: if a.is_some() { "lora_B" } else { "lora_A" },
                    });
                }
                others.extend(a.map(|t| unpaired(&t, true)));
                others.extend(b.map(|t| unpaired(&t, false)));
                continue;
            }
        };
        let shape_err = |message: String| Error::Shape {
            path: st_path.clone(),
            module: module.clone(),
            message,
            a_key: a.key.clone(),
            a_shape: a.shape.clone(),
            b_key: b.key.clone(),
            b_shape: b.shape.clone(),
        };
        let mut refuse = |e: Error| {
            refusals.push(e);
            others.push(unpaired(&a, true));
            others.push(unpaired(&b, false));
        };
        let (&[ra, _], &[_, rb]) = (a.shape.as_slice(), b.shape.as_slice()) else {
            refuse(shape_err("both factors must be 2-D".into()));
            continue;
        };
        if ra != rb {
            refuse(shape_err(format!("A has rank {ra} but B has rank {rb}")));
            continue;
        }
        if ra == 0 || a.shape.contains(&0) || b.shape.contains(&0) {
            refuse(shape_err("a factor is empty".into()));
            continue;
        }
        let saved_as = module.clone();
        let module = tensors::strip_base_layers(&saved_as);
        // A ParamWrapper pair's rank and parameter are decided later, from the base's shapes
        // (convert::params): its A has E·r rows for a 3-D expert parameter.
        let candidates = if kind == PairKind::Linear {
            config.targeted_parameters(&module)
        } else {
            Vec::new()
        };
        let scaling = config.scaling_for(&module);
        if candidates.is_empty() && scaling.rank as usize != ra {
            refuse(shape_err(format!(
                "the tensors have rank {ra} but adapter_config.json gives r = {} for this module (r / rank_pattern)",
                scaling.rank
            )));
            continue;
        }
        if candidates.is_empty() && module != saved_as {
            refuse(shape_err(
                "is saved under a `base_layer` path, which PEFT only writes for target_parameters, but \
                 adapter_config.json's target_parameters names no parameter of this module"
                    .into(),
            ));
            continue;
        }
        pairs.push(LoraPair {
            module,
            saved_as,
            parameter: None,
            candidates,
            packing: Packing::Single,
            kind,
            a,
            b,
            rank: ra,
            scaling,
        });
    }
    let adapter = Adapter {
        dir: dir.to_path_buf(),
        framework: Framework::Peft,
        config,
        pairs,
        ignored,
        others,
        trainers,
        path: st_path,
        file,
        ranges,
    };
    Ok(Scan { adapter, refusals })
}

/// Values per work item of [`Adapter::check_finite`].
const FINITE_CHUNK_VALUES: usize = 1 << 16;

/// The index of the first NaN or infinite value in `bytes` (little-endian `dtype` values), and which it is;
/// chunks are scanned in parallel, the first bad chunk in order then serially.
fn first_non_finite(dtype: SourceDtype, bytes: &[u8]) -> Option<(usize, &'static str)> {
    let size = dtype.size();
    bytes
        .par_chunks(FINITE_CHUNK_VALUES * size)
        .enumerate()
        .find_first(|(_, c)| !all_finite(dtype, c))
        .and_then(|(i, c)| {
            let (j, value) = c
                .chunks_exact(size)
                .enumerate()
                .find(|(_, v)| !all_finite(dtype, v))?;
            let what = if is_nan(dtype, value) {
                "NaN"
            } else {
                "infinity"
            };
            Some((i * FINITE_CHUNK_VALUES + j, what))
        })
}

/// Whether every value in `bytes` (little-endian `dtype` values) is finite. A value is NaN or infinite exactly
/// when its exponent bits are all ones, that is when adding one exponent step to them carries into the sign bit;
/// OR-ing those sums is three integer operations per value that vectorize on any x86-64 (an unsigned max needs
/// SSE4.1, which the baseline target lacks).
fn all_finite(dtype: SourceDtype, bytes: &[u8]) -> bool {
    match dtype {
        SourceDtype::F32 => {
            let carries = bytes.as_chunks::<4>().0.iter().fold(0u32, |acc, b| {
                acc | ((u32::from_le_bytes(*b) & 0x7f80_0000) + 0x0080_0000)
            });
            carries & 0x8000_0000 == 0
        }
        SourceDtype::F16 | SourceDtype::BF16 => {
            let (exponent, step) = if dtype == SourceDtype::F16 {
                (0x7c00u16, 0x0400u16)
            } else {
                (0x7f80, 0x0080)
            };
            let carries = bytes.as_chunks::<2>().0.iter().fold(0u16, |acc, b| {
                acc | ((u16::from_le_bytes(*b) & exponent) + step)
            });
            carries & 0x8000 == 0
        }
    }
}

fn is_nan(dtype: SourceDtype, value: &[u8]) -> bool {
    match (dtype, value) {
        (SourceDtype::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]).is_nan(),
        (SourceDtype::F16, &[a, b]) => half::f16::from_le_bytes([a, b]).is_nan(),
        (SourceDtype::BF16, &[a, b]) => half::bf16::from_le_bytes([a, b]).is_nan(),
        _ => false,
    }
}

/// Fill `buf` from `file` at `offset` (a positioned read: no shared cursor, so threads may read concurrently).
#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[allow(unsafe_code)]
pub(crate) fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: memmap2 requires that the file is not truncated while mapped; the map lives only while `open` parses
    // the header (reading header bytes alone), as in every safetensors reader.
    unsafe { Mmap::map(file) }
}

impl Adapter {
    /// An adapter read by another trainer's reader (`crate::mlx`), with `others` the tensors that are not part of
    /// a pair and `ranges` mapping each paired key to its absolute byte range in `file` (already validated).
    #[allow(clippy::too_many_arguments)] // one caller per reader; the fields are the adapter's own
    pub(crate) fn from_parts(
        dir: PathBuf,
        framework: Framework,
        config: AdapterConfig,
        pairs: Vec<LoraPair>,
        others: Vec<OtherTensor>,
        path: PathBuf,
        file: File,
        ranges: BTreeMap<String, (u64, u64)>,
    ) -> Adapter {
        Adapter {
            dir,
            framework,
            config,
            pairs,
            ignored: Vec::new(),
            others,
            trainers: Vec::new(),
            path,
            file,
            ranges,
        }
    }

    /// The weights file.
    pub fn safetensors_path(&self) -> &Path {
        &self.path
    }

    /// Raw little-endian bytes of a tensor, read into the front of `buf` and returned. `buf` grows when it is too
    /// short and never shrinks, so a buffer reused across tensors is not filled with zeros again each time.
    pub fn read_tensor_bytes<'b>(
        &self,
        t: &TensorRef,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], Error> {
        let &(start, end) = self.ranges.get(&t.key).ok_or_else(|| Error::Io {
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no tensor `{}` in this file", t.key),
            ),
        })?;
        let len = usize::try_from(end - start).map_err(|_| Error::Io {
            path: self.path.clone(),
            source: std::io::Error::other(format!("tensor `{}` does not fit in memory", t.key)),
        })?;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let bytes = buf.get_mut(..len).unwrap_or_default();
        read_at(&self.file, bytes, start).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(bytes)
    }

    /// Fail if `bytes` (the data of `t`) hold NaN or infinity, naming the tensor and the first such element.
    /// Runs on all cores of the current rayon pool.
    pub fn check_finite(&self, t: &TensorRef, bytes: &[u8]) -> Result<(), Error> {
        match first_non_finite(t.dtype, bytes) {
            None => Ok(()),
            Some((index, what)) => Err(Error::NonFinite {
                path: self.path.clone(),
                key: t.key.clone(),
                what,
                index,
            }),
        }
    }

    /// A tensor widened exactly to f32 (into `out`, cleared first), in PEFT's orientation (a tensor stored
    /// transposed is transposed back); NaN or infinity is an error naming the tensor and its index in the file.
    pub fn tensor_f32(&self, t: &TensorRef, out: &mut Vec<f32>) -> Result<(), Error> {
        let mut buf = Vec::new();
        let bytes = self.read_tensor_bytes(t, &mut buf)?;
        self.check_finite(t, bytes)?;
        out.clear();
        out.reserve(bytes.len() / t.dtype.size());
        match t.dtype {
            SourceDtype::F32 => {
                out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
            SourceDtype::F16 => {
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
                );
            }
            SourceDtype::BF16 => {
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
                );
            }
        }
        if let (true, &[rows, cols]) = (t.transposed, t.shape.as_slice()) {
            // Stored (cols, rows) row-major; PEFT's (rows, cols) element [i][j] is stored [j][i].
            let stored = std::mem::take(out);
            out.extend((0..rows * cols).map(|k| stored[(k % cols) * rows + k / cols]));
        }
        Ok(())
    }

    /// The one dtype of every factor, or None if they differ.
    pub fn dtype(&self) -> Option<SourceDtype> {
        let mut dtypes = self.pairs.iter().flat_map(|p| [p.a.dtype, p.b.dtype]);
        let first = dtypes.next()?;
        dtypes.all(|d| d == first).then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(dtype: SourceDtype, values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&x| match dtype {
                SourceDtype::F32 => x.to_le_bytes().to_vec(),
                SourceDtype::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                SourceDtype::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
            })
            .collect()
    }

    #[test]
    fn the_first_non_finite_value_is_found_in_every_dtype() {
        for dtype in [SourceDtype::F32, SourceDtype::F16, SourceDtype::BF16] {
            // The largest finite values, subnormals and zeros are all finite.
            let max = match dtype {
                SourceDtype::F32 => f32::MAX,
                SourceDtype::F16 => half::f16::MAX.to_f32(),
                SourceDtype::BF16 => half::bf16::MAX.to_f32(),
            };
            let mut values = vec![1.0f32; 3 * FINITE_CHUNK_VALUES + 5];
            values[..6].copy_from_slice(&[max, -max, 0.0, -0.0, 1e-40, -6e-8]);
            assert_eq!(
                first_non_finite(dtype, &bytes(dtype, &values)),
                None,
                "{dtype:?}"
            );
            // Several bad values in several chunks: the first in order wins, whichever chunk is scanned first.
            values[2 * FINITE_CHUNK_VALUES + 1] = f32::NAN;
            values[FINITE_CHUNK_VALUES + 7] = f32::NEG_INFINITY;
            values[3 * FINITE_CHUNK_VALUES] = f32::INFINITY;
            assert_eq!(
                first_non_finite(dtype, &bytes(dtype, &values)),
                Some((FINITE_CHUNK_VALUES + 7, "infinity")),
                "{dtype:?}"
            );
            values[9] = -f32::NAN;
            assert_eq!(
                first_non_finite(dtype, &bytes(dtype, &values)),
                Some((9, "NaN")),
                "{dtype:?}"
            );
        }
        // A NaN whose payload sits only in the low mantissa bits (no quiet bit) is still NaN.
        let signalling = f32::from_bits(0x7f80_0001).to_le_bytes();
        assert_eq!(
            first_non_finite(SourceDtype::F32, &signalling),
            Some((0, "NaN"))
        );
        assert_eq!(
            first_non_finite(SourceDtype::BF16, &0x7f81u16.to_le_bytes()),
            Some((0, "NaN"))
        );
        assert_eq!(
            first_non_finite(SourceDtype::F16, &0xfc00u16.to_le_bytes()),
            Some((0, "infinity"))
        );
    }

    #[test]
    fn scan_lists_the_factors_of_refused_pairs_and_reports_each_module_once() {
        use safetensors::tensor::TensorView;
        let dir = tempfile::tempdir().unwrap();
        let f32s: Vec<u8> = (0..8).flat_map(|x| (x as f32).to_le_bytes()).collect();
        let i32s: Vec<u8> = (0..8).flat_map(|x: i32| x.to_le_bytes()).collect();
        let m = |module: &str, half: &str| {
            format!("base_model.model.model.layers.0.self_attn.{module}.lora_{half}.weight")
        };
        let views = vec![
            // rank 2 of r = 2, but B is 3-D
            (
                m("q_proj", "A"),
                TensorView::new(Dtype::F32, vec![2, 4], &f32s).unwrap(),
            ),
            (
                m("q_proj", "B"),
                TensorView::new(Dtype::F32, vec![2, 2, 2], &f32s).unwrap(),
            ),
            // an I32 A: refused once, its B listed
            (
                m("v_proj", "A"),
                TensorView::new(Dtype::I32, vec![2, 4], &i32s).unwrap(),
            ),
            (
                m("v_proj", "B"),
                TensorView::new(Dtype::F32, vec![4, 2], &f32s).unwrap(),
            ),
        ];
        std::fs::write(
            dir.path().join(SAFETENSORS_FILE),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj","v_proj"]}"#,
        )
        .unwrap();
        let s = scan(dir.path()).unwrap();
        let found: Vec<String> = s
            .refusals
            .iter()
            .map(|e| match e {
                Error::Dtype { key, .. } => format!("dtype {key}"),
                Error::Shape {
                    module, message, ..
                } => format!("shape {module}: {message}"),
                other => panic!("unexpected {other}"),
            })
            .collect();
        assert_eq!(
            found,
            [
                format!("dtype {}", m("v_proj", "A")),
                "shape model.layers.0.self_attn.q_proj: both factors must be 2-D".to_string(),
            ]
        );
        assert!(s.adapter.pairs.is_empty());
        let mut others: Vec<&str> = s.adapter.others.iter().map(|t| t.key.as_str()).collect();
        others.sort_unstable();
        assert_eq!(
            others,
            [
                m("q_proj", "A"),
                m("q_proj", "B"),
                m("v_proj", "A"),
                m("v_proj", "B")
            ]
        );
    }
}
