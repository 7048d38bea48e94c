//! The LoRA factor algebra: llama.cpp's converter transforms the base weight W; we apply the same transform to the
//! factors of ΔW = B·A without ever forming ΔW. Row operations on W (output dimension) are row operations on B;
//! the embedding's GGUF layout stores Aᵀ. All matrices here are row-major `f32` with an explicit column count.

use crate::arch::{DeltaNetPart, Heads, QkvPart, RowTransform};

/// Head counts the row transforms need, resolved from the base model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadCounts {
    /// Query heads (`num_attention_heads`).
    pub n_head: u32,
    /// Key/value heads (`num_key_value_heads`); equal to `n_head` without GQA.
    pub n_head_kv: u32,
    /// The linear-attention (Gated DeltaNet) heads of a hybrid model, when it has them.
    pub delta_net: Option<DeltaNetHeads>,
}

/// A Gated DeltaNet layer's heads (Qwen3.5: `linear_num_key_heads` … ; GGUF `ssm.group_count`,
/// `ssm.time_step_rank`, `ssm.state_size`, `ssm.inner_size` / value heads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaNetHeads {
    /// Key heads (`linear_num_key_heads`).
    pub k_heads: u32,
    /// Value heads (`linear_num_value_heads`), a multiple of the key heads.
    pub v_heads: u32,
    /// Key head dimension (`linear_key_head_dim`).
    pub k_head_dim: u32,
    /// Value head dimension (`linear_value_head_dim`).
    pub v_head_dim: u32,
}

impl HeadCounts {
    /// Head counts without linear-attention heads.
    pub fn new(n_head: u32, n_head_kv: u32) -> Self {
        HeadCounts {
            n_head,
            n_head_kv,
            delta_net: None,
        }
    }
}

/// Why a row transform could not be applied: the module's output size does not fit the head layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{transform}: {rows} output rows do not split into {what}")]
pub struct RowsMismatch {
    /// The transform that failed (for the message).
    pub transform: &'static str,
    /// The number of rows of the factor.
    pub rows: usize,
    /// What the rows were expected to split into.
    pub what: String,
}

/// Number of output rows the transform produces from `rows` input rows (fused splits keep a part).
pub fn output_rows(t: RowTransform, rows: usize, heads: HeadCounts) -> Result<usize, RowsMismatch> {
    Ok(row_sources(t, rows, heads)?.len())
}

/// Apply a row transform to a row-major matrix of `rows × cols` (B: cols = rank; a full ΔW: cols = in_features).
pub fn apply_rows(
    t: RowTransform,
    m: &[f32],
    rows: usize,
    cols: usize,
    heads: HeadCounts,
) -> Result<Vec<f32>, RowsMismatch> {
    debug_assert_eq!(m.len(), rows * cols);
    let sources = row_sources(t, rows, heads)?;
    let mut out = Vec::with_capacity(sources.len() * cols);
    for src in sources {
        out.extend_from_slice(&m[src * cols..(src + 1) * cols]);
    }
    Ok(out)
}

/// Apply a transform to the columns of a row-major `rows × cols` matrix (A, whose columns are W's input features).
pub fn apply_cols(
    t: RowTransform,
    m: &[f32],
    rows: usize,
    cols: usize,
    heads: HeadCounts,
) -> Result<Vec<f32>, RowsMismatch> {
    debug_assert_eq!(m.len(), rows * cols);
    let sources = row_sources(t, cols, heads)?;
    let mut out = Vec::with_capacity(rows * sources.len());
    for r in 0..rows {
        let row = &m[r * cols..(r + 1) * cols];
        out.extend(sources.iter().map(|&c| row[c]));
    }
    Ok(out)
}

