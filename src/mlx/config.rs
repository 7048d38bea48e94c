//! mlx-lm's `adapter_config.json`: `vars(args)` of the `mlx_lm lora` run that trained the adapter
//! (mlx-lm 0.32.2 `lora.py` `train_model` → `save_config`). Only what decides the adapter's effect is read, the way
//! `tuner/utils.py` `load_adapters` reads it: `fine_tune_type` (absent: `lora`), `lora_parameters.rank`, `.scale`
//! (an absolute multiplier, not alpha/r), `.keys` (module names relative to a block, or full paths), `num_layers`
//! (the last N blocks; ≤ 0 or -1: all), and `model` (the base it was trained on).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::adapter::Error;
use crate::json_fields::Fields;

/// The configuration of an mlx-lm LoRA adapter (serialized as the manifest's `mlx` section: the file's own
/// fields, without the path).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MlxConfig {
    /// The file it came from.
    #[serde(skip)]
    pub path: PathBuf,
    /// `fine_tune_type` (absent: `lora`).
    pub fine_tune_type: String,
    /// `lora_parameters.rank`.
    pub rank: u32,
    /// `lora_parameters.scale`: ΔW = scale · (lora_a @ lora_b)ᵀ, whatever the rank.
    pub scale: f64,
    /// `lora_parameters.keys`: the modules adapted, or None for every Linear/Embedding/SwitchLinear of a block.
    pub keys: Option<Vec<String>>,
    /// `num_layers`: adapt the last N blocks (None: absent; ≤ 0: all).
    pub num_layers: Option<i64>,
    /// `model`: the base model's path or hub name.
    pub model: Option<String>,
}

/// Whether parsed JSON looks like mlx-lm's adapter configuration rather than PEFT's.
pub fn looks_like_mlx(map: &Map<String, Value>) -> bool {
    (map.contains_key("lora_parameters") || map.contains_key("fine_tune_type"))
        && !map.contains_key("peft_type")
        && !map.contains_key("r")
}

