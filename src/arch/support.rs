//! What is proven per architecture and feature: verified (a fixture converted by lora-convert gives PyTorch's logits
//! in real llama.cpp, `tests/convert_logits.rs`), mapped (the tables convert it; no fixture proves it yet) or refused
//! (lora-convert stops, with the reason; the fixture checks the message). Data only; the README's support table is
//! rendered from it ([`markdown_table`], kept equal by a test) and `inspect` reports the entry of the adapter's family.

use serde::Serialize;

use super::Family;

/// How far support for a feature goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Converted and checked against PyTorch's logits in llama.cpp by a fixture.
    Verified,
    /// Converted by the reviewed tables, not yet proven by a fixture.
    Mapped,
    /// Refused with its reason (checked by a fixture when one is named).
    Refused,
}

impl Status {
    /// The word used in tables and reports.
    pub fn name(self) -> &'static str {
        match self {
            Status::Verified => "verified",
            Status::Mapped => "mapped",
            Status::Refused => "refused",
        }
    }
}

/// One feature of an architecture.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Feature {
    /// What is adapted (`experts (fused, target_parameters)`, `Gated DeltaNet projections` …).
    pub feature: &'static str,
    /// How far it goes.
    pub status: Status,
    /// The fixtures (fixtures/cases) that prove it.
    pub fixtures: &'static [&'static str],
}

/// The features of one GGUF architecture.
pub struct ArchSupport {
    /// `general.architecture`.
    pub arch: &'static str,
    /// Its features.
    pub features: &'static [Feature],
}