/// For every output row, the input row it comes from. Every transform llama.cpp applies to LoRA-able weights is a
/// row gather, so one index table describes it; `apply_rows` and the verifier share it.
pub fn row_sources(
    t: RowTransform,
    rows: usize,
    heads: HeadCounts,
) -> Result<Vec<usize>, RowsMismatch> {
    let n_head = heads.n_head as usize;
    let n_kv = heads.n_head_kv as usize;
    match t {
        RowTransform::Identity => Ok((0..rows).collect()),
        RowTransform::LlamaRope(which) => {
            let n = match which {
                Heads::Query => n_head,
                Heads::KeyValue => n_kv,
            };
            llama_rope_sources(rows, n)
        }
        RowTransform::NeoxQkv => {
            // [h][part][d] → [part][h][d]   (conversion/gptneox.py: reshape(nh, 3, hd) then cat parts)
            let mismatch = || RowsMismatch {
                transform: "GPT-NeoX query_key_value reorder",
                rows,
                what: format!("3 × {n_head} heads"),
            };
            if n_head == 0 || !rows.is_multiple_of(3 * n_head) {
                return Err(mismatch());
            }
            let hd = rows / (3 * n_head);
            let mut s = Vec::with_capacity(rows);
            for part in 0..3 {
                for h in 0..n_head {
                    for d in 0..hd {
                        s.push(h * 3 * hd + part * hd + d);
                    }
                }
            }
            Ok(s)
        }
        RowTransform::FalconQkv => {
            // view(n_kv, q_per_kv + 2, hd): q = [:, :-2], k = [:, -2], v = [:, -1], concatenated.
            let g = grouped_qkv(rows, n_head, n_kv, "Falcon query_key_value regroup")?;
            let mut s = g.part_rows(QkvPart::Q);
            s.extend(g.part_rows(QkvPart::K));
            s.extend(g.part_rows(QkvPart::V));
            Ok(s)
        }
        RowTransform::InternLm2Qkv { part, rope } => {
            let g = grouped_qkv(rows, n_head, n_kv, "InternLM2 wqkv split")?;
            let picked = g.part_rows(part);
            if !rope {
                return Ok(picked);
            }
            let n = if part == QkvPart::Q { n_head } else { n_kv };
            let perm = llama_rope_sources(picked.len(), n)?;
            Ok(perm.into_iter().map(|i| picked[i]).collect())
        }
        RowTransform::Chunk { index, count } => {
            let (index, count) = (index as usize, count as usize);
            if count == 0 || !rows.is_multiple_of(count) || index >= count {
                return Err(RowsMismatch {
                    transform: "fused projection split",
                    rows,
                    what: format!("{count} equal blocks"),
                });
            }
            let len = rows / count;
            Ok((index * len..(index + 1) * len).collect())
        }
        RowTransform::Interleaved { index, count } => {
            let (index, count) = (index as usize, count as usize);
            if count == 0 || !rows.is_multiple_of(count) || index >= count {
                return Err(RowsMismatch {
                    transform: "interleaved projection split",
                    rows,
                    what: format!("{count} interleaved parts"),
                });
            }
            Ok((index..rows).step_by(count).collect())
        }
        RowTransform::Deinterleaved { count } => {
            let count = count as usize;
            if count == 0 || !rows.is_multiple_of(count) {
                return Err(RowsMismatch {
                    transform: "interleaved projection regroup",
                    rows,
                    what: format!("{count} interleaved parts"),
                });
            }
            Ok((0..count).flat_map(|i| (i..rows).step_by(count)).collect())
        }
        RowTransform::DeltaNetValueHeads(part) => delta_net_sources(part, rows, heads.delta_net),
    }
}

/// `_reorder_v_heads`: arange(n).reshape(k_heads, v_per_k, head_dim).permute(1, 0, 2): output block (j, i) is the
/// input's value head j of key head i.
fn delta_net_sources(
    part: DeltaNetPart,
    rows: usize,
    heads: Option<DeltaNetHeads>,
) -> Result<Vec<usize>, RowsMismatch> {
    let transform = "linear-attention value-head reorder";
    let Some(h) = heads else {
        return Err(RowsMismatch {
            transform,
            rows,
            what: "linear-attention heads (the base gives none)".into(),
        });
    };
    let (k, v) = (h.k_heads as usize, h.v_heads as usize);
    let (kd, vd) = (h.k_head_dim as usize, h.v_head_dim as usize);
    let (kept, head_dim) = match part {
        DeltaNetPart::Qkv => (2 * k * kd, vd),
        DeltaNetPart::ValueHeads => (0, vd),
        DeltaNetPart::PerHead => (0, 1),
    };
    if k == 0 || !v.is_multiple_of(k) || rows != kept + v * head_dim {
        return Err(RowsMismatch {
            transform,
            rows,
            what: format!(
                "{}{v} value heads of {head_dim} grouped by {k} key heads",
                if kept > 0 {
                    format!("{kept} query/key rows + ")
                } else {
                    String::new()
                }
            ),
        });
    }
    let per_k = v / k;
    let mut s: Vec<usize> = (0..kept).collect();
    for j in 0..per_k {
        for i in 0..k {
            let start = kept + (i * per_k + j) * head_dim;
            s.extend(start..start + head_dim);
        }
    }
    Ok(s)
}

