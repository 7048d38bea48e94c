//! The verdict: measured numbers against limits. Every failure names the prompt, scale, metric, value and limit.
//!
//! Semantics (see golden-prompts/README.md):
//! - Engine self-check: the adapter at scale 0 must give logits bit-identical to the base (max |Δ| = 0).
//! - Control prompts: at every swept scale ≤ 1, KL(base‖adapted) mean and max and the top-1 agreement stay within
//!   limits. Scales above 1 over-drive the adapter on purpose, so control limits apply to them too: an adapter that
//!   only behaves at exactly 1.0 is fragile, and an over-scaled run should fail.
//! - Target prompts: at the largest swept scale the mean KL must reach `target_min_kl_mean` (an adapter that changes
//!   nothing — rsLoRA under-scaling, a graph that ignores LoRA — fails here), and expectations must hold.
//! - Without target prompts, the run still fails when no prompt moves beyond the engine's noise floor.
//! - Monotone: the mean KL over all prompts must strictly increase with the scale (0 < 0.5 < 1 …).

use serde::{Deserialize, Serialize};

use super::golden::{GoldenPrompt, GoldenSet, PromptKind};
use super::recommend::{Recommendation, recommend};
use super::results::{PromptMeasurement, RunMeasurements};
use super::tags::{TagBreak, TagSummary};

/// Gate limits. Defaults suit a narrow adapter on a small model; override with flags or a JSON file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Control prompts: largest allowed mean KL(base‖adapted) per position, in nats.
    pub control_max_kl_mean: f64,
    /// Control prompts: largest allowed KL at any single position, in nats.
    pub control_max_kl_max: f64,
    /// Control prompts: smallest allowed fraction of positions where the adapted argmax equals the base's.
    pub control_min_top1_agreement: f64,
    /// Target prompts: smallest mean KL at the largest scale that counts as an effect.
    pub target_min_kl_mean: f64,
    /// Fail a sweep whose mean KL does not grow with the scale.
    pub require_monotone: bool,
    /// `--merged`: largest mean over prompts of the mean KL(base + runtime adapter ‖ merged), in nats.
    pub merged_max_kl_mean: f64,
    /// `--merged`: smallest mean over prompts of the top-1 agreement between merged and runtime adapter.
    pub merged_min_top1_agreement: f64,
    /// `--merged`: smallest mean over prompts of the share of the runtime adapter's greedy continuation the
    /// merged model reproduces.
    pub merged_min_greedy_agreement: f64,
    /// `--baseline-adapter`: the candidate's mean control drift from the base (KL mean at scale 1) may be at most
    /// this many times the previous adapter's …
    pub baseline_drift_factor: f64,
    /// … plus this many nats.
    pub baseline_drift_margin: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            control_max_kl_mean: 0.25,
            control_max_kl_max: 5.0,
            control_min_top1_agreement: 0.6,
            target_min_kl_mean: 0.05,
            require_monotone: true,
            merged_max_kl_mean: 0.05,
            merged_min_top1_agreement: 0.9,
            merged_min_greedy_agreement: 0.7,
            baseline_drift_factor: 1.5,
            baseline_drift_margin: 0.01,
        }
    }
}

/// Why a limits file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("limits file `{path}`: {message}")]
pub struct LimitsError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What is wrong.
    pub message: String,
}

impl Limits {
    /// Read a JSON file; keys it omits keep their defaults, unknown keys are refused.
    pub fn from_json_file(path: &std::path::Path) -> Result<Limits, LimitsError> {
        let err = |message: String| LimitsError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

/// One gate failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The prompt, when the failure is about one.
    pub prompt_id: Option<String>,
    /// The scale, when the failure is about one.
    pub scale: Option<f32>,
    /// The metric (`kl_mean`, `kl_max`, `top1_agreement`, `contains`, `monotone`, `self_check` …).
    pub metric: String,
    /// The measured value.
    pub value: f64,
    /// The limit it broke.
    pub limit: f64,
    /// A sentence for people.
    pub message: String,
}

/// Aggregates of one scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleSummary {
    /// The scale.
    pub scale: f32,
    /// Mean of per-prompt mean KL over control prompts.
    pub control_kl_mean: f64,
    /// Max of per-prompt max KL over control prompts.
    pub control_kl_max: f64,
    /// Mean top-1 agreement over control prompts.
    pub control_top1: f64,
    /// Mean of per-prompt mean KL over target prompts.
    pub target_kl_mean: f64,
    /// Fraction of prompts whose greedy continuation changed.
    pub changed_fraction: f64,
    /// Prompts whose expectations failed.
    pub expectation_failures: usize,
    /// Mean KL over all prompts.
    pub all_kl_mean: f64,
}

