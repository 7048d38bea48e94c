//! A streamed GGUF writer: [`Writer::new`] checks the whole description and writes the header, then each
//! tensor's bytes are passed in declared order with [`Writer::write_tensor`]; the caller never holds the file.
//!
//! The bytes are those of gguf-py's `GGUFWriter` for the same inputs (checked against a file it wrote, see
//! `fixtures/gguf/`): version 3, keys in the caller's order (gguf-py writes `general.architecture` first — build
//! the list that way to match it), tensor infos in declared order, zero padding to the alignment after the
//! infos and after every tensor including the last. The alignment is `general.alignment` when the metadata has
//! it (a u32 power of two), else [`super::DEFAULT_ALIGNMENT`]. All sizes and offsets are 64-bit.
//!
//! Everything the reader ([`super::read`]) and ggml would reject is rejected here first, before a byte is written.

use std::collections::HashSet;
use std::io::Write;

use super::dtype::{self, GgmlType};
use super::value::{Array, Value, ValueType};
use super::{Error, MAGIC, MAX_DIMS, MAX_NAME_BYTES, Origin, VERSION, pad};

/// Zero bytes written as padding, in pieces of this size.
const ZEROS: [u8; 4096] = [0; 4096];

/// A tensor to be written: name, shape and type (its data comes later, through [`Writer::write_tensor`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name; shorter than 64 bytes.
    pub name: String,
    /// Shape in ggml order (`ne`, the reverse of the numpy shape); at most 4 dimensions.
    pub dims: Vec<u64>,
    /// Element type; `dims[0]` must be a multiple of its block size.
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    /// A spec from its parts.
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ggml_type: GgmlType) -> Self {
        TensorSpec {
            name: name.into(),
            dims,
            ggml_type,
        }
    }

    /// Bytes of data the tensor needs (`None` if the shape overflows or does not fit the block size).
    pub fn n_bytes(&self) -> Option<u64> {
        dtype::tensor_nbytes(self.ggml_type, &self.dims)
    }
}

/// Where everything goes in the file, computed from the description alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Data alignment.
    pub alignment: u64,
    /// Bytes of magic, counts, metadata and tensor infos (before the padding).
    pub header_len: u64,
    /// Absolute offset of the data section (`header_len` padded to the alignment).
    pub data_offset: u64,
    /// Each tensor's offset relative to the data section, in declared order.
    pub offsets: Vec<u64>,
    /// Each tensor's data size in bytes, without padding.
    pub sizes: Vec<u64>,
    /// Bytes of the data section, padding included.
    pub data_len: u64,
}

impl Layout {
    /// Size of the whole file.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.data_len
    }

    /// Check `metadata` and `tensors` and compute the layout, without writing anything.
    pub fn of(metadata: &[(String, Value)], tensors: &[TensorSpec]) -> Result<Self, Error> {
        plan(metadata, tensors).map(|(layout, _)| layout)
    }
}

/// Writes one GGUF file to `W` (give it a `BufWriter`; data is passed through as given).
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    layout: Layout,
    names: Vec<String>,
    next: usize,
    written: u64,
}

impl<W: Write> Writer<W> {
    /// Check the description, then write the header and the padding up to the data section.
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, Error> {
        let (layout, header) = plan(metadata, tensors)?;
        out.write_all(&header).map_err(|source| Error::Write {
            what: "header".into(),
            source,
        })?;
        let mut writer = Writer {
            out,
            names: tensors.iter().map(|t| t.name.clone()).collect(),
            next: 0,
            written: header.len() as u64,
            layout,
        };
        writer.zeros(writer.layout.data_offset - writer.written, "header padding")?;
        Ok(writer)
    }

    /// The layout being written.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The name of the tensor [`Writer::write_tensor`] expects next, if any.
    pub fn next_tensor(&self) -> Option<&str> {
        self.names.get(self.next).map(String::as_str)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Write the data of the next declared tensor (exactly its size) and the padding after it.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let Some(expected) = self.names.get(self.next) else {
            return Err(Error::TensorOutOfOrder {
                tensor: name.to_string(),
                expected: None,
            });
        };
        if expected != name {
            return Err(Error::TensorOutOfOrder {
                tensor: name.to_string(),
                expected: Some(expected.clone()),
            });
        }
        let size = self.layout.sizes.get(self.next).copied().unwrap_or(0);
        if bytes.len() as u64 != size {
            return Err(Error::TensorSizeMismatch {
                tensor: name.to_string(),
                expected: size,
                found: bytes.len() as u64,
            });
        }
        self.out.write_all(bytes).map_err(|source| Error::Write {
            what: format!("tensor `{name}`"),
            source,
        })?;
        self.written += size;
        self.zeros(
            pad(size, self.layout.alignment).unwrap_or(size) - size,
            "tensor padding",
        )?;
        self.next += 1;
        Ok(())
    }

