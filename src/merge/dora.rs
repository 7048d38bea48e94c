//! DoRA (PEFT `use_dora`, mlx-lm `fine_tune_type: dora`), merged exactly as the unmerged adapter computes.
//!
//! Both trainers compute, for a Linear with weight W (out × in), LoRA scaling s and learned magnitude m (one per
//! output feature): y = m ⊙ (W + s·B·A)·x / ‖W + s·B·A‖ (+ bias), the norm taken per output feature over the input
//! dimension — peft 0.21.2 `tuners/lora/dora.py` `get_weight_norm` (`torch.linalg.norm(W + s·ΔW, dim=1)` on the
//! (out, in) weight) and forward `(m/‖·‖ − 1)·W·x + m/‖·‖·s·B·A·x` on top of `W·x + bias`; mlx-lm 0.32.2
//! `tuner/dora.py` `DoRALinear` (`mx.linalg.norm(w + scale·Bᵀ·Aᵀ, axis=1)` on the (out, in) weight). So the merged
//! weight is W' = diag(m / ‖W + s·ΔW‖)·(W + s·ΔW), which is also what peft's `merge_and_unload` writes. In ggml's
//! orientation (ne0 = input features) an output feature is one row, so the merge normalises whole rows of the
//! merged slab ([`normalize_rows`]); the user's `:SCALE` multiplies s inside the norm too, as peft's `set_scale`.
//!
//! The converter's row transforms (Q/K rotary permutation, fused-QKV reordering, row selections of a split
//! projection) only move or select whole rows of W and of B·A together, so the magnitude goes through the same
//! transform as B's rows and every row's norm is unchanged. peft's DoRA on the token embedding normalises each
//! embedding feature (a column of `token_embd`) over the whole vocabulary: the merge sums the columns over every row
//! first, then rescales ([`column_factors`]). What this cannot do exactly is refused, naming the module: mlx-lm's
//! DoRA on the embedding (one magnitude per token), an embedding whose vocabulary the GGUF cuts, pairs whose columns
//! are transformed, whose B carries a base scale, that fill part of a fused base
//! tensor or hold ΔWᵀ; and a DoRA adapter stacked with another adapter on one tensor (peft's forward and its
//! `merge_and_unload` disagree there: the order of the adapters changes the merged weight).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::MergeError;
use crate::adapter::{self, Adapter, KeyKind, SourceDtype, TensorRef};
use crate::arch::RowTransform;
use crate::convert::factor::{self, HeadCounts};
use crate::convert::plan::{PairShape, PlannedPair};
use crate::convert::{ConvertError, Prepared};

/// DoRA's magnitude for each row of a base tensor (experts stacked); `None` for rows no DoRA pair covers (an
/// expert without a LoRA), which stay W + ΔW (ΔW = 0 there).
pub type RowMagnitudes = Vec<Option<f32>>;

/// How a DoRA pair's magnitudes apply to its base tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Magnitude {
    /// A Linear: one per output feature, a row of W in ggml (norm over the row).
    Rows(RowMagnitudes),
    /// peft's token embedding: one per embedding feature, a column of `token_embd` in ggml (norm over the whole
    /// vocabulary, so the merge first sums every row: [`column_factors`]).
    Columns(Vec<f32>),
}

