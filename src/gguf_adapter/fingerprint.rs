//! The base an adapter was converted against, recorded in the adapter (`lora-convert --base`), and the check of a
//! base against that record (`inspect --base`, `lora-validate`, `lora-convert merge`). docs/base-fingerprint.md
//! defines every field and both hashes; the type is serde so that other records (a training reference pack) can
//! hold the same fingerprint and be checked the same way.
//!
//! Stored as one GGUF string, [`keys::LORA_GGUF_BASE_FINGERPRINT`], holding the fingerprint as compact JSON (its
//! `version` first). Beside it the converter writes the standard `general.base_model.*` keys from the base's own
//! `general.*` names ([`base_model_metadata`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::gguf::{self, GgufFile, Value, keys};

/// The fingerprint format written today; a reader refuses a newer one by name rather than misreading it.
pub const VERSION: u32 = 1;

/// Bytes of each targeted tensor's data that [`BaseFingerprint::targets_prefix_sha256`] covers (64 KiB: 8 MiB
/// for the 126 targets of an all-linear Gemma 3 270M adapter, hashed in about 10 ms).
pub const DATA_PREFIX_BYTES: u64 = 1 << 16;

/// Hex digits of a sha256 shown in messages (the full digests are in `inspect --json`).
const SHORT_HASH: usize = 12;

/// What an adapter records about the base it was converted against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseFingerprint {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// The base's file name (shown, not compared: a renamed file is the same base).
    pub file: String,
    /// The base's `general.name`, when it has one (shown, not compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `general.architecture`.
    pub architecture: String,
    /// The dimensions that decide what fits and what the adapter means.
    pub dims: Dims,
    /// The tokenizer, when the base has one (`tokenizer.ggml.tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<Vocab>,
    /// Every base tensor the adapter modifies, sorted by name.
    pub targets: Vec<Target>,
    /// sha256 (hex) of the first [`DATA_PREFIX_BYTES`] of each target's data as stored in the base file (all of it
    /// when shorter), concatenated in `targets` order. A prefix, not the whole tensor: it tells another fine-tune or
    /// revision apart at a fixed cost per target, whatever the model's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_prefix_sha256: Option<String>,
}

/// Model dimensions, from the base's `{arch}.*` keys. A per-layer array is recorded as its largest value; a key the
/// base does not have is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    /// `{arch}.embedding_length` (hidden size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_embd: Option<u64>,
    /// `{arch}.block_count` (layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_layer: Option<u64>,
    /// `{arch}.feed_forward_length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_ff: Option<u64>,
    /// `{arch}.attention.head_count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_head: Option<u64>,
    /// `{arch}.attention.head_count_kv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_head_kv: Option<u64>,
    /// Rows of `token_embd.weight` (`ne[1]`), else the number of tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_vocab: Option<u64>,
    /// `{arch}.expert_count`, for a mixture of experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_expert: Option<u64>,
}

impl Dims {
    fn named(&self) -> [(&'static str, Option<u64>); 7] {
        [
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_ff", self.n_ff),
            ("n_head", self.n_head),
            ("n_head_kv", self.n_head_kv),
            ("n_vocab", self.n_vocab),
            ("n_expert", self.n_expert),
        ]
    }
}

/// The tokenizer, as llama.cpp reads it from the base.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    /// `tokenizer.ggml.model` (`llama`, `gpt2`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Number of tokens.
    pub n_tokens: u64,
    /// [`vocab_sha256`] of `tokenizer.ggml.tokens`.
    pub tokens_sha256: String,
    /// `tokenizer.ggml.bos_token_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_id: Option<u64>,
    /// `tokenizer.ggml.eos_token_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_id: Option<u64>,
}

/// One base tensor the adapter modifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its ggml type (`q4_K`, `f16`, …).
    #[serde(rename = "type")]
    pub ggml_type: String,
    /// Its ggml `ne`.
    pub ne: Vec<u64>,
}

/// One way a base differs from the recorded one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// What differs: `architecture`, `dims`, `vocabulary`, `special_tokens`, `target_missing`, `target_shape`,
    /// `target_type` or `target_data`.
    pub what: &'static str,
    /// The difference, its likely cause and what it means for the adapter.
    pub message: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a recorded fingerprint cannot be read or a base cannot be fingerprinted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// The adapter's fingerprint key is not a string of fingerprint JSON.
    #[error(
        "`{key}` in `{path}` is not a readable base fingerprint ({why}); reconvert the adapter with `lora-convert --base`"
    )]
    Malformed {
        /// The adapter.
        path: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The base file could not be read.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
}

