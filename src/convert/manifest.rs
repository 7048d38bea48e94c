//! `lora-convert --manifest FILE.json`: what a conversion did with every source tensor, so a pipeline can diff two
//! training runs. Schema `lora-gguf.manifest/1`, documented in docs/inspect-and-manifest.md.
//!
//! Deterministic: the same input and command line give byte-identical JSON (no timestamps, no absolute paths
//! beyond those given, map keys in a fixed order, numbers printed shortest-round-trip). Written also when the
//! conversion is refused — then `status` is `refused` and `refusals` lists every reason, not just the first.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::error::{ConvertError, chain};
use super::plan::{PairShape, Plan};
use super::{Outcome, Prepared};
use crate::adapter::{Adapter, KeyKind, LoraPair, Packing, PairKind};
use crate::arch::{DeltaNetPart, Heads, QkvPart, RowTransform};
use crate::mlx::MlxConfig;

/// The schema identifier; bumped when a field changes meaning or disappears (additions keep it).
pub const SCHEMA: &str = "lora-gguf.manifest/1";

/// The whole manifest.
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// `lora-convert` and its version.
    pub tool: Tool,
    /// `written`, `refused` (the adapter or base does not allow conversion) or `error` (unreadable input).
    pub status: &'static str,
    /// The source adapter.
    pub adapter: Option<AdapterSection>,
    /// The base description conversion checked against.
    pub base: Option<BaseSection>,
    /// The file written (status `written` only).
    pub output: Option<OutputSection>,
    /// Every output pair, in file order.
    pub pairs: Vec<PairEntry>,
    /// Every tensor of the adapter file, by key.
    pub tensors: Vec<TensorEntry>,
    /// Every reason conversion stops, in the order a user should read them.
    pub refusals: Vec<Refusal>,
    /// Planning warnings.
    pub warnings: Vec<String>,
}

/// The program.
#[derive(Debug, Serialize)]
pub struct Tool {
    /// `lora-convert`.
    pub name: &'static str,
    /// The crate version.
    pub version: &'static str,
}

/// The adapter side.
#[derive(Debug, Serialize)]
pub struct AdapterSection {
    /// The directory as given.
    pub dir: String,
    /// `peft` or `mlx-lm`.
    pub framework: &'static str,
    /// Trainers whose traces were found, with the evidence.
    pub trainers: Vec<TrainerHint>,
    /// The adapter_config.json fields that decide the scaling (for mlx-lm: the PEFT configuration it is
    /// equivalent to, r and lora_alpha = scale·r).
    pub config: ConfigSection,
    /// mlx-lm's own settings; only for an mlx-lm adapter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlx: Option<MlxConfig>,
    /// Size of the weights file in bytes.
    pub weights_bytes: u64,
}

/// A trainer hint.
#[derive(Debug, Serialize)]
pub struct TrainerHint {
    /// `torchtune`, `unsloth`, `axolotl`, `llama-factory`.
    pub trainer: &'static str,
    /// What was found.
    pub evidence: String,
}

/// Configuration fields.
#[derive(Debug, Serialize)]
pub struct ConfigSection {
    /// `r`.
    pub r: u32,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// `use_rslora`.
    pub use_rslora: bool,
    /// `rank_pattern`, in file order.
    pub rank_pattern: Vec<(String, u32)>,
    /// `alpha_pattern`, in file order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// `base_model_name_or_path`.
    pub base_model_name_or_path: Option<String>,
}

/// The base.
#[derive(Debug, Serialize)]
pub struct BaseSection {
    /// `gguf` or `hf_config`.
    pub source: &'static str,
    /// The file or directory.
    pub path: String,
    /// Its GGUF architecture.
    pub arch: Option<String>,
    /// Vocabulary size, when known.
    pub n_vocab: Option<u64>,
}

/// The output file.
#[derive(Debug, Serialize)]
pub struct OutputSection {
    /// The path as given.
    pub path: String,
    /// `general.architecture`.
    pub arch: &'static str,
    /// `adapter.lora.alpha` (f32, printed as the f64 of that f32).
    pub alpha: f64,
    /// File size.
    pub bytes: u64,
    /// `--verify`'s result.
    pub verify: Option<VerifySection>,
}

