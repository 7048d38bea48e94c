//! The base an adapter was converted against, recorded by `lora-convert --base` (docs/base-fingerprint.md): shown by
//! `inspect`, checked by `inspect --base`, `lora-validate` and `lora-convert merge` — a warning for another base of
//! the same shapes, a refusal with `--strict-base`. On the tiny llama fixture; the "other base" is a copy of its base
//! with one token renamed (inspect) or one targeted weight changed (validate, merge).

use std::path::{Path, PathBuf};

use crate::common::*;
use lora_gguf::gguf::{GgufFile, Value};

/// The llama case converted against its base.
fn converted(dir: &Path) -> PathBuf {
    let out = dir.join("llama.gguf");
    convert_on(case_dir("llama"), &out, "llama")
        .assert()
        .success();
    out
}

/// The llama base with token 5 renamed: the same shapes and weights, another tokenizer.
fn other_vocabulary(dir: &Path) -> PathBuf {
    let out = dir.join("other-vocab.gguf");
    rewrite_gguf(
        &base_gguf("llama"),
        &out,
        |k, v| {
            if k == "tokenizer.ggml.tokens"
                && let Value::Array(a) = v
            {
                a.values[5] = Value::String("<renamed>".into());
            }
            true
        },
        |_, _| {},
    );
    out
}

/// The llama base with one weight of a targeted tensor changed: the same shapes and tokenizer, other weights.
#[cfg(feature = "merge")]
pub fn other_weights(dir: &Path) -> PathBuf {
    let out = dir.join("other-weights.gguf");
    rewrite_gguf(
        &base_gguf("llama"),
        &out,
        |_, _| true,
        |name, bytes| {
            if name == "blk.0.attn_q.weight" {
                bytes[0] ^= 1;
            }
        },
    );
    out
}

/// The one difference of [`other_weights`], as every command words it.
#[cfg(feature = "merge")]
pub fn weights_difference(adapter: &Path, other: &Path) -> String {
    use lora_gguf::gguf_adapter::fingerprint::BaseFingerprint;
    let recorded = BaseFingerprint::read(&GgufFile::open(adapter).unwrap())
        .unwrap()
        .unwrap();
    let names: Vec<&str> = recorded.targets.iter().map(|t| t.name.as_str()).collect();
    let now = BaseFingerprint::of(&GgufFile::open(other).unwrap(), &names, true).unwrap();
    let short = |h: &Option<String>| h.as_deref().unwrap()[..12].to_string();
    format!(
        "the targeted tensors' weights differ (sha256 of their first bytes {}… ≠ {}…) with the same names, shapes and \
         types: another fine-tune or revision of the model",
        short(&recorded.targets_prefix_sha256),
        short(&now.targets_prefix_sha256)
    )
}

/// The `--strict-base` refusal of `adapter` on `other` (after `error: `).
#[cfg(feature = "merge")]
pub fn strict_refusal(adapter: &Path, other: &Path) -> String {
    format!(
        "error: --strict-base: `{}` was converted against `base.gguf`, and `{}` is not that base (1 difference(s)):\n  \
         - {}\nGive the base it was converted against, or reconvert the adapter against this one (`lora-convert \
         ADAPTER_DIR -o OUT.gguf --base {}`).\n",
        adapter.display(),
        other.display(),
        weights_difference(adapter, other),
        other.display()
    )
}

fn inspect(adapter: &Path, base: Option<&Path>, json: bool) -> assert_cmd::assert::Assert {
    let mut c = lora_convert();
    c.arg("inspect").arg(adapter);
    if let Some(b) = base {
        c.arg("--base").arg(b);
    }
    if json {
        c.arg("--json");
    }
    c.assert()
}

