//! Reports of a validation run: text for people (per-scale table, recommended scale, per-tag slices, worst prompts
//! with a word diff, failures grouped), JSON with a versioned schema (golden-prompts/README.md), JUnit XML (one test
//! case per prompt × scale), Markdown for a CI step summary and one self-contained HTML page with plots
//! ([`html`]). Every format carries the timings.

use std::fmt::Write as _;
use std::path::Path;

pub mod failures;
pub mod html;

use serde_json::json;

use crate::validate::gate::{Limits, Verdict};
use crate::validate::golden::GoldenSet;
use crate::validate::results::RunMeasurements;
use crate::validate::shard::ShardInfo;

/// Version of the JSON report schema; bumped on any incompatible change.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// For people.
    Text,
    /// For programs.
    Json,
    /// For CI test views.
    Junit,
    /// For CI step summaries.
    Markdown,
    /// For people deciding: one self-contained page with plots.
    Html,
}

impl Format {
    /// The format a report file's extension asks for: `.txt`, `.json`, `.xml` (JUnit), `.md`, `.html`.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "txt" => Format::Text,
            "json" => Format::Json,
            "xml" => Format::Junit,
            "md" | "markdown" => Format::Markdown,
            "html" | "htm" => Format::Html,
            _ => return None,
        })
    }

    /// The format's name, as `--format` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Junit => "junit",
            Format::Markdown => "markdown",
            Format::Html => "html",
        }
    }
}

/// How a report is rendered for its reader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours (a terminal).
    pub color: bool,
    /// Every failure instead of the grouped summary (text).
    pub verbose: bool,
}

/// What the run was about.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportMeta {
    /// The base model path.
    pub base: String,
    /// Adapter paths with their own scales.
    pub adapters: Vec<(String, f32)>,
    /// Tool name and version.
    pub tool_version: String,
    /// `--merged`: the merged model's path.
    pub merged: Option<String>,
    /// The limits the run was judged with (in the JSON report, so `merge-reports` judges shards alike).
    pub limits: Limits,
    /// Which shard of the golden set this run covers (None: all of it).
    pub shard: Option<ShardInfo>,
}

/// Render a report.
pub fn render(
    format: Format,
    set: &GoldenSet,
    run: &RunMeasurements,
    verdict: &Verdict,
    meta: &ReportMeta,
    color: bool,
) -> String {
    let style = Style {
        color,
        verbose: false,
    };
    render_styled(format, set, run, verdict, meta, style)
}

/// Render a report in a style.
pub fn render_styled(
    format: Format,
    set: &GoldenSet,
    run: &RunMeasurements,
    verdict: &Verdict,
    meta: &ReportMeta,
    style: Style,
) -> String {
    match format {
        Format::Text => text(set, run, verdict, meta, style),
        Format::Html => html::render(set, run, verdict, meta),
        Format::Json => {
            serde_json::to_string_pretty(&json_value(set, run, verdict, meta)).unwrap_or_default()
                + "\n"
        }
        Format::Junit => junit(run, verdict, meta),
        Format::Markdown => markdown(run, verdict, meta),
    }
}

fn base_text<'a>(run: &'a RunMeasurements, id: &str) -> &'a str {
    run.base
        .iter()
        .find(|b| b.prompt_id == id)
        .map_or("", |b| b.text.as_str())
}

/// A word-level diff of base vs adapted text: `[-removed-]{+added+}` or ANSI colours.
pub fn word_diff(base: &str, adapted: &str, color: bool) -> String {
    let diff = similar::TextDiff::from_words(base, adapted);
    let mut out = String::new();
    for change in diff.iter_all_changes() {
        // One line per prompt: show line breaks instead of breaking the report's layout.
        let shown = change.value().replace('\n', "⏎");
        let v = shown.as_str();
        match (change.tag(), color) {
            (similar::ChangeTag::Equal, _) => out.push_str(v),
            (similar::ChangeTag::Delete, true) => write!(out, "\x1b[31;9m{v}\x1b[0m").unwrap_or(()),
            (similar::ChangeTag::Insert, true) => write!(out, "\x1b[32m{v}\x1b[0m").unwrap_or(()),
            (similar::ChangeTag::Delete, false) => write!(out, "[-{v}-]").unwrap_or(()),
            (similar::ChangeTag::Insert, false) => write!(out, "{{+{v}+}}").unwrap_or(()),
        }
    }
    out
}