impl MlxConfig {
    /// Parse and check the text of an mlx-lm `adapter_config.json`; a fine-tune type other than `lora` is an error.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, Error> {
        let (config, refusals) = Self::read(text, path)?;
        crate::adapter::unless_refused(config, refusals)
    }

    /// Parse the configuration, returning a `fine_tune_type` that cannot be converted (DoRA …) as a refusal beside
    /// it, so `inspect` can still list the tensors. Errors when the LoRA settings themselves are missing or odd;
    /// for a refused fine-tune type that has none (a full fine-tune saves `lora_parameters: null`), that refusal is
    /// the error.
    pub fn read(text: &str, path: &Path) -> Result<(Self, Vec<Error>), Error> {
        let map = Error::config_object(text, path)?;
        let field =
            |key: &str, message: String| Error::config_field(path, key.to_string(), message);
        let get = |key: &str| map.get(key).filter(|v| !v.is_null());

        let fine_tune_type = match get("fine_tune_type") {
            None => "lora",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(field(
                    "fine_tune_type",
                    format!("expected a string, found {other}"),
                ));
            }
        };
        let refuse = |message: String| Error::Unsupported {
            path: path.to_path_buf(),
            key: "fine_tune_type".into(),
            message,
        };
        let refusal = match fine_tune_type {
            "lora" => None,
            "dora" => Some(refuse(
                "is `dora`: DoRA rescales each output row of the adapted weight to a learned magnitude (the \
                 `.m` tensors), which a GGUF LoRA adapter cannot express — merge it into the base model instead: \
                 `lora-convert merge --base BASE.gguf --adapter DIR -o MERGED.gguf`"
                    .into(),
            )),
            "full" => Some(refuse(
                "is `full`: adapters.safetensors holds the full weights of the fine-tuned blocks, not LoRA \
                 factors, and llama.cpp cannot swap full tensors at run time — fuse with `mlx_lm fuse` and \
                 convert the whole model with llama.cpp's convert_hf_to_gguf.py"
                    .into(),
            )),
            other => Some(refuse(format!(
                "is `{other}`, which mlx-lm does not define (it trains `lora`, `dora` or `full`); only `lora` \
                 adapters can be converted"
            ))),
        };
        let fine_tune_type = fine_tune_type.to_string();
        match (Self::lora_settings(&map, path, fine_tune_type), refusal) {
            (Ok(config), refusal) => Ok((config, refusal.into_iter().collect())),
            (Err(_), Some(refusal)) => Err(refusal),
            (Err(e), None) => Err(e),
        }
    }

    /// Everything but the fine-tune type.
    fn lora_settings(
        map: &Map<String, Value>,
        path: &Path,
        fine_tune_type: String,
    ) -> Result<Self, Error> {
        let top = Fields::new(path, map, Error::config_field);
        let params = match top.get("lora_parameters") {
            Some(Value::Object(p)) => top.nested(p, "lora_parameters."),
            None => {
                return Err(top.error(
                    "lora_parameters",
                    "missing (mlx-lm's LoRA settings: rank, scale, dropout, keys); is this an adapter_config.json \
                     written by `mlx_lm lora`?"
                        .into(),
                ));
            }
            Some(other) => {
                return Err(top.error(
                    "lora_parameters",
                    format!("expected an object with rank and scale, found {other}"),
                ));
            }
        };
        let rank = params
            .positive_u32("rank")?
            .ok_or_else(|| params.error("rank", "missing (the LoRA rank)".into()))?;
        let scale = params.number("scale")?.ok_or_else(|| {
            let hint = if params.get("alpha").is_some() {
                " — found `alpha` instead, but mlx-lm multiplies by `scale` (an absolute factor, default 20), \
                 not alpha/rank"
            } else {
                ""
            };
            params.error(
                "scale",
                format!("missing (mlx-lm's absolute LoRA multiplier){hint}"),
            )
        })?;
        let keys = params.strings("keys", "a list of module names")?;
        let num_layers = match top.get("num_layers") {
            None => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| {
                top.error(
                    "num_layers",
                    format!("expected an integer (-1: all blocks), found {v}"),
                )
            })?),
        };
        let model = top.string("model")?;
        Ok(MlxConfig {
            path: path.to_path_buf(),
            fine_tune_type,
            rank,
            scale,
            keys,
            num_layers,
            model,
        })
    }

    /// The last `n` blocks are adapted, or None when every block is (`num_layers` ≤ 0, as
    /// `model.layers[-max(num_layers, 0):]` selects all of them, or absent).
    pub fn last_blocks(&self) -> Option<u64> {
        self.num_layers.filter(|&n| n > 0).map(|n| n.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<MlxConfig, Error> {
        MlxConfig::from_json(json, Path::new("adapter_config.json"))
    }

    fn refusal(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    #[test]
    fn reads_what_mlx_lm_writes() {
        let c = parse(
            r#"{"fine_tune_type":"lora","num_layers":1,"model":"models/llama","seed":0,
                "lora_parameters":{"rank":4,"scale":7.5,"dropout":0.0,"keys":["self_attn.q_proj","lm_head"]}}"#,
        )
        .unwrap();
        assert_eq!((c.rank, c.scale, c.num_layers), (4, 7.5, Some(1)));
        assert_eq!(
            c.keys.as_deref(),
            Some(&["self_attn.q_proj".to_string(), "lm_head".to_string()][..])
        );
        assert_eq!(c.model.as_deref(), Some("models/llama"));
        assert_eq!(c.last_blocks(), Some(1));
    }

    #[test]
    fn absent_fine_tune_type_is_lora_and_every_num_layers_up_to_zero_means_all() {
        // load_adapters: getattr(config, "fine_tune_type", "lora"); model.layers[-max(n, 0):] is every block for n ≤ 0.
        for n in ["-1", "0"] {
            let c = parse(&format!(
                r#"{{"num_layers":{n},"lora_parameters":{{"rank":8,"scale":20.0}}}}"#
            ))
            .unwrap();
            assert_eq!(c.last_blocks(), None);
        }
    }

    #[test]
    fn refuses_dora_full_and_unknown_fine_tune_types() {
        let lp = r#""lora_parameters":{"rank":8,"scale":20.0,"dropout":0.0}"#;
        let e = refusal(&format!(r#"{{"fine_tune_type":"dora",{lp}}}"#));
        assert!(
            e.starts_with("`adapter_config.json`: `fine_tune_type` is `dora`: DoRA"),
            "{e}"
        );
        let e = refusal(r#"{"fine_tune_type":"full","lora_parameters":null}"#);
        assert!(
            e.contains("`fine_tune_type` is `full`: adapters.safetensors holds the full weights"),
            "{e}"
        );
        let e = refusal(&format!(r#"{{"fine_tune_type":"qlora",{lp}}}"#));
        assert!(
            e.contains("`fine_tune_type` is `qlora`, which mlx-lm does not define"),
            "{e}"
        );
    }

    #[test]
    fn read_keeps_a_dora_configuration_beside_its_refusal() {
        let path = Path::new("adapter_config.json");
        let (c, refusals) = MlxConfig::read(
            r#"{"fine_tune_type":"dora","lora_parameters":{"rank":8,"scale":20.0}}"#,
            path,
        )
        .unwrap();
        assert_eq!(
            (c.fine_tune_type.as_str(), c.rank, c.scale),
            ("dora", 8, 20.0)
        );
        assert_eq!(refusals.len(), 1);
        assert!(
            refusals[0]
                .to_string()
                .starts_with("`adapter_config.json`: `fine_tune_type` is `dora`: DoRA"),
            "{}",
            refusals[0]
        );
        // A full fine-tune saves no LoRA settings: its refusal is the error.
        let e = MlxConfig::read(r#"{"fine_tune_type":"full","lora_parameters":null}"#, path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`fine_tune_type` is `full`"), "{e}");
        let (c, refusals) =
            MlxConfig::read(r#"{"lora_parameters":{"rank":8,"scale":20.0}}"#, path).unwrap();
        assert_eq!((c.fine_tune_type.as_str(), refusals.len()), ("lora", 0));
    }

    #[test]
    fn refuses_missing_or_odd_lora_parameters() {
        assert!(refusal(r#"{"fine_tune_type":"lora"}"#).contains("`lora_parameters`: missing"));
        assert!(
            refusal(r#"{"lora_parameters":{"scale":20.0}}"#)
                .contains("`lora_parameters.rank`: missing")
        );
        assert!(
            refusal(r#"{"lora_parameters":{"rank":0,"scale":20.0}}"#)
                .contains("`lora_parameters.rank`: expected a positive integer, found 0")
        );
        let e = refusal(r#"{"lora_parameters":{"rank":8,"alpha":16}}"#);
        assert!(e.contains("`lora_parameters.scale`: missing"), "{e}");
        assert!(e.contains("found `alpha` instead"), "{e}");
        assert!(
            refusal(r#"{"lora_parameters":{"rank":8,"scale":"20"}}"#)
                .contains("`lora_parameters.scale`: expected a number")
        );
        assert!(
            refusal(r#"{"lora_parameters":{"rank":8,"scale":20,"keys":"q_proj"}}"#)
                .contains("`lora_parameters.keys`: expected a list")
        );
        assert!(
            refusal(r#"{"num_layers":"all","lora_parameters":{"rank":8,"scale":20}}"#)
                .contains("`num_layers`: expected an integer")
        );
    }

    #[test]
    fn tells_mlx_from_peft_configs() {
        let m = |s: &str| match serde_json::from_str::<Value>(s).unwrap() {
            Value::Object(m) => looks_like_mlx(&m),
            _ => unreachable!(),
        };
        assert!(m(r#"{"lora_parameters":{"rank":8},"num_layers":16}"#));
        assert!(m(r#"{"fine_tune_type":"full"}"#));
        assert!(!m(r#"{"peft_type":"LORA","r":8,"lora_alpha":16}"#));
    }
}
