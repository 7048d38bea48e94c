//! Which trainer wrote a PEFT-format adapter, from the traces each leaves (for `inspect`, and for the one trainer
//! quirk that changes what the weights mean: torchtune's Qwen2 export). Evidence is reported, never guessed.
//!
//! - torchtune 0.6.1 writes `adapter_config.json` with exactly `r`, `lora_alpha`, `target_modules`, `peft_type`
//!   and (when `tune download` recorded one) `base_model_name_or_path` (`models/convert_weights.py`
//!   `tune_to_peft_adapter_config`; `recipes/lora_finetune_*.py`), keeps its own `adapter_model.pt` beside it, and
//!   copies the base's `config.json` into the same directory (`training/checkpointing/_checkpointer.py`).
//! - PEFT's `save_pretrained` (Unsloth, axolotl, LLaMA-Factory, plain PEFT) writes every LoraConfig field.
//! - Unsloth keeps the pre-quantized repo as `base_model_name_or_path` (`unsloth/…-bnb-4bit`).
//! - LLaMA-Factory writes `trainer_log.jsonl` and tags its model card `llama-factory`; its PiSSA conversion leaves
//!   `pissa_init/`, `pissa_backup/` and `pissa_converted/` (`train/callbacks.py` `PissaConvertCallback`).
//! - axolotl's model card says "Built with Axolotl" / carries the `axolotl` tag.

use std::path::Path;

/// A trainer whose output we recognise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trainer {
    /// torchtune (PEFT-format export of its checkpointer).
    Torchtune,
    /// Unsloth.
    Unsloth,
    /// axolotl.
    Axolotl,
    /// LLaMA-Factory.
    LlamaFactory,
}

impl Trainer {
    /// The name users know.
    pub fn name(self) -> &'static str {
        match self {
            Trainer::Torchtune => "torchtune",
            Trainer::Unsloth => "unsloth",
            Trainer::Axolotl => "axolotl",
            Trainer::LlamaFactory => "llama-factory",
        }
    }
}

/// One trainer and the trace that points to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// The trainer.
    pub trainer: Trainer,
    /// What was found.
    pub evidence: String,
}

/// The keys torchtune's `tune_to_peft_adapter_config` output can have (it writes nothing else).
const TORCHTUNE_KEYS: &[&str] = &[
    "r",
    "lora_alpha",
    "target_modules",
    "peft_type",
    "base_model_name_or_path",
];

/// Every trace of a known trainer in `dir` (config keys in file order, `base_model_name_or_path`).
pub fn detect(dir: &Path, config_keys: &[String], base_name: Option<&str>) -> Vec<Hint> {
    let mut hints = Vec::new();
    let mut hint = |trainer, evidence: String| hints.push(Hint { trainer, evidence });
    let torchtune_shape = ["r", "lora_alpha", "target_modules", "peft_type"]
        .iter()
        .all(|k| config_keys.iter().any(|c| c == k))
        && config_keys
            .iter()
            .all(|k| TORCHTUNE_KEYS.contains(&k.as_str()));
    if torchtune_shape {
        hint(
            Trainer::Torchtune,
            format!(
                "adapter_config.json has only torchtune's keys ({})",
                config_keys.join(", ")
            ),
        );
    }
    if dir.join("adapter_model.pt").is_file() {
        hint(
            Trainer::Torchtune,
            "adapter_model.pt (torchtune's own format) beside the PEFT files".into(),
        );
    }
    if let Some(name) = base_name
        && name.to_ascii_lowercase().starts_with("unsloth/")
    {
        hint(
            Trainer::Unsloth,
            format!("base_model_name_or_path is `{name}`"),
        );
    }
    if dir.join("trainer_log.jsonl").is_file() {
        hint(
            Trainer::LlamaFactory,
            "trainer_log.jsonl (LLaMA-Factory's LogCallback)".into(),
        );
    }
    if dir.join("pissa_converted").is_dir() || pissa_sibling(dir).is_some() {
        hint(
            Trainer::LlamaFactory,
            "pissa_converted/ (LLaMA-Factory's PissaConvertCallback)".into(),
        );
    }
    if let Ok(card) = std::fs::read_to_string(dir.join("README.md")) {
        let lower = card.to_ascii_lowercase();
        for (trainer, needle) in [
            (Trainer::Unsloth, "unsloth"),
            (Trainer::Axolotl, "axolotl"),
            (Trainer::LlamaFactory, "llama-factory"),
        ] {
            if lower.contains(needle) {
                hint(trainer, format!("README.md mentions `{needle}`"));
            }
        }
    }
    hints
}

