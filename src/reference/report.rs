//! Reports of a reference run: text (per-prompt table base ↔ llama.cpp adapter ↔ training adapter, the four
//! checks, one-line diagnoses), JSON (`schema_version` 1, `mode` "reference"), JUnit (one suite per check, one
//! case per prompt) and Markdown. Each check is its own failure class in every format.

use std::fmt::Write as _;

use serde_json::json;

use super::pack::ReferencePack;
use super::results::{PromptRun, ReferenceRun};
use super::verdict::{Check, ReferenceLimits, ReferenceVerdict};
pub use crate::report::{Format, ReportMeta};

/// Version of the reference JSON report.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// The adapter(s) of the run, as the reports name them.
fn adapter_name(meta: &ReportMeta) -> String {
    meta.adapters
        .iter()
        .map(|(p, _)| p.as_str())
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Render a report.
pub fn render(
    format: Format,
    pack: &ReferencePack,
    run: &ReferenceRun,
    verdict: &ReferenceVerdict,
    meta: &ReportMeta,
) -> String {
    match format {
        Format::Text => text(pack, run, verdict, meta),
        Format::Json => {
            serde_json::to_string_pretty(&json_value(pack, run, verdict, meta)).unwrap_or_default()
                + "\n"
        }
        Format::Junit => junit(run, verdict, meta),
        Format::Markdown => markdown(run, verdict, meta),
        Format::Html => crate::report::html::text_page(
            "lora-validate --reference (training parity)",
            verdict.passed,
            &text(pack, run, verdict, meta),
        ),
    }
}

/// The check's name for people.
fn title(c: Check) -> &'static str {
    match c {
        Check::PromptParity => "prompt parity",
        Check::BaseParity => "base parity",
        Check::AdapterParity => "adapter parity",
        Check::EffectParity => "effect parity",
    }
}

/// The cells of one table row: id, kind, tokens, base KL, base top-1, adapter KL, adapter top-1, effect, cosine,
/// greedy agreement.
fn row(p: &PromptRun, limits: &ReferenceLimits) -> [String; 10] {
    let tokens = match (&p.llama_render_error, &p.mismatch) {
        (Some(_), _) => "unrendered".to_string(),
        (None, Some(m)) => format!("differ@{}", m.position),
        (None, None) => "same".to_string(),
    };
    let one = p.adapters.iter().find(|a| a.scale == 1.0);
    let probe = p.adapters.iter().min_by(|a, b| a.scale.total_cmp(&b.scale));
    let num = |x: Option<f64>, digits: usize| x.map_or("—".into(), |x| format!("{x:.digits$}"));
    [
        p.id.clone(),
        p.kind.clone(),
        tokens,
        num(p.base.map(|b| b.kl_mean), 4),
        num(p.base.map(|b| b.top1), 2),
        num(one.map(|a| a.divergence.kl_mean), 4),
        num(one.map(|a| a.divergence.top1), 2),
        // Not judged (the adapter barely moves this prompt at the probe scale): no ratio to speak of.
        probe
            .filter(|a| a.effect.trained_rms >= limits.effect_min_trained_rms)
            .map_or("—".into(), |a| format!("{:.2}×", a.effect.ratio)),
        num(one.map(|a| a.effect.residual), 2),
        format!("{}/{}", p.greedy_agreement.0, p.greedy_agreement.1),
    ]
}

const HEADER: [&str; 10] = [
    "prompt",
    "kind",
    "tokens",
    "base KL",
    "base top-1",
    "adapter KL",
    "adapter top-1",
    "effect@probe",
    "residual@1",
    "greedy",
];

