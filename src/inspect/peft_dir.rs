//! Inspecting an adapter directory (PEFT or mlx-lm): the converter's own analysis (`convert::prepare`), shown
//! module by module.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Request, SCHEMA};
use crate::adapter::{Packing, PairKind};
use crate::convert::manifest::{
    self, AdapterSection, BaseSection, PairEntry, Refusal, TensorEntry,
};
use crate::convert::{self, ConvertError, OutType};

/// The report on an adapter directory (PEFT or mlx-lm).
#[derive(Debug, Serialize)]
pub struct PeftReport {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// `adapter_dir`.
    pub kind: &'static str,
    /// The directory as given.
    pub path: String,
    /// The adapter: framework, trainer hints, configuration, weights size.
    pub adapter: AdapterSection,
    /// The base it was checked against, when one was given or found.
    pub base: Option<BaseSection>,
    /// The GGUF architecture (family), when the base resolves to one we convert.
    pub family: Option<&'static str>,
    /// How far lora-convert's support for that family goes (verified / mapped / refused, per feature, with the
    /// fixtures that prove it), as the README's support table says.
    pub support: Option<crate::arch::support::Support>,
    /// `adapter.lora.alpha` conversion would write.
    pub gguf_alpha: Option<f64>,
    /// Factor dtypes → number of tensors.
    pub dtypes: BTreeMap<String, usize>,
    /// Bytes of all LoRA factors in the source, and of the GGUF conversion would write at `--outtype auto`.
    pub size: Size,
    /// Every LoRA module.
    pub modules: Vec<Module>,
    /// Every output pair conversion would write.
    pub pairs: Vec<PairEntry>,
    /// Every tensor of the weights file with its fate.
    pub tensors: Vec<TensorEntry>,
    /// Everything conversion would refuse — all of it, not just the first.
    pub refusals: Vec<Refusal>,
    /// Planning warnings.
    pub warnings: Vec<String>,
    /// Whether `lora-convert` would write this adapter (with the base given or found).
    pub convertible: bool,
    /// With `--base` / `--base-config`: whether it fits that base (same as `convertible`); otherwise null.
    pub fits: Option<bool>,
}

/// Sizes.
#[derive(Debug, Serialize)]
pub struct Size {
    /// The safetensors file.
    pub weights_bytes: u64,
    /// The LoRA factors in it.
    pub factor_bytes: u64,
    /// Tensor data of the GGUF that conversion would write at `--outtype auto` (without header).
    pub gguf_tensor_bytes: Option<u64>,
}

/// One LoRA module of the adapter.
#[derive(Debug, Serialize)]
pub struct Module {
    /// The module path (`model.layers.0.self_attn.q_proj`), as the family tables name it.
    pub module: String,
    /// The module as the file names it (PEFT's `base_layer` nesting, mlx-lm's `switch_mlp` stacks differ).
    pub saved_as: String,
    /// `linear` or `embedding`.
    pub kind: &'static str,
    /// `single`, `peft_experts` (PEFT ParamWrapper on a 3-D expert parameter) or `mlx_experts` (SwitchLinear).
    pub packing: &'static str,
    /// Experts the module holds (a stack), else null.
    pub n_expert: Option<usize>,
    /// The expert slot of a per-expert module (`experts.3.w1`) in its stacked GGUF tensor, else null.
    pub expert: Option<usize>,
    /// Rank (per expert).
    pub rank: usize,
    /// α used for this module (`lora_alpha` or its `alpha_pattern` entry; mlx-lm: scale·rank).
    pub alpha: f64,
    /// `use_rslora`.
    pub rslora: bool,
    /// The effective scaling s of ΔW = s·B·A: PEFT's α/r (or α/√r), mlx-lm's `scale`.
    pub peft_scaling: f64,
    /// dtype of A and B.
    pub dtype: String,
    /// A's shape (numpy order, PEFT's orientation).
    pub a_shape: Vec<usize>,
    /// B's shape (numpy order, PEFT's orientation).
    pub b_shape: Vec<usize>,
    /// A's and B's shapes as the file stores them.
    pub file_shapes: [Vec<usize>; 2],
    /// The GGUF base tensors it becomes.
    pub targets: Vec<String>,
    /// `converted`, `refused` or `not_planned`.
    pub status: &'static str,
}

