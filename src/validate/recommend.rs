//! The recommended scale: from the sweep, the largest scale at which every control limit holds and the targets move
//! enough, the smallest scale at which the targets move enough, and where the control limits break. With
//! `--scales auto`, [`next_probe`] bisects the bracket between the last scale where the controls hold and the first
//! where they break, so the boundary — and with it the recommendation — is known to a stated precision.
//!
//! "Controls hold up to s" is cumulative: every swept scale in (0, s] keeps every control prompt within its limits,
//! so a sweep that breaks at 0.5 and happens to pass again at 0.75 never recommends 0.75.

use serde::{Deserialize, Serialize};

use super::gate::{Limits, control_breaches, target_min_kl, unmet_expectations};
use super::golden::{GoldenSet, PromptKind};
use super::results::RunMeasurements;

/// What one swept scale says about the recommendation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleStatus {
    /// The scale.
    pub scale: f32,
    /// Control prompts that break a limit at this scale.
    pub failing_controls: usize,
    /// Target prompts that do not move enough (mean KL below their minimum) or miss an expectation at this scale;
    /// without target prompts, 1 when the scale has no effect above the noise floor.
    pub unmoved_targets: usize,
}

impl ScaleStatus {
    fn controls_hold(&self) -> bool {
        self.failing_controls == 0
    }

    fn targets_met(&self) -> bool {
        self.scale > 0.0 && self.unmoved_targets == 0
    }
}

/// The recommended scale and how it was found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The largest swept scale at which the controls hold (at it and every swept scale below) and the targets move
    /// enough; `None` when there is none (`reason` says why).
    pub scale: Option<f32>,
    /// The smallest swept scale at which the targets move enough.
    pub min_effective_scale: Option<f32>,
    /// The smallest swept scale at which a control limit breaks (`None`: none breaks).
    pub controls_break_at: Option<f32>,
    /// Width of the bracket the control boundary is known to lie in: `controls_break_at` minus the largest scale
    /// below it where the controls hold. The recommendation is within this distance of the boundary when the
    /// targets move at the bracket's lower end.
    pub precision: Option<f32>,
    /// Scales added by `--scales auto` (bisection), in the order they ran.
    #[serde(default)]
    pub refined_scales: Vec<f32>,
    /// One sentence for people.
    pub reason: String,
    /// Per swept scale, ascending.
    pub per_scale: Vec<ScaleStatus>,
}

/// The status of every swept scale, ascending.
pub fn scale_statuses(set: &GoldenSet, run: &RunMeasurements, limits: &Limits) -> Vec<ScaleStatus> {
    let has_targets = set.prompts.iter().any(|p| p.kind == PromptKind::Target);
    let floor = run.noise_floor_kl_max.max(1e-9);
    let mut scales = run.settings.scales.clone();
    scales.sort_by(f32::total_cmp);
    scales.dedup();
    scales
        .into_iter()
        .map(|scale| {
            let (mut failing_controls, mut unmoved_targets) = (0, 0);
            let (mut kl_sum, mut n) = (0.0, 0usize);
            for m in run.measurements.iter().filter(|m| m.scale == scale) {
                let Some(p) = set.prompts.iter().find(|p| p.id == m.prompt_id) else {
                    continue;
                };
                kl_sum += m.kl_mean;
                n += 1;
                match p.kind {
                    PromptKind::Control => {
                        failing_controls += usize::from(!control_breaches(p, m, limits).is_empty());
                    }
                    PromptKind::Target => {
                        let moved = m.kl_mean >= target_min_kl(p, limits)
                            && unmet_expectations(p, &m.adapted_text).is_empty();
                        unmoved_targets += usize::from(!moved);
                    }
                }
            }
            if !has_targets && (n == 0 || kl_sum / n as f64 <= floor) {
                unmoved_targets = 1;
            }
            ScaleStatus {
                scale,
                failing_controls,
                unmoved_targets,
            }
        })
        .collect()
}

/// The largest scale up to which the controls hold (0 when they break at the first positive scale) and the first
/// swept scale above it where they break.
fn control_bracket(statuses: &[ScaleStatus]) -> (f32, Option<f32>) {
    let mut held = 0.0;
    for s in statuses.iter().filter(|s| s.scale > 0.0) {
        if !s.controls_hold() {
            return (held, Some(s.scale));
        }
        held = s.scale;
    }
    (held, None)
}

