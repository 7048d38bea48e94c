//! ggml tensor types (the full table, so quantized base models parse) and bit-exact encoders/decoders for
//! the types adapters are written in: f32, f16, bf16 and q8_0.
//!
//! The table mirrors `enum ggml_type` in `ggml/include/ggml.h` and `type_traits[]` in `ggml/src/ggml.c` of the
//! vendored llama.cpp (block sizes and `sizeof(block_*)` read from `ggml-common.h` by compiling it). gguf-py
//! 0.19.0 disagrees on one entry (it says q8_1 blocks are 40 bytes; ggml's `block_q8_1` is 36) and lacks q2_0:
//! ggml is the reader that matters.
//!
//! Encoders are bit-exact with gguf-py 0.19.0 (`gguf.quants.quantize`, what `convert_lora_to_gguf.py` runs), as
//! checked against oracle bytes in `fixtures/gguf/` (made by `tools/gguf_oracle.py`):
//! - f16: numpy `astype(np.float16)`: round to nearest even, overflow to ±inf, subnormals kept. NaN is numpy's
//!   rule, which keeps the sign and the top 10 payload bits and only forces a non-zero payload
//!   (`0x7f800001` → `0x7c01`); the hardware/`half` rule sets the quiet bit instead (`0x7e00`). Non-NaN values
//!   go through `half`'s slice conversion (F16C when available), which is the same round-to-nearest-even.
//! - bf16: `ggml_compute_fp32_to_bf16`: NaN → `(bits & 0xffff0000) | 0x00400000`, else round to nearest even.
//! - q8_0: `quantize_row_q8_0_ref`: blocks of 32 along a row, `d = amax / 127` in f32, `id = 1/d` (0 when
//!   `d == 0`), `q = round_half_away(x * id)` with the unrounded f32 `d`, stored as `f16(d)` then 32 × i8.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::Error;

/// A ggml tensor type. Variant names are ggml's (`GGML_TYPE_Q4_K` → `Q4_K`) so they can be grepped across
/// the two code bases.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// 4-bit, blocks of 32, f16 scale.
    Q4_0,
    /// 4-bit, blocks of 32, f16 scale and min.
    Q4_1,
    /// 5-bit, blocks of 32.
    Q5_0,
    /// 5-bit with min, blocks of 32.
    Q5_1,
    /// 8-bit, blocks of 32, f16 scale.
    Q8_0,
    /// 8-bit with sum, blocks of 32.
    Q8_1,
    /// k-quant 2-bit, super-blocks of 256.
    Q2_K,
    /// k-quant 3-bit.
    Q3_K,
    /// k-quant 4-bit.
    Q4_K,
    /// k-quant 5-bit.
    Q5_K,
    /// k-quant 6-bit.
    Q6_K,
    /// k-quant 8-bit (intermediate type).
    Q8_K,
    /// i-quant 2.06 bpw.
    IQ2_XXS,
    /// i-quant 2.31 bpw.
    IQ2_XS,
    /// i-quant 3.06 bpw.
    IQ3_XXS,
    /// i-quant 1.56 bpw.
    IQ1_S,
    /// i-quant 4-bit non-linear, blocks of 32.
    IQ4_NL,
    /// i-quant 3.44 bpw.
    IQ3_S,
    /// i-quant 2.5 bpw.
    IQ2_S,
    /// i-quant 4.25 bpw.
    IQ4_XS,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// i-quant 1.75 bpw.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// ternary 1.69 bpw.
    TQ1_0,
    /// ternary 2.06 bpw.
    TQ2_0,
    /// microscaling fp4, blocks of 32.
    MXFP4,
    /// NVIDIA fp4 (4 blocks of 16, E4M3 scales), blocks of 64.
    NVFP4,
    /// 1-bit, blocks of 128.
    Q1_0,
    /// 2-bit, blocks of 64.
    Q2_0,
}

/// One row of ggml's `type_traits` table.
struct Traits {
    id: u32,
    name: &'static str,
    block_size: u64,
    type_size: u64,
}

