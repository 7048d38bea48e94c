//! Deliberately broken copies of a good adapter and pack, for `lora-validate --self-test`: each imitates one real
//! mistake and must turn its own parity check red while the good adapter stays green. No llama.cpp here: the
//! copies are written with our own GGUF reader and writer.

use std::path::Path;

use super::pack::{PromptSource, ReferencePack};
use super::verdict::Check;
use crate::arch::{Heads, RowTransform};
use crate::convert::factor::{HeadCounts, row_sources};
use crate::gguf::{GgmlType, GgufFile, TensorSpec, Value, Writer};

/// One sabotage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// `adapter.lora.alpha` doubled: the adapter twice as strong.
    AlphaDoubled,
    /// Q/K `lora_b` rows permuted with llama.cpp's rotary permutation once more (a converter that permutes where
    /// it must not, or fails to where it must).
    QkPermuted,
    /// Every tensor of the adapter's most strongly adapted layer removed.
    LayerDropped,
    /// `lora_a` and `lora_b` exchanged (transposed into each other's shape) on every pair whose shapes allow it.
    AbSwapped,
    /// The pack's prompts rendered without their chat template (chat messages as plain text), or for raw prompts
    /// with a newline appended — what llama.cpp would see from a client that skips the template.
    PromptWithoutTemplate,
}

impl Sabotage {
    /// Every sabotage, in report order.
    pub const ALL: [Sabotage; 5] = [
        Sabotage::AlphaDoubled,
        Sabotage::QkPermuted,
        Sabotage::LayerDropped,
        Sabotage::AbSwapped,
        Sabotage::PromptWithoutTemplate,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Sabotage::AlphaDoubled => "alpha doubled",
            Sabotage::QkPermuted => "Q/K rows permuted",
            Sabotage::LayerDropped => "one layer dropped",
            Sabotage::AbSwapped => "A/B swapped",
            Sabotage::PromptWithoutTemplate => "prompt without its template",
        }
    }

    /// The check that must turn red.
    pub fn expected(self) -> Check {
        match self {
            Sabotage::PromptWithoutTemplate => Check::PromptParity,
            _ => Check::EffectParity,
        }
    }
}

/// What a sabotage did, or why it does not apply to this adapter.
#[derive(Clone, Debug, PartialEq)]
pub enum Made {
    /// A broken adapter was written; the text says what was changed.
    Adapter(String),
    /// The pack was changed (the adapter is the good one).
    Pack(Box<ReferencePack>, String),
    /// Not applicable (e.g. no pair has shapes that allow an A/B swap).
    Skipped(String),
}

/// Why a sabotaged copy could not be written.
#[derive(Debug, thiserror::Error)]
#[error("self-test: {0}")]
pub struct SabotageError(pub String);

fn err(e: impl std::fmt::Display) -> SabotageError {
    SabotageError(e.to_string())
}