fn timings_line(run: &RunMeasurements) -> String {
    let t = &run.timings;
    let passes: Vec<String> = t
        .passes
        .iter()
        .map(|p| {
            let name = p.scale.map_or("base".to_string(), |s| format!("×{s}"));
            format!(
                "{name} {:.0} prompt tok/s, {:.0} gen tok/s",
                p.prompt_tokens_per_s, p.gen_tokens_per_s
            )
        })
        .collect();
    let ph = &t.phases;
    format!(
        "model load {:.0} ms, adapter load {:.1} ms, adapter switch mean {:.0} µs / max {:.0} µs ({}×), total {:.1} s; \
         {}; phases: base generate {:.1} s, base teacher-forced {:.1} s, adapted teacher-forced {:.1} s, compare {:.1} s, \
         adapted generate {:.1} s{}",
        t.model_load_ms,
        t.adapter_load_ms,
        t.adapter_switch_ms * 1000.0,
        t.adapter_switch_max_ms * 1000.0,
        t.adapter_switches,
        t.total_ms / 1000.0,
        passes.join("; "),
        ph.base_generate_ms / 1000.0,
        ph.base_teacher_forced_ms / 1000.0,
        ph.adapted_teacher_forced_ms / 1000.0,
        ph.compare_ms / 1000.0,
        ph.adapted_generate_ms / 1000.0,
        if ph.merged_ms > 0.0 {
            format!(", merged model {:.1} s", ph.merged_ms / 1000.0)
        } else {
            String::new()
        },
    )
}

fn text(
    set: &GoldenSet,
    run: &RunMeasurements,
    verdict: &Verdict,
    meta: &ReportMeta,
    style: Style,
) -> String {
    let color = style.color;
    let mut o = String::new();
    let adapters: Vec<String> = meta
        .adapters
        .iter()
        .map(|(p, s)| format!("{p} ×{s}"))
        .collect();
    let _ = writeln!(
        o,
        "lora-validate: {} on {}",
        adapters.join(" + "),
        meta.base
    );
    if let Some(p) = &run.partial {
        let _ = writeln!(
            o,
            "PARTIAL RUN: {}; {} of {} prompts measured at every scale",
            p.reason, p.prompts_done, p.prompts_total
        );
    }
    if let Some(a) = &run.alora {
        let _ = writeln!(o, "{}", a.summary());
    }
    let _ = writeln!(
        o,
        "{} prompts ({} control, {} target); engine self-check max |Δlogit| at scale 0 = {}; noise floor KL = {:.1e}",
        set.prompts.len(),
        set.prompts
            .iter()
            .filter(|p| p.kind == crate::validate::golden::PromptKind::Control)
            .count(),
        set.prompts
            .iter()
            .filter(|p| p.kind == crate::validate::golden::PromptKind::Target)
            .count(),
        run.scale_zero_max_abs_logit_delta,
        run.noise_floor_kl_max
    );
    let _ = writeln!(o, "backend: {}", run.settings.backend);
    let _ = writeln!(
        o,
        "\n  scale  control KL mean  control KL max  control top-1  target KL mean  changed  expect-fail"
    );
    for s in &verdict.per_scale {
        let [scale, kl_mean, kl_max, top1, target, changed, failures] = per_scale_cells(s);
        let _ = writeln!(
            o,
            "  {scale:>5}  {kl_mean:>15}  {kl_max:>14}  {top1:>13}  {target:>14}  {changed:>7}  {failures:>11}"
        );
    }
    o.push_str(&recommendation_lines(verdict));
    o.push_str(&tag_table(verdict, false));
    merged_text(&mut o, run, verdict, meta, style.color);
    if let Some(b) = &verdict.baseline {
        let _ = writeln!(o, "\n{}", b.lines().join("\n"));
    }
    let top = run
        .settings
        .scales
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut worst: Vec<_> = run
        .measurements
        .iter()
        .filter(|m| m.scale == top && m.first_divergence.is_some())
        .collect();
    worst.sort_by(|a, b| b.kl_mean.total_cmp(&a.kl_mean));
    if !worst.is_empty() {
        let _ = writeln!(o, "\nmost moved prompts at scale {top}:");
        for m in worst.iter().take(5) {
            let _ = writeln!(
                o,
                "  {} (KL mean {:.4}, first divergence at token {}):",
                m.prompt_id,
                m.kl_mean,
                m.first_divergence.unwrap_or(0)
            );
            let _ = writeln!(
                o,
                "    {}",
                word_diff(base_text(run, &m.prompt_id), &m.adapted_text, color)
                    .replace('\n', "\n    ")
            );
        }
    }
    for w in &verdict.warnings {
        let _ = writeln!(o, "\nwarning: {w}");
    }
    o.push_str(&failures::text_section(verdict, style.verbose));
    let _ = writeln!(o, "\ntimings: {}", timings_line(run));
    let _ = writeln!(o, "\n{}", if verdict.passed { "PASS" } else { "FAIL" });
    o
}

