//! Reading a reference pack (docs/reference-pack.md): `pack.json` + `pack.safetensors`, written by
//! `python -m lora_gguf.record` where the adapter was trained. Everything is checked on the way in — format and
//! version, every key's type, every tensor's dtype and shape against the JSON — so the comparison code can index
//! without checks, and a damaged pack is an error naming the file and key, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The pack's `format` string.
pub const FORMAT: &str = "lora-gguf-reference-pack";
/// The pack schema version this reader understands.
pub const VERSION: u64 = 1;
/// The JSON file in a pack directory.
pub const META_FILE: &str = "pack.json";

/// Why a pack cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// A file could not be read.
    #[error("reading `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A key or tensor is missing, has the wrong type or disagrees with the rest of the pack.
    #[error("`{path}`: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The JSON key path or tensor name.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// One recorded variant: the base (adapter disabled) or the adapter at a scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    /// `base`, `adapter@1`, `adapter@0.5` …
    pub name: String,
    /// 0 for the base, else the scale every LoRA scaling was multiplied by.
    pub scale: f32,
}

/// A golden prompt as the pack recorded it.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptSource {
    /// Raw text.
    Raw(String),
    /// Chat messages (role, content).
    Chat(Vec<(String, String)>),
}

/// The tokenizer the trainer used.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerFingerprint {
    /// Tokens including added ones.
    pub n_tokens: u64,
    /// SHA-256 of the vocabulary in id order (see [`super::fingerprint::vocab_sha256`]).
    pub vocab_sha256: String,
    /// `bos`, `eos`, `pad`, `unk` → (id, text).
    pub special_tokens: BTreeMap<String, (i64, String)>,
    /// Whether the tokenizer adds BOS to raw text.
    pub adds_bos: bool,
    /// Whether it adds EOS.
    pub adds_eos: bool,
    /// Added tokens beyond the base vocabulary: (id, text).
    pub added_tokens: Vec<(i64, String)>,
}

/// The base the pack was recorded on.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseFingerprint {
    /// Where it was loaded from.
    pub name_or_path: Option<String>,
    /// HF `architectures`.
    pub architectures: Vec<String>,
    /// HF `model_type`.
    pub model_type: Option<String>,
    /// Sizes from the config (`hidden_size`, `num_hidden_layers`, …).
    pub dims: BTreeMap<String, i64>,
    /// SHA-256 over every base tensor as loaded.
    pub weights_sha256: String,
    /// The GGUF a float copy was made from: (file name, SHA-256).
    pub derived_from: Option<(String, String)>,
}

/// The adapter the pack was recorded with.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterFingerprint {
    /// `base_model_name_or_path` from its config.
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    pub r: f64,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// `use_rslora`.
    pub use_rslora: bool,
    /// SHA-256 over the LoRA factors in memory.
    pub factors_sha256: String,
}

/// One prompt of the pack, with its teacher-forced positions.
#[derive(Clone, Debug, PartialEq)]
pub struct PackPrompt {
    /// Prompt id.
    pub id: String,
    /// `control` or `target`.
    pub kind: String,
    /// What the golden file said.
    pub source: PromptSource,
    /// The text the trainer's tokenizer saw (after the chat template).
    pub rendered: String,
    /// The trainer's token ids for the prompt.
    pub prompt_tokens: Vec<i32>,
    /// Greedy continuation of the base.
    pub base_continuation: Vec<i32>,
    /// Greedy continuation of the adapter at scale 1 (the teacher-forced sequence).
    pub adapter_continuation: Vec<i32>,
    /// Teacher-forced positions (= `adapter_continuation.len()`).
    pub positions: usize,
    /// Row width: the union of every variant's top-k ids, padded with −1.
    pub width: usize,
    /// `positions × width` token ids (−1 = padding, only at the end of a row).
    pub token_ids: Vec<i32>,
    /// `variants × positions × width` log-probabilities (−inf on padding).
    pub logprobs: Vec<f32>,
    /// `variants × positions` log-normalisers (logsumexp of the logits).
    pub log_normaliser: Vec<f32>,
}

