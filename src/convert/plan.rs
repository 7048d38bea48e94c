//! From an adapter, a family table and a base description to a plan: every output tensor with its shape, type,
//! sources, row transform and scaling fold — checked against the base before a byte is written.
//!
//! Scaling (design.md "Exactness rules"): PEFT computes ΔW_m = s_m·B_m·A_m. llama.cpp multiplies by
//! `scale · α / rank(B)` with one α per file. With c_m = s_m·r_m, writing α = c makes the runtime factor exact
//! for every module whose c_m = c; for the others B is multiplied by c_m / α (an f32 multiply) so that
//! α/r_m · (c_m/α)·B = s_m·B. α is the c shared by the most modules, so a uniform adapter stays bit-identical.

use std::collections::BTreeMap;

use super::base::BaseModel;
use super::error::ConvertError;
use super::factor::{self, HeadCounts};
use super::quirks::{self, IgnoredPairs, Quirks};
use crate::adapter::{Adapter, LoraPair, PairKind, SourceDtype};
use crate::arch::{Family, Layout, RowTransform, Target};
use crate::gguf::{GgmlType, TensorSpec};

/// The output type the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    /// 32-bit float: exact.
    F32,
    /// IEEE half: round to nearest even.
    F16,
    /// bfloat16, rounded as ggml does.
    Bf16,
    /// 8-bit blocks of 32 (rows whose length is not a multiple of 32 fall back to F16, as llama.cpp's converter).
    Q8_0,
    /// The adapter's own dtype (F32, F16 or BF16; mixed → F32): lossless.
    Auto,
}

impl OutType {
    /// The concrete ggml type for a tensor whose rows have `ne0` elements.
    pub fn ggml_type(self, source: Option<SourceDtype>, ne0: u64) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::Bf16 => GgmlType::BF16,
            OutType::Q8_0 if ne0.is_multiple_of(32) => GgmlType::Q8_0,
            OutType::Q8_0 => GgmlType::F16,
            OutType::Auto => match source {
                Some(SourceDtype::F16) => GgmlType::F16,
                Some(SourceDtype::BF16) => GgmlType::BF16,
                Some(SourceDtype::F32) | None => GgmlType::F32,
            },
        }
    }
}

/// How the output pair is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairShape {
    /// `lora_a` ne [in, r], `lora_b` ne [r, out].
    Linear,
    /// `lora_a` = Aᵀ ne [r, vocab], `lora_b` ne [r, hidden]; `vocab` ≤ the adapter's (Gemma 3 drops padding rows).
    Embedding {
        /// Vocabulary columns of A kept.
        vocab: usize,
    },
    /// `lora_a` ne [in, r, E], `lora_b` ne [r, out, E]; experts without a LoRA are zero.
    Experts {
        /// Experts in the stack.
        n_expert: usize,
    },
}

/// One PEFT pair's contribution to an output pair.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedSource {
    /// Index into `Adapter::pairs`.
    pub pair: usize,
    /// The expert slot, for stacked experts.
    pub expert: Option<usize>,
    /// What happens to B's rows.
    pub rows: RowTransform,
    /// What happens to A's columns.
    pub cols: RowTransform,
    /// PEFT's factors hold ΔWᵀ (Llama 4's experts): lora_a = B_eᵀ, lora_b = A_eᵀ.
    pub transposed: bool,
    /// PEFT's own scaling s_m for this module.
    pub peft_scaling: f64,
    /// Factor multiplied into B so that llama.cpp's α/rank gives s_m (1.0: B untouched).
    pub fold: f64,
    /// The base's output scale that llama.cpp applies to the base matmul only (Gemma 4's per-expert
    /// `ffn_down_exps.scale`): one value per expert (or one for all), multiplied into B with the fold.
    pub base_scale: Option<Vec<f32>>,
    /// The block this source fills when the base stores its target fused with others (a gate or up expert LoRA on
    /// `ffn_gate_up_exps`): the pair is block-diagonal, ΔW = [B_g 0; 0 B_u]·[A_g; A_u].
    pub part: Option<FusedPart>,
}

