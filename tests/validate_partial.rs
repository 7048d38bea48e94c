//! A validation run that does not finish still reports what did: stopped between steps (Ctrl-C), it judges and
//! reports the prompts measured at every scale, marked partial. On the tiny llama fixture (fast, many chunks) through
//! the library, and on the real Gemma 3 270M through the binary with a real SIGINT.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;
use lora_gguf::report::{self, Format};
use lora_gguf::validate::{self, EngineConfig, Progress, Request};

fn tiny_request(adapter: &std::path::Path, interrupt: Option<Arc<AtomicBool>>) -> Request {
    Request {
        base: base_gguf("llama"),
        adapters: vec![(adapter.to_path_buf(), 1.0)],
        prompts: vec![root().join("fixtures/gemma-lora/control-smoke.jsonl")],
        scales: vec![0.0, 0.5, 1.0],
        limits: Default::default(),
        engine: EngineConfig {
            // Small batches: one teacher-forced chunk per prompt or two.
            n_batch: 32,
            max_tokens: 4,
            threads: test_threads(),
            interrupt,
            ..EngineConfig::default()
        },
        reference: None,
        refine: None,
        merged: None,
        shard: None,
        strict_base: false,
        baseline: None,
    }
}

#[test]
fn an_interrupted_run_reports_the_prompts_it_finished() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("llama.gguf");
    convert_on(case_dir("llama"), &adapter, "llama")
        .assert()
        .success();
    let complete = validate::run(&tiny_request(&adapter, None), &mut |_| {})
        .unwrap()
        .golden()
        .unwrap();
    assert!(complete.measured.partial.is_none());

    // Ask to stop as the first teacher-forced chunk starts: that chunk finishes, nothing after it runs.
    let flag = Arc::new(AtomicBool::new(false));
    let chunks_started = std::cell::Cell::new(0);
    let mut progress = |p: Progress| {
        if let Progress::Compare { .. } = p {
            chunks_started.set(chunks_started.get() + 1);
            flag.store(true, Ordering::SeqCst);
        }
    };
    let out = validate::run(&tiny_request(&adapter, Some(flag.clone())), &mut progress)
        .unwrap()
        .golden()
        .unwrap();
    assert_eq!(chunks_started.get(), 1);
    let partial = out.measured.partial.clone().expect("marked partial");
    let total = out.set.prompts.len();
    assert!(partial.interrupted);
    assert_eq!(partial.prompts_total, total);
    assert!(
        partial.prompts_done > 0 && partial.prompts_done < total,
        "{partial:?}"
    );
    // Exactly the finished prompts, at every scale, with the complete run's numbers (same batch layout).
    let done: Vec<&str> = out.set.prompts[..partial.prompts_done]
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(out.measured.measurements.len(), done.len() * 3);
    for m in &out.measured.measurements {
        assert!(done.contains(&m.prompt_id.as_str()), "{}", m.prompt_id);
        let same = complete
            .measured
            .measurements
            .iter()
            .find(|c| c.prompt_id == m.prompt_id && c.scale == m.scale)
            .unwrap();
        assert_eq!(m, same);
    }
    // The verdict fails, the partial run first among the failures, judged on the finished prompts only.
    assert!(!out.verdict.passed);
    assert_eq!(out.verdict.failures[0].metric, "partial");
    assert!(
        out.verdict
            .prompts
            .iter()
            .all(|v| done.contains(&v.prompt_id.as_str()))
    );
    // Every format says so.
    let render = |f| report::render(f, &out.set, &out.measured, &out.verdict, &out.meta, false);
    let json: serde_json::Value = serde_json::from_str(&render(Format::Json)).unwrap();
    assert_eq!(json["partial"]["interrupted"], true);
    assert_eq!(json["partial"]["prompts_done"], partial.prompts_done);
    assert!(render(Format::Text).contains(&format!(
        "PARTIAL RUN: interrupted (Ctrl-C); {} of {total} prompts measured at every scale",
        partial.prompts_done
    )));
    assert!(render(Format::Junit).contains("the run did not finish"));
    assert!(render(Format::Markdown).contains("the run did not finish"));
    // A complete run's JSON has no `partial` key (schema 1 unchanged for it).
    let full = report::render(
        Format::Json,
        &complete.set,
        &complete.measured,
        &complete.verdict,
        &complete.meta,
        false,
    );
    assert!(!full.contains("\"partial\""));
}

#[cfg(unix)]
#[test]
fn sigint_writes_the_partial_report_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("gemma.gguf");
    convert_cmd(root().join("fixtures/gemma-lora/adapter"), &adapter)
        .arg("--base")
        .arg(test_model())
        .assert()
        .success();
    let report = dir.path().join("r.json");
    let bin = assert_cmd::cargo::cargo_bin("lora-validate");
    // The whole control set: tens of seconds of work, so the signal lands well before the end.
    let child = std::process::Command::new(bin)
        .env("LORA_VALIDATE_THREADS", test_threads().to_string())
        .arg("--base")
        .arg(test_model())
        .arg("--adapter")
        .arg(&adapter)
        .args(["--scales", "0,1", "--format", "json", "-o"])
        .arg(&report)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: finishing the step in progress"),
        "{stderr}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(j["partial"]["interrupted"], true, "{j:#}");
    assert!(
        j["partial"]["prompts_done"].as_u64().unwrap()
            < j["partial"]["prompts_total"].as_u64().unwrap()
    );
    assert_eq!(j["passed"], false);
}
