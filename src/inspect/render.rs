//! The human-readable form of an inspect report (the JSON form is the report itself, serialised).

use std::fmt::Write;

use super::Report;
use super::gguf_adapter::GgufReport;
use super::peft_dir::PeftReport;

/// The report as text for a terminal.
pub fn text(report: &Report) -> String {
    match report {
        Report::Peft(r) => peft(r),
        Report::Gguf(r) => gguf(r),
    }
}

fn peft(r: &PeftReport) -> String {
    let mut o = String::new();
    let a = &r.adapter;
    let c = &a.config;
    let framework = if a.framework == "mlx-lm" {
        "mlx-lm"
    } else {
        "PEFT"
    };
    let _ = writeln!(o, "adapter   {} ({framework} LoRA)", r.path);
    for t in &a.trainers {
        let _ = writeln!(o, "trainer   {}: {}", t.trainer, t.evidence);
    }
    let patterns = |n: usize| {
        if n == 0 {
            "—".to_string()
        } else {
            format!("{n} keys")
        }
    };
    if let Some(m) = &a.mlx {
        let _ = writeln!(
            o,
            "mlx-lm    fine_tune_type {}, rank {}, scale {}, num_layers {}, keys {}, model {}",
            m.fine_tune_type,
            m.rank,
            m.scale,
            m.num_layers.map_or("—".to_string(), |n| n.to_string()),
            m.keys.as_ref().map_or("—".to_string(), |k| k.join(" ")),
            m.model.as_deref().unwrap_or("—")
        );
    }
    let _ = writeln!(
        o,
        "{}r {}, lora_alpha {}, use_rslora {}, rank_pattern {}, alpha_pattern {}, base_model_name_or_path {}",
        if a.mlx.is_some() {
            "as PEFT   "
        } else {
            "config    "
        },
        c.r,
        c.lora_alpha,
        c.use_rslora,
        patterns(c.rank_pattern.len()),
        patterns(c.alpha_pattern.len()),
        c.base_model_name_or_path.as_deref().unwrap_or("—")
    );
    match &r.base {
        Some(b) => {
            let _ = writeln!(
                o,
                "base      {} ({}, arch {}, vocab {})",
                b.path,
                b.source,
                b.arch.as_deref().unwrap_or("?"),
                b.n_vocab.map_or("?".to_string(), |v| v.to_string())
            );
        }
        None => {
            let _ = writeln!(o, "base      none (pass --base BASE.gguf to check the fit)");
        }
    }
    if let Some(f) = r.family {
        let _ = writeln!(o, "family    {f}");
    }
    if let Some(s) = &r.support {
        let _ = writeln!(o, "support   {} ({})", s.status.name(), support_why(s));
        for f in &s.features {
            let fixtures = if f.fixtures.is_empty() {
                String::new()
            } else {
                format!(" ({})", f.fixtures.join(", "))
            };
            let _ = writeln!(o, "          {}: {}{fixtures}", f.status.name(), f.feature);
        }
    }
    let dtypes: Vec<String> = r.dtypes.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    let _ = writeln!(
        o,
        "size      weights file {} bytes; LoRA factors {} bytes ({}){}",
        r.size.weights_bytes,
        r.size.factor_bytes,
        dtypes.join(", "),
        r.size.gguf_tensor_bytes.map_or(String::new(), |b| format!(
            "; GGUF tensor data at --outtype auto {b} bytes"
        ))
    );
    if let Some(alpha) = r.gguf_alpha {
        let _ = writeln!(
            o,
            "alpha     adapter.lora.alpha = {alpha} (llama.cpp factor = α / rank per pair)"
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<44} {:<5} {:>4} {:>8} {:<5} {:<12} {:<12} → GGUF",
        "module", "kind", "rank", "scaling", "dtype", "A", "B"
    );
    for m in &r.modules {
        let mut targets = if m.targets.is_empty() {
            format!("({})", m.status)
        } else {
            m.targets.join(", ")
        };
        if let Some(e) = m.expert {
            targets.push_str(&format!(" [expert {e}]"));
        }
        if m.saved_as != m.module {
            targets.push_str(&format!(" (saved as {})", m.saved_as));
        }
        // a stack of E experts: "E×lin", A and B shapes as PEFT's (E·r, in) and (out, E·r)
        let kind = match (m.n_expert, m.kind) {
            (Some(e), _) => format!("{e}×lin"),
            (None, "linear") => "lin".into(),
            (None, _) => "emb".into(),
        };
        let _ = writeln!(
            o,
            "{:<44} {:<5} {:>4} {:>8} {:<5} {:<12} {:<12} {}",
            m.module,
            kind,
            m.rank,
            format!("{}", m.peft_scaling),
            m.dtype,
            format!("{:?}", m.a_shape),
            format!("{:?}", m.b_shape),
            targets
        );
    }
    let transformed: Vec<String> = r
        .pairs
        .iter()
        .flat_map(|p| p.sources.iter().map(move |s| (p, s)))
        .filter(|(_, s)| s.rows != "identity" || s.cols != "identity" || s.fold != 1.0)
        .map(|(p, s)| {
            let fold = if s.fold == 1.0 {
                String::new()
            } else {
                format!(", lora_b × {}", s.fold)
            };
            let cols = if s.cols == "identity" {
                String::new()
            } else {
                format!(", columns {}", s.cols)
            };
            format!("  {}: rows {}{cols}{fold}", p.target, s.rows)
        })
        .collect();
    if !transformed.is_empty() {
        let _ = writeln!(o, "\ntransforms");
        for t in transformed {
            let _ = writeln!(o, "{t}");
        }
    }
    let skipped: Vec<_> = r.tensors.iter().filter(|t| t.status == "skipped").collect();
    if !skipped.is_empty() {
        let _ = writeln!(o, "\nskipped");
        for t in skipped {
            let _ = writeln!(o, "  {}: {}", t.key, t.reason.as_deref().unwrap_or(""));
        }
    }
    let stacks: Vec<String> = r
        .pairs
        .iter()
        .filter_map(|p| {
            let n = p.n_expert?;
            let from: Vec<String> = p
                .sources
                .iter()
                .map(|s| match s.expert {
                    Some(e) => format!("{e}"),
                    None => format!("all ({})", s.packing),
                })
                .collect();
            let zero = if p.zero_filled_experts.is_empty() {
                String::new()
            } else {
                let z: Vec<String> = p
                    .zero_filled_experts
                    .iter()
                    .map(|e| e.to_string())
                    .collect();
                format!("; zero-filled: {}", z.join(", "))
            };
            Some(format!(
                "  {}: {n} experts, lora_a ne {:?}, lora_b ne {:?}; from expert(s) {}{zero}",
                p.target,
                p.lora_a.ne,
                p.lora_b.ne,
                from.join(", ")
            ))
        })
        .collect();
    if !stacks.is_empty() {
        let _ = writeln!(o, "\nexpert stacks");
        for s in stacks {
            let _ = writeln!(o, "{s}");
        }
    }
    for w in &r.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    let _ = writeln!(o);
    if r.refusals.is_empty() {
        let _ = writeln!(
            o,
            "verdict   convertible{}",
            match (&r.base, r.fits) {
                (Some(b), Some(true)) => format!(": fits {}", b.path),
                (Some(b), _) => format!(" (checked against {})", b.path),
                _ => String::new(),
            }
        );
    } else {
        let _ = writeln!(
            o,
            "verdict   refused: {} reason(s) conversion would stop at",
            r.refusals.len()
        );
        for f in &r.refusals {
            let _ = writeln!(o, "  - {}", f.reason);
        }
    }
    o
}

