//! ggml tensor types (the full table, so real quantized base models parse) and the encoders/decoders for the four
//! types an adapter is written in — bit-exact with ggml's reference quantizers and gguf-py:
//! F16 = IEEE round-to-nearest-even (numpy `astype(float16)`); BF16 = `ggml_compute_fp32_to_bf16`;
//! Q8_0 = `quantize_row_q8_0_ref` (d = amax/127 in f32, q = roundf(x · (1/d)), d stored as f16).

use rayon::prelude::*;

use super::Error;

macro_rules! ggml_types {
    ($($variant:ident = $id:literal, $name:literal, $block:expr, $bytes:expr;)*) => {
        /// A ggml tensor type (`enum ggml_type` in ggml.h; sizes from gguf-py `GGML_QUANT_SIZES`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)] // ggml's own names, as users see them in logs and file listings
        pub enum GgmlType {
            $(
                #[doc = $name]
                $variant,
            )*
        }

        impl GgmlType {
            /// The wire id.
            pub fn id(self) -> u32 {
                match self { $(GgmlType::$variant => $id,)* }
            }
            /// Decode a wire id.
            pub fn from_id(id: u32) -> Option<Self> {
                match id { $($id => Some(GgmlType::$variant),)* _ => None }
            }
            /// ggml's name (`F32`, `Q4_K`, …).
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => $name,)* }
            }
            /// Elements per block.
            pub fn block_size(self) -> u64 {
                match self { $(GgmlType::$variant => $block,)* }
            }
            /// Bytes per block.
            pub fn type_size(self) -> u64 {
                match self { $(GgmlType::$variant => $bytes,)* }
            }
        }
    };
}

const QK_K: u64 = 256;

ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 2 + 16;
    Q4_1 = 3, "Q4_1", 32, 2 + 2 + 16;
    Q5_0 = 6, "Q5_0", 32, 2 + 4 + 16;
    Q5_1 = 7, "Q5_1", 32, 2 + 2 + 4 + 16;
    Q8_0 = 8, "Q8_0", 32, 2 + 32;
    Q8_1 = 9, "Q8_1", 32, 2 + 2 + 32;
    Q2_K = 10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4;
    Q3_K = 11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12;
    Q4_K = 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12;
    Q5_K = 13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12;
    Q6_K = 14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16;
    Q8_K = 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8;
    IQ2_XXS = 16, "IQ2_XXS", QK_K, 2 + QK_K / 4;
    IQ2_XS = 17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32;
    IQ3_XXS = 18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8;
    IQ1_S = 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16;
    IQ4_NL = 20, "IQ4_NL", 32, 2 + 16;
    IQ3_S = 21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4;
    IQ2_S = 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16;
    IQ4_XS = 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", QK_K, 2 + 4 * 13;
    TQ2_0 = 35, "TQ2_0", QK_K, 2 + 64;
    MXFP4 = 39, "MXFP4", 32, 1 + 16;
    NVFP4 = 40, "NVFP4", 64, 4 + 32;
    Q1_0 = 41, "Q1_0", 128, 2 + 16;
    Q2_0 = 42, "Q2_0", 64, 2 + 16;
}

/// Bytes of a tensor of `dims` (ggml `ne`), or None on overflow or when ne[0] is not a whole number of blocks.
pub fn tensor_nbytes(ty: GgmlType, dims: &[u64]) -> Option<u64> {
    let ne0 = *dims.first().unwrap_or(&1);
    if !ne0.is_multiple_of(ty.block_size()) {
        return None;
    }
    let rows = dims
        .iter()
        .skip(1)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
    (ne0 / ty.block_size())
        .checked_mul(ty.type_size())?
        .checked_mul(rows)
}

/// Q8_0 block length.
pub const QK8_0: usize = 32;
/// Below this many elements a tensor is encoded on one thread (splitting costs more than it saves).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;

