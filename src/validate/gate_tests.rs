use super::*;
use crate::validate::golden::{Expectations, Message, PromptLimits, PromptText};
use crate::validate::results::{EngineSettings, Timings};

fn prompt(id: &str, kind: PromptKind, contains: &[&str]) -> GoldenPrompt {
    GoldenPrompt {
        id: id.into(),
        kind,
        text: PromptText::Chat(vec![Message {
            role: "user".into(),
            content: "hi".into(),
        }]),
        max_tokens: None,
        expect: Expectations {
            contains: contains.iter().map(|s| s.to_string()).collect(),
            ..Expectations::default()
        },
        limits: PromptLimits::default(),
        tags: vec![],
        source: "t.jsonl:1".into(),
    }
}

fn m(id: &str, scale: f32, kl: f64, text: &str) -> PromptMeasurement {
    PromptMeasurement {
        prompt_id: id.into(),
        scale,
        adapted_text: text.into(),
        adapted_tokens: vec![],
        first_divergence: (kl > 0.0).then_some(0),
        kl_mean: kl,
        kl_max: kl * 3.0,
        top1_agreement: 1.0 - kl.min(1.0) / 2.0,
        max_abs_logit_delta: kl as f32,
        positions: 8,
    }
}

fn run(ms: Vec<PromptMeasurement>, scales: &[f32]) -> RunMeasurements {
    RunMeasurements {
        base: vec![],
        measurements: ms,
        scale_zero_max_abs_logit_delta: 0.0,
        noise_floor_kl_max: 0.0,
        settings: EngineSettings {
            n_ctx: 512,
            n_batch: 512,
            n_ubatch: 512,
            threads: 2,
            max_tokens: 32,
            scales: scales.to_vec(),
            backend: "CPU (no GPU backend built in or no GPU device found)".into(),
            gpu_layers: 0,
        },
        timings: Timings::default(),
        partial: None,
        alora: None,
        merged: None,
    }
}

fn set() -> GoldenSet {
    GoldenSet {
        prompts: vec![
            prompt("c1", PromptKind::Control, &[]),
            prompt("t1", PromptKind::Target, &["YES"]),
        ],
    }
}

fn sweep(control: [f64; 3], target: [f64; 3], text: &str) -> RunMeasurements {
    let scales = [0.0, 0.5, 1.0];
    let mut ms = Vec::new();
    for (i, &s) in scales.iter().enumerate() {
        ms.push(m("c1", s, control[i], "same"));
        ms.push(m("t1", s, target[i], if s == 1.0 { text } else { "" }));
    }
    run(ms, &scales)
}

#[test]
fn a_good_adapter_passes() {
    let v = judge(
        &set(),
        &sweep([0.0, 0.01, 0.03], [0.0, 0.2, 0.8], "YES sir"),
        &Limits::default(),
    );
    assert!(v.passed, "{:?}", v.failures);
    assert_eq!(v.per_scale.len(), 3);
    assert_eq!(v.per_scale[2].target_kl_mean, 0.8);
}

#[test]
fn control_drift_names_prompt_scale_metric_value_and_limit() {
    let v = judge(
        &set(),
        &sweep([0.0, 0.1, 0.4], [0.0, 0.2, 0.8], "YES"),
        &Limits::default(),
    );
    assert!(!v.passed);
    let f = &v.failures[0];
    assert_eq!(
        (
            f.prompt_id.as_deref(),
            f.scale,
            f.metric.as_str(),
            f.value,
            f.limit
        ),
        (Some("c1"), Some(1.0), "kl_mean", 0.4, 0.25)
    );
    assert_eq!(
        f.message,
        "prompt `c1` at scale 1: control drift: mean KL 0.4000 > 0.25"
    );
}

#[test]
fn an_adapter_without_effect_fails_on_targets() {
    let v = judge(
        &set(),
        &sweep([0.0, 0.0, 0.0], [0.0, 0.0, 0.001], "YES"),
        &Limits::default(),
    );
    let f = v.failures.iter().find(|f| f.metric == "kl_mean").unwrap();
    assert!(f.message.contains("no effect"), "{}", f.message);
}

#[test]
fn without_targets_no_effect_is_judged_against_the_noise_floor() {
    let set = GoldenSet {
        prompts: vec![prompt("c1", PromptKind::Control, &[])],
    };
    let scales = [0.0, 1.0];
    let r = run(vec![m("c1", 0.0, 0.0, ""), m("c1", 1.0, 0.0, "")], &scales);
    let v = judge(&set, &r, &Limits::default());
    assert!(
        v.failures.iter().any(|f| f.metric == "effect"),
        "{:?}",
        v.failures
    );
}

#[test]
fn non_monotone_sweep_fails() {
    let v = judge(
        &set(),
        &sweep([0.0, 0.05, 0.02], [0.0, 0.9, 0.3], "YES"),
        &Limits::default(),
    );
    let f = v.failures.iter().find(|f| f.metric == "monotone").unwrap();
    assert_eq!(
        f.message,
        "non-monotone sweep: mean KL 0.1600 at scale 1 is not above 0.4750 at scale 0.5"
    );
}

#[test]
fn failed_expectation_is_reported_with_the_text() {
    let v = judge(
        &set(),
        &sweep([0.0, 0.01, 0.03], [0.0, 0.2, 0.8], "no"),
        &Limits::default(),
    );
    let f = v
        .failures
        .iter()
        .find(|f| f.metric == "expectation")
        .unwrap();
    assert_eq!(
        f.message,
        "prompt `t1` at scale 1: the continuation does not contain \"YES\": \"no\""
    );
    assert_eq!(v.per_scale[2].expectation_failures, 1);
}

#[test]
fn engine_self_check_failure() {
    let mut r = sweep([0.0, 0.01, 0.03], [0.0, 0.2, 0.8], "YES");
    r.scale_zero_max_abs_logit_delta = 0.5;
    let v = judge(&set(), &r, &Limits::default());
    assert!(v.failures.iter().any(|f| f.metric == "self_check"));
}

#[test]
fn limits_file_overrides_some_keys_and_rejects_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l.json");
    std::fs::write(&p, r#"{"control_max_kl_mean": 1.5}"#).unwrap();
    let l = Limits::from_json_file(&p).unwrap();
    assert_eq!(
        (l.control_max_kl_mean, l.target_min_kl_mean),
        (1.5, Limits::default().target_min_kl_mean)
    );
    std::fs::write(&p, r#"{"control_max_kl": 1.5}"#).unwrap();
    assert!(
        Limits::from_json_file(&p)
            .unwrap_err()
            .to_string()
            .contains("unknown field `control_max_kl`")
    );
}
