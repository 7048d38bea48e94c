//! Training parity end to end on the real Gemma 3 270M Q4_K_M: the trained test adapter (fixtures/gemma-lora)
//! converted by `lora-convert`, `lora-validate --reference` against packs recorded by python/lora_gguf/record on the
//! float copy of the same weights (fixtures/gemma-lora/record-reference.sh), and one pack recorded here, with torch.

use std::path::{Path, PathBuf};

use crate::common::*;

fn pack(name: &str) -> PathBuf {
    root().join("fixtures/gemma-lora").join(name)
}

/// `lora-validate --reference PACK` with a JSON report: (exit code, report, stderr).
fn reference(
    base: &Path,
    adapter: &Path,
    pack: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = lora_validate()
        .arg("--base")
        .arg(base)
        .arg("--adapter")
        .arg(adapter)
        .arg("--reference")
        .arg(pack)
        .args(["--format", "json", "-o"])
        .arg(&report)
        .args(extra)
        .output()
        .unwrap();
    exit_report_stderr(out, &report)
}

fn checks(j: &serde_json::Value) -> [bool; 4] {
    [
        "prompt_parity",
        "base_parity",
        "adapter_parity",
        "effect_parity",
    ]
    .map(|c| {
        j["checks"][c]
            .as_bool()
            .unwrap_or_else(|| panic!("no checks.{c} in {j}"))
    })
}

#[test]
fn correct_conversion_passes_every_parity_check_on_the_q4_k_m_base() {
    let (code, j, stderr) = reference(
        &test_model(),
        &gemma_adapter(),
        &pack("reference-pack"),
        &[],
    );
    assert_eq!(code, 0, "{stderr}\n{:#}", j["failures"]);
    assert_eq!(checks(&j), [true; 4]);
    let ratio = j["effect_ratio"].as_f64().unwrap();
    assert!((0.9..1.15).contains(&ratio), "effect ratio {ratio}");
    assert_eq!(
        j["warnings"],
        serde_json::json!([]),
        "the pack's fingerprints describe this base"
    );
    for p in j["prompts"].as_array().unwrap() {
        assert!(p["mismatch"].is_null(), "{p}");
        assert_eq!(p["training_tokens"], p["llama_tokens"]);
        // The base floor of a float copy of the very GGUF weights: llama.cpp's arithmetic only.
        assert!(p["base"]["kl_mean"].as_f64().unwrap() < 0.02, "{p}");
    }
}

#[test]
fn alpha_doubled_fails_adapter_and_effect_parity_with_ratio_two() {
    let dir = tempfile::tempdir().unwrap();
    let doubled = dir.path().join("alpha2.gguf");
    rewrite_gguf(
        &gemma_adapter(),
        &doubled,
        |k, v| {
            if k == "adapter.lora.alpha" {
                *v = lora_gguf::gguf::Value::F32(32.0);
            }
            true
        },
        |_, _| {},
    );
    let (code, j, stderr) = reference(&test_model(), &doubled, &pack("reference-pack"), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        checks(&j),
        [true, true, false, false],
        "{:#}",
        j["failures"]
    );
    let ratio = j["effect_ratio"].as_f64().unwrap();
    assert!((1.8..2.3).contains(&ratio), "effect ratio {ratio}");
    let diagnosis = j["diagnoses"][0].as_str().unwrap();
    assert!(
        diagnosis.starts_with("effect in llama.cpp is ")
            && diagnosis.contains("a scaling problem — ≈ 2×: lora_alpha doubled"),
        "{diagnosis}"
    );
}

/// The test model with Gemma's chat template added (its GGUF has none).
fn base_with_gemma_template(dir: &Path) -> PathBuf {
    use lora_gguf::gguf::{GgufFile, TensorSpec, Value, Writer};
    let src = GgufFile::open(&test_model()).unwrap();
    let template = std::fs::read_to_string(pack("gemma-chat-template.jinja")).unwrap();
    let mut metadata = src.metadata.clone();
    metadata.push(("tokenizer.chat_template".into(), Value::String(template)));
    let specs: Vec<TensorSpec> = src
        .tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ggml_type))
        .collect();
    let out = dir.join("gemma-3-270m-q4_k_m-chat.gguf");
    let file = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
    let mut w = Writer::new(file, &metadata, &specs).unwrap();
    for t in &src.tensors {
        w.write_tensor(&t.name, &src.read_tensor_bytes(&t.name).unwrap())
            .unwrap();
    }
    w.finish().unwrap();
    out
}

#[test]
fn a_prompt_rendered_with_another_template_fails_prompt_parity() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_with_gemma_template(dir.path());
    // Rendered with Gemma's turn format in training: llama.cpp's own Gemma template gives the same ids.
    let (code, j, stderr) = reference(&base, &gemma_adapter(), &pack("reference-pack-gemma"), &[]);
    assert_eq!(code, 0, "{stderr}\n{:#}", j["failures"]);
    assert_eq!(checks(&j), [true; 4]);
    // Rendered with ChatML in training: prompt parity fails and says so.
    let (code, j, stderr) = reference(&base, &gemma_adapter(), &pack("reference-pack-chatml"), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!checks(&j)[0], "{:#}", j["failures"]);
    let m = &j["prompts"][0]["mismatch"];
    assert_eq!(m["cause"], "chat_template", "{m}");
    assert_eq!(m["position"], 1, "{m}");
    assert_eq!(m["llama_text"], "<start_of_turn>user⏎What is the…", "{m}");
    assert_eq!(
        j["diagnoses"][0]
            .as_str()
            .unwrap()
            .split(" — ")
            .next()
            .unwrap(),
        "prompt chat-1: a different chat template"
    );
}

