//! Stream the planned pairs into a GGUF file: a temporary file in the target directory, renamed into place only
//! when complete (and verified, when asked), so a failure never leaves a half-written adapter behind.
//!
//! Memory stays a few tensors deep whatever the adapter's size: the pairs are shared out among the rayon
//! workers, and each worker reads a pair's tensors into its own reused buffers, encodes them and writes them at
//! their final offsets (the layout is known before a byte of data is written). Nothing is handed between
//! threads, and the written bytes are still in the cache of the core that made them when the kernel copies
//! them. The file's bytes do not depend on the thread count.

use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, PoisonError, TryLockError};

use rayon::prelude::*;

use super::error::ConvertError;
use super::factor::{self, HeadCounts};
use super::materialize::{Factors, materialize};
use super::plan::{PairShape, Plan, PlannedPair};
use super::stream::{self, Rows};
use crate::adapter::{Adapter, TensorRef};
use crate::arch::RowTransform;
use crate::gguf::{self, PositionedWriter, TensorSpec, Value, keys};

/// The metadata written, in order (general.architecture first, as gguf-py does); `extra` (what is recorded about
/// the base) goes before `general.quantization_version`, which gguf-py writes last.
pub fn metadata(plan: &Plan, adapter: &Adapter, extra: &[(String, Value)]) -> Vec<(String, Value)> {
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
    kv.extend_from_slice(extra);
    kv.push((
        keys::GENERAL_QUANTIZATION_VERSION.to_string(),
        Value::U32(2),
    ));
    kv
}

/// How a pair's two tensors are made.
enum Work<'a> {
    /// Both factors streamed from the adapter's bytes: rows of one adapter tensor each (B's gathered by the row
    /// transform, times the fold).
    Rows { a: RowsJob<'a>, b: RowsJob<'a> },
    /// Both built in f32 by [`materialize`] (embeddings, stacked experts, factors stored transposed, A's columns
    /// reordered).
    Materialized,
}

/// One factor streamed from the adapter.
#[derive(Clone, Copy)]
struct RowsJob<'a> {
    source: &'a TensorRef,
    transform: RowTransform,
    fold: f32,
}

fn work<'a>(pair: &'a PlannedPair, adapter: &'a Adapter) -> Work<'a> {
    match (pair.shape, pair.sources.as_slice()) {
        // Streamed from the file's bytes when the rows are stored as llama.cpp reads them; a factor stored
        // transposed (mlx-lm) is built in f32 by `materialize`, which reads it back in PEFT orientation.
        (PairShape::Linear, [s])
            if !adapter.pairs[s.pair].a.transposed
                && !adapter.pairs[s.pair].b.transposed
                && s.cols == RowTransform::Identity
                && s.base_scale.is_none() =>
        {
            let p = &adapter.pairs[s.pair];
            Work::Rows {
                a: RowsJob {
                    source: &p.a,
                    transform: RowTransform::Identity,
                    fold: 1.0,
                },
                b: RowsJob {
                    source: &p.b,
                    transform: s.rows,
                    fold: s.fold as f32,
                },
            }
        }
        _ => Work::Materialized,
    }
}

/// One worker's buffers, reused from tensor to tensor (a reused buffer is neither zero-filled nor faulted in
/// again, and stays in that core's cache between being filled and being written).
#[derive(Default)]
struct WorkerBuffers {
    source: Vec<u8>,
    out: Vec<u8>,
}

/// Write the whole GGUF file into `file` (empty); returns its length. Pairs are encoded in parallel on the
/// current rayon pool, each by one worker that reads its sources, encodes them and writes them at their offsets.
/// When several pairs fail, the error is the first one's in plan order, whatever the thread count. `extra` is
/// metadata beyond the adapter's own ([`metadata`]).
pub fn write_gguf(
    file: &File,
    plan: &Plan,
    adapter: &Adapter,
    heads: HeadCounts,
    extra: &[(String, Value)],
) -> Result<u64, ConvertError> {
    let specs: Vec<TensorSpec> = plan
        .pairs
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .collect();
    let writer = PositionedWriter::new(file, &metadata(plan, adapter, extra), &specs)?;
    let buffers: Vec<Mutex<WorkerBuffers>> = (0..rayon::current_num_threads())
        .map(|_| Mutex::default())
        .collect();
    let failure: Mutex<Option<(usize, ConvertError)>> = Mutex::new(None);
    let first_failure = || {
        let failure = failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.as_ref().map(|(first, _)| *first)
    };
    plan.pairs.par_iter().enumerate().for_each(|(k, pair)| {
        // Pairs after a failed one are skipped; those before it still run, so the first failure is found.
        if first_failure().is_some_and(|first| k > first) {
            return;
        }
        // A worker waiting in a nested parallel loop (encoding, the finiteness check) may be handed another pair by
        // rayon's work stealing while its own buffers are in use further up its stack: then that pair gets fresh
        // buffers (blocking on the slot would deadlock).
        let slot = rayon::current_thread_index().and_then(|i| buffers.get(i));
        let mut guard = slot.and_then(|m| match m.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        });
        let mut own = WorkerBuffers::default();
        let s = guard.as_deref_mut().unwrap_or(&mut own);
        if let Err(e) = write_pair(&writer, 2 * k, pair, adapter, heads, s) {
            let mut failure = failure.lock().unwrap_or_else(PoisonError::into_inner);
            if failure.as_ref().is_none_or(|(first, _)| k < *first) {
                *failure = Some((k, e));
            }
        }
    });
    if let Some((_, e)) = failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(e);
    }
    Ok(writer.finish()?)
}

