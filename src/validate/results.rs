//! What one validation run measured: the contract between the engine (which runs llama.cpp and computes the
//! per-position numbers) and the gate and reports (which judge and print them). Plain data, serialisable.

use serde::{Deserialize, Serialize};

/// Whether a prompt must stay put or must move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptKind {
    /// The adapter must not change the model's behaviour here (drift is limited).
    Control,
    /// The adapter is meant to change the model's behaviour here (a minimum effect is required).
    Target,
}

/// Measurements for one prompt at one adapter scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptMeasurement {
    /// Prompt id from the golden file.
    pub prompt_id: String,
    /// The multiplier applied to every adapter's own scale in this pass.
    pub scale: f32,
    /// Greedy continuation of the adapted model (decoded text).
    pub adapted_text: String,
    /// Greedy continuation of the adapted model (token ids).
    pub adapted_tokens: Vec<i32>,
    /// Index of the first generated token where adapted and base continuations differ; `None` if identical.
    pub first_divergence: Option<usize>,
    /// Teacher-forced on the base continuation: mean over positions of KL(base ‖ adapted), in nats.
    pub kl_mean: f64,
    /// Teacher-forced on the base continuation: max over positions of KL(base ‖ adapted), in nats.
    pub kl_max: f64,
    /// Teacher-forced: fraction of positions where the adapted argmax equals the base argmax.
    pub top1_agreement: f64,
    /// Largest absolute logit difference to the base over all teacher-forced positions.
    pub max_abs_logit_delta: f32,
    /// Number of teacher-forced positions (prompt's last token + base continuation).
    pub positions: usize,
}

/// The base model's own greedy continuation of one prompt (computed once per run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseContinuation {
    /// Prompt id from the golden file.
    pub prompt_id: String,
    /// The rendered prompt as tokenized (after chat template, if any).
    pub prompt_tokens: Vec<i32>,
    /// Greedy continuation (decoded text).
    pub text: String,
    /// Greedy continuation (token ids).
    pub tokens: Vec<i32>,
}

/// Wall-clock timings of one run, in milliseconds unless stated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Loading the base model.
    pub model_load_ms: f64,
    /// Loading all adapters (once each).
    pub adapter_load_ms: f64,
    /// Mean time to switch the active adapter set / scale (set + KV clear).
    pub adapter_switch_ms: f64,
    /// Longest adapter switch.
    #[serde(default)]
    pub adapter_switch_max_ms: f64,
    /// Adapter switches in the run (one per teacher-forced chunk and scale, one per generating scale).
    #[serde(default)]
    pub adapter_switches: usize,
    /// Per pass (base first, then one per scale): prompt tokens/s and generated tokens/s.
    pub passes: Vec<PassTiming>,
    /// Where the time went.
    #[serde(default)]
    pub phases: PhaseTimings,
    /// Whole run.
    pub total_ms: f64,
}

/// Wall time of the engine's phases, in milliseconds (they add up to the run minus loading, tokenizing and
/// adapter switches).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimings {
    /// The base model's greedy continuations (decode and argmax).
    pub base_generate_ms: f64,
    /// Teacher-forced decodes in the base context (once per chunk, shared by every scale).
    pub base_teacher_forced_ms: f64,
    /// Teacher-forced decodes in the adapted context (once per chunk and scale).
    pub adapted_teacher_forced_ms: f64,
    /// KL, top-1 and max |Δlogit| over the whole vocabulary, base rows summarised once.
    pub compare_ms: f64,
    /// The adapted model's greedy continuations (every scale > 0).
    pub adapted_generate_ms: f64,
    /// `--merged`: the merged model's teacher-forced decodes, comparisons and greedy continuations.
    #[serde(default)]
    pub merged_ms: f64,
}

/// Throughput of one pass over all prompts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassTiming {
    /// `None` for the base pass, else the scale.
    pub scale: Option<f32>,
    /// Prompt (prefill + teacher-forced) tokens per second.
    pub prompt_tokens_per_s: f64,
    /// Generated tokens per second.
    pub gen_tokens_per_s: f64,
    /// Wall time of the pass.
    pub wall_ms: f64,
}