/// What one slab of merged rows is rescaled by.
#[derive(Clone, Copy, Debug)]
pub enum Rescale<'a> {
    /// Each row to its magnitude (over the whole tensor, indexed by global row).
    Rows(&'a [Option<f32>]),
    /// Each column by m / ‖column of W + s·ΔW‖, computed over the whole tensor.
    Columns(&'a [f32]),
}

/// The magnitude vectors of a DoRA adapter, by index into `Adapter::pairs` (PEFT orientation: one value per output
/// feature of the module).
pub type Magnitudes = BTreeMap<usize, Vec<f32>>;

/// Whether the adapter's configuration declares DoRA: the converter's refusal of `use_dora: true` (PEFT) or of
/// `fine_tune_type: dora` (mlx-lm).
fn declared(prepared: &Prepared) -> bool {
    prepared.refusals.iter().any(|r| match r {
        ConvertError::Adapter(adapter::Error::Unsupported { key, .. }) => {
            is_declaration(key, prepared.mlx.as_ref())
        }
        _ => false,
    })
}

/// Whether a refused configuration key is the one that declares DoRA.
fn is_declaration(key: &str, mlx: Option<&crate::mlx::MlxConfig>) -> bool {
    match mlx {
        Some(m) => key == "fine_tune_type" && m.fine_tune_type == "dora",
        None => key == "use_dora",
    }
}

/// Take a DoRA adapter's refusals out of `prepared` (the converter refuses DoRA as a runtime adapter; a merge can
/// do it) and read its magnitudes. `None` for an adapter without DoRA. A magnitude vector in an adapter whose
/// configuration does not declare DoRA (torchtune's PEFT export) stays refused: its meaning is not known.
pub fn take(prepared: &mut Prepared, dir: &Path) -> Result<Option<Magnitudes>, MergeError> {
    let keys: Vec<&adapter::OtherTensor> = prepared
        .adapter
        .others
        .iter()
        .filter(|t| t.kind == KeyKind::DoraMagnitude)
        .collect();
    if !declared(prepared) {
        return match keys.first() {
            Some(t) => Err(MergeError::Dora {
                adapter: dir.to_path_buf(),
                message: format!(
                    "tensor `{}` is a DoRA magnitude vector, but `adapter_config.json` does not declare DoRA \
                     ({}); set it if the adapter was trained as DoRA (torchtune's exports omit it)",
                    t.key,
                    if prepared.mlx.is_some() {
                        "`fine_tune_type: dora`"
                    } else {
                        "`use_dora: true`"
                    }
                ),
            }),
            None => Ok(None),
        };
    }
    let magnitude_keys: Vec<String> = keys.iter().map(|t| t.key.clone()).collect();
    prepared.refusals.retain(|r| match r {
        ConvertError::Adapter(adapter::Error::Unsupported { key, .. }) => {
            !is_declaration(key, prepared.mlx.as_ref())
        }
        ConvertError::Adapter(adapter::Error::UnsupportedTensor { key, .. }) => {
            !magnitude_keys.contains(key)
        }
        _ => true,
    });
    let adapter = &prepared.adapter;
    let mut out = Magnitudes::new();
    for t in &keys {
        let prefix = magnitude_prefix(&t.key);
        let pair = adapter.pairs.iter().position(|p| {
            p.a.key
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| rest.starts_with("lora_"))
        });
        let Some(index) = pair else {
            return Err(MergeError::Dora {
                adapter: dir.to_path_buf(),
                message: format!(
                    "tensor `{}`: a DoRA magnitude vector without a LoRA pair of its module",
                    t.key
                ),
            });
        };
        let pair = &adapter.pairs[index];
        if prepared.mlx.is_some() && pair.kind == adapter::PairKind::Embedding {
            return Err(MergeError::Dora {
                adapter: dir.to_path_buf(),
                message: format!(
                    "module `{}`: mlx-lm's DoRA on the embedding normalises each token's row (one magnitude per \
                     token); lora-convert merge does not apply it",
                    pair.module
                ),
            });
        }
        let values = read_vector(adapter, t)?;
        let rows = adapter.pairs[index].out_features();
        if values.len() != rows {
            return Err(MergeError::Dora {
                adapter: dir.to_path_buf(),
                message: format!(
                    "tensor `{}` has {} values, but module `{}` has {rows} output features",
                    t.key,
                    values.len(),
                    adapter.pairs[index].module
                ),
            });
        }
        out.insert(index, values);
    }
    if let Some(p) = (0..adapter.pairs.len())
        .find(|i| !out.contains_key(i))
        .map(|i| &adapter.pairs[i])
    {
        return Err(MergeError::Dora {
            adapter: dir.to_path_buf(),
            message: format!(
                "module `{}` has LoRA factors but no DoRA magnitude vector; the file is incomplete",
                p.module
            ),
        });
    }
    Ok(Some(out))
}

/// The key up to DoRA's own component: PEFT's `….lora_magnitude_vector[.weight]`, mlx-lm's `….m`.
fn magnitude_prefix(key: &str) -> &str {
    if let Some(i) = key.find(".lora_magnitude_vector") {
        &key[..i]
    } else {
        key.strip_suffix(".m").unwrap_or(key)
    }
}

