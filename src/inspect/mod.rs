//! `lora-convert inspect PATH`: what an adapter is and what conversion would do with it, without writing anything.
//! An adapter directory (PEFT or mlx-lm) is analysed by the converter's own `prepare`, so inspect lists exactly the
//! refusals conversion would hit, all of them; a GGUF adapter is read with our GGUF reader and, with `--base`,
//! checked by `gguf_adapter::GgufAdapter::fit` — the same check `lora-validate` runs before llama.cpp sees the file. Schema
//! `lora-gguf.inspect/1` (docs/inspect-and-manifest.md).

pub mod fingerprint;
pub mod gguf_adapter;
pub mod merged;
pub mod peft_dir;
pub mod render;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::convert::{ConvertError, Quirks};
use crate::gguf;

/// The schema identifier of `inspect --json`; bumped when a field changes meaning or disappears.
pub const SCHEMA: &str = "lora-gguf.inspect/1";

/// What to inspect and against what.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// A PEFT or mlx-lm adapter directory, or a GGUF adapter file.
    pub path: PathBuf,
    /// A base model GGUF to check against.
    pub base: Option<PathBuf>,
    /// A Hugging Face config describing the base (adapter directories only).
    pub base_config: Option<PathBuf>,
    /// Trainer-quirk choices, as for conversion.
    pub quirks: Quirks,
}

/// The report.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// An adapter directory (PEFT or mlx-lm).
    Peft(Box<peft_dir::PeftReport>),
    /// A GGUF adapter.
    Gguf(Box<gguf_adapter::GgufReport>),
}

impl Report {
    /// `Some(true)` when a base was given and the adapter fits it, `Some(false)` when it does not, `None` when no
    /// base was given.
    pub fn fits(&self) -> Option<bool> {
        match self {
            Report::Peft(r) => r.fits,
            Report::Gguf(r) => r.fit.as_ref().map(|f| f.fits),
        }
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    }
}

/// Why a path could not be inspected at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The adapter directory is unreadable.
    #[error(transparent)]
    Adapter(#[from] ConvertError),
    /// The GGUF file (or the base) is unreadable.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// Neither a directory nor a GGUF file.
    #[error("`{path}` is neither an adapter directory (PEFT or mlx-lm) nor a GGUF file{what}")]
    Unknown {
        /// The path.
        path: PathBuf,
        /// What it is instead, when known.
        what: String,
    },
    /// `--base-config` with a GGUF adapter.
    #[error(
        "`--base-config` describes a base for an adapter directory; to check the GGUF adapter `{path}`, pass `--base \
         BASE.gguf` (the fit is decided by the base's tensor names and shapes)"
    )]
    BaseConfigForGguf {
        /// The adapter.
        path: PathBuf,
    },
}

/// Inspect `req.path`.
pub fn inspect(req: &Request) -> Result<Report, InspectError> {
    let path = req.path.as_path();
    if path.is_dir() {
        return Ok(Report::Peft(Box::new(peft_dir::inspect(req)?)));
    }
    if is_gguf(path) {
        if req.base_config.is_some() {
            return Err(InspectError::BaseConfigForGguf {
                path: path.to_path_buf(),
            });
        }
        return Ok(Report::Gguf(Box::new(gguf_adapter::inspect(
            path,
            req.base.as_deref(),
        )?)));
    }
    let what = if !path.exists() {
        ": it does not exist".to_string()
    } else if path.file_name().and_then(|n| n.to_str()) == Some(crate::peft::CONFIG_FILE)
        || path.file_name().and_then(|n| n.to_str()) == Some(crate::peft::SAFETENSORS_FILE)
    {
        format!(
            ": pass the directory that holds it (`{}`)",
            path.parent()
                .map_or(String::new(), |p| p.display().to_string())
        )
    } else {
        String::new()
    };
    Err(InspectError::Unknown {
        path: path.to_path_buf(),
        what,
    })
}

fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == gguf::MAGIC
}
