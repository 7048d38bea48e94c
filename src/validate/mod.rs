//! The drift gate: golden prompts, the llama.cpp engine, metrics, and the verdict. [`run`] is the library entry
//! of `lora-validate`. Only [`engine`] touches llama.cpp (feature `validate`); the golden sets, the gate, the
//! divergence metrics and the results compile and are tested without a C++ toolchain.

pub mod divergence;
#[cfg(feature = "validate")]
pub mod engine;
pub mod gate;
pub mod golden;
pub mod merge_reports;
pub mod merged;
mod request;
pub mod results;
pub mod shard;

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
        if req.merged.is_some() || req.shard.is_some() {
            return Err(Error::Usage(
                "--reference runs the pack's prompts whole on the runtime adapter: it does not take --merged or \
                 --shard"
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
    for (path, _) in &req.adapters {
        if let Err(problems) = GgufAdapter::open(path)?.fit(&base) {
            return Err(Error::Misfit {
                adapter: path.clone(),
                base: req.base.clone(),
                problems,
            });
        }
    }
    if let Some(merged) = &req.merged {
        check_merged(&base, merged)?;
    }
    let mut engine = engine::Engine::load(&req.base, &req.adapters, req.engine.clone())?;
    if let Some(merged) = &req.merged {
        engine = engine.with_merged(merged)?;
    }
    let measured = engine.run(&set.prompts, &req.scales, progress)?;
    let verdict = gate::judge(&set, &measured, &req.limits);
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