/// One part of a pair built block-diagonally from LoRAs of the parts of a fused base tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusedPart {
    /// Which part (0: gate, 1: up), in the fused tensor's row order.
    pub index: u8,
    /// Parts of the fused tensor.
    pub count: u8,
    /// Rows of one part (the fused tensor has `count` times as many).
    pub rows: usize,
    /// This part's own rank.
    pub rank: usize,
    /// Where its rank block starts in the pair's rank (the ranks of the parts before it that have a LoRA).
    pub rank_offset: usize,
    /// Where its rows start in the fused tensor (`index · rows`).
    pub row_offset: usize,
}

impl PlannedSource {
    /// The base's scale for expert `e` (1 without one).
    pub fn base_scale_for(&self, e: usize) -> f64 {
        match &self.base_scale {
            Some(v) if v.len() == 1 => f64::from(v[0]),
            Some(v) => v.get(e).map_or(1.0, |&x| f64::from(x)),
            None => 1.0,
        }
    }

    /// The factor multiplied into expert `e`'s B: the scaling fold times the base's scale.
    pub fn fold_for(&self, e: usize) -> f64 {
        self.fold * self.base_scale_for(e)
    }
}

/// One `<target>.lora_a` / `<target>.lora_b` pair of the output file.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedPair {
    /// The base tensor, e.g. `blk.0.attn_q.weight`.
    pub target: String,
    /// The block index, if any.
    pub block: Option<u32>,
    /// Layout of the pair.
    pub shape: PairShape,
    /// LoRA rank.
    pub rank: usize,
    /// Columns of ΔW (input features; vocabulary for the embedding).
    pub in_features: usize,
    /// Rows of ΔW after the transform (output features; hidden size for the embedding).
    pub out_features: usize,
    /// Where the data comes from.
    pub sources: Vec<PlannedSource>,
    /// The `lora_a` tensor as written.
    pub a: TensorSpec,
    /// The `lora_b` tensor as written.
    pub b: TensorSpec,
}

/// The whole output, decided.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `general.architecture` of the output.
    pub arch: &'static str,
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    /// Output pairs in file order.
    pub pairs: Vec<PlannedPair>,
    /// Things the user should know (no-effect tensors, dtype fallbacks, vocabulary truncation).
    pub warnings: Vec<String>,
}

/// Build the plan. Pure: reads shapes and configuration only, never tensor data. The first problem is the error.
pub fn plan(
    adapter: &Adapter,
    family: &'static Family,
    base: &BaseModel,
    outtype: OutType,
) -> Result<Plan, ConvertError> {
    let (plan, problems) = plan_all(adapter, family, base, outtype, &Quirks::default());
    match problems.into_iter().next() {
        Some(problem) => Err(problem),
        None => Ok(plan),
    }
}

