use super::*;

fn names(f: &Family, module: &str) -> Vec<(String, RowTransform, Layout)> {
    f.map_module(module)
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.rows, t.layout))
        .collect()
}

fn one(arch: &str, module: &str) -> (String, RowTransform, Layout) {
    let f = by_gguf_arch(arch).unwrap();
    let mut v = names(f, module);
    assert_eq!(v.len(), 1, "{module}");
    v.remove(0)
}

#[test]
fn every_hf_architecture_names_a_known_gguf_arch_once() {
    let mut seen = std::collections::BTreeSet::new();
    for h in HF_ARCHITECTURES {
        assert!(seen.insert(h.hf), "{} listed twice", h.hf);
        assert!(
            ARCHES.iter().any(|a| a.name == h.gguf_arch),
            "{} → unknown arch {}",
            h.hf,
            h.gguf_arch
        );
    }
    assert!(HF_ARCHITECTURES.len() > 200);
}

#[test]
fn required_families_are_supported() {
    for arch in [
        "llama",
        "mistral3",
        "qwen2",
        "qwen2moe",
        "qwen3",
        "qwen3moe",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "phi2",
        "starcoder2",
        "gptneox",
        "falcon",
        "granite",
        "granitemoe",
        "olmo",
        "olmo2",
        "olmoe",
        "command-r",
        "cohere2",
        "internlm2",
        "stablelm",
        "gpt2",
        "deepseek2",
    ] {
        let f = by_gguf_arch(arch).unwrap_or_else(|| panic!("{arch} missing"));
        assert!(f.is_supported(), "{arch}");
    }
    for hf in [
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Gemma3ForConditionalGeneration",
        "RWForCausalLM",
    ] {
        assert!(by_hf_architecture(hf).is_some(), "{hf}");
    }
}

#[test]
fn llama_permutes_q_and_k_only() {
    let rope = |h| RowTransform::LlamaRope(h);
    assert_eq!(
        one("llama", "model.layers.3.self_attn.q_proj"),
        (
            "blk.3.attn_q.weight".into(),
            rope(Heads::Query),
            Layout::Linear
        )
    );
    assert_eq!(
        one("llama", "model.layers.3.self_attn.k_proj").1,
        rope(Heads::KeyValue)
    );
    assert_eq!(
        one("llama", "model.layers.3.self_attn.v_proj").1,
        RowTransform::Identity
    );
    assert_eq!(
        one("llama", "model.layers.0.self_attn.o_proj").0,
        "blk.0.attn_output.weight"
    );
    assert_eq!(
        one("llama", "model.layers.1.mlp.gate_proj").0,
        "blk.1.ffn_gate.weight"
    );
    assert_eq!(
        one("llama", "model.layers.1.mlp.up_proj").0,
        "blk.1.ffn_up.weight"
    );
    assert_eq!(
        one("llama", "model.layers.1.mlp.down_proj").0,
        "blk.1.ffn_down.weight"
    );
    assert_eq!(
        one("llama", "model.embed_tokens"),
        (
            "token_embd.weight".into(),
            RowTransform::Identity,
            Layout::Embedding
        )
    );
    assert_eq!(one("llama", "lm_head").0, "output.weight");
}

#[test]
fn qwen2_does_not_permute() {
    assert_eq!(
        one("qwen2", "model.layers.0.self_attn.q_proj").1,
        RowTransform::Identity
    );
}

#[test]
fn mixtral_experts_stack() {
    assert_eq!(
        one("llama", "model.layers.1.block_sparse_moe.experts.5.w1"),
        (
            "blk.1.ffn_gate_exps.weight".into(),
            RowTransform::Identity,
            Layout::Expert { index: 5 }
        )
    );
    assert_eq!(
        one("llama", "model.layers.1.block_sparse_moe.experts.0.w2").0,
        "blk.1.ffn_down_exps.weight"
    );
    assert_eq!(
        one("llama", "model.layers.1.block_sparse_moe.gate").0,
        "blk.1.ffn_gate_inp.weight"
    );
    assert_eq!(
        one("qwen2moe", "model.layers.0.mlp.experts.3.up_proj").0,
        "blk.0.ffn_up_exps.weight"
    );
    assert_eq!(
        one("qwen2moe", "model.layers.0.mlp.shared_expert.up_proj").0,
        "blk.0.ffn_up_shexp.weight"
    );
    assert_eq!(
        one("qwen2moe", "model.layers.0.mlp.shared_expert_gate").0,
        "blk.0.ffn_gate_inp_shexp.weight"
    );
}

