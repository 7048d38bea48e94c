//! `--format html`: one self-contained page for the people who decide — no network, no external scripts, styles or
//! fonts. Drift-vs-scale plots as inline SVG (control KL mean and max, control top-1, target effect; the limits as
//! lines, the recommended scale and the first breaking scale marked), the verdict, the recommendation, per-tag
//! slices, the failures grouped, a sortable per-prompt table, per-prompt word diffs base vs adapter at a chosen scale,
//! and the timings. The small inline script only sorts, filters and switches the diff scale; without it the page is
//! complete (sorted by scale, diffs at the recommended scale).
//!
//! Every plotted series is a `<polyline data-series="…">`, every limit a `<line data-limit="…">`, every marker a
//! `<line data-marker="…">`, so tests (and people reading the source) can find them.

use std::fmt::Write as _;

use crate::validate::gate::{Limits, ScaleSummary, Verdict, expectation_scale};
use crate::validate::golden::{GoldenSet, PromptKind};
use crate::validate::results::RunMeasurements;

use super::{ReportMeta, failures, timings_line, xml_escape as esc};

/// One plotted line.
struct Series<'a> {
    key: &'a str,
    label: &'a str,
    color: &'a str,
    points: Vec<(f32, f64)>,
}

/// A horizontal limit line.
struct LimitLine<'a> {
    key: &'a str,
    label: String,
    value: f64,
}