const fn t(id: u32, name: &'static str, block_size: u64, type_size: u64) -> Traits {
    Traits {
        id,
        name,
        block_size,
        type_size,
    }
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 35] = {
        use GgmlType::*;
        [
            F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
            IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64,
            IQ1_M, BF16, TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0, Q2_0,
        ]
    };

    /// The table: id, ggml name, elements per block, bytes per block.
    const fn traits(self) -> Traits {
        match self {
            GgmlType::F32 => t(0, "f32", 1, 4),
            GgmlType::F16 => t(1, "f16", 1, 2),
            GgmlType::Q4_0 => t(2, "q4_0", 32, 18),
            GgmlType::Q4_1 => t(3, "q4_1", 32, 20),
            GgmlType::Q5_0 => t(6, "q5_0", 32, 22),
            GgmlType::Q5_1 => t(7, "q5_1", 32, 24),
            GgmlType::Q8_0 => t(8, "q8_0", 32, 34),
            GgmlType::Q8_1 => t(9, "q8_1", 32, 36),
            GgmlType::Q2_K => t(10, "q2_K", 256, 84),
            GgmlType::Q3_K => t(11, "q3_K", 256, 110),
            GgmlType::Q4_K => t(12, "q4_K", 256, 144),
            GgmlType::Q5_K => t(13, "q5_K", 256, 176),
            GgmlType::Q6_K => t(14, "q6_K", 256, 210),
            GgmlType::Q8_K => t(15, "q8_K", 256, 292),
            GgmlType::IQ2_XXS => t(16, "iq2_xxs", 256, 66),
            GgmlType::IQ2_XS => t(17, "iq2_xs", 256, 74),
            GgmlType::IQ3_XXS => t(18, "iq3_xxs", 256, 98),
            GgmlType::IQ1_S => t(19, "iq1_s", 256, 50),
            GgmlType::IQ4_NL => t(20, "iq4_nl", 32, 18),
            GgmlType::IQ3_S => t(21, "iq3_s", 256, 110),
            GgmlType::IQ2_S => t(22, "iq2_s", 256, 82),
            GgmlType::IQ4_XS => t(23, "iq4_xs", 256, 136),
            GgmlType::I8 => t(24, "i8", 1, 1),
            GgmlType::I16 => t(25, "i16", 1, 2),
            GgmlType::I32 => t(26, "i32", 1, 4),
            GgmlType::I64 => t(27, "i64", 1, 8),
            GgmlType::F64 => t(28, "f64", 1, 8),
            GgmlType::IQ1_M => t(29, "iq1_m", 256, 56),
            GgmlType::BF16 => t(30, "bf16", 1, 2),
            GgmlType::TQ1_0 => t(34, "tq1_0", 256, 54),
            GgmlType::TQ2_0 => t(35, "tq2_0", 256, 66),
            GgmlType::MXFP4 => t(39, "mxfp4", 32, 17),
            GgmlType::NVFP4 => t(40, "nvfp4", 64, 36),
            GgmlType::Q1_0 => t(41, "q1_0", 128, 18),
            GgmlType::Q2_0 => t(42, "q2_0", 64, 18),
        }
    }

    /// The on-disk id (`enum ggml_type`).
    pub fn id(self) -> u32 {
        self.traits().id
    }

    /// The type for an on-disk id; `None` for ids ggml does not define (or removed, see [`removed_type_name`]).
    pub fn from_id(id: u32) -> Option<Self> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's name (`ggml_type_name`): `f32`, `q8_0`, `q4_K`, `iq2_xxs`, …
    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// Elements per block (`ggml_blck_size`); 1 for plain types.
    pub fn block_size(self) -> u64 {
        self.traits().block_size
    }

    /// Bytes per block (`ggml_type_size`).
    pub fn type_size(self) -> u64 {
        self.traits().type_size
    }

    /// Whether [`encode`] and [`decode`] support this type.
    pub fn is_encodable(self) -> bool {
        matches!(
            self,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of a type id ggml once had and removed (its files no longer load), for error messages.
pub fn removed_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "q4_2",
        5 => "q4_3",
        31 => "q4_0_4_4",
        32 => "q4_0_4_8",
        33 => "q4_0_8_8",
        36 => "iq4_nl_4_4",
        37 => "iq4_nl_4_8",
        38 => "iq4_nl_8_8",
        _ => return None,
    })
}

/// The number of elements of a tensor with these `ne` (an empty list is a scalar), as ggml counts them: `None`
/// if any partial product exceeds `i64::MAX` (ggml's "may cause overflow errors" check).
pub fn element_count(dims: &[u64]) -> Option<u64> {
    const LIMIT: u64 = i64::MAX as u64;
    dims.iter().try_fold(1u64, |n, &d| {
        n.checked_mul(d).filter(|&n| n <= LIMIT && d <= LIMIT)
    })
}

/// Bytes of a contiguous tensor (`ggml_nbytes`): `None` on overflow or when `ne[0]` is not a multiple of the
/// block size. A zero dimension gives 0.
pub fn tensor_nbytes(ty: GgmlType, dims: &[u64]) -> Option<u64> {
    let ne0 = dims.first().copied().unwrap_or(1);
    if !ne0.is_multiple_of(ty.block_size()) {
        return None;
    }
    (element_count(dims)? / ty.block_size()).checked_mul(ty.type_size())
}

