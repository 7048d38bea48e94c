//! lora-gguf: exact LoRA → GGUF conversion for llama.cpp, and a drift gate that validates an adapter on the real base.
//!
//! ```text
//! PEFT dir ─┬► peft::Adapter ──► arch::Family ──► convert::Plan ──► gguf::Writer ──► adapter.gguf
//! mlx-lm dir┘ (mlx::open)
//!                                   base.gguf / config.json ──► arch::Geometry ──► checks
//! golden-prompts/*.jsonl ──► validate::Engine (llama.cpp) ──► metrics ──► gate ──► report
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
pub mod report;
pub mod validate;
