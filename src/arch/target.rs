//! The contract between the family tables (which GGUF tensor a module becomes, and what llama.cpp's converter does
//! to that weight) and the converter (which applies those operations to the LoRA factors).
//!
//! Factor algebra: ΔW = B·A. An operation on W's rows (output dim) is the same operation on B's rows; an operation
//! on W's columns (input dim) is the same operation on A's columns. Every variant here is one of those.

/// Which head count a rotary permutation uses (llama.cpp `LlamaModel.permute`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Heads {
    /// `num_attention_heads` (q_proj).
    Query,
    /// `num_key_value_heads` (k_proj); falls back to the query head count when the config has none.
    KeyValue,
}

/// One of the three parts of a fused query/key/value projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QkvPart {
    /// The query rows.
    Q,
    /// The key rows.
    K,
    /// The value rows.
    V,
}

/// Which projection of a Gated DeltaNet (linear attention) layer a value-head reorder applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeltaNetPart {
    /// `in_proj_qkv`: the query and key rows stay, the value rows (after them) are reordered.
    Qkv,
    /// `in_proj_z` rows, `out_proj` columns: one block of `head_v_dim` per value head.
    ValueHeads,
    /// `in_proj_a` / `in_proj_b`: one row per value head.
    PerHead,
}

/// What llama.cpp's converter does to the rows (output dimension) of the base weight; applied to B's rows. The
/// same gathers describe a transform of the input dimension, applied to A's columns ([`Target::cols`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowTransform {
    /// Rows kept as they are.
    Identity,
    /// `LlamaModel.permute`: per head, rotary pairs (2i, 2i+1) ← (i, i + hd/2).
    LlamaRope(Heads),
    /// GPT-NeoX `query_key_value`: per-head interleaved [h][q,k,v][hd] → [q all][k all][v all].
    NeoxQkv,
    /// Falcon `query_key_value`: kv groups of (q per group…, k, v) → [q all][k all][v all].
    FalconQkv,
    /// InternLM2 `wqkv`: kv groups of (q per group…, k, v); keep one part, then optionally the llama permutation.
    InternLm2Qkv {
        /// Which part of the fused projection this target keeps.
        part: QkvPart,
        /// Whether llama.cpp permutes this part for rotary embeddings (q and k: yes).
        rope: bool,
    },
    /// Keep the `index`-th of `count` equal row blocks (fused gate|up split into two targets).
    Chunk {
        /// Zero-based block index.
        index: u8,
        /// Number of equal blocks the rows are split into.
        count: u8,
    },
    /// Keep every `count`-th row starting at `index` (gpt-oss `gate_up_proj`: gate rows even, up rows odd).
    Interleaved {
        /// Zero-based offset.
        index: u8,
        /// Stride.
        count: u8,
    },
    /// All rows, de-interleaved: rows `index, index + count, …` for each index in turn (gpt-oss `gate_up_proj` on
    /// a base whose gate and up experts are fused back into one `ffn_gate_up_exps`, gate rows first).
    Deinterleaved {
        /// Stride.
        count: u8,
    },
    /// Qwen3.5 / Qwen3-Next linear attention (`_LinearAttentionVReorderBase._reorder_v_heads`): with fewer key
    /// heads than value heads, the value heads grouped by key head [k0: v0..v(g-1), k1: …] are reordered to the
    /// tiled order ggml broadcasts [v0 of k0, v0 of k1, …, v1 of k0, …].
    DeltaNetValueHeads(DeltaNetPart),
}

/// How the pair is laid out in the GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// A linear weight: `lora_a` = A (ne [in, r]), `lora_b` = B (ne [r, out]).
    Linear,
    /// The token embedding: PEFT stores A (r, V) and B (H, r); GGUF `lora_a` = Aᵀ (ne [r, V]), `lora_b` = B.
    /// When the base vocabulary is smaller than A's (Gemma 3 pads its config vocab), A's extra columns are dropped.
    Embedding,
    /// One expert of a stacked `*_exps` tensor: `lora_a` ne [in, r, E], `lora_b` ne [r, out, E].
    Expert {
        /// The expert's index within the stack.
        index: u32,
    },
    /// A whole stacked `*_exps` tensor from one pair that holds every expert (a transformers-5 fused 3-D expert
    /// parameter targeted with `target_parameters`); same GGUF layout as `Expert`.
    ///
    /// llama.cpp (src/llama-graph.cpp `build_lora_mm_id`): `mul_mat_id(b, mul_mat_id(a, x, ids), ids)` scaled by
    /// α / b.ne[0], so one rank per stack and expert e's factors are slice e of ne[2]; the loader
    /// (src/llama-adapter.cpp) checks only ne[0] and ne[1], never the expert count, which is why we do. The router
    /// (`ffn_gate_inp`, `build_moe_ffn` → `build_lora_mm`) and Qwen2-MoE's shared expert and its gate
    /// (src/models/qwen2moe.cpp) apply LoRA too.
    Experts,
}

/// One GGUF base tensor that a PEFT module's LoRA pair contributes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Full GGUF base tensor name, with `.weight`: `blk.3.attn_q.weight`, `token_embd.weight`.
    pub name: String,
    /// Transformer block index, when the tensor belongs to a block.
    pub block: Option<u32>,
    /// What happens to B's rows on the way.
    pub rows: RowTransform,
    /// What happens to A's columns on the way (the converter reorders the base weight's input dimension).
    pub cols: RowTransform,
    /// PEFT's factors hold ΔWᵀ: a fused expert parameter stored (E, in, out) without transformers'
    /// `is_transposed` (Llama 4), for which peft's ParamWrapper swaps in and out (lora_A (E·r, out), lora_B
    /// (in, E·r)); expert e's GGUF pair is then lora_a = B_eᵀ, lora_b = A_eᵀ.
    pub transposed: bool,
    /// Plain, embedding, or one expert of a stack.
    pub layout: Layout,
}
