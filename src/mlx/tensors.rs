//! mlx-lm adapter keys: `tree_flatten(model.trainable_parameters())` as `tuner/trainer.py` saves it — the module
//! path in mlx-lm's model tree (the Hugging Face module path for the families both share) and the leaf:
//! `lora_a`/`lora_b` (LoRA), `m` (DoRA's magnitude), or a full parameter (`weight`, `bias`, … from a full fine-tune).

/// What one safetensors key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A LoRA factor.
    Factor {
        /// The module path: `model.layers.1.self_attn.q_proj`.
        module: String,
        /// True for `lora_a`, false for `lora_b`.
        is_a: bool,
    },
    /// DoRA's magnitude vector (`tuner/dora.py` `DoRALinear.m`).
    DoraMagnitude,
    /// A full parameter of the model (a full fine-tune, or trained norms).
    FullWeight,
    /// Anything else.
    Unknown,
}

/// Classify a key.
pub fn classify(key: &str) -> KeyKind {
    let Some((module, leaf)) = key.rsplit_once('.') else {
        return KeyKind::Unknown;
    };
    match leaf {
        "lora_a" | "lora_b" => KeyKind::Factor {
            module: module.to_string(),
            is_a: leaf == "lora_a",
        },
        "m" => KeyKind::DoraMagnitude,
        // nn.Linear/Embedding/norm parameters, and QuantizedLinear's scales and biases
        "weight" | "bias" | "scales" | "biases" => KeyKind::FullWeight,
        _ => KeyKind::Unknown,
    }
}

/// The module path relative to its block (`self_attn.q_proj` of `model.layers.1.self_attn.q_proj`): what
/// `linear_to_lora_layers` compares `keys` with, as it walks `l.named_modules()` of each block `l`. A block is the
/// first numeric path component (`model.layers.1`, `model.h.1`, `language_model.model.layers.1`).
pub fn block_relative(module: &str) -> Option<&str> {
    let mut start = 0;
    for part in module.split('.') {
        let end = start + part.len();
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            return module.get(end + 1..).filter(|rest| !rest.is_empty());
        }
        start = end + 1;
    }
    None
}

/// The block index of a module (its first numeric path component).
pub fn block_index(module: &str) -> Option<u64> {
    module
        .split('.')
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse().ok())
}

/// Whether mlx-lm's `linear_to_lora_layers` gives this module a LoRA layer: with `keys`, a block-relative name in
/// `keys` (blocks) or the full path in `keys` (modules outside the blocks, e.g. `lm_head`); without, every
/// Linear/Embedding/SwitchLinear inside a block and nothing outside.
pub fn selected(module: &str, keys: Option<&[String]>) -> bool {
    match keys {
        Some(keys) => {
            keys.iter().any(|k| k == module)
                || block_relative(module).is_some_and(|rel| keys.iter().any(|k| k == rel))
        }
        None => block_relative(module).is_some(),
    }
}

/// mlx-lm's `nn.Embedding` modules in the families it shares with llama.cpp: their `LoRAEmbedding` keeps
/// lora_a (vocab, r) and lora_b (r, hidden) with ΔE = scale · lora_a @ lora_b — PEFT's embedding LoRA transposed.
pub fn is_embedding(module: &str) -> bool {
    let last = module.rsplit('.').next().unwrap_or(module);
    matches!(
        last,
        "embed_tokens" | "wte" | "embed_in" | "word_embeddings" | "tok_embeddings"
    )
}

