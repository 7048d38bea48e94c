//! `lora-validate`: command-line parsing, progress, output and exit codes. The work is in `lora_gguf::validate`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use lora_gguf::gguf::GgufFile;
use lora_gguf::report::{self, Format, ReportMeta};
use lora_gguf::validate::engine::{Engine, EngineConfig, Progress};
use lora_gguf::validate::gate::{self, Limits};
use lora_gguf::validate::golden::{self, GoldenSet};
use lora_gguf::validate::precheck;

/// Validate a GGUF LoRA adapter on its base model: golden prompts with and without the adapter at several scales,
/// drift measured, pass or fail.
#[derive(Parser, Debug)]
#[command(
    name = "lora-validate",
    version,
    after_help = "Exit status: 0 pass; 1 the gate failed; 2 bad input or usage (unreadable or incompatible files, \
                  malformed prompts); 3 llama.cpp could not load or decode.\n\nExample:\n  lora-validate --base \
                  model-Q4_K_M.gguf --adapter adapter.gguf --prompts my-targets.jsonl --format junit -o report.xml"
)]
struct Cli {
    /// The base model GGUF.
    #[arg(long, value_name = "BASE.gguf")]
    base: PathBuf,

    /// A GGUF LoRA adapter, optionally with its own scale (`a.gguf:0.8`).
    #[arg(long = "adapter", value_name = "A.gguf[:SCALE]", required = true)]
    adapters: Vec<String>,

    /// Golden-prompt files or directories (`*.jsonl`); default: the shipped general control set.
    #[arg(long = "prompts", value_name = "FILE_OR_DIR")]
    prompts: Vec<PathBuf>,

    /// Scales swept (multiplying every adapter's own scale).
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1.0")]
    scales: Vec<f32>,

    /// New tokens per prompt (prompts may set their own `max_tokens`).
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,

    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<i32>,

    /// Context size in tokens (default: sized from the prompts).
    #[arg(long = "ctx", default_value_t = 0)]
    ctx: u32,

    /// Batch size in tokens.
    #[arg(long, default_value_t = 512)]
    batch: u32,

    /// Report format.
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    format: FormatArg,

    /// Write the report here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Gate limits from a JSON file (keys as in `--help` of the flags below; omitted keys keep defaults).
    #[arg(long, value_name = "FILE")]
    limits: Option<PathBuf>,

    /// Control prompts: largest mean KL(base‖adapted) per position, in nats [default 0.25].
    #[arg(long)]
    max_control_kl_mean: Option<f64>,

    /// Control prompts: largest KL at any position, in nats [default 5.0].
    #[arg(long)]
    max_control_kl_max: Option<f64>,

    /// Control prompts: smallest top-1 agreement with the base [default 0.6].
    #[arg(long)]
    min_control_top1: Option<f64>,

    /// Target prompts: smallest mean KL at the largest scale that counts as an effect [default 0.05].
    #[arg(long)]
    min_target_kl: Option<f64>,

    /// Do not fail a sweep whose drift does not grow with the scale.
    #[arg(long)]
    allow_non_monotone: bool,

    /// Run prompts one at a time (the baseline for benchmarks; numbers differ slightly from the batched layout).
    #[arg(long)]
    sequential: bool,

    /// Training parity: compare with a reference pack recorded where the adapter was trained
    /// (`python -m lora_gguf.record`, docs/reference-pack.md) instead of running golden prompts.
    #[arg(long, value_name = "PACK_DIR", conflicts_with_all = ["prompts", "scales"])]
    reference: Option<PathBuf>,

    /// With --reference: run the parity checks on the adapter and on deliberately broken copies of it (α doubled,
    /// Q/K rows permuted, a layer dropped, A/B swapped where shapes allow, prompts without their template); pass
    /// when the adapter is green and each sabotage turns its own check red.
    #[arg(long, requires = "reference")]
    self_test: bool,

    /// --reference: base parity fails beyond this mean KL(training base ‖ GGUF base) per token, in nats.
    #[arg(long, default_value_t = 0.5, requires = "reference")]
    max_base_kl: f64,

    /// --reference: adapter parity allows this many times the prompt's base KL …
    #[arg(long, default_value_t = 2.0, requires = "reference")]
    adapter_kl_factor: f64,

    /// --reference: … plus this many nats.
    #[arg(long, default_value_t = 0.05, requires = "reference")]
    adapter_kl_margin: f64,

    /// --reference: effect parity allows llama.cpp's effect between 1/X and X times the trained one.
    #[arg(long, default_value_t = 1.25, requires = "reference")]
    max_effect_ratio: f64,

