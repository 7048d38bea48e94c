//! Does a GGUF adapter fit a base? Mirrors `llama_adapter_lora_init_impl` (src/llama-adapter.cpp) plus the checks it
//! lacks: llama.cpp aborts the whole process on some mismatches (an embedding LoRA on a tied model, a non-F32 alpha)
//! and silently corrupts memory on others (a wrong expert count), so every such case is a clear problem here.

use std::collections::BTreeMap;

use super::{GgufAdapter, Problem};
use crate::gguf::{GgufFile, keys};

/// Summary of an adapter that fits.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// LoRA pairs.
    pub pairs: usize,
    /// The α llama.cpp uses (0 when absent).
    pub alpha: f32,
    /// Distinct ranks.
    pub ranks: Vec<u64>,
}

impl GgufAdapter {
    /// Check this adapter against `base`: every problem that stops llama.cpp or makes it compute garbage, the file's
    /// own first (in the order [`GgufAdapter::problems`] lists them), then the base's, not just the first.
    pub fn fit(&self, base: &GgufFile) -> Result<Fit, Vec<Problem>> {
        let mut problems: Vec<Problem> =
            self.problems.iter().filter(|p| p.fatal).cloned().collect();
        let mut bad = |subject: &str, message: String| {
            problems.push(Problem {
                subject: subject.to_string(),
                message,
                fatal: true,
            })
        };
        let base_arch = base.architecture().unwrap_or("");
        match self.file.architecture() {
            Some(a) if a == base_arch => {}
            other => bad(
                keys::GENERAL_ARCHITECTURE,
                format!(
                    "the adapter is for `{}` but the base is `{base_arch}` (llama.cpp: \"model arch and LoRA arch mismatch\")",
                    other.unwrap_or("")
                ),
            ),
        }
        let base_tensors: BTreeMap<&str, &[u64]> = base
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dims.as_slice()))
            .collect();
        let tied = base.ties_output_to_embedding();
        for pair in &self.pairs {
            let name = pair.target.as_str();
            let (a, b) = (
                self.lora_a(pair).dims.as_slice(),
                self.lora_b(pair).dims.as_slice(),
            );
            let Some(w) = base_tensors.get(name) else {
                bad(
                    name,
                    format!(
                        "no such tensor in the base ({} tensors, arch `{base_arch}`): wrong base model?",
                        base.tensors.len()
                    ),
                );
                continue;
            };
            if name == "token_embd.weight" && tied {
                bad(
                    name,
                    "the base ties its output head to the token embedding; llama.cpp would apply this LoRA to the \
                     output projection too and abort at the first decode"
                        .into(),
                );
                continue;
            }
            let d = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(1);
            let fits = if name == "token_embd.weight" {
                d(w, 0) == d(b, 1) && d(w, 1) == d(a, 1) && d(a, 0) == d(b, 0)
            } else {
                d(w, 0) == d(a, 0) && d(w, 1) == d(b, 1) && d(a, 1) == d(b, 0)
            };
            if !fits {
                bad(
                    name,
                    format!(
                        "lora_a ne {a:?} and lora_b ne {b:?} do not fit the base tensor ne {w:?}"
                    ),
                );
                continue;
            }
            // llama.cpp does not compare the expert dimension (#29128): a wrong count corrupts memory.
            if w.len() == 3 && (d(a, 2) != d(w, 2) || d(b, 2) != d(w, 2)) {
                bad(
                    name,
                    format!(
                        "the adapter has {} experts, the base has {}",
                        d(a, 2),
                        d(w, 2)
                    ),
                );
            }
        }
        if problems.is_empty() {
            Ok(Fit {
                pairs: self.pairs.len(),
                alpha: self.runtime_alpha(),
                ranks: self.ranks(),
            })
        } else {
            Err(problems)
        }
    }
}