/// The recommendation for a judged sweep.
pub fn recommend(set: &GoldenSet, run: &RunMeasurements, limits: &Limits) -> Recommendation {
    let per_scale = scale_statuses(set, run, limits);
    let (held, breaks) = control_bracket(&per_scale);
    let scale = per_scale
        .iter()
        .filter(|s| s.scale <= held && s.targets_met())
        .map(|s| s.scale)
        .next_back();
    let min_effective_scale = per_scale.iter().find(|s| s.targets_met()).map(|s| s.scale);
    let precision = breaks.map(|b| b - held);
    let has_targets = set.prompts.iter().any(|p| p.kind == PromptKind::Target);
    let moved = if has_targets {
        "every target prompt moves enough and meets its expectations"
    } else {
        "the adapter has an effect above the noise floor"
    };
    let reason = match (scale, breaks, min_effective_scale) {
        (Some(s), Some(b), _) => format!(
            "{s}: the largest swept scale where every control limit holds and {moved}; control limits break at {b} \
             (boundary within {:.4})",
            b - held
        ),
        (Some(s), None, _) => {
            format!("{s}: {moved}, and no swept scale breaks a control limit (the boundary lies above {held})")
        }
        (None, Some(b), Some(e)) => format!(
            "none: {moved} only from scale {e}, but control limits already break at {b}: the adapter cannot reach \
             its targets without drifting on the control prompts"
        ),
        (None, None, Some(e)) => format!("none: {moved} only from {e}"),
        (None, _, None) if has_targets => {
            "none: no swept scale moves every target prompt enough (or meets its expectations); sweep higher \
             scales, or check the adapter's scaling (rsLoRA, alpha)"
                .into()
        }
        (None, _, None) => "none: no swept scale has an effect above the engine's noise floor".into(),
    };
    Recommendation {
        scale,
        min_effective_scale,
        controls_break_at: breaks,
        precision,
        refined_scales: Vec::new(),
        reason,
        per_scale,
    }
}

