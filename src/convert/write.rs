//! Stream the planned pairs into a GGUF file: a temporary file in the target directory, renamed into place only
//! when complete (and verified, when asked), so a failure never leaves a half-written adapter behind.
//!
//! Memory stays a few tensors deep whatever the adapter's size: one tensor is encoded (on the rayon pool, while
//! the next one's bytes are read from the adapter) as a writer thread writes the ones before it, and the buffers
//! go round between them. The file's bytes do not depend on the thread count.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;

use super::error::ConvertError;
use super::factor::{self, HeadCounts};
use super::materialize::{Factors, materialize};
use super::plan::{PairShape, Plan, PlannedPair};
use super::stream::{self, Rows};
use crate::arch::RowTransform;
use crate::gguf::{self, TensorSpec, Value, Writer, keys};
use crate::peft::{Adapter, TensorRef};

/// Encoded tensors queued for the writer thread (beyond the one it is writing).
const QUEUED: usize = 2;

/// A byte buffer that goes round between reader, encoder and writer: `data` only grows (so reusing it never
/// zero-fills), its first `len` bytes are the content.
#[derive(Default)]
struct Buffer {
    data: Vec<u8>,
    len: usize,
}

impl Buffer {
    fn bytes(&self) -> &[u8] {
        self.data.get(..self.len).unwrap_or_default()
    }
}

/// The metadata written, in order (general.architecture first, as gguf-py does).
pub fn metadata(plan: &Plan, adapter: &Adapter) -> Vec<(String, Value)> {
    let mut kv = vec![
        (
            keys::GENERAL_ARCHITECTURE.to_string(),
            Value::String(plan.arch.to_string()),
        ),
        (
            keys::GENERAL_TYPE.to_string(),
            Value::String("adapter".into()),
        ),
        (keys::ADAPTER_TYPE.to_string(), Value::String("lora".into())),
    ];
    let name = adapter
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.is_empty() {
        kv.push((keys::GENERAL_NAME.to_string(), Value::String(name)));
    }
    kv.push((keys::ADAPTER_LORA_ALPHA.to_string(), Value::F32(plan.alpha)));
    if let Some(tokens) = adapter
        .config
        .alora_invocation_tokens
        .as_ref()
        .filter(|t| !t.is_empty())
    {
        kv.push((
            keys::ADAPTER_ALORA_INVOCATION_TOKENS.to_string(),
            Value::Array(gguf::value::Array {
                element_type: gguf::ValueType::U32,
                values: tokens.iter().map(|&t| Value::U32(t)).collect(),
            }),
        ));
    }
    kv.push((
        keys::GENERAL_QUANTIZATION_VERSION.to_string(),
        Value::U32(2),
    ));
    kv
}

/// How one output tensor's data is made.
enum Job<'a> {
    /// A factor of a Linear pair: rows of one adapter tensor (B's gathered by the row transform, times the fold).
    Rows {
        pair: &'a PlannedPair,
        source: &'a TensorRef,
        transform: RowTransform,
        fold: f32,
    },
    /// `lora_a` or `lora_b` of a pair built in f32 by [`materialize`] (embeddings, stacked experts, factors stored
    /// transposed).
    Materialized { pair: &'a PlannedPair, is_a: bool },
}

fn jobs<'a>(plan: &'a Plan, adapter: &'a Adapter) -> Vec<(&'a TensorSpec, Job<'a>)> {
    let mut jobs = Vec::with_capacity(2 * plan.pairs.len());
    for pair in &plan.pairs {
        match (pair.shape, pair.sources.as_slice()) {
            // Streamed from the file's bytes when the rows are stored as llama.cpp reads them; a factor stored
            // transposed (mlx-lm) is built in f32 by `materialize`, which reads it back in PEFT orientation.
            (PairShape::Linear, [s])
                if !adapter.pairs[s.pair].a.transposed && !adapter.pairs[s.pair].b.transposed =>
            {
                let p = &adapter.pairs[s.pair];
                jobs.push((
                    &pair.a,
                    Job::Rows {
                        pair,
                        source: &p.a,
                        transform: RowTransform::Identity,
                        fold: 1.0,
                    },
                ));
                jobs.push((
                    &pair.b,
                    Job::Rows {
                        pair,
                        source: &p.b,
                        transform: s.rows,
                        fold: s.fold as f32,
                    },
                ));
            }
            _ => {
                jobs.push((&pair.a, Job::Materialized { pair, is_a: true }));
                jobs.push((&pair.b, Job::Materialized { pair, is_a: false }));
            }
        }
    }
    jobs
}

/// Write the whole file to `out` (any writer); returns it.
pub fn write_gguf<W: Write + Send>(
    out: W,
    plan: &Plan,
    adapter: &Adapter,
    heads: HeadCounts,
) -> Result<W, ConvertError> {
    let jobs = jobs(plan, adapter);
    let specs: Vec<TensorSpec> = jobs.iter().map(|(spec, _)| (*spec).clone()).collect();
    let writer = Writer::new(out, &metadata(plan, adapter), &specs)?;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<(&str, Buffer)>(QUEUED);
        let (free_tx, free_rx) = mpsc::channel::<Buffer>();
        let written = scope.spawn(move || {
            let mut writer = writer;
            for (name, buffer) in full_rx {
                writer.write_tensor(name, buffer.bytes())?;
                // The encoder may have stopped already; then the buffer is simply dropped.
                let _ = free_tx.send(buffer);
            }
            Ok::<_, gguf::Error>(writer)
        });
        let encoded = encode_all(
            &jobs,
            adapter,
            heads,
            |name, bytes| full_tx.send((name, bytes)).is_ok(),
            || free_rx.try_recv().unwrap_or_default(),
        );
        drop(full_tx);
        let written = written
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // An encoding error comes first; a failed write stops the encoder, which then reports nothing.
        encoded?;
        Ok(written?.finish()?)
    })
}

