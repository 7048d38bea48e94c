//! Judging a reference run: four checks, each its own failure class, and one-line diagnoses that name the broken
//! link. Pure: the numbers come from [`super::run`] (or a test).
//!
//! - prompt parity: llama.cpp's ids equal the pack's for every prompt;
//! - base parity: the GGUF base stays within `base_max_kl_mean` of the training base (the floor that quantizing and
//!   converting the base costs; a wrong base or tokenizer is far beyond it);
//! - adapter parity: llama.cpp + adapter vs the training adapter, allowed `adapter_kl_factor` × the prompt's own base
//!   floor + `adapter_kl_margin` — a Q4_K_M base does not fail an exact adapter, a wrong scale fails however noisy;
//! - effect parity: over the prompts the adapter really moves (trained shift RMS ≥ `effect_min_trained_rms`), the
//!   shift in llama.cpp along the trained one within [1/`effect_max_ratio`, `effect_max_ratio`] of it at the probe
//!   scale (the smallest recorded, where the shift is linear in the scale), and at every scale what the trained
//!   shift does not explain of llama.cpp's at most `effect_max_residual` × the noise of a llama.cpp pass.

use serde::Serialize;

use super::results::{PromptRun, ReferenceRun, ScaleRun};

/// The four checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Token ids of the prompts.
    PromptParity,
    /// The GGUF base against the training base.
    BaseParity,
    /// The GGUF adapter against the training adapter, relative to the base floor.
    AdapterParity,
    /// The adapter's logit shift in llama.cpp against training.
    EffectParity,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 4] = [
        Check::PromptParity,
        Check::BaseParity,
        Check::AdapterParity,
        Check::EffectParity,
    ];

    /// The name used in reports (`prompt_parity` …).
    pub fn name(self) -> &'static str {
        match self {
            Check::PromptParity => "prompt_parity",
            Check::BaseParity => "base_parity",
            Check::AdapterParity => "adapter_parity",
            Check::EffectParity => "effect_parity",
        }
    }
}

/// Limits of the reference checks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReferenceLimits {
    /// Base parity: largest mean KL(training base ‖ llama.cpp base) per prompt, nats.
    pub base_max_kl_mean: f64,
    /// Adapter parity: the adapter's KL may be this many times the prompt's base KL …
    pub adapter_kl_factor: f64,
    /// … plus this margin, nats.
    pub adapter_kl_margin: f64,
    /// Effect parity: largest ratio llama.cpp ÷ training (and smallest its inverse).
    pub effect_max_ratio: f64,
    /// Effect parity: largest residual (what the trained shift does not explain of llama.cpp's, ÷ the noise of a
    /// llama.cpp pass).
    pub effect_max_residual: f64,
    /// Effect parity judges only prompts whose trained shift RMS (logits) is at least this.
    pub effect_min_trained_rms: f64,
}

impl Default for ReferenceLimits {
    fn default() -> Self {
        ReferenceLimits {
            base_max_kl_mean: 0.5,
            adapter_kl_factor: 2.0,
            adapter_kl_margin: 0.05,
            effect_max_ratio: 1.25,
            effect_max_residual: 2.0,
            effect_min_trained_rms: 0.1,
        }
    }
}

/// One failed check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReferenceFailure {
    /// Which check.
    pub check: Check,
    /// The prompt, or None for a run-level failure.
    pub prompt_id: Option<String>,
    /// The adapter scale, where one applies.
    pub scale: Option<f32>,
    /// The metric (`kl_mean`, `effect_ratio`, `effect_residual`, `first_differing_token` …).
    pub metric: String,
    /// Measured value.
    pub value: f64,
    /// The limit it broke.
    pub limit: f64,
    /// What happened, for people.
    pub message: String,
}

/// The result of a reference run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReferenceVerdict {
    /// No check failed.
    pub passed: bool,
    /// Per check: passed?
    pub checks: Vec<(Check, bool)>,
    /// Every failure.
    pub failures: Vec<ReferenceFailure>,
    /// One line per broken link.
    pub diagnoses: Vec<String>,
    /// The effect ratio over every judged prompt at the probe scale (Σ⟨Δl, Δt⟩ ÷ Σ‖Δt‖²), when any was judged.
    pub effect_ratio: Option<f64>,
    /// The limits used.
    pub limits: ReferenceLimits,
}

