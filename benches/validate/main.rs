//! The validator benchmark (BENCHMARKS.md, "Validator"): the real `lora-validate` on the real Gemma 3 270M Q4_K_M
//! test model with the trained test adapter (fixtures/gemma-lora, converted here by `lora-convert`), the shipped
//! control set × 5 scales × 32 new tokens, batched and `--sequential` (the same engine, one prompt at a time),
//! several interleaved runs. Reports min and median of wall time, workload tokens per second, model load, adapter
//! load, adapter switch (mean and max), the engine's phases, and peak memory split into the mapped model file and
//! everything else — next to the model's size.
//!
//! `cargo bench --bench validate -- --help` for the options. No network beyond `tools/fetch-test-model.sh`, which
//! uses its cache; nothing written outside `--dir`.

#[allow(dead_code)]
// the converter benchmark's helpers; this one uses the runner, the statistics and the machine facts
#[path = "../convert/measure.rs"]
mod measure;
mod run;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use run::Sample;
use serde_json::Value;

/// Benchmark lora-validate on Gemma 3 270M Q4_K_M, batched against sequential.
#[derive(Parser, Debug)]
struct Args {
    /// Work directory (converted adapter, reports, logs).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("lora-gguf-bench-validate"))]
    dir: PathBuf,
    /// Measured runs per mode (min and median are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Modes to run, interleaved: `batched` and/or `sequential`.
    #[arg(long, value_delimiter = ',', default_value = "batched,sequential")]
    modes: Vec<String>,
    /// The base model (default: the cached test model from tools/fetch-test-model.sh).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Golden-prompt files (default: the shipped control set).
    #[arg(long = "prompts")]
    prompts: Vec<PathBuf>,
    /// Scales swept.
    #[arg(long, default_value = "0,0.25,0.5,0.75,1")]
    scales: String,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// `--threads` for lora-validate (default: its own, all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Another lora-validate binary to time instead of this build's (e.g. an older commit's).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Write the Markdown report here as well as to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = bench(&args) {
        eprintln!("bench-validate: {e}");
        std::process::exit(1);
    }
}