/// One row of the per-scale table, its cells as every report format prints them: scale, control KL mean and max,
/// control top-1, target KL mean, changed (%), expectation failures.
pub(crate) fn per_scale_cells(s: &crate::validate::gate::ScaleSummary) -> [String; 7] {
    [
        s.scale.to_string(),
        format!("{:.4}", s.control_kl_mean),
        format!("{:.4}", s.control_kl_max),
        format!("{:.3}", s.control_top1),
        format!("{:.4}", s.target_kl_mean),
        format!("{:.0}%", s.changed_fraction * 100.0),
        s.expectation_failures.to_string(),
    ]
}

/// `recommended scale: …` and the refinement, for the text report.
fn recommendation_lines(verdict: &Verdict) -> String {
    let mut o = String::new();
    if let Some(r) = &verdict.recommendation {
        let _ = writeln!(o, "\nrecommended scale: {}", r.reason);
        if let Some(e) = r.min_effective_scale {
            let _ = writeln!(o, "  targets move enough from scale {e}");
        }
        if !r.refined_scales.is_empty() {
            let shown: Vec<String> = r.refined_scales.iter().map(f32::to_string).collect();
            let _ = writeln!(
                o,
                "  --scales auto: {} extra pass(es) at {}, reusing the base pass",
                r.refined_scales.len(),
                shown.join(", ")
            );
        }
    }
    o
}

/// The per-tag table: failing prompts per tag at each scale, and the tag that broke first.
fn tag_table(verdict: &Verdict, markdown: bool) -> String {
    let mut o = String::new();
    if verdict.per_tag.is_empty() {
        return o;
    }
    let mut scales: Vec<f32> = verdict.per_tag.iter().map(|t| t.scale).collect();
    scales.sort_by(f32::total_cmp);
    scales.dedup();
    let mut tags: Vec<&str> = verdict.per_tag.iter().map(|t| t.tag.as_str()).collect();
    tags.dedup();
    let top = scales.last().copied().unwrap_or(0.0);
    let cell = |tag: &str, s: f32| {
        verdict
            .per_tag
            .iter()
            .find(|t| t.tag == tag && t.scale == s)
            .map_or("-".to_string(), |t| format!("{}/{}", t.failing, t.prompts))
    };
    let kl_at_top = |tag: &str| {
        verdict
            .per_tag
            .iter()
            .find(|t| t.tag == tag && t.scale == top)
            .map_or(0.0, |t| t.kl_mean)
    };
    if markdown {
        let heads: Vec<String> = scales.iter().map(|s| format!("×{s}")).collect();
        let _ = writeln!(
            o,
            "\n**Per tag** (failing prompts / prompts)\n\n| tag | {} | KL mean at {top} |",
            heads.join(" | ")
        );
        let _ = writeln!(o, "|---|{}---:|", "---:|".repeat(scales.len()));
        for tag in &tags {
            let cells: Vec<String> = scales.iter().map(|&s| cell(tag, s)).collect();
            let _ = writeln!(
                o,
                "| {tag} | {} | {:.4} |",
                cells.join(" | "),
                kl_at_top(tag)
            );
        }
    } else {
        let width = tags.iter().map(|t| t.len()).max().unwrap_or(3).max(3);
        let heads: Vec<String> = scales
            .iter()
            .map(|s| format!("{:>7}", format!("×{s}")))
            .collect();
        let _ = writeln!(
            o,
            "\nper tag (failing prompts / prompts):\n  {:<width$}  {}  KL mean at {top}",
            "tag",
            heads.join(" ")
        );
        for tag in &tags {
            let cells: Vec<String> = scales
                .iter()
                .map(|&s| format!("{:>7}", cell(tag, s)))
                .collect();
            let _ = writeln!(
                o,
                "  {tag:<width$}  {}  {:.4}",
                cells.join(" "),
                kl_at_top(tag)
            );
        }
    }
    if let Some(b) = &verdict.first_broken_tag {
        let _ = writeln!(
            o,
            "{}first to break: `{}` at scale {} ({} of {} prompts fail)",
            if markdown { "\n" } else { "  " },
            b.tag,
            b.scale,
            b.failing,
            b.prompts
        );
    }
    o
}

/// Whether a failure is about the merged model (`--merged`) rather than the runtime adapter's sweep.
fn is_merged_failure(f: &crate::validate::gate::Failure) -> bool {
    f.metric.starts_with("merged_")
}

