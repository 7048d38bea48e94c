//! `lora-validate --self-test`: the parity checks run on the good adapter and on each sabotaged copy
//! ([`super::sabotage`]); the checks prove themselves when the good adapter is green and every sabotage turns its
//! own check red.

use serde::Serialize;

use super::verdict::Check;
#[cfg(feature = "validate")]
use {
    super::pack::ReferencePack,
    super::sabotage::{self, Made, Sabotage},
    super::verdict::{self, ReferenceLimits},
    crate::gguf::GgufFile,
    crate::validate::engine::Engine,
    crate::validate::{EngineConfig, Error},
    std::path::Path,
};

/// One row of the self-test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Case {
    /// `good adapter` or the sabotage's name.
    pub name: String,
    /// What was broken.
    pub what: String,
    /// The check that must turn red (None for the good adapter: every check must stay green).
    pub expected: Option<Check>,
    /// The checks that turned red.
    pub red: Vec<Check>,
    /// The overall effect ratio measured.
    pub effect_ratio: Option<f64>,
    /// The first diagnosis line.
    pub diagnosis: Option<String>,
    /// Why the sabotage was not run (it does not apply to this adapter).
    pub skipped: Option<String>,
    /// The expectation held.
    pub ok: bool,
}

/// Run the good adapter and every sabotage; `progress` is told each case's name before it runs.
#[cfg(feature = "validate")]
#[allow(clippy::too_many_arguments)]
pub fn run(
    base_path: &Path,
    base: &GgufFile,
    adapter_path: &Path,
    pack: &ReferencePack,
    cfg: &EngineConfig,
    limits: &ReferenceLimits,
    bos: Option<i32>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Case>, Error> {
    let adapter = GgufFile::open(adapter_path)?;
    let dir = tempfile::tempdir()
        .map_err(|e| sabotage::SabotageError(format!("self-test: temporary directory: {e}")))?;
    let mut cases = Vec::new();
    let mut judge = |name: &str,
                     what: String,
                     expected: Option<Check>,
                     adapter: &Path,
                     pack: &ReferencePack|
     -> Result<Case, Error> {
        progress(name);
        let mut engine = Engine::load(base_path, &[(adapter.to_path_buf(), 1.0)], cfg.clone())?;
        let run = super::run::measure(&mut engine, pack, bos, Vec::new())?;
        let v = verdict::judge(&run, limits, Some(pack.adapter.r));
        let red: Vec<Check> = v.checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
        let ok = match expected {
            None => red.is_empty(),
            Some(c) => red.contains(&c),
        };
        Ok(Case {
            name: name.to_string(),
            what,
            expected,
            red,
            effect_ratio: v.effect_ratio,
            diagnosis: v.diagnoses.first().cloned(),
            skipped: None,
            ok,
        })
    };
    cases.push(judge(
        "good adapter",
        "as given".into(),
        None,
        adapter_path,
        pack,
    )?);
    for s in Sabotage::ALL {
        let out = dir
            .path()
            .join(format!("{}.gguf", s.name().replace([' ', '/'], "-")));
        match sabotage::make(s, &adapter, base, pack, &out)? {
            Made::Adapter(what) => {
                cases.push(judge(s.name(), what, Some(s.expected()), &out, pack)?)
            }
            Made::Pack(p, what) => {
                cases.push(judge(s.name(), what, Some(s.expected()), adapter_path, &p)?)
            }
            Made::Skipped(why) => cases.push(Case {
                name: s.name().to_string(),
                what: String::new(),
                expected: Some(s.expected()),
                red: Vec::new(),
                effect_ratio: None,
                diagnosis: None,
                skipped: Some(why),
                ok: true,
            }),
        }
    }
    Ok(cases)
}

/// The self-test as text: one line per case, then PASS or FAIL.
pub fn render(cases: &[Case]) -> String {
    let mut o =
        String::from("lora-validate --self-test: each sabotage must turn its own check red\n\n");
    for c in cases {
        let expected = c
            .expected
            .map_or("all green".to_string(), |e| format!("{} red", e.name()));
        let got = if let Some(why) = &c.skipped {
            format!("skipped: {why}")
        } else if c.red.is_empty() {
            "all green".to_string()
        } else {
            format!(
                "red: {}",
                c.red
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let ratio = c
            .effect_ratio
            .map_or(String::new(), |r| format!(", effect {r:.2}×"));
        o.push_str(&format!(
            "{} {:<28} expected {:<20} {got}{ratio}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            expected
        ));
        if !c.what.is_empty() && c.expected.is_some() {
            o.push_str(&format!("     {}\n", c.what));
        }
        if let Some(d) = &c.diagnosis {
            o.push_str(&format!("     → {d}\n"));
        }
    }
    let passed = cases.iter().all(|c| c.ok);
    o.push_str(if passed { "\nPASS\n" } else { "\nFAIL\n" });
    o
}