fn text(
    pack: &ReferencePack,
    run: &ReferenceRun,
    v: &ReferenceVerdict,
    meta: &ReportMeta,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "lora-validate --reference: {} on {} against {}",
        adapter_name(meta),
        meta.base,
        pack.dir.display()
    );
    let libs: Vec<String> = pack
        .libraries
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        o,
        "pack v{}: {} prompts, top-{}, {} ({}), variants {}",
        pack.version,
        pack.prompts.len(),
        pack.top_k,
        pack.dtype,
        libs.join(", "),
        pack.variants
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for w in &run.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    let _ = writeln!(
        o,
        "\nKL = mean KL(training ‖ llama.cpp) per token over the recorded top-{} + tail, adapter at scale 1; effect = \
         llama.cpp's logit shift along the trained one (1.00× = as trained) at the probe scale {} (where it is linear \
         in the scale; — where the adapter barely moves the prompt there); residual = what the trained shift does not explain of llama.cpp's at scale 1, in units of \
         the base's noise\n",
        pack.top_k,
        super::verdict::probe_scale(run).unwrap_or(1.0)
    );
    let rows: Vec<[String; 10]> = run.prompts.iter().map(|p| row(p, &v.limits)).collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = w.saturating_sub(c.chars().count());
                if i < 3 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(o, "{}", line(&HEADER.map(String::from)));
    for r in &rows {
        let _ = writeln!(o, "{}", line(r));
    }
    let _ = writeln!(
        o,
        "\ngreedy continuations at scale 1 (training adapter | llama.cpp adapter):"
    );
    for p in &run.prompts {
        let show = |s: &str| s.replace('\n', "⏎");
        let _ = writeln!(
            o,
            "  {}: {} | {}",
            p.id,
            show(&p.training_adapter_text),
            show(&p.llama_adapter_text)
        );
    }
    let _ = writeln!(o);
    for &(c, ok) in &v.checks {
        let n = v.failures.iter().filter(|f| f.check == c).count();
        let extra = match c {
            Check::EffectParity => v
                .effect_ratio
                .map_or(String::new(), |r| format!(" (effect {r:.2}× overall)")),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "{:<15} {}{extra}",
            title(c),
            if ok {
                "PASS".to_string()
            } else {
                format!("FAIL ({n})")
            }
        );
    }
    if !v.diagnoses.is_empty() {
        let _ = writeln!(o, "\ndiagnosis:");
        for d in &v.diagnoses {
            let _ = writeln!(o, "  {d}");
        }
    }
    if !v.failures.is_empty() {
        let _ = writeln!(o, "\nfailures:");
        for f in &v.failures {
            let _ = writeln!(o, "  [{}] {}", f.check.name(), f.message);
        }
    }
    let _ = writeln!(o, "\n{}", if v.passed { "PASS" } else { "FAIL" });
    o
}

/// The JSON report.
pub fn json_value(
    pack: &ReferencePack,
    run: &ReferenceRun,
    v: &ReferenceVerdict,
    meta: &ReportMeta,
) -> serde_json::Value {
    let checks: serde_json::Map<String, serde_json::Value> = v
        .checks
        .iter()
        .map(|&(c, ok)| (c.name().to_string(), json!(ok)))
        .collect();
    json!({
        "schema_version": JSON_SCHEMA_VERSION,
        "mode": "reference",
        "tool": meta.tool_version,
        "base": meta.base,
        "adapter": adapter_name(meta),
        "pack": {
            "dir": pack.dir.display().to_string(),
            "version": pack.version,
            "top_k": pack.top_k,
            "dtype": pack.dtype,
            "libraries": pack.libraries,
            "variants": pack.variants.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
        },
        "passed": v.passed,
        "checks": checks,
        "effect_ratio": v.effect_ratio,
        "diagnoses": v.diagnoses,
        "failures": v.failures,
        "warnings": run.warnings,
        "limits": v.limits,
        "prompts": run.prompts,
    })
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn junit(run: &ReferenceRun, v: &ReferenceVerdict, meta: &ReportMeta) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        o,
        "<testsuites name=\"lora-validate --reference {}\" tests=\"{}\" failures=\"{}\">",
        xml(&adapter_name(meta)),
        run.prompts.len() * Check::ALL.len(),
        v.failures.len()
    );
    for c in Check::ALL {
        let failures: Vec<_> = v.failures.iter().filter(|f| f.check == c).collect();
        let _ = writeln!(
            o,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">",
            c.name(),
            run.prompts.len(),
            failures
                .iter()
                .filter_map(|f| f.prompt_id.as_ref())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
        for p in &run.prompts {
            let mine: Vec<_> = failures
                .iter()
                .filter(|f| f.prompt_id.as_deref() == Some(&p.id))
                .collect();
            if mine.is_empty() {
                let _ = writeln!(
                    o,
                    "    <testcase classname=\"{}\" name=\"{}\"/>",
                    c.name(),
                    xml(&p.id)
                );
            } else {
                let _ = writeln!(
                    o,
                    "    <testcase classname=\"{}\" name=\"{}\">",
                    c.name(),
                    xml(&p.id)
                );
                for f in mine {
                    let _ = writeln!(
                        o,
                        "      <failure type=\"{}\" message=\"{}\"/>",
                        xml(&f.metric),
                        xml(&f.message)
                    );
                }
                let _ = writeln!(o, "    </testcase>");
            }
        }
        let _ = writeln!(o, "  </testsuite>");
    }
    let _ = writeln!(o, "</testsuites>");
    o
}

