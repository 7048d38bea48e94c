//! `lora-convert` at real scale, on adapters synthesized at test time (the benchmark's generator; nothing is
//! committed): the thread count never changes a byte of the output, and files beyond 4 GiB — sparse, so a few KiB
//! on disk — are read at their true 64-bit offsets, the base GGUF's header as much as the adapter's tensors.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crate::common::*;
use lora_gguf::arch::{Heads, RowTransform};
use lora_gguf::convert::factor::{HeadCounts, row_sources};
use lora_gguf::gguf::GgufFile;
use safetensors::Dtype;

#[allow(dead_code)] // the benchmark uses more of it than these tests
#[path = "../benches/convert/synth.rs"]
mod synth;

use synth::Geometry;

fn convert(adapter: &Path, base: &Path, outtype: &str, threads: usize, out: &Path, verify: bool) {
    let mut cmd = lora_convert();
    cmd.arg(adapter)
        .arg("-o")
        .arg(out)
        .arg("--base")
        .arg(base)
        .args([
            "--outtype",
            outtype,
            "--threads",
            &threads.to_string(),
            "--force",
        ]);
    if verify {
        cmd.arg("--verify");
    }
    cmd.assert().success();
}

/// Layer 0 of Llama-3-8B at r = 64: factors of up to 917 504 values, so every tensor splits into several parallel
/// chunks (rotary-permuted q/k rows too), with a per-module α on q_proj so that its B carries a folded factor;
/// converted against a Q4_K_M-shaped base of the full model (a 4.8 GiB sparse file).
#[test]
fn one_and_two_threads_write_identical_bytes_for_every_outtype() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.gguf");
    let base_len = synth::write_base_gguf(&base, &Geometry::LLAMA3_8B_R64).unwrap();
    assert!(base_len > 4 << 30, "{base_len}");
    let one_layer = Geometry {
        layers: 1,
        ..Geometry::LLAMA3_8B_R64
    };
    for (name, dtype) in [("f32", Dtype::F32), ("bf16", Dtype::BF16)] {
        let adapter = dir.path().join(format!("adapter-{name}"));
        synth::write_adapter(&adapter, &one_layer, dtype).unwrap();
        let config_path = adapter.join("adapter_config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        config["alpha_pattern"] = serde_json::json!({"q_proj": 96});
        std::fs::write(&config_path, config.to_string()).unwrap();
        for outtype in ["f32", "f16", "bf16", "q8_0"] {
            let one = dir.path().join(format!("{name}-{outtype}-1.gguf"));
            let two = dir.path().join(format!("{name}-{outtype}-2.gguf"));
            convert(&adapter, &base, outtype, 1, &one, false);
            convert(&adapter, &base, outtype, 2, &two, true);
            let (a, b) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
            assert!(a == b, "{name} → {outtype}: 1 and 2 threads differ");
            let file = GgufFile::open(&one).unwrap();
            assert_eq!(file.tensors.len(), 14, "{name} → {outtype}");
            std::fs::remove_file(&one).unwrap();
            std::fs::remove_file(&two).unwrap();
        }
    }
}

/// A safetensors file whose LoRA tensors start past 4 GiB: a 4 GiB `base_layer` copy (which PEFT saves next to
/// some LoRAs and the converter ignores) comes first, as a hole. The converted A must be the bytes written at
/// that offset, the B their rotary-permuted rows.
#[test]
fn adapter_tensors_beyond_4_gib_are_read_at_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::LLAMA3_8B_R64;
    let base = dir.path().join("base.gguf");
    synth::write_base_gguf(&base, &g).unwrap();

    let (r, h) = (16usize, g.hidden);
    let big_rows = (1usize << 32) / 4 / h; // 4 GiB of f32
    let a: Vec<f32> = (0..r * h).map(|i| (i as f32 * 0.37).sin() * 0.02).collect();
    let b: Vec<f32> = (0..h * r).map(|i| (i as f32 * 0.11).cos() * 0.01).collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (a_bytes, b_bytes) = (bytes(&a), bytes(&b));
    let big = (big_rows * h * 4) as u64;
    let a_at = big;
    let b_at = a_at + a_bytes.len() as u64;
    let end = b_at + b_bytes.len() as u64;
    let stem = "base_model.model.model.layers.0.self_attn.q_proj";
    let header = serde_json::json!({
        "__metadata__": {"format": "pt"},
        "base_model.model.model.embed_tokens.base_layer.weight":
            {"dtype": "F32", "shape": [big_rows, h], "data_offsets": [0, big]},
        format!("{stem}.lora_A.weight"): {"dtype": "F32", "shape": [r, h], "data_offsets": [a_at, b_at]},
        format!("{stem}.lora_B.weight"): {"dtype": "F32", "shape": [h, r], "data_offsets": [b_at, end]},
    })
    .to_string();
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    let data_start = 8 + header.len() as u64;
    let mut st = std::fs::File::create(adapter.join("adapter_model.safetensors")).unwrap();
    st.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    st.write_all(&header).unwrap();
    st.seek(SeekFrom::Start(data_start + a_at)).unwrap();
    st.write_all(&a_bytes).unwrap();
    st.write_all(&b_bytes).unwrap();
    drop(st);
    let config = serde_json::json!({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj"],
        "bias": "none", "use_dora": false, "use_rslora": false, "fan_in_fan_out": false,
        "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B", "init_lora_weights": true,
    });
    std::fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
    assert!(
        std::fs::metadata(adapter.join("adapter_model.safetensors"))
            .unwrap()
            .len()
            > 4 << 30
    );

    let out = dir.path().join("out.gguf");
    convert(&adapter, &base, "f32", 2, &out, true);
    let file = GgufFile::open(&out).unwrap();
    assert_eq!(
        file.read_tensor_bytes("blk.0.attn_q.weight.lora_a")
            .unwrap(),
        a_bytes
    );
    let rows = row_sources(
        RowTransform::LlamaRope(Heads::Query),
        h,
        HeadCounts::new(g.n_head as u32, g.n_head_kv as u32),
    )
    .unwrap();
    let permuted: Vec<u8> = rows
        .iter()
        .flat_map(|&row| b_bytes[row * r * 4..(row + 1) * r * 4].to_vec())
        .collect();
    assert_eq!(
        file.read_tensor_bytes("blk.0.attn_q.weight.lora_b")
            .unwrap(),
        permuted
    );
}