impl PackPrompt {
    /// The sequence the recorder teacher-forced: prompt + adapter continuation without its last token.
    pub fn teacher_forced_feed(&self) -> Vec<i32> {
        let cont = &self.adapter_continuation;
        let mut feed = self.prompt_tokens.clone();
        feed.extend_from_slice(&cont[..cont.len() - 1]);
        feed
    }

    /// Position `p`'s recorded token ids (padding cut off).
    pub fn ids(&self, p: usize) -> &[i32] {
        let row = &self.token_ids[p * self.width..(p + 1) * self.width];
        let n = row.iter().position(|&t| t < 0).unwrap_or(row.len());
        &row[..n]
    }

    /// Variant `v`'s log-probs at position `p`, aligned with [`PackPrompt::ids`].
    pub fn logprobs(&self, v: usize, p: usize) -> &[f32] {
        let start = (v * self.positions + p) * self.width;
        &self.logprobs[start..start + self.ids(p).len()]
    }

    /// Variant `v`'s log-normaliser at position `p`.
    pub fn log_normaliser(&self, v: usize, p: usize) -> f32 {
        self.log_normaliser[v * self.positions + p]
    }
}

/// A reference pack, read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferencePack {
    /// The pack directory.
    pub dir: PathBuf,
    /// Schema version.
    pub version: u64,
    /// Top-k per variant and position.
    pub top_k: usize,
    /// Recorded variants; `base` and `adapter@1` are always there.
    pub variants: Vec<Variant>,
    /// Torch dtype the model ran in.
    pub dtype: String,
    /// Library versions (python, torch, transformers, peft …).
    pub libraries: BTreeMap<String, String>,
    /// The trainer's tokenizer.
    pub tokenizer: TokenizerFingerprint,
    /// The chat template given to the recorder, when not the tokenizer's own.
    pub chat_template: Option<String>,
    /// The base model.
    pub base: BaseFingerprint,
    /// The adapter.
    pub adapter: AdapterFingerprint,
    /// The prompts, in recording order.
    pub prompts: Vec<PackPrompt>,
}

