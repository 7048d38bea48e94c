//! `lora-validate --merged` catches merges that are off by a layout, not just by a scale: the fixture adapter merged
//! with its Q/K rows left in Hugging Face order (a merge that forgot llama.cpp's rotary permutation), and with two
//! experts' LoRAs swapped (a wrong expert layout), each fails with the merged_* limits named, while the correct
//! merge of the same adapter passes them. The sabotaged merges are made the way such a bug would make them: the
//! GGUF adapter's factors rearranged, then merged by `lora-convert merge`.

use std::path::{Path, PathBuf};

use crate::common::*;
use lora_gguf::arch::{Heads, RowTransform};
use lora_gguf::convert::OutType;
use lora_gguf::convert::factor::{HeadCounts, row_sources};
use lora_gguf::merge;

fn merge_into(base: &Path, adapter: &Path, out: &Path) {
    merge::merge(&merge_options(base, &[(adapter, 1.0)], out, 2))
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

/// `lora-validate --merged` on a tiny base with the control gates opened (a random tiny model's adapter drifts
/// everywhere; only the merged limits are under test): exit status and the failing metrics.
fn validate_merged(base: &Path, adapter: &Path, merged: &Path, dir: &Path) -> (i32, Vec<String>) {
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        [
            r#"{"id": "c1", "kind": "control", "prompt": "Hello, world", "max_tokens": 8}"#,
            r#"{"id": "c2", "kind": "control", "prompt": "The quick brown fox", "max_tokens": 8}"#,
            r#"{"id": "c3", "kind": "control", "prompt": "Tiny models talk", "max_tokens": 8}"#,
            r#"{"id": "c4", "kind": "control", "prompt": "Bytes are tokens", "max_tokens": 8}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let report = dir.join("report.json");
    let out = lora_validate()
        .arg("--base")
        .arg(base)
        .arg("--adapter")
        .arg(adapter)
        .arg("--merged")
        .arg(merged)
        .arg("--prompts")
        .arg(&prompts)
        .args([
            "--scales",
            "0,1",
            "--max-control-kl-mean",
            "1000",
            "--max-control-kl-max",
            "1000",
            "--min-control-top1",
            "0",
            "--min-target-kl",
            "0",
            "-t",
            "2",
            "--format",
            "json",
            "-o",
        ])
        .arg(&report)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{e}: {stderr}")),
    )
    .unwrap();
    eprintln!(
        "{}: merged {}",
        merged.file_name().unwrap().to_string_lossy(),
        j["merged"]["summary"]
    );
    let metrics = j["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["metric"].as_str().unwrap().to_string())
        .collect();
    (out.status.code().unwrap_or(-1), metrics)
}

/// The correct merge passes; the merge of the adapter rearranged by `sabotage` fails on the merged limits only,
/// `expected` among them.
fn check(case: &str, expected: &str, sabotage: impl FnMut(&str, &mut Vec<u8>)) {
    let dir = tempfile::tempdir().unwrap();
    let base = base_gguf(&base_of(case));
    let adapter = dir.path().join("adapter.gguf");
    convert_case(case, OutType::F32, &adapter, false);
    let wrong_adapter = dir.path().join("wrong-adapter.gguf");
    rewrite_gguf(&adapter, &wrong_adapter, |_, _| true, sabotage);
    let (good, wrong): (PathBuf, PathBuf) =
        (dir.path().join("good.gguf"), dir.path().join("wrong.gguf"));
    merge_into(&base, &adapter, &good);
    merge_into(&base, &wrong_adapter, &wrong);

    let (code, failures) = validate_merged(&base, &adapter, &good, dir.path());
    assert_eq!((code, failures.len()), (0, 0), "{case}: {failures:?}");
    let (code, failures) = validate_merged(&base, &adapter, &wrong, dir.path());
    assert_eq!(code, 1, "{case}: {failures:?}");
    assert!(
        failures.iter().any(|m| m == expected),
        "{case}: {failures:?}"
    );
    assert!(
        failures.iter().all(|m| m.starts_with("merged_")),
        "{case}: {failures:?}"
    );
}

/// f32 values of a little-endian byte buffer, and back.
fn floats(bytes: &[u8]) -> Vec<f32> {
    f32s(bytes)
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn a_merge_without_the_qk_permutation_fails_validate_merged() {
    // the llama base: 4 query heads, 2 key/value heads; lora_b rows are output features of r = 8 values
    let heads = HeadCounts::new(4, 2);
    // measured: merged KL 0.085 nats mean (limit 0.05), top-1 0.28, no greedy continuation identical
    check("llama", "merged_kl_mean", |name, bytes| {
        let which = if name.ends_with("attn_q.weight.lora_b") {
            Heads::Query
        } else if name.ends_with("attn_k.weight.lora_b") {
            Heads::KeyValue
        } else {
            return;
        };
        let b = floats(bytes);
        let rows = b.len() / 8;
        // the converter wrote gguf[j] = hf[src[j]]: put every row back where Hugging Face had it
        let src = row_sources(RowTransform::LlamaRope(which), rows, heads).unwrap();
        let mut hf = vec![0f32; b.len()];
        for (j, &s) in src.iter().enumerate() {
            hf[s * 8..(s + 1) * 8].copy_from_slice(&b[j * 8..(j + 1) * 8]);
        }
        assert_ne!(hf, b, "{name}: the permutation moves rows");
        *bytes = to_bytes(&hf);
    });
}

#[test]
fn a_merge_with_two_experts_swapped_fails_validate_merged() {
    // stacked experts (E = 4): each factor holds E equal blocks, expert-major; swap experts 0 and 1
    // measured: merged KL only 0.0027 nats mean (the tiny experts' LoRAs are alike), but top-1 agreement 0.59
    check("mixtral", "merged_top1_agreement", |name, bytes| {
        if !(name.contains("_exps.weight.lora_a") || name.contains("_exps.weight.lora_b")) {
            return;
        }
        let mut v = floats(bytes);
        let block = v.len() / 4;
        let (first, rest) = v.split_at_mut(block);
        first.swap_with_slice(&mut rest[..block]);
        *bytes = to_bytes(&v);
    });
}