/// Encode every job in order, handing each tensor's bytes to `send` (false: the writer has stopped). The source
/// of the next `Rows` job is read while the current one is encoded.
fn encode_all<'a>(
    jobs: &[(&'a TensorSpec, Job<'a>)],
    adapter: &Adapter,
    heads: HeadCounts,
    mut send: impl FnMut(&'a str, Buffer) -> bool,
    mut recycled: impl FnMut() -> Buffer,
) -> Result<(), ConvertError> {
    let source_of = |job: &Job<'a>| match job {
        Job::Rows { source, .. } => Some(*source),
        Job::Materialized { .. } => None,
    };
    let mut sources = jobs.iter().filter_map(|(_, job)| source_of(job));
    let read = |t: &TensorRef, buffer: &mut Buffer| -> Result<(), ConvertError> {
        buffer.len = adapter.read_tensor_bytes(t, &mut buffer.data)?.len();
        Ok(())
    };
    let mut current = Buffer::default();
    let mut next = Buffer::default();
    if let Some(first) = sources.next() {
        read(first, &mut current)?;
    }
    let mut materialized: Option<Factors> = None;
    for (spec, job) in jobs {
        let mut out = recycled();
        match job {
            Job::Rows {
                pair,
                source,
                transform,
                fold,
            } => {
                let following = sources.next();
                let copy = *transform == RowTransform::Identity
                    && stream::is_byte_copy(source.dtype, spec.ggml_type, *fold, false);
                let (encoded, prefetched) = rayon::join(
                    || {
                        if copy {
                            Ok::<(), ConvertError>(adapter.check_finite(source, current.bytes())?)
                        } else {
                            let rows = (current.bytes(), *transform, *fold);
                            out.len = encode_factor(
                                adapter,
                                pair,
                                source,
                                rows,
                                heads,
                                spec,
                                &mut out.data,
                            )?;
                            Ok(())
                        }
                    },
                    || following.map_or(Ok(()), |t| read(t, &mut next)),
                );
                encoded?;
                prefetched?;
                if copy {
                    // The source bytes are the output: hand them on, and read into the spare buffer next time.
                    std::mem::swap(&mut out, &mut current);
                }
                std::mem::swap(&mut current, &mut next);
            }
            Job::Materialized { pair, is_a } => {
                if *is_a {
                    materialized = Some(materialize(adapter, pair, heads)?);
                }
                let data = match (&materialized, is_a) {
                    (Some(f), true) => f.a.as_slice(),
                    (Some(f), false) => f.b.as_slice(),
                    (None, _) => &[],
                };
                out.data.clear();
                let row_len = usize::try_from(spec.dims[0]).unwrap_or(usize::MAX);
                gguf::dtype::encode_parallel(spec.ggml_type, data, row_len, &mut out.data)?;
                out.len = out.data.len();
            }
        }
        if !send(&spec.name, out) {
            break;
        }
    }
    Ok(())
}

/// One factor of a Linear pair from its adapter bytes (with the row transform and fold to apply): checked
/// finite, rows gathered, folded, encoded into the front of `out`; returns the encoded length.
fn encode_factor(
    adapter: &Adapter,
    pair: &PlannedPair,
    source: &TensorRef,
    (bytes, transform, fold): (&[u8], RowTransform, f32),
    heads: HeadCounts,
    spec: &TensorSpec,
    out: &mut Vec<u8>,
) -> Result<usize, ConvertError> {
    adapter.check_finite(source, bytes)?;
    let (rows, cols) = match source.shape.as_slice() {
        &[rows, cols] => (rows, cols),
        _ => (0, 0),
    };
    let gather = match transform {
        RowTransform::Identity => None,
        t => Some(
            factor::row_sources(t, rows, heads).map_err(|e| ConvertError::Rows {
                module: adapter.pairs[pair.sources[0].pair].module.clone(),
                target: pair.target.clone(),
                source: e,
            })?,
        ),
    };
    let rows = Rows {
        bytes,
        dtype: source.dtype,
        cols,
        gather: gather.as_deref(),
        fold,
    };
    Ok(stream::encode_rows(&rows, spec.ggml_type, out)?)
}

/// Write to a temporary file beside `path`; `finish` runs on it (verification) before the rename.
pub fn write_atomically(
    path: &Path,
    force: bool,
    plan: &Plan,
    adapter: &Adapter,
    heads: HeadCounts,
    finish: impl FnOnce(&Path) -> Result<(), ConvertError>,
) -> Result<u64, ConvertError> {
    let io = |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() && !force {
        return Err(ConvertError::OutputExists {
            path: path.to_path_buf(),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".lora-convert-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    let buffered = BufWriter::with_capacity(1 << 20, tmp.as_file());
    let mut buffered = write_gguf(buffered, plan, adapter, heads)?;
    buffered.flush().map_err(io)?;
    drop(buffered);
    // No fsync: like `cp` and llama.cpp's converters, the file is complete for every reader once written, and the
    // rename only ever exposes a complete file to them; forcing it to disk would triple the wall time (BENCHMARKS.md).
    finish(tmp.path())?;
    let size = tmp.as_file().metadata().map_err(io)?.len();
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(size)
}
