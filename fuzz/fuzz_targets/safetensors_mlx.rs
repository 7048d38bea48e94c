#![no_main]
//! `cargo +nightly fuzz run safetensors_mlx`: see targets::safetensors_mlx.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::safetensors_mlx(data, targets::Ctx::fuzzing()));
