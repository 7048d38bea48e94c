//! The gate against the adapter in production (`--baseline-adapter PREV.gguf[:SCALE]`). The candidate, at its own
//! scale, is compared with the previous adapter on the same base: the previous adapter's greedy continuations are
//! the reference, teacher-forced KL(previous ‖ candidate) is measured on them exactly as KL(base ‖ adapted) is
//! measured otherwise, and
//! - every control prompt must stay within the control limits *relative to the previous adapter*;
//! - the candidate's collateral drift — mean control KL(base ‖ adapter) at scale 1 — may be at most
//!   `baseline_drift_factor` × the previous adapter's plus `baseline_drift_margin` (one more pass measures the previous
//!   adapter against the base): an adapter that damages general prompts more than the one serving now regresses,
//!   even when each control prompt stays close to the previous adapter's answer;
//! - every target expectation (`contains`, `not_contains`, `regex`) that held for the previous adapter must still
//!   hold for the candidate;
//! - the regressions are counted per tag.
//!
//! Its failures are a class of their own (metrics `baseline_kl_mean`, `baseline_kl_max`, `baseline_top1_agreement`,
//! `baseline_expectation`, `baseline_control_drift`), so a pipeline promotes a new adapter only when it does not regress against the one
//! serving now.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gate::{Failure, Limits, control_breaches, unmet_expectations};
use super::golden::{GoldenSet, PromptKind};
use super::results::RunMeasurements;

/// The comparison with the previous adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineVerdict {
    /// The previous adapter's path.
    pub adapter: String,
    /// Its own scale.
    pub scale: f32,
    /// No regression.
    pub passed: bool,
    /// Mean over control prompts of the per-prompt mean KL(previous ‖ candidate).
    pub control_kl_mean: f64,
    /// Largest KL(previous ‖ candidate) at any control position.
    pub control_kl_max: f64,
    /// Mean top-1 agreement with the previous adapter over control prompts.
    pub control_top1: f64,
    /// The previous adapter's mean control KL(base ‖ previous) at scale 1: its collateral drift (None: not
    /// measured, the run stopped before).
    pub previous_control_drift: Option<f64>,
    /// The candidate's mean control KL(base ‖ candidate) at scale 1.
    pub candidate_control_drift: Option<f64>,
    /// Target expectations the previous adapter met.
    pub expectations_held_before: usize,
    /// Of those, the ones the candidate still meets.
    pub expectations_kept: usize,
    /// Per prompt.
    pub prompts: Vec<BaselinePrompt>,
    /// Per tag: prompts and regressions (tags sorted; prompts without tags are not counted).
    pub per_tag: Vec<TagRegressions>,
    /// Every regression.
    pub failures: Vec<Failure>,
}

/// One prompt compared with the previous adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselinePrompt {
    /// The prompt.
    pub prompt_id: String,
    /// Control or target.
    pub kind: PromptKind,
    /// Mean KL(previous ‖ candidate) over the previous adapter's continuation.
    pub kl_mean: f64,
    /// Largest KL at one position.
    pub kl_max: f64,
    /// Top-1 agreement with the previous adapter.
    pub top1_agreement: f64,
    /// The previous adapter's continuation.
    pub previous_text: String,
    /// The candidate's continuation.
    pub candidate_text: String,
    /// What regressed (empty: nothing).
    pub regressions: Vec<String>,
}

/// Regressions of one tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagRegressions {
    /// The tag.
    pub tag: String,
    /// Its prompts.
    pub prompts: usize,
    /// Its prompts that regressed.
    pub regressed: usize,
}

