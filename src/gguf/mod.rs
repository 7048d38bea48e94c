//! The GGUF container: a header reader for untrusted files (base models, adapters), a streamed writer for
//! adapters, and the ggml tensor types with bit-exact encoders for the ones adapters use.
//!
//! Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. The behaviour that matters is that of
//! llama.cpp's own parser, `gguf_init_from_file_impl` in `ggml/src/gguf.cpp` (identical in the llama.cpp
//! vendored by llama-cpp-sys-2 0.1.161 and by llama-cpp-python 0.3.36, commit 0c1e5709): [`read`] accepts what
//! it accepts and rejects what it rejects, with a message that says why. Where we are stricter (UTF-8 keys and
//! tensor names, tensor data inside the file, named size limits), the doc of the check says so.
//!
//! Layout of a file (all little-endian):
//!
//! ```text
//! "GGUF" u32:version u64:n_tensors u64:n_kv
//! n_kv × (string:key u32:value_type value)              string = u64 length + UTF-8 bytes, no NUL
//! n_tensors × (string:name u32:n_dims n_dims×u64:ne u32:ggml_type u64:offset)
//! zero padding to `alignment` (general.alignment, default 32)   ← data section starts here
//! tensor data in declared order, each followed by zero padding to `alignment`
//! ```
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod dtype;
pub mod keys;
pub mod positioned;
pub mod read;
pub mod rewrite;
pub mod value;
pub mod write;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

pub use dtype::GgmlType;
pub use positioned::PositionedWriter;
pub use read::{GgufFile, TensorInfo};
pub use value::{Array, Value, ValueType};
pub use write::{TensorSpec, Writer};

/// `general.alignment` as the reader and the writer both require it: a u32 power of two, or
/// [`DEFAULT_ALIGNMENT`] when absent; `origin` names the file in errors.
pub(crate) fn alignment(
    metadata: &[(String, Value)],
    origin: impl Fn() -> Origin,
) -> Result<u64, Error> {
    match metadata
        .iter()
        .find(|(k, _)| k == keys::GENERAL_ALIGNMENT)
        .map(|(_, v)| v)
    {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(&Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(a)),
        Some(&Value::U32(a)) => Err(Error::InvalidAlignment {
            origin: origin(),
            alignment: u64::from(a),
        }),
        Some(other) => Err(Error::AlignmentType {
            origin: origin(),
            found: other.type_name(),
        }),
    }
}

/// `x` rounded up to a multiple of `alignment` (a power of two); `None` on overflow.
pub(crate) fn pad(x: u64, alignment: u64) -> Option<u64> {
    let mask = alignment.checked_sub(1)?;
    Some(x.checked_add(mask)? & !mask)
}

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version we write (`GGUF_VERSION`); the reader also accepts version 2, which has the same layout.
pub const VERSION: u32 = 3;
/// Alignment of the data section and of every tensor when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_NAME`: a tensor name must be shorter than this many bytes (the C struct holds a NUL too).
pub const MAX_NAME_BYTES: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

/// Where a problem was found: a file being read, or the description handed to the [`Writer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A GGUF file on disk.
    File(PathBuf),
    /// The metadata and tensor list given to [`Writer::new`] (nothing on disk yet).
    Output,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "`{}`", path.display()),
            Origin::Output => f.write_str("GGUF output"),
        }
    }
}

