#![no_main]
//! `cargo +nightly fuzz run peft_config`: see targets::peft_config.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::peft_config(data, targets::Ctx::fuzzing()));
