//! `lora-convert`: command-line parsing, the summary, and exit codes. All the work is in `lora_gguf::convert`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lora_gguf::adapter::Framework;
use lora_gguf::convert::error::chain;
use lora_gguf::convert::{
    self, ConvertError, IgnoredPairs, Options, OutType, Quirks, Summary, TorchtuneQwen2, manifest,
};
use lora_gguf::exit::ExitStatus;
use lora_gguf::inspect;

#[path = "lora-convert/merge_cli.rs"]
mod merge_cli;

/// Convert a PEFT or mlx-lm LoRA adapter into a GGUF LoRA adapter for llama.cpp — exactly, and checked against the
/// base.
#[derive(Parser, Debug)]
#[command(
    name = "lora-convert",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    override_usage = "lora-convert ADAPTER_DIR -o OUT.gguf [OPTIONS]\n       lora-convert inspect PATH [--base BASE.gguf | --base-config HF_DIR] [--json]\n       lora-convert merge --base BASE.gguf --adapter ADAPTER[:SCALE]... -o MERGED.gguf [OPTIONS]",
    after_help = "Exit status: 0 the adapter was written; 2 it was refused or the input is bad (nothing is written).\n\n\
                  Examples:\n  lora-convert ./my-peft-adapter -o adapter.gguf --base model-Q4_K_M.gguf --verify\n  \
                  lora-convert inspect ./my-peft-adapter --base model-Q4_K_M.gguf\n\n\
                  An adapter directory literally named `inspect` is given as `./inspect`."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    convert: ConvertArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what an adapter is and what conversion would do with it (PEFT/mlx-lm directory or GGUF adapter); nothing is
    /// written. Exit status: 0 inspected (and, with --base/--base-config, it fits); 2 unreadable, or it does not fit.
    Inspect(InspectArgs),
    /// Bake LoRA adapters into the base model: one GGUF for runtimes that cannot load adapters. Merged tensors are
    /// quantized by ggml (needs the default `merge` feature: the llama.cpp build). Exit status: 0 written; 2 refused
    /// or bad input (nothing is written).
    Merge(merge_cli::MergeArgs),
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    /// A PEFT or mlx-lm adapter directory, or a GGUF LoRA adapter file.
    path: PathBuf,

    /// A base model GGUF: an adapter directory is planned against it; a GGUF adapter gets the fit check lora-validate
    /// runs before llama.cpp.
    #[arg(long, value_name = "BASE.gguf")]
    base: Option<PathBuf>,

    /// A Hugging Face model directory (or its config.json) describing the base (adapter directories only).
    #[arg(long, value_name = "HF_CONFIG_DIR")]
    base_config: Option<PathBuf>,

    /// How to treat torchtune's Qwen2 q/k export (as for conversion).
    #[arg(long, value_enum, value_name = "HOW")]
    torchtune_qwen2: Option<TorchtuneArg>,

    /// Plan as conversion with `--drop-ignored-pairs` would.
    #[arg(long)]
    drop_ignored_pairs: bool,

    /// Print the report as JSON (schema `lora-gguf.inspect/1`, docs/inspect-and-manifest.md).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ConvertArgs {
    /// The adapter directory: PEFT (adapter_config.json + adapter_model.safetensors) or mlx-lm
    /// (adapter_config.json + adapters.safetensors), told apart by its files.
    #[arg(required = true, value_name = "ADAPTER_DIR")]
    adapter_dir: Option<PathBuf>,

    /// The GGUF adapter to write.
    #[arg(short, long, value_name = "OUT.gguf", required = true)]
    output: Option<PathBuf>,

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

    /// Write a JSON manifest of the conversion: every source tensor → GGUF tensor with its factors, every skip and
    /// refusal (schema `lora-gguf.manifest/1`). Written also when the conversion is refused.
    #[arg(long, value_name = "FILE.json")]
    manifest: Option<PathBuf>,

    /// torchtune's PEFT export of a Qwen2 model has its q/k lora_B rows permuted as for Llama: `undo` converts what
    /// torchtune trained, `as-saved` the file as PEFT reads it. Without this option such an adapter is refused.
    #[arg(long, value_enum, value_name = "HOW")]
    torchtune_qwen2: Option<TorchtuneArg>,

    /// Leave out the pairs whose tensor llama.cpp's graph multiplies without LoRA (DeepSeek-V2's MLA projections,
    /// Gemma 4's per_layer_model_projection, …), with a warning for each. Without it such an adapter is refused:
    /// those pairs would load and change nothing.
    #[arg(long)]
    drop_ignored_pairs: bool,

    /// Convert although the adapter's base_model_name_or_path names another model family than the base GGUF
    /// (refused by default: a Llama adapter on a Gemma base whose shapes happen to fit converts to nonsense).
    #[arg(long)]
    allow_other_base_family: bool,

    /// Worker threads, each reading, converting and writing whole LoRA pairs (default: all cores; the output is
    /// the same at any count).
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
enum TorchtuneArg {
    Undo,
    AsSaved,
}

