//! NaN and infinity in factor bytes, found without widening them: a value is non-finite exactly when its exponent
//! bits are all ones.

use rayon::prelude::*;

use super::SourceDtype;

/// Values per work item of [`Adapter::check_finite`].
const FINITE_CHUNK_VALUES: usize = 1 << 16;

/// The index of the first NaN or infinite value in `bytes` (little-endian `dtype` values), and which it is;
/// chunks are scanned in parallel, the first bad chunk in order then serially.
pub(crate) fn first_non_finite(dtype: SourceDtype, bytes: &[u8]) -> Option<(usize, &'static str)> {
    let size = dtype.size();
    bytes
        .par_chunks(FINITE_CHUNK_VALUES * size)
        .enumerate()
        .find_first(|(_, c)| !all_finite(dtype, c))
        .and_then(|(i, c)| {
            let (j, value) = c
                .chunks_exact(size)
                .enumerate()
                .find(|(_, v)| !all_finite(dtype, v))?;
            let what = if is_nan(dtype, value) {
                "NaN"
            } else {
                "infinity"
            };
            Some((i * FINITE_CHUNK_VALUES + j, what))
        })
}

/// Whether every value in `bytes` (little-endian `dtype` values) is finite. A value is NaN or infinite exactly
/// when its exponent bits are all ones, that is when adding one exponent step to them carries into the sign bit;
/// OR-ing those sums is three integer operations per value that vectorize on any x86-64 (an unsigned max needs
/// SSE4.1, which the baseline target lacks).
fn all_finite(dtype: SourceDtype, bytes: &[u8]) -> bool {
    match dtype {
        SourceDtype::F32 => {
            let carries = bytes.as_chunks::<4>().0.iter().fold(0u32, |acc, b| {
                acc | ((u32::from_le_bytes(*b) & 0x7f80_0000) + 0x0080_0000)
            });
            carries & 0x8000_0000 == 0
        }
        SourceDtype::F16 | SourceDtype::BF16 => {
            let (exponent, step) = if dtype == SourceDtype::F16 {
                (0x7c00u16, 0x0400u16)
            } else {
                (0x7f80, 0x0080)
            };
            let carries = bytes.as_chunks::<2>().0.iter().fold(0u16, |acc, b| {
                acc | ((u16::from_le_bytes(*b) & exponent) + step)
            });
            carries & 0x8000 == 0
        }
    }
}

fn is_nan(dtype: SourceDtype, value: &[u8]) -> bool {
    match (dtype, value) {
        (SourceDtype::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]).is_nan(),
        (SourceDtype::F16, &[a, b]) => half::f16::from_le_bytes([a, b]).is_nan(),
        (SourceDtype::BF16, &[a, b]) => half::bf16::from_le_bytes([a, b]).is_nan(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(dtype: SourceDtype, values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&x| match dtype {
                SourceDtype::F32 => x.to_le_bytes().to_vec(),
                SourceDtype::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                SourceDtype::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
            })
            .collect()
    }

    #[test]
    fn the_first_non_finite_value_is_found_in_every_dtype() {
        for dtype in [SourceDtype::F32, SourceDtype::F16, SourceDtype::BF16] {
            // The largest finite values, subnormals and zeros are all finite.
            let max = match dtype {
                SourceDtype::F32 => f32::MAX,
                SourceDtype::F16 => half::f16::MAX.to_f32(),
                SourceDtype::BF16 => half::bf16::MAX.to_f32(),
            };
            let mut values = vec![1.0f32; 3 * FINITE_CHUNK_VALUES + 5];
            values[..6].copy_from_slice(&[max, -max, 0.0, -0.0, 1e-40, -6e-8]);
            assert_eq!(
                first_non_finite(dtype, &bytes(dtype, &values)),
                None,
                "{dtype:?}"
            );
            // Several bad values in several chunks: the first in order wins, whichever chunk is scanned first.
            values[2 * FINITE_CHUNK_VALUES + 1] = f32::NAN;
            values[FINITE_CHUNK_VALUES + 7] = f32::NEG_INFINITY;
            values[3 * FINITE_CHUNK_VALUES] = f32::INFINITY;
            assert_eq!(
                first_non_finite(dtype, &bytes(dtype, &values)),
                Some((FINITE_CHUNK_VALUES + 7, "infinity")),
                "{dtype:?}"
            );
            values[9] = -f32::NAN;
            assert_eq!(
                first_non_finite(dtype, &bytes(dtype, &values)),
                Some((9, "NaN")),
                "{dtype:?}"
            );
        }
        // A NaN whose payload sits only in the low mantissa bits (no quiet bit) is still NaN.
        let signalling = f32::from_bits(0x7f80_0001).to_le_bytes();
        assert_eq!(
            first_non_finite(SourceDtype::F32, &signalling),
            Some((0, "NaN"))
        );
        assert_eq!(
            first_non_finite(SourceDtype::BF16, &0x7f81u16.to_le_bytes()),
            Some((0, "NaN"))
        );
        assert_eq!(
            first_non_finite(SourceDtype::F16, &0xfc00u16.to_le_bytes()),
            Some((0, "infinity"))
        );
    }
}
