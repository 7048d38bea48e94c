//! Turn a planned pair into the two factor matrices as llama.cpp reads them (f32, ggml memory order), from the
//! adapter's memory-mapped tensors: row transform and scaling fold on B, transpose (and vocabulary cut) of the
//! embedding's A, expert stacking with zero-filled gaps.

use super::error::ConvertError;
use super::factor::{self, HeadCounts};
use super::plan::{PairShape, PlannedPair};
use crate::adapter::{Adapter, LoraPair};

/// The factors of one output pair, in the exact element order of the GGUF tensors.
pub struct Factors {
    /// `lora_a` data.
    pub a: Vec<f32>,
    /// `lora_b` data.
    pub b: Vec<f32>,
}

/// Build the output factors of `pair`.
pub fn materialize(
    adapter: &Adapter,
    pair: &PlannedPair,
    heads: HeadCounts,
) -> Result<Factors, ConvertError> {
    let (r, inp, out) = (pair.rank, pair.in_features, pair.out_features);
    let mut a_src = Vec::new();
    let mut b_src = Vec::new();
    match pair.shape {
        PairShape::Linear => {
            let s = &pair.sources[0];
            let p = &adapter.pairs[s.pair];
            adapter.tensor_f32(&p.a, &mut a_src)?;
            adapter.tensor_f32(&p.b, &mut b_src)?;
            let b = transformed_b(
                &b_src,
                p.b.shape[0],
                r,
                s.rows,
                s.fold_for(0),
                heads,
                &pair.target,
                &p.module,
            )?;
            let a = transformed_a(&a_src, r, inp, s.cols, heads, &pair.target, &p.module)?;
            Ok(Factors { a, b })
        }
        PairShape::Embedding { vocab } => {
            let s = &pair.sources[0];
            let p = &adapter.pairs[s.pair];
            adapter.tensor_f32(&p.a, &mut a_src)?;
            adapter.tensor_f32(&p.b, &mut b_src)?;
            let a_vocab = p.a.shape[1];
            let a = if vocab < a_vocab {
                factor::keep_columns(&a_src, r, a_vocab, vocab)
            } else {
                a_src
            };
            let a = factor::transpose(&a, r, vocab);
            let b = transformed_b(
                &b_src,
                p.b.shape[0],
                r,
                s.rows,
                s.fold,
                heads,
                &pair.target,
                &p.module,
            )?;
            Ok(Factors { a, b })
        }
        PairShape::Experts { n_expert } => {
            let mut a = vec![0.0f32; n_expert * r * inp];
            let mut b = vec![0.0f32; n_expert * out * r];
            for s in &pair.sources {
                let p = &adapter.pairs[s.pair];
                adapter.tensor_f32(&p.a, &mut a_src)?;
                adapter.tensor_f32(&p.b, &mut b_src)?;
                // one expert per source (per-expert Linear), or the whole stack from one pair (fused experts)
                let slots: Vec<(usize, usize)> = match s.expert {
                    Some(e) => vec![(e, 0)],
                    None => (0..n_expert).map(|e| (e, e)).collect(),
                };
                // the source's own rank, and the block it fills: all of the pair, or its part of a fused tensor
                let rp = p.rank;
                let (rank_offset, row_offset) = s
                    .part
                    .map_or((0, 0), |part| (part.rank_offset, part.row_offset));
                for (slot, e) in slots {
                    let (a_e, b_e, rows) = expert_factors(p, s.transposed, &a_src, &b_src, e);
                    let bt = transformed_b(
                        &b_e,
                        rows,
                        rp,
                        s.rows,
                        s.fold_for(slot),
                        heads,
                        &pair.target,
                        &p.module,
                    )?;
                    let at = transformed_a(&a_e, rp, inp, s.cols, heads, &pair.target, &p.module)?;
                    let a_start = (slot * r + rank_offset) * inp;
                    a[a_start..a_start + rp * inp].copy_from_slice(&at);
                    for (i, row) in bt.chunks_exact(rp).enumerate() {
                        let start = (slot * out + row_offset + i) * r + rank_offset;
                        b[start..start + rp].copy_from_slice(row);
                    }
                }
            }
            Ok(Factors { a, b })
        }
    }
}

/// Expert `e`'s factors of ΔW in PEFT's orientation — A (r × in), B (rows × r) — and B's row count, out of a
/// source's whole factors. When PEFT holds ΔWᵀ (`transposed`: Llama 4's (E, in, out) experts, stored A
/// (E·r, out) and B (in, E·r)), ΔW_e = (B_e·A_e)ᵀ = A_eᵀ·B_eᵀ: A is B_eᵀ and B is A_eᵀ.
pub fn expert_factors(
    p: &LoraPair,
    transposed: bool,
    a_src: &[f32],
    b_src: &[f32],
    e: usize,
) -> (Vec<f32>, Vec<f32>, usize) {
    let r = p.rank;
    let a_e = p.packing.expert_a(a_src, r, p.in_features(), e);
    let b_e = p.packing.expert_b(b_src, r, p.out_features(), e);
    if transposed {
        let (a_cols, b_rows) = (p.in_features(), p.out_features());
        (
            factor::transpose(&b_e, b_rows, r),
            factor::transpose(a_e, r, a_cols),
            a_cols,
        )
    } else {
        (a_e.to_vec(), b_e, p.out_features())
    }
}

/// A's columns (the base weight's input features) reordered as the converter reorders the weight's.
fn transformed_a(
    a: &[f32],
    rank: usize,
    cols: usize,
    t: crate::arch::RowTransform,
    heads: HeadCounts,
    target: &str,
    module: &str,
) -> Result<Vec<f32>, ConvertError> {
    if t == crate::arch::RowTransform::Identity {
        return Ok(a.to_vec());
    }
    factor::apply_cols(t, a, rank, cols, heads).map_err(|source| ConvertError::Rows {
        module: module.to_string(),
        target: target.to_string(),
        source,
    })
}

#[allow(clippy::too_many_arguments)] // one call site per layout; a struct would only rename the arguments
fn transformed_b(
    b: &[f32],
    rows: usize,
    rank: usize,
    t: crate::arch::RowTransform,
    fold: f64,
    heads: HeadCounts,
    target: &str,
    module: &str,
) -> Result<Vec<f32>, ConvertError> {
    let mut out =
        factor::apply_rows(t, b, rows, rank, heads).map_err(|source| ConvertError::Rows {
            module: module.to_string(),
            target: target.to_string(),
            source,
        })?;
    factor::scale_in_place(&mut out, fold as f32);
    Ok(out)
}
