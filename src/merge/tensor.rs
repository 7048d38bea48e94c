//! Merge one base tensor: W + Σ factor · ΔW (rows rescaled to DoRA's magnitudes for a DoRA pair), in slabs of
//! whole rows on all cores, quantized by ggml.
//!
//! Each slab is independent: its rows of W are read from the base file and dequantized by ggml, each adapter's
//! ΔW rows are added (one small matrix product per pair), and the result is quantized row by row — which is
//! how ggml quantizes anyway, so the bytes do not depend on the slab size or the thread count. The rounding error
//! and ‖ΔW‖² are summed per slab and then over slabs in order, so the measured loss (and so the chosen type) is the
//! same at any thread count too.

use std::fs::File;

use rayon::prelude::*;

use super::adapters::{Layout, Pair};
use super::dora::{self, Magnitude, Rescale};
use super::error::MergeError;
use super::gemm::{self, View};
use super::ggml;
use super::outtype::{self, OutType};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::read_at::read_at;

/// Values of W per slab (4 MiB of f32): enough rows to keep the matrix products efficient, few enough that a slab's
/// buffers stay in the cache and every core gets work on small tensors.
const SLAB_VALUES: usize = 1 << 20;

/// What became of one merged tensor.
#[derive(Clone, Debug)]
pub struct Merged {
    /// The type written.
    pub ggml_type: GgmlType,
    /// Its data.
    pub bytes: Vec<u8>,
    /// The measurements of the written type.
    pub sums: Sums,
    /// Every type measured on the whole tensor, in order, with its measurements (the last is the one written);
    /// types rejected on the row sample that screens candidates are not listed.
    pub tried: Vec<(GgmlType, Sums)>,
    /// ‖ΔW‖ (Frobenius) of the tensor, all adapters summed.
    pub delta_norm: f64,
}

/// A range of whole rows of W that does not cross an expert boundary.
#[derive(Clone, Copy, Debug)]
struct Slab {
    /// First row (over all experts).
    row: usize,
    /// Rows.
    rows: usize,
}

fn slabs(row_len: usize, rows_per_expert: usize, experts: usize) -> Vec<Slab> {
    let per = (SLAB_VALUES / row_len.max(1)).max(1);
    let mut out = Vec::new();
    for e in 0..experts {
        let mut r = 0;
        while r < rows_per_expert {
            let n = per.min(rows_per_expert - r);
            out.push(Slab {
                row: e * rows_per_expert + r,
                rows: n,
            });
            r += n;
        }
    }
    out
}

/// Sums over a slab (then over the tensor) from which the type choice is made, with W the base's dequantized
/// weights, Δ the summed ΔW and Q the merged rows after quantization and dequantization.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sums {
    /// Σ (Q − W)·Δ: the part of the stored change along ΔW.
    pub kept: f64,
    /// Σ Δ².
    pub delta2: f64,
    /// Σ (Q − (W + Δ))²: all rounding error.
    pub err2: f64,
    /// Σ W².
    pub w2: f64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.kept += o.kept;
        self.delta2 += o.delta2;
        self.err2 += o.err2;
        self.w2 += o.w2;
    }

    /// The fraction of ΔW lost: 1 − ⟨Q − W, Δ⟩ / ‖Δ‖² (0 when the stored change equals ΔW on average; 1 when
    /// rounding snaps the tensor back to the base). 0 for a zero ΔW.
    pub fn loss(&self) -> f64 {
        if self.delta2 == 0.0 {
            0.0
        } else {
            1.0 - self.kept / self.delta2
        }
    }

    /// All rounding error relative to the base weights: ‖Q − (W + Δ)‖ / ‖W‖.
    pub fn noise(&self) -> f64 {
        if self.w2 == 0.0 {
            if self.err2 == 0.0 { 0.0 } else { f64::INFINITY }
        } else {
            (self.err2 / self.w2).sqrt()
        }
    }
}

