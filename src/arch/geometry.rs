//! What the converter needs from a Hugging Face `config.json` when no base GGUF is given: the architecture, head
//! counts (for the rotary and fused-qkv row transforms), vocabulary, expert count, and whether embeddings are tied.
//! Read the way llama.cpp's converter reads it (`conversion/base.py` `load_hparams`, `get_model_architecture`):
//! nested text configs are renamed to `text_config`, whose keys override the top level. A bitsandbytes
//! `quantization_config` is irrelevant here: no base weight is ever read.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::json_fields::Fields;

/// The base model's shape as far as conversion needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Geometry {
    /// `architectures[0]` (the text config's, when it names one).
    pub hf_architecture: Option<String>,
    /// The GGUF architecture llama.cpp converts it to.
    pub gguf_arch: Option<String>,
    /// Transformer blocks.
    pub n_layer: Option<u32>,
    /// Hidden size.
    pub n_embd: Option<u64>,
    /// Attention (query) heads.
    pub n_head: Option<u32>,
    /// Key/value heads.
    pub n_head_kv: Option<u32>,
    /// Head dimension, when given.
    pub head_dim: Option<u32>,
    /// Vocabulary size of the config (may include padding rows).
    pub n_vocab: Option<u64>,
    /// Experts per MoE layer.
    pub n_expert: Option<u32>,
    /// FFN width of one expert (`moe_intermediate_size`; Mixtral and OLMoE: `intermediate_size`).
    pub n_ff_exp: Option<u64>,
    /// `tie_word_embeddings`.
    pub tie_word_embeddings: Option<bool>,
    /// The Gated DeltaNet heads of a hybrid model (`linear_num_key_heads` …).
    pub delta_net: Option<crate::convert::factor::DeltaNetHeads>,
}

/// Why a config could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeometryError {
    /// The file is missing or unreadable.
    #[error("reading `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid JSON, or not an object.
    #[error("`{path}`:{line}:{column}: invalid config.json: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A key has the wrong type.
    #[error("`{path}`: `{key}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Read `config.json` (or the directory holding it).
pub fn from_hf_config(path: &Path) -> Result<Geometry, GeometryError> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|source| GeometryError::Io {
        path: file.clone(),
        source,
    })?;
    from_json(&text, &file)
}

/// Parse config.json text.
pub fn from_json(text: &str, path: &Path) -> Result<Geometry, GeometryError> {
    let json_err = |line, column, message| GeometryError::Json {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    let value =
        crate::json_fields::parse(text).map_err(|e| json_err(e.line, e.column, e.message))?;
    let Value::Object(mut top) = value else {
        return Err(json_err(1, 1, "expected a JSON object".into()));
    };
    for nested in ["llm_config", "lm_config", "language_config", "lfm"] {
        if let Some(v) = top.get(nested).cloned() {
            top.insert("text_config".into(), v);
        }
    }
    if let Some(v) = top
        .get("thinker_config")
        .and_then(|t| t.get("text_config"))
        .cloned()
    {
        top.insert("text_config".into(), v);
    }
    let text_config = top.get("text_config").and_then(Value::as_object).cloned();
    let arch_of = |m: &Map<String, Value>| {
        m.get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(String::from)
    };
    let hf_architecture = text_config
        .as_ref()
        .and_then(arch_of)
        .or_else(|| arch_of(&top));
    let mut hp = top.clone();
    if let Some(tc) = &text_config {
        for (k, v) in tc {
            hp.insert(k.clone(), v.clone());
        }
    }
    let r = Fields::new(path, &hp, |path, key, message| GeometryError::Field {
        path: path.to_path_buf(),
        key,
        message,
    });
    let gguf_arch = hf_architecture
        .as_deref()
        .and_then(super::gguf_arch_for_hf)
        .map(String::from);
    let n_head = r.first_u32(&["num_attention_heads", "n_head", "num_heads", "n_heads"])?;
    let n_head_kv = if gguf_arch.as_deref() == Some("falcon") {
        // conversion/falcon.py: find_hparam(["num_kv_heads", "n_head_kv"]) or 1.
        Some(r.first_u32(&["num_kv_heads", "n_head_kv"])?.unwrap_or(1))
    } else {
        r.first_u32(&[
            "num_key_value_heads",
            "n_kv_heads",
            "num_kv_heads",
            "n_head_kv",
        ])?
        .or(n_head)
    };
    // The tie flag may sit at the top level of a multimodal config (Gemma 3) or in its text config.
    let tie_word_embeddings = r.boolean("tie_word_embeddings")?;
    Ok(Geometry {
        hf_architecture,
        gguf_arch,
        n_layer: r.first_u32(&["num_hidden_layers", "n_layer", "num_layers", "n_layers"])?,
        n_embd: r
            .first_u32(&["hidden_size", "n_embd", "d_model", "n_embed"])?
            .map(u64::from),
        n_head,
        n_head_kv,
        head_dim: r.first_u32(&["head_dim"])?,
        n_vocab: r
            .first_u32(&["vocab_size", "padded_vocab_size"])?
            .map(u64::from),
        n_expert: r.first_u32(&[
            "num_local_experts",
            "num_experts",
            "n_routed_experts",
            "moe_num_experts",
        ])?,
        n_ff_exp: r
            .first_u32(&["moe_intermediate_size", "intermediate_size"])?
            .map(u64::from),
        tie_word_embeddings,
        delta_net: match (
            r.first_u32(&["linear_num_key_heads"])?,
            r.first_u32(&["linear_num_value_heads"])?,
            r.first_u32(&["linear_key_head_dim"])?,
            r.first_u32(&["linear_value_head_dim"])?,
        ) {
            (Some(k_heads), Some(v_heads), Some(k_head_dim), Some(v_head_dim)) => {
                Some(crate::convert::factor::DeltaNetHeads {
                    k_heads,
                    v_heads,
                    k_head_dim,
                    v_head_dim,
                })
            }
            _ => None,
        },
    })
}
