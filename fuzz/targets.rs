//! The fuzz targets' bodies, shared by the libFuzzer binaries (`fuzz/fuzz_targets/*.rs`, nightly) and the corpus
//! replay in the normal test suite (`tests/fuzz_replay.rs`, stable). Each feeds one input to the entry point the
//! command lines use, on real files in a scratch directory, and checks what must hold for every input besides "no
//! panic" (libFuzzer's memory and time limits check the rest): an error names the file it is about; a refused
//! conversion leaves nothing behind; what the converter writes reads back and fits the base it was made for.
// Each libFuzzer binary uses one of these bodies.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lora_gguf::adapter;
use lora_gguf::convert::{self, BaseModel, IgnoredPairs, OutType, Quirks};
use lora_gguf::gguf::GgufFile;
use lora_gguf::gguf_adapter::{GgufAdapter, stack};
use lora_gguf::inspect::{self, gguf_adapter::json_value, render};
use lora_gguf::validate::gate::Limits;
use lora_gguf::validate::golden;

/// PEFT fixture cases the `safetensors_peft` input's first byte picks from: (case, its base). Their configurations
/// cover target_modules lists and regexes, rank/alpha patterns, rsLoRA, embeddings and the head, experts, MLA, fused
/// projections, DoRA, modules_to_save and biases.
pub const PEFT_CASES: &[(&str, &str)] = &[
    ("llama", "llama"),
    ("llama-patterns", "llama"),
    ("llama-rslora", "llama"),
    ("llama-embed-lmhead", "llama"),
    ("mixtral", "mixtral"),
    ("qwen2moe", "qwen2moe"),
    ("deepseek2-mla", "deepseek2"),
    ("gemma3", "gemma3"),
    ("phi3", "phi3"),
    ("dora", "llama"),
    ("modules-to-save", "llama"),
    ("lora-bias", "llama"),
];

/// mlx-lm fixture cases the `safetensors_mlx` input's first byte picks from.
pub const MLX_CASES: &[(&str, &str)] = &[
    ("mlx-llama", "llama"),
    ("mlx-llama-keys", "llama"),
    ("mlx-mixtral", "mixtral"),
    ("mlx-gemma3", "gemma3"),
    ("mlx-qwen3moe", "qwen3moe"),
    ("mlx-phi3", "phi3"),
    ("mlx-dora", "llama"),
];

/// Output types the second byte of a safetensors input picks from.
pub const OUTTYPES: [OutType; 5] = [
    OutType::Auto,
    OutType::F32,
    OutType::F16,
    OutType::Bf16,
    OutType::Q8_0,
];

/// Fixture bases a fuzzed GGUF adapter is fitted against (and stacked on when it fits): untied, tied, experts.
pub const FIT_BASES: &[&str] = &[
    "llama",
    "gemma3",
    "qwen2-tied",
    "mixtral",
    "qwen3moe",
    "deepseek2",
];

/// Fixture cases whose adapter (llama.cpp's own conversion, `reference-converter-f32.gguf`) is fitted against a
/// fuzzed base, and whose PEFT directory is converted onto a fuzzed base of their architecture: (case, GGUF arch).
pub const BASE_ADAPTERS: &[(&str, &str)] =
    &[("llama", "llama"), ("gemma3", "gemma3"), ("phi3", "phi3")];

/// Where the fixtures are and where a target may write.
pub struct Ctx {
    /// The repository root (fixtures/ is there).
    pub root: PathBuf,
    /// A scratch directory only this process writes.
    pub work: PathBuf,
    bases: OnceLock<Vec<GgufFile>>,
    adapters: OnceLock<Vec<GgufAdapter>>,
}

impl Ctx {
    /// Fixtures under `root`, scratch files in `work` (which must exist).
    pub fn new(root: PathBuf, work: PathBuf) -> Ctx {
        Ctx {
            root,
            work,
            bases: OnceLock::new(),
            adapters: OnceLock::new(),
        }
    }

