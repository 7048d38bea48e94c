//! A LoRA on the token embedding of a model whose output head is tied to it (Gemma, Qwen2.5 ≤ 3B, Llama 3.2 1B/3B
//! …). llama.cpp cannot run it as an adapter (it would apply the embedding's factors to the output projection and
//! abort), but it can be merged as it behaved in training: PEFT's LoRA on `embed_tokens` changes the lookup only,
//! while `lm_head` keeps multiplying by the original weight. So the merged file gets `token_embd` = W + ΔW and a new,
//! untied `output.weight` holding the original W, byte for byte (llama.cpp loads `output.weight` when a file has
//! one, and falls back to the embedding only when it has none).
//!
//! PEFT's own `merge_and_unload` differs: it writes W + ΔW into the shared weight, so its merged model's head changes
//! too — it no longer computes what the trained adapter computed. The merge here matches the unmerged PEFT model.

use crate::gguf::{GgufFile, TensorInfo};

/// The token embedding.
pub const EMBEDDING: &str = "token_embd.weight";
/// The output head llama.cpp loads when present.
pub const OUTPUT: &str = "output.weight";

/// The untied output head to append when `merged` targets include the embedding of a tied base: the embedding's
/// shape and type, its bytes to be copied from the base's embedding.
pub fn untied_output(base: &GgufFile, embedding_merged: bool) -> Option<TensorInfo> {
    if !embedding_merged || !base.ties_output_to_embedding() {
        return None;
    }
    base.tensor(EMBEDDING).map(|t| TensorInfo {
        name: OUTPUT.to_string(),
        ..t.clone()
    })
}
