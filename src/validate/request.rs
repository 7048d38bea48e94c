//! What a validation run is asked to do and what it answers, without llama.cpp: the request, the engine's settings
//! and progress, the outcome, and every way a run can fail with the exit status each one maps to.

use std::path::PathBuf;

use crate::exit::ExitStatus;
use crate::gguf;
use crate::gguf_adapter::Problem;
use crate::report::ReportMeta;

use super::gate::{Limits, LimitsError, Verdict};
use super::golden::{GoldenError, GoldenSet};
use super::results::RunMeasurements;
pub use crate::reference::{ReferenceOutcome, ReferenceRequest, SelfTestOutcome};

/// One validation run: a base, the adapters (each with its own scale), the golden prompts, the sweep and the limits.
#[derive(Clone, Debug)]
pub struct Request {
    /// The base model GGUF.
    pub base: PathBuf,
    /// GGUF LoRA adapters with their own scales (several: validated as a stack).
    pub adapters: Vec<(PathBuf, f32)>,
    /// Golden-prompt files or directories; empty: the shipped general control set.
    pub prompts: Vec<PathBuf>,
    /// Scales swept, multiplying every adapter's own scale.
    pub scales: Vec<f32>,
    /// Gate limits.
    pub limits: Limits,
    /// How the engine runs.
    pub engine: EngineConfig,
    /// Training parity against a reference pack instead of the golden sweep (`--reference`; prompts and scales
    /// then come from the pack).
    pub reference: Option<ReferenceRequest>,
    /// `--scales auto`: refine the recommended scale by bisection after the sweep.
    pub refine: Option<Refine>,
    /// `--merged`: a model with the adapters merged in (`lora-convert merge`), run next to base + runtime adapter.
    pub merged: Option<PathBuf>,
    /// Run only this shard of the golden set (`--shard I/N`); `merge_reports::merge` puts the shards' reports together.
    pub shard: Option<super::shard::Shard>,
    /// `--strict-base`: refuse an adapter that does not record this base as the one it was converted against
    /// (docs/base-fingerprint.md); without it such an adapter is a warning.
    pub strict_base: bool,
    /// `--baseline-adapter`: the adapter in production with its own scale; the candidate must not regress against it.
    pub baseline: Option<(PathBuf, f32)>,
}

/// `--scales auto`: after the sweep, bisect the bracket where the control limits break, one extra pass (reusing the
/// base pass) per step, until the bracket is no wider than `precision` or `max_passes` passes ran.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Refine {
    /// Most extra passes.
    pub max_passes: usize,
    /// Stop when the boundary is known to within this many scale units.
    pub precision: f32,
}

impl Refine {
    /// The sweep `--scales auto` starts from.
    pub const GRID: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
}

impl Default for Refine {
    fn default() -> Self {
        Refine {
            max_passes: 4,
            precision: 0.01,
        }
    }
}

impl Request {
    /// Base, adapters, tool, merged model, limits and shard, for the reports.
    pub fn report_meta(&self, shard: Option<super::shard::ShardInfo>) -> ReportMeta {
        ReportMeta {
            base: self.base.display().to_string(),
            adapters: self
                .adapters
                .iter()
                .map(|(p, s)| (p.display().to_string(), *s))
                .collect(),
            tool_version: format!("lora-validate {}", env!("CARGO_PKG_VERSION")),
            merged: self.merged.as_ref().map(|p| p.display().to_string()),
            limits: self.limits.clone(),
            shard,
        }
    }
}

/// What a finished run found.
#[derive(Debug)]
pub enum Outcome {
    /// The golden sweep.
    Golden(Box<GoldenOutcome>),
    /// Training parity against a reference pack.
    Reference(Box<ReferenceOutcome>),
    /// The parity checks' self-test (`--self-test`).
    SelfTest(SelfTestOutcome),
}

impl Outcome {
    /// How the command ends: 0 pass, 1 a gate or parity check failed, 130 / 3 for a partial golden run.
    pub fn exit_status(&self) -> ExitStatus {
        let passed = match self {
            Outcome::Golden(g) => match &g.measured.partial {
                Some(p) if p.interrupted => return ExitStatus::Interrupted,
                Some(_) => return ExitStatus::Runtime,
                None => g.verdict.passed,
            },
            Outcome::Reference(r) => r.verdict.passed,
            Outcome::SelfTest(t) => t.passed(),
        };
        if passed {
            ExitStatus::Success
        } else {
            ExitStatus::GateFailed
        }
    }

    /// The golden sweep's outcome, if this was one.
    pub fn golden(self) -> Option<GoldenOutcome> {
        match self {
            Outcome::Golden(g) => Some(*g),
            _ => None,
        }
    }
}

/// What a finished golden sweep found: the prompts, the measurements, the verdict and what the run was about.
#[derive(Debug)]
pub struct GoldenOutcome {
    /// The golden set that ran.
    pub set: GoldenSet,
    /// Every measurement.
    pub measured: RunMeasurements,
    /// Pass or fail, with every failure.
    pub verdict: Verdict,
    /// Base, adapters and tool, for the reports.
    pub meta: ReportMeta,
}

