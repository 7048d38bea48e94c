//! `lora-validate`: command-line parsing, progress, output and exit codes. The work is in `lora_gguf::validate`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand, ValueEnum};
use lora_gguf::exit::ExitStatus;
use lora_gguf::reference::verdict::ReferenceLimits;
use lora_gguf::report::{self, Format, Style};
use lora_gguf::validate::gate::Limits;
use lora_gguf::validate::shard::Shard;
use lora_gguf::validate::{
    self, EngineConfig, Outcome, Progress, ReferenceRequest, Refine, Request, merge_reports,
};

/// Validate a GGUF LoRA adapter on its base model: golden prompts with and without the adapter at several scales,
/// drift measured, pass or fail.
#[derive(Parser, Debug)]
#[command(
    name = "lora-validate",
    version,
    after_help = "Exit status: 0 pass; 1 the gate failed; 2 bad input or usage (unreadable or incompatible files, \
                  malformed prompts); 3 llama.cpp could not load or decode.\n\nExample:\n  lora-validate --base \
                  model-Q4_K_M.gguf --adapter adapter.gguf --prompts my-targets.jsonl --scales auto -o report.xml -o \
                  summary.md -o report.json -o report.html"
)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The base model GGUF.
    #[arg(long, value_name = "BASE.gguf", required = true)]
    base: Option<PathBuf>,

    /// A GGUF LoRA adapter, optionally with its own scale (`a.gguf:0.8`).
    #[arg(long = "adapter", value_name = "A.gguf[:SCALE]", required = true)]
    adapters: Vec<String>,

    /// The adapter in production, optionally with its own scale: the candidate (at its own scale) must not regress
    /// against it — control drift from it within the control limits, target expectations it met still met.
    #[arg(long = "baseline-adapter", value_name = "PREV.gguf[:SCALE]")]
    baseline_adapter: Option<String>,

    /// Golden-prompt files or directories (`*.jsonl`); default: the shipped general control set.
    #[arg(long = "prompts", value_name = "FILE_OR_DIR")]
    prompts: Vec<PathBuf>,

    /// Scales swept (multiplying every adapter's own scale), or `auto`: 0,0.25,0.5,0.75,1 and then bisection
    /// where the control limits break, to report the recommended scale to a stated precision.
    #[arg(long, default_value = "0,0.25,0.5,0.75,1.0", value_name = "S,S,…|auto")]
    scales: String,

    /// With `--scales auto`: most extra passes (each reuses the base pass).
    #[arg(long, default_value_t = Refine::default().max_passes, value_name = "N")]
    refine_passes: usize,

    /// New tokens per prompt (prompts may set their own `max_tokens`).
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,

    /// Worker threads (default: all cores). A CI runner that runs several jobs at once should give each its share:
    /// llama.cpp's threads spin while they wait for each other, so more threads than free cores slow every job.
    #[arg(short = 't', long, env = "LORA_VALIDATE_THREADS")]
    threads: Option<i32>,

    /// Context size in tokens (default: sized from the prompts).
    #[arg(long = "ctx", default_value_t = 0)]
    ctx: u32,

    /// Batch size in tokens.
    #[arg(long, default_value_t = 512)]
    batch: u32,

    /// Report format [default: text on stdout; with -o, each file's extension].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,

    /// Write a report here (repeatable; format from the extension: .json, .xml (JUnit), .md, .html, .txt, unless
    /// --format forces one); the text summary still goes to stdout.
    #[arg(short, long = "output", value_name = "FILE")]
    outputs: Vec<PathBuf>,

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

    /// A model with the adapters merged in (`lora-convert merge`): the golden set also runs through it, compared
    /// with base + runtime adapter at scale 1 (KL, top-1 and greedy agreement; limits merged_* in --limits).
    #[arg(long, value_name = "MERGED.gguf")]
    merged: Option<PathBuf>,
    /// Layers on the GPU [default: all when a GPU backend (feature cuda, vulkan, metal, rocm) finds a device, else
    /// 0]. Base and adapted contexts share the model, so both run on the same devices.
    #[arg(long, value_name = "N")]
    gpu_layers: Option<u32>,

    /// Run prompts one at a time (the baseline for benchmarks; numbers differ slightly from the batched layout).
    #[arg(long)]
    sequential: bool,

    /// Run only shard I of N of the golden set (every N-th prompt from the I-th; a CI matrix job). Its report
    /// records the split; `lora-validate merge-reports` combines the shards' JSON reports into the run's verdict. A
    /// shard exits 0 once measured: its own verdict covers only its prompts.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,

    /// Refuse (exit 2) an adapter that does not record this base as the one it was converted against (`lora-convert
    /// --base` records it; docs/base-fingerprint.md), or that records none. Without it, a different base is a warning.
    #[arg(long)]
    strict_base: bool,

    /// Training parity: compare with a reference pack recorded where the adapter was trained
    /// (`python -m lora_gguf.record`, docs/reference-pack.md) instead of running golden prompts.
    #[arg(
        long,
        value_name = "PACK_DIR",
        conflicts_with_all = ["prompts", "scales", "merged", "shard", "baseline_adapter"]
    )]
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

    /// List every failure (not grouped) and show llama.cpp's log.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Combine the JSON reports of every shard of a run (`--shard I/N`, any order) into one report and verdict, judged
    /// as one run; one whole report is rendered again (e.g. as JUnit). Exit status as for a run.
    MergeReports {
        /// JSON reports (`--format json`).
        #[arg(required = true, value_name = "REPORT.json")]
        reports: Vec<PathBuf>,

        /// Report format [default: text on stdout; with -o, each file's extension].
        #[arg(long, value_enum)]
        format: Option<FormatArg>,

        /// Write a report here (repeatable; format from the extension unless --format forces one).
        #[arg(short, long = "output", value_name = "FILE")]
        outputs: Vec<PathBuf>,

        /// List every failure (not grouped).
        #[arg(short, long)]
        verbose: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Text,
    Json,
    Junit,
    Markdown,
    Html,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Text => Format::Text,
            FormatArg::Json => Format::Json,
            FormatArg::Junit => Format::Junit,
            FormatArg::Markdown => Format::Markdown,
            FormatArg::Html => Format::Html,
        }
    }
}

