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

pub mod arch;
pub mod convert;
pub mod gguf;
pub mod inspect;
pub mod mlx;
pub mod peft;
pub mod reference;
#[cfg(feature = "validate")]
pub mod report;
#[cfg(feature = "validate")]
pub mod validate;