    /// Check that every declared tensor was written, flush, and return the writer.
    pub fn finish(mut self) -> Result<W, Error> {
        if let Some(next) = self.names.get(self.next) {
            return Err(Error::MissingTensors {
                missing: self.names.len() - self.next,
                next: next.clone(),
            });
        }
        self.out.flush().map_err(|source| Error::Write {
            what: "(flush)".into(),
            source,
        })?;
        Ok(self.out)
    }

    fn zeros(&mut self, mut n: u64, what: &str) -> Result<(), Error> {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            let chunk = ZEROS.get(..k as usize).unwrap_or(&[]);
            self.out.write_all(chunk).map_err(|source| Error::Write {
                what: what.into(),
                source,
            })?;
            self.written += k;
            n -= k;
        }
        Ok(())
    }
}

/// Check everything, then encode the header (without padding) and compute the layout.
pub(super) fn plan(
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
) -> Result<(Layout, Vec<u8>), Error> {
    let alignment = check_metadata(metadata)?;
    let (offsets, sizes, data_len) = check_tensors(tensors, alignment)?;

    let mut h = Vec::with_capacity(4096);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut h, key);
        h.extend_from_slice(&value.value_type().id().to_le_bytes());
        put_value(&mut h, value);
    }
    for (t, offset) in tensors.iter().zip(&offsets) {
        put_str(&mut h, &t.name);
        h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
    }
    let header_len = h.len() as u64;
    // gguf-py and ggml pad after the infos even with no tensors.
    let overflow = || Error::ShapeOverflow {
        origin: Origin::Output,
        tensor: String::new(),
        dims: Vec::new(),
    };
    let data_offset = pad(header_len, alignment).ok_or_else(overflow)?;
    data_offset.checked_add(data_len).ok_or_else(overflow)?;
    Ok((
        Layout {
            alignment,
            header_len,
            data_offset,
            offsets,
            sizes,
            data_len,
        },
        h,
    ))
}

/// Keys non-empty and unique, arrays homogeneous and flat, `general.alignment` valid; returns the alignment.
fn check_metadata(metadata: &[(String, Value)]) -> Result<u64, Error> {
    let mut seen = HashSet::new();
    for (index, (key, value)) in (0u64..).zip(metadata) {
        if key.is_empty() {
            return Err(Error::EmptyKey {
                origin: Origin::Output,
                index,
            });
        }
        if !seen.insert(key.as_str()) {
            return Err(Error::DuplicateKey {
                origin: Origin::Output,
                key: key.clone(),
            });
        }
        if let Value::Array(array) = value {
            check_array(key, array)?;
        }
    }
    super::alignment(metadata, || Origin::Output)
}

fn check_array(key: &str, array: &Array) -> Result<(), Error> {
    let invalid = |index, found| Error::InvalidArray {
        origin: Origin::Output,
        key: key.to_string(),
        element_type: array.element_type,
        index,
        found,
    };
    if array.element_type == ValueType::Array {
        return Err(invalid(0, ValueType::Array));
    }
    match array
        .values
        .iter()
        .position(|v| v.value_type() != array.element_type)
    {
        Some(i) => Err(invalid(
            i,
            array
                .values
                .get(i)
                .map_or(ValueType::Array, Value::value_type),
        )),
        None => Ok(()),
    }
}