/// The merged model's numbers in one line, for every human-readable format.
fn merged_line(s: &crate::validate::merged::MergedSummary) -> String {
    format!(
        "KL mean {:.4}, KL max {:.4}, top-1 {:.3}, greedy {:.3} ({} of {} continuations identical); its drift from \
         the base: KL mean {:.4}, top-1 {:.3}",
        s.kl_mean,
        s.kl_max,
        s.top1_agreement,
        s.greedy_agreement,
        s.identical_continuations,
        s.prompts,
        s.base_kl_mean,
        s.base_top1_agreement
    )
}

/// `--merged` in the text report: the summary, then the prompts whose merged continuation left the runtime
/// adapter's (word diff: runtime adapter → merged).
fn merged_text(
    o: &mut String,
    run: &RunMeasurements,
    verdict: &Verdict,
    meta: &ReportMeta,
    color: bool,
) {
    let (Some(s), Some(prompts)) = (&verdict.merged, &run.merged) else {
        return;
    };
    let _ = writeln!(
        o,
        "\nmerged {} vs base + runtime adapter (×1):\n  {}",
        meta.merged.as_deref().unwrap_or("?"),
        merged_line(s)
    );
    let mut differing: Vec<_> = prompts
        .iter()
        .filter(|m| m.first_divergence.is_some())
        .collect();
    differing.sort_by(|a, b| b.kl_mean.total_cmp(&a.kl_mean));
    for m in differing.iter().take(3) {
        let reference = run
            .measurements
            .iter()
            .find(|r| r.prompt_id == m.prompt_id && r.scale == 1.0);
        let _ = writeln!(
            o,
            "  {} (KL mean {:.4}, continuations differ from token {}):",
            m.prompt_id,
            m.kl_mean,
            m.first_divergence.unwrap_or(0)
        );
        if let Some(r) = reference {
            let _ = writeln!(
                o,
                "    {}",
                word_diff(&r.adapted_text, &m.merged_text, color)
            );
        }
    }
}

/// The JSON report as a value (schema version `JSON_SCHEMA_VERSION`).
pub fn json_value(
    set: &GoldenSet,
    run: &RunMeasurements,
    verdict: &Verdict,
    meta: &ReportMeta,
) -> serde_json::Value {
    let mut value = json!({
        "schema_version": JSON_SCHEMA_VERSION,
        "tool": meta.tool_version,
        "base": meta.base,
        "adapters": meta.adapters.iter().map(|(p, s)| json!({"path": p, "scale": s})).collect::<Vec<_>>(),
        "passed": verdict.passed,
        "failures": verdict.failures,
        "warnings": verdict.warnings,
        "per_scale": verdict.per_scale,
        "limits": verdict.limits,
        "prompts": verdict.prompts,
        "recommendation": verdict.recommendation,
        "per_tag": verdict.per_tag,
        "first_broken_tag": verdict.first_broken_tag,
        "measurements": run.measurements,
        "base_continuations": run.base,
        "engine": {
            "settings": run.settings,
            "scale_zero_max_abs_logit_delta": run.scale_zero_max_abs_logit_delta,
            "noise_floor_kl_max": run.noise_floor_kl_max,
        },
        "timings": run.timings,
        "golden": set.prompts,
        "limits": meta.limits,
        "shard": meta.shard,
    });
    if let Some(partial) = &run.partial {
        value["partial"] = json!(partial);
    }
    if let Some(alora) = &run.alora {
        value["alora"] = json!(alora);
    }
    if let (Some(summary), Some(prompts)) = (&verdict.merged, &run.merged) {
        value["merged"] = json!({
            "path": meta.merged,
            "summary": summary,
            "prompts": prompts,
        });
    }
    if let Some(baseline) = &verdict.baseline {
        value["baseline"] = json!(baseline);
    }
    value
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => {
                o.push_str(&format!("&#x{:x};", c as u32))
            }
            c => o.push(c),
        }
    }
    o
}

/// The run's findings as JUnit properties: the recommended scale and the first tag to break.
fn run_properties(verdict: &Verdict) -> Vec<(&'static str, String)> {
    let mut p = Vec::new();
    if let Some(r) = &verdict.recommendation {
        p.push((
            "recommended_scale",
            r.scale.map_or("none".into(), |s| s.to_string()),
        ));
        if let Some(x) = r.precision {
            p.push(("recommended_scale_precision", x.to_string()));
        }
        if let Some(x) = r.controls_break_at {
            p.push(("controls_break_at", x.to_string()));
        }
        if let Some(x) = r.min_effective_scale {
            p.push(("min_effective_scale", x.to_string()));
        }
        p.push(("recommendation", r.reason.clone()));
    }
    if let Some(b) = &verdict.first_broken_tag {
        p.push((
            "first_broken_tag",
            format!("{} at scale {}", b.tag, b.scale),
        ));
    }
    p
}