impl BaseFingerprint {
    /// Fingerprint `base` for an adapter that modifies the tensors `targets` (the order does not matter; a name the
    /// base lacks is left out). With `hash_data`, the targets' bytes are read and hashed.
    pub fn of(
        base: &GgufFile,
        targets: &[&str],
        hash_data: bool,
    ) -> Result<Self, FingerprintError> {
        let architecture = base.architecture().unwrap_or_default().to_string();
        let dim = |suffix: &str| largest_u64(base, &keys::arch_key(&architecture, suffix));
        let vocab = vocab_of(base);
        let n_vocab = base
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .or(vocab.as_ref().map(|v| v.n_tokens));
        let mut names: Vec<&str> = targets.to_vec();
        names.sort_unstable();
        names.dedup();
        let targets: Vec<Target> = names
            .iter()
            .filter_map(|n| base.tensor(n))
            .map(|t| Target {
                name: t.name.clone(),
                ggml_type: t.ggml_type.name().to_string(),
                ne: t.dims.clone(),
            })
            .collect();
        let dims = Dims {
            n_embd: dim(keys::ARCH_EMBEDDING_LENGTH),
            n_layer: dim(keys::ARCH_BLOCK_COUNT),
            n_ff: dim(keys::ARCH_FEED_FORWARD_LENGTH),
            n_head: dim(keys::ARCH_ATTENTION_HEAD_COUNT),
            n_head_kv: dim(keys::ARCH_ATTENTION_HEAD_COUNT_KV),
            n_vocab,
            n_expert: dim(keys::ARCH_EXPERT_COUNT).filter(|&n| n > 0),
        };
        let targets_prefix_sha256 = if hash_data {
            Some(data_prefix_sha256(base, &targets)?)
        } else {
            None
        };
        Ok(BaseFingerprint {
            version: VERSION,
            file: base
                .path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            name: base.get_str(keys::GENERAL_NAME).map(str::to_string),
            architecture,
            dims,
            vocab,
            targets,
            targets_prefix_sha256,
        })
    }

