//! The CI gate as a CI job runs it: `action/gate.sh run` (what action.yml and the GitLab template call) with the
//! binaries under test, the base given as a URL (fetched once into the cache), the trained adapter directory
//! converted by the gate, reports in three formats, the step summary, the job outputs, and the exit status that
//! fails the job.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    fn new() -> Job {
        Job {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// One run of the gate into `out`, as a GitHub job would: inputs in LORA_*, the summary and output files set.
    fn run(&self, adapter: &str, out: &str) -> Output {
        self.run_with(adapter, out, &[])
    }

    fn run_with(&self, adapter: &str, out: &str, env: &[(&str, &str)]) -> Output {
        let bins = assert_cmd::cargo::cargo_bin!("lora-validate")
            .parent()
            .unwrap()
            .to_path_buf();
        let prompts = ["target.jsonl", "control-smoke.jsonl"]
            .map(|p| {
                root()
                    .join("fixtures/gemma-lora")
                    .join(p)
                    .display()
                    .to_string()
            })
            .join(" ");
        Command::new("bash")
            .env("LORA_VALIDATE_THREADS", test_threads().to_string())
            .arg(root().join("action/gate.sh"))
            .arg("run")
            .current_dir(self.dir.path())
            .env("LORA_GGUF_BIN_DIR", bins)
            .env("LORA_GGUF_CACHE", self.path("cache"))
            .env("LORA_BASE", format!("file://{}", test_model().display()))
            .env("LORA_ADAPTER", adapter)
            .env("LORA_PROMPTS", prompts)
            .env("LORA_SCALES", "0,1")
            .env("LORA_ARGS", "--max-tokens 12")
            .env("LORA_OUT", out)
            .env("GITHUB_STEP_SUMMARY", self.path("summary.md"))
            .env("GITHUB_OUTPUT", self.path("output.txt"))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn gate_script_passes_fails_and_refuses_like_a_ci_job() {
    let job = Job::new();
    let adapter_dir = root().join("fixtures/gemma-lora/adapter");

    // Pass: the directory is converted against the fetched base, validated, reported three ways.
    let pass = job.run(adapter_dir.to_str().unwrap(), "pass");
    let log = text(&pass);
    assert_eq!(pass.status.code(), Some(0), "{log}");
    assert!(log.contains("base: downloading file://"), "{log}");
    assert!(log.contains("verified  126 pairs"), "{log}");
    let report = json(&job.path("pass/report.json"));
    assert_eq!(report["passed"], true);
    assert_eq!(report["engine"]["scale_zero_max_abs_logit_delta"], 0.0);
    assert!(job.path("pass/adapter.gguf").is_file());
    let junit = job.read("pass/report.xml");
    assert!(
        junit.contains("<testsuite") && !junit.contains("<failure"),
        "{junit}"
    );
    let markdown = job.read("pass/report.md");
    assert!(markdown.contains("✅ pass"), "{markdown}");
    assert_eq!(job.read("summary.md"), format!("{markdown}\n"));
    if !cfg!(any(
        feature = "cuda",
        feature = "vulkan",
        feature = "metal",
        feature = "rocm"
    )) {
        assert!(
            markdown.contains("on CPU ("),
            "the backend is named: {markdown}"
        );
    }
    assert!(
        log.contains("\nPASS\n"),
        "the text report in the log: {log}"
    );
    let outputs = job.read("output.txt");
    assert!(outputs.contains("passed=true\n"), "{outputs}");
    assert!(
        outputs.contains("report-junit=pass/report.xml\n"),
        "{outputs}"
    );

    // The merge job's path (`merge:` input): reports given to merge-reports are published again; one whole run
    // passes through with its verdict.
    let merged = job.run_with("", "merged", &[("LORA_MERGE", "pass/*.json")]);
    assert_eq!(merged.status.code(), Some(0), "{}", text(&merged));
    assert_eq!(json(&job.path("merged/report.json")), report);
    assert_eq!(job.read("merged/report.md"), markdown);

    // Gate failure: the adapter over-driven ×4 drifts on the control prompts; the job fails with exit 1, reports
    // are still written, and the base comes from the cache this time.
    let fail = job.run(&format!("{}:4", adapter_dir.display()), "fail");
    let log = text(&fail);
    assert_eq!(fail.status.code(), Some(1), "{log}");
    assert!(log.contains("(cached from file://"), "{log}");
    assert_eq!(json(&job.path("fail/report.json"))["passed"], false);
    assert!(job.read("fail/report.xml").contains("<failure"));
    assert!(
        job.read("summary.md")
            .ends_with(&format!("{}\n", job.read("fail/report.md")))
    );
    assert!(job.read("output.txt").contains("passed=false\n"));

    // Bad input: an adapter made for another model is refused (exit 2) and the summary says the gate did not run.
    let other = job.path("llama.gguf");
    lora_convert()
        .arg(case_dir("llama"))
        .arg("-o")
        .arg(&other)
        .arg("--base")
        .arg(base_gguf("llama"))
        .assert()
        .success();
    let bad = job.run(other.to_str().unwrap(), "bad");
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("does not fit the base"),
        "{}",
        text(&bad)
    );
    assert!(
        job.read("summary.md")
            .contains("lora-validate could not run (exit 2)")
    );
}

#[test]
fn action_and_gitlab_template_only_wrap_the_gate_script() {
    let action = std::fs::read_to_string(root().join("action.yml")).unwrap();
    let runs: Vec<&str> = action
        .lines()
        .filter(|l| l.trim_start().starts_with("run:"))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs.iter()
            .all(|l| l.contains("\"$GITHUB_ACTION_PATH/action/gate.sh\"")),
        "{runs:?}"
    );
    for input in ["base", "adapter", "prompts", "scales", "limits"] {
        assert!(action.contains(&format!("\n  {input}:\n")), "input {input}");
    }
    // The template installs the release of its own tag: that version is Cargo.toml's.
    let gitlab = std::fs::read_to_string(root().join("action/gitlab/lora-validate.yml")).unwrap();
    assert!(
        gitlab.contains(&format!(
            "LORA_GGUF_VERSION: \"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "action/gitlab/lora-validate.yml names another version than Cargo.toml's"
    );
    assert!(gitlab.contains("-m lora_gguf.ci"));
}