fn junit(run: &RunMeasurements, verdict: &Verdict, meta: &ReportMeta) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let total_failures = verdict.failures.len();
    let _ = writeln!(
        o,
        "<testsuites name=\"lora-validate\" tests=\"{}\" failures=\"{total_failures}\" time=\"{:.3}\">",
        verdict.prompts.len(),
        run.timings.total_ms / 1000.0
    );
    for s in &run.settings.scales {
        let cases: Vec<_> = verdict.prompts.iter().filter(|p| p.scale == *s).collect();
        let fails = cases.iter().filter(|p| !p.passed).count();
        let _ = writeln!(
            o,
            "  <testsuite name=\"scale {s}\" tests=\"{}\" failures=\"{fails}\">",
            cases.len()
        );
        let _ = writeln!(
            o,
            "    <properties><property name=\"base\" value=\"{}\"/><property name=\"backend\" value=\"{}\"/></properties>",
            xml_escape(&meta.base),
            xml_escape(&run.settings.backend)
        );
        for c in cases {
            let m = run
                .measurements
                .iter()
                .find(|m| m.prompt_id == c.prompt_id && m.scale == *s);
            let _ = write!(
                o,
                "    <testcase classname=\"lora-validate.{}\" name=\"{}@{s}\"",
                xml_escape(&format!("{:?}", c.kind).to_lowercase()),
                xml_escape(&c.prompt_id)
            );
            let messages: Vec<&str> = verdict
                .failures
                .iter()
                .filter(|f| {
                    f.prompt_id.as_deref() == Some(c.prompt_id.as_str()) && f.scale == Some(*s)
                })
                .map(|f| f.message.as_str())
                .collect();
            if messages.is_empty() {
                let _ = writeln!(o, "/>");
            } else {
                let _ = writeln!(o, ">");
                let _ = writeln!(
                    o,
                    "      <failure message=\"{}\">{}</failure>",
                    xml_escape(messages[0]),
                    xml_escape(&messages.join("\n"))
                );
                if let Some(m) = m {
                    let _ = writeln!(
                        o,
                        "      <system-out>{}</system-out>",
                        xml_escape(&m.adapted_text)
                    );
                }
                let _ = writeln!(o, "    </testcase>");
            }
        }
        let _ = writeln!(o, "  </testsuite>");
    }
    if let Some(s) = &verdict.merged {
        let fails: Vec<&str> = verdict
            .failures
            .iter()
            .filter(|f| is_merged_failure(f))
            .map(|f| f.message.as_str())
            .collect();
        let _ = writeln!(
            o,
            "  <testsuite name=\"merged\" tests=\"1\" failures=\"{}\">",
            usize::from(!fails.is_empty())
        );
        let _ = writeln!(
            o,
            "    <properties><property name=\"merged\" value=\"{}\"/></properties>",
            xml_escape(meta.merged.as_deref().unwrap_or(""))
        );
        let _ = write!(
            o,
            "    <testcase classname=\"lora-validate.merged\" name=\"merged model vs base + runtime adapter\""
        );
        if fails.is_empty() {
            let _ = writeln!(
                o,
                ">\n      <system-out>{}</system-out>\n    </testcase>",
                xml_escape(&merged_line(s))
            );
        } else {
            let _ = writeln!(
                o,
                ">\n      <failure message=\"{}\">{}</failure>\n      <system-out>{}</system-out>\n    </testcase>",
                xml_escape(fails[0]),
                xml_escape(&fails.join("\n")),
                xml_escape(&merged_line(s))
            );
        }
        let _ = writeln!(o, "  </testsuite>");
    }
    if let Some(b) = &verdict.baseline {
        o.push_str(&junit_baseline(b));
    }
    let global: Vec<_> = verdict
        .failures
        .iter()
        .filter(|f| f.prompt_id.is_none() && !is_merged_failure(f))
        .collect();
    let _ = writeln!(
        o,
        "  <testsuite name=\"run\" tests=\"1\" failures=\"{}\">",
        usize::from(!global.is_empty())
    );
    let _ = writeln!(o, "    <properties>");
    for (name, value) in run_properties(verdict) {
        let _ = writeln!(
            o,
            "      <property name=\"{name}\" value=\"{}\"/>",
            xml_escape(&value)
        );
    }
    let _ = writeln!(o, "    </properties>");
    let _ = write!(
        o,
        "    <testcase classname=\"lora-validate.run\" name=\"self-check, effect and monotone sweep\""
    );
    if global.is_empty() {
        let _ = writeln!(o, "/>");
    } else {
        let msgs: Vec<&str> = global.iter().map(|f| f.message.as_str()).collect();
        let _ = writeln!(
            o,
            ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
            xml_escape(msgs[0]),
            xml_escape(&msgs.join("\n"))
        );
    }
    let _ = writeln!(o, "  </testsuite>\n</testsuites>");
    o
}