/// `LlamaModel.permute`: reshape(n, 2, hd/2) → swapaxes(1, 2): out row h·hd + 2i + j ← in row h·hd + j·hd/2 + i.
fn llama_rope_sources(rows: usize, n: usize) -> Result<Vec<usize>, RowsMismatch> {
    if n == 0 || !rows.is_multiple_of(2 * n) {
        return Err(RowsMismatch {
            transform: "rotary q/k permutation",
            rows,
            what: format!("{n} heads of even size"),
        });
    }
    let hd = rows / n;
    let half = hd / 2;
    let mut s = Vec::with_capacity(rows);
    for h in 0..n {
        for i in 0..half {
            for j in 0..2 {
                s.push(h * hd + j * half + i);
            }
        }
    }
    Ok(s)
}

/// A fused qkv laid out as `n_kv` groups of (q_per_kv query heads, one key head, one value head).
struct GroupedQkv {
    groups: usize,
    q_per_kv: usize,
    hd: usize,
}

fn grouped_qkv(
    rows: usize,
    n_head: usize,
    n_kv: usize,
    transform: &'static str,
) -> Result<GroupedQkv, RowsMismatch> {
    let bad = || RowsMismatch {
        transform,
        rows,
        what: format!("{n_kv} groups of ({n_head}/{n_kv} query heads + key + value)"),
    };
    if n_kv == 0 || !n_head.is_multiple_of(n_kv) {
        return Err(bad());
    }
    let q_per_kv = n_head / n_kv;
    let per_group_heads = q_per_kv + 2;
    if !rows.is_multiple_of(n_kv * per_group_heads) {
        return Err(bad());
    }
    let hd = rows / (n_kv * per_group_heads);
    Ok(GroupedQkv {
        groups: n_kv,
        q_per_kv,
        hd,
    })
}

impl GroupedQkv {
    fn part_rows(&self, part: QkvPart) -> Vec<usize> {
        let stride = (self.q_per_kv + 2) * self.hd;
        let (first_head, heads) = match part {
            QkvPart::Q => (0, self.q_per_kv),
            QkvPart::K => (self.q_per_kv, 1),
            QkvPart::V => (self.q_per_kv + 1, 1),
        };
        let mut s = Vec::with_capacity(self.groups * heads * self.hd);
        for g in 0..self.groups {
            let start = g * stride + first_head * self.hd;
            s.extend(start..start + heads * self.hd);
        }
        s
    }
}

