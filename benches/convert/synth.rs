//! Synthetic but well-formed inputs of real shapes: a PEFT LoRA adapter on the Llama-3-8B geometry (every
//! `lora_A`/`lora_B` of the seven linear projections, written by the `safetensors` crate exactly as PEFT's
//! `save_pretrained` lays it out), the base's Hugging Face `config.json`, and a base GGUF whose header lists every
//! tensor of a Q4_K_M Llama-3-8B. The GGUF's data section is a hole (a sparse file: ~4.6 GiB long, a few KiB on
//! disk), so the reader's bounds checks run against a file of the real size.
//!
//! Values are deterministic (splitmix64 seeded by the tensor name) and spread like a trained adapter's: A as PEFT's
//! Kaiming-uniform init, B small and non-zero.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use lora_gguf::gguf::{GgmlType, TensorSpec, Value, Writer, write::Layout};
use safetensors::{Dtype, View};

/// The model geometry the adapter is shaped for.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub hidden: usize,
    pub layers: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rank: usize,
}

impl Geometry {
    /// Meta-Llama-3-8B (`config.json` of the HF release), LoRA r = 64.
    pub const LLAMA3_8B_R64: Geometry = Geometry {
        hidden: 4096,
        layers: 32,
        n_head: 32,
        n_head_kv: 8,
        ffn: 14336,
        vocab: 128256,
        rank: 64,
    };

    fn head_dim(&self) -> usize {
        self.hidden / self.n_head
    }

    /// The seven adapted projections of one layer: (module suffix, in features, out features).
    pub fn projections(&self) -> [(&'static str, usize, usize); 7] {
        let (h, kv, f) = (self.hidden, self.n_head_kv * self.head_dim(), self.ffn);
        [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", h, kv),
            ("self_attn.v_proj", h, kv),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", h, f),
            ("mlp.up_proj", h, f),
            ("mlp.down_proj", f, h),
        ]
    }

    /// Elements of all LoRA factors.
    pub fn adapter_elements(&self) -> u64 {
        let per_layer: usize = self
            .projections()
            .iter()
            .map(|(_, i, o)| self.rank * (i + o))
            .sum();
        (per_layer * self.layers) as u64
    }
}

/// One lazily generated factor: its bytes exist only while the safetensors writer copies them out.
struct Factor {
    dtype: Dtype,
    shape: Vec<usize>,
    seed: u64,
    bound: f32,
}

impl View for Factor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n: usize = self.shape.iter().product();
        let mut rng = SplitMix(self.seed);
        let mut out = Vec::with_capacity(self.data_len());
        for _ in 0..n {
            // 24 random bits → uniform in [-bound, bound).
            let u = (rng.next() >> 40) as f32 / (1u64 << 24) as f32;
            let x = (2.0 * u - 1.0) * self.bound;
            match self.dtype {
                Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
                _ => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// FNV-1a: a stable per-tensor seed.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Write `adapter_config.json` and `adapter_model.safetensors` into `dir`; returns the safetensors size.
pub fn write_adapter(dir: &Path, g: &Geometry, dtype: Dtype) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut factors = Vec::new();
    for layer in 0..g.layers {
        for (module, inp, out) in g.projections() {
            let stem = format!("base_model.model.model.layers.{layer}.{module}");
            let a = format!("{stem}.lora_A.weight");
            let b = format!("{stem}.lora_B.weight");
            factors.push((
                a.clone(),
                Factor {
                    dtype,
                    shape: vec![g.rank, inp],
                    seed: seed_of(&a),
                    bound: 1.0 / (inp as f32).sqrt(),
                },
            ));
            factors.push((
                b.clone(),
                Factor {
                    dtype,
                    shape: vec![out, g.rank],
                    seed: seed_of(&b),
                    bound: 0.01,
                },
            ));
        }
    }
    let st = dir.join("adapter_model.safetensors");
    let info = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(factors, Some(info), &st).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("adapter_config.json"), adapter_config(g))?;
    Ok(std::fs::metadata(&st)?.len())
}

/// What peft 0.21.2 writes for `LoraConfig(r=64, lora_alpha=128, target_modules=[the seven projections])`.
fn adapter_config(g: &Geometry) -> String {
    let config = serde_json::json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B",
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": 2 * g.rank,
        "lora_bias": false,
        "lora_dropout": 0.05,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": g.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_dora": false,
        "use_rslora": false
    });
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

