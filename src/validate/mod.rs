//! The drift gate: golden prompts, the llama.cpp engine, metrics, and the verdict.
pub mod golden;
pub mod results;
