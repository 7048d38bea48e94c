//! Linear factors straight from the adapter's bytes to the output's bytes. A Linear pair's `lora_a` is PEFT's A
//! unchanged and its `lora_b` is a gather of B's rows times the scaling fold, so neither needs an f32 copy of the
//! tensor: each run of rows is decoded, scaled and encoded through a small stack buffer, in parallel chunks of
//! whole rows (each chunk's bytes are its share of the serial output, so any thread count gives the same file).
//!
//! Bit-exact with [`super::materialize`] followed by [`dtype::encode`] (tested below): the same exact widening to
//! f32, the same f32 multiply by the fold (skipped when it is 1), the same encoders. Where the output type is the
//! source's and there is no fold, the bytes are copied — what that round trip gives for finite values, which is
//! all the converter accepts.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::adapter::SourceDtype;
use crate::gguf::{self, GgmlType, dtype};

/// Values decoded per step (a multiple of every block size; 8 KiB of f32 on the stack).
const PIECE: usize = 2048;

/// Per-chunk decode buffers (made once per chunk: zeroing them per row would cost more than a short row).
struct Scratch {
    values: [f32; PIECE],
    halves: [f16; PIECE],
}

/// One output tensor described as rows of a source tensor.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    /// The source tensor's bytes: whole rows of `cols` little-endian values of `dtype`.
    pub bytes: &'a [u8],
    /// The source element type.
    pub dtype: SourceDtype,
    /// Values per row (ggml `ne[0]` of the output).
    pub cols: usize,
    /// For every output row, the source row it is (`None`: the source rows in order).
    pub gather: Option<&'a [usize]>,
    /// Multiplied into every value (f32 multiply); 1.0 leaves the values untouched.
    pub fold: f32,
}

impl Rows<'_> {
    fn source_rows(&self) -> usize {
        self.bytes.len() / (self.cols * self.dtype.size()).max(1)
    }

    fn out_rows(&self) -> usize {
        self.gather.map_or(self.source_rows(), <[usize]>::len)
    }

    /// Whole rows, and a gather that stays inside them.
    fn is_consistent(&self) -> bool {
        let row_bytes = self.cols * self.dtype.size();
        row_bytes > 0
            && self.bytes.len().is_multiple_of(row_bytes)
            && self
                .gather
                .is_none_or(|g| g.iter().all(|&r| r < self.source_rows()))
    }
}

/// Whether encoding `dtype` values as `ty` with this fold and no gather gives the source bytes unchanged (a
/// finite value widened to f32 and encoded back to its own type is itself).
pub fn is_byte_copy(dtype: SourceDtype, ty: GgmlType, fold: f32, gathered: bool) -> bool {
    let same = matches!(
        (dtype, ty),
        (SourceDtype::F32, GgmlType::F32)
            | (SourceDtype::F16, GgmlType::F16)
            | (SourceDtype::BF16, GgmlType::BF16)
    );
    same && fold == 1.0 && !gathered
}

/// Encode `rows` as `ty` into the front of `out` on the current rayon pool; returns the encoded length. `out`
/// grows when it is too short and never shrinks (a reused buffer is not zero-filled again). Errors as
/// [`dtype::encode`] on the gathered, scaled f32 values would give (the first bad element).
pub fn encode_rows(rows: &Rows, ty: GgmlType, out: &mut Vec<u8>) -> Result<usize, gguf::Error> {
    let cols = rows.cols;
    let n_values = rows.out_rows() * cols;
    let bad_rows = || gguf::Error::RowLength {
        ggml_type: ty,
        len: rows.bytes.len() / rows.dtype.size(),
        row_len: cols,
    };
    if !rows.is_consistent() {
        return Err(bad_rows());
    }
    let block = usize::try_from(ty.block_size()).unwrap_or(usize::MAX);
    let type_size = usize::try_from(ty.type_size()).unwrap_or(usize::MAX);
    if !ty.is_encodable() {
        return Err(gguf::Error::UnsupportedType {
            ggml_type: ty,
            operation: "encode",
        });
    }
    if !cols.is_multiple_of(block) {
        return Err(bad_rows());
    }
    let row_bytes = cols / block * type_size;
    let n_bytes = rows.out_rows() * row_bytes;
    if out.len() < n_bytes {
        out.resize(n_bytes, 0);
    }
    let out = out.get_mut(..n_bytes).unwrap_or_default();
    if n_values == 0 {
        return Ok(0);
    }
    let rows_per_chunk = (dtype::PARALLEL_CHUNK / cols).max(1);
    let parallel = out
        .par_chunks_mut(rows_per_chunk * row_bytes)
        .enumerate()
        .try_for_each(|(i, dst)| encode_chunk(rows, ty, i * rows_per_chunk, row_bytes, dst));
    if parallel.is_err() {
        // Which chunk failed first is up to the scheduler: redo it in order to name the first bad value.
        encode_chunk(rows, ty, 0, row_bytes, out)?;
    }
    parallel.map(|()| n_bytes)
}

