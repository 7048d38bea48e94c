#![no_main]
//! `cargo +nightly fuzz run mlx_config`: see targets::mlx_config.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::mlx_config(data, targets::Ctx::fuzzing()));
