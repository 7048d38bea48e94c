//! `lora-convert merge`: its arguments, the summary, and exit codes. The work is in `lora_gguf::merge`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// `lora-convert merge` arguments.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 the merged model was written; 2 refused or bad input (nothing is written).\n\n\
                  Examples:\n  lora-convert merge --base model-Q4_K_M.gguf --adapter adapter.gguf -o merged.gguf\n  \
                  lora-convert merge --base model-Q4_K_M.gguf --adapter a.gguf:0.7 --adapter b.gguf:0.3 -o merged.gguf --outtype keep"
)]
pub struct MergeArgs {
    /// The base model GGUF (any type llama.cpp loads; quantized models stay quantized).
    #[arg(long, value_name = "BASE.gguf", required = true)]
    base: PathBuf,

    /// A GGUF LoRA adapter, with an optional scale (default 1.0); repeat to merge several, which add up as llama.cpp
    /// applies them at run time.
    #[arg(long = "adapter", value_name = "ADAPTER[:SCALE]", required = true)]
    adapters: Vec<String>,

    /// The merged model to write.
    #[arg(short, long, value_name = "MERGED.gguf", required = true)]
    output: PathBuf,

    /// Type of the merged tensors: `auto` keeps each tensor's base type when its rounding loses at most --budget of
    /// the adapter's change ΔW, else the cheapest larger type that does (q8_0 at worst); `keep` always the base's type
    /// (as llama-quantize --allow-requantize); or one ggml type (q8_0, f16, q6_K …) for all of them. Every other tensor
    /// is copied byte for byte.
    #[arg(long, default_value = "auto", value_name = "auto|keep|TYPE")]
    outtype: String,

    /// For `--outtype auto`: the largest fraction of ‖ΔW‖ a merged tensor may lose to rounding,
    /// ‖deq(quant(W + ΔW)) − (W + ΔW)‖ / ‖ΔW‖.
    #[arg(long, value_name = "FRACTION", default_value_t = lora_gguf_budget())]
    budget: f64,

    /// The F32/F16/BF16 GGUF of the same model: merged tensors are computed from its weights and quantized once, to
    /// the type BASE has for each (with --outtype auto, promoted as usual); BASE stays the template, every untouched
    /// tensor and all metadata copied from it byte for byte.
    #[arg(long, value_name = "HIGH.gguf")]
    source: Option<PathBuf>,

    /// llama.cpp's importance matrix (llama-imatrix's GGUF or legacy .dat): merged tensors are quantized with it as
    /// llama-quantize does; needed for the types that require one (iq2_xxs …).
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,

    /// Also write an Ollama Modelfile next to the output (MERGED.Modelfile: FROM the merged file, its stop tokens):
    /// `ollama create NAME -f MERGED.Modelfile`.
    #[arg(long)]
    modelfile: bool,

    /// Refuse (nothing written) a GGUF adapter that does not record this base as the one it was converted against
    /// (`lora-convert --base` records it; docs/base-fingerprint.md), or that records none. Without it, a different
    /// base is a warning.
    #[arg(long)]
    strict_base: bool,

    /// Overwrite the output if it exists.
    #[arg(short, long)]
    force: bool,

    /// Worker threads (default: all cores; the output is the same at any count).
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,

    /// Print nothing but errors.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,

    /// Print every merged tensor with the loss of each type measured.
    #[arg(short, long)]
    verbose: bool,
}

#[cfg(feature = "merge")]
fn lora_gguf_budget() -> f64 {
    lora_gguf::merge::outtype::DEFAULT_BUDGET
}

#[cfg(not(feature = "merge"))]
fn lora_gguf_budget() -> f64 {
    0.25
}

#[cfg(not(feature = "merge"))]
pub fn run(_args: MergeArgs) -> ExitCode {
    eprintln!(
        "error: this lora-convert was built without feature `merge`: merging quantizes with ggml, from the llama.cpp \
         build. Get it with `cargo install --path . --features merge` (needs cmake, a C++ compiler and libclang: \
         tools/build-deps.sh installs them) or `pip install lora-gguf`"
    );
    ExitCode::from(2)
}