/// Rows screened per group, and the group stride: 1/32 of the rows, spread over the whole tensor.
const SAMPLE_ROWS: usize = 8;
const SAMPLE_EVERY: usize = 256;

/// The rows the candidate types are screened on; none when the tensor is too small to be worth sampling.
fn sample_slabs(rows_per_expert: usize, experts: usize) -> Vec<Slab> {
    if rows_per_expert * experts < 2 * SAMPLE_EVERY {
        return Vec::new();
    }
    let mut out = Vec::new();
    for e in 0..experts {
        for r in (0..rows_per_expert).step_by(SAMPLE_EVERY) {
            out.push(Slab {
                row: e * rows_per_expert + r,
                rows: SAMPLE_ROWS.min(rows_per_expert - r),
            });
        }
    }
    out
}

/// Per-slab result: quantized bytes and the sums.
type SlabOut = (Vec<u8>, Sums);

/// Merge `pairs` into W, tensor `info` of `base` (opened as `file`), choosing the type by `outtype`, where "the
/// base's type" is `base_type`: W's own type, or with `--source` the type the quantized base has for the tensor
/// (W is then the source's float weights, quantized once).
#[allow(clippy::too_many_arguments)] // one call site; W's file, handle and entry, and the choice of type
pub fn merge_tensor(
    base: &GgufFile,
    file: &File,
    info: &TensorInfo,
    base_type: GgmlType,
    pairs: &[&Pair],
    outtype: OutType,
    imatrix: Option<&[f32]>,
) -> Result<Merged, MergeError> {
    let row_len = info.dims.first().copied().unwrap_or(1) as usize;
    let rows_per_expert = info.dims.get(1).copied().unwrap_or(1) as usize;
    let experts = info.dims.get(2).copied().unwrap_or(1) as usize;
    let slabs = slabs(row_len, rows_per_expert, experts);
    let (data_start, _) = base.tensor_range(&info.name)?;
    let src_row_bytes =
        ggml::row_bytes(info.ggml_type, row_len).ok_or_else(|| MergeError::Quant {
            tensor: info.name.clone(),
            source: ggml::QuantError::Shape {
                ggml_type: info.ggml_type,
                values: row_len,
                row_len,
                bytes: 0,
                block: info.ggml_type.block_size(),
            },
        })?;
    let types = match outtype {
        OutType::Auto { .. } => outtype::candidates(base_type, row_len as u64),
        OutType::Keep => vec![base_type],
        OutType::Fixed(t) => {
            if !(row_len as u64).is_multiple_of(t.block_size()) {
                return Err(MergeError::TypeDoesNotFit {
                    tensor: info.name.clone(),
                    ggml_type: t,
                    row_len: row_len as u64,
                });
            }
            vec![t]
        }
    };
    let budget = match outtype {
        OutType::Auto { budget } => Some(budget),
        _ => None,
    };
    let src = SlabSource {
        path: &base.path,
        file,
        data_start,
        src_row_bytes,
        info,
        rows_per_expert,
        pairs,
    };
    // DoRA: row magnitudes apply slab by slab; an embedding's column norms need every row first
    let column_factors = match pairs.iter().find_map(|p| p.magnitude.as_ref()) {
        Some(Magnitude::Columns(m)) => Some(dora::column_factors(m, &column_sums(src, &slabs)?)),
        _ => None,
    };
    let rescale = match pairs.iter().find_map(|p| p.magnitude.as_ref()) {
        Some(Magnitude::Rows(m)) => Some(Rescale::Rows(m)),
        Some(Magnitude::Columns(_)) => column_factors.as_deref().map(Rescale::Columns),
        None => None,
    };
    let run = |slabs: &[Slab], ty: GgmlType| -> Result<(Vec<u8>, Sums), MergeError> {
        let results: Vec<Result<SlabOut, MergeError>> = slabs
            .par_iter()
            .map(|slab| merge_slab(src, *slab, rescale, ty, imatrix))
            .collect();
        let mut bytes = Vec::new();
        let mut sums = Sums::default();
        for r in results {
            let (b, s) = r?;
            bytes.extend_from_slice(&b);
            sums.add(&s);
        }
        Ok((bytes, sums))
    };
    let accepts = |ty: GgmlType, sums: &Sums| {
        budget.is_none_or(|b| outtype::accepts(ty == base_type, sums, b))
    };
    let mut tried = Vec::new();
    // Screen the candidates on a sample of rows, so that only the chosen type quantizes the whole tensor.
    let mut first = 0;
    let sample = sample_slabs(rows_per_expert, experts);
    if types.len() > 1 && !sample.is_empty() {
        first = types.len() - 1;
        for (i, &ty) in types.iter().enumerate() {
            let (_, sums) = run(&sample, ty)?;
            if sums.delta2 > 0.0 && accepts(ty, &sums) {
                first = i;
                break;
            }
            if sums.delta2 == 0.0 {
                // ΔW is zero on the sample (an embedding LoRA touches few rows): measure on the whole tensor
                first = 0;
                break;
            }
        }
    }
    for (i, &ty) in types.iter().enumerate().skip(first) {
        let (bytes, sums) = run(&slabs, ty)?;
        tried.push((ty, sums));
        let last = i + 1 == types.len();
        if accepts(ty, &sums) || last || sums.delta2 == 0.0 {
            return Ok(Merged {
                ggml_type: ty,
                bytes,
                sums,
                tried,
                delta_norm: sums.delta2.sqrt(),
            });
        }
    }
    // `types` is never empty; this is not reached.
    Err(MergeError::NothingToMerge)
}