#[test]
fn fused_families() {
    assert_eq!(
        one("phi3", "model.layers.0.self_attn.qkv_proj").0,
        "blk.0.attn_qkv.weight"
    );
    assert_eq!(
        one("phi3", "model.layers.0.mlp.gate_up_proj").0,
        "blk.0.ffn_up.weight"
    );
    assert_eq!(
        one("gptneox", "gpt_neox.layers.1.attention.query_key_value"),
        (
            "blk.1.attn_qkv.weight".into(),
            RowTransform::NeoxQkv,
            Layout::Linear
        )
    );
    assert_eq!(
        one("falcon", "transformer.h.0.self_attention.query_key_value").1,
        RowTransform::FalconQkv
    );
    assert_eq!(
        one("gpt2", "transformer.h.0.attn.c_attn"),
        (
            "blk.0.attn_qkv.weight".into(),
            RowTransform::Identity,
            Layout::Linear
        )
    );
    assert_eq!(
        one("gpt2", "transformer.h.0.mlp.c_fc").0,
        "blk.0.ffn_up.weight"
    );
    let f = by_gguf_arch("internlm2").unwrap();
    let parts: Vec<String> = names(f, "model.layers.2.attention.wqkv")
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(
        parts,
        [
            "blk.2.attn_q.weight",
            "blk.2.attn_k.weight",
            "blk.2.attn_v.weight"
        ]
    );
    let f = by_gguf_arch("granitemoe").unwrap();
    let parts: Vec<String> = names(f, "model.layers.0.shared_mlp.input_linear")
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(
        parts,
        ["blk.0.ffn_gate_shexp.weight", "blk.0.ffn_up_shexp.weight"]
    );
}

#[test]
fn multimodal_prefixes_are_stripped_and_towers_refused() {
    assert_eq!(
        one("gemma3", "model.language_model.layers.0.self_attn.q_proj").0,
        "blk.0.attn_q.weight"
    );
    let f = by_gguf_arch("gemma3").unwrap();
    let e = f
        .map_module("model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj")
        .unwrap_err();
    assert!(matches!(e, MapError::NotText { .. }), "{e}");
}

#[test]
fn unmapped_lists_examples() {
    let f = by_gguf_arch("llama").unwrap();
    let e = f
        .map_module("model.layers.0.self_attn.rotary_emb")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("`model.layers.{bid}.self_attn.q_proj`"),
        "{e}"
    );
}

#[test]
fn deepseek_kv_b_refused_and_mla_marked_no_effect() {
    let f = by_gguf_arch("deepseek2").unwrap();
    let e = f
        .map_module("model.layers.0.self_attn.kv_b_proj")
        .unwrap_err();
    assert!(matches!(e, MapError::Unsupported { .. }), "{e}");
    assert!(f.no_effect("blk.4.attn_q_a.weight"));
    assert!(!f.no_effect("blk.4.attn_output.weight"));
}

#[test]
fn geometry_reads_nested_text_config_and_falcon_kv_default() {
    let g = geometry::from_json(
        r#"{"architectures":["Gemma3ForConditionalGeneration"],"text_config":{"hidden_size":640,
            "num_attention_heads":4,"num_key_value_heads":1,"vocab_size":262144,"num_hidden_layers":18},
            "tie_word_embeddings":true,"quantization_config":{"quant_method":"bitsandbytes","load_in_4bit":true}}"#,
        Path::new("config.json"),
    )
    .unwrap();
    assert_eq!(g.gguf_arch.as_deref(), Some("gemma3"));
    assert_eq!(
        (g.n_head, g.n_head_kv, g.n_vocab, g.tie_word_embeddings),
        (Some(4), Some(1), Some(262144), Some(true))
    );
    let g = geometry::from_json(
        r#"{"architectures":["FalconForCausalLM"],"num_attention_heads":8,"hidden_size":64}"#,
        Path::new("config.json"),
    )
    .unwrap();
    assert_eq!(g.n_head_kv, Some(1));
}

