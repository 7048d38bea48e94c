//! The `lora_gguf.merge.*` keys a merged model carries (written by `lora-convert merge`, docs/merge.md), read back
//! for `inspect`. The key names live here, outside the `merge` feature, so that every build can show them.

use serde::Serialize;

use crate::gguf::{GgufFile, Value};

/// The namespace.
pub const PREFIX: &str = "lora_gguf.merge.";
/// `lora-convert <version>`.
pub const TOOL: &str = "lora_gguf.merge.tool";
/// The base's file name.
pub const BASE: &str = "lora_gguf.merge.base";
/// sha256 of the base file.
pub const BASE_SHA256: &str = "lora_gguf.merge.base_sha256";
/// Each adapter's file or directory name.
pub const ADAPTERS: &str = "lora_gguf.merge.adapters";
/// sha256 of each adapter (GGUF file, or a directory's weights file).
pub const ADAPTER_SHA256: &str = "lora_gguf.merge.adapter_sha256";
/// Each adapter's scale.
pub const SCALES: &str = "lora_gguf.merge.scales";
/// `--outtype` as given (`auto:<budget>`, `keep`, a type name).
pub const OUTTYPE: &str = "lora_gguf.merge.outtype";
/// `--source`: the float model's file name.
pub const SOURCE: &str = "lora_gguf.merge.source";
/// `--source`: sha256 of the float model file.
pub const SOURCE_SHA256: &str = "lora_gguf.merge.source_sha256";
/// `--imatrix`: the importance matrix file's name.
pub const IMATRIX: &str = "lora_gguf.merge.imatrix";
/// `--imatrix`: sha256 of the importance matrix file.
pub const IMATRIX_SHA256: &str = "lora_gguf.merge.imatrix_sha256";

/// What a merged model records about its making.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Provenance {
    /// The tool and version.
    pub tool: String,
    /// The base's file name.
    pub base: String,
    /// Its sha256.
    pub base_sha256: String,
    /// The adapters, in order.
    pub adapters: Vec<MergedAdapter>,
    /// The type policy.
    pub outtype: String,
    /// `--source`: the float model the merged tensors were computed from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<NamedFile>,
    /// `--imatrix`: the importance matrix the merged tensors were quantized with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imatrix: Option<NamedFile>,
}

/// A file an input of the merge came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NamedFile {
    /// File name.
    pub name: String,
    /// sha256.
    pub sha256: String,
}

/// One merged adapter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MergedAdapter {
    /// File or directory name.
    pub name: String,
    /// sha256.
    pub sha256: String,
    /// Scale.
    pub scale: f64,
}

/// The provenance of a merged model; `None` when the file has no `lora_gguf.merge.tool`.
pub fn read(f: &GgufFile) -> Option<Provenance> {
    let s = |k: &str| f.get_str(k).unwrap_or_default().to_string();
    let list = |k: &str| -> Vec<Value> {
        f.get(k)
            .and_then(Value::as_array)
            .map(|a| a.values.clone())
            .unwrap_or_default()
    };
    f.get_str(TOOL)?;
    let (names, hashes, scales) = (list(ADAPTERS), list(ADAPTER_SHA256), list(SCALES));
    let adapters = names
        .iter()
        .enumerate()
        .map(|(i, n)| MergedAdapter {
            name: n.as_str().unwrap_or_default().to_string(),
            sha256: hashes
                .get(i)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            scale: scales.get(i).and_then(Value::as_f64).unwrap_or(f64::NAN),
        })
        .collect();
    Some(Provenance {
        tool: s(TOOL),
        base: s(BASE),
        base_sha256: s(BASE_SHA256),
        adapters,
        outtype: s(OUTTYPE),
        source: named(f, SOURCE, SOURCE_SHA256),
        imatrix: named(f, IMATRIX, IMATRIX_SHA256),
    })
}

/// A named input (`--source`, `--imatrix`) when the file records one.
fn named(f: &GgufFile, name: &str, sha256: &str) -> Option<NamedFile> {
    Some(NamedFile {
        name: f.get_str(name)?.to_string(),
        sha256: f.get_str(sha256).unwrap_or_default().to_string(),
    })
}
