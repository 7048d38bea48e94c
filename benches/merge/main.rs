//! The merge benchmark (BENCHMARKS.md, "Merge"): synthesizes a Llama-3.2-1B-shaped Q4_K_M model (hidden 2048,
//! 16 layers, FFN 8192, 32/8 heads, vocabulary 128 256, tied embedding; Q4_K for attn_q/k/output and ffn_gate/up,
//! Q6_K for attn_v, ffn_down and the embedding, as llama-quantize's Q4_K_M mix) and an r = 64 all-linear GGUF
//! adapter (112 pairs, f32), then times the real `lora-convert merge` (default and `--outtype keep`) next to a
//! plain `cp` of the base and to ggml's pure quantization time for the same merged tensors (the same
//! `ggml_quantize_chunk` calls on the same shapes and types, on the same threads, measured while synthesizing).
//!
//! Peak RSS is each command's `ru_maxrss`, which on Linux carries the high-water mark of the process that spawned it
//! through exec (a vfork'd child shares its parent's memory until then). So the benchmark process stays small: it
//! synthesizes the model in a child process of its own (`--synthesize-only`), never holding a tensor itself, and
//! the `cp` row is the check that the figure is the command's (a few MB).
//!
//! `cargo bench --bench merge -- --help`; no network, nothing written outside `--dir`.

#[path = "../convert/measure.rs"]
#[allow(dead_code)]
mod measure;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use lora_gguf::gguf::value::Array;
use lora_gguf::gguf::{GgmlType, TensorSpec, Value, ValueType, Writer};
use lora_gguf::merge::ggml;
use rayon::prelude::*;

/// Benchmark lora-convert merge on a synthetic Llama-3.2-1B Q4_K_M model with an r = 64 adapter.
#[derive(Parser, Debug)]
struct Args {
    /// Work directory (removed at the end unless --keep).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("lora-gguf-merge-bench"))]
    dir: PathBuf,
    /// Measured runs per configuration.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Threads for the merge and the reference quantization.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Layers (16 for Llama 3.2 1B; fewer for a quick run).
    #[arg(long, default_value_t = 16)]
    layers: usize,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
    /// The lora-convert binary to time (default: the one cargo built for this benchmark).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Only write the base and the adapter into --dir and print the pure quantization time in seconds (the
    /// benchmark runs itself this way, so the tensors it synthesizes never raise its own peak RSS).
    #[arg(long, hide = true)]
    synthesize_only: bool,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

const HIDDEN: u64 = 2048;
const FFN: u64 = 8192;
const KV: u64 = 512;
const VOCAB: u64 = 128_256;
const RANK: u64 = 64;

/// xorshift values with a heavy tail, like trained weights.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let u = (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        u * u * u * 0.4 + u * 0.02
    }
}

fn model_tensors(layers: usize) -> Vec<(String, Vec<u64>, GgmlType)> {
    use GgmlType::*;
    let mut t = vec![("token_embd.weight".to_string(), vec![HIDDEN, VOCAB], Q6_K)];
    for l in 0..layers {
        let b = |n: &str| format!("blk.{l}.{n}.weight");
        t.push((b("attn_norm"), vec![HIDDEN], F32));
        t.push((b("attn_q"), vec![HIDDEN, HIDDEN], Q4_K));
        t.push((b("attn_k"), vec![HIDDEN, KV], Q4_K));
        t.push((b("attn_v"), vec![HIDDEN, KV], Q6_K));
        t.push((b("attn_output"), vec![HIDDEN, HIDDEN], Q4_K));
        t.push((b("ffn_norm"), vec![HIDDEN], F32));
        t.push((b("ffn_gate"), vec![HIDDEN, FFN], Q4_K));
        t.push((b("ffn_up"), vec![HIDDEN, FFN], Q4_K));
        t.push((b("ffn_down"), vec![FFN, HIDDEN], Q6_K));
    }
    t.push(("output_norm.weight".into(), vec![HIDDEN], F32));
    t
}

