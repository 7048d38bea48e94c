//! Safetensors keys → LoRA pairs. Each key is parsed once into (module, half); everything that is not a LoRA
//! factor is classified so it can be refused with a reason (peft 0.21.2 `utils/save_and_load.py`: the adapter
//! name is removed from saved keys, `base_model.model.` prefixes the module path, embeddings use
//! `lora_embedding_A/B` without `.weight`, DoRA saves `lora_magnitude_vector`, lora_bias saves `lora_B.bias`).

use crate::adapter::{KeyKind, PairKind};

const PREFIX: &str = "base_model.model.";

/// `model.layers.0.mlp.experts.base_layer` → `model.layers.0.mlp.experts`: nested ParamWrappers save their
/// factors under `base_layer` components, which are not part of the model's own module path.
pub fn strip_base_layers(saved: &str) -> String {
    saved
        .split('.')
        .filter(|p| *p != "base_layer")
        .collect::<Vec<_>>()
        .join(".")
}

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

/// Whether a full-weight key is a vocabulary matrix (input embedding or output head).
pub fn is_vocabulary_key(key: &str) -> bool {
    let rest = key.strip_suffix(".weight").unwrap_or(key);
    let leaf = rest.rsplit('.').next().unwrap_or(rest);
    super::config::EMBEDDING_MODULES.contains(&leaf)
        || rest.ends_with("modules_to_save.default")
            && rest
                .trim_end_matches(".modules_to_save.default")
                .rsplit('.')
                .next()
                .is_some_and(|l| super::config::EMBEDDING_MODULES.contains(&l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_param_wrappers_are_not_part_of_the_module_path() {
        assert_eq!(
            strip_base_layers("model.layers.0.mlp.experts.base_layer.base_layer"),
            "model.layers.0.mlp.experts"
        );
    }

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
