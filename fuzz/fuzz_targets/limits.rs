#![no_main]
//! `cargo +nightly fuzz run limits`: see targets::limits.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::limits(data, targets::Ctx::fuzzing()));
