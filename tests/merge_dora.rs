//! `lora-convert merge` of DoRA adapters (fixtures/generate_dora.py: real peft 0.21.2 `use_dora` adapters on the
//! tiny f32 bases; fixtures/generate_mlx.py's `mlx-dora-llama`: trained by mlx-lm 0.32.2). A DoRA adapter cannot run in llama.cpp, so the reference is PyTorch: the merged base run in
//! llama.cpp must give the logits of the UNMERGED peft model, and of peft's own `merge_and_unload`, within what
//! llama.cpp's base alone differs from PyTorch (the converter tests' measure of f32 noise). The magnitudes are drawn
//! 0.7–1.3× away from ‖W + s·B·A‖ and the adapters move the logits by 2.7–3.1, so a norm taken along the wrong axis,
//! a magnitude not permuted with its rows, or a scale left out of the norm is far outside that.

use std::path::Path;

use crate::common::*;
use lora_gguf::merge::{self, MergeError};
use lora_gguf::validate::engine::logits_for_tokens;

fn merge_into(
    base: &Path,
    adapters: &[(&Path, f32)],
    out: &Path,
) -> Result<merge::Summary, MergeError> {
    merge::merge(&merge_options(base, adapters, out, 2))
}

fn reference(case: &str, name: &str) -> Vec<f32> {
    read_tensor(&case_dir(case).join("reference.safetensors"), name).1
}

/// Merge `case` at `scale` into its f32 base; the merged model's logits against PyTorch's `names` logits.
fn check(case: &str, scale: f32, names: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let base = base_gguf(&base_of(case));
    let merged = dir.path().join("merged.gguf");
    let summary = merge_into(&base, &[(&case_dir(case), scale)], &merged)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert!(summary.merged.iter().all(|t| t.out_type == t.base_type));
    let tokens: Vec<i32> = reference(case, "tokens")
        .iter()
        .map(|&t| t as i32)
        .collect();
    let llama_base = logits_for_tokens(&base, None, &[], &tokens, 2).unwrap();
    let got = logits_for_tokens(&merged, None, &[], &tokens, 2).unwrap();
    let base_err = max_abs_diff(&llama_base[0], &reference(case, "logits_base"));
    let limit = 2.0 * base_err.max(1e-4);
    for name in names {
        let want = reference(case, name);
        let err = max_abs_diff(&got[0], &want);
        let effect = max_abs_diff(&want, &reference(case, "logits_base"));
        eprintln!(
            "{case:14} :{scale} merged vs PyTorch {name:24} |Δ| {err:.2e} (limit {limit:.2e}); effect {effect:.2}"
        );
        assert!(effect > 1.0, "{case}: the adapter barely moves the logits");
        assert!(
            err <= limit,
            "{case}: merged logits differ from PyTorch's {name} by {err} (> {limit})"
        );
    }
}

#[test]
fn dora_llama_with_qk_permutation_merges_to_the_unmerged_peft_logits() {
    check(
        "dora-llama",
        1.0,
        &["logits_scale_1", "logits_merge_and_unload"],
    );
    // peft's set_scale multiplies s inside the norm too: `:0.5` must do the same
    check("dora-llama", 0.5, &["logits_scale_0_5"]);
}

#[test]
fn dora_qwen2_with_biases_merges_to_the_unmerged_peft_logits() {
    check(
        "dora-qwen2",
        1.0,
        &["logits_scale_1", "logits_merge_and_unload"],
    );
}

#[test]
fn dora_gptneox_fused_qkv_reordered_merges_to_the_unmerged_peft_logits() {
    check(
        "dora-gptneox",
        1.0,
        &["logits_scale_1", "logits_merge_and_unload"],
    );
}

#[test]
fn dora_on_per_expert_linears_merges_into_the_expert_stacks() {
    // experts 0, 1 and 3 of each layer, stacked into ffn_*_exps; expert 2's rows keep no magnitude
    check(
        "dora-mixtral-legacy",
        1.0,
        &["logits_scale_1", "logits_merge_and_unload"],
    );
}

/// peft's DoRA on the token embedding: each embedding feature (a column of token_embd) normalised over the whole
/// vocabulary.
#[test]
fn dora_on_the_embedding_normalises_columns_over_the_vocabulary() {
    check(
        "dora-embed",
        1.0,
        &["logits_scale_1", "logits_merge_and_unload"],
    );
    check("dora-embed", 0.5, &["logits_scale_0_5"]);
}

/// mlx-lm's DoRALinear (`fine_tune_type: dora`, trained by `mlx_lm lora`): the reference is mlx-lm's own forward.
#[test]
fn dora_from_mlx_lm_merges_to_mlx_lm_logits() {
    check("mlx-dora-llama", 1.0, &["logits_scale_1"]);
    check("mlx-dora-llama", 0.5, &["logits_scale_0_5"]);
}

