//! Per-tag aggregates: golden prompts carry optional `tags` (slices such as `math`, `german`, `refusal`); every
//! report shows, per tag and scale, how many prompts fail and how far they drift, and names the tag that broke first
//! as the scale grows — the slice a person looks at first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gate::PromptVerdict;
use super::results::RunMeasurements;

/// One tag at one scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagSummary {
    /// The tag.
    pub tag: String,
    /// The scale.
    pub scale: f32,
    /// Prompts with this tag.
    pub prompts: usize,
    /// Of them, prompts that fail any check at this scale.
    pub failing: usize,
    /// Mean of their mean KL(base ‖ adapted).
    pub kl_mean: f64,
    /// Largest of their max KL.
    pub kl_max: f64,
    /// Mean of their top-1 agreement.
    pub top1: f64,
}

/// The tag that broke first as the scale grows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagBreak {
    /// The tag.
    pub tag: String,
    /// The smallest scale at which one of its prompts fails.
    pub scale: f32,
    /// Its prompts failing there.
    pub failing: usize,
    /// Its prompts.
    pub prompts: usize,
}

/// Per tag (sorted) and scale (ascending): the aggregates. Prompts without tags are not counted.
pub fn summarize(prompts: &[PromptVerdict], run: &RunMeasurements) -> Vec<TagSummary> {
    let mut scales = run.settings.scales.clone();
    scales.sort_by(f32::total_cmp);
    scales.dedup();
    let mut by_tag: BTreeMap<&str, Vec<&PromptVerdict>> = BTreeMap::new();
    for v in prompts {
        for t in &v.tags {
            by_tag.entry(t).or_default().push(v);
        }
    }
    let mut out = Vec::new();
    for (tag, verdicts) in by_tag {
        for &scale in &scales {
            let at: Vec<&PromptVerdict> = verdicts
                .iter()
                .copied()
                .filter(|v| v.scale == scale)
                .collect();
            if at.is_empty() {
                continue;
            }
            let ms: Vec<_> = at
                .iter()
                .filter_map(|v| {
                    run.measurements
                        .iter()
                        .find(|m| m.scale == scale && m.prompt_id == v.prompt_id)
                })
                .collect();
            let n = ms.len().max(1) as f64;
            out.push(TagSummary {
                tag: tag.to_string(),
                scale,
                prompts: at.len(),
                failing: at.iter().filter(|v| !v.passed).count(),
                kl_mean: ms.iter().map(|m| m.kl_mean).sum::<f64>() / n,
                kl_max: ms.iter().map(|m| m.kl_max).fold(0.0, f64::max),
                top1: if ms.is_empty() {
                    1.0
                } else {
                    ms.iter().map(|m| m.top1_agreement).sum::<f64>() / n
                },
            });
        }
    }
    out
}

/// The tag whose prompts fail at the smallest scale; among tags breaking at that scale, the one with the largest
/// share of failing prompts (then the larger mean KL, then the name).
pub fn first_broken(summaries: &[TagSummary]) -> Option<TagBreak> {
    summaries
        .iter()
        .filter(|s| s.failing > 0)
        .min_by(|a, b| {
            a.scale
                .total_cmp(&b.scale)
                .then_with(|| {
                    let share = |s: &TagSummary| s.failing as f64 / s.prompts as f64;
                    share(b).total_cmp(&share(a))
                })
                .then_with(|| b.kl_mean.total_cmp(&a.kl_mean))
                .then_with(|| a.tag.cmp(&b.tag))
        })
        .map(|s| TagBreak {
            tag: s.tag.clone(),
            scale: s.scale,
            failing: s.failing,
            prompts: s.prompts,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::golden::PromptKind;
    use crate::validate::results::{EngineSettings, PromptMeasurement, Timings};

    fn verdict(id: &str, scale: f32, passed: bool, tags: &[&str]) -> PromptVerdict {
        PromptVerdict {
            prompt_id: id.into(),
            kind: PromptKind::Control,
            scale,
            passed,
            expectation_failures: vec![],
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn m(id: &str, scale: f32, kl: f64) -> PromptMeasurement {
        PromptMeasurement {
            prompt_id: id.into(),
            scale,
            adapted_text: String::new(),
            adapted_tokens: vec![],
            first_divergence: None,
            kl_mean: kl,
            kl_max: 2.0 * kl,
            top1_agreement: 1.0 - kl,
            max_abs_logit_delta: 0.0,
            positions: 4,
        }
    }

    #[test]
    fn aggregates_per_tag_and_names_the_first_break() {
        let prompts = vec![
            verdict("m1", 0.5, true, &["math"]),
            verdict("m2", 0.5, true, &["math"]),
            verdict("g1", 0.5, false, &["german", "multilingual"]),
            verdict("u", 0.5, false, &[]),
            verdict("m1", 1.0, false, &["math"]),
            verdict("m2", 1.0, false, &["math"]),
            verdict("g1", 1.0, false, &["german", "multilingual"]),
            verdict("u", 1.0, false, &[]),
        ];
        let run = RunMeasurements {
            base: vec![],
            measurements: vec![
                m("m1", 0.5, 0.1),
                m("m2", 0.5, 0.3),
                m("g1", 0.5, 0.4),
                m("u", 0.5, 0.9),
                m("m1", 1.0, 0.5),
                m("m2", 1.0, 0.7),
                m("g1", 1.0, 0.8),
                m("u", 1.0, 0.9),
            ],
            scale_zero_max_abs_logit_delta: 0.0,
            noise_floor_kl_max: 0.0,
            settings: EngineSettings {
                n_ctx: 1,
                n_batch: 1,
                n_ubatch: 1,
                threads: 1,
                max_tokens: 1,
                scales: vec![1.0, 0.5],
                backend: "CPU".into(),
                gpu_layers: 0,
            },
            timings: Timings::default(),
            partial: None,
            merged: None,
            alora: None,
        };
        let s = summarize(&prompts, &run);
        let tags: Vec<(&str, f32, usize, usize)> = s
            .iter()
            .map(|t| (t.tag.as_str(), t.scale, t.prompts, t.failing))
            .collect();
        assert_eq!(
            tags,
            [
                ("german", 0.5, 1, 1),
                ("german", 1.0, 1, 1),
                ("math", 0.5, 2, 0),
                ("math", 1.0, 2, 2),
                ("multilingual", 0.5, 1, 1),
                ("multilingual", 1.0, 1, 1),
            ]
        );
        assert!(
            (s[2].kl_mean - 0.2).abs() < 1e-12
                && s[2].kl_max == 0.6
                && (s[2].top1 - 0.8).abs() < 1e-12
        );
        // german and multilingual both break at 0.5 with every prompt failing and the same KL: the name decides.
        assert_eq!(
            first_broken(&s),
            Some(TagBreak {
                tag: "german".into(),
                scale: 0.5,
                failing: 1,
                prompts: 1
            })
        );
        assert_eq!(first_broken(&s[2..4]).unwrap().tag, "math");
        assert_eq!(first_broken(&s[2..3]), None);
    }
}
