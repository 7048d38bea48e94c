//! A stack of adapters as one: llama-cpp-2 exposes one active adapter per context, so `--adapter a --adapter b`
//! is validated through a single equivalent adapter. llama.cpp computes Σᵢ sᵢ·Bᵢ(Aᵢx) over active adapters; the
//! same sum is (B₁s₁ | B₂s₂ | …)·[A₁; A₂; …]x — the factors concatenated along the rank, each B scaled by its
//! adapter's runtime factor (own scale × α/r) — written with α = 0, so llama.cpp applies only the sweep's scale.
//! Equal to the stack up to float summation order. Factors are decoded exactly and written as F32.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::GgufAdapter;
use crate::gguf::{self, GgmlType, TensorSpec, Value, Writer, keys};

/// Why a stack could not be combined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// An adapter file is unreadable.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// The adapters are for different architectures.
    #[error(
        "`{path}` is for `{found}` but the first adapter is for `{expected}`; a stack must share one base"
    )]
    Arch {
        /// The adapter.
        path: PathBuf,
        /// Its architecture.
        found: String,
        /// The first adapter's.
        expected: String,
    },
    /// Two adapters' factors for one tensor do not fit together.
    #[error(
        "`{tensor}`: `{path}` has lora_a ne {found:?}, which does not stack with ne {expected:?}"
    )]
    Shape {
        /// The tensor.
        tensor: String,
        /// The adapter.
        path: PathBuf,
        /// Its dims.
        found: Vec<u64>,
        /// The first adapter's dims.
        expected: Vec<u64>,
    },
    /// Writing failed.
    #[error("writing `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

struct Part {
    path: PathBuf,
    a: Vec<f32>,
    b: Vec<f32>,
    a_dims: Vec<u64>,
    b_dims: Vec<u64>,
    factor: f32,
}

