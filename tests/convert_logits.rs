//! The proof that conversion is exact: each fixture adapter, converted by `lora-convert`, loaded in real llama.cpp
//! on its base, gives the logits PyTorch+PEFT gave — at scale 1.0 and at 0.5 (every PEFT scaling halved).
//! Tolerance: the adapted logits may differ from PyTorch by at most twice what llama.cpp's base model alone differs
//! (kernels differ; the adapter must not add error of its own), plus the output type's rounding for f16/bf16/q8_0.

use std::path::Path;

use crate::common::*;
use lora_gguf::convert::{self, Options, OutType};
use lora_gguf::validate::engine::logits_for_tokens;

struct Outcome {
    base_err: f32,
    err_1: f32,
    err_05: f32,
    effect: f32,
}

fn run_with(
    case: &str,
    outtype: OutType,
    dir: &Path,
    quirks: lora_gguf::convert::Quirks,
) -> Outcome {
    let base = base_of(case);
    let out = dir.join(format!("{}-{outtype:?}.gguf", case.replace('/', "-")));
    convert::convert(&Options {
        adapter_dir: case_dir(case),
        output: out.clone(),
        base: Some(base_gguf(&base)),
        base_config: None,
        outtype,
        arch: None,
        force: true,
        verify: true,
        threads: Some(1),
        quirks,
    })
    .unwrap_or_else(|e| panic!("{case}: {e}"));
    let reference = case_dir(case).join("reference.safetensors");
    let (_, tokens) = read_tensor(&reference, "tokens");
    let tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let (_, torch_base) = read_tensor(&reference, "logits_base");
    let (_, torch_1) = read_tensor(&reference, "logits_scale_1");
    let (_, torch_05) = read_tensor(&reference, "logits_scale_0_5");
    let got = logits_for_tokens(&base_gguf(&base), Some(&out), &[1.0, 0.5], &tokens, 2)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    Outcome {
        base_err: max_abs_diff(&got[0], &torch_base),
        err_1: max_abs_diff(&got[1], &torch_1),
        err_05: max_abs_diff(&got[2], &torch_05),
        effect: max_abs_diff(&torch_1, &torch_base),
    }
}

fn check(case: &str, outtype: OutType, extra: f32) -> Outcome {
    check_with(case, outtype, extra, Default::default())
}

fn check_with(
    case: &str,
    outtype: OutType,
    extra: f32,
    quirks: lora_gguf::convert::Quirks,
) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let o = run_with(case, outtype, dir.path(), quirks);
    let limit = 2.0 * o.base_err.max(1e-4) + extra;
    eprintln!(
        "{case:20} {outtype:?}: base |Δ| {:.2e}, scale 1 |Δ| {:.2e}, scale 0.5 |Δ| {:.2e}, limit {:.2e}, adapter effect {:.2}",
        o.base_err, o.err_1, o.err_05, limit, o.effect
    );
    assert!(
        o.effect > 0.1,
        "{case}: the fixture adapter barely moves the logits ({})",
        o.effect
    );
    assert!(
        o.err_1 <= limit,
        "{case} {outtype:?} scale 1.0: |Δlogit| {} > {limit}",
        o.err_1
    );
    assert!(
        o.err_05 <= limit,
        "{case} {outtype:?} scale 0.5: |Δlogit| {} > {limit}",
        o.err_05
    );
    o
}

/// An mlx-lm fixture: the references are mlx-lm's own logits (the adapter loaded by `mlx_lm.utils.load`, every
/// LoRA layer's `scale` halved for 0.5), under the same tolerance as PEFT. Its base must be the GGUF base: mlx-lm
/// reads `rope_theta` only at the top level of config.json and silently falls back to its own default, which
/// would give another model — and a base error that widens the limit. So mlx-lm's base logits must equal
/// PyTorch's for the same base (the PEFT fixture's reference), independently of llama.cpp's kernels.
fn check_mlx(case: &str) {
    let base = base_of(case);
    let (_, mlx_base) = read_tensor(&case_dir(case).join("reference.safetensors"), "logits_base");
    let (_, torch_base) = read_tensor(
        &case_dir(&base).join("reference.safetensors"),
        "logits_base",
    );
    let same = max_abs_diff(&mlx_base, &torch_base);
    assert!(
        same < 1e-4,
        "{case}: mlx-lm's base logits differ from PyTorch's by {same} — the fixture model is not the `{base}` base"
    );
    check(case, OutType::F32, 0.0);
}

