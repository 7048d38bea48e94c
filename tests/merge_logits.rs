//! `lora-convert merge` on every converter fixture family: the adapter, converted to GGUF and merged into its f32
//! base, must give in llama.cpp the logits of the base with the runtime adapter — within f32 noise (the merged
//! model computes (W + f·B·A)·x where the runtime computes W·x + f·B·(A·x)) — and PyTorch+PEFT's logits within
//! the converter's own tolerance.
//!
//! "f32 noise" is 2·10⁻⁵ of the largest |logit|, or, where llama.cpp's kernels are noisier than that for the
//! architecture (ggml's GELU reads an f16 table, so a last-bit change of a pre-activation can move an output by
//! ~10⁻³: Gemma 2, GPT-2), twice what llama.cpp's base alone differs from PyTorch — the converter tests' measure
//! of that noise. The adapters move the logits by 1.7–4.2, so a wrong scale, permutation or expert slot is
//! hundreds of times over either limit.

use std::path::Path;

use crate::common::*;
use lora_gguf::convert::{self, Options, OutType};
use lora_gguf::merge::{self, AdapterSpec};
use lora_gguf::validate::engine::logits_for_tokens;

/// Max |Δlogit| allowed between the merged model and base + runtime adapter, relative to the largest |logit|.
const F32_NOISE: f32 = 2e-5;

fn convert_case(case: &str, dir: &Path) -> std::path::PathBuf {
    let out = dir.join(format!("{}.gguf", case.replace('/', "-")));
    convert::convert(&Options {
        adapter_dir: case_dir(case),
        output: out.clone(),
        base: Some(base_gguf(&base_of(case))),
        base_config: None,
        outtype: OutType::F32,
        arch: None,
        force: true,
        verify: false,
        threads: Some(1),
        quirks: Default::default(),
    })
    .unwrap_or_else(|e| panic!("{case}: {e}"));
    out
}

fn merge_into(
    base: &Path,
    adapters: &[(&Path, f32)],
    out: &Path,
    threads: usize,
) -> merge::Summary {
    merge::merge(&merge::Options {
        base: base.to_path_buf(),
        adapters: adapters
            .iter()
            .map(|(p, s)| AdapterSpec {
                path: p.to_path_buf(),
                scale: *s,
            })
            .collect(),
        output: out.to_path_buf(),
        outtype: Default::default(),
        force: true,
        threads: Some(threads),
    })
    .unwrap_or_else(|e| panic!("{}: {e}", out.display()))
}

fn tokens(case: &str) -> Vec<i32> {
    let (_, t) = read_tensor(&case_dir(case).join("reference.safetensors"), "tokens");
    t.iter().map(|&t| t as i32).collect()
}

fn check(case: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base = base_gguf(&base_of(case));
    let adapter = convert_case(case, dir.path());
    let merged = dir.path().join("merged.gguf");
    let summary = merge_into(&base, &[(&adapter, 1.0)], &merged, 2);
    assert!(!summary.merged.is_empty());
    assert!(
        summary.merged.iter().all(|t| t.out_type == t.base_type),
        "{case}: an f32 base keeps f32"
    );
    let tokens = tokens(case);
    let runtime = logits_for_tokens(&base, Some(&adapter), &[1.0], &tokens, 2).unwrap();
    let baked = logits_for_tokens(&merged, None, &[], &tokens, 2).unwrap();
    let scale = runtime[1].iter().fold(1f32, |m, x| m.max(x.abs()));
    let err = max_abs_diff(&baked[0], &runtime[1]);
    let effect = max_abs_diff(&runtime[1], &runtime[0]);
    let (_, torch_base) = read_tensor(&case_dir(case).join("reference.safetensors"), "logits_base");
    let (_, torch_1) = read_tensor(
        &case_dir(case).join("reference.safetensors"),
        "logits_scale_1",
    );
    let base_err = max_abs_diff(&runtime[0], &torch_base);
    let torch_err = max_abs_diff(&baked[0], &torch_1);
    let limit = (F32_NOISE * scale).max(2.0 * base_err);
    eprintln!(
        "{case:20} merged vs runtime |Δ| {err:.2e} (limit {limit:.2e}); vs PyTorch {torch_err:.2e} (base {base_err:.2e}); effect {effect:.2}"
    );
    assert!(effect > 0.1, "{case}: the adapter barely moves the logits");
    assert!(
        err <= limit,
        "{case}: merged logits differ from base + runtime adapter by {err} (> {limit})"
    );
    assert!(
        torch_err <= 2.0 * base_err.max(1e-4),
        "{case}: merged logits differ from PyTorch+PEFT by {torch_err}"
    );
}

macro_rules! family_tests {
    ($($name:ident => $case:literal,)*) => {
        $(
            #[test]
            fn $name() {
                check($case);
            }
        )*
    };
}

family_tests! {
    merge_llama => "llama",
    merge_mistral => "mistral",
    merge_qwen2 => "qwen2",
    merge_qwen3 => "qwen3",
    merge_gemma2 => "gemma2",
    merge_gemma3 => "gemma3",
    merge_phi3_fused => "phi3",
    merge_gptneox => "gptneox",
    merge_falcon => "falcon",
    merge_starcoder2 => "starcoder2",
    merge_gpt2 => "gpt2",
    merge_granite => "granite",
    merge_stablelm => "stablelm",
    merge_olmo2 => "olmo2",
    merge_llama_patterns => "llama-patterns",
    merge_llama_embed_tokens_and_lm_head => "llama-embed-lmhead",
    merge_mixtral_experts => "mixtral",
    merge_qwen2moe_router_shared_expert => "qwen2moe",
    merge_qwen3moe => "qwen3moe",
    merge_olmoe_partial => "olmoe-partial",
    merge_mixtral_legacy => "mixtral-legacy",
    merge_deepseek2 => "deepseek2",
    merge_mlx_llama => "mlx-llama",
    merge_mlx_mixtral => "mlx-mixtral",
}
