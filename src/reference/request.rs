//! What `validate::run` is asked for a training-parity run (`validate::Request::reference`) and what it answers.

use std::path::PathBuf;

use super::pack::ReferencePack;
use super::report::{self, Format, ReportMeta};
use super::results::ReferenceRun;
use super::selftest::{self, Case};
use super::verdict::{ReferenceLimits, ReferenceVerdict};

/// Training parity against a reference pack (`lora-validate --reference PACK_DIR`).
#[derive(Clone, Debug)]
pub struct ReferenceRequest {
    /// The pack's directory (pack.json + pack.safetensors).
    pub pack: PathBuf,
    /// Limits of the four checks.
    pub limits: ReferenceLimits,
    /// Run the self-test (the good adapter and its sabotaged copies) instead of one parity run.
    pub self_test: bool,
}

/// What a parity run found: the pack, every measurement, the verdict of the four checks.
#[derive(Debug)]
pub struct ReferenceOutcome {
    /// The pack that ran.
    pub pack: ReferencePack,
    /// Every measurement.
    pub run: ReferenceRun,
    /// Pass or fail per check, every failure with its class (check), the diagnoses.
    pub verdict: ReferenceVerdict,
    /// Base, adapter and tool, for the reports.
    pub meta: ReportMeta,
}

impl ReferenceOutcome {
    /// The report in `format`.
    pub fn render(&self, format: Format) -> String {
        report::render(format, &self.pack, &self.run, &self.verdict, &self.meta)
    }
}

/// What the self-test found: one case for the good adapter and one per sabotage.
#[derive(Debug, serde::Serialize)]
pub struct SelfTestOutcome {
    /// Every case, the good adapter first.
    pub cases: Vec<Case>,
}

impl SelfTestOutcome {
    /// The good adapter stayed green and each sabotage turned its own check red.
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.ok)
    }

    /// The self-test as JSON (`format` Json: the list of cases), as a page around the text (Html), or as text
    /// (every other format).
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => serde_json::to_string_pretty(&self.cases).unwrap_or_default() + "\n",
            Format::Html => crate::report::html::text_page(
                "lora-validate --self-test",
                self.passed(),
                &selftest::render(&self.cases),
            ),
            _ => selftest::render(&self.cases),
        }
    }
}
