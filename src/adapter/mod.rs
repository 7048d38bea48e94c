//! The adapter model and how adapter directories are opened. Every reader (`crate::peft` for PEFT and the
//! trainers that write its format, `crate::mlx` for mlx-lm) parses its own configuration and keys and produces
//! this one [`Adapter`]: LoRA pairs in PEFT's orientation with their exact per-module scaling, the tensors that are
//! not part of a pair, and the open weights file, read later one tensor at a time with positioned reads into the
//! caller's buffers (memory does not grow with the file). [`open`] and [`scan`] tell the format from the files.

pub mod error;
mod finite;
pub mod model;
pub(crate) mod scan;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use error::Error;
pub use model::{KeyKind, LoraPair, Packing, PairKind, Scaling, SourceDtype, TensorRef};

use crate::mlx::{self, MlxConfig};
use crate::peft::{self, AdapterConfig};
use crate::read_at::read_at;

/// The adapter formats lora-convert reads, told apart by their files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `adapter_config.json` + `adapter_model.safetensors` (PEFT and the trainers that write its format).
    Peft,
    /// `adapter_config.json` + `adapters.safetensors` as `mlx_lm lora` writes them.
    MlxLm,
}

impl Format {
    /// The format of the adapter directory `dir`: mlx-lm when its weights file is there without PEFT's, or its
    /// configuration is mlx-lm's; PEFT otherwise (whose reader then names what is missing).
    pub fn detect(dir: &Path) -> Format {
        if mlx::detect(dir) {
            Format::MlxLm
        } else {
            Format::Peft
        }
    }
}

/// The trainer that wrote an adapter directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// Hugging Face PEFT (`adapter_model.safetensors`).
    Peft,
    /// mlx-lm's `mlx_lm lora` (`adapters.safetensors`, read by `crate::mlx`).
    MlxLm,
}

impl Framework {
    /// The name users know it by.
    pub fn name(self) -> &'static str {
        match self {
            Framework::Peft => "PEFT",
            Framework::MlxLm => "mlx-lm",
        }
    }

    /// The `adapter_config.json` key that names the base model.
    pub fn base_model_key(self) -> &'static str {
        match self {
            Framework::Peft => "base_model_name_or_path",
            Framework::MlxLm => "model",
        }
    }
}

/// A tensor of the file that is not part of a LoRA pair: skipped (a base-layer copy) or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherTensor {
    /// The safetensors key.
    pub key: String,
    /// The safetensors dtype, as named there (`F32`, `BF16`, `I64` …).
    pub dtype: String,
    /// Shape (numpy order).
    pub shape: Vec<usize>,
    /// What it is.
    pub kind: KeyKind,
}

/// An opened adapter: configuration, pairs, and the open weights file. Every trainer's adapter is read into this
/// one shape (PEFT orientation, per-pair scaling), so planning, writing and verifying never ask who wrote it.
#[derive(Debug)]
pub struct Adapter {
    /// The adapter directory.
    pub dir: PathBuf,
    /// Who wrote it.
    pub framework: Framework,
    /// `adapter_config.json`, or for another trainer the PEFT configuration its adapter is equivalent to.
    pub config: AdapterConfig,
    /// LoRA pairs, sorted by module path.
    pub pairs: Vec<LoraPair>,
    /// Copies of wrapped base layers found in the file and ignored (PEFT saves them next to embedding LoRAs).
    pub ignored: Vec<String>,
    /// Every tensor that is not a factor of a pair (base-layer copies, full weights, DoRA vectors …), by key.
    pub others: Vec<OtherTensor>,
    /// Traces of the trainer that wrote the directory.
    pub trainers: Vec<crate::peft::trainer::Hint>,
    path: PathBuf,
    file: File,
    /// key → absolute byte range in the file.
    ranges: BTreeMap<String, (u64, u64)>,
}

/// An adapter read as far as it can be, with every refusal instead of the first (`lora-convert inspect` and the
/// manifest list them all). Pairs with a problem of their own (a missing half, bad shapes) are left out of
/// `adapter.pairs`; their tensors are in `adapter.others` and their refusal says why.
#[derive(Debug)]
pub struct Scan {
    /// The adapter, without the refused pairs.
    pub adapter: Adapter,
    /// Everything that stops conversion, in the order found (configuration first, then tensors by key).
    pub refusals: Vec<Error>,
    /// mlx-lm's own configuration, for an mlx-lm adapter (`adapter.config` is its PEFT equivalent).
    pub mlx: Option<MlxConfig>,
}

/// Read an adapter directory of any format, collecting refusals. Errors only when there is nothing to read:
/// missing or pickle files, invalid JSON, a malformed configuration, a corrupt safetensors file.
pub fn scan(dir: &Path) -> Result<Scan, Error> {
    match Format::detect(dir) {
        Format::MlxLm => mlx::scan(dir),
        Format::Peft => peft::scan(dir),
    }
}

/// Open and validate an adapter directory of any format; anything a GGUF LoRA cannot express is an error (the
/// first such).
pub fn open(dir: &Path) -> Result<Adapter, Error> {
    scan(dir)?.into_adapter()
}

/// `value`, or the first of `refusals` (readers collect every refusal for `inspect`; conversion stops at one).
pub(crate) fn unless_refused<T>(value: T, refusals: Vec<Error>) -> Result<T, Error> {
    match refusals.into_iter().next() {
        Some(refusal) => Err(refusal),
        None => Ok(value),
    }
}