fn markdown(run: &ReferenceRun, v: &ReferenceVerdict, meta: &ReportMeta) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "### lora-validate --reference: {} — {}\n",
        xml(&adapter_name(meta)),
        if v.passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(o, "| check | result |\n|---|---|");
    for &(c, ok) in &v.checks {
        let n = v.failures.iter().filter(|f| f.check == c).count();
        let _ = writeln!(
            o,
            "| {} | {} |",
            title(c),
            if ok {
                "pass".into()
            } else {
                format!("**fail** ({n})")
            }
        );
    }
    let _ = writeln!(o, "\n| {} |", HEADER.join(" | "));
    let _ = writeln!(o, "|{}", "---|".repeat(HEADER.len()));
    for p in &run.prompts {
        let _ = writeln!(
            o,
            "| {} |",
            row(p, &v.limits).map(|c| c.replace('|', "\\|")).join(" | ")
        );
    }
    if !v.diagnoses.is_empty() {
        let _ = writeln!(o);
        for d in &v.diagnoses {
            let _ = writeln!(o, "- {}", d.replace('|', "\\|"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::compare::{Divergence, Effect};
    use crate::reference::prompt_parity::{Cause, Mismatch};
    use crate::reference::results::ScaleRun;
    use crate::reference::verdict::judge;

    fn prompt(
        id: &str,
        base_kl: f64,
        adapter_kl: f64,
        ratio: f64,
        mismatch: Option<Mismatch>,
    ) -> PromptRun {
        let effect = |scale: f32| ScaleRun {
            scale,
            divergence: Divergence {
                kl_mean: adapter_kl,
                kl_max: adapter_kl,
                top1: 1.0,
            }
            .into(),
            effect: Effect {
                trained_norm: 10.0,
                llama_norm: 10.0 * ratio,
                cosine: 1.0,
                noise_norm: 1.0,
                cells: 100,
            }
            .into(),
        };
        PromptRun {
            id: id.into(),
            kind: "target".into(),
            training_tokens: vec![2, 5],
            llama_tokens: Some(vec![2, 5]),
            llama_render_error: None,
            mismatch,
            base: Some(
                Divergence {
                    kl_mean: base_kl,
                    kl_max: base_kl,
                    top1: 1.0,
                }
                .into(),
            ),
            adapters: vec![effect(1.0), effect(0.0625)],
            training_adapter_text: "a".into(),
            llama_adapter_text: "a".into(),
            greedy_agreement: (4, 4),
        }
    }

    #[test]
    fn every_check_is_its_own_failure_class_in_every_format() {
        let pack = ReferencePack::open(
            &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/gemma-lora/reference-pack"),
        )
        .unwrap();
        let bos = Mismatch {
            position: 1,
            training_text: "t".into(),
            llama_text: "<bos>t".into(),
            cause: Cause::LlamaAddsSecondBos,
        };
        let run = ReferenceRun {
            prompts: vec![
                prompt("p-prompt", 0.01, 0.01, 1.0, Some(bos)),
                prompt("p-base", 0.9, 0.9, 1.0, None),
                prompt("p-scale", 0.01, 0.5, 2.0, None),
            ],
            warnings: vec![],
        };
        let v = judge(&run, &ReferenceLimits::default(), Some(8.0));
        assert_eq!(
            v.checks.iter().filter(|c| !c.1).count(),
            4,
            "{:#?}",
            v.failures
        );
        let meta = ReportMeta {
            base: "b.gguf".into(),
            adapters: vec![("a.gguf".into(), 1.0)],
            tool_version: "t".into(),
            merged: None,
            limits: Default::default(),
            shard: None,
        };
        let text = render(Format::Text, &pack, &run, &v, &meta);
        for c in Check::ALL {
            assert!(
                text.contains(&format!("[{}]", c.name())),
                "text lacks {}:\n{text}",
                c.name()
            );
        }
        assert!(
            text.contains("prompt p-prompt: llama.cpp adds a second BOS"),
            "{text}"
        );
        let json = json_value(&pack, &run, &v, &meta);
        for c in Check::ALL {
            assert_eq!(json["checks"][c.name()], false);
            assert!(
                json["failures"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["check"] == c.name())
            );
        }
        let junit = render(Format::Junit, &pack, &run, &v, &meta);
        for c in Check::ALL {
            assert!(
                junit.contains(&format!(
                    "<testsuite name=\"{}\" tests=\"3\" failures=\"1\">",
                    c.name()
                )),
                "{junit}"
            );
        }
        let md = render(Format::Markdown, &pack, &run, &v, &meta);
        for t in [
            "prompt parity | **fail** (1)",
            "base parity | **fail** (1)",
            "adapter parity | **fail**",
            "effect parity | **fail**",
        ] {
            assert!(md.contains(t), "markdown lacks `{t}`:\n{md}");
        }
    }
}
