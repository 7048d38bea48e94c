//! `--verify`: read the written file back and check, for every target, that the ΔW llama.cpp will compute
//! (runtime factor × B·A) equals PEFT's ΔW within the rounding of the output type — a rigorous per-element bound
//! derived from each factor element's own rounding error, not a loose global tolerance.
//!
//! Small targets are compared element by element; for large ones (more than `FULL_CHECK_MACS` multiply-adds) ΔW
//! is compared through `PROBES` fixed random vectors x (ΔW·x = B·(A·x)), which catches any misplaced row, column,
//! scale or value with certainty for practical purposes at a tiny fraction of the cost.

use std::borrow::Cow;
use std::path::Path;

use rayon::prelude::*;

use super::error::ConvertError;
use super::factor::{self, HeadCounts};
use super::plan::{PairShape, Plan, PlannedPair};
use crate::adapter::Adapter;
use crate::gguf::{GgmlType, GgufFile};

/// Above this many multiply-adds per target, compare through probe vectors instead of the full ΔW.
const FULL_CHECK_MACS: usize = 1 << 26;
/// Probe vectors per large target.
const PROBES: usize = 4;

/// The outcome of a successful verification.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifyReport {
    /// Pairs checked.
    pub pairs: usize,
    /// Largest absolute ΔW error seen.
    pub worst_error: f64,
    /// The target where it was seen.
    pub worst_target: String,
    /// Largest error / bound ratio (≤ 1 means within rounding).
    pub worst_ratio: f64,
    /// Targets checked through probe vectors rather than element by element.
    pub probed: usize,
}

impl VerifyReport {
    /// Take in one target's check: its worst error, worst error / bound ratio, and whether it was probed.
    fn record(&mut self, target: &str, (worst, ratio, probed): (f64, f64, bool)) {
        self.probed += usize::from(probed);
        if worst > self.worst_error {
            self.worst_error = worst;
            self.worst_target = target.to_string();
        }
        self.worst_ratio = self.worst_ratio.max(ratio);
    }
}

/// Check every pair of `plan` in the file at `path` against the adapter.
pub fn verify(
    path: &Path,
    plan: &Plan,
    adapter: &Adapter,
    heads: HeadCounts,
) -> Result<VerifyReport, ConvertError> {
    let file = GgufFile::open(path)?;
    // Pairs are independent: check them on the rayon pool, then merge in file order, so the report (and the
    // error, the first failing pair's) is the one a serial pass gives.
    let checked: Vec<Result<VerifyReport, ConvertError>> = plan
        .pairs
        .par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(peft_a, peft_b), pair| verify_pair(&file, pair, plan, adapter, heads, peft_a, peft_b),
        )
        .collect();
    let mut report = VerifyReport::default();
    for pair in checked {
        let pair = pair?;
        report.pairs += pair.pairs;
        report.probed += pair.probed;
        if pair.worst_error > report.worst_error {
            report.worst_error = pair.worst_error;
            report.worst_target = pair.worst_target;
        }
        report.worst_ratio = report.worst_ratio.max(pair.worst_ratio);
    }
    Ok(report)
}