/// Build the plan as far as it goes: every problem is returned (in adapter order) and the pairs they concern are
/// left out of the plan, so `inspect` and the manifest can show all of them at once.
pub fn plan_all(
    adapter: &Adapter,
    family: &'static Family,
    base: &BaseModel,
    outtype: OutType,
    quirks: &Quirks,
) -> (Plan, Vec<ConvertError>) {
    let mut problems = Vec::new();
    if adapter.pairs.is_empty() {
        problems.push(ConvertError::Empty {
            dir: adapter.dir.clone(),
        });
    }
    let mut warnings = Vec::new();
    let alpha = choose_alpha(&adapter.pairs);
    let mut by_target: BTreeMap<String, usize> = BTreeMap::new();
    let mut pairs: Vec<PlannedPair> = Vec::new();

    for (index, pair) in adapter.pairs.iter().enumerate() {
        let mapped = match &pair.parameter {
            Some(param) => family.map_parameter(&pair.module, param),
            None => family.map_module(&pair.module),
        };
        let targets = match mapped {
            Ok(t) => crate::arch::fused_for_base(t, |name| base.has_tensor(name)),
            Err(source) => {
                problems.push(ConvertError::Map {
                    module: pair.pattern_key(),
                    source,
                });
                continue;
            }
        };
        let peft_scaling = pair.scaling.factor();
        let c = peft_scaling * pair.rank as f64;
        let fold = c / f64::from(alpha);
        for mut target in targets {
            let step = (|| {
                target.rows = quirks::source_rows(adapter, family, pair, &target, quirks)?;
                if !(quirks.merge_tied_embedding && target.name == "token_embd.weight") {
                    check_tied(pair, &target, base)?;
                }
                let source = PlannedSource {
                    pair: index,
                    expert: None,
                    rows: target.rows,
                    cols: target.cols,
                    transposed: target.transposed,
                    peft_scaling,
                    fold,
                    base_scale: None,
                    part: None,
                };
                if family.no_effect(&target.name) {
                    let what = format!(
                        "`{}` (from `{}`): llama.cpp's {} graph does not apply LoRA to this tensor",
                        target.name, pair.module, family.gguf_arch
                    );
                    match quirks.ignored_pairs {
                        IgnoredPairs::Refuse => {
                            return Err(ConvertError::NoEffect {
                                module: pair.module.clone(),
                                target: target.name.clone(),
                                arch: family.gguf_arch,
                            });
                        }
                        IgnoredPairs::Drop => {
                            warnings.push(format!(
                                "{what}; the pair is left out (--drop-ignored-pairs)"
                            ));
                            return Ok(());
                        }
                        IgnoredPairs::Keep => warnings.push(format!(
                            "{what}; the pair is written but has no effect at run time"
                        )),
                    }
                }
                let mut planned = plan_one(pair, &target, base, source)?;
                if let Some(scale) = family.base_only_scale(&target.name) {
                    let values = base_scale(pair, &target, &scale, base)?;
                    let experts = match planned.shape {
                        PairShape::Experts { n_expert } => n_expert,
                        _ => 1,
                    };
                    if let Some(v) = &values
                        && v.len() != 1
                        && v.len() != experts
                    {
                        return Err(ConvertError::BaseScale {
                            module: pair.module.clone(),
                            target: target.name.clone(),
                            scale,
                            why: format!("it has {} values for {experts} experts", v.len()),
                        });
                    }
                    planned.sources[0].base_scale = values;
                }
                // a gate or up expert LoRA on a base that stores both fused: one block of the fused pair
                if let PairShape::Experts { .. } = planned.shape
                    && base.has_tensor(&planned.target) == Some(false)
                    && let Some((fused, index, count)) =
                        crate::arch::fused_part_of(&planned.target, |n| {
                            base.has_tensor(n) == Some(true)
                        })
                {
                    planned.target = fused;
                    planned.sources[0].part = Some(FusedPart {
                        index,
                        count,
                        rows: planned.out_features,
                        rank: planned.rank,
                        rank_offset: 0,
                        row_offset: usize::from(index) * planned.out_features,
                    });
                }
                match (planned.shape, by_target.get(&planned.target)) {
                    (PairShape::Experts { .. }, Some(&at)) => {
                        merge_expert(&mut pairs[at], planned, &adapter.pairs)
                    }
                    (_, Some(&at)) => {
                        let first = adapter.pairs[pairs[at].sources[0].pair].module.clone();
                        Err(ConvertError::DuplicateTarget {
                            target: planned.target.clone(),
                            first,
                            second: pair.module.clone(),
                        })
                    }
                    (_, None) => {
                        by_target.insert(planned.target.clone(), pairs.len());
                        pairs.push(planned);
                        Ok(())
                    }
                }
            })();
            if let Err(e) = step {
                problems.push(e);
            }
        }
    }

    let source_dtype = adapter.dtype();
    let mut fallbacks: Vec<u64> = Vec::new();
    let mut fitting = Vec::with_capacity(pairs.len());
    for mut p in pairs {
        if let Err(e) = lay_out_parts(&mut p, alpha, &adapter.pairs) {
            problems.push(e);
            continue;
        }
        let fits = match p.shape {
            PairShape::Experts { n_expert } => check_experts(&p, n_expert, base, &adapter.pairs),
            _ => Ok(()),
        }
        .and_then(|()| check_base_shape(&mut p, base, &adapter.pairs));
        if let Err(e) = fits {
            problems.push(e);
            continue;
        }
        fitting.push(p);
    }
    let mut pairs = fitting;
    for p in &mut pairs {
        let (a_dims, b_dims) = ggml_dims(p);
        let a_type = outtype.ggml_type(source_dtype, a_dims[0]);
        let b_type = outtype.ggml_type(source_dtype, b_dims[0]);
        if outtype == OutType::Q8_0 {
            for (ty, ne0) in [(a_type, a_dims[0]), (b_type, b_dims[0])] {
                if ty != GgmlType::Q8_0 {
                    fallbacks.push(ne0);
                }
            }
        }
        p.a = TensorSpec {
            name: format!("{}.lora_a", p.target),
            dims: a_dims,
            ggml_type: a_type,
        };
        p.b = TensorSpec {
            name: format!("{}.lora_b", p.target),
            dims: b_dims,
            ggml_type: b_type,
        };
    }
    if !fallbacks.is_empty() {
        fallbacks.sort_unstable();
        fallbacks.dedup();
        let rows: Vec<String> = fallbacks.iter().map(ToString::to_string).collect();
        warnings.push(format!(
            "tensors whose rows are not a multiple of 32 values (here {}: usually lora_b, whose rows are the rank) \
             cannot be Q8_0 and are written as F16, as llama.cpp's converter does",
            rows.join(", ")
        ));
    }
    for p in &pairs {
        if let PairShape::Experts { n_expert } = p.shape
            && p.sources.iter().all(|s| s.expert.is_some())
        {
            let missing: Vec<String> = (0..n_expert)
                .filter(|e| !p.sources.iter().any(|s| s.expert == Some(*e)))
                .map(|e| e.to_string())
                .collect();
            if !missing.is_empty() {
                warnings.push(format!(
                    "`{}`: expert(s) {} of {n_expert} have no LoRA in the adapter and are written as zero (no \
                     change), as PEFT leaves them",
                    p.target,
                    missing.join(", ")
                ));
            }
        }
        if let PairShape::Embedding { vocab } = p.shape {
            let a_vocab = adapter.pairs[p.sources[0].pair]
                .a
                .shape
                .get(1)
                .copied()
                .unwrap_or(vocab);
            if vocab < a_vocab {
                warnings.push(format!(
                    "`{}`: the adapter covers {a_vocab} vocabulary rows, the base has {vocab}; the padding rows \
                     {vocab}..{a_vocab} are dropped (llama.cpp's converter drops them from the base the same way)",
                    p.target
                ));
            }
        }
    }
    let plan = Plan {
        arch: family.gguf_arch,
        alpha,
        pairs,
        warnings,
    };
    (plan, problems)
}

