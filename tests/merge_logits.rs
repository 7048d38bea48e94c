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
use lora_gguf::merge;
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
    merge::merge(&merge_options(base, adapters, out, threads))
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

fn bytes_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let f = lora_gguf::gguf::GgufFile::open(path).unwrap();
    f.tensors
        .iter()
        .map(|t| (t.name.clone(), f.read_tensor_bytes(&t.name).unwrap()))
        .collect()
}

/// An adapter directory is converted in memory with the converter's own code: merging it gives exactly the
/// tensors of merging its converted GGUF adapter; and the bytes do not depend on the thread count, for a float and
/// a quantized output type.
#[test]
fn directory_merge_equals_gguf_merge_at_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let case = "phi3";
    let base = base_gguf(&base_of(case));
    let adapter = convert_case(case, dir.path());
    let from_gguf = dir.path().join("a.gguf");
    let from_dir = dir.path().join("b.gguf");
    merge_into(&base, &[(&adapter, 0.75)], &from_gguf, 1);
    merge_into(&base, &[(&case_dir(case), 0.75)], &from_dir, 2);
    assert!(bytes_of(&from_gguf) == bytes_of(&from_dir));
    for ty in [
        lora_gguf::gguf::GgmlType::Q4_0,
        lora_gguf::gguf::GgmlType::Q8_0,
    ] {
        let mut outs = Vec::new();
        for threads in [1, 2] {
            let out = dir.path().join(format!("{ty}-{threads}.gguf"));
            merge::merge(&merge::Options {
                outtype: merge::OutType::Fixed(ty),
                ..merge_options(&base, &[(&case_dir(case), 1.0)], &out, threads)
            })
            .unwrap();
            outs.push(std::fs::read(&out).unwrap());
        }
        assert!(
            outs[0] == outs[1],
            "{ty}: bytes differ between 1 and 2 threads"
        );
    }
}

/// Several adapters add up as llama.cpp applies them: two adapters with their own scales merged equal the base
/// with the two running together (their equivalent single adapter, gguf_adapter::stack), and a merge at the wrong
/// scale is far off.
#[test]
fn several_adapters_with_scales_add_up_as_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_gguf("llama");
    let a = convert_case("llama", dir.path());
    let b = convert_case("llama-rslora", dir.path());
    let stack = dir.path().join("stack.gguf");
    lora_gguf::gguf_adapter::stack::combine(&[(a.clone(), 0.7), (b.clone(), -0.4)], &stack)
        .unwrap();
    let merged = dir.path().join("merged.gguf");
    merge_into(&base, &[(&a, 0.7), (&b, -0.4)], &merged, 2);
    let wrong = dir.path().join("wrong.gguf");
    merge_into(&base, &[(&a, 0.7), (&b, 0.4)], &wrong, 2);
    let tokens = tokens("llama");
    let runtime = logits_for_tokens(&base, Some(&stack), &[1.0], &tokens, 2).unwrap();
    let got = logits_for_tokens(&merged, None, &[], &tokens, 2).unwrap();
    let off = logits_for_tokens(&wrong, None, &[], &tokens, 2).unwrap();
    let scale = runtime[1].iter().fold(1f32, |m, x| m.max(x.abs()));
    let err = max_abs_diff(&got[0], &runtime[1]);
    eprintln!(
        "stack: merged vs runtime |Δ| {err:.2e}; wrong sign {:.2}",
        max_abs_diff(&off[0], &runtime[1])
    );
    assert!(err <= F32_NOISE * scale, "{err}");
    assert!(max_abs_diff(&off[0], &runtime[1]) > 0.1);
}

/// A LoRA on the embedding of a tied model (refused as a runtime adapter) merges as it ran in training: the
/// lookup changes, the output head keeps the original weights. Checked against llama.cpp running the same
/// adapter on an untied copy of the base (output.weight = the embedding, byte for byte), where the runtime
/// embedding LoRA changes the lookup only — PEFT's unmerged semantics.
#[test]
fn tied_embedding_lora_merges_into_the_lookup_only() {
    use lora_gguf::gguf::GgufFile;
    use lora_gguf::gguf::rewrite::{ModelWriter, raw_metadata};
    let dir = tempfile::tempdir().unwrap();
    let case = "tied-embed";
    let base = base_gguf(&base_of(case));
    let merged = dir.path().join("merged.gguf");
    let summary = merge_into(&base, &[(&case_dir(case), 1.0)], &merged, 2);
    assert!(summary.untied_output);
    assert!(summary.merged.iter().any(|t| t.name == "token_embd.weight"));
    // the untied copy of the base, and the adapter converted against it
    let src = GgufFile::open(&base).unwrap();
    let untied = dir.path().join("untied.gguf");
    let out = std::fs::File::create(&untied).unwrap();
    let extra = lora_gguf::gguf::TensorInfo {
        name: "output.weight".into(),
        ..src.tensor("token_embd.weight").unwrap().clone()
    };
    let meta = raw_metadata(&src)
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let mut w = ModelWriter::new(&out, &src, meta, vec![extra]).unwrap();
    while let Some(t) = w.next_tensor().cloned() {
        if t.name == "output.weight" {
            w.copy_tensor_from("token_embd.weight").unwrap();
        } else {
            w.copy_tensor().unwrap();
        }
    }
    w.finish().unwrap();
    let adapter = dir.path().join("a.gguf");
    convert::convert(&Options {
        adapter_dir: case_dir(case),
        output: adapter.clone(),
        base: Some(untied.clone()),
        base_config: None,
        outtype: OutType::F32,
        arch: None,
        force: true,
        verify: false,
        threads: Some(1),
        quirks: Default::default(),
    })
    .unwrap();
    let tokens: Vec<i32> = (0..13).map(|i| (i * 37 + 5) % 272).collect();
    let runtime = logits_for_tokens(&untied, Some(&adapter), &[1.0], &tokens, 2).unwrap();
    let got = logits_for_tokens(&merged, None, &[], &tokens, 2).unwrap();
    let tied_base = logits_for_tokens(&base, None, &[], &tokens, 2).unwrap();
    let scale = runtime[1].iter().fold(1f32, |m, x| m.max(x.abs()));
    let err = max_abs_diff(&got[0], &runtime[1]);
    let effect = max_abs_diff(&runtime[1], &runtime[0]);
    eprintln!("tied embedding: merged vs untied runtime |Δ| {err:.2e}; effect {effect:.2}");
    assert_eq!(
        max_abs_diff(&runtime[0], &tied_base[0]),
        0.0,
        "the untied copy is the same model"
    );
    assert!(effect > 0.1);
    assert!(err <= (F32_NOISE * scale).max(2e-3), "{err}");
}
