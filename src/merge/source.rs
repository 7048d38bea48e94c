//! `--source HIGH.gguf`: merge into the float GGUF (F32, F16 or BF16) of the same model and quantize each merged
//! tensor once, to the type the quantized BASE has for it (BASE is the layout template: its metadata, tensor order
//! and every untouched tensor are copied byte for byte). Requantizing the base's W + ΔW rounds W twice; from the
//! source, Q(W_float + ΔW) is what `llama-quantize` would have written had the adapter been merged before
//! quantizing (without the importance matrix the base may have been quantized with).

use std::fs::File;
use std::path::Path;

use super::error::MergeError;
use crate::gguf::{GgmlType, GgufFile, keys};

/// The opened source model.
pub struct Source {
    /// Its GGUF.
    pub file: GgufFile,
    /// Its data, for positioned reads.
    pub handle: File,
}

/// Open `path` as the source of `base`'s merged tensors `targets`: a model of the same architecture holding every
/// target with the base's shape, in a float type. Every problem is refused before anything is written.
pub fn open<'a>(
    path: &Path,
    base: &GgufFile,
    targets: impl IntoIterator<Item = &'a str>,
) -> Result<Source, MergeError> {
    let refuse = |message: String| MergeError::Source {
        path: path.to_path_buf(),
        message,
    };
    let file = GgufFile::open(path)?;
    if let Some(t) = file.get_str(keys::GENERAL_TYPE)
        && t != "model"
    {
        return Err(refuse(format!(
            "general.type is {t:?}; the source must be the float model GGUF"
        )));
    }
    if file.architecture() != base.architecture() {
        return Err(refuse(format!(
            "its architecture is {:?} and the base's {:?}: not the same model",
            file.architecture().unwrap_or("?"),
            base.architecture().unwrap_or("?")
        )));
    }
    for name in targets {
        let Some(b) = base.tensor(name) else { continue };
        let Some(s) = file.tensor(name) else {
            return Err(refuse(format!(
                "it has no tensor `{name}`, which the adapters change"
            )));
        };
        if s.dims != b.dims {
            return Err(refuse(format!(
                "tensor `{name}` has ne {:?} where the base has {:?}: not the same model",
                s.dims, b.dims
            )));
        }
        if !matches!(s.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return Err(refuse(format!(
                "tensor `{name}` is {}; the source must hold the merged tensors in F32, F16 or BF16 (the \
                 unquantized model the base was made from)",
                s.ggml_type
            )));
        }
    }
    let handle = File::open(&file.path).map_err(|source| crate::gguf::Error::Io {
        path: file.path.clone(),
        source,
    })?;
    Ok(Source { file, handle })
}