/// The values of a base-only scale for `target` (None: the base has no such scale, i.e. 1).
fn base_scale(
    pair: &LoraPair,
    target: &Target,
    scale: &str,
    base: &BaseModel,
) -> Result<Option<Vec<f32>>, ConvertError> {
    let refuse = |why: String| ConvertError::BaseScale {
        module: pair.module.clone(),
        target: target.name.clone(),
        scale: scale.to_string(),
        why,
    };
    match base.has_tensor(scale) {
        Some(false) => Ok(None),
        Some(true) => match base.scales.get(scale) {
            Some(v) => Ok(Some(v.clone())),
            None => Err(refuse(format!(
                "in {} it is an NVFP4 weight's scale, which also holds the quantization's own; convert against \
                 the unquantized (or non-NVFP4) GGUF of the same model",
                base.describe()
            ))),
        },
        None => Err(refuse(format!(
            "{} is a config.json, which does not hold the scale's values; pass `--base` with the model's GGUF",
            base.describe()
        ))),
    }
}

/// α = the c_m = s_m·r_m shared by the most pairs (ties: the smallest), as f32.
fn choose_alpha(pairs: &[LoraPair]) -> f32 {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for p in pairs {
        let c = (p.scaling.factor() * p.rank as f64) as f32;
        *counts.entry(u64::from(c.to_bits())).or_default() += 1;
    }
    let mut best: Option<(f32, usize)> = None;
    for (&bits, &n) in &counts {
        let c = f32::from_bits(bits as u32);
        best = match best {
            Some((bc, bn)) if bn > n || (bn == n && bc <= c) => Some((bc, bn)),
            _ => Some((c, n)),
        };
    }
    best.map_or(1.0, |(c, _)| c)
}

fn heads_for(
    base: &BaseModel,
    pair: &LoraPair,
    target: &Target,
) -> Result<HeadCounts, ConvertError> {
    let headless = |t: RowTransform| {
        matches!(
            t,
            RowTransform::Identity
                | RowTransform::Chunk { .. }
                | RowTransform::Interleaved { .. }
                | RowTransform::Deinterleaved { .. }
        )
    };
    match (target.rows, target.cols) {
        (rows, cols) if headless(rows) && headless(cols) => Ok(HeadCounts::new(1, 1)),
        _ => base.heads.ok_or_else(|| ConvertError::NeedHeads {
            module: pair.module.clone(),
            target: target.name.clone(),
            base: base.describe(),
        }),
    }
}

