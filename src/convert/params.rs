//! `target_parameters` pairs: which parameter each one adapts, how many experts it holds, and its rank.
//!
//! PEFT wraps each targeted `nn.Parameter` in a `ParamWrapper`; two parameters of one module nest
//! (`…mlp.experts.lora_A` and `…mlp.experts.base_layer.lora_A`), and which one is outside depends on PEFT's
//! iteration order. So a pair is matched to a parameter by shape only: for every parameter the configuration
//! targets on that module, the base (GGUF tensors, or the config's geometry) says its (E, out, in); the pair must
//! have A (E·r, in) and B (out, E·r) with r from `r`/`rank_pattern` for `module.parameter` — PEFT's own key for
//! both patterns (`BaseTuner._inject_parameters`: `current_key = f"{module}.{param}"`). Exactly one parameter must
//! fit; a pair whose in/out fit but whose expert count differs from the base is refused as trained on another model.

use super::base::BaseModel;
use super::error::ConvertError;
use crate::adapter::{Adapter, LoraPair, Packing};
use crate::arch::{Family, Layout, RowTransform};

/// A parameter's shape as the base has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ParamShape {
    in_features: usize,
    out_features: usize,
    /// Experts of a 3-D parameter; None for a 2-D one.
    n_expert: Option<usize>,
    /// PEFT holds ΔWᵀ for it (stored (E, in, out), Llama 4): lora_A is (E·r, out), lora_B (in, E·r).
    transposed: bool,
}

/// Decide every `target_parameters` pair of `adapter` against the base.
pub fn resolve(
    adapter: &mut Adapter,
    family: &Family,
    base: &BaseModel,
) -> Result<(), ConvertError> {
    for i in 0..adapter.pairs.len() {
        if adapter.pairs[i].candidates.is_empty() {
            continue;
        }
        adapter.pairs[i] = resolve_one(adapter, i, family, base)?;
    }
    Ok(())
}

/// Like [`resolve`], but every pair that fits no parameter is taken out of `adapter.pairs` and returned with its
/// refusal, so `inspect` and the manifest can list all of them.
pub fn resolve_all(
    adapter: &mut Adapter,
    family: &Family,
    base: &BaseModel,
) -> Vec<(LoraPair, ConvertError)> {
    let mut refused = Vec::new();
    let mut i = 0;
    while i < adapter.pairs.len() {
        if adapter.pairs[i].candidates.is_empty() {
            i += 1;
            continue;
        }
        match resolve_one(adapter, i, family, base) {
            Ok(pair) => {
                adapter.pairs[i] = pair;
                i += 1;
            }
            Err(e) => refused.push((adapter.pairs.remove(i), e)),
        }
    }
    refused
}