/// What cannot be merged exactly is refused, naming the module and the reason, and nothing is written.
#[test]
fn dora_refusals_say_why_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let llama = base_gguf("llama");
    // a DoRA adapter stacked with another adapter on the same tensors
    let dora = case_dir("dora-llama");
    let lora = case_dir("llama");
    let e = merge_into(&llama, &[(&lora, 1.0), (&dora, 1.0)], &out).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "tensor `blk.0.attn_k.weight`: DoRA adapter `{}` and adapter `{}` both change it; DoRA normalises the \
             whole merged weight, so stacking depends on the order (peft's forward and its merge_and_unload \
             disagree) and is not merged — merge the DoRA adapter alone, or drop the other adapter's pairs on this \
             tensor",
            dora.display(),
            lora.display()
        )
    );
    assert!(!out.exists());
    // magnitude vectors in an adapter whose configuration does not declare DoRA (torchtune's exports)
    let undeclared = dir.path().join("undeclared");
    std::fs::create_dir(&undeclared).unwrap();
    std::fs::copy(
        dora.join("adapter_model.safetensors"),
        undeclared.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dora.join("adapter_config.json")).unwrap()).unwrap();
    cfg["use_dora"] = false.into();
    std::fs::write(undeclared.join("adapter_config.json"), cfg.to_string()).unwrap();
    let e = merge_into(&llama, &[(&undeclared, 1.0)], &out).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "adapter `{}`: tensor `base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector` is a DoRA \
             magnitude vector, but `adapter_config.json` does not declare DoRA (`use_dora: true`); set it if the \
             adapter was trained as DoRA (torchtune's exports omit it)",
            undeclared.display()
        )
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&undeclared).unwrap();
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

/// The converter still refuses DoRA as a runtime adapter, and says to merge it; the merge command accepts it.
#[test]
fn convert_refuses_dora_and_points_at_merge_which_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let case = "dora-llama";
    let a = convert_on(case_dir(case), dir.path().join("a.gguf"), "llama")
        .assert()
        .code(2);
    assert_eq!(
        stderr_of(&a),
        format!(
            "error: `{}`: `use_dora` is true: DoRA rescales each output row of the adapted weight to a learned \
             magnitude, which a GGUF LoRA adapter cannot express — merge it into the base model instead: \
             `lora-convert merge --base BASE.gguf --adapter DIR -o MERGED.gguf`\n(14 more reason(s) to refuse; \
             `lora-convert inspect` lists them)\n",
            case_dir(case).join("adapter_config.json").display()
        )
    );
    let out = dir.path().join("m.gguf");
    lora_convert()
        .arg("merge")
        .arg("--base")
        .arg(base_gguf("llama"))
        .arg("--adapter")
        .arg(case_dir(case))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert!(out.is_file());
}

/// Every fixture marked `merge: ok` is merged by a test above.
#[test]
fn every_dora_fixture_has_its_merge_test() {
    let tested = [
        "dora-llama",
        "dora-qwen2",
        "dora-gptneox",
        "dora-mixtral-legacy",
        "dora-embed",
        "mlx-dora-llama",
    ];
    for case in cases("refused") {
        if case_info(&case)["merge"] == "ok" {
            assert!(tested.contains(&case.as_str()), "{case} has no merge test");
        }
    }
}

/// Into a quantized base (llama-quantize's Q4_0 of the same model, fixtures/imatrix) the DoRA merge goes through the
/// default type choice with the whole change of each row as ΔW. Rounded twice (the base, then the merged rows), it
/// lands about twice as far from the exact (f32) DoRA merge as the Q4_0 base is from the f32 base (measured 0.0167
/// vs 0.0080 nats), a twentieth of the adapter's effect (0.35 nats from the base).
#[test]
fn dora_merges_into_a_quantized_base_within_its_quantization_noise() {
    let dir = tempfile::tempdir().unwrap();
    let case = "dora-llama";
    let f32_base = base_gguf("llama");
    let q4_base = root().join("fixtures/imatrix/llama-q4_0-imatrix.gguf");
    let (exact, quantized) = (dir.path().join("f32.gguf"), dir.path().join("q4.gguf"));
    merge_into(&f32_base, &[(&case_dir(case), 1.0)], &exact).unwrap();
    let summary = merge_into(&q4_base, &[(&case_dir(case), 1.0)], &quantized).unwrap();
    let tokens: Vec<i32> = reference(case, "tokens")
        .iter()
        .map(|&t| t as i32)
        .collect();
    let logits = |p: &Path| {
        logits_for_tokens(p, None, &[], &tokens, 2)
            .unwrap()
            .remove(0)
    };
    let (exact_l, quantized_l) = (logits(&exact), logits(&quantized));
    let (f32_base_l, q4_base_l) = (logits(&f32_base), logits(&q4_base));
    let merge_drift = mean_kl_rows(&exact_l, &quantized_l, 272);
    let base_drift = mean_kl_rows(&f32_base_l, &q4_base_l, 272);
    let effect = mean_kl_rows(&exact_l, &f32_base_l, 272);
    eprintln!(
        "DoRA into Q4_0: mean KL from the exact merge {merge_drift:.4} (Q4_0 base from f32 base {base_drift:.4}; the \
         adapter's effect {effect:.3}); {} of {} tensors promoted",
        summary.promoted().count(),
        summary.merged.len()
    );
    assert!(merge_drift < 3.0 * base_drift && merge_drift < 0.1 * effect);
}