impl ReferencePack {
    /// Index of the variant named `name`.
    pub fn variant(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|v| v.name == name)
    }

    /// Read and check the pack in `dir`.
    pub fn open(dir: &Path) -> Result<Self, PackError> {
        let json_path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&json_path).map_err(|source| PackError::Io {
            path: json_path.clone(),
            source,
        })?;
        let j = Json { path: &json_path };
        let root: Value =
            serde_json::from_str(&text).map_err(|e| j.bad("(file)", e.to_string()))?;
        let root = j.object(&root, "(top level)")?;
        let format = j.str(root, "", "format")?;
        if format != FORMAT {
            return Err(j.bad(
                "format",
                format!("is `{format}`, expected `{FORMAT}`: not a reference pack"),
            ));
        }
        let version = j.u64(root, "", "version")?;
        if version != VERSION {
            return Err(j.bad(
                "version",
                format!(
                    "pack schema version {version}; this lora-validate reads version {VERSION} — record the pack \
                     with the matching lora_gguf.record, or use a lora-validate that reads version {version}"
                ),
            ));
        }
        let top_k = j.u64(root, "", "top_k")? as usize;
        if top_k == 0 {
            return Err(j.bad("top_k", "must be at least 1".into()));
        }
        let variants = j
            .array(root, "", "variants")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let key = format!("variants[{i}]");
                let name = v
                    .as_str()
                    .ok_or_else(|| j.bad(&key, "expected a string".into()))?;
                let scale = match name.strip_prefix("adapter@") {
                    _ if name == "base" => 0.0,
                    Some(s) => s
                        .parse::<f32>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .ok_or_else(|| {
                            j.bad(
                                &key,
                                format!("`{name}`: the scale is not a positive number"),
                            )
                        })?,
                    None => {
                        return Err(j.bad(
                            &key,
                            format!("`{name}`: expected `base` or `adapter@SCALE`"),
                        ));
                    }
                };
                Ok(Variant {
                    name: name.to_string(),
                    scale,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for needed in ["base", "adapter@1"] {
            if !variants.iter().any(|v| v.name == needed) {
                return Err(j.bad("variants", format!("`{needed}` is missing")));
            }
        }
        let tensors_name = j.str(root, "", "tensors")?;
        if tensors_name.contains(['/', '\\']) || tensors_name.starts_with('.') {
            return Err(j.bad(
                "tensors",
                format!("`{tensors_name}` must be a file name inside the pack directory"),
            ));
        }
        let libraries = j
            .object(j.get(root, "", "libraries")?, "libraries")?
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    j.as_str(v, &format!("libraries.{k}"))?.to_string(),
                ))
            })
            .collect::<Result<_, PackError>>()?;
        let tokenizer = read_tokenizer(&j, j.object(j.get(root, "", "tokenizer")?, "tokenizer")?)?;
        let chat_template = match root.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(v) => Some(j.as_str(v, "chat_template")?.to_string()),
        };
        let base = read_base(&j, j.object(j.get(root, "", "base")?, "base")?)?;
        let adapter = read_adapter(&j, j.object(j.get(root, "", "adapter")?, "adapter")?)?;

        let tensor_path = dir.join(tensors_name);
        let bytes = std::fs::read(&tensor_path).map_err(|source| PackError::Io {
            path: tensor_path.clone(),
            source,
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| PackError::Invalid {
            path: tensor_path.clone(),
            key: "(file)".into(),
            message: format!("not a safetensors file: {e}"),
        })?;
        let tensors = Tensors {
            path: &tensor_path,
            st: &st,
        };
        let prompt_values = j.array(root, "", "prompts")?;
        if prompt_values.is_empty() {
            return Err(j.bad("prompts", "the pack has no prompts".into()));
        }
        let mut prompts = Vec::with_capacity(prompt_values.len());
        let mut ids = std::collections::BTreeSet::new();
        for (i, v) in prompt_values.iter().enumerate() {
            let p = read_prompt(&j, &tensors, i, v, variants.len())?;
            if !ids.insert(p.id.clone()) {
                return Err(j.bad(
                    &format!("prompts[{i}].id"),
                    format!("duplicate id `{}`", p.id),
                ));
            }
            prompts.push(p);
        }
        let expected = prompts.len() * 3;
        if st.len() != expected {
            let known: std::collections::BTreeSet<String> = (0..prompts.len())
                .flat_map(|i| {
                    ["token_ids", "logprobs", "log_normaliser"].map(|t| format!("prompts.{i}.{t}"))
                })
                .collect();
            let mut names = st.names();
            names.sort();
            let extra = names
                .into_iter()
                .find(|n| !known.contains(*n))
                .map_or_else(String::new, |n| n.to_string());
            return Err(PackError::Invalid {
                path: tensor_path,
                key: extra,
                message: format!(
                    "a tensor that pack.json does not describe ({} prompts → {expected} tensors, file has {})",
                    prompts.len(),
                    st.len()
                ),
            });
        }
        Ok(ReferencePack {
            dir: dir.to_path_buf(),
            version,
            top_k,
            variants,
            dtype: j.str(root, "", "dtype")?.to_string(),
            libraries,
            tokenizer,
            chat_template,
            base,
            adapter,
            prompts,
        })
    }
}

fn read_tokenizer(j: &Json, o: &Map<String, Value>) -> Result<TokenizerFingerprint, PackError> {
    let pre = "tokenizer.";
    let special_tokens = j
        .object(j.get(o, pre, "special_tokens")?, "tokenizer.special_tokens")?
        .iter()
        .map(|(k, v)| {
            let key = format!("tokenizer.special_tokens.{k}.");
            let o = j.object(v, &key)?;
            Ok((
                k.clone(),
                (j.i64(o, &key, "id")?, j.str(o, &key, "text")?.to_string()),
            ))
        })
        .collect::<Result<_, PackError>>()?;
    let added_tokens = j
        .array(o, pre, "added_tokens")?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let key = format!("tokenizer.added_tokens[{i}].");
            let o = j.object(v, &key)?;
            Ok((j.i64(o, &key, "id")?, j.str(o, &key, "text")?.to_string()))
        })
        .collect::<Result<_, PackError>>()?;
    let vocab_sha256 = j.str(o, pre, "vocab_sha256")?.to_string();
    if !is_sha256(&vocab_sha256) {
        return Err(j.bad(
            "tokenizer.vocab_sha256",
            "expected 64 lowercase hex digits".into(),
        ));
    }
    Ok(TokenizerFingerprint {
        n_tokens: j.u64(o, pre, "n_tokens")?,
        vocab_sha256,
        special_tokens,
        adds_bos: j.bool(o, pre, "adds_bos")?,
        adds_eos: j.bool(o, pre, "adds_eos")?,
        added_tokens,
    })
}

