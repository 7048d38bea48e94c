//! Activated LoRA (aLoRA): a real peft 0.21.2 aLoRA adapter (fixtures/alora, made by fixtures/generate_alora.py) on
//! the tiny llama base. The converter writes its invocation tokens; llama.cpp applies it only where it is told to
//! (the split decode llama-server does), matching PyTorch+PEFT's aLoRA logits; and lora-validate measures it with
//! llama-server's semantics — adapter off before the invocation, on from there, the base where it is not invoked —
//! never as a plain LoRA.

use std::path::{Path, PathBuf};

use crate::common::*;
use lora_gguf::validate::divergence::{BaseRow, compare};
use lora_gguf::validate::engine::{logits_activated_from, logits_for_tokens};
use lora_gguf::validate::{self, Request};

fn fixture() -> PathBuf {
    root().join("fixtures/alora")
}

fn invocation_start() -> usize {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("case.json")).unwrap())
            .unwrap();
    info["invocation_start"].as_u64().unwrap() as usize
}

/// The fixture converted against the tiny llama base.
fn converted(dir: &Path) -> PathBuf {
    let out = dir.join("alora.gguf");
    convert_on(fixture(), &out, "llama").assert().success();
    out
}

fn rows(logits: &[f32], n_vocab: usize, r: std::ops::Range<usize>) -> &[f32] {
    &logits[r.start * n_vocab..r.end * n_vocab]
}

#[test]
fn alora_logits_match_peft_and_are_the_base_before_the_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = converted(dir.path());
    // The converter carries the invocation tokens over.
    let inv = lora_gguf::validate::alora::invocation_tokens(
        &lora_gguf::gguf_adapter::GgufAdapter::open(&adapter).unwrap(),
    );
    assert_eq!(inv, Some(vec![67, 36]));
    let reference = fixture().join("reference.safetensors");
    let (_, tokens) = read_tensor(&reference, "tokens");
    let tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let n = tokens.len();
    let start = invocation_start();
    let base = base_gguf("llama");
    let (_, torch_base) = read_tensor(&reference, "logits_base");
    let n_vocab = torch_base.len() / n;
    let plain = logits_for_tokens(&base, Some(&adapter), &[1.0], &tokens, 2).unwrap();
    let base_err = max_abs_diff(&plain[0], &torch_base);
    let limit = 2.0 * base_err.max(1e-4);
    // llama-server's semantics: the adapter from one token before the invocation (PyTorch: peft's forward given that
    // offset); peft's own: from the invocation.
    for (first, key) in [(start - 1, "logits_server"), (start, "logits_peft")] {
        let got = logits_activated_from(&base, &adapter, 1.0, &tokens, first, 2).unwrap();
        let (_, want) = read_tensor(&reference, key);
        let err = max_abs_diff(&got, &want);
        eprintln!("aLoRA from {first} vs PEFT {key}: |Δ| {err:.2e}, limit {limit:.2e}");
        assert!(err <= limit, "{key}: |Δlogit| {err} > {limit}");
        // Before the adapter acts: the base's logits, bit for bit (the same split decode with the adapter never on).
        let never = logits_activated_from(&base, &adapter, 1.0, &tokens, n, 2).unwrap();
        assert_eq!(
            rows(&got, n_vocab, 0..first),
            rows(&never, n_vocab, 0..first)
        );
        // From there on: the adapter's effect, as large as PEFT's.
        let effect = max_abs_diff(
            rows(&got, n_vocab, first..n),
            rows(&never, n_vocab, first..n),
        );
        assert!(effect > 0.5, "{key}: the adapter barely acts ({effect})");
    }
    // As a plain LoRA (every position) it is something else: what the validator must never measure.
    let (_, torch_plain) = read_tensor(&reference, "logits_plain");
    assert!(max_abs_diff(&plain[1], &torch_plain) <= limit);
    assert!(max_abs_diff(&plain[1], &read_tensor(&reference, "logits_server").1) > 0.5);
}

/// KL(base ‖ adapted) per teacher-forced position of `prompt + continuation`, the adapter acting from `first`.
fn kl_mean(base: &Path, adapter: &Path, prompt: &[i32], continuation: &[i32], first: usize) -> f64 {
    let mut feed = prompt.to_vec();
    feed.extend_from_slice(&continuation[..continuation.len() - 1]);
    let b = logits_for_tokens(base, None, &[], &feed, 2)
        .unwrap()
        .remove(0);
    let a = logits_activated_from(base, adapter, 1.0, &feed, first, 2).unwrap();
    let n_vocab = b.len() / feed.len();
    let predicting = prompt.len() - 1..feed.len();
    let kls: Vec<f64> = predicting
        .map(|i| {
            let br = &b[i * n_vocab..(i + 1) * n_vocab];
            compare(br, &BaseRow::new(br), &a[i * n_vocab..(i + 1) * n_vocab]).kl
        })
        .collect();
    kls.iter().sum::<f64>() / kls.len() as f64
}