macro_rules! mlx_tests {
    ($($name:ident => $case:literal,)*) => {
        $(
            #[test]
            fn $name() {
                check_mlx($case);
            }
        )*
    };
}

mlx_tests! {
    mlx_llama_defaults => "mlx-llama",
    mlx_llama_keys_num_layers_embedding_lm_head => "mlx-llama-keys",
    mlx_qwen2 => "mlx-qwen2",
    mlx_gemma3 => "mlx-gemma3",
    mlx_phi3_fused_projections => "mlx-phi3",
    mlx_mixtral_switch_linear_experts_and_router => "mlx-mixtral",
    mlx_qwen3moe_switch_linear_keys => "mlx-qwen3moe",
    mlx_qwen35_gated_delta_net => "mlx-qwen35",
    mlx_qwen35moe_switch_glu => "mlx-qwen35moe",
    mlx_gemma4 => "mlx-gemma4",
    mlx_gemma4moe_switch_glu_on_the_fused_base => "mlx-gemma4moe",
    mlx_smollm3 => "mlx-smollm3",
    mlx_lfm2 => "mlx-lfm2",
}

macro_rules! family_tests {
    ($($name:ident => $case:literal,)*) => {
        $(
            #[test]
            fn $name() {
                check($case, OutType::F32, 0.0);
            }
        )*
    };
}

family_tests! {
    llama => "llama",
    mistral => "mistral",
    qwen2 => "qwen2",
    qwen3 => "qwen3",
    gemma2 => "gemma2",
    gemma3 => "gemma3",
    phi3 => "phi3",
    gptneox => "gptneox",
    falcon => "falcon",
    starcoder2 => "starcoder2",
    gpt2_fan_in_fan_out => "gpt2",
    granite => "granite",
    stablelm => "stablelm",
    olmo2 => "olmo2",
    qwen35_gated_delta_net_and_full_attention => "qwen35",
    gemma4_sliding_and_global_attention => "gemma4",
    smollm3_nope_layers => "smollm3",
    lfm2_short_convolution_and_attention => "lfm2",
    llama_rslora => "llama-rslora",
    llama_rank_and_alpha_patterns => "llama-patterns",
    llama_embed_tokens_and_lm_head => "llama-embed-lmhead",
    llama_bf16_adapter => "llama-bf16",
    llama_f16_adapter => "llama-f16",
    llama_layers_to_transform => "llama-layers",
    llama_float_alpha => "llama-float-alpha",
    mixtral_fused_experts => "mixtral",
    qwen2moe_router_and_shared_expert => "qwen2moe",
    qwen3moe_expert_rank_and_alpha_patterns => "qwen3moe",
    olmoe_down_proj_only_rslora => "olmoe-partial",
    mixtral_legacy_per_expert_linear => "mixtral-legacy",
    deepseek2_mla_base_dense_shared_and_routed_experts => "deepseek2",
    qwen35moe_delta_net_experts_router_shared_expert => "qwen35moe",
    gptoss_interleaved_gate_up_experts_and_router => "gptoss",
    glm4moe_peft_rewrite_with_rank_and_alpha_patterns => "glm4moe",
    llama4_experts_stored_in_out_and_shared_expert => "llama4",
    qwen35moe_fused_gate_up_exps_base => "qwen35moe-fused",
    // Other trainers (fixtures/generate_trainers.py): torchtune's reference is torchtune's own forward pass.
    torchtune_llama_peft_export => "torchtune-llama",
    unsloth_llama => "unsloth-llama",
    llamafactory_pissa_converted => "llamafactory-pissa/pissa_converted",
}

