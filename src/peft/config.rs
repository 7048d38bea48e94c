//! `adapter_config.json`: the fields that change what the adapter computes, read strictly. Everything a GGUF
//! LoRA cannot express is refused here with the key that causes it and what to do instead.

use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;

use crate::adapter::{Error, Scaling};
use crate::json_fields::Fields;

/// `init_lora_weights` values whose adapter only works against a base model that PEFT modified at
/// initialisation (peft 0.21.2 `tuners/lora/layer.py`: pissa/olora/corda/lora_ga subtract from the base weight,
/// loftq replaces it with a quantised residual). `save_pretrained(path_initial_model_for_weight_conversion=…)`
/// converts such adapters into plain LoRA and resets the value to `true` (`peft_model.py`).
const BASE_MUTATING_INITS: &[&str] = &["pissa", "olora", "corda", "loftq", "lora_ga"];

/// The configuration of a PEFT LoRA adapter.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// `peft_type` (always `LORA` once accepted).
    pub peft_type: String,
    /// `base_model_name_or_path`.
    pub base_model_name_or_path: Option<String>,
    /// `r`.
    pub rank: u32,
    /// `lora_alpha` (int or float in the file).
    pub alpha: f64,
    /// `use_rslora`.
    pub use_rslora: bool,
    /// `rank_pattern`, in file order (PEFT takes the first matching key).
    pub rank_pattern: Vec<(String, u32)>,
    /// `alpha_pattern`, in file order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// `fan_in_fan_out` (GPT-2 Conv1D); B·A is (out, in) either way, so it changes nothing for us.
    pub fan_in_fan_out: bool,
    /// `target_modules`, as written.
    pub target_modules: Option<Value>,
    /// `layers_to_transform`, as written.
    pub layers_to_transform: Option<Value>,
    /// `target_parameters`: `nn.Parameter`s wrapped by PEFT's `ParamWrapper` (transformers 5 fused experts, routers).
    pub target_parameters: Vec<String>,
    /// `alora_invocation_tokens` (activated LoRA).
    pub alora_invocation_tokens: Option<Vec<u32>>,
    /// `task_type`.
    pub task_type: Option<String>,
    /// `modules_to_save`, as written (a non-empty list is refused).
    pub modules_to_save: Option<Value>,
    /// `init_lora_weights`, as written.
    pub init_lora_weights: Option<Value>,
    /// Every top-level key, in file order (trainers leave recognisable sets; see `peft::trainer`).
    pub keys: Vec<String>,
    rank_regexes: Vec<Regex>,
    alpha_regexes: Vec<Regex>,
}

