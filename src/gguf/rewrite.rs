//! Write a new version of an existing GGUF file: the same metadata (copied byte for byte, with some keys set or
//! added) and the same tensors in the same order and shapes, each either copied byte for byte from the source or
//! given new data, possibly in another type.
//!
//! The type of a rewritten tensor is known only when its data is ready (a caller may try several), but the
//! header's length does not depend on types, only its offsets do. So the data section is written first,
//! sequentially from the known data offset, one tensor after another, and the header last, at the start of the
//! file. Memory: the header plus whatever the caller holds for one tensor.
//!
//! The metadata is copied as raw bytes, not re-encoded: string values that are not valid UTF-8 (raw-byte
//! vocabularies) survive unchanged, which a decode-and-encode round trip would not guarantee.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::dtype::GgmlType;
use super::pad;
use super::read::{GgufFile, TensorInfo};
use super::value::{Value, ValueType};
use super::write::{put_str, put_value};
use super::{Error, MAGIC, Origin, VERSION};

/// Zero bytes written as padding.
const ZEROS: [u8; 256] = [0; 256];

/// Each metadata entry of `source` with its raw encoded bytes (key, value type and value), in file order.
pub fn raw_metadata(source: &GgufFile) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let io = |e| Error::Io {
        path: source.path.clone(),
        source: e,
    };
    let mut file = File::open(&source.path).map_err(io)?;
    let len = usize::try_from(source.data_offset).map_err(|_| truncated(source, 0, 0))?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header).map_err(io)?;
    let mut pos = 24usize;
    let mut out = Vec::with_capacity(source.metadata.len());
    for (key, _) in &source.metadata {
        let start = pos;
        let key_len = read_u64(&header, &mut pos, source)?;
        pos = advance(pos, key_len, &header, source)?;
        let ty = read_u32(&header, &mut pos, source)?;
        skip_value(&header, &mut pos, ty, source)?;
        let raw = header
            .get(start..pos)
            .ok_or_else(|| truncated(source, start, pos))?;
        out.push((key.clone(), raw.to_vec()));
    }
    Ok(out)
}

fn truncated(source: &GgufFile, at: usize, need: usize) -> Error {
    Error::Truncated {
        path: source.path.clone(),
        what: "metadata (re-read for copying)".into(),
        offset: at as u64,
        needed: need.saturating_sub(at) as u64,
        available: source.data_offset.saturating_sub(at as u64),
    }
}

fn advance(pos: usize, n: u64, header: &[u8], source: &GgufFile) -> Result<usize, Error> {
    usize::try_from(n)
        .ok()
        .and_then(|n| pos.checked_add(n))
        .filter(|&end| end <= header.len())
        .ok_or_else(|| truncated(source, pos, header.len() + 1))
}

fn read_u64(header: &[u8], pos: &mut usize, source: &GgufFile) -> Result<u64, Error> {
    let end = advance(*pos, 8, header, source)?;
    let b: [u8; 8] = header
        .get(*pos..end)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| truncated(source, *pos, end))?;
    *pos = end;
    Ok(u64::from_le_bytes(b))
}

fn read_u32(header: &[u8], pos: &mut usize, source: &GgufFile) -> Result<u32, Error> {
    let end = advance(*pos, 4, header, source)?;
    let b: [u8; 4] = header
        .get(*pos..end)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| truncated(source, *pos, end))?;
    *pos = end;
    Ok(u32::from_le_bytes(b))
}

fn skip_value(header: &[u8], pos: &mut usize, ty: u32, source: &GgufFile) -> Result<(), Error> {
    let vt = ValueType::try_from(ty).map_err(|_| truncated(source, *pos, header.len() + 1))?;
    match vt {
        ValueType::String => {
            let n = read_u64(header, pos, source)?;
            *pos = advance(*pos, n, header, source)?;
        }
        ValueType::Array => {
            let et = read_u32(header, pos, source)?;
            let count = read_u64(header, pos, source)?;
            let et_type =
                ValueType::try_from(et).map_err(|_| truncated(source, *pos, header.len() + 1))?;
            match et_type.fixed_size() {
                Some(size) => {
                    let n = count
                        .checked_mul(size)
                        .ok_or_else(|| truncated(source, *pos, usize::MAX))?;
                    *pos = advance(*pos, n, header, source)?;
                }
                None => {
                    for _ in 0..count {
                        skip_value(header, pos, et, source)?;
                    }
                }
            }
        }
        fixed => {
            let n = fixed.fixed_size().unwrap_or(0);
            *pos = advance(*pos, n, header, source)?;
        }
    }
    Ok(())
}

