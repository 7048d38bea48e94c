//! Why a merge was refused or failed. Every variant names the file, adapter or tensor and what to do.

use std::path::PathBuf;

use super::ggml::QuantError;
use crate::gguf;

/// A refused or failed merge; nothing is left at the output path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// Reading a GGUF file (base or adapter) failed, or writing the output did.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// An adapter directory could not be converted (the converter's own refusal).
    #[error("adapter `{}`: {source}", adapter.display())]
    Convert {
        /// The directory.
        adapter: PathBuf,
        /// The converter's error.
        #[source]
        source: Box<crate::convert::ConvertError>,
    },
    /// An adapter does not fit the base (the fit check `lora-validate` runs).
    #[error(
        "adapter `{}` does not fit the base `{}`:\n  {}",
        adapter.display(),
        base.display(),
        mismatches.join("\n  ")
    )]
    DoesNotFit {
        /// The adapter.
        adapter: PathBuf,
        /// The base.
        base: PathBuf,
        /// Every reason.
        mismatches: Vec<String>,
    },
    /// A DoRA adapter that cannot be merged exactly (the module and the reason).
    #[error("adapter `{}`: {message}", adapter.display())]
    Dora {
        /// The adapter directory.
        adapter: PathBuf,
        /// What, where, and why.
        message: String,
    },
    /// A DoRA adapter and another adapter change the same tensor.
    #[error(
        "tensor `{tensor}`: DoRA adapter `{}` and adapter `{}` both change it; DoRA normalises the whole merged \
         weight, so stacking depends on the order (peft's forward and its merge_and_unload disagree) and is not \
         merged — merge the DoRA adapter alone, or drop the other adapter's pairs on this tensor",
        dora.display(),
        other.display()
    )]
    DoraStacked {
        /// The base tensor.
        tensor: String,
        /// The DoRA adapter.
        dora: PathBuf,
        /// The other adapter.
        other: PathBuf,
    },
    /// `--source` is not the float model of the base.
    #[error("--source `{}`: {message}", path.display())]
    Source {
        /// The source file.
        path: PathBuf,
        /// What does not match, and where.
        message: String,
    },
    /// The importance matrix cannot be read or does not fit the base.
    #[error("--imatrix `{}`: {message}", path.display())]
    Imatrix {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// ggml cannot quantize or dequantize a tensor as asked.
    #[error("tensor `{tensor}`: {source}")]
    Quant {
        /// The tensor.
        tensor: String,
        /// Why.
        #[source]
        source: QuantError,
    },
    /// A merged tensor came out with a NaN or infinity.
    #[error(
        "tensor `{tensor}`: the merged weights are not finite (row {row}); the adapter's factors or scale are too \
         large for this tensor"
    )]
    NonFinite {
        /// The tensor.
        tensor: String,
        /// The first such row.
        row: usize,
    },
    /// `--outtype TYPE` cannot hold a tensor (its rows are not whole blocks of the type).
    #[error(
        "--outtype {ggml_type}: tensor `{tensor}` has rows of {row_len} values, not a multiple of {ggml_type}'s block \
         of {}; choose another type or `auto`", ggml_type.block_size()
    )]
    TypeDoesNotFit {
        /// The tensor.
        tensor: String,
        /// The type.
        ggml_type: gguf::GgmlType,
        /// Its row length.
        row_len: u64,
    },
    /// The output exists and `--force` was not given.
    #[error("`{}` exists; pass --force to overwrite it", path.display())]
    OutputExists {
        /// The output.
        path: PathBuf,
    },
    /// The base is not a model (an adapter given as the base?).
    #[error("`{}` is not a model: general.type is {found:?} (the base must be a model GGUF, not an adapter)", path.display())]
    NotAModel {
        /// The file.
        path: PathBuf,
        /// Its general.type.
        found: String,
    },
    /// No adapter pair touches the base.
    #[error("nothing to merge: the adapters have no LoRA pairs")]
    NothingToMerge,
    /// Writing or renaming the output failed.
    #[error("cannot write `{}` ({what}): {source}; nothing was written there", path.display())]
    Write {
        /// The output asked for.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
