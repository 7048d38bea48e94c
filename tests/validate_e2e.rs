//! `lora-validate` end to end on the real quantized test model (Gemma 3 270M Q4_K_M — which also guards against a
//! native-CPU llama.cpp build dying with SIGILL on AMX hosts) with a real adapter trained by peft
//! (fixtures/gemma-lora), converted by `lora-convert` in the test.

use std::path::{Path, PathBuf};

use crate::common::*;

fn prompts() -> [PathBuf; 2] {
    [
        root().join("fixtures/gemma-lora/target.jsonl"),
        root().join("fixtures/gemma-lora/control-smoke.jsonl"),
    ]
}

fn validate(adapter: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let [t, c] = prompts();
    let out = lora_validate()
        .arg("--base")
        .arg(test_model())
        .arg("--adapter")
        .arg(adapter)
        .arg("--prompts")
        .arg(&t)
        .arg("--prompts")
        .arg(&c)
        .args([
            "--scales",
            "0,0.5,1",
            "--max-tokens",
            "16",
            "--format",
            "json",
            "-o",
        ])
        .arg(&report)
        .args(extra)
        .output()
        .unwrap();
    exit_report_stderr(out, &report)
}

fn metric_failures(j: &serde_json::Value, metric: &str) -> usize {
    j["failures"]
        .as_array()
        .map_or(0, |f| f.iter().filter(|x| x["metric"] == metric).count())
}