/// The `baseline` test suite: one case per prompt compared with the previous adapter.
fn junit_baseline(b: &crate::validate::baseline::BaselineVerdict) -> String {
    let mut o = String::new();
    let drift_failure = b
        .failures
        .iter()
        .find(|f| f.metric == "baseline_control_drift");
    let has_drift = b.candidate_control_drift.is_some();
    let failing = b
        .prompts
        .iter()
        .filter(|p| !p.regressions.is_empty())
        .count()
        + usize::from(drift_failure.is_some());
    let _ = writeln!(
        o,
        "  <testsuite name=\"baseline\" tests=\"{}\" failures=\"{failing}\">",
        b.prompts.len() + usize::from(has_drift)
    );
    let _ = writeln!(
        o,
        "    <properties><property name=\"previous_adapter\" value=\"{}\"/><property name=\"previous_scale\" value=\"{}\"/></properties>",
        xml_escape(&b.adapter),
        b.scale
    );
    for p in &b.prompts {
        let _ = write!(
            o,
            "    <testcase classname=\"lora-validate.baseline\" name=\"{}\"",
            xml_escape(&p.prompt_id)
        );
        match p.regressions.first() {
            None => {
                let _ = writeln!(o, "/>");
            }
            Some(first) => {
                let _ = writeln!(
                    o,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml_escape(first),
                    xml_escape(&p.regressions.join("\n"))
                );
            }
        }
    }
    if has_drift {
        let _ = write!(
            o,
            "    <testcase classname=\"lora-validate.baseline\" name=\"collateral drift against the previous adapter\""
        );
        match drift_failure {
            None => {
                let _ = writeln!(o, "/>");
            }
            Some(f) => {
                let _ = writeln!(
                    o,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml_escape(&f.message),
                    xml_escape(&f.message)
                );
            }
        }
    }
    let _ = writeln!(o, "  </testsuite>");
    o
}