/// mlx-lm's Qwen3.5-MoE adapter has separate gate_proj and up_proj LoRAs on the experts; on the base converted with
/// --fuse-gate-up-exps (the same model) they become one block-diagonal ffn_gate_up_exps pair of twice the rank,
/// whose logits equal mlx-lm's as on the split base.
#[test]
fn mlx_qwen35moe_gate_and_up_become_one_block_diagonal_pair_on_a_fused_base() {
    let case = "mlx-qwen35moe";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fused.gguf");
    let base = base_gguf("qwen35moe-fused");
    convert::convert(&Options {
        adapter_dir: case_dir(case),
        output: out.clone(),
        base: Some(base.clone()),
        base_config: None,
        outtype: OutType::F32,
        arch: None,
        force: true,
        verify: true,
        threads: Some(1),
        quirks: Default::default(),
    })
    .unwrap_or_else(|e| panic!("{case}: {e}"));
    let written = lora_gguf::gguf::GgufFile::open(&out).unwrap();
    let gate_up = written
        .tensors
        .iter()
        .find(|t| t.name == "blk.1.ffn_gate_up_exps.weight.lora_b")
        .expect("a fused pair");
    assert_eq!(
        gate_up.dims,
        [8, 48, 4],
        "rank 4 + 4, rows 24 + 24, 4 experts"
    );
    let reference = case_dir(case).join("reference.safetensors");
    let (_, tokens) = read_tensor(&reference, "tokens");
    let tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let (_, mlx_base) = read_tensor(&reference, "logits_base");
    let got = logits_for_tokens(&base, Some(&out), &[1.0, 0.5], &tokens, 2).unwrap();
    let limit = 2.0 * max_abs_diff(&got[0], &mlx_base).max(1e-4);
    for (i, key) in ["logits_scale_1", "logits_scale_0_5"].iter().enumerate() {
        let err = max_abs_diff(&got[i + 1], &read_tensor(&reference, key).1);
        eprintln!("{case} on the fused base, {key}: |Δ| {err:.2e}, limit {limit:.2e}");
        assert!(
            err <= limit,
            "{case} on the fused base, {key}: |Δlogit| {err} > {limit}"
        );
    }
}

/// Pairs whose tensor llama.cpp's graph multiplies without LoRA (`no_effect` in case.json: DeepSeek-V2's MLA
/// projections attn_q_a, attn_q_b, attn_kv_a_mqa; Gemma 4's per_layer_model_proj) are refused by default (the
/// refusal itself is checked with every refused case in convert_cli). Written anyway (`IgnoredPairs::Keep`),
/// llama.cpp gives PyTorch's logits with exactly those pairs off (`logits_applied_*`) — so its graph ignores them —
/// and misses PyTorch's logits with every pair on by far; `--drop-ignored-pairs` gives the same logits without them.
fn ignored_pairs_have_no_effect(case: &str) {
    use lora_gguf::convert::{IgnoredPairs, Quirks};
    let reference = case_dir(case).join("reference.safetensors");
    let (_, tokens) = read_tensor(&reference, "tokens");
    let tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let (_, torch_base) = read_tensor(&reference, "logits_base");
    let (_, applied_1) = read_tensor(&reference, "logits_applied_scale_1");
    let (_, applied_05) = read_tensor(&reference, "logits_applied_scale_0_5");
    let applied_effect = max_abs_diff(&applied_1, &torch_base);
    let ignored_effect = max_abs_diff(&applied_1, &read_tensor(&reference, "logits_scale_1").1);
    assert!(
        applied_effect > 0.1 && ignored_effect > 0.1,
        "{case}: the fixture must move the logits both with and without the ignored pairs \
         ({applied_effect}, {ignored_effect})"
    );
    for how in [IgnoredPairs::Keep, IgnoredPairs::Drop] {
        let dir = tempfile::tempdir().unwrap();
        let quirks = Quirks {
            ignored_pairs: how,
            ..Default::default()
        };
        let o = run_with(case, OutType::F32, dir.path(), quirks);
        let out = dir.path().join(format!("{case}-F32.gguf"));
        let got = logits_for_tokens(
            &base_gguf(&base_of(case)),
            Some(&out),
            &[1.0, 0.5],
            &tokens,
            2,
        )
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        let (err_1, err_05) = (
            max_abs_diff(&got[1], &applied_1),
            max_abs_diff(&got[2], &applied_05),
        );
        let limit = 2.0 * o.base_err.max(1e-4);
        eprintln!(
            "{case} {how:?}: base |Δ| {:.2e}; vs applied-only PyTorch: scale 1 |Δ| {err_1:.2e}, scale 0.5 |Δ| \
             {err_05:.2e}, limit {limit:.2e}; vs every pair applied: scale 1 |Δ| {:.2}, scale 0.5 |Δ| {:.2}; \
             effect of the applied pairs {applied_effect:.2}, of the ignored ones {ignored_effect:.2}",
            o.base_err, o.err_1, o.err_05
        );
        assert!(
            err_1 <= limit,
            "{case} {how:?} scale 1.0: |Δlogit| {err_1} > {limit}"
        );
        assert!(
            err_05 <= limit,
            "{case} {how:?} scale 0.5: |Δlogit| {err_05} > {limit}"
        );
        assert!(
            o.err_1 > 10.0 * limit && o.err_05 > 10.0 * limit,
            "{case}: llama.cpp came close to PyTorch with the ignored pairs applied ({}, {}): does its graph apply \
             them now?",
            o.err_1,
            o.err_05
        );
    }
}