/// Elements per parallel work item: 64 Ki values (256 KiB of f32 input, so an adapter's typical 0.25–4 MiB factor
/// splits over every core), a multiple of every block size.
pub const PARALLEL_CHUNK: usize = 1 << 16;
/// Below this many values [`encode_parallel`] encodes on the calling thread.
const PARALLEL_MIN: usize = 2 * PARALLEL_CHUNK;
/// f16 values converted per batch through `half`'s slice conversion (stack buffer).
const F16_BATCH: usize = 512;

/// Check that `len` values are whole rows of `row_len` with `row_len` a multiple of the block size; returns
/// the encoded byte count.
fn encoded_len(ty: GgmlType, len: usize, row_len: usize) -> Result<usize, Error> {
    if !ty.is_encodable() {
        return Err(Error::UnsupportedType {
            ggml_type: ty,
            operation: "encode",
        });
    }
    let block = usize::try_from(ty.block_size()).unwrap_or(usize::MAX);
    let bad = || Error::RowLength {
        ggml_type: ty,
        len,
        row_len,
    };
    if len == 0 {
        return Ok(0);
    }
    if row_len == 0 || !len.is_multiple_of(row_len) || !row_len.is_multiple_of(block) {
        return Err(bad());
    }
    let type_size = usize::try_from(ty.type_size()).unwrap_or(usize::MAX);
    (len / block).checked_mul(type_size).ok_or_else(bad)
}

/// Encode `src` (row-major rows of `row_len` values, ggml `ne[0]` = `row_len`) as `ty`, appending to `out`.
///
/// Supports f32, f16, bf16 and q8_0, bit-exact with gguf-py (see the module docs); q8_0 needs
/// `row_len % 32 == 0` and finite input. On error nothing is appended.
pub fn encode(ty: GgmlType, src: &[f32], row_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
    let n = encoded_len(ty, src.len(), row_len)?;
    let start = out.len();
    out.resize(start + n, 0);
    let result = match out.get_mut(start..) {
        Some(dst) => encode_into(ty, src, dst, 0),
        None => Ok(()),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Encode `src` into `dst`, which must be exactly the encoded size of `src` (whole blocks): for callers that
/// split one tensor into pieces of whole blocks themselves. `first_index` is the position of `src[0]` in the
/// whole tensor, so that an error names the element as [`encode`] would. Bit-exact with [`encode`].
pub fn encode_slice(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    first_index: usize,
) -> Result<(), Error> {
    let block = usize::try_from(ty.block_size()).unwrap_or(usize::MAX);
    let n = encoded_len(ty, src.len(), block)?;
    if n != dst.len() {
        return Err(Error::EncodedSize {
            ggml_type: ty,
            values: src.len(),
            len: dst.len(),
            needed: n,
        });
    }
    encode_into(ty, src, dst, first_index)
}

/// [`encode`] on all cores (rayon), in chunks of whole blocks; the output is byte-identical to [`encode`].
pub fn encode_parallel(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    if src.len() < PARALLEL_MIN {
        return encode(ty, src, row_len, out);
    }
    let n = encoded_len(ty, src.len(), row_len)?;
    // Chunks hold whole blocks (PARALLEL_CHUNK is a multiple of every encodable block size), so each chunk's
    // output is exactly its share of the serial output.
    let block = usize::try_from(ty.block_size()).unwrap_or(1);
    let type_size = usize::try_from(ty.type_size()).unwrap_or(1);
    let chunk_bytes = PARALLEL_CHUNK / block * type_size;
    let start = out.len();
    out.resize(start + n, 0);
    let result = match out.get_mut(start..) {
        Some(dst) => dst
            .par_chunks_mut(chunk_bytes)
            .zip(src.par_chunks(PARALLEL_CHUNK))
            .enumerate()
            .try_for_each(|(i, (d, s))| encode_into(ty, s, d, i * PARALLEL_CHUNK)),
        None => Ok(()),
    };
    if result.is_err() {
        out.truncate(start);
        // Which chunk failed first is up to the scheduler: report the first bad value, as `encode` would.
        return Err(first_non_finite(ty, src).unwrap_or(Error::RowLength {
            ggml_type: ty,
            len: src.len(),
            row_len,
        }));
    }
    Ok(())
}

fn first_non_finite(ty: GgmlType, src: &[f32]) -> Option<Error> {
    let index = src.iter().position(|x| !x.is_finite())?;
    Some(Error::NonFinite {
        ggml_type: ty,
        index,
        value: src.get(index).copied().unwrap_or(f32::NAN),
    })
}

/// Encode `src` into `dst`, which has exactly the encoded size. `base` is the index of `src[0]` in the caller's
/// input (for error messages). Runs the AVX2 build of the encoders where the CPU has it (detected at run time:
/// the binary stays portable).
fn encode_into(ty: GgmlType, src: &[f32], dst: &mut [u8], base: usize) -> Result<(), Error> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2 (checked just above), the one feature `encode_into_avx2` is compiled for.
        return unsafe { encode_into_avx2(ty, src, dst, base) };
    }
    encode_into_any(ty, src, dst, base)
}