fn read_base(j: &Json, o: &Map<String, Value>) -> Result<BaseFingerprint, PackError> {
    let pre = "base.";
    let dims = j
        .object(j.get(o, pre, "dims")?, "base.dims")?
        .iter()
        .map(|(k, v)| match v {
            // `tie_word_embeddings` is a bool; the sizes are integers.
            Value::Bool(b) => Ok((k.clone(), i64::from(*b))),
            _ => v
                .as_i64()
                .map(|n| (k.clone(), n))
                .ok_or_else(|| j.bad(&format!("base.dims.{k}"), "expected an integer".into())),
        })
        .collect::<Result<_, PackError>>()?;
    let derived_from = match o.get("derived_from") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let key = "base.derived_from.";
            let d = j.object(v, key)?;
            Some((
                j.str(d, key, "gguf_file")?.to_string(),
                j.str(d, key, "gguf_sha256")?.to_string(),
            ))
        }
    };
    Ok(BaseFingerprint {
        name_or_path: j.opt_str(o, pre, "name_or_path")?,
        architectures: j
            .array(o, pre, "architectures")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Ok(j.as_str(v, &format!("base.architectures[{i}]"))?
                    .to_string())
            })
            .collect::<Result<_, PackError>>()?,
        model_type: j.opt_str(o, pre, "model_type")?,
        dims,
        weights_sha256: j.str(o, pre, "weights_sha256")?.to_string(),
        derived_from,
    })
}

fn read_adapter(j: &Json, o: &Map<String, Value>) -> Result<AdapterFingerprint, PackError> {
    let pre = "adapter.";
    Ok(AdapterFingerprint {
        base_model_name_or_path: j.opt_str(o, pre, "base_model_name_or_path")?,
        r: j.f64(o, pre, "r")?,
        lora_alpha: j.f64(o, pre, "lora_alpha")?,
        use_rslora: j.bool(o, pre, "use_rslora")?,
        factors_sha256: j.str(o, pre, "factors_sha256")?.to_string(),
    })
}

