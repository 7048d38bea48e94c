//! `lora-convert merge`: bake LoRA adapters into a base model GGUF, for runtimes that cannot load adapters.
//!
//! W' = W + Σᵢ scaleᵢ · αᵢ/rᵢ · Bᵢ·Aᵢ for every adapted tensor, as llama.cpp applies the adapters at run time (a
//! DoRA adapter's rows are then rescaled to its magnitudes, [`dora`]);
//! every other tensor and all metadata are copied byte for byte, and the merge is recorded under
//! `lora_gguf.merge.*` ([`provenance`]). Merged tensors are quantized by ggml's own quantizers ([`ggml`], the only
//! part that needs the llama.cpp build: the `merge` feature), in a type chosen per tensor ([`outtype`]).
//!
//! The output is streamed: one tensor at a time (its slabs on all cores), into a temporary file in the output's
//! directory, renamed into place only when complete. Its bytes do not depend on the thread count.

pub mod adapters;
pub mod dora;
pub mod error;
pub mod gemm;
pub mod ggml;
pub mod imatrix;
pub mod modelfile;
pub mod outtype;
pub mod provenance;
pub mod source;
pub mod tensor;
pub mod tied;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use error::MergeError;
pub use outtype::OutType;

use crate::gguf::rewrite::ModelWriter;
use crate::gguf::{GgmlType, GgufFile, keys};
use adapters::{Adapter, Pair};

/// One `--adapter PATH[:SCALE]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    /// A GGUF LoRA adapter, or an adapter directory (converted in memory).
    pub path: PathBuf,
    /// Its scale (1.0 by default).
    pub scale: f32,
}

/// What to merge and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The base model GGUF.
    pub base: PathBuf,
    /// The adapters, applied together.
    pub adapters: Vec<AdapterSpec>,
    /// The merged model to write.
    pub output: PathBuf,
    /// How merged tensors are typed.
    pub outtype: OutType,
    /// Overwrite an existing output.
    pub force: bool,
    /// Worker threads (None: all cores).
    pub threads: Option<usize>,
    /// Also write an Ollama Modelfile next to the output ([`modelfile`]).
    pub modelfile: bool,
    /// `--source`: the float GGUF of the same model, from which merged tensors are computed and quantized once to
    /// the base's types ([`source`]).
    pub source: Option<PathBuf>,
    /// `--imatrix`: llama.cpp's importance matrix, used for the merged tensors as `llama-quantize` uses it
    /// ([`imatrix`]).
    pub imatrix: Option<PathBuf>,
}

/// One merged tensor in the summary.
#[derive(Clone, Debug)]
pub struct TensorReport {
    /// Name.
    pub name: String,
    /// The base's type.
    pub base_type: GgmlType,
    /// The type written.
    pub out_type: GgmlType,
    /// The fraction of ΔW its rounding loses ([`tensor::Sums::loss`]).
    pub loss: f64,
    /// Its rounding error relative to ‖W‖ ([`tensor::Sums::noise`]).
    pub noise: f64,
    /// Every type measured, in order, with its loss and noise.
    pub tried: Vec<(GgmlType, f64, f64)>,
    /// Bytes in the base.
    pub base_bytes: u64,
    /// Bytes written.
    pub out_bytes: u64,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The output file.
    pub output: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// The base's size.
    pub base_bytes: u64,
    /// Every merged tensor, in file order.
    pub merged: Vec<TensorReport>,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// The base's output head was tied to its merged embedding: an untied `output.weight` (the original embedding)
    /// was added.
    pub untied_output: bool,
    /// The type policy used.
    pub outtype: OutType,
    /// The Modelfile written, if any.
    pub modelfile: Option<PathBuf>,
}

impl Summary {
    /// Merged tensors written in a type other than the base's.
    pub fn promoted(&self) -> impl Iterator<Item = &TensorReport> {
        self.merged.iter().filter(|t| t.out_type != t.base_type)
    }
}

/// Merge the adapters into the base. On error nothing is left at `opts.output`.
pub fn merge(opts: &Options) -> Result<Summary, MergeError> {
    match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| MergeError::Write {
                path: opts.output.clone(),
                what: "starting worker threads".into(),
                source: std::io::Error::other(e),
            })?
            .install(|| run(opts)),
        None => run(opts),
    }
}

