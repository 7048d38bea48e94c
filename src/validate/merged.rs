//! `lora-validate --merged`: is a merged model (`lora-convert merge`) base + runtime adapter? The merged model's
//! measurements against the runtime adapter at scale 1 are summarised over the golden set and held to limits
//! (golden-prompts/README.md, "Merged models"). Aggregates, not per-prompt limits: a correct merge still rounds
//! merged tensors to a quantized type, which flips the odd near-tie on one prompt; a wrong merge (scale, permutation,
//! expert layout) moves every prompt.

use serde::{Deserialize, Serialize};

use super::gate::{Failure, Limits};
use super::results::MergedMeasurement;

/// The merged model over the whole golden set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergedSummary {
    /// Mean over prompts of the mean KL(base + runtime adapter ‖ merged), in nats.
    pub kl_mean: f64,
    /// Largest KL(base + runtime adapter ‖ merged) at any position, in nats.
    pub kl_max: f64,
    /// Mean over prompts of the top-1 agreement with the runtime adapter.
    pub top1_agreement: f64,
    /// Mean over prompts of the share of the runtime adapter's greedy continuation the merged model reproduces.
    pub greedy_agreement: f64,
    /// Prompts whose merged greedy continuation is the runtime adapter's, token for token.
    pub identical_continuations: usize,
    /// Prompts measured.
    pub prompts: usize,
    /// Mean over prompts of the mean KL(base ‖ merged): the merged model's drift from the base.
    pub base_kl_mean: f64,
    /// Mean over prompts of the top-1 agreement with the base.
    pub base_top1_agreement: f64,
}

/// Summarise the merged measurements and add a failure for every limit they break.
pub fn judge(
    measured: &[MergedMeasurement],
    limits: &Limits,
    failures: &mut Vec<Failure>,
) -> MergedSummary {
    let mean = |f: &dyn Fn(&MergedMeasurement) -> f64| {
        if measured.is_empty() {
            0.0
        } else {
            measured.iter().map(f).sum::<f64>() / measured.len() as f64
        }
    };
    let s = MergedSummary {
        kl_mean: mean(&|m| m.kl_mean),
        kl_max: measured.iter().map(|m| m.kl_max).fold(0.0, f64::max),
        top1_agreement: mean(&|m| m.top1_agreement),
        greedy_agreement: mean(&|m| m.greedy_agreement),
        identical_continuations: measured
            .iter()
            .filter(|m| m.first_divergence.is_none())
            .count(),
        prompts: measured.len(),
        base_kl_mean: mean(&|m| m.base_kl_mean),
        base_top1_agreement: mean(&|m| m.base_top1_agreement),
    };
    let worst = measured
        .iter()
        .max_by(|a, b| a.kl_mean.total_cmp(&b.kl_mean))
        .map(|m| format!(" (worst prompt `{}`: {:.4})", m.prompt_id, m.kl_mean))
        .unwrap_or_default();
    let mut fail = |metric: &str, value: f64, limit: f64, message: String| {
        failures.push(Failure {
            prompt_id: None,
            scale: Some(1.0),
            metric: metric.into(),
            value,
            limit,
            message: format!(
                "merged model vs base + runtime adapter: {message} — the merge is not the adapter (wrong scale, \
                 permutation or expert layout?)"
            ),
        })
    };
    if s.kl_mean > limits.merged_max_kl_mean {
        fail(
            "merged_kl_mean",
            s.kl_mean,
            limits.merged_max_kl_mean,
            format!(
                "mean KL {:.4} > {}{worst}",
                s.kl_mean, limits.merged_max_kl_mean
            ),
        );
    }
    if s.top1_agreement < limits.merged_min_top1_agreement {
        fail(
            "merged_top1_agreement",
            s.top1_agreement,
            limits.merged_min_top1_agreement,
            format!(
                "top-1 agreement {:.3} < {}",
                s.top1_agreement, limits.merged_min_top1_agreement
            ),
        );
    }
    if s.greedy_agreement < limits.merged_min_greedy_agreement {
        fail(
            "merged_greedy_agreement",
            s.greedy_agreement,
            limits.merged_min_greedy_agreement,
            format!(
                "greedy agreement {:.3} < {} ({} of {} continuations identical)",
                s.greedy_agreement,
                limits.merged_min_greedy_agreement,
                s.identical_continuations,
                s.prompts
            ),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, kl: f64, top1: f64, greedy: f64) -> MergedMeasurement {
        MergedMeasurement {
            prompt_id: id.into(),
            kl_mean: kl,
            kl_max: kl * 4.0,
            top1_agreement: top1,
            max_abs_logit_delta: 0.0,
            base_kl_mean: 0.3,
            base_top1_agreement: 0.8,
            merged_text: String::new(),
            merged_tokens: vec![],
            first_divergence: (greedy < 1.0).then_some(3),
            greedy_agreement: greedy,
            positions: 8,
        }
    }

    #[test]
    fn a_close_merge_passes_with_its_aggregates() {
        let mut failures = Vec::new();
        let s = judge(
            &[m("a", 0.01, 1.0, 1.0), m("b", 0.03, 0.9, 0.5)],
            &Limits::default(),
            &mut failures,
        );
        assert!(failures.is_empty(), "{failures:?}");
        assert!((s.kl_mean - 0.02).abs() < 1e-12);
        assert_eq!(s.kl_max, 0.12);
        assert!((s.top1_agreement - 0.95).abs() < 1e-12);
        assert_eq!((s.identical_continuations, s.prompts), (1, 2));
        assert!((s.greedy_agreement - 0.75).abs() < 1e-12);
    }

    #[test]
    fn every_broken_limit_is_a_failure_naming_the_worst_prompt() {
        let mut failures = Vec::new();
        judge(
            &[m("a", 0.5, 0.5, 0.0), m("b", 0.9, 0.6, 0.1)],
            &Limits::default(),
            &mut failures,
        );
        let metrics: Vec<&str> = failures.iter().map(|f| f.metric.as_str()).collect();
        assert_eq!(
            metrics,
            [
                "merged_kl_mean",
                "merged_top1_agreement",
                "merged_greedy_agreement"
            ]
        );
        assert!(
            failures[0].message.starts_with(
                "merged model vs base + runtime adapter: mean KL 0.7000 > 0.05 (worst prompt `b`: 0.9000)"
            ),
            "{}",
            failures[0].message
        );
    }
}