/// Make the broken copy: an adapter GGUF at `out` (from `adapter`), or a changed pack.
pub fn make(
    s: Sabotage,
    adapter: &GgufFile,
    base: &GgufFile,
    pack: &ReferencePack,
    out: &Path,
) -> Result<Made, SabotageError> {
    match s {
        Sabotage::AlphaDoubled => {
            let alpha = adapter.get_f64("adapter.lora.alpha").unwrap_or(0.0);
            if alpha <= 0.0 {
                return Ok(Made::Skipped(
                    "adapter.lora.alpha is 0 (llama.cpp applies no α/r factor)".into(),
                ));
            }
            rewrite(
                adapter,
                out,
                |k, v| {
                    if k == "adapter.lora.alpha" {
                        *v = Value::F32((alpha * 2.0) as f32);
                    }
                    true
                },
                |_, _| Ok(()),
                |_| true,
            )?;
            Ok(Made::Adapter(format!(
                "adapter.lora.alpha {alpha} → {}",
                alpha * 2.0
            )))
        }
        Sabotage::QkPermuted => qk_permuted(adapter, base, out),
        Sabotage::LayerDropped => {
            let Some(layer) = strongest_layer(adapter)? else {
                return Ok(Made::Skipped("no blk.N tensors".into()));
            };
            let prefix = format!("blk.{layer}.");
            rewrite(
                adapter,
                out,
                |_, _| true,
                |_, _| Ok(()),
                |name| !name.starts_with(&prefix),
            )?;
            Ok(Made::Adapter(format!("every blk.{layer} pair removed")))
        }
        Sabotage::AbSwapped => ab_swapped(adapter, out),
        Sabotage::PromptWithoutTemplate => {
            let mut p = pack.clone();
            let mut chat = 0;
            for q in &mut p.prompts {
                q.source = match &q.source {
                    PromptSource::Chat(ms) => {
                        chat += 1;
                        PromptSource::Raw(
                            ms.iter()
                                .map(|(_, c)| c.as_str())
                                .collect::<Vec<_>>()
                                .join("\n"),
                        )
                    }
                    PromptSource::Raw(t) => PromptSource::Raw(format!("{t}\n")),
                };
            }
            let what = if chat > 0 {
                format!(
                    "{chat} chat prompt(s) given to llama.cpp as plain text, without the template"
                )
            } else {
                "raw prompts given to llama.cpp with a newline appended (the pack has no chat prompts)".into()
            };
            Ok(Made::Pack(Box::new(p), what))
        }
    }
}

/// The layer whose pairs carry the largest Σ‖A‖·‖B‖ (the one whose loss matters most).
fn strongest_layer(adapter: &GgufFile) -> Result<Option<u32>, SabotageError> {
    let mut per_layer: std::collections::BTreeMap<u32, f64> = Default::default();
    for t in &adapter.tensors {
        let Some(base) = t.name.strip_suffix(".lora_a") else {
            continue;
        };
        let Some(layer) = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let a = adapter.read_tensor_f32(&t.name).map_err(err)?;
        let b = adapter
            .read_tensor_f32(&format!("{base}.lora_b"))
            .map_err(err)?;
        let norm = |x: &[f32]| x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        *per_layer.entry(layer).or_default() += norm(&a) * norm(&b);
    }
    Ok(per_layer
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(l, _)| l))
}

fn element_size(t: GgmlType) -> Option<usize> {
    match t {
        GgmlType::F32 => Some(4),
        GgmlType::F16 | GgmlType::BF16 => Some(2),
        _ => None,
    }
}

fn qk_permuted(adapter: &GgufFile, base: &GgufFile, out: &Path) -> Result<Made, SabotageError> {
    let arch = base.architecture().unwrap_or_default().to_string();
    let n_head = base.get_u64(&format!("{arch}.attention.head_count"));
    let n_kv = base
        .get_u64(&format!("{arch}.attention.head_count_kv"))
        .or(n_head);
    let Some(n_head) = n_head else {
        return Ok(Made::Skipped(format!(
            "the base has no {arch}.attention.head_count"
        )));
    };
    let heads = HeadCounts {
        n_head: n_head as u32,
        n_head_kv: n_kv.unwrap_or(n_head) as u32,
        // The sabotage permutes q/k rows only, which Gated DeltaNet layers do not have.
        delta_net: None,
    };
    let mut count = 0;
    let mut failed = None;
    rewrite(
        adapter,
        out,
        |_, _| true,
        |name, t| {
            let which = if name.ends_with(".attn_q.weight.lora_b") {
                Heads::Query
            } else if name.ends_with(".attn_k.weight.lora_b") {
                Heads::KeyValue
            } else {
                return Ok(());
            };
            let Some(size) = element_size(t.ggml_type) else {
                failed = Some(format!("{name} is {:?}", t.ggml_type));
                return Ok(());
            };
            // ne = [r, out]: `out` rows of r elements.
            let (r, rows) = (t.dims[0] as usize, t.dims[1] as usize);
            let sources = row_sources(RowTransform::LlamaRope(which), rows, heads).map_err(err)?;
            let row_bytes = r * size;
            let old = t.bytes.clone();
            for (dst, src) in sources.into_iter().enumerate() {
                t.bytes[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&old[src * row_bytes..(src + 1) * row_bytes]);
            }
            count += 1;
            Ok(())
        },
        |_| true,
    )?;
    if let Some(why) = failed {
        return Ok(Made::Skipped(format!("rows of a quantized factor: {why}")));
    }
    if count == 0 {
        return Ok(Made::Skipped(
            "the adapter has no attn_q/attn_k pairs".into(),
        ));
    }
    Ok(Made::Adapter(format!(
        "rows of {count} attn_q/attn_k lora_b permuted as llama.cpp's converter permutes Llama's Q/K"
    )))
}