/// The judgement of one prompt at one scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptVerdict {
    /// Prompt id.
    pub prompt_id: String,
    /// Control or target.
    pub kind: PromptKind,
    /// Scale.
    pub scale: f32,
    /// Whether every check on this prompt and scale passed.
    pub passed: bool,
    /// Failed expectation descriptions.
    pub expectation_failures: Vec<String>,
    /// The prompt's tags (slices), for per-tag aggregates.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The verdict of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the gate passed.
    pub passed: bool,
    /// Every failure.
    pub failures: Vec<Failure>,
    /// Things worth knowing that do not fail the gate.
    pub warnings: Vec<String>,
    /// Aggregates per scale, in sweep order.
    pub per_scale: Vec<ScaleSummary>,
    /// Per prompt × scale.
    pub prompts: Vec<PromptVerdict>,
    /// The recommended scale from the sweep.
    #[serde(default)]
    pub recommendation: Option<Recommendation>,
    /// Per tag and scale: prompts, failing prompts, drift.
    #[serde(default)]
    pub per_tag: Vec<TagSummary>,
    /// The tag whose prompts broke first as the scale grows.
    #[serde(default)]
    pub first_broken_tag: Option<TagBreak>,
    /// The limits the run was judged with.
    #[serde(default)]
    pub limits: Limits,
    /// `--merged`: the merged model against base + runtime adapter, over the golden set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<super::merged::MergedSummary>,
    /// The comparison with the previous adapter (`--baseline-adapter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<super::baseline::BaselineVerdict>,
}

fn prompt_limits<'a>(set: &'a GoldenSet, id: &str) -> Option<&'a GoldenPrompt> {
    set.prompts.iter().find(|p| p.id == id)
}

/// Judge a run. An unfinished run is judged on the prompts it finished, and fails.
pub fn judge(set: &GoldenSet, run: &RunMeasurements, limits: &Limits) -> Verdict {
    let Some(partial) = &run.partial else {
        return judge_complete(set, run, limits);
    };
    let finished = GoldenSet {
        prompts: set.prompts[..partial.prompts_done.min(set.prompts.len())].to_vec(),
    };
    let mut verdict = judge_complete(&finished, run, limits);
    verdict.passed = false;
    verdict.failures.insert(
        0,
        Failure {
            prompt_id: None,
            scale: None,
            metric: "partial".into(),
            value: partial.prompts_done as f64,
            limit: partial.prompts_total as f64,
            message: format!(
                "the run did not finish: {}; {} of {} prompts were measured at every scale, and the numbers below \
                 are theirs only",
                partial.reason, partial.prompts_done, partial.prompts_total
            ),
        },
    );
    verdict
}