impl AdapterConfig {
    /// Parse and check `adapter_config.json` text; the first refusal is the error.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, Error> {
        let (config, refusals) = Self::read(text, path)?;
        crate::adapter::unless_refused(config, refusals)
    }

    /// Parse `adapter_config.json` text, returning every refusal beside the configuration (`lora-convert inspect`
    /// lists them all). Errors: invalid JSON, a malformed or missing field, or a `peft_type` other than LoRA (then
    /// nothing else in the file means what a LoRA config means).
    pub fn read(text: &str, path: &Path) -> Result<(Self, Vec<Error>), Error> {
        let map = Error::config_object(text, path)?;
        let cfg = Reader::new(path, &map, Error::config_field);
        let refusals = refusals(&cfg, path)?;
        if let Some(wrong_type) = refusals
            .iter()
            .position(|e| matches!(e, Error::Unsupported { key, .. } if key == "peft_type"))
        {
            return Err(refusals
                .into_iter()
                .nth(wrong_type)
                .unwrap_or_else(|| cfg.error("peft_type", "is not LORA".into())));
        }

        let peft_type = cfg.string("peft_type")?.unwrap_or_else(|| "LORA".into());
        let rank = cfg
            .positive_u32("r")?
            .ok_or_else(|| missing(&cfg, "r", "the LoRA rank"))?;
        let alpha = cfg
            .number("lora_alpha")?
            .ok_or_else(|| missing(&cfg, "lora_alpha", "the LoRA alpha"))?;
        let rank_pattern = pattern(&cfg, "rank_pattern", |key, v| {
            v.as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .filter(|&r| r > 0)
                .ok_or_else(|| {
                    cfg.error(
                        &format!("rank_pattern.{key}"),
                        format!("expected a positive integer rank, found {v}"),
                    )
                })
        })?;
        let alpha_pattern = pattern(&cfg, "alpha_pattern", |key, v| {
            v.as_f64().ok_or_else(|| {
                cfg.error(
                    &format!("alpha_pattern.{key}"),
                    format!("expected a number, found {v}"),
                )
            })
        })?;
        let rank_regexes =
            compile_patterns(&cfg, "rank_pattern", rank_pattern.iter().map(|(k, _)| k))?;
        let alpha_regexes =
            compile_patterns(&cfg, "alpha_pattern", alpha_pattern.iter().map(|(k, _)| k))?;
        let alora_invocation_tokens = match map.get("alora_invocation_tokens") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| {
                        cfg.error(
                            "alora_invocation_tokens",
                            "expected a list of token ids".into(),
                        )
                    })?,
            ),
            Some(other) => {
                return Err(cfg.error(
                    "alora_invocation_tokens",
                    format!("expected a list of token ids, found {other}"),
                ));
            }
        };
        let config = AdapterConfig {
            path: path.to_path_buf(),
            peft_type,
            base_model_name_or_path: cfg.string("base_model_name_or_path")?,
            rank,
            alpha,
            use_rslora: cfg.boolean("use_rslora")?.unwrap_or(false),
            rank_pattern,
            alpha_pattern,
            fan_in_fan_out: cfg.boolean("fan_in_fan_out")?.unwrap_or(false),
            target_modules: map.get("target_modules").filter(|v| !v.is_null()).cloned(),
            layers_to_transform: map
                .get("layers_to_transform")
                .filter(|v| !v.is_null())
                .cloned(),
            target_parameters: cfg
                .strings("target_parameters", "a list of names")?
                .unwrap_or_default(),
            alora_invocation_tokens,
            task_type: cfg.string("task_type")?,
            modules_to_save: cfg.get("modules_to_save").cloned(),
            init_lora_weights: cfg.get("init_lora_weights").cloned(),
            keys: map.keys().cloned().collect(),
            rank_regexes,
            alpha_regexes,
        };
        Ok((config, refusals))
    }

    /// The parameters of `module` that `target_parameters` wraps (`gate_up_proj`, `down_proj`, `weight` …), in
    /// file order. A ParamWrapper's factors are saved under the module's path (nested wrappers add `base_layer`),
    /// so the parameter a pair belongs to is told from its shape, not from these names alone.
    pub fn targeted_parameters(&self, module: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for entry in &self.target_parameters {
            let param = entry.rsplit('.').next().unwrap_or(entry);
            if targets_parameter(entry, module, param) && !out.iter().any(|p| p == param) {
                out.push(param.to_string());
            }
        }
        out
    }

    /// PEFT's scaling for `module` (the module path without `base_model.model.`).
    ///
    /// peft 0.21.2 `LoraModel._create_and_replace` looks up `get_pattern_key(pattern.keys(), current_key)`
    /// (`utils/other.py`): the FIRST key (in file order) for which `re.match(rf"(.*\.)?({key})$", current_key)`
    /// matches, i.e. the key is a regular expression that must match a whole dotted suffix of the module path.
    pub fn scaling_for(&self, module: &str) -> Scaling {
        let rank =
            first_match(&self.rank_regexes, module).map_or(self.rank, |i| self.rank_pattern[i].1);
        let alpha = first_match(&self.alpha_regexes, module)
            .map_or(self.alpha, |i| self.alpha_pattern[i].1);
        Scaling {
            alpha,
            rank,
            rslora: self.use_rslora,
            absolute: None,
        }
    }
}

/// peft 0.21.2 `BaseTuner._inject_parameters`: the parameter `param` of `module` is targeted when
/// `f"{module}.{param}"` equals an entry of `target_parameters` or ends with `.` + that entry.
fn targets_parameter(entry: &str, module: &str, param: &str) -> bool {
    let key = format!("{module}.{param}");
    key == entry || key.ends_with(&format!(".{entry}"))
}

