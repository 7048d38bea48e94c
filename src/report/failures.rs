//! Failures a person can read: the per-prompt failures grouped by metric, prompt kind and scale — how many prompts
//! fail and the worst three with their values and limits — and the run-level failures (self-check, effect,
//! monotonicity, baseline aggregates) one by one. The full list stays in JSON, JUnit and behind `-v`.

use std::fmt::Write as _;

use crate::validate::gate::{Failure, Verdict};
use crate::validate::golden::PromptKind;

/// The worst failures shown per group.
pub const WORST_SHOWN: usize = 3;

/// Failures of one metric on one kind of prompt at one scale.
#[derive(Debug)]
pub struct FailureGroup<'a> {
    /// The metric (`kl_mean`, `top1_agreement`, `expectation` …).
    pub metric: &'a str,
    /// The kind of the failing prompts (None when a prompt is not in the verdict).
    pub kind: Option<PromptKind>,
    /// The scale.
    pub scale: Option<f32>,
    /// Prompts of that kind judged at that scale.
    pub prompts: usize,
    /// The failures, worst first (farthest from their limit).
    pub failures: Vec<&'a Failure>,
}

impl FailureGroup<'_> {
    /// What failed, in words: `control mean KL`, `target effect (mean KL)` …
    pub fn label(&self) -> String {
        let kind = match self.kind {
            Some(PromptKind::Control) => "control",
            Some(PromptKind::Target) => "target",
            None => "prompt",
        };
        let what = match (self.metric, self.kind) {
            ("kl_mean", Some(PromptKind::Target)) => "effect (mean KL below the minimum)",
            ("kl_mean", _) => "mean KL",
            ("kl_max", _) => "max KL",
            ("top1_agreement", _) => "top-1 agreement",
            ("expectation", _) => "expectation",
            (m, _) => m,
        };
        format!("{kind} {what}")
    }

    /// The worst few as `id value (limit L)`, or just the ids for expectations.
    pub fn worst(&self) -> Vec<String> {
        self.failures
            .iter()
            .take(WORST_SHOWN)
            .map(|f| {
                let id = f.prompt_id.as_deref().unwrap_or("-");
                if self.metric == "expectation" {
                    id.to_string()
                } else {
                    format!("{id} {} (limit {})", value(f.value), f.limit)
                }
            })
            .collect()
    }
}