fn judge_complete(set: &GoldenSet, run: &RunMeasurements, limits: &Limits) -> Verdict {
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    let mut prompts = Vec::new();
    let fail = |failures: &mut Vec<Failure>,
                m: Option<&PromptMeasurement>,
                metric: &str,
                value: f64,
                limit: f64,
                message: String| {
        failures.push(Failure {
            prompt_id: m.map(|m| m.prompt_id.clone()),
            scale: m.map(|m| m.scale),
            metric: metric.into(),
            value,
            limit,
            message,
        });
    };

    if run.scale_zero_max_abs_logit_delta != 0.0 {
        fail(
            &mut failures,
            None,
            "self_check",
            f64::from(run.scale_zero_max_abs_logit_delta),
            0.0,
            format!(
                "engine self-check: the adapter at scale 0 changed logits by up to {} (must be exactly 0); the \
                 harness cannot be trusted",
                run.scale_zero_max_abs_logit_delta
            ),
        );
    }
    let max_scale = run
        .settings
        .scales
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);

    for m in &run.measurements {
        let Some(p) = prompt_limits(set, &m.prompt_id) else {
            continue;
        };
        let before = failures.len();
        let mut expectation_failures = Vec::new();
        let at = format!("prompt `{}` at scale {}", m.prompt_id, m.scale);
        match p.kind {
            PromptKind::Control if m.scale > 0.0 => {
                for b in control_breaches(p, m, limits) {
                    let message = match b.metric {
                        "kl_mean" => {
                            format!("{at}: control drift: mean KL {:.4} > {}", b.value, b.limit)
                        }
                        "kl_max" => {
                            format!("{at}: control drift: max KL {:.4} > {}", b.value, b.limit)
                        }
                        _ => format!(
                            "{at}: control drift: top-1 agreement {:.3} < {}",
                            b.value, b.limit
                        ),
                    };
                    fail(&mut failures, Some(m), b.metric, b.value, b.limit, message);
                }
            }
            PromptKind::Target if m.scale == max_scale && max_scale > 0.0 => {
                let min = target_min_kl(p, limits);
                if m.kl_mean < min {
                    fail(
                        &mut failures,
                        Some(m),
                        "kl_mean",
                        m.kl_mean,
                        min,
                        format!(
                            "{at}: no effect: mean KL {:.5} < {min} — the adapter does not move this target prompt",
                            m.kl_mean
                        ),
                    );
                }
            }
            _ => {}
        }
        // Expectations describe the adapter's intended behaviour: checked at scale 1 (or the largest scale ≤ 1).
        if m.scale == expectation_scale(&run.settings.scales) {
            expectation_failures = unmet_expectations(p, &m.adapted_text);
            for e in &expectation_failures {
                fail(
                    &mut failures,
                    Some(m),
                    "expectation",
                    0.0,
                    1.0,
                    format!("{at}: the continuation {e}: {:?}", m.adapted_text),
                );
            }
        }
        prompts.push(PromptVerdict {
            prompt_id: m.prompt_id.clone(),
            kind: p.kind,
            tags: p.tags.clone(),
            scale: m.scale,
            passed: failures.len() == before,
            expectation_failures,
        });
    }

    let per_scale = summarize(set, run);
    let has_targets = set.prompts.iter().any(|p| p.kind == PromptKind::Target);
    if let Some(top) = per_scale
        .iter()
        .filter(|s| s.scale > 0.0)
        .max_by(|a, b| a.scale.total_cmp(&b.scale))
    {
        let floor = run.noise_floor_kl_max;
        if !has_targets && top.all_kl_mean <= floor.max(1e-9) {
            failures.push(Failure {
                prompt_id: None,
                scale: Some(top.scale),
                metric: "effect".into(),
                value: top.all_kl_mean,
                limit: floor,
                message: format!(
                    "adapter has no measurable effect: mean KL {:.2e} at scale {} is within the engine's noise floor \
                     {:.2e} (rsLoRA under-scaling, a graph that ignores LoRA, or an all-zero B look like this)",
                    top.all_kl_mean, top.scale, floor
                ),
            });
        }
    }
    if limits.require_monotone {
        let mut sorted: Vec<&ScaleSummary> = per_scale.iter().collect();
        sorted.sort_by(|a, b| a.scale.total_cmp(&b.scale));
        let effect = sorted
            .last()
            .is_some_and(|s| s.all_kl_mean > run.noise_floor_kl_max.max(1e-9));
        if effect {
            for w in sorted.windows(2) {
                if w[1].all_kl_mean <= w[0].all_kl_mean {
                    failures.push(Failure {
                        prompt_id: None,
                        scale: Some(w[1].scale),
                        metric: "monotone".into(),
                        value: w[1].all_kl_mean,
                        limit: w[0].all_kl_mean,
                        message: format!(
                            "non-monotone sweep: mean KL {:.4} at scale {} is not above {:.4} at scale {}",
                            w[1].all_kl_mean, w[1].scale, w[0].all_kl_mean, w[0].scale
                        ),
                    });
                }
            }
        }
    }
    if !run.settings.scales.contains(&1.0) {
        warnings.push(
            "the sweep does not include scale 1.0, the scale the adapter was trained for".into(),
        );
    }
    let per_tag = super::tags::summarize(&prompts, run);
    let merged = run
        .merged
        .as_deref()
        .map(|m| super::merged::judge(m, limits, &mut failures));
    Verdict {
        merged,
        passed: failures.is_empty(),
        failures,
        warnings,
        per_scale,
        first_broken_tag: super::tags::first_broken(&per_tag),
        per_tag,
        prompts,
        recommendation: Some(recommend(set, run, limits)),
        limits: limits.clone(),
        baseline: None,
    }
}