/// Check one pair; its report covers that pair alone. `peft_a`, `peft_b`: buffers reused across pairs.
fn verify_pair(
    file: &GgufFile,
    pair: &PlannedPair,
    plan: &Plan,
    adapter: &Adapter,
    heads: HeadCounts,
    peft_a: &mut Vec<f32>,
    peft_b: &mut Vec<f32>,
) -> Result<VerifyReport, ConvertError> {
    let mut report = VerifyReport::default();
    {
        let a_file = file.read_tensor_f32(&pair.a.name)?;
        let b_file = file.read_tensor_f32(&pair.b.name)?;
        let runtime = f64::from(plan.alpha / pair.rank as f32);
        let (r, inp, out) = (pair.rank, pair.in_features, pair.out_features);
        let n_expert = match pair.shape {
            PairShape::Experts { n_expert } => n_expert,
            _ => 1,
        };
        for e in 0..n_expert {
            let a_g = &a_file[e * r * inp..(e + 1) * r * inp];
            let b_g = &b_file[e * out * r..(e + 1) * out * r];
            // The GGUF A in PEFT orientation (r × in): the embedding stores Aᵀ.
            let a_g: Cow<[f32]> = match pair.shape {
                PairShape::Embedding { .. } => Cow::Owned(factor::transpose(a_g, inp, r)),
                _ => Cow::Borrowed(a_g),
            };
            if pair.sources.iter().any(|s| s.part.is_some()) {
                let check = parts_check(pair, adapter, heads, e, &a_g, b_g, runtime)?;
                report.record(&pair.target, check.run(pair)?);
                continue;
            }
            // per-expert Linear sources carry their slot; a fused source (no slot) holds every expert
            let source = pair
                .sources
                .iter()
                .find(|s| s.expert == Some(e) || s.expert.is_none());
            let Some(source) = source else {
                // A zero-filled expert must read back as exactly zero.
                if let Some(i) = a_g.iter().chain(b_g).position(|&x| x != 0.0) {
                    return Err(fail(
                        pair,
                        i,
                        0,
                        f64::from(a_g.iter().chain(b_g).nth(i).copied().unwrap_or(0.0)),
                        0.0,
                    ));
                }
                continue;
            };
            let p = &adapter.pairs[source.pair];
            adapter.tensor_f32(&p.a, peft_a)?;
            adapter.tensor_f32(&p.b, peft_b)?;
            // a fused source holds every expert: take expert e's factors out of its packing
            let in_expert = if source.expert.is_none() { e } else { 0 };
            // expert e's factors in PEFT's orientation (swapped back when PEFT holds ΔWᵀ)
            let (a_expert, b_expert, b_rows): (Cow<[f32]>, Vec<f32>, usize) = if source.transposed {
                let (a, b, rows) =
                    super::materialize::expert_factors(p, true, peft_a, peft_b, in_expert);
                (Cow::Owned(a), b, rows)
            } else {
                (
                    Cow::Borrowed(p.packing.expert_a(peft_a, r, inp, in_expert)),
                    p.packing.expert_b(peft_b, r, p.out_features(), in_expert),
                    p.b.shape[0],
                )
            };
            let a_ref: Cow<[f32]> = match pair.shape {
                PairShape::Embedding { vocab } if vocab < p.a.shape[1] => {
                    Cow::Owned(factor::keep_columns(peft_a, r, p.a.shape[1], vocab))
                }
                _ if source.cols != crate::arch::RowTransform::Identity => Cow::Owned(
                    factor::apply_cols(source.cols, &a_expert, r, inp, heads).map_err(|e| {
                        ConvertError::Rows {
                            module: p.module.clone(),
                            target: pair.target.clone(),
                            source: e,
                        }
                    })?,
                ),
                _ => a_expert,
            };
            let b_ref =
                factor::apply_rows(source.rows, &b_expert, b_rows, r, heads).map_err(|source| {
                    ConvertError::Rows {
                        module: p.module.clone(),
                        target: pair.target.clone(),
                        source,
                    }
                })?;
            let check = Check {
                a_file: &a_g,
                b_file: b_g,
                a_ref: Cow::Borrowed(&a_ref),
                b_ref: Cow::Borrowed(&b_ref),
                a_err: element_errors(&a_ref, inp, pair.a.ggml_type, 1.0),
                b_err: element_errors(&b_ref, r, pair.b.ggml_type, source.fold_for(e)),
                runtime,
                // llama.cpp scales the base only: the LoRA term must carry the base's scale itself
                peft: source.peft_scaling * source.base_scale_for(e),
                r,
                inp,
                out,
            };
            report.record(&pair.target, check.run(pair)?);
        }
        report.pairs += 1;
    }
    Ok(report)
}

