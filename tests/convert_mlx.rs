//! mlx-lm adapters (`mlx_lm lora` output) converted directly: detected from the files, factors transposed to the
//! layout llama.cpp reads, `scale` carried exactly, and everything mlx-lm writes that a GGUF LoRA cannot express
//! refused with the key or tensor named, exit status 2 and nothing written. (Logits against mlx-lm itself:
//! tests/convert_logits.rs.)

use std::path::{Path, PathBuf};

use crate::common::*;
use lora_gguf::gguf::GgufFile;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// Run `lora-convert ADAPTER -o OUT --base BASE --verify`.
fn convert_dir(adapter: &Path, base: &str, out: &Path) -> assert_cmd::assert::Assert {
    convert_on(adapter, out, base).arg("--verify").assert()
}

/// Copy an mlx fixture into `dir/name`, editing its adapter_config.json and its tensors (`edit_tensors` gets every
/// (key, dtype, shape, bytes) and may change, drop or add entries).
fn mlx_copy(
    case: &str,
    dir: &Path,
    name: &str,
    edit_config: impl FnOnce(&mut serde_json::Value),
    edit_tensors: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(case_dir(case).join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    edit_config(&mut cfg);
    std::fs::write(
        out.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(case_dir(case).join("adapters.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit_tensors(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        out.join("adapters.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    out
}

/// The converter refuses `adapter` with exit status 2, a message containing every `want`, and no file left.
fn assert_refused(adapter: &Path, base: &str, want: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let a = convert_dir(adapter, base, &out).code(2);
    let stderr = stderr_of(&a);
    assert!(stderr.starts_with("error: "), "{stderr}");
    for w in want {
        assert!(stderr.contains(w), "expected `{w}` in: {stderr}");
    }
    assert!(!out.exists(), "output left behind");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn stored(case: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    read_tensor(&case_dir(case).join("adapters.safetensors"), key)
}

#[test]
fn mlx_adapter_is_detected_and_scale_becomes_alpha_times_rank() {
    // llama.cpp multiplies by user_scale · α / rank: α = scale · r gives mlx-lm's scale at 1.0 and half at 0.5.
    let dir = tempfile::tempdir().unwrap();
    for (case, alpha, line) in [
        (
            "mlx-llama",
            160.0,
            "scaling   mlx-lm scale = 20 ×14; adapter.lora.alpha = 160",
        ),
        (
            "mlx-llama-keys",
            30.0,
            "scaling   mlx-lm scale = 7.5 ×5; adapter.lora.alpha = 30",
        ),
    ] {
        let out = dir.path().join(format!("{case}.gguf"));
        let a = convert_dir(&case_dir(case), "llama", &out).success();
        let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
        assert!(stdout.contains(line), "{stdout}");
        assert!(
            stdout.contains("every ΔW equals mlx-lm's exactly"),
            "{stdout}"
        );
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.get_f64("adapter.lora.alpha"), Some(alpha), "{case}");
        assert_eq!(f.architecture(), Some("llama"));
    }
}

#[test]
fn factors_are_transposed_into_the_layout_llama_cpp_reads() {
    // mlx-lm: lora_a (in, r), lora_b (r, out). GGUF lora_a ne [in, r] holds Aᵀ-of-mlx = PEFT's A (r rows of in),
    // lora_b ne [r, out] holds PEFT's B (out rows of r): element (k, j) of lora_a is mlx lora_a[j][k].
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    convert_dir(&case_dir("mlx-llama"), "llama", &out).success();
    let f = GgufFile::open(&out).unwrap();
    let key = "model.layers.0.self_attn.v_proj";
    let (a_shape, a) = stored("mlx-llama", &format!("{key}.lora_a"));
    let (b_shape, b) = stored("mlx-llama", &format!("{key}.lora_b"));
    assert_eq!(
        (a_shape.clone(), b_shape.clone()),
        (vec![64, 8], vec![8, 32])
    );
    let (inp, r, out_f) = (a_shape[0], a_shape[1], b_shape[1]);
    let ga = f.tensor("blk.0.attn_v.weight.lora_a").unwrap();
    let gb = f.tensor("blk.0.attn_v.weight.lora_b").unwrap();
    assert_eq!(ga.dims, vec![inp as u64, r as u64]);
    assert_eq!(gb.dims, vec![r as u64, out_f as u64]);
    let ga = f32s(&f.read_tensor_bytes("blk.0.attn_v.weight.lora_a").unwrap());
    let gb = f32s(&f.read_tensor_bytes("blk.0.attn_v.weight.lora_b").unwrap());
    for k in 0..r {
        for j in 0..inp {
            assert_eq!(ga[k * inp + j], a[j * r + k]);
        }
        for i in 0..out_f {
            assert_eq!(gb[i * r + k], b[k * out_f + i]);
        }
    }
    // The embedding: mlx lora_a (vocab, r) → GGUF lora_a ne [r, vocab] is mlx's lora_a as stored.
    let out = dir.path().join("keys.gguf");
    convert_dir(&case_dir("mlx-llama-keys"), "llama", &out).success();
    let f = GgufFile::open(&out).unwrap();
    let (shape, e) = stored("mlx-llama-keys", "model.embed_tokens.lora_a");
    assert_eq!(shape, vec![272, 4]);
    assert_eq!(
        f.tensor("token_embd.weight.lora_a").unwrap().dims,
        vec![4, 272]
    );
    assert_eq!(
        f32s(&f.read_tensor_bytes("token_embd.weight.lora_a").unwrap()),
        e
    );
}

#[test]
fn dora_and_full_fine_tunes_written_by_mlx_lm_are_refused() {
    assert_refused(
        &case_dir("mlx-dora"),
        "llama",
        &[
            "adapter_config.json`: `fine_tune_type` is `dora`: DoRA",
            "— merge it into the base model instead: `lora-convert merge --base BASE.gguf --adapter DIR -o \
             MERGED.gguf`",
        ],
    );
    assert_refused(
        &case_dir("mlx-full"),
        "llama",
        &["`fine_tune_type` is `full`: adapters.safetensors holds the full weights"],
    );
    // The same files with the configuration claiming `lora`: the tensors themselves are refused.
    let dir = tempfile::tempdir().unwrap();
    let lora = |c: &mut serde_json::Value| {
        c["fine_tune_type"] = "lora".into();
        c["lora_parameters"] = serde_json::json!({"rank": 8, "scale": 20.0, "dropout": 0.0});
    };
    let dora = mlx_copy("mlx-dora", dir.path(), "dora", lora, |_| {});
    assert_refused(
        &dora,
        "llama",
        &["tensor `model.layers.1.mlp.down_proj.m` is a DoRA magnitude vector"],
    );
    let full = mlx_copy("mlx-full", dir.path(), "full", lora, |_| {});
    assert_refused(
        &full,
        "llama",
        &["tensor `model.layers.1.input_layernorm.weight` is a full weight, not a LoRA factor"],
    );
}

#[test]
fn odd_configurations_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let case = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        mlx_copy("mlx-llama", dir.path(), name, edit, |_| {})
    };
    assert_refused(
        &case("unknown", &|c| c["fine_tune_type"] = "qlora".into()),
        "llama",
        &["`fine_tune_type` is `qlora`, which mlx-lm does not define"],
    );
    assert_refused(
        &case("no-params", &|c| {
            c.as_object_mut().unwrap().remove("lora_parameters");
        }),
        "llama",
        &["`lora_parameters`: missing"],
    );
    assert_refused(
        &case("alpha", &|c| {
            c["lora_parameters"] = serde_json::json!({"rank": 8, "alpha": 16, "dropout": 0.0})
        }),
        "llama",
        &["`lora_parameters.scale`: missing", "found `alpha` instead"],
    );
    assert_refused(
        &case("rank", &|c| c["lora_parameters"]["rank"] = 4.into()),
        "llama",
        &[
            "module `model.layers.0.mlp.down_proj`: the tensors have rank 8 but adapter_config.json gives \
           lora_parameters.rank = 4",
        ],
    );
    // mlx-lm's load_adapters would refuse these files too: the tensors are where the configuration adapts nothing.
    assert_refused(
        &case("num-layers", &|c| c["num_layers"] = 1.into()),
        "llama",
        &[
            "module `model.layers.0.",
            "`num_layers` is 1 and the file has LoRA factors in 2 blocks",
        ],
    );
    assert_refused(
        &mlx_copy(
            "mlx-llama-keys",
            dir.path(),
            "keys",
            |c| c["lora_parameters"]["keys"] = serde_json::json!(["self_attn.q_proj"]),
            |_| {},
        ),
        "llama",
        &[
            "module `lm_head` has LoRA factors, but `lora_parameters.keys` (`self_attn.q_proj`) does not name it",
        ],
    );
}

#[test]
fn broken_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let nan = mlx_copy(
        "mlx-llama",
        dir.path(),
        "nan",
        |_| {},
        |t| {
            let (_, _, _, bytes) = t
                .iter_mut()
                .find(|t| t.0 == "model.layers.1.self_attn.k_proj.lora_b")
                .unwrap();
            bytes[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
        },
    );
    assert_refused(
        &nan,
        "llama",
        &["tensor `model.layers.1.self_attn.k_proj.lora_b` contains NaN at element 3"],
    );
    let half = mlx_copy(
        "mlx-llama",
        dir.path(),
        "half",
        |_| {},
        |t| t.retain(|t| t.0 != "model.layers.0.self_attn.o_proj.lora_b"),
    );
    assert_refused(
        &half,
        "llama",
        &["module `model.layers.0.self_attn.o_proj` has lora_a but no lora_b"],
    );
    let truncated = mlx_copy("mlx-llama", dir.path(), "truncated", |_| {}, |_| {});
    let st = truncated.join("adapters.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 100]).unwrap();
    assert_refused(
        &truncated,
        "llama",
        &["adapters.safetensors` is not a valid safetensors file"],
    );
    // SwitchLinear factors whose expert counts disagree, and on a module whose stacking we do not know.
    let experts = mlx_copy(
        "mlx-mixtral",
        dir.path(),
        "experts",
        |_| {},
        |t| {
            let (_, _, shape, bytes) = t
                .iter_mut()
                .find(|t| t.0 == "model.layers.1.block_sparse_moe.switch_mlp.up_proj.lora_b")
                .unwrap();
            shape[0] -= 1;
            bytes.truncate(bytes.len() / 4 * 3);
        },
    );
    assert_refused(
        &experts,
        "mixtral",
        &[
            "module `model.layers.1.block_sparse_moe.switch_mlp.up_proj`: lora_a and lora_b hold different numbers \
           of experts",
        ],
    );
    let unknown = mlx_copy(
        "mlx-llama",
        dir.path(),
        "unknown-experts",
        |_| {},
        |t| {
            let key = "model.layers.1.moe.experts_stack.gate_proj";
            t.push((
                format!("{key}.lora_a"),
                Dtype::F32,
                vec![2, 8, 64],
                vec![0; 2 * 8 * 64 * 4],
            ));
            t.push((
                format!("{key}.lora_b"),
                Dtype::F32,
                vec![2, 128, 8],
                vec![0; 2 * 128 * 8 * 4],
            ));
        },
    );
    assert_refused(
        &unknown,
        "llama",
        &["tensor `model.layers.1.moe.experts_stack.gate_proj.lora_a` is a SwitchLinear"],
    );
}

#[test]
fn switch_linear_factors_are_stacked_as_llama_cpp_reads_them() {
    // mlx-lm's lora_a (E, r, in) and lora_b (E, out, r) are already llama.cpp's `*_exps` layout (ne [in, r, E] and
    // [r, out, E]): with no row transform and f32 output the bytes are mlx-lm's own. switch_mlp.up_proj is `w3`.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let a = convert_dir(&case_dir("mlx-mixtral"), "mixtral", &out).success();
    let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
    assert!(
        stdout.contains("mlx-lm scale = 20 ×16; adapter.lora.alpha = 160"),
        "{stdout}"
    );
    let f = GgufFile::open(&out).unwrap();
    let key = "model.layers.1.block_sparse_moe.switch_mlp.up_proj";
    for (half, dims) in [("a", vec![32u64, 8, 4]), ("b", vec![8, 24, 4])] {
        let name = format!("blk.1.ffn_up_exps.weight.lora_{half}");
        assert_eq!(f.tensor(&name).unwrap().dims, dims, "{name}");
        let (_, stored) = stored("mlx-mixtral", &format!("{key}.lora_{half}"));
        assert_eq!(f32s(&f.read_tensor_bytes(&name).unwrap()), stored, "{name}");
    }
    // The router mlx-lm adapts by default is a plain Linear: ffn_gate_inp.
    assert_eq!(
        f.tensor("blk.0.ffn_gate_inp.weight.lora_b").unwrap().dims,
        vec![8, 4]
    );
}

#[test]
fn missing_files_say_what_mlx_lm_writes() {
    let dir = tempfile::tempdir().unwrap();
    // A checkpoint only (mlx-lm writes NNNNNNN_adapters.safetensors every --save-every steps).
    let ckpt = mlx_copy("mlx-llama", dir.path(), "ckpt", |_| {}, |_| {});
    std::fs::rename(
        ckpt.join("adapters.safetensors"),
        ckpt.join("0000100_adapters.safetensors"),
    )
    .unwrap();
    assert_refused(
        &ckpt,
        "llama",
        &[
            "has no `adapters.safetensors`",
            "to convert the checkpoint `0000100_adapters.safetensors`, copy it to adapters.safetensors",
        ],
    );
    let no_config = mlx_copy("mlx-llama", dir.path(), "no-config", |_| {}, |_| {});
    std::fs::remove_file(no_config.join("adapter_config.json")).unwrap();
    assert_refused(
        &no_config,
        "llama",
        &[
            "has no `adapter_config.json` (found: adapters.safetensors)",
            "mlx_lm lora --adapter-path",
        ],
    );
}

#[test]
fn model_path_is_the_base_when_no_base_flag_is_given() {
    // mlx-lm records the base as `model`; a local HF directory there is used like PEFT's base_model_name_or_path.
    let dir = tempfile::tempdir().unwrap();
    let adapter = mlx_copy(
        "mlx-llama",
        dir.path(),
        "local",
        |c| c["model"] = base_config("llama").display().to_string().into(),
        |_| {},
    );
    convert_cmd(&adapter, dir.path().join("o.gguf"))
        .assert()
        .success();
    let a = convert_cmd(case_dir("mlx-llama"), dir.path().join("p.gguf"))
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("`model` is `models/llama`, which is not a local directory"),
        "{stderr}"
    );
}