/// [`encode_into_any`] compiled for AVX2: the same operations in the same order (no FMA, nothing reassociated),
/// so the same bytes, on twice the lanes of the baseline x86-64 build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn encode_into_avx2(ty: GgmlType, src: &[f32], dst: &mut [u8], base: usize) -> Result<(), Error> {
    encode_into_any(ty, src, dst, base)
}

/// The encoders, for whatever target features the caller is compiled with (always inlined into it).
#[inline(always)]
fn encode_into_any(ty: GgmlType, src: &[f32], dst: &mut [u8], base: usize) -> Result<(), Error> {
    match ty {
        GgmlType::F32 => {
            for (d, x) in dst.as_chunks_mut::<4>().0.iter_mut().zip(src) {
                *d = x.to_le_bytes();
            }
        }
        GgmlType::F16 => {
            let mut batch = [f16::ZERO; F16_BATCH];
            for (s, d) in src.chunks(F16_BATCH).zip(dst.chunks_mut(F16_BATCH * 2)) {
                let Some(halves) = batch.get_mut(..s.len()) else {
                    continue;
                };
                halves.convert_from_f32_slice(s);
                let d = d.as_chunks_mut::<2>().0;
                for (h, d) in halves.iter().zip(d.iter_mut()) {
                    *d = h.to_bits().to_le_bytes();
                }
                // NaNs are rare: find them with a reduction that vectorizes, patch them one by one.
                if s.iter().fold(false, |any, x| any | x.is_nan()) {
                    for (x, d) in s.iter().zip(d) {
                        if x.is_nan() {
                            *d = f16_nan_numpy(*x).to_le_bytes();
                        }
                    }
                }
            }
        }
        GgmlType::BF16 => {
            for (d, x) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
                *d = f32_to_bf16_bits(*x).to_le_bytes();
            }
        }
        GgmlType::Q8_0 => {
            let blocks = src.as_chunks::<32>().0;
            for (i, (block, d)) in blocks.iter().zip(dst.as_chunks_mut::<34>().0).enumerate() {
                if let Err(j) = quantize_block_q8_0(block, d) {
                    let value = block.get(j).copied().unwrap_or(f32::NAN);
                    let index = base + i * 32 + j;
                    return Err(Error::NonFinite {
                        ggml_type: ty,
                        index,
                        value,
                    });
                }
            }
        }
        other => {
            return Err(Error::UnsupportedType {
                ggml_type: other,
                operation: "encode",
            });
        }
    }
    Ok(())
}

/// The index of the first value of `bytes` (encoded as `ty`) that is not finite — for q8_0 the first value of the
/// first block whose scale is not — or None. Finite input encodes to finite output except where it is beyond the
/// type's range (f16 above 65504, bf16 and q8_0 scales near their limits), so after encoding finite values this
/// finds an overflow.
pub fn first_non_finite_encoded(ty: GgmlType, bytes: &[u8]) -> Option<usize> {
    let u16s = || {
        bytes
            .as_chunks::<2>()
            .0
            .iter()
            .map(|b| u16::from_le_bytes(*b))
    };
    match ty {
        GgmlType::F32 => bytes
            .as_chunks::<4>()
            .0
            .iter()
            .position(|b| !f32::from_le_bytes(*b).is_finite()),
        GgmlType::F16 => u16s().position(|h| h & 0x7c00 == 0x7c00),
        GgmlType::BF16 => u16s().position(|h| h & 0x7f80 == 0x7f80),
        GgmlType::Q8_0 => bytes
            .as_chunks::<34>()
            .0
            .iter()
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00)
            .map(|block| block * 32),
        _ => None,
    }
}

/// numpy's f32 → f16 for NaN (`npy_floatbits_to_halfbits`): sign kept, payload shifted down, forced non-zero.
fn f16_nan_numpy(x: f32) -> u16 {
    let f = x.to_bits();
    let sign = ((f >> 16) & 0x8000) as u16;
    let mut h = 0x7c00u16 | (((f & 0x007f_ffff) >> 13) as u16);
    if h == 0x7c00 {
        h += 1;
    }
    sign | h
}

/// `ggml_compute_fp32_to_bf16` (and gguf-py `BF16.quantize_blocks`).
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return (((n & 0xffff_0000) | 0x0040_0000) >> 16) as u16;
    }
    // In u64 as gguf-py does; the sum cannot exceed 0xffff_ffff + 0x8000 and the top bits are truncated.
    ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
}

