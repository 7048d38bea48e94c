//! Read a GGUF header (metadata and tensor infos) through a buffered reader, validating it as ggml's
//! `gguf_init_from_file_impl` does — and never allocating from a length the file cannot back: every declared
//! length is checked against the bytes left in the file before anything is allocated.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::dtype::{self, GgmlType};
use super::value::{Array, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, Error, MAGIC, MAX_DIMS, MAX_NAME_BYTES, keys};

/// Most metadata entries we accept (real models have a few dozen).
pub const MAX_KVS: u64 = 1 << 16;
/// Most tensors we accept (the largest MoE models have tens of thousands).
pub const MAX_TENSORS: u64 = 1 << 20;
/// Deepest array nesting: ggml refuses arrays of arrays.
const MAX_ARRAY_DEPTH: u32 = 1;

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// ggml `ne` (fastest-varying first; numpy shape reversed).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Size of the data in bytes (validated at read time, so it cannot overflow).
    pub fn n_bytes(&self) -> u64 {
        dtype::tensor_nbytes(self.ggml_type, &self.dims).unwrap_or(0)
    }
}

/// A GGUF file's header.
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// The file.
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// File size in bytes.
    pub file_size: u64,
}

struct Cursor {
    r: BufReader<File>,
    pos: u64,
    size: u64,
    path: PathBuf,
}

impl Cursor {
    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn truncated(&self, what: &str) -> Error {
        Error::Truncated {
            path: self.path.clone(),
            what: what.to_string(),
            size: self.size,
        }
    }

    fn invalid(&self, what: String) -> Error {
        Error::Invalid {
            path: self.path.clone(),
            what,
        }
    }

    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        if self.remaining() < N as u64 {
            return Err(self.truncated(what));
        }
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| self.io(e))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, Error> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.truncated(&format!("{what} ({len} bytes declared)")));
        }
        let mut buf = vec![0u8; len as usize];
        self.r.read_exact(&mut buf).map_err(|e| self.io(e))?;
        self.pos += len;
        String::from_utf8(buf).map_err(|_| self.invalid(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: ValueType, what: &str, depth: u32) -> Result<Value, Error> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.bytes::<1>(what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.bytes(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.bytes(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.bytes(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.bytes(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.bytes(what)?)),
            ValueType::Bool => match self.bytes::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(
                        self.invalid(format!("{what}: boolean byte is {b}, expected 0 or 1"))
                    );
                }
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.bytes(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.bytes(what)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(format!("{what}: nested arrays are not allowed")));
                }
                let id = self.u32(what)?;
                let element_type = ValueType::from_id(id).ok_or_else(|| {
                    self.invalid(format!("{what}: unknown array element type {id}"))
                })?;
                let count = self.u64(what)?;
                // Every element takes at least one byte (strings: 8), so the file bounds the count.
                let min_size = element_type.fixed_size().unwrap_or(8);
                if count
                    .checked_mul(min_size)
                    .is_none_or(|need| need > self.remaining())
                {
                    return Err(self.truncated(&format!("{what} ({count} elements declared)")));
                }
                let mut values = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    values.push(self.value(element_type, what, depth + 1)?);
                }
                Value::Array(Array {
                    element_type,
                    values,
                })
            }
        })
    }
}

