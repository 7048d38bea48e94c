//! Model-family knowledge as data: which GGUF base tensor each PEFT-adapted HF module becomes, and what llama.cpp's
//! converter does to that weight on the way. Names come from llama.cpp's own gguf-py tables (`generated.rs`, made by
//! `tools/gen_arch_tables.py`); transforms and refusals from the reviewed converter classes (`families.rs`).

pub mod families;
pub mod generated;
pub mod geometry;
pub mod support;
pub mod target;

use std::collections::HashMap;
use std::sync::OnceLock;

pub use target::{DeltaNetPart, Heads, Layout, QkvPart, RowTransform, Target};

use families::{REVIEWED, Review};
use generated::{ARCHES, Arch, HF_ARCHITECTURES, ROLES};

/// Why a module cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// No GGUF tensor of this architecture corresponds to the module.
    #[error(
        "no `{arch}` GGUF tensor corresponds to this module (llama.cpp's converter has no name for it); modules \
         this family maps include {known}"
    )]
    Unmapped {
        /// The module.
        module: String,
        /// The GGUF architecture.
        arch: &'static str,
        /// A few supported module names.
        known: String,
    },
    /// llama.cpp transforms this weight in a way we do not reproduce for LoRA factors.
    #[error("cannot be converted for `{arch}`: {reason}")]
    Unsupported {
        /// The module.
        module: String,
        /// The GGUF architecture.
        arch: &'static str,
        /// Why, and what to do.
        reason: &'static str,
    },
    /// The architecture's converter has transforms nobody has reviewed for LoRA yet.
    #[error(
        "the `{arch}` converter classes ({classes}) transform weights in ways lora-convert has not verified for \
         LoRA factors, so it refuses rather than risk a silently wrong adapter; please open an issue"
    )]
    Unreviewed {
        /// The module.
        module: String,
        /// The GGUF architecture.
        arch: &'static str,
        /// The classes with their own modify_tensors.
        classes: String,
    },
    /// A vision/audio tower module: not part of the GGUF text model.
    #[error(
        "is part of a vision/audio tower, which is not in the GGUF text model (llama.cpp keeps it in a separate \
         mmproj file with no LoRA support); retrain with target_modules limited to the language model"
    )]
    NotText {
        /// The module.
        module: String,
    },
    /// Per-expert modules on a family whose converter does not stack experts.
    #[error("is a per-expert module, but llama.cpp's `{arch}` converter does not stack experts")]
    Experts {
        /// The module.
        module: String,
        /// The GGUF architecture.
        arch: &'static str,
    },
}

/// Everything we know about one GGUF architecture.
pub struct Family {
    /// `general.architecture`.
    pub gguf_arch: &'static str,
    index: usize,
    generated: &'static Arch,
    review: Option<&'static Review>,
    /// Converter classes of this arch that define their own `modify_tensors` (empty: a plain name map).
    custom_classes: Vec<&'static str>,
}

fn all() -> &'static [Family] {
    static FAMILIES: OnceLock<Vec<Family>> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let mut out = Vec::new();
        for generated in ARCHES {
            let hf: Vec<_> = HF_ARCHITECTURES
                .iter()
                .filter(|h| h.gguf_arch == generated.name)
                .collect();
            if hf.is_empty() {
                continue; // gguf-py knows it, but convert_hf_to_gguf.py converts no text model to it
            }
            let mut custom_classes: Vec<&'static str> = hf
                .iter()
                .flat_map(|h| h.custom_modify.iter().copied())
                .collect();
            custom_classes.sort_unstable();
            custom_classes.dedup();
            out.push(Family {
                gguf_arch: generated.name,
                index: out.len(),
                generated,
                review: REVIEWED.iter().find(|r| r.arch == generated.name),
                custom_classes,
            });
        }
        out
    })
}

/// Every family llama.cpp converts text models to.
pub fn families() -> impl Iterator<Item = &'static Family> {
    all().iter()
}

/// The family of a GGUF architecture.
pub fn by_gguf_arch(arch: &str) -> Option<&'static Family> {
    all().iter().find(|f| f.gguf_arch == arch)
}

