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

// The base recorded in the adapter (`lora-convert --base`): inspect shows it; inspect, validate and merge check it.
mod base_fingerprint;

// Malformed input through the binaries: cuts at every section boundary, hostile sizes, bad outputs → exit 2.
mod malformed;

// Every committed fuzz input (fuzz/corpus, fuzz/regressions) through its target's body, on stable.
mod fuzz_replay;

// The support table (per architecture and feature: verified / mapped / refused) in the README and in `inspect`.
mod support_table;

// Converted adapters loaded in real llama.cpp: logits vs PyTorch+PEFT at scales 1.0 and 0.5.
#[cfg(feature = "validate")]
mod convert_logits;

// lora-validate on the real Gemma 3 270M Q4_K_M with a real trained adapter.
#[cfg(feature = "validate")]
mod validate_e2e;

// An interrupted validation run reports what finished, marked partial (exit 130 on SIGINT).
#[cfg(feature = "validate")]
mod validate_partial;
// `lora-convert merge`: adapters baked into the base, against the runtime adapter in llama.cpp.
#[cfg(feature = "validate")]
mod merge_logits;
// `lora-convert merge` on the real Gemma 3 270M Q4_K_M: behaviour kept, drift from the runtime adapter.
#[cfg(feature = "validate")]
mod merge_gemma;
// `lora-convert merge` from the command line: bytes copied, provenance, Modelfile, refusals.
#[cfg(feature = "merge")]
mod merge_cli;
// `lora-validate --merged`: a real merge passes, a merge at the wrong scale fails.
#[cfg(feature = "validate")]
mod validate_merged;

// lora-validate --shard I/N and merge-reports: the shards merged give the unsharded verdict.
#[cfg(feature = "validate")]
mod validate_shard;

// The CI gate (action.yml, the GitLab template) run locally as a CI job runs it.
#[cfg(feature = "validate")]
mod ci_action;