/// Judge `run`. `rank` (the adapter's r) lets a ratio of ≈ 1/√r or √r be named as rsLoRA scaling.
pub fn judge(run: &ReferenceRun, limits: &ReferenceLimits, rank: Option<f64>) -> ReferenceVerdict {
    let mut failures = Vec::new();
    let mut diagnoses = Vec::new();
    let fail = |check, p: &PromptRun, scale, metric: &str, value, limit, message: String| {
        ReferenceFailure {
            check,
            prompt_id: Some(p.id.clone()),
            scale,
            metric: metric.to_string(),
            value,
            limit,
            message,
        }
    };

    // Prompt parity.
    for p in &run.prompts {
        if let Some(e) = &p.llama_render_error {
            failures.push(fail(
                Check::PromptParity,
                p,
                None,
                "rendered",
                0.0,
                0.0,
                e.clone(),
            ));
            diagnoses.push(format!("prompt {}: llama.cpp cannot render it: {e}", p.id));
        } else if let Some(m) = &p.mismatch {
            let d = m.diagnosis(&p.id);
            failures.push(fail(
                Check::PromptParity,
                p,
                None,
                "first_differing_token",
                m.position as f64,
                0.0,
                d.clone(),
            ));
            diagnoses.push(d);
        }
    }

    // Base parity: the floor.
    let mut base_failed = Vec::new();
    for p in &run.prompts {
        let Some(b) = p.base else { continue };
        if b.kl_mean > limits.base_max_kl_mean {
            base_failed.push(p.id.clone());
            failures.push(fail(
                Check::BaseParity,
                p,
                None,
                "kl_mean",
                b.kl_mean,
                limits.base_max_kl_mean,
                format!(
                    "prompt {}: the GGUF base differs from the training base by KL {:.3} nats per token (limit {}), \
                     top-1 agreement {:.2}",
                    p.id, b.kl_mean, limits.base_max_kl_mean, b.top1
                ),
            ));
        }
    }
    if !base_failed.is_empty() {
        diagnoses.push(format!(
            "the GGUF base does not behave like the base the pack was recorded on ({} of {} prompts beyond KL {}): a \
             different model, tokenizer or a broken quantization — the adapter cannot be judged on it",
            base_failed.len(),
            run.prompts.len(),
            limits.base_max_kl_mean
        ));
    }

    // Adapter parity, relative to each prompt's base floor.
    let mut adapter_failed = 0;
    for p in &run.prompts {
        let Some(b) = p.base else { continue };
        for a in &p.adapters {
            let limit = limits.adapter_kl_factor * b.kl_mean + limits.adapter_kl_margin;
            if a.divergence.kl_mean > limit {
                adapter_failed += 1;
                failures.push(fail(
                    Check::AdapterParity,
                    p,
                    Some(a.scale),
                    "kl_mean",
                    a.divergence.kl_mean,
                    limit,
                    format!(
                        "prompt {} at scale {}: llama.cpp + adapter differs from the training adapter by KL {:.3} \
                         nats per token, beyond {} × the base floor {:.3} + {} = {:.3}",
                        p.id,
                        a.scale,
                        a.divergence.kl_mean,
                        limits.adapter_kl_factor,
                        b.kl_mean,
                        limits.adapter_kl_margin,
                        limit
                    ),
                ));
            }
        }
    }

    // Effect parity, wherever the adapter moves the logits at all: the size of the shift and what is left of it
    // beyond the trained shift, against the noise every llama.cpp pass carries.
    let judged: Vec<(&PromptRun, &ScaleRun)> = run
        .prompts
        .iter()
        .flat_map(|p| p.adapters.iter().map(move |a| (p, a)))
        .filter(|(_, a)| a.effect.trained_rms >= limits.effect_min_trained_rms)
        .collect();
    // The ratio is judged at the probe scale, the smallest recorded: there the shift is still linear in the scale,
    // so α×2 reads 2× (at scale 1 a saturated target prompt reads 1.2–1.35×). Σ⟨Δl, Δt⟩ / Σ‖Δt‖² over the judged
    // prompts: the prompts the adapter moves most weigh most.
    let probe = probe_scale(run);
    let (sum_lt, sum_tt) = judged.iter().filter(|(_, a)| Some(a.scale) == probe).fold(
        (0.0, 0.0),
        |(lt, tt), (_, a)| {
            let t2 = a.effect.trained_norm.powi(2);
            (lt + a.effect.ratio * t2, tt + t2)
        },
    );
    let effect_ratio = (sum_tt > 0.0).then(|| sum_lt / sum_tt);
    let (lo, hi) = (1.0 / limits.effect_max_ratio, limits.effect_max_ratio);
    let (mut ratio_failed, mut residual_failed) = (0, Vec::new());
    for &(p, a) in &judged {
        let e = &a.effect;
        if Some(a.scale) == probe && !(lo..=hi).contains(&e.ratio) {
            ratio_failed += 1;
            failures.push(fail(
                Check::EffectParity,
                p,
                Some(a.scale),
                "effect_ratio",
                e.ratio,
                if e.ratio > hi { hi } else { lo },
                format!(
                    "prompt {} at scale {}: the adapter moves the logits {:.2}× as much in llama.cpp as in training \
                     (allowed {lo:.2}–{hi:.2})",
                    p.id, a.scale, e.ratio
                ),
            ));
        }
        if e.residual > limits.effect_max_residual {
            residual_failed.push(e.residual);
            failures.push(fail(
                Check::EffectParity,
                p,
                Some(a.scale),
                "effect_residual",
                e.residual,
                limits.effect_max_residual,
                format!(
                    "prompt {} at scale {}: llama.cpp's logit shift differs from the trained one beyond the noise of \
                     the base ({:.1}× the noise unexplained, limit {}; cosine {:.3})",
                    p.id, a.scale, e.residual, limits.effect_max_residual, e.cosine
                ),
            ));
        }
    }
    if ratio_failed > 0 {
        diagnoses.push(scaling_diagnosis(&judged, probe, effect_ratio, rank));
    } else if let Some(worst) = residual_failed.iter().cloned().reduce(f64::max) {
        diagnoses.push(format!(
            "the adapter changes other logits in llama.cpp than in training ({} prompt × scale pair(s), up to \
             {worst:.1}× the noise of the base unexplained) while its size matches ({:.2}×): tensors are mapped or \
             laid out wrongly (a missing or extra Q/K permutation, swapped A/B, a dropped or misplaced layer)",
            residual_failed.len(),
            effect_ratio.unwrap_or(f64::NAN)
        ));
    } else if adapter_failed > 0 && base_failed.is_empty() {
        diagnoses.push(format!(
            "llama.cpp + adapter drifts from the training adapter beyond the base floor on {adapter_failed} \
             prompt × scale pair(s) while its effect matches in size and direction: some tensors differ (a dropped \
             or misplaced layer, a lost permutation on a few targets)"
        ));
    }

    let checks: Vec<(Check, bool)> = Check::ALL
        .iter()
        .map(|&c| (c, !failures.iter().any(|f| f.check == c)))
        .collect();
    ReferenceVerdict {
        passed: failures.is_empty(),
        checks,
        failures,
        diagnoses,
        effect_ratio,
        limits: limits.clone(),
    }
}

