//! Teacher-forced comparison of two logit rows over the whole vocabulary: KL(base ‖ adapted) in nats, top-1
//! agreement, max |Δlogit|. The validator's hot loop (262k-entry rows, thousands of rows per run), so: the base row's
//! share (its log-normaliser and argmax) is computed once and reused for every scale, and the adapted row takes two
//! vectorisable passes with an f64 exp accurate to a few ulp instead of three passes through libm's scalar `exp`.
//!
//! Identical rows give exactly KL 0 and max |Δlogit| 0 (every per-entry term is an exact zero), which the engine's
//! scale-0 self-check relies on.

/// Lanes processed together; a multiple of every SIMD width the compiler may pick for the loops below.
const LANES: usize = 8;

/// What a base row contributes to every comparison against it.
#[derive(Clone, Copy, Debug)]
pub struct BaseRow {
    /// log Σ exp(logit).
    pub log_z: f64,
    /// Index of the largest logit (lowest index on ties).
    pub argmax: usize,
}

impl BaseRow {
    /// Summarise a base row (one pass for the max, one for the sum of exponentials).
    pub fn new(logits: &[f32]) -> Self {
        let (max, argmax) = max_argmax(logits);
        BaseRow {
            log_z: log_sum_exp(logits, max),
            argmax,
        }
    }
}

/// One comparison of a base row with an adapted row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowComparison {
    /// KL(base ‖ adapted) in nats (clamped at 0 against rounding).
    pub kl: f64,
    /// Whether both argmaxes agree.
    pub same_top1: bool,
    /// The adapted row's argmax (lowest index on ties): its greedy next token.
    pub adapted_argmax: usize,
    /// max |base − adapted| over the vocabulary.
    pub max_abs: f32,
}

/// Compare `adapted` with the base row `base` summarised by `summary`.
pub fn compare(base: &[f32], summary: &BaseRow, adapted: &[f32]) -> RowComparison {
    let n = base.len().min(adapted.len());
    let (base, adapted) = (&base[..n], &adapted[..n]);
    let (max_q, argmax_q) = max_argmax(adapted);
    let log_z_q = log_sum_exp(adapted, max_q);
    // log p − log q = (a − b) − (log Zp − log Zq); weighted by p = exp(a − log Zp).
    let dz = summary.log_z - log_z_q;
    let mut kl = [0.0f64; LANES];
    let mut max_abs = [0.0f32; LANES];
    let mut bc = base.chunks_exact(LANES);
    let mut ac = adapted.chunks_exact(LANES);
    for (b, a) in (&mut bc).zip(&mut ac) {
        for j in 0..LANES {
            let (x, y) = (b[j], a[j]);
            let p = exp_nonpositive(x as f64 - summary.log_z);
            kl[j] += p * ((x as f64 - y as f64) - dz);
            let d = (x - y).abs();
            max_abs[j] = if d > max_abs[j] { d } else { max_abs[j] };
        }
    }
    let mut kl_sum: f64 = kl.iter().sum();
    let mut max_abs = max_abs.iter().copied().fold(0.0f32, f32::max);
    for (&x, &y) in bc.remainder().iter().zip(ac.remainder()) {
        kl_sum += exp_nonpositive(x as f64 - summary.log_z) * ((x as f64 - y as f64) - dz);
        max_abs = max_abs.max((x - y).abs());
    }
    RowComparison {
        kl: kl_sum.max(0.0),
        same_top1: summary.argmax == argmax_q,
        adapted_argmax: argmax_q,
        max_abs,
    }
}

/// The largest entry and its lowest index (0 for an empty row). The max is found lane-wise, then its first position.
pub fn max_argmax(x: &[f32]) -> (f32, usize) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            m[j] = if c[j] > m[j] { c[j] } else { m[j] };
        }
    }
    let mut max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in chunks.remainder() {
        max = max.max(v);
    }
    // A row of NaNs has no largest entry: report index 0, as a scalar argmax would.
    let at = x.iter().position(|&v| v == max).unwrap_or(0);
    (max, at)
}

/// log Σ exp(x) given max(x), accumulated in f64.
fn log_sum_exp(x: &[f32], max: f32) -> f64 {
    let m = max as f64;
    let mut s = [0.0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            s[j] += exp_nonpositive(c[j] as f64 - m);
        }
    }
    let mut sum: f64 = s.iter().sum();
    for &v in chunks.remainder() {
        sum += exp_nonpositive(v as f64 - m);
    }
    m + sum.ln()
}

