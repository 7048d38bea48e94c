//! PEFT adapter + family table + base description → a GGUF LoRA adapter that behaves in llama.cpp exactly as the
//! adapter did in PyTorch. `plan` decides everything from shapes and configuration; `write` streams the tensors
//! one at a time into a temporary file (`stream` encodes Linear factors straight from the adapter's bytes,
//! `materialize` builds the other layouts in f32); `verify` optionally reads it back; then the file is renamed into
//! place.

pub mod base;
pub mod base_family;
pub mod error;
pub mod factor;
pub mod manifest;
pub mod materialize;
pub mod params;
pub mod plan;
pub mod quirks;
pub mod stream;
pub mod verify;
pub mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use base::{BaseModel, BaseSource};
pub use error::ConvertError;
pub use plan::{OutType, Plan};
pub use quirks::{IgnoredPairs, Quirks, TorchtuneQwen2};
pub use verify::VerifyReport;

use crate::adapter::{self, Adapter, Framework};
use crate::arch;
use crate::gguf;
use crate::gguf_adapter::fingerprint::{self, BaseFingerprint, FingerprintError};
use crate::mlx;

/// What to convert and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The adapter directory (PEFT or mlx-lm, told apart by its files).
    pub adapter_dir: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// The base model GGUF (preferred: every target is checked against it).
    pub base: Option<PathBuf>,
    /// A Hugging Face model directory or `config.json` describing the base.
    pub base_config: Option<PathBuf>,
    /// Output tensor type.
    pub outtype: OutType,
    /// Force a GGUF architecture (must agree with the base, if one is given).
    pub arch: Option<String>,
    /// Overwrite an existing output.
    pub force: bool,
    /// Read the file back and check every ΔW before renaming it into place.
    pub verify: bool,
    /// Worker threads that read, convert and write the pairs (None: rayon's default).
    pub threads: Option<usize>,
    /// Choices about trainer quirks (`--torchtune-qwen2`).
    pub quirks: Quirks,
}

/// What was written, for the summary line and for tests.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The output file.
    pub output: PathBuf,
    /// The base description used.
    pub base: String,
    /// `general.architecture`.
    pub arch: &'static str,
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    /// LoRA pairs written.
    pub pairs: usize,
    /// Distinct ranks.
    pub ranks: BTreeSet<usize>,
    /// Who trained the adapter.
    pub framework: Framework,
    /// Distinct scalings (s_m: PEFT's α/r, mlx-lm's scale) → number of modules with it.
    pub scalings: BTreeMap<String, usize>,
    /// Pairs whose B carries a folded scaling factor.
    pub folded: usize,
    /// ggml type name → tensors written with it.
    pub types: BTreeMap<&'static str, usize>,
    /// File size in bytes.
    pub bytes: u64,
    /// Warnings from planning.
    pub warnings: Vec<String>,
    /// The verification outcome, when `--verify` was given.
    pub verify: Option<VerifyReport>,
    /// Every tensor written: name, ggml type, ne.
    pub tensors: Vec<(String, &'static str, Vec<u64>)>,
}

/// Everything decided before a byte is written: the adapter as read, the base and family when they resolve, the
/// plan of what fits, and every refusal (in the order a user should read them).
pub struct Prepared {
    /// The adapter, without pairs refused on their own.
    pub adapter: Adapter,
    /// mlx-lm's own configuration, for an mlx-lm adapter.
    pub mlx: Option<mlx::MlxConfig>,
    /// The base description, when one was found and readable.
    pub base: Option<BaseModel>,
    /// The family, when the base names one we convert.
    pub family: Option<&'static arch::Family>,
    /// The plan of every pair that converts (present whenever the family resolved).
    pub plan: Option<Plan>,
    /// Everything that stops conversion; empty means the plan can be written.
    pub refusals: Vec<ConvertError>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("adapter", &self.adapter.dir)
            .field("family", &self.family.map(|f| f.gguf_arch))
            .field("pairs", &self.plan.as_ref().map(|p| p.pairs.len()))
            .field("refusals", &self.refusals)
            .finish()
    }
}