#[cfg(feature = "merge")]
pub fn run(args: MergeArgs) -> ExitCode {
    use lora_gguf::convert::error::chain;
    use lora_gguf::merge::{self, Options};

    let parsed = args
        .adapters
        .iter()
        .map(|a| parse_adapter(a))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|adapters| Ok((adapters, parse_outtype(&args.outtype, args.budget)?)));
    let (adapters, outtype) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        base: args.base,
        adapters,
        output: args.output,
        outtype,
        force: args.force,
        threads: args.threads,
        modelfile: args.modelfile,
        source: args.source,
        imatrix: args.imatrix,
    };
    if let Err(refusal) = check_bases(&opts, args.strict_base) {
        eprintln!("error: {refusal}");
        return ExitCode::from(2);
    }
    match merge::merge(&opts) {
        Ok(summary) => {
            if !args.quiet {
                print_summary(&summary, args.verbose);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// Each GGUF adapter's recorded base against `--base`: a warning on stderr when it differs, the refusal with
/// `--strict-base`. Unreadable files are left to the merge, which names them; an adapter directory is converted
/// against the base itself.
#[cfg(feature = "merge")]
fn check_bases(opts: &lora_gguf::merge::Options, strict: bool) -> Result<(), String> {
    use lora_gguf::gguf::GgufFile;
    use lora_gguf::gguf_adapter::fingerprint::check_base;
    let Ok(base) = GgufFile::open(&opts.base) else {
        return Ok(());
    };
    for a in opts.adapters.iter().filter(|a| !a.path.is_dir()) {
        if let Ok(adapter) = GgufFile::open(&a.path)
            && let Some(warning) = check_base(&adapter, &base, strict)?
        {
            eprintln!("warning: {warning}");
        }
    }
    Ok(())
}

/// `PATH[:SCALE]`: the part after the last `:` is a scale when it parses as a finite number (so `C:\\x.gguf` and
/// `dir:name.gguf` stay paths).
#[cfg(feature = "merge")]
fn parse_adapter(s: &str) -> Result<lora_gguf::merge::AdapterSpec, String> {
    if let Some((path, scale)) = s.rsplit_once(':')
        && let Ok(scale) = scale.parse::<f32>()
    {
        if !scale.is_finite() {
            return Err(format!("--adapter {s}: the scale must be a finite number"));
        }
        return Ok(lora_gguf::merge::AdapterSpec {
            path: PathBuf::from(path),
            scale,
        });
    }
    Ok(lora_gguf::merge::AdapterSpec {
        path: PathBuf::from(s),
        scale: 1.0,
    })
}

#[cfg(feature = "merge")]
fn parse_outtype(s: &str, budget: f64) -> Result<lora_gguf::merge::OutType, String> {
    use lora_gguf::gguf::GgmlType;
    use lora_gguf::merge::{OutType, ggml};
    if !(budget.is_finite() && budget > 0.0) {
        return Err(format!("--budget {budget}: must be a positive number"));
    }
    match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(OutType::Auto { budget }),
        "keep" => Ok(OutType::Keep),
        other => GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(other) && ggml::can_quantize(*t))
            .map(OutType::Fixed)
            .ok_or_else(|| {
                let names: Vec<&str> = GgmlType::ALL
                    .into_iter()
                    .filter(|t| ggml::can_quantize(*t))
                    .map(GgmlType::name)
                    .collect();
                format!(
                    "--outtype {s}: expected auto, keep or a type ggml can quantize to ({})",
                    names.join(", ")
                )
            }),
    }
}

#[cfg(feature = "merge")]
fn print_summary(s: &lora_gguf::merge::Summary, verbose: bool) {
    use std::collections::BTreeMap;
    let pct = |a: u64, b: u64| (a as f64 / b.max(1) as f64 - 1.0) * 100.0;
    println!(
        "wrote {} ({} bytes; the base has {}, {:+.1}%)",
        s.output.display(),
        s.bytes,
        s.base_bytes,
        pct(s.bytes, s.base_bytes)
    );
    let kept = s.merged.len() - s.promoted().count();
    if let Some(m) = &s.modelfile {
        println!(
            "  modelfile {} (ollama create NAME -f {})",
            m.display(),
            m.display()
        );
    }
    if s.untied_output {
        println!(
            "  untied    the base ties its output head to the merged token_embd: output.weight added (the original \
             embedding), as the adapter ran in training"
        );
    }
    println!(
        "  merged    {} tensors ({} copied unchanged)",
        s.merged.len(),
        s.copied
    );
    let mut moves: BTreeMap<(String, String), usize> = BTreeMap::new();
    for t in s.promoted() {
        *moves
            .entry((t.base_type.name().into(), t.out_type.name().into()))
            .or_default() += 1;
    }
    let moves: Vec<String> = moves
        .iter()
        .map(|((a, b), n)| format!("{a}→{b} ×{n}"))
        .collect();
    let extra: i64 = s
        .promoted()
        .map(|t| t.out_bytes as i64 - t.base_bytes as i64)
        .sum();
    match s.outtype {
        lora_gguf::merge::OutType::Auto { budget } => {
            println!(
                "  types     {kept} kept the base's type; {} promoted{} (budget: rounding loses ≤ {:.0}% of ΔW)",
                s.merged.len() - kept,
                if moves.is_empty() {
                    String::new()
                } else {
                    format!(": {}, {extra:+} bytes", moves.join(", "))
                },
                budget * 100.0
            );
            let worst = s.merged.iter().max_by(|a, b| a.loss.total_cmp(&b.loss));
            if let Some(w) = worst {
                println!(
                    "  loss      worst {:.1}% of ΔW at `{}` ({})",
                    w.loss * 100.0,
                    w.name,
                    w.out_type
                );
            }
        }
        lora_gguf::merge::OutType::Keep => {
            println!("  types     the base's type for every merged tensor")
        }
        lora_gguf::merge::OutType::Fixed(t) => println!("  types     {t} for every merged tensor"),
    }
    for t in s.promoted() {
        if verbose {
            continue;
        }
        let tried: Vec<String> = t
            .tried
            .iter()
            .map(|(ty, l, n)| format!("{ty} {:.0}%/{:.2}%", l * 100.0, n * 100.0))
            .collect();
        println!("  promoted  {:<40} {}", t.name, tried.join(", "));
    }
    if verbose {
        for t in &s.merged {
            let tried: Vec<String> = t
                .tried
                .iter()
                .map(|(ty, l, n)| format!("{ty} {:.0}%/{:.2}%", l * 100.0, n * 100.0))
                .collect();
            println!(
                "  {:<40} {:>6} → {:<6} ΔW lost/noise {}",
                t.name,
                t.base_type.name(),
                t.out_type.name(),
                tried.join(", ")
            );
        }
    }
}