#[test]
fn convert_with_base_records_it_and_inspect_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = converted(dir.path());
    let file = GgufFile::open(&adapter).unwrap();
    let base = GgufFile::open(&base_gguf("llama")).unwrap();
    assert_eq!(file.get_u64("general.base_model.count"), Some(1));
    assert_eq!(
        file.get_str("general.base_model.0.name"),
        base.get_str("general.name")
    );
    // The fingerprint comes before general.quantization_version, which stays last (as gguf-py writes it).
    let keys: Vec<&str> = file.metadata.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys[keys.len() - 2..],
        ["lora_gguf.base_fingerprint", "general.quantization_version"]
    );

    let j = json_of(&inspect(&adapter, None, true).success());
    let f = &j["base_fingerprint"];
    assert_eq!(f["recorded"]["file"], "base.gguf");
    assert_eq!(f["recorded"]["architecture"], "llama");
    // The vocabulary hash as gguf-py + hashlib compute it (docs/base-fingerprint.md).
    assert_eq!(
        f["recorded"]["vocab"]["tokens_sha256"],
        "f236effb16e5e40a0ef9ae99305cb2a413c4be7f450236cf349aaf267f41f361"
    );
    // One target per pair, sorted by name, with the base's shapes.
    let pairs: Vec<&str> = j["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["target"].as_str().unwrap())
        .collect();
    let targets = f["recorded"]["targets"].as_array().unwrap();
    assert_eq!(
        targets
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        pairs
    );
    for t in targets {
        let name = t["name"].as_str().unwrap();
        assert_eq!(
            t["ne"],
            serde_json::json!(base.tensor(name).unwrap().dims),
            "{name}"
        );
    }
    assert_eq!(f["matches"], serde_json::Value::Null);
    let text = stdout_of(&inspect(&adapter, None, false).success());
    assert!(
        text.contains(&format!(
            "base      converted against base.gguf ({}): llama",
            base.get_str("general.name").unwrap()
        )),
        "{text}"
    );

    // The recorded base matches, text and JSON.
    let j = json_of(&inspect(&adapter, Some(&base_gguf("llama")), true).success());
    assert_eq!(j["base_fingerprint"]["matches"], true);
    assert_eq!(j["base_fingerprint"]["differences"], serde_json::json!([]));
    let text = stdout_of(&inspect(&adapter, Some(&base_gguf("llama")), false).success());
    assert!(
        text.contains(&format!(
            "\n          {} is the recorded base\n",
            base_gguf("llama").display()
        )),
        "{text}"
    );
}

#[test]
fn inspect_names_another_tokenizer_and_still_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = converted(dir.path());
    let other = other_vocabulary(dir.path());
    let j = json_of(&inspect(&adapter, Some(&other), true).success());
    let f = &j["base_fingerprint"];
    assert_eq!(f["matches"], false);
    assert_eq!(j["fit"]["fits"], true, "same shapes: it still fits");
    let d = f["differences"].as_array().unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["what"], "vocabulary");
    let message = d[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("vocabulary differs (sha256 f236effb16e5… ≠ ")
            && message.ends_with(
                "…, 272 vs 272 tokens): the adapter was converted against another tokenizer"
            ),
        "{message}"
    );
    let text = stdout_of(&inspect(&adapter, Some(&other), false).success());
    assert!(
        text.contains(&format!(
            "          warning: {} is not the recorded base (1 difference(s)):\n            - {message}\n",
            other.display()
        )),
        "{text}"
    );
}

#[test]
fn without_a_base_gguf_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.gguf");
    convert_cmd(case_dir("llama"), &out)
        .arg("--base-config")
        .arg(base_config("llama"))
        .assert()
        .success();
    let file = GgufFile::open(&out).unwrap();
    let keys: Vec<&str> = file.metadata.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "general.architecture",
            "general.type",
            "adapter.type",
            "general.name",
            "adapter.lora.alpha",
            "general.quantization_version"
        ]
    );
    let j = json_of(&inspect(&out, Some(&base_gguf("llama")), true).success());
    assert!(j.get("base_fingerprint").is_none(), "{j}");
}

#[cfg(feature = "merge")]
mod merge {
    use super::*;

    fn merge(adapter: &Path, base: &Path, out: &Path, strict: bool) -> std::process::Output {
        let mut c = lora_convert();
        c.arg("merge")
            .arg("--base")
            .arg(base)
            .arg("--adapter")
            .arg(adapter)
            .arg("-o")
            .arg(out)
            .arg("--quiet");
        if strict {
            c.arg("--strict-base");
        }
        c.output().unwrap()
    }

    #[test]
    fn merge_warns_on_another_base_and_refuses_it_with_strict_base() {
        let dir = tempfile::tempdir().unwrap();
        let adapter = converted(dir.path());
        let other = other_weights(dir.path());

        let out = dir.path().join("right.gguf");
        let o = merge(&adapter, &base_gguf("llama"), &out, true);
        assert!(o.status.success(), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "");

        let out = dir.path().join("warned.gguf");
        let o = merge(&adapter, &other, &out, false);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(out.exists());
        assert!(
            stderr.starts_with(&format!(
                "warning: `{}` was converted against `base.gguf`, and `{}` is not that base (1 difference(s)):\n  - {}\n",
                adapter.display(),
                other.display(),
                weights_difference(&adapter, &other)
            )),
            "{stderr}"
        );

        let out = dir.path().join("refused.gguf");
        let o = merge(&adapter, &other, &out, true);
        assert_eq!(o.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            strict_refusal(&adapter, &other)
        );
        assert!(!out.exists());
    }

