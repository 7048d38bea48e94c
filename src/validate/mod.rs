//! The drift gate: golden prompts, the llama.cpp engine, metrics, and the verdict. [`run`] is the library entry
//! of `lora-validate`. Only [`engine`] touches llama.cpp (feature `validate`); the golden sets, the gate, the
//! divergence metrics and the results compile and are tested without a C++ toolchain.

pub mod alora;
pub mod baseline;
pub mod divergence;
#[cfg(feature = "validate")]
pub mod engine;
pub mod gate;
pub mod golden;
pub mod merge_reports;
pub mod merged;
pub mod recommend;
mod request;
pub mod results;
pub mod shard;
pub mod tags;

pub use request::{
    EngineConfig, EngineError, Error, GoldenOutcome, Outcome, Progress, ReferenceOutcome,
    ReferenceRequest, Refine, Request, SelfTestOutcome, parse_adapter,
};

/// Fail unless every scale is a finite, non-negative number and there is at least one.
pub fn check_scales(scales: &[f32]) -> Result<(), Error> {
    if scales.is_empty() || scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
        return Err(Error::Usage(format!(
            "--scales {scales:?}: give non-negative numbers, e.g. 0,0.5,1"
        )));
    }
    Ok(())
}

/// Validate the request's adapters on its base: check every adapter against the base with our own reader (llama.cpp
/// aborts the process on some mismatches), load the base and the adapters once, run the golden set at every
/// scale, and judge. `progress` hears each step of the engine. A request with `reference` runs training parity
/// against the pack instead ([`crate::reference::validate`]).
#[cfg(feature = "validate")]
pub fn run(req: &Request, progress: &mut dyn FnMut(Progress)) -> Result<Outcome, Error> {
    use crate::gguf::GgufFile;
    use crate::gguf_adapter::{GgufAdapter, fingerprint};

    if let Some(r) = &req.reference {
        if req.merged.is_some()
            || req.shard.is_some()
            || req.baseline.is_some()
            || req.refine.is_some()
        {
            return Err(Error::Usage(
                "--reference runs the pack's prompts whole on the runtime adapter: it does not take --merged, \
                 --shard, --baseline-adapter or --scales auto"
                    .into(),
            ));
        }
        return crate::reference::validate::run(req, r);
    }
    check_scales(&req.scales)?;
    let set = if req.prompts.is_empty() {
        golden::builtin_control_set()?
    } else {
        golden::load_golden(&req.prompts)?
    };
    let (set, shard) = match req.shard {
        Some(s) => {
            let (part, info) = s.select(&set).map_err(Error::Usage)?;
            (part, Some(info))
        }
        None => (set, None),
    };
    let base = GgufFile::open(&req.base)?;
    let mut base_warnings = Vec::new();
    let mut engine_cfg = req.engine.clone();
    for (path, _) in &req.adapters {
        let adapter = GgufAdapter::open(path)?;
        if let Err(problems) = adapter.fit(&base) {
            return Err(Error::Misfit {
                adapter: path.clone(),
                base: req.base.clone(),
                problems,
            });
        }
        let checked = fingerprint::check_base(&adapter.file, &base, req.strict_base);
        base_warnings.extend(checked.map_err(Error::BaseMismatch)?);
        if let Some(tokens) = alora::invocation_tokens(&adapter) {
            if req.adapters.len() > 1 {
                return Err(Error::Usage(format!(
                    "`{}` is an activated LoRA (adapter.alora.invocation_tokens): llama-server runs it alone, from \
                     its invocation sequence on, and applies a plain LoRA beside it to every token instead; validate \
                     it on its own",
                    path.display()
                )));
            }
            if req.merged.is_some() {
                return Err(Error::Usage(format!(
                    "`{}` is an activated LoRA (adapter.alora.invocation_tokens): it acts only from its invocation \
                     sequence on, which a merged model cannot do; --merged compares plain LoRA merges",
                    path.display()
                )));
            }
            if req.baseline.is_some() {
                return Err(Error::Usage(format!(
                    "`{}` is an activated LoRA (adapter.alora.invocation_tokens): --baseline-adapter is not \
                     supported for it",
                    path.display()
                )));
            }
            engine_cfg.alora_invocation = Some(tokens);
        }
    }
    if req.refine.is_some() && req.shard.is_some() {
        return Err(Error::Usage(
            "--scales auto refines the recommended scale over the whole golden set, which a shard (--shard) does \
             not see; give the shards an explicit --scales list"
                .into(),
        ));
    }
    if req.baseline.is_some() && !req.scales.contains(&1.0) {
        return Err(Error::Usage(
            "--baseline-adapter compares the candidate with the previous adapter at scale 1: include 1 in --scales"
                .into(),
        ));
    }
    if req.baseline.is_some() && req.shard.is_some() {
        return Err(Error::Usage(
            "--baseline-adapter compares the whole golden set with the previous adapter, which merge-reports does not \
             combine; run the baseline gate unsharded"
                .into(),
        ));
    }
    for w in &base_warnings {
        progress(Progress::Warning(w.clone()));
    }
    if let Some(merged) = &req.merged {
        check_merged(&base, merged)?;
    }
    if let Some((path, _)) = &req.baseline {
        let previous = GgufAdapter::open(path)?;
        if let Err(problems) = previous.fit(&base) {
            return Err(Error::Misfit {
                adapter: path.clone(),
                base: req.base.clone(),
                problems,
            });
        }
        if alora::invocation_tokens(&previous).is_some() {
            return Err(Error::Usage(format!(
                "--baseline-adapter `{}` is an activated LoRA (adapter.alora.invocation_tokens): not supported as \
                 a baseline",
                path.display()
            )));
        }
    }
    let mut engine = engine::Engine::load(&req.base, &req.adapters, engine_cfg)?;
    if let Some(merged) = &req.merged {
        engine = engine.with_merged(merged)?;
    }
    let mut probes = Vec::new();
    let mut refine = |so_far: &results::RunMeasurements| {
        let r = req.refine?;
        if probes.len() >= r.max_passes {
            return None;
        }
        let probe = recommend::next_probe(
            &recommend::recommend(&set, so_far, &req.limits),
            r.precision,
        )?;
        probes.push(probe);
        Some(probe)
    };
    let mut measured = engine.run_refined(&set.prompts, &req.scales, &mut refine, progress)?;
    let mut verdict = gate::judge(&set, &measured, &req.limits);
    verdict.warnings.extend(base_warnings);
    if let Some(r) = verdict.recommendation.as_mut() {
        r.refined_scales = probes;
    }
    // Against the adapter in production: only after a finished run (a partial one has failed already).
    if let Some(previous) = req.baseline.as_ref().filter(|_| measured.partial.is_none()) {
        let against = engine.run_against(&set.prompts, previous, progress)?;
        let alone = match against.partial {
            None => Some(engine.run_alone(&set.prompts, previous, progress)?),
            Some(_) => None,
        };
        let drift = alone
            .as_ref()
            .filter(|a| a.partial.is_none())
            .and_then(|a| baseline::control_drift(&set, a, 1.0))
            .zip(baseline::control_drift(&set, &measured, 1.0))
            .map(|(previous, candidate)| baseline::ControlDrift {
                previous,
                candidate,
            });
        let b = baseline::judge(
            &set,
            &against,
            &req.limits,
            (&previous.0.display().to_string(), previous.1),
            drift,
        );
        let stopped =
            (against.partial.as_ref()).or_else(|| alone.as_ref().and_then(|a| a.partial.as_ref()));
        if let Some(partial) = stopped {
            // The sweep finished; the comparison did not: the run is partial (exit 130 or 3), its report complete
            // but for the baseline section.
            let reason = format!(
                "the comparison with the previous adapter did not finish: {}",
                partial.reason
            );
            verdict.failures.insert(
                0,
                gate::Failure {
                    prompt_id: None,
                    scale: None,
                    metric: "partial".into(),
                    value: partial.prompts_done as f64,
                    limit: partial.prompts_total as f64,
                    message: reason.clone(),
                },
            );
            verdict.passed = false;
            measured.partial = Some(results::Partial {
                reason,
                prompts_done: set.prompts.len(),
                ..partial.clone()
            });
        }
        verdict.passed &= b.passed;
        verdict.failures.extend(b.failures.iter().cloned());
        verdict.baseline = Some(b);
    }
    let meta = req.report_meta(shard);
    Ok(Outcome::Golden(Box::new(GoldenOutcome {
        set,
        measured,
        verdict,
        meta,
    })))
}