/// Combine `adapters` (path, own scale) into one GGUF adapter at `out`.
pub fn combine(adapters: &[(PathBuf, f32)], out: &Path) -> Result<(), StackError> {
    let mut arch = None::<String>;
    let mut targets: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for (path, own) in adapters {
        let adapter = GgufAdapter::open(path)?;
        let f = &adapter.file;
        let a_arch = f.architecture().unwrap_or_default().to_string();
        match &arch {
            None => arch = Some(a_arch),
            Some(e) if *e != a_arch => {
                return Err(StackError::Arch {
                    path: path.clone(),
                    found: a_arch,
                    expected: e.clone(),
                });
            }
            _ => {}
        }
        let alpha = adapter.alpha().unwrap_or(0.0) as f32;
        for pair in &adapter.pairs {
            let (a_info, b_info) = (adapter.lora_a(pair), adapter.lora_b(pair));
            let rank = pair.rank as f32;
            let factor = if alpha != 0.0 {
                own * alpha / rank
            } else {
                *own
            };
            targets.entry(pair.target.clone()).or_default().push(Part {
                path: path.clone(),
                a: f.read_tensor_f32(&a_info.name)?,
                b: f.read_tensor_f32(&b_info.name)?,
                a_dims: a_info.dims.clone(),
                b_dims: b_info.dims.clone(),
                factor,
            });
        }
    }
    let mut specs = Vec::new();
    let mut data = Vec::new();
    for (name, parts) in &targets {
        let embedding = name == "token_embd.weight";
        let first = &parts[0];
        for p in parts {
            let same = if embedding {
                p.a_dims.get(1) == first.a_dims.get(1)
            } else {
                p.a_dims[0] == first.a_dims[0]
            } && p.b_dims.get(1) == first.b_dims.get(1)
                && p.a_dims.get(2) == first.a_dims.get(2);
            if !same {
                return Err(StackError::Shape {
                    tensor: name.clone(),
                    path: p.path.clone(),
                    found: p.a_dims.clone(),
                    expected: first.a_dims.clone(),
                });
            }
        }
        let rank: u64 = parts.iter().map(|p| p.b_dims[0]).sum();
        let experts = first.a_dims.get(2).copied().unwrap_or(1) as usize;
        let out_rows = first.b_dims[1] as usize;
        let (a, a_dims) = if embedding {
            // lora_a ne [r, V]: one row of r values per token → concatenate each row.
            let vocab = first.a_dims[1] as usize;
            (
                concat_columns(
                    parts.iter().map(|p| (&p.a, p.a_dims[0] as usize, 1.0)),
                    vocab,
                ),
                vec![rank, vocab as u64],
            )
        } else {
            // lora_a ne [in, r(, E)]: per expert r rows of `in` values → stack the rows.
            let inp = first.a_dims[0] as usize;
            let mut a = Vec::new();
            for e in 0..experts {
                for p in parts {
                    let r = p.a_dims[1] as usize;
                    a.extend_from_slice(&p.a[e * r * inp..(e + 1) * r * inp]);
                }
            }
            let mut dims = vec![inp as u64, rank];
            if first.a_dims.len() == 3 {
                dims.push(experts as u64);
            }
            (a, dims)
        };
        // lora_b ne [r, out(, E)]: per expert `out` rows of r values → concatenate each row, scaled.
        let mut b = Vec::new();
        for e in 0..experts {
            let block = parts.iter().map(|p| {
                let r = p.b_dims[0] as usize;
                (&p.b[e * out_rows * r..(e + 1) * out_rows * r], r, p.factor)
            });
            b.extend(concat_columns_slices(block, out_rows));
        }
        let mut b_dims = vec![rank, out_rows as u64];
        if first.b_dims.len() == 3 {
            b_dims.push(experts as u64);
        }
        specs.push(TensorSpec::new(
            format!("{name}.lora_a"),
            a_dims,
            GgmlType::F32,
        ));
        specs.push(TensorSpec::new(
            format!("{name}.lora_b"),
            b_dims,
            GgmlType::F32,
        ));
        data.push(a);
        data.push(b);
    }
    let metadata = vec![
        (
            keys::GENERAL_ARCHITECTURE.to_string(),
            Value::String(arch.unwrap_or_default()),
        ),
        (
            keys::GENERAL_TYPE.to_string(),
            Value::String("adapter".into()),
        ),
        (keys::ADAPTER_TYPE.to_string(), Value::String("lora".into())),
        (
            keys::GENERAL_NAME.to_string(),
            Value::String("lora-validate stack".into()),
        ),
        (keys::ADAPTER_LORA_ALPHA.to_string(), Value::F32(0.0)),
    ];
    let io = |source| StackError::Io {
        path: out.to_path_buf(),
        source,
    };
    let file = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
    let mut w = Writer::new(file, &metadata, &specs)?;
    let mut bytes = Vec::new();
    for (spec, values) in specs.iter().zip(&data) {
        bytes.clear();
        gguf::dtype::encode(GgmlType::F32, values, spec.dims[0] as usize, &mut bytes)?;
        w.write_tensor(&spec.name, &bytes)?;
    }
    w.finish()?;
    Ok(())
}

fn concat_columns<'a>(
    parts: impl Iterator<Item = (&'a Vec<f32>, usize, f32)>,
    rows: usize,
) -> Vec<f32> {
    concat_columns_slices(parts.map(|(v, c, f)| (v.as_slice(), c, f)), rows)
}

/// Row-wise concatenation of `rows × colsᵢ` matrices, each multiplied by its factor.
fn concat_columns_slices<'a>(
    parts: impl Iterator<Item = (&'a [f32], usize, f32)>,
    rows: usize,
) -> Vec<f32> {
    let parts: Vec<_> = parts.collect();
    let width: usize = parts.iter().map(|p| p.1).sum();
    let mut out = Vec::with_capacity(rows * width);
    for row in 0..rows {
        for (m, cols, factor) in &parts {
            out.extend(m[row * cols..(row + 1) * cols].iter().map(|x| x * factor));
        }
    }
    out
}