/// Append the encoding of `src` (rows of `row_len` values) as `ty` to `out`.
pub fn encode(ty: GgmlType, src: &[f32], row_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
    check_encodable(ty, src.len(), row_len)?;
    match ty {
        GgmlType::F32 => {
            out.reserve(src.len() * 4);
            for x in src {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            out.reserve(src.len() * 2);
            for &x in src {
                out.extend_from_slice(&f32_to_f16(x).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            out.reserve(src.len() * 2);
            for &x in src {
                out.extend_from_slice(&f32_to_bf16(x).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            out.reserve(src.len() / QK8_0 * 34);
            for block in src.chunks_exact(QK8_0) {
                encode_q8_0_block(block, out);
            }
        }
        _ => unreachable_encode(ty)?,
    }
    Ok(())
}

/// Like `encode`, split over rayon's threads by whole rows; byte-identical to `encode`.
pub fn encode_parallel(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    check_encodable(ty, src.len(), row_len)?;
    if src.len() < PARALLEL_MIN_ELEMENTS || rayon::current_num_threads() < 2 || row_len == 0 {
        return encode(ty, src, row_len, out);
    }
    let rows_per_chunk = (PARALLEL_MIN_ELEMENTS / 4 / row_len).max(1);
    let chunk = rows_per_chunk * row_len;
    let parts: Vec<Result<Vec<u8>, Error>> = src
        .par_chunks(chunk)
        .map(|c| {
            let mut v = Vec::new();
            encode(ty, c, row_len, &mut v)?;
            Ok(v)
        })
        .collect();
    for p in parts {
        out.extend_from_slice(&p?);
    }
    Ok(())
}

fn check_encodable(ty: GgmlType, len: usize, row_len: usize) -> Result<(), Error> {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Ok(()),
        GgmlType::Q8_0 if row_len.is_multiple_of(QK8_0) && len.is_multiple_of(QK8_0) => Ok(()),
        GgmlType::Q8_0 => Err(Error::BlockSize {
            ty: ty.name(),
            row_len: row_len as u64,
            block: QK8_0 as u64,
        }),
        _ => unreachable_encode(ty),
    }
}

fn unreachable_encode(ty: GgmlType) -> Result<(), Error> {
    Err(Error::UnsupportedType {
        ty: ty.name(),
        what: "encode",
    })
}

/// numpy's `astype(float16)` (what gguf-py writes): round to nearest even via `half`, except that a NaN keeps
/// its top payload bits without being forced quiet (`npy_floatbits_to_halfbits`).
pub fn f32_to_f16(x: f32) -> u16 {
    if x.is_nan() {
        let n = x.to_bits();
        let bits = ((n >> 16) & 0x8000) as u16 | 0x7c00 | ((n & 0x007f_ffff) >> 13) as u16;
        return if bits & 0x03ff == 0 { bits + 1 } else { bits };
    }
    half::f16::from_f32(x).to_bits()
}

/// `ggml_compute_fp32_to_bf16`: NaN keeps its sign and becomes quiet; everything else rounds to nearest even.
pub fn f32_to_bf16(x: f32) -> u16 {
    let n = x.to_bits();
    if (n & 0x7fff_ffff) > 0x7f80_0000 {
        return ((n >> 16) | 64) as u16;
    }
    ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
}

fn encode_q8_0_block(block: &[f32], out: &mut Vec<u8>) {
    let amax = block
        .iter()
        .fold(0.0f32, |m, &x| if x.abs() > m { x.abs() } else { m });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
    // C `roundf`: half away from zero, which is Rust's `f32::round`.
    out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
}

/// Decode `bytes` of type `ty` into f32 values (appended to `out`, cleared first).
pub fn decode(ty: GgmlType, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), Error> {
    out.clear();
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        _ => {
            return Err(Error::UnsupportedType {
                ty: ty.name(),
                what: "decode",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_table_matches_ggml_for_common_types() {
        assert_eq!(
            (
                GgmlType::Q4_K.id(),
                GgmlType::Q4_K.block_size(),
                GgmlType::Q4_K.type_size()
            ),
            (12, 256, 144)
        );
        assert_eq!((GgmlType::Q6_K.type_size(), GgmlType::BF16.id()), (210, 30));
        assert_eq!(GgmlType::from_id(31), None);
        assert_eq!(tensor_nbytes(GgmlType::Q8_0, &[64, 3]), Some(2 * 34 * 3));
        assert_eq!(tensor_nbytes(GgmlType::Q8_0, &[48, 3]), None);
        assert_eq!(tensor_nbytes(GgmlType::F32, &[u64::MAX, 2]), None);
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie → even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie → even (up)
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16(f32::from_bits(0xff80_0001)), 0xffc0);
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero_and_handles_zero_blocks() {
        let mut block = [0.0f32; 32];
        block[0] = 127.0;
        block[1] = 0.5;
        block[2] = -0.5;
        block[3] = 1.5;
        let mut out = Vec::new();
        encode(GgmlType::Q8_0, &block, 32, &mut out).unwrap();
        assert_eq!(&out[0..2], &half::f16::from_f32(1.0).to_le_bytes());
        assert_eq!(&out[2..6], &[127, 1, (-1i8) as u8, 2]);
        out.clear();
        encode(GgmlType::Q8_0, &[0.0; 32], 32, &mut out).unwrap();
        assert_eq!(out, vec![0u8; 34]);
    }

    #[test]
    fn rejects_q8_0_rows_not_multiple_of_32() {
        let e = encode(GgmlType::Q8_0, &[0.0; 48], 48, &mut Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Q8_0 needs rows of a multiple of 32 values, got 48"
        );
    }

    #[test]
    fn parallel_encoding_is_byte_identical() {
        let src: Vec<f32> = (0..4096 * 64)
            .map(|i| ((i * 7919) % 1000) as f32 / 333.0 - 1.5)
            .collect();
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode(ty, &src, 64, &mut a).unwrap();
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap()
                .install(|| {
                    encode_parallel(ty, &src, 64, &mut b).unwrap();
                });
            assert_eq!(a, b, "{ty:?}");
        }
    }

    #[test]
    fn decode_inverts_exact_encodings() {
        let src = [1.0f32, -2.5, 0.0, 3.25];
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let mut bytes = Vec::new();
            encode(ty, &src, 4, &mut bytes).unwrap();
            let mut back = Vec::new();
            decode(ty, &bytes, &mut back).unwrap();
            assert_eq!(back, src);
        }
    }
}
