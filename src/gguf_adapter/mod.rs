//! A GGUF LoRA adapter as llama.cpp reads it, parsed once: its metadata, the pairs `<target>.lora_a` +
//! `<target>.lora_b` that `llama_adapter_lora_init_impl` (src/llama-adapter.cpp) forms, their ranks and runtime
//! factors, and every problem of the file itself. On top of that: [`GgufAdapter::fit`], the check against a base
//! that `lora-validate` runs before llama.cpp (which aborts the process on some mismatches and silently corrupts
//! memory on others), and [`stack`], several adapters as one. `inspect`, `validate` and `merge` use it; `gguf`
//! below it knows no LoRA.

pub mod fingerprint;
pub mod fit;
pub mod stack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::gguf::{self, GgufFile, TensorInfo, Value, ValueType, keys};

pub use fit::Fit;

/// One reason llama.cpp would refuse, misread or misapply an adapter (on its own, or on a given base).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The tensor or key concerned.
    pub subject: String,
    /// What is wrong and what to do.
    pub message: String,
    /// llama.cpp refuses or aborts on it (false: it loads the adapter but ignores the tensor).
    pub fatal: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.subject, self.message)
    }
}

/// One pair llama.cpp forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The base tensor it modifies (`blk.0.attn_q.weight`).
    pub target: String,
    /// Index of `<target>.lora_a` in the file's tensors.
    pub a: usize,
    /// Index of `<target>.lora_b`.
    pub b: usize,
    /// Rank: `lora_b` ne[0], as llama.cpp reads it.
    pub rank: u64,
}

/// A GGUF LoRA adapter file, parsed.
#[derive(Debug)]
pub struct GgufAdapter {
    /// The file as given.
    pub path: PathBuf,
    /// Its header (metadata and tensor infos; no tensor data is read until asked for).
    pub file: GgufFile,
    /// The pairs, by target name.
    pub pairs: Vec<Pair>,
    /// Problems of the file itself, in the order found: `general.type`, then tensors in file order, then pairs
    /// missing a half, then `adapter.lora.alpha`'s type.
    pub problems: Vec<Problem>,
}

impl GgufAdapter {
    /// Read and parse `path`.
    pub fn open(path: &Path) -> Result<Self, gguf::Error> {
        Ok(Self::parse(path, GgufFile::open(path)?))
    }

    /// Parse an opened file.
    pub fn parse(path: &Path, file: GgufFile) -> Self {
        let mut problems = Vec::new();
        let mut problem = |subject: &str, message: String, fatal: bool| {
            problems.push(Problem {
                subject: subject.to_string(),
                message,
                fatal,
            })
        };
        let is_adapter = file.get_str(keys::GENERAL_TYPE) == Some("adapter");
        if !is_adapter {
            problem(
                keys::GENERAL_TYPE,
                format!(
                    "is {:?}, not \"adapter\": this is not a LoRA adapter (a base model?), and llama.cpp does not \
                     load it as one",
                    file.get_str(keys::GENERAL_TYPE).unwrap_or("")
                ),
                true,
            );
        }
        let mut halves: BTreeMap<&str, (Option<usize>, Option<usize>)> = BTreeMap::new();
        for (i, t) in file.tensors.iter().enumerate().filter(|_| is_adapter) {
            if let Some(target) = t.name.strip_suffix(".lora_a") {
                halves.entry(target).or_default().0 = Some(i);
            } else if let Some(target) = t.name.strip_suffix(".lora_b") {
                halves.entry(target).or_default().1 = Some(i);
            } else if t.name.ends_with("_norm.weight") {
                problem(
                    &t.name,
                    "a norm vector: llama.cpp loads the adapter but ignores this tensor".into(),
                    false,
                );
            } else {
                problem(
                    &t.name,
                    "unexpected tensor name suffix: llama.cpp refuses the adapter".into(),
                    true,
                );
            }
        }
        let mut pairs = Vec::new();
        for (target, halves) in &halves {
            let (Some(a), Some(b)) = *halves else {
                problem(
                    target,
                    "only one of lora_a / lora_b is present: llama.cpp refuses the adapter".into(),
                    true,
                );
                continue;
            };
            pairs.push(Pair {
                target: (*target).to_string(),
                a,
                b,
                rank: file.tensors[b].dims.first().copied().unwrap_or(0),
            });
        }
        if is_adapter {
            match file.get_str(keys::ADAPTER_TYPE) {
                Some("lora") => {}
                other => problem(
                    keys::ADAPTER_TYPE,
                    format!(
                        "is {:?}, llama.cpp only loads \"lora\"",
                        other.unwrap_or("")
                    ),
                    true,
                ),
            }
        }
        if let Some(v) = file.get(keys::ADAPTER_LORA_ALPHA)
            && v.value_type() != ValueType::F32
        {
            problem(
                keys::ADAPTER_LORA_ALPHA,
                format!(
                    "has type {}; llama.cpp aborts unless it is f32 (GGUF_TYPE_FLOAT32) — reconvert the adapter",
                    v.value_type()
                ),
                true,
            );
        }
        GgufAdapter {
            path: path.to_path_buf(),
            file,
            pairs,
            problems,
        }
    }

    /// `adapter.lora.alpha` as a number, whatever its type.
    pub fn alpha(&self) -> Option<f64> {
        self.file
            .get(keys::ADAPTER_LORA_ALPHA)
            .and_then(Value::as_f64)
    }

    /// The α llama.cpp uses: an F32 `adapter.lora.alpha`, else 0 (it then does not divide by the rank).
    pub fn runtime_alpha(&self) -> f32 {
        match self.file.get(keys::ADAPTER_LORA_ALPHA) {
            Some(v) if v.value_type() == ValueType::F32 => v.as_f64().unwrap_or(0.0) as f32,
            _ => 0.0,
        }
    }

    /// llama.cpp's factor for `pair` at scale 1: α / rank in f32, or 1 when α is 0 or absent.
    pub fn runtime_factor(&self, pair: &Pair) -> f32 {
        let alpha = self.alpha().map_or(0.0, |a| a as f32);
        if alpha == 0.0 || pair.rank == 0 {
            1.0
        } else {
            alpha / pair.rank as f32
        }
    }

    /// `<target>.lora_a`.
    pub fn lora_a(&self, pair: &Pair) -> &TensorInfo {
        &self.file.tensors[pair.a]
    }

    /// `<target>.lora_b`.
    pub fn lora_b(&self, pair: &Pair) -> &TensorInfo {
        &self.file.tensors[pair.b]
    }

    /// Distinct ranks, sorted.
    pub fn ranks(&self) -> Vec<u64> {
        let mut ranks: Vec<u64> = self.pairs.iter().map(|p| p.rank).collect();
        ranks.sort_unstable();
        ranks.dedup();
        ranks
    }
}
