//! One integration-test binary (ripgrep style). Each module reads like a section of the README.

// Shared helpers: fixture paths, running the binaries, the test model.
mod common;

// `lora-convert` against every fixture: bytes vs llama.cpp's own converter, refusals, CLI behaviour.
mod convert_cli;

// `lora-convert` at real scale on synthesized adapters: thread count vs bytes, files beyond 4 GiB.
mod convert_scale;

// mlx-lm adapters: detection, layout, scale, refusals.
mod convert_mlx;
// Adapters from torchtune, Unsloth, axolotl and LLaMA-Factory: exact conversion or a refusal that says what to do.
mod trainers_cli;

// `lora-convert inspect` (PEFT directories and GGUF adapters) and `--manifest`.
mod inspect_cli;

// Converted adapters loaded in real llama.cpp: logits vs PyTorch+PEFT at scales 1.0 and 0.5.
#[cfg(feature = "validate")]
mod convert_logits;

// lora-validate on the real Gemma 3 270M Q4_K_M with a real trained adapter.
#[cfg(feature = "validate")]
mod validate_e2e;

// Training parity: lora-validate --reference against packs recorded by python/lora_gguf/record, the self-test, and
// the recorder itself (torch, in a venv cached outside the clone).
#[cfg(feature = "validate")]
mod reference_e2e;