/// Encode one metadata entry as it is stored (key, value type, value).
pub fn encode_entry(key: &str, value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    put_str(&mut out, key);
    out.extend_from_slice(&value.value_type().id().to_le_bytes());
    put_value(&mut out, value);
    out
}

/// Writes the rewritten file into `file` (empty, opened for writing), tensor by tensor in the source's order.
/// Call [`ModelWriter::copy_tensor`], or [`ModelWriter::begin_tensor`], [`ModelWriter::write_data`]… and
/// [`ModelWriter::end_tensor`], once per tensor, then [`ModelWriter::finish`].
#[derive(Debug)]
pub struct ModelWriter<'a> {
    file: &'a File,
    source: &'a GgufFile,
    source_file: File,
    metadata: Vec<Vec<u8>>,
    /// Every tensor of the output: the source's, then the extra ones (name, ne, type as declared).
    tensors: Vec<TensorInfo>,
    data_offset: u64,
    /// Type and offset (relative to the data section) of each tensor finished so far.
    done: Vec<(GgmlType, u64)>,
    /// Offset (relative to the data section) of the next tensor.
    next_offset: u64,
    /// The tensor being written: type, expected size, bytes written so far.
    open: Option<(GgmlType, u64, u64)>,
}

impl<'a> ModelWriter<'a> {
    /// Prepare to rewrite `source` into `file` with `metadata`, the raw entries to write in order (take them from
    /// [`raw_metadata`]; replace or append with [`encode_entry`]), and `extra` tensors after the source's (their
    /// `offset` is ignored). The alignment is the source's.
    pub fn new(
        file: &'a File,
        source: &'a GgufFile,
        metadata: Vec<Vec<u8>>,
        extra: Vec<TensorInfo>,
    ) -> Result<Self, Error> {
        let io = |e| Error::Io {
            path: source.path.clone(),
            source: e,
        };
        let source_file = File::open(&source.path).map_err(io)?;
        let mut tensors = source.tensors.clone();
        tensors.extend(extra);
        let header_len = header(&metadata, &tensors, &[]).len() as u64;
        let data_offset = pad(header_len, source.alignment).ok_or(Error::ShapeOverflow {
            origin: Origin::Output,
            tensor: String::new(),
            dims: Vec::new(),
        })?;
        let mut w = ModelWriter {
            file,
            source,
            source_file,
            metadata,
            tensors,
            data_offset,
            done: Vec::with_capacity(source.tensors.len()),
            next_offset: 0,
            open: None,
        };
        w.seek(data_offset)?;
        Ok(w)
    }