/// The check of expert `e` of a pair built block-diagonally from the parts of a fused tensor: the reference
/// A (R × in) and B (out × R) are the parts' factors in their blocks (zero elsewhere), B already multiplied by each
/// part's own s (so the check's `peft` is 1), B's rounding bound per block with its own fold.
fn parts_check<'a>(
    pair: &PlannedPair,
    adapter: &Adapter,
    heads: HeadCounts,
    e: usize,
    a_file: &'a [f32],
    b_file: &'a [f32],
    runtime: f64,
) -> Result<Check<'a>, ConvertError> {
    let (r, inp, out) = (pair.rank, pair.in_features, pair.out_features);
    let mut a_ref = vec![0.0f32; r * inp];
    let mut b_ref = vec![0.0f32; out * r];
    let mut a_err = vec![0.0f64; r * inp];
    let mut b_err = vec![0.0f64; out * r];
    let (mut peft_a, mut peft_b) = (Vec::new(), Vec::new());
    for s in pair
        .sources
        .iter()
        .filter(|s| s.expert == Some(e) || s.expert.is_none())
    {
        let Some(part) = s.part else { continue };
        let p = &adapter.pairs[s.pair];
        adapter.tensor_f32(&p.a, &mut peft_a)?;
        adapter.tensor_f32(&p.b, &mut peft_b)?;
        let in_expert = if s.expert.is_none() { e } else { 0 };
        let (a_e, b_e, rows) =
            super::materialize::expert_factors(p, s.transposed, &peft_a, &peft_b, in_expert);
        let rp = p.rank;
        let rows_error = |source| ConvertError::Rows {
            module: p.module.clone(),
            target: pair.target.clone(),
            source,
        };
        let b_t = factor::apply_rows(s.rows, &b_e, rows, rp, heads).map_err(rows_error)?;
        let a_t = factor::apply_cols(s.cols, &a_e, rp, inp, heads).map_err(rows_error)?;
        let fold = s.fold_for(e);
        let s_p = s.peft_scaling * s.base_scale_for(e);
        let a_errs = element_errors(&a_t, inp, pair.a.ggml_type, 1.0);
        let b_errs = element_errors(&b_t, rp, pair.b.ggml_type, fold);
        let a_start = part.rank_offset * inp;
        a_ref[a_start..a_start + rp * inp].copy_from_slice(&a_t);
        a_err[a_start..a_start + rp * inp].copy_from_slice(&a_errs);
        for i in 0..part.rows {
            for k in 0..rp {
                let at = (part.row_offset + i) * r + part.rank_offset + k;
                b_ref[at] = (f64::from(b_t[i * rp + k]) * s_p) as f32;
                b_err[at] = b_errs[i * rp + k];
            }
        }
    }
    Ok(Check {
        a_file,
        b_file,
        a_ref: Cow::Owned(a_ref),
        b_ref: Cow::Owned(b_ref),
        a_err,
        b_err,
        runtime,
        peft: 1.0,
        r,
        inp,
        out,
    })
}

/// Per-element bound on |encoded − exact| for a factor whose exact value is `x · fold` (f32 multiply then encode).
fn element_errors(x: &[f32], row_len: usize, ty: GgmlType, fold: f64) -> Vec<f64> {
    let folded = fold != 1.0 && (fold as f32) != 1.0;
    let fold_err = if folded { 2f64.powi(-24) } else { 0.0 };
    let mut out = Vec::with_capacity(x.len());
    match ty {
        GgmlType::Q8_0 => {
            for row in x.chunks(row_len.max(1)) {
                for block in row.chunks(32) {
                    let amax = block
                        .iter()
                        .fold(0.0f64, |m, &v| m.max(f64::from(v).abs() * fold));
                    // |x − q·f16(d)| ≤ d/2 + 127·d·2⁻¹¹ with d = amax/127, plus the fold's own rounding.
                    let e = amax / 254.0 + amax * 2f64.powi(-11) * 1.01;
                    out.extend(
                        block
                            .iter()
                            .map(|&v| e + f64::from(v).abs() * fold * fold_err),
                    );
                }
            }
        }
        _ => {
            let (rel, abs) = match ty {
                GgmlType::F16 => (2f64.powi(-11), 2f64.powi(-25)),
                GgmlType::BF16 => (2f64.powi(-8), 0.0),
                _ => (0.0, 0.0),
            };
            out.extend(x.iter().map(|&v| {
                let m = f64::from(v).abs() * fold;
                m * (rel + fold_err) * 1.0001 + abs
            }));
        }
    }
    out
}

struct Check<'a> {
    a_file: &'a [f32],
    b_file: &'a [f32],
    a_ref: Cow<'a, [f32]>,
    b_ref: Cow<'a, [f32]>,
    a_err: Vec<f64>,
    b_err: Vec<f64>,
    runtime: f64,
    peft: f64,
    r: usize,
    inp: usize,
    out: usize,
}