fn markdown(run: &RunMeasurements, verdict: &Verdict, meta: &ReportMeta) -> String {
    let mut o = String::new();
    let adapters: Vec<String> = meta
        .adapters
        .iter()
        .map(|(p, s)| format!("`{p}` ×{s}"))
        .collect();
    let _ = writeln!(
        o,
        "### lora-validate: {} — {}\n",
        if verdict.passed {
            "✅ pass"
        } else {
            "❌ fail"
        },
        adapters.join(" + ")
    );
    let _ = writeln!(
        o,
        "Base `{}` on {}. Engine self-check at scale 0: max |Δlogit| = {}.\n",
        meta.base, run.settings.backend, run.scale_zero_max_abs_logit_delta
    );
    if let Some(p) = &run.partial {
        let _ = writeln!(
            o,
            "**PARTIAL RUN:** {}; {} of {} prompts measured at every scale.\n",
            p.reason, p.prompts_done, p.prompts_total
        );
    }
    if let Some(a) = &run.alora {
        let _ = writeln!(o, "{}.\n", a.summary());
    }
    let _ = writeln!(
        o,
        "| scale | control KL mean | control KL max | control top-1 | target KL mean | changed | expectation failures |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|");
    for s in &verdict.per_scale {
        let _ = writeln!(o, "| {} |", per_scale_cells(s).join(" | "));
    }
    if let Some(r) = &verdict.recommendation {
        let _ = writeln!(
            o,
            "\n**Recommended scale:** {}",
            r.reason.replace('|', "\\|")
        );
    }
    if let Some(s) = &verdict.merged {
        let _ = writeln!(
            o,
            "\n**Merged** `{}` vs base + runtime adapter (×1): {}",
            meta.merged.as_deref().unwrap_or("?"),
            merged_line(s)
        );
    }
    o.push_str(&tag_table(verdict, true));
    if let Some(b) = &verdict.baseline {
        let _ = writeln!(o, "\n**{}**\n", b.lines()[0]);
        for line in &b.lines()[1..] {
            let _ = writeln!(o, "- {}", line.trim());
        }
    }
    o.push_str(&failures::markdown_section(verdict));
    let _ = writeln!(o, "\n<sub>{}</sub>", timings_line(run));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::gate::{Limits, judge};
    use crate::validate::golden::{
        Expectations, GoldenPrompt, Message, PromptKind, PromptLimits, PromptText,
    };
    use crate::validate::results::{BaseContinuation, EngineSettings, PromptMeasurement, Timings};

    fn fixture() -> (GoldenSet, RunMeasurements, Verdict, ReportMeta) {
        let set = GoldenSet {
            prompts: vec![GoldenPrompt {
                id: "a<&>".into(),
                kind: PromptKind::Control,
                text: PromptText::Chat(vec![Message {
                    role: "user".into(),
                    content: "x".into(),
                }]),
                max_tokens: None,
                expect: Expectations::default(),
                limits: PromptLimits::default(),
                tags: vec![],
                source: "s:1".into(),
            }],
        };
        let m = |scale: f32, kl: f64, text: &str| PromptMeasurement {
            prompt_id: "a<&>".into(),
            scale,
            adapted_text: text.into(),
            adapted_tokens: vec![],
            first_divergence: (kl > 0.0).then_some(1),
            kl_mean: kl,
            kl_max: kl,
            top1_agreement: 1.0,
            max_abs_logit_delta: 0.0,
            positions: 4,
        };
        let run = RunMeasurements {
            base: vec![BaseContinuation {
                prompt_id: "a<&>".into(),
                prompt_tokens: vec![1],
                text: "the cat sat".into(),
                tokens: vec![],
            }],
            measurements: vec![m(0.0, 0.0, "the cat sat"), m(1.0, 0.5, "the dog sat")],
            scale_zero_max_abs_logit_delta: 0.0,
            noise_floor_kl_max: 0.0,
            settings: EngineSettings {
                n_ctx: 64,
                n_batch: 64,
                n_ubatch: 64,
                threads: 1,
                max_tokens: 8,
                scales: vec![0.0, 1.0],
                backend: "CPU (no GPU backend built in or no GPU device found)".into(),
                gpu_layers: 0,
            },
            timings: Timings::default(),
            partial: None,
            alora: None,
            merged: None,
        };
        let verdict = judge(&set, &run, &Limits::default());
        let meta = ReportMeta {
            base: "b.gguf".into(),
            adapters: vec![("a.gguf".into(), 1.0)],
            tool_version: "lora-validate 0.1.0".into(),
            merged: None,
            limits: Limits::default(),
            shard: None,
        };
        (set, run, verdict, meta)
    }

    /// The fixture with a merged model that is off (KL 0.4 from the runtime adapter, one continuation differs).
    fn merged_fixture() -> (GoldenSet, RunMeasurements, Verdict, ReportMeta) {
        let (set, mut run, _, mut meta) = fixture();
        run.merged = Some(vec![crate::validate::results::MergedMeasurement {
            prompt_id: "a<&>".into(),
            kl_mean: 0.4,
            kl_max: 1.5,
            top1_agreement: 0.75,
            max_abs_logit_delta: 3.0,
            base_kl_mean: 0.9,
            base_top1_agreement: 0.5,
            merged_text: "the bird sat".into(),
            merged_tokens: vec![],
            first_divergence: Some(1),
            greedy_agreement: 1.0 / 3.0,
            positions: 4,
        }]);
        meta.merged = Some("m.gguf".into());
        let verdict = judge(&set, &run, &Limits::default());
        (set, run, verdict, meta)
    }

    #[test]
    fn every_format_shows_the_merged_model_and_its_failures() {
        let (set, run, v, meta) = merged_fixture();
        let line = "KL mean 0.4000, KL max 1.5000, top-1 0.750, greedy 0.333 (0 of 1 continuations identical); its \
                    drift from the base: KL mean 0.9000, top-1 0.500";
        let t = render(Format::Text, &set, &run, &v, &meta, false);
        assert!(
            t.contains(&format!(
                "merged m.gguf vs base + runtime adapter (×1):\n  {line}\n  a<&> (KL mean 0.4000, continuations \
                 differ from token 1):\n    the [-dog-]{{+bird+}} sat\n"
            )),
            "{t}"
        );
        assert!(
            t.contains(
                "  - merged model vs base + runtime adapter: mean KL 0.4000 > 0.05 (worst prompt `a<&>`: 0.4000)"
            ),
            "{t}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render(Format::Json, &set, &run, &v, &meta, false)).unwrap();
        assert_eq!(j["schema_version"], 1);
        assert_eq!(j["merged"]["path"], "m.gguf");
        assert_eq!(j["merged"]["summary"]["kl_mean"], 0.4);
        assert_eq!(j["merged"]["prompts"][0]["merged_text"], "the bird sat");
        let metrics: Vec<&str> = j["failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["metric"].as_str().unwrap())
            .filter(|m| m.starts_with("merged_"))
            .collect();
        assert_eq!(
            metrics,
            [
                "merged_kl_mean",
                "merged_top1_agreement",
                "merged_greedy_agreement"
            ]
        );
        let x = render(Format::Junit, &set, &run, &v, &meta, false);
        assert!(
            x.contains("<testsuite name=\"merged\" tests=\"1\" failures=\"1\">"),
            "{x}"
        );
        assert!(
            x.contains("<property name=\"merged\" value=\"m.gguf\"/>"),
            "{x}"
        );
        // merged failures are the merged suite's, not the run suite's
        assert!(
            x.contains("<testsuite name=\"run\" tests=\"1\" failures=\"0\">"),
            "{x}"
        );
        let md = render(Format::Markdown, &set, &run, &v, &meta, false);
        assert!(
            md.contains(&format!(
                "**Merged** `m.gguf` vs base + runtime adapter (×1): {line}"
            )),
            "{md}"
        );
        let html = render(Format::Html, &set, &run, &v, &meta, false);
        assert!(
            html.contains(&format!(
                "<p id=\"merged\"><b>Merged</b> <code>m.gguf</code> vs base + runtime adapter (×1): {line}</p>"
            )),
            "{html}"
        );
    }

    #[test]
    fn no_merged_model_no_merged_section() {
        let (set, run, v, meta) = fixture();
        let j = json_value(&set, &run, &v, &meta);
        assert!(j.get("merged").is_none());
        assert!(!render(Format::Junit, &set, &run, &v, &meta, false).contains("name=\"merged\""));
    }

    #[test]
    fn word_diff_marks_changed_words() {
        assert_eq!(
            word_diff("the cat sat", "the dog sat", false),
            "the [-cat-]{+dog+} sat"
        );
        assert_eq!(
            word_diff("a", "b", true),
            "\x1b[31;9ma\x1b[0m\x1b[32mb\x1b[0m"
        );
    }

    #[test]
    fn text_report_has_table_diff_failures_and_verdict() {
        let (set, run, v, meta) = fixture();
        let t = render(Format::Text, &set, &run, &v, &meta, false);
        assert!(
            t.contains("      1           0.5000          0.5000"),
            "{t}"
        );
        assert!(t.contains("the [-cat-]{+dog+} sat"), "{t}");
        assert!(
            t.contains("  scale 1      control mean KL                            1 of 1   prompts  worst: a<&> 0.5000 (limit 0.25)\n"),
            "{t}"
        );
        assert!(t.contains("recommended scale: none: "), "{t}");
        assert!(t.trim_end().ends_with("FAIL"));
        let style = Style {
            color: false,
            verbose: true,
        };
        let all = render_styled(Format::Text, &set, &run, &v, &meta, style);
        assert!(
            all.contains("  - prompt `a<&>` at scale 1: control drift: mean KL 0.5000 > 0.25\n"),
            "{all}"
        );
    }

    #[test]
    fn json_report_is_versioned() {
        let (set, run, v, meta) = fixture();
        let j: serde_json::Value =
            serde_json::from_str(&render(Format::Json, &set, &run, &v, &meta, false)).unwrap();
        assert_eq!(j["schema_version"], 1);
        assert_eq!(j["passed"], false);
        assert_eq!(j["failures"][0]["metric"], "kl_mean");
        assert_eq!(j["per_scale"][1]["scale"], 1.0);
    }

    #[test]
    fn junit_escapes_and_has_one_case_per_prompt_and_scale() {
        let (set, run, v, meta) = fixture();
        let x = render(Format::Junit, &set, &run, &v, &meta, false);
        assert!(x.contains("name=\"a&lt;&amp;&gt;@1\""), "{x}");
        assert_eq!(x.matches("<testcase ").count(), 3, "{x}");
        assert!(
            x.contains("<failure message=\"prompt `a&lt;&amp;&gt;` at scale 1: control drift"),
            "{x}"
        );
        assert!(!x.contains("a<&>"));
    }

    #[test]
    fn markdown_has_a_row_per_scale() {
        let (set, run, v, meta) = fixture();
        let md = render(Format::Markdown, &set, &run, &v, &meta, false);
        assert!(
            md.contains("| 1 | 0.5000 | 0.5000 | 1.000 | 0.0000 | 100% | 0 |"),
            "{md}"
        );
        assert!(md.starts_with("### lora-validate: ❌ fail"));
    }
}