    /// The fingerprint recorded in an adapter file, if any.
    pub fn read(adapter: &GgufFile) -> Result<Option<Self>, FingerprintError> {
        let key = keys::LORA_GGUF_BASE_FINGERPRINT;
        let Some(value) = adapter.get(key) else {
            return Ok(None);
        };
        let malformed = |why: String| FingerprintError::Malformed {
            path: adapter.path.display().to_string(),
            key,
            why,
        };
        let text = value
            .as_str()
            .ok_or_else(|| malformed(format!("it is {}, not a string", value.type_name())))?;
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        match json.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(malformed(format!(
                    "format version {v}; this lora-convert reads version {VERSION} — use a newer lora-gguf"
                )));
            }
            None => return Err(malformed("no `version`".into())),
        }
        serde_json::from_value(json)
            .map(Some)
            .map_err(|e| malformed(e.to_string()))
    }

    /// The GGUF entry that records this fingerprint.
    pub fn metadata_entry(&self) -> (String, Value) {
        let json = serde_json::to_string(self).unwrap_or_default();
        (
            keys::LORA_GGUF_BASE_FINGERPRINT.to_string(),
            Value::String(json),
        )
    }

    /// Every way `base` differs from this record, most fundamental first; empty when it is the recorded base (a
    /// renamed copy included). Reads the targets' data only when the data hash was recorded and everything else
    /// about the targets agrees.
    pub fn differences(&self, base: &GgufFile) -> Result<Vec<Difference>, FingerprintError> {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        let actual = BaseFingerprint::of(base, &names, false)?;
        let mut out = Vec::new();
        let mut diff = |what, message: String| out.push(Difference { what, message });
        if self.architecture != actual.architecture {
            diff(
                "architecture",
                format!(
                    "architecture differs (recorded `{}`, base `{}`): the adapter was converted for another model \
                     family",
                    self.architecture, actual.architecture
                ),
            );
        }
        let dims: Vec<String> = self
            .dims
            .named()
            .iter()
            .zip(actual.dims.named())
            .filter(|((_, r), (_, a))| r.is_some() && r != a)
            .map(|((name, r), (_, a))| format!("{name} {} ≠ {}", show(*r), show(a)))
            .collect();
        if !dims.is_empty() {
            diff(
                "dims",
                format!(
                    "dimensions differ (recorded ≠ base: {}): the adapter was converted against another model size",
                    dims.join(", ")
                ),
            );
        }
        match (&self.vocab, &actual.vocab) {
            (Some(r), Some(a)) if r.tokens_sha256 != a.tokens_sha256 => diff(
                "vocabulary",
                format!(
                    "vocabulary differs (sha256 {}… ≠ {}…, {} vs {} tokens): the adapter was converted against \
                     another tokenizer",
                    short(&r.tokens_sha256),
                    short(&a.tokens_sha256),
                    r.n_tokens,
                    a.n_tokens
                ),
            ),
            (Some(_), None) => diff(
                "vocabulary",
                "vocabulary differs: the recorded base had a tokenizer, this base has none".into(),
            ),
            _ => {}
        }
        if let (Some(r), Some(a)) = (&self.vocab, &actual.vocab)
            && (r.bos_id != a.bos_id || r.eos_id != a.eos_id)
        {
            diff(
                "special_tokens",
                format!(
                    "special tokens differ (BOS {} ≠ {}, EOS {} ≠ {}): prompts are framed differently than on the \
                     recorded base",
                    show(r.bos_id),
                    show(a.bos_id),
                    show(r.eos_id),
                    show(a.eos_id)
                ),
            );
        }
        let found: BTreeMap<&str, &Target> = actual
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let (mut missing, mut shapes, mut types) = (Vec::new(), Vec::new(), Vec::new());
        for r in &self.targets {
            match found.get(r.name.as_str()) {
                None => missing.push(r.name.as_str()),
                Some(a) if a.ne != r.ne => {
                    shapes.push(format!("`{}` ne {:?} ≠ {:?}", r.name, r.ne, a.ne))
                }
                Some(a) if a.ggml_type != r.ggml_type => {
                    types.push(format!("`{}` {} ≠ {}", r.name, r.ggml_type, a.ggml_type))
                }
                Some(_) => {}
            }
        }
        if !missing.is_empty() {
            diff(
                "target_missing",
                format!(
                    "{} of the {} targeted tensors are not in the base ({}): another model",
                    missing.len(),
                    self.targets.len(),
                    first_few(missing.iter().map(|n| format!("`{n}`")))
                ),
            );
        }
        if !shapes.is_empty() {
            diff(
                "target_shape",
                format!(
                    "{} targeted tensors have other shapes (recorded ≠ base: {}): another model",
                    shapes.len(),
                    first_few(shapes.into_iter())
                ),
            );
        }
        if !types.is_empty() {
            diff(
                "target_type",
                format!(
                    "{} targeted tensors have other types (recorded ≠ base: {}): another quantization of the model — \
                     expected if you deploy another quantization than you converted against",
                    types.len(),
                    first_few(types.into_iter())
                ),
            );
        }
        if out.is_empty()
            && let Some(recorded) = &self.targets_prefix_sha256
        {
            let now = data_prefix_sha256(base, &actual.targets)?;
            if &now != recorded {
                out.push(Difference {
                    what: "target_data",
                    message: format!(
                        "the targeted tensors' weights differ (sha256 of their first bytes {}… ≠ {}…) with the same names, shapes and \
                         types: another fine-tune or revision of the model",
                        short(recorded),
                        short(&now)
                    ),
                });
            }
        }
        Ok(out)
    }
}

/// The standard `general.base_model.*` entries naming `base` (from its `general.name`, `general.organization`,
/// `general.version` and `general.repo_url`); none when the base has no `general.name`.
pub fn base_model_metadata(base: &GgufFile) -> Vec<(String, Value)> {
    let Some(name) = base.get_str(keys::GENERAL_NAME) else {
        return Vec::new();
    };
    let mut kv = vec![
        (keys::GENERAL_BASE_MODEL_COUNT.to_string(), Value::U32(1)),
        (
            keys::base_model_key(0, "name"),
            Value::String(name.to_string()),
        ),
    ];
    for (key, field) in [
        (keys::GENERAL_ORGANIZATION, "organization"),
        (keys::GENERAL_VERSION, "version"),
        (keys::GENERAL_REPO_URL, "repo_url"),
    ] {
        if let Some(v) = base.get_str(key) {
            kv.push((keys::base_model_key(0, field), Value::String(v.to_string())));
        }
    }
    kv
}

