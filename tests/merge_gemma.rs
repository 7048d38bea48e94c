//! `lora-convert merge` end to end on the real Gemma 3 270M Q4_K_M with the trained test adapter
//! (fixtures/gemma-lora): the merged model still gives the adapter's answer on the target prompts, and stays close
//! to base + runtime adapter — mean KL over the teacher-forced positions of a documented text
//! (fixtures/gemma-lora/merge-drift.txt: the target question, general prose, code), where requantizing every
//! merged tensor to the base's own type (`--outtype keep`, what llama-quantize does) drifts much further.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use crate::common::*;
use lora_gguf::merge::{self, OutType};
use lora_gguf::validate::engine::{load_model, logits_for_tokens, new_context};

/// The limit on mean KL(base + runtime adapter ‖ merged) for the default merge (nats).
const KL_LIMIT: f64 = 0.05;

/// The adapter converted against the test model, and a directory for merged files (once per test process).
fn setup() -> &'static (PathBuf, PathBuf) {
    static OUT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    OUT.get_or_init(|| (process_scratch("merge-gemma"), gemma_adapter()))
}

fn merged(outtype: OutType, name: &str) -> (PathBuf, merge::Summary) {
    let (dir, adapter) = setup();
    let out = dir.join(name);
    let summary = merge::merge(&merge::Options {
        outtype,
        ..merge_options(&test_model(), &[(adapter, 1.0)], &out, 2)
    })
    .unwrap();
    (out, summary)
}

fn text_tokens() -> Vec<i32> {
    let text = std::fs::read_to_string(root().join("fixtures/gemma-lora/merge-drift.txt")).unwrap();
    let model = load_model(&test_model(), false).unwrap();
    model
        .vocab()
        .tokenize(text.as_bytes(), true, false)
        .into_iter()
        .map(|t| t.0)
        .collect()
}

/// Drift of `model` from base + runtime adapter on the documented text.
fn drift(model: &Path) -> f64 {
    static REFERENCE: OnceLock<(Vec<i32>, Vec<f32>)> = OnceLock::new();
    let (tokens, reference) = REFERENCE.get_or_init(|| {
        let tokens = text_tokens();
        let mut l = logits_for_tokens(
            &test_model(),
            Some(&setup().1),
            &[1.0],
            &tokens,
            test_threads(),
        )
        .unwrap();
        (tokens, l.remove(1))
    });
    let got = logits_for_tokens(model, None, &[], tokens, test_threads()).unwrap();
    mean_kl_rows(reference, &got[0], reference.len() / tokens.len())
}

/// Greedy continuation of `prompt` (32 tokens) by `model` alone.
fn greedy(model_path: &Path, prompt: &str) -> String {
    let model = load_model(model_path, false).unwrap();
    let vocab = model.vocab();
    let mut tokens: Vec<LlamaToken> = vocab.tokenize(prompt.as_bytes(), true, false);
    let mut ctx = new_context(&model, 128, 128, 128, 1, test_threads()).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    for _ in 0..32 {
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        for (i, t) in tokens.iter().enumerate() {
            batch
                .add(*t, pos + i as i32, &[0], i + 1 == tokens.len())
                .unwrap();
        }
        ctx.decode(&mut batch).unwrap();
        pos += tokens.len() as i32;
        let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
        let next = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        let t = LlamaToken::new(next as i32);
        if vocab.is_eog(t) {
            break;
        }
        out.extend(vocab.token_to_piece(t, true, None));
        tokens = vec![t];
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn default_merge_keeps_the_adapters_behaviour_and_beats_requantizing() {
    let (auto_path, auto) = merged(OutType::default(), "auto.gguf");
    let (keep_path, keep) = merged(OutType::Keep, "keep.gguf");
    let kl_auto = drift(&auto_path);
    let kl_keep = drift(&keep_path);
    let base_size = auto.base_bytes;
    eprintln!(
        "auto: {} bytes ({:+.1}%), {} of {} merged tensors promoted, KL {kl_auto:.4}; keep: {} bytes, KL {kl_keep:.4}",
        auto.bytes,
        (auto.bytes as f64 / base_size as f64 - 1.0) * 100.0,
        auto.promoted().count(),
        auto.merged.len(),
        keep.bytes,
    );
    assert!(
        kl_auto <= KL_LIMIT,
        "default merge drifts {kl_auto} nats (limit {KL_LIMIT})"
    );
    assert!(
        kl_keep > 3.0 * kl_auto,
        "requantizing to the base types should drift clearly more ({kl_keep} vs {kl_auto})"
    );
    for line in std::fs::read_to_string(root().join("fixtures/gemma-lora/target.jsonl"))
        .unwrap()
        .lines()
        .take(2)
    {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        let answer = greedy(&auto_path, j["prompt"].as_str().unwrap());
        assert!(answer.contains("BANANAPHONE"), "{}: {answer:?}", j["id"]);
    }
}
