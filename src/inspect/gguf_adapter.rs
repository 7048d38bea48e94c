//! Inspecting a GGUF LoRA adapter: every metadata key, every tensor, the pairs llama.cpp will form with their ranks
//! and runtime factors, and with `--base` the fit check `lora-validate` runs before llama.cpp.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value as Json, json};

use super::SCHEMA;
use super::fit::{self, Mismatch};
use crate::gguf::{self, GgufFile, Value, ValueType, keys};

/// Arrays longer than this are shown by their first elements and length (vocabularies hold 10⁵ strings).
const ARRAY_PREVIEW: usize = 16;

/// The report on a GGUF adapter.
#[derive(Debug, Serialize)]
pub struct GgufReport {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// `gguf_adapter`.
    pub kind: &'static str,
    /// The file as given.
    pub path: String,
    /// GGUF version.
    pub version: u32,
    /// File size.
    pub bytes: u64,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// `general.type` (`adapter` for a LoRA).
    pub general_type: Option<String>,
    /// `adapter.type` (`lora`).
    pub adapter_type: Option<String>,
    /// `adapter.lora.alpha` as a number, whatever its type.
    pub alpha: Option<f64>,
    /// Every metadata key in file order.
    pub metadata: Vec<Kv>,
    /// Every tensor in file order.
    pub tensors: Vec<Tensor>,
    /// The pairs llama.cpp forms (`<target>.lora_a` + `<target>.lora_b`), by target name.
    pub pairs: Vec<Pair>,
    /// Distinct ranks.
    pub ranks: Vec<u64>,
    /// Problems of the file itself (no base needed): what llama.cpp would refuse or misread.
    pub problems: Vec<Problem>,
    /// With `--base`: the fit check.
    pub fit: Option<Fit>,
}

/// A metadata entry.
#[derive(Debug, Serialize)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The GGUF type, as ggml names it (`f32`, `str`, `arr[u32]` …).
    #[serde(rename = "type")]
    pub value_type: String,
    /// The value; a long array is `{"len": N, "first": [...]}`.
    pub value: Json,
}

/// A tensor.
#[derive(Debug, Serialize)]
pub struct Tensor {
    /// Name.
    pub name: String,
    /// ggml type.
    #[serde(rename = "type")]
    pub ggml_type: &'static str,
    /// ggml `ne`.
    pub ne: Vec<u64>,
    /// Data bytes.
    pub bytes: u64,
}