/// `A.gguf[:SCALE]`: an adapter path with an optional own scale (1.0 when absent). The last `:` splits only when a
/// number follows, so `C:\x.gguf` and `a:b.gguf` stay paths.
pub fn parse_adapter(spec: &str) -> Result<(PathBuf, f32), Error> {
    if let Some((path, scale)) = spec.rsplit_once(':')
        && let Ok(s) = scale.parse::<f32>()
    {
        if !s.is_finite() {
            return Err(Error::Usage(format!(
                "adapter `{spec}`: scale {scale} is not a finite number"
            )));
        }
        return Ok((PathBuf::from(path), s));
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// Why a validation run could not give a verdict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag's value is unusable.
    #[error("{0}")]
    Usage(String),
    /// The limits file is unreadable or malformed.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// A golden-prompt file is unreadable or malformed.
    #[error(transparent)]
    Prompts(#[from] GoldenError),
    /// The base or an adapter is not a readable GGUF file.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// The reference pack is unreadable or malformed.
    #[error(transparent)]
    Pack(#[from] crate::reference::PackError),
    /// A sabotaged copy for the self-test could not be made.
    #[error(transparent)]
    Sabotage(#[from] crate::reference::sabotage::SabotageError),
    /// An adapter does not fit the base (checked with our own reader before llama.cpp, which aborts on some of these).
    #[error(
        "`{}` does not fit the base `{}` ({} problem(s)):\n{}",
        adapter.display(),
        base.display(),
        problems.len(),
        problems.iter().take(10).map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
    )]
    Misfit {
        /// The adapter.
        adapter: PathBuf,
        /// The base.
        base: PathBuf,
        /// Every problem.
        problems: Vec<Problem>,
    },
    /// `--strict-base` and an adapter that does not record this base (`gguf_adapter::fingerprint::check_base`).
    #[error("{0}")]
    BaseMismatch(String),
    /// llama.cpp failed, or a prompt cannot run.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Reports that cannot be merged into one run.
    #[error(transparent)]
    Merge(#[from] super::merge_reports::MergeError),
}

impl Error {
    /// The exit status this failure maps to: 3 when llama.cpp itself failed, 2 for everything about the input.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Engine(e) if !e.is_input_error() => ExitStatus::Runtime,
            _ => ExitStatus::BadInput,
        }
    }
}

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Context size in tokens (0: sized from the prompts).
    pub n_ctx: u32,
    /// Logical and physical batch size.
    pub n_batch: u32,
    /// Worker threads.
    pub threads: i32,
    /// Default new tokens per prompt.
    pub max_tokens: u32,
    /// Most sequences decoded together.
    pub max_parallel: usize,
    /// Show llama.cpp's own log.
    pub verbose: bool,
    /// One prompt at a time (the baseline the batched engine is measured against).
    pub sequential: bool,
    /// An aLoRA's invocation tokens: the adapter acts from its invocation in each prompt, as llama-server runs it
    /// (see [`super::alora`]).
    pub alora_invocation: Option<Vec<i32>>,
    /// Layers offloaded to a GPU backend's devices; None: every layer when a GPU backend and device are there,
    /// else none. Base and adapted contexts share the one model, so they always run on the same devices.
    pub gpu_layers: Option<u32>,
    /// Set (by a Ctrl-C handler) to stop the run after the step in progress; the run then reports what finished.
    pub interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_ctx: 0,
            n_batch: 512,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
            max_tokens: 32,
            max_parallel: 64,
            verbose: false,
            sequential: false,
            alora_invocation: None,
            gpu_layers: None,
            interrupt: None,
        }
    }
}

/// What the engine is doing, for a progress bar. Steps are numbered through the run: the base continuations, then
/// one step per teacher-forced chunk (every scale, with the adapted continuations).
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// A generating pass started: `None` is the base model, else a scale.
    Pass {
        /// The scale, or None for the base pass.
        scale: Option<f32>,
        /// Steps done before this one.
        done: usize,
        /// Steps in all.
        total: usize,
    },
    /// A teacher-forced chunk started: compared at every scale, then continued greedily.
    Compare {
        /// Steps done before this one.
        done: usize,
        /// Steps in all.
        total: usize,
    },
    /// Something the user should hear before the run (it is in the verdict's warnings too): an adapter converted
    /// against another base.
    Warning(String),
}

/// Why the engine failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// llama.cpp's backend could not start.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// The model could not be loaded.
    #[error(
        "llama.cpp could not load the model `{path}`: {message} (run with -v to see llama.cpp's log)"
    )]
    ModelLoad {
        /// The model file.
        path: PathBuf,
        /// llama.cpp's error.
        message: String,
    },
    /// An adapter could not be loaded.
    #[error(
        "llama.cpp could not load the adapter `{path}`: {message} (run with -v to see llama.cpp's log)"
    )]
    AdapterLoad {
        /// The adapter file.
        path: PathBuf,
        /// llama.cpp's error.
        message: String,
    },
    /// A context could not be created.
    #[error("llama.cpp could not create a context of {n_ctx} tokens: {message}")]
    Context {
        /// Requested context size.
        n_ctx: u32,
        /// llama.cpp's error.
        message: String,
    },
    /// Decoding failed.
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
    /// A prompt (with its continuation) does not fit the context.
    #[error(
        "prompt `{id}` needs {tokens} tokens but the context holds {n_ctx}; raise --ctx or shorten it"
    )]
    PromptTooLong {
        /// Prompt id.
        id: String,
        /// Tokens needed.
        tokens: usize,
        /// Context size.
        n_ctx: u32,
    },
    /// The chat template could not be applied.
    #[error("prompt `{id}`: {message}")]
    Template {
        /// Prompt id.
        id: String,
        /// What went wrong.
        message: String,
    },
}

impl EngineError {
    /// Problems with the user's input (exit 2) as opposed to llama.cpp failing (exit 3).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            EngineError::PromptTooLong { .. } | EngineError::Template { .. }
        )
    }
}