impl Scan {
    /// The adapter, or the first refusal (the readers collect every refusal for `inspect`; conversion stops at one).
    pub fn into_adapter(self) -> Result<Adapter, Error> {
        unless_refused(self.adapter, self.refusals)
    }

    /// Full embedding / output-head weights with more rows than the base has tokens (`n_vocab`, of the base
    /// described as `base`): the adapter was trained with added tokens. That refusal says more than "a full
    /// weight", so it replaces the full-weight refusal of the same key and goes first.
    pub fn check_vocabulary(&mut self, n_vocab: u64, base: &str) {
        let mut resized = Vec::new();
        for t in &self.adapter.others {
            let rows = t.shape.first().copied().unwrap_or(0) as u64;
            if t.kind == KeyKind::FullWeight
                && peft::tensors::is_vocabulary_key(&t.key)
                && rows > n_vocab
            {
                self.refusals.retain(
                    |r| !matches!(r, Error::UnsupportedTensor { key, .. } if *key == t.key),
                );
                resized.push(Error::ResizedVocabulary {
                    key: t.key.clone(),
                    rows,
                    base: base.to_string(),
                    base_vocab: n_vocab,
                    added: rows - n_vocab,
                });
            }
        }
        self.refusals.splice(0..0, resized);
    }
}

impl Adapter {
    /// An adapter of `framework` from what [`scan::scan`] found in its weights file `path`.
    pub(crate) fn new(
        dir: PathBuf,
        framework: Framework,
        config: AdapterConfig,
        path: PathBuf,
        scanned: scan::Scanned,
        trainers: Vec<crate::peft::trainer::Hint>,
    ) -> (Adapter, Vec<Error>) {
        let adapter = Adapter {
            dir,
            framework,
            config,
            pairs: scanned.pairs,
            ignored: scanned.ignored,
            others: scanned.others,
            trainers,
            path,
            file: scanned.file,
            ranges: scanned.ranges,
        };
        (adapter, scanned.refusals)
    }

    /// Take `pair` out of conversion (a decision against the base refused it): its factors are listed in `others`
    /// as tensors outside any pair, as the readers list the factors of the pairs they refuse.
    pub fn unpair(&mut self, pair: &LoraPair) {
        for (t, is_a) in [(&pair.a, true), (&pair.b, false)] {
            self.others.push(OtherTensor {
                key: t.key.clone(),
                dtype: format!("{:?}", t.dtype),
                shape: t.shape.clone(),
                kind: KeyKind::Factor {
                    module: pair.module.clone(),
                    kind: pair.kind,
                    is_a,
                },
            });
        }
    }

    /// The weights file.
    pub fn safetensors_path(&self) -> &Path {
        &self.path
    }

    /// Raw little-endian bytes of a tensor, read into the front of `buf` and returned. `buf` grows when it is too
    /// short and never shrinks, so a buffer reused across tensors is not filled with zeros again each time.
    pub fn read_tensor_bytes<'b>(
        &self,
        t: &TensorRef,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], Error> {
        let &(start, end) = self.ranges.get(&t.key).ok_or_else(|| Error::Io {
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no tensor `{}` in this file", t.key),
            ),
        })?;
        let len = usize::try_from(end - start).map_err(|_| Error::Io {
            path: self.path.clone(),
            source: std::io::Error::other(format!("tensor `{}` does not fit in memory", t.key)),
        })?;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let bytes = buf.get_mut(..len).unwrap_or_default();
        read_at(&self.file, bytes, start).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(bytes)
    }

    /// Fail if `bytes` (the data of `t`) hold NaN or infinity, naming the tensor and the first such element.
    /// Runs on all cores of the current rayon pool.
    pub fn check_finite(&self, t: &TensorRef, bytes: &[u8]) -> Result<(), Error> {
        match finite::first_non_finite(t.dtype, bytes) {
            None => Ok(()),
            Some((index, what)) => Err(Error::NonFinite {
                path: self.path.clone(),
                key: t.key.clone(),
                what,
                index,
            }),
        }
    }

    /// A tensor widened exactly to f32 (into `out`, cleared first), in PEFT's orientation (a tensor stored
    /// transposed is transposed back); NaN or infinity is an error naming the tensor and its index in the file.
    pub fn tensor_f32(&self, t: &TensorRef, out: &mut Vec<f32>) -> Result<(), Error> {
        let mut buf = Vec::new();
        let bytes = self.read_tensor_bytes(t, &mut buf)?;
        self.check_finite(t, bytes)?;
        out.clear();
        out.reserve(bytes.len() / t.dtype.size());
        match t.dtype {
            SourceDtype::F32 => {
                out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
            SourceDtype::F16 => {
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
                );
            }
            SourceDtype::BF16 => {
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
                );
            }
        }
        if let (true, &[rows, cols]) = (t.transposed, t.shape.as_slice()) {
            // Stored (cols, rows) row-major; PEFT's (rows, cols) element [i][j] is stored [j][i].
            let stored = std::mem::take(out);
            out.extend((0..rows * cols).map(|k| stored[(k % cols) * rows + k / cols]));
        }
        Ok(())
    }

    /// The one dtype of every factor, or None if they differ.
    pub fn dtype(&self) -> Option<SourceDtype> {
        let mut dtypes = self.pairs.iter().flat_map(|p| [p.a.dtype, p.b.dtype]);
        let first = dtypes.next()?;
        dtypes.all(|d| d == first).then_some(first)
    }
}