/// mlx-lm's stacked expert projections (`SwitchGLU` under `switch_mlp`, which each model's `sanitize` stacks from the
/// per-expert Linear modules of the Hugging Face checkpoint) → the per-expert module path they were stacked from,
/// without the expert index: the name llama.cpp's tables give the stacked `*_exps` tensor.
const SWITCH_MODULES: &[(&str, &str)] = &[
    // mixtral.py: block_sparse_moe.experts.{e}.w1/w2/w3 → block_sparse_moe.switch_mlp.gate_proj/down_proj/up_proj
    (
        "block_sparse_moe.switch_mlp.gate_proj",
        "block_sparse_moe.experts.w1",
    ),
    (
        "block_sparse_moe.switch_mlp.down_proj",
        "block_sparse_moe.experts.w2",
    ),
    (
        "block_sparse_moe.switch_mlp.up_proj",
        "block_sparse_moe.experts.w3",
    ),
    // qwen2_moe.py, qwen3_moe.py, olmoe.py: mlp.experts.{e}.<proj> → mlp.switch_mlp.<proj>
    ("mlp.switch_mlp.gate_proj", "mlp.experts.gate_proj"),
    ("mlp.switch_mlp.up_proj", "mlp.experts.up_proj"),
    ("mlp.switch_mlp.down_proj", "mlp.experts.down_proj"),
    // gemma4_text.py: experts.gate_up_proj / experts.down_proj → experts.switch_glu.<proj>
    ("experts.switch_glu.gate_proj", "experts.gate_proj"),
    ("experts.switch_glu.up_proj", "experts.up_proj"),
    ("experts.switch_glu.down_proj", "experts.down_proj"),
];

/// The Hugging Face expert-stack module of an mlx-lm `SwitchLinear` module path, if it is one we know.
pub fn switch_module(module: &str) -> Option<String> {
    SWITCH_MODULES.iter().find_map(|(mlx, hf)| {
        let prefix = module.strip_suffix(mlx)?;
        (prefix.is_empty() || prefix.ends_with('.')).then(|| format!("{prefix}{hf}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_mlx_lm_saves() {
        let q = "model.layers.1.self_attn.q_proj";
        assert_eq!(
            classify(&format!("{q}.lora_a")),
            KeyKind::Factor {
                module: q.into(),
                is_a: true
            }
        );
        assert_eq!(
            classify("lm_head.lora_b"),
            KeyKind::Factor {
                module: "lm_head".into(),
                is_a: false
            }
        );
        assert_eq!(classify(&format!("{q}.m")), KeyKind::DoraMagnitude);
        assert_eq!(classify(&format!("{q}.weight")), KeyKind::FullWeight);
        assert_eq!(
            classify("model.layers.1.input_layernorm.weight"),
            KeyKind::FullWeight
        );
        assert_eq!(classify(&format!("{q}.hada_w1")), KeyKind::Unknown);
        assert_eq!(classify("lora_a"), KeyKind::Unknown);
    }

    #[test]
    fn switch_linear_modules_map_to_the_stacked_hf_names() {
        assert_eq!(
            switch_module("model.layers.1.block_sparse_moe.switch_mlp.up_proj").as_deref(),
            Some("model.layers.1.block_sparse_moe.experts.w3")
        );
        assert_eq!(
            switch_module("model.layers.0.mlp.switch_mlp.down_proj").as_deref(),
            Some("model.layers.0.mlp.experts.down_proj")
        );
        assert_eq!(
            switch_module("model.layers.2.experts.switch_glu.gate_proj").as_deref(),
            Some("model.layers.2.experts.gate_proj")
        );
        assert_eq!(switch_module("model.layers.0.mlp.down_proj"), None);
        assert_eq!(
            switch_module("model.layers.0.mlp.xswitch_mlp.down_proj"),
            None
        );
    }

    #[test]
    fn selects_modules_as_linear_to_lora_layers_does() {
        assert_eq!(
            block_relative("model.layers.12.mlp.down_proj"),
            Some("mlp.down_proj")
        );
        assert_eq!(block_relative("model.h.0.attn.c_attn"), Some("attn.c_attn"));
        assert_eq!(block_relative("lm_head"), None);
        assert_eq!(block_index("model.layers.12.mlp.down_proj"), Some(12));
        let keys = vec![
            "self_attn.q_proj".to_string(),
            "model.embed_tokens".to_string(),
        ];
        assert!(selected("model.layers.0.self_attn.q_proj", Some(&keys)));
        assert!(selected("model.embed_tokens", Some(&keys)));
        assert!(!selected("model.layers.0.self_attn.k_proj", Some(&keys)));
        assert!(!selected("lm_head", Some(&keys)));
        // Without keys, only modules inside the blocks.
        assert!(selected("model.layers.0.self_attn.k_proj", None));
        assert!(!selected("lm_head", None));
    }
}