/// Check an adapter's recorded base against the base it is used with (`lora-validate`, `lora-convert merge`).
/// `Ok(None)`: the base is the recorded one, or the adapter records none and `strict` is off. `Ok(Some(warning))`:
/// it differs (or the record is unreadable) and `strict` is off. `Err(refusal)`: `strict` is on and the adapter
/// records no fingerprint, an unreadable one, or another base. Messages name the adapter, the base and each
/// difference, and say what to do.
pub fn check_base(
    adapter: &GgufFile,
    base: &GgufFile,
    strict: bool,
) -> Result<Option<String>, String> {
    let (a, b) = (adapter.path.display(), base.path.display());
    let recorded = match BaseFingerprint::read(adapter) {
        Ok(Some(f)) => f,
        Ok(None) if strict => {
            return Err(format!(
                "--strict-base: `{a}` records no base fingerprint, so it cannot be checked against `{b}`; reconvert it \
                 with `lora-convert ADAPTER_DIR -o {a} --base {b}` (which records it), or drop --strict-base"
            ));
        }
        Ok(None) => return Ok(None),
        Err(e) if strict => return Err(format!("--strict-base: {e}")),
        Err(e) => {
            return Ok(Some(format!(
                "{e}; the base `{b}` was not checked against it"
            )));
        }
    };
    let differences = recorded.differences(base).map_err(|e| e.to_string())?;
    if differences.is_empty() {
        return Ok(None);
    }
    let list: String = differences.iter().map(|d| format!("\n  - {d}")).collect();
    let what = format!(
        "`{a}` was converted against `{}`, and `{b}` is not that base ({} difference(s)):{list}",
        recorded.file,
        differences.len()
    );
    if strict {
        Err(format!(
            "--strict-base: {what}\nGive the base it was converted against, or reconvert the adapter against this one \
             (`lora-convert ADAPTER_DIR -o OUT.gguf --base {b}`)."
        ))
    } else {
        Ok(Some(format!(
            "{what}\nThe adapter may still load, but it was not trained for this base: check its output, or pass \
             --strict-base to refuse."
        )))
    }
}

/// sha256 (hex) of a vocabulary, the hash a training reference pack records too (`reference::fingerprint`): for
/// each token in id order, with SentencePiece's word marker U+2581 read as a space, its UTF-8 byte length as a
/// little-endian u32, then its bytes.
pub use crate::reference::fingerprint::vocab_sha256;

fn vocab_of(base: &GgufFile) -> Option<Vocab> {
    let tokens = base.get(keys::TOKENIZER_TOKENS)?.as_array()?;
    Some(Vocab {
        model: base.get_str(keys::TOKENIZER_MODEL).map(str::to_string),
        n_tokens: tokens.len() as u64,
        tokens_sha256: vocab_sha256(tokens.values.iter().map(|v| v.as_str().unwrap_or(""))),
        bos_id: base.get_u64(keys::TOKENIZER_BOS_ID),
        eos_id: base.get_u64(keys::TOKENIZER_EOS_ID),
    })
}

/// sha256 of the first [`DATA_PREFIX_BYTES`] of each target's data, read from the base file.
fn data_prefix_sha256(base: &GgufFile, targets: &[Target]) -> Result<String, FingerprintError> {
    let io = |source| gguf::Error::Io {
        path: base.path.clone(),
        source,
    };
    let mut file = File::open(&base.path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; DATA_PREFIX_BYTES as usize];
    for t in targets {
        let (start, len) = base.tensor_range(&t.name)?;
        let mut left = len.min(DATA_PREFIX_BYTES);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let chunk = buf.get_mut(..n).unwrap_or_default();
            file.read_exact(chunk).map_err(io)?;
            h.update(&*chunk);
            left -= n as u64;
        }
    }
    Ok(hex(&h.finalize()))
}

