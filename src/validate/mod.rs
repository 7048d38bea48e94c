//! The drift gate: golden prompts, the llama.cpp engine, metrics, and the verdict. [`run`] is the library entry
//! of `lora-validate`. Only [`engine`] touches llama.cpp (feature `validate`); the golden sets, the gate, the
//! divergence metrics and the results compile and are tested without a C++ toolchain.

pub mod divergence;
#[cfg(feature = "validate")]
pub mod engine;
pub mod gate;
pub mod golden;
mod request;
pub mod results;

pub use request::{
    EngineConfig, EngineError, Error, GoldenOutcome, Outcome, Progress, ReferenceOutcome,
    ReferenceRequest, Request, SelfTestOutcome, parse_adapter,
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
    use crate::gguf_adapter::GgufAdapter;

    if let Some(r) = &req.reference {
        return crate::reference::validate::run(req, r);
    }
    check_scales(&req.scales)?;
    let set = if req.prompts.is_empty() {
        golden::builtin_control_set()?
    } else {
        golden::load_golden(&req.prompts)?
    };
    let base = GgufFile::open(&req.base)?;
    for (path, _) in &req.adapters {
        if let Err(problems) = GgufAdapter::open(path)?.fit(&base) {
            return Err(Error::Misfit {
                adapter: path.clone(),
                base: req.base.clone(),
                problems,
            });
        }
    }
    let mut engine = engine::Engine::load(&req.base, &req.adapters, req.engine.clone())?;
    let measured = engine.run(&set.prompts, &req.scales, progress)?;
    let verdict = gate::judge(&set, &measured, &req.limits);
    let meta = req.report_meta();
    Ok(Outcome::Golden(Box::new(GoldenOutcome {
        set,
        measured,
        verdict,
        meta,
    })))
}
