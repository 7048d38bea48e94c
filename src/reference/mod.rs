//! Training parity: a reference pack recorded where the adapter was trained (python/lora_gguf/record) against the
//! GGUF adapter in llama.cpp, in four checks that each name their own broken link — prompt parity (tokens), base
//! parity (the quantized base's floor), adapter parity (judged relative to that floor) and effect parity (the
//! adapter's logit shift, llama.cpp ÷ training). The pack reader, the arithmetic and the verdict need no llama.cpp;
//! `run` drives the engine, `validate::run` is
//! `lora_gguf::validate::run`'s door for a request with a pack.

pub mod check;
pub mod compare;
pub mod fingerprint;
pub mod pack;
pub mod prompt_parity;
pub mod report;
mod request;
pub mod results;
#[cfg(feature = "validate")]
pub mod run;
pub mod sabotage;
pub mod selftest;
#[cfg(feature = "validate")]
pub mod validate;
pub mod verdict;

pub use pack::{PackError, ReferencePack};
pub use request::{ReferenceOutcome, ReferenceRequest, SelfTestOutcome};
