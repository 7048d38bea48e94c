//! `--format html` in a real browser: Debian's headless Chromium (installed by tools/build-deps.sh) loads the page
//! lora-validate wrote for a real run (the llama fixture adapter on its tiny base, so it takes about a second) — no
//! console error or warning, the inline script ran (the table sorted by KL, highest first), every plot and series is
//! in the rendered DOM — and a screenshot is kept under the target directory (`report-chromium/report.png`). The
//! page's own Content-Security-Policy forbids loading anything; the same page with one external image added must
//! produce Chromium's CSP error, which proves the console check would see any external load.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// Chromium from Debian's package; the test needs it (tools/build-deps.sh installs it; tools/test.sh runs that first).
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "this test renders the HTML report in Debian's headless Chromium: run tools/build-deps.sh \
         (apt-get install chromium)"
    );
    path
}

fn headless(page: &Path) -> Command {
    let mut c = Command::new(chromium());
    // --no-sandbox: CI runs as root. Logging to stderr prints the page's console errors and warnings
    // ("INFO:CONSOLE…"), not its console.log.
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2400",
    ]);
    c.env("HOME", page.parent().unwrap());
    c
}

/// The DOM after the page loaded and its script ran, and the console lines Chromium logged.
fn load(page: &Path) -> (String, Vec<String>) {
    let out = headless(page)
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The report of a real run (target and control prompts, three scales) as lora-validate wrote it.
fn report(dir: &Path) -> PathBuf {
    let adapter = dir.join("llama.gguf");
    convert_on(case_dir("llama"), &adapter, "llama")
        .assert()
        .success();
    let prompts = dir.join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"id\": \"t1\", \"kind\": \"target\", \"prompt\": \"Hello, world\", \"max_tokens\": 6, \"tags\": [\"greeting\"]}\n\
         {\"id\": \"c1\", \"kind\": \"control\", \"prompt\": \"One two three\", \"max_tokens\": 6, \"tags\": [\"count\"]}\n\
         {\"id\": \"c2\", \"kind\": \"control\", \"prompt\": \"<b>&amp; quoted \\\"x\\\"</b>\", \"max_tokens\": 6}\n",
    )
    .unwrap();
    let page = dir.join("report.html");
    let out = lora_validate()
        .arg("--base")
        .arg(base_gguf("llama"))
        .arg("--adapter")
        .arg(&adapter)
        .arg("--prompts")
        .arg(&prompts)
        .args(["--scales", "0,0.5,1", "-o"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    page
}

#[test]
fn html_report_renders_in_headless_chromium_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let page = report(dir.path());
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no address anywhere in the source, and a policy that forbids loading anything.
    for external in [
        "http:",
        "https:",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(external), "the page refers to `{external}`");
    }
    assert!(html.contains(&format!(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"{}\">",
        lora_gguf::report::html::CSP
    )));

    let (dom, console) = load(&page);
    assert!(console.is_empty(), "console: {console:#?}");
    assert!(
        dom.contains("data-ready=\"1\""),
        "the inline script did not finish"
    );
    assert!(!dom.contains("data-js-error="), "{dom}");
    // The script sorted the per-prompt table by KL mean, highest first (the source is in scale order).
    assert!(dom.contains("data-sorted=\"kl_mean desc\""));
    let table = &dom[dom.find("<table id=\"prompts\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let kls: Vec<f64> = table
        .split("<tr data-scale=")
        .skip(1)
        .map(|row| {
            let cell = row.split("<td data-v=\"").nth(2).unwrap();
            cell[..cell.find('"').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(kls.len(), 9, "3 prompts × 3 scales");
    assert!(kls.windows(2).all(|w| w[0] >= w[1]), "{kls:?}");
    assert!(kls[0] > 0.0 && *kls.last().unwrap() == 0.0, "{kls:?}");
    // Every plot with its series (one point per scale) and its limit line.
    for (plot, series, limit) in [
        (
            "plot-control-kl-mean",
            "control_kl_mean",
            "control_max_kl_mean",
        ),
        (
            "plot-control-kl-max",
            "control_kl_max",
            "control_max_kl_max",
        ),
        (
            "plot-control-top1",
            "control_top1",
            "control_min_top1_agreement",
        ),
        ("plot-target-effect", "target_kl_mean", "target_min_kl_mean"),
    ] {
        let at = dom
            .find(&format!("id=\"{plot}\""))
            .unwrap_or_else(|| panic!("no {plot}"));
        let svg = &dom[at..at + dom[at..].find("</svg>").unwrap()];
        assert!(
            svg.contains(&format!("data-series=\"{series}\" data-points=\"3\"")),
            "{plot}: {svg}"
        );
        assert!(svg.contains(&format!("data-limit=\"{limit}\"")), "{plot}");
    }
    // A screenshot for people, kept with the build outputs (not committed).
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-chromium");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("report.png");
    let _ = std::fs::remove_file(&png);
    let out = headless(&page)
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{}",
        bytes.len()
    );
    std::fs::copy(&page, shots.join("report.html")).unwrap();

    // The console check sees an external load: the same page with one image from elsewhere is blocked by its policy.
    let leaky = dir.path().join("leaky.html");
    std::fs::write(
        &leaky,
        html.replacen(
            "<body>",
            "<body><img src=\"https://example.invalid/x.png\">",
            1,
        ),
    )
    .unwrap();
    let (_, console) = load(&leaky);
    assert!(
        console
            .iter()
            .any(|l| l.contains("https://example.invalid/x.png")
                && l.contains("Content Security Policy")),
        "{console:#?}"
    );
}