fn resolve_one(
    adapter: &Adapter,
    i: usize,
    family: &Family,
    base: &BaseModel,
) -> Result<LoraPair, ConvertError> {
    let pair = &adapter.pairs[i];
    if is_module_lora(pair, family) {
        let mut out = pair.clone();
        out.candidates.clear();
        return Ok(out);
    }
    let (rows, in_features) = (pair.a.shape[0], pair.in_features());
    let out_features = pair.out_features();
    let mut fits = Vec::new();
    let mut unknown = Vec::new();
    let mut notes = Vec::new();
    let mut other_count = None;
    for param in &pair.candidates {
        let key = format!("{}.{param}", pair.module);
        let scaling = adapter.config.scaling_for(&key);
        let r = scaling.rank as usize;
        let expected = match expected_shape(family, base, &pair.module, param) {
            Ok(e) => e,
            Err(e) => {
                notes.push(format!("`{param}`: {e}"));
                continue;
            }
        };
        let Some(x) = expected else {
            if r > 0 && rows.is_multiple_of(r) {
                unknown.push((param.clone(), scaling, rows / r));
            }
            continue;
        };
        let e = x.n_expert.unwrap_or(1);
        let (in_features, out_features) = if x.transposed {
            (out_features, in_features)
        } else {
            (in_features, out_features)
        };
        if x.in_features != in_features || x.out_features != out_features {
            notes.push(format!(
                "`{param}` is {} × {} per expert in the base",
                x.out_features, x.in_features
            ));
        } else if rows == e * r {
            fits.push((param.clone(), scaling, x.n_expert));
        } else if x.n_expert.is_some() && r > 0 && rows.is_multiple_of(r) {
            other_count = Some((param.clone(), rows / r, e, r));
        } else {
            notes.push(format!(
                "`{param}` with r = {r} needs lora_A ({}, {in_features})",
                e * r
            ));
        }
    }
    let candidates = || {
        pair.candidates
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (parameter, scaling, n_expert) = match (fits.len(), unknown.len()) {
        (1, _) => {
            let (p, s, e) = fits.remove(0);
            (p, s, e)
        }
        (0, 1) if other_count.is_none() && notes.is_empty() => {
            let (p, s, e) = unknown.remove(0);
            (p, s, (e > 1).then_some(e))
        }
        (0, 0) if other_count.is_some() => {
            let (param, held, n_expert, r) = other_count.unwrap_or_default();
            return Err(ConvertError::ExpertStack {
                module: format!("{}.{param}", pair.module),
                held,
                detail: format!("lora_A has {rows} rows = {held} experts × r {r}"),
                base: base.describe(),
                n_expert: n_expert as u64,
            });
        }
        (0, 0) => {
            return Err(ConvertError::ParameterShape {
                saved_as: pair.saved_as.clone(),
                a_shape: pair.a.shape.clone(),
                b_shape: pair.b.shape.clone(),
                candidates: candidates(),
                why: notes.join("; "),
            });
        }
        _ => {
            return Err(ConvertError::ParameterAmbiguous {
                saved_as: pair.saved_as.clone(),
                candidates: candidates(),
                base: base.describe(),
            });
        }
    };
    let mut out = pair.clone();
    out.rank = scaling.rank as usize;
    out.scaling = scaling;
    out.packing = match n_expert {
        Some(n_expert) => Packing::PeftExperts { n_expert },
        None => Packing::Single,
    };
    out.parameter = Some(parameter);
    out.candidates.clear();
    Ok(out)
}

/// A bare `target_parameters` entry (`down_proj`, as peft 0.21.2 writes when it rewrites transformers-4 MoE
/// `target_modules` for transformers 5) names a parameter of every module by its text; peft only wraps modules
/// that really hold it. A pair saved under its own module path, with the module's rank, on a module none of whose
/// candidate parameters has a GGUF tensor (`self_attn.o_proj.down_proj`), is the module's own LoRA.
fn is_module_lora(pair: &LoraPair, family: &Family) -> bool {
    pair.module == pair.saved_as
        && pair.rank == pair.scaling.rank as usize
        && pair
            .candidates
            .iter()
            .all(|param| family.map_parameter(&pair.module, param).is_err())
}

/// The (E, out, in) of `module.param` in the base, from the tensors llama.cpp's converter makes of it (a fused
/// gate|up parameter is the sum of its row blocks). None when the base description has no shape for it.
fn expected_shape(
    family: &Family,
    base: &BaseModel,
    module: &str,
    param: &str,
) -> Result<Option<ParamShape>, crate::arch::MapError> {
    let targets =
        crate::arch::fused_for_base(family.map_parameter(module, param)?, |n| base.has_tensor(n));
    let mut shape: Option<ParamShape> = None;
    for t in &targets {
        let Some(dims) = base.target_dims(&t.name) else {
            return Ok(None);
        };
        let d = |i: usize| dims.get(i).copied().unwrap_or(1) as usize;
        let rows = match t.rows {
            RowTransform::Chunk { count, .. } | RowTransform::Interleaved { count, .. } => {
                d(1) * usize::from(count)
            }
            _ => d(1),
        };
        let n_expert = matches!(t.layout, Layout::Experts | Layout::Expert { .. }).then(|| d(2));
        let this = ParamShape {
            in_features: d(0),
            out_features: rows,
            n_expert,
            transposed: t.transposed,
        };
        match shape {
            None => shape = Some(this),
            // the parts of a split must agree (gate and up of one layer); otherwise the base is not one we know
            Some(s) if s == this => {}
            Some(_) => return Ok(None),
        }
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::plan::{self, OutType};
    use crate::convert::{ConvertError, base::BaseModel};
    use std::path::Path;

    /// A synthetic PEFT adapter (config + safetensors with small deterministic values) in `dir`.
    fn write_adapter(dir: &Path, config: &str, tensors: &[(&str, &[usize])]) {
        std::fs::write(dir.join("adapter_config.json"), config).unwrap();
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let bytes = (0..n)
                    .flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes())
                    .collect();
                (format!("base_model.model.{name}"), bytes, shape.to_vec())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
            .iter()
            .map(|(k, b, s)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap();
                (k.clone(), v)
            })
            .collect();
        let bytes = safetensors::tensor::serialize(views, None).unwrap();
        std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
    }

    fn base_config(dir: &Path, json: &str) -> BaseModel {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        BaseModel::from_hf_config(&path).unwrap()
    }

    const MIXTRAL: &str = r#"{"architectures":["MixtralForCausalLM"],"hidden_size":32,"intermediate_size":24,
        "num_attention_heads":4,"num_key_value_heads":2,"num_local_experts":4,"vocab_size":272}"#;
    const FUSED: &str = r#"{"r":4,"lora_alpha":8,"target_modules":[],
        "target_parameters":["mlp.experts.down_proj","mlp.experts.gate_up_proj"]}"#;

    fn prepare(config: &str, base: &str, tensors: &[(&str, &[usize])]) -> Result<(), ConvertError> {
        let dir = tempfile::tempdir().unwrap();
        write_adapter(dir.path(), config, tensors);
        let base = base_config(dir.path(), base);
        let family = crate::convert::resolve_family(None, &base)?;
        let mut adapter = crate::peft::open(dir.path())?;
        resolve(&mut adapter, family, &base)?;
        let got: Vec<(String, Option<String>, Packing, usize)> = adapter
            .pairs
            .iter()
            .map(|p| (p.saved_as.clone(), p.parameter.clone(), p.packing, p.rank))
            .collect();
        // gate_up_proj is (E, 48, 32), down_proj (E, 32, 24): told apart by shape, whatever the nesting
        assert_eq!(
            got,
            [
                (
                    "model.layers.0.mlp.experts".into(),
                    Some("gate_up_proj".into()),
                    Packing::PeftExperts { n_expert: 4 },
                    4
                ),
                (
                    "model.layers.0.mlp.experts.base_layer".into(),
                    Some("down_proj".into()),
                    Packing::PeftExperts { n_expert: 4 },
                    4
                ),
            ]
        );
        plan::plan(&adapter, family, &base, OutType::F32)?;
        Ok(())
    }

    /// PEFT nests the second parameter under `base_layer`; here the nesting is the opposite of what peft 0.21.2
    /// writes for these two names, and each pair still finds its parameter.
    #[test]
    fn nested_parameters_are_told_apart_by_shape_not_by_order() {
        prepare(
            FUSED,
            MIXTRAL,
            &[
                ("model.layers.0.mlp.experts.lora_A.weight", &[16, 32]),
                ("model.layers.0.mlp.experts.lora_B.weight", &[48, 16]),
                (
                    "model.layers.0.mlp.experts.base_layer.lora_A.weight",
                    &[16, 24],
                ),
                (
                    "model.layers.0.mlp.experts.base_layer.lora_B.weight",
                    &[32, 16],
                ),
            ],
        )
        .unwrap();
    }

    /// peft 0.21.2 rewrites the transformers-4 MoE `target_modules` gate_proj/up_proj/down_proj into the bare
    /// `target_parameters` `gate_up_proj`/`down_proj`: by its text `down_proj` names a parameter of every module,
    /// but `self_attn.o_proj` holds none, so its pair is a module LoRA; the experts still resolve by shape.
    #[test]
    fn bare_target_parameters_leave_module_loras_alone() {
        let dir = tempfile::tempdir().unwrap();
        write_adapter(
            dir.path(),
            r#"{"r":4,"lora_alpha":8,"target_modules":["o_proj"],"target_parameters":["down_proj"]}"#,
            &[
                ("model.layers.0.self_attn.o_proj.lora_A.weight", &[4, 32]),
                ("model.layers.0.self_attn.o_proj.lora_B.weight", &[32, 4]),
                ("model.layers.0.mlp.experts.lora_A.weight", &[16, 24]),
                ("model.layers.0.mlp.experts.lora_B.weight", &[32, 16]),
            ],
        );
        let base = base_config(dir.path(), MIXTRAL);
        let family = crate::convert::resolve_family(None, &base).unwrap();
        let mut adapter = crate::peft::open(dir.path()).unwrap();
        resolve(&mut adapter, family, &base).unwrap();
        let got: Vec<(&str, Option<&str>, Packing)> = adapter
            .pairs
            .iter()
            .map(|p| (p.module.as_str(), p.parameter.as_deref(), p.packing))
            .collect();
        let want = [
            (
                "model.layers.0.mlp.experts",
                Some("down_proj"),
                Packing::PeftExperts { n_expert: 4 },
            ),
            ("model.layers.0.self_attn.o_proj", None, Packing::Single),
        ];
        let mut got = got;
        got.sort_by_key(|g| g.0);
        assert_eq!(got, want);
        let plan = plan::plan(&adapter, family, &base, OutType::F32).unwrap();
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn expert_count_differing_from_the_config_is_refused() {
        let eight = MIXTRAL.replace(r#""num_local_experts":4"#, r#""num_local_experts":8"#);
        let e = prepare(
            FUSED,
            &eight,
            &[
                ("model.layers.0.mlp.experts.lora_A.weight", &[16, 32]),
                ("model.layers.0.mlp.experts.lora_B.weight", &[48, 16]),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "`model.layers.0.mlp.experts.gate_up_proj`: the LoRA holds 4 experts (lora_A has 16 rows = 4 \
                 experts × r 4) but the base "
            ) && e.contains("has 8 experts per layer"),
            "{e}"
        );
    }

    #[test]
    fn parameters_without_a_shape_in_the_base_are_ambiguous() {
        // no intermediate_size: the config cannot say which parameter is which
        let no_ff = MIXTRAL.replace(r#""intermediate_size":24,"#, "");
        let e = prepare(
            FUSED,
            &no_ff,
            &[
                ("model.layers.0.mlp.experts.lora_A.weight", &[16, 32]),
                ("model.layers.0.mlp.experts.lora_B.weight", &[48, 16]),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "fit more than one of the parameters target_parameters names for this module \
                        (`down_proj`, `gate_up_proj`)"
            ) && e.contains("pass `--base BASE.gguf`"),
            "{e}"
        );
    }

    #[test]
    fn a_pair_fitting_no_parameter_names_what_each_would_need() {
        let e = prepare(
            FUSED,
            MIXTRAL,
            &[
                ("model.layers.0.mlp.experts.lora_A.weight", &[16, 30]),
                ("model.layers.0.mlp.experts.lora_B.weight", &[48, 16]),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("fits none of the parameters")
                && e.contains("`gate_up_proj` is 48 × 32 per expert in the base"),
            "{e}"
        );
    }

    /// DeepSeek-V2's MLA graph multiplies the attention weights without LoRA: such pairs are refused by name, or
    /// left out with a warning naming them (`--drop-ignored-pairs`); kv_b_proj (split and transposed by llama.cpp)
    /// is refused.
    #[test]
    fn deepseek2_attention_is_refused_or_dropped_and_kv_b_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_config(
            dir.path(),
            r#"{"architectures":["DeepseekV2ForCausalLM"],"hidden_size":32,"num_attention_heads":4,
                "vocab_size":272,"n_routed_experts":4,"moe_intermediate_size":24}"#,
        );
        let family = crate::convert::resolve_family(None, &base).unwrap();
        write_adapter(
            dir.path(),
            r#"{"r":4,"lora_alpha":8,"target_modules":["q_a_proj","o_proj"]}"#,
            &[
                ("model.layers.0.self_attn.q_a_proj.lora_A.weight", &[4, 32]),
                ("model.layers.0.self_attn.q_a_proj.lora_B.weight", &[16, 4]),
                ("model.layers.0.self_attn.o_proj.lora_A.weight", &[4, 32]),
                ("model.layers.0.self_attn.o_proj.lora_B.weight", &[32, 4]),
            ],
        );
        let adapter = crate::peft::open(dir.path()).unwrap();
        let e = plan::plan(&adapter, family, &base, OutType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "module `model.layers.0.self_attn.q_a_proj` → `blk.0.attn_q_a.weight`: llama.cpp's `deepseek2` \
                 graph multiplies this tensor without LoRA"
            ),
            "{e}"
        );
        let drop = crate::convert::Quirks {
            ignored_pairs: crate::convert::IgnoredPairs::Drop,
            ..Default::default()
        };
        let (plan, problems) = plan::plan_all(&adapter, family, &base, OutType::F32, &drop);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert!(
            plan.warnings[0].starts_with(
                "`blk.0.attn_q_a.weight` (from `model.layers.0.self_attn.q_a_proj`): llama.cpp's deepseek2 graph \
                 does not apply LoRA to this tensor; the pair is left out"
            ),
            "{}",
            plan.warnings[0]
        );
        let targets: Vec<&str> = plan.pairs.iter().map(|p| p.target.as_str()).collect();
        assert_eq!(targets, ["blk.0.attn_output.weight"]);
        write_adapter(
            dir.path(),
            r#"{"r":4,"lora_alpha":8,"target_modules":["kv_b_proj"]}"#,
            &[
                ("model.layers.0.self_attn.kv_b_proj.lora_A.weight", &[4, 16]),
                ("model.layers.0.self_attn.kv_b_proj.lora_B.weight", &[64, 4]),
            ],
        );
        let adapter = crate::peft::open(dir.path()).unwrap();
        let e = plan::plan(&adapter, family, &base, OutType::F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("retrain without kv_b_proj"), "{e}");
    }

    /// On a base made with --fuse-gate-up-exps, transformers-5's fused gate_up_proj becomes one ffn_gate_up_exps
    /// pair, and a LoRA on gate_proj alone (here per-expert Linear modules) becomes its gate block: rows 0..24 of
    /// the fused 48, its own rank, the up rows zero.
    #[test]
    fn gate_experts_alone_fill_their_block_of_a_fused_base_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bases");
        let base = BaseModel::from_gguf(&fixtures.join("qwen35moe-fused/base.gguf")).unwrap();
        let family = crate::convert::resolve_family(None, &base).unwrap();
        write_adapter(
            dir.path(),
            r#"{"r":4,"lora_alpha":8,"target_modules":[],"target_parameters":["mlp.experts.gate_up_proj"]}"#,
            &[
                ("model.layers.1.mlp.experts.lora_A.weight", &[16, 32]),
                ("model.layers.1.mlp.experts.lora_B.weight", &[48, 16]),
            ],
        );
        let mut adapter = crate::peft::open(dir.path()).unwrap();
        resolve(&mut adapter, family, &base).unwrap();
        let plan = plan::plan(&adapter, family, &base, OutType::F32).unwrap();
        let targets: Vec<(&str, &[u64])> = plan
            .pairs
            .iter()
            .map(|p| (p.a.name.as_str(), p.a.dims.as_slice()))
            .collect();
        assert_eq!(
            targets,
            [("blk.1.ffn_gate_up_exps.weight.lora_a", &[32u64, 4, 4][..])]
        );
        write_adapter(
            dir.path(),
            r#"{"r":4,"lora_alpha":8,"target_modules":["gate_proj"]}"#,
            &[
                (
                    "model.layers.1.mlp.experts.0.gate_proj.lora_A.weight",
                    &[4, 32],
                ),
                (
                    "model.layers.1.mlp.experts.0.gate_proj.lora_B.weight",
                    &[24, 4],
                ),
            ],
        );
        let adapter = crate::peft::open(dir.path()).unwrap();
        let plan = plan::plan(&adapter, family, &base, OutType::F32).unwrap();
        assert_eq!(plan.pairs.len(), 1);
        let p = &plan.pairs[0];
        assert_eq!(p.b.name, "blk.1.ffn_gate_up_exps.weight.lora_b");
        assert_eq!(p.b.dims, [4, 48, 4]);
        let part = p.sources[0].part.unwrap();
        assert_eq!(
            (
                part.index,
                part.rows,
                part.rank,
                part.rank_offset,
                part.row_offset
            ),
            (0, 24, 4, 0, 0)
        );
    }
}
