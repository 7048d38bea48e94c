//! Activated LoRA (aLoRA): an adapter with `adapter.alora.invocation_tokens` is meant to act only from its invocation
//! sequence on. libllama applies an adapter to every token; llama-server (tools/server/server-context.cpp) finds the
//! invocation sequence in the prompt and decodes the tokens before it without the adapter. The validator measures
//! aLoRA adapters exactly as llama-server runs them — never as a plain LoRA:
//!
//! - the invocation start is the last occurrence of the sequence in the prompt tokens, found with llama-server's own
//!   backwards scan (which, on a mismatch, restarts without re-testing the mismatching token: a sequence whose
//!   suffix repeats its last token, as `[a, b]` in `… a b b`, is not found — reproduced here on purpose);
//! - llama-server decodes positions before `start − 1` without the adapter and switches it on from position
//!   `start − 1` (one token earlier than PEFT, which adapts from `start`);
//! - a prompt without the sequence runs with the adapter's scale at 0: the base model.

use crate::gguf::{Value, keys};
use crate::gguf_adapter::GgufAdapter;

/// Where the adapter acts in one prompt's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// A plain LoRA: every position.
    Always,
    /// An aLoRA invoked in the prompt: positions from this one on.
    From(usize),
    /// An aLoRA whose invocation sequence is not in the prompt: no position (llama-server sets its scale to 0).
    Never,
}

/// The adapter's invocation tokens (`adapter.alora.invocation_tokens`), when it is an aLoRA.
pub fn invocation_tokens(adapter: &GgufAdapter) -> Option<Vec<i32>> {
    match adapter.file.get(keys::ADAPTER_ALORA_INVOCATION_TOKENS)? {
        Value::Array(a) if !a.is_empty() => a
            .values
            .iter()
            .map(|v| v.as_u64().and_then(|t| i32::try_from(t).ok()))
            .collect(),
        _ => None,
    }
}

/// llama-server's backwards scan for the last occurrence of `invocation` in `prompt`: its start index.
pub fn invocation_start(prompt: &[i32], invocation: &[i32]) -> Option<usize> {
    let last = invocation.len().checked_sub(1)?;
    let mut want = last;
    for i in (0..prompt.len()).rev() {
        if prompt[i] == invocation[want] {
            if want == 0 {
                return Some(i);
            }
            want -= 1;
        } else {
            want = last;
        }
    }
    None
}

/// Where llama-server applies an aLoRA with `invocation` in a request whose prompt is `prompt`.
pub fn activation(prompt: &[i32], invocation: Option<&[i32]>) -> Activation {
    match invocation {
        None => Activation::Always,
        Some(inv) => match invocation_start(prompt, inv) {
            Some(start) => Activation::From(start.saturating_sub(1)),
            None => Activation::Never,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_occurrence_as_llama_server_does() {
        assert_eq!(invocation_start(&[5, 1, 2, 7, 1, 2, 9], &[1, 2]), Some(4));
        assert_eq!(invocation_start(&[1, 2], &[1, 2]), Some(0));
        assert_eq!(invocation_start(&[1, 3, 2], &[1, 2]), None);
        // llama-server's scan does not re-test the token that broke a partial match.
        assert_eq!(invocation_start(&[1, 2, 2], &[1, 2]), None);
        assert_eq!(invocation_start(&[4, 4], &[]), None);
    }

    #[test]
    fn the_adapter_acts_from_one_token_before_the_invocation() {
        assert_eq!(
            activation(&[9, 9, 1, 2, 9], Some(&[1, 2])),
            Activation::From(1)
        );
        assert_eq!(activation(&[1, 2, 9], Some(&[1, 2])), Activation::From(0));
        assert_eq!(activation(&[9, 9], Some(&[1, 2])), Activation::Never);
        assert_eq!(activation(&[9, 9], None), Activation::Always);
    }
}