use std::path::Path;

/// Qwen3.5's converter reorders the Gated DeltaNet value heads: rows of in_proj_qkv (value part), in_proj_z,
/// in_proj_a/b, columns of out_proj; full attention and MLP are plain.
#[test]
fn qwen35_delta_net_projections_reorder_value_heads() {
    let f = by_gguf_arch("qwen35").unwrap();
    let one = |m: &str| {
        let mut t = f.map_module(m).unwrap();
        assert_eq!(t.len(), 1, "{m}");
        let t = t.remove(0);
        (t.name, t.rows, t.cols)
    };
    let v = |p| RowTransform::DeltaNetValueHeads(p);
    let id = RowTransform::Identity;
    let cases = [
        (
            "linear_attn.in_proj_qkv",
            "attn_qkv",
            v(DeltaNetPart::Qkv),
            id,
        ),
        (
            "linear_attn.in_proj_z",
            "attn_gate",
            v(DeltaNetPart::ValueHeads),
            id,
        ),
        (
            "linear_attn.in_proj_a",
            "ssm_alpha",
            v(DeltaNetPart::PerHead),
            id,
        ),
        (
            "linear_attn.in_proj_b",
            "ssm_beta",
            v(DeltaNetPart::PerHead),
            id,
        ),
        (
            "linear_attn.out_proj",
            "ssm_out",
            id,
            v(DeltaNetPart::ValueHeads),
        ),
        ("self_attn.q_proj", "attn_q", id, id),
        ("mlp.down_proj", "ffn_down", id, id),
    ];
    for (module, gguf, rows, cols) in cases {
        assert_eq!(
            one(&format!("model.layers.0.{module}")),
            (format!("blk.0.{gguf}.weight"), rows, cols),
            "{module}"
        );
    }
}

/// A base converted with --fuse-gate-up-exps has one `ffn_gate_up_exps` per layer: the gate|up split of a fused
/// expert parameter becomes that one target (rows as stored), only when the base has it and not the split parts.
#[test]
fn gate_up_parts_fuse_only_when_the_base_has_the_fused_tensor() {
    let f = by_gguf_arch("qwen35moe").unwrap();
    let split = f
        .map_parameter("model.layers.1.mlp.experts", "gate_up_proj")
        .unwrap();
    assert_eq!(split.len(), 2);
    let fused_base = |n: &str| Some(n == "blk.1.ffn_gate_up_exps.weight");
    let fused = fused_for_base(split.clone(), fused_base);
    assert_eq!(fused.len(), 1);
    assert_eq!(fused[0].name, "blk.1.ffn_gate_up_exps.weight");
    assert_eq!(fused[0].rows, RowTransform::Identity);
    assert_eq!(fused[0].layout, Layout::Experts);
    // a split base, or one whose tensors are unknown, keeps the split
    assert_eq!(fused_for_base(split.clone(), |_| Some(false)), split);
    assert_eq!(fused_for_base(split.clone(), |_| None), split);
    // gpt-oss's interleaved gate/up: the fused tensor has the gate rows (even) first, then the up rows (odd)
    let interleaved: Vec<Target> = split
        .iter()
        .enumerate()
        .map(|(i, t)| Target {
            rows: RowTransform::Interleaved {
                index: i as u8,
                count: 2,
            },
            ..t.clone()
        })
        .collect();
    assert_eq!(
        fused_for_base(interleaved, fused_base)[0].rows,
        RowTransform::Deinterleaved { count: 2 }
    );
}
