//! Check a GGUF LoRA adapter against a base GGUF with our own reader, before llama.cpp sees it: llama.cpp aborts
//! the whole process on some mismatches (an embedding LoRA on a tied model, a non-F32 alpha) and silently corrupts
//! memory on others (a wrong expert count), so every such case becomes a clear error here.
//! Mirrors `llama_adapter_lora_init_impl` (src/llama-adapter.cpp) plus the checks it lacks.

use std::collections::BTreeMap;

use crate::gguf::{GgufFile, ValueType, keys};

/// One reason the adapter does not fit the base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The tensor or key concerned.
    pub subject: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.subject, self.message)
    }
}

/// Summary of an adapter that fits.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterFit {
    /// LoRA pairs.
    pub pairs: usize,
    /// `adapter.lora.alpha` (0 when absent).
    pub alpha: f32,
    /// Distinct ranks.
    pub ranks: Vec<u64>,
}

/// The dims of a pair's lora_a and lora_b, as found.
type Halves<'a> = (Option<&'a [u64]>, Option<&'a [u64]>);

/// Check `adapter` against `base`; all problems are returned, not just the first.
pub fn check_adapter(base: &GgufFile, adapter: &GgufFile) -> Result<AdapterFit, Vec<Mismatch>> {
    let mut problems = Vec::new();
    let mut bad = |subject: &str, message: String| {
        problems.push(Mismatch {
            subject: subject.to_string(),
            message,
        })
    };

    match adapter.get_str(keys::GENERAL_TYPE) {
        Some("adapter") => {}
        other => bad(
            keys::GENERAL_TYPE,
            format!(
                "is {:?}, expected \"adapter\" — is this a model rather than a LoRA adapter?",
                other.unwrap_or("")
            ),
        ),
    }
    match adapter.get_str(keys::ADAPTER_TYPE) {
        Some("lora") => {}
        other => bad(
            keys::ADAPTER_TYPE,
            format!(
                "is {:?}, llama.cpp only loads \"lora\"",
                other.unwrap_or("")
            ),
        ),
    }
    let base_arch = base.architecture().unwrap_or("");
    match adapter.architecture() {
        Some(a) if a == base_arch => {}
        other => bad(
            keys::GENERAL_ARCHITECTURE,
            format!(
                "the adapter is for `{}` but the base is `{base_arch}` (llama.cpp: \"model arch and LoRA arch mismatch\")",
                other.unwrap_or("")
            ),
        ),
    }
    let alpha = match adapter.get(keys::ADAPTER_LORA_ALPHA) {
        None => 0.0,
        Some(v) if v.value_type() == ValueType::F32 => v.as_f64().unwrap_or(0.0) as f32,
        Some(v) => {
            bad(
                keys::ADAPTER_LORA_ALPHA,
                format!(
                    "has type {:?}; llama.cpp aborts unless it is FLOAT32 — reconvert the adapter",
                    v.value_type()
                ),
            );
            0.0
        }
    };

    let base_tensors: BTreeMap<&str, &[u64]> = base
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dims.as_slice()))
        .collect();
    let tied = base_tensors.contains_key("token_embd.weight")
        && !base_tensors.contains_key("output.weight");
    let mut halves: BTreeMap<&str, Halves> = BTreeMap::new();
    for t in &adapter.tensors {
        if let Some(base_name) = t.name.strip_suffix(".lora_a") {
            halves.entry(base_name).or_default().0 = Some(&t.dims);
        } else if let Some(base_name) = t.name.strip_suffix(".lora_b") {
            halves.entry(base_name).or_default().1 = Some(&t.dims);
        } else if !t.name.ends_with("_norm.weight") {
            bad(
                &t.name,
                "unexpected tensor name suffix: llama.cpp refuses the adapter".into(),
            );
        }
    }
    let mut ranks = Vec::new();
    for (name, pair) in &halves {
        let (Some(a), Some(b)) = pair else {
            bad(name, "only one of lora_a / lora_b is present".into());
            continue;
        };
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
        if *name == "token_embd.weight" && tied {
            bad(
                name,
                "the base ties its output head to the token embedding; llama.cpp would apply this LoRA to the \
                 output projection too and abort at the first decode"
                    .into(),
            );
            continue;
        }
        let d = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(1);
        let fits = if *name == "token_embd.weight" {
            d(w, 0) == d(b, 1) && d(w, 1) == d(a, 1) && d(a, 0) == d(b, 0)
        } else {
            d(w, 0) == d(a, 0) && d(w, 1) == d(b, 1) && d(a, 1) == d(b, 0)
        };
        if !fits {
            bad(
                name,
                format!("lora_a ne {a:?} and lora_b ne {b:?} do not fit the base tensor ne {w:?}"),
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
            continue;
        }
        if !ranks.contains(&d(b, 0)) {
            ranks.push(d(b, 0));
        }
    }
    ranks.sort_unstable();
    if problems.is_empty() {
        Ok(AdapterFit {
            pairs: halves.len(),
            alpha,
            ranks,
        })
    } else {
        Err(problems)
    }
}
