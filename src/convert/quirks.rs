//! Trainer quirks that change what a file's factors mean. One so far: torchtune's PEFT export of Qwen2.
//!
//! torchtune 0.6.1 loads Qwen2 checkpoints without permuting q/k (`models/qwen2/_convert_weights.py`
//! `qwen2_hf_to_tune`; its `Qwen2RotaryPositionalEmbeddings` uses the HF rotate-half layout), but its checkpointer
//! exports the LoRA of every model except Phi and Llama 3.2 Vision through `convert_weights.tune_to_peft_adapter_weights`,
//! which permutes the `lora_B` rows of q_proj and k_proj as Llama's interleaved rotary layout needs
//! (`_permute_lora_matrix`: per head, rows (i, i + hd/2) ← (2i, 2i+1)). The exported q/k factors are therefore in
//! the wrong row order: PEFT in PyTorch runs them wrongly as well (fixtures/cases/torchtune-qwen2: logits off by
//! 1.6 where the adapter moves them by 3.1). llama.cpp's `LlamaModel.permute` is exactly the inverse, so undoing it
//! is [`RowTransform::LlamaRope`] on B's rows; Qwen2's own converter leaves q/k rows as they are.

use super::error::ConvertError;
use crate::adapter::{Adapter, LoraPair};
use crate::arch::{Family, Heads, RowTransform, Target};
use crate::peft::trainer;

/// What to do with the q/k rows of a torchtune Qwen2 export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchtuneQwen2 {
    /// Undo torchtune's permutation: convert what torchtune trained (its own logits are the reference).
    Undo,
    /// Convert the file as PEFT reads it.
    AsSaved,
}

impl TorchtuneQwen2 {
    /// The command-line value.
    pub fn name(self) -> &'static str {
        match self {
            TorchtuneQwen2::Undo => "undo",
            TorchtuneQwen2::AsSaved => "as-saved",
        }
    }
}

/// What to do with pairs whose target llama.cpp's graph multiplies without LoRA (`Review::no_effect`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IgnoredPairs {
    /// Refuse the adapter, naming each such pair (the default: the file would not behave as trained).
    #[default]
    Refuse,
    /// `--drop-ignored-pairs`: leave them out, with a warning per tensor.
    Drop,
    /// Write them anyway, with a warning per tensor (library only: the tests that prove llama.cpp ignores them).
    Keep,
}

/// The user's choices about trainer and runtime quirks (none given: a detected quirk is refused with the choices
/// explained).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// `--torchtune-qwen2`.
    pub torchtune_qwen2: Option<TorchtuneQwen2>,
    /// `--drop-ignored-pairs`.
    pub ignored_pairs: IgnoredPairs,
    /// Planning for `merge`, not for a runtime adapter: an embedding LoRA on a base with a tied output head is
    /// planned instead of refused (merge writes it into the embedding alone and unties the head).
    pub merge_tied_embedding: bool,
    /// `--allow-other-base-family`: convert although `base_model_name_or_path` names another model family than
    /// the base GGUF (by default refused: the shapes may fit, the weights are another model's).
    pub other_base_family: bool,
}

/// GGUF architectures torchtune's `QWEN2` model type converts to (Qwen2 and Qwen2.5).
const TORCHTUNE_QWEN2_ARCHES: &[&str] = &["qwen2"];

/// Whether this pair is a q/k projection of a torchtune Qwen2 export.
pub fn is_torchtune_qwen2_qk(adapter: &Adapter, family: &Family, pair: &LoraPair) -> Option<Heads> {
    if !trainer::is_torchtune(&adapter.trainers)
        || !TORCHTUNE_QWEN2_ARCHES.contains(&family.gguf_arch)
    {
        return None;
    }
    if pair.module.ends_with("self_attn.q_proj") {
        Some(Heads::Query)
    } else if pair.module.ends_with("self_attn.k_proj") {
        Some(Heads::KeyValue)
    } else {
        None
    }
}

/// The row transform of `target` once trainer quirks are accounted for.
pub fn source_rows(
    adapter: &Adapter,
    family: &Family,
    pair: &LoraPair,
    target: &Target,
    quirks: &Quirks,
) -> Result<RowTransform, ConvertError> {
    let Some(heads) = is_torchtune_qwen2_qk(adapter, family, pair) else {
        return Ok(target.rows);
    };
    if target.rows != RowTransform::Identity {
        return Ok(target.rows); // not Qwen2's plain q/k any more: nothing we have reviewed
    }
    match quirks.torchtune_qwen2 {
        Some(TorchtuneQwen2::Undo) => Ok(RowTransform::LlamaRope(heads)),
        Some(TorchtuneQwen2::AsSaved) => Ok(target.rows),
        None => Err(ConvertError::TorchtuneQwen2 {
            module: pair.module.clone(),
            evidence: adapter
                .trainers
                .iter()
                .filter(|h| h.trainer == trainer::Trainer::Torchtune)
                .map(|h| h.evidence.clone())
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}