/// Analyse the directory.
pub fn inspect(req: &Request) -> Result<PeftReport, ConvertError> {
    let prepared = convert::prepare(
        &req.path,
        req.base.as_deref(),
        req.base_config.as_deref(),
        None,
        OutType::Auto,
        &req.quirks,
    )?;
    let a = &prepared.adapter;
    let refusals: Vec<Refusal> = prepared.refusals.iter().map(manifest::refusal).collect();
    let plan = prepared.plan.as_ref();
    let mut targets: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut slots: BTreeMap<usize, usize> = BTreeMap::new();
    if let Some(plan) = plan {
        for p in &plan.pairs {
            for s in &p.sources {
                targets.entry(s.pair).or_default().push(p.target.clone());
                if let Some(e) = s.expert {
                    slots.insert(s.pair, e);
                }
            }
        }
    }
    let mut dtypes = BTreeMap::new();
    let mut factor_bytes = 0u64;
    let modules = a
        .pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            for t in [&p.a, &p.b] {
                *dtypes.entry(format!("{:?}", t.dtype)).or_insert(0) += 1;
                factor_bytes += (t.shape.iter().product::<usize>() * t.dtype.size()) as u64;
            }
            let dtype = if p.a.dtype == p.b.dtype {
                format!("{:?}", p.a.dtype)
            } else {
                format!("{:?}/{:?}", p.a.dtype, p.b.dtype)
            };
            let t = targets.remove(&i).unwrap_or_default();
            Module {
                module: p.pattern_key(),
                saved_as: p.saved_as.clone(),
                kind: match p.kind {
                    PairKind::Linear => "linear",
                    PairKind::Embedding => "embedding",
                },
                packing: p.packing_name(),
                n_expert: (p.packing != Packing::Single).then(|| p.packing.n_expert()),
                expert: slots.get(&i).copied(),
                rank: p.rank,
                alpha: p.scaling.alpha,
                rslora: p.scaling.rslora,
                peft_scaling: p.scaling.factor(),
                dtype,
                a_shape: p.a.shape.clone(),
                b_shape: p.b.shape.clone(),
                file_shapes: [p.stored_shape(true), p.stored_shape(false)],
                status: if !t.is_empty() {
                    "converted"
                } else if plan.is_some() {
                    "refused"
                } else {
                    "not_planned"
                },
                targets: t,
            }
        })
        .collect();
    let gguf_tensor_bytes = plan.map(|plan| {
        plan.pairs
            .iter()
            .flat_map(|p| [&p.a, &p.b])
            .map(|t| t.n_bytes().unwrap_or(0))
            .sum()
    });
    let convertible = refusals.is_empty();
    Ok(PeftReport {
        schema: SCHEMA,
        kind: "adapter_dir",
        path: req.path.display().to_string(),
        adapter: manifest::adapter_section(a, prepared.mlx.as_ref()),
        base: prepared.base.as_ref().map(manifest::base_section),
        family: prepared.family.map(|f| f.gguf_arch),
        support: prepared.family.map(crate::arch::support::of),
        gguf_alpha: plan.map(|p| f64::from(p.alpha)),
        dtypes,
        size: Size {
            weights_bytes: std::fs::metadata(a.safetensors_path()).map_or(0, |m| m.len()),
            factor_bytes,
            gguf_tensor_bytes,
        },
        modules,
        pairs: plan.map(|p| manifest::pairs(p, a)).unwrap_or_default(),
        tensors: manifest::tensors(a, plan, &refusals),
        warnings: plan.map(|p| p.warnings.clone()).unwrap_or_default(),
        refusals,
        convertible,
        fits: (req.base.is_some() || req.base_config.is_some()).then_some(convertible),
    })
}