/// A control limit a measurement breaks: metric, measured value and limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Breach {
    /// `kl_mean`, `kl_max` or `top1_agreement`.
    pub metric: &'static str,
    /// The measured value.
    pub value: f64,
    /// The limit it broke.
    pub limit: f64,
}

/// The control limits `m` breaks (per-prompt overrides first, then the run's limits). Scale 0 breaks none.
pub fn control_breaches(p: &GoldenPrompt, m: &PromptMeasurement, limits: &Limits) -> Vec<Breach> {
    let mut out = Vec::new();
    if m.scale <= 0.0 {
        return out;
    }
    let max_mean = p.limits.max_kl_mean.unwrap_or(limits.control_max_kl_mean);
    let max_max = p.limits.max_kl_max.unwrap_or(limits.control_max_kl_max);
    let min_top1 = p
        .limits
        .min_top1_agreement
        .unwrap_or(limits.control_min_top1_agreement);
    for (metric, value, limit, broken) in [
        ("kl_mean", m.kl_mean, max_mean, m.kl_mean > max_mean),
        ("kl_max", m.kl_max, max_max, m.kl_max > max_max),
        (
            "top1_agreement",
            m.top1_agreement,
            min_top1,
            m.top1_agreement < min_top1,
        ),
    ] {
        if broken {
            out.push(Breach {
                metric,
                value,
                limit,
            });
        }
    }
    out
}

/// The smallest mean KL a target prompt must reach to count as moved.
pub fn target_min_kl(p: &GoldenPrompt, limits: &Limits) -> f64 {
    p.limits.min_kl_mean.unwrap_or(limits.target_min_kl_mean)
}

/// The expectations of `p` that `text` does not meet, described (`does not contain "X"` …).
pub fn unmet_expectations(p: &GoldenPrompt, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for c in &p.expect.contains {
        if !text.contains(c.as_str()) {
            out.push(format!("does not contain {c:?}"));
        }
    }
    for c in &p.expect.not_contains {
        if text.contains(c.as_str()) {
            out.push(format!("contains {c:?}"));
        }
    }
    if let Some(re) = &p.expect.regex
        && regex::Regex::new(re)
            .map(|r| !r.is_match(text))
            .unwrap_or(true)
    {
        out.push(format!("does not match /{re}/"));
    }
    out
}

/// The scale at which expectations are checked: 1.0 if swept, else the largest swept scale.
pub fn expectation_scale(scales: &[f32]) -> f32 {
    if scales.contains(&1.0) {
        1.0
    } else {
        scales.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
}

fn summarize(set: &GoldenSet, run: &RunMeasurements) -> Vec<ScaleSummary> {
    let kind = |id: &str| prompt_limits(set, id).map(|p| p.kind);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let expect_scale = expectation_scale(&run.settings.scales);
    run.settings
        .scales
        .iter()
        .map(|&scale| {
            let at: Vec<&PromptMeasurement> = run
                .measurements
                .iter()
                .filter(|m| m.scale == scale)
                .collect();
            let control: Vec<&&PromptMeasurement> = at
                .iter()
                .filter(|m| kind(&m.prompt_id) == Some(PromptKind::Control))
                .collect();
            let target: Vec<&&PromptMeasurement> = at
                .iter()
                .filter(|m| kind(&m.prompt_id) == Some(PromptKind::Target))
                .collect();
            let expectation_failures = if scale == expect_scale {
                at.iter()
                    .filter(|m| {
                        prompt_limits(set, &m.prompt_id)
                            .is_some_and(|p| !unmet_expectations(p, &m.adapted_text).is_empty())
                    })
                    .count()
            } else {
                0
            };
            ScaleSummary {
                scale,
                control_kl_mean: mean(&control.iter().map(|m| m.kl_mean).collect::<Vec<_>>()),
                control_kl_max: control.iter().map(|m| m.kl_max).fold(0.0, f64::max),
                control_top1: mean(&control.iter().map(|m| m.top1_agreement).collect::<Vec<_>>()),
                target_kl_mean: mean(&target.iter().map(|m| m.kl_mean).collect::<Vec<_>>()),
                changed_fraction: if at.is_empty() {
                    0.0
                } else {
                    at.iter().filter(|m| m.first_divergence.is_some()).count() as f64
                        / at.len() as f64
                },
                expectation_failures,
                all_kl_mean: mean(&at.iter().map(|m| m.kl_mean).collect::<Vec<_>>()),
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
