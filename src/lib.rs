//! lora-gguf: exact LoRA → GGUF conversion for llama.cpp, and a drift gate that validates an adapter on the real base.
//!
//! ```text
//! PEFT dir ─┬► adapter::scan ──► adapter::Adapter ──► arch::Family ──► convert::Plan ──► gguf writer ──► adapter.gguf
//! mlx-lm dir┘ (peft / mlx key schemes)                 base.gguf / config.json ──► checks ┘
//! adapter.gguf ──► gguf_adapter::GgufAdapter (pairs, fit(base), stack) ──► inspect, validate
//! golden-prompts/*.jsonl ──► validate::run (fit, engine = llama.cpp, gate) ──► report
//! ```
#![deny(missing_docs)]
// Errors carry the file, key, tensor and numbers a user needs; they happen once per run, so their size is fine.
#![allow(clippy::result_large_err)]

pub mod adapter;
pub mod arch;
pub mod convert;
pub mod exit;
pub mod gguf;
pub mod gguf_adapter;
pub mod inspect;
mod json_fields;
#[cfg(feature = "merge")]
pub mod merge;
pub mod mlx;
pub mod peft;
mod read_at;
pub mod reference;
pub mod report;
pub mod validate;