/// What one run measured.
struct Measured {
    sample: Sample,
    /// The report's `timings`.
    timings: Value,
    /// Prompt tokens of the workload: every prompt once per pass (the base pass and each scale).
    prompt_tokens: usize,
    /// Generated tokens of the workload: the base continuations and every scale's adapted continuations.
    gen_tokens: usize,
    n_prompts: usize,
    passed: bool,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bench(args: &Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let base = match &args.base {
        Some(b) => b.clone(),
        None => fetch_test_model()?,
    };
    // Private copies of the binaries, so a later build into the same target directory cannot swap them mid-run.
    let validate = args.dir.join("lora-validate");
    let built = args
        .bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lora-validate")));
    std::fs::copy(&built, &validate).map_err(|e| format!("{}: {e}", built.display()))?;
    let adapter = args.dir.join("gemma-lora.gguf");
    let status = Command::new(env!("CARGO_BIN_EXE_lora-convert"))
        .arg(root().join("fixtures/gemma-lora/adapter"))
        .arg("-o")
        .arg(&adapter)
        .arg("--base")
        .arg(&base)
        .args(["--force", "--quiet"])
        .status()
        .map_err(|e| format!("lora-convert: {e}"))?;
    if !status.success() {
        return Err(format!("lora-convert failed: {status}"));
    }
    let load_before = measure::load_average();
    let started = Instant::now();
    let mut results: BTreeMap<String, Vec<Measured>> = BTreeMap::new();
    for round in 0..args.runs {
        for mode in &args.modes {
            eprintln!(
                "run {}/{} {mode} (load {})",
                round + 1,
                args.runs,
                measure::load_average()
            );
            let m = run_once(args, &validate, &base, &adapter, mode, round)?;
            eprintln!(
                "  {:.1} s wall, {:.1} s CPU, peak RSS {:.0} MB ({:.0} MB file-backed)",
                m.sample.wall.as_secs_f64(),
                m.sample.cpu.as_secs_f64(),
                m.sample.max_rss as f64 / 1e6,
                m.sample.max_rss_file as f64 / 1e6
            );
            results.entry(mode.clone()).or_default().push(m);
        }
    }
    let report = report(args, &base, &results, &load_before, started.elapsed());
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

fn fetch_test_model() -> Result<PathBuf, String> {
    let out = Command::new(root().join("tools/fetch-test-model.sh"))
        .output()
        .map_err(|e| format!("tools/fetch-test-model.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tools/fetch-test-model.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn run_once(
    args: &Args,
    validate: &Path,
    base: &Path,
    adapter: &Path,
    mode: &str,
    round: usize,
) -> Result<Measured, String> {
    let report = args.dir.join(format!("report-{mode}-{}.json", round + 1));
    let _ = std::fs::remove_file(&report);
    let mut cmd = Command::new(validate);
    cmd.arg("--base")
        .arg(base)
        .arg("--adapter")
        .arg(adapter)
        .args(["--scales", &args.scales])
        .args(["--max-tokens", &args.max_tokens.to_string()])
        .args(["--format", "json", "-o"])
        .arg(&report);
    for p in &args.prompts {
        cmd.arg("--prompts").arg(p);
    }
    if let Some(t) = args.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    match mode {
        "batched" => {}
        "sequential" => {
            cmd.arg("--sequential");
        }
        other => return Err(format!("--modes: unknown mode `{other}`")),
    }
    let sample = run::run(
        &mut cmd,
        &args.dir.join(format!("stderr-{mode}-{}.log", round + 1)),
    )?;
    let text =
        std::fs::read_to_string(&report).map_err(|e| format!("{}: {e}", report.display()))?;
    let j: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", report.display()))?;
    let len = |v: &Value| v.as_array().map_or(0, Vec::len);
    let base = j["base_continuations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let passes = 1 + len(&j["engine"]["settings"]["scales"]);
    let prompt_tokens = base.iter().map(|b| len(&b["prompt_tokens"])).sum::<usize>() * passes;
    let gen_tokens = base.iter().map(|b| len(&b["tokens"])).sum::<usize>()
        + j["measurements"]
            .as_array()
            .map_or(0, |m| m.iter().map(|x| len(&x["adapted_tokens"])).sum());
    Ok(Measured {
        sample,
        timings: j["timings"].clone(),
        prompt_tokens,
        gen_tokens,
        n_prompts: base.len(),
        passed: j["passed"].as_bool().unwrap_or(false),
    })
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Minimum and median of `xs` (NaN-free).
fn min_median(xs: &[f64]) -> (f64, f64) {
    let d: Vec<Duration> = xs
        .iter()
        .map(|&x| Duration::from_secs_f64(x.max(0.0)))
        .collect();
    let (a, b) = measure::min_median(&d);
    (a.as_secs_f64(), b.as_secs_f64())
}

fn report(
    args: &Args,
    base: &Path,
    results: &BTreeMap<String, Vec<Measured>>,
    load_before: &str,
    total: Duration,
) -> String {
    let mut r = String::new();
    let cmdline: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let model_size = std::fs::metadata(base).map_or(0, |m| m.len());
    let _ = writeln!(r, "### Run\n");
    let _ = writeln!(
        r,
        "- command: `cargo bench --bench validate -- {}`",
        cmdline.join(" ")
    );
    let _ = writeln!(
        r,
        "- machine: {} cores ({}), {} RAM, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        measure::cpu_model(),
        measure::mem_total(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        r,
        "- load average (1, 5, 15 min): {load_before} before, {} after; {:.0} s in all",
        measure::load_average(),
        total.as_secs_f64()
    );
    let first = results.values().flatten().next();
    let (prompt_tokens, gen_tokens) = first.map_or((0, 0), |m| (m.prompt_tokens, m.gen_tokens));
    let prompts = if args.prompts.is_empty() {
        "the shipped control set".to_string()
    } else {
        args.prompts
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let _ = writeln!(
        r,
        "- workload: {prompts} ({} prompts), scales {}, {} new tokens; {prompt_tokens} prompt tokens (every prompt \
         once per pass) and {gen_tokens} generated tokens (base + every scale) per run; model {} ({:.1} MB)",
        first.map_or(0, |m| m.n_prompts),
        args.scales,
        args.max_tokens,
        base.file_name()
            .map_or("?".into(), |n| n.to_string_lossy().into_owned()),
        model_size as f64 / 1e6
    );
    let verdicts: Vec<String> = results
        .iter()
        .map(|(mode, ms)| {
            format!(
                "{mode} {}",
                if ms.iter().all(|m| m.passed) {
                    "PASS"
                } else {
                    "FAIL"
                }
            )
        })
        .collect();
    let _ = writeln!(
        r,
        "- {} runs per mode, interleaved; verdicts: {}\n",
        args.runs,
        verdicts.join(", ")
    );
    type Metric = (&'static str, fn(&Measured) -> f64);
    let metrics: [Metric; 16] = [
        ("wall, whole process (s)", |m| m.sample.wall.as_secs_f64()),
        ("CPU, whole process (s)", |m| m.sample.cpu.as_secs_f64()),
        ("engine sweep, excl. loading (s)", |m| sweep_ms(m) / 1000.0),
        ("prompt tok/s (workload)", |m| {
            m.prompt_tokens as f64 / (sweep_ms(m) / 1000.0)
        }),
        ("generated tok/s (workload)", |m| {
            m.gen_tokens as f64 / (sweep_ms(m) / 1000.0)
        }),
        ("model load (ms)", |m| f(&m.timings, "model_load_ms")),
        ("adapter load (ms)", |m| f(&m.timings, "adapter_load_ms")),
        ("adapter switch, mean (µs)", |m| {
            f(&m.timings, "adapter_switch_ms") * 1000.0
        }),
        ("adapter switch, max (µs)", |m| {
            f(&m.timings, "adapter_switch_max_ms") * 1000.0
        }),
        ("adapter switches", |m| f(&m.timings, "adapter_switches")),
        ("phase: base generate (s)", |m| phase(m, "base_generate_ms")),
        ("phase: base teacher-forced (s)", |m| {
            phase(m, "base_teacher_forced_ms")
        }),
        ("phase: adapted teacher-forced (s)", |m| {
            phase(m, "adapted_teacher_forced_ms")
        }),
        ("phase: compare (KL etc.) (s)", |m| phase(m, "compare_ms")),
        ("phase: adapted generate (s)", |m| {
            phase(m, "adapted_generate_ms")
        }),
        ("peak RSS (MB)", |m| m.sample.max_rss as f64 / 1e6),
    ];
    let modes: Vec<&String> = results.keys().collect();
    let _ = write!(r, "| metric |");
    for m in &modes {
        let _ = write!(r, " {m} min | {m} median |");
    }
    let ratio = modes.len() == 2;
    if ratio {
        let _ = write!(r, " {} / {} (medians) |", modes[1], modes[0]);
    }
    let _ = writeln!(r);
    let _ = write!(r, "|---|");
    for _ in &modes {
        let _ = write!(r, "---:|---:|");
    }
    if ratio {
        let _ = write!(r, "---:|");
    }
    let _ = writeln!(r);
    let rss_file = |m: &Measured| m.sample.max_rss_file as f64 / 1e6;
    let rss_anon = |m: &Measured| m.sample.max_rss_anon as f64 / 1e6;
    let extra: [Metric; 2] = [
        ("  of which the mapped files, peak (MB)", rss_file),
        ("  of which anonymous memory, peak (MB)", rss_anon),
    ];
    for (name, get) in metrics.iter().chain(extra.iter()) {
        let _ = write!(r, "| {name} |");
        let mut medians = Vec::new();
        for m in &modes {
            let xs: Vec<f64> = results[*m]
                .iter()
                .map(get)
                .filter(|x| x.is_finite())
                .collect();
            if xs.is_empty() {
                let _ = write!(r, " — | — |");
                medians.push(f64::NAN);
                continue;
            }
            let (min, median) = min_median(&xs);
            let _ = write!(r, " {} | {} |", fmt(min), fmt(median));
            medians.push(median);
        }
        if ratio {
            let x = medians[1] / medians[0];
            let _ = write!(
                r,
                " {} |",
                if x.is_finite() {
                    format!("{x:.2}")
                } else {
                    "—".into()
                }
            );
        }
        let _ = writeln!(r);
    }
    let _ = writeln!(
        r,
        "\nModel file {:.1} MB; peak RSS counts its mapped pages once, shared by the base and adapted contexts.",
        model_size as f64 / 1e6
    );
    r
}

fn fmt(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The engine's time for the sweep: the whole run minus model and adapter loading.
fn sweep_ms(m: &Measured) -> f64 {
    f(&m.timings, "total_ms") - f(&m.timings, "model_load_ms") - f(&m.timings, "adapter_load_ms")
}

fn phase(m: &Measured, key: &str) -> f64 {
    m.timings
        .get("phases")
        .map_or(f64::NAN, |p| f(p, key) / 1000.0)
}
