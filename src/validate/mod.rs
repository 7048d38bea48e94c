//! The drift gate: golden prompts, the llama.cpp engine, metrics, and the verdict.
pub mod divergence;
pub mod engine;
pub mod gate;
pub mod golden;
/// The adapter-vs-base fit check lives with `inspect` (it needs no llama.cpp); the validator runs it first.
pub use crate::inspect::fit as precheck;
pub mod results;
pub mod stack;