fn value(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

/// Per-prompt failures grouped (by scale, then metric), and the failures that are about the whole run.
pub fn group(verdict: &Verdict) -> (Vec<FailureGroup<'_>>, Vec<&Failure>) {
    let kind_of = |id: &str| {
        verdict
            .prompts
            .iter()
            .find(|p| p.prompt_id == id)
            .map(|p| p.kind)
    };
    let mut groups: Vec<FailureGroup> = Vec::new();
    let mut run_level = Vec::new();
    for f in &verdict.failures {
        let Some(id) = f.prompt_id.as_deref() else {
            run_level.push(f);
            continue;
        };
        let kind = kind_of(id);
        match groups
            .iter_mut()
            .find(|g| g.metric == f.metric && g.kind == kind && g.scale == f.scale)
        {
            Some(g) => g.failures.push(f),
            None => groups.push(FailureGroup {
                metric: &f.metric,
                kind,
                scale: f.scale,
                prompts: verdict
                    .prompts
                    .iter()
                    .filter(|p| Some(p.kind) == kind && Some(p.scale) == f.scale)
                    .count(),
                failures: vec![f],
            }),
        }
    }
    for g in &mut groups {
        g.failures.sort_by(|a, b| {
            (b.value - b.limit)
                .abs()
                .total_cmp(&(a.value - a.limit).abs())
        });
    }
    groups.sort_by(|a, b| {
        a.scale
            .unwrap_or(f32::INFINITY)
            .total_cmp(&b.scale.unwrap_or(f32::INFINITY))
            .then_with(|| a.metric.cmp(b.metric))
    });
    (groups, run_level)
}

/// The text report's failure section: grouped, or every failure when `verbose`.
pub fn text_section(verdict: &Verdict, verbose: bool) -> String {
    let mut o = String::new();
    if verdict.failures.is_empty() {
        return o;
    }
    if verbose {
        let _ = writeln!(o, "\nfailures ({}):", verdict.failures.len());
        for f in &verdict.failures {
            let _ = writeln!(o, "  - {}", f.message);
        }
        return o;
    }
    let (groups, run_level) = group(verdict);
    let _ = writeln!(
        o,
        "\nfailures: {} ({} group(s) by scale and metric; every failure with -v and in the JSON and JUnit reports)",
        verdict.failures.len(),
        groups.len()
    );
    for g in &groups {
        let scale = g.scale.map_or("-".into(), |s| s.to_string());
        let _ = writeln!(
            o,
            "  scale {scale:<6} {:<40} {:>3} of {:<3} prompts  worst: {}",
            g.label(),
            g.failures.len(),
            g.prompts,
            g.worst().join(", ")
        );
    }
    for f in run_level {
        let _ = writeln!(o, "  - {}", f.message);
    }
    o
}

/// The Markdown report's failure section (grouped; the whole list is in the other formats).
pub fn markdown_section(verdict: &Verdict) -> String {
    let mut o = String::new();
    if verdict.failures.is_empty() {
        return o;
    }
    let (groups, run_level) = group(verdict);
    let _ = writeln!(
        o,
        "\n**Failures: {}** (grouped; every failure is in the JSON and JUnit reports)\n",
        verdict.failures.len()
    );
    if !groups.is_empty() {
        let _ = writeln!(o, "| scale | check | failing | worst |");
        let _ = writeln!(o, "|---:|---|---:|---|");
        for g in &groups {
            let _ = writeln!(
                o,
                "| {} | {} | {} of {} | {} |",
                g.scale.map_or("-".into(), |s| s.to_string()),
                g.label(),
                g.failures.len(),
                g.prompts,
                g.worst().join(", ").replace('|', "\\|")
            );
        }
    }
    for f in run_level {
        let _ = writeln!(o, "- {}", f.message.replace('|', "\\|"));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::gate::PromptVerdict;

    fn f(id: Option<&str>, scale: f32, metric: &str, value: f64, limit: f64) -> Failure {
        Failure {
            prompt_id: id.map(String::from),
            scale: Some(scale),
            metric: metric.into(),
            value,
            limit,
            message: format!("{id:?} {metric} {value}"),
        }
    }

    fn pv(id: &str, kind: PromptKind, scale: f32) -> PromptVerdict {
        PromptVerdict {
            prompt_id: id.into(),
            kind,
            scale,
            passed: false,
            expectation_failures: vec![],
            tags: vec![],
        }
    }

    fn verdict() -> Verdict {
        let mut prompts = Vec::new();
        for s in [1.0, 2.0] {
            for id in ["a", "b", "c", "d", "e"] {
                prompts.push(pv(id, PromptKind::Control, s));
            }
            prompts.push(pv("t", PromptKind::Target, s));
        }
        Verdict {
            passed: false,
            failures: vec![
                f(Some("a"), 2.0, "kl_mean", 0.3, 0.25),
                f(Some("b"), 2.0, "kl_mean", 0.9, 0.25),
                f(Some("c"), 2.0, "kl_mean", 0.5, 0.25),
                f(Some("d"), 2.0, "kl_mean", 0.26, 0.25),
                f(Some("a"), 1.0, "top1_agreement", 0.4, 0.6),
                f(Some("t"), 2.0, "kl_mean", 0.01, 0.05),
                f(None, 2.0, "monotone", 0.1, 0.2),
            ],
            warnings: vec![],
            per_scale: vec![],
            prompts,
            recommendation: None,
            per_tag: vec![],
            first_broken_tag: None,
            limits: Default::default(),
            merged: None,
            baseline: None,
        }
    }

    #[test]
    fn groups_by_scale_metric_and_kind_worst_first() {
        let v = verdict();
        let (groups, run_level) = group(&v);
        let shape: Vec<(Option<f32>, String, usize, usize)> = groups
            .iter()
            .map(|g| (g.scale, g.label(), g.failures.len(), g.prompts))
            .collect();
        assert_eq!(
            shape,
            [
                (Some(1.0), "control top-1 agreement".to_string(), 1, 5),
                (Some(2.0), "control mean KL".to_string(), 4, 5),
                (
                    Some(2.0),
                    "target effect (mean KL below the minimum)".to_string(),
                    1,
                    1
                ),
            ]
        );
        assert_eq!(
            groups[1].worst(),
            [
                "b 0.9000 (limit 0.25)",
                "c 0.5000 (limit 0.25)",
                "a 0.3000 (limit 0.25)"
            ]
        );
        assert_eq!(run_level.len(), 1);
    }

    #[test]
    fn text_is_grouped_unless_verbose() {
        let v = verdict();
        let t = text_section(&v, false);
        assert!(
            t.contains("failures: 7 (3 group(s) by scale and metric"),
            "{t}"
        );
        assert!(
            t.contains("  scale 2      control mean KL                            4 of 5   prompts  worst: b 0.9000 (limit 0.25), c 0.5000 (limit 0.25), a 0.3000 (limit 0.25)\n"),
            "{t}"
        );
        assert!(!t.contains("Some(\"d\")"), "{t}");
        assert!(t.contains("  - None monotone 0.1\n"), "{t}");
        let all = text_section(&v, true);
        assert_eq!(all.matches("\n  - ").count(), 7, "{all}");
        let md = markdown_section(&v);
        assert!(md.contains("| 2 | control mean KL | 4 of 5 | b 0.9000 (limit 0.25), c 0.5000 (limit 0.25), a 0.3000 (limit 0.25) |"), "{md}");
    }
}