const fn v(feature: &'static str, fixtures: &'static [&'static str]) -> Feature {
    Feature {
        feature,
        status: Status::Verified,
        fixtures,
    }
}

const fn m(feature: &'static str) -> Feature {
    Feature {
        feature,
        status: Status::Mapped,
        fixtures: &[],
    }
}

const fn r(feature: &'static str, fixtures: &'static [&'static str]) -> Feature {
    Feature {
        feature,
        status: Status::Refused,
        fixtures,
    }
}

const ATTN_MLP: &str = "attention and MLP projections";

/// Every architecture with a feature proven or refused by a fixture, in the README's order.
pub static SUPPORT: &[ArchSupport] = &[
    ArchSupport {
        arch: "llama",
        features: &[
            v(
                "attention and MLP projections (Q/K rotary permutation), PEFT options",
                &[
                    "llama",
                    "mistral",
                    "llama-rslora",
                    "llama-patterns",
                    "llama-layers",
                    "llama-float-alpha",
                    "llama-bf16",
                    "llama-f16",
                ],
            ),
            v("embed_tokens, lm_head (untied)", &["llama-embed-lmhead"]),
            v("experts (fused, target_parameters)", &["mixtral"]),
            v("experts (per-expert Linear), router", &["mixtral-legacy"]),
            v(
                "mlx-lm adapters",
                &["mlx-llama", "mlx-llama-keys", "mlx-mixtral"],
            ),
            v(
                "other trainers",
                &[
                    "torchtune-llama",
                    "unsloth-llama",
                    "llamafactory-pissa/pissa_converted",
                ],
            ),
        ],
    },
    ArchSupport {
        arch: "qwen2",
        features: &[
            v(ATTN_MLP, &["qwen2", "mlx-qwen2"]),
            r("lm_head of a tied model", &["tied-lmhead"]),
        ],
    },
    ArchSupport {
        arch: "qwen3",
        features: &[v(ATTN_MLP, &["qwen3"])],
    },
    ArchSupport {
        arch: "qwen2moe",
        features: &[v(
            "experts (fused), router, shared expert and its gate",
            &["qwen2moe"],
        )],
    },
    ArchSupport {
        arch: "qwen3moe",
        features: &[v(
            "experts (fused) with rank/alpha patterns, router",
            &["qwen3moe", "mlx-qwen3moe"],
        )],
    },
    ArchSupport {
        arch: "qwen35",
        features: &[
            v(
                "Gated DeltaNet projections (value-head reorder on B rows / A columns)",
                &["qwen35"],
            ),
            v("gated full attention, MLP", &["qwen35"]),
            v("mlx-lm adapters", &["mlx-qwen35"]),
        ],
    },
    ArchSupport {
        arch: "qwen35moe",
        features: &[
            v(
                "Gated DeltaNet + attention, experts (fused), router, shared expert",
                &["qwen35moe"],
            ),
            v(
                "experts on a --fuse-gate-up-exps base (ffn_gate_up_exps)",
                &["qwen35moe-fused"],
            ),
            v(
                "mlx-lm SwitchGLU experts (separate gate/up LoRAs), also block-diagonal on ffn_gate_up_exps",
                &["mlx-qwen35moe"],
            ),
        ],
    },
    ArchSupport {
        arch: "gemma4",
        features: &[
            v(
                "attention (sliding + global) and MLP, tied embeddings",
                &["gemma4"],
            ),
            v("mlx-lm adapters", &["mlx-gemma4"]),
            v(
                "mlx-lm SwitchGLU experts + router: gate/up block-diagonal on ffn_gate_up_exps, scale folded",
                &["mlx-gemma4moe"],
            ),
            v(
                "per-layer input gate/projection (E2B-style)",
                &["gemma4-e2b"],
            ),
            r(
                "per_layer_model_projection (llama.cpp ignores its LoRA; --drop-ignored-pairs)",
                &["gemma4-e2b"],
            ),
            v(
                "experts (fused ffn_gate_up_exps, per-expert scale folded), router",
                &["gemma4moe"],
            ),
        ],
    },
    ArchSupport {
        arch: "gpt-oss",
        features: &[
            v("attention", &["gptoss"]),
            v("experts (fused, gate/up interleaved), router", &["gptoss"]),
        ],
    },
    ArchSupport {
        arch: "llama4",
        features: &[
            v("attention, dense and shared-expert MLPs", &["llama4"]),
            v("experts (fused, stored (E, in, out))", &["llama4"]),
            m("router (peft cannot wrap transformers' Llama4Router)"),
        ],
    },
    ArchSupport {
        arch: "smollm3",
        features: &[
            v("attention (NoPE layers) and MLP projections", &["smollm3"]),
            v("mlx-lm adapters", &["mlx-smollm3"]),
        ],
    },
    ArchSupport {
        arch: "lfm2",
        features: &[
            v(
                "short-convolution in/out projections, attention, FFN",
                &["lfm2"],
            ),
            v("mlx-lm adapters", &["mlx-lfm2"]),
        ],
    },
    ArchSupport {
        arch: "glm4moe",
        features: &[
            v(
                "attention, experts via peft's rewrite of gate/up/down_proj (2r, 2α patterns)",
                &["glm4moe"],
            ),
            m("dense and shared-expert MLPs, router"),
        ],
    },
    ArchSupport {
        arch: "deepseek2",
        features: &[
            v(
                "o_proj, dense and shared-expert FFNs, experts (fused), router",
                &["deepseek2"],
            ),
            r(
                "MLA projections q_a/q_b/kv_a_mqa (llama.cpp ignores them; --drop-ignored-pairs)",
                &["deepseek2-mla"],
            ),
            r("kv_b_proj", &["deepseek2-kv-b"]),
        ],
    },
    ArchSupport {
        arch: "olmoe",
        features: &[v("experts (down_proj only), rsLoRA", &["olmoe-partial"])],
    },
    ArchSupport {
        arch: "gemma2",
        features: &[v(ATTN_MLP, &["gemma2"])],
    },
    ArchSupport {
        arch: "gemma3",
        features: &[
            v(ATTN_MLP, &["gemma3", "mlx-gemma3"]),
            r("embed_tokens of a tied model", &["tied-embed"]),
        ],
    },
    ArchSupport {
        arch: "phi3",
        features: &[v("fused qkv_proj and gate_up_proj", &["phi3", "mlx-phi3"])],
    },
    ArchSupport {
        arch: "gptneox",
        features: &[v("per-head fused QKV", &["gptneox"])],
    },
    ArchSupport {
        arch: "falcon",
        features: &[v("grouped fused QKV", &["falcon"])],
    },
    ArchSupport {
        arch: "starcoder2",
        features: &[v(ATTN_MLP, &["starcoder2"])],
    },
    ArchSupport {
        arch: "gpt2",
        features: &[v("Conv1D (fan_in_fan_out)", &["gpt2"])],
    },
    ArchSupport {
        arch: "granite",
        features: &[v(ATTN_MLP, &["granite"])],
    },
    ArchSupport {
        arch: "stablelm",
        features: &[v(ATTN_MLP, &["stablelm"])],
    },
    ArchSupport {
        arch: "olmo2",
        features: &[v(ATTN_MLP, &["olmo2"])],
    },
];

/// How far support for a family goes, and the features behind it.
#[derive(Clone, Debug, Serialize)]
pub struct Support {
    /// `general.architecture`.
    pub arch: &'static str,
    /// Verified when a fixture proves any feature; mapped when the tables convert it without a fixture; refused
    /// when its converter classes are not reviewed.
    pub status: Status,
    /// The features with their status and fixtures (empty when no fixture covers the family).
    pub features: Vec<Feature>,
}

/// The support entry of a family.
pub fn of(family: &Family) -> Support {
    let features: Vec<Feature> = SUPPORT
        .iter()
        .find(|s| s.arch == family.gguf_arch)
        .map(|s| s.features.to_vec())
        .unwrap_or_default();
    let status = if features.iter().any(|f| f.status == Status::Verified) {
        Status::Verified
    } else if family.is_supported() {
        Status::Mapped
    } else {
        Status::Refused
    };
    Support {
        arch: family.gguf_arch,
        status,
        features,
    }
}

/// The README's support table: one row per architecture and feature.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| architecture | feature | status | fixtures |\n|---|---|---|---|\n");
    for s in SUPPORT {
        for f in s.features {
            let fixtures: Vec<String> = f.fixtures.iter().map(|x| format!("`{x}`")).collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                s.arch,
                f.feature,
                f.status.name(),
                if fixtures.is_empty() {
                    "—".to_string()
                } else {
                    fixtures.join(", ")
                }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_architecture_is_a_family_and_verified_ones_name_fixtures() {
        for s in SUPPORT {
            let family = super::super::by_gguf_arch(s.arch)
                .unwrap_or_else(|| panic!("{} is not a family", s.arch));
            assert!(
                family.is_supported(),
                "{} is listed but not reviewed",
                s.arch
            );
            for f in s.features {
                assert!(
                    f.status != Status::Verified || !f.fixtures.is_empty(),
                    "{}: `{}` verified without a fixture",
                    s.arch,
                    f.feature
                );
            }
        }
    }

    #[test]
    fn a_family_without_fixtures_is_mapped_or_refused() {
        let mapped = of(super::super::by_gguf_arch("mistral3").unwrap());
        assert_eq!((mapped.status, mapped.features.len()), (Status::Mapped, 0));
        let verified = of(super::super::by_gguf_arch("qwen35").unwrap());
        assert_eq!(verified.status, Status::Verified);
        let refused = super::super::families()
            .find(|f| !f.is_supported())
            .expect("some family is unreviewed");
        assert_eq!(of(refused).status, Status::Refused);
    }
}
