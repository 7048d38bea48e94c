//! The drift gate: golden prompts, the llama.cpp engine, metrics, and the verdict. [`run`] is the library entry
//! of `lora-validate`. Only [`engine`] touches llama.cpp (feature `validate`); the golden sets, the gate, the
//! divergence metrics and the results compile and are tested without a C++ toolchain.

pub mod alora;
pub mod divergence;
#[cfg(feature = "validate")]
pub mod engine;
pub mod gate;
pub mod golden;
pub mod recommend;
mod request;
pub mod results;
pub mod tags;

pub use request::{
    EngineConfig, EngineError, Error, Outcome, Progress, Refine, Request, parse_adapter,
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
/// scale, and judge. `progress` hears each step of the engine.
#[cfg(feature = "validate")]
pub fn run(req: &Request, progress: &mut dyn FnMut(Progress)) -> Result<Outcome, Error> {
    use crate::gguf::GgufFile;
    use crate::gguf_adapter::GgufAdapter;

    check_scales(&req.scales)?;
    let set = if req.prompts.is_empty() {
        golden::builtin_control_set()?
    } else {
        golden::load_golden(&req.prompts)?
    };
    let base = GgufFile::open(&req.base)?;
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
        if let Some(tokens) = alora::invocation_tokens(&adapter) {
            if req.adapters.len() > 1 {
                return Err(Error::Usage(format!(
                    "`{}` is an activated LoRA (adapter.alora.invocation_tokens): llama-server runs it alone, from \
                     its invocation sequence on, and applies a plain LoRA beside it to every token instead; validate \
                     it on its own",
                    path.display()
                )));
            }
            engine_cfg.alora_invocation = Some(tokens);
        }
    }
    let mut engine = engine::Engine::load(&req.base, &req.adapters, engine_cfg)?;
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
    let measured = engine.run_refined(&set.prompts, &req.scales, &mut refine, progress)?;
    let mut verdict = gate::judge(&set, &measured, &req.limits);
    if let Some(r) = verdict.recommendation.as_mut() {
        r.refined_scales = probes;
    }
    let meta = crate::report::ReportMeta {
        base: req.base.display().to_string(),
        adapters: req
            .adapters
            .iter()
            .map(|(p, s)| (p.display().to_string(), *s))
            .collect(),
        tool_version: format!("lora-validate {}", env!("CARGO_PKG_VERSION")),
    };
    Ok(Outcome {
        set,
        measured,
        verdict,
        meta,
    })
}
