//! What the generated name tables cannot say: which row transforms llama.cpp's converter applies per family, the
//! fused modules it splits, the tensors it cannot take a LoRA for, and where its graph ignores one. Data only; every
//! entry cites the converter class it mirrors (llama.cpp `conversion/*.py` at the commit in generated.rs).

use super::target::{DeltaNetPart, Heads, QkvPart, RowTransform};

/// A fused HF module that llama.cpp splits into several GGUF tensors.
pub struct Split {
    /// The module template (`model.layers.{bid}.attention.wqkv`).
    pub hf: &'static str,
    /// Each target: GGUF template and the rows it keeps.
    pub parts: &'static [(&'static str, RowTransform)],
}

/// The reviewed knowledge about one GGUF architecture.
pub struct Review {
    /// `general.architecture`.
    pub arch: &'static str,
    /// Row transforms by GGUF template (`blk.{bid}.attn_q`).
    pub rows: &'static [(&'static str, RowTransform)],
    /// Transforms of the input dimension (A's columns) by GGUF template.
    pub cols: &'static [(&'static str, RowTransform)],
    /// Fused modules split into several targets.
    pub splits: &'static [Split],
    /// GGUF templates a LoRA cannot be converted for, with the reason.
    pub unsupported: &'static [(&'static str, &'static str)],
    /// GGUF templates whose LoRA llama.cpp loads but never applies (raw `ggml_mul_mat` in its graph builder).
    pub no_effect: &'static [&'static str],
    /// GGUF templates whose `.scale` companion tensor llama.cpp multiplies into the base matmul only
    /// (llama-graph.cpp `build_lora_mm_id`: `res = mul(res, w_s)` before the LoRA term is added), while in PyTorch
    /// the LoRA sits inside the scaled product: the scale is folded into B.
    pub base_only_scales: &'static [&'static str],
    /// llama.cpp's converter stacks per-expert Linear weights (`experts.{xid}.…`) into `*_exps`.
    pub stacks_experts: bool,
    /// The family always shares the output head with the token embedding.
    pub always_tied: bool,
    /// Its fused expert parameters are stored (E, in, out) without transformers' `is_transposed` marker, so peft's
    /// ParamWrapper factors hold ΔWᵀ ([`super::Target::transposed`]).
    pub expert_params_in_out: bool,
}

const ROPE_QK: &[(&str, RowTransform)] = &[
    ("blk.{bid}.attn_q", RowTransform::LlamaRope(Heads::Query)),
    ("blk.{bid}.attn_k", RowTransform::LlamaRope(Heads::KeyValue)),
];

/// transformers 5 fuses each layer's experts into `mlp.experts.gate_up_proj` (E, 2·ff, H), gate rows first
/// (`gate, up = linear(x, gate_up_proj[e]).chunk(2, dim=-1)` in modeling_{mixtral,qwen2_moe,qwen3_moe,olmoe}.py)
/// and `mlp.experts.down_proj` (E, H, ff). llama.cpp's converter splits gate_up_proj on dim -2 into ffn_gate_exps
/// and ffn_up_exps (qwen.py `Qwen2MoeModel.modify_tensors`; transformers' save_pretrained writes Mixtral and OLMoE
/// per expert, which llama.py / olmo.py stack into the same tensors): B's rows split in two, A shared. down_proj
/// maps by name to ffn_down_exps.
const FUSED_GATE_UP_EXPERTS: Split = Split {
    hf: "model.layers.{bid}.mlp.experts.gate_up_proj",
    parts: &[
        (
            "blk.{bid}.ffn_gate_exps",
            RowTransform::Chunk { index: 0, count: 2 },
        ),
        (
            "blk.{bid}.ffn_up_exps",
            RowTransform::Chunk { index: 1, count: 2 },
        ),
    ],
};

/// Qwen3.5 / Qwen3.5-MoE (`_LinearAttentionVReorderBase`, qwen.py): with fewer key heads than value heads, the
/// value heads of every Gated DeltaNet projection are reordered from grouped-by-key-head to tiled: rows of
/// in_proj_qkv's value part, in_proj_z, in_proj_a and in_proj_b; columns of out_proj. Its graph
/// (src/models/qwen35.cpp, qwen35moe.cpp) applies LoRA to all of them (build_lora_mm on wqkv, wqkv_gate,
/// ssm_beta, ssm_alpha, ssm_out), to the full-attention projections and to the FFN.
const DELTA_NET_ROWS: &[(&str, RowTransform)] = &[
    (
        "blk.{bid}.attn_qkv",
        RowTransform::DeltaNetValueHeads(DeltaNetPart::Qkv),
    ),
    (
        "blk.{bid}.attn_gate",
        RowTransform::DeltaNetValueHeads(DeltaNetPart::ValueHeads),
    ),
    (
        "blk.{bid}.ssm_alpha",
        RowTransform::DeltaNetValueHeads(DeltaNetPart::PerHead),
    ),
    (
        "blk.{bid}.ssm_beta",
        RowTransform::DeltaNetValueHeads(DeltaNetPart::PerHead),
    ),
];
const DELTA_NET_COLS: &[(&str, RowTransform)] = &[(
    "blk.{bid}.ssm_out",
    RowTransform::DeltaNetValueHeads(DeltaNetPart::ValueHeads),
)];

