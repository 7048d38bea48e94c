//! Read the header of a GGUF file — metadata and tensor infos — through a buffered reader, never the weights
//! (base models are many GB); tensor data is read on demand, one tensor at a time.
//!
//! The file is untrusted. The checks are those of ggml's `gguf_init_from_file_impl` (`ggml/src/gguf.cpp`), in
//! the same order, with the same limits where ggml has them:
//! magic; version 2 or 3 (1 → [`Error::GgufV1`], a byte-swapped version → [`Error::BigEndian`]); non-empty,
//! unique keys; value types 0..=12 and no arrays of arrays; `general.alignment` a u32 power of two; tensor names
//! shorter than 64 bytes and unique; at most 4 dimensions, each below 2^63, element count below 2^63; a known
//! type with `ne[0]` a multiple of its block size; byte sizes without overflow; each offset exactly the sum of
//! the padded sizes before it; the padded header inside the file.
//!
//! Stricter than ggml, on purpose:
//! - keys and tensor names must be UTF-8 ([`Error::InvalidUtf8`]). String *values* that are not UTF-8 are
//!   accepted with each invalid sequence replaced by U+FFFD, because real vocabularies hold raw bytes (RWKV);
//!   nothing reads them back into a file.
//! - every tensor's data must lie inside the file ([`Error::TensorBeyondEof`]); ggml leaves that to its callers,
//!   which all check it (llama.cpp's model and adapter loaders). The padding after the last tensor may be
//!   missing, as llama.cpp allows; bytes after the data are ignored, as ggml does.
//! - named limits ([`MAX_KV`], [`MAX_TENSORS`], [`MAX_METADATA_VALUES`]) bound memory; every length is checked
//!   against them and against the bytes left in the file before anything is allocated.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::dtype::{self, GgmlType};
use super::value::{Array, Value, ValueType};
use super::{Error, MAGIC, MAX_DIMS, MAX_NAME_BYTES, Origin, keys, pad};

/// Longest string accepted (ggml's `GGUF_MAX_STRING_LENGTH`).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most elements in one array (ggml's `GGUF_MAX_ARRAY_ELEMENTS`).
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Most key-value pairs (ggml has no limit short of memory; real models have well under 100).
pub const MAX_KV: u64 = 1 << 20;
/// Most tensors (ggml has no limit short of memory; real models have a few thousand).
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata values in total, counting array elements (the largest vocabularies give about 10^6; this
/// bounds the memory a small hostile file can make us allocate, about 40 bytes per value).
pub const MAX_METADATA_VALUES: u64 = 1 << 24;

/// Smallest possible key-value pair on disk: key length, a 1-byte key, value type, a 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest possible tensor info on disk: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Buffer of the header reader.
const HEADER_BUFFER_BYTES: usize = 1 << 16;

/// Where one tensor is and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight.lora_a`.
    pub name: String,
    /// Shape in ggml order (`ne`: fastest-varying first; the reverse of the numpy shape).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (saturating at `u64::MAX`; never reached for infos read from a file, which are checked).
    pub fn n_elements(&self) -> u64 {
        dtype::element_count(&self.dims).unwrap_or(u64::MAX)
    }

    /// Size of the data in bytes, without padding (saturating like [`TensorInfo::n_elements`]).
    pub fn n_bytes(&self) -> u64 {
        dtype::tensor_nbytes(self.ggml_type, &self.dims).unwrap_or(u64::MAX)
    }
}

/// The header of a GGUF file: everything but the tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufFile {
    /// The file (for messages, and to read tensor data).
    pub path: PathBuf,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Key-value pairs in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment (`general.alignment`, or 32).
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Size of the file when it was opened.
    pub file_size: u64,
}