fn run(opts: &Options) -> Result<Summary, MergeError> {
    for path in [
        Some(opts.output.clone()),
        opts.modelfile.then(|| modelfile::path_for(&opts.output)),
    ]
    .into_iter()
    .flatten()
    {
        if path.exists() && !opts.force {
            return Err(MergeError::OutputExists { path });
        }
    }
    let base = GgufFile::open(&opts.base)?;
    if let Some(t) = base.get_str(keys::GENERAL_TYPE)
        && t != "model"
    {
        return Err(MergeError::NotAModel {
            path: opts.base.clone(),
            found: t.to_string(),
        });
    }
    let loaded = opts
        .adapters
        .iter()
        .map(|a| {
            if a.path.is_dir() {
                adapters::load_dir(&a.path, a.scale, &opts.base, &base)
            } else {
                adapters::load_gguf(&a.path, a.scale, &base)
            }
        })
        .collect::<Result<Vec<Adapter>, _>>()?;
    dora::check_not_stacked(
        &loaded
            .iter()
            .map(|a| (a.path.as_path(), &a.pairs))
            .collect::<Vec<_>>(),
    )?;
    let mut targets: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
    for a in &loaded {
        for (name, pair) in &a.pairs {
            targets.entry(name.as_str()).or_default().push(pair);
        }
    }
    if targets.is_empty() {
        return Err(MergeError::NothingToMerge);
    }

    let source = opts
        .source
        .as_deref()
        .map(|p| source::open(p, &base, targets.keys().copied()))
        .transpose()?;
    let imatrix = opts.imatrix.as_deref().map(imatrix::load).transpose()?;
    if let Some(m) = &imatrix {
        for name in targets.keys() {
            if let Some(info) = base.tensor(name) {
                m.for_tensor(name, &info.dims)?;
            }
        }
    }

    let hashes = opts
        .adapters
        .iter()
        .map(|a| provenance::sha256_file(&adapters::identity_file(&a.path)))
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = provenance::metadata(&base, opts, &loaded, &hashes)?;
    let write_err = |what: &str, source| MergeError::Write {
        path: opts.output.clone(),
        what: what.into(),
        source,
    };
    let dir = match opts.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".lora-convert-merge-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| write_err("creating a temporary file", e))?;
    let base_file = File::open(&base.path).map_err(|source| crate::gguf::Error::Io {
        path: base.path.clone(),
        source,
    })?;
    let untied = tied::untied_output(&base, targets.contains_key(tied::EMBEDDING));
    let mut writer = ModelWriter::new(
        tmp.as_file(),
        &base,
        metadata,
        untied.iter().cloned().collect(),
    )
    .map_err(|e| named(e, &opts.output))?;
    let mut merged = Vec::new();
    let mut copied = 0;
    for info in &base.tensors {
        match targets.get(info.name.as_str()) {
            None => {
                writer.copy_tensor().map_err(|e| named(e, &opts.output))?;
                copied += 1;
            }
            Some(pairs) => {
                // W from the source when given (checked: same shape, a float type), else from the base
                let (w_file, w_handle, w_info) = match &source {
                    Some(s) => (
                        &s.file,
                        &s.handle,
                        s.file.tensor(&info.name).unwrap_or(info),
                    ),
                    None => (&base, &base_file, info),
                };
                let m = tensor::merge_tensor(
                    w_file,
                    w_handle,
                    w_info,
                    info.ggml_type,
                    pairs,
                    opts.outtype,
                    match &imatrix {
                        Some(m) => m.for_tensor(&info.name, &info.dims)?,
                        None => None,
                    },
                )?;
                writer
                    .begin_tensor(m.ggml_type)
                    .and_then(|()| writer.write_data(&m.bytes))
                    .and_then(|()| writer.end_tensor())
                    .map_err(|e| named(e, &opts.output))?;
                merged.push(TensorReport {
                    name: info.name.clone(),
                    base_type: info.ggml_type,
                    out_type: m.ggml_type,
                    loss: m.sums.loss(),
                    noise: m.sums.noise(),
                    tried: m
                        .tried
                        .iter()
                        .map(|(t, s)| (*t, s.loss(), s.noise()))
                        .collect(),
                    base_bytes: info.n_bytes(),
                    out_bytes: m.bytes.len() as u64,
                });
            }
        }
    }
    if untied.is_some() {
        writer
            .copy_tensor_from(tied::EMBEDDING)
            .map_err(|e| named(e, &opts.output))?;
    }
    let bytes = writer.finish().map_err(|e| named(e, &opts.output))?;
    if opts.output.exists() && !opts.force {
        return Err(MergeError::OutputExists {
            path: opts.output.clone(),
        });
    }
    let modelfile = opts.modelfile.then(|| {
        let names: Vec<(String, f32)> = loaded
            .iter()
            .map(|a| {
                let n = a.path.file_name().map(|n| n.to_string_lossy().into_owned());
                (n.unwrap_or_default(), a.scale)
            })
            .collect();
        (
            modelfile::path_for(&opts.output),
            modelfile::text(&base, &opts.output, &names),
        )
    });
    tmp.persist(&opts.output)
        .map_err(|e| write_err("renaming the finished file into place", e.error))?;
    if let Some((path, text)) = &modelfile {
        std::fs::write(path, text).map_err(|source| MergeError::Write {
            path: path.clone(),
            what: "the Modelfile".into(),
            source,
        })?;
    }
    Ok(Summary {
        output: opts.output.clone(),
        bytes,
        base_bytes: base.file_size,
        merged,
        copied,
        untied_output: untied.is_some(),
        outtype: opts.outtype,
        modelfile: modelfile.map(|(p, _)| p),
    })
}

/// A write error names the output asked for, not the temporary file.
fn named(e: crate::gguf::Error, output: &Path) -> MergeError {
    match e {
        crate::gguf::Error::Write { what, source } => MergeError::Write {
            path: output.to_path_buf(),
            what,
            source,
        },
        other => MergeError::Gguf(other),
    }
}
