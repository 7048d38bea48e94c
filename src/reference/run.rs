//! Running a reference pack in llama.cpp: the pack's prompts tokenized by the GGUF, the pack's own ids
//! teacher-forced at the base and at every recorded adapter scale, and the adapter's greedy continuation. The
//! numbers come from [`super::compare`], the prompt diagnosis from [`super::prompt_parity`].

use super::compare::{self, Observed};
use super::pack::{PackPrompt, PromptSource, ReferencePack};
use super::prompt_parity::{self, Sides};
use super::results::{PromptRun, ReferenceRun, ScaleRun};
use crate::validate::engine::{Engine, EngineError};
use crate::validate::golden::{GoldenPrompt, Message, PromptKind, PromptText};

fn golden(p: &PackPrompt) -> GoldenPrompt {
    GoldenPrompt {
        id: p.id.clone(),
        kind: if p.kind == "target" {
            PromptKind::Target
        } else {
            PromptKind::Control
        },
        text: match &p.source {
            PromptSource::Raw(t) => PromptText::Raw(t.clone()),
            PromptSource::Chat(ms) => PromptText::Chat(
                ms.iter()
                    .map(|(role, content)| Message {
                        role: role.clone(),
                        content: content.clone(),
                    })
                    .collect(),
            ),
        },
        max_tokens: None,
        expect: Default::default(),
        limits: Default::default(),
        tags: vec![],
        source: p.id.clone(),
    }
}

fn text(engine: &Engine, tokens: &[i32]) -> String {
    engine.token_pieces(tokens).concat()
}

/// Run `pack` on the engine's base and adapter.
pub fn measure(
    engine: &mut Engine,
    pack: &ReferencePack,
    bos: Option<i32>,
    warnings: Vec<String>,
) -> Result<ReferenceRun, EngineError> {
    let n_vocab = engine.vocab_size();
    let runnable = |p: &PackPrompt| {
        p.teacher_forced_feed()
            .iter()
            .chain(p.adapter_continuation.iter())
            .all(|&t| t >= 0 && (t as usize) < n_vocab)
    };
    // 1. Prompt parity.
    let mut runs = Vec::with_capacity(pack.prompts.len());
    for p in &pack.prompts {
        let g = golden(p);
        let (llama_tokens, llama_rendered, llama_render_error) = match engine.render_prompt(&g) {
            Ok(rendered) => (Some(engine.tokenize_prompt(&g)?), Some(rendered), None),
            Err(e) if e.is_input_error() => (None, None, Some(e.to_string())),
            Err(e) => return Err(e),
        };
        let mismatch = llama_tokens.as_ref().and_then(|ll| {
            let training_pieces = engine.token_pieces(&p.prompt_tokens);
            let llama_pieces = engine.token_pieces(ll);
            prompt_parity::compare(&Sides {
                training: &p.prompt_tokens,
                llama: ll,
                training_pieces: &training_pieces,
                llama_pieces: &llama_pieces,
                bos,
                n_vocab,
                texts: llama_rendered.as_deref().map(|l| (p.rendered.as_str(), l)),
                chat: matches!(p.source, PromptSource::Chat(_)),
            })
        });
        runs.push(PromptRun {
            id: p.id.clone(),
            kind: p.kind.clone(),
            training_tokens: p.prompt_tokens.clone(),
            llama_tokens,
            llama_render_error,
            mismatch,
            base: None,
            adapters: Vec::new(),
            training_adapter_text: text(engine, &p.adapter_continuation),
            llama_adapter_text: String::new(),
            greedy_agreement: (0, p.adapter_continuation.len()),
        });
    }

    // 2. Teacher forcing on the pack's own ids, every recorded variant.
    let idx: Vec<usize> = (0..pack.prompts.len())
        .filter(|&i| runnable(&pack.prompts[i]))
        .collect();
    let feeds: Vec<(Vec<i32>, usize)> = idx
        .iter()
        .map(|&i| {
            let p = &pack.prompts[i];
            (p.teacher_forced_feed(), p.prompt_tokens.len() - 1)
        })
        .collect();
    let scales: Vec<f32> = pack.variants.iter().map(|v| v.scale).collect();
    let mut observed: Vec<Vec<Vec<Observed>>> = vec![vec![Vec::new(); idx.len()]; scales.len()];
    engine.teacher_forced_rows(&feeds, &scales, &mut |si, fi, k, row| {
        observed[si][fi].push(compare::observe(row, pack.prompts[idx[fi]].ids(k)));
    })?;
    let base_v = pack.variant("base").unwrap_or(0);
    for (fi, &i) in idx.iter().enumerate() {
        let p = &pack.prompts[i];
        runs[i].base = Some(compare::divergence(p, base_v, &observed[base_v][fi]).into());
        for (v, variant) in pack.variants.iter().enumerate() {
            if v == base_v {
                continue;
            }
            runs[i].adapters.push(ScaleRun {
                scale: variant.scale,
                divergence: compare::divergence(p, v, &observed[v][fi]).into(),
                effect: compare::effect(p, base_v, v, &observed[base_v][fi], &observed[v][fi])
                    .into(),
            });
        }
    }

    // 3. The adapter's greedy continuation at scale 1 from the pack's ids.
    let greedy_in: Vec<(Vec<i32>, usize)> = idx
        .iter()
        .map(|&i| {
            let p = &pack.prompts[i];
            (p.prompt_tokens.clone(), p.adapter_continuation.len())
        })
        .collect();
    let greedy = engine.greedy_at(&greedy_in, 1.0)?;
    for (g, &i) in greedy.iter().zip(&idx) {
        let p = &pack.prompts[i];
        let agree = compare::first_difference(g, &p.adapter_continuation)
            .unwrap_or(p.adapter_continuation.len());
        runs[i].llama_adapter_text = text(engine, g);
        runs[i].greedy_agreement = (agree, p.adapter_continuation.len());
    }
    Ok(ReferenceRun {
        prompts: runs,
        warnings,
    })
}
