//! `--imatrix FILE`: llama.cpp's importance matrix, read and normalised exactly as `llama-quantize` does
//! (llama.cpp `common/imatrix-loader.cpp` `common_imatrix_load` and `tools/quantize/quantize.cpp` `load_imatrix`),
//! and handed to ggml's quantizer for each merged tensor as `llama_tensor_quantize_impl` does (one slice of
//! ne0 values per expert).
//!
//! - GGUF (`llama-imatrix`'s default): tensors `<name>.in_sum2` and `<name>.counts` (F32, one count per expert),
//!   and the keys `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size` (llama-quantize refuses a file
//!   without them). Weight j of expert e = in_sum2[e·ne0 + j] / round(counts[e]), or 1 where the count is 0.
//! - Legacy `.dat`: i32 entry count; per entry i32 name length, the name, i32 ncall, i32 value count, f32 values;
//!   optional trailing chunk count and dataset name. Weight = value / ncall (the value itself when ncall ≤ 0).
//!
//! For each tensor: an entry of ne0 · n_expert values is used; a tensor without an entry is quantized without one
//! (llama-quantize does the same); an entry of another size is refused (llama-quantize aborts too, except for the
//! token embedding, which it quantizes without one — as here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::MergeError;
use crate::gguf::{self, GgmlType, GgufFile};

/// Importance weights by tensor name, normalised.
#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    /// The file.
    pub path: PathBuf,
    /// name → weights (ne0 per expert, experts one after another).
    pub entries: BTreeMap<String, Vec<f32>>,
}

fn bad(path: &Path, message: impl Into<String>) -> MergeError {
    MergeError::Imatrix {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Read an importance matrix file (GGUF or legacy `.dat`, told apart by the GGUF magic).
pub fn load(path: &Path) -> Result<Imatrix, MergeError> {
    let bytes = std::fs::read(path).map_err(|source| gguf::Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let entries = if bytes.starts_with(&gguf::MAGIC) {
        from_gguf(path)?
    } else {
        from_legacy(path, &bytes)?
    };
    if entries.is_empty() {
        return Err(bad(path, "it holds no importance matrix entries"));
    }
    for (name, values) in &entries {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(
                path,
                format!(
                    "entry `{name}` has a non-finite value at {i} (llama-quantize refuses it too)"
                ),
            ));
        }
    }
    Ok(Imatrix {
        path: path.to_path_buf(),
        entries,
    })
}

fn from_gguf(path: &Path) -> Result<BTreeMap<String, Vec<f32>>, MergeError> {
    let file = GgufFile::open(path)?;
    for key in [
        "imatrix.datasets",
        "imatrix.chunk_count",
        "imatrix.chunk_size",
    ] {
        if file.get(key).is_none() {
            return Err(bad(
                path,
                format!(
                    "it lacks `{key}` (llama-quantize refuses an imatrix GGUF without its metadata)"
                ),
            ));
        }
    }
    let f32s = |name: &str| -> Result<Vec<f32>, MergeError> {
        let t = file.tensor(name).ok_or_else(|| {
            bad(
                path,
                format!("`{name}` is missing (sums and counts come in pairs)"),
            )
        })?;
        if t.ggml_type != GgmlType::F32 {
            return Err(bad(path, format!("`{name}` is {}, not F32", t.ggml_type)));
        }
        Ok(file
            .read_tensor_bytes(name)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let mut out = BTreeMap::new();
    for t in &file.tensors {
        let Some(name) = t
            .name
            .strip_suffix(".in_sum2")
            .or_else(|| t.name.strip_suffix(".counts"))
        else {
            continue;
        };
        if out.contains_key(name) {
            continue;
        }
        let sums = f32s(&format!("{name}.in_sum2"))?;
        let counts = f32s(&format!("{name}.counts"))?;
        if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
            return Err(bad(
                path,
                format!(
                    "`{name}`: {} sums do not split over {} counts",
                    sums.len(),
                    counts.len()
                ),
            ));
        }
        let ne0 = sums.len() / counts.len();
        let mut e = vec![0f32; sums.len()];
        for (j, &c) in counts.iter().enumerate() {
            // std::lround to int64, then back to float: the count llama-quantize divides by
            let count = c.round() as i64 as f32;
            for i in 0..ne0 {
                e[j * ne0 + i] = if count > 0.0 {
                    sums[j * ne0 + i] / count
                } else {
                    1.0
                };
            }
        }
        out.insert(name.to_string(), e);
    }
    Ok(out)
}

fn from_legacy(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Vec<f32>>, MergeError> {
    let mut pos = 0usize;
    let mut take = |n: usize, what: &str| -> Result<&[u8], MergeError> {
        let s = bytes
            .get(pos..pos + n)
            .ok_or_else(|| bad(path, format!("truncated reading {what} at byte {pos}")))?;
        pos += n;
        Ok(s)
    };
    let i32_at = |s: &[u8]| i32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let n_entries = i32_at(take(4, "the entry count")?);
    if n_entries < 1 {
        return Err(bad(
            path,
            "neither an imatrix GGUF nor a legacy .dat with entries",
        ));
    }
    let mut out = BTreeMap::new();
    for i in 0..n_entries {
        let len = i32_at(take(4, "a name length")?);
        let len = usize::try_from(len)
            .map_err(|_| bad(path, format!("entry {i}: negative name length")))?;
        let name = String::from_utf8_lossy(take(len, "a name")?).into_owned();
        let ncall = i32_at(take(4, "a call count")?);
        let nval = i32_at(take(4, "a value count")?);
        let nval = usize::try_from(nval)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad(path, format!("entry `{name}`: {nval} values")))?;
        let raw = take(nval * 4, "values")?;
        let values = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let e: Vec<f32> = if ncall > 0 {
            values.map(|v| v / ncall as f32).collect()
        } else {
            values.collect()
        };
        out.insert(name, e);
    }
    Ok(out)
}

impl Imatrix {
    /// The weights for base tensor `name` of ne `dims`, as llama-quantize picks them: its entry if that has ne0 ·
    /// n_expert values; none without an entry, or for the token embedding with one of another size.
    pub fn for_tensor(&self, name: &str, dims: &[u64]) -> Result<Option<&[f32]>, MergeError> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        let want = dims.first().copied().unwrap_or(1) * dims.get(2).copied().unwrap_or(1);
        if e.len() as u64 == want {
            Ok(Some(e))
        } else if name == "token_embd.weight" {
            Ok(None)
        } else {
            Err(bad(
                &self.path,
                format!(
                    "entry `{name}` has {} values, but the tensor needs {want} (ne0 × experts): an importance matrix \
                     of another model?",
                    e.len()
                ),
            ))
        }
    }
}