    /// The context of a libFuzzer process: this repository, a scratch directory in /dev/shm (memory) when there
    /// is one. libFuzzer exits without running destructors, so the directory stays (a few KB; docs/fuzzing.md).
    pub fn fuzzing() -> &'static Ctx {
        static CTX: OnceLock<Ctx> = OnceLock::new();
        CTX.get_or_init(|| {
            let shm = Path::new("/dev/shm");
            let tmp = if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            };
            let work = tmp.join(format!("lora-gguf-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&work).expect("scratch directory");
            Ctx::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), work)
        })
    }

    fn case(&self, case: &str) -> PathBuf {
        self.root.join("fixtures/cases").join(case)
    }

    fn base(&self, base: &str) -> PathBuf {
        self.root
            .join("fixtures/bases")
            .join(base)
            .join("base.gguf")
    }

    fn fit_bases(&self) -> &[GgufFile] {
        self.bases.get_or_init(|| {
            FIT_BASES
                .iter()
                .map(|b| GgufFile::open(&self.base(b)).expect("fixture base"))
                .collect()
        })
    }

    fn base_adapters(&self) -> &[GgufAdapter] {
        self.adapters.get_or_init(|| {
            BASE_ADAPTERS
                .iter()
                .map(|(case, _)| {
                    GgufAdapter::open(&self.case(case).join("reference-converter-f32.gguf"))
                        .expect("fixture adapter")
                })
                .collect()
        })
    }

    /// A fresh empty directory `name` in the scratch directory.
    fn fresh_dir(&self, name: &str) -> PathBuf {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }
}

/// Copy a fixture file. Not `fs::copy`: its copy_file_range returns EINTR when libFuzzer's `-timeout` alarm
/// (SIGALRM) arrives during the call, where read and write retry.
fn copy(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).expect("fixture file");
    std::fs::write(to, bytes).expect("scratch write");
}

/// Fail unless `message` (an error's text) names `path`.
fn names(message: &str, path: &Path) {
    let shown = path.display().to_string();
    assert!(
        message.contains(&shown),
        "the error does not name `{shown}`: {message}"
    );
}

/// `adapter_config.json` as PEFT writes it: the PEFT reader on a directory whose weights are the llama fixture's.
pub fn peft_config(data: &[u8], ctx: &Ctx) {
    config(data, ctx, "llama", "adapter_model.safetensors", |dir| {
        lora_gguf::peft::scan(dir)
    });
}

/// `adapter_config.json` as mlx-lm writes it: the mlx-lm reader on a directory whose weights are the mlx-llama
/// fixture's.
pub fn mlx_config(data: &[u8], ctx: &Ctx) {
    config(data, ctx, "mlx-llama", "adapters.safetensors", |dir| {
        lora_gguf::mlx::scan(dir)
    });
}

fn config(
    data: &[u8],
    ctx: &Ctx,
    case: &str,
    weights: &str,
    scan: impl Fn(&Path) -> Result<adapter::Scan, adapter::Error>,
) {
    let dir = ctx.work.join(format!("config-{case}"));
    if !dir.join(weights).exists() {
        std::fs::create_dir_all(&dir).expect("scratch directory");
        copy(&ctx.case(case).join(weights), &dir.join(weights));
    }
    let config = dir.join("adapter_config.json");
    std::fs::write(&config, data).expect("scratch write");
    match scan(&dir) {
        Err(e) => names(&e.to_string(), &config),
        Ok(scan) => {
            for r in &scan.refusals {
                let message = r.to_string();
                assert!(message.contains(&dir.display().to_string()), "{message}");
            }
            for p in &scan.adapter.pairs {
                let _ = scan.adapter.config.scaling_for(&p.module);
                let _ = scan.adapter.config.targeted_parameters(&p.module);
            }
        }
    }
}