#[test]
fn trained_adapter_passes_and_shows_its_known_effect() {
    let adapter = gemma_adapter();
    let (code, j, stderr) = validate(adapter.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{stderr}\n{:#}", j["failures"]);
    assert_eq!(j["engine"]["scale_zero_max_abs_logit_delta"], 0.0);
    // The known effect: every held-out target says the secret word at scale 1.
    let at_1: Vec<&serde_json::Value> = j["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["scale"] == 1.0)
        .collect();
    for m in at_1
        .iter()
        .filter(|m| m["prompt_id"].as_str().unwrap().starts_with("secret"))
    {
        assert!(
            m["adapted_text"].as_str().unwrap().contains("BANANAPHONE"),
            "{m}"
        );
        assert!(m["kl_mean"].as_f64().unwrap() > 0.05, "{m}");
    }
    let target_kl = |s: usize| j["per_scale"][s]["target_kl_mean"].as_f64().unwrap();
    assert!(
        target_kl(2) > 0.5,
        "the adapter's known effect on the targets: {}",
        j["per_scale"]
    );
    assert!(
        j["per_scale"][2]["control_kl_mean"].as_f64().unwrap() < 0.1,
        "{}",
        j["per_scale"]
    );
    let per_scale = j["per_scale"].as_array().unwrap();
    let kl = |i: usize| per_scale[i]["all_kl_mean"].as_f64().unwrap();
    assert!(
        kl(0) == 0.0 && kl(0) < kl(1) && kl(1) < kl(2),
        "{per_scale:?}"
    );
}

#[test]
fn over_scaled_adapter_fails_on_control_drift() {
    let adapter = gemma_adapter();
    let (code, j, stderr) = validate(&format!("{}:4", adapter.display()), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        metric_failures(&j, "kl_mean") + metric_failures(&j, "top1_agreement") > 0,
        "{:#}",
        j["failures"]
    );
}

/// Copy an adapter with every `lora_b` set to zero: loads fine, changes nothing.
fn zero_b(src: &Path, dst: &Path) {
    rewrite_gguf(
        src,
        dst,
        |_, _| true,
        |name, bytes| {
            if name.ends_with(".lora_b") {
                bytes.iter_mut().for_each(|b| *b = 0);
            }
        },
    );
}

#[test]
fn adapter_with_zero_b_fails_no_effect() {
    let dir = tempfile::tempdir().unwrap();
    let zeroed = dir.path().join("zero.gguf");
    zero_b(&gemma_adapter(), &zeroed);
    let (code, j, stderr) = validate(zeroed.to_str().unwrap(), &[]);
    assert_eq!(code, 1, "{stderr}");
    let msgs: Vec<&str> = j["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["message"].as_str())
        .collect();
    assert!(msgs.iter().any(|m| m.contains("no effect")), "{msgs:?}");
    assert!(metric_failures(&j, "expectation") >= 5, "{msgs:?}");
}

#[test]
fn adapter_for_another_model_is_refused_before_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("llama.gguf");
    convert_on(case_dir("llama"), &tiny, "llama")
        .assert()
        .success();
    let (code, _, stderr) = validate(tiny.to_str().unwrap(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("the adapter is for `llama` but the base is `gemma3`"),
        "{stderr}"
    );
}

#[test]
fn malformed_prompts_exit_2_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\":\"a\",\"kind\":\"control\",\"prompt\":\"x\"}\n{\"id\":\"b\",\"kind\":\"target\"}\n").unwrap();
    let a = lora_validate()
        .arg("--base")
        .arg(test_model())
        .arg("--adapter")
        .arg(gemma_adapter())
        .arg("--prompts")
        .arg(&bad)
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(stderr.contains("bad.jsonl:2: missing `prompt`"), "{stderr}");
}

#[test]
fn a_base_llama_cpp_cannot_load_exits_3() {
    // The tiny llama base without `llama.block_count`: our reader and precheck accept it (the architecture and
    // every target tensor are there), llama.cpp refuses to load it.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("broken-base.gguf");
    rewrite_gguf(
        &base_gguf("llama"),
        &base,
        |k, _| k != "llama.block_count",
        |_, _| {},
    );
    let adapter = dir.path().join("a.gguf");
    convert_on(case_dir("llama"), &adapter, "llama")
        .assert()
        .success();
    let a = lora_validate()
        .arg("--base")
        .arg(&base)
        .arg("--adapter")
        .arg(&adapter)
        .args(["--prompts"])
        .arg(root().join("golden-prompts/control.jsonl"))
        .assert()
        .code(3);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("llama.cpp could not load the model"),
        "{stderr}"
    );
}

/// `--scales auto` through the library: the outcome of one run on the Gemma test model.
fn run_scales(
    adapter_scale: f32,
    scales: &[f32],
    refine: bool,
) -> lora_gguf::validate::GoldenOutcome {
    use lora_gguf::validate::{self, EngineConfig, Refine, Request};
    let req = Request {
        base: test_model(),
        adapters: vec![(gemma_adapter(), adapter_scale)],
        prompts: prompts().to_vec(),
        scales: scales.to_vec(),
        limits: Default::default(),
        engine: EngineConfig {
            max_tokens: 16,
            threads: test_threads(),
            ..Default::default()
        },
        refine: refine.then(Refine::default),
        baseline: None,
        merged: None,
        shard: None,
        strict_base: false,
        reference: None,
    };
    validate::run(&req, &mut |_| {})
        .unwrap()
        .golden()
        .expect("a golden sweep")
}

/// Part 1 of issue 18, proved: the recommended scale `--scales auto` finds for the over-scaled adapter (own scale 4)
/// lies within its stated precision of the control boundary a fine sweep around it measures; the shipped adapter
/// (own scale 1) is recommended at 1 with no boundary below.
#[test]
fn scales_auto_finds_the_control_boundary_to_its_stated_precision() {
    use lora_gguf::validate::Refine;
    let shipped = run_scales(1.0, &Refine::GRID, true);
    let r = shipped.verdict.recommendation.as_ref().unwrap();
    assert_eq!(
        (r.scale, r.controls_break_at, r.refined_scales.len()),
        (Some(1.0), None, 0),
        "{}",
        r.reason
    );

    let over = run_scales(4.0, &Refine::GRID, true);
    let r = over.verdict.recommendation.as_ref().unwrap();
    let (rec, breaks, precision) = (
        r.scale
            .expect("a scale below the boundary moves the targets"),
        r.controls_break_at
            .expect("the over-scaled adapter breaks the controls"),
        r.precision.unwrap(),
    );
    eprintln!(
        "auto: recommended {rec}, controls break at {breaks}, precision {precision}, probes {:?}",
        r.refined_scales
    );
    assert_eq!(r.refined_scales.len(), Refine::default().max_passes);
    assert!(precision <= 0.25 / 16.0 + 1e-6, "{precision}");
    assert!(
        (breaks - precision - rec).abs() < 1e-6,
        "recommended at the bracket's lower end"
    );
    // The fine sweep: steps of a quarter of the precision from two precisions below to one above the bracket.
    let step = precision / 4.0;
    let fine: Vec<f32> = (0..=20)
        .map(|i| rec - 2.0 * precision + step * i as f32)
        .collect();
    let swept = run_scales(4.0, &fine, false);
    let statuses = lora_gguf::validate::recommend::scale_statuses(
        &swept.set,
        &swept.measured,
        &Default::default(),
    );
    let first_break = statuses
        .iter()
        .find(|s| s.failing_controls > 0)
        .expect("the fine sweep crosses the boundary")
        .scale;
    let boundary = statuses
        .iter()
        .filter(|s| s.scale < first_break)
        .map(|s| s.scale)
        .fold(f32::MIN, f32::max);
    eprintln!("fine sweep: controls hold up to {boundary}, break at {first_break}");
    // The recommended scale lies within the stated precision of the boundary the fine sweep measures (its last
    // holding and first breaking scale). The bracket's upper end may not: near the limit a control's drift is not
    // monotone in the scale (measured: the fine sweep breaks at 0.7227 while the bisection's probe at 0.7344 held),
    // so bisection brackets a crossing, not necessarily the first one — documented in golden-prompts/README.md.
    assert!(
        (rec - boundary).abs() <= precision && (rec - first_break).abs() <= precision,
        "recommended {rec} (bracket up to {breaks}) vs the fine sweep's {boundary} / {first_break} (precision \
         {precision})"
    );
}

/// Part 4 of issue 18: `--baseline-adapter`. The adapter against itself: no drift at all, every expectation kept,
/// pass. With its α doubled (the same adapter twice as strong): the baseline class fails.
#[test]
fn baseline_gate_passes_against_itself_and_fails_with_alpha_doubled() {
    use lora_gguf::gguf::{Value, keys};
    let adapter = gemma_adapter();
    let prev = adapter.to_str().unwrap();
    let (code, j, stderr) = validate(prev, &["--baseline-adapter", prev]);
    assert_eq!(code, 0, "{stderr}\n{:#}", j["failures"]);
    let b = &j["baseline"];
    assert_eq!(b["passed"], true, "{b:#}");
    assert_eq!(
        b["control_kl_max"], 0.0,
        "the same adapter on the same layout is bit for bit the same"
    );
    assert_eq!(b["control_top1"], 1.0);
    let held = b["expectations_held_before"].as_u64().unwrap();
    assert!(
        held >= 3,
        "the secret word, said by the previous adapter: {b:#}"
    );
    assert_eq!(b["expectations_kept"].as_u64(), Some(held));
    assert_eq!(
        b["candidate_control_drift"], b["previous_control_drift"],
        "the same adapter drifts from the base as much as itself"
    );

    let dir = tempfile::tempdir().unwrap();
    let doubled = dir.path().join("doubled.gguf");
    rewrite_gguf(
        &adapter,
        &doubled,
        |k, v| {
            if k == keys::ADAPTER_LORA_ALPHA {
                let Value::F32(a) = v else {
                    panic!("alpha is {v:?}")
                };
                *a *= 2.0;
            }
            true
        },
        |_, _| {},
    );
    let (code, j, stderr) = validate(doubled.to_str().unwrap(), &["--baseline-adapter", prev]);
    assert_eq!(code, 1, "{stderr}");
    let b = &j["baseline"];
    eprintln!(
        "α doubled vs the previous adapter: control KL mean {}, max {}, top-1 {}; expectations {} of {} kept",
        b["control_kl_mean"],
        b["control_kl_max"],
        b["control_top1"],
        b["expectations_kept"],
        b["expectations_held_before"]
    );
    assert_eq!(b["passed"], false, "{b:#}");
    // α doubled: the collateral drift on control prompts grows about fourfold (KL ∝ scale² for a small shift),
    // well past 1.5 × the previous adapter's + 0.01 nats — measured 0.0897 against the previous adapter's drift.
    let (cand, prev) = (
        b["candidate_control_drift"].as_f64().unwrap(),
        b["previous_control_drift"].as_f64().unwrap(),
    );
    assert!(
        cand > 1.5 * prev + 0.01,
        "candidate {cand} vs previous {prev}"
    );
    assert!(
        j["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["metric"] == "baseline_control_drift"),
        "{:#}",
        j["failures"]
    );
    let baseline_failures = j["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["metric"].as_str().unwrap().starts_with("baseline_"))
        .count();
    assert!(baseline_failures > 0 && baseline_failures == b["failures"].as_array().unwrap().len());
}
