//! Which type each merged tensor is written in.
//!
//! Requantizing W + ΔW to the base's own type can destroy much of ΔW (the adapter's effect): its rounding noise
//! is that of a quantized model, and ΔW is small next to W. What matters is how far the merged tensor is from
//! what llama.cpp computes with the runtime adapter, W + ΔW with W the base's dequantized weights. So by default
//! ([`OutType::Auto`]) each merged tensor is measured: its **loss** is
//!
//! ```text
//! loss(T) = ‖deq(quant_T(W + ΔW)) − (W + ΔW)‖ / ‖ΔW‖      (Frobenius norms over the whole tensor)
//! ```
//!
//! the rounding error of storing it in type T, relative to the adapter's change of that tensor. The tensor keeps
//! the base's type when its loss is within the budget ([`DEFAULT_BUDGET`]), else gets the cheapest type of
//! [`LADDER`] larger than the base's whose loss is within it, and Q8_0 when none is. Types are tried in order of
//! size and measured, not assumed: a type's error is not monotone in its precision (Q5_1 can lose more than Q4_1).
//! Float bases (F32, F16, BF16) keep their type: their rounding is far below any quantized type's.

use crate::gguf::GgmlType;

/// The default loss budget: a merged tensor may lose at most this fraction of ‖ΔW‖ to rounding. Measured on the
/// Gemma 3 270M Q4_K_M test model (README, "Merging"): at 0.25 the merged model stays within the target KL of the
/// runtime adapter at a small size cost.
pub const DEFAULT_BUDGET: f64 = 0.25;

/// Quantized types a merged tensor may be promoted to, cheapest first (bits per weight: 4.5, 5, 5.5, 5.5, 6, 6.56,
/// 8.5; at equal size the k-quant first). Each is tried only if the row length is a whole number of its blocks.
pub const LADDER: [GgmlType; 6] = [
    GgmlType::Q4_1,
    GgmlType::Q5_K,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
];

/// How merged tensors are typed (`--outtype`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OutType {
    /// Measure each tensor; keep the base's type within the budget, else promote (the default).
    Auto {
        /// The loss budget (fraction of ‖ΔW‖).
        budget: f64,
    },
    /// The base's type for every merged tensor (what `llama-quantize --allow-requantize` does).
    Keep,
    /// One type for every merged tensor.
    Fixed(GgmlType),
}

impl Default for OutType {
    fn default() -> Self {
        OutType::Auto {
            budget: DEFAULT_BUDGET,
        }
    }
}

/// Bits per weight of a type.
pub fn bits_per_weight(ty: GgmlType) -> f64 {
    ty.type_size() as f64 * 8.0 / ty.block_size() as f64
}

/// Whether the type is a float type (no quantization grid).
pub fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// The types to try for a tensor of base type `base` with rows of `row_len`, in order: the base's type, then
/// every larger ladder type the rows fit. The last one is the fallback when none meets the budget.
pub fn candidates(base: GgmlType, row_len: u64) -> Vec<GgmlType> {
    let mut out = vec![base];
    if is_float(base) {
        return out;
    }
    let base_bits = bits_per_weight(base);
    for ty in LADDER {
        if bits_per_weight(ty) > base_bits
            && row_len.is_multiple_of(ty.block_size())
            && !out.contains(&ty)
        {
            out.push(ty);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladders_grow_in_size_and_respect_block_sizes() {
        use GgmlType::*;
        assert_eq!(
            candidates(Q4_K, 2048),
            vec![Q4_K, Q4_1, Q5_K, Q5_0, Q5_1, Q6_K, Q8_0]
        );
        // Gemma 3 270M: 640-wide rows take no k-quant.
        assert_eq!(candidates(Q5_0, 640), vec![Q5_0, Q5_1, Q8_0]);
        assert_eq!(candidates(Q6_K, 2048), vec![Q6_K, Q8_0]);
        assert_eq!(candidates(Q8_0, 640), vec![Q8_0]);
        assert_eq!(candidates(F16, 640), vec![F16]);
        let sizes: Vec<f64> = LADDER.iter().map(|t| bits_per_weight(*t)).collect();
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    }
}