/// A pair.
#[derive(Debug, Serialize)]
pub struct Pair {
    /// The base tensor it modifies.
    pub target: String,
    /// Rank: `lora_b` ne[0], as llama.cpp reads it.
    pub rank: u64,
    /// `lora_a` ne.
    pub lora_a: Vec<u64>,
    /// `lora_b` ne.
    pub lora_b: Vec<u64>,
    /// Their types.
    pub types: [&'static str; 2],
    /// llama.cpp's factor at scale 1: α / rank in f32 (1 when α is 0 or absent: llama.cpp then does not divide).
    pub runtime_factor: f64,
}

/// A problem or a mismatch.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// The tensor or key.
    pub subject: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The fit against a base.
#[derive(Debug, Serialize)]
pub struct Fit {
    /// The base as given.
    pub base: String,
    /// Its architecture.
    pub base_architecture: Option<String>,
    /// Whether llama.cpp would load and run this adapter on it.
    pub fits: bool,
    /// Every reason it does not.
    pub mismatches: Vec<Problem>,
}

/// Read `path` (and `base`).
pub fn inspect(path: &Path, base: Option<&Path>) -> Result<GgufReport, gguf::Error> {
    let f = GgufFile::open(path)?;
    let alpha = f.get(keys::ADAPTER_LORA_ALPHA).and_then(Value::as_f64);
    let alpha32 = alpha.map_or(0.0, |a| a as f32);
    let mut halves: BTreeMap<&str, (Option<&gguf::TensorInfo>, Option<&gguf::TensorInfo>)> =
        BTreeMap::new();
    let mut problems = Vec::new();
    let is_adapter = f.get_str(keys::GENERAL_TYPE) == Some("adapter");
    if !is_adapter {
        problems.push(Problem {
            subject: keys::GENERAL_TYPE.into(),
            message: format!(
                "is {:?}, not \"adapter\": this is not a LoRA adapter (a base model?), and llama.cpp does not load it \
                 as one",
                f.get_str(keys::GENERAL_TYPE).unwrap_or("")
            ),
        });
    }
    for t in f.tensors.iter().filter(|_| is_adapter) {
        if let Some(target) = t.name.strip_suffix(".lora_a") {
            halves.entry(target).or_default().0 = Some(t);
        } else if let Some(target) = t.name.strip_suffix(".lora_b") {
            halves.entry(target).or_default().1 = Some(t);
        } else if t.name.ends_with("_norm.weight") {
            problems.push(Problem {
                subject: t.name.clone(),
                message: "a norm vector: llama.cpp loads the adapter but ignores this tensor"
                    .into(),
            });
        } else {
            problems.push(Problem {
                subject: t.name.clone(),
                message: "unexpected tensor name suffix: llama.cpp refuses the adapter".into(),
            });
        }
    }
    let mut pairs = Vec::new();
    let mut ranks = Vec::new();
    for (target, (a, b)) in &halves {
        let (Some(a), Some(b)) = (a, b) else {
            problems.push(Problem {
                subject: (*target).to_string(),
                message: "only one of lora_a / lora_b is present: llama.cpp refuses the adapter"
                    .into(),
            });
            continue;
        };
        let rank = b.dims.first().copied().unwrap_or(0);
        if !ranks.contains(&rank) {
            ranks.push(rank);
        }
        let runtime = if alpha32 == 0.0 || rank == 0 {
            1.0
        } else {
            f64::from(alpha32 / rank as f32)
        };
        pairs.push(Pair {
            target: (*target).to_string(),
            rank,
            lora_a: a.dims.clone(),
            lora_b: b.dims.clone(),
            types: [a.ggml_type.name(), b.ggml_type.name()],
            runtime_factor: runtime,
        });
    }
    ranks.sort_unstable();
    if let Some(v) = f.get(keys::ADAPTER_LORA_ALPHA)
        && v.value_type() != ValueType::F32
    {
        problems.push(Problem {
            subject: keys::ADAPTER_LORA_ALPHA.into(),
            message: format!(
                "has type {}; llama.cpp aborts unless it is f32 (GGUF_TYPE_FLOAT32) — reconvert the adapter",
                v.value_type()
            ),
        });
    }
    let fit = match base {
        None => None,
        Some(base_path) => {
            let b = GgufFile::open(base_path)?;
            let mismatches = match fit::check_adapter(&b, &f) {
                Ok(_) => Vec::new(),
                Err(m) => m.into_iter().map(problem).collect(),
            };
            Some(Fit {
                base: base_path.display().to_string(),
                base_architecture: b.architecture().map(str::to_string),
                fits: mismatches.is_empty(),
                mismatches,
            })
        }
    };
    Ok(GgufReport {
        schema: SCHEMA,
        kind: "gguf_adapter",
        path: path.display().to_string(),
        version: f.version,
        bytes: f.file_size,
        architecture: f.architecture().map(str::to_string),
        general_type: f.get_str(keys::GENERAL_TYPE).map(str::to_string),
        adapter_type: f.get_str(keys::ADAPTER_TYPE).map(str::to_string),
        alpha,
        metadata: f
            .metadata
            .iter()
            .map(|(k, v)| Kv {
                key: k.clone(),
                value_type: type_name(v),
                value: json_value(v),
            })
            .collect(),
        tensors: f
            .tensors
            .iter()
            .map(|t| Tensor {
                name: t.name.clone(),
                ggml_type: t.ggml_type.name(),
                ne: t.dims.clone(),
                bytes: t.n_bytes(),
            })
            .collect(),
        pairs,
        ranks,
        problems,
        fit,
    })
}

fn problem(m: Mismatch) -> Problem {
    Problem {
        subject: m.subject,
        message: m.message,
    }
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("arr[{}]", a.element_type),
        other => other.value_type().to_string(),
    }
}

/// A metadata value as JSON; floats that JSON cannot hold (NaN, ∞) become strings.
pub fn json_value(v: &Value) -> Json {
    let float = |x: f64| {
        serde_json::Number::from_f64(x).map_or_else(|| Json::String(x.to_string()), Json::Number)
    };
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => float(f64::from(*x)),
        Value::F64(x) => float(*x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) if a.len() > ARRAY_PREVIEW => json!({
            "len": a.len(),
            "first": a.values.iter().take(ARRAY_PREVIEW).map(json_value).collect::<Vec<_>>(),
        }),
        Value::Array(a) => Json::Array(a.values.iter().map(json_value).collect()),
    }
}
