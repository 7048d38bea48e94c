//! The golden-prompt set: what the gate runs. JSONL files (one prompt per line: `id`, `kind`, `prompt` or
//! `messages`, optional expectations, limits and `max_tokens`; golden-prompts/README.md), read strictly: a malformed
//! line is an error naming the file and line. The shipped general control set is `golden-prompts/control.jsonl`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use super::results::PromptKind;

/// One chat message of a `messages` prompt, rendered with the base model's own chat template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// The text the model continues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromptText {
    /// Continued as is (BOS added when the model wants one).
    Raw(String),
    /// Rendered with the base GGUF's `tokenizer.chat_template`, with the assistant turn opened.
    Chat(Vec<Message>),
}

/// Optional checks on the adapted model's greedy continuation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Expectations {
    /// Every string must occur (case-sensitive).
    pub contains: Vec<String>,
    /// No string may occur.
    pub not_contains: Vec<String>,
    /// The continuation must match this regular expression.
    pub regex: Option<String>,
}

/// Per-prompt overrides of the gate limits (None: the set's or the default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptLimits {
    /// Control: maximum mean KL(base ‖ adapted) in nats.
    pub max_kl_mean: Option<f64>,
    /// Control: maximum per-position KL in nats.
    pub max_kl_max: Option<f64>,
    /// Control: minimum top-1 agreement (0..1).
    pub min_top1_agreement: Option<f64>,
    /// Target: minimum mean KL that counts as an effect.
    pub min_kl_mean: Option<f64>,
}

/// One prompt of the golden set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoldenPrompt {
    /// Unique id within the set.
    pub id: String,
    /// Control (must not drift) or target (must move).
    pub kind: PromptKind,
    /// What the model continues.
    pub text: PromptText,
    /// New tokens to generate (None: the run's default).
    pub max_tokens: Option<u32>,
    /// Checks on the adapted continuation.
    pub expect: Expectations,
    /// Per-prompt limits.
    pub limits: PromptLimits,
    /// Slices this prompt belongs to (`math`, `german`, `refusal` …): reports aggregate per tag and name the tag
    /// that breaks first as the scale grows.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Where it came from, for error messages: `file:line`.
    pub source: String,
}

/// Why a golden-prompt file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GoldenError {
    /// A file or directory could not be read.
    #[error("reading `{path}`: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a valid prompt.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The set is empty.
    #[error(
        "no prompts found in {paths}: golden files are `*.jsonl` with one JSON object per line"
    )]
    Empty {
        /// What was searched.
        paths: String,
    },
}

/// A loaded golden-prompt set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GoldenSet {
    /// Prompts in file order (files sorted by name).
    pub prompts: Vec<GoldenPrompt>,
}

/// The wire format of one line (unknown fields are rejected so typos do not pass silently).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    kind: PromptKind,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    contains: Vec<String>,
    #[serde(default)]
    not_contains: Vec<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    limits: Option<LimitsLine>,
    #[serde(default)]
    tags: Vec<String>,
    /// Free text for people; ignored.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsLine {
    max_kl_mean: Option<f64>,
    max_kl_max: Option<f64>,
    min_top1_agreement: Option<f64>,
    min_kl_mean: Option<f64>,
}

/// The shipped general control set, embedded so an installed binary works without the repository.
pub const BUILTIN_CONTROL: &str = include_str!("../../golden-prompts/control.jsonl");

/// The shipped `golden-prompts/` directory of this source tree.
pub fn default_golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden-prompts")
}

/// The embedded control set.
pub fn builtin_control_set() -> Result<GoldenSet, GoldenError> {
    let mut set = GoldenSet::default();
    parse_into(
        BUILTIN_CONTROL,
        Path::new("<builtin>/control.jsonl"),
        &mut set,
        &mut BTreeSet::new(),
    )?;
    Ok(set)
}

/// Load files and directories (every `*.jsonl` inside, sorted by name).
pub fn load_golden(paths: &[PathBuf]) -> Result<GoldenSet, GoldenError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|source| GoldenError::Io {
                path: p.clone(),
                source,
            })?;
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut set = GoldenSet::default();
    let mut ids = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|source| GoldenError::Io {
            path: f.clone(),
            source,
        })?;
        parse_into(&text, f, &mut set, &mut ids)?;
    }
    if set.prompts.is_empty() {
        let paths = paths
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(GoldenError::Empty { paths });
    }
    Ok(set)
}