fn read_vector(adapter: &Adapter, t: &adapter::OtherTensor) -> Result<Vec<f32>, MergeError> {
    let dtype = match t.dtype.as_str() {
        "F32" => SourceDtype::F32,
        "F16" => SourceDtype::F16,
        "BF16" => SourceDtype::BF16,
        other => {
            return Err(MergeError::Dora {
                adapter: adapter.dir.clone(),
                message: format!(
                    "tensor `{}` has dtype {other}; DoRA magnitudes must be F32, F16 or BF16",
                    t.key
                ),
            });
        }
    };
    let r = TensorRef {
        key: t.key.clone(),
        dtype,
        shape: t.shape.clone(),
        transposed: false,
    };
    let mut out = Vec::new();
    adapter
        .tensor_f32(&r, &mut out)
        .map_err(|e| MergeError::Convert {
            adapter: adapter.dir.clone(),
            source: Box::new(e.into()),
        })?;
    Ok(out)
}

/// The magnitudes of `planned`'s base tensor: per row in ggml row order (the converter's row transform applied as
/// to B), or per column for an embedding; or a refusal naming the module when the merge could not be exact.
pub fn for_target(
    planned: &PlannedPair,
    adapter: &Adapter,
    magnitudes: &Magnitudes,
    heads: HeadCounts,
) -> Result<Magnitude, MergeError> {
    let refuse = |module: &str, why: &str| MergeError::Dora {
        adapter: adapter.dir.clone(),
        message: format!(
            "module `{module}` → `{}`: {why}; lora-convert merge cannot apply DoRA there exactly",
            planned.target
        ),
    };
    let out = planned.out_features;
    let mut rows: RowMagnitudes = match planned.shape {
        PairShape::Linear => vec![None; out],
        PairShape::Experts { n_expert } => vec![None; n_expert * out],
        PairShape::Embedding { vocab } => {
            return embedding(planned, vocab, adapter, magnitudes)
                .map_err(|why| refuse(&adapter.pairs[planned.sources[0].pair].module, &why));
        }
    };
    for s in &planned.sources {
        let pair = &adapter.pairs[s.pair];
        let why = if s.cols != RowTransform::Identity {
            Some("its input columns are transformed")
        } else if s.base_scale.is_some() {
            Some(
                "llama.cpp scales this base tensor's output, so its rows are not the trained weight's",
            )
        } else if s.part.is_some() {
            Some("it fills one part of a fused base tensor")
        } else if s.transposed {
            Some("its factors hold ΔWᵀ")
        } else if matches!(planned.shape, PairShape::Experts { .. }) && s.expert.is_none() {
            Some("a stack of experts in one pair")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(refuse(&pair.module, why));
        }
        let m = magnitudes
            .get(&s.pair)
            .ok_or_else(|| refuse(&pair.module, "no magnitude vector"))?;
        let moved = factor::apply_rows(s.rows, m, m.len(), 1, heads)
            .map_err(|e| refuse(&pair.module, &e.to_string()))?;
        if moved.len() != out {
            return Err(refuse(
                &pair.module,
                &format!(
                    "{} magnitudes for {out} rows after the row transform",
                    moved.len()
                ),
            ));
        }
        let start = s.expert.unwrap_or(0) * out;
        for (slot, v) in rows[start..start + out].iter_mut().zip(moved) {
            *slot = Some(v);
        }
    }
    Ok(Magnitude::Rows(rows))
}

/// peft's DoRA on the token embedding (`DoraEmbeddingVariant`): E' = (E + s·ΔE) · m / ‖column‖ per embedding
/// feature, the norm over the whole vocabulary — exact only when the GGUF holds every vocabulary row peft normalised
/// over, untransformed.
fn embedding(
    planned: &PlannedPair,
    vocab: usize,
    adapter: &Adapter,
    magnitudes: &Magnitudes,
) -> Result<Magnitude, String> {
    let [s] = planned.sources.as_slice() else {
        return Err("an embedding built from several pairs".into());
    };
    let pair = &adapter.pairs[s.pair];
    if pair.a.shape.get(1) != Some(&vocab) {
        return Err(format!(
            "the base keeps {vocab} of the adapter's {} vocabulary rows, and DoRA's norm runs over all of them",
            pair.a.shape.get(1).copied().unwrap_or(0)
        ));
    }
    if s.rows != RowTransform::Identity
        || s.cols != RowTransform::Identity
        || s.base_scale.is_some()
        || s.part.is_some()
        || s.transposed
    {
        return Err("its factors are transformed".into());
    }
    let m = magnitudes.get(&s.pair).ok_or("no magnitude vector")?;
    if m.len() != planned.out_features {
        return Err(format!(
            "{} magnitudes for {} embedding features",
            m.len(),
            planned.out_features
        ));
    }
    Ok(Magnitude::Columns(m.clone()))
}

