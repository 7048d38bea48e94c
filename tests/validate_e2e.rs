//! `lora-validate` end to end on the real quantized test model (Gemma 3 270M Q4_K_M — which also guards against a
//! native-CPU llama.cpp build dying with SIGILL on AMX hosts) with a real adapter trained by peft
//! (fixtures/gemma-lora), converted by `lora-convert` in the test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;

/// The trained adapter converted against the test model (once per test process).
fn converted() -> PathBuf {
    static OUT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    OUT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("gemma-lora.gguf");
        convert_cmd(root().join("fixtures/gemma-lora/adapter"), &out)
            .arg("--base")
            .arg(test_model())
            .arg("--verify")
            .assert()
            .success();
        (dir, out)
    })
    .1
    .clone()
}

fn prompts() -> [PathBuf; 2] {
    [
        root().join("fixtures/gemma-lora/target.jsonl"),
        root().join("fixtures/gemma-lora/control-smoke.jsonl"),
    ]
}

fn validate(adapter: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let [t, c] = prompts();
    let out = lora_validate()
        .arg("--base")
        .arg(test_model())
        .arg("--adapter")
        .arg(adapter)
        .arg("--prompts")
        .arg(&t)
        .arg("--prompts")
        .arg(&c)
        .args([
            "--scales",
            "0,0.5,1",
            "--max-tokens",
            "16",
            "--format",
            "json",
            "-o",
        ])
        .arg(&report)
        .args(extra)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    (code, json, stderr)
}

fn metric_failures(j: &serde_json::Value, metric: &str) -> usize {
    j["failures"]
        .as_array()
        .map_or(0, |f| f.iter().filter(|x| x["metric"] == metric).count())
}

#[test]
fn trained_adapter_passes_and_shows_its_known_effect() {
    let adapter = converted();
    let (code, j, stderr) = validate(adapter.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{stderr}\n{:#}", j["failures"]);
    assert_eq!(j["engine"]["scale_zero_max_abs_logit_delta"], 0.0);
    // The known effect: every held-out target says the secret word at scale 1.
    let at_1: Vec<&serde_json::Value> = j["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["scale"] == 1.0)
        .collect();
    for m in at_1
        .iter()
        .filter(|m| m["prompt_id"].as_str().unwrap().starts_with("secret"))
    {
        assert!(
            m["adapted_text"].as_str().unwrap().contains("BANANAPHONE"),
            "{m}"
        );
        assert!(m["kl_mean"].as_f64().unwrap() > 0.05, "{m}");
    }
    let target_kl = |s: usize| j["per_scale"][s]["target_kl_mean"].as_f64().unwrap();
    assert!(
        target_kl(2) > 0.5,
        "the adapter's known effect on the targets: {}",
        j["per_scale"]
    );
    assert!(
        j["per_scale"][2]["control_kl_mean"].as_f64().unwrap() < 0.1,
        "{}",
        j["per_scale"]
    );
    let per_scale = j["per_scale"].as_array().unwrap();
    let kl = |i: usize| per_scale[i]["all_kl_mean"].as_f64().unwrap();
    assert!(
        kl(0) == 0.0 && kl(0) < kl(1) && kl(1) < kl(2),
        "{per_scale:?}"
    );
}

#[test]
fn over_scaled_adapter_fails_on_control_drift() {
    let adapter = converted();
    let (code, j, stderr) = validate(&format!("{}:4", adapter.display()), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        metric_failures(&j, "kl_mean") + metric_failures(&j, "top1_agreement") > 0,
        "{:#}",
        j["failures"]
    );
}

/// Copy an adapter with every `lora_b` set to zero: loads fine, changes nothing.
fn zero_b(src: &Path, dst: &Path) {
    rewrite_gguf(
        src,
        dst,
        |_, _| true,
        |name, bytes| {
            if name.ends_with(".lora_b") {
                bytes.iter_mut().for_each(|b| *b = 0);
            }
        },
    );
}

#[test]
fn adapter_with_zero_b_fails_no_effect() {
    let dir = tempfile::tempdir().unwrap();
    let zeroed = dir.path().join("zero.gguf");
    zero_b(&converted(), &zeroed);
    let (code, j, stderr) = validate(zeroed.to_str().unwrap(), &[]);
    assert_eq!(code, 1, "{stderr}");
    let msgs: Vec<&str> = j["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["message"].as_str())
        .collect();
    assert!(msgs.iter().any(|m| m.contains("no effect")), "{msgs:?}");
    assert!(metric_failures(&j, "expectation") >= 5, "{msgs:?}");
}

#[test]
fn adapter_for_another_model_is_refused_before_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("llama.gguf");
    convert_on(case_dir("llama"), &tiny, "llama")
        .assert()
        .success();
    let (code, _, stderr) = validate(tiny.to_str().unwrap(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("the adapter is for `llama` but the base is `gemma3`"),
        "{stderr}"
    );
}

#[test]
fn malformed_prompts_exit_2_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"x\"}\n{\"id\":\"b\",\"kind\":\"target\"}\n").unwrap();
    let a = lora_validate()
        .arg("--base")
        .arg(test_model())
        .arg("--adapter")
        .arg(converted())
        .arg("--prompts")
        .arg(&bad)
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(stderr.contains("bad.jsonl:2: missing `prompt`"), "{stderr}");
}

#[test]
fn a_base_llama_cpp_cannot_load_exits_3() {
    // The tiny llama base without `llama.block_count`: our reader and precheck accept it (the architecture and
    // every target tensor are there), llama.cpp refuses to load it.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("broken-base.gguf");
    rewrite_gguf(
        &base_gguf("llama"),
        &base,
        |k, _| k != "llama.block_count",
        |_, _| {},
    );
    let adapter = dir.path().join("a.gguf");
    convert_on(case_dir("llama"), &adapter, "llama")
        .assert()
        .success();
    let a = lora_validate()
        .arg("--base")
        .arg(&base)
        .arg("--adapter")
        .arg(&adapter)
        .args(["--prompts"])
        .arg(root().join("golden-prompts/control.jsonl"))
        .assert()
        .code(3);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("llama.cpp could not load the model"),
        "{stderr}"
    );
}
