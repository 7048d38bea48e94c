//! `lora-convert merge --imatrix` against `llama-quantize --imatrix` itself (fixtures/imatrix/make.sh: llama.cpp's
//! llama-imatrix and llama-quantize, same revision, on the tiny llama base). With an adapter at scale 0 the merged
//! tensors are Q(W_f32 + 0) — so merging into llama-quantize's Q4_0 file with `--source` the f32 base and the same
//! importance matrix must rewrite its bytes exactly, for the GGUF and the legacy `.dat` format; without the
//! importance matrix the bytes differ (it is used).

use std::path::{Path, PathBuf};

use crate::common::*;
use lora_gguf::gguf::GgufFile;
use lora_gguf::merge::{self, MergeError, OutType};

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/imatrix").join(name)
}

fn merge_with(
    base: &Path,
    imatrix: Option<&Path>,
    scale: f32,
    out: &Path,
) -> Result<merge::Summary, MergeError> {
    merge::merge(&merge::Options {
        outtype: OutType::Keep,
        source: Some(base_gguf("llama")),
        imatrix: imatrix.map(Path::to_path_buf),
        ..merge_options(base, &[(&case_dir("llama"), scale)], out, 2)
    })
}

/// The merged tensors of `merged` against the same tensors of `reference`: (identical, differing) counts.
fn compare(merged: &Path, reference: &Path, names: &[String]) -> (usize, usize) {
    let (m, r) = (
        GgufFile::open(merged).unwrap(),
        GgufFile::open(reference).unwrap(),
    );
    names.iter().fold((0, 0), |(same, differ), n| {
        if m.read_tensor_bytes(n).unwrap() == r.read_tensor_bytes(n).unwrap() {
            (same + 1, differ)
        } else {
            (same, differ + 1)
        }
    })
}

#[test]
fn merged_tensors_are_llama_quantizes_bytes_with_the_same_importance_matrix() {
    let dir = tempfile::tempdir().unwrap();
    for (imatrix, quantized) in [
        ("imatrix.gguf", "llama-q4_0-imatrix.gguf"),
        ("imatrix.dat", "llama-q4_0-imatrix-dat.gguf"),
    ] {
        let base = fixture(quantized);
        let out = dir.path().join(format!("{imatrix}.gguf"));
        let summary = merge_with(&base, Some(&fixture(imatrix)), 0.0, &out).unwrap();
        let names: Vec<String> = summary.merged.iter().map(|t| t.name.clone()).collect();
        assert_eq!(names.len(), 14);
        assert_eq!(compare(&out, &base, &names), (14, 0), "{imatrix}");
        let m = GgufFile::open(&out).unwrap();
        assert_eq!(m.get_str("lora_gguf.merge.imatrix"), Some(imatrix));
        // without it, ggml's Q4_0 rounds otherwise
        let plain = dir.path().join("plain.gguf");
        merge_with(&base, None, 0.0, &plain).unwrap();
        let (same, differ) = compare(&plain, &base, &names);
        eprintln!(
            "{imatrix}: 14 of 14 tensors identical with it; without it {same} identical, {differ} differ"
        );
        assert_eq!(differ, 14, "{imatrix}");
    }
}

#[test]
fn an_importance_matrix_that_does_not_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("llama-q4_0-imatrix.gguf");
    let out = dir.path().join("m.gguf");
    // a legacy .dat whose first entry has one value too few
    let mut dat = std::fs::read(fixture("imatrix.dat")).unwrap();
    let name_len = i32::from_le_bytes(dat[4..8].try_into().unwrap()) as usize;
    let name = String::from_utf8(dat[8..8 + name_len].to_vec()).unwrap();
    let nval_at = 8 + name_len + 4;
    let nval = i32::from_le_bytes(dat[nval_at..nval_at + 4].try_into().unwrap());
    dat[nval_at..nval_at + 4].copy_from_slice(&(nval - 1).to_le_bytes());
    dat.drain(nval_at + 4..nval_at + 8);
    let short = dir.path().join("short.dat");
    std::fs::write(&short, &dat).unwrap();
    let e = merge_with(&base, Some(&short), 1.0, &out).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "--imatrix `{}`: entry `{name}` has {} values, but the tensor needs {nval} (ne0 × experts): an \
             importance matrix of another model?",
            short.display(),
            nval - 1
        )
    );
    // a file that is neither format
    let junk = dir.path().join("junk.dat");
    std::fs::write(&junk, [0u8; 16]).unwrap();
    let e = merge_with(&base, Some(&junk), 1.0, &out).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "--imatrix `{}`: neither an imatrix GGUF nor a legacy .dat with entries",
            junk.display()
        )
    );
    assert!(!out.exists());
}

/// The command line passes `--source` and `--imatrix` through and records both.
#[test]
fn the_command_line_takes_source_and_imatrix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let a = lora_convert()
        .arg("merge")
        .arg("--base")
        .arg(fixture("llama-q4_0-imatrix.gguf"))
        .arg("--source")
        .arg(base_gguf("llama"))
        .arg("--imatrix")
        .arg(fixture("imatrix.dat"))
        .arg("--adapter")
        .arg(format!("{}:0", case_dir("llama").display()))
        .args(["--outtype", "keep", "-o"])
        .arg(&out)
        .assert()
        .success();
    assert!(
        stdout_of(&a).contains("merged    14 tensors"),
        "{}",
        stdout_of(&a)
    );
    let m = GgufFile::open(&out).unwrap();
    assert_eq!(m.get_str("lora_gguf.merge.source"), Some("base.gguf"));
    assert_eq!(m.get_str("lora_gguf.merge.imatrix"), Some("imatrix.dat"));
    let names: Vec<String> = m
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk."))
        .filter(|t| t.dims.len() == 2)
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(
        compare(&out, &fixture("llama-q4_0-imatrix-dat.gguf"), &names),
        (14, 0)
    );
}
