//! What a reference run measured: the contract between [`super::run`] (llama.cpp) and the verdict and reports.
//! Plain data, serialisable.

use serde::Serialize;

use super::compare::{Divergence, Effect};
use super::prompt_parity::Mismatch;

/// One adapter scale of one prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScaleRun {
    /// The scale (every LoRA scaling × this).
    pub scale: f32,
    /// Pack adapter vs llama.cpp adapter.
    #[serde(flatten)]
    pub divergence: DivergenceOut,
    /// The adapter's effect, llama.cpp vs training.
    pub effect: EffectOut,
}

/// [`Divergence`] for reports.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DivergenceOut {
    /// Mean KL(pack ‖ llama.cpp), nats.
    pub kl_mean: f64,
    /// Largest per-position KL.
    pub kl_max: f64,
    /// Top-1 agreement.
    pub top1: f64,
}

impl From<Divergence> for DivergenceOut {
    fn from(d: Divergence) -> Self {
        DivergenceOut {
            kl_mean: d.kl_mean,
            kl_max: d.kl_max,
            top1: d.top1,
        }
    }
}

/// [`Effect`] for reports.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EffectOut {
    /// ⟨Δ llama.cpp, Δ training⟩ ÷ ‖Δ training‖²: llama.cpp's shift along the trained one.
    pub ratio: f64,
    /// ‖Δ llama.cpp‖ ÷ ‖Δ training‖.
    pub norm_ratio: f64,
    /// Cosine of the two shifts.
    pub cosine: f64,
    /// What the trained shift does not explain of llama.cpp's, ÷ the noise of one pass.
    pub residual: f64,
    /// RMS of the trained shift per recorded cell (how much the adapter moves this prompt).
    pub trained_rms: f64,
    /// ‖Δ training‖.
    pub trained_norm: f64,
    /// ‖Δ llama.cpp‖.
    pub llama_norm: f64,
    /// ‖llama.cpp base − training base‖ on the same cells: the noise of one pass.
    pub noise_norm: f64,
}

impl From<Effect> for EffectOut {
    fn from(e: Effect) -> Self {
        EffectOut {
            ratio: e.ratio(),
            norm_ratio: e.norm_ratio(),
            cosine: e.cosine,
            residual: e.residual(),
            trained_rms: e.trained_rms(),
            trained_norm: e.trained_norm,
            llama_norm: e.llama_norm,
            noise_norm: e.noise_norm,
        }
    }
}

/// Everything measured for one pack prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromptRun {
    /// Prompt id.
    pub id: String,
    /// `control` or `target`.
    pub kind: String,
    /// Training's prompt ids.
    pub training_tokens: Vec<i32>,
    /// llama.cpp's ids for the same prompt (None when it could not render it).
    pub llama_tokens: Option<Vec<i32>>,
    /// Why llama.cpp could not render the prompt (a chat prompt on a GGUF without a template).
    pub llama_render_error: Option<String>,
    /// The first difference of the ids and its cause (None: identical).
    pub mismatch: Option<Mismatch>,
    /// Pack base vs llama.cpp base (None when the pack's ids cannot run on this GGUF).
    pub base: Option<DivergenceOut>,
    /// One per recorded adapter scale.
    pub adapters: Vec<ScaleRun>,
    /// Training's adapter continuation (scale 1), as text.
    pub training_adapter_text: String,
    /// llama.cpp's greedy adapter continuation (scale 1) from the pack's ids, as text.
    pub llama_adapter_text: String,
    /// Leading tokens where the two greedy continuations agree, and the continuation length.
    pub greedy_agreement: (usize, usize),
}

/// A whole reference run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReferenceRun {
    /// Per prompt, in pack order.
    pub prompts: Vec<PromptRun>,
    /// Warnings (fingerprint mismatches) that do not fail a check by themselves.
    pub warnings: Vec<String>,
}
