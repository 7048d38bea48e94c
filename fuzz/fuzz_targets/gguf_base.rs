#![no_main]
//! `cargo +nightly fuzz run gguf_base`: see targets::gguf_base.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::gguf_base(data, targets::Ctx::fuzzing()));