fn first_match(regexes: &[Regex], module: &str) -> Option<usize> {
    regexes.iter().position(|re| re.is_match(module))
}

fn compile_patterns<'a>(
    cfg: &Reader<'_>,
    name: &str,
    keys: impl Iterator<Item = &'a String>,
) -> Result<Vec<Regex>, Error> {
    keys.map(|key| {
        // `re.match` anchors at the start; the pattern adds `$`; `(.*\.)?` allows any dotted prefix.
        Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| {
            cfg.error(
                &format!("{name}.{key}"),
                format!(
                    "this key is not a regular expression we can evaluate like Python's `re` ({e})"
                ),
            )
        })
    })
    .collect()
}

/// The fields of `adapter_config.json`, errors as `ConfigField`.
type Reader<'a> = Fields<'a, Error>;

fn missing(cfg: &Reader<'_>, key: &str, what: &str) -> Error {
    cfg.error(
        key,
        format!("missing ({what}); is this a PEFT LoRA adapter_config.json?"),
    )
}

/// An object of module pattern → value (`rank_pattern`, `alpha_pattern`), each value read by `value`.
fn pattern<T>(
    cfg: &Reader<'_>,
    key: &str,
    value: impl Fn(&str, &Value) -> Result<T, Error>,
) -> Result<Vec<(String, T)>, Error> {
    match cfg.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), value(k, v)?)))
            .collect(),
        Some(other) => Err(cfg.error(
            key,
            format!("expected an object of module pattern → value, found {other}"),
        )),
    }
}

