//! The golden-prompt set: what the gate runs. (Types are the contract with the engine; parsing is filled in by the
//! golden-set work.)

use serde::{Deserialize, Serialize};

pub use super::results::PromptKind;

/// One chat message of a `messages` prompt, rendered with the base model's own chat template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// The text the model continues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromptText {
    /// Continued as is (BOS added when the model wants one).
    Raw(String),
    /// Rendered with the base GGUF's `tokenizer.chat_template`, with the assistant turn opened.
    Chat(Vec<Message>),
}

/// Optional checks on the adapted model's greedy continuation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Expectations {
    /// Every string must occur (case-sensitive).
    pub contains: Vec<String>,
    /// No string may occur.
    pub not_contains: Vec<String>,
    /// The continuation must match this regular expression.
    pub regex: Option<String>,
}

/// Per-prompt overrides of the gate limits (None: the set's or the default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptLimits {
    /// Control: maximum mean KL(base ‖ adapted) in nats.
    pub max_kl_mean: Option<f64>,
    /// Control: maximum per-position KL in nats.
    pub max_kl_max: Option<f64>,
    /// Control: minimum top-1 agreement (0..1).
    pub min_top1_agreement: Option<f64>,
    /// Target: minimum mean KL that counts as an effect.
    pub min_kl_mean: Option<f64>,
}

/// One prompt of the golden set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoldenPrompt {
    /// Unique id within the set.
    pub id: String,
    /// Control (must not drift) or target (must move).
    pub kind: PromptKind,
    /// What the model continues.
    pub text: PromptText,
    /// New tokens to generate (None: the run's default).
    pub max_tokens: Option<u32>,
    /// Checks on the adapted continuation.
    pub expect: Expectations,
    /// Per-prompt limits.
    pub limits: PromptLimits,
    /// Where it came from, for error messages: `file:line`.
    pub source: String,
}