/// The family an HF `architectures[0]` converts to.
pub fn by_hf_architecture(name: &str) -> Option<&'static Family> {
    let h = HF_ARCHITECTURES.iter().find(|h| h.hf == name)?;
    by_gguf_arch(h.gguf_arch)
}

/// The GGUF architecture an HF `architectures[0]` converts to.
pub fn gguf_arch_for_hf(name: &str) -> Option<&'static str> {
    HF_ARCHITECTURES
        .iter()
        .find(|h| h.hf == name)
        .map(|h| h.gguf_arch)
}

/// HF module template → GGUF template, built exactly like gguf-py's `TensorNameMap(arch)` (later entries win).
fn name_map(family: &Family) -> &'static HashMap<&'static str, &'static str> {
    static MAPS: OnceLock<Vec<OnceLock<HashMap<&'static str, &'static str>>>> = OnceLock::new();
    let maps = MAPS.get_or_init(|| all().iter().map(|_| OnceLock::new()).collect());
    maps[family.index].get_or_init(|| {
        let mut map = HashMap::new();
        let roles = family
            .generated
            .roles
            .iter()
            .filter_map(|&i| ROLES.get(usize::from(i)));
        for role in roles.chain(family.generated.overrides) {
            map.insert(role.gguf, role.gguf);
            for hf in role.hf {
                map.insert(*hf, role.gguf);
            }
        }
        map
    })
}

/// Prefixes and fragments llama.cpp's `TextModel.filter_tensors` drops as multimodal (conversion/base.py).
const NOT_TEXT_PREFIXES: &[&str] = &[
    "mlp",
    "vit.",
    "vpm.",
    "siglip2.",
    "conformer.",
    "merger.",
    "resampler.",
    "sound_encoder.",
    "sound_projection.",
    "speech_embeddings.",
];
const NOT_TEXT_FRAGMENTS: &[&str] = &[
    "visual.",
    "vision.",
    "audio.",
    "talker.",
    "vision_",
    "audio_",
    "token2wav.",
    "code2wav.",
    "projector.",
    "pre_mm_projector_norm",
    "image_newline",
    "view_seperator",
    "patch_embed",
    "patch_embedding",
    "patch_merger.",
    "patch_merge_mlp.",
    "model.connector.",
];

impl Family {
    /// Map a PEFT module path to the GGUF targets it contributes to.
    pub fn map_module(&self, module: &str) -> Result<Vec<Target>, MapError> {
        if NOT_TEXT_PREFIXES.iter().any(|p| module.starts_with(p))
            || NOT_TEXT_FRAGMENTS.iter().any(|f| module.contains(f))
        {
            return Err(MapError::NotText {
                module: module.to_string(),
            });
        }
        // ModelBase.filter_tensors: `language_model.` is removed wherever it occurs.
        let name = module.replace("language_model.", "");
        let review = match self.review {
            Some(r) => r,
            None if self.custom_classes.is_empty() => &families::REVIEWED_PLAIN,
            None => {
                return Err(MapError::Unreviewed {
                    module: module.to_string(),
                    arch: self.gguf_arch,
                    classes: self.custom_classes.join(", "),
                });
            }
        };
        let (template, block, expert) = templated(&name);

        if let Some(split) = review.splits.iter().find(|s| s.hf == template) {
            if split.parts.iter().any(|(g, _)| g.ends_with("_exps")) && !review.stacks_experts {
                return Err(MapError::Experts {
                    module: module.to_string(),
                    arch: self.gguf_arch,
                });
            }
            return Ok(split
                .parts
                .iter()
                .map(|&(gguf, rows)| Target {
                    name: tensor_name(gguf, block),
                    block,
                    rows,
                    cols: RowTransform::Identity,
                    transposed: gguf.ends_with("_exps") && review.expert_params_in_out,
                    layout: if gguf.ends_with("_exps") {
                        Layout::Experts
                    } else {
                        Layout::Linear
                    },
                })
                .collect());
        }
        let map = name_map(self);
        let (gguf, expert) = match expert {
            // Per-expert Linear modules: the converter stacks `…experts.{xid}.w1` under the name without the index.
            Some((merged, xid)) => match map.get(merged.as_str()) {
                Some(g) if g.ends_with("_exps") => {
                    if !review.stacks_experts {
                        return Err(MapError::Experts {
                            module: module.to_string(),
                            arch: self.gguf_arch,
                        });
                    }
                    (*g, Some(xid))
                }
                _ => return Err(self.unmapped(module)),
            },
            None => match map
                .get(template.as_str())
                .or_else(|| map.get(name.as_str()))
            {
                Some(g) => (*g, None),
                None => return Err(self.unmapped(module)),
            },
        };
        if let Some(&(_, reason)) = review.unsupported.iter().find(|(g, _)| *g == gguf) {
            return Err(MapError::Unsupported {
                module: module.to_string(),
                arch: self.gguf_arch,
                reason,
            });
        }
        let rows = review
            .rows
            .iter()
            .find(|(g, _)| *g == gguf)
            .map_or(RowTransform::Identity, |&(_, r)| r);
        let cols = review
            .cols
            .iter()
            .find(|(g, _)| *g == gguf)
            .map_or(RowTransform::Identity, |&(_, c)| c);
        let layout = match expert {
            Some(index) => Layout::Expert { index },
            None if gguf == "token_embd" => Layout::Embedding,
            None if gguf.ends_with("_exps") => {
                if !review.stacks_experts {
                    return Err(MapError::Experts {
                        module: module.to_string(),
                        arch: self.gguf_arch,
                    });
                }
                Layout::Experts
            }
            None => Layout::Linear,
        };
        Ok(vec![Target {
            name: tensor_name(gguf, block),
            block,
            rows,
            cols,
            transposed: layout == Layout::Experts && review.expert_params_in_out,
            layout,
        }])
    }

