//! Drift of merged models from base + runtime adapter, for the README's table of merge routes:
//!
//! ```sh
//! cargo run --release --features validate --example merge_drift -- BASE.gguf ADAPTER.gguf TEXT.txt [--against EXACT.gguf] NAME=MODEL.gguf[+ADAPTER.gguf]...
//! ```
//!
//! Teacher-forces TEXT through the base with the adapter at scale 1 (llama.cpp's runtime LoRA) and through each
//! model, and prints per model its size, the mean and max KL(runtime ‖ model) over all positions (nats, exact over
//! the whole vocabulary) and the top-1 agreement, as a Markdown table. `--against EXACT.gguf` measures from that
//! model instead of the runtime adapter (e.g. the float model with the adapter merged in f32: what `--source`
//! routes approximate).

use std::path::{Path, PathBuf};

use lora_gguf::validate::engine::{load_model, logits_for_tokens};

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap_or(0)
}

/// All-position logits of `model` over `tokens`, with `lora` at scale 1 (llama.cpp's runtime LoRA) when given.
fn logits(model: &Path, lora: Option<&Path>, tokens: &[i32]) -> Vec<f32> {
    let scales: &[f32] = if lora.is_some() { &[1.0] } else { &[] };
    let mut passes = logits_for_tokens(model, lora, scales, tokens, 2)
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    // The base pass comes first, then one per scale.
    passes.remove(usize::from(lora.is_some()))
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let against = args.iter().position(|a| a == "--against").map(|i| {
        let path = PathBuf::from(args.get(i + 1).expect("--against EXACT.gguf"));
        args.drain(i..i + 2);
        path
    });
    if args.len() < 4 {
        eprintln!(
            "usage: merge_drift BASE.gguf ADAPTER.gguf TEXT.txt [--against EXACT.gguf] NAME=MODEL.gguf[+ADAPTER.gguf]..."
        );
        std::process::exit(2);
    }
    let (base, adapter, text) = (
        PathBuf::from(&args[0]),
        PathBuf::from(&args[1]),
        std::fs::read_to_string(&args[2]).expect("text"),
    );
    let tokens: Vec<i32> = load_model(&base, false)
        .expect("base")
        .vocab()
        .tokenize(text.as_bytes(), true, false)
        .into_iter()
        .map(|t| t.0)
        .collect();
    let (runtime, reference) = match &against {
        Some(exact) => (logits(exact, None, &tokens), exact.display().to_string()),
        None => (
            logits(&base, Some(&adapter), &tokens),
            "the runtime adapter".to_string(),
        ),
    };
    let n_vocab = runtime.len() / tokens.len();
    let base_size = std::fs::metadata(&base).map(|m| m.len()).unwrap_or(0);
    println!(
        "{} teacher-forced positions; KL from {reference}",
        tokens.len()
    );
    println!("| route | size (bytes) | vs base | KL mean | KL max | top-1 |");
    println!("|---|---|---|---|---|---|");
    for spec in &args[3..] {
        let (name, path) = spec.split_once('=').expect("NAME=MODEL.gguf");
        // MODEL.gguf+ADAPTER.gguf: that model with the adapter at scale 1 (llama.cpp's runtime LoRA).
        let (model, lora) = match path.split_once('+') {
            Some((model, lora)) => (Path::new(model), Some(Path::new(lora))),
            None => (Path::new(path), None),
        };
        let got = logits(model, lora, &tokens);
        let (mut sum, mut max, mut agree) = (0f64, 0f64, 0usize);
        for (p, q) in runtime.chunks(n_vocab).zip(got.chunks(n_vocab)) {
            let (lp, lq) = (log_softmax(p), log_softmax(q));
            let kl: f64 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
            sum += kl;
            max = max.max(kl);
            agree += usize::from(argmax(p) == argmax(q));
        }
        let size = std::fs::metadata(model).map(|m| m.len()).unwrap_or(0);
        println!(
            "| {name} | {size} | {:+.1}% | {:.4} | {:.3} | {:.3} |",
            (size as f64 / base_size as f64 - 1.0) * 100.0,
            sum / tokens.len() as f64,
            max,
            agree as f64 / tokens.len() as f64
        );
    }
}
