//! The converter benchmark (BENCHMARKS.md, "Converter"): synthesizes PEFT adapters of Llama-3-8B geometry (r = 64,
//! all seven linear projections) in f32 and bf16 plus a matching base GGUF, then times the real `lora-convert`
//! binary per `--outtype` and thread count — wall time, MB/s, peak RSS — next to a plain `cp` of the same adapter
//! on the same disk, with the page cache warm and cold. Runs are interleaved (round-robin over every
//! configuration) so that load from other processes spreads over all rows instead of hitting one.
//!
//! `cargo bench --bench convert -- --help` for the options; no network, nothing written outside `--dir`.

mod measure;
mod synth;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use measure::Sample;
use safetensors::Dtype;
use synth::Geometry;

/// Benchmark lora-convert on synthetic Llama-3-8B r=64 adapters.
#[derive(Parser, Debug)]
struct Args {
    /// Work directory for the generated inputs and outputs (removed at the end unless --keep).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("lora-gguf-bench"))]
    dir: PathBuf,
    /// Measured runs per configuration (min and median are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Adapter dtypes to generate.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    inputs: Vec<String>,
    /// `--outtype` values to time.
    #[arg(long, value_delimiter = ',', default_value = "f32,f16,bf16,q8_0")]
    outtypes: Vec<String>,
    /// `--threads` values to time (page cache warm); cold runs use the last one.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Page-cache states to measure: `warm` (adapter read just before each run) and/or `cold` (its pages dropped
    /// with posix_fadvise just before each run).
    #[arg(long, value_delimiter = ',', default_value = "warm,cold")]
    cache: Vec<String>,
    /// Skip the `--verify` runs.
    #[arg(long)]
    no_verify: bool,
    /// Decoder layers (32 for Llama-3-8B; fewer for a quick look or a profile).
    #[arg(long, default_value_t = 32)]
    layers: usize,
    /// Keep the work directory (and reuse generated inputs already in it).
    #[arg(long)]
    keep: bool,
    /// Time this lora-convert binary instead of the one cargo built (to compare versions).
    #[arg(long, value_name = "PATH")]
    exe: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Task {
    Copy {
        fsync: bool,
    },
    Convert {
        outtype: String,
        threads: usize,
        verify: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Config {
    input: String,
    cold: bool,
    task: Task,
}

impl Config {
    fn out_name(&self) -> String {
        let cache = if self.cold { "cold" } else { "warm" };
        match &self.task {
            Task::Copy { fsync } => format!("copy-{}-{cache}-{fsync}.safetensors", self.input),
            Task::Convert {
                outtype,
                threads,
                verify,
            } => format!(
                "out-{}-{outtype}-t{threads}-{cache}-v{verify}.gguf",
                self.input
            ),
        }
    }
}

struct Inputs {
    adapters: BTreeMap<String, (PathBuf, u64)>,
    base: PathBuf,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = bench(&args) {
        eprintln!("bench-convert: {e}");
        std::process::exit(1);
    }
}

fn bench(args: &Args) -> Result<(), String> {
    let g = Geometry {
        layers: args.layers,
        ..Geometry::LLAMA3_8B_R64
    };
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    // A private copy of the binary cargo built for this run, so a later build into the same target directory
    // cannot swap it mid-benchmark.
    let built = args
        .exe
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lora-convert")));
    let exe = args.dir.join("lora-convert");
    std::fs::copy(&built, &exe).map_err(|e| format!("{}: {e}", built.display()))?;
    let load_before = measure::load_average();
    let started = Instant::now();
    let inputs = generate(args, &g)?;
    let generated = started.elapsed();

    let configs = configs(args);
    let mut samples: BTreeMap<Config, Vec<Sample>> = BTreeMap::new();
    let mut digests: BTreeMap<Config, Vec<u64>> = BTreeMap::new();
    for round in 0..args.runs {
        eprintln!(
            "round {}/{} (load {})",
            round + 1,
            args.runs,
            measure::load_average()
        );
        for c in &configs {
            let (adapter_dir, _) = &inputs.adapters[&c.input];
            let src = adapter_dir.join("adapter_model.safetensors");
            let out = args.dir.join(c.out_name());
            measure::remove(&out);
            for f in [&src, &inputs.base] {
                let prepared = if c.cold {
                    measure::drop_cache(f)
                } else {
                    measure::warm_cache(f)
                };
                prepared.map_err(|e| format!("{}: {e}", f.display()))?;
            }
            let log = args.dir.join("stderr.log");
            let sample = match &c.task {
                Task::Copy { fsync } => {
                    let mut s = measure::run(Command::new("cp").arg(&src).arg(&out), &log)?;
                    if *fsync {
                        let t = Instant::now();
                        std::fs::File::open(&out)
                            .and_then(|f| f.sync_all())
                            .map_err(|e| format!("{}: {e}", out.display()))?;
                        // Waiting for the disk: wall time, hardly any CPU.
                        s.wall += t.elapsed();
                    }
                    s
                }
                Task::Convert {
                    outtype,
                    threads,
                    verify,
                } => {
                    let mut cmd = Command::new(&exe);
                    cmd.arg(adapter_dir)
                        .arg("-o")
                        .arg(&out)
                        .arg("--base")
                        .arg(&inputs.base)
                        .args(["--outtype", outtype, "--threads", &threads.to_string()])
                        .arg("--quiet");
                    if *verify {
                        cmd.arg("--verify");
                    }
                    let s = measure::run(&mut cmd, &log)?;
                    digests.entry(c.clone()).or_default().push(digest(&out)?);
                    s
                }
            };
            eprintln!(
                "  {:<44} {:>7.3} s  (cpu {:>6.3} s)  {:>6.1} MB",
                c.out_name(),
                sample.wall.as_secs_f64(),
                sample.cpu.as_secs_f64(),
                sample.max_rss as f64 / 1e6
            );
            samples.entry(c.clone()).or_default().push(sample);
            measure::remove(&out);
        }
    }
    let identical = check_identical(&digests)?;
    let report = report(
        args,
        &g,
        &inputs,
        &samples,
        &identical,
        &load_before,
        generated,
        started.elapsed(),
    );
    println!("{report}");
    let path = args.dir.join("report.md");
    std::fs::write(&path, &report).map_err(|e| format!("{}: {e}", path.display()))?;
    if args.keep {
        eprintln!("kept {} (report.md inside)", args.dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
    Ok(())
}

fn generate(args: &Args, g: &Geometry) -> Result<Inputs, String> {
    let mut adapters = BTreeMap::new();
    for input in &args.inputs {
        let dtype = match input.as_str() {
            "f32" => Dtype::F32,
            "bf16" => Dtype::BF16,
            other => return Err(format!("--inputs: `{other}` is not f32 or bf16")),
        };
        let dir = args.dir.join(format!("adapter-{input}-l{}", g.layers));
        let st = dir.join("adapter_model.safetensors");
        let expected = g.adapter_elements() * (dtype.bitsize() / 8) as u64;
        let size = match std::fs::metadata(&st) {
            // Reuse (with --keep) when the data section has the expected size.
            Ok(m) if args.keep && m.len() > expected && m.len() < expected + (1 << 20) => m.len(),
            _ => {
                eprintln!("generating {}", dir.display());
                synth::write_adapter(&dir, g, dtype)
                    .map_err(|e| format!("{}: {e}", dir.display()))?
            }
        };
        adapters.insert(input.clone(), (dir, size));
    }
    let base = args.dir.join(format!("base-l{}.gguf", g.layers));
    synth::write_base_gguf(&base, g).map_err(|e| e.to_string())?;
    synth::write_hf_config(&args.dir.join("hf-config"), g)
        .map_err(|e| format!("{}: {e}", args.dir.display()))?;
    Ok(Inputs { adapters, base })
}

fn configs(args: &Args) -> Vec<Config> {
    let mut out = Vec::new();
    for input in &args.inputs {
        for cache in &args.cache {
            let cold = cache == "cold";
            for fsync in [false, true] {
                out.push(Config {
                    input: input.clone(),
                    cold,
                    task: Task::Copy { fsync },
                });
            }
            let threads: Vec<usize> = if cold {
                args.threads.last().copied().into_iter().collect()
            } else {
                args.threads.clone()
            };
            for outtype in &args.outtypes {
                for &t in &threads {
                    out.push(Config {
                        input: input.clone(),
                        cold,
                        task: Task::Convert {
                            outtype: outtype.clone(),
                            threads: t,
                            verify: false,
                        },
                    });
                }
                if !cold && !args.no_verify {
                    out.push(Config {
                        input: input.clone(),
                        cold,
                        task: Task::Convert {
                            outtype: outtype.clone(),
                            threads: threads.last().copied().unwrap_or(1),
                            verify: true,
                        },
                    });
                }
            }
        }
    }
    out
}

/// A fast 64-bit digest of a file (not cryptographic: it only has to tell outputs apart).
fn digest(path: &Path) -> Result<u64, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut h = 0x243F_6A88_85A3_08D3u64;
    let mut len = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        let (words, tail) = buf[..n].as_chunks::<8>();
        for w in words {
            h = (h ^ u64::from_le_bytes(*w))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
        for &b in tail {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(h ^ len)
}

/// Every run of every configuration of one (input, outtype) must give the same bytes, whatever the threads,
/// cache state or `--verify`. Returns (input, outtype) → digest.
fn check_identical(
    digests: &BTreeMap<Config, Vec<u64>>,
) -> Result<BTreeMap<(String, String), u64>, String> {
    let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (c, ds) in digests {
        let Task::Convert { outtype, .. } = &c.task else {
            continue;
        };
        for &d in ds {
            let key = (c.input.clone(), outtype.clone());
            match seen.get(&key) {
                Some(&first) if first != d => {
                    return Err(format!(
                        "outputs differ for {} → {outtype} ({}): {first:016x} vs {d:016x}",
                        c.input,
                        c.out_name()
                    ));
                }
                _ => {
                    seen.insert(key, d);
                }
            }
        }
    }
    Ok(seen)
}

/// The filesystem and device holding `dir` (longest matching mount point in /proc/mounts).
fn filesystem(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {} ({})", f[2], f[0], f[1])))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}

#[allow(clippy::too_many_arguments)] // one call, at the end of `bench`
fn report(
    args: &Args,
    g: &Geometry,
    inputs: &Inputs,
    samples: &BTreeMap<Config, Vec<Sample>>,
    identical: &BTreeMap<(String, String), u64>,
    load_before: &str,
    generated: Duration,
    total: Duration,
) -> String {
    let mut r = String::new();
    let cmdline: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let _ = writeln!(r, "### Run\n");
    let _ = writeln!(
        r,
        "- command: `cargo bench --bench convert -- {}`",
        cmdline.join(" ")
    );
    let _ = writeln!(
        r,
        "- machine: {} cores ({}), {} RAM, kernel {}; work dir {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        measure::cpu_model(),
        measure::mem_total(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        filesystem(&args.dir)
    );
    if let Some(exe) = &args.exe {
        let _ = writeln!(r, "- binary: `{}`", exe.display());
    }
    let _ = writeln!(
        r,
        "- load average (1, 5, 15 min): {load_before} before, {} after; {:.0} s in all ({:.0} s generating inputs)",
        measure::load_average(),
        total.as_secs_f64(),
        generated.as_secs_f64()
    );
    let base_len = std::fs::metadata(&inputs.base).map_or(0, |m| m.len());
    let _ = writeln!(
        r,
        "- adapter: hidden {}, {} layers, {}/{} heads, ffn {}, vocab {}, r = {}, 7 projections → {} pairs, {} values; \
         base: GGUF header of a Q4_K_M model, {:.2} GiB sparse file",
        g.hidden,
        g.layers,
        g.n_head,
        g.n_head_kv,
        g.ffn,
        g.vocab,
        g.rank,
        7 * g.layers,
        g.adapter_elements(),
        base_len as f64 / (1u64 << 30) as f64
    );
    let _ = writeln!(
        r,
        "- {} runs per row, interleaved; MB = 10⁶ bytes of adapter input; ×cp and ×cp+fsync compare medians with the \
         copy in the same cache state; neither `cp` nor lora-convert fsyncs (the `cp` + fsync row shows what forcing \
         the data to disk costs); CPU = user + system time of the process",
        args.runs
    );
    for (input, (_, size)) in &inputs.adapters {
        let _ = writeln!(r, "\n#### {input} adapter ({:.1} MB)\n", *size as f64 / 1e6);
        let _ = writeln!(
            r,
            "| task | cache | threads | min s | median s | MB/s | CPU s (median) | peak RSS MB | RSS / adapter | ×cp | ×cp+fsync |"
        );
        let _ = writeln!(r, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let copy_median = |cold: bool, fsync: bool| {
            samples
                .get(&Config {
                    input: input.clone(),
                    cold,
                    task: Task::Copy { fsync },
                })
                .map(|s| measure::min_median(&s.iter().map(|x| x.wall).collect::<Vec<_>>()).1)
        };
        for (c, s) in samples.iter().filter(|(c, _)| &c.input == input) {
            let walls: Vec<Duration> = s.iter().map(|x| x.wall).collect();
            let (min, median) = measure::min_median(&walls);
            let rss = s.iter().map(|x| x.max_rss).max().unwrap_or(0);
            let cpu = measure::min_median(&s.iter().map(|x| x.cpu).collect::<Vec<_>>()).1;
            let (task, threads) = match &c.task {
                Task::Copy { fsync: false } => ("`cp`".to_string(), "—".to_string()),
                Task::Copy { fsync: true } => ("`cp` + fsync".to_string(), "—".to_string()),
                Task::Convert {
                    outtype,
                    threads,
                    verify,
                } => (
                    format!(
                        "convert → {outtype}{}",
                        if *verify { " --verify" } else { "" }
                    ),
                    threads.to_string(),
                ),
            };
            let ratio = |base: Option<Duration>| {
                base.filter(|b| !b.is_zero()).map_or("—".to_string(), |b| {
                    format!("{:.2}", median.as_secs_f64() / b.as_secs_f64())
                })
            };
            let _ = writeln!(
                r,
                "| {task} | {} | {threads} | {:.3} | {:.3} | {:.0} | {:.3} | {:.1} | {:.3} | {} | {} |",
                if c.cold { "cold" } else { "warm" },
                min.as_secs_f64(),
                median.as_secs_f64(),
                *size as f64 / 1e6 / median.as_secs_f64(),
                cpu.as_secs_f64(),
                rss as f64 / 1e6,
                rss as f64 / *size as f64,
                ratio(copy_median(c.cold, false)),
                ratio(copy_median(c.cold, true)),
            );
        }
    }
    let _ = writeln!(
        r,
        "\nOutputs: every run of each (input, outtype) — 1 or 2 threads, warm or cold, with or without --verify — gave \
         the same bytes ({} distinct outputs checked).",
        identical.len()
    );
    r
}