/// Judge `run` — a pass whose reference ("base") is the previous adapter and whose only scale is the candidate's
/// own — against `limits`.
pub fn judge(
    set: &GoldenSet,
    run: &RunMeasurements,
    limits: &Limits,
    previous: (&str, f32),
    drift: Option<ControlDrift>,
) -> BaselineVerdict {
    let mut prompts = Vec::new();
    let mut failures = Vec::new();
    if let Some(drift) = drift
        && drift.candidate
            > limits.baseline_drift_factor * drift.previous + limits.baseline_drift_margin
    {
        let drift_limit =
            limits.baseline_drift_factor * drift.previous + limits.baseline_drift_margin;
        failures.push(Failure {
            prompt_id: None,
            scale: None,
            metric: "baseline_control_drift".into(),
            value: drift.candidate,
            limit: drift_limit,
            message: format!(
                "the candidate drifts further from the base on control prompts than the previous adapter: KL mean \
                 {:.4} > {} × {:.4} + {} = {:.4}",
                drift.candidate,
                limits.baseline_drift_factor,
                drift.previous,
                limits.baseline_drift_margin,
                drift_limit
            ),
        });
    }
    let (mut held_before, mut kept) = (0, 0);
    for m in &run.measurements {
        let (Some(p), Some(prev)) = (
            set.prompts.iter().find(|p| p.id == m.prompt_id),
            run.base.iter().find(|b| b.prompt_id == m.prompt_id),
        ) else {
            continue;
        };
        let mut regressions = Vec::new();
        match p.kind {
            PromptKind::Control => {
                for b in control_breaches(p, m, limits) {
                    let message = format!(
                        "{}: {} against the previous adapter {} {} (limit {})",
                        p.id,
                        b.metric,
                        b.value,
                        if b.metric == "top1_agreement" {
                            "<"
                        } else {
                            ">"
                        },
                        b.limit
                    );
                    regressions.push(message.clone());
                    failures.push(Failure {
                        prompt_id: Some(p.id.clone()),
                        scale: None,
                        metric: format!("baseline_{}", b.metric),
                        value: b.value,
                        limit: b.limit,
                        message,
                    });
                }
            }
            PromptKind::Target => {
                let before = unmet_expectations(p, &prev.text);
                let now = unmet_expectations(p, &m.adapted_text);
                let all = expectations(p);
                let held: Vec<&String> = all.iter().filter(|e| !before.contains(e)).collect();
                held_before += held.len();
                for e in held {
                    if now.contains(e) {
                        let message = format!(
                            "{}: the previous adapter's answer met it, the candidate's {e}: {:?}",
                            p.id, m.adapted_text
                        );
                        regressions.push(message.clone());
                        failures.push(Failure {
                            prompt_id: Some(p.id.clone()),
                            scale: None,
                            metric: "baseline_expectation".into(),
                            value: 0.0,
                            limit: 1.0,
                            message,
                        });
                    } else {
                        kept += 1;
                    }
                }
            }
        }
        prompts.push(BaselinePrompt {
            prompt_id: p.id.clone(),
            kind: p.kind,
            kl_mean: m.kl_mean,
            kl_max: m.kl_max,
            top1_agreement: m.top1_agreement,
            previous_text: prev.text.clone(),
            candidate_text: m.adapted_text.clone(),
            regressions,
        });
    }
    let controls: Vec<&BaselinePrompt> = prompts
        .iter()
        .filter(|p| p.kind == PromptKind::Control)
        .collect();
    let mean = |f: &dyn Fn(&BaselinePrompt) -> f64| {
        if controls.is_empty() {
            0.0
        } else {
            controls.iter().map(|p| f(p)).sum::<f64>() / controls.len() as f64
        }
    };
    let mut per_tag: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for bp in &prompts {
        let tags = set
            .prompts
            .iter()
            .find(|p| p.id == bp.prompt_id)
            .map_or(&[][..], |p| &p.tags[..]);
        for t in tags {
            let e = per_tag.entry(t).or_default();
            e.0 += 1;
            e.1 += usize::from(!bp.regressions.is_empty());
        }
    }
    BaselineVerdict {
        adapter: previous.0.to_string(),
        scale: previous.1,
        passed: failures.is_empty(),
        control_kl_mean: mean(&|p| p.kl_mean),
        control_kl_max: controls.iter().map(|p| p.kl_max).fold(0.0, f64::max),
        control_top1: mean(&|p| p.top1_agreement),
        previous_control_drift: drift.map(|d| d.previous),
        candidate_control_drift: drift.map(|d| d.candidate),
        expectations_held_before: held_before,
        expectations_kept: kept,
        per_tag: per_tag
            .into_iter()
            .map(|(tag, (prompts, regressed))| TagRegressions {
                tag: tag.to_string(),
                prompts,
                regressed,
            })
            .collect(),
        prompts,
        failures,
    }
}

/// Collateral drift of the previous adapter and of the candidate: mean control KL(base ‖ adapter) at scale 1.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ControlDrift {
    /// The previous adapter's.
    pub previous: f64,
    /// The candidate's.
    pub candidate: f64,
}

/// The mean over control prompts of KL(base ‖ adapted) at `scale` in `run` (None: the scale was not run).
pub fn control_drift(set: &GoldenSet, run: &RunMeasurements, scale: f32) -> Option<f64> {
    let kl: Vec<f64> = run
        .measurements
        .iter()
        .filter(|m| m.scale == scale)
        .filter(|m| {
            set.prompts
                .iter()
                .any(|p| p.id == m.prompt_id && p.kind == PromptKind::Control)
        })
        .map(|m| m.kl_mean)
        .collect();
    (!kl.is_empty()).then(|| kl.iter().sum::<f64>() / kl.len() as f64)
}

/// Every expectation of `p`, described as [`unmet_expectations`] describes an unmet one.
fn expectations(p: &super::golden::GoldenPrompt) -> Vec<String> {
    let mut out: Vec<String> = p
        .expect
        .contains
        .iter()
        .map(|c| format!("does not contain {c:?}"))
        .collect();
    out.extend(
        p.expect
            .not_contains
            .iter()
            .map(|c| format!("contains {c:?}")),
    );
    if let Some(re) = &p.expect.regex {
        out.push(format!("does not match /{re}/"));
    }
    out
}

impl BaselineVerdict {
    /// The summary lines for the text and Markdown reports.
    pub fn lines(&self) -> Vec<String> {
        let mut o = vec![
            format!(
                "Baseline: against the previous adapter {} ×{}: {}",
                self.adapter,
                self.scale,
                if self.passed {
                    "no regression"
                } else {
                    "REGRESSED"
                }
            ),
            format!(
                "  control drift from it: KL mean {:.4}, KL max {:.4}, top-1 {:.3}; target expectations it met: {}, \
                 kept {}",
                self.control_kl_mean,
                self.control_kl_max,
                self.control_top1,
                self.expectations_held_before,
                self.expectations_kept
            ),
        ];
        if let (Some(c), Some(p)) = (self.candidate_control_drift, self.previous_control_drift) {
            o.push(format!(
                "  collateral drift from the base (control KL mean at ×1): candidate {c:.4}, previous {p:.4}"
            ));
        }
        let tags: Vec<String> = self
            .per_tag
            .iter()
            .filter(|t| t.regressed > 0)
            .map(|t| format!("{} {}/{}", t.tag, t.regressed, t.prompts))
            .collect();
        if !tags.is_empty() {
            o.push(format!("  regressions per tag: {}", tags.join(", ")));
        }
        o
    }
}
