//! Prompt parity: llama.cpp's token ids for a prompt against the ids the trainer's tokenizer produced, and what the
//! first difference means (a doubled or missing BOS, another chat template, added tokens, another tokenizer).

use serde::Serialize;

/// Why the ids differ, most specific first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    /// llama.cpp starts with two BOS tokens, training with one.
    LlamaAddsSecondBos,
    /// Training starts with two BOS tokens, llama.cpp with one.
    TrainingAddsSecondBos,
    /// Training starts with BOS, llama.cpp does not.
    LlamaMissesBos,
    /// llama.cpp starts with BOS, training does not.
    TrainingMissesBos,
    /// Training used token ids the GGUF vocabulary does not have.
    AddedTokens {
        /// The ids.
        ids: Vec<i32>,
    },
    /// A chat prompt rendered to different text: another chat template.
    ChatTemplate,
    /// A raw prompt whose text differs (a client that adds or drops text, e.g. a template or a newline).
    PromptText,
    /// Same text, different ids: another tokenizer or pre-tokenizer.
    Tokenizer,
}

/// The first difference between the two token lists.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mismatch {
    /// Index of the first differing token.
    pub position: usize,
    /// Training's tokens from there (a few), as text.
    pub training_text: String,
    /// llama.cpp's tokens from there, as text.
    pub llama_text: String,
    /// What it means.
    #[serde(flatten)]
    pub cause: Cause,
}

impl Mismatch {
    /// A one-line diagnosis naming the prompt.
    pub fn diagnosis(&self, prompt_id: &str) -> String {
        let at = format!(
            "first difference at token {}: training `{}`, llama.cpp `{}`",
            self.position, self.training_text, self.llama_text
        );
        match &self.cause {
            Cause::LlamaAddsSecondBos => format!(
                "prompt {prompt_id}: llama.cpp adds a second BOS (the text already starts with it) — {at}"
            ),
            Cause::TrainingAddsSecondBos => format!(
                "prompt {prompt_id}: training had a doubled BOS (its tokenizer added one before a text that \
                 already starts with it), llama.cpp one — {at}"
            ),
            Cause::LlamaMissesBos => {
                format!("prompt {prompt_id}: llama.cpp adds no BOS where training had one — {at}")
            }
            Cause::TrainingMissesBos => {
                format!(
                    "prompt {prompt_id}: llama.cpp adds a BOS that training did not have — {at}"
                )
            }
            Cause::AddedTokens { ids } => format!(
                "prompt {prompt_id}: training used added tokens {ids:?} that the GGUF vocabulary lacks (re-make the \
                 base GGUF from the model with the resized vocabulary) — {at}"
            ),
            Cause::ChatTemplate => format!(
                "prompt {prompt_id}: a different chat template — the GGUF's template renders other text than \
                 training's — {at}"
            ),
            Cause::PromptText => format!(
                "prompt {prompt_id}: llama.cpp is given other text than training saw (a template, a newline or a \
                 space added or dropped on the way) — {at}"
            ),
            Cause::Tokenizer => format!(
                "prompt {prompt_id}: same text, different token ids — the GGUF's tokenizer splits it differently \
                 from training's — {at}"
            ),
        }
    }
}

/// What prompt parity needs to know about each side.
pub struct Sides<'a> {
    /// Training's ids (from the pack).
    pub training: &'a [i32],
    /// llama.cpp's ids.
    pub llama: &'a [i32],
    /// Text of each training id in the GGUF's vocabulary.
    pub training_pieces: &'a [String],
    /// Text of each llama.cpp id.
    pub llama_pieces: &'a [String],
    /// The GGUF's BOS id.
    pub bos: Option<i32>,
    /// The GGUF's vocabulary size.
    pub n_vocab: usize,
    /// The texts both sides tokenized (training, llama.cpp).
    pub texts: Option<(&'a str, &'a str)>,
    /// Whether the prompt is chat messages (rendered by a template on each side).
    pub chat: bool,
}

/// Tokens of context shown from the first difference on.
const SHOWN: usize = 6;

