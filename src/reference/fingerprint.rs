//! The tokenizer fingerprint as a GGUF computes it, for comparison with the one a pack recorded from the trainer's
//! tokenizer (python/lora_gguf/record/fingerprint.py defines the same hash).

use sha2::{Digest, Sha256};

use crate::gguf::GgufFile;

/// SHA-256 over the tokens in id order, each as its UTF-8 byte length (u32 little-endian) and its bytes, with
/// SentencePiece's word marker U+2581 read as a space (Gemma's GGUF stores its runs of spaces as spaces,
/// transformers as U+2581: the same tokens).
pub fn vocab_sha256<'a>(tokens: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for t in tokens {
        let t = t.replace('\u{2581}', " ");
        h.update((t.len() as u32).to_le_bytes());
        h.update(t.as_bytes());
    }
    hex(&h.finalize())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tokenizer of a GGUF model, as far as the fingerprint goes.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// [`vocab_sha256`] of them.
    pub vocab_sha256: String,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u64>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u64>,
    /// `tokenizer.ggml.add_bos_token` (llama.cpp's default for the vocabulary type when absent: unknown here).
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl GgufTokenizer {
    /// Read from a GGUF header; `None` when it has no `tokenizer.ggml.tokens`.
    pub fn read(gguf: &GgufFile) -> Option<Self> {
        let tokens: Vec<String> = gguf
            .get("tokenizer.ggml.tokens")?
            .as_array()?
            .values
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        Some(GgufTokenizer {
            vocab_sha256: vocab_sha256(tokens.iter().map(String::as_str)),
            tokens,
            bos: gguf.get_u64("tokenizer.ggml.bos_token_id"),
            eos: gguf.get_u64("tokenizer.ggml.eos_token_id"),
            add_bos: gguf
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.as_bool()),
            chat_template: gguf.get_str("tokenizer.chat_template").map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_hash_is_length_prefixed_so_token_boundaries_count() {
        // Python: hashlib.sha256(b"".join(struct.pack("<I", len(t)) + t for t in [b"ab", b"c"])).hexdigest()
        assert_eq!(
            vocab_sha256(["ab", "c"]),
            "60014a36d7b05b0730e42a8b96faa1ffb4bd28469aea4000191179f01561ddb7"
        );
        assert_ne!(vocab_sha256(["ab", "c"]), vocab_sha256(["a", "bc"]));
        assert_eq!(vocab_sha256(["\u{2581}\u{2581}x"]), vocab_sha256(["  x"]));
    }
}
