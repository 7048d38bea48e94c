//! What a merged file records about its making, under the `lora_gguf.merge.*` keys (docs/merge.md), and the
//! suffix its `general.name` gains. Everything else in the base's metadata is copied byte for byte.
//!
//! | key | type | value |
//! |---|---|---|
//! | `lora_gguf.merge.tool` | string | `lora-convert <version>` |
//! | `lora_gguf.merge.base` | string | the base's file name |
//! | `lora_gguf.merge.base_sha256` | string | sha256 of the base file (hex) |
//! | `lora_gguf.merge.adapters` | arr[string] | each adapter's file or directory name, in order |
//! | `lora_gguf.merge.adapter_sha256` | arr[string] | sha256 of each adapter (of its GGUF file; of a directory's weights file) |
//! | `lora_gguf.merge.scales` | arr[f32] | each adapter's scale |
//! | `lora_gguf.merge.outtype` | string | `auto` (with the budget: `auto:0.25`), `keep` or a ggml type name |
//! | `lora_gguf.merge.source` | string | with `--source`: the float model's file name |
//! | `lora_gguf.merge.source_sha256` | string | with `--source`: sha256 of that file (hex) |
//! | `lora_gguf.merge.imatrix` | string | with `--imatrix`: the importance matrix file's name |
//! | `lora_gguf.merge.imatrix_sha256` | string | with `--imatrix`: sha256 of that file (hex) |

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::adapters::Adapter;
use super::error::MergeError;
use super::{Options, OutType};
use crate::gguf::rewrite::{encode_entry, raw_metadata};
use crate::gguf::value::Array;
use crate::gguf::{GgufFile, Value, ValueType, keys};

pub use crate::inspect::merged::{
    ADAPTER_SHA256, ADAPTERS, BASE, BASE_SHA256, IMATRIX, IMATRIX_SHA256, OUTTYPE, PREFIX, SCALES,
    SOURCE, SOURCE_SHA256, TOOL,
};

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, MergeError> {
    let io = |source| crate::gguf::Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or(&[]));
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// `--outtype` as recorded.
pub fn outtype_label(outtype: OutType) -> String {
    match outtype {
        OutType::Auto { budget } => format!("auto:{budget}"),
        OutType::Keep => "keep".into(),
        OutType::Fixed(t) => t.name().into(),
    }
}

fn strings(values: impl IntoIterator<Item = String>) -> Value {
    Value::Array(Array::new(
        ValueType::String,
        values.into_iter().map(Value::String).collect(),
    ))
}

/// The output's raw metadata: the base's entries byte for byte except `general.name` (suffixed with the
/// adapters' names) and any `lora_gguf.merge.*` left from an earlier merge (replaced), then the provenance keys.
pub fn metadata(
    base: &GgufFile,
    opts: &Options,
    adapters: &[Adapter],
    adapter_hashes: &[String],
) -> Result<Vec<Vec<u8>>, MergeError> {
    let names: Vec<String> = adapters.iter().map(|a| file_name(&a.path)).collect();
    let mut out = Vec::new();
    for (key, raw) in raw_metadata(base)? {
        if key.starts_with(PREFIX) {
            continue;
        }
        if key == keys::GENERAL_NAME
            && let Some(name) = base.get_str(keys::GENERAL_NAME)
        {
            let suffixed = format!("{name} + {}", names.join(" + "));
            out.push(encode_entry(&key, &Value::String(suffixed)));
        } else {
            out.push(raw);
        }
    }
    let entries = [
        (
            TOOL,
            Value::String(format!("lora-convert {}", env!("CARGO_PKG_VERSION"))),
        ),
        (BASE, Value::String(file_name(&opts.base))),
        (BASE_SHA256, Value::String(sha256_file(&opts.base)?)),
        (ADAPTERS, strings(names)),
        (ADAPTER_SHA256, strings(adapter_hashes.iter().cloned())),
        (
            SCALES,
            Value::Array(Array::new(
                ValueType::F32,
                adapters.iter().map(|a| Value::F32(a.scale)).collect(),
            )),
        ),
        (OUTTYPE, Value::String(outtype_label(opts.outtype))),
    ];
    for (key, value) in entries {
        out.push(encode_entry(key, &value));
    }
    for (path, name_key, sha_key) in [
        (&opts.source, SOURCE, SOURCE_SHA256),
        (&opts.imatrix, IMATRIX, IMATRIX_SHA256),
    ] {
        if let Some(path) = path {
            out.push(encode_entry(name_key, &Value::String(file_name(path))));
            out.push(encode_entry(sha_key, &Value::String(sha256_file(path)?)));
        }
    }
    Ok(out)
}
