//! Safetensors keys → LoRA pairs. Each key is parsed once into (module, half); everything that is not a LoRA
//! factor is classified so it can be refused with a reason (peft 0.21.2 `utils/save_and_load.py`: the adapter
//! name is removed from saved keys, `base_model.model.` prefixes the module path, embeddings use
//! `lora_embedding_A/B` without `.weight`, DoRA saves `lora_magnitude_vector`, lora_bias saves `lora_B.bias`).

/// The element type of a source tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDtype {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
}

impl SourceDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SourceDtype::F32 => 4,
            SourceDtype::F16 | SourceDtype::BF16 => 2,
        }
    }
}

/// One tensor of the adapter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The safetensors key.
    pub key: String,
    /// Element type.
    pub dtype: SourceDtype,
    /// Shape (numpy order).
    pub shape: Vec<usize>,
}

/// A Linear or an Embedding LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PairKind {
    /// `lora_A` (r, in), `lora_B` (out, r).
    Linear,
    /// `lora_embedding_A` (r, vocab), `lora_embedding_B` (hidden, r); ΔE = s·(B·A)ᵀ.
    Embedding,
}

/// The two factors of one adapted module.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Module path relative to the base model (what PEFT's pattern matching sees): `model.layers.0.self_attn.q_proj`.
    pub module: String,
    /// Linear or embedding.
    pub kind: PairKind,
    /// The A factor.
    pub a: TensorRef,
    /// The B factor.
    pub b: TensorRef,
    /// The rank, from the shapes.
    pub rank: usize,
    /// PEFT's scaling for this module.
    pub scaling: super::Scaling,
}

/// What one safetensors key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A LoRA factor.
    Factor {
        /// The module path.
        module: String,
        /// Linear or embedding.
        kind: PairKind,
        /// True for A, false for B.
        is_a: bool,
    },
    /// A copy of a wrapped base layer (`…base_layer.weight`), saved by PEFT next to embedding LoRAs; not needed.
    BaseLayerCopy,
    /// DoRA's magnitude vector.
    DoraMagnitude,
    /// A LoRA bias (`lora_B.bias`).
    LoraBias,
    /// A trainable-token delta.
    TrainableTokens,
    /// A full weight or bias of the base model (modules_to_save, resized embeddings).
    FullWeight,
    /// Anything else.
    Unknown,
}

const PREFIX: &str = "base_model.model.";

/// Classify a key.
pub fn classify(key: &str) -> KeyKind {
    let rest = key.strip_prefix(PREFIX).unwrap_or(key);
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.iter().any(|p| p.starts_with("lora_magnitude_vector")) {
        return KeyKind::DoraMagnitude;
    }
    if parts.contains(&"token_adapter") || rest.contains("trainable_tokens_delta") {
        return KeyKind::TrainableTokens;
    }
    let lora_at = parts.iter().rposition(|p| {
        matches!(
            *p,
            "lora_A" | "lora_B" | "lora_embedding_A" | "lora_embedding_B"
        )
    });
    if let Some(i) = lora_at {
        let module = parts[..i].join(".");
        let tail = &parts[i + 1..];
        let part = parts[i];
        if module.is_empty() {
            return KeyKind::Unknown;
        }
        let is_a = part.ends_with('A');
        if part.starts_with("lora_embedding") {
            // `lora_embedding_A` or `lora_embedding_A.<adapter name>`
            return if tail.len() <= 1 {
                KeyKind::Factor {
                    module,
                    kind: PairKind::Embedding,
                    is_a,
                }
            } else {
                KeyKind::Unknown
            };
        }
        return match tail {
            ["weight"] | [_, "weight"] => KeyKind::Factor {
                module,
                kind: PairKind::Linear,
                is_a,
            },
            ["bias"] | [_, "bias"] => KeyKind::LoraBias,
            _ => KeyKind::Unknown,
        };
    }
    if rest.ends_with(".base_layer.weight") || rest.ends_with(".base_layer.bias") {
        return KeyKind::BaseLayerCopy;
    }
    if rest.ends_with(".weight") || rest.ends_with(".bias") {
        return KeyKind::FullWeight;
    }
    KeyKind::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factor(module: &str, kind: PairKind, is_a: bool) -> KeyKind {
        KeyKind::Factor {
            module: module.into(),
            kind,
            is_a,
        }
    }

    #[test]
    fn parses_the_key_variants_seen_in_the_wild() {
        let q = "model.layers.0.self_attn.q_proj";
        assert_eq!(
            classify(&format!("base_model.model.{q}.lora_A.weight")),
            factor(q, PairKind::Linear, true)
        );
        assert_eq!(
            classify(&format!("{q}.lora_B.weight")),
            factor(q, PairKind::Linear, false)
        );
        assert_eq!(
            classify(&format!("base_model.model.{q}.lora_A.default.weight")),
            factor(q, PairKind::Linear, true)
        );
        let e = "model.embed_tokens";
        assert_eq!(
            classify(&format!("base_model.model.{e}.lora_embedding_A")),
            factor(e, PairKind::Embedding, true)
        );
        assert_eq!(
            classify(&format!("{e}.lora_embedding_B.default")),
            factor(e, PairKind::Embedding, false)
        );
        let mm = "model.language_model.layers.0.mlp.up_proj";
        assert_eq!(
            classify(&format!("base_model.model.{mm}.lora_A.weight")),
            factor(mm, PairKind::Linear, true)
        );
    }

    #[test]
    fn classifies_what_is_not_a_factor() {
        assert_eq!(
            classify("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"),
            KeyKind::DoraMagnitude
        );
        assert_eq!(
            classify("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"),
            KeyKind::LoraBias
        );
        assert_eq!(
            classify("base_model.model.model.embed_tokens.base_layer.weight"),
            KeyKind::BaseLayerCopy
        );
        assert_eq!(
            classify("base_model.model.lm_head.weight"),
            KeyKind::FullWeight
        );
        assert_eq!(
            classify("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"),
            KeyKind::TrainableTokens
        );
        assert_eq!(
            classify("base_model.model.model.layers.0.self_attn.q_proj.hada_w1_a"),
            KeyKind::Unknown
        );
    }
}