/// The next scale `--scales auto` should measure: the middle of the control bracket, while it is wider than
/// `precision` and the targets move somewhere at or below its upper end (otherwise no scale in it can be
/// recommended and refining it buys nothing).
pub fn next_probe(r: &Recommendation, precision: f32) -> Option<f32> {
    let breaks = r.controls_break_at?;
    let held = breaks - r.precision?;
    if breaks - held <= precision || r.min_effective_scale.is_none_or(|e| e > breaks) {
        return None;
    }
    Some((held + breaks) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::golden::{Expectations, GoldenPrompt, PromptLimits, PromptText};
    use crate::validate::results::{EngineSettings, PromptMeasurement, Timings};

    fn prompt(id: &str, kind: PromptKind) -> GoldenPrompt {
        GoldenPrompt {
            id: id.into(),
            kind,
            text: PromptText::Raw("x".into()),
            max_tokens: None,
            expect: Expectations::default(),
            limits: PromptLimits::default(),
            tags: vec![],
            source: "t:1".into(),
        }
    }

    /// A control prompt whose mean KL is `k·s²` and a target prompt whose mean KL is `s`.
    fn run(k: f64, scales: &[f32]) -> (GoldenSet, RunMeasurements) {
        let set = GoldenSet {
            prompts: vec![
                prompt("c", PromptKind::Control),
                prompt("t", PromptKind::Target),
            ],
        };
        let m = |id: &str, scale: f32, kl: f64| PromptMeasurement {
            prompt_id: id.into(),
            scale,
            adapted_text: String::new(),
            adapted_tokens: vec![],
            first_divergence: None,
            kl_mean: kl,
            kl_max: kl,
            top1_agreement: 1.0,
            max_abs_logit_delta: 0.0,
            positions: 4,
        };
        let measurements = scales
            .iter()
            .flat_map(|&s| [m("c", s, k * (s * s) as f64), m("t", s, s as f64)])
            .collect();
        let run = RunMeasurements {
            base: vec![],
            measurements,
            scale_zero_max_abs_logit_delta: 0.0,
            noise_floor_kl_max: 0.0,
            settings: EngineSettings {
                n_ctx: 64,
                n_batch: 64,
                n_ubatch: 64,
                threads: 1,
                max_tokens: 4,
                scales: scales.to_vec(),
                backend: "CPU".into(),
                gpu_layers: 0,
            },
            timings: Timings::default(),
            partial: None,
            alora: None,
            merged: None,
        };
        (set, run)
    }

    #[test]
    fn largest_passing_scale_and_the_bracket() {
        // Control KL 1.0·s² crosses 0.25 at s = 0.5 (0.25 itself holds); target KL s reaches 0.05 at 0.05.
        let (set, r) = run(1.0, &[0.0, 0.25, 0.5, 0.75, 1.0]);
        let rec = recommend(&set, &r, &Limits::default());
        assert_eq!(rec.scale, Some(0.5));
        assert_eq!(rec.min_effective_scale, Some(0.25));
        assert_eq!(rec.controls_break_at, Some(0.75));
        assert_eq!(rec.precision, Some(0.25));
        assert_eq!(
            rec.reason,
            "0.5: the largest swept scale where every control limit holds and every target prompt moves enough and \
             meets its expectations; control limits break at 0.75 (boundary within 0.2500)"
        );
        assert_eq!(next_probe(&rec, 0.01), Some(0.625));
        assert_eq!(next_probe(&rec, 0.25), None);
    }

    #[test]
    fn bisection_converges_on_the_boundary() {
        // Control KL 2·s² crosses 0.25 at s = √0.125 ≈ 0.35355.
        let mut scales = vec![0.0, 0.25, 0.5, 0.75, 1.0];
        let mut rec;
        let mut passes = 0;
        loop {
            let (set, r) = run(2.0, &scales);
            rec = recommend(&set, &r, &Limits::default());
            let Some(s) = next_probe(&rec, 1.0 / 64.0) else {
                break;
            };
            scales.push(s);
            passes += 1;
        }
        assert_eq!(passes, 4);
        let boundary = 0.125f32.sqrt();
        let (s, p) = (rec.scale.unwrap(), rec.precision.unwrap());
        assert!(
            s <= boundary && boundary - s <= p && p <= 1.0 / 64.0,
            "{s} {p}"
        );
    }

    #[test]
    fn none_with_the_reason() {
        // Controls break at the first positive scale; the targets move there.
        let (set, r) = run(100.0, &[0.0, 0.25, 0.5]);
        let rec = recommend(&set, &r, &Limits::default());
        assert_eq!(rec.scale, None);
        assert_eq!(rec.controls_break_at, Some(0.25));
        assert!(rec.reason.starts_with("none: every target prompt moves enough and meets its expectations only from scale 0.25, but control limits already break at 0.25"), "{}", rec.reason);
        assert_eq!(next_probe(&rec, 0.01), Some(0.125));
        // Targets that never move.
        let (set, r) = run(0.0, &[0.0, 0.01, 0.02]);
        let rec = recommend(&set, &r, &Limits::default());
        assert_eq!(
            (rec.scale, rec.min_effective_scale, rec.controls_break_at),
            (None, None, None)
        );
        assert!(
            rec.reason
                .starts_with("none: no swept scale moves every target prompt"),
            "{}",
            rec.reason
        );
        assert_eq!(next_probe(&rec, 0.01), None);
    }

    #[test]
    fn a_pass_after_a_break_is_never_recommended() {
        let (set, mut r) = run(1.0, &[0.0, 0.25, 0.5, 0.75]);
        // The control passes again at 0.75 (non-monotone): the recommendation stays below the first break.
        r.measurements
            .iter_mut()
            .filter(|m| m.prompt_id == "c" && m.scale == 0.75)
            .for_each(|m| m.kl_mean = 0.0);
        r.measurements
            .iter_mut()
            .filter(|m| m.prompt_id == "c" && m.scale == 0.5)
            .for_each(|m| m.kl_mean = 1.0);
        let rec = recommend(&set, &r, &Limits::default());
        assert_eq!((rec.scale, rec.controls_break_at), (Some(0.25), Some(0.5)));
    }
}