#[test]
fn self_test_turns_each_sabotage_red_and_keeps_the_good_adapter_green() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("self-test.json");
    let out = lora_validate()
        .arg("--base")
        .arg(test_model())
        .arg("--adapter")
        .arg(gemma_adapter())
        .arg("--reference")
        .arg(pack("reference-pack"))
        .args(["--self-test", "--format", "json", "-o"])
        .arg(&report)
        .output()
        .unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(out.status.code(), Some(0), "{cases:#}");
    let case = |name: &str| {
        cases
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no case {name} in {cases:#}"))
            .clone()
    };
    assert_eq!(case("good adapter")["red"], serde_json::json!([]));
    for (name, red) in [
        ("alpha doubled", "effect_parity"),
        ("Q/K rows permuted", "effect_parity"),
        ("one layer dropped", "effect_parity"),
        ("prompt without its template", "prompt_parity"),
    ] {
        let c = case(name);
        assert!(
            c["ok"].as_bool().unwrap() && c["red"].as_array().unwrap().iter().any(|r| r == red),
            "{c:#}"
        );
    }
    // Gemma's A and B never have the same shape (rank 8 < every width): the swap cannot load and is skipped.
    assert!(
        case("A/B swapped")["skipped"]
            .as_str()
            .unwrap()
            .starts_with("no pair has lora_a and lora_b")
    );
    let ratio = case("alpha doubled")["effect_ratio"].as_f64().unwrap();
    assert!((1.8..2.3).contains(&ratio), "{ratio}");
}

/// The recorder, run here with torch on CPU (venv and float model cached outside the clone by the tools/ scripts),
/// reproduces the committed pack's first prompt, and its pack passes in llama.cpp. Without the recorder venv
/// (tools/setup-recorder-venv.sh) it says so and stops, unless LORA_GGUF_REQUIRE_RECORDER is set (CI sets it and
/// the venv up): the committed packs keep every other test here running without torch.
#[test]
fn recorder_reproduces_the_committed_pack_and_its_pack_passes() {
    let tool = |script: &str, args: &[&str]| -> Option<PathBuf> {
        let out = std::process::Command::new(root().join("tools").join(script))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running tools/{script}: {e}"));
        out.status.success().then(|| {
            PathBuf::from(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim(),
            )
        })
    };
    let required = std::env::var_os("LORA_GGUF_REQUIRE_RECORDER").is_some();
    let Some(python) = tool("setup-recorder-venv.sh", &["--check"]).or_else(|| {
        required
            .then(|| tool("setup-recorder-venv.sh", &[]))
            .flatten()
    }) else {
        assert!(
            !required,
            "LORA_GGUF_REQUIRE_RECORDER is set but tools/setup-recorder-venv.sh failed"
        );
        eprintln!(
            "SKIPPED recorder_reproduces_the_committed_pack_and_its_pack_passes: no recorder venv (torch); run \
             tools/setup-recorder-venv.sh to record a pack here (the tests on the committed packs need no torch)."
        );
        return;
    };
    let float_model =
        tool("fetch-float-test-model.sh", &[]).expect("tools/fetch-float-test-model.sh failed");
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("one.jsonl");
    let first = std::fs::read_to_string(pack("reference-prompts.jsonl")).unwrap();
    std::fs::write(&prompts, first.lines().next().unwrap()).unwrap();
    let recorded = dir.path().join("pack");
    let out = std::process::Command::new(&python)
        .args(["-m", "lora_gguf.record", "--base-model"])
        .arg(&float_model)
        .arg("--adapter")
        .arg(root().join("fixtures/gemma-lora/adapter"))
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&recorded)
        .env("PYTHONPATH", root().join("python"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let new = lora_gguf::reference::ReferencePack::open(&recorded).unwrap();
    let old = lora_gguf::reference::ReferencePack::open(&pack("reference-pack")).unwrap();
    let (n, o) = (&new.prompts[0], &old.prompts[0]);
    assert_eq!(
        (&n.id, &n.prompt_tokens, &n.adapter_continuation),
        (&o.id, &o.prompt_tokens, &o.adapter_continuation)
    );
    assert_eq!(n.base_continuation, o.base_continuation);
    assert_eq!(n.token_ids, o.token_ids);
    let worst = max_abs_diff(&n.logprobs, &o.logprobs);
    assert!(
        worst < 1e-4,
        "log-probs differ from the committed pack by {worst}"
    );
    assert_eq!(
        (&new.tokenizer, &new.base, &new.adapter),
        (&old.tokenizer, &old.base, &old.adapter)
    );

    let (code, j, stderr) = reference(&test_model(), &gemma_adapter(), &recorded, &[]);
    assert_eq!(code, 0, "{stderr}\n{:#}", j["failures"]);
}