    /// The tensor to be written next (as declared: the source's type).
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.done.len())
    }

    fn seek(&mut self, pos: u64) -> Result<(), Error> {
        let mut f = self.file;
        f.seek(SeekFrom::Start(pos))
            .map(|_| ())
            .map_err(|source| Error::Write {
                what: "(seek)".into(),
                source,
            })
    }

    fn put(&mut self, bytes: &[u8], what: impl Fn() -> String) -> Result<(), Error> {
        let mut f = self.file;
        f.write_all(bytes).map_err(|source| Error::Write {
            what: what(),
            source,
        })
    }

    fn expect_next(&self) -> Result<TensorInfo, Error> {
        if let Some((_, _, _)) = self.open {
            let name = self
                .next_tensor()
                .map(|t| t.name.clone())
                .unwrap_or_default();
            return Err(Error::TensorOutOfOrder {
                tensor: name.clone(),
                expected: Some(name),
            });
        }
        self.next_tensor().cloned().ok_or(Error::TensorOutOfOrder {
            tensor: String::new(),
            expected: None,
        })
    }

    /// Copy the next tensor's bytes from the source unchanged.
    pub fn copy_tensor(&mut self) -> Result<(), Error> {
        let name = self.expect_next()?.name;
        self.copy_tensor_from(&name)
    }

    /// Write the bytes of source tensor `name` as the next tensor (same shape and type: e.g. an untied copy of a
    /// tied embedding).
    pub fn copy_tensor_from(&mut self, name: &str) -> Result<(), Error> {
        let info = self.expect_next()?;
        let from = self
            .source
            .tensor(name)
            .ok_or_else(|| Error::TensorNotFound {
                path: self.source.path.clone(),
                tensor: name.to_string(),
            })?;
        if from.dims != info.dims || from.ggml_type != info.ggml_type {
            return Err(Error::TensorSizeMismatch {
                tensor: info.name.clone(),
                expected: info.n_bytes(),
                found: from.n_bytes(),
            });
        }
        let (start, len) = self.source.tensor_range(name)?;
        self.seek(self.data_offset + self.next_offset)?;
        let path = self.source.path.clone();
        self.source_file
            .seek(SeekFrom::Start(start))
            .map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
        let mut src = (&self.source_file).take(len);
        let mut out = self.file;
        // std::io::copy between two files uses copy_file_range on Linux: no copy through user space.
        let copied = io::copy(&mut src, &mut out).map_err(|source| Error::Write {
            what: format!("tensor `{}`", info.name),
            source,
        })?;
        if copied != len {
            return Err(Error::Truncated {
                path,
                what: format!("tensor `{}`", info.name),
                offset: start,
                needed: len,
                available: copied,
            });
        }
        self.open = Some((info.ggml_type, len, len));
        self.end_tensor()
    }

    /// Start new data for the next tensor, in type `ty` (the source's shape).
    pub fn begin_tensor(&mut self, ty: GgmlType) -> Result<(), Error> {
        let info = self.expect_next()?;
        let size = super::dtype::tensor_nbytes(ty, &info.dims).ok_or(Error::BlockSizeMismatch {
            origin: Origin::Output,
            tensor: info.name.clone(),
            ggml_type: ty,
            ne0: info.dims.first().copied().unwrap_or(0),
        })?;
        // a tensor abandoned half-written is overwritten from its start
        self.seek(self.data_offset + self.next_offset)?;
        self.open = Some((ty, size, 0));
        Ok(())
    }

    /// Append data to the tensor begun with [`ModelWriter::begin_tensor`].
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let name = self
            .next_tensor()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let Some((ty, size, so_far)) = self.open else {
            return Err(Error::TensorOutOfOrder {
                tensor: name,
                expected: None,
            });
        };
        let total = so_far + bytes.len() as u64;
        if total > size {
            return Err(Error::TensorSizeMismatch {
                tensor: name,
                expected: size,
                found: total,
            });
        }
        self.put(bytes, || format!("tensor `{name}`"))?;
        self.open = Some((ty, size, total));
        Ok(())
    }

    /// Finish the current tensor: its size must be complete; pads to the alignment.
    pub fn end_tensor(&mut self) -> Result<(), Error> {
        let name = self
            .next_tensor()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let Some((ty, size, so_far)) = self.open.take() else {
            return Err(Error::TensorOutOfOrder {
                tensor: name,
                expected: None,
            });
        };
        if so_far != size {
            return Err(Error::TensorSizeMismatch {
                tensor: name,
                expected: size,
                found: so_far,
            });
        }
        let end = self.next_offset + size;
        let padded = pad(end, self.source.alignment).unwrap_or(end);
        let mut n = padded - end;
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            self.put(ZEROS.get(..k as usize).unwrap_or(&[]), || "padding".into())?;
            n -= k;
        }
        self.done.push((ty, self.next_offset));
        self.next_offset = padded;
        Ok(())
    }

    /// Check that every tensor was written, write the header at the start of the file; returns the file size.
    pub fn finish(mut self) -> Result<u64, Error> {
        if self.open.is_some() || self.done.len() != self.tensors.len() {
            return Err(Error::MissingTensors {
                missing: self.tensors.len() - self.done.len(),
                next: self
                    .next_tensor()
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
            });
        }
        let h = header(&self.metadata, &self.tensors, &self.done);
        let mut padded = h;
        padded.resize(self.data_offset as usize, 0);
        self.seek(0)?;
        self.put(&padded, || "header".into())?;
        let len = self.data_offset + self.next_offset;
        self.file.set_len(len).map_err(|source| Error::Write {
            what: "(set length)".into(),
            source,
        })?;
        Ok(len)
    }
}