/// Write the model; returns the pure quantization time of the tensors the adapter targets.
fn synth_model(path: &Path, layers: usize) -> Duration {
    let s = |v: &str| Value::String(v.into());
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s("llama")),
        ("general.type".into(), s("model")),
        ("general.name".into(), s("synthetic Llama 3.2 1B")),
        ("llama.block_count".into(), Value::U32(layers as u32)),
        ("llama.context_length".into(), Value::U32(131_072)),
        ("llama.embedding_length".into(), Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length".into(), Value::U32(FFN as u32)),
        ("llama.attention.head_count".into(), Value::U32(32)),
        ("llama.attention.head_count_kv".into(), Value::U32(8)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.rope.dimension_count".into(), Value::U32(64)),
        ("general.file_type".into(), Value::U32(15)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::new(
                ValueType::String,
                (0..VOCAB)
                    .map(|i| Value::String(format!("<{i}>")))
                    .collect(),
            )),
        ),
    ];
    let tensors = model_tensors(layers);
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, d, t)| TensorSpec::new(n.clone(), d.clone(), *t))
        .collect();
    let file = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(path).unwrap());
    let mut w = Writer::new(file, &metadata, &specs).unwrap();
    let mut quant_time = Duration::ZERO;
    for (i, (name, dims, ty)) in tensors.iter().enumerate() {
        let row = dims[0] as usize;
        let rows = dims.iter().skip(1).product::<u64>() as usize;
        // rows in chunks of 256 on all threads, as the merge does (ggml quantizes row by row either way)
        let values: Vec<f32> = (0..rows * row)
            .into_par_iter()
            .chunks(1 << 20)
            .enumerate()
            .flat_map_iter(|(c, idx)| {
                let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64) << 32 | c as u64));
                idx.into_iter().map(move |_| r.next())
            })
            .collect();
        let row_bytes = ggml::row_bytes(*ty, row).unwrap();
        let mut out = vec![0u8; rows * row_bytes];
        let start = Instant::now();
        out.par_chunks_mut(row_bytes * 256)
            .zip(values.par_chunks(row * 256))
            .for_each(|(o, v)| ggml::quantize_rows(*ty, v, row, None, o).unwrap());
        if name.starts_with("blk.") && !name.contains("norm") {
            quant_time += start.elapsed();
        }
        w.write_tensor(name, &out).unwrap();
    }
    w.finish().unwrap().flush().unwrap();
    quant_time
}

fn synth_adapter(path: &Path, layers: usize) {
    let s = |v: &str| Value::String(v.into());
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s("llama")),
        ("general.type".into(), s("adapter")),
        ("adapter.type".into(), s("lora")),
        ("adapter.lora.alpha".into(), Value::F32(RANK as f32 * 2.0)),
    ];
    let mut tensors = Vec::new();
    for l in 0..layers {
        for (n, inp, out) in [
            ("attn_q", HIDDEN, HIDDEN),
            ("attn_k", HIDDEN, KV),
            ("attn_v", HIDDEN, KV),
            ("attn_output", HIDDEN, HIDDEN),
            ("ffn_gate", HIDDEN, FFN),
            ("ffn_up", HIDDEN, FFN),
            ("ffn_down", FFN, HIDDEN),
        ] {
            let t = format!("blk.{l}.{n}.weight");
            tensors.push((format!("{t}.lora_a"), vec![inp, RANK], 0.02f32));
            tensors.push((format!("{t}.lora_b"), vec![RANK, out], 0.004f32));
        }
    }
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, d, _)| TensorSpec::new(n.clone(), d.clone(), GgmlType::F32))
        .collect();
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = Writer::new(file, &metadata, &specs).unwrap();
    let mut r = Rng(42);
    for (n, d, scale) in &tensors {
        let len = d.iter().product::<u64>() as usize;
        let bytes: Vec<u8> = (0..len)
            .flat_map(|_| (r.next() * scale * 50.0).to_le_bytes())
            .collect();
        w.write_tensor(n, &bytes).unwrap();
    }
    w.finish().unwrap().flush().unwrap();
}