/// exp(x) for x ≤ 0 (the callers subtract the maximum or the log-normaliser first), to a few ulp, branch-free so
/// that loops over it vectorise. x = k·ln 2 + r with |r| ≤ ln 2 / 2, exp(r) by its Taylor series to degree 12 (error
/// below 2.5e-16 relative), 2^k built in the exponent bits. Below −708 the result is a denormal-free tiny number
/// (< 3.4e-308) rather than the true value: nothing next to a sum ≥ 1 or a probability weight. NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // 1.5 · 2^52: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    let x = if x < -708.0 { -708.0 } else { x };
    let t = x * LOG2E + SHIFT;
    let k = t - SHIFT;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 479_001_600.0; // 1/12!
    p = p * r + 1.0 / 39_916_800.0;
    p = p * r + 1.0 / 3_628_800.0;
    p = p * r + 1.0 / 362_880.0;
    p = p * r + 1.0 / 40_320.0;
    p = p * r + 1.0 / 5_040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // t's bits minus SHIFT's bits are k as a two's-complement integer (|k| ≤ 1022).
    let k_bits = t.to_bits().wrapping_sub(SHIFT.to_bits());
    p * f64::from_bits(k_bits.wrapping_add(1023) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition in f64 through libm, as the engine computed it before.
    fn reference(p: &[f32], q: &[f32]) -> (f64, bool, f32) {
        let log_z = |x: &[f32]| {
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
        };
        let argmax = |x: &[f32]| {
            let mut best = 0;
            for (i, &v) in x.iter().enumerate() {
                if v > x[best] {
                    best = i;
                }
            }
            best
        };
        let (zp, zq) = (log_z(p), log_z(q));
        let mut kl = 0.0;
        let mut max_abs = 0.0f32;
        for (&a, &b) in p.iter().zip(q) {
            let (lp, lq) = (a as f64 - zp, b as f64 - zq);
            kl += lp.exp() * (lp - lq);
            max_abs = max_abs.max((a - b).abs());
        }
        (kl.max(0.0), argmax(p) == argmax(q), max_abs)
    }

    /// Deterministic pseudo-random logits shaped like a language model's: a broad spread and a few peaks.
    fn row(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                let peak = if i % 977 == 3 { 12.0 } else { 0.0 };
                (u * 20.0 - 14.0 + peak) as f32
            })
            .collect()
    }

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in 0..200_000 {
            let x = -(i as f64) * 0.003_540_1;
            let (got, want) = (exp_nonpositive(x), x.exp());
            if want > 1e-300 {
                worst = worst.max(((got - want) / want).abs());
            }
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f64::NAN).is_nan());
        assert!(exp_nonpositive(-1e6) < 3.4e-308);
    }

    #[test]
    fn kl_matches_the_definition() {
        let n = 262_147; // the Gemma 3 vocabulary plus a remainder for the lane loop
        let p = row(1, n);
        for (k, scale) in [0.02f32, 0.3, 1.0, 3.0].into_iter().enumerate() {
            // An adapted row: the base moved by a per-entry perturbation and a constant shift (which KL ignores).
            let noise = row(10 + k as u64, n);
            let q: Vec<f32> = p
                .iter()
                .zip(&noise)
                .map(|(&a, &e)| a + scale * (e + 4.0) * 0.1 + 7.5)
                .collect();
            let got = compare(&p, &BaseRow::new(&p), &q);
            let (kl, same, max_abs) = reference(&p, &q);
            assert!(
                ((got.kl - kl) / kl).abs() < 1e-9,
                "scale {scale}: {} vs {kl}",
                got.kl
            );
            assert_eq!(
                (got.same_top1, got.max_abs),
                (same, max_abs),
                "scale {scale}"
            );
        }
        // A changed argmax is seen.
        let mut q = p.clone();
        let top = BaseRow::new(&p).argmax;
        q[top] -= 20.0;
        let got = compare(&p, &BaseRow::new(&p), &q);
        assert!(!got.same_top1 && got.kl > 0.0 && got.max_abs == 20.0);
        assert_eq!(got.adapted_argmax, max_argmax(&q).1);
        assert_ne!(got.adapted_argmax, top);
    }

    #[test]
    fn identical_rows_are_exactly_zero() {
        let p = row(7, 100_003);
        let got = compare(&p, &BaseRow::new(&p), &p);
        assert_eq!(
            got,
            RowComparison {
                kl: 0.0,
                same_top1: true,
                adapted_argmax: BaseRow::new(&p).argmax,
                max_abs: 0.0
            }
        );
    }

    #[test]
    fn argmax_takes_the_lowest_index_on_ties() {
        let mut x = vec![0.0f32; 37];
        x[5] = 2.0;
        x[30] = 2.0;
        assert_eq!(max_argmax(&x), (2.0, 5));
        assert_eq!(max_argmax(&[]).1, 0);
        assert_eq!(max_argmax(&[-1.0, -3.0]), (-1.0, 0));
    }
}
