#![no_main]
//! `cargo +nightly fuzz run safetensors_peft`: see targets::safetensors_peft.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::safetensors_peft(data, targets::Ctx::fuzzing()));