#[test]
fn deepseek2_mla_ignored_pairs_have_no_effect_in_llama_cpp() {
    ignored_pairs_have_no_effect("deepseek2-mla");
}

#[test]
fn gemma4_e2b_per_layer_model_projection_has_no_effect_in_llama_cpp() {
    ignored_pairs_have_no_effect("gemma4-e2b");
}

/// Gemma 4's router scales each expert's output by per_expert_scale, which llama.cpp applies to the experts' base
/// matmul only (`ffn_down_exps.scale`): lora-convert folds it into ffn_down_exps.lora_b. The same file with the
/// fold taken out again misses PyTorch's logits by far more than the limit.
#[test]
fn gemma4moe_per_expert_scale_must_reach_lora_b() {
    let case = "gemma4moe";
    let o = check(case, OutType::F32, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    convert_case(case, OutType::F32, &good, false);
    let base = lora_gguf::gguf::GgufFile::open(&base_gguf(&base_of(case))).unwrap();
    let bad = dir.path().join("unfolded.gguf");
    let mut unfolded = 0;
    rewrite_gguf(
        &good,
        &bad,
        |_, _| true,
        |name, bytes| {
            let Some(stem) = name
                .strip_suffix(".weight.lora_b")
                .filter(|s| s.ends_with("ffn_down_exps"))
            else {
                return;
            };
            let Ok(scale) = base.read_tensor_f32(&format!("{stem}.scale")) else {
                return;
            };
            let per_expert = bytes.len() / 4 / scale.len();
            for (i, c) in bytes.chunks_exact_mut(4).enumerate() {
                let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) / scale[i / per_expert];
                c.copy_from_slice(&x.to_le_bytes());
            }
            unfolded += 1;
        },
    );
    assert_eq!(unfolded, 2, "one ffn_down_exps pair per layer");
    let reference = case_dir(case).join("reference.safetensors");
    let (_, tokens) = read_tensor(&reference, "tokens");
    let tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let (_, torch_1) = read_tensor(&reference, "logits_scale_1");
    let got =
        logits_for_tokens(&base_gguf(&base_of(case)), Some(&bad), &[1.0], &tokens, 2).unwrap();
    let err = max_abs_diff(&got[1], &torch_1);
    let limit = 2.0 * o.base_err.max(1e-4);
    assert!(
        err > 10.0 * limit,
        "an adapter without the per-expert scale was not detected (|Δlogit| {err}, limit {limit})"
    );
}