/// One q8_0 block of 32 values into 34 bytes (`quantize_row_q8_0_ref`); `Err(j)` if value `j` is not finite.
#[inline(always)]
fn quantize_block_q8_0(block: &[f32; 32], out: &mut [u8; 34]) -> Result<(), usize> {
    // max |x| on the bit patterns: for finite floats the order of |x| is the order of `bits & 0x7fffffff`,
    // and anything at or above the infinity pattern is not finite. Integer max vectorizes; f32::max does not.
    let amax_bits = block
        .iter()
        .fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff));
    if amax_bits >= 0x7f80_0000 {
        return Err(block.iter().position(|x| !x.is_finite()).unwrap_or(0));
    }
    let d = f32::from_bits(amax_bits) / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let Some((scale, qs)) = out.split_first_chunk_mut::<2>() else {
        return Ok(());
    };
    *scale = f16::from_f32(d).to_le_bytes();
    if !id.is_finite() {
        // d < 2^-128 (a block of f32 subnormals): 1/d overflowed, every x·id is ±inf or NaN, and C's and numpy's
        // conversion of those to int8 gives 0 on x86-64 (`cvttss2si` → INT_MIN, low byte 0). f16(d) is 0 anyway.
        qs.fill(0);
        return Ok(());
    }
    let mut q = [0i32; 32];
    for (q, x) in q.iter_mut().zip(block) {
        *q = round_half_away(*x * id);
    }
    for (out, q) in qs.iter_mut().zip(q) {
        *out = (q as i8).cast_unsigned();
    }
    Ok(())
}