/// Read the adapter and the base and plan the output, collecting every refusal instead of stopping at the first.
/// Errors only when the adapter cannot be read at all (missing files, invalid JSON, corrupt safetensors).
pub fn prepare(
    adapter_dir: &Path,
    base: Option<&Path>,
    base_config: Option<&Path>,
    arch_override: Option<&str>,
    outtype: OutType,
    quirks: &Quirks,
) -> Result<Prepared, ConvertError> {
    let mut scan = adapter::scan(adapter_dir)?;
    let base_path = base;
    let base = resolve_base_from(base, base_config, &scan.adapter);
    if let Ok(base) = &base
        && let Some(n_vocab) = base.n_vocab
    {
        scan.check_vocabulary(n_vocab, &base.describe());
    }
    let adapter::Scan {
        mut adapter,
        refusals,
        mlx,
    } = scan;
    let mut refusals: Vec<ConvertError> = refusals.into_iter().map(ConvertError::from).collect();
    let base = match base {
        Ok(b) => Some(b),
        Err(e) => {
            refusals.push(e);
            None
        }
    };
    let family = match base.as_ref().map(|b| resolve_family(arch_override, b)) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            refusals.push(e);
            None
        }
        None => None,
    };
    // After the architecture: a base of another architecture is named as such first.
    if let (Some(_), Some(path)) = (&base, base_path)
        && !quirks.other_base_family
        && let Ok(file) = crate::gguf::GgufFile::open(path)
        && let Some(m) = base_family::check(
            adapter.config.base_model_name_or_path.as_deref(),
            path,
            &file,
        )
    {
        refusals.push(ConvertError::BaseFamily(m));
    }
    let plan = match (family, &base) {
        (Some(family), Some(base)) => {
            // target_parameters pairs are told apart by shape against the base; a pair that fits no parameter is
            // refused and left out of the plan (its tensors stay listed, as refused).
            for (pair, refusal) in params::resolve_all(&mut adapter, family, base) {
                adapter.unpair(&pair);
                refusals.push(refusal);
            }
            let (plan, problems) = plan::plan_all(&adapter, family, base, outtype, quirks);
            refusals.extend(problems);
            Some(plan)
        }
        _ => None,
    };
    Ok(Prepared {
        adapter,
        mlx,
        base,
        family,
        plan,
        refusals,
    })
}

/// Convert one adapter. On error nothing is left at `opts.output`.
pub fn convert(opts: &Options) -> Result<Summary, ConvertError> {
    run(opts).result
}

/// What a conversion did: what was prepared (when the adapter could be read) and the outcome.
#[derive(Debug)]
pub struct Outcome {
    /// The analysis, for the manifest. When refused, its `refusals` hold every refusal after the first.
    pub prepared: Option<Prepared>,
    /// The summary of the written file, or the first refusal (or error).
    pub result: Result<Summary, ConvertError>,
}

/// Convert one adapter, keeping the analysis for the manifest. On error nothing is left at `opts.output`.
pub fn run(opts: &Options) -> Outcome {
    if opts.output.exists() && !opts.force {
        let prepared = prepare_for(opts).ok();
        return Outcome {
            prepared,
            result: Err(ConvertError::OutputExists {
                path: opts.output.clone(),
            }),
        };
    }
    let mut prepared = match prepare_for(opts) {
        Ok(p) => p,
        Err(e) => {
            return Outcome {
                prepared: None,
                result: Err(e),
            };
        }
    };
    if !prepared.refusals.is_empty() {
        let first = prepared.refusals.remove(0);
        return Outcome {
            prepared: Some(prepared),
            result: Err(first),
        };
    }
    let result = write_prepared(opts, &prepared);
    Outcome {
        prepared: Some(prepared),
        result,
    }
}

fn prepare_for(opts: &Options) -> Result<Prepared, ConvertError> {
    prepare(
        &opts.adapter_dir,
        opts.base.as_deref(),
        opts.base_config.as_deref(),
        opts.arch.as_deref(),
        opts.outtype,
        &opts.quirks,
    )
}

