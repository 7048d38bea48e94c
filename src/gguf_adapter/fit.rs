//! Does a GGUF adapter fit a base? Mirrors `llama_adapter_lora_init_impl` (src/llama-adapter.cpp) plus the checks it
//! lacks: llama.cpp aborts the whole process on some mismatches (an embedding LoRA on a tied model, a non-F32 alpha,
//! factors with dimensions beyond the base tensor's or of a type its CPU backend cannot multiply) and silently
//! corrupts memory on others (a wrong expert count), so every such case is a clear problem here.

use std::collections::BTreeMap;

use super::{GgufAdapter, Problem};
use crate::gguf::{GgmlType, GgufFile, keys};

/// Tensor types ggml's CPU backend has no dot product for (no `vec_dot` in `type_traits_cpu`, ggml-cpu.c): a LoRA
/// factor of one of these types loads, then `ggml_mul_mat` crashes the process at the first decode.
const NO_CPU_MATMUL: &[GgmlType] = &[
    GgmlType::Q8_1,
    GgmlType::Q8_K,
    GgmlType::I8,
    GgmlType::I16,
    GgmlType::I32,
    GgmlType::I64,
    GgmlType::F64,
];

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
            for t in [self.lora_a(pair), self.lora_b(pair)] {
                if NO_CPU_MATMUL.contains(&t.ggml_type) {
                    bad(
                        &t.name,
                        format!(
                            "is {}, which llama.cpp loads but cannot multiply (ggml's CPU backend has no dot \
                             product for it): it would crash at the first decode; reconvert with --outtype f32, \
                             f16, bf16 or q8_0",
                            t.ggml_type
                        ),
                    );
                }
            }
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
            // llama.cpp compares ne[0] and ne[1] only; ggml_mul_mat (ggml_mul_mat_id for experts) then asserts that
            // the factors broadcast over the activations, which have no dimension beyond the base tensor's: any
            // such dimension above 1 aborts the process at the first decode.
            let beyond = |v: &[u64]| v.iter().skip(w.len()).any(|&n| n != 1);
            if beyond(a) || beyond(b) {
                bad(
                    name,
                    format!(
                        "lora_a ne {a:?} and lora_b ne {b:?} have more dimensions than the base tensor ne {w:?}: \
                         llama.cpp loads them and aborts at the first decode (ggml_mul_mat)"
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