fn read_prompt(
    j: &Json,
    t: &Tensors,
    i: usize,
    v: &Value,
    n_variants: usize,
) -> Result<PackPrompt, PackError> {
    let pre = format!("prompts[{i}].");
    let o = j.object(v, &pre)?;
    let id = j.str(o, &pre, "id")?.to_string();
    let kind = j.str(o, &pre, "kind")?.to_string();
    if kind != "control" && kind != "target" {
        return Err(j.bad(
            &format!("{pre}kind"),
            format!("`{kind}`: expected control or target"),
        ));
    }
    let src_key = format!("{pre}source");
    let src = j.object(j.get(o, &pre, "source")?, &src_key)?;
    let source = match (src.get("prompt"), src.get("messages")) {
        (Some(p), None) => {
            PromptSource::Raw(j.as_str(p, &format!("{src_key}.prompt"))?.to_string())
        }
        (None, Some(Value::Array(ms))) if !ms.is_empty() => PromptSource::Chat(
            ms.iter()
                .enumerate()
                .map(|(k, m)| {
                    let key = format!("{src_key}.messages[{k}].");
                    let m = j.object(m, &key)?;
                    Ok((
                        j.str(m, &key, "role")?.to_string(),
                        j.str(m, &key, "content")?.to_string(),
                    ))
                })
                .collect::<Result<_, PackError>>()?,
        ),
        _ => {
            return Err(j.bad(
                &src_key,
                "expected {\"prompt\": text} or {\"messages\": [non-empty list]}".into(),
            ));
        }
    };
    let prompt_tokens = j.tokens(o, &pre, "prompt_tokens")?;
    let base_continuation = j.tokens(o, &pre, "base_continuation")?;
    let adapter_continuation = j.tokens(o, &pre, "adapter_continuation")?;
    for (name, list) in [
        ("prompt_tokens", &prompt_tokens),
        ("adapter_continuation", &adapter_continuation),
    ] {
        if list.is_empty() {
            return Err(j.bad(&format!("{pre}{name}"), "is empty".into()));
        }
    }
    let positions = j.u64(o, &pre, "positions")? as usize;
    let width = j.u64(o, &pre, "width")? as usize;
    if positions != adapter_continuation.len() {
        return Err(j.bad(
            &format!("{pre}positions"),
            format!(
                "{positions}, but the adapter continuation (the teacher-forced tokens) has {}",
                adapter_continuation.len()
            ),
        ));
    }
    if width == 0 {
        return Err(j.bad(&format!("{pre}width"), "must be at least 1".into()));
    }
    let token_ids = t.i32(&format!("prompts.{i}.token_ids"), &[positions, width])?;
    let logprobs = t.f32(
        &format!("prompts.{i}.logprobs"),
        &[n_variants, positions, width],
    )?;
    let log_normaliser = t.f32(
        &format!("prompts.{i}.log_normaliser"),
        &[n_variants, positions],
    )?;
    let p = PackPrompt {
        id,
        kind,
        source,
        rendered: j.str(o, &pre, "rendered")?.to_string(),
        prompt_tokens,
        base_continuation,
        adapter_continuation,
        positions,
        width,
        token_ids,
        logprobs,
        log_normaliser,
    };
    check_rows(t, i, &p, n_variants)?;
    Ok(p)
}

/// Rows hold distinct ids ≥ 0 followed only by −1 padding; log-probs are ≤ 0 (with rounding slack) and finite where
/// a token is, normalisers finite.
fn check_rows(t: &Tensors, i: usize, p: &PackPrompt, n_variants: usize) -> Result<(), PackError> {
    let bad = |tensor: &str, message: String| PackError::Invalid {
        path: t.path.to_path_buf(),
        key: format!("prompts.{i}.{tensor}"),
        message,
    };
    for pos in 0..p.positions {
        let row = &p.token_ids[pos * p.width..(pos + 1) * p.width];
        let n = p.ids(pos).len();
        if n == 0 {
            return Err(bad("token_ids", format!("position {pos} has no token ids")));
        }
        if row[n..].iter().any(|&x| x != -1) || row[..n].iter().any(|&x| x < 0) {
            return Err(bad(
                "token_ids",
                format!("position {pos}: ids must be ≥ 0, padded with −1 at the end only"),
            ));
        }
        let mut sorted = row[..n].to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad(
                "token_ids",
                format!("position {pos}: a token id occurs twice"),
            ));
        }
        for v in 0..n_variants {
            if let Some(x) = p
                .logprobs(v, pos)
                .iter()
                .find(|x| !x.is_finite() || **x > 1e-3)
            {
                return Err(bad(
                    "logprobs",
                    format!("variant {v}, position {pos}: {x} is not a log-probability"),
                ));
            }
            let lse = p.log_normaliser(v, pos);
            if !lse.is_finite() {
                return Err(bad(
                    "log_normaliser",
                    format!("variant {v}, position {pos}: {lse} is not finite"),
                ));
            }
        }
    }
    Ok(())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Typed access to `pack.json` with errors that name the key path.
struct Json<'a> {
    path: &'a Path,
}