/// torchtune's Qwen2 export has q/k lora_B rows permuted as for Llama. `--torchtune-qwen2 undo` gives torchtune's
/// own logits; the file as saved (what PEFT runs) misses them by far more than the tolerance.
#[test]
fn torchtune_qwen2_undo_matches_torchtune_and_as_saved_does_not() {
    use lora_gguf::convert::{Quirks, TorchtuneQwen2};
    let undo = Quirks {
        torchtune_qwen2: Some(TorchtuneQwen2::Undo),
        ..Default::default()
    };
    check_with("torchtune-qwen2", OutType::F32, 0.0, undo);
    let dir = tempfile::tempdir().unwrap();
    let as_saved = run_with(
        "torchtune-qwen2",
        OutType::F32,
        dir.path(),
        Quirks {
            torchtune_qwen2: Some(TorchtuneQwen2::AsSaved),
            ..Default::default()
        },
    );
    assert!(
        as_saved.err_1 > 0.5,
        "the torchtune Qwen2 export as saved should miss torchtune's logits (|Δ| {})",
        as_saved.err_1
    );
}

#[test]
fn llama_output_types_within_their_rounding() {
    check("llama", OutType::F16, 1e-2);
    check("llama", OutType::Bf16, 6e-2);
    check("llama", OutType::Q8_0, 6e-2);
}

#[test]
fn every_ok_fixture_has_a_logits_test() {
    let listed = [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3",
        "phi3",
        "gptneox",
        "falcon",
        "starcoder2",
        "gpt2",
        "granite",
        "stablelm",
        "olmo2",
        "qwen35",
        "gemma4",
        "gemma4moe",
        "smollm3",
        "lfm2",
        "glm4moe",
        "llama4",
        "llama-rslora",
        "llama-patterns",
        "llama-embed-lmhead",
        "llama-bf16",
        "llama-f16",
        "llama-layers",
        "llama-float-alpha",
        "mixtral",
        "qwen2moe",
        "qwen3moe",
        "olmoe-partial",
        "mixtral-legacy",
        "deepseek2",
        "deepseek2-mla",
        "qwen35moe",
        "qwen35moe-fused",
        "gptoss",
        "mlx-llama",
        "mlx-llama-keys",
        "mlx-qwen2",
        "mlx-gemma3",
        "mlx-phi3",
        "mlx-mixtral",
        "mlx-qwen3moe",
        "mlx-qwen35",
        "mlx-qwen35moe",
        "mlx-gemma4",
        "mlx-gemma4moe",
        "mlx-smollm3",
        "mlx-lfm2",
        "torchtune-llama",
        "torchtune-qwen2",
        "unsloth-llama",
        "llamafactory-pissa/pissa_converted",
    ];
    // cases one level down too (LLaMA-Factory's output directory holds its PiSSA sub-adapters)
    let mut ok = cases("ok");
    for case in cases("refused").into_iter().chain(cases("ok")) {
        for sub in std::fs::read_dir(case_dir(&case)).unwrap().flatten() {
            let nested = format!("{case}/{}", sub.file_name().to_string_lossy());
            if sub.path().join("case.json").is_file() && case_info(&nested)["expect"] == "ok" {
                ok.push(nested);
            }
        }
    }
    assert!(ok.iter().any(|c| c == "llamafactory-pissa/pissa_converted"));
    for case in ok {
        assert!(
            listed.contains(&case.as_str()),
            "fixture `{case}` has no logits test"
        );
    }
}

/// The tolerance above catches a real scaling bug: the same rsLoRA adapter with the α llama.cpp's own converter
/// writes (raw `lora_alpha`, so the runtime divides by r instead of √r) misses PyTorch by far more than the limit.
#[test]
fn rslora_with_the_reference_converters_alpha_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    convert_case("llama-rslora", OutType::F32, &good, false);
    let bad = dir.path().join("bad.gguf");
    rewrite_gguf(
        &good,
        &bad,
        |k, v| {
            if k == "adapter.lora.alpha" {
                *v = lora_gguf::gguf::Value::F32(16.0);
            }
            true
        },
        |_, _| {},
    );
    let err = logits_error_at_scale_1("llama-rslora", &bad);
    assert!(
        err > 0.1,
        "an under-scaled rsLoRA adapter was not detected (|Δlogit| {err})"
    );
}