fn check_tied(pair: &LoraPair, target: &Target, base: &BaseModel) -> Result<(), ConvertError> {
    if base.tied_embeddings != Some(true) {
        return Ok(());
    }
    let why = match target.name.as_str() {
        "token_embd.weight" => {
            "llama.cpp then applies the embedding's LoRA to the output projection too and aborts at the first \
             decode (GGML_ASSERT ggml_can_mul_mat)"
        }
        "output.weight" => {
            "the base has no `output.weight`, so llama.cpp refuses to load this adapter"
        }
        _ => return Ok(()),
    };
    Err(ConvertError::TiedEmbedding {
        module: pair.module.clone(),
        target: target.name.clone(),
        base: base.describe(),
        why,
    })
}

fn plan_one(
    pair: &LoraPair,
    target: &Target,
    base: &BaseModel,
    source: PlannedSource,
) -> Result<PlannedPair, ConvertError> {
    let heads = heads_for(base, pair, target)?;
    let rank = pair.rank;
    // ΔW's rows and columns: B's rows and A's columns, or the other way round when PEFT holds ΔWᵀ
    let (b_rows, a_cols) = if target.transposed {
        (dim(&pair.a.shape, 1), dim(&pair.b.shape, 0))
    } else {
        (dim(&pair.b.shape, 0), dim(&pair.a.shape, 1))
    };
    let kind_name = |k: PairKind| {
        if k == PairKind::Embedding {
            "embedding"
        } else {
            "linear"
        }
    };
    let (expected, is_embedding) = match target.layout {
        Layout::Embedding => ("embedding", true),
        Layout::Linear | Layout::Expert { .. } | Layout::Experts => ("linear", false),
    };
    if (pair.kind == PairKind::Embedding) != is_embedding {
        return Err(ConvertError::KindMismatch {
            module: pair.module.clone(),
            target: target.name.clone(),
            expected,
            found: kind_name(pair.kind),
        });
    }
    let out_features =
        factor::output_rows(target.rows, b_rows, heads).map_err(|source| ConvertError::Rows {
            module: pair.module.clone(),
            target: target.name.clone(),
            source,
        })?;
    // an input-dimension transform is a permutation of A's columns: it must fit them
    factor::output_rows(target.cols, a_cols, heads).map_err(|source| ConvertError::Rows {
        module: pair.module.clone(),
        target: target.name.clone(),
        source,
    })?;
    if pair.packing.n_expert() > 1 && target.layout != Layout::Experts {
        // a stack of experts can only become a stacked `*_exps` tensor
        return Err(ConvertError::KindMismatch {
            module: pair.pattern_key(),
            target: target.name.clone(),
            expected: "single-matrix",
            found: "stacked-experts",
        });
    }
    let (shape, in_features, expert) = match target.layout {
        Layout::Linear => (PairShape::Linear, a_cols, None),
        Layout::Embedding => {
            let vocab = match base.n_vocab {
                Some(v)
                    if (v as usize) < a_cols
                        && base.gguf_arch.as_deref().is_some_and(truncates_vocab) =>
                {
                    v as usize
                }
                _ => a_cols,
            };
            (PairShape::Embedding { vocab }, vocab, None)
        }
        Layout::Expert { index } => {
            let index = index as usize;
            let n_expert = base.n_expert.map_or(index + 1, |e| e as usize);
            if index >= n_expert {
                return Err(ConvertError::ExpertCount {
                    module: pair.module.clone(),
                    expert: index,
                    base: base.describe(),
                    n_expert: n_expert as u64,
                });
            }
            (PairShape::Experts { n_expert }, a_cols, Some(index))
        }
        Layout::Experts => {
            let held = pair.packing.n_expert();
            if let Some(n_expert) = base.n_expert
                && n_expert != held as u64
            {
                return Err(expert_stack(pair, held, base, n_expert));
            }
            (PairShape::Experts { n_expert: held }, a_cols, None)
        }
    };
    let placeholder = TensorSpec {
        name: String::new(),
        dims: Vec::new(),
        ggml_type: GgmlType::F32,
    };
    Ok(PlannedPair {
        target: target.name.clone(),
        block: target.block,
        shape,
        rank,
        in_features,
        out_features,
        sources: vec![PlannedSource { expert, ..source }],
        a: placeholder.clone(),
        b: placeholder,
    })
}