/// 1.5 · 2²³: adding it to |v| < 2²² leaves v rounded to an integer (nearest even) in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `roundf(v)` for |v| <= 127.5 (true of every x·id with a finite id: |x·id| <= amax·id ≈ 127), ties away from
/// zero as `np_roundf` and `roundf`, in float and integer operations that vectorize (a float → int conversion
/// does not, on the baseline x86-64 target): `v + M` rounds to nearest even; `v − r` is then exact, and is ±0.5
/// exactly at a tie, where nearest-even went toward zero if the difference has the sign of v.
#[inline(always)]
fn round_half_away(v: f32) -> i32 {
    let s = v + ROUND_MAGIC;
    let even = (s.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let diff = v - (s - ROUND_MAGIC);
    even + i32::from(diff == 0.5 && v > 0.0) - i32::from(diff == -0.5 && v < 0.0)
}

/// Decode `bytes` of type `ty` to f32, appending to `out` (f32, f16, bf16, q8_0; as ggml's `to_float`).
pub fn decode(ty: GgmlType, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), Error> {
    if !ty.is_encodable() {
        return Err(Error::UnsupportedType {
            ggml_type: ty,
            operation: "decode",
        });
    }
    let type_size = usize::try_from(ty.type_size()).unwrap_or(usize::MAX);
    if !bytes.len().is_multiple_of(type_size) {
        return Err(Error::ByteLength {
            ggml_type: ty,
            len: bytes.len(),
        });
    }
    let block = usize::try_from(ty.block_size()).unwrap_or(1);
    out.reserve(bytes.len() / type_size * block);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b)),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|b| f16::from_le_bytes(*b).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16)),
        ),
        GgmlType::Q8_0 => {
            for block in bytes.as_chunks::<34>().0 {
                let Some((scale, qs)) = block.split_first_chunk::<2>() else {
                    continue;
                };
                let d = f16::from_le_bytes(*scale).to_f32();
                out.extend(qs.iter().map(|&q| f32::from(q.cast_signed()) * d));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL_F32: &[u8] = include_bytes!("../../fixtures/gguf/special.f32");
    const SPECIAL_F16: &[u8] = include_bytes!("../../fixtures/gguf/special.f16");
    const SPECIAL_BF16: &[u8] = include_bytes!("../../fixtures/gguf/special.bf16");
    const Q8_0_F32: &[u8] = include_bytes!("../../fixtures/gguf/q8_0.f32");
    const Q8_0_Q8_0: &[u8] = include_bytes!("../../fixtures/gguf/q8_0.q8_0");

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        decode(GgmlType::F32, bytes, &mut out).unwrap();
        out
    }

    /// Assert equal bytes, naming the first differing element of `width` bytes and its input.
    fn assert_bytes(ours: &[u8], oracle: &[u8], width: usize, input: &[f32]) {
        assert_eq!(ours.len(), oracle.len());
        if let Some(i) = ours.iter().zip(oracle).position(|(a, b)| a != b) {
            let e = i / width;
            let x = input
                .get(e * input.len() / (ours.len() / width))
                .copied()
                .unwrap_or(f32::NAN);
            panic!(
                "element {e} (input {x:e} = {:#010x}): ours {:02x?}, oracle {:02x?}",
                x.to_bits(),
                &ours[e * width..(e + 1) * width],
                &oracle[e * width..(e + 1) * width]
            );
        }
    }

    /// Sizes from compiling `ggml-common.h` of the vendored llama.cpp (`sizeof(block_*)`, `QK*`).
    #[test]
    fn type_table_matches_ggml() {
        let expected: [(u32, &str, u64, u64); 35] = [
            (0, "f32", 1, 4),
            (1, "f16", 1, 2),
            (2, "q4_0", 32, 18),
            (3, "q4_1", 32, 20),
            (6, "q5_0", 32, 22),
            (7, "q5_1", 32, 24),
            (8, "q8_0", 32, 34),
            (9, "q8_1", 32, 36),
            (10, "q2_K", 256, 84),
            (11, "q3_K", 256, 110),
            (12, "q4_K", 256, 144),
            (13, "q5_K", 256, 176),
            (14, "q6_K", 256, 210),
            (15, "q8_K", 256, 292),
            (16, "iq2_xxs", 256, 66),
            (17, "iq2_xs", 256, 74),
            (18, "iq3_xxs", 256, 98),
            (19, "iq1_s", 256, 50),
            (20, "iq4_nl", 32, 18),
            (21, "iq3_s", 256, 110),
            (22, "iq2_s", 256, 82),
            (23, "iq4_xs", 256, 136),
            (24, "i8", 1, 1),
            (25, "i16", 1, 2),
            (26, "i32", 1, 4),
            (27, "i64", 1, 8),
            (28, "f64", 1, 8),
            (29, "iq1_m", 256, 56),
            (30, "bf16", 1, 2),
            (34, "tq1_0", 256, 54),
            (35, "tq2_0", 256, 66),
            (39, "mxfp4", 32, 17),
            (40, "nvfp4", 64, 36),
            (41, "q1_0", 128, 18),
            (42, "q2_0", 64, 18),
        ];
        for (ty, (id, name, block, size)) in GgmlType::ALL.into_iter().zip(expected) {
            assert_eq!(
                (ty.id(), ty.name(), ty.block_size(), ty.type_size()),
                (id, name, block, size)
            );
            assert_eq!(GgmlType::from_id(id), Some(ty));
            assert_eq!(ty.to_string(), name);
        }
        for id in [4, 5, 31, 32, 33, 36, 37, 38] {
            assert_eq!(GgmlType::from_id(id), None);
            assert!(removed_type_name(id).is_some());
        }
        assert_eq!(GgmlType::from_id(43), None);
        assert_eq!(removed_type_name(43), None);
    }

    #[test]
    fn tensor_nbytes_follows_ggml_nbytes() {
        assert_eq!(tensor_nbytes(GgmlType::F32, &[]), Some(4));
        assert_eq!(tensor_nbytes(GgmlType::F32, &[3, 0, 5]), Some(0));
        assert_eq!(tensor_nbytes(GgmlType::Q8_0, &[64, 3]), Some(2 * 34 * 3));
        assert_eq!(
            tensor_nbytes(GgmlType::Q4_K, &[512, 2, 2]),
            Some(2 * 144 * 4)
        );
        assert_eq!(tensor_nbytes(GgmlType::Q8_0, &[33]), None);
        assert_eq!(tensor_nbytes(GgmlType::Q8_0, &[]), None);
        assert_eq!(tensor_nbytes(GgmlType::F32, &[1 << 62]), None);
        assert_eq!(tensor_nbytes(GgmlType::F32, &[1 << 32, 1 << 32]), None);
        assert_eq!(element_count(&[1 << 31, 1 << 31]), Some(1 << 62));
        assert_eq!(element_count(&[0, u64::MAX]), None);
        assert_eq!(element_count(&[0, 1 << 62, 1 << 62]), Some(0));
        assert_eq!(element_count(&[1 << 62, 1 << 62, 0]), None);
    }

    #[test]
    fn f16_matches_numpy_bit_for_bit() {
        let x = f32s(SPECIAL_F32);
        let mut ours = Vec::new();
        encode(GgmlType::F16, &x, x.len(), &mut ours).unwrap();
        assert_bytes(&ours, SPECIAL_F16, 2, &x);
    }

    #[test]
    fn f16_half_crate_differs_from_numpy_only_on_nan_payloads() {
        // Why `encode` patches NaNs: `half` (and F16C) set the quiet bit, numpy does not.
        let x = f32s(SPECIAL_F32);
        let mut differ = 0;
        for (v, o) in x.iter().zip(SPECIAL_F16.as_chunks::<2>().0) {
            let h = f16::from_f32(*v).to_bits();
            if h != u16::from_le_bytes(*o) {
                assert!(v.is_nan(), "{v:e}");
                differ += 1;
            }
        }
        assert!(differ > 0);
        assert_eq!(f16_nan_numpy(f32::from_bits(0x7f80_0001)), 0x7c01);
        assert_eq!(f16_nan_numpy(f32::from_bits(0xffbf_ffff)), 0xfdff);
        assert_eq!(f16_nan_numpy(f32::NAN), 0x7e00);
    }

    #[test]
    fn bf16_matches_gguf_py_bit_for_bit() {
        let x = f32s(SPECIAL_F32);
        let mut ours = Vec::new();
        encode(GgmlType::BF16, &x, 1, &mut ours).unwrap();
        assert_bytes(&ours, SPECIAL_BF16, 2, &x);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
    }

    #[test]
    fn q8_0_matches_gguf_py_bit_for_bit() {
        let x = f32s(Q8_0_F32);
        let mut ours = Vec::new();
        encode(GgmlType::Q8_0, &x, 64, &mut ours).unwrap();
        assert_bytes(&ours, Q8_0_Q8_0, 34, &x);
    }

    #[test]
    fn q8_0_rounds_ties_away_from_zero_with_the_unrounded_scale() {
        // amax 127 → d = 1 exactly, so every .5 is a tie.
        let mut block = [0.0f32; 32];
        block[..8].copy_from_slice(&[127.0, 0.5, -0.5, 1.5, -2.5, 126.5, -126.5, 0.49999997]);
        let mut out = Vec::new();
        encode(GgmlType::Q8_0, &block, 32, &mut out).unwrap();
        assert_eq!(&out[..2], &f16::from_f32(1.0).to_le_bytes());
        let q: Vec<i8> = out[2..10].iter().map(|b| b.cast_signed()).collect();
        assert_eq!(q, [127, 1, -1, 2, -3, 127, -127, 0]);
        // d = 0.1/127 is not representable in f16; the quantized values use the f32 d (x·id = 127 exactly here).
        let mut out = Vec::new();
        encode(GgmlType::Q8_0, &[0.1f32; 32], 32, &mut out).unwrap();
        assert_eq!(out[2], 127);
        assert_eq!(&out[..2], &f16::from_f32(0.1 / 127.0).to_le_bytes());
    }

    /// The rounding of `quantize_row_q8_0_ref` in its plainest form: truncate, then step away from zero when the
    /// remainder is at least one half.
    fn roundf_reference(v: f32) -> i32 {
        let t = v.trunc();
        let frac = v - t;
        t as i32 + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
    }

    #[test]
    fn q8_0_rounding_is_roundf_on_its_whole_range() {
        // Every tie k + ½ and its float neighbours, zeros, and a dense stride through all floats up to 127.5.
        let mut values = vec![
            0.0f32,
            -0.0,
            127.5,
            -127.5,
            f32::from_bits(1),
            -f32::from_bits(1),
        ];
        for k in -128..128 {
            let tie = k as f32 + 0.5;
            values.extend([tie, tie.next_up(), tie.next_down(), k as f32]);
        }
        values.extend(
            (0..0x42ff_0000u32)
                .step_by(97)
                .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)]),
        );
        for v in values.into_iter().filter(|v| v.abs() <= 127.5) {
            assert_eq!(round_half_away(v), roundf_reference(v), "{v:e}");
        }
    }

    #[test]
    fn decode_inverts_encode() {
        let x = f32s(Q8_0_F32);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let mut bytes = Vec::new();
            encode(ty, &x, 64, &mut bytes).unwrap();
            let mut back = Vec::new();
            decode(ty, &bytes, &mut back).unwrap();
            assert_eq!(back.len(), x.len());
            for (i, (b, v)) in back.iter().zip(&x).enumerate() {
                let expected = match ty {
                    GgmlType::F32 => *v,
                    GgmlType::F16 => f16::from_f32(*v).to_f32(),
                    GgmlType::BF16 => f32::from_bits(u32::from(f32_to_bf16_bits(*v)) << 16),
                    _ => {
                        let block = &bytes[i / 32 * 34..i / 32 * 34 + 34];
                        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                        f32::from(block[2 + i % 32].cast_signed()) * d
                    }
                };
                assert_eq!(b.to_bits(), expected.to_bits(), "{ty} element {i}");
            }
        }
    }

    /// xorshift values with a spread of magnitudes, signs and exact zeros.
    fn random_input(n: usize) -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let mantissa = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i % 97 == 0 {
                    0.0
                } else {
                    mantissa * 2f32.powi((s % 24) as i32 - 12)
                }
            })
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_build_gives_the_portable_builds_bytes() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // Every magnitude class, q8_0 ties (x·id exactly ±k.5) and a block of subnormals.
        let mut x = random_input(64 * 1024);
        x.extend((0..32).map(|i| f32::from_bits(1 + i)));
        x.extend((0..32).map(|i| (i as f32 - 16.0) * 0.5));
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let n = encoded_len(ty, x.len(), 32).unwrap();
            let (mut portable, mut avx2) = (vec![0u8; n], vec![1u8; n]);
            encode_into_any(ty, &x, &mut portable, 0).unwrap();
            #[allow(unsafe_code)]
            // SAFETY: AVX2 checked above.
            unsafe { encode_into_avx2(ty, &x, &mut avx2, 0) }.unwrap();
            assert!(portable == avx2, "{ty}");
        }
    }

    #[test]
    fn encode_parallel_is_byte_identical_to_encode() {
        // More rows than one parallel chunk, and a tail that is not a whole chunk.
        let row_len = 320;
        let x = random_input(4099 * row_len);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let mut serial = vec![7u8];
            let mut parallel = vec![7u8];
            encode(ty, &x, row_len, &mut serial).unwrap();
            encode_parallel(ty, &x, row_len, &mut parallel).unwrap();
            assert!(serial == parallel, "{ty}");
            assert_eq!(
                serial.len() as u64,
                1 + tensor_nbytes(ty, &[row_len as u64, 4099]).unwrap()
            );
        }
    }

    #[test]
    fn unsupported_type() {
        let mut out = vec![1u8];
        let err = encode(GgmlType::Q4_K, &[0.0; 256], 256, &mut out).unwrap_err();
        assert!(matches!(
            err,
            Error::UnsupportedType {
                ggml_type: GgmlType::Q4_K,
                operation: "encode"
            }
        ));
        assert_eq!(
            err.to_string(),
            "cannot encode q4_K data: only f32, f16, bf16 and q8_0 are supported"
        );
        assert_eq!(out, [1]);
        let err = decode(GgmlType::IQ2_XXS, &[0; 66], &mut Vec::new()).unwrap_err();
        assert!(matches!(
            err,
            Error::UnsupportedType {
                ggml_type: GgmlType::IQ2_XXS,
                operation: "decode"
            }
        ));
    }

    #[test]
    fn row_length() {
        let x = [1.0f32; 96];
        let err = encode(GgmlType::Q8_0, &x, 48, &mut Vec::new()).unwrap_err();
        assert!(matches!(
            err,
            Error::RowLength {
                ggml_type: GgmlType::Q8_0,
                len: 96,
                row_len: 48
            }
        ));
        assert_eq!(
            err.to_string(),
            "cannot encode 96 values as q8_0 rows of 48: 48 is not a multiple of the q8_0 block size 32"
        );
        let err = encode(GgmlType::F16, &x, 40, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot encode 96 values as f16 rows of 40: 96 is not a multiple of 40"
        );
        let err = encode_parallel(GgmlType::F32, &x, 0, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot encode 96 values as f32 rows of 0: the row length is 0"
        );
        let mut out = Vec::new();
        encode(GgmlType::Q8_0, &[], 0, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn non_finite() {
        let mut x = random_input(PARALLEL_CHUNK * 3);
        x[PARALLEL_CHUNK + 40] = f32::INFINITY;
        x[2 * PARALLEL_CHUNK + 1] = f32::NAN;
        for parallel in [false, true] {
            let mut out = vec![9u8];
            let result = if parallel {
                encode_parallel(GgmlType::Q8_0, &x, 64, &mut out)
            } else {
                encode(GgmlType::Q8_0, &x, 64, &mut out)
            };
            let err = result.unwrap_err();
            assert!(
                matches!(err, Error::NonFinite { index, .. } if index == PARALLEL_CHUNK + 40),
                "{err}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot quantize to q8_0: value #{} is inf; q8_0 needs finite input (use f16 or f32)",
                    PARALLEL_CHUNK + 40
                )
            );
            assert_eq!(out, [9]);
        }
        // f16 and bf16 take non-finite values (bit-exact with gguf-py, see the oracle tests).
        encode(GgmlType::F16, &x, 64, &mut Vec::new()).unwrap();
    }

    #[test]
    fn byte_length() {
        let err = decode(GgmlType::Q8_0, &[0; 35], &mut Vec::new()).unwrap_err();
        assert!(matches!(
            err,
            Error::ByteLength {
                ggml_type: GgmlType::Q8_0,
                len: 35
            }
        ));
        assert_eq!(
            err.to_string(),
            "cannot decode 35 bytes as q8_0: not a multiple of its 34 bytes per block"
        );
    }
}
