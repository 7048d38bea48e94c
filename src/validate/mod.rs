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

pub use request::{EngineConfig, EngineError, Error, Outcome, Progress, Request, parse_adapter};

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
    use crate::gguf_adapter::{GgufAdapter, fingerprint};

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
    }
    for w in &base_warnings {
        progress(Progress::Warning(w.clone()));
    }
    if let Some(merged) = &req.merged {
        check_merged(&base, merged)?;
    }
    let mut engine = engine::Engine::load(&req.base, &req.adapters, req.engine.clone())?;
    if let Some(merged) = &req.merged {
        engine = engine.with_merged(merged)?;
    }
    let measured = engine.run(&set.prompts, &req.scales, progress)?;
    let mut verdict = gate::judge(&set, &measured, &req.limits);
    verdict.warnings.extend(base_warnings);
    let meta = crate::report::ReportMeta {
        base: req.base.display().to_string(),
        adapters: req
            .adapters
            .iter()
            .map(|(p, s)| (p.display().to_string(), *s))
            .collect(),
        tool_version: format!("lora-validate {}", env!("CARGO_PKG_VERSION")),
        merged: req.merged.as_ref().map(|p| p.display().to_string()),
        limits: req.limits.clone(),
        shard,
    };
    Ok(Outcome {
        set,
        measured,
        verdict,
        meta,
    })
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
