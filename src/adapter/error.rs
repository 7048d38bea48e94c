//! What stops an adapter from being read, or from being expressed as a GGUF LoRA: one error type for every reader
//! (PEFT, mlx-lm, the trainers that write PEFT's format), each variant naming the file, key, module or tensor it is
//! about and what to do. Readers collect these as refusals; [`Error::subject`] is what a report lists them under.

use std::path::{Path, PathBuf};

/// Why an adapter could not be read, or what it uses that a GGUF LoRA cannot express.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The directory lacks a file we need.
    #[error("`{dir}` has no `{file}` (found: {found}); {hint}")]
    MissingFile {
        /// The adapter directory.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
        /// What is there.
        found: String,
        /// What to do.
        hint: String,
    },
    /// Only a pickle checkpoint is present.
    #[error(
        "`{path}` is a pickle checkpoint, which can run arbitrary code when loaded, so lora-convert never reads it; \
         re-save the adapter as safetensors: `PeftModel.from_pretrained(base, DIR).save_pretrained(OUT, \
         safe_serialization=True)`, or `safetensors.torch.save_file(torch.load(\"{path}\", weights_only=True), \
         \"adapter_model.safetensors\")` on a machine you trust"
    )]
    Pickle {
        /// The pickle file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("reading `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid JSON.
    #[error("`{path}`:{line}:{column}: invalid JSON: {message}")]
    ConfigJson {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A configuration field is missing or has the wrong type.
    #[error("`{path}`: `{key}`: {message}")]
    ConfigField {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration asks for something a GGUF LoRA cannot express.
    #[error("`{path}`: `{key}` {message}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why, and what to do.
        message: String,
    },
    /// The safetensors file is truncated or corrupt.
    #[error(
        "`{path}` is not a valid safetensors file ({source}); the file is truncated or corrupt — copy it again"
    )]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// Tensors in the file that a GGUF LoRA cannot carry.
    #[error("`{path}`: tensor `{key}` {message}")]
    UnsupportedTensor {
        /// The file.
        path: PathBuf,
        /// The first such key.
        key: String,
        /// Why, and what to do.
        message: String,
    },
    /// Keys that are not LoRA factors at all.
    #[error(
        "`{path}`: {count} tensor(s) are not {what}, e.g. {examples}; expected keys like `{like}` — is this {format}?"
    )]
    UnknownTensors {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
        /// A few of them.
        examples: String,
        /// What the format's factors are called.
        what: &'static str,
        /// A key the format writes.
        like: &'static str,
        /// The format, as a question's object ("a PEFT LoRA adapter").
        format: &'static str,
    },
    /// A factor with an unsupported element type.
    #[error("`{path}`: tensor `{key}` has dtype {dtype}; LoRA factors must be F32, F16 or BF16")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The dtype found.
        dtype: String,
    },
    /// One half of a pair is missing.
    #[error("`{path}`: module `{module}` has {present} but no {missing}; the file is incomplete")]
    HalfPair {
        /// The file.
        path: PathBuf,
        /// The module.
        module: String,
        /// The half present.
        present: &'static str,
        /// The half missing.
        missing: &'static str,
    },
    /// Factor shapes that do not form a LoRA pair.
    #[error("`{path}`: module `{module}`: {message} ({factors})")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The module.
        module: String,
        /// What is wrong.
        message: String,
        /// The two factors as the format stores them (keys, shapes, layout).
        factors: String,
    },
    /// A tensor holds NaN or infinity.
    #[error(
        "`{path}`: tensor `{key}` contains {what} at element {index} — the training diverged or the export is \
         corrupt; export a good checkpoint"
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// "NaN" or "infinity".
        what: &'static str,
        /// Flat element index.
        index: usize,
    },
    /// A module the configuration does not adapt: mlx-lm's own `load_adapters` refuses such a file.
    #[error(
        "`{path}`: module `{module}` has LoRA factors, but {why}, so mlx-lm itself would not load this adapter \
         (\"not an adapter parameter in the model\"); the adapter_config.json does not belong to these weights"
    )]
    NotAdapted {
        /// The weights file.
        path: PathBuf,
        /// The module.
        module: String,
        /// Which setting excludes it.
        why: String,
    },
    /// The adapter was trained with added tokens: its embedding / output head have more rows than the base.
    #[error(
        "`{key}` has {rows} vocabulary rows but the base {base} has {base_vocab}: the vocabulary was grown by \
         {added} rows for added tokens (chat or special tokens; trainers pad the new size to a multiple of 32 or \
         64), so this adapter needs a base that has them. A GGUF LoRA \
         cannot add tokens or replace full tensors, so the base GGUF itself must be re-made: merge the adapter with \
         its resized embeddings into the base (`PeftModel.from_pretrained(base_with_resized_vocab, DIR)\
         .merge_and_unload()`, saved with the trainer's tokenizer) and convert that model with \
         convert_hf_to_gguf.py — or retrain without new tokens"
    )]
    ResizedVocabulary {
        /// The full-weight key.
        key: String,
        /// Its vocabulary rows.
        rows: u64,
        /// The base description.
        base: String,
        /// The base's vocabulary.
        base_vocab: u64,
        /// rows − base_vocab.
        added: u64,
    },
}

impl Error {
    /// A configuration field of the wrong type or value (the constructor `json_fields::Fields` calls).
    pub(crate) fn config_field(path: &Path, key: String, message: String) -> Error {
        Error::ConfigField {
            path: path.to_path_buf(),
            key,
            message,
        }
    }

    /// Parse the text of a configuration file that must be one JSON object.
    pub(crate) fn config_object(
        text: &str,
        path: &Path,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        match crate::json_fields::parse(text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(Error::config_field(
                path,
                "(top level)".into(),
                "expected a JSON object".into(),
            )),
            Err(e) => Err(Error::ConfigJson {
                path: path.to_path_buf(),
                line: e.line,
                column: e.column,
                message: e.message,
            }),
        }
    }

    /// What the refusal is about, for reports that list refusals by subject (inspect, the manifest): a file, a
    /// configuration key, a tensor key or a module path.
    pub fn subject(&self) -> String {
        let path = |p: &Path| p.display().to_string();
        match self {
            Error::MissingFile { dir, file, .. } => path(&dir.join(file)),
            Error::Pickle { path: p }
            | Error::Io { path: p, .. }
            | Error::ConfigJson { path: p, .. }
            | Error::Safetensors { path: p, .. }
            | Error::UnknownTensors { path: p, .. } => path(p),
            Error::ConfigField { key, .. } | Error::Unsupported { key, .. } => key.clone(),
            Error::UnsupportedTensor { key, .. }
            | Error::Dtype { key, .. }
            | Error::NonFinite { key, .. }
            | Error::ResizedVocabulary { key, .. } => key.clone(),
            Error::HalfPair { module, .. }
            | Error::Shape { module, .. }
            | Error::NotAdapted { module, .. } => module.clone(),
        }
    }
}