fn ab_swapped(adapter: &GgufFile, out: &Path) -> Result<Made, SabotageError> {
    // lora_a ne [in, r], lora_b ne [r, out]: B's data read as A (and A's as B) needs in == out, i.e. equal shapes.
    let swappable: std::collections::BTreeSet<String> = adapter
        .tensors
        .iter()
        .filter_map(|t| t.name.strip_suffix(".lora_a").map(|b| (b.to_string(), t)))
        .filter(|(b, a)| {
            adapter
                .tensor(&format!("{b}.lora_b"))
                .is_some_and(|bt| bt.dims == a.dims && bt.ggml_type == a.ggml_type)
        })
        .map(|(b, _)| b)
        .collect();
    if swappable.is_empty() {
        return Ok(Made::Skipped(
            "no pair has lora_a and lora_b of the same shape (in = out = rank), so no swap loads"
                .into(),
        ));
    }
    let mut data = std::collections::BTreeMap::new();
    for b in &swappable {
        for side in ["lora_a", "lora_b"] {
            let name = format!("{b}.{side}");
            data.insert(name.clone(), adapter.read_tensor_bytes(&name).map_err(err)?);
        }
    }
    rewrite(
        adapter,
        out,
        |_, _| true,
        |name, t| {
            if let Some((b, side)) = name.rsplit_once('.')
                && swappable.contains(b)
            {
                let other = if side == "lora_a" { "lora_b" } else { "lora_a" };
                t.bytes = data[&format!("{b}.{other}")].clone();
            }
            Ok(())
        },
        |_| true,
    )?;
    Ok(Made::Adapter(format!(
        "lora_a and lora_b exchanged on {} pair(s)",
        swappable.len()
    )))
}

/// A tensor being copied, its bytes editable.
struct Edit {
    ggml_type: GgmlType,
    dims: Vec<u64>,
    bytes: Vec<u8>,
}

/// Copy `src` to `dst`, editing metadata (`false` drops a key), tensor bytes, and keeping only tensors `keep` says.
fn rewrite(
    src: &GgufFile,
    dst: &Path,
    mut edit_kv: impl FnMut(&str, &mut Value) -> bool,
    mut edit_tensor: impl FnMut(&str, &mut Edit) -> Result<(), SabotageError>,
    keep: impl Fn(&str) -> bool,
) -> Result<(), SabotageError> {
    let metadata: Vec<(String, Value)> = src
        .metadata
        .iter()
        .cloned()
        .filter_map(|(k, mut v)| edit_kv(&k, &mut v).then_some((k, v)))
        .collect();
    let kept: Vec<_> = src.tensors.iter().filter(|t| keep(&t.name)).collect();
    let specs: Vec<TensorSpec> = kept
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ggml_type))
        .collect();
    let file = std::fs::File::create(dst).map_err(|e| err(format!("{}: {e}", dst.display())))?;
    let mut w = Writer::new(std::io::BufWriter::new(file), &metadata, &specs).map_err(err)?;
    for t in kept {
        let mut e = Edit {
            ggml_type: t.ggml_type,
            dims: t.dims.clone(),
            bytes: src.read_tensor_bytes(&t.name).map_err(err)?,
        };
        edit_tensor(&t.name, &mut e)?;
        w.write_tensor(&t.name, &e.bytes).map_err(err)?;
    }
    w.finish().map_err(err)?;
    Ok(())
}
