//! The base fingerprint a GGUF adapter records (`lora-convert --base`, docs/base-fingerprint.md) in `inspect`:
//! what was recorded and, with `--base`, whether the given base is that one.

use std::fmt::Write as _;

use serde::Serialize;

use crate::gguf::GgufFile;
use crate::gguf_adapter::fingerprint::{BaseFingerprint, Difference};

/// The `base_fingerprint` field of `inspect --json` for a GGUF adapter.
#[derive(Debug, Serialize)]
pub struct FingerprintReport {
    /// What the adapter records (absent when it records nothing or the record is unreadable).
    pub recorded: Option<BaseFingerprint>,
    /// Why the record is unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `--base` and a readable record: whether the base is the recorded one.
    pub matches: Option<bool>,
    /// With `--base`: every way it differs.
    pub differences: Vec<Difference>,
}

/// The report for `adapter`, checked against `base` when given; None when the adapter records no fingerprint.
pub fn report(
    adapter: &GgufFile,
    base: Option<&GgufFile>,
) -> Result<Option<FingerprintReport>, crate::gguf::Error> {
    let recorded = match BaseFingerprint::read(adapter) {
        Ok(None) => return Ok(None),
        Ok(Some(f)) => f,
        Err(e) => {
            return Ok(Some(FingerprintReport {
                recorded: None,
                error: Some(e.to_string()),
                matches: None,
                differences: Vec::new(),
            }));
        }
    };
    let differences = match base {
        Some(b) => recorded.differences(b).map_err(|e| match e {
            crate::gguf_adapter::fingerprint::FingerprintError::Gguf(e) => e,
            other => crate::gguf::Error::Io {
                path: b.path.clone(),
                source: std::io::Error::other(other.to_string()),
            },
        })?,
        None => Vec::new(),
    };
    Ok(Some(FingerprintReport {
        matches: base.map(|_| differences.is_empty()),
        recorded: Some(recorded),
        error: None,
        differences,
    }))
}

/// The text lines of `inspect` (each ends with a newline); `base` is the path given with `--base`.
pub fn text(r: &FingerprintReport, base: Option<&str>) -> String {
    let mut o = String::new();
    let Some(f) = &r.recorded else {
        let _ = writeln!(
            o,
            "base      fingerprint unreadable: {}",
            r.error.as_deref().unwrap_or("")
        );
        return o;
    };
    let _ = writeln!(o, "base      converted against {}", describe(f));
    match (r.matches, base) {
        (Some(true), Some(b)) => {
            let _ = writeln!(o, "          {b} is the recorded base");
        }
        (Some(false), Some(b)) => {
            let _ = writeln!(
                o,
                "          warning: {b} is not the recorded base ({} difference(s)):",
                r.differences.len()
            );
            for d in &r.differences {
                let _ = writeln!(o, "            - {d}");
            }
        }
        _ => {}
    }
    o
}

/// One line: file, name, architecture, dimensions, vocabulary, targets and data hash.
pub fn describe(f: &BaseFingerprint) -> String {
    let short = |h: &str| h.get(..12).unwrap_or(h).to_string();
    let mut s = f.file.clone();
    if let Some(name) = &f.name {
        let _ = write!(s, " ({name})");
    }
    let _ = write!(s, ": {}", f.architecture);
    let dims = [
        ("n_embd", f.dims.n_embd),
        ("n_layer", f.dims.n_layer),
        ("n_head", f.dims.n_head),
        ("n_head_kv", f.dims.n_head_kv),
        ("n_vocab", f.dims.n_vocab),
    ];
    for (name, v) in dims {
        if let Some(v) = v {
            let _ = write!(s, " {name} {v}");
        }
    }
    if let Some(v) = &f.vocab {
        let _ = write!(
            s,
            "; vocabulary {} tokens sha256 {}…",
            v.n_tokens,
            short(&v.tokens_sha256)
        );
    }
    let _ = write!(s, "; {} targeted tensors", f.targets.len());
    if let Some(h) = &f.targets_prefix_sha256 {
        let _ = write!(s, " (data sha256 {}…)", short(h));
    }
    s
}