/// Everything that can go wrong reading, writing or encoding GGUF. Every variant names the file (or
/// [`Origin::Output`]), the key or tensor concerned, and the numbers involved.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("`{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the output failed.
    #[error("writing GGUF {what}: {source}")]
    Write {
        /// What was being written (`header`, ``tensor `x` ``, `padding`).
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends (or a declared length runs) past the end of the file.
    #[error(
        "`{}` is truncated or corrupt: {what} at byte {offset} needs {needed} bytes but only {available} remain",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Where.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// The file does not start with `GGUF`.
    #[error("`{}` is not a GGUF file: it starts with {found:02x?} ({}), not `GGUF`", path.display(), printable(found))]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The version field reads as a huge number: the file was written big-endian (gguf-py `--bigendian`).
    #[error(
        "`{}` is a big-endian GGUF file (version field reads {version:#010x}); llama.cpp on little-endian machines \
         cannot load it — reconvert without `--bigendian`",
        path.display()
    )]
    BigEndian {
        /// The file.
        path: PathBuf,
        /// The version field as read (little-endian).
        version: u32,
    },
    /// GGUF version 1 (32-bit lengths), which ggml no longer reads.
    #[error("`{}` is GGUF version 1, which llama.cpp no longer supports; reconvert it with a current llama.cpp", path.display())]
    GgufV1 {
        /// The file.
        path: PathBuf,
    },
    /// A version other than 1, 2 or 3.
    #[error("`{}` has GGUF version {version}; only versions 2 and 3 are supported", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// A count or length is above one of the reader's named limits (checked before anything is allocated).
    #[error("`{}`: {what} is {found}, above the limit of {limit} ({limit_name}); the file is corrupt", path.display())]
    LimitExceeded {
        /// The file.
        path: PathBuf,
        /// What was counted.
        what: String,
        /// The value found.
        found: u64,
        /// The limit.
        limit: u64,
        /// The limit's name in [`read`].
        limit_name: &'static str,
    },
    /// A metadata key is the empty string (ggml rejects it).
    #[error("{origin}: key #{index} is empty")]
    EmptyKey {
        /// File or writer input.
        origin: Origin,
        /// Index of the key-value pair.
        index: u64,
    },
    /// A key or tensor name is not UTF-8.
    #[error("`{}`: {what} at byte {offset} is not valid UTF-8", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Which string.
        what: String,
        /// Where it starts.
        offset: u64,
    },
    /// The same key twice.
    #[error("{origin}: duplicate key `{key}`")]
    DuplicateKey {
        /// File or writer input.
        origin: Origin,
        /// The key.
        key: String,
    },
    /// A value type id outside 0..=12, or an array of arrays (which ggml cannot read).
    #[error("`{}`: key `{key}` has {}", path.display(), value_type_problem(*type_id, *in_array))]
    InvalidValueType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type id found.
        type_id: u32,
        /// Whether it is the element type of an array.
        in_array: bool,
    },
    /// `general.alignment` is not a UINT32 (ggml requires that type).
    #[error("{origin}: `general.alignment` must be of type u32 but is {found}")]
    AlignmentType {
        /// File or writer input.
        origin: Origin,
        /// The type found (`ValueType::name`, with the element type for arrays).
        found: String,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("{origin}: `general.alignment` is {alignment}, which is not a non-zero power of two")]
    InvalidAlignment {
        /// File or writer input.
        origin: Origin,
        /// The value.
        alignment: u64,
    },
    /// A tensor name of 64 bytes or more (`GGML_MAX_NAME`).
    #[error("{origin}: tensor name `{tensor}` is {len} bytes long; ggml allows at most 63")]
    TensorNameTooLong {
        /// File or writer input.
        origin: Origin,
        /// The name (cut to its first 64 bytes when read from a file).
        tensor: String,
        /// Its length in bytes.
        len: u64,
    },
    /// The same tensor name twice.
    #[error("{origin}: duplicate tensor name `{tensor}`")]
    DuplicateTensor {
        /// File or writer input.
        origin: Origin,
        /// The name.
        tensor: String,
    },
    /// More than four dimensions.
    #[error("{origin}: tensor `{tensor}` has {n_dims} dimensions; ggml allows at most 4")]
    TooManyDims {
        /// File or writer input.
        origin: Origin,
        /// The tensor.
        tensor: String,
        /// Its dimension count.
        n_dims: u64,
    },
    /// A dimension above `i64::MAX` (ggml reads `ne` as signed: this is a negative size).
    #[error(
        "{origin}: tensor `{tensor}` dimension {index} is {value}, which ggml reads as negative"
    )]
    InvalidDimension {
        /// File or writer input.
        origin: Origin,
        /// The tensor.
        tensor: String,
        /// Which dimension (0 = `ne[0]`).
        index: usize,
        /// The value.
        value: u64,
    },
    /// The element count, the byte size, or the running data size overflows 64 bits (or `i64` for elements).
    #[error("{origin}: tensor `{tensor}` with shape {dims:?} overflows 64-bit sizes")]
    ShapeOverflow {
        /// File or writer input.
        origin: Origin,
        /// The tensor.
        tensor: String,
        /// Its ne.
        dims: Vec<u64>,
    },
    /// A ggml type id that is not in the current ggml type table (or was removed from it).
    #[error("`{}`: tensor `{tensor}` has ggml type {type_id}{}, which this ggml version does not know", path.display(),
        dtype::removed_type_name(*type_id).map(|n| format!(" ({n}, removed from ggml)")).unwrap_or_default())]
    UnknownGgmlType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The id.
        type_id: u32,
    },
    /// `ne[0]` is not a multiple of the type's block size.
    #[error("{origin}: tensor `{tensor}` of type {ggml_type} has {ne0} elements per row, not a multiple of the block size {}",
        ggml_type.block_size())]
    BlockSizeMismatch {
        /// File or writer input.
        origin: Origin,
        /// The tensor.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
        /// Its `ne[0]`.
        ne0: u64,
    },
    /// A tensor offset other than the sum of the padded sizes before it (ggml's exact rule).
    #[error("`{}`: tensor `{tensor}` has offset {offset}, expected {expected}", path.display())]
    WrongOffset {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Offset in the file (relative to the data section).
        offset: u64,
        /// The offset ggml requires.
        expected: u64,
    },
    /// The padded header ends past the end of the file, so there is no data section.
    #[error("`{}` is truncated: the data section would start at byte {data_offset} but the file has {file_size} bytes",
        path.display())]
    DataSectionBeyondEof {
        /// The file.
        path: PathBuf,
        /// Where the data section starts.
        data_offset: u64,
        /// The file size.
        file_size: u64,
    },
    /// A tensor's data runs past the end of the file.
    #[error("`{}` is truncated: tensor `{tensor}` ends at byte {end} but the file has {file_size} bytes", path.display())]
    TensorBeyondEof {
        /// The file.
        path: PathBuf,
        /// The first tensor that does not fit.
        tensor: String,
        /// Where its data ends (absolute).
        end: u64,
        /// The file size.
        file_size: u64,
    },
    /// No tensor of that name.
    #[error("`{}` has no tensor `{tensor}`", path.display())]
    TensorNotFound {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// A tensor's type has no decoder ([`dtype::decode`] covers f32, f16, bf16 and q8_0).
    #[error("`{}`: tensor `{tensor}` is {ggml_type}; only f32, f16, bf16 and q8_0 tensors can be decoded", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
    },
    /// An array handed to the writer whose elements do not all have its `element_type`, or that nests arrays.
    #[error("{origin}: array `{key}` {}", array_problem(*element_type, *index, *found))]
    InvalidArray {
        /// Always [`Origin::Output`].
        origin: Origin,
        /// The key.
        key: String,
        /// The declared element type.
        element_type: ValueType,
        /// The first offending element (0 for a nested array declaration).
        index: usize,
        /// Its type.
        found: ValueType,
    },
    /// [`Writer::write_tensor`] called for a tensor that is not the next one declared.
    #[error("tensor `{tensor}` written out of order: {}",
        expected.as_ref().map(|e| format!("the next declared tensor is `{e}`")).unwrap_or_else(|| "all declared tensors were already written".into()))]
    TensorOutOfOrder {
        /// The tensor passed.
        tensor: String,
        /// The tensor expected next, if any.
        expected: Option<String>,
    },
    /// [`Writer::write_tensor`] got a byte count other than the declared shape and type require.
    #[error("tensor `{tensor}`: got {found} bytes of data, its shape and type need {expected}")]
    TensorSizeMismatch {
        /// The tensor.
        tensor: String,
        /// Bytes required.
        expected: u64,
        /// Bytes given.
        found: u64,
    },
    /// [`Writer::finish`] called before every declared tensor was written.
    #[error(
        "GGUF output incomplete: {missing} declared tensors were not written, starting with `{next}`"
    )]
    MissingTensors {
        /// How many are missing.
        missing: usize,
        /// The first missing one.
        next: String,
    },
    /// No encoder or decoder for this type.
    #[error("cannot {operation} {ggml_type} data: only f32, f16, bf16 and q8_0 are supported")]
    UnsupportedType {
        /// The type.
        ggml_type: GgmlType,
        /// `encode` or `decode`.
        operation: &'static str,
    },
    /// The input is not a whole number of rows, or the row length is not a multiple of the block size.
    #[error("cannot encode {len} values as {ggml_type} rows of {row_len}: {}", row_problem(*ggml_type, *len, *row_len))]
    RowLength {
        /// The target type.
        ggml_type: GgmlType,
        /// Number of input values.
        len: usize,
        /// The row length given.
        row_len: usize,
    },
    /// Q8_0 input with an infinity or NaN (ggml's reference quantizer is undefined there).
    #[error(
        "cannot quantize to {ggml_type}: value #{index} is {value}; q8_0 needs finite input (use f16 or f32)"
    )]
    NonFinite {
        /// The target type.
        ggml_type: GgmlType,
        /// Index of the first non-finite input value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Encoded data whose length is not a whole number of blocks.
    #[error("cannot decode {len} bytes as {ggml_type}: not a multiple of its {} bytes per block", ggml_type.type_size())]
    ByteLength {
        /// The type.
        ggml_type: GgmlType,
        /// The byte count.
        len: usize,
    },
    /// An output buffer that is not the encoded size of its input ([`dtype::encode_slice`]).
    #[error("cannot encode {values} values as {ggml_type} into {len} bytes: they need {needed}")]
    EncodedSize {
        /// The type.
        ggml_type: GgmlType,
        /// Values given.
        values: usize,
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
}

/// The magic bytes as text when printable, for [`Error::BadMagic`].
fn printable(bytes: &[u8; 4]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

fn value_type_problem(type_id: u32, in_array: bool) -> String {
    match (in_array, ValueType::try_from(type_id)) {
        (true, Ok(ValueType::Array)) => "an array of arrays, which ggml cannot read".into(),
        (true, _) => {
            format!("array element type {type_id}; valid types are 0..=12 except 9 (array)")
        }
        (false, _) => format!("value type {type_id}; valid types are 0..=12"),
    }
}

fn array_problem(element_type: ValueType, index: usize, found: ValueType) -> String {
    if element_type == ValueType::Array {
        "is an array of arrays, which ggml cannot read".into()
    } else {
        format!("is declared as {element_type} but element {index} is {found}")
    }
}

fn row_problem(ty: GgmlType, len: usize, row_len: usize) -> String {
    if row_len == 0 {
        "the row length is 0".into()
    } else if !len.is_multiple_of(row_len) {
        format!("{len} is not a multiple of {row_len}")
    } else {
        format!(
            "{row_len} is not a multiple of the {} block size {}",
            ty.name(),
            ty.block_size()
        )
    }
}