    /// Map a parameter targeted with PEFT's `target_parameters`: `weight` is the module's own weight (a router
    /// `mlp.gate`), any other parameter is named like a module (`mlp.experts.down_proj`, as gguf-py's tables name
    /// transformers-5 fused experts).
    pub fn map_parameter(&self, module: &str, parameter: &str) -> Result<Vec<Target>, MapError> {
        if parameter == "weight" {
            self.map_module(module)
        } else {
            self.map_module(&format!("{module}.{parameter}"))
        }
    }

    /// Whether llama.cpp's graph ignores a LoRA on this GGUF tensor (`blk.3.attn_q.weight`).
    pub fn no_effect(&self, gguf_tensor: &str) -> bool {
        let Some(review) = self.review else {
            return false;
        };
        let stem = gguf_tensor.strip_suffix(".weight").unwrap_or(gguf_tensor);
        let (template, _, _) = templated(stem);
        review
            .no_effect
            .iter()
            .any(|t| *t == template || *t == stem)
    }

    /// The base tensor whose values llama.cpp multiplies into this target's base matmul only (`….scale`), when the
    /// family has one for it: its values must be folded into B.
    pub fn base_only_scale(&self, gguf_tensor: &str) -> Option<String> {
        let review = self.review?;
        let stem = gguf_tensor.strip_suffix(".weight").unwrap_or(gguf_tensor);
        let (template, _, _) = templated(stem);
        review
            .base_only_scales
            .iter()
            .any(|t| *t == template || *t == stem)
            .then(|| format!("{stem}.scale"))
    }

    /// Whether the family always ties its output head to the token embedding.
    pub fn always_tied(&self) -> bool {
        self.review.is_some_and(|r| r.always_tied)
    }

    /// Whether the family's transforms have been reviewed (or are a plain name map).
    pub fn is_supported(&self) -> bool {
        self.review.is_some() || self.custom_classes.is_empty()
    }

    /// HF architectures that convert to this family.
    pub fn hf_architectures(&self) -> impl Iterator<Item = &'static str> + '_ {
        HF_ARCHITECTURES
            .iter()
            .filter(|h| h.gguf_arch == self.gguf_arch)
            .map(|h| h.hf)
    }