/// `--scales`: the sweep, and bisection after it for `auto`.
fn scales(cli: &Cli) -> Result<(Vec<f32>, Option<Refine>), validate::Error> {
    if cli.scales.trim() == "auto" {
        let refine = Refine {
            max_passes: cli.refine_passes,
            ..Refine::default()
        };
        return Ok((Refine::GRID.to_vec(), Some(refine)));
    }
    let scales = cli
        .scales
        .split(',')
        .map(|s| s.trim().parse::<f32>())
        .collect::<Result<Vec<f32>, _>>()
        .map_err(|e| {
            validate::Error::Usage(format!(
                "--scales {}: {e}; give non-negative numbers, e.g. 0,0.5,1, or `auto`",
                cli.scales
            ))
        })?;
    validate::check_scales(&scales)?;
    Ok((scales, None))
}

/// Every `-o FILE` with the format it gets, decided before the run so a wrong extension fails at once.
fn outputs(
    format: Option<FormatArg>,
    paths: &[PathBuf],
) -> Result<Vec<(PathBuf, Format)>, validate::Error> {
    paths
        .iter()
        .map(|p| {
            let format = match format {
                Some(f) => Format::from(f),
                None => Format::from_extension(p).ok_or_else(|| {
                    validate::Error::Usage(format!(
                        "-o `{}`: cannot tell the report format from the extension; use .json, .xml (JUnit), .md, \
                         .html or .txt, or --format",
                        p.display()
                    ))
                })?,
            };
            Ok((p.clone(), format))
        })
        .collect()
}