/// Tensors llama.cpp's converter writes as one when asked (`--fuse-gate-up-exps`, conversion/base.py
/// `ModelBase.modify_tensors`: `torch.cat([gate, up], dim=1)`, so gate rows first) and whose graph then multiplies
/// as one (llama-graph.cpp `build_moe_ffn`: `build_lora_mm_id(gate_up_exps, …)`, LoRA applied): the parts, in row
/// order, and the fused template. Some converters write it fused by default (Gemma 4, GraniteMoE).
pub const FUSED_IN_BASE: &[(&[&str], &str)] = &[(
    &["blk.{bid}.ffn_gate_exps", "blk.{bid}.ffn_up_exps"],
    "blk.{bid}.ffn_gate_up_exps",
)];

const PLAIN: Review = Review {
    arch: "",
    rows: &[],
    cols: &[],
    splits: &[],
    unsupported: &[],
    no_effect: &[],
    base_only_scales: &[],
    stacks_experts: false,
    always_tied: false,
    expert_params_in_out: false,
};

/// Reviewed families. An arch absent here converts only if none of its converter classes defines
/// `modify_tensors` (a plain name map); otherwise it is refused until reviewed.
pub static REVIEWED: &[Review] = &[
    // LlamaModel (undo_permute) — llama.py: q/k permuted; block_sparse_moe.experts stacked (Mixtral).
    Review {
        arch: "llama",
        rows: ROPE_QK,
        splits: &[FUSED_GATE_UP_EXPERTS],
        stacks_experts: true,
        ..PLAIN
    },
    // Llama4Model ⊂ LlamaModel — llama.py: no q/k permutation (undo_permute = False); experts.gate_up_proj
    // (E, H, 2·ff) transposed and split in halves (gate first), experts.down_proj transposed. transformers' Llama 4
    // experts carry no `is_transposed`, so peft holds ΔWᵀ for them. Its graph (src/models/llama4.cpp) applies LoRA
    // to attention, the dense and shared-expert FFNs, the router and the experts.
    Review {
        arch: "llama4",
        splits: &[Split {
            hf: "model.layers.{bid}.feed_forward.experts.gate_up_proj",
            parts: &[
                (
                    "blk.{bid}.ffn_gate_exps",
                    RowTransform::Chunk { index: 0, count: 2 },
                ),
                (
                    "blk.{bid}.ffn_up_exps",
                    RowTransform::Chunk { index: 1, count: 2 },
                ),
            ],
        }],
        stacks_experts: true,
        expert_params_in_out: true,
        ..PLAIN
    },
    // SmolLM3Model ⊂ LlamaModel — llama.py: q/k permuted as Llama's (its NoPE layers change the graph, not the
    // weights).
    Review {
        arch: "smollm3",
        rows: ROPE_QK,
        ..PLAIN
    },
    // Mistral3Model.Ministral3Model ⊂ LlamaModel — mistral3.py.
    Review {
        arch: "mistral3",
        rows: ROPE_QK,
        ..PLAIN
    },
    // GraniteModel ⊂ LlamaModel — granite.py.
    Review {
        arch: "granite",
        rows: ROPE_QK,
        ..PLAIN
    },
    // GraniteMoeModel — granite.py: shared_mlp.input_linear split into gate|up (dim -2 = rows).
    Review {
        arch: "granitemoe",
        rows: ROPE_QK,
        splits: &[Split {
            hf: "model.layers.{bid}.shared_mlp.input_linear",
            parts: &[
                (
                    "blk.{bid}.ffn_gate_shexp",
                    RowTransform::Chunk { index: 0, count: 2 },
                ),
                (
                    "blk.{bid}.ffn_up_shexp",
                    RowTransform::Chunk { index: 1, count: 2 },
                ),
            ],
        }],
        unsupported: &[(
            "blk.{bid}.ffn_gate_exps",
            "GraniteMoE experts are 3-D ParallelExperts parameters, not Linear modules",
        )],
        ..PLAIN
    },
    // OlmoModel — olmo.py: its own copy of the llama permutation.
    Review {
        arch: "olmo",
        rows: ROPE_QK,
        ..PLAIN
    },
    Review {
        arch: "olmo2",
        ..PLAIN
    },
    // OlmoeModel — olmo.py: mlp.experts.{xid}.* stacked.
    Review {
        arch: "olmoe",
        splits: &[FUSED_GATE_UP_EXPERTS],
        stacks_experts: true,
        ..PLAIN
    },
    // GPTNeoXModel — gptneox.py: query_key_value rows reordered per head.
    Review {
        arch: "gptneox",
        rows: &[("blk.{bid}.attn_qkv", RowTransform::NeoxQkv)],
        ..PLAIN
    },
    // FalconModel — falcon.py: query_key_value regrouped by kv group.
    Review {
        arch: "falcon",
        rows: &[("blk.{bid}.attn_qkv", RowTransform::FalconQkv)],
        ..PLAIN
    },
    // InternLM2Model — internlm.py: wqkv split into q, k, v; q and k permuted.
    Review {
        arch: "internlm2",
        splits: &[Split {
            hf: "model.layers.{bid}.attention.wqkv",
            parts: &[
                (
                    "blk.{bid}.attn_q",
                    RowTransform::InternLm2Qkv {
                        part: QkvPart::Q,
                        rope: true,
                    },
                ),
                (
                    "blk.{bid}.attn_k",
                    RowTransform::InternLm2Qkv {
                        part: QkvPart::K,
                        rope: true,
                    },
                ),
                (
                    "blk.{bid}.attn_v",
                    RowTransform::InternLm2Qkv {
                        part: QkvPart::V,
                        rope: false,
                    },
                ),
            ],
        }],
        ..PLAIN
    },
    // Qwen2Model / Qwen3Model: renames only. Qwen2MoeModel (Qwen3Moe reuses it): mlp.experts.{xid}.* stacked.
    Review {
        arch: "qwen2",
        ..PLAIN
    },
    Review {
        arch: "qwen3",
        ..PLAIN
    },
    Review {
        arch: "qwen2moe",
        splits: &[FUSED_GATE_UP_EXPERTS],
        stacks_experts: true,
        ..PLAIN
    },
    Review {
        arch: "qwen3moe",
        splits: &[FUSED_GATE_UP_EXPERTS],
        stacks_experts: true,
        ..PLAIN
    },
    // Qwen3_5TextModel / Qwen3_5MoeTextModel ⊂ _LinearAttentionVReorderBase ⊂ Qwen3NextModel ⊂ Qwen2MoeModel —
    // qwen.py: value-head reorder (above); in_proj_qkvz (Qwen3-Next only) is not in Qwen3.5; fused experts split
    // as Qwen2-MoE (or kept whole with --fuse-gate-up-exps).
    Review {
        arch: "qwen35",
        rows: DELTA_NET_ROWS,
        cols: DELTA_NET_COLS,
        ..PLAIN
    },
    Review {
        arch: "qwen35moe",
        rows: DELTA_NET_ROWS,
        cols: DELTA_NET_COLS,
        splits: &[FUSED_GATE_UP_EXPERTS],
        stacks_experts: true,
        ..PLAIN
    },
    // GemmaModel / Gemma2Model / Gemma3Model: only norms (+1) and Gemma 3's embedding vocabulary cut, which the
    // converter applies to the embedding LoRA itself; Gemma drops lm_head (tied).
    Review {
        arch: "gemma",
        always_tied: true,
        ..PLAIN
    },
    Review {
        arch: "gemma2",
        always_tied: true,
        ..PLAIN
    },
    Review {
        arch: "gemma3",
        always_tied: true,
        ..PLAIN
    },
    // Gemma4Model ⊂ Gemma3Model — gemma.py: embedding vocabulary cut (as Gemma 3), experts kept fused
    // (`experts.gate_up_proj` → ffn_gate_up_exps, gate rows first), the router's per_expert_scale written as
    // ffn_down_exps.scale, which src/models/gemma4.cpp passes to build_moe_ffn as down_exps_s (base only). Its graph
    // applies LoRA to q/k/v/o, the MLP, the router (`router.proj` → ffn_gate_inp, on the same scaled input as
    // PyTorch), the experts and the per-layer input gate/projection; not to per_layer_model_proj (ggml_mul_mat in
    // project_per_layer_inputs).
    Review {
        arch: "gemma4",
        // the gate and up halves of experts.gate_up_proj, as trainers that split it name them (mlx-lm's
        // experts.switch_glu.gate_proj / up_proj): parts of the fused ffn_gate_up_exps
        splits: &[
            Split {
                hf: "model.layers.{bid}.experts.gate_proj",
                parts: &[("blk.{bid}.ffn_gate_exps", RowTransform::Identity)],
            },
            Split {
                hf: "model.layers.{bid}.experts.up_proj",
                parts: &[("blk.{bid}.ffn_up_exps", RowTransform::Identity)],
            },
        ],
        stacks_experts: true,
        base_only_scales: &["blk.{bid}.ffn_down_exps"],
        no_effect: &["per_layer_model_proj"],
        ..PLAIN
    },
    // Phi3MiniModel, Phi2Model, StarCoder2Model, StableLMModel (q/k layernorm stacking only): plain.
    Review {
        arch: "phi3",
        ..PLAIN
    },
    Review {
        arch: "phi2",
        ..PLAIN
    },
    Review {
        arch: "starcoder2",
        ..PLAIN
    },
    Review {
        arch: "stablelm",
        ..PLAIN
    },
    // GPT2Model transposes the Conv1D base weight; PEFT's B·A is already (out, in), so the LoRA needs nothing.
    Review {
        arch: "gpt2",
        ..PLAIN
    },
    // CommandR2Model / Cohere2Model: biases dropped only; output tied (logit scale in the base).
    Review {
        arch: "command-r",
        always_tied: true,
        ..PLAIN
    },
    Review {
        arch: "cohere2",
        always_tied: true,
        ..PLAIN
    },
    // LFM2Model — lfm2.py: only the short convolution's kernel is squeezed; names as mapped. Its graph
    // (src/models/lfm2.cpp) applies LoRA to the conv block's in_proj/out_proj, the attention projections and the
    // FFN (the conv kernel itself goes through ggml_ssm_conv, but PEFT's LoRA for a Conv1d is not a GGUF pair).
    Review {
        arch: "lfm2",
        ..PLAIN
    },
    // Glm4MoeModel — glm.py: mlp.experts.{xid}.* stacked (transformers 5 saves GLM-4.5's experts per expert);
    // q/k not permuted (neox ordering). Its graph (src/models/glm4-moe.cpp) applies LoRA to attention, the dense
    // and shared-expert FFNs, the router and the routed experts. peft 0.21.2 rewrites glm4_moe target_modules onto
    // the fused experts (gate_up_proj with rank and alpha patterns 2r, 2α).
    Review {
        arch: "glm4moe",
        splits: &[FUSED_GATE_UP_EXPERTS],
        stacks_experts: true,
        ..PLAIN
    },
    // GptOssModel — gpt_oss.py: experts stored (E, in, out) and transposed by the converter; PEFT's ParamWrapper
    // honours the experts' `is_transposed` (transformers' gpt_oss), so its factors are already (out, in)-oriented.
    // gate_up_proj's output alternates gate and up (`gate_up[..., ::2]`, `[..., 1::2]`): split even/odd rows. Its
    // graph (src/models/openai-moe.cpp) applies LoRA to q/k/v/o (build_lora_mm), the router and the experts
    // (build_moe_ffn); the attention sinks are not weights a LoRA targets.
    Review {
        arch: "gpt-oss",
        splits: &[Split {
            hf: "model.layers.{bid}.mlp.experts.gate_up_proj",
            parts: &[
                (
                    "blk.{bid}.ffn_gate_exps",
                    RowTransform::Interleaved { index: 0, count: 2 },
                ),
                (
                    "blk.{bid}.ffn_up_exps",
                    RowTransform::Interleaved { index: 1, count: 2 },
                ),
            ],
        }],
        stacks_experts: true,
        ..PLAIN
    },
    // DeepseekV2Model — deepseek.py: kv_b_proj split into per-head k_b (transposed) and v_b; experts stacked.
    // llama.cpp's MLA graph (src/models/deepseek2.cpp) multiplies the attention weights with ggml_mul_mat directly.
    Review {
        arch: "deepseek2",
        splits: &[FUSED_GATE_UP_EXPERTS],
        stacks_experts: true,
        unsupported: &[(
            "blk.{bid}.attn_kv_b",
            "llama.cpp splits kv_b_proj into transposed per-head k_b and v_b, and its MLA attention ignores LoRA on \
             them anyway; retrain without kv_b_proj",
        )],
        no_effect: &[
            "blk.{bid}.attn_q",
            "blk.{bid}.attn_q_a",
            "blk.{bid}.attn_q_b",
            "blk.{bid}.attn_kv_a_mqa",
            "blk.{bid}.attn_k_b",
            "blk.{bid}.attn_v_b",
            "output",
        ],
        ..PLAIN
    },
];

/// The review used for an unreviewed arch whose converter classes only rename (no `modify_tensors`).
pub static REVIEWED_PLAIN: Review = PLAIN;