    /// Show llama.cpp's log.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Text,
    Json,
    Junit,
    Markdown,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(passed) => ExitCode::from(if passed { 0 } else { 1 }),
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn parse_adapter(spec: &str) -> Result<(PathBuf, f32), String> {
    // Split on the last ':' only when what follows is a number, so `C:\x.gguf` and `a:b.gguf` stay paths.
    if let Some((path, scale)) = spec.rsplit_once(':')
        && let Ok(s) = scale.parse::<f32>()
    {
        if !s.is_finite() {
            return Err(format!(
                "adapter `{spec}`: scale {scale} is not a finite number"
            ));
        }
        return Ok((PathBuf::from(path), s));
    }
    Ok((PathBuf::from(spec), 1.0))
}

fn limits(cli: &Cli) -> Result<Limits, String> {
    let mut l = match &cli.limits {
        Some(p) => Limits::from_json_file(p).map_err(|e| e.to_string())?,
        None => Limits::default(),
    };
    if let Some(x) = cli.max_control_kl_mean {
        l.control_max_kl_mean = x;
    }
    if let Some(x) = cli.max_control_kl_max {
        l.control_max_kl_max = x;
    }
    if let Some(x) = cli.min_control_top1 {
        l.control_min_top1_agreement = x;
    }
    if let Some(x) = cli.min_target_kl {
        l.target_min_kl_mean = x;
    }
    if cli.allow_non_monotone {
        l.require_monotone = false;
    }
    Ok(l)
}

fn run(cli: &Cli) -> Result<bool, (u8, String)> {
    let bad = |m: String| (2u8, m);
    let adapters: Vec<(PathBuf, f32)> = cli
        .adapters
        .iter()
        .map(|s| parse_adapter(s))
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    if cli.scales.is_empty() || cli.scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
        return Err(bad(format!(
            "--scales {:?}: give non-negative numbers, e.g. 0,0.5,1",
            cli.scales
        )));
    }
    if let Some(pack) = &cli.reference {
        return run_reference(cli, pack, &adapters);
    }
    let limits = limits(cli).map_err(bad)?;
    let set: GoldenSet = if cli.prompts.is_empty() {
        golden::builtin_control_set().map_err(|e| bad(e.to_string()))?
    } else {
        golden::load_golden(&cli.prompts).map_err(|e| bad(e.to_string()))?
    };

    // Check every adapter against the base with our own reader first: llama.cpp aborts on some mismatches.
    let base = GgufFile::open(&cli.base).map_err(|e| bad(e.to_string()))?;
    for (path, _) in &adapters {
        let adapter = GgufFile::open(path).map_err(|e| bad(e.to_string()))?;
        if let Err(problems) = precheck::check_adapter(&base, &adapter) {
            let list: Vec<String> = problems.iter().take(10).map(|p| format!("  {p}")).collect();
            return Err(bad(format!(
                "`{}` does not fit the base `{}` ({} problem(s)):\n{}",
                path.display(),
                cli.base.display(),
                problems.len(),
                list.join("\n")
            )));
        }
    }

    let cfg = EngineConfig {
        n_ctx: cli.ctx,
        n_batch: cli.batch,
        threads: cli.threads.unwrap_or(EngineConfig::default().threads),
        max_tokens: cli.max_tokens,
        verbose: cli.verbose,
        sequential: cli.sequential,
        ..EngineConfig::default()
    };
    let engine_err = |e: lora_gguf::validate::engine::EngineError| {
        (if e.is_input_error() { 2 } else { 3 }, e.to_string())
    };
    let mut engine = Engine::load(&cli.base, &adapters, cfg).map_err(engine_err)?;
    let tty = std::io::stderr().is_terminal();
    let mut progress = |p: Progress| {
        if tty {
            let (what, done, total) = match p {
                Progress::Pass { scale, done, total } => (
                    scale.map_or("base".to_string(), |s| format!("scale {s}")),
                    done,
                    total,
                ),
                Progress::Compare { done, total } => (
                    format!("teacher-forced chunk {done}/{}, every scale", total - 1),
                    done,
                    total,
                ),
            };
            eprint!(
                "\r\x1b[2K[{}{}] step {}/{total}: {what}",
                "#".repeat(done),
                ".".repeat(total - done),
                done + 1
            );
        }
    };
    let measured = engine
        .run(&set.prompts, &cli.scales, &mut progress)
        .map_err(engine_err)?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    let verdict = gate::judge(&set, &measured, &limits);
    let meta = ReportMeta {
        base: cli.base.display().to_string(),
        adapters: adapters
            .iter()
            .map(|(p, s)| (p.display().to_string(), *s))
            .collect(),
        tool_version: format!("lora-validate {}", env!("CARGO_PKG_VERSION")),
    };
    let format = match cli.format {
        FormatArg::Text => Format::Text,
        FormatArg::Json => Format::Json,
        FormatArg::Junit => Format::Junit,
        FormatArg::Markdown => Format::Markdown,
    };
    match &cli.output {
        Some(path) => {
            let text = report::render(format, &set, &measured, &verdict, &meta, false);
            std::fs::write(path, text)
                .map_err(|e| bad(format!("writing `{}`: {e}", path.display())))?;
            println!(
                "{}: {} failure(s); report in {}",
                if verdict.passed { "PASS" } else { "FAIL" },
                verdict.failures.len(),
                path.display()
            );
        }
        None => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            print!(
                "{}",
                report::render(format, &set, &measured, &verdict, &meta, color)
            );
        }
    }
    Ok(verdict.passed)
}