/// An mlx-lm or PEFT weights file, converted onto its fixture base: the first byte picks the case (its
/// configuration and base), the second the output type, the rest is the safetensors file.
pub fn safetensors_peft(data: &[u8], ctx: &Ctx) {
    convert_weights(data, ctx, PEFT_CASES, "adapter_model.safetensors");
}

/// [`safetensors_peft`] for mlx-lm's key scheme (`adapters.safetensors`).
pub fn safetensors_mlx(data: &[u8], ctx: &Ctx) {
    convert_weights(data, ctx, MLX_CASES, "adapters.safetensors");
}

fn convert_weights(data: &[u8], ctx: &Ctx, cases: &[(&str, &str)], weights: &str) {
    let [pick, outtype, bytes @ ..] = data else {
        return;
    };
    let (case, base) = cases[usize::from(*pick) % cases.len()];
    // the second byte's top bit: `--drop-ignored-pairs` (deepseek2-mla has pairs llama.cpp's graph ignores)
    let quirks = Quirks {
        ignored_pairs: if *outtype >= 0x80 {
            IgnoredPairs::Drop
        } else {
            IgnoredPairs::Refuse
        },
        ..Quirks::default()
    };
    let outtype = OUTTYPES[usize::from(*outtype) % OUTTYPES.len()];
    let dir = ctx.fresh_dir("adapter");
    copy(
        &ctx.case(case).join("adapter_config.json"),
        &dir.join("adapter_config.json"),
    );
    std::fs::write(dir.join(weights), bytes).expect("scratch write");
    convert_onto(ctx, &dir, &ctx.base(base), outtype, quirks);

    // What `lora-convert inspect DIR --base BASE` does with it.
    let req = inspect::Request {
        path: dir.clone(),
        base: Some(ctx.base(base)),
        base_config: None,
        quirks,
    };
    match inspect::inspect(&req) {
        Ok(report) => {
            let _ = render::text(&report);
            let _ = report.to_json();
        }
        Err(e) => names(&e.to_string(), &dir),
    }
}

/// `lora-convert DIR -o OUT --base BASE --verify --force`; checks the outcome.
fn convert_onto(ctx: &Ctx, dir: &Path, base: &Path, outtype: OutType, quirks: Quirks) {
    let out_dir = ctx.fresh_dir("out");
    let output = out_dir.join("adapter.gguf");
    let opts = convert::Options {
        adapter_dir: dir.to_path_buf(),
        output: output.clone(),
        base: Some(base.to_path_buf()),
        base_config: None,
        outtype,
        arch: None,
        force: true,
        verify: true,
        threads: Some(1),
        quirks,
    };
    let outcome = convert::run(&opts);
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .expect("scratch directory")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    match outcome.result {
        Err(e) => {
            let message = e.to_string();
            assert!(left.is_empty(), "refused ({message}) but left {left:?}");
            // A refusal names a file, or the module / tensor it is about (the plan's refusals).
            let subject = e.subject();
            assert!(
                [dir, base, &output]
                    .iter()
                    .any(|p| message.contains(&p.display().to_string()))
                    || (!subject.starts_with('(') && message.contains(&subject)),
                "the error names no file, module or tensor: {message}"
            );
            assert!(!message.contains("please report"), "{message}");
        }
        Ok(summary) => {
            assert_eq!(left.len(), 1, "wrote {left:?}");
            // What we write must read back and fit the base it was converted for (lora-validate's pre-check).
            let written = GgufAdapter::open(&output).expect("our own output reads back");
            let base_file = GgufFile::open(base).expect("the base read back");
            if let Err(problems) = written.fit(&base_file) {
                panic!(
                    "converted {} pairs, but the output does not fit its base: {problems:?}",
                    summary.pairs
                );
            }
        }
    }
}