const W: f64 = 460.0;
const H: f64 = 250.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// A number for an axis label or an attribute: short, no trailing zeros.
fn num(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    };
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// An SVG line chart of `series` against the scale, with horizontal `limits` and vertical `marks`.
fn plot(
    id: &str,
    title: &str,
    series: &[Series],
    limits: &[LimitLine],
    marks: &[(&str, &str, f32)],
    y_max: Option<f64>,
) -> String {
    let xs: Vec<f32> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let x_min = xs.iter().copied().fold(f32::INFINITY, f32::min).min(0.0) as f64;
    let x_max = (xs.iter().copied().fold(0.0f32, f32::max) as f64).max(x_min + 1e-6);
    let y_top = y_max.unwrap_or_else(|| {
        let data = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(limits.iter().map(|l| l.value))
            .fold(0.0f64, f64::max);
        if data > 0.0 { data * 1.1 } else { 1.0 }
    });
    let px = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - (y / y_top).clamp(0.0, 1.05)) * (H - TOP - BOTTOM);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<figure class=\"plot\" id=\"{id}\"><svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"18\" class=\"title\">{}</text>",
        LEFT,
        esc(title)
    );
    // Axes and ticks.
    let _ = writeln!(
        o,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/><line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\"/>",
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let mut ticks: Vec<f32> = xs.clone();
    ticks.sort_by(f32::total_cmp);
    ticks.dedup();
    if ticks.len() > 9 {
        ticks = (0..=4)
            .map(|i| (x_min + (x_max - x_min) * i as f64 / 4.0) as f32)
            .collect();
    }
    for t in ticks {
        let x = px(t as f64);
        let _ = writeln!(
            o,
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\"/><text class=\"tl\" x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            H - BOTTOM,
            H - BOTTOM + 4.0,
            H - BOTTOM + 16.0,
            num(t as f64)
        );
    }
    for i in 0..=4 {
        let v = y_top * i as f64 / 4.0;
        let y = py(v);
        let _ = writeln!(
            o,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\"/><text class=\"tl\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            num(v)
        );
    }
    let _ = writeln!(
        o,
        "<text class=\"tl\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">scale</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0
    );
    for l in limits {
        let y = py(l.value);
        let _ = writeln!(
            o,
            "<line class=\"limit\" data-limit=\"{}\" data-value=\"{}\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\"><title>{}</title></line><text class=\"ll\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            l.key,
            l.value,
            W - RIGHT,
            esc(&l.label),
            W - RIGHT - 2.0,
            y - 3.0,
            esc(&l.label)
        );
    }
    for &(key, label, scale) in marks {
        let x = px(scale as f64);
        let _ = writeln!(
            o,
            "<line class=\"mark {key}\" data-marker=\"{key}\" data-scale=\"{scale}\" x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\"><title>{} {scale}</title></line><text class=\"ml {key}\" x=\"{:.1}\" y=\"{}\">{} {scale}</text>",
            H - BOTTOM,
            esc(label),
            x + 3.0,
            TOP + 10.0,
            esc(label)
        );
    }
    for s in series {
        let mut pts = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x as f64), py(y)))
            .collect();
        let _ = writeln!(
            o,
            "<polyline class=\"series\" data-series=\"{}\" data-points=\"{}\" fill=\"none\" stroke=\"{}\" points=\"{}\"/>",
            s.key,
            pts.len(),
            s.color,
            path.join(" ")
        );
        for &(x, y) in &pts {
            let _ = writeln!(
                o,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"><title>{} at {x}: {}</title></circle>",
                px(x as f64),
                py(y),
                s.color,
                esc(s.label),
                num(y)
            );
        }
    }
    let legend: Vec<String> = series
        .iter()
        .map(|s| {
            format!(
                "<span style=\"color:{}\">━</span> {}",
                s.color,
                esc(s.label)
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "</svg><figcaption>{}</figcaption></figure>",
        legend.join(" &nbsp; ")
    );
    o
}

/// One drift-vs-scale plot: a per-scale number of one prompt kind and the limit it is gated by.
struct DriftPlot {
    id: &'static str,
    title: &'static str,
    /// Drawn only when the golden set has prompts of this kind.
    kind: PromptKind,
    key: &'static str,
    label: &'static str,
    color: &'static str,
    value: fn(&ScaleSummary) -> f64,
    limit_key: &'static str,
    /// "limit" for a maximum, "minimum" for a floor.
    limit_word: &'static str,
    limit: fn(&Limits) -> f64,
    y_max: Option<f64>,
}

const DRIFT_PLOTS: [DriftPlot; 4] = [
    DriftPlot {
        id: "plot-control-kl-mean",
        title: "Control drift: mean KL(base ‖ adapted), nats",
        kind: PromptKind::Control,
        key: "control_kl_mean",
        label: "control KL mean",
        color: "#1f77b4",
        value: |s| s.control_kl_mean,
        limit_key: "control_max_kl_mean",
        limit_word: "limit",
        limit: |l| l.control_max_kl_mean,
        y_max: None,
    },
    DriftPlot {
        id: "plot-control-kl-max",
        title: "Control drift: max KL at any position, nats",
        kind: PromptKind::Control,
        key: "control_kl_max",
        label: "control KL max",
        color: "#d62728",
        value: |s| s.control_kl_max,
        limit_key: "control_max_kl_max",
        limit_word: "limit",
        limit: |l| l.control_max_kl_max,
        y_max: None,
    },
    DriftPlot {
        id: "plot-control-top1",
        title: "Control top-1 agreement with the base",
        kind: PromptKind::Control,
        key: "control_top1",
        label: "control top-1",
        color: "#2ca02c",
        value: |s| s.control_top1,
        limit_key: "control_min_top1_agreement",
        limit_word: "minimum",
        limit: |l| l.control_min_top1_agreement,
        y_max: Some(1.0),
    },
    DriftPlot {
        id: "plot-target-effect",
        title: "Target effect: mean KL(base ‖ adapted), nats",
        kind: PromptKind::Target,
        key: "target_kl_mean",
        label: "target KL mean",
        color: "#9467bd",
        value: |s| s.target_kl_mean,
        limit_key: "target_min_kl_mean",
        limit_word: "minimum",
        limit: |l| l.target_min_kl_mean,
        y_max: None,
    },
];

/// The drift-vs-scale plots of the run.
fn plots(set: &GoldenSet, verdict: &Verdict, limits: &Limits) -> String {
    let mut marks: Vec<(&str, &str, f32)> = Vec::new();
    if let Some(r) = &verdict.recommendation {
        if let Some(s) = r.scale {
            marks.push(("recommended", "recommended", s));
        }
        if let Some(b) = r.controls_break_at {
            marks.push(("controls-break", "breaks at", b));
        }
    }
    let mut o = String::from("<div class=\"plots\">\n");
    for p in DRIFT_PLOTS
        .iter()
        .filter(|p| set.prompts.iter().any(|q| q.kind == p.kind))
    {
        let limit = (p.limit)(limits);
        o += &plot(
            p.id,
            p.title,
            &[Series {
                key: p.key,
                label: p.label,
                color: p.color,
                points: verdict
                    .per_scale
                    .iter()
                    .map(|s| (s.scale, (p.value)(s)))
                    .collect(),
            }],
            &[LimitLine {
                key: p.limit_key,
                label: format!("{} {limit}", p.limit_word),
                value: limit,
            }],
            &marks,
            p.y_max,
        );
    }
    o + "</div>\n"
}

/// A word diff as HTML: removed words in `<del>`, added in `<ins>`.
fn html_diff(base: &str, adapted: &str) -> String {
    let diff = similar::TextDiff::from_words(base, adapted);
    let mut o = String::new();
    for c in diff.iter_all_changes() {
        let v = esc(c.value());
        match c.tag() {
            similar::ChangeTag::Equal => o.push_str(&v),
            similar::ChangeTag::Delete => {
                let _ = write!(o, "<del>{v}</del>");
            }
            similar::ChangeTag::Insert => {
                let _ = write!(o, "<ins>{v}</ins>");
            }
        }
    }
    o
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.badge{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.pass{background:#2e7d32}.fail{background:#c62828}
.meta{color:#555;font-size:13px} code{background:#f4f4f4;padding:0 3px;border-radius:3px}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f6f6f6;cursor:pointer;user-select:none} td.t,th.t{text-align:left}
tr.bad td{background:#fdecea} th.sorted-asc::after{content:" ▲"} th.sorted-desc::after{content:" ▼"}
.plots{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0} figcaption{font-size:12px;color:#444;margin-left:58px}
svg .axis{stroke:#333} svg .tick{stroke:#333} svg .grid{stroke:#eee} svg .tl{font-size:10px;fill:#444}
svg .title{font-size:12px;font-weight:600;fill:#222} svg .series{stroke-width:2}
svg .limit{stroke:#e65100;stroke-dasharray:6 4;stroke-width:1.5} svg .ll{font-size:10px;fill:#e65100}
svg .mark{stroke-width:1.5} svg .mark.recommended{stroke:#2e7d32} svg .mark.controls-break{stroke:#c62828;stroke-dasharray:3 3}
svg .ml{font-size:10px} svg .ml.recommended{fill:#2e7d32} svg .ml.controls-break{fill:#c62828}
.diff{display:none;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;margin:2px 0 10px 0}
.diff.on{display:block} del{background:#fdd;color:#900} ins{background:#dfd;color:#060;text-decoration:none}
.prompt{margin-top:6px;font-weight:600} .muted{color:#777}
"#;

/// The page's own Content-Security-Policy: nothing may load from anywhere (only the inline style and script run),
/// so the report can never fetch or send anything, and a browser reports any attempt as an error.
pub const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'";

const SCRIPT: &str = r#"
window.addEventListener('error', function (e) { document.body.setAttribute('data-js-error', String(e.message)); });
(function () {
  var table = document.getElementById('prompts');
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  function sortBy(col, desc) {
    var num = heads[col].getAttribute('data-type') === 'num';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
      var c = num ? (parseFloat(x) - parseFloat(y)) : (x < y ? -1 : x > y ? 1 : 0);
      return desc ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < heads.length; i++) { heads[i].classList.remove('sorted-asc', 'sorted-desc'); }
    heads[col].classList.add(desc ? 'sorted-desc' : 'sorted-asc');
    table.setAttribute('data-sorted', heads[col].getAttribute('data-key') + (desc ? ' desc' : ' asc'));
  }
  Array.prototype.forEach.call(heads, function (h, i) {
    h.addEventListener('click', function () { sortBy(i, !h.classList.contains('sorted-desc')); });
  });
  var filter = document.getElementById('table-scale');
  filter.addEventListener('change', function () {
    Array.prototype.forEach.call(body.rows, function (r) {
      r.hidden = filter.value !== 'all' && r.getAttribute('data-scale') !== filter.value;
    });
  });
  var diffScale = document.getElementById('diff-scale');
  diffScale.addEventListener('change', function () {
    Array.prototype.forEach.call(document.querySelectorAll('.diff'), function (d) {
      d.classList.toggle('on', d.getAttribute('data-scale') === diffScale.value);
    });
  });
  var first = document.querySelector('#prompts th[data-key="kl_mean"]');
  sortBy(Array.prototype.indexOf.call(heads, first), true);
  document.body.setAttribute('data-ready', '1');
})();
"#;

/// A self-contained page around a preformatted text report (the training-parity and self-test reports in HTML):
/// the same Content-Security-Policy and style as the sweep's page, the verdict as a badge.
pub fn text_page(title: &str, passed: bool, text: &str) -> String {
    let verdict = if passed { "PASS" } else { "FAIL" };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n<title>lora-validate: {verdict} — {}</title>\n<style>{STYLE}</style></head><body>\n<h1><span class=\"badge {}\" id=\"verdict\">{verdict}</span> {}</h1>\n<pre id=\"report\">{}</pre>\n</body></html>\n",
        esc(title),
        if passed { "pass" } else { "fail" },
        esc(title),
        esc(text)
    )
}

/// The whole page.
pub fn render(
    set: &GoldenSet,
    run: &RunMeasurements,
    verdict: &Verdict,
    meta: &ReportMeta,
) -> String {
    let limits = &verdict.limits;
    let mut o = String::new();
    let adapters: Vec<String> = meta
        .adapters
        .iter()
        .map(|(p, s)| format!("<code>{}</code> ×{s}", esc(p)))
        .collect();
    let _ = writeln!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n<title>lora-validate: {} — {}</title>\n<style>{STYLE}</style></head><body>",
        if verdict.passed { "PASS" } else { "FAIL" },
        esc(&meta
            .adapters
            .iter()
            .map(|a| a.0.as_str())
            .collect::<Vec<_>>()
            .join(" + "))
    );
    let _ = writeln!(
        o,
        "<h1><span class=\"badge {}\" id=\"verdict\">{}</span> lora-validate</h1>",
        if verdict.passed { "pass" } else { "fail" },
        if verdict.passed { "PASS" } else { "FAIL" }
    );
    let controls = set
        .prompts
        .iter()
        .filter(|p| p.kind == PromptKind::Control)
        .count();
    let _ = writeln!(
        o,
        "<p class=\"meta\">{} on <code>{}</code> ({}) · {} prompts ({} control, {} target) · {} failure(s) · engine self-check at scale 0: max |Δlogit| = {} · {}</p>",
        adapters.join(" + "),
        esc(&meta.base),
        esc(&run.settings.backend),
        set.prompts.len(),
        controls,
        set.prompts.len() - controls,
        verdict.failures.len(),
        run.scale_zero_max_abs_logit_delta,
        esc(&meta.tool_version)
    );
    if let Some(p) = &run.partial {
        let _ = writeln!(
            o,
            "<p class=\"partial\" id=\"partial\"><b>PARTIAL RUN:</b> {}; {} of {} prompts measured at every scale</p>",
            esc(&p.reason),
            p.prompts_done,
            p.prompts_total
        );
    }
    if let Some(a) = &run.alora {
        let _ = writeln!(o, "<p id=\"alora\">{}</p>", esc(&a.summary()));
    }
    if let Some(m) = &verdict.merged {
        let _ = writeln!(
            o,
            "<p id=\"merged\"><b>Merged</b> <code>{}</code> vs base + runtime adapter (×1): {}</p>",
            esc(meta.merged.as_deref().unwrap_or("?")),
            esc(&super::merged_line(m))
        );
    }
    if let Some(sh) = &meta.shard {
        let _ = writeln!(
            o,
            "<p id=\"shard\"><b>Shard {}/{}</b>: {} of the set's {} prompts; <code>lora-validate merge-reports</code> on every shard's JSON report gives the run's verdict</p>",
            sh.index,
            sh.count,
            set.prompts.len(),
            sh.set_prompts
        );
    }
    if let Some(r) = &verdict.recommendation {
        let _ = writeln!(
            o,
            "<p id=\"recommendation\"><b>Recommended scale:</b> {}{}</p>",
            esc(&r.reason),
            if r.refined_scales.is_empty() {
                String::new()
            } else {
                format!(
                    " <span class=\"muted\">(refined by {} extra pass(es) reusing the base pass)</span>",
                    r.refined_scales.len()
                )
            }
        );
    }
    for w in &verdict.warnings {
        let _ = writeln!(o, "<p class=\"muted\">warning: {}</p>", esc(w));
    }
    o += "<h2>Drift against the scale</h2>\n";
    o += &plots(set, verdict, limits);

    // Per-scale table.
    o += "<h2>Per scale</h2>\n<table id=\"per-scale\"><thead><tr><th>scale</th><th>control KL mean</th><th>control KL max</th><th>control top-1</th><th>target KL mean</th><th>changed</th><th>expectation failures</th></tr></thead><tbody>\n";
    for s in &verdict.per_scale {
        let _ = writeln!(
            o,
            "<tr><td>{}</td></tr>",
            super::per_scale_cells(s).join("</td><td>")
        );
    }
    o += "</tbody></table>\n";

    if !verdict.per_tag.is_empty() {
        o += &tags(verdict);
    }
    if let Some(b) = &verdict.baseline {
        o += &baseline_section(b);
    }
    o += &failure_section(verdict);
    o += &prompt_table(run, verdict);
    o += &diffs(set, run, verdict);
    let _ = writeln!(
        o,
        "<h2>Timings</h2>\n<p class=\"meta\" id=\"timings\">{}</p>",
        esc(&timings_line(run))
    );
    let _ = writeln!(o, "<script>{SCRIPT}</script>\n</body></html>");
    o
}

fn tags(verdict: &Verdict) -> String {
    let mut o = String::from("<h2>Per tag</h2>\n");
    let mut scales: Vec<f32> = verdict.per_tag.iter().map(|t| t.scale).collect();
    scales.sort_by(f32::total_cmp);
    scales.dedup();
    if let Some(b) = &verdict.first_broken_tag {
        let _ = writeln!(
            o,
            "<p id=\"first-broken-tag\">First to break: <b>{}</b> at scale {} ({} of {} prompts fail).</p>",
            esc(&b.tag),
            b.scale,
            b.failing,
            b.prompts
        );
    }
    o += "<table id=\"per-tag\"><thead><tr><th class=\"t\">tag</th>";
    for s in &scales {
        let _ = write!(o, "<th>×{s} failing</th><th>×{s} KL mean</th>");
    }
    o += "</tr></thead><tbody>\n";
    let mut names: Vec<&str> = verdict.per_tag.iter().map(|t| t.tag.as_str()).collect();
    names.dedup();
    for tag in names {
        let _ = write!(o, "<tr><td class=\"t\">{}</td>", esc(tag));
        for &s in &scales {
            match verdict
                .per_tag
                .iter()
                .find(|t| t.tag == tag && t.scale == s)
            {
                Some(t) => {
                    let _ = write!(
                        o,
                        "<td{}>{}/{}</td><td>{:.4}</td>",
                        if t.failing > 0 { " class=\"bad\"" } else { "" },
                        t.failing,
                        t.prompts,
                        t.kl_mean
                    );
                }
                None => o += "<td>-</td><td>-</td>",
            }
        }
        o += "</tr>\n";
    }
    o + "</tbody></table>\n"
}

fn failure_section(verdict: &Verdict) -> String {
    let mut o = String::from("<h2>Failures</h2>\n");
    if verdict.failures.is_empty() {
        return o + "<p>None.</p>\n";
    }
    let (groups, run_level) = failures::group(verdict);
    let _ = writeln!(
        o,
        "<p>{} failure(s), grouped by scale and check; every one is listed in the JSON and JUnit reports.</p>",
        verdict.failures.len()
    );
    if !groups.is_empty() {
        o += "<table id=\"failure-groups\"><thead><tr><th>scale</th><th class=\"t\">check</th><th>failing</th><th class=\"t\">worst</th></tr></thead><tbody>\n";
        for g in &groups {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td class=\"t\">{}</td><td>{} of {}</td><td class=\"t\">{}</td></tr>",
                g.scale.map_or("-".into(), |s| s.to_string()),
                esc(&g.label()),
                g.failures.len(),
                g.prompts,
                esc(&g.worst().join(", "))
            );
        }
        o += "</tbody></table>\n";
    }
    if !run_level.is_empty() {
        o += "<ul>\n";
        for f in run_level {
            let _ = writeln!(o, "<li>{}</li>", esc(&f.message));
        }
        o += "</ul>\n";
    }
    o
}

/// The comparison with the previous adapter: its summary, and per prompt the drift from it and what regressed.
fn baseline_section(b: &crate::validate::baseline::BaselineVerdict) -> String {
    let mut o = format!(
        "<h2 id=\"baseline\">Against the previous adapter <span class=\"badge {}\">{}</span></h2>\n<p>{}</p>\n",
        if b.passed { "pass" } else { "fail" },
        if b.passed {
            "no regression"
        } else {
            "REGRESSED"
        },
        b.lines()
            .iter()
            .map(|l| esc(l.trim()))
            .collect::<Vec<_>>()
            .join("<br>")
    );
    o += "<table id=\"baseline-prompts\"><thead><tr><th class=\"t\">prompt</th><th class=\"t\">kind</th><th>KL mean</th><th>KL max</th><th>top-1</th><th class=\"t\">regressions</th></tr></thead><tbody>\n";
    for p in &b.prompts {
        let _ = writeln!(
            o,
            "<tr{}><td class=\"t\">{}</td><td class=\"t\">{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.3}</td><td class=\"t\">{}</td></tr>",
            if p.regressions.is_empty() {
                ""
            } else {
                " class=\"bad\""
            },
            esc(&p.prompt_id),
            match p.kind {
                PromptKind::Control => "control",
                PromptKind::Target => "target",
            },
            p.kl_mean,
            p.kl_max,
            p.top1_agreement,
            esc(&p.regressions.join("; "))
        );
    }
    o + "</tbody></table>\n"
}

fn prompt_table(run: &RunMeasurements, verdict: &Verdict) -> String {
    let mut o = String::from(
        "<h2>Per prompt</h2>\n<p>Click a column to sort. Scale: <select id=\"table-scale\"><option value=\"all\">all</option>",
    );
    for s in &run.settings.scales {
        let _ = write!(o, "<option value=\"{s}\">{s}</option>");
    }
    o += "</select></p>\n<table id=\"prompts\"><thead><tr>";
    for (key, label, ty) in [
        ("prompt", "prompt", "text"),
        ("kind", "kind", "text"),
        ("tags", "tags", "text"),
        ("scale", "scale", "num"),
        ("kl_mean", "KL mean", "num"),
        ("kl_max", "KL max", "num"),
        ("top1", "top-1", "num"),
        ("first_divergence", "first divergence", "num"),
        ("passed", "passed", "text"),
    ] {
        let class = if ty == "text" { " class=\"t\"" } else { "" };
        let _ = write!(
            o,
            "<th{class} data-key=\"{key}\" data-type=\"{ty}\">{label}</th>"
        );
    }
    o += "</tr></thead><tbody>\n";
    for m in &run.measurements {
        let v = verdict
            .prompts
            .iter()
            .find(|p| p.prompt_id == m.prompt_id && p.scale == m.scale);
        let kind = v.map_or("", |v| match v.kind {
            PromptKind::Control => "control",
            PromptKind::Target => "target",
        });
        let tags = v.map_or(String::new(), |v| v.tags.join(" "));
        let passed = v.is_none_or(|v| v.passed);
        let div = m.first_divergence.map_or(-1.0, |d| d as f64);
        let _ = writeln!(
            o,
            "<tr data-scale=\"{s}\"{bad}><td class=\"t\" data-v=\"{id}\">{id}</td><td class=\"t\" data-v=\"{kind}\">{kind}</td><td class=\"t\" data-v=\"{tags}\">{tags}</td><td data-v=\"{s}\">{s}</td><td data-v=\"{km}\">{km:.4}</td><td data-v=\"{kx}\">{kx:.4}</td><td data-v=\"{t1}\">{t1:.3}</td><td data-v=\"{div}\">{divs}</td><td class=\"t\" data-v=\"{p}\">{p}</td></tr>",
            s = m.scale,
            bad = if passed { "" } else { " class=\"bad\"" },
            id = esc(&m.prompt_id),
            tags = esc(&tags),
            km = m.kl_mean,
            kx = m.kl_max,
            t1 = m.top1_agreement,
            divs = m.first_divergence.map_or("—".into(), |d| d.to_string()),
            p = if passed { "yes" } else { "no" },
        );
    }
    o + "</tbody></table>\n"
}

fn diffs(set: &GoldenSet, run: &RunMeasurements, verdict: &Verdict) -> String {
    let chosen = verdict
        .recommendation
        .as_ref()
        .and_then(|r| r.scale)
        .unwrap_or_else(|| expectation_scale(&run.settings.scales));
    let mut scales: Vec<f32> = run
        .settings
        .scales
        .iter()
        .copied()
        .filter(|&s| s > 0.0)
        .collect();
    scales.sort_by(f32::total_cmp);
    scales.dedup();
    let mut o = String::from(
        "<h2>Continuations: base vs adapted</h2>\n<p>Word diff of the greedy continuation at scale <select id=\"diff-scale\">",
    );
    for s in &scales {
        let _ = write!(
            o,
            "<option value=\"{s}\"{}>{s}</option>",
            if *s == chosen { " selected" } else { "" }
        );
    }
    o += "</select> (<del>base only</del> <ins>adapted only</ins>).</p>\n<div id=\"diffs\">\n";
    for p in &set.prompts {
        let base = super::base_text(run, &p.id);
        let _ = writeln!(o, "<div class=\"prompt\">{}</div>", esc(&p.id));
        for &s in &scales {
            if let Some(m) = run
                .measurements
                .iter()
                .find(|m| m.prompt_id == p.id && m.scale == s)
            {
                let _ = writeln!(
                    o,
                    "<div class=\"diff{}\" data-scale=\"{s}\" data-prompt=\"{}\">{}</div>",
                    if s == chosen { " on" } else { "" },
                    esc(&p.id),
                    html_diff(base, &m.adapted_text)
                );
            }
        }
    }
    o + "</div>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_escapes_and_marks_words() {
        assert_eq!(
            html_diff("a <b> c", "a <i> c"),
            "a <del>&lt;b&gt;</del><ins>&lt;i&gt;</ins> c"
        );
    }

    #[test]
    fn plot_has_its_series_limits_and_marks() {
        let svg = plot(
            "p",
            "T",
            &[Series {
                key: "control_kl_mean",
                label: "KL",
                color: "#000",
                points: vec![(1.0, 0.5), (0.0, 0.0), (0.5, 0.1)],
            }],
            &[LimitLine {
                key: "control_max_kl_mean",
                label: "limit 0.25".into(),
                value: 0.25,
            }],
            &[("recommended", "recommended", 0.5)],
            None,
        );
        assert!(
            svg.contains("data-series=\"control_kl_mean\" data-points=\"3\""),
            "{svg}"
        );
        // Points sorted by scale, y axis from 0 to 1.1 × the largest value.
        assert!(svg.contains("points=\"58.0,210.0 251.0,"), "{svg}");
        assert!(
            svg.contains("data-limit=\"control_max_kl_mean\" data-value=\"0.25\""),
            "{svg}"
        );
        assert!(
            svg.contains("data-marker=\"recommended\" data-scale=\"0.5\" x1=\"251.0\""),
            "{svg}"
        );
        assert!(!svg.contains("http"), "{svg}");
    }
}