/// A `--merged` file must be a model of the base's architecture (read with our own reader before llama.cpp).
#[cfg(feature = "validate")]
fn check_merged(base: &crate::gguf::GgufFile, path: &std::path::Path) -> Result<(), Error> {
    use crate::gguf::{GgufFile, keys};
    let merged = GgufFile::open(path)?;
    let arch = |f: &GgufFile| f.get_str(keys::GENERAL_ARCHITECTURE).map(str::to_string);
    let n_tokens = |f: &GgufFile| {
        f.get("tokenizer.ggml.tokens")
            .and_then(crate::gguf::Value::as_array)
            .map_or(0, |a| a.values.len())
    };
    let problem = if merged.get_str(keys::GENERAL_TYPE) == Some("adapter") {
        Some("it is an adapter, not a model (give it with --adapter)".to_string())
    } else if arch(&merged) != arch(base) {
        Some(format!(
            "its architecture is {:?} and the base's {:?}",
            arch(&merged).unwrap_or_default(),
            arch(base).unwrap_or_default()
        ))
    } else if n_tokens(&merged) != n_tokens(base) {
        Some(format!(
            "its vocabulary has {} tokens and the base's {}",
            n_tokens(&merged),
            n_tokens(base)
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::Usage(format!(
            "--merged `{}` cannot be a merge of the base `{}`: {p}",
            path.display(),
            base.path.display()
        ))),
        None => Ok(()),
    }
}
