//! The one safetensors scan every reader shares. A format is a [`KeyScheme`]: what each key is, which factors it
//! refuses before pairing, how two halves become a [`LoraPair`]. The scan does the rest the same way for all: it
//! validates the header through a short-lived map, records each admitted factor's byte range (tensors are read
//! later with positioned reads), refuses factors of an unsupported dtype, pairs the halves of each module, and keeps
//! every tensor that is not part of a pair in `others` so reports can list it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::{Error, KeyKind, LoraPair, OtherTensor, PairKind, SourceDtype};

/// One factor as the file stores it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// The safetensors key.
    pub key: String,
    /// Element type.
    pub dtype: SourceDtype,
    /// Shape as stored (numpy order).
    pub shape: Vec<usize>,
}

/// What a key scheme says one safetensors key is.
pub(crate) enum Key {
    /// A LoRA factor of `module`.
    Factor {
        /// The module path as saved.
        module: String,
        /// Linear or embedding.
        kind: PairKind,
        /// True for A, false for B.
        is_a: bool,
    },
    /// Not a factor: listed in `others` as `kind`, and refused with `refusal` (an `UnsupportedTensor` message) when
    /// there is one.
    Other {
        /// What it is.
        kind: KeyKind,
        /// Why conversion refuses it.
        refusal: Option<String>,
    },
    /// A copy of a wrapped base layer: listed and ignored.
    Ignored,
    /// Not a key this format writes.
    Unknown,
}

/// A factor refused before pairing.
pub(crate) struct Refused {
    /// Why.
    pub error: Error,
    /// Report it once per module (later factors of the module are only listed).
    pub once_per_module: bool,
}

/// A format's knowledge of its own keys.
pub(crate) trait KeyScheme {
    /// The two halves as the format names them, for "has lora_A but no lora_B".
    const HALVES: [&'static str; 2];
    /// How [`Error::UnknownTensors`] describes the format: (what its factors are, a key it writes, the format).
    const UNKNOWN: [&'static str; 3];

    /// What `key` (of shape `shape`) is.
    fn classify(&self, key: &str, shape: &[usize]) -> Key;

    /// A refusal for one factor before it is paired (the format cannot hold it, or its configuration does not
    /// adapt its module).
    fn admit(&self, _path: &Path, _module: &str, _factor: &Stored) -> Result<(), Refused> {
        Ok(())
    }

    /// Two halves of `module` as a pair in PEFT's orientation, or why they are not one.
    fn pair(
        &self,
        path: &Path,
        module: &str,
        kind: PairKind,
        a: &Stored,
        b: &Stored,
    ) -> Result<LoraPair, Error>;

    /// Checks over all pairs once they are formed.
    fn finish(&self, _path: &Path, _pairs: &[LoraPair], _refusals: &mut Vec<Error>) {}
}

/// What the scan found in one weights file.
pub(crate) struct Scanned {
    /// Pairs, sorted by module.
    pub pairs: Vec<LoraPair>,
    /// Base-layer copies, ignored.
    pub ignored: Vec<String>,
    /// Every tensor that is not part of a pair.
    pub others: Vec<OtherTensor>,
    /// Refusals, in file order.
    pub refusals: Vec<Error>,
    /// The open file.
    pub file: File,
    /// key → absolute byte range in the file, for every admitted factor and DoRA magnitude vector.
    pub ranges: BTreeMap<String, (u64, u64)>,
}

/// Scan `path` with `scheme`.
pub(crate) fn scan<S: KeyScheme>(path: &Path, scheme: &S) -> Result<Scanned, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // The map only lets the safetensors crate validate the header against the file's length; parsing touches the
    // header's pages alone, and the map is gone before any tensor is read.
    let mmap = map(&file).map_err(io)?;
    // `read_metadata` checks that the header's offsets cover the data exactly (no gaps, no trailing bytes).
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|source| Error::Safetensors {
            path: path.to_path_buf(),
            source,
        })?;
    drop(mmap);
    let data_start = (header_len + 8) as u64;

