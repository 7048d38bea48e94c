//! `lora-convert`: command-line parsing, the summary, and exit codes. All the work is in `lora_gguf::convert`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use lora_gguf::convert::{self, Options, OutType, Summary};
use lora_gguf::peft::Framework;

/// Convert a PEFT or mlx-lm LoRA adapter into a GGUF LoRA adapter for llama.cpp — exactly, and checked against the
/// base.
#[derive(Parser, Debug)]
#[command(
    name = "lora-convert",
    version,
    after_help = "Exit status: 0 the adapter was written; 2 it was refused or the input is bad (nothing is written).\n\n\
                  Example:\n  lora-convert ./my-peft-adapter -o adapter.gguf --base model-Q4_K_M.gguf --verify"
)]
struct Cli {
    /// The adapter directory: PEFT (adapter_config.json + adapter_model.safetensors) or mlx-lm
    /// (adapter_config.json + adapters.safetensors), told apart by its files.
    adapter_dir: PathBuf,

    /// The GGUF adapter to write.
    #[arg(short, long, value_name = "OUT.gguf")]
    output: PathBuf,

    /// The base model GGUF you will run the adapter with: architecture, every target tensor and its shape, the
    /// expert count and tied embeddings are checked against it.
    #[arg(long, value_name = "BASE.gguf")]
    base: Option<PathBuf>,

    /// A Hugging Face model directory (or its config.json) describing the base, when you have no GGUF yet.
    #[arg(long, value_name = "HF_CONFIG_DIR")]
    base_config: Option<PathBuf>,

    /// Output tensor type; `auto` keeps the adapter's own dtype (lossless).
    #[arg(long, value_enum, default_value_t = OutTypeArg::Auto)]
    outtype: OutTypeArg,

    /// Force the GGUF architecture (must match the base's, if given).
    #[arg(long, value_name = "GGUF_ARCH")]
    arch: Option<String>,

    /// Overwrite the output if it exists.
    #[arg(short, long)]
    force: bool,

    /// Read the written file back and check every ΔW against PEFT's within the output type's rounding, before the
    /// file is renamed into place.
    #[arg(long)]
    verify: bool,

    /// Worker threads for dtype conversion (default: all cores).
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,

    /// Print nothing but errors.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,

    /// Print every written tensor.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutTypeArg {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    Auto,
}

impl From<OutTypeArg> for OutType {
    fn from(o: OutTypeArg) -> Self {
        match o {
            OutTypeArg::F32 => OutType::F32,
            OutTypeArg::F16 => OutType::F16,
            OutTypeArg::Bf16 => OutType::Bf16,
            OutTypeArg::Q8_0 => OutType::Q8_0,
            OutTypeArg::Auto => OutType::Auto,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = Options {
        adapter_dir: cli.adapter_dir.clone(),
        output: cli.output.clone(),
        base: cli.base.clone(),
        base_config: cli.base_config.clone(),
        outtype: cli.outtype.into(),
        arch: cli.arch.clone(),
        force: cli.force,
        verify: cli.verify,
        threads: cli.threads,
    };
    match convert::convert(&opts) {
        Ok(summary) => {
            if !cli.quiet {
                print_summary(&summary, cli.verbose);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::from(2)
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn print_summary(s: &Summary, verbose: bool) {
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    let ranks: Vec<String> = s.ranks.iter().map(ToString::to_string).collect();
    let scalings: Vec<String> = s
        .scalings
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect();
    let types: Vec<String> = s.types.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    println!("wrote {} ({} bytes)", s.output.display(), s.bytes);
    println!("  family    {} (checked against {})", s.arch, s.base);
    println!("  pairs     {} (rank {})", s.pairs, ranks.join(", "));
    println!(
        "  scaling   {} {} = {}; adapter.lora.alpha = {}",
        s.framework.name(),
        match s.framework {
            Framework::Peft => "s",
            Framework::MlxLm => "scale",
        },
        scalings.join(", "),
        s.alpha
    );
    if s.folded > 0 {
        println!(
            "            {} pairs carry their own factor folded into lora_b (per-module scaling)",
            s.folded
        );
    }
    println!("  tensors   {}", types.join(", "));
    if let Some(v) = &s.verify {
        let probed = if v.probed > 0 {
            format!("; {} large targets checked through probe vectors", v.probed)
        } else {
            String::new()
        };
        if v.worst_error == 0.0 {
            println!(
                "  verified  {} pairs: every ΔW equals {}'s exactly{probed}",
                v.pairs,
                s.framework.name()
            );
        } else {
            println!(
                "  verified  {} pairs: worst |ΔW error| {:.3e} at `{}` ({:.1}% of the output type's rounding bound{probed})",
                v.pairs,
                v.worst_error,
                v.worst_target,
                v.worst_ratio * 100.0
            );
        }
    }
    if verbose {
        for (name, ty, dims) in &s.tensors {
            println!("  {name:<48} {ty:<5} {dims:?}");
        }
    }
}
