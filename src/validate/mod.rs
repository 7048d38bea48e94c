//! The drift gate: golden prompts, the llama.cpp engine, metrics, and the verdict.
pub mod engine;
pub mod gate;
pub mod golden;
pub mod precheck;
pub mod results;
pub mod stack;