    let mut ranges = BTreeMap::new();
    let mut halves: BTreeMap<(String, PairKind), [Option<Stored>; 2]> = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut others = Vec::new();
    let mut refusals = Vec::new();
    // modules with a refusal of their own: their factors are listed, not paired
    let mut refused_modules = BTreeSet::new();
    let mut unknown = Vec::new();
    let mut tensors: Vec<(String, &safetensors::tensor::TensorInfo)> =
        metadata.tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, info) in tensors {
        let other = |kind: KeyKind| OtherTensor {
            key: key.clone(),
            dtype: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
            kind,
        };
        match scheme.classify(&key, &info.shape) {
            Key::Factor { module, kind, is_a } => {
                let factor_kind = KeyKind::Factor {
                    module: module.clone(),
                    kind,
                    is_a,
                };
                let dtype = match info.dtype {
                    Dtype::F32 => SourceDtype::F32,
                    Dtype::F16 => SourceDtype::F16,
                    Dtype::BF16 => SourceDtype::BF16,
                    other_dtype => {
                        refusals.push(Error::Dtype {
                            path: path.to_path_buf(),
                            key: key.clone(),
                            dtype: format!("{other_dtype:?}"),
                        });
                        others.push(other(factor_kind));
                        refused_modules.insert(module);
                        continue;
                    }
                };
                let stored = Stored {
                    key: key.clone(),
                    dtype,
                    shape: info.shape.clone(),
                };
                if let Err(refused) = scheme.admit(path, &module, &stored) {
                    others.push(other(factor_kind));
                    if refused_modules.insert(module) || !refused.once_per_module {
                        refusals.push(refused.error);
                    }
                    continue;
                }
                let (start, end) = info.data_offsets;
                ranges.insert(key, (data_start + start as u64, data_start + end as u64));
                halves.entry((module, kind)).or_default()[usize::from(!is_a)] = Some(stored);
            }
            Key::Other { kind, refusal } => {
                if kind == KeyKind::DoraMagnitude {
                    // `lora-convert merge` reads DoRA's magnitudes (src/merge/dora.rs)
                    let (start, end) = info.data_offsets;
                    ranges.insert(
                        key.clone(),
                        (data_start + start as u64, data_start + end as u64),
                    );
                }
                if let Some(message) = refusal {
                    refusals.push(Error::UnsupportedTensor {
                        path: path.to_path_buf(),
                        key: key.clone(),
                        message,
                    });
                }
                others.push(other(kind));
            }
            Key::Ignored => {
                others.push(other(KeyKind::BaseLayerCopy));
                ignored.push(key);
            }
            Key::Unknown => {
                others.push(other(KeyKind::Unknown));
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
        let [what, like, format] = S::UNKNOWN;
        refusals.push(Error::UnknownTensors {
            path: path.to_path_buf(),
            count: unknown.len(),
            examples,
            what,
            like,
            format,
        });
    }

    let mut pairs = Vec::with_capacity(halves.len());
    for ((module, kind), [a, b]) in halves {
        // a refused pair's factors are still listed (inspect, manifest), as tensors outside any pair
        let unpaired = |t: &Stored, is_a: bool| OtherTensor {
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
                    let [name_a, name_b] = S::HALVES;
                    refusals.push(Error::HalfPair {
                        path: path.to_path_buf(),
                        module: module.clone(),
                        present: if a.is_some() { name_a } else { name_b },
                        missing: if a.is_some() { name_b } else { name_a },
                    });
                }
                others.extend(a.map(|t| unpaired(&t, true)));
                others.extend(b.map(|t| unpaired(&t, false)));
                continue;
            }
        };
        match scheme.pair(path, &module, kind, &a, &b) {
            Ok(pair) => pairs.push(pair),
            Err(e) => {
                refusals.push(e);
                others.push(unpaired(&a, true));
                others.push(unpaired(&b, false));
            }
        }
    }
    scheme.finish(path, &pairs, &mut refusals);
    Ok(Scanned {
        pairs,
        ignored,
        others,
        refusals,
        file,
        ranges,
    })
}

#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: memmap2 requires that the file is not truncated while mapped; the map lives only while `scan` parses
    // the header (reading header bytes alone), as in every safetensors reader.
    unsafe { Mmap::map(file) }
}

/// The names in `dir`, sorted, for "found: …" in a missing-file message.
pub(crate) fn listing(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// Fail unless `dir` is a directory.
pub(crate) fn require_dir(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        })
    }
}

/// The adapter directory `dir` and its configuration file `config` in it: an error naming what the directory holds
/// (and `hint`, where the trainer writes it) when either is missing.
pub(crate) fn require_config(
    dir: &Path,
    config: &'static str,
    hint: &str,
) -> Result<PathBuf, Error> {
    require_dir(dir)?;
    let path = dir.join(config);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            file: config,
            found: listing(dir),
            hint: hint.into(),
        })
    }
}

/// Read a text file (a configuration), naming it on failure.
pub(crate) fn read_text(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: PathBuf::from(path),
        source,
    })
}