/// Everything the engine measured in one run, before judging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMeasurements {
    /// Base continuations, one per prompt, in golden-set order.
    pub base: Vec<BaseContinuation>,
    /// One entry per prompt × scale (scale-major: all prompts at the first scale, then the next…).
    pub measurements: Vec<PromptMeasurement>,
    /// Engine self-check: largest |Δlogit| between the adapter set at scale 0 and no adapter (must be 0.0).
    pub scale_zero_max_abs_logit_delta: f32,
    /// Engine noise floor: the same base pass run twice in the identical layout; largest |Δlogit| (0.0 when
    /// deterministic) and the KL it implies.
    pub noise_floor_kl_max: f64,
    /// Settings that change logits and therefore belong with the numbers.
    pub settings: EngineSettings,
    /// How long things took.
    pub timings: Timings,
    /// Set when the run did not finish (interrupted, or llama.cpp failed part-way): the measurements then cover
    /// the finished prompts only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
    /// Set when the adapter is an activated LoRA: how it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alora: Option<AloraRun>,
    /// With `--merged`: the merged model measured against base + runtime adapter (every adapter at its own scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<Vec<MergedMeasurement>>,
}

/// How an activated LoRA (aLoRA) was applied: as llama-server runs it, from its invocation sequence on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AloraRun {
    /// The adapter's `adapter.alora.invocation_tokens`.
    pub invocation_tokens: Vec<i32>,
    /// Prompts whose tokens hold the invocation sequence: the adapter acts from one token before its last occurrence.
    pub prompts_invoked: Vec<String>,
    /// Prompts without it: they run as the base (llama-server sets the adapter's scale to 0).
    pub prompts_not_invoked: Vec<String>,
}

impl AloraRun {
    /// One line for the human reports.
    pub fn summary(&self) -> String {
        format!(
            "activated LoRA (aLoRA): applied as llama-server does, from its invocation tokens {:?} on (off before \
             them); {} of {} prompts invoke it, the others run as the base",
            self.invocation_tokens,
            self.prompts_invoked.len(),
            self.prompts_invoked.len() + self.prompts_not_invoked.len()
        )
    }
}

/// One prompt through the merged model (`lora-validate --merged`), teacher-forced on the base continuation like
/// the sweep, compared with the runtime adapter at scale 1 (the reference) and with the base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergedMeasurement {
    /// Prompt id from the golden file.
    pub prompt_id: String,
    /// Mean over positions of KL(base + runtime adapter ‖ merged), in nats.
    pub kl_mean: f64,
    /// Max over positions of KL(base + runtime adapter ‖ merged), in nats.
    pub kl_max: f64,
    /// Fraction of positions where the merged argmax equals the runtime adapter's.
    pub top1_agreement: f64,
    /// Largest absolute logit difference to the runtime adapter.
    pub max_abs_logit_delta: f32,
    /// Mean over positions of KL(base ‖ merged): the merged model's own drift, next to the adapter's.
    pub base_kl_mean: f64,
    /// Fraction of positions where the merged argmax equals the base's.
    pub base_top1_agreement: f64,
    /// Greedy continuation of the merged model (decoded text).
    pub merged_text: String,
    /// Greedy continuation of the merged model (token ids).
    pub merged_tokens: Vec<i32>,
    /// Index of the first token where the merged and the runtime adapter's greedy continuations differ.
    pub first_divergence: Option<usize>,
    /// Fraction of the runtime adapter's greedy continuation the merged model reproduces before they differ.
    pub greedy_agreement: f64,
    /// Teacher-forced positions.
    pub positions: usize,
}

/// How far an unfinished run got, and what stopped it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// What stopped the run: an interruption (Ctrl-C) or llama.cpp's error.
    pub reason: String,
    /// Stopped by the user rather than by an error.
    pub interrupted: bool,
    /// Prompts measured at every scale (the first ones of the set).
    pub prompts_done: usize,
    /// Prompts in the set.
    pub prompts_total: usize,
}

/// Engine settings recorded with every report (ggml's results depend on batch layout and threads).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineSettings {
    /// Context size in tokens.
    pub n_ctx: u32,
    /// Logical batch size.
    pub n_batch: u32,
    /// Physical batch size.
    pub n_ubatch: u32,
    /// Worker threads.
    pub threads: i32,
    /// Maximum new tokens per prompt (default; prompts may lower or raise it).
    pub max_tokens: u32,
    /// Scales swept, in order.
    pub scales: Vec<f32>,
    /// Where llama.cpp ran the model: "CPU (…)" or the GPU devices and the layers offloaded to them.
    #[serde(default)]
    pub backend: String,
    /// Layers offloaded to GPU devices (0: CPU only).
    #[serde(default)]
    pub gpu_layers: u32,
}