/// Everything a GGUF LoRA adapter cannot express, all of it (a field of the wrong type is an error).
fn refusals(cfg: &Reader<'_>, path: &Path) -> Result<Vec<Error>, Error> {
    let mut out = Vec::new();
    let mut refuse = |key: &str, message: &str| {
        out.push(Error::Unsupported {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.to_string(),
        })
    };
    if let Some(t) = cfg.string("peft_type")?
        && t != "LORA"
    {
        let name = match t.as_str() {
            "LOHA" => "LoHa",
            "LOKR" => "LoKr",
            "IA3" => "IA³",
            "ADALORA" => "AdaLoRA",
            "VERA" => "VeRA",
            "BOFT" => "BOFT",
            "OFT" => "OFT",
            "FOURIERFT" => "FourierFT",
            _ => t.as_str(),
        };
        refuse(
            "peft_type",
            &format!(
                "is `{t}` ({name}); llama.cpp only runs LoRA (B·A) adapters — merge this adapter into the \
                     base model and convert the merged model instead"
            ),
        );
        return Ok(out);
    }
    if cfg.boolean("use_dora")? == Some(true) {
        refuse(
            "use_dora",
            "is true: DoRA rescales each output row of the adapted weight to a learned magnitude, which a GGUF \
             LoRA adapter cannot express — merge it into the base model instead: `lora-convert merge --base \
             BASE.gguf --adapter DIR -o MERGED.gguf`",
        );
    }
    if cfg.boolean("lora_bias")? == Some(true) {
        refuse(
            "lora_bias",
            "is true: llama.cpp LoRA has no bias term — retrain with lora_bias=False, or merge",
        );
    }
    if let Some(bias) = cfg.string("bias")?
        && bias != "none"
    {
        refuse(
            "bias",
            &format!(
                "is `{bias}`: the adapter trains base biases, which a GGUF LoRA cannot carry — retrain with \
                 bias=\"none\", or merge"
            ),
        );
    }
    if let Some(m) = cfg.get("modules_to_save")
        && m.as_array().is_none_or(|a| !a.is_empty())
    {
        refuse("modules_to_save", &modules_to_save_message(m));
    }
    if cfg.get("trainable_token_indices").is_some() {
        refuse(
            "trainable_token_indices",
            "is set: trainable token deltas are not LoRA and llama.cpp cannot apply them — merge instead",
        );
    }
    if let Some(Value::String(init)) = cfg.get("init_lora_weights") {
        let lower = init.to_ascii_lowercase();
        if let Some(kind) = BASE_MUTATING_INITS.iter().find(|k| lower.starts_with(*k)) {
            refuse(
                "init_lora_weights",
                &format!(
                    "is `{init}`: a {kind} adapter only works with the base model PEFT modified at \
                     initialisation; save it converted with `model.save_pretrained(out, \
                     path_initial_model_for_weight_conversion=INIT_DIR)` (a plain LoRA of twice the rank) and \
                     convert that{}",
                    if kind == &"pissa" {
                        " (LLaMA-Factory does this with `pissa_convert: true` and writes it to \
                         OUTPUT_DIR/pissa_converted)"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
    Ok(out)
}

/// Why `modules_to_save` cannot be converted, with what the trainers that set it do and what to do instead.
fn modules_to_save_message(m: &Value) -> String {
    let names: Vec<&str> = m
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let embeddings = names
        .iter()
        .any(|n| EMBEDDING_MODULES.iter().any(|e| n.ends_with(e)));
    let norms = !names.is_empty() && names.iter().all(|n| n.contains("norm"));
    let why = if norms {
        "these norm weights are saved in full, and llama.cpp ignores norm vectors in an adapter (llama-adapter.cpp \
         skips `_norm.weight` tensors), so the adapter would run without them — merge the adapter into the base \
         instead"
    } else if embeddings {
        "the embedding / output head are trained and saved as full matrices (what Unsloth, axolotl \
         `lora_modules_to_save` and LLaMA-Factory `additional_target` / `resize_vocab` do, usually because tokens \
         were added), and a GGUF LoRA can only add B·A to the base's tensors: llama.cpp cannot swap full tensors \
         at run time, nor grow the vocabulary. Merge the adapter into the base model (`merge_and_unload()`, with \
         the resized tokenizer if tokens were added) and convert the merged model with convert_hf_to_gguf.py; or \
         retrain without modules_to_save (and without new tokens)"
    } else {
        "these modules are saved as full weights, and llama.cpp cannot swap full tensors at run time — merge the \
         adapter into the base, or retrain without modules_to_save"
    };
    format!("is {m}: {why}")
}

/// Module names that hold the vocabulary (input embedding or output head) in the families we convert.
pub(crate) const EMBEDDING_MODULES: &[&str] = &[
    "embed_tokens",
    "lm_head",
    "wte",
    "embed_out",
    "word_embeddings",
    "tok_embeddings",
    "output",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AdapterConfig, Error> {
        AdapterConfig::from_json(json, Path::new("adapter_config.json"))
    }

    fn refusal(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    #[test]
    fn reads_plain_config_with_float_alpha() {
        let c =
            parse(r#"{"peft_type":"LORA","r":8,"lora_alpha":12.5,"base_model_name_or_path":"x"}"#)
                .unwrap();
        assert_eq!((c.rank, c.alpha, c.use_rslora), (8, 12.5, false));
        assert_eq!(
            c.scaling_for("model.layers.0.self_attn.q_proj").factor(),
            1.5625
        );
    }

    #[test]
    fn patterns_match_like_peft_first_key_wins() {
        let c = parse(
            r#"{"r":8,"lora_alpha":16,"rank_pattern":{"q_proj":4,"layers.1.self_attn.q_proj":2},
                "alpha_pattern":{"layers\\.1\\..*proj":64,"v_proj":8}}"#,
        )
        .unwrap();
        // `q_proj` comes first and matches layer 1 too: PEFT never reaches the layer-specific key.
        assert_eq!(c.scaling_for("model.layers.1.self_attn.q_proj").rank, 4);
        assert_eq!(c.scaling_for("model.layers.0.mlp.up_proj").rank, 8);
        assert_eq!(c.scaling_for("model.layers.1.self_attn.v_proj").alpha, 64.0);
        assert_eq!(c.scaling_for("model.layers.0.self_attn.v_proj").alpha, 8.0);
        // A key must match a whole dotted suffix: `proj` does not match `q_proj`.
        let c = parse(r#"{"r":8,"lora_alpha":16,"rank_pattern":{"proj":2}}"#).unwrap();
        assert_eq!(c.scaling_for("model.layers.0.self_attn.q_proj").rank, 8);
    }

    #[test]
    fn rejects_invalid_json_with_position() {
        assert_eq!(
            refusal("{\n  \"r\": 8,\n  \"lora_alpha\": }"),
            "`adapter_config.json`:3:17: invalid JSON: expected value at line 3 column 17"
        );
    }

    #[test]
    fn rejects_missing_rank() {
        assert!(refusal(r#"{"lora_alpha":16}"#).contains("`r`: missing"));
    }

    #[test]
    fn rejects_non_lora_peft_type() {
        let e = refusal(r#"{"peft_type":"LOHA","r":8,"lora_alpha":16}"#);
        assert!(e.contains("`peft_type` is `LOHA` (LoHa)"), "{e}");
    }

    #[test]
    fn rejects_dora() {
        assert!(
            refusal(r#"{"r":8,"lora_alpha":16,"use_dora":true}"#)
                .contains("`use_dora` is true: DoRA")
        );
    }

    #[test]
    fn rejects_lora_bias_and_bias() {
        assert!(refusal(r#"{"r":8,"lora_alpha":16,"lora_bias":true}"#).contains("`lora_bias`"));
        assert!(refusal(r#"{"r":8,"lora_alpha":16,"bias":"all"}"#).contains("`bias` is `all`"));
    }

    #[test]
    fn rejects_modules_to_save() {
        assert!(
            refusal(r#"{"r":8,"lora_alpha":16,"modules_to_save":["lm_head"]}"#)
                .contains("`modules_to_save`")
        );
        assert!(parse(r#"{"r":8,"lora_alpha":16,"modules_to_save":[]}"#).is_ok());
    }

    #[test]
    fn modules_to_save_message_names_what_the_trainers_do() {
        let e = refusal(r#"{"r":8,"lora_alpha":16,"modules_to_save":["embed_tokens","lm_head"]}"#);
        assert!(
            e.contains("axolotl `lora_modules_to_save` and LLaMA-Factory `additional_target`"),
            "{e}"
        );
        assert!(
            e.contains("convert the merged model with convert_hf_to_gguf.py"),
            "{e}"
        );
        let e = refusal(r#"{"r":8,"lora_alpha":16,"modules_to_save":["input_layernorm","norm"]}"#);
        assert!(
            e.contains("llama.cpp ignores norm vectors in an adapter"),
            "{e}"
        );
        let e = refusal(r#"{"r":8,"lora_alpha":16,"modules_to_save":["score"]}"#);
        assert!(e.contains("these modules are saved as full weights"), "{e}");
    }

    #[test]
    fn read_returns_every_refusal_and_from_json_the_first() {
        let json =
            r#"{"r":8,"lora_alpha":16,"use_dora":true,"bias":"all","init_lora_weights":"olora"}"#;
        let (c, refusals) = AdapterConfig::read(json, Path::new("adapter_config.json")).unwrap();
        assert_eq!(c.rank, 8);
        let keys: Vec<String> = refusals
            .iter()
            .map(|e| match e {
                Error::Unsupported { key, .. } => key.clone(),
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(keys, ["use_dora", "bias", "init_lora_weights"]);
        assert!(refusal(json).contains("`use_dora` is true"));
        // A non-LoRA type is an error of its own: nothing else in the file means what it means for LoRA.
        assert!(AdapterConfig::read(r#"{"peft_type":"IA3","r":8}"#, Path::new("c.json")).is_err());
    }

    #[test]
    fn rejects_unconverted_pissa_but_not_converted() {
        assert!(
            refusal(r#"{"r":8,"lora_alpha":16,"init_lora_weights":"pissa_niter_4"}"#)
                .contains("pissa adapter")
        );
        assert!(parse(r#"{"r":8,"lora_alpha":16,"init_lora_weights":true}"#).is_ok());
        assert!(parse(r#"{"r":8,"lora_alpha":16,"init_lora_weights":"gaussian"}"#).is_ok());
    }

    #[test]
    fn rejects_bad_pattern_regex() {
        assert!(
            refusal(r#"{"r":8,"lora_alpha":16,"rank_pattern":{"(?<=x)q":2}}"#)
                .contains("rank_pattern.(?<=x)q")
        );
    }
}