/// Output rows `first_row ..` into `dst` (whole rows of `row_bytes`).
fn encode_chunk(
    rows: &Rows,
    ty: GgmlType,
    first_row: usize,
    row_bytes: usize,
    dst: &mut [u8],
) -> Result<(), gguf::Error> {
    let value_bytes = rows.cols * rows.dtype.size();
    let n_rows = dst.len() / row_bytes;
    let scratch = &mut Scratch {
        values: [0.0; PIECE],
        halves: [f16::ZERO; PIECE],
    };
    match rows.gather {
        // Consecutive rows are contiguous in the source: one run.
        None => {
            let src = rows
                .bytes
                .get(first_row * value_bytes..(first_row + n_rows) * value_bytes)
                .unwrap_or(&[]);
            encode_run(rows, ty, src, dst, first_row * rows.cols, scratch)
        }
        Some(gather) => {
            for (k, d) in dst.chunks_exact_mut(row_bytes).enumerate() {
                let row = first_row + k;
                let from = gather.get(row).copied().unwrap_or(0);
                let src = rows
                    .bytes
                    .get(from * value_bytes..(from + 1) * value_bytes)
                    .unwrap_or(&[]);
                encode_run(rows, ty, src, d, row * rows.cols, scratch)?;
            }
            Ok(())
        }
    }
}

/// Contiguous source values into their encoded bytes; `first_index` is the output index of the first value.
/// Runs the AVX2 build where the CPU has it (detected at run time), as [`dtype::encode_slice`] does.
fn encode_run(
    rows: &Rows,
    ty: GgmlType,
    src: &[u8],
    dst: &mut [u8],
    first_index: usize,
    scratch: &mut Scratch,
) -> Result<(), gguf::Error> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2 (checked just above), the one feature `encode_run_avx2` is compiled for.
        return unsafe { encode_run_avx2(rows, ty, src, dst, first_index, scratch) };
    }
    encode_run_any(rows, ty, src, dst, first_index, scratch)
}

/// [`encode_run_any`] compiled for AVX2: the same operations in the same order, so the same bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn encode_run_avx2(
    rows: &Rows,
    ty: GgmlType,
    src: &[u8],
    dst: &mut [u8],
    first_index: usize,
    scratch: &mut Scratch,
) -> Result<(), gguf::Error> {
    encode_run_any(rows, ty, src, dst, first_index, scratch)
}