/// One line on a scaling problem: the same ratio on every prompt (named when it is α×2, 1/√r …).
fn scaling_diagnosis(
    judged: &[(&PromptRun, &ScaleRun)],
    probe: Option<f32>,
    overall: Option<f64>,
    rank: Option<f64>,
) -> String {
    let ratios: Vec<f64> = judged
        .iter()
        .filter(|(_, a)| Some(a.scale) == probe)
        .map(|(_, a)| a.effect.ratio)
        .collect();
    let overall = overall.unwrap_or(f64::NAN);
    let consistent = ratios.iter().all(|r| (r / overall - 1.0).abs() <= 0.15);
    let every = if consistent {
        format!("on every prompt ({} judged)", ratios.len())
    } else {
        let (lo, hi) = ratios
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), &r| (a.min(r), b.max(r)));
        format!("overall ({lo:.2}–{hi:.2}× across {} prompts)", ratios.len())
    };
    format!(
        "effect in llama.cpp is {overall:.2}× the trained effect {every}, at scale {}: a scaling problem{}",
        probe.unwrap_or(1.0),
        name_ratio(overall, rank)
    )
}

/// The smallest adapter scale recorded (where the effect ratio is judged).
pub fn probe_scale(run: &ReferenceRun) -> Option<f32> {
    run.prompts
        .iter()
        .flat_map(|p| p.adapters.iter().map(|a| a.scale))
        .reduce(f32::min)
}

/// Names a ratio that matches a known mistake.
fn name_ratio(r: f64, rank: Option<f64>) -> String {
    let near = |x: f64| (r / x - 1.0).abs() < 0.12;
    if let Some(rank) = rank.filter(|r| *r > 1.0)
        && (near(1.0 / rank.sqrt()) || near(rank.sqrt()))
    {
        let s = rank.sqrt();
        return if near(1.0 / s) {
            format!(" — ≈ 1/√r (r = {rank}): the rsLoRA factor α/√r was applied as α/r")
        } else {
            format!(" — ≈ √r (r = {rank}): α/r applied as the rsLoRA α/√r")
        };
    }
    if near(2.0) {
        " — ≈ 2×: lora_alpha doubled (or the runtime scale is 2)".into()
    } else if near(0.5) {
        " — ≈ ½: lora_alpha halved (or the runtime scale is 0.5)".into()
    } else if r < 0.05 {
        " — the adapter has no effect in llama.cpp (zero factors, or targets llama.cpp's graph ignores)".into()
    } else {
        " (lora_alpha, rsLoRA or the runtime scale)".into()
    }
}