/// An integer key; a per-layer array as its largest value.
fn largest_u64(file: &GgufFile, key: &str) -> Option<u64> {
    let v = file.get(key)?;
    v.as_u64()
        .or_else(|| v.as_array()?.values.iter().filter_map(Value::as_u64).max())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn short(hash: &str) -> &str {
    hash.get(..SHORT_HASH).unwrap_or(hash)
}

fn show(x: Option<u64>) -> String {
    x.map_or_else(|| "none".into(), |x| x.to_string())
}

/// The first three items, then how many more.
fn first_few(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    let mut text = items.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 3 {
        text.push_str(&format!(", and {} more", items.len() - 3));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::gguf::{TensorSpec, Writer};

    const TARGETS: [&str; 3] = [
        "blk.0.attn_q.weight",
        "blk.1.ffn_down.weight",
        "blk.0.attn_k.weight",
    ];

    fn llama_base() -> GgufFile {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bases/llama/base.gguf");
        GgufFile::open(&path).unwrap()
    }

    /// A copy of `src` at `dst` with `edit_kv` applied to every metadata value and `edit_tensor` to every tensor's
    /// bytes.
    fn copy(
        src: &GgufFile,
        dst: &Path,
        edit_kv: impl Fn(&str, &mut Value),
        edit_tensor: impl Fn(&str, &mut Vec<u8>),
    ) -> GgufFile {
        let metadata: Vec<(String, Value)> = src
            .metadata
            .iter()
            .cloned()
            .map(|(k, mut v)| {
                edit_kv(&k, &mut v);
                (k, v)
            })
            .collect();
        let specs: Vec<TensorSpec> = src
            .tensors
            .iter()
            .map(|t| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ggml_type))
            .collect();
        let mut w = Writer::new(std::fs::File::create(dst).unwrap(), &metadata, &specs).unwrap();
        for t in &src.tensors {
            let mut bytes = src.read_tensor_bytes(&t.name).unwrap();
            edit_tensor(&t.name, &mut bytes);
            w.write_tensor(&t.name, &bytes).unwrap();
        }
        w.finish().unwrap();
        GgufFile::open(dst).unwrap()
    }

    fn recorded() -> BaseFingerprint {
        BaseFingerprint::of(&llama_base(), &TARGETS, true).unwrap()
    }

    fn tmp(dir: &tempfile::TempDir, name: &str) -> PathBuf {
        dir.path().join(name)
    }

    #[test]
    fn vocab_hash_is_the_reference_packs() {
        // Python (docs/base-fingerprint.md): b = t.replace("\u2581", " ").encode(); struct.pack("<I", len(b)) + b.
        assert_eq!(
            vocab_sha256(["<s>", "a", "bc", "é", "\u{2581}x"]),
            "6ea9e1f50f0a7b3b92b5f039ef4b97f16cd434afac8cf013522a2624d30d5fc6"
        );
        assert_ne!(vocab_sha256(["ab", "c"]), vocab_sha256(["a", "bc"]));
    }

    #[test]
    fn fingerprint_of_the_llama_fixture_base() {
        let f = recorded();
        assert_eq!(f.version, VERSION);
        assert_eq!(f.file, "base.gguf");
        assert_eq!(f.architecture, "llama");
        let b = llama_base();
        let get = |k: &str| b.get_u64(&keys::arch_key("llama", k));
        assert_eq!(f.dims.n_embd, get(keys::ARCH_EMBEDDING_LENGTH));
        assert_eq!(f.dims.n_layer, get(keys::ARCH_BLOCK_COUNT));
        assert_eq!(f.dims.n_head_kv, get(keys::ARCH_ATTENTION_HEAD_COUNT_KV));
        assert_eq!(f.dims.n_expert, None);
        let vocab = f.vocab.as_ref().unwrap();
        // The same digest from gguf-py's reader and hashlib (docs/base-fingerprint.md).
        assert_eq!(
            (vocab.n_tokens, vocab.tokens_sha256.as_str()),
            (
                272,
                "f236effb16e5e40a0ef9ae99305cb2a413c4be7f450236cf349aaf267f41f361"
            )
        );
        assert_eq!(f.dims.n_vocab, Some(272));
        let names: Vec<&str> = f.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blk.0.attn_k.weight",
                "blk.0.attn_q.weight",
                "blk.1.ffn_down.weight"
            ]
        );
        assert_eq!(
            f.targets[1].ne,
            b.tensor("blk.0.attn_q.weight").unwrap().dims
        );
        // The prefix hash is over the targets' data (these tensors are shorter than the prefix: all of it).
        let mut h = Sha256::new();
        for t in &f.targets {
            assert!(b.tensor(&t.name).unwrap().n_bytes() <= DATA_PREFIX_BYTES);
            h.update(b.read_tensor_bytes(&t.name).unwrap());
        }
        assert_eq!(f.targets_prefix_sha256, Some(hex(&h.finalize())));
    }

    #[test]
    fn the_recorded_base_and_a_renamed_copy_match() {
        let dir = tempfile::tempdir().unwrap();
        let copy = copy(
            &llama_base(),
            &tmp(&dir, "renamed.gguf"),
            |_, _| {},
            |_, _| {},
        );
        assert_eq!(recorded().differences(&llama_base()).unwrap(), []);
        assert_eq!(recorded().differences(&copy).unwrap(), []);
    }

    #[test]
    fn another_tokenizer_is_named_with_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let other = copy(
            &llama_base(),
            &tmp(&dir, "other.gguf"),
            |k, v| {
                if k == keys::TOKENIZER_TOKENS
                    && let Value::Array(a) = v
                {
                    a.values[5] = Value::String("<changed>".into());
                }
            },
            |_, _| {},
        );
        let d = recorded().differences(&other).unwrap();
        let actual = vocab_of(&other).unwrap().tokens_sha256;
        assert_eq!(
            d,
            [Difference {
                what: "vocabulary",
                message: format!(
                    "vocabulary differs (sha256 f236effb16e5… ≠ {}…, 272 vs 272 tokens): the adapter was converted \
                     against another tokenizer",
                    &actual[..12]
                ),
            }]
        );
    }

    #[test]
    fn other_weights_of_the_same_shapes_are_a_data_difference() {
        let dir = tempfile::tempdir().unwrap();
        let other = copy(
            &llama_base(),
            &tmp(&dir, "finetuned.gguf"),
            |_, _| {},
            |name, bytes| {
                if name == "blk.1.ffn_down.weight" {
                    bytes[0] ^= 1;
                }
            },
        );
        let d = recorded().differences(&other).unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].what, "target_data");
        assert!(
            d[0].message.ends_with(
                "with the same names, shapes and types: another fine-tune or revision of the model"
            ),
            "{}",
            d[0].message
        );
        // A tensor the adapter does not target may differ.
        let untargeted = copy(
            &llama_base(),
            &tmp(&dir, "untargeted.gguf"),
            |_, _| {},
            |name, bytes| {
                if name == "output.weight" {
                    bytes[0] ^= 1;
                }
            },
        );
        assert_eq!(recorded().differences(&untargeted).unwrap(), []);
    }

    #[test]
    fn another_model_lists_architecture_dims_and_targets() {
        let qwen = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bases/qwen2/base.gguf");
        let d = recorded()
            .differences(&GgufFile::open(&qwen).unwrap())
            .unwrap();
        let what: Vec<&str> = d.iter().map(|d| d.what).collect();
        assert_eq!(what[0], "architecture", "{d:?}");
        assert_eq!(
            d[0].message,
            "architecture differs (recorded `llama`, base `qwen2`): the adapter was converted for another model family"
        );
        assert!(!what.contains(&"target_data"), "{d:?}");
    }

    #[test]
    fn the_record_round_trips_through_its_gguf_entry() {
        let f = recorded();
        let (key, value) = f.metadata_entry();
        assert_eq!(key, "lora_gguf.base_fingerprint");
        let text = value.as_str().unwrap().to_string();
        assert!(
            text.starts_with(r#"{"version":1,"file":"base.gguf","#),
            "{text}"
        );
        let mut file = llama_base();
        file.metadata.push((key, value));
        assert_eq!(BaseFingerprint::read(&file).unwrap(), Some(f));
        assert_eq!(BaseFingerprint::read(&llama_base()).unwrap(), None);
    }

    #[test]
    fn an_unreadable_or_newer_record_is_an_error_naming_the_key() {
        let mut file = llama_base();
        let path = file.path.display().to_string();
        file.metadata.push((
            keys::LORA_GGUF_BASE_FINGERPRINT.into(),
            Value::String(r#"{"version":2}"#.into()),
        ));
        assert_eq!(
            BaseFingerprint::read(&file).unwrap_err().to_string(),
            format!(
                "`lora_gguf.base_fingerprint` in `{path}` is not a readable base fingerprint (format version 2; \
                 this lora-convert reads version 1 — use a newer lora-gguf); reconvert the adapter with \
                 `lora-convert --base`"
            )
        );
        file.metadata.last_mut().unwrap().1 = Value::U32(1);
        assert!(
            BaseFingerprint::read(&file)
                .unwrap_err()
                .to_string()
                .contains("(it is u32, not a string)")
        );
    }

    #[test]
    fn base_model_keys_name_the_base() {
        let kv = base_model_metadata(&llama_base());
        let keys: Vec<&str> = kv.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["general.base_model.count", "general.base_model.0.name"]
        );
        assert_eq!(kv[0].1, Value::U32(1));
        assert_eq!(kv[1].1.as_str(), llama_base().get_str(keys::GENERAL_NAME));
    }
}