/// Families whose converter drops the config's padding vocabulary rows from `token_embd` (Gemma 3's
/// `n_vocab_real`), so the embedding LoRA's vocabulary must be cut the same way.
fn truncates_vocab(arch: &str) -> bool {
    arch.starts_with("gemma")
}

/// A pair built from the parts of a fused base tensor: the rank is the sum of the parts' ranks, the rows the fused
/// tensor's; each source gets its rank and row block, and its fold becomes s_m·R/α (llama.cpp divides by the whole
/// rank R). Parts without a LoRA are zero rows and take no rank. Pairs without parts are left as they are.
fn lay_out_parts(p: &mut PlannedPair, alpha: f32, pairs: &[LoraPair]) -> Result<(), ConvertError> {
    let Some(first) = p.sources.iter().find_map(|s| s.part) else {
        return Ok(());
    };
    let count = usize::from(first.count);
    let mut ranks: Vec<Option<usize>> = vec![None; count];
    for s in &p.sources {
        let part = s.part.unwrap_or(first);
        let slot = &mut ranks[usize::from(part.index)];
        if part.rows != first.rows || slot.is_some_and(|r| r != part.rank) {
            let listed: Vec<String> = p
                .sources
                .iter()
                .map(|s| format!("{} (rank {})", pairs[s.pair].module, pairs[s.pair].rank))
                .collect();
            return Err(ConvertError::ExpertRanks {
                target: p.target.clone(),
                ranks: listed.join(", "),
            });
        }
        *slot = Some(part.rank);
    }
    let mut offsets = vec![0usize; count];
    let mut total = 0;
    for (i, r) in ranks.iter().enumerate() {
        offsets[i] = total;
        total += r.unwrap_or(0);
    }
    for s in &mut p.sources {
        if let Some(part) = &mut s.part {
            part.rank_offset = offsets[usize::from(part.index)];
            s.fold = s.peft_scaling * total as f64 / f64::from(alpha);
        }
    }
    p.rank = total;
    p.out_features = count * first.rows;
    p.sources
        .sort_by_key(|s| (s.expert, s.part.map(|part| part.index)));
    Ok(())
}

fn merge_expert(
    into: &mut PlannedPair,
    next: PlannedPair,
    pairs: &[LoraPair],
) -> Result<(), ConvertError> {
    if into.sources.iter().any(|s| s.part.is_some())
        || next.sources.iter().any(|s| s.part.is_some())
    {
        // parts of a fused tensor: ranks and rows are checked and laid out once all parts are in (lay_out_parts)
        if into.in_features != next.in_features {
            return Err(ConvertError::ExpertRanks {
                target: into.target.clone(),
                ranks: format!("inputs {} and {}", into.in_features, next.in_features),
            });
        }
        return push_sources(into, next.sources, pairs);
    }
    if into.rank != next.rank
        || into.in_features != next.in_features
        || into.out_features != next.out_features
    {
        let mut ranks: Vec<String> = into
            .sources
            .iter()
            .map(|s| pairs[s.pair].rank.to_string())
            .collect();
        ranks.push(next.rank.to_string());
        return Err(ConvertError::ExpertRanks {
            target: into.target.clone(),
            ranks: ranks.join(", "),
        });
    }
    push_sources(into, next.sources, pairs)?;
    into.sources.sort_by_key(|s| s.expert);
    Ok(())
}

/// Add `sources` to `into`, refusing two that write the same expert (or the whole stack) of the same part.
fn push_sources(
    into: &mut PlannedPair,
    sources: Vec<PlannedSource>,
    pairs: &[LoraPair],
) -> Result<(), ConvertError> {
    for s in sources {
        // a source without an expert index holds the whole stack: nothing else may share its part of the tensor
        let clash = into.sources.iter().find(|x| {
            x.part.map(|p| p.index) == s.part.map(|p| p.index)
                && (x.expert == s.expert || x.expert.is_none() || s.expert.is_none())
        });
        if let Some(dup) = clash {
            return Err(ConvertError::DuplicateTarget {
                target: format!("{} (expert {})", into.target, s.expert.unwrap_or(0)),
                first: pairs[dup.pair].module.clone(),
                second: pairs[s.pair].module.clone(),
            });
        }
        into.sources.push(s);
    }
    Ok(())
}