/// Run this benchmark again with `--synthesize-only`; the pure quantization time it printed.
fn synthesize_in_child(args: &Args) -> Duration {
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--synthesize-only")
        .arg("--dir")
        .arg(&args.dir)
        .arg("--layers")
        .arg(args.layers.to_string())
        .arg("--threads")
        .arg(args.threads.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "synthesizing the model failed");
    let seconds: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    Duration::from_secs_f64(seconds)
}

fn main() {
    let args = Args::parse();
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .unwrap();
    std::fs::create_dir_all(&args.dir).unwrap();
    let base = args.dir.join("base-q4_k_m.gguf");
    let adapter = args.dir.join("adapter-r64.gguf");
    if args.synthesize_only {
        let quant_time = synth_model(&base, args.layers);
        synth_adapter(&adapter, args.layers);
        println!("{}", quant_time.as_secs_f64());
        return;
    }
    eprintln!("synthesizing {} in a child process ...", base.display());
    let quant_time = synthesize_in_child(&args);
    let size = std::fs::metadata(&base).unwrap().len();
    let bin = args
        .bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lora-convert")));
    let log = args.dir.join("stderr.log");
    let mut rows: Vec<(String, Vec<measure::Sample>)> = Vec::new();
    let out = args.dir.join("merged.gguf");
    let copy = args.dir.join("copy.gguf");
    let configs: Vec<(String, Vec<String>)> = vec![
        ("cp of the base".into(), Vec::new()),
        ("merge (default: auto)".into(), vec![]),
        (
            "merge --outtype keep".into(),
            vec!["--outtype".into(), "keep".into()],
        ),
    ];
    for run in 0..args.runs {
        for (i, (name, extra)) in configs.iter().enumerate() {
            measure::warm_cache(&base).unwrap();
            let mut cmd = if i == 0 {
                let mut c = Command::new("cp");
                c.arg(&base).arg(&copy);
                c
            } else {
                let mut c = Command::new(&bin);
                c.arg("merge")
                    .arg("--base")
                    .arg(&base)
                    .arg("--adapter")
                    .arg(&adapter)
                    .arg("-o")
                    .arg(&out)
                    .arg("--force")
                    .arg("--threads")
                    .arg(args.threads.to_string())
                    .args(extra);
                c
            };
            let sample = measure::run(&mut cmd, &log).unwrap();
            measure::remove(&copy);
            if run == 0 {
                rows.push((name.clone(), Vec::new()));
            }
            rows[i].1.push(sample);
        }
    }
    println!(
        "synthetic Llama-3.2-1B Q4_K_M, {} layers: {} bytes; adapter r = {RANK}, {} pairs; {} threads; {} runs; {}; load {}",
        args.layers,
        size,
        args.layers * 7,
        args.threads,
        args.runs,
        measure::cpu_model(),
        measure::load_average()
    );
    println!(
        "ggml quantization of the {} merged tensors to their base types: {:.2} s",
        args.layers * 7,
        quant_time.as_secs_f64()
    );
    println!("| run | wall min | wall median | × quantization | CPU | peak RSS |");
    println!("|---|---|---|---|---|---|");
    for (name, samples) in &rows {
        let walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
        let (min, median) = measure::min_median(&walls);
        let cpu = samples.iter().map(|s| s.cpu).min().unwrap_or_default();
        let rss = samples.iter().map(|s| s.max_rss).max().unwrap_or(0);
        println!(
            "| {name} | {:.2} s | {:.2} s | {:.2} | {:.2} s | {} MB |",
            min.as_secs_f64(),
            median.as_secs_f64(),
            min.as_secs_f64() / quant_time.as_secs_f64(),
            cpu.as_secs_f64(),
            rss / 1_000_000
        );
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
}
