//! Every committed fuzz input through its target, on stable, in the normal test run: the minimized corpora
//! (`fuzz/corpus/<target>/`) and the reproducers of the bugs fuzzing found (`fuzz/regressions/<target>/`). The
//! bodies are the fuzz targets' own (`fuzz/targets.rs`), so what a target checks under libFuzzer is checked here.
//! docs/fuzzing.md says how the corpora were made.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

use crate::common::root;

/// Run `body` on every committed input of `target`; fail naming each input that panics.
fn replay(target: &str, body: fn(&[u8], &targets::Ctx)) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let ctx = targets::Ctx::new(root(), scratch.path().to_path_buf());
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = root().join("fuzz").join(dir).join(target);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            inputs.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    inputs.sort();
    assert!(
        inputs.len() >= 5,
        "fuzz/corpus/{target} holds {} inputs: the corpus is missing",
        inputs.len()
    );
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|input| {
            let data = std::fs::read(input).expect("corpus input");
            let run = std::panic::catch_unwind(|| body(&data, &ctx));
            run.is_err().then(|| shown(input))
        })
        .collect();
    assert!(failed.is_empty(), "{target}: panicked on {failed:?}");
}

fn shown(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[test]
fn peft_config() {
    replay("peft_config", targets::peft_config);
}

#[test]
fn mlx_config() {
    replay("mlx_config", targets::mlx_config);
}

#[test]
fn safetensors_peft() {
    replay("safetensors_peft", targets::safetensors_peft);
}

#[test]
fn safetensors_mlx() {
    replay("safetensors_mlx", targets::safetensors_mlx);
}

#[test]
fn gguf_base() {
    replay("gguf_base", targets::gguf_base);
}

#[test]
fn gguf_adapter() {
    replay("gguf_adapter", targets::gguf_adapter);
}

#[test]
fn golden() {
    replay("golden", targets::golden);
}

#[test]
fn limits() {
    replay("limits", targets::limits);
}