/// The base's Hugging Face `config.json` (Meta-Llama-3-8B's, with this geometry) in `dir`.
pub fn write_hf_config(dir: &Path, g: &Geometry) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "hidden_act": "silu",
        "hidden_size": g.hidden,
        "initializer_range": 0.02,
        "intermediate_size": g.ffn,
        "max_position_embeddings": 8192,
        "model_type": "llama",
        "num_attention_heads": g.n_head,
        "num_hidden_layers": g.layers,
        "num_key_value_heads": g.n_head_kv,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": null,
        "rope_theta": 500000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "use_cache": true,
        "vocab_size": g.vocab
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap_or_default(),
    )
}

/// A Q4_K_M-typed Llama base GGUF: the full header, then a hole up to the size the header promises.
/// Returns the file's length.
pub fn write_base_gguf(path: &Path, g: &Geometry) -> Result<u64, lora_gguf::gguf::Error> {
    let u32v = |x: usize| Value::U32(x as u32);
    let kv = |k: &str, v: Value| (k.to_string(), v);
    let metadata = vec![
        kv("general.architecture", Value::String("llama".into())),
        kv("general.type", Value::String("model".into())),
        kv("general.name", Value::String("Synthetic Llama 3 8B".into())),
        kv("llama.block_count", u32v(g.layers)),
        kv("llama.context_length", u32v(8192)),
        kv("llama.embedding_length", u32v(g.hidden)),
        kv("llama.feed_forward_length", u32v(g.ffn)),
        kv("llama.attention.head_count", u32v(g.n_head)),
        kv("llama.attention.head_count_kv", u32v(g.n_head_kv)),
        kv("llama.rope.freq_base", Value::F32(500000.0)),
        kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        kv("general.file_type", Value::U32(15)),
        kv("llama.vocab_size", u32v(g.vocab)),
        kv("llama.rope.dimension_count", u32v(g.head_dim())),
        kv("general.quantization_version", Value::U32(2)),
    ];
    let t = |name: String, dims: &[usize], ty| {
        TensorSpec::new(name, dims.iter().map(|&d| d as u64).collect(), ty)
    };
    let (h, kvd, f) = (g.hidden, g.n_head_kv * g.head_dim(), g.ffn);
    let mut specs = vec![
        t("token_embd.weight".into(), &[h, g.vocab], GgmlType::Q4_K),
        t("output_norm.weight".into(), &[h], GgmlType::F32),
        t("output.weight".into(), &[h, g.vocab], GgmlType::Q6_K),
    ];
    for i in 0..g.layers {
        let b = |s: &str| format!("blk.{i}.{s}.weight");
        specs.extend([
            t(b("attn_norm"), &[h], GgmlType::F32),
            t(b("attn_q"), &[h, h], GgmlType::Q4_K),
            t(b("attn_k"), &[h, kvd], GgmlType::Q4_K),
            t(b("attn_v"), &[h, kvd], GgmlType::Q6_K),
            t(b("attn_output"), &[h, h], GgmlType::Q4_K),
            t(b("ffn_norm"), &[h], GgmlType::F32),
            t(b("ffn_gate"), &[h, f], GgmlType::Q4_K),
            t(b("ffn_up"), &[h, f], GgmlType::Q4_K),
            t(b("ffn_down"), &[f, h], GgmlType::Q6_K),
        ]);
    }
    let len = Layout::of(&metadata, &specs)?.file_len();
    let write_err = |source| lora_gguf::gguf::Error::Write {
        what: "synthetic base".into(),
        source,
    };
    let mut file = File::create(path).map_err(write_err)?;
    // Only the header and its padding are written; the tensor data is a hole.
    drop(Writer::new(&mut file, &metadata, &specs)?);
    file.set_len(len).map_err(write_err)?;
    Ok(len)
}
