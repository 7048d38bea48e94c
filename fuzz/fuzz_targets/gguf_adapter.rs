#![no_main]
//! `cargo +nightly fuzz run gguf_adapter`: see targets::gguf_adapter.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::gguf_adapter(data, targets::Ctx::fuzzing()));