fn write_prepared(opts: &Options, prepared: &Prepared) -> Result<Summary, ConvertError> {
    let (Some(plan), Some(base)) = (&prepared.plan, &prepared.base) else {
        // `prepare` records a refusal whenever it has no base or no plan; this is never reached.
        return Err(ConvertError::Io {
            path: opts.output.clone(),
            source: std::io::Error::other(
                "internal error: nothing refused but no plan; please report this",
            ),
        });
    };
    let adapter = &prepared.adapter;
    let heads = base.factor_heads();
    let recorded = match &base.header {
        Some(header) => base_record(header, plan)?,
        None => Vec::new(),
    };

    let run = || -> Result<(u64, Option<VerifyReport>), ConvertError> {
        let mut report = None;
        let bytes = write::write_atomically(
            &opts.output,
            opts.force,
            plan,
            adapter,
            heads,
            &recorded,
            |tmp| {
                if opts.verify {
                    report = Some(verify::verify(tmp, plan, adapter, heads)?);
                }
                Ok(())
            },
        )?;
        Ok((bytes, report))
    };
    let (bytes, verify) = match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| ConvertError::Io {
                path: opts.output.clone(),
                source: std::io::Error::other(e),
            })?
            .install(run)?,
        None => run()?,
    };
    Ok(summarize(opts, adapter, base, plan, bytes, verify))
}

/// What the adapter records about the base GGUF it was converted against: the standard `general.base_model.*`
/// keys and the fingerprint (docs/base-fingerprint.md), with a hash of the targeted tensors' data (their first 64 KiB each).
fn base_record(
    file: &gguf::GgufFile,
    plan: &Plan,
) -> Result<Vec<(String, gguf::Value)>, ConvertError> {
    let targets: Vec<&str> = plan.pairs.iter().map(|p| p.target.as_str()).collect();
    let fingerprint = BaseFingerprint::of(file, &targets, true).map_err(|e| match e {
        FingerprintError::Gguf(e) => ConvertError::Gguf(e),
        other => ConvertError::Gguf(gguf::Error::Io {
            path: file.path.clone(),
            source: std::io::Error::other(other.to_string()),
        }),
    })?;
    let mut kv = fingerprint::base_model_metadata(file);
    kv.push(fingerprint.metadata_entry());
    Ok(kv)
}

/// Find the base description: `--base`, `--base-config`, or a local `base_model_name_or_path`.
pub fn resolve_base(opts: &Options, adapter: &Adapter) -> Result<BaseModel, ConvertError> {
    resolve_base_from(opts.base.as_deref(), opts.base_config.as_deref(), adapter)
}

/// [`resolve_base`] from the two paths.
pub fn resolve_base_from(
    base: Option<&Path>,
    base_config: Option<&Path>,
    adapter: &Adapter,
) -> Result<BaseModel, ConvertError> {
    match (base, base_config) {
        (Some(gguf), config) => {
            let mut base = BaseModel::from_gguf(gguf)?;
            if let Some(config) = config {
                let hf = BaseModel::from_hf_config(config)?;
                base.heads = base.heads.or(hf.heads);
                base.hf_architecture = hf.hf_architecture;
            }
            Ok(base)
        }
        (None, Some(config)) => Ok(BaseModel::from_hf_config(config)?),
        (None, None) => {
            let key = adapter.framework.base_model_key();
            let name = adapter.config.base_model_name_or_path.as_deref();
            let why = match name {
                None | Some("") => format!("adapter_config.json has no `{key}`"),
                Some(name) => {
                    let dir = resolve_relative(&adapter.dir, name);
                    if dir.join("config.json").is_file() {
                        return Ok(BaseModel::from_hf_config(&dir)?);
                    }
                    format!(
                        "`{key}` is `{name}`, which is not a local directory with a config.json \
                         (lora-convert never downloads from a model hub)"
                    )
                }
            };
            Err(ConvertError::NoBase {
                why,
                hint: no_base_hint(&adapter.dir, name.unwrap_or("")),
            })
        }
    }
}