/// Transpose a row-major `rows × cols` matrix.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    debug_assert_eq!(m.len(), rows * cols);
    let mut out = vec![0.0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

/// Keep the first `keep` columns of a row-major `rows × cols` matrix (Gemma 3 embedding A: drop padded vocab).
pub fn keep_columns(m: &[f32], rows: usize, cols: usize, keep: usize) -> Vec<f32> {
    debug_assert!(keep <= cols);
    let mut out = Vec::with_capacity(rows * keep);
    for r in 0..rows {
        out.extend_from_slice(&m[r * cols..r * cols + keep]);
    }
    out
}

/// Multiply in place (an f32 multiply per element, as torch does for a Python-float scalar on an f32 tensor).
pub fn scale_in_place(m: &mut [f32], factor: f32) {
    if factor != 1.0 {
        for x in m {
            *x *= factor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: HeadCounts = HeadCounts {
        n_head: 4,
        n_head_kv: 2,
        delta_net: None,
    };

    /// numpy reference: w.reshape(n, 2, rows//n//2).swapaxes(1, 2).reshape(rows) on arange(rows)
    #[test]
    fn llama_rope_matches_numpy_reference() {
        // n = 2 heads of 8 rows: numpy gives [0,4,1,5,2,6,3,7, 8,12,9,13,10,14,11,15]
        let s = row_sources(RowTransform::LlamaRope(Heads::KeyValue), 16, H).unwrap();
        assert_eq!(
            s,
            vec![0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
        );
    }

    #[test]
    fn llama_rope_rejects_rows_not_divisible_by_heads() {
        let err = row_sources(RowTransform::LlamaRope(Heads::Query), 12, H).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rotary q/k permutation: 12 output rows do not split into 4 heads of even size"
        );
    }

    /// numpy: qkv = arange(3*nh*hd).reshape(nh, 3, hd); cat(qkv[:,0], qkv[:,1], qkv[:,2]) with nh=2, hd=2
    #[test]
    fn neox_qkv_matches_numpy_reference() {
        let h = HeadCounts::new(2, 2);
        let s = row_sources(RowTransform::NeoxQkv, 12, h).unwrap();
        assert_eq!(s, vec![0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]);
    }

    /// numpy: view(n_kv=2, 4/2+2=4, hd=1): q = [:, :2] → 0,1,4,5; k = [:, 2] → 2,6; v = [:, 3] → 3,7
    #[test]
    fn falcon_qkv_groups_queries_then_keys_then_values() {
        let s = row_sources(RowTransform::FalconQkv, 8, H).unwrap();
        assert_eq!(s, vec![0, 1, 4, 5, 2, 6, 3, 7]);
    }

    #[test]
    fn internlm2_split_takes_a_part_then_permutes() {
        // groups of (2 q heads, k, v) with hd = 2: rows per group 8.
        let v = RowTransform::InternLm2Qkv {
            part: QkvPart::V,
            rope: false,
        };
        assert_eq!(row_sources(v, 16, H).unwrap(), vec![6, 7, 14, 15]);
        let k = RowTransform::InternLm2Qkv {
            part: QkvPart::K,
            rope: true,
        };
        // k rows [4,5,12,13]; permutation with 2 heads of hd 2 is the identity (hd/2 = 1)
        assert_eq!(row_sources(k, 16, H).unwrap(), vec![4, 5, 12, 13]);
        let q = RowTransform::InternLm2Qkv {
            part: QkvPart::Q,
            rope: false,
        };
        assert_eq!(
            row_sources(q, 16, H).unwrap(),
            vec![0, 1, 2, 3, 8, 9, 10, 11]
        );
    }

    #[test]
    fn chunk_selects_equal_blocks() {
        let t = RowTransform::Chunk { index: 1, count: 2 };
        assert_eq!(row_sources(t, 6, H).unwrap(), vec![3, 4, 5]);
        assert!(row_sources(RowTransform::Chunk { index: 0, count: 4 }, 6, H).is_err());
    }

    /// numpy: arange(8).reshape(2, 2, 2).transpose(1, 0, 2).reshape(8) (2 key heads, 4 value heads of 2)
    #[test]
    fn delta_net_value_heads_match_the_converters_reorder() {
        let h = HeadCounts {
            delta_net: Some(DeltaNetHeads {
                k_heads: 2,
                v_heads: 4,
                k_head_dim: 1,
                v_head_dim: 2,
            }),
            ..H
        };
        let v = RowTransform::DeltaNetValueHeads(DeltaNetPart::ValueHeads);
        assert_eq!(row_sources(v, 8, h).unwrap(), vec![0, 1, 4, 5, 2, 3, 6, 7]);
        // qkv: q (2 rows) and k (2 rows) kept, then the 8 value rows as above
        let qkv = RowTransform::DeltaNetValueHeads(DeltaNetPart::Qkv);
        assert_eq!(
            row_sources(qkv, 12, h).unwrap(),
            vec![0, 1, 2, 3, 4, 5, 8, 9, 6, 7, 10, 11]
        );
        let per_head = RowTransform::DeltaNetValueHeads(DeltaNetPart::PerHead);
        assert_eq!(row_sources(per_head, 4, h).unwrap(), vec![0, 2, 1, 3]);
        assert!(row_sources(per_head, 5, h).is_err());
        assert!(row_sources(per_head, 4, H).is_err());
        // the same gather on A's columns
        let a: Vec<f32> = (0..8).map(|x| x as f32).collect();
        assert_eq!(
            apply_cols(v, &a, 1, 8, h).unwrap(),
            vec![0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]
        );
    }

    #[test]
    fn interleaved_rows_split_and_regroup() {
        let gate = RowTransform::Interleaved { index: 0, count: 2 };
        let up = RowTransform::Interleaved { index: 1, count: 2 };
        assert_eq!(row_sources(gate, 6, H).unwrap(), vec![0, 2, 4]);
        assert_eq!(row_sources(up, 6, H).unwrap(), vec![1, 3, 5]);
        let both = RowTransform::Deinterleaved { count: 2 };
        assert_eq!(row_sources(both, 6, H).unwrap(), vec![0, 2, 4, 1, 3, 5]);
        assert!(row_sources(gate, 5, H).is_err());
    }

    #[test]
    fn apply_rows_moves_whole_rows() {
        let m: Vec<f32> = (0..16 * 2).map(|x| x as f32).collect();
        let out = apply_rows(RowTransform::LlamaRope(Heads::KeyValue), &m, 16, 2, H).unwrap();
        assert_eq!(&out[0..4], &[0.0, 1.0, 8.0, 9.0]);
    }

    #[test]
    fn transpose_and_keep_columns() {
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 × 3
        assert_eq!(transpose(&m, 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(keep_columns(&m, 2, 3, 2), vec![1.0, 2.0, 4.0, 5.0]);
    }
}