fn check_experts(
    p: &PlannedPair,
    n_expert: usize,
    base: &BaseModel,
    pairs: &[LoraPair],
) -> Result<(), ConvertError> {
    for s in &p.sources {
        let e = s.expert.unwrap_or(0);
        if e >= n_expert {
            return Err(ConvertError::ExpertCount {
                module: pairs[s.pair].module.clone(),
                expert: e,
                base: base.describe(),
                n_expert: n_expert as u64,
            });
        }
    }
    Ok(())
}

/// ggml `ne` of lora_a and lora_b.
fn ggml_dims(p: &PlannedPair) -> (Vec<u64>, Vec<u64>) {
    let (r, i, o) = (p.rank as u64, p.in_features as u64, p.out_features as u64);
    match p.shape {
        PairShape::Linear => (vec![i, r], vec![r, o]),
        PairShape::Embedding { vocab } => (vec![r, vocab as u64], vec![r, o]),
        PairShape::Experts { n_expert } => {
            (vec![i, r, n_expert as u64], vec![r, o, n_expert as u64])
        }
    }
}

/// Compare the implied base tensor shape with the base GGUF (when we have one).
fn check_base_shape(
    p: &mut PlannedPair,
    base: &BaseModel,
    pairs: &[LoraPair],
) -> Result<(), ConvertError> {
    let Some(tensors) = &base.tensors else {
        return Ok(());
    };
    let module = pairs[p.sources[0].pair].module.clone();
    let Some(found) = tensors.get(&p.target) else {
        if let Some((fused, _, _)) =
            crate::arch::fused_part_of(&p.target, |n| tensors.contains_key(n))
        {
            return Err(ConvertError::FusedInBase {
                module,
                target: p.target.clone(),
                fused,
                base: base.describe(),
            });
        }
        return Err(ConvertError::TargetMissing {
            module,
            target: p.target.clone(),
            base: base.describe(),
            arch: base.gguf_arch.clone().unwrap_or_default(),
            n_tensors: tensors.len(),
        });
    };
    let expected: Vec<u64> = match p.shape {
        PairShape::Linear => vec![p.in_features as u64, p.out_features as u64],
        PairShape::Embedding { vocab } => vec![p.out_features as u64, vocab as u64],
        PairShape::Experts { n_expert: held } => {
            let e = found.get(2).copied().unwrap_or(0);
            if let Some(packed) = p.sources.iter().find(|s| s.expert.is_none())
                && held as u64 != e
            {
                return Err(expert_stack(&pairs[packed.pair], held, base, e));
            }
            // The stack is as deep as the base's expert count: experts without a LoRA are zero-filled.
            if let Some(&deepest) = p
                .sources
                .iter()
                .filter_map(|s| s.expert)
                .collect::<Vec<_>>()
                .iter()
                .max()
                && deepest as u64 >= e
            {
                return Err(ConvertError::ExpertCount {
                    module,
                    expert: deepest,
                    base: base.describe(),
                    n_expert: e,
                });
            }
            p.shape = PairShape::Experts {
                n_expert: e as usize,
            };
            vec![p.in_features as u64, p.out_features as u64, e]
        }
    };
    // ggml pads ne with 1s: a (1, H) HF weight may be stored as ne [H] (Qwen2-MoE's shared_expert_gate)
    let trimmed = |d: &[u64]| {
        let n = d.iter().rposition(|&x| x != 1).map_or(0, |i| i + 1);
        d[..n].to_vec()
    };
    if trimmed(found) != trimmed(&expected) {
        return Err(ConvertError::ShapeMismatch {
            module,
            target: p.target.clone(),
            base: base.describe(),
            expected,
            found: found.clone(),
        });
    }
    Ok(())
}

fn expert_stack(pair: &LoraPair, held: usize, base: &BaseModel, n_expert: u64) -> ConvertError {
    ConvertError::ExpertStack {
        module: pair.pattern_key(),
        held,
        detail: format!(
            "lora_A has {} rows = {held} experts × r {}",
            pair.a.shape.first().copied().unwrap_or(0),
            pair.rank
        ),
        base: base.describe(),
        n_expert,
    }
}

fn dim(shape: &[usize], i: usize) -> usize {
    shape.get(i).copied().unwrap_or(0)
}