/// Where a tensor's slabs come from: W in the file, and the pairs that change it.
#[derive(Clone, Copy)]
struct SlabSource<'a> {
    path: &'a std::path::Path,
    file: &'a File,
    data_start: u64,
    src_row_bytes: usize,
    info: &'a TensorInfo,
    rows_per_expert: usize,
    pairs: &'a [&'a Pair],
}

/// Per-column sums of squares of W + ΔW over the whole tensor (summed per slab, then over slabs in order: the same
/// at any thread count), for DoRA on an embedding.
fn column_sums(src: SlabSource<'_>, slabs: &[Slab]) -> Result<Vec<f64>, MergeError> {
    let row_len = src.info.dims.first().copied().unwrap_or(1) as usize;
    let partial: Vec<Result<Vec<f64>, MergeError>> = slabs
        .par_iter()
        .map(|slab| {
            let (w, delta) = slab_weights(src, *slab)?;
            let mut sums = vec![0f64; row_len];
            for (rw, rd) in w.chunks_exact(row_len).zip(delta.chunks_exact(row_len)) {
                for ((s, w), d) in sums.iter_mut().zip(rw).zip(rd) {
                    let x = f64::from(*w + *d);
                    *s += x * x;
                }
            }
            Ok(sums)
        })
        .collect();
    let mut total = vec![0f64; row_len];
    for p in partial {
        for (t, s) in total.iter_mut().zip(p?) {
            *t += s;
        }
    }
    Ok(total)
}