fn gguf(r: &GgufReport) -> String {
    let mut o = String::new();
    if let Some(m) = &r.merge {
        let _ = writeln!(
            o,
            "model     {} (GGUF v{}, {} tensors, {} bytes), made by lora-convert merge",
            r.path,
            r.version,
            r.tensors.len(),
            r.bytes
        );
        let short = |h: &str| h.get(..12).unwrap_or(h).to_string();
        let _ = writeln!(
            o,
            "merged    base {} (sha256 {}…)",
            m.base,
            short(&m.base_sha256)
        );
        for a in &m.adapters {
            let _ = writeln!(
                o,
                "          + {} ×{} (sha256 {}…)",
                a.name,
                a.scale,
                short(&a.sha256)
            );
        }
        for (what, file) in [("source", &m.source), ("imatrix", &m.imatrix)] {
            if let Some(f) = file {
                let _ = writeln!(
                    o,
                    "          {what} {} (sha256 {}…)",
                    f.name,
                    short(&f.sha256)
                );
            }
        }
        let _ = writeln!(o, "          outtype {}; {}", m.outtype, m.tool);
        let _ = writeln!(o, "arch      {}", r.architecture.as_deref().unwrap_or("?"));
        return o;
    }
    let _ = writeln!(
        o,
        "adapter   {} (GGUF v{}, {} tensors, {} bytes)",
        r.path,
        r.version,
        r.tensors.len(),
        r.bytes
    );
    let _ = writeln!(
        o,
        "arch      {}; general.type {}; adapter.type {}; adapter.lora.alpha {}",
        r.architecture.as_deref().unwrap_or("?"),
        r.general_type.as_deref().unwrap_or("?"),
        r.adapter_type.as_deref().unwrap_or("?"),
        r.alpha.map_or(
            "absent (llama.cpp then applies B·A unscaled)".to_string(),
            |a| a.to_string()
        )
    );
    let ranks: Vec<String> = r.ranks.iter().map(ToString::to_string).collect();
    if ranks.is_empty() {
        let _ = writeln!(o, "pairs     none");
    } else {
        let _ = writeln!(o, "pairs     {} (rank {})", r.pairs.len(), ranks.join(", "));
    }
    let _ = writeln!(o, "\nmetadata");
    for kv in &r.metadata {
        let _ = writeln!(o, "  {:<40} {:<10} {}", kv.key, kv.value_type, kv.value);
    }
    let _ = writeln!(
        o,
        "\n{:<40} {:>4} {:<16} {:<16} {:<9} {:>10}",
        "target", "rank", "lora_a ne", "lora_b ne", "types", "α/rank"
    );
    for p in &r.pairs {
        let _ = writeln!(
            o,
            "{:<40} {:>4} {:<16} {:<16} {:<9} {:>10}",
            p.target,
            p.rank,
            format!("{:?}", p.lora_a),
            format!("{:?}", p.lora_b),
            format!("{}/{}", p.types[0], p.types[1]),
            p.runtime_factor
        );
    }
    for p in &r.problems {
        let _ = writeln!(o, "problem: `{}`: {}", p.subject, p.message);
    }
    if let Some(f) = &r.base_fingerprint {
        let base = r.fit.as_ref().map(|f| f.base.as_str());
        o.push_str(&super::fingerprint::text(f, base));
    }
    let _ = writeln!(o);
    match &r.fit {
        None => {
            let _ = writeln!(o, "verdict   read (pass --base BASE.gguf to check the fit)");
        }
        Some(f) if f.fits => {
            let _ = writeln!(o, "verdict   fits {}", f.base);
        }
        Some(f) => {
            let _ = writeln!(
                o,
                "verdict   does not fit {}: {} mismatch(es)",
                f.base,
                f.mismatches.len()
            );
            for m in &f.mismatches {
                let _ = writeln!(o, "  - `{}`: {}", m.subject, m.message);
            }
        }
    }
    o
}

/// One line on what the family's support status means.
fn support_why(s: &crate::arch::support::Support) -> &'static str {
    use crate::arch::support::Status;
    match s.status {
        Status::Verified => "features below checked against PyTorch in llama.cpp by fixtures",
        Status::Mapped => {
            "converted by the reviewed name tables; no fixture has checked it against PyTorch yet"
        }
        Status::Refused => "its converter transforms weights in ways not reviewed for LoRA",
    }
}