/// Parse JSONL text into `set`.
pub fn parse_into(
    text: &str,
    path: &Path,
    set: &mut GoldenSet,
    ids: &mut BTreeSet<String>,
) -> Result<(), GoldenError> {
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| GoldenError::Line {
            path: path.to_path_buf(),
            line,
            message,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue;
        }
        let l: Line = serde_json::from_str(trimmed).map_err(|e| {
            err(format!(
                "{e} — each line is one JSON object with `id`, `kind` (\"control\" or \"target\") and `prompt` or \
                 `messages`"
            ))
        })?;
        if l.id.trim().is_empty() {
            return Err(err("`id` is empty".into()));
        }
        if !ids.insert(l.id.clone()) {
            return Err(err(format!("duplicate id `{}`", l.id)));
        }
        let text = match (l.prompt, l.messages) {
            (Some(p), None) => PromptText::Raw(p),
            (None, Some(m)) if !m.is_empty() => {
                if let Some(bad) = m
                    .iter()
                    .find(|m| !["system", "user", "assistant"].contains(&m.role.as_str()))
                {
                    return Err(err(format!(
                        "message role `{}`: expected system, user or assistant",
                        bad.role
                    )));
                }
                PromptText::Chat(m)
            }
            (None, Some(_)) => return Err(err("`messages` is empty".into())),
            (Some(_), Some(_)) => {
                return Err(err("give either `prompt` or `messages`, not both".into()));
            }
            (None, None) => {
                return Err(err(
                    "missing `prompt` (raw text) or `messages` (chat)".into()
                ));
            }
        };
        if let Some(re) = &l.regex {
            regex::Regex::new(re).map_err(|e| err(format!("`regex` does not compile: {e}")))?;
        }
        if let Some(bad) = l
            .tags
            .iter()
            .find(|t| t.trim().is_empty() || t.trim() != *t)
        {
            return Err(err(format!(
                "tag {bad:?}: tags are non-empty words without surrounding spaces, e.g. \"math\""
            )));
        }
        let mut tags = l.tags;
        tags.sort();
        tags.dedup();
        if l.max_tokens == Some(0) {
            return Err(err("`max_tokens` must be at least 1".into()));
        }
        let limits = l
            .limits
            .map_or_else(PromptLimits::default, |x| PromptLimits {
                max_kl_mean: x.max_kl_mean,
                max_kl_max: x.max_kl_max,
                min_top1_agreement: x.min_top1_agreement,
                min_kl_mean: x.min_kl_mean,
            });
        set.prompts.push(GoldenPrompt {
            id: l.id,
            kind: l.kind,
            text,
            max_tokens: l.max_tokens,
            expect: Expectations {
                contains: l.contains,
                not_contains: l.not_contains,
                regex: l.regex,
            },
            limits,
            tags,
            source: format!("{}:{line}", path.display()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GoldenSet, GoldenError> {
        let mut set = GoldenSet::default();
        parse_into(text, Path::new("g.jsonl"), &mut set, &mut BTreeSet::new())?;
        Ok(set)
    }

    #[test]
    fn parses_raw_and_chat_prompts_with_expectations() {
        let s = parse(concat!(
            "{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"2+2=\",\"max_tokens\":4}\n",
            "\n",
            "{\"id\":\"b\",\"kind\":\"target\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],",
            "\"contains\":[\"X\"],\"regex\":\"^T\",\"limits\":{\"min_kl_mean\":0.5}}\n"
        ))
        .unwrap();
        assert_eq!(s.prompts.len(), 2);
        assert_eq!(s.prompts[1].source, "g.jsonl:3");
        assert_eq!(s.prompts[1].limits.min_kl_mean, Some(0.5));
        assert_eq!(s.prompts[0].text, PromptText::Raw("2+2=".into()));
        assert!(s.prompts[0].tags.is_empty());
    }

    #[test]
    fn tags_are_sorted_deduplicated_and_checked() {
        let s = parse("{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"x\",\"tags\":[\"math\",\"de\",\"math\"]}")
            .unwrap();
        assert_eq!(s.prompts[0].tags, ["de", "math"]);
        let e = parse("{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"x\",\"tags\":[\" math\"]}")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "g.jsonl:1: tag \" math\": tags are non-empty words without surrounding spaces, e.g. \"math\""
        );
    }

    #[test]
    fn rejects_unknown_fields_with_line_number() {
        let e = parse("{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"x\",\"contain\":[\"y\"]}")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("g.jsonl:1: unknown field `contain`"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_kind_duplicates_missing_text_and_bad_regex() {
        let e = parse("{\"id\":\"a\",\"kind\":\"ctrl\",\"prompt\":\"x\"}").unwrap_err();
        assert!(e.to_string().contains("unknown variant `ctrl`"), "{e}");
        let e = parse("{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"x\"}\n{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"y\"}")
            .unwrap_err();
        assert_eq!(e.to_string(), "g.jsonl:2: duplicate id `a`");
        let e = parse("{\"id\":\"a\",\"kind\":\"control\"}").unwrap_err();
        assert!(e.to_string().contains("missing `prompt`"), "{e}");
        let e = parse("{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"x\",\"regex\":\"(\"}")
            .unwrap_err();
        assert!(e.to_string().contains("`regex` does not compile"), "{e}");
        let e = parse("{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"x\"").unwrap_err();
        assert!(
            e.to_string().starts_with("g.jsonl:1: EOF while parsing"),
            "{e}"
        );
    }

    #[test]
    fn builtin_control_set_is_valid_and_large_enough() {
        let s = builtin_control_set().unwrap();
        assert!(s.prompts.len() >= 32);
        assert!(s.prompts.iter().all(|p| p.kind == PromptKind::Control));
    }
}
