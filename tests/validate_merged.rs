//! `lora-validate --merged` on the real Gemma 3 270M Q4_K_M with the trained test adapter: the merge
//! `lora-convert merge` writes passes (close to base + runtime adapter in KL, top-1 and greedy continuations), and a
//! merge that is off — the adapter merged at scale 2 — fails on the merged limits (the report formats are tested on
//! a measured fixture in src/report).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;

/// The adapter converted against the test model, merged at scale 1 and at scale 2 (once per test process).
fn files() -> &'static (PathBuf, PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = process_scratch("validate-merged");
        let adapter = gemma_adapter();
        let merge = |scale: &str, name: &str| {
            let out = dir.join(name);
            lora_convert()
                .arg("merge")
                .arg("--base")
                .arg(test_model())
                .arg("--adapter")
                .arg(format!("{}:{scale}", adapter.display()))
                .arg("-o")
                .arg(&out)
                .assert()
                .success();
            out
        };
        let (good, off) = (merge("1", "merged.gguf"), merge("2", "merged-x2.gguf"));
        (adapter, good, off)
    })
}

/// `lora-validate --merged` in `format`; (exit status, report).
fn validate_merged(merged: &Path, format: &str) -> (i32, String) {
    let (adapter, _, _) = files();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let out = lora_validate()
        .arg("--base")
        .arg(test_model())
        .arg("--adapter")
        .arg(adapter)
        .arg("--merged")
        .arg(merged)
        .arg("--prompts")
        .arg(root().join("fixtures/gemma-lora/target.jsonl"))
        .arg("--prompts")
        .arg(root().join("fixtures/gemma-lora/control-smoke.jsonl"))
        .args([
            "--scales",
            "0,1",
            "--max-tokens",
            "16",
            "--format",
            format,
            "-o",
        ])
        .arg(&report)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_real_merge_passes_and_a_merge_at_scale_2_fails() {
    let (_, good, off) = files();
    let (code, text) = validate_merged(good, "json");
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(code, 0, "{:#}", j["failures"]);
    let s = &j["merged"]["summary"];
    assert_eq!(s["prompts"], 11, "{s}");
    let f = |k: &str| s[k].as_f64().unwrap();
    assert!(f("kl_mean") < 0.05 && f("top1_agreement") >= 0.9, "{s}");
    // The merged model moves the targets as the adapter does: its drift from the base is the adapter's.
    let adapter_kl = j["per_scale"][1]["all_kl_mean"].as_f64().unwrap();
    assert!(
        (f("base_kl_mean") - adapter_kl).abs() < 0.2 * adapter_kl,
        "merged drift {} vs adapter drift {adapter_kl}",
        f("base_kl_mean")
    );
    for m in j["merged"]["prompts"].as_array().unwrap() {
        if m["prompt_id"].as_str().unwrap().starts_with("secret") {
            assert!(
                m["merged_text"].as_str().unwrap().contains("BANANAPHONE"),
                "{m}"
            );
        }
    }

    let (code, text) = validate_merged(off, "json");
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(code, 1, "{text}");
    let metrics: Vec<&str> = j["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["metric"].as_str().unwrap())
        .collect();
    assert!(metrics.contains(&"merged_kl_mean"), "{metrics:?}");
    assert!(
        j["merged"]["summary"]["kl_mean"].as_f64().unwrap() > 0.05,
        "{}",
        j["merged"]["summary"]
    );
    // The runtime adapter's own sweep still passes: only the merge is wrong.
    assert!(
        metrics.iter().all(|m| m.starts_with("merged_")),
        "{metrics:?}"
    );
}

/// A `--merged` file that cannot be a merge of the base is refused before llama.cpp loads anything (exit 2).
#[test]
fn a_merged_file_that_is_not_a_merge_of_the_base_is_refused() {
    let (adapter, _, _) = files();
    for (merged, expect) in [
        (
            adapter.clone(),
            "it is an adapter, not a model (give it with --adapter)".to_string(),
        ),
        (
            base_gguf("llama"),
            "its architecture is \"llama\" and the base's \"gemma3\"".to_string(),
        ),
    ] {
        let out = lora_validate()
            .arg("--base")
            .arg(test_model())
            .arg("--adapter")
            .arg(adapter)
            .arg("--merged")
            .arg(&merged)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "error: --merged `{}` cannot be a merge of the base `{}`: {expect}",
                merged.display(),
                test_model().display()
            )),
            "{stderr}"
        );
    }
}
