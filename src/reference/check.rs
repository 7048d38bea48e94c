//! Does the pack describe the GGUF base it is run on? Architecture, sizes, vocabulary and — for a float copy made
//! from a GGUF — the very file. Mismatches are warnings: the checks then say how much they matter (a different
//! vocabulary fails prompt parity, a different model fails base parity).

use super::fingerprint::GgufTokenizer;
use super::pack::ReferencePack;
use crate::gguf::GgufFile;

/// HF config key → GGUF key suffix (after `{arch}.`) for the sizes both record.
const DIMS: &[(&str, &str)] = &[
    ("hidden_size", "embedding_length"),
    ("num_hidden_layers", "block_count"),
    ("num_attention_heads", "attention.head_count"),
    ("num_key_value_heads", "attention.head_count_kv"),
    ("intermediate_size", "feed_forward_length"),
];

/// Warnings, each naming both values.
pub fn pack_against_base(pack: &ReferencePack, base: &GgufFile) -> Vec<String> {
    let mut w = Vec::new();
    let arch = base.architecture().unwrap_or_default();
    let fam = pack
        .base
        .architectures
        .iter()
        .find_map(|a| crate::arch::gguf_arch_for_hf(a));
    if let Some(fam) = fam
        && fam != arch
    {
        w.push(format!(
            "the pack was recorded on {} (GGUF architecture {fam}); the base GGUF is {arch}",
            pack.base.architectures.join(", ")
        ));
    }
    for (hf, gguf) in DIMS {
        let (Some(&want), Some(have)) = (
            pack.base.dims.get(*hf),
            base.get_u64(&format!("{arch}.{gguf}")),
        ) else {
            continue;
        };
        if want as u64 != have {
            w.push(format!(
                "the pack's base has {hf} = {want}; the base GGUF has {arch}.{gguf} = {have}: a different model"
            ));
        }
    }
    match GgufTokenizer::read(base) {
        None => w.push(
            "the base GGUF has no tokenizer.ggml.tokens: its vocabulary cannot be compared".into(),
        ),
        Some(t) => {
            let tk = &pack.tokenizer;
            if t.tokens.len() as u64 != tk.n_tokens {
                w.push(format!(
                    "the trainer's tokenizer has {} tokens, the base GGUF {}{}",
                    tk.n_tokens,
                    t.tokens.len(),
                    if tk.added_tokens.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (added in training: {})",
                            tk.added_tokens
                                .iter()
                                .map(|(_, s)| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ));
            } else if t.vocab_sha256 != tk.vocab_sha256 {
                w.push(format!(
                    "the trainer's vocabulary (sha256 {}…) differs from the base GGUF's ({}…) although both have {} \
                     tokens: another tokenizer",
                    &tk.vocab_sha256[..12],
                    &t.vocab_sha256[..12],
                    t.tokens.len()
                ));
            }
            if let (Some((_, (id, text))), Some(b)) =
                (tk.special_tokens.get_key_value("bos"), t.bos)
                && *id as u64 != b
            {
                w.push(format!(
                    "BOS differs: training {text} (id {id}), the base GGUF id {b}"
                ));
            }
        }
    }
    if let Some((file, _sha)) = &pack.base.derived_from {
        let name = base
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if *file != name {
            w.push(format!(
                "the pack was recorded on a float copy of `{file}`; the base given is `{name}`"
            ));
        }
    }
    w
}
