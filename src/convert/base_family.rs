//! Does the adapter's own record of its base (`base_model_name_or_path`) name the same model family as the base it
//! is converted against? Shapes alone do not tell a Llama adapter from a Gemma one when the widths happen to agree;
//! the names do. Families are data: the words that name them and the GGUF architectures their models convert to.
//! Only a clear contradiction refuses — both sides name at least one family and no family is on both.

use std::collections::BTreeSet;
use std::path::Path;

use crate::gguf::GgufFile;

/// A model family: its name, the words (lower case) that name it in a model id, the GGUF architectures its models
/// convert to (a Mistral or SmolLM model is `llama` in GGUF).
const FAMILIES: &[(&str, &[&str], &[&str])] = &[
    ("Llama", &["llama"], &["llama", "llama4"]),
    (
        "Mistral",
        &["mistral", "mixtral", "ministral", "devstral", "codestral"],
        &["llama", "mistral3"],
    ),
    (
        "Gemma",
        &["gemma"],
        &[
            "gemma",
            "gemma2",
            "gemma3",
            "gemma3n",
            "gemma4",
            "gemma-embedding",
        ],
    ),
    (
        "Qwen",
        &["qwen", "qwq"],
        &[
            "qwen",
            "qwen2",
            "qwen2moe",
            "qwen3",
            "qwen3moe",
            "qwen35",
            "qwen35moe",
            "qwen2vl",
            "qwen3vl",
        ],
    ),
    (
        "Phi",
        &["phi-", "phi1", "phi2", "phi3", "phi4"],
        &["phi2", "phi3", "phimoe"],
    ),
    ("SmolLM", &["smollm"], &["llama", "smollm3"]),
    ("LFM", &["lfm"], &["lfm2", "lfm2moe"]),
    ("gpt-oss", &["gpt-oss"], &["gpt-oss"]),
    ("GLM", &["glm"], &["glm4", "glm4moe", "chatglm"]),
    ("DeepSeek", &["deepseek"], &["deepseek", "deepseek2"]),
    ("OLMo", &["olmo"], &["olmo", "olmo2", "olmoe"]),
    ("Falcon", &["falcon"], &["falcon", "falcon-h1"]),
    (
        "Granite",
        &["granite"],
        &["granite", "granitemoe", "granitehybrid"],
    ),
    ("StarCoder", &["starcoder"], &["starcoder", "starcoder2"]),
    (
        "Command-R",
        &["command-r", "c4ai", "aya"],
        &["command-r", "cohere2"],
    ),
];

/// The families a model id or name mentions.
pub fn named_in(text: &str) -> BTreeSet<&'static str> {
    let lower = text.to_lowercase();
    FAMILIES
        .iter()
        .filter(|(_, words, _)| words.iter().any(|w| lower.contains(w)))
        .map(|(name, _, _)| *name)
        .collect()
}

/// The families whose models convert to this GGUF architecture.
pub fn of_arch(arch: &str) -> BTreeSet<&'static str> {
    FAMILIES
        .iter()
        .filter(|(_, _, arches)| arches.contains(&arch))
        .map(|(name, _, _)| *name)
        .collect()
}

/// How a base GGUF names itself: `general.architecture`, `general.name`, `general.basename` and the names and
/// repositories of `general.base_model.*`, as (key, value).
pub fn base_names(base: &GgufFile) -> Vec<(String, String)> {
    let mut keys = vec!["general.name".to_string(), "general.basename".to_string()];
    let count = base
        .get_u64("general.base_model.count")
        .unwrap_or(0)
        .min(16);
    for i in 0..count {
        keys.push(format!("general.base_model.{i}.name"));
        keys.push(format!("general.base_model.{i}.repo_url"));
    }
    keys.into_iter()
        .filter_map(|k| base.get_str(&k).map(|v| (k, v.to_string())))
        .collect()
}

/// A contradiction between the adapter's base name and the base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyMismatch {
    /// `base_model_name_or_path`.
    pub adapter_base: String,
    /// The families it names.
    pub adapter_families: Vec<&'static str>,
    /// The base, described by its architecture and names.
    pub base: String,
    /// The families the base names or converts from.
    pub base_families: Vec<&'static str>,
}

/// Check `base_model_name_or_path` against a base GGUF: a mismatch when both sides name a family and none is shared.
pub fn check(
    adapter_base: Option<&str>,
    base_path: &Path,
    base: &GgufFile,
) -> Option<FamilyMismatch> {
    let adapter_base = adapter_base.filter(|n| !n.is_empty())?;
    let theirs = named_in(adapter_base);
    if theirs.is_empty() {
        return None;
    }
    let arch = base.architecture().unwrap_or_default();
    let names = base_names(base);
    let mut ours = of_arch(arch);
    for (_, v) in &names {
        ours.extend(named_in(v));
    }
    if ours.is_empty() || !theirs.is_disjoint(&ours) {
        return None;
    }
    let mut described = format!("`{}` (general.architecture {arch}", base_path.display());
    for (k, v) in &names {
        described.push_str(&format!(", {k} `{v}`"));
    }
    described.push(')');
    Some(FamilyMismatch {
        adapter_base: adapter_base.to_string(),
        adapter_families: theirs.into_iter().collect(),
        base: described,
        base_families: ours.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_architectures_resolve_to_families() {
        assert_eq!(
            named_in("meta-llama/Llama-3.2-1B-Instruct"),
            BTreeSet::from(["Llama"])
        );
        assert_eq!(
            named_in("google/gemma-3-270m-it"),
            BTreeSet::from(["Gemma"])
        );
        assert_eq!(
            named_in("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"),
            BTreeSet::from(["DeepSeek", "Qwen"])
        );
        assert!(named_in("my-org/finetune-v2").is_empty());
        // A Mistral model is `llama` in GGUF: a Mistral adapter on a llama-architecture base is no contradiction.
        assert!(of_arch("llama").contains("Mistral"));
        assert_eq!(of_arch("gemma3"), BTreeSet::from(["Gemma"]));
        assert!(of_arch("no-such-arch").is_empty());
    }
}
