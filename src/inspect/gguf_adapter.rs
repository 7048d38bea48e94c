//! Inspecting a GGUF LoRA adapter: every metadata key, every tensor, the pairs llama.cpp will form with their ranks
//! and runtime factors, and with `--base` the fit check `lora-validate` runs before llama.cpp.

use std::path::Path;

use serde::Serialize;
use serde_json::{Value as Json, json};

use super::SCHEMA;
use crate::gguf::{self, GgufFile, Value, keys};
use crate::gguf_adapter::{self, GgufAdapter};

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
    /// The base the adapter was converted against (`lora-convert --base`) and, with `--base`, whether this is it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_fingerprint: Option<super::fingerprint::FingerprintReport>,
    /// A model made by `lora-convert merge`: what was merged (its `lora_gguf.merge.*` keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge: Option<super::merged::Provenance>,
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
    let adapter = GgufAdapter::open(path)?;
    let pairs = adapter
        .pairs
        .iter()
        .map(|p| {
            let (a, b) = (adapter.lora_a(p), adapter.lora_b(p));
            Pair {
                target: p.target.clone(),
                rank: p.rank,
                lora_a: a.dims.clone(),
                lora_b: b.dims.clone(),
                types: [a.ggml_type.name(), b.ggml_type.name()],
                runtime_factor: f64::from(adapter.runtime_factor(p)),
            }
        })
        .collect();
    let base_file = base.map(GgufFile::open).transpose()?;
    let base_fingerprint = super::fingerprint::report(&adapter.file, base_file.as_ref())?;
    let fit = match (base, base_file) {
        (Some(base_path), Some(b)) => {
            let mismatches = match adapter.fit(&b) {
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
        _ => None,
    };
    let f = &adapter.file;
    let merge = super::merged::read(f);
    let mut problems: Vec<Problem> = adapter.problems.iter().cloned().map(problem).collect();
    if merge.is_some() {
        // a merged model is a model: not being an adapter is no problem
        problems.retain(|p| p.subject != keys::GENERAL_TYPE);
    }
    Ok(GgufReport {
        schema: SCHEMA,
        kind: if merge.is_some() {
            "merged_model"
        } else {
            "gguf_adapter"
        },
        path: path.display().to_string(),
        version: f.version,
        bytes: f.file_size,
        architecture: f.architecture().map(str::to_string),
        general_type: f.get_str(keys::GENERAL_TYPE).map(str::to_string),
        adapter_type: f.get_str(keys::ADAPTER_TYPE).map(str::to_string),
        alpha: adapter.alpha(),
        metadata: f
            .metadata
            .iter()
            .map(|(k, v)| Kv {
                key: k.clone(),
                value_type: v.type_name(),
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
        ranks: adapter.ranks(),
        problems,
        pairs,
        fit,
        base_fingerprint,
        merge,
    })
}

fn problem(p: gguf_adapter::Problem) -> Problem {
    Problem {
        subject: p.subject,
        message: p.message,
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