/// More help for a missing base: what a quantized repo name means, and a config.json the trainer left beside the
/// adapter (torchtune copies the base's there).
fn no_base_hint(adapter_dir: &Path, name: &str) -> String {
    let mut hint = String::new();
    let lower = name.to_ascii_lowercase();
    if let Some(quant) = ["bnb-4bit", "bnb-8bit", "4bit", "awq", "gptq"]
        .iter()
        .find(|q| lower.contains(*q))
    {
        let plain = ["-unsloth-bnb-4bit", "-bnb-4bit", "-bnb-8bit"]
            .iter()
            .find_map(|s| name.strip_suffix(s));
        hint.push_str(&format!(
            ". `{name}` is a pre-quantized ({quant}) repository (Unsloth and QLoRA trainers record the repo they \
             loaded): the adapter fits the unquantized model it came from, so pass `--base` with the GGUF you deploy \
             (made from the unquantized model, quantized as you like) or `--base-config` with the unquantized \
             model's config.json{}; the quantized repo's own config.json works as well if you have it locally",
            plain.map_or(String::new(), |p| format!(" (usually `{p}`)"))
        ));
    }
    if adapter_dir.join("config.json").is_file() {
        hint.push_str(&format!(
            ". `{}` holds a config.json (torchtune copies the base model's there): `--base-config {}` uses it",
            adapter_dir.display(),
            adapter_dir.display()
        ));
    }
    hint
}

fn resolve_relative(adapter_dir: &Path, name: &str) -> PathBuf {
    let p = PathBuf::from(name);
    if p.is_absolute() || p.exists() {
        p
    } else {
        adapter_dir.join(p)
    }
}

/// Pick the family from `--arch` and the base, refusing disagreement.
pub fn resolve_family(
    requested: Option<&str>,
    base: &BaseModel,
) -> Result<&'static arch::Family, ConvertError> {
    let base_arch = base.gguf_arch.as_deref();
    if let (Some(req), Some(b)) = (requested, base_arch)
        && req != b
    {
        return Err(ConvertError::ArchMismatch {
            left: format!("--arch is `{req}`"),
            right: format!("the base {} is `{b}`", base.describe()),
        });
    }
    let supported = || {
        arch::families()
            .map(|f| f.gguf_arch)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = match requested.or(base_arch) {
        Some(n) => n,
        None => {
            let what = match &base.hf_architecture {
                Some(hf) => format!(
                    "`{hf}` (from {}) is not a text architecture llama.cpp converts",
                    base.describe()
                ),
                None => format!("{} names no architecture", base.describe()),
            };
            return Err(ConvertError::UnknownArchitecture {
                what,
                supported: supported(),
            });
        }
    };
    arch::by_gguf_arch(name).ok_or_else(|| ConvertError::UnknownArchitecture {
        what: format!("GGUF architecture `{name}` has no LoRA family table"),
        supported: supported(),
    })
}

fn summarize(
    opts: &Options,
    adapter: &Adapter,
    base: &BaseModel,
    plan: &Plan,
    bytes: u64,
    verify: Option<VerifyReport>,
) -> Summary {
    let mut scalings = BTreeMap::new();
    for p in &adapter.pairs {
        *scalings
            .entry(format!("{}", p.scaling.factor()))
            .or_insert(0) += 1;
    }
    let mut types = BTreeMap::new();
    for p in &plan.pairs {
        *types.entry(p.a.ggml_type.name()).or_insert(0) += 1;
        *types.entry(p.b.ggml_type.name()).or_insert(0) += 1;
    }
    Summary {
        output: opts.output.clone(),
        base: base.describe(),
        arch: plan.arch,
        framework: adapter.framework,
        alpha: plan.alpha,
        pairs: plan.pairs.len(),
        ranks: plan.pairs.iter().map(|p| p.rank).collect(),
        scalings,
        folded: plan
            .pairs
            .iter()
            .filter(|p| p.sources.iter().any(|s| (s.fold as f32) != 1.0))
            .count(),
        types,
        bytes,
        warnings: plan.warnings.clone(),
        verify,
        tensors: plan
            .pairs
            .iter()
            .flat_map(|p| [&p.a, &p.b])
            .map(|t| (t.name.clone(), t.ggml_type.name(), t.dims.clone()))
            .collect(),
    }
}