impl GgufFile {
    /// Read and validate the header of `path`. Tensor data is not read.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut c = Cursor {
            r: BufReader::with_capacity(1 << 16, file),
            pos: 0,
            size,
            path: path.to_path_buf(),
        };

        let magic: [u8; 4] = c.bytes("magic")?;
        if magic != MAGIC {
            return Err(Error::BadMagic {
                path: path.to_path_buf(),
                found: magic.to_vec(),
            });
        }
        let raw_version: [u8; 4] = c.bytes("version")?;
        let version = u32::from_le_bytes(raw_version);
        if version & 0x0000_ffff == 0 && u32::from_be_bytes(raw_version) <= 3 {
            return Err(Error::BigEndian {
                path: path.to_path_buf(),
            });
        }
        if !(2..=3).contains(&version) {
            return Err(Error::Version {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        let limit = |what: &str, value: u64, limit: u64| {
            if value > limit {
                Err(Error::Limit {
                    path: path.to_path_buf(),
                    what: what.into(),
                    value,
                    limit,
                })
            } else {
                Ok(())
            }
        };
        limit("the tensor count", n_tensors, MAX_TENSORS)?;
        limit("the metadata count", n_kv, MAX_KVS)?;

        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(c.invalid(format!("duplicate metadata key `{key}`")));
            }
            let id = c.u32(&format!("type of `{key}`"))?;
            let ty = ValueType::from_id(id)
                .ok_or_else(|| c.invalid(format!("`{key}` has unknown value type {id}")))?;
            let value = c.value(ty, &format!("value of `{key}`"), 0)?;
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == keys::GENERAL_ALIGNMENT) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if *a != 0 && a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(c.invalid(format!(
                    "`{}` must be a non-zero power of two stored as UINT32, found {v:?}",
                    keys::GENERAL_ALIGNMENT
                )));
            }
        };

        let mut tensors: Vec<TensorInfo> =
            Vec::with_capacity(n_tensors.min(c.remaining() / 24) as usize);
        let mut names = std::collections::HashSet::new();
        let mut expected_offset = 0u64;
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor {i}"))?;
            if name.len() >= MAX_NAME_BYTES {
                return Err(c.invalid(format!(
                    "tensor name `{name}` is {} bytes; ggml allows at most {}",
                    name.len(),
                    MAX_NAME_BYTES - 1
                )));
            }
            if !names.insert(name.clone()) {
                return Err(c.invalid(format!("duplicate tensor name `{name}`")));
            }
            let n_dims = c.u32(&format!("dimensions of `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(c.invalid(format!(
                    "tensor `{name}` has {n_dims} dimensions; ggml allows at most {MAX_DIMS}"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64(&format!("shape of `{name}`"))?;
                if d > i64::MAX as u64 {
                    return Err(c.invalid(format!("tensor `{name}` has a negative dimension")));
                }
                dims.push(d);
            }
            let id = c.u32(&format!("type of `{name}`"))?;
            let ggml_type = GgmlType::from_id(id)
                .ok_or_else(|| c.invalid(format!("tensor `{name}` has unknown ggml type {id}")))?;
            let offset = c.u64(&format!("offset of `{name}`"))?;
            let nbytes = dtype::tensor_nbytes(ggml_type, &dims).ok_or_else(|| {
                c.invalid(format!(
                    "tensor `{name}` of type {} with ne {dims:?}: size overflows, or ne[0] is not a multiple of the \
                     block size {}",
                    ggml_type.name(),
                    ggml_type.block_size()
                ))
            })?;
            if offset != expected_offset {
                return Err(c.invalid(format!(
                    "tensor `{name}` has offset {offset}, expected {expected_offset}"
                )));
            }
            expected_offset = pad(expected_offset.checked_add(nbytes), alignment)
                .ok_or_else(|| c.invalid(format!("tensor `{name}`: data offsets overflow")))?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }

        let data_offset = pad(Some(c.pos), alignment).unwrap_or(u64::MAX);
        for t in &tensors {
            let start = data_offset.saturating_add(t.offset);
            let end = start.saturating_add(t.n_bytes());
            if end > size {
                return Err(Error::DataOutOfBounds {
                    path: path.to_path_buf(),
                    name: t.name.clone(),
                    start,
                    end,
                    size,
                });
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_size: size,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// An integer metadata value (any non-negative integer type).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// A numeric metadata value.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str(keys::GENERAL_ARCHITECTURE)
    }

    /// A tensor's header entry.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of one tensor (one positioned read).
    pub fn read_tensor_bytes(&self, name: &str) -> Result<Vec<u8>, Error> {
        let t = self.tensor(name).ok_or_else(|| Error::NoTensor {
            path: self.path.clone(),
            name: name.into(),
        })?;
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(self.data_offset + t.offset))
            .map_err(io)?;
        let mut buf = vec![0u8; t.n_bytes() as usize];
        f.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }

    /// One tensor decoded to f32 (F32, F16, BF16, Q8_0).
    pub fn read_tensor_f32(&self, name: &str) -> Result<Vec<f32>, Error> {
        let t = self.tensor(name).ok_or_else(|| Error::NoTensor {
            path: self.path.clone(),
            name: name.into(),
        })?;
        let bytes = self.read_tensor_bytes(name)?;
        let mut out = Vec::new();
        dtype::decode(t.ggml_type, &bytes, &mut out)?;
        Ok(out)
    }
}

/// Round up to a multiple of `alignment` (a power of two), None on overflow.
pub fn pad(x: Option<u64>, alignment: u64) -> Option<u64> {
    x?.checked_add(alignment - 1).map(|v| v & !(alignment - 1))
}
