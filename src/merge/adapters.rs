//! The adapters to merge, as llama.cpp would apply them: for every adapted base tensor, each adapter's factors in
//! f32 (ggml memory order, exactly the GGUF tensors' values) and its runtime factor `scale · α / rank`.
//!
//! Adapters are small next to a model (an r = 64 all-linear adapter of an 8B model is ~0.7 GB in f32, of a 1B one
//! ~0.1 GB), so their factors are held in memory for the whole merge; the model is streamed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::MergeError;
use super::ggml;
use crate::gguf::{GgmlType, GgufFile};
use crate::inspect::fit;

/// How a pair's factors are laid out against its base tensor (ggml `ne`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// W ne [in, out]; A ne [in, r]; B ne [r, out]: ΔW = B·A (rows of W are outputs).
    Linear,
    /// `token_embd`: W ne [n_embd, n_vocab]; A ne [r, n_vocab] (Aᵀ, a row per token); B ne [r, n_embd]:
    /// ΔW row v = Σₖ A[v][k] · B[·][k].
    Embedding,
    /// Stacked experts: W ne [in, out, E]; A ne [in, r, E]; B ne [r, out, E]: a Linear pair per expert.
    Experts,
}

/// One LoRA pair of one adapter, ready to merge.
#[derive(Clone, Debug)]
pub struct Pair {
    /// The base tensor it changes.
    pub target: String,
    /// `lora_a` values in ggml order.
    pub a: Vec<f32>,
    /// `lora_b` values in ggml order.
    pub b: Vec<f32>,
    /// Rank (`lora_b` ne[0]).
    pub rank: usize,
    /// ΔW multiplier: the adapter's scale × α / rank, computed in f32 as llama.cpp does (just the scale when α is
    /// 0 or absent).
    pub factor: f32,
    /// The layout.
    pub layout: Layout,
}

/// One adapter: where it came from, its scale, its pairs by target.
#[derive(Clone, Debug)]
pub struct Adapter {
    /// The file or directory as given.
    pub path: PathBuf,
    /// The user's scale (`ADAPTER:SCALE`).
    pub scale: f32,
    /// `adapter.lora.alpha` (0 when absent).
    pub alpha: f32,
    /// Pairs by target name.
    pub pairs: BTreeMap<String, Pair>,
}

/// llama.cpp's runtime factor (`llama_adapter_lora_weight::get_scale`): `alpha ? scale * alpha / rank : scale`,
/// in f32, left to right.
pub fn runtime_factor(scale: f32, alpha: f32, rank: usize) -> f32 {
    if alpha == 0.0 {
        scale
    } else {
        scale * alpha / rank as f32
    }
}

/// The layout of a pair on base tensor `target` with `dims`.
pub fn layout_of(target: &str, dims: &[u64]) -> Layout {
    if target == "token_embd.weight" {
        Layout::Embedding
    } else if dims.len() == 3 {
        Layout::Experts
    } else {
        Layout::Linear
    }
}

/// Read a GGUF LoRA adapter after checking it against the base with the fit check `lora-validate` runs.
pub fn load_gguf(path: &Path, scale: f32, base: &GgufFile) -> Result<Adapter, MergeError> {
    let file = GgufFile::open(path)?;
    let fit = fit::check_adapter(base, &file).map_err(|mismatches| MergeError::DoesNotFit {
        adapter: path.to_path_buf(),
        base: base.path.clone(),
        mismatches: mismatches.into_iter().map(|m| m.to_string()).collect(),
    })?;
    let mut pairs = BTreeMap::new();
    for t in &file.tensors {
        let Some(target) = t.name.strip_suffix(".lora_a") else {
            continue;
        };
        let b_name = format!("{target}.lora_b");
        let a = read_f32(&file, &t.name, t.ggml_type)?;
        let b_info = file
            .tensor(&b_name)
            .ok_or_else(|| crate::gguf::Error::TensorNotFound {
                path: path.to_path_buf(),
                tensor: b_name.clone(),
            })?;
        let b = read_f32(&file, &b_name, b_info.ggml_type)?;
        let rank = b_info.dims.first().copied().unwrap_or(0) as usize;
        let dims = base
            .tensor(target)
            .map(|w| w.dims.clone())
            .unwrap_or_default();
        pairs.insert(
            target.to_string(),
            Pair {
                target: target.to_string(),
                a,
                b,
                rank,
                factor: runtime_factor(scale, fit.alpha, rank),
                layout: layout_of(target, &dims),
            },
        );
    }
    Ok(Adapter {
        path: path.to_path_buf(),
        scale,
        alpha: fit.alpha,
        pairs,
    })
}

/// A tensor of the adapter in f32, through ggml's own dequantizer (any type llama.cpp could load).
fn read_f32(file: &GgufFile, name: &str, ty: GgmlType) -> Result<Vec<f32>, MergeError> {
    let bytes = file.read_tensor_bytes(name)?;
    let n = file.tensor(name).map_or(0, |t| t.n_elements()) as usize;
    let mut out = vec![0f32; n];
    ggml::dequantize(ty, &bytes, &mut out).map_err(|source| MergeError::Quant {
        tensor: format!("{} in `{}`", name, file.path.display()),
        source,
    })?;
    Ok(out)
}