/// Verification numbers.
#[derive(Debug, Serialize)]
pub struct VerifySection {
    /// Pairs checked.
    pub pairs: usize,
    /// Worst |ΔW error|.
    pub worst_error: f64,
    /// Worst error / rounding bound.
    pub worst_ratio: f64,
}

/// One GGUF pair.
#[derive(Debug, Serialize)]
pub struct PairEntry {
    /// The base tensor, e.g. `blk.0.attn_q.weight`.
    pub target: String,
    /// Rank (ne[0] of lora_b).
    pub rank: usize,
    /// `linear`, `embedding` or `experts` (a stacked `*_exps` tensor: ne [in, r, E] and [r, out, E]).
    pub kind: &'static str,
    /// Experts in the stack, for `experts`.
    pub n_expert: Option<usize>,
    /// Expert slots no source fills, written as zero (no change), for a stack built from per-expert modules.
    pub zero_filled_experts: Vec<usize>,
    /// llama.cpp's factor at scale 1: α / rank, in f32 as llama.cpp computes it.
    pub runtime_factor: f64,
    /// `lora_a` as written.
    pub lora_a: GgufTensor,
    /// `lora_b` as written.
    pub lora_b: GgufTensor,
    /// The PEFT modules it comes from.
    pub sources: Vec<PairSource>,
}

/// A GGUF tensor.
#[derive(Debug, Serialize)]
pub struct GgufTensor {
    /// Name.
    pub name: String,
    /// ggml type name.
    #[serde(rename = "type")]
    pub ggml_type: &'static str,
    /// ggml `ne`.
    pub ne: Vec<u64>,
}

/// One PEFT module's part in a pair.
#[derive(Debug, Serialize)]
pub struct PairSource {
    /// The module path (the Hugging Face module, as the family tables name it).
    pub module: String,
    /// The module as the file names it, when that differs (PEFT's `base_layer` nesting, mlx-lm's `switch_mlp`).
    pub saved_as: Option<String>,
    /// How the source holds its factors: `single`, `peft_experts` (PEFT ParamWrapper on a 3-D expert parameter)
    /// or `mlx_experts` (mlx-lm SwitchLinear).
    pub packing: &'static str,
    /// Expert slot, for a per-expert module stacked into an `experts` pair (null: a single matrix, or the whole
    /// stack).
    pub expert: Option<usize>,
    /// PEFT's scaling s (α/r or α/√r, with patterns).
    pub peft_scaling: f64,
    /// What is done to lora_B's rows.
    pub rows: String,
    /// What is done to lora_A's columns (the base weight's input features).
    pub cols: String,
    /// Factor multiplied into lora_B (1: untouched), as the f32 applied.
    pub fold: f64,
    /// The base's scale that llama.cpp applies to the base matmul only, per expert, also multiplied into lora_B
    /// (Gemma 4's `ffn_down_exps.scale`); null when none.
    pub base_scale: Option<Vec<f32>>,
    /// runtime_factor × fold: the factor llama.cpp effectively applies to this module's B·A (equals
    /// peft_scaling up to f32 rounding of α and the fold).
    pub effective_factor: f64,
}

/// One tensor of the adapter file.
#[derive(Debug, Serialize)]
pub struct TensorEntry {
    /// The safetensors key.
    pub key: String,
    /// The safetensors dtype.
    pub dtype: String,
    /// The shape (numpy order): for a factor of a pair in PEFT's orientation (A (r, in), B (out, r); a stack
    /// (E·r, in) and (out, E·r)), otherwise as stored.
    pub shape: Vec<usize>,
    /// The shape as the file stores it.
    pub file_shape: Vec<usize>,
    /// Whether the file stores the transpose of `shape` (mlx-lm's Linear factors).
    pub transposed: bool,
    /// `lora_A`, `lora_B`, `lora_embedding_A`, `lora_embedding_B`, `base_layer_copy`, `full_weight`,
    /// `dora_magnitude`, `lora_bias`, `trainable_tokens`, `unknown`.
    pub role: &'static str,
    /// The module, for factors.
    pub module: Option<String>,
    /// `converted`, `skipped`, `refused` or `not_planned` (no base or family to plan against).
    pub status: &'static str,
    /// Why it was skipped or refused.
    pub reason: Option<String>,
    /// Where it went.
    pub gguf: Vec<Destination>,
}