impl Json<'_> {
    fn bad(&self, key: &str, message: String) -> PackError {
        PackError::Invalid {
            path: self.path.to_path_buf(),
            key: key.trim_end_matches('.').to_string(),
            message,
        }
    }

    fn get<'v>(
        &self,
        o: &'v Map<String, Value>,
        pre: &str,
        key: &str,
    ) -> Result<&'v Value, PackError> {
        o.get(key)
            .ok_or_else(|| self.bad(&format!("{pre}{key}"), "missing".into()))
    }

    fn object<'v>(&self, v: &'v Value, key: &str) -> Result<&'v Map<String, Value>, PackError> {
        v.as_object()
            .ok_or_else(|| self.bad(key, "expected a JSON object".into()))
    }

    fn as_str<'v>(&self, v: &'v Value, key: &str) -> Result<&'v str, PackError> {
        v.as_str()
            .ok_or_else(|| self.bad(key, "expected a string".into()))
    }

    fn str<'v>(
        &self,
        o: &'v Map<String, Value>,
        pre: &str,
        key: &str,
    ) -> Result<&'v str, PackError> {
        self.as_str(self.get(o, pre, key)?, &format!("{pre}{key}"))
    }

    fn opt_str(
        &self,
        o: &Map<String, Value>,
        pre: &str,
        key: &str,
    ) -> Result<Option<String>, PackError> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(self.as_str(v, &format!("{pre}{key}"))?.to_string())),
        }
    }

    fn u64(&self, o: &Map<String, Value>, pre: &str, key: &str) -> Result<u64, PackError> {
        self.get(o, pre, key)?.as_u64().ok_or_else(|| {
            self.bad(
                &format!("{pre}{key}"),
                "expected a non-negative integer".into(),
            )
        })
    }

    fn i64(&self, o: &Map<String, Value>, pre: &str, key: &str) -> Result<i64, PackError> {
        self.get(o, pre, key)?
            .as_i64()
            .ok_or_else(|| self.bad(&format!("{pre}{key}"), "expected an integer".into()))
    }

    fn f64(&self, o: &Map<String, Value>, pre: &str, key: &str) -> Result<f64, PackError> {
        self.get(o, pre, key)?
            .as_f64()
            .ok_or_else(|| self.bad(&format!("{pre}{key}"), "expected a number".into()))
    }

    fn bool(&self, o: &Map<String, Value>, pre: &str, key: &str) -> Result<bool, PackError> {
        self.get(o, pre, key)?
            .as_bool()
            .ok_or_else(|| self.bad(&format!("{pre}{key}"), "expected true or false".into()))
    }

    fn array<'v>(
        &self,
        o: &'v Map<String, Value>,
        pre: &str,
        key: &str,
    ) -> Result<&'v Vec<Value>, PackError> {
        self.get(o, pre, key)?
            .as_array()
            .ok_or_else(|| self.bad(&format!("{pre}{key}"), "expected a list".into()))
    }

    /// A list of token ids (non-negative, fitting i32).
    fn tokens(&self, o: &Map<String, Value>, pre: &str, key: &str) -> Result<Vec<i32>, PackError> {
        self.array(o, pre, key)?
            .iter()
            .enumerate()
            .map(|(k, v)| {
                v.as_u64()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(|| {
                        self.bad(&format!("{pre}{key}[{k}]"), "expected a token id".into())
                    })
            })
            .collect()
    }
}

/// Typed access to `pack.safetensors` with errors that name the tensor.
struct Tensors<'a> {
    path: &'a Path,
    st: &'a safetensors::SafeTensors<'a>,
}

