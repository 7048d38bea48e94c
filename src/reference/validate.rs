//! `validate::run` for a request with a reference pack: the pack read and checked against the base, the adapter
//! fitted with our own reader (llama.cpp aborts on some misfits), then one parity run or the self-test.

use super::request::{ReferenceOutcome, ReferenceRequest, SelfTestOutcome};
use super::{ReferencePack, check, selftest, verdict};
use crate::gguf::GgufFile;
use crate::gguf_adapter::GgufAdapter;
use crate::validate::engine::Engine;
use crate::validate::{Error, Outcome, Request};

/// Run `r` on the request's base and its one adapter.
pub fn run(req: &Request, r: &ReferenceRequest) -> Result<Outcome, Error> {
    let [(adapter, scale)] = req.adapters.as_slice() else {
        return Err(Error::Usage(
            "--reference compares one adapter at its trained scale: give one --adapter A.gguf"
                .into(),
        ));
    };
    if *scale != 1.0 {
        return Err(Error::Usage(format!(
            "--reference compares the adapter at its trained scale: give `{}` without :{scale}",
            adapter.display()
        )));
    }
    let pack = ReferencePack::open(&r.pack)?;
    let base = GgufFile::open(&req.base)?;
    let gguf_adapter = GgufAdapter::open(adapter)?;
    if let Err(problems) = gguf_adapter.fit(&base) {
        return Err(Error::Misfit {
            adapter: adapter.clone(),
            base: req.base.clone(),
            problems,
        });
    }
    if crate::validate::alora::invocation_tokens(&gguf_adapter).is_some() {
        // The recorder runs plain PEFT forward passes; an aLoRA acts only from its invocation on.
        return Err(Error::Usage(format!(
            "`{}` is an activated LoRA (adapter.alora.invocation_tokens): --reference compares plain LoRAs only",
            adapter.display()
        )));
    }
    // The base fingerprints: the adapter's (recorded by `lora-convert --base`) and the pack's (recorded by the
    // recorder), each a warning, or with --strict-base a refusal.
    let mut warnings: Vec<String> =
        crate::gguf_adapter::fingerprint::check_base(&gguf_adapter.file, &base, req.strict_base)
            .map_err(Error::BaseMismatch)?
            .into_iter()
            .collect();
    let pack_differences = check::pack_against_base(&pack, &base);
    if req.strict_base && !pack_differences.is_empty() {
        let list: String = pack_differences
            .iter()
            .map(|d| format!("\n  - {d}"))
            .collect();
        return Err(Error::BaseMismatch(format!(
            "--strict-base: the reference pack `{}` was not recorded on the base `{}` ({} difference(s)):{list}\nGive \
             the GGUF of the model the pack was recorded on, or record the pack again on this base's model.",
            r.pack.display(),
            req.base.display(),
            pack_differences.len()
        )));
    }
    warnings.extend(pack_differences);
    let bos = base
        .get_u64("tokenizer.ggml.bos_token_id")
        .and_then(|b| i32::try_from(b).ok());
    if r.self_test {
        let cases = selftest::run(
            &req.base,
            &base,
            adapter,
            &pack,
            &req.engine,
            &r.limits,
            bos,
            &mut |_| {},
        )?;
        return Ok(Outcome::SelfTest(SelfTestOutcome { cases }));
    }
    let mut engine = Engine::load(&req.base, &req.adapters, req.engine.clone())?;
    let run = super::run::measure(&mut engine, &pack, bos, warnings)?;
    let verdict = verdict::judge(&run, &r.limits, Some(pack.adapter.r));
    Ok(Outcome::Reference(Box::new(ReferenceOutcome {
        pack,
        run,
        verdict,
        meta: req.report_meta(None),
    })))
}
