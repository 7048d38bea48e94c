//! GGUF metadata keys we read or write (gguf-py `constants.py` `Keys`). No key string literal appears elsewhere.

/// Architecture of a model or adapter.
pub const GENERAL_ARCHITECTURE: &str = "general.architecture";
/// `model` or `adapter`.
pub const GENERAL_TYPE: &str = "general.type";
/// Data alignment (default 32).
pub const GENERAL_ALIGNMENT: &str = "general.alignment";
/// Human-readable name.
pub const GENERAL_NAME: &str = "general.name";
/// ggml quantization format version (2).
pub const GENERAL_QUANTIZATION_VERSION: &str = "general.quantization_version";
/// `lora` for LoRA adapters.
pub const ADAPTER_TYPE: &str = "adapter.type";
/// LoRA alpha; must be FLOAT32 (llama.cpp aborts otherwise).
pub const ADAPTER_LORA_ALPHA: &str = "adapter.lora.alpha";
/// Activated-LoRA invocation token ids (array of UINT32).
pub const ADAPTER_ALORA_INVOCATION_TOKENS: &str = "adapter.alora.invocation_tokens";
/// Jinja chat template of the model.
pub const TOKENIZER_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// A per-architecture key: `arch_key("llama", "attention.head_count")` = `llama.attention.head_count`.
pub fn arch_key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}