/// Names, shapes and types as ggml requires; returns (offsets, sizes, padded data length).
fn check_tensors(
    tensors: &[TensorSpec],
    alignment: u64,
) -> Result<(Vec<u64>, Vec<u64>, u64), Error> {
    let mut seen = HashSet::new();
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut end = 0u64;
    for t in tensors {
        let tensor = || t.name.clone();
        let origin = Origin::Output;
        if t.name.len() >= MAX_NAME_BYTES {
            return Err(Error::TensorNameTooLong {
                origin,
                tensor: tensor(),
                len: t.name.len() as u64,
            });
        }
        if !seen.insert(t.name.as_str()) {
            return Err(Error::DuplicateTensor {
                origin,
                tensor: tensor(),
            });
        }
        if t.dims.len() > MAX_DIMS {
            return Err(Error::TooManyDims {
                origin,
                tensor: tensor(),
                n_dims: t.dims.len() as u64,
            });
        }
        if let Some((index, &value)) = t
            .dims
            .iter()
            .enumerate()
            .find(|(_, d)| **d > i64::MAX as u64)
        {
            return Err(Error::InvalidDimension {
                origin,
                tensor: tensor(),
                index,
                value,
            });
        }
        let overflow = || Error::ShapeOverflow {
            origin: Origin::Output,
            tensor: tensor(),
            dims: t.dims.clone(),
        };
        if dtype::element_count(&t.dims).is_none() {
            return Err(overflow());
        }
        let ne0 = t.dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(t.ggml_type.block_size()) {
            return Err(Error::BlockSizeMismatch {
                origin,
                tensor: tensor(),
                ggml_type: t.ggml_type,
                ne0,
            });
        }
        let size = t.n_bytes().ok_or_else(overflow)?;
        offsets.push(end);
        sizes.push(size);
        end = pad(size, alignment)
            .and_then(|p| end.checked_add(p))
            .ok_or_else(overflow)?;
    }
    Ok((offsets, sizes, end))
}

pub(super) fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