/// Where a source tensor's data went.
#[derive(Debug, Serialize)]
pub struct Destination {
    /// GGUF tensor name.
    pub tensor: String,
    /// What was done on the way.
    pub transform: String,
    /// Factor multiplied in (lora_b only; 1 for lora_a).
    pub fold: f64,
    /// The pair's effective factor (runtime α/r × fold).
    pub effective_factor: f64,
}

/// A refusal.
#[derive(Debug, Serialize)]
pub struct Refusal {
    /// The module, key, tensor or file concerned.
    pub subject: String,
    /// The full message (what the command line prints after `error: `).
    pub reason: String,
}

/// Build the manifest of a conversion.
pub fn build(outcome: &Outcome) -> Manifest {
    let mut refusals: Vec<Refusal> = Vec::new();
    if let Err(e) = &outcome.result {
        refusals.push(refusal(e));
    }
    let status = match (&outcome.result, &outcome.prepared) {
        (Ok(_), _) => "written",
        (Err(_), Some(_)) => "refused",
        (Err(_), None) => "error",
    };
    let mut m = Manifest {
        schema: SCHEMA,
        tool: Tool {
            name: "lora-convert",
            version: env!("CARGO_PKG_VERSION"),
        },
        status,
        adapter: None,
        base: None,
        output: None,
        pairs: Vec::new(),
        tensors: Vec::new(),
        refusals: Vec::new(),
        warnings: Vec::new(),
    };
    if let Some(p) = &outcome.prepared {
        refusals.extend(p.refusals.iter().map(refusal));
        fill(&mut m, p, &refusals);
    }
    if let Ok(s) = &outcome.result {
        m.output = Some(OutputSection {
            path: s.output.display().to_string(),
            arch: s.arch,
            alpha: f64::from(s.alpha),
            bytes: s.bytes,
            verify: s.verify.as_ref().map(|v| VerifySection {
                pairs: v.pairs,
                worst_error: v.worst_error,
                worst_ratio: v.worst_ratio,
            }),
        });
    }
    m.refusals = refusals;
    m
}