/// The header: magic, version, counts, `metadata` as given, then the tensor infos with the types and offsets in
/// `placed` (the declared type and 0 where not yet known: the same length).
fn header(metadata: &[Vec<u8>], tensors: &[TensorInfo], placed: &[(GgmlType, u64)]) -> Vec<u8> {
    let mut h =
        Vec::with_capacity(metadata.iter().map(Vec::len).sum::<usize>() + 64 * tensors.len());
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for kv in metadata {
        h.extend_from_slice(kv);
    }
    for (i, t) in tensors.iter().enumerate() {
        let (ty, offset) = placed.get(i).copied().unwrap_or((t.ggml_type, 0));
        put_str(&mut h, &t.name);
        h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&ty.id().to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> GgufFile {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        GgufFile::open(&p).unwrap()
    }

    /// Copying every entry and every tensor reproduces the source byte for byte (gguf-py's layout is ours).
    #[test]
    fn a_copy_of_everything_is_the_source() {
        for base in [
            "fixtures/bases/llama/base.gguf",
            "fixtures/bases/qwen2moe/base.gguf",
        ] {
            let src = fixture(base);
            let meta = raw_metadata(&src)
                .unwrap()
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            let out = tempfile::tempfile().unwrap();
            let mut w = ModelWriter::new(&out, &src, meta, Vec::new()).unwrap();
            while w.next_tensor().is_some() {
                w.copy_tensor().unwrap();
            }
            let len = w.finish().unwrap();
            let mut bytes = Vec::new();
            (&out).seek(SeekFrom::Start(0)).unwrap();
            (&out).read_to_end(&mut bytes).unwrap();
            assert_eq!(len, bytes.len() as u64);
            assert!(bytes == std::fs::read(&src.path).unwrap(), "{base}");
        }
    }

    /// New data in another type, a replaced entry and an extra tensor: the reader sees exactly that.
    #[test]
    fn rewritten_tensors_types_and_entries_read_back() {
        let src = fixture("fixtures/bases/llama/base.gguf");
        let mut meta: Vec<Vec<u8>> = Vec::new();
        for (k, v) in raw_metadata(&src).unwrap() {
            if k == "general.name" {
                meta.push(encode_entry(&k, &Value::String("renamed".into())));
            } else {
                meta.push(v);
            }
        }
        meta.push(encode_entry("x.count", &Value::U32(7)));
        let embd = src.tensor("token_embd.weight").unwrap().clone();
        let extra = TensorInfo {
            name: "output.copy".into(),
            ..embd.clone()
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut w = ModelWriter::new(file.as_file(), &src, meta, vec![extra]).unwrap();
        let mut changed = None;
        while let Some(t) = w.next_tensor().cloned() {
            if t.name == "output.copy" {
                w.copy_tensor_from("token_embd.weight").unwrap();
            } else if changed.is_none() && t.dims.first() == Some(&64) {
                w.begin_tensor(GgmlType::F16).unwrap();
                let n = t.n_elements() as usize;
                w.write_data(&vec![0x3c; n]).unwrap();
                assert!(matches!(
                    w.end_tensor(),
                    Err(Error::TensorSizeMismatch { .. })
                ));
                w.begin_tensor(GgmlType::F16).unwrap();
                w.write_data(&vec![0x3c; n]).unwrap();
                w.write_data(&vec![0x3c; n]).unwrap();
                assert!(w.write_data(&[0]).is_err());
                w.end_tensor().unwrap();
                changed = Some(t.name.clone());
            } else {
                w.copy_tensor().unwrap();
            }
        }
        w.finish().unwrap();
        let back = GgufFile::open(file.path()).unwrap();
        assert_eq!(back.get_str("general.name"), Some("renamed"));
        assert_eq!(back.get_u64("x.count"), Some(7));
        assert_eq!(back.tensors.len(), src.tensors.len() + 1);
        let name = changed.unwrap();
        assert_eq!(back.tensor(&name).unwrap().ggml_type, GgmlType::F16);
        assert!(
            back.read_tensor_bytes(&name)
                .unwrap()
                .iter()
                .all(|&b| b == 0x3c)
        );
        assert_eq!(
            back.read_tensor_bytes("output.copy").unwrap(),
            src.read_tensor_bytes("token_embd.weight").unwrap()
        );
        for t in &src.tensors {
            if t.name != name {
                assert_eq!(
                    back.read_tensor_bytes(&t.name).unwrap(),
                    src.read_tensor_bytes(&t.name).unwrap()
                );
            }
        }
    }
}
