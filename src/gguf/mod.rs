//! The GGUF container, written in-project (no crate fits: see README "Dependencies").
//!
//! Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>; the reader accepts what ggml's own parser
//! (`ggml/src/gguf.cpp`) accepts and rejects what it rejects, with an error that says why. The writer emits GGUF v3
//! exactly as gguf-py's `GGUFWriter` does (byte-identical for the same metadata and tensors).

pub mod dtype;
pub mod keys;
pub mod read;
pub mod value;
pub mod write;

use std::path::PathBuf;

pub use dtype::GgmlType;
pub use read::{GgufFile, TensorInfo};
pub use value::{Array, Value, ValueType};
pub use write::{TensorSpec, Writer};

/// Data alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// `GGUF` as a little-endian u32.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version we write.
pub const VERSION: u32 = 3;
/// ggml's `GGML_MAX_NAME`: tensor names must be shorter.
pub const MAX_NAME_BYTES: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;

/// Everything that can go wrong reading or writing GGUF.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("`{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O error while writing a stream.
    #[error("writing GGUF: {0}")]
    Write(#[source] std::io::Error),
    /// The file ends inside the header.
    #[error("`{path}`: truncated: the file ends inside the {what} ({size} bytes in all)")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// The file size.
        size: u64,
    },
    /// Not a GGUF file.
    #[error("`{path}`: not a GGUF file (starts with {found:02x?}, expected \"GGUF\")")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first bytes.
        found: Vec<u8>,
    },
    /// A big-endian GGUF file.
    #[error(
        "`{path}`: big-endian GGUF files are not supported (llama.cpp on little-endian hosts cannot read them either)"
    )]
    BigEndian {
        /// The file.
        path: PathBuf,
    },
    /// A GGUF version we cannot read.
    #[error("`{path}`: GGUF version {version} is not supported (versions 2 and 3 are)")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// A declared count or length beyond our limits.
    #[error("`{path}`: {what} is {value}, more than the limit of {limit}: the header is corrupt")]
    Limit {
        /// The file.
        path: PathBuf,
        /// What was counted.
        what: String,
        /// The declared value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// Malformed header content.
    #[error("`{path}`: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A tensor whose data lies outside the file.
    #[error(
        "`{path}`: tensor `{name}` data ({start}..{end}) is beyond the end of the file ({size} bytes): the file is truncated"
    )]
    DataOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Data start.
        start: u64,
        /// Data end.
        end: u64,
        /// The file size.
        size: u64,
    },
    /// No such tensor.
    #[error("`{path}`: no tensor `{name}`")]
    NoTensor {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// Q8_0 (or another block type) with rows that are not whole blocks.
    #[error("{ty} needs rows of a multiple of {block} values, got {row_len}")]
    BlockSize {
        /// The type.
        ty: &'static str,
        /// The row length.
        row_len: u64,
        /// The block size.
        block: u64,
    },
    /// A type we cannot encode or decode.
    #[error("cannot {what} tensors of type {ty}")]
    UnsupportedType {
        /// The type.
        ty: &'static str,
        /// "encode" or "decode".
        what: &'static str,
    },
    /// Writer misuse or invalid output content.
    #[error("invalid GGUF output: {0}")]
    Output(String),
}
