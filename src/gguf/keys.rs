//! Metadata key names, mirroring `class Keys` in gguf-py `gguf/constants.py`. No key string literal should
//! appear anywhere else in the crate.
//!
//! Per-architecture keys (`{arch}.attention.head_count`) are built with [`arch_key`] from the `ARCH_*` suffixes.

/// `general.architecture` (STRING): the model family, e.g. `llama`; the first key gguf-py writes.
pub const GENERAL_ARCHITECTURE: &str = "general.architecture";
/// `general.type` (STRING): `model`, or `adapter` for LoRA adapters.
pub const GENERAL_TYPE: &str = "general.type";
/// `general.alignment` (UINT32): data alignment when not [`super::DEFAULT_ALIGNMENT`]; a power of two.
pub const GENERAL_ALIGNMENT: &str = "general.alignment";
/// `general.quantization_version` (UINT32): `GGML_QUANT_VERSION` (2); the last key gguf-py writes.
pub const GENERAL_QUANTIZATION_VERSION: &str = "general.quantization_version";
/// `general.file_type` (UINT32): `llama_ftype` of a full model; not written for adapters.
pub const GENERAL_FILE_TYPE: &str = "general.file_type";
/// `general.name` (STRING).
pub const GENERAL_NAME: &str = "general.name";
/// `general.basename` (STRING).
pub const GENERAL_BASENAME: &str = "general.basename";
/// `general.finetune` (STRING).
pub const GENERAL_FINETUNE: &str = "general.finetune";
/// `general.version` (STRING).
pub const GENERAL_VERSION: &str = "general.version";
/// `general.size_label` (STRING).
pub const GENERAL_SIZE_LABEL: &str = "general.size_label";
/// `general.description` (STRING).
pub const GENERAL_DESCRIPTION: &str = "general.description";
/// `general.author` (STRING).
pub const GENERAL_AUTHOR: &str = "general.author";
/// `general.organization` (STRING).
pub const GENERAL_ORGANIZATION: &str = "general.organization";
/// `general.license` (STRING).
pub const GENERAL_LICENSE: &str = "general.license";
/// `general.url` (STRING).
pub const GENERAL_URL: &str = "general.url";
/// `general.repo_url` (STRING).
pub const GENERAL_REPO_URL: &str = "general.repo_url";
/// `general.tags` (ARRAY of STRING).
pub const GENERAL_TAGS: &str = "general.tags";
/// `general.languages` (ARRAY of STRING).
pub const GENERAL_LANGUAGES: &str = "general.languages";
/// `general.base_model.count` (UINT32); entries are [`base_model_key`].
pub const GENERAL_BASE_MODEL_COUNT: &str = "general.base_model.count";

/// `lora_gguf.base_fingerprint` (STRING): the base an adapter was converted against, as JSON
/// (`gguf_adapter::fingerprint`, docs/base-fingerprint.md).
pub const LORA_GGUF_BASE_FINGERPRINT: &str = "lora_gguf.base_fingerprint";

/// `adapter.type` (STRING): must be `lora` for llama.cpp to load the adapter.
pub const ADAPTER_TYPE: &str = "adapter.type";
/// `adapter.lora.alpha` (FLOAT32, and only FLOAT32: any other type aborts llama.cpp).
pub const ADAPTER_LORA_ALPHA: &str = "adapter.lora.alpha";
/// `adapter.lora.task_name` (STRING): jina-embeddings-v3 task adapters.
pub const ADAPTER_LORA_TASK_NAME: &str = "adapter.lora.task_name";
/// `adapter.lora.prompt_prefix` (STRING): jina-embeddings-v3 task adapters.
pub const ADAPTER_LORA_PROMPT_PREFIX: &str = "adapter.lora.prompt_prefix";
/// `adapter.alora.invocation_tokens` (ARRAY of UINT32): activated LoRA trigger tokens.
pub const ADAPTER_ALORA_INVOCATION_TOKENS: &str = "adapter.alora.invocation_tokens";

/// `tokenizer.ggml.model` (STRING): `llama`, `gpt2`, …
pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
/// `tokenizer.ggml.tokens` (ARRAY of STRING): the vocabulary.
pub const TOKENIZER_TOKENS: &str = "tokenizer.ggml.tokens";
/// `tokenizer.ggml.bos_token_id` (UINT32).
pub const TOKENIZER_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
/// `tokenizer.ggml.eos_token_id` (UINT32).
pub const TOKENIZER_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
/// `tokenizer.chat_template` (STRING): the Jinja chat template.
pub const TOKENIZER_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// Suffix of `{arch}.context_length`.
pub const ARCH_CONTEXT_LENGTH: &str = "context_length";
/// Suffix of `{arch}.embedding_length` (hidden size).
pub const ARCH_EMBEDDING_LENGTH: &str = "embedding_length";
/// Suffix of `{arch}.block_count` (layers).
pub const ARCH_BLOCK_COUNT: &str = "block_count";
/// Suffix of `{arch}.feed_forward_length`.
pub const ARCH_FEED_FORWARD_LENGTH: &str = "feed_forward_length";
/// Suffix of `{arch}.vocab_size` (not every model writes it; `token_embd.weight` `ne[1]` is authoritative).
pub const ARCH_VOCAB_SIZE: &str = "vocab_size";
/// Suffix of `{arch}.expert_count`.
pub const ARCH_EXPERT_COUNT: &str = "expert_count";
/// Suffix of `{arch}.expert_used_count`.
pub const ARCH_EXPERT_USED_COUNT: &str = "expert_used_count";
/// Suffix of `{arch}.attention.head_count` (a scalar, or a per-layer array).
pub const ARCH_ATTENTION_HEAD_COUNT: &str = "attention.head_count";
/// Suffix of `{arch}.attention.head_count_kv` (a scalar, or a per-layer array).
pub const ARCH_ATTENTION_HEAD_COUNT_KV: &str = "attention.head_count_kv";
/// Suffix of `{arch}.attention.key_length`.
pub const ARCH_ATTENTION_KEY_LENGTH: &str = "attention.key_length";
/// Suffix of `{arch}.attention.value_length`.
pub const ARCH_ATTENTION_VALUE_LENGTH: &str = "attention.value_length";
/// Suffix of `{arch}.rope.dimension_count`.
pub const ARCH_ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";

/// A per-architecture key: `arch_key("llama", ARCH_ATTENTION_HEAD_COUNT)` is `llama.attention.head_count`.
pub fn arch_key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}

/// A per-base-model key: `base_model_key(0, "name")` is `general.base_model.0.name`.
pub fn base_model_key(index: u32, field: &str) -> String {
    format!("general.base_model.{index}.{field}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_like_gguf_py() {
        assert_eq!(
            arch_key("llama", ARCH_ATTENTION_HEAD_COUNT),
            "llama.attention.head_count"
        );
        assert_eq!(arch_key("qwen2", ARCH_EXPERT_COUNT), "qwen2.expert_count");
        assert_eq!(
            base_model_key(1, "repo_url"),
            "general.base_model.1.repo_url"
        );
    }
}
