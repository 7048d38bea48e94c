//! Stream the planned pairs into a GGUF file: a temporary file in the target directory, renamed into place only
//! when complete (and verified, when asked), so a failure never leaves a half-written adapter behind.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::error::ConvertError;
use super::factor::HeadCounts;
use super::materialize::materialize;
use super::plan::Plan;
use crate::gguf::{self, Value, Writer, keys};
use crate::peft::Adapter;

/// The metadata written, in order (general.architecture first, as gguf-py does).
pub fn metadata(plan: &Plan, adapter: &Adapter) -> Vec<(String, Value)> {
    let mut kv = vec![
        (
            keys::GENERAL_ARCHITECTURE.to_string(),
            Value::String(plan.arch.to_string()),
        ),
        (
            keys::GENERAL_TYPE.to_string(),
            Value::String("adapter".into()),
        ),
        (keys::ADAPTER_TYPE.to_string(), Value::String("lora".into())),
    ];
    let name = adapter
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.is_empty() {
        kv.push((keys::GENERAL_NAME.to_string(), Value::String(name)));
    }
    kv.push((keys::ADAPTER_LORA_ALPHA.to_string(), Value::F32(plan.alpha)));
    if let Some(tokens) = adapter
        .config
        .alora_invocation_tokens
        .as_ref()
        .filter(|t| !t.is_empty())
    {
        kv.push((
            keys::ADAPTER_ALORA_INVOCATION_TOKENS.to_string(),
            Value::Array(gguf::value::Array {
                element_type: gguf::ValueType::U32,
                values: tokens.iter().map(|&t| Value::U32(t)).collect(),
            }),
        ));
    }
    kv.push((
        keys::GENERAL_QUANTIZATION_VERSION.to_string(),
        Value::U32(2),
    ));
    kv
}

/// Write the whole file to `out` (any writer). Returns bytes written.
pub fn write_gguf<W: Write>(
    out: W,
    plan: &Plan,
    adapter: &Adapter,
    heads: HeadCounts,
) -> Result<W, ConvertError> {
    let specs: Vec<gguf::TensorSpec> = plan
        .pairs
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .collect();
    let mut writer = Writer::new(out, &metadata(plan, adapter), &specs)?;
    let mut bytes = Vec::new();
    for pair in &plan.pairs {
        let factors = materialize(adapter, pair, heads)?;
        for (spec, data) in [(&pair.a, &factors.a), (&pair.b, &factors.b)] {
            bytes.clear();
            let row_len = usize::try_from(spec.dims[0]).unwrap_or(usize::MAX);
            gguf::dtype::encode_parallel(spec.ggml_type, data, row_len, &mut bytes)?;
            writer.write_tensor(&spec.name, &bytes)?;
        }
    }
    Ok(writer.finish()?)
}

/// Write to a temporary file beside `path`; `finish` runs on it (verification) before the rename.
pub fn write_atomically(
    path: &Path,
    force: bool,
    plan: &Plan,
    adapter: &Adapter,
    heads: HeadCounts,
    finish: impl FnOnce(&Path) -> Result<(), ConvertError>,
) -> Result<u64, ConvertError> {
    let io = |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() && !force {
        return Err(ConvertError::OutputExists {
            path: path.to_path_buf(),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".lora-convert-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    let buffered = BufWriter::with_capacity(1 << 20, tmp.as_file());
    let mut buffered = write_gguf(buffered, plan, adapter, heads)?;
    buffered.flush().map_err(io)?;
    drop(buffered);
    tmp.as_file().sync_all().map_err(io)?;
    finish(tmp.path())?;
    let size = tmp.as_file().metadata().map_err(io)?.len();
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(size)
}