    fn unmapped(&self, module: &str) -> MapError {
        let mut known: Vec<&str> = self
            .generated
            .roles
            .iter()
            .filter_map(|&i| ROLES.get(usize::from(i)))
            .filter(|r| {
                r.gguf.contains("attn_q") || r.gguf.contains("ffn_down") || r.gguf == "token_embd"
            })
            .filter_map(|r| r.hf.first().copied())
            .collect();
        known.truncate(4);
        MapError::Unmapped {
            module: module.to_string(),
            arch: self.gguf_arch,
            known: known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The targets as the base has them: when the base stores the parts of a split as one fused tensor
/// ([`families::FUSED_IN_BASE`], checked against the base's own tensors, never assumed), the parts become that
/// tensor, B's rows in the fused order (a gate|up chunk split: as stored; gpt-oss's interleave: de-interleaved).
/// `has` answers whether the base has a tensor (None: unknown, e.g. a config-only base — nothing is fused).
pub fn fused_for_base(targets: Vec<Target>, has: impl Fn(&str) -> Option<bool>) -> Vec<Target> {
    let [first, second] = targets.as_slice() else {
        return targets;
    };
    let Some(block) = first.block else {
        return targets;
    };
    for (parts, fused) in families::FUSED_IN_BASE {
        let [p0, p1] = parts else { continue };
        let (n0, n1, nf) = (
            tensor_name(p0, Some(block)),
            tensor_name(p1, Some(block)),
            tensor_name(fused, Some(block)),
        );
        if first.name != n0 || second.name != n1 || first.layout != second.layout {
            continue;
        }
        if has(&nf) != Some(true) || has(&n0) == Some(true) {
            continue;
        }
        let rows = match (first.rows, second.rows) {
            (
                RowTransform::Chunk { index: 0, count: 2 },
                RowTransform::Chunk { index: 1, count: 2 },
            ) => RowTransform::Identity,
            (
                RowTransform::Interleaved { index: 0, count: 2 },
                RowTransform::Interleaved { index: 1, count: 2 },
            ) => RowTransform::Deinterleaved { count: 2 },
            _ => continue,
        };
        return vec![Target {
            name: nf,
            block: Some(block),
            rows,
            cols: first.cols,
            transposed: first.transposed,
            layout: first.layout,
        }];
    }
    targets
}

/// When `target` is one part of a split the base stores fused (`blk.3.ffn_gate_exps.weight` on a base made with
/// `--fuse-gate-up-exps`), the fused tensor's name, the part's index and the number of parts (rows of the fused
/// tensor: part 0's, then part 1's).
pub fn fused_part_of(target: &str, has: impl Fn(&str) -> bool) -> Option<(String, u8, u8)> {
    let stem = target.strip_suffix(".weight")?;
    let (template, block, _) = templated(stem);
    families::FUSED_IN_BASE.iter().find_map(|(parts, fused)| {
        let fused = tensor_name(fused, block);
        let index = parts.iter().position(|p| *p == template.as_str())?;
        has(&fused).then_some((fused, index as u8, parts.len() as u8))
    })
}

/// `model.layers.3.mlp.experts.7.w1` → (`model.layers.{bid}.mlp.experts.7.w1`, Some(3),
/// Some((`model.layers.{bid}.mlp.experts.w1`, 7))): the first numeric component is the block, a numeric component
/// right after `experts` is the expert.
fn templated(name: &str) -> (String, Option<u32>, Option<(String, u32)>) {
    let parts: Vec<&str> = name.split('.').collect();
    let is_num = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let Some(bi) = parts.iter().position(|p| is_num(p)) else {
        return (name.to_string(), None, None);
    };
    let block = parts[bi].parse().ok();
    let mut t: Vec<&str> = parts.clone();
    t[bi] = "{bid}";
    let template = t.join(".");
    let expert = parts
        .iter()
        .enumerate()
        .skip(bi + 1)
        .find(|(i, p)| is_num(p) && *i > 0 && parts[i - 1] == "experts")
        .and_then(|(i, p)| {
            let xid = p.parse().ok()?;
            let mut merged = t.clone();
            merged.remove(i);
            Some((merged.join("."), xid))
        });
    (template, block, expert)
}

fn tensor_name(gguf: &str, block: Option<u32>) -> String {
    let base = match block {
        Some(b) => gguf.replace("{bid}", &b.to_string()),
        None => gguf.to_string(),
    };
    format!("{base}.weight")
}

#[cfg(test)]
mod tests;