/// A slab's W (dequantized) and the sum of its pairs' ΔW, both row-major.
fn slab_weights(src: SlabSource<'_>, slab: Slab) -> Result<(Vec<f32>, Vec<f32>), MergeError> {
    let SlabSource {
        path,
        file,
        data_start,
        src_row_bytes,
        info,
        rows_per_expert,
        pairs,
    } = src;
    let row_len = info.dims.first().copied().unwrap_or(1) as usize;
    let n = slab.rows * row_len;
    let mut raw = vec![0u8; slab.rows * src_row_bytes];
    read_at(
        file,
        &mut raw,
        data_start + (slab.row * src_row_bytes) as u64,
    )
    .map_err(|source| crate::gguf::Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let quant = |source| MergeError::Quant {
        tensor: info.name.clone(),
        source,
    };
    let mut w = vec![0f32; n];
    ggml::dequantize(info.ggml_type, &raw, &mut w).map_err(quant)?;
    let mut delta = vec![0f32; n];
    let expert = slab.row / rows_per_expert;
    let first = slab.row % rows_per_expert;
    for p in pairs {
        let ok = match p.layout {
            Layout::Linear | Layout::Experts => {
                let r = p.rank;
                let a = p.a.get(expert * r * row_len..).unwrap_or(&[]);
                let b =
                    p.b.get(expert * rows_per_expert * r + first * r..)
                        .unwrap_or(&[]);
                gemm::add_product(
                    &mut delta,
                    p.factor,
                    View::rows(b, slab.rows, r),
                    View::rows(a, r, row_len),
                )
            }
            Layout::Embedding => {
                let r = p.rank;
                let a = p.a.get(first * r..).unwrap_or(&[]);
                gemm::add_product(
                    &mut delta,
                    p.factor,
                    View::rows(a, slab.rows, r),
                    View::transposed(&p.b, r, row_len),
                )
            }
        };
        if !ok {
            return Err(MergeError::Quant {
                tensor: info.name.clone(),
                source: ggml::QuantError::Shape {
                    ggml_type: GgmlType::F32,
                    values: p.a.len() + p.b.len(),
                    row_len,
                    bytes: 0,
                    block: 1,
                },
            });
        }
    }
    Ok((w, delta))
}

fn merge_slab(
    src: SlabSource<'_>,
    slab: Slab,
    dora: Option<Rescale<'_>>,
    ty: GgmlType,
    imatrix: Option<&[f32]>,
) -> Result<SlabOut, MergeError> {
    let info = src.info;
    let row_len = info.dims.first().copied().unwrap_or(1) as usize;
    let n = slab.rows * row_len;
    let quant = |source| MergeError::Quant {
        tensor: info.name.clone(),
        source,
    };
    let expert = slab.row / src.rows_per_expert;
    let (w, mut delta) = slab_weights(src, slab)?;
    let mut merged: Vec<f32> = w.iter().zip(&delta).map(|(w, d)| *w + *d).collect();
    // DoRA (the only pair on its tensor, `dora::check_not_stacked`): rows or columns rescaled to their magnitudes;
    // the change measured for the type choice is then the whole change
    if let Some(how) = dora {
        super::dora::rescale(&mut merged, row_len, slab.row, how).ok_or_else(|| {
            quant(ggml::QuantError::Shape {
                ggml_type: GgmlType::F32,
                values: n,
                row_len,
                bytes: 0,
                block: 1,
            })
        })?;
        for ((d, m), w) in delta.iter_mut().zip(&merged).zip(&w) {
            *d = *m - *w;
        }
    }
    let mut sums = Sums::default();
    for (w, d) in w.iter().zip(&delta) {
        sums.delta2 += f64::from(*d) * f64::from(*d);
        sums.w2 += f64::from(*w) * f64::from(*w);
    }
    if let Some(i) = merged.iter().position(|x| !x.is_finite()) {
        return Err(MergeError::NonFinite {
            tensor: info.name.clone(),
            row: slab.row + i / row_len,
        });
    }
    let out_row = ggml::row_bytes(ty, row_len).unwrap_or(0);
    let mut out = vec![0u8; slab.rows * out_row];
    let im = imatrix.and_then(|m| m.get(expert * row_len..(expert + 1) * row_len));
    ggml::quantize_rows(ty, &merged, row_len, im, &mut out).map_err(quant)?;
    if ty == GgmlType::F32 {
        sums.kept = sums.delta2;
    } else {
        let mut q = vec![0f32; n];
        ggml::dequantize(ty, &out, &mut q).map_err(quant)?;
        for (((q, m), w), d) in q.iter().zip(&merged).zip(&w).zip(&delta) {
            let (q, m, w, d) = (f64::from(*q), f64::from(*m), f64::from(*w), f64::from(*d));
            sums.err2 += (q - m) * (q - m);
            sums.kept += (q - w) * d;
        }
    }
    Ok((out, sums))
}