#[inline(always)]
fn encode_run_any(
    rows: &Rows,
    ty: GgmlType,
    src: &[u8],
    dst: &mut [u8],
    first_index: usize,
    scratch: &mut Scratch,
) -> Result<(), gguf::Error> {
    let unscaled = rows.fold == 1.0;
    match (rows.dtype, ty) {
        _ if is_byte_copy(rows.dtype, ty, rows.fold, false) && src.len() == dst.len() => {
            dst.copy_from_slice(src);
            return Ok(());
        }
        (SourceDtype::BF16, GgmlType::F32) if unscaled && 2 * src.len() == dst.len() => {
            for (d, s) in dst
                .as_chunks_mut::<4>()
                .0
                .iter_mut()
                .zip(src.as_chunks::<2>().0)
            {
                *d = (u32::from(u16::from_le_bytes(*s)) << 16).to_le_bytes();
            }
            return Ok(());
        }
        _ => {}
    }
    let size = rows.dtype.size();
    let block = usize::try_from(ty.block_size()).unwrap_or(1);
    let type_size = usize::try_from(ty.type_size()).unwrap_or(1);
    let Scratch { values, halves } = scratch;
    let pieces = src.chunks(PIECE * size);
    let mut out_at = 0;
    for (p, piece) in pieces.enumerate() {
        let n = piece.len() / size;
        let Some(v) = values.get_mut(..n) else {
            break;
        };
        match rows.dtype {
            SourceDtype::F32 => {
                for (x, b) in v.iter_mut().zip(piece.as_chunks::<4>().0) {
                    *x = f32::from_le_bytes(*b);
                }
            }
            SourceDtype::F16 => {
                let Some(h) = halves.get_mut(..n) else {
                    break;
                };
                for (x, b) in h.iter_mut().zip(piece.as_chunks::<2>().0) {
                    *x = f16::from_le_bytes(*b);
                }
                h.convert_to_f32_slice(v);
            }
            SourceDtype::BF16 => {
                for (x, b) in v.iter_mut().zip(piece.as_chunks::<2>().0) {
                    *x = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16);
                }
            }
        }
        if !unscaled {
            for x in v.iter_mut() {
                *x *= rows.fold;
            }
        }
        let len = n / block * type_size;
        let d = dst.get_mut(out_at..out_at + len).unwrap_or(&mut []);
        dtype::encode_slice(ty, v, d, first_index + p * PIECE)?;
        out_at += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of every magnitude class an adapter can hold (zeros of both signs, subnormals, values that round
    /// differently in f16 and bf16, values whose scaled q8_0 blocks tie), as `dtype` bytes.
    fn source(dtype: SourceDtype, n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        let mut out = Vec::new();
        for i in 0..n {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let m = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let x = match i % 101 {
                0 => 0.0,
                1 => -0.0,
                2 => f32::from_bits(1 + (s as u32 & 0xff)),
                3 => 65000.0 * m,
                _ => m * 2f32.powi((s % 30) as i32 - 20),
            };
            match dtype {
                SourceDtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
                SourceDtype::F16 => out.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
                SourceDtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            }
        }
        out
    }

    /// The reference: widen everything to f32, gather, scale, encode — what materialize + encode do.
    fn reference(rows: &Rows, ty: GgmlType) -> Result<Vec<u8>, gguf::Error> {
        let widened: Vec<f32> = match rows.dtype {
            SourceDtype::F32 => rows
                .bytes
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b))
                .collect(),
            SourceDtype::F16 => rows
                .bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|b| f16::from_le_bytes(*b).to_f32())
                .collect(),
            SourceDtype::BF16 => rows
                .bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|b| half::bf16::from_le_bytes(*b).to_f32())
                .collect(),
        };
        let n_src = widened.len() / rows.cols;
        let order: Vec<usize> = rows.gather.map_or((0..n_src).collect(), <[usize]>::to_vec);
        let mut m: Vec<f32> = order
            .iter()
            .flat_map(|&r| widened[r * rows.cols..(r + 1) * rows.cols].to_vec())
            .collect();
        crate::convert::factor::scale_in_place(&mut m, rows.fold);
        let mut out = Vec::new();
        dtype::encode(ty, &m, rows.cols, &mut out)?;
        Ok(out)
    }

    const TYPES: [GgmlType; 4] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];
    const DTYPES: [SourceDtype; 3] = [SourceDtype::F32, SourceDtype::F16, SourceDtype::BF16];

    #[test]
    fn every_path_is_bit_exact_with_widen_gather_scale_encode() {
        // Shapes of an A (long rows, more than one parallel chunk) and of a B (rank-long rows), with and without
        // a gather (a rotary-style interleave that also drops rows) and a fold.
        let (r, n) = (64, 4096 + 64);
        for dtype in DTYPES {
            for (cols, n_rows) in [(n, 40), (r, 3000)] {
                let bytes = source(dtype, cols * n_rows, (cols * n_rows) as u64);
                let gather: Vec<usize> = (0..n_rows - 2).map(|i| (i * 7) % (n_rows - 1)).collect();
                for g in [None, Some(gather.as_slice())] {
                    for fold in [1.0f32, 0.70710677, 3.0] {
                        let rows = Rows {
                            bytes: &bytes,
                            dtype,
                            cols,
                            gather: g,
                            fold,
                        };
                        for ty in TYPES {
                            // A used buffer longer than needed: only its front is the output.
                            let mut ours = vec![0xAB; 5 << 20];
                            let n = encode_rows(&rows, ty, &mut ours).unwrap();
                            let expected = reference(&rows, ty).unwrap();
                            assert!(
                                ours[..n] == expected[..],
                                "{dtype:?} → {ty}, {cols} × {n_rows}, gather {}, fold {fold}",
                                g.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn one_and_two_threads_give_the_same_bytes() {
        let bytes = source(SourceDtype::F32, 64 * 5000, 7);
        let rows = Rows {
            bytes: &bytes,
            dtype: SourceDtype::F32,
            cols: 64,
            gather: None,
            fold: 0.5,
        };
        let run = |threads: usize, ty| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = Vec::new();
            let n = pool.install(|| encode_rows(&rows, ty, &mut out)).unwrap();
            out.truncate(n);
            out
        };
        for ty in TYPES {
            assert!(run(1, ty) == run(2, ty), "{ty}");
        }
    }

    #[test]
    fn a_fold_that_overflows_q8_0_names_the_first_bad_value() {
        let mut values = vec![1.0f32; 64 * 3000];
        values[64 * 2500 + 3] = 3e38;
        values[64 * 10 + 1] = 2e38;
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let rows = Rows {
            bytes: &bytes,
            dtype: SourceDtype::F32,
            cols: 64,
            gather: None,
            fold: 4.0,
        };
        let err = encode_rows(&rows, GgmlType::Q8_0, &mut Vec::new()).unwrap_err();
        let expected = reference(&rows, GgmlType::Q8_0).unwrap_err();
        assert_eq!(err.to_string(), expected.to_string());
        assert!(
            matches!(err, gguf::Error::NonFinite { index, .. } if index == 64 * 10 + 1),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_rows_are_an_error_not_a_panic() {
        let bytes = [0u8; 12];
        let rows = |cols, gather| Rows {
            bytes: &bytes,
            dtype: SourceDtype::F32,
            cols,
            gather,
            fold: 1.0,
        };
        let e = encode_rows(&rows(2, None), GgmlType::F32, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                e,
                gguf::Error::RowLength {
                    len: 3,
                    row_len: 2,
                    ..
                }
            ),
            "{e}"
        );
        let e = encode_rows(&rows(3, Some(&[1])), GgmlType::F32, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, gguf::Error::RowLength { .. }), "{e}");
        let e = encode_rows(&rows(3, None), GgmlType::Q8_0, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(e, gguf::Error::RowLength { row_len: 3, .. }),
            "{e}"
        );
    }
}