impl GgufFile {
    /// Read and check the header of the file at `path` (only the header is read).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        Self::read_from(
            BufReader::with_capacity(HEADER_BUFFER_BYTES, file),
            file_size,
            path,
        )
    }

    /// Read and check a header from `reader`, positioned at the start of a GGUF file of `file_size` bytes;
    /// `path` names it in errors and is where [`GgufFile::read_tensor_bytes`] will look for data.
    pub fn read_from<R: Read>(reader: R, file_size: u64, path: &Path) -> Result<Self, Error> {
        Parser {
            r: reader,
            pos: 0,
            size: file_size,
            path,
            budget: MAX_METADATA_VALUES,
        }
        .parse()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The string value of `key` (`None` if absent or not a string).
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// The value of `key` if it is a non-negative integer of any type.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// The value of `key` if it is a number of any type.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str(keys::GENERAL_ARCHITECTURE)
    }

    /// Whether this model's output head is its token embedding: llama.cpp loads `token_embd.weight` as the output
    /// projection when there is no `output.weight` (tied embeddings, as in Gemma or Llama 3.2 1B).
    pub fn ties_output_to_embedding(&self) -> bool {
        self.tensor("token_embd.weight").is_some() && self.tensor("output.weight").is_none()
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Absolute byte range `(start, length)` of a tensor's data in the file.
    pub fn tensor_range(&self, name: &str) -> Result<(u64, u64), Error> {
        let info = self.tensor(name).ok_or_else(|| Error::TensorNotFound {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        // Checked against the file size when the header was read; still checked here for hand-built values.
        let len = info.n_bytes();
        let start = self
            .data_offset
            .checked_add(info.offset)
            .filter(|s| s.checked_add(len).is_some());
        let start = start.ok_or_else(|| Error::ShapeOverflow {
            origin: Origin::File(self.path.clone()),
            tensor: name.to_string(),
            dims: info.dims.clone(),
        })?;
        Ok((start, len))
    }

    /// The raw bytes of one tensor, read from the file (one seek and one read).
    pub fn read_tensor_bytes(&self, name: &str) -> Result<Vec<u8>, Error> {
        let (start, len) = self.tensor_range(name)?;
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let len = usize::try_from(len).map_err(|_| Error::ShapeOverflow {
            origin: Origin::File(self.path.clone()),
            tensor: name.to_string(),
            dims: self
                .tensor(name)
                .map(|t| t.dims.clone())
                .unwrap_or_default(),
        })?;
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut bytes = vec![0u8; len];
        file.read_exact(&mut bytes).map_err(io)?;
        Ok(bytes)
    }

    /// One tensor decoded to f32 (f32, f16, bf16 and q8_0 tensors).
    pub fn read_tensor_f32(&self, name: &str) -> Result<Vec<f32>, Error> {
        if let Some(t) = self.tensor(name).filter(|t| !t.ggml_type.is_encodable()) {
            return Err(Error::Decode {
                path: self.path.clone(),
                tensor: name.to_string(),
                ggml_type: t.ggml_type,
            });
        }
        let bytes = self.read_tensor_bytes(name)?;
        let ty = self.tensor(name).map_or(GgmlType::F32, |t| t.ggml_type);
        let mut out = Vec::new();
        dtype::decode(ty, &bytes, &mut out)?;
        Ok(out)
    }
}

/// The header parser: a position-tracking reader that checks every length against the bytes left.
struct Parser<'a, R> {
    r: R,
    pos: u64,
    size: u64,
    path: &'a Path,
    /// Metadata values still allowed ([`MAX_METADATA_VALUES`]).
    budget: u64,
}

impl<R: Read> Parser<'_, R> {
    fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    /// Fail unless `n` more bytes are in the file.
    fn need(&self, n: u64, what: impl Fn() -> String) -> Result<(), Error> {
        if n > self.remaining() {
            return Err(Error::Truncated {
                path: self.path(),
                what: what(),
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: impl Fn() -> String) -> Result<(), Error> {
        let n = buf.len() as u64;
        self.need(n, &what)?;
        if let Err(source) = self.r.read_exact(buf) {
            // The file is shorter than its size said (it changed while we read it), or reading failed.
            return Err(match source.kind() {
                io::ErrorKind::UnexpectedEof => Error::Truncated {
                    path: self.path(),
                    what: what(),
                    offset: self.pos,
                    needed: n,
                    available: 0,
                },
                _ => Error::Io {
                    path: self.path(),
                    source,
                },
            });
        }
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: impl Fn() -> String) -> Result<[u8; N], Error> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u32(&mut self, what: impl Fn() -> String) -> Result<u32, Error> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl Fn() -> String) -> Result<u64, Error> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string's bytes: u64 length (checked against [`MAX_STRING_LEN`] and the file) then the bytes.
    fn string_bytes(&mut self, what: impl Fn() -> String) -> Result<Vec<u8>, Error> {
        let len = self.u64(&what)?;
        self.check_limit(len, MAX_STRING_LEN, "MAX_STRING_LEN", || {
            format!("the length of {}", what())
        })?;
        self.need(len, &what)?;
        // `len` is at most the bytes left in the file and at most MAX_STRING_LEN, so it fits in memory terms.
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.fill(&mut bytes, what)?;
        Ok(bytes)
    }

    /// A key or tensor name: must be UTF-8.
    fn name(&mut self, what: impl Fn() -> String) -> Result<String, Error> {
        let offset = self.pos;
        let bytes = self.string_bytes(&what)?;
        String::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 {
            path: self.path(),
            what: what(),
            offset,
        })
    }

    fn check_limit(
        &self,
        found: u64,
        limit: u64,
        name: &'static str,
        what: impl Fn() -> String,
    ) -> Result<(), Error> {
        if found > limit {
            return Err(Error::LimitExceeded {
                path: self.path(),
                what: what(),
                found,
                limit,
                limit_name: name,
            });
        }
        Ok(())
    }

    fn take_budget(&mut self, n: u64, key: &str) -> Result<(), Error> {
        if n > self.budget {
            return Err(Error::LimitExceeded {
                path: self.path(),
                what: format!("the number of metadata values up to and including `{key}`"),
                found: MAX_METADATA_VALUES - self.budget + n,
                limit: MAX_METADATA_VALUES,
                limit_name: "MAX_METADATA_VALUES",
            });
        }
        self.budget -= n;
        Ok(())
    }

    fn value_type(&mut self, key: &str, in_array: bool) -> Result<ValueType, Error> {
        let id = self.u32(|| {
            if in_array {
                format!("the element type of `{key}`")
            } else {
                format!("the value type of `{key}`")
            }
        })?;
        match ValueType::try_from(id) {
            Ok(ValueType::Array) if in_array => Err(self.invalid_type(key, id, true)),
            Ok(t) => Ok(t),
            Err(_) => Err(self.invalid_type(key, id, in_array)),
        }
    }

    fn invalid_type(&self, key: &str, type_id: u32, in_array: bool) -> Error {
        Error::InvalidValueType {
            path: self.path(),
            key: key.to_string(),
            type_id,
            in_array,
        }
    }

    /// One value of type `ty` (an array's elements are read here too).
    fn value(&mut self, ty: ValueType, key: &str) -> Result<Value, Error> {
        let what = || format!("the value of `{key}`");
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            // ggml reads an int8 and takes any non-zero byte as true.
            ValueType::Bool => Value::Bool(self.array::<1>(what)? != [0]),
            ValueType::String => {
                let bytes = self.string_bytes(what)?;
                Value::String(
                    String::from_utf8(bytes)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                )
            }
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Array => {
                let element_type = self.value_type(key, true)?;
                let n = self.u64(|| format!("the length of array `{key}`"))?;
                self.check_limit(n, MAX_ARRAY_LEN, "MAX_ARRAY_LEN", || {
                    format!("the length of array `{key}`")
                })?;
                // Each element needs at least its fixed size (strings: their u64 length), as ggml checks.
                let min = element_type.fixed_size().unwrap_or(8);
                self.need(n.saturating_mul(min), || {
                    format!("the {n} elements of array `{key}`")
                })?;
                self.take_budget(n, key)?;
                let mut values = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
                for _ in 0..n {
                    values.push(self.value(element_type, key)?);
                }
                Value::Array(Array {
                    element_type,
                    values,
                })
            }
        })
    }

    fn parse(mut self) -> Result<GgufFile, Error> {
        let magic: [u8; 4] = self.array(|| "the magic".into())?;
        if magic != MAGIC {
            return Err(Error::BadMagic {
                path: self.path(),
                found: magic,
            });
        }
        let version = self.u32(|| "the version".into())?;
        match version {
            0 => {
                return Err(Error::UnsupportedVersion {
                    path: self.path(),
                    version,
                });
            }
            // A little-endian reader sees a big-endian 3 as 0x03000000: ggml's test is the low 16 bits.
            v if v & 0xffff == 0 => {
                return Err(Error::BigEndian {
                    path: self.path(),
                    version,
                });
            }
            1 => return Err(Error::GgufV1 { path: self.path() }),
            2 | 3 => {}
            _ => {
                return Err(Error::UnsupportedVersion {
                    path: self.path(),
                    version,
                });
            }
        }
        let n_tensors = self.u64(|| "the tensor count".into())?;
        let n_kv = self.u64(|| "the key-value count".into())?;
        self.check_limit(n_tensors, MAX_TENSORS, "MAX_TENSORS", || {
            "the tensor count".into()
        })?;
        self.check_limit(n_kv, MAX_KV, "MAX_KV", || "the key-value count".into())?;
        let min_bytes = n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES;
        self.need(min_bytes, || {
            format!("{n_kv} key-value pair(s) and {n_tensors} tensor info(s)")
        })?;

        let metadata = self.metadata(n_kv)?;
        let alignment = self.alignment(&metadata)?;
        let tensors = self.tensor_infos(n_tensors)?;

        // ggml pads to the alignment only when there are tensors.
        let data_offset = if n_tensors > 0 {
            pad(self.pos, alignment)
        } else {
            Some(self.pos)
        };
        let Some(data_offset) = data_offset.filter(|&d| d <= self.size) else {
            return Err(Error::DataSectionBeyondEof {
                path: self.path(),
                data_offset: pad(self.pos, alignment).unwrap_or(u64::MAX),
                file_size: self.size,
            });
        };
        self.check_data(&tensors, alignment, data_offset)?;
        Ok(GgufFile {
            path: self.path(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_size: self.size,
        })
    }

    fn metadata(&mut self, n_kv: u64) -> Result<Vec<(String, Value)>, Error> {
        let mut metadata = Vec::with_capacity(usize::try_from(n_kv).unwrap_or(0));
        let mut seen = HashSet::new();
        for i in 0..n_kv {
            let key = self.name(|| format!("key #{i}"))?;
            if key.is_empty() {
                return Err(Error::EmptyKey {
                    origin: Origin::File(self.path()),
                    index: i,
                });
            }
            if !seen.insert(key.clone()) {
                return Err(Error::DuplicateKey {
                    origin: Origin::File(self.path()),
                    key,
                });
            }
            let ty = self.value_type(&key, false)?;
            if ty != ValueType::Array {
                self.take_budget(1, &key)?;
            }
            let value = self.value(ty, &key)?;
            metadata.push((key, value));
        }
        Ok(metadata)
    }

    fn alignment(&self, metadata: &[(String, Value)]) -> Result<u64, Error> {
        super::alignment(metadata, || Origin::File(self.path()))
    }

    fn tensor_infos(&mut self, n_tensors: u64) -> Result<Vec<TensorInfo>, Error> {
        let mut tensors = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0));
        let mut seen = HashSet::new();
        for i in 0..n_tensors {
            let what = || format!("the name of tensor #{i}");
            let offset = self.pos;
            let len = self.u64(what)?;
            self.check_limit(len, MAX_STRING_LEN, "MAX_STRING_LEN", || {
                format!("the length of the name of tensor #{i}")
            })?;
            if len >= MAX_NAME_BYTES as u64 {
                let mut head = [0u8; MAX_NAME_BYTES];
                self.fill(&mut head, what)?;
                return Err(Error::TensorNameTooLong {
                    origin: Origin::File(self.path()),
                    tensor: String::from_utf8_lossy(&head).into_owned(),
                    len,
                });
            }
            let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
            self.fill(&mut bytes, what)?;
            let name = String::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 {
                path: self.path(),
                what: what(),
                offset,
            })?;
            if !seen.insert(name.clone()) {
                return Err(Error::DuplicateTensor {
                    origin: Origin::File(self.path()),
                    tensor: name,
                });
            }
            let info = self.tensor_info(name)?;
            tensors.push(info);
        }
        Ok(tensors)
    }

    /// The rest of a tensor info after its name.
    fn tensor_info(&mut self, name: String) -> Result<TensorInfo, Error> {
        let origin = || Origin::File(self.path.to_path_buf());
        let n_dims = self.u32(|| format!("the dimension count of tensor `{name}`"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(Error::TooManyDims {
                origin: origin(),
                tensor: name,
                n_dims: u64::from(n_dims),
            });
        }
        let mut dims = Vec::with_capacity(MAX_DIMS);
        for index in 0..n_dims as usize {
            let d = self.u64(|| format!("dimension {index} of tensor `{name}`"))?;
            if d > i64::MAX as u64 {
                return Err(Error::InvalidDimension {
                    origin: origin(),
                    tensor: name,
                    index,
                    value: d,
                });
            }
            dims.push(d);
        }
        if dtype::element_count(&dims).is_none() {
            return Err(Error::ShapeOverflow {
                origin: origin(),
                tensor: name,
                dims,
            });
        }
        let type_id = self.u32(|| format!("the type of tensor `{name}`"))?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(Error::UnknownGgmlType {
                path: self.path(),
                tensor: name,
                type_id,
            });
        };
        let ne0 = dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(ggml_type.block_size()) {
            return Err(Error::BlockSizeMismatch {
                origin: origin(),
                tensor: name,
                ggml_type,
                ne0,
            });
        }
        if dtype::tensor_nbytes(ggml_type, &dims).is_none() {
            return Err(Error::ShapeOverflow {
                origin: origin(),
                tensor: name,
                dims,
            });
        }
        let offset = self.u64(|| format!("the offset of tensor `{name}`"))?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }

    /// Offsets exactly as ggml requires, then every tensor's data inside the file.
    fn check_data(
        &self,
        tensors: &[TensorInfo],
        alignment: u64,
        data_offset: u64,
    ) -> Result<(), Error> {
        let mut expected = 0u64;
        for t in tensors {
            if t.offset != expected {
                return Err(Error::WrongOffset {
                    path: self.path(),
                    tensor: t.name.clone(),
                    offset: t.offset,
                    expected,
                });
            }
            let overflow = || Error::ShapeOverflow {
                origin: Origin::File(self.path()),
                tensor: t.name.clone(),
                dims: t.dims.clone(),
            };
            let n_bytes = t.n_bytes();
            let end = data_offset
                .checked_add(expected)
                .and_then(|s| s.checked_add(n_bytes))
                .ok_or_else(overflow)?;
            if end > self.size {
                return Err(Error::TensorBeyondEof {
                    path: self.path(),
                    tensor: t.name.clone(),
                    end,
                    file_size: self.size,
                });
            }
            expected = pad(n_bytes, alignment)
                .and_then(|p| expected.checked_add(p))
                .ok_or_else(overflow)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::tests::{ALL_TYPES, LORA_TINY, NAME, Raw, parse};

    fn err(raw: Raw) -> Error {
        parse(&raw.0).unwrap_err()
    }

    /// A file with one tensor info `a` (after `general.architecture`), padded, with `data` bytes of data.
    fn one_tensor(dims: &[u64], ty: u32, data: usize) -> Raw {
        Raw::header(3, 1, 1)
            .kv_str("general.architecture", "x")
            .tensor("a", dims, ty, 0)
            .pad(32)
            .zeros(data)
    }

    #[test]
    fn io() {
        let e = GgufFile::open(Path::new("/nonexistent/x.gguf")).unwrap_err();
        assert!(matches!(&e, Error::Io { path, .. } if path == Path::new("/nonexistent/x.gguf")));
        assert!(e.to_string().starts_with("`/nonexistent/x.gguf`: "), "{e}");
    }

    #[test]
    fn truncated() {
        let e = err(Raw::header(3, 0, 1).str("k"));
        assert_eq!(
            e.to_string(),
            "`t.gguf` is truncated or corrupt: 1 key-value pair(s) and 0 tensor info(s) at byte 24 needs 14 bytes \
             but only 9 remain"
        );
        let e = err(Raw::header(3, 0, 1).str("k").u32(8).u64(100).bytes(b"abc"));
        assert_eq!(
            e.to_string(),
            "`t.gguf` is truncated or corrupt: the value of `k` at byte 45 needs 100 bytes but only 3 remain"
        );
        // A count that is within the limits but cannot fit in the file fails before anything is allocated.
        let e = err(Raw::header(3, 100_000, 0).zeros(64));
        assert!(
            matches!(
                e,
                Error::Truncated {
                    needed: 2_400_000,
                    available: 64,
                    ..
                }
            ),
            "{e}"
        );
        // An array longer than the bytes left, as ggml checks (n × element size).
        let e = err(Raw::header(3, 0, 1)
            .str("k")
            .u32(9)
            .u32(6)
            .u64(1 << 28)
            .zeros(16));
        assert!(
            matches!(e, Error::Truncated { needed, available: 16, .. } if needed == 1 << 30),
            "{e}"
        );
    }

    #[test]
    fn bad_magic() {
        let e = err(Raw(b"GGML".to_vec()).u32(3).u64(0).u64(0));
        assert!(matches!(
            e,
            Error::BadMagic {
                found: [b'G', b'G', b'M', b'L'],
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "`t.gguf` is not a GGUF file: it starts with [47, 47, 4d, 4c] (GGML), not `GGUF`"
        );
        let e = err(Raw(vec![0x7f, b'E', b'L', b'F']));
        assert!(e.to_string().contains("(?ELF)"), "{e}");
    }

    #[test]
    fn big_endian() {
        let raw = Raw(b"GGUF".to_vec())
            .bytes(&3u32.to_be_bytes())
            .bytes(&0u64.to_be_bytes())
            .bytes(&0u64.to_be_bytes());
        let e = err(raw);
        assert!(matches!(
            e,
            Error::BigEndian {
                version: 0x0300_0000,
                ..
            }
        ));
        assert!(
            e.to_string()
                .contains("big-endian GGUF file (version field reads 0x03000000)"),
            "{e}"
        );
    }

    #[test]
    fn gguf_v1() {
        let e = err(Raw::header(1, 0, 0));
        assert!(matches!(e, Error::GgufV1 { .. }));
        assert_eq!(
            e.to_string(),
            "`t.gguf` is GGUF version 1, which llama.cpp no longer supports; reconvert it with a current llama.cpp"
        );
    }

    #[test]
    fn unsupported_version() {
        for version in [0, 4, 0x0001_0003] {
            let e = err(Raw::header(version, 0, 0));
            assert!(
                matches!(e, Error::UnsupportedVersion { version: v, .. } if v == version),
                "{e}"
            );
        }
        assert_eq!(
            err(Raw::header(4, 0, 0)).to_string(),
            "`t.gguf` has GGUF version 4; only versions 2 and 3 are supported"
        );
    }

    #[test]
    fn limit_exceeded() {
        let e = err(Raw::header(3, 0, 1).u64(u64::MAX).zeros(32));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: the length of key #0 is 18446744073709551615, above the limit of 1073741824 \
             (MAX_STRING_LEN); the file is corrupt"
        );
        let e = err(Raw::header(3, u64::MAX, 0));
        assert!(
            matches!(
                e,
                Error::LimitExceeded {
                    limit_name: "MAX_TENSORS",
                    found: u64::MAX,
                    ..
                }
            ),
            "{e}"
        );
        let e = err(Raw::header(3, 0, MAX_KV + 1));
        assert!(
            matches!(
                e,
                Error::LimitExceeded {
                    limit_name: "MAX_KV",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(Raw::header(3, 0, 1)
            .str("k")
            .u32(9)
            .u32(0)
            .u64(MAX_ARRAY_LEN + 1));
        assert!(
            matches!(
                e,
                Error::LimitExceeded {
                    limit_name: "MAX_ARRAY_LEN",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(Raw::header(3, 1, 0).u64(MAX_STRING_LEN + 1).zeros(64));
        assert!(
            matches!(
                e,
                Error::LimitExceeded {
                    limit_name: "MAX_STRING_LEN",
                    ..
                }
            ),
            "{e}"
        );
        // The total value budget, checked before an array is read: claim a file big enough to hold it.
        let raw = Raw::header(3, 0, 2)
            .str("a")
            .u32(9)
            .u32(0)
            .u64(MAX_METADATA_VALUES - 1);
        let mut bytes = raw.0;
        bytes.resize(bytes.len() + (MAX_METADATA_VALUES - 1) as usize, 0);
        let bytes = Raw(bytes).str("b").u32(9).u32(0).u64(2).0;
        let e = GgufFile::read_from(bytes.as_slice(), 1 << 40, Path::new(NAME)).unwrap_err();
        assert!(
            matches!(e, Error::LimitExceeded { limit_name: "MAX_METADATA_VALUES", found, .. } if found == MAX_METADATA_VALUES + 1),
            "{e}"
        );
    }

    #[test]
    fn empty_key() {
        let e = err(Raw::header(3, 0, 1).kv_u32("", 1).zeros(8));
        assert!(matches!(e, Error::EmptyKey { index: 0, .. }));
        assert_eq!(e.to_string(), "`t.gguf`: key #0 is empty");
    }

    #[test]
    fn invalid_utf8() {
        let e = err(Raw::header(3, 0, 1)
            .u64(2)
            .bytes(&[0xc3, 0x28])
            .u32(4)
            .u32(1));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: key #0 at byte 24 is not valid UTF-8"
        );
        let e = err(Raw::header(3, 1, 0)
            .u64(1)
            .bytes(&[0xfe])
            .u32(1)
            .u64(1)
            .u32(0)
            .u64(0));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: the name of tensor #0 at byte 24 is not valid UTF-8"
        );
        // String values are not names: raw-byte vocabularies (RWKV) must still open.
        let file = parse(
            &Raw::header(3, 0, 1)
                .str("tokens")
                .u32(8)
                .u64(3)
                .bytes(&[b'a', 0x80, b'b'])
                .0,
        )
        .unwrap();
        assert_eq!(file.get_str("tokens"), Some("a\u{fffd}b"));
    }

    #[test]
    fn duplicate_key() {
        let e = err(Raw::header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2));
        assert!(matches!(&e, Error::DuplicateKey { key, .. } if key == "k"));
        assert_eq!(e.to_string(), "`t.gguf`: duplicate key `k`");
    }

    #[test]
    fn invalid_value_type() {
        let e = err(Raw::header(3, 0, 1).str("k").u32(13).u64(0));
        assert!(matches!(
            e,
            Error::InvalidValueType {
                type_id: 13,
                in_array: false,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: key `k` has value type 13; valid types are 0..=12"
        );
        let e = err(Raw::header(3, 0, 1).str("k").u32(9).u32(9).u64(0));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: key `k` has an array of arrays, which ggml cannot read"
        );
        let e = err(Raw::header(3, 0, 1).str("k").u32(9).u32(200).u64(0));
        assert!(
            matches!(
                e,
                Error::InvalidValueType {
                    type_id: 200,
                    in_array: true,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn alignment_type() {
        let e = err(Raw::header(3, 0, 1)
            .str("general.alignment")
            .u32(10)
            .u64(32));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: `general.alignment` must be of type u32 but is u64"
        );
        let e = err(Raw::header(3, 0, 1)
            .str("general.alignment")
            .u32(9)
            .u32(4)
            .u64(1)
            .u32(32));
        assert!(
            matches!(&e, Error::AlignmentType { found, .. } if found == "arr[u32]"),
            "{e}"
        );
    }

    #[test]
    fn invalid_alignment() {
        for alignment in [0u32, 3, 48] {
            let e = err(Raw::header(3, 0, 1).kv_u32("general.alignment", alignment));
            assert!(
                matches!(e, Error::InvalidAlignment { alignment: a, .. } if a == u64::from(alignment)),
                "{e}"
            );
        }
        assert_eq!(
            err(Raw::header(3, 0, 1).kv_u32("general.alignment", 3)).to_string(),
            "`t.gguf`: `general.alignment` is 3, which is not a non-zero power of two"
        );
        // Alignment 1 is a power of two: no padding at all.
        let file = parse(
            &Raw::header(3, 1, 1)
                .kv_u32("general.alignment", 1)
                .tensor("a", &[1], 24, 0)
                .zeros(1)
                .0,
        )
        .unwrap();
        assert_eq!((file.alignment, file.data_offset), (1, 90));
    }

    #[test]
    fn tensor_name_too_long() {
        let long = "n".repeat(MAX_NAME_BYTES);
        let e = err(Raw::header(3, 1, 0)
            .tensor(&long, &[1], 0, 0)
            .pad(32)
            .zeros(4));
        assert!(matches!(&e, Error::TensorNameTooLong { tensor, len: 64, .. } if *tensor == long));
        assert_eq!(
            e.to_string(),
            format!("`t.gguf`: tensor name `{long}` is 64 bytes long; ggml allows at most 63")
        );
        parse(
            &Raw::header(3, 1, 0)
                .tensor(&long[1..], &[1], 0, 0)
                .pad(32)
                .zeros(4)
                .0,
        )
        .unwrap();
    }

    #[test]
    fn duplicate_tensor() {
        let raw = Raw::header(3, 2, 0)
            .tensor("a", &[1], 0, 0)
            .tensor("a", &[1], 0, 32)
            .pad(32)
            .zeros(36);
        assert_eq!(err(raw).to_string(), "`t.gguf`: duplicate tensor name `a`");
    }

    #[test]
    fn too_many_dims() {
        let e = err(one_tensor(&[1, 1, 1, 1, 1], 0, 4));
        assert!(matches!(e, Error::TooManyDims { n_dims: 5, .. }));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: tensor `a` has 5 dimensions; ggml allows at most 4"
        );
        let file = parse(&one_tensor(&[1, 2, 1, 3], 0, 24).0).unwrap();
        assert_eq!(file.tensors[0].n_elements(), 6);
    }

    #[test]
    fn invalid_dimension() {
        let e = err(one_tensor(&[2, 1 << 63], 0, 8));
        assert!(matches!(e, Error::InvalidDimension { index: 1, value, .. } if value == 1 << 63));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: tensor `a` dimension 1 is 9223372036854775808, which ggml reads as negative"
        );
    }

    #[test]
    fn shape_overflow() {
        let e = err(one_tensor(&[1 << 32, 1 << 32], 0, 8));
        assert!(matches!(&e, Error::ShapeOverflow { dims, .. } if *dims == [1 << 32, 1 << 32]));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: tensor `a` with shape [4294967296, 4294967296] overflows 64-bit sizes"
        );
        // Elements fit in i64, bytes do not fit in u64.
        let e = err(one_tensor(&[1 << 62], 0, 8));
        assert!(matches!(e, Error::ShapeOverflow { .. }), "{e}");
    }

    #[test]
    fn unknown_ggml_type() {
        let e = err(one_tensor(&[32], 31, 64));
        assert!(matches!(e, Error::UnknownGgmlType { type_id: 31, .. }));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: tensor `a` has ggml type 31 (q4_0_4_4, removed from ggml), which this ggml version does not know"
        );
        let e = err(one_tensor(&[32], 43, 64));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: tensor `a` has ggml type 43, which this ggml version does not know"
        );
    }

    #[test]
    fn block_size_mismatch() {
        let e = err(one_tensor(&[33, 2], 8, 200));
        assert!(matches!(
            e,
            Error::BlockSizeMismatch {
                ggml_type: GgmlType::Q8_0,
                ne0: 33,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: tensor `a` of type q8_0 has 33 elements per row, not a multiple of the block size 32"
        );
        let e = err(one_tensor(&[], 12, 200));
        assert!(
            matches!(
                e,
                Error::BlockSizeMismatch {
                    ggml_type: GgmlType::Q4_K,
                    ne0: 1,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn wrong_offset() {
        let raw = Raw::header(3, 2, 0)
            .tensor("a", &[3], 0, 0)
            .tensor("b", &[3], 0, 12)
            .pad(32)
            .zeros(64);
        let e = err(raw);
        assert!(matches!(
            e,
            Error::WrongOffset {
                offset: 12,
                expected: 32,
                ..
            }
        ));
        // ggml: "tensor '%s' has offset %lu, expected %zu"
        assert_eq!(
            e.to_string(),
            "`t.gguf`: tensor `b` has offset 12, expected 32"
        );
        let e = err(one_tensor(&[3], 0, 0).zeros(0));
        assert!(matches!(e, Error::TensorBeyondEof { .. }), "{e}");
        let raw = Raw::header(3, 1, 0)
            .tensor("a", &[3], 0, 32)
            .pad(32)
            .zeros(64);
        assert!(matches!(
            err(raw),
            Error::WrongOffset {
                offset: 32,
                expected: 0,
                ..
            }
        ));
    }

    #[test]
    fn data_section_beyond_eof() {
        // An empty tensor: no data needed, but ggml still seeks to the padded data section.
        let raw = Raw::header(3, 1, 0).tensor("a", &[0], 0, 0);
        assert_eq!(raw.0.len(), 57);
        let e = err(raw.clone());
        assert!(matches!(
            e,
            Error::DataSectionBeyondEof {
                data_offset: 64,
                file_size: 57,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "`t.gguf` is truncated: the data section would start at byte 64 but the file has 57 bytes"
        );
        let file = parse(&raw.pad(32).0).unwrap();
        assert_eq!((file.data_offset, file.tensors[0].n_bytes()), (64, 0));
        // Without tensors there is no data section and no padding (ggml's `n_tensors > 0` rule).
        let file = parse(&Raw::header(3, 0, 1).kv_u32("k", 1).0).unwrap();
        assert_eq!(file.data_offset, 41);
    }

    #[test]
    fn tensor_beyond_eof() {
        let e = err(one_tensor(&[4], 0, 15));
        assert!(matches!(
            e,
            Error::TensorBeyondEof {
                end: 144,
                file_size: 143,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "`t.gguf` is truncated: tensor `a` ends at byte 144 but the file has 143 bytes"
        );
        parse(&one_tensor(&[4], 0, 16).0).unwrap();
    }

    #[test]
    fn tensor_not_found() {
        let file = parse(LORA_TINY).unwrap();
        let e = file
            .read_tensor_bytes("blk.9.attn_q.weight.lora_a")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`t.gguf` has no tensor `blk.9.attn_q.weight.lora_a`"
        );
        assert!(matches!(
            file.read_tensor_f32("nope"),
            Err(Error::TensorNotFound { .. })
        ));
    }

    #[test]
    fn decode() {
        let file = parse(ALL_TYPES).unwrap();
        let e = file.read_tensor_f32("c").unwrap_err();
        assert!(matches!(
            e,
            Error::Decode {
                ggml_type: GgmlType::Q4_0,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "`t.gguf`: tensor `c` is q4_0; only f32, f16, bf16 and q8_0 tensors can be decoded"
        );
    }

    #[test]
    fn bools_follow_ggml_any_non_zero_byte_is_true() {
        let file = parse(
            &Raw::header(3, 0, 2)
                .str("a")
                .u32(7)
                .bytes(&[2])
                .str("b")
                .u32(7)
                .bytes(&[0])
                .0,
        )
        .unwrap();
        assert_eq!(
            (file.get("a"), file.get("b")),
            (Some(&Value::Bool(true)), Some(&Value::Bool(false)))
        );
    }
}