/// The per-column factors m / ‖column‖ from the columns' sums of squares over the whole tensor (rounded once to f32,
/// as [`normalize_rows`]).
pub fn column_factors(magnitudes: &[f32], sums_of_squares: &[f64]) -> Vec<f32> {
    magnitudes
        .iter()
        .zip(sums_of_squares)
        .map(|(m, s2)| m / s2.sqrt() as f32)
        .collect()
}

/// Rescale a slab of merged rows (`row_len` wide, starting at global row `first_row`); None if the magnitudes do not
/// cover it.
pub fn rescale(
    merged: &mut [f32],
    row_len: usize,
    first_row: usize,
    how: Rescale<'_>,
) -> Option<()> {
    match how {
        Rescale::Rows(m) => {
            let rows = m.get(first_row..first_row + merged.len() / row_len.max(1))?;
            normalize_rows(merged, row_len, rows);
        }
        Rescale::Columns(g) => {
            if g.len() != row_len {
                return None;
            }
            for row in merged.chunks_exact_mut(row_len) {
                for (x, g) in row.iter_mut().zip(g) {
                    *x *= g;
                }
            }
        }
    }
    Some(())
}

/// Refuse a DoRA pair on a tensor another adapter also changes, naming both.
pub fn check_not_stacked(
    adapters: &[(&Path, &BTreeMap<String, super::adapters::Pair>)],
) -> Result<(), MergeError> {
    for (i, (path, pairs)) in adapters.iter().enumerate() {
        for (target, pair) in pairs.iter() {
            if pair.magnitude.is_none() {
                continue;
            }
            if let Some((other, _)) = adapters
                .iter()
                .enumerate()
                .find(|(j, (_, p))| *j != i && p.contains_key(target))
                .map(|(_, a)| a)
            {
                return Err(MergeError::DoraStacked {
                    tensor: target.clone(),
                    dora: path.to_path_buf(),
                    other: PathBuf::from(other),
                });
            }
        }
    }
    Ok(())
}

/// Rescale each row of `merged` (rows of `row_len`, W + s·ΔW) to its magnitude: row · m / ‖row‖. Rows without a
/// magnitude are left alone. The norm is summed in f64 and rounded once (peft sums in the weight's dtype: the two
/// differ by rounding only).
pub fn normalize_rows(merged: &mut [f32], row_len: usize, magnitudes: &[Option<f32>]) {
    for (row, m) in merged.chunks_exact_mut(row_len).zip(magnitudes) {
        let Some(m) = m else { continue };
        let norm = row
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt() as f32;
        let g = m / norm;
        for x in row.iter_mut() {
            *x *= g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_get_their_magnitude_and_uncovered_rows_stay() {
        let mut rows = vec![3.0f32, 4.0, 1.0, 1.0, 0.0, 2.0];
        normalize_rows(&mut rows, 2, &[Some(10.0), None, Some(1.0)]);
        assert_eq!(rows, [6.0, 8.0, 1.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn magnitude_keys_give_their_module_prefix() {
        assert_eq!(
            magnitude_prefix(
                "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
            ),
            "base_model.model.model.layers.0.self_attn.q_proj"
        );
        assert_eq!(
            magnitude_prefix(
                "base_model.model.model.layers.0.mlp.up_proj.lora_magnitude_vector.weight"
            ),
            "base_model.model.model.layers.0.mlp.up_proj"
        );
        assert_eq!(
            magnitude_prefix("model.layers.1.mlp.down_proj.m"),
            "model.layers.1.mlp.down_proj"
        );
    }
}
