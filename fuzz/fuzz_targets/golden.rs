#![no_main]
//! `cargo +nightly fuzz run golden`: see targets::golden.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::golden(data, targets::Ctx::fuzzing()));
