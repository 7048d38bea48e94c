//! A GGUF file written at known offsets: [`PositionedWriter::new`] checks the description and writes the header,
//! then each tensor's data goes straight to its place, in any order and from any thread (positioned writes share
//! no cursor). The file's bytes are those of [`super::Writer`] for the same description and data: the padding is
//! zeros either way (bytes never written read as zero, and [`PositionedWriter::finish`] sets the final length).
//!
//! This is what lets the converter encode several tensors at once and write each one from the core that encoded
//! it, while its bytes are still in that core's cache.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Error;
use super::value::Value;
use super::write::{Layout, TensorSpec, plan};

/// Writes one GGUF file into `file` (which should be empty) by tensor index.
#[derive(Debug)]
pub struct PositionedWriter<'f> {
    file: &'f File,
    layout: Layout,
    names: Vec<String>,
    written: Vec<AtomicBool>,
}

impl<'f> PositionedWriter<'f> {
    /// Check the description, then write the header at the start of `file`.
    pub fn new(
        file: &'f File,
        metadata: &[(String, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, Error> {
        let (layout, header) = plan(metadata, tensors)?;
        reserve(file, layout.file_len()).map_err(|source| Error::Write {
            what: format!("fallocate of all {} bytes", layout.file_len()),
            source,
        })?;
        write_at(file, &header, 0).map_err(|source| Error::Write {
            what: "header".into(),
            source,
        })?;
        Ok(PositionedWriter {
            file,
            layout,
            names: tensors.iter().map(|t| t.name.clone()).collect(),
            written: tensors.iter().map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// The layout being written.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Write the data of declared tensor `index` (exactly its size) at its offset.
    pub fn write_tensor(&self, index: usize, bytes: &[u8]) -> Result<(), Error> {
        let (Some(name), Some(&offset), Some(&size), Some(done)) = (
            self.names.get(index),
            self.layout.offsets.get(index),
            self.layout.sizes.get(index),
            self.written.get(index),
        ) else {
            return Err(Error::TensorOutOfOrder {
                tensor: format!("#{index}"),
                expected: None,
            });
        };
        if bytes.len() as u64 != size {
            return Err(Error::TensorSizeMismatch {
                tensor: name.clone(),
                expected: size,
                found: bytes.len() as u64,
            });
        }
        write_at(self.file, bytes, self.layout.data_offset + offset).map_err(|source| {
            Error::Write {
                what: format!("tensor `{name}`"),
                source,
            }
        })?;
        done.store(true, Ordering::Release);
        Ok(())
    }

    /// Check that every declared tensor was written and give the file its final length (the padding after the
    /// last tensor); returns that length.
    pub fn finish(self) -> Result<u64, Error> {
        if let Some(first) = self.written.iter().position(|w| !w.load(Ordering::Acquire)) {
            let missing = self
                .written
                .iter()
                .filter(|w| !w.load(Ordering::Acquire))
                .count();
            return Err(Error::MissingTensors {
                missing,
                next: self.names.get(first).cloned().unwrap_or_default(),
            });
        }
        let len = self.layout.file_len();
        self.file.set_len(len).map_err(|source| Error::Write {
            what: "final padding".into(),
            source,
        })?;
        Ok(len)
    }
}

/// Allocate the whole file's blocks before any data is written: a full disk fails here, before a tensor is
/// encoded, and ext4 copies written data into allocated blocks for about half the kernel time of delayed
/// allocation (BENCHMARKS.md). A filesystem that cannot preallocate is simply written as it comes.
#[cfg(target_os = "linux")]
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve(_file: &File, _len: u64) -> std::io::Result<()> {
    Ok(())
}

/// Write all of `buf` to `file` at `offset`.
#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_write(file, buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = buf.get(n..).unwrap_or_default();
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgmlType, Writer, keys};

    fn description() -> (Vec<(String, Value)>, Vec<TensorSpec>) {
        let metadata = vec![
            (
                keys::GENERAL_ARCHITECTURE.to_string(),
                Value::String("llama".into()),
            ),
            (keys::GENERAL_ALIGNMENT.to_string(), Value::U32(64)),
        ];
        let tensors = vec![
            TensorSpec::new("a", vec![3, 1], GgmlType::F32),
            TensorSpec::new("b", vec![32, 2], GgmlType::Q8_0),
            TensorSpec::new("c", vec![5], GgmlType::F16),
        ];
        (metadata, tensors)
    }

    fn data(spec: &TensorSpec, seed: u8) -> Vec<u8> {
        let n = spec.n_bytes().unwrap() as usize;
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn any_write_order_gives_the_streamed_writers_bytes() {
        let (metadata, tensors) = description();
        let mut streamed = Writer::new(Vec::new(), &metadata, &tensors).unwrap();
        for (i, t) in tensors.iter().enumerate() {
            streamed.write_tensor(&t.name, &data(t, i as u8)).unwrap();
        }
        let streamed = streamed.finish().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.gguf");
        let file = File::create(&path).unwrap();
        let w = PositionedWriter::new(&file, &metadata, &tensors).unwrap();
        for i in [2, 0, 1] {
            w.write_tensor(i, &data(&tensors[i], i as u8)).unwrap();
        }
        assert_eq!(w.finish().unwrap(), streamed.len() as u64);
        assert!(std::fs::read(&path).unwrap() == streamed);
    }

    #[test]
    fn a_missing_tensor_or_a_wrong_size_is_an_error() {
        let (metadata, tensors) = description();
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("p.gguf")).unwrap();
        let w = PositionedWriter::new(&file, &metadata, &tensors).unwrap();
        let e = w.write_tensor(1, &[0; 3]).unwrap_err();
        assert!(
            matches!(&e, Error::TensorSizeMismatch { tensor, expected: 68, found: 3 } if tensor == "b"),
            "{e}"
        );
        assert!(matches!(
            w.write_tensor(3, &[]),
            Err(Error::TensorOutOfOrder { .. })
        ));
        w.write_tensor(0, &data(&tensors[0], 0)).unwrap();
        w.write_tensor(2, &data(&tensors[2], 2)).unwrap();
        let e = w.finish().unwrap_err();
        assert!(
            matches!(&e, Error::MissingTensors { missing: 1, next } if next == "b"),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_cannot_be_written_fails_before_any_data() {
        let (metadata, tensors) = description();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.gguf");
        File::create(&path).unwrap();
        // Opened read-only: the first thing done to the file fails, and the error says what it was.
        let file = File::open(&path).unwrap();
        let e = PositionedWriter::new(&file, &metadata, &tensors).unwrap_err();
        let len = Layout::of(&metadata, &tensors).unwrap().file_len();
        let expected = if cfg!(target_os = "linux") {
            format!("writing GGUF fallocate of all {len} bytes: ")
        } else {
            "writing GGUF header: ".to_string()
        };
        assert!(e.to_string().starts_with(&expected), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