/// Largest |Δlogit| between `adapter` at scale 1 in llama.cpp and the reference logits of fixture `case`.
fn logits_error_at_scale_1(case: &str, adapter: &Path) -> f32 {
    let reference = case_dir(case).join("reference.safetensors");
    let (_, tokens) = read_tensor(&reference, "tokens");
    let tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let (_, want) = read_tensor(&reference, "logits_scale_1");
    let got = logits_for_tokens(
        &base_gguf(&base_of(case)),
        Some(adapter),
        &[1.0],
        &tokens,
        2,
    )
    .unwrap();
    max_abs_diff(&got[1], &want)
}

/// mlx-lm's `scale` is an absolute factor: a converter that took it for PEFT's alpha (α = 20, so llama.cpp applies
/// 20/8 instead of 20) misses mlx-lm's logits by far more than the limit.
#[test]
fn mlx_scale_taken_for_peft_alpha_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    convert_case("mlx-llama", OutType::F32, &good, false);
    let bad = dir.path().join("bad.gguf");
    rewrite_gguf(
        &good,
        &bad,
        |k, v| {
            if k == "adapter.lora.alpha" {
                assert_eq!(*v, lora_gguf::gguf::Value::F32(160.0));
                *v = lora_gguf::gguf::Value::F32(20.0);
            }
            true
        },
        |_, _| {},
    );
    let err = logits_error_at_scale_1("mlx-llama", &bad);
    assert!(
        err > 0.1,
        "an mlx adapter with scale read as alpha was not detected (|Δlogit| {err})"
    );
}