/// The manifest as pretty JSON with a final newline.
pub fn to_json(m: &Manifest) -> String {
    let mut text =
        serde_json::to_string_pretty(m).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Write the manifest atomically (temporary file beside it, then rename).
pub fn write(path: &Path, m: &Manifest) -> Result<(), ConvertError> {
    use std::io::Write;
    let io = |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".lora-convert-manifest-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(to_json(m).as_bytes()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A refusal entry for an error.
pub fn refusal(e: &ConvertError) -> Refusal {
    Refusal {
        subject: e.subject(),
        reason: chain(e),
    }
}

fn fill(m: &mut Manifest, p: &Prepared, refusals: &[Refusal]) {
    let a = &p.adapter;
    m.adapter = Some(adapter_section(a, p.mlx.as_ref()));
    m.base = p.base.as_ref().map(base_section);
    if let Some(plan) = &p.plan {
        m.pairs = pairs(plan, a);
        m.warnings = plan.warnings.clone();
    }
    m.tensors = tensors(a, p.plan.as_ref(), refusals);
}

/// The adapter section (`mlx`: mlx-lm's own configuration, for an mlx-lm adapter).
pub fn adapter_section(a: &Adapter, mlx: Option<&MlxConfig>) -> AdapterSection {
    AdapterSection {
        dir: a.dir.display().to_string(),
        framework: match a.framework {
            crate::adapter::Framework::Peft => "peft",
            crate::adapter::Framework::MlxLm => "mlx-lm",
        },
        trainers: a
            .trainers
            .iter()
            .map(|h| TrainerHint {
                trainer: h.trainer.name(),
                evidence: h.evidence.clone(),
            })
            .collect(),
        config: ConfigSection {
            r: a.config.rank,
            lora_alpha: a.config.alpha,
            use_rslora: a.config.use_rslora,
            rank_pattern: a.config.rank_pattern.clone(),
            alpha_pattern: a.config.alpha_pattern.clone(),
            base_model_name_or_path: a.config.base_model_name_or_path.clone(),
        },
        mlx: mlx.cloned(),
        weights_bytes: std::fs::metadata(a.safetensors_path()).map_or(0, |md| md.len()),
    }
}

/// The base section.
pub fn base_section(b: &super::BaseModel) -> BaseSection {
    BaseSection {
        source: match b.source {
            super::BaseSource::Gguf(_) => "gguf",
            super::BaseSource::HfConfig(_) => "hf_config",
        },
        path: b.describe(),
        arch: b.gguf_arch.clone(),
        n_vocab: b.n_vocab,
    }
}

fn runtime_factor(plan: &Plan, rank: usize) -> f64 {
    f64::from(plan.alpha / rank as f32)
}

/// Every planned pair.
pub fn pairs(plan: &Plan, a: &Adapter) -> Vec<PairEntry> {
    let tensor = |t: &crate::gguf::TensorSpec| GgufTensor {
        name: t.name.clone(),
        ggml_type: t.ggml_type.name(),
        ne: t.dims.clone(),
    };
    plan.pairs
        .iter()
        .map(|p| {
            let runtime = runtime_factor(plan, p.rank);
            let (kind, n_expert) = match p.shape {
                PairShape::Linear => ("linear", None),
                PairShape::Embedding { .. } => ("embedding", None),
                PairShape::Experts { n_expert } => ("experts", Some(n_expert)),
            };
            PairEntry {
                target: p.target.clone(),
                rank: p.rank,
                kind,
                n_expert,
                zero_filled_experts: zero_filled(p),
                runtime_factor: runtime,
                lora_a: tensor(&p.a),
                lora_b: tensor(&p.b),
                sources: p
                    .sources
                    .iter()
                    .map(|s| {
                        let fold = f64::from(s.fold as f32);
                        let pair = &a.pairs[s.pair];
                        PairSource {
                            module: pair.pattern_key(),
                            saved_as: (pair.saved_as != pair.module).then(|| pair.saved_as.clone()),
                            packing: pair.packing_name(),
                            expert: s.expert,
                            peft_scaling: s.peft_scaling,
                            rows: rows_name(s.rows),
                            cols: rows_name(s.cols),
                            fold,
                            base_scale: s.base_scale.clone(),
                            effective_factor: runtime * fold,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Where each factor key went, from the plan.
fn destinations(plan: &Plan, a: &Adapter) -> BTreeMap<String, Vec<Destination>> {
    let mut out: BTreeMap<String, Vec<Destination>> = BTreeMap::new();
    for p in &plan.pairs {
        let runtime = runtime_factor(plan, p.rank);
        for s in &p.sources {
            let pair = &a.pairs[s.pair];
            let fold = f64::from(s.fold as f32);
            let slot_of = |what: String| match (p.shape, s.expert) {
                (PairShape::Experts { n_expert }, Some(e)) => {
                    format!("{what}, expert slot {e} of {n_expert}")
                }
                (PairShape::Experts { n_expert }, None) => {
                    format!("{what}, all {n_expert} experts")
                }
                _ => what,
            };
            let slot = |what: String| {
                slot_of(match s.part {
                    Some(part) => format!(
                        "{what}, into rank block {}..{} and rows {}..{} of the fused tensor",
                        part.rank_offset,
                        part.rank_offset + part.rank,
                        part.row_offset,
                        part.row_offset + part.rows
                    ),
                    None => what,
                })
            };
            let mut b_transform = b_transform(pair, s.rows);
            if fold != 1.0 {
                b_transform.push_str(&format!(", × {fold}"));
            }
            if s.base_scale.is_some() {
                b_transform.push_str(", × the base's scale of each expert");
            }
            let mut a_transform = match s.cols {
                RowTransform::Identity => a_transform(pair, p.shape),
                cols => format!(
                    "{}, columns {}",
                    a_transform(pair, p.shape),
                    rows_name(cols)
                ),
            };
            // PEFT holds ΔWᵀ (Llama 4's experts): A becomes lora_b and B lora_a, each transposed per expert
            let (a_to, b_to) = if s.transposed {
                a_transform = format!(
                    "expert e = rows e·r..(e+1)·r, transposed into lora_b, {}",
                    {
                        let rows = b_transform.split_once(", rows ").map_or("", |(_, r)| r);
                        format!("rows {rows}")
                    }
                );
                b_transform = "expert e = columns e, E+e, 2E+e, … (PEFT interleaves them), transposed into lora_a"
                    .to_string();
                (&p.b, &p.a)
            } else {
                (&p.a, &p.b)
            };
            out.entry(pair.a.key.clone())
                .or_default()
                .push(Destination {
                    tensor: a_to.name.clone(),
                    transform: slot(a_transform),
                    fold: if s.transposed { fold } else { 1.0 },
                    effective_factor: runtime * fold,
                });
            out.entry(pair.b.key.clone())
                .or_default()
                .push(Destination {
                    tensor: b_to.name.clone(),
                    transform: slot(b_transform),
                    fold: if s.transposed { 1.0 } else { fold },
                    effective_factor: runtime * fold,
                });
        }
    }
    out
}

/// What is done to a source A on its way to `lora_a` (ne [in, r] is numpy (r, in): PEFT's A as stored).
fn a_transform(pair: &LoraPair, shape: PairShape) -> String {
    match shape {
        // lora_a is Aᵀ (vocab, r): what mlx-lm stores, the transpose of PEFT's A
        PairShape::Embedding { vocab } => {
            let full = pair.a.shape.get(1).copied().unwrap_or(vocab);
            match (pair.a.transposed, vocab < full) {
                (false, false) => "transpose".into(),
                (false, true) => format!("keep vocabulary columns 0..{vocab}, transpose"),
                (true, false) => "copy".into(),
                (true, true) => format!("keep vocabulary rows 0..{vocab}"),
            }
        }
        _ if pair.a.transposed => "transpose".into(),
        // a stack's A holds expert e in rows e·r..(e+1)·r, which is ne [in, r, E]
        _ => "copy".into(),
    }
}

/// What is done to a source B on its way to `lora_b` (ne [r, out] is numpy (out, r): PEFT's B as stored).
fn b_transform(pair: &LoraPair, rows: RowTransform) -> String {
    let rows = format!("rows {}", rows_name(rows));
    match pair.packing {
        Packing::PeftExperts { .. } => {
            format!("expert e = columns e, E+e, 2E+e, … (PEFT interleaves them), {rows}")
        }
        // mlx-lm's (E, out, r) is already ne [r, out, E]
        Packing::MlxExperts { .. } => rows,
        Packing::Single if pair.b.transposed => format!("transpose, {rows}"),
        Packing::Single => rows,
    }
}

/// The expert slots of a stack that no source fills: written as zero.
fn zero_filled(p: &super::plan::PlannedPair) -> Vec<usize> {
    match p.shape {
        PairShape::Experts { n_expert } if p.sources.iter().all(|s| s.expert.is_some()) => (0
            ..n_expert)
            .filter(|e| !p.sources.iter().any(|s| s.expert == Some(*e)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Every tensor of the adapter file with its fate.
pub fn tensors(a: &Adapter, plan: Option<&Plan>, refusals: &[Refusal]) -> Vec<TensorEntry> {
    let mut dest = plan.map(|p| destinations(p, a)).unwrap_or_default();
    let reason_for = |subject: &str| {
        refusals
            .iter()
            .find(|r| r.subject == subject)
            .map(|r| r.reason.clone())
    };
    let mut out = Vec::new();
    for pair in &a.pairs {
        for (t, is_a) in [(&pair.a, true), (&pair.b, false)] {
            let role = match (pair.kind, is_a) {
                (PairKind::Linear, true) => "lora_A",
                (PairKind::Linear, false) => "lora_B",
                (PairKind::Embedding, true) => "lora_embedding_A",
                (PairKind::Embedding, false) => "lora_embedding_B",
            };
            let gguf = dest.remove(&t.key).unwrap_or_default();
            let (status, reason) = if !gguf.is_empty() {
                ("converted", None)
            } else if plan.is_none() {
                (
                    "not_planned",
                    Some("no base or family to plan against (see refusals)".into()),
                )
            } else {
                (
                    "refused",
                    reason_for(&pair.module)
                        .or_else(|| Some("its module was refused (see refusals)".into())),
                )
            };
            out.push(TensorEntry {
                key: t.key.clone(),
                dtype: format!("{:?}", t.dtype),
                shape: t.shape.clone(),
                file_shape: pair.stored_shape(is_a),
                transposed: t.transposed,
                role,
                module: Some(pair.pattern_key()),
                status,
                reason,
                gguf,
            });
        }
    }
    for t in &a.others {
        let (role, module) = match &t.kind {
            KeyKind::Factor { module, is_a, .. } => (
                if *is_a { "lora_A" } else { "lora_B" },
                Some(module.clone()),
            ),
            KeyKind::BaseLayerCopy => ("base_layer_copy", None),
            KeyKind::FullWeight => ("full_weight", None),
            KeyKind::DoraMagnitude => ("dora_magnitude", None),
            KeyKind::LoraBias => ("lora_bias", None),
            KeyKind::TrainableTokens => ("trainable_tokens", None),
            KeyKind::Unknown => ("unknown", None),
        };
        let (status, reason) = if t.kind == KeyKind::BaseLayerCopy {
            (
                "skipped",
                Some(
                    "a copy of the wrapped base layer that PEFT saves beside embedding LoRAs; the base GGUF has it"
                        .to_string(),
                ),
            )
        } else {
            (
                "refused",
                reason_for(&t.key)
                    .or_else(|| module.as_deref().and_then(reason_for))
                    .or_else(|| {
                        refusals
                            .iter()
                            .find(|r| r.reason.contains(&t.key))
                            .map(|r| r.reason.clone())
                    }),
            )
        };
        out.push(TensorEntry {
            key: t.key.clone(),
            dtype: t.dtype.clone(),
            shape: t.shape.clone(),
            file_shape: t.shape.clone(),
            transposed: false,
            role,
            module,
            status,
            reason,
            gguf: Vec::new(),
        });
    }
    out.sort_by(|x, y| x.key.cmp(&y.key));
    out
}

/// A stable name for a row transform (the manifest's `rows` field).
pub fn rows_name(r: RowTransform) -> String {
    let heads = |h: Heads| match h {
        Heads::Query => "n_head",
        Heads::KeyValue => "n_head_kv",
    };
    match r {
        RowTransform::Identity => "identity".into(),
        RowTransform::LlamaRope(h) => format!("llama_rope_permute({})", heads(h)),
        RowTransform::NeoxQkv => "neox_qkv_regroup".into(),
        RowTransform::FalconQkv => "falcon_qkv_regroup".into(),
        RowTransform::InternLm2Qkv { part, rope } => format!(
            "internlm2_qkv_split({}{})",
            match part {
                QkvPart::Q => "q",
                QkvPart::K => "k",
                QkvPart::V => "v",
            },
            if rope { ", llama_rope_permute" } else { "" }
        ),
        RowTransform::Chunk { index, count } => format!("chunk({index} of {count})"),
        RowTransform::Interleaved { index, count } => format!("interleaved({index} of {count})"),
        RowTransform::Deinterleaved { count } => format!("deinterleave({count})"),
        RowTransform::DeltaNetValueHeads(part) => format!(
            "delta_net_v_head_reorder({})",
            match part {
                DeltaNetPart::Qkv => "qkv",
                DeltaNetPart::ValueHeads => "value_heads",
                DeltaNetPart::PerHead => "per_head",
            }
        ),
    }
}