/// A base model GGUF: the header reader, every tensor decoded, what the converter takes from a base, the
/// validator's fit of real adapters against it, and a real PEFT adapter converted onto it.
pub fn gguf_base(data: &[u8], ctx: &Ctx) {
    let path = ctx.work.join("base.gguf");
    std::fs::write(&path, data).expect("scratch write");
    let file = match GgufFile::open(&path) {
        Ok(file) => file,
        Err(e) => return names(&e.to_string(), &path),
    };
    for (_, v) in &file.metadata {
        let _ = json_value(v);
    }
    for t in &file.tensors {
        if let Err(e) = file.read_tensor_f32(&t.name) {
            names(&e.to_string(), &path);
        }
    }
    for adapter in ctx.base_adapters() {
        let _ = adapter.fit(&file);
    }
    match BaseModel::from_gguf(&path) {
        Err(e) => names(&e.to_string(), &path),
        Ok(base) => {
            let _ = base.describe();
            for t in &file.tensors {
                let _ = base.target_dims(&t.name);
            }
            if let Some((case, _)) = BASE_ADAPTERS
                .iter()
                .find(|(_, arch)| file.architecture() == Some(*arch))
            {
                convert_onto(
                    ctx,
                    &ctx.case(case),
                    &path,
                    OutType::Auto,
                    Quirks::default(),
                );
            }
        }
    }
}

/// A GGUF LoRA adapter: `lora-convert inspect FILE --base B` and `lora-validate`'s pre-check against each of
/// [`FIT_BASES`]; when it fits one, the stack the validator builds from it (twice, scales 1 and 0.5), which must
/// fit that base too.
pub fn gguf_adapter(data: &[u8], ctx: &Ctx) {
    let path = ctx.work.join("adapter.gguf");
    std::fs::write(&path, data).expect("scratch write");
    let adapter = match GgufAdapter::open(&path) {
        Ok(adapter) => adapter,
        Err(e) => return names(&e.to_string(), &path),
    };
    for p in &adapter.pairs {
        let _ = adapter.runtime_factor(p);
    }
    for t in &adapter.file.tensors {
        if let Err(e) = adapter.file.read_tensor_f32(&t.name) {
            names(&e.to_string(), &path);
        }
    }
    let req = inspect::Request {
        path: path.clone(),
        base: Some(ctx.base(FIT_BASES[0])),
        base_config: None,
        quirks: Quirks::default(),
    };
    match inspect::inspect(&req) {
        Ok(report) => {
            let _ = render::text(&report);
            let _ = report.to_json();
        }
        Err(e) => names(&e.to_string(), &path),
    }
    for base in ctx.fit_bases() {
        if adapter.fit(base).is_err() {
            continue;
        }
        let out = ctx.work.join("stack.gguf");
        let _ = std::fs::remove_file(&out);
        match stack::combine(&[(path.clone(), 1.0), (path.clone(), 0.5)], &out) {
            Err(e) => names(&e.to_string(), &path),
            Ok(()) => {
                let stacked = GgufAdapter::open(&out).expect("our own stack reads back");
                if let Err(problems) = stacked.fit(base) {
                    panic!("the adapter fits its base but its stack does not: {problems:?}");
                }
            }
        }
    }
}

/// A golden-prompt JSONL file, loaded as `lora-validate --prompts FILE` loads it.
pub fn golden(data: &[u8], ctx: &Ctx) {
    let path = ctx.work.join("golden.jsonl");
    std::fs::write(&path, data).expect("scratch write");
    if let Err(e) = golden::load_golden(std::slice::from_ref(&path)) {
        names(&e.to_string(), &path);
    }
}

/// A limits file, read as `lora-validate --limits FILE` reads it.
pub fn limits(data: &[u8], ctx: &Ctx) {
    let path = ctx.work.join("limits.json");
    std::fs::write(&path, data).expect("scratch write");
    if let Err(e) = Limits::from_json_file(&path) {
        names(&e.to_string(), &path);
    }
}