/// `--reference`: training parity against a pack (src/reference).
fn run_reference(
    cli: &Cli,
    pack_dir: &std::path::Path,
    adapters: &[(PathBuf, f32)],
) -> Result<bool, (u8, String)> {
    use lora_gguf::reference::{self, report as rref, verdict};
    let bad = |m: String| (2u8, m);
    if adapters.len() != 1 || adapters[0].1 != 1.0 {
        return Err(bad(
            "--reference compares one adapter at its trained scale: give one --adapter A.gguf without :SCALE".into(),
        ));
    }
    let pack = reference::ReferencePack::open(pack_dir).map_err(|e| bad(e.to_string()))?;
    let base = GgufFile::open(&cli.base).map_err(|e| bad(e.to_string()))?;
    let adapter = GgufFile::open(&adapters[0].0).map_err(|e| bad(e.to_string()))?;
    if let Err(problems) = precheck::check_adapter(&base, &adapter) {
        let list: Vec<String> = problems.iter().take(10).map(|p| format!("  {p}")).collect();
        return Err(bad(format!(
            "`{}` does not fit the base `{}`:\n{}",
            adapters[0].0.display(),
            cli.base.display(),
            list.join("\n")
        )));
    }
    let limits = verdict::ReferenceLimits {
        base_max_kl_mean: cli.max_base_kl,
        adapter_kl_factor: cli.adapter_kl_factor,
        adapter_kl_margin: cli.adapter_kl_margin,
        effect_max_ratio: cli.max_effect_ratio,
        ..verdict::ReferenceLimits::default()
    };
    let warnings = reference::check::pack_against_base(&pack, &base);
    let bos = base
        .get_u64("tokenizer.ggml.bos_token_id")
        .and_then(|b| i32::try_from(b).ok());
    let cfg = EngineConfig {
        threads: cli.threads.unwrap_or(EngineConfig::default().threads),
        n_batch: cli.batch,
        verbose: cli.verbose,
        ..EngineConfig::default()
    };
    let engine_err = |e: lora_gguf::validate::engine::EngineError| {
        (if e.is_input_error() { 2 } else { 3 }, e.to_string())
    };
    if cli.self_test {
        let tty = std::io::stderr().is_terminal();
        let cases = reference::selftest::run(
            &cli.base,
            &base,
            &adapters[0].0,
            &pack,
            &cfg,
            &limits,
            bos,
            &mut |name| {
                if tty {
                    eprint!("\r\x1b[2Kself-test: {name}");
                }
            },
        )
        .map_err(|e| match e {
            reference::selftest::SelfTestError::Engine(e) => engine_err(e),
            e => (2, e.to_string()),
        })?;
        if tty {
            eprint!("\r\x1b[2K");
        }
        let text = match cli.format {
            FormatArg::Json => serde_json::to_string_pretty(&cases).unwrap_or_default() + "\n",
            _ => reference::selftest::render(&cases),
        };
        match &cli.output {
            Some(path) => std::fs::write(path, text)
                .map_err(|e| bad(format!("writing `{}`: {e}", path.display())))?,
            None => print!("{text}"),
        }
        return Ok(cases.iter().all(|c| c.ok));
    }
    let mut engine = Engine::load(&cli.base, adapters, cfg).map_err(engine_err)?;
    let run = reference::run::measure(&mut engine, &pack, bos, warnings).map_err(engine_err)?;
    let v = verdict::judge(&run, &limits, Some(pack.adapter.r));
    let meta = rref::Meta {
        base: cli.base.display().to_string(),
        adapter: adapters[0].0.display().to_string(),
        tool_version: format!("lora-validate {}", env!("CARGO_PKG_VERSION")),
    };
    let format = match cli.format {
        FormatArg::Text => rref::Format::Text,
        FormatArg::Json => rref::Format::Json,
        FormatArg::Junit => rref::Format::Junit,
        FormatArg::Markdown => rref::Format::Markdown,
    };
    let text = rref::render(format, &pack, &run, &v, &meta);
    match &cli.output {
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| bad(format!("writing `{}`: {e}", path.display())))?;
            println!(
                "{}: {} failure(s); report in {}",
                if v.passed { "PASS" } else { "FAIL" },
                v.failures.len(),
                path.display()
            );
            for d in &v.diagnoses {
                println!("  {d}");
            }
        }
        None => print!("{text}"),
    }
    Ok(v.passed)
}