pub(super) fn put_value(h: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::I8(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => h.push(u8::from(*v)),
        Value::String(s) => put_str(h, s),
        Value::Array(a) => {
            h.extend_from_slice(&a.element_type.id().to_le_bytes());
            h.extend_from_slice(&(a.values.len() as u64).to_le_bytes());
            for v in &a.values {
                put_value(h, v);
            }
        }
        Value::U64(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => h.extend_from_slice(&v.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::tests::parse;

    fn kv(key: &str, value: Value) -> (String, Value) {
        (key.to_string(), value)
    }

    fn new_err(metadata: &[(String, Value)], tensors: &[TensorSpec]) -> Error {
        Writer::new(Vec::new(), metadata, tensors).unwrap_err()
    }

    /// Fails every write after `ok` bytes.
    #[derive(Debug)]
    struct FailAfter {
        ok: usize,
    }

    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if buf.len() > self.ok {
                return Err(std::io::Error::other("disk full"));
            }
            self.ok -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn specs() -> Vec<TensorSpec> {
        vec![
            TensorSpec::new("a", vec![3], GgmlType::F32),
            TensorSpec::new("b", vec![32, 2], GgmlType::Q8_0),
        ]
    }

    #[test]
    fn write() {
        let e = Writer::new(FailAfter { ok: 10 }, &[], &specs()).unwrap_err();
        assert!(matches!(&e, Error::Write { what, .. } if what == "header"));
        assert_eq!(e.to_string(), "writing GGUF header: disk full");
        let layout = Layout::of(&[], &specs()).unwrap();
        let mut w = Writer::new(
            FailAfter {
                ok: layout.data_offset as usize + 4,
            },
            &[],
            &specs(),
        )
        .unwrap();
        let e = w.write_tensor("a", &[0; 12]).unwrap_err();
        assert_eq!(e.to_string(), "writing GGUF tensor `a`: disk full");
    }

    #[test]
    fn invalid_array() {
        let mixed = kv(
            "k",
            Value::Array(Array::new(
                ValueType::U32,
                vec![Value::U32(1), Value::I32(2)],
            )),
        );
        let e = new_err(&[mixed], &[]);
        assert!(matches!(
            e,
            Error::InvalidArray {
                index: 1,
                found: ValueType::I32,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "GGUF output: array `k` is declared as u32 but element 1 is i32"
        );
        let nested = kv("n", Value::Array(Array::new(ValueType::Array, Vec::new())));
        assert_eq!(
            new_err(&[nested], &[]).to_string(),
            "GGUF output: array `n` is an array of arrays, which ggml cannot read"
        );
    }

    #[test]
    fn tensor_out_of_order() {
        let mut w = Writer::new(Vec::new(), &[], &specs()).unwrap();
        let e = w.write_tensor("b", &[0; 68]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor `b` written out of order: the next declared tensor is `a`"
        );
        // Nothing was written: the writer can go on.
        w.write_tensor("a", &[0; 12]).unwrap();
        w.write_tensor("b", &[0; 68]).unwrap();
        let e = w.write_tensor("c", &[]).unwrap_err();
        assert!(matches!(&e, Error::TensorOutOfOrder { expected: None, .. }));
        assert_eq!(
            e.to_string(),
            "tensor `c` written out of order: all declared tensors were already written"
        );
        let bytes = w.finish().unwrap();
        assert_eq!(parse(&bytes).unwrap().tensors.len(), 2);
    }

    #[test]
    fn tensor_size_mismatch() {
        let mut w = Writer::new(Vec::new(), &[], &specs()).unwrap();
        let e = w.write_tensor("a", &[0; 16]).unwrap_err();
        assert!(matches!(
            e,
            Error::TensorSizeMismatch {
                expected: 12,
                found: 16,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "tensor `a`: got 16 bytes of data, its shape and type need 12"
        );
    }

    #[test]
    fn missing_tensors() {
        let mut w = Writer::new(Vec::new(), &[], &specs()).unwrap();
        w.write_tensor("a", &[0; 12]).unwrap();
        let e = w.finish().unwrap_err();
        assert!(matches!(e, Error::MissingTensors { missing: 1, .. }));
        assert_eq!(
            e.to_string(),
            "GGUF output incomplete: 1 declared tensors were not written, starting with `b`"
        );
    }

    /// The checks shared with the reader, on the writer's side (each variant's own test is in `read.rs`).
    #[test]
    fn writer_rejects_what_ggml_rejects() {
        let t = |name: &str, dims: Vec<u64>, ty| vec![TensorSpec::new(name, dims, ty)];
        let e = new_err(&[kv("", Value::U8(1))], &[]);
        assert_eq!(e.to_string(), "GGUF output: key #0 is empty");
        let e = new_err(&[kv("k", Value::U8(1)), kv("k", Value::U8(2))], &[]);
        assert_eq!(e.to_string(), "GGUF output: duplicate key `k`");
        let e = new_err(&[kv("general.alignment", Value::U64(32))], &[]);
        assert_eq!(
            e.to_string(),
            "GGUF output: `general.alignment` must be of type u32 but is u64"
        );
        let e = new_err(&[kv("general.alignment", Value::U32(0))], &[]);
        assert!(matches!(
            e,
            Error::InvalidAlignment {
                origin: Origin::Output,
                alignment: 0
            }
        ));
        let e = new_err(&[], &t(&"x".repeat(64), vec![1], GgmlType::F32));
        assert!(matches!(e, Error::TensorNameTooLong { len: 64, .. }));
        let e = new_err(&[], &[specs(), specs()].concat());
        assert_eq!(e.to_string(), "GGUF output: duplicate tensor name `a`");
        let e = new_err(&[], &t("a", vec![1; 5], GgmlType::F32));
        assert_eq!(
            e.to_string(),
            "GGUF output: tensor `a` has 5 dimensions; ggml allows at most 4"
        );
        let e = new_err(&[], &t("a", vec![1, u64::MAX], GgmlType::F32));
        assert!(matches!(
            e,
            Error::InvalidDimension {
                index: 1,
                value: u64::MAX,
                ..
            }
        ));
        let e = new_err(&[], &t("a", vec![1 << 62], GgmlType::F32));
        assert!(matches!(e, Error::ShapeOverflow { .. }));
        let e = new_err(&[], &t("a", vec![48, 2], GgmlType::Q8_0));
        assert_eq!(
            e.to_string(),
            "GGUF output: tensor `a` of type q8_0 has 48 elements per row, not a multiple of the block size 32"
        );
        // The running data size: tensors of 2^62 bytes each fit alone; the fourth overflows the sum.
        let huge: Vec<_> = (0..4)
            .map(|i| TensorSpec::new(format!("h{i}"), vec![1 << 60], GgmlType::F32))
            .collect();
        let e = new_err(&[], &huge);
        assert!(
            matches!(&e, Error::ShapeOverflow { tensor, .. } if tensor == "h3"),
            "{e}"
        );
        Layout::of(&[], &huge[..3]).unwrap();
    }

    #[test]
    fn custom_alignment_is_used_for_every_tensor() {
        let metadata = [kv("general.alignment", Value::U32(256))];
        let layout = Layout::of(&metadata, &specs()).unwrap();
        assert_eq!(
            (
                layout.alignment,
                layout.data_offset % 256,
                layout.offsets[1]
            ),
            (256, 0, 256)
        );
        assert_eq!(layout.data_len, 512);
    }
}