/// Encode and write one pair: its `lora_a` is tensor `index`, its `lora_b` tensor `index + 1`.
fn write_pair(
    writer: &PositionedWriter,
    index: usize,
    pair: &PlannedPair,
    adapter: &Adapter,
    heads: HeadCounts,
    s: &mut WorkerBuffers,
) -> Result<(), ConvertError> {
    match work(pair, adapter) {
        Work::Rows { a, b } => {
            for (i, (job, spec)) in [(a, &pair.a), (b, &pair.b)].into_iter().enumerate() {
                let bytes = adapter.read_tensor_bytes(job.source, &mut s.source)?;
                let data = if job.transform == RowTransform::Identity
                    && stream::is_byte_copy(job.source.dtype, spec.ggml_type, job.fold, false)
                {
                    // The source bytes are the output (checked finite like every other value).
                    adapter.check_finite(job.source, bytes)?;
                    bytes
                } else {
                    let rows = (bytes, job.transform, job.fold);
                    let n = encode_factor(adapter, pair, job.source, rows, heads, spec, &mut s.out)
                        .map_err(|e| overflowed(e, adapter, pair, spec))?;
                    let data = s.out.get(..n).unwrap_or_default();
                    check_range(adapter, pair, spec, data)?;
                    data
                };
                writer.write_tensor(index + i, data)?;
            }
        }
        Work::Materialized => {
            let factors: Factors = materialize(adapter, pair, heads)?;
            for (i, (data, spec)) in [(&factors.a, &pair.a), (&factors.b, &pair.b)]
                .into_iter()
                .enumerate()
            {
                s.out.clear();
                let row_len = usize::try_from(spec.dims[0]).unwrap_or(usize::MAX);
                gguf::dtype::encode_parallel(spec.ggml_type, data, row_len, &mut s.out)
                    .map_err(|e| overflowed(e.into(), adapter, pair, spec))?;
                check_range(adapter, pair, spec, &s.out)?;
                writer.write_tensor(index + i, &s.out)?;
            }
        }
    }
    Ok(())
}

/// Fail if encoding made a value infinite: the factors are checked finite before, so that is a value beyond the
/// output type's range (f16 above 65504, a q8_0 block scale beyond f16) or beyond f32 once the scaling is folded in.
fn check_range(
    adapter: &Adapter,
    pair: &PlannedPair,
    spec: &TensorSpec,
    encoded: &[u8],
) -> Result<(), ConvertError> {
    match gguf::dtype::first_non_finite_encoded(spec.ggml_type, encoded) {
        None => Ok(()),
        Some(index) => Err(overflow(adapter, pair, spec, index)),
    }
}

/// An encoder's refusal of a non-finite value (q8_0), which after the finiteness check of the source can only be
/// the scaling fold overflowing f32, as an [`ConvertError::Overflow`] naming the file and tensor.
fn overflowed(
    e: ConvertError,
    adapter: &Adapter,
    pair: &PlannedPair,
    spec: &TensorSpec,
) -> ConvertError {
    match e {
        ConvertError::Gguf(gguf::Error::NonFinite { index, .. }) => {
            overflow(adapter, pair, spec, index)
        }
        other => other,
    }
}

fn overflow(
    adapter: &Adapter,
    pair: &PlannedPair,
    spec: &TensorSpec,
    index: usize,
) -> ConvertError {
    let module = pair
        .sources
        .first()
        .and_then(|s| adapter.pairs.get(s.pair))
        .map_or_else(String::new, |p| p.module.clone());
    ConvertError::Overflow {
        path: adapter.safetensors_path().to_path_buf(),
        module,
        tensor: spec.name.clone(),
        ggml_type: spec.ggml_type,
        index,
    }
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
    extra: &[(String, Value)],
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
    let size = write_gguf(tmp.as_file(), plan, adapter, heads, extra).map_err(|e| match e {
        // Name the file the user asked for (the temporary one is removed when `tmp` drops).
        ConvertError::Gguf(gguf::Error::Write { what, source }) => ConvertError::Write {
            path: path.to_path_buf(),
            what,
            source,
        },
        other => other,
    })?;
    // No fsync: like `cp` and llama.cpp's converters, the file is complete for every reader once written, and the
    // rename only ever exposes a complete file to them; forcing it to disk would triple the wall time (BENCHMARKS.md).
    finish(tmp.path())?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(size)
}
