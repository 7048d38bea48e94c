//! PEFT adapter + family table + base description → a GGUF LoRA adapter that behaves in llama.cpp exactly as the
//! adapter did in PyTorch. `plan` decides everything from shapes and configuration; `write` streams the tensors
//! one at a time into a temporary file (`stream` encodes Linear factors straight from the adapter's bytes,
//! `materialize` builds the other layouts in f32); `verify` optionally reads it back; then the file is renamed into
//! place.

pub mod base;
pub mod error;
pub mod factor;
pub mod materialize;
pub mod params;
pub mod plan;
pub mod stream;
pub mod verify;
pub mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use base::{BaseModel, BaseSource};
pub use error::ConvertError;
pub use plan::{OutType, Plan};
pub use verify::VerifyReport;

use crate::arch;
use crate::mlx;
use crate::peft::{self, Adapter, Framework};
use factor::HeadCounts;

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
    /// Worker threads for dtype conversion (None: rayon's default).
    pub threads: Option<usize>,
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

/// Convert one adapter. On error nothing is left at `opts.output`.
pub fn convert(opts: &Options) -> Result<Summary, ConvertError> {
    if opts.output.exists() && !opts.force {
        return Err(ConvertError::OutputExists {
            path: opts.output.clone(),
        });
    }
    let mut adapter = open_adapter(&opts.adapter_dir)?;
    let base = resolve_base(opts, &adapter)?;
    let family = resolve_family(opts.arch.as_deref(), &base)?;
    params::resolve(&mut adapter, family, &base)?;
    let plan = plan::plan(&adapter, family, &base, opts.outtype)?;
    let heads = base.heads.unwrap_or(HeadCounts {
        n_head: 1,
        n_head_kv: 1,
    });

    let run = || -> Result<(u64, Option<VerifyReport>), ConvertError> {
        let mut report = None;
        let bytes =
            write::write_atomically(&opts.output, opts.force, &plan, &adapter, heads, |tmp| {
                if opts.verify {
                    report = Some(verify::verify(tmp, &plan, &adapter, heads)?);
                }
                Ok(())
            })?;
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
    Ok(summarize(opts, &adapter, &base, &plan, bytes, verify))
}

/// Open an adapter directory, telling the trainer from its files: mlx-lm (`adapters.safetensors`, or an
/// mlx-lm style adapter_config.json) or PEFT.
pub fn open_adapter(dir: &Path) -> Result<Adapter, ConvertError> {
    if mlx::detect(dir) {
        Ok(mlx::open(dir)?)
    } else {
        Ok(peft::open(dir)?)
    }
}

/// Find the base description: `--base`, `--base-config`, or a local `base_model_name_or_path`.
pub fn resolve_base(opts: &Options, adapter: &Adapter) -> Result<BaseModel, ConvertError> {
    match (&opts.base, &opts.base_config) {
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
            let why = match adapter.config.base_model_name_or_path.as_deref() {
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
            Err(ConvertError::NoBase { why })
        }
    }
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