impl From<TorchtuneArg> for TorchtuneQwen2 {
    fn from(t: TorchtuneArg) -> Self {
        match t {
            TorchtuneArg::Undo => TorchtuneQwen2::Undo,
            TorchtuneArg::AsSaved => TorchtuneQwen2::AsSaved,
        }
    }
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
    match cli.command {
        Some(Command::Inspect(args)) => inspect(args),
        Some(Command::Merge(args)) => merge_cli::run(args),
        None => convert_main(cli.convert),
    }
}

fn ignored_pairs(drop: bool) -> IgnoredPairs {
    if drop {
        IgnoredPairs::Drop
    } else {
        IgnoredPairs::Refuse
    }
}

fn inspect(args: InspectArgs) -> ExitCode {
    let request = inspect::Request {
        path: args.path,
        base: args.base,
        base_config: args.base_config,
        quirks: Quirks {
            torchtune_qwen2: args.torchtune_qwen2.map(Into::into),
            ignored_pairs: ignored_pairs(args.drop_ignored_pairs),
            ..Default::default()
        },
    };
    match inspect::inspect(&request) {
        Ok(report) => {
            if args.json {
                print!("{}", report.to_json());
            } else {
                print!("{}", inspect::render::text(&report));
            }
            if report.fits() == Some(false) {
                ExitStatus::BadInput.into()
            } else {
                ExitStatus::Success.into()
            }
        }
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            ExitStatus::BadInput.into()
        }
    }
}

fn convert_main(cli: ConvertArgs) -> ExitCode {
    // clap requires both unless a subcommand is given.
    let (Some(adapter_dir), Some(output)) = (cli.adapter_dir.clone(), cli.output.clone()) else {
        eprintln!("error: ADAPTER_DIR and -o OUT.gguf are required");
        return ExitStatus::BadInput.into();
    };
    let opts = Options {
        adapter_dir,
        output,
        base: cli.base.clone(),
        base_config: cli.base_config.clone(),
        outtype: cli.outtype.into(),
        arch: cli.arch.clone(),
        force: cli.force,
        verify: cli.verify,
        threads: cli.threads,
        quirks: Quirks {
            torchtune_qwen2: cli.torchtune_qwen2.map(Into::into),
            ignored_pairs: ignored_pairs(cli.drop_ignored_pairs),
            other_base_family: cli.allow_other_base_family,
            ..Default::default()
        },
    };
    let outcome = convert::run(&opts);
    let mut status = match &outcome.result {
        Ok(summary) => {
            if !cli.quiet {
                print_summary(summary, cli.verbose);
            }
            ExitStatus::Success.into()
        }
        Err(err) => {
            eprintln!("error: {}", chain(err));
            // the pairs llama.cpp ignores are named together: one decision (--drop-ignored-pairs) covers them all
            let ignored = |e: &&ConvertError| matches!(e, ConvertError::NoEffect { .. });
            let rest: &[ConvertError] = outcome.prepared.as_ref().map_or(&[], |p| &p.refusals);
            if ignored(&err) {
                for e in rest.iter().filter(ignored) {
                    eprintln!("error: {}", chain(e));
                }
            }
            let named = if ignored(&err) {
                rest.iter().filter(ignored).count()
            } else {
                0
            };
            let more = rest.len() - named;
            if more > 0 {
                let listed = if cli.manifest.is_some() {
                    "the manifest lists them"
                } else {
                    "`lora-convert inspect` lists them"
                };
                eprintln!("({more} more reason(s) to refuse; {listed})");
            }
            ExitStatus::BadInput.into()
        }
    };
    if let Some(path) = &cli.manifest {
        let m = manifest::build(&outcome);
        if let Err(e) = manifest::write(path, &m) {
            eprintln!("error: {}", chain(&e));
            status = ExitStatus::BadInput.into();
        }
    }
    status
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