/// For LLaMA-Factory's `pissa_init/` or `pissa_backup/`: the `pissa_converted/` beside it. These two hold PiSSA
/// factors with `init_lora_weights` rewritten to `true`, so nothing in the files says that they only work on the
/// PiSSA-modified base; the directory layout does.
pub fn pissa_sibling(dir: &Path) -> Option<std::path::PathBuf> {
    let name = dir.file_name()?.to_str()?;
    if name != "pissa_init" && name != "pissa_backup" {
        return None;
    }
    let converted = dir.parent()?.join("pissa_converted");
    converted
        .join(super::CONFIG_FILE)
        .is_file()
        .then_some(converted)
}

/// LLaMA-Factory's PiSSA directories, refused with a pointer to the one that converts: `pissa_init/` and
/// `pissa_backup/` (their `init_lora_weights: true` is not the truth, so they get a refusal first), and the output
/// directory beside a `pissa_converted/` (its own `init_lora_weights` refusal then says where to look).
pub fn pissa_refusals(dir: &Path, config_path: &Path, refusals: &mut Vec<crate::adapter::Error>) {
    use crate::adapter::Error;
    if let Some(converted) = pissa_sibling(dir) {
        refusals.insert(
            0,
            Error::Unsupported {
                path: config_path.to_path_buf(),
                key: "init_lora_weights".into(),
                message: format!(
                    "says `true`, but `{}` is LLaMA-Factory's {} PiSSA adapter: its factors only work on the base \
                     that PiSSA modified at initialisation; convert `{}` (the same adapter converted to a plain \
                     LoRA of the original base) instead",
                    dir.display(),
                    if dir.ends_with("pissa_init") {
                        "initial"
                    } else {
                        "trained (backup)"
                    },
                    converted.display()
                ),
            },
        );
    }
    let converted_here = dir.join("pissa_converted");
    if converted_here.join(super::CONFIG_FILE).is_file() {
        for r in refusals.iter_mut() {
            if let Error::Unsupported { key, message, .. } = r
                && key == "init_lora_weights"
            {
                *message = format!(
                    "{message}; LLaMA-Factory already did: convert `{}`",
                    converted_here.display()
                );
            }
        }
    }
}

/// Whether the hints say torchtune wrote this file.
pub fn is_torchtune(hints: &[Hint]) -> bool {
    hints.iter().any(|h| h.trainer == Trainer::Torchtune)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn torchtune_is_recognised_by_its_key_set_only() {
        let dir = Path::new("/nonexistent");
        let tt = keys(&[
            "r",
            "lora_alpha",
            "target_modules",
            "peft_type",
            "base_model_name_or_path",
        ]);
        assert!(is_torchtune(&detect(
            dir,
            &tt,
            Some("meta-llama/Llama-3.2-1B")
        )));
        assert!(is_torchtune(&detect(dir, &tt[..4], None)));
        // One PEFT field more (PEFT writes ~40) and it is not torchtune's export.
        let peft = keys(&["r", "lora_alpha", "target_modules", "peft_type", "bias"]);
        assert!(!is_torchtune(&detect(dir, &peft, None)));
        assert!(!is_torchtune(&detect(
            dir,
            &keys(&["r", "lora_alpha"]),
            None
        )));
    }

    #[test]
    fn unsloth_by_its_repo_name() {
        let h = detect(
            Path::new("/nonexistent"),
            &[],
            Some("unsloth/llama-3-8b-bnb-4bit"),
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].trainer, Trainer::Unsloth);
        assert!(
            detect(
                Path::new("/nonexistent"),
                &[],
                Some("meta-llama/Llama-3-8B")
            )
            .is_empty()
        );
    }

    #[test]
    fn pissa_sibling_only_for_llamafactory_layout() {
        let d = tempfile::tempdir().unwrap();
        let conv = d.path().join("pissa_converted");
        std::fs::create_dir_all(&conv).unwrap();
        std::fs::create_dir_all(d.path().join("pissa_backup")).unwrap();
        std::fs::create_dir_all(d.path().join("other")).unwrap();
        assert_eq!(
            pissa_sibling(&d.path().join("pissa_backup")),
            None,
            "no adapter in pissa_converted yet"
        );
        std::fs::write(conv.join(crate::peft::CONFIG_FILE), "{}").unwrap();
        assert_eq!(pissa_sibling(&d.path().join("pissa_backup")), Some(conv));
        assert_eq!(pissa_sibling(&d.path().join("other")), None);
    }
}
