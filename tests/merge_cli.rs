//! `lora-convert merge` as a user runs it: what it writes and copies, what it records, how it refuses.

use crate::common::*;
use lora_gguf::gguf::GgufFile;
use lora_gguf::gguf::rewrite::raw_metadata;

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Untouched tensors and every metadata entry but general.name are the base's bytes; the merge is recorded and
/// `inspect` shows it; the Modelfile points at the merged file.
#[test]
fn merge_copies_the_base_records_the_merge_and_writes_a_modelfile() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_gguf("gemma3");
    let out = dir.path().join("merged.gguf");
    let a = lora_convert()
        .arg("merge")
        .arg("--base")
        .arg(&base)
        .arg("--adapter")
        .arg(format!("{}:0.5", case_dir("gemma3").display()))
        .arg("-o")
        .arg(&out)
        .arg("--modelfile")
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
    assert!(
        stdout.contains("merged    14 tensors (14 copied unchanged)"),
        "{stdout}"
    );
    let (b, m) = (
        GgufFile::open(&base).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    let (braw, mraw) = (raw_metadata(&b).unwrap(), raw_metadata(&m).unwrap());
    for (k, v) in &braw {
        let got = mraw.iter().find(|(mk, _)| mk == k).map(|(_, v)| v);
        if k == "general.name" {
            let name = m.get_str(k).unwrap();
            assert!(name.ends_with(" + gemma3"), "{name}");
        } else {
            assert_eq!(got, Some(v), "{k} is not the base's bytes");
        }
    }
    let merged: Vec<&str> = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ]
    .iter()
    .flat_map(|n| [0, 1].map(move |l| (l, n)))
    .map(|(l, n)| Box::leak(format!("blk.{l}.{n}.weight").into_boxed_str()) as &str)
    .collect();
    for t in &b.tensors {
        let same = b.read_tensor_bytes(&t.name).unwrap() == m.read_tensor_bytes(&t.name).unwrap();
        assert_eq!(same, !merged.contains(&t.name.as_str()), "{}", t.name);
    }
    let sha = std::process::Command::new("sha256sum")
        .arg(&base)
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout)[..64].to_string();
    assert_eq!(m.get_str("lora_gguf.merge.base_sha256"), Some(sha.as_str()));
    let shown = lora_convert().arg("inspect").arg(&out).assert().success();
    let text = String::from_utf8_lossy(&shown.get_output().stdout).into_owned();
    assert!(text.contains("made by lora-convert merge"), "{text}");
    assert!(
        text.contains(&format!(
            "merged    base base.gguf (sha256 {}…)",
            &sha[..12]
        )),
        "{text}"
    );
    assert!(text.contains("          + gemma3 ×0.5 (sha256 "), "{text}");
    let modelfile = std::fs::read_to_string(dir.path().join("merged.Modelfile")).unwrap();
    assert!(modelfile.contains("\nFROM ./merged.gguf\n"), "{modelfile}");
    assert_eq!(files_in(dir.path()), ["merged.Modelfile", "merged.gguf"]);
}

fn refused(args: &[&str], dir: &std::path::Path, expect: &str) {
    let before = files_in(dir);
    let a = lora_convert().arg("merge").args(args).assert().code(2);
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(stderr.contains(expect), "expected {expect:?} in:\n{stderr}");
    assert_eq!(files_in(dir), before, "something was written");
}

#[test]
fn merge_refusals_name_the_problem_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let out = out.to_str().unwrap();
    let llama = base_gguf("llama");
    let llama = llama.to_str().unwrap();
    let qwen_adapter = dir.path().join("q.gguf");
    convert_case(
        "qwen2",
        lora_gguf::convert::OutType::F32,
        &qwen_adapter,
        false,
    );
    // an adapter for another architecture: the fit check's reasons
    refused(
        &[
            "--base",
            llama,
            "--adapter",
            qwen_adapter.to_str().unwrap(),
            "-o",
            out,
        ],
        dir.path(),
        "does not fit the base",
    );
    // a directory the converter refuses: its own message
    let lora_bias = case_dir("lora-bias");
    refused(
        &[
            "--base",
            llama,
            "--adapter",
            lora_bias.to_str().unwrap(),
            "-o",
            out,
        ],
        dir.path(),
        "`lora_bias` is true",
    );
    // an adapter given as the base
    refused(
        &[
            "--base",
            qwen_adapter.to_str().unwrap(),
            "--adapter",
            lora_bias.to_str().unwrap(),
            "-o",
            out,
        ],
        dir.path(),
        "is not a model: general.type is \"adapter\"",
    );
    let llama_dir = case_dir("llama");
    let llama_dir = llama_dir.to_str().unwrap();
    refused(
        &[
            "--base",
            llama,
            "--adapter",
            llama_dir,
            "-o",
            out,
            "--outtype",
            "q9_9",
        ],
        dir.path(),
        "--outtype q9_9: expected auto, keep or a type ggml can quantize to",
    );
    // q4_K needs rows of 256; the fixture's are 64 and 128 wide
    refused(
        &[
            "--base",
            llama,
            "--adapter",
            llama_dir,
            "-o",
            out,
            "--outtype",
            "q4_K",
        ],
        dir.path(),
        "not a multiple of q4_K's block of 256",
    );
    std::fs::write(out, b"x").unwrap();
    refused(
        &["--base", llama, "--adapter", llama_dir, "-o", out],
        dir.path(),
        "exists; pass --force to overwrite it",
    );
}
