//! Which type each merged tensor is written in.
//!
//! Requantizing W + ΔW to the base's own type mostly destroys ΔW: W is already on that type's grid and ΔW is
//! usually smaller than its step, so rounding snaps most weights back to W (measured on Gemma 3 270M Q4_K_M with
//! the test adapter: 96–99 % of ΔW lost in every tensor; the merged model drifts 0.16 nats from the runtime
//! adapter). So by default ([`OutType::Auto`]) each merged tensor is measured in each candidate type T, with W
//! the base's dequantized weights and Q = deq(quant_T(W + ΔW)):
//!
//! ```text
//! lost(T)  = 1 − ⟨Q − W, ΔW⟩ / ‖ΔW‖²     the fraction of ΔW the stored change does not carry (on average)
//! noise(T) = ‖Q − (W + ΔW)‖ / ‖W‖       all rounding error, relative to the weights
//! ```
//!
//! The tensor keeps the base's type when `lost` is within the budget ([`DEFAULT_BUDGET`]); else it gets the first
//! type of [`LADDER`] larger than the base's with `lost` within the budget and `noise` within [`NOISE_LIMIT`] (a
//! type of another grid re-rounds all of W: quantizing it twice); else Q8_0. Types are measured, not assumed: a
//! type's error is not monotone in its precision (re-rounding Q4_K weights to Q5_1 adds 4 % noise, to Q8_0 0.5 %).
//! Float bases (F32, F16, BF16) keep their type.

use crate::gguf::GgmlType;

/// The default budget: a merged tensor may lose at most this fraction of ΔW to rounding (`lost`). A quarter of an
/// adapter's change in one tensor, spread over its weights, moves the output by a fraction of what the adapter does.
pub const DEFAULT_BUDGET: f64 = 0.25;

/// Quantized types a merged tensor may be promoted to, cheapest first (bits per weight: 5, 5.5, 5.5, 6, 6.56, 8.5;
/// at equal size the k-quant first). Each is tried only if the row length is a whole number of its blocks.
pub const LADDER: [GgmlType; 6] = [
    GgmlType::Q4_1,
    GgmlType::Q5_K,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
];

/// A type other than the base's re-rounds all of W onto its own grid: its rounding error relative to ‖W‖ must stay
/// within this (Q8_0 re-rounds Gemma 3 270M's Q4_K/Q5_0/Q6_K weights at 0.5–0.6 %, Q6_K at 1.8 %, Q5_1 at 3.6–4.4 %:
/// quantizing the model twice).
pub const NOISE_LIMIT: f64 = 0.01;

/// Whether a measured type is good enough under `budget` (the largest fraction of ΔW that may be lost).
pub fn accepts(is_base_type: bool, sums: &super::tensor::Sums, budget: f64) -> bool {
    sums.loss() <= budget && (is_base_type || sums.noise() <= NOISE_LIMIT)
}

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