#[test]
fn ggml_own_parser_accepts_every_output_type() {
    let dir = tempfile::tempdir().unwrap();
    for outtype in [OutType::F32, OutType::F16, OutType::Bf16, OutType::Q8_0] {
        let out = dir.path().join(format!("{outtype:?}.gguf"));
        convert::convert(&Options {
            adapter_dir: case_dir("llama-embed-lmhead"),
            output: out.clone(),
            base: Some(base_gguf("llama")),
            base_config: None,
            outtype,
            arch: None,
            force: true,
            verify: false,
            threads: None,
            quirks: Default::default(),
        })
        .unwrap();
        assert_eq!(
            lora_gguf::validate::engine::ggml_gguf_tensor_count(&out),
            Some(32),
            "{outtype:?}"
        );
    }
    // ggml rejects a file cut inside the header, as ours does. (Cut inside the data, ggml's metadata parse still
    // succeeds — llama.cpp checks data bounds only when loading — while our reader refuses it up front.)
    let bytes = std::fs::read(dir.path().join("F32.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..200]).unwrap();
    assert!(lora_gguf::gguf::GgufFile::open(&cut).is_err());
    assert_eq!(
        lora_gguf::validate::engine::ggml_gguf_tensor_count(&cut),
        None
    );
}

/// `lora-validate --adapter a --adapter b` runs the stack as one adapter (factors concatenated along the rank).
/// Two halves of an adapter must act as the whole, a member at scale 0 as nothing, and the result must match
/// PyTorch like the adapter itself.
#[test]
fn adapter_stacks_combine_exactly() {
    use lora_gguf::gguf_adapter::stack::combine;
    let dir = tempfile::tempdir().unwrap();
    let convert_f32 = |case: &str| {
        let out = dir.path().join(format!("{case}.gguf"));
        convert_case(case, OutType::F32, &out, false);
        out
    };
    let llama = convert_f32("llama");
    let patterns = convert_f32("llama-patterns");
    let reference = case_dir("llama").join("reference.safetensors");
    let (_, tokens) = read_tensor(&reference, "tokens");
    let tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let (_, torch_1) = read_tensor(&reference, "logits_scale_1");
    let (_, torch_05) = read_tensor(&reference, "logits_scale_0_5");

    let halves = dir.path().join("halves.gguf");
    combine(&[(llama.clone(), 0.5), (llama.clone(), 0.5)], &halves).unwrap();
    let got =
        logits_for_tokens(&base_gguf("llama"), Some(&halves), &[1.0, 0.5], &tokens, 2).unwrap();
    assert!(
        max_abs_diff(&got[1], &torch_1) < 2e-5,
        "{}",
        max_abs_diff(&got[1], &torch_1)
    );
    assert!(max_abs_diff(&got[2], &torch_05) < 2e-5);

    let with_zero = dir.path().join("with-zero.gguf");
    combine(&[(llama.clone(), 1.0), (patterns.clone(), 0.0)], &with_zero).unwrap();
    let got = logits_for_tokens(&base_gguf("llama"), Some(&with_zero), &[1.0], &tokens, 2).unwrap();
    assert!(max_abs_diff(&got[1], &torch_1) < 2e-5);

    let both = dir.path().join("both.gguf");
    combine(&[(llama.clone(), 1.0), (patterns, 1.0)], &both).unwrap();
    let got = logits_for_tokens(&base_gguf("llama"), Some(&both), &[1.0], &tokens, 2).unwrap();
    assert!(
        max_abs_diff(&got[1], &torch_1) > 0.1,
        "the second adapter must add its own effect"
    );
}

/// The MoE fixtures catch a wrong expert layout: the mixtral adapter with each expert's B taken as a block of
/// columns (instead of PEFT's interleaved columns), or with two experts swapped, misses PyTorch by far more than
/// the tolerance — routing in the tiny models is decisive and uses every expert.
#[test]
fn wrong_expert_layouts_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    convert_case("mixtral", OutType::F32, &good, false);
    let file = lora_gguf::gguf::GgufFile::open(&good).unwrap();
    let dims = |name: &str| {
        file.tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.dims.clone())
            .unwrap()
    };
    let reference = case_dir("mixtral").join("reference.safetensors");
    let (_, tokens) = read_tensor(&reference, "tokens");
    let tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let (_, torch_1) = read_tensor(&reference, "logits_scale_1");
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    type Sabotage = fn(&[f32], usize, usize, usize) -> Vec<f32>;
    // data is E blocks of (out × r); B (out, E·r) of PEFT has B[o][k·E + e] = data[e][o][k]
    let blocked: Sabotage = |d, r, out, n| {
        let mut w = vec![0.0; d.len()];
        for e in 0..n {
            for o in 0..out {
                for k in 0..r {
                    let c = e * r + k; // the column a blocked reading would take
                    w[(e * out + o) * r + k] = d[((c % n) * out + o) * r + c / n];
                }
            }
        }
        w
    };
    let swapped: Sabotage = |d, r, out, _| {
        let block = out * r;
        let mut w = d.to_vec();
        w[..block].copy_from_slice(&d[block..2 * block]);
        w[block..2 * block].copy_from_slice(&d[..block]);
        w
    };
    for (what, sabotage) in [
        ("blocked B columns", blocked),
        ("experts 0 and 1 swapped", swapped),
    ] {
        let bad = dir.path().join("bad.gguf");
        rewrite_gguf(
            &good,
            &bad,
            |_, _| true,
            |name, data| {
                if name.ends_with("_exps.weight.lora_b") {
                    let d = dims(name);
                    let (r, out, n) = (d[0] as usize, d[1] as usize, d[2] as usize);
                    *data = bytes(&sabotage(&f32s(data), r, out, n));
                }
            },
        );
        let got = logits_for_tokens(&base_gguf("mixtral"), Some(&bad), &[1.0], &tokens, 2).unwrap();
        let err = max_abs_diff(&got[1], &torch_1);
        eprintln!("mixtral with {what}: |Δlogit| {err:.3} vs PyTorch");
        assert!(err > 0.05, "{what}: not detected (|Δlogit| {err})");
    }
}