/// `None` when the ids are identical.
pub fn compare(s: &Sides) -> Option<Mismatch> {
    let position = super::compare::first_difference(s.training, s.llama)?;
    let show = |pieces: &[String]| -> String {
        let end = (position + SHOWN).min(pieces.len());
        let text: String = pieces.get(position..end).unwrap_or_default().concat();
        let text = text.replace('\n', "⏎");
        if end < pieces.len() {
            format!("{text}…")
        } else if text.is_empty() {
            "(end)".into()
        } else {
            text
        }
    };
    let bos_run = |ids: &[i32]| {
        s.bos
            .map_or(0, |b| ids.iter().take_while(|&&t| t == b).count())
    };
    let (bt, bl) = (bos_run(s.training), bos_run(s.llama));
    let added: Vec<i32> = s
        .training
        .iter()
        .copied()
        .filter(|&t| t < 0 || t as usize >= s.n_vocab)
        .collect();
    let cause = if bl > bt && bt == 1 {
        Cause::LlamaAddsSecondBos
    } else if bt > bl && bl == 1 {
        Cause::TrainingAddsSecondBos
    } else if bt > 0 && bl == 0 {
        Cause::LlamaMissesBos
    } else if bl > 0 && bt == 0 {
        Cause::TrainingMissesBos
    } else if !added.is_empty() {
        Cause::AddedTokens { ids: added }
    } else if s
        .texts
        .is_some_and(|(t, l)| strip_bos(t, s) != strip_bos(l, s))
    {
        if s.chat {
            Cause::ChatTemplate
        } else {
            Cause::PromptText
        }
    } else {
        Cause::Tokenizer
    };
    Some(Mismatch {
        position,
        training_text: show(s.training_pieces),
        llama_text: show(s.llama_pieces),
        cause,
    })
}

/// Rendered chat text without a leading BOS text (templates differ in whether they write it; the BOS rules above
/// judge that part).
fn strip_bos<'t>(text: &'t str, s: &Sides) -> &'t str {
    let bos_text = s
        .bos
        .and_then(|b| s.llama_pieces.iter().zip(s.llama).find(|(_, t)| **t == b))
        .map(|(p, _)| p.as_str())
        .unwrap_or("");
    if bos_text.is_empty() {
        text
    } else {
        text.trim_start_matches(bos_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(ids: &[i32]) -> Vec<String> {
        ids.iter()
            .map(|&t| match t {
                2 => "<bos>".to_string(),
                t => format!("t{t} "),
            })
            .collect()
    }

    fn run(training: &[i32], llama: &[i32], chat: Option<(&str, &str)>) -> Option<Mismatch> {
        compare(&Sides {
            training,
            llama,
            training_pieces: &pieces(training),
            llama_pieces: &pieces(llama),
            bos: Some(2),
            n_vocab: 100,
            texts: chat,
            chat: true,
        })
    }

    #[test]
    fn equal_ids_are_parity() {
        assert_eq!(run(&[2, 5, 6], &[2, 5, 6], None), None);
    }

    #[test]
    fn names_bos_doubling_on_either_side() {
        let m = run(&[2, 5, 6], &[2, 2, 5, 6], None).unwrap();
        assert_eq!(m.cause, Cause::LlamaAddsSecondBos);
        assert_eq!(m.position, 1);
        assert_eq!(
            m.diagnosis("3"),
            "prompt 3: llama.cpp adds a second BOS (the text already starts with it) — first difference at token 1: \
             training `t5 t6 `, llama.cpp `<bos>t5 t6 `"
        );
        assert_eq!(
            run(&[2, 2, 5], &[2, 5], None).unwrap().cause,
            Cause::TrainingAddsSecondBos
        );
        assert_eq!(
            run(&[2, 5], &[5], None).unwrap().cause,
            Cause::LlamaMissesBos
        );
        assert_eq!(
            run(&[5], &[2, 5], None).unwrap().cause,
            Cause::TrainingMissesBos
        );
    }

    #[test]
    fn names_added_tokens_chat_templates_and_tokenizers() {
        assert_eq!(
            run(&[2, 5, 150], &[2, 5, 7], None).unwrap().cause,
            Cause::AddedTokens { ids: vec![150] }
        );
        let m = run(
            &[2, 5, 6],
            &[2, 7, 6],
            Some(("<bos>A: hi", "<bos>User: hi")),
        )
        .unwrap();
        assert_eq!(m.cause, Cause::ChatTemplate);
        let m = run(&[2, 5, 6], &[2, 7, 6], Some(("hi", "hi"))).unwrap();
        assert_eq!(m.cause, Cause::Tokenizer);
    }
}
