//! The drift gate: golden prompts, the llama.cpp engine, metrics, and the verdict.
pub mod divergence;
pub mod engine;
pub mod gate;
pub mod golden;
pub mod results;