#[test]
fn lora_validate_applies_an_alora_from_its_invocation_only() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = converted(dir.path());
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"id\": \"invoked\", \"kind\": \"control\", \"prompt\": \"Hello, world @! then\", \"max_tokens\": 6}\n\
         {\"id\": \"plain\", \"kind\": \"control\", \"prompt\": \"Hello, world and then\", \"max_tokens\": 6}\n",
    )
    .unwrap();
    let base = base_gguf("llama");
    let req = Request {
        base: base.clone(),
        adapters: vec![(adapter.clone(), 1.0)],
        prompts: vec![prompts],
        scales: vec![0.0, 1.0],
        limits: Default::default(),
        engine: validate::EngineConfig {
            threads: test_threads(),
            ..Default::default()
        },
        refine: None,
        merged: None,
        shard: None,
        baseline: None,
        strict_base: false,
        reference: None,
    };
    let out = validate::run(&req, &mut |_| {})
        .unwrap()
        .golden()
        .expect("a golden sweep");
    let run = &out.measured;
    assert_eq!(run.scale_zero_max_abs_logit_delta, 0.0);
    let alora = run.alora.as_ref().expect("the run names the aLoRA");
    assert_eq!(alora.invocation_tokens, [67, 36]);
    assert_eq!(alora.prompts_invoked, ["invoked"]);
    assert_eq!(alora.prompts_not_invoked, ["plain"]);
    let at_1 = |id: &str| {
        run.measurements
            .iter()
            .find(|m| m.scale == 1.0 && m.prompt_id == id)
            .unwrap()
    };
    // Not invoked: the base, exactly (llama-server runs it at scale 0).
    let plain = at_1("plain");
    assert_eq!((plain.kl_max, plain.top1_agreement), (0.0, 1.0));
    assert_eq!(plain.adapted_tokens, run.base[1].tokens);
    // Invoked: the KL the validator measured is the one of llama-server's split decode, and measurably not the one
    // of the same adapter on every token (a plain LoRA) or from the invocation itself (PEFT's offset).
    let prompt = &run.base[0].prompt_tokens;
    let continuation = &run.base[0].tokens;
    let start = lora_gguf::validate::alora::invocation_start(prompt, &[67, 36]).unwrap();
    let measured = at_1("invoked").kl_mean;
    let server = kl_mean(&base, &adapter, prompt, continuation, start - 1);
    let as_plain = kl_mean(&base, &adapter, prompt, continuation, 0);
    let as_peft = kl_mean(&base, &adapter, prompt, continuation, start);
    eprintln!(
        "invoked prompt KL mean: validator {measured:.6}, llama-server {server:.6}, plain {as_plain:.6}, PEFT offset {as_peft:.6}"
    );
    assert!(measured > 1e-3, "{measured}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-3 * b.max(1e-6) + 1e-6;
    assert!(close(measured, server), "{measured} vs {server}");
    assert!(!close(measured, as_plain) && !close(measured, as_peft));
    // Every report says how the adapter was applied.
    let text = lora_gguf::report::render(
        lora_gguf::report::Format::Text,
        &out.set,
        run,
        &out.verdict,
        &out.meta,
        false,
    );
    assert!(
        text.contains("activated LoRA (aLoRA): applied as llama-server does, from its invocation tokens [67, 36] on (off before them); 1 of 2 prompts invoke it"),
        "{text}"
    );
    let json = lora_gguf::report::json_value(&out.set, run, &out.verdict, &out.meta);
    assert_eq!(json["alora"]["prompts_invoked"][0], "invoked");
}

#[test]
fn an_alora_in_a_stack_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = converted(dir.path());
    let plain = dir.path().join("plain.gguf");
    convert_on(case_dir("llama"), &plain, "llama")
        .assert()
        .success();
    let out = lora_validate()
        .arg("--base")
        .arg(base_gguf("llama"))
        .arg("--adapter")
        .arg(&adapter)
        .arg("--adapter")
        .arg(&plain)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is an activated LoRA (adapter.alora.invocation_tokens)")
            && stderr.contains("validate it on its own"),
        "{stderr}"
    );
}