    #[test]
    fn strict_base_refuses_an_adapter_without_a_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let adapter = dir.path().join("unrecorded.gguf");
        convert_cmd(case_dir("llama"), &adapter)
            .arg("--base-config")
            .arg(base_config("llama"))
            .assert()
            .success();
        let out = dir.path().join("merged.gguf");
        let o = merge(&adapter, &base_gguf("llama"), &out, true);
        assert_eq!(o.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!(
                "error: --strict-base: `{a}` records no base fingerprint, so it cannot be checked against `{b}`; \
                 reconvert it with `lora-convert ADAPTER_DIR -o {a} --base {b}` (which records it), or drop \
                 --strict-base\n",
                a = adapter.display(),
                b = base_gguf("llama").display()
            )
        );
        assert!(!out.exists());
    }
}

#[cfg(feature = "validate")]
mod validate {
    use super::*;

    /// `lora-validate` on one prompt (the check comes before llama.cpp; the run itself is not what is tested).
    fn validate(adapter: &Path, base: &Path, strict: bool, report: &Path) -> std::process::Output {
        let smoke = std::fs::read_to_string(root().join("fixtures/gemma-lora/control-smoke.jsonl"))
            .unwrap();
        let prompts = report.with_file_name("one-prompt.jsonl");
        std::fs::write(&prompts, smoke.lines().next().unwrap()).unwrap();
        let mut c = lora_validate();
        c.arg("--base")
            .arg(base)
            .arg("--adapter")
            .arg(adapter)
            .arg("--prompts")
            .arg(&prompts)
            .args([
                "--scales",
                "0,1",
                "--max-tokens",
                "4",
                "--format",
                "json",
                "-o",
            ])
            .arg(report);
        if strict {
            c.arg("--strict-base");
        }
        c.output().unwrap()
    }

    #[test]
    fn validate_warns_on_another_base_in_stderr_and_report_and_refuses_it_with_strict_base() {
        let dir = tempfile::tempdir().unwrap();
        let adapter = converted(dir.path());
        let other = other_weights(dir.path());
        let report = dir.path().join("report.json");

        let o = validate(&adapter, &base_gguf("llama"), true, &report);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(report.exists(), "{stderr}");
        assert!(!stderr.contains("warning"), "{stderr}");
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let warnings = j["warnings"].as_array().cloned().unwrap_or_default();
        assert!(
            warnings
                .iter()
                .all(|w| !w.as_str().unwrap().contains("converted against")),
            "{warnings:?}"
        );
        std::fs::remove_file(&report).unwrap();

        let o = validate(&adapter, &other, false, &report);
        let stderr = String::from_utf8_lossy(&o.stderr);
        let warning = format!(
            "`{}` was converted against `base.gguf`, and `{}` is not that base (1 difference(s)):\n  - {}\nThe \
             adapter may still load, but it was not trained for this base: check its output, or pass --strict-base \
             to refuse.",
            adapter.display(),
            other.display(),
            weights_difference(&adapter, &other)
        );
        assert!(
            stderr.contains(&format!("warning: {warning}\n")),
            "{stderr}"
        );
        let j: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{e}: {stderr}")),
        )
        .unwrap();
        assert!(
            j["warnings"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(warning)),
            "{j}"
        );
        std::fs::remove_file(&report).unwrap();

        let o = validate(&adapter, &other, true, &report);
        assert_eq!(o.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            strict_refusal(&adapter, &other)
        );
        assert!(!report.exists());
    }
}

/// `--reference` with `--strict-base`: a pack recorded on another model (the Gemma test pack against the tiny llama
/// base) is refused before llama.cpp runs, naming the pack, the base and each difference; nothing is written.
#[cfg(feature = "validate")]
#[test]
fn strict_base_refuses_a_reference_pack_recorded_on_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = converted(dir.path());
    let pack = root().join("fixtures/gemma-lora/reference-pack");
    let report = dir.path().join("r.json");
    let a = lora_validate()
        .arg("--base")
        .arg(base_gguf("llama"))
        .arg("--adapter")
        .arg(&adapter)
        .arg("--reference")
        .arg(&pack)
        .arg("--strict-base")
        .args(["--format", "json", "-o"])
        .arg(&report)
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    let head = format!(
        "error: --strict-base: the reference pack `{}` was not recorded on the base `{}` (",
        pack.display(),
        base_gguf("llama").display()
    );
    assert!(stderr.starts_with(&head), "{stderr}");
    assert!(
        stderr.contains("\n  - the pack was recorded on Gemma3ForCausalLM (GGUF architecture gemma3); the base GGUF is llama\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Give the GGUF of the model the pack was recorded on"),
        "{stderr}"
    );
    assert!(!report.exists());
}
