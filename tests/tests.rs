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

// An adapter whose base_model_name_or_path names another model family than the base GGUF: refused, or overridden.
mod base_family_cli;

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

// Training parity: lora-validate --reference against packs recorded by python/lora_gguf/record, the self-test, and
// the recorder itself (torch, in a venv cached outside the clone).
#[cfg(feature = "validate")]
mod reference_e2e;
// Activated LoRA: a real peft aLoRA, applied from its invocation on (llama-server's semantics), vs PyTorch+PEFT.
#[cfg(feature = "validate")]
mod validate_alora;

// `--format html` rendered in Debian's headless Chromium: no console errors, the plots' series, a screenshot.
#[cfg(feature = "validate")]
mod report_chromium;

// An interrupted validation run reports what finished, marked partial (exit 130 on SIGINT).
#[cfg(feature = "validate")]
mod validate_partial;
// `lora-convert merge`: adapters baked into the base, against the runtime adapter in llama.cpp.
#[cfg(feature = "validate")]
mod merge_logits;
// `lora-convert merge` of DoRA adapters: the merged base gives PyTorch's unmerged peft logits.
#[cfg(feature = "validate")]
mod merge_dora;
// `lora-validate --merged` fails merges off by a layout (Q/K permutation, expert order) on tiny fixtures.
#[cfg(feature = "validate")]
mod merge_layout_caught;
// `lora-convert merge --source`: merged tensors quantized once from the float model, the rest the base's bytes.
#[cfg(feature = "validate")]
mod merge_source;
// `lora-convert merge --imatrix`: llama-quantize's bytes with the same importance matrix (GGUF and legacy .dat).
#[cfg(feature = "validate")]
mod merge_imatrix;
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