/// Write `text` to `path` whole or not at all (a temporary file beside it, renamed when complete).
fn write_report(path: &std::path::Path, text: &str) -> Result<(), validate::Error> {
    use std::io::Write as _;
    let err =
        |e: std::io::Error| validate::Error::Usage(format!("writing `{}`: {e}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::MergeReports {
            reports,
            format,
            outputs,
            verbose,
        }) => merge_reports(reports, *format, outputs, *verbose),
        None => run(&cli),
    };
    match result {
        Ok(status) => status.into(),
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_status().into()
        }
    }
}

fn limits(cli: &Cli) -> Result<Limits, validate::Error> {
    let mut l = match &cli.limits {
        Some(p) => Limits::from_json_file(p)?,
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

fn run(cli: &Cli) -> Result<ExitStatus, validate::Error> {
    // First, so that a Ctrl-C at any point of the run is caught.
    let interrupt = interrupt_flag();
    let adapters = cli
        .adapters
        .iter()
        .map(|s| validate::parse_adapter(s))
        .collect::<Result<_, _>>()?;
    let (scales, refine) = scales(cli)?;
    let outputs = outputs(cli.format, &cli.outputs)?;
    let Some(base) = cli.base.clone() else {
        return Err(validate::Error::Usage("give --base BASE.gguf".into()));
    };
    let request = Request {
        base,
        adapters,
        prompts: cli.prompts.clone(),
        scales,
        refine,
        baseline: cli
            .baseline_adapter
            .as_deref()
            .map(validate::parse_adapter)
            .transpose()?,
        limits: limits(cli)?,
        engine: EngineConfig {
            n_ctx: cli.ctx,
            n_batch: cli.batch,
            threads: cli.threads.unwrap_or(EngineConfig::default().threads),
            max_tokens: cli.max_tokens,
            verbose: cli.verbose,
            sequential: cli.sequential,
            gpu_layers: cli.gpu_layers,
            interrupt: Some(interrupt),
            ..EngineConfig::default()
        },
        merged: cli.merged.clone(),
        shard: cli.shard,
        strict_base: cli.strict_base,
        reference: cli.reference.as_ref().map(|pack| ReferenceRequest {
            pack: pack.clone(),
            limits: ReferenceLimits {
                base_max_kl_mean: cli.max_base_kl,
                adapter_kl_factor: cli.adapter_kl_factor,
                adapter_kl_margin: cli.adapter_kl_margin,
                effect_max_ratio: cli.max_effect_ratio,
                ..ReferenceLimits::default()
            },
            self_test: cli.self_test,
        }),
    };
    let tty = std::io::stderr().is_terminal();
    let mut progress = |p: Progress| {
        if let Progress::Warning(w) = &p {
            eprintln!("warning: {w}");
        } else if tty {
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
                Progress::Warning(_) => return,
            };
            eprint!(
                "\r\x1b[2K[{}{}] step {}/{total}: {what}",
                "#".repeat(done),
                ".".repeat(total - done),
                done + 1
            );
        }
    };
    let outcome = validate::run(&request, &mut progress)?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    let parity_status = outcome.exit_status();
    let outcome = match outcome {
        Outcome::Golden(g) => g,
        Outcome::Reference(r) => {
            return emit_parity(cli.format, &outputs, &|f| r.render(f), parity_status);
        }
        Outcome::SelfTest(t) => {
            return emit_parity(cli.format, &outputs, &|f| t.render(f), parity_status);
        }
    };
    let status = emit(
        cli.format,
        &outputs,
        cli.verbose,
        &outcome.set,
        &outcome.measured,
        &outcome.verdict,
        &outcome.meta,
    )?;
    let Some(shard) = &outcome.meta.shard else {
        return Ok(status);
    };
    if outcome.measured.partial.is_some() {
        return Ok(status); // interrupted (130) or llama.cpp failed (3): not a shard merge-reports takes
    }
    // A shard's verdict covers only its prompts (and effect and monotonicity are judged over the whole set): the
    // run's verdict comes from merge-reports.
    eprintln!(
        "shard {}/{}: measured {} of the set's {} prompts; `lora-validate merge-reports` on every shard's JSON \
         report gives the run's verdict",
        shard.index,
        shard.count,
        outcome.set.prompts.len(),
        shard.set_prompts
    );
    Ok(ExitStatus::Success)
}

/// `merge-reports`: read the reports, merge the shards, judge the whole set, report.
fn merge_reports(
    paths: &[PathBuf],
    format: Option<FormatArg>,
    output_paths: &[PathBuf],
    verbose: bool,
) -> Result<ExitStatus, validate::Error> {
    let outputs = outputs(format, output_paths)?;
    let reports = paths
        .iter()
        .map(|p| merge_reports::read_report(p))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = merge_reports::merge(reports)?;
    let verdict = validate::gate::judge(&merged.set, &merged.run, &merged.meta.limits);
    emit(
        format,
        &outputs,
        verbose,
        &merged.set,
        &merged.run,
        &verdict,
        &merged.meta,
    )
}

/// Write every `-o` report of a golden run, print the text report (or the `--format` one when nothing is written to
/// a file); the exit status is the verdict's.
fn emit(
    format: Option<FormatArg>,
    outputs: &[(PathBuf, Format)],
    verbose: bool,
    set: &lora_gguf::validate::golden::GoldenSet,
    measured: &lora_gguf::validate::results::RunMeasurements,
    verdict: &lora_gguf::validate::gate::Verdict,
    meta: &report::ReportMeta,
) -> Result<ExitStatus, validate::Error> {
    emit_rendered(format, outputs, &|f, color| {
        report::render_styled(f, set, measured, verdict, meta, Style { color, verbose })
    })?;
    Ok(match &measured.partial {
        Some(p) if p.interrupted => ExitStatus::Interrupted,
        Some(_) => ExitStatus::Runtime,
        None if verdict.passed => ExitStatus::Success,
        None => ExitStatus::GateFailed,
    })
}

/// Write every `-o` report of a training-parity (`--reference`) or self-test run and print its text report (or the
/// `--format` one when nothing is written to a file); the exit status is its verdict's.
fn emit_parity(
    format: Option<FormatArg>,
    outputs: &[(PathBuf, Format)],
    render: &dyn Fn(Format) -> String,
    status: ExitStatus,
) -> Result<ExitStatus, validate::Error> {
    emit_rendered(format, outputs, &|f, _| render(f))?;
    Ok(status)
}

/// The reports of one run: each `-o` file in its format (no colour), then stdout — the `--format` report when no
/// file is written, else the text report — and the list of files written. `render(format, colour)`.
fn emit_rendered(
    format: Option<FormatArg>,
    outputs: &[(PathBuf, Format)],
    render: &dyn Fn(Format, bool) -> String,
) -> Result<(), validate::Error> {
    for (path, format) in outputs {
        write_report(path, &render(*format, false))?;
    }
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let stdout_format = match (format, outputs.is_empty()) {
        (Some(f), true) => Format::from(f),
        _ => Format::Text,
    };
    print!("{}", render(stdout_format, color));
    if !outputs.is_empty() {
        let written: Vec<String> = outputs
            .iter()
            .map(|(p, f)| format!("{} ({})", p.display(), f.name()))
            .collect();
        println!("reports: {}", written.join(", "));
    }
    Ok(())
}

/// A flag Ctrl-C sets: the engine stops after the step in progress and the report of what finished is written.
/// A second Ctrl-C ends the process at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&flag);
    let installed = ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(ExitStatus::Interrupted as u8));
        }
        eprintln!(
            "\ninterrupted: finishing the step in progress, then writing the report of what finished"
        );
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will end the run without a report ({e})");
    }
    flag
}
