//! A streamed GGUF v3 writer: the header (metadata, tensor infos, padding) is written when the writer is created;
//! each tensor's bytes follow in the declared order, each padded to the alignment — exactly gguf-py's layout, so
//! the caller never holds more than one tensor in memory. Offsets are u64 throughout (files beyond 4 GiB work).

use std::io::Write;

use super::dtype::{self, GgmlType};
use super::read::pad;
use super::value::{Value, ValueType};
use super::{DEFAULT_ALIGNMENT, Error, MAGIC, MAX_DIMS, MAX_NAME_BYTES, VERSION};

/// A tensor to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name (fewer than 64 bytes).
    pub name: String,
    /// ggml `ne`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
}

/// Writes one GGUF file to `W`.
pub struct Writer<W: Write> {
    out: W,
    sizes: Vec<(String, u64)>,
    next: usize,
}

impl<W: Write> Writer<W> {
    /// Validate everything and write the header.
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, Error> {
        let header = header_bytes(metadata, tensors)?;
        out.write_all(&header).map_err(Error::Write)?;
        let sizes = tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    dtype::tensor_nbytes(t.ggml_type, &t.dims).unwrap_or(0),
                )
            })
            .collect();
        Ok(Writer {
            out,
            sizes,
            next: 0,
        })
    }

    /// Write the next tensor's bytes (must match the declared order and size exactly).
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let Some((expected, size)) = self.sizes.get(self.next) else {
            return Err(Error::Output(format!(
                "tensor `{name}` written but all declared tensors are already written"
            )));
        };
        if expected != name {
            return Err(Error::Output(format!(
                "tensor `{name}` written where `{expected}` was declared next"
            )));
        }
        if bytes.len() as u64 != *size {
            return Err(Error::Output(format!(
                "tensor `{name}`: {} bytes given, {size} declared",
                bytes.len()
            )));
        }
        self.out.write_all(bytes).map_err(Error::Write)?;
        let padding = pad(Some(*size), DEFAULT_ALIGNMENT).unwrap_or(*size) - size;
        self.out
            .write_all(&[0u8; DEFAULT_ALIGNMENT as usize][..padding as usize])
            .map_err(Error::Write)?;
        self.next += 1;
        Ok(())
    }

    /// Finish: every declared tensor must have been written. Returns the underlying writer.
    pub fn finish(mut self) -> Result<W, Error> {
        if let Some((name, _)) = self.sizes.get(self.next) {
            return Err(Error::Output(format!(
                "tensor `{name}` was declared but never written"
            )));
        }
        self.out.flush().map_err(Error::Write)?;
        Ok(self.out)
    }
}

/// Total file size for this metadata and these tensors.
pub fn file_size(metadata: &[(String, Value)], tensors: &[TensorSpec]) -> Result<u64, Error> {
    let mut size = header_bytes(metadata, tensors)?.len() as u64;
    for t in tensors {
        let n = dtype::tensor_nbytes(t.ggml_type, &t.dims).unwrap_or(0);
        size = pad(size.checked_add(n), DEFAULT_ALIGNMENT)
            .ok_or_else(|| Error::Output("file size overflows".into()))?;
    }
    Ok(size)
}

/// The header: magic, version, counts, metadata, tensor infos, zero padding to the alignment.
pub fn header_bytes(
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
) -> Result<Vec<u8>, Error> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (i, (key, value)) in metadata.iter().enumerate() {
        if metadata[..i].iter().any(|(k, _)| k == key) {
            return Err(Error::Output(format!("duplicate metadata key `{key}`")));
        }
        if key == super::keys::GENERAL_ALIGNMENT {
            return Err(Error::Output(
                "this writer always uses the default alignment of 32".into(),
            ));
        }
        put_string(&mut h, key);
        h.extend_from_slice(&value.value_type().id().to_le_bytes());
        put_value(&mut h, key, value)?;
    }
    let mut offset = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        if t.name.len() >= MAX_NAME_BYTES {
            return Err(Error::Output(format!(
                "tensor name `{}` is {} bytes; ggml allows at most 63",
                t.name,
                t.name.len()
            )));
        }
        if tensors[..i].iter().any(|o| o.name == t.name) {
            return Err(Error::Output(format!("duplicate tensor name `{}`", t.name)));
        }
        if t.dims.is_empty() || t.dims.len() > MAX_DIMS as usize {
            return Err(Error::Output(format!(
                "tensor `{}` has {} dimensions (1 to 4 allowed)",
                t.name,
                t.dims.len()
            )));
        }
        let n = dtype::tensor_nbytes(t.ggml_type, &t.dims).ok_or_else(|| {
            Error::Output(format!(
                "tensor `{}` of type {} with ne {:?}: ne[0] is not a multiple of {} or the size overflows",
                t.name,
                t.ggml_type.name(),
                t.dims,
                t.ggml_type.block_size()
            ))
        })?;
        put_string(&mut h, &t.name);
        h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
        offset = pad(offset.checked_add(n), DEFAULT_ALIGNMENT)
            .ok_or_else(|| Error::Output("offsets overflow".into()))?;
    }
    let padded = pad(Some(h.len() as u64), DEFAULT_ALIGNMENT).unwrap_or(h.len() as u64);
    h.resize(padded as usize, 0);
    Ok(h)
}

fn put_string(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, key: &str, v: &Value) -> Result<(), Error> {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(u8::from(*x)),
        Value::String(s) => put_string(h, s),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => {
            if a.element_type == ValueType::Array {
                return Err(Error::Output(format!(
                    "`{key}`: nested arrays are not allowed"
                )));
            }
            if let Some(bad) = a.values.iter().find(|x| x.value_type() != a.element_type) {
                return Err(Error::Output(format!(
                    "`{key}`: array of {:?} holds a {:?}",
                    a.element_type,
                    bad.value_type()
                )));
            }
            h.extend_from_slice(&a.element_type.id().to_le_bytes());
            h.extend_from_slice(&(a.values.len() as u64).to_le_bytes());
            for x in &a.values {
                put_value(h, key, x)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "write/tests.rs"]
mod tests;