impl Tensors<'_> {
    fn raw(
        &self,
        name: &str,
        dtype: safetensors::Dtype,
        shape: &[usize],
    ) -> Result<&[u8], PackError> {
        let bad = |message: String| PackError::Invalid {
            path: self.path.to_path_buf(),
            key: name.to_string(),
            message,
        };
        let t = self
            .st
            .tensor(name)
            .map_err(|_| bad("missing (pack.json describes it)".into()))?;
        if t.dtype() != dtype || t.shape() != shape {
            return Err(bad(format!(
                "is {:?} {:?}; pack.json implies {dtype:?} {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data())
    }

    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, PackError> {
        let data = self.raw(name, safetensors::Dtype::F32, shape)?;
        Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn i32(&self, name: &str, shape: &[usize]) -> Result<Vec<i32>, PackError> {
        let data = self.raw(name, safetensors::Dtype::I32, shape)?;
        Ok(data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/gemma-lora/reference-pack")
    }

    /// A copy of the committed pack with `edit` applied to its pack.json; the error's text.
    fn broken(edit: impl FnOnce(&mut Value)) -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut j: Value =
            serde_json::from_str(&std::fs::read_to_string(committed().join(META_FILE)).unwrap())
                .unwrap();
        edit(&mut j);
        std::fs::write(
            dir.path().join(META_FILE),
            serde_json::to_string(&j).unwrap(),
        )
        .unwrap();
        std::fs::copy(
            committed().join("pack.safetensors"),
            dir.path().join("pack.safetensors"),
        )
        .unwrap();
        let e = ReferencePack::open(dir.path()).unwrap_err().to_string();
        e.replace(&dir.path().display().to_string(), "PACK")
    }

    #[test]
    fn reads_the_committed_pack() {
        let p = ReferencePack::open(&committed()).unwrap();
        assert_eq!(p.version, 1);
        assert_eq!(p.top_k, 64);
        let names: Vec<&str> = p.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            ["base", "adapter@1", "adapter@0.5", "adapter@0.0625"]
        );
        assert_eq!(p.prompts.len(), 4);
        let q = &p.prompts[0];
        assert_eq!(q.positions, 16);
        assert_eq!(q.teacher_forced_feed().len(), q.prompt_tokens.len() + 15);
        // Each variant's own top-k is in the row: the base's top-1 is its first id.
        let lp = q.logprobs(0, 0);
        let best = lp.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(lp[0], best);
        assert!(q.ids(0).len() >= 64);
    }

    #[test]
    fn names_file_and_key_of_what_is_wrong() {
        assert_eq!(
            broken(|j| j["version"] = 2.into()),
            "`PACK/pack.json`: version: pack schema version 2; this lora-validate reads version 1 — record the pack \
             with the matching lora_gguf.record, or use a lora-validate that reads version 2"
        );
        assert_eq!(
            broken(|j| j["format"] = "x".into()),
            "`PACK/pack.json`: format: is `x`, expected `lora-gguf-reference-pack`: not a reference pack"
        );
        assert_eq!(
            broken(|j| {
                j["prompts"][1]
                    .as_object_mut()
                    .unwrap()
                    .remove("prompt_tokens");
            }),
            "`PACK/pack.json`: prompts[1].prompt_tokens: missing"
        );
        assert_eq!(
            broken(|j| j["prompts"][2]["adapter_continuation"][3] = (-5).into()),
            "`PACK/pack.json`: prompts[2].adapter_continuation[3]: expected a token id"
        );
        assert_eq!(
            broken(|j| j["variants"] =
                serde_json::json!(["base", "adapter@0.5", "adapter@x", "adapter@1"])),
            "`PACK/pack.json`: variants[2]: `adapter@x`: the scale is not a positive number"
        );
        assert_eq!(
            broken(|j| j["prompts"][0]["width"] = 3.into()),
            format!(
                "`PACK/pack.safetensors`: prompts.0.token_ids: is I32 [16, {w}]; pack.json implies I32 [16, 3]",
                w = ReferencePack::open(&committed()).unwrap().prompts[0].width
            )
        );
        assert_eq!(
            broken(|j| {
                j["prompts"].as_array_mut().unwrap().pop();
            }),
            "`PACK/pack.safetensors`: prompts.3.log_normaliser: a tensor that pack.json does not describe (3 prompts \
             → 9 tensors, file has 12)"
        );
    }

    #[test]
    fn a_damaged_tensor_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(committed().join(META_FILE), dir.path().join(META_FILE)).unwrap();
        let bytes = std::fs::read(committed().join("pack.safetensors")).unwrap();
        std::fs::write(
            dir.path().join("pack.safetensors"),
            &bytes[..bytes.len() / 2],
        )
        .unwrap();
        let e = ReferencePack::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("pack.safetensors`: (file): not a safetensors file"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("pack.safetensors")).unwrap();
        let e = ReferencePack::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with("reading `") && e.contains("pack.safetensors`"),
            "{e}"
        );
    }
}