impl Check<'_> {
    /// Returns (worst error, worst error/bound, probed?).
    fn run(&self, pair: &PlannedPair) -> Result<(f64, f64, bool), ConvertError> {
        let probed = self.r * self.inp * self.out > FULL_CHECK_MACS;
        let mut worst = (0.0f64, 0.0f64);
        if !probed {
            let mut row_g = vec![0.0f64; self.inp];
            let mut row_ref = vec![0.0f64; self.inp];
            let mut row_bound = vec![0.0f64; self.inp];
            for i in 0..self.out {
                row_g.iter_mut().for_each(|x| *x = 0.0);
                row_ref.iter_mut().for_each(|x| *x = 0.0);
                row_bound.iter_mut().for_each(|x| *x = 0.0);
                for k in 0..self.r {
                    let bg = f64::from(self.b_file[i * self.r + k]) * self.runtime;
                    let br = f64::from(self.b_ref[i * self.r + k]) * self.peft;
                    let eb = self.b_err[i * self.r + k];
                    let b_abs = f64::from(self.b_ref[i * self.r + k]).abs();
                    for j in 0..self.inp {
                        let ag = f64::from(self.a_file[k * self.inp + j]);
                        let ar = f64::from(self.a_ref[k * self.inp + j]);
                        row_g[j] += bg * ag;
                        row_ref[j] += br * ar;
                        let ea = self.a_err[k * self.inp + j];
                        // eb is in folded units (the runtime factor turns them into ΔW units); see module docs.
                        row_bound[j] +=
                            self.peft * b_abs * ea + self.runtime * eb * (ar.abs() + ea);
                    }
                }
                for j in 0..self.inp {
                    let scale_slack = row_ref[j].abs().max(1e-300) * 2f64.powi(-21);
                    let magnitude_slack = 2f64.powi(-21) * self.magnitude(i, j);
                    let bound = row_bound[j] + scale_slack + magnitude_slack + 1e-30;
                    let err = (row_g[j] - row_ref[j]).abs();
                    if err > bound || !err.is_finite() {
                        return Err(fail(pair, i, j, err, bound));
                    }
                    worst.0 = worst.0.max(err);
                    worst.1 = worst.1.max(err / bound);
                }
            }
        } else {
            for probe in 0..PROBES {
                let [ax_g, ax_ref, abs_ax, ea_x] = self.probe_sums(probe);
                for i in 0..self.out {
                    let (mut yg, mut yr, mut bound, mut mag) = (0.0, 0.0, 0.0, 0.0);
                    for k in 0..self.r {
                        let b = f64::from(self.b_ref[i * self.r + k]);
                        yg += f64::from(self.b_file[i * self.r + k]) * self.runtime * ax_g[k];
                        yr += b * self.peft * ax_ref[k];
                        let eb = self.b_err[i * self.r + k];
                        bound += self.peft * b.abs() * ea_x[k]
                            + self.runtime * eb * (abs_ax[k] + ea_x[k]);
                        mag += (b * self.peft).abs() * abs_ax[k];
                    }
                    let bound = bound + mag * 2f64.powi(-21) + 1e-30;
                    let err = (yg - yr).abs();
                    if err > bound || !err.is_finite() {
                        return Err(fail(pair, i, probe, err, bound));
                    }
                    worst.0 = worst.0.max(err);
                    worst.1 = worst.1.max(err / bound);
                }
            }
        }
        Ok((worst.0, worst.1, probed))
    }

    /// For probe vector x: A_file·x, A_ref·x, |A_ref|·|x| and err(A)·|x|, one value per rank row. The four sums
    /// run in one pass over the row (independent accumulations, each in the order of a separate `.sum()`, which
    /// starts from -0.0).
    fn probe_sums(&self, probe: usize) -> [Vec<f64>; 4] {
        let x: Vec<f64> = (0..self.inp).map(|j| probe_value(probe, j)).collect();
        let mut out = [
            vec![0.0f64; self.r],
            vec![0.0f64; self.r],
            vec![0.0f64; self.r],
            vec![0.0f64; self.r],
        ];
        for k in 0..self.r {
            let row = k * self.inp..(k + 1) * self.inp;
            let (mut g, mut rf, mut ab, mut ea) = (-0.0f64, -0.0f64, -0.0f64, -0.0f64);
            for (((&vg, &vr), &e), &xv) in self.a_file[row.clone()]
                .iter()
                .zip(&self.a_ref[row.clone()])
                .zip(&self.a_err[row])
                .zip(&x)
            {
                g += f64::from(vg) * xv;
                rf += f64::from(vr) * xv;
                ab += f64::from(vr).abs() * xv.abs();
                ea += e * xv.abs();
            }
            let [ax_g, ax_ref, abs_ax, ea_x] = &mut out;
            (ax_g[k], ax_ref[k], abs_ax[k], ea_x[k]) = (g, rf, ab, ea);
        }
        out
    }

    /// Σ_k |s·B_ik|·|A_kj|: the scale of f32 accumulation and factor-rounding slack.
    fn magnitude(&self, i: usize, j: usize) -> f64 {
        (0..self.r)
            .map(|k| {
                (f64::from(self.b_ref[i * self.r + k]) * self.peft).abs()
                    * f64::from(self.a_ref[k * self.inp + j]).abs()
            })
            .sum()
    }
}

/// A deterministic pseudo-random value in [-1, 1) (splitmix64), so verification is reproducible.
fn probe_value(probe: usize, j: usize) -> f64 {
    let mut z = (probe as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (j as u64).wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn fail(pair: &PlannedPair, row: usize, col: usize, error: f64, bound: f64) -> ConvertError {
    ConvertError::Verify {
        target: pair.target.clone(),
        dtype: format!("{}/{}", pair.a.ggml_type.name(), pair.b.ggml_type.name()),
        error,
        bound,
        row,
        col,
    }
}
