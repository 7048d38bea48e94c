//! `lora-convert` on the committed fixtures, without llama.cpp: tensors byte-identical to llama.cpp's own converter
//! where that converter is right, every refusal with its message and exit status 2, and no file left behind.

use crate::common::*;
use lora_gguf::gguf::GgufFile;

fn convert(case: &str, outtype: &str, out: &std::path::Path) -> assert_cmd::assert::Assert {
    convert_with(case, outtype, out, &[])
}

fn convert_with(
    case: &str,
    outtype: &str,
    out: &std::path::Path,
    extra: &[&str],
) -> assert_cmd::assert::Assert {
    let base = base_of(case);
    convert_on(case_dir(case), out, &base)
        .arg("--outtype")
        .arg(outtype)
        .arg("--verify")
        .args(extra)
        .assert()
}

/// Every tensor (name, order, type, shape, bytes) equals the reference converter's.
fn assert_same_tensors(ours: &std::path::Path, reference: &std::path::Path) {
    let a = GgufFile::open(ours).unwrap();
    let b = GgufFile::open(reference).unwrap();
    let names = |f: &GgufFile| f.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "tensor order");
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((x.ggml_type, &x.dims), (y.ggml_type, &y.dims), "{}", x.name);
        assert!(
            a.read_tensor_bytes(&x.name).unwrap() == b.read_tensor_bytes(&y.name).unwrap(),
            "{} bytes",
            x.name
        );
    }
    assert_eq!(
        a.get_f64("adapter.lora.alpha"),
        b.get_f64("adapter.lora.alpha")
    );
    assert_eq!(a.architecture(), b.architecture());
}

#[test]
fn tensors_match_llama_cpp_converter_where_it_is_correct() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in cases("ok") {
        for outtype in ["f32", "f16", "bf16", "q8_0"] {
            let reference = case_dir(&case).join(format!("reference-converter-{outtype}.gguf"));
            if !reference.exists() {
                continue;
            }
            let out = dir.path().join(format!("{case}-{outtype}.gguf"));
            convert(&case, outtype, &out).success();
            assert_same_tensors(&out, &reference);
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} reference files found");
}

#[test]
fn conversion_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    convert("llama-patterns", "q8_0", &a).success();
    convert("llama-patterns", "q8_0", &b).success();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
fn every_refused_case_exits_2_with_its_reason_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let refused = cases("refused");
    assert!(refused.len() >= 9, "{refused:?}");
    for case in refused {
        let out = dir.path().join(format!("{case}.gguf"));
        let want = case_info(&case)["error_contains"]
            .as_str()
            .unwrap()
            .to_string();
        let assert = convert(&case, "auto", &out).code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        assert!(stderr.starts_with("error: "), "{case}: {stderr}");
        assert!(
            stderr.contains(&want),
            "{case}: expected `{want}` in: {stderr}"
        );
        assert!(!out.exists(), "{case}: output left behind");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(
            leftovers.is_empty(),
            "{case}: temporary files left behind: {leftovers:?}"
        );
    }
}

#[test]
fn rslora_alpha_is_scaled_by_sqrt_r() {
    // r = 16, alpha = 16, use_rslora: PEFT's s = 16/√16 = 4; llama.cpp computes alpha/r, so alpha must be 64.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.gguf");
    convert("llama-rslora", "f32", &out).success();
    assert_eq!(
        GgufFile::open(&out).unwrap().get_f64("adapter.lora.alpha"),
        Some(64.0)
    );
}

#[test]
fn truncated_safetensors_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    let src = case_dir("llama");
    std::fs::copy(
        src.join("adapter_config.json"),
        adapter.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        adapter.join("adapter_model.safetensors"),
        &bytes[..bytes.len() - 100],
    )
    .unwrap();
    let out = dir.path().join("out.gguf");
    let a = convert_on(&adapter, &out, "llama").assert().code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("adapter_model.safetensors` is not a valid safetensors file"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn wrong_base_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let a = convert_on(case_dir("llama"), &out, "qwen2")
        .arg("--arch")
        .arg("llama")
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("architecture mismatch: --arch is `llama` but the base"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn missing_base_says_which_flag_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let a = convert_cmd(case_dir("llama"), dir.path().join("o.gguf"))
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("`base_model_name_or_path` is `tiny-llama`"),
        "{stderr}"
    );
    assert!(stderr.contains("pass `--base BASE.gguf`"), "{stderr}");
}

#[test]
fn base_config_works_without_a_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    convert_cmd(case_dir("llama"), &out)
        .arg("--base-config")
        .arg(base_config("llama"))
        .arg("--outtype")
        .arg("f32")
        .assert()
        .success();
    assert_same_tensors(
        &out,
        &case_dir("llama").join("reference-converter-f32.gguf"),
    );
}

#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    let a = convert("llama", "f32", &out).code(2);
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("exists; pass --force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}

/// Copy a fixture adapter into a temp dir, editing its adapter_config.json.
fn adapter_copy(
    case: &str,
    dir: &std::path::Path,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let out = dir.join(case);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        case_dir(case).join("adapter_model.safetensors"),
        out.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(case_dir(case).join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    edit(&mut cfg);
    std::fs::write(
        out.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    out
}

#[test]
fn local_base_model_name_or_path_is_used_when_no_base_flag_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = adapter_copy("llama", dir.path(), |c| {
        c["base_model_name_or_path"] = base_config("llama").display().to_string().into();
    });
    let out = dir.path().join("o.gguf");
    convert_cmd(&adapter, &out)
        .args(["--outtype", "f32"])
        .assert()
        .success();
    assert_same_tensors(
        &out,
        &case_dir("llama").join("reference-converter-f32.gguf"),
    );
}

#[test]
fn base_config_with_bitsandbytes_quantization_and_nested_text_config_works() {
    // QLoRA bases (unsloth/*-bnb-4bit) carry a quantization_config; llama.cpp's converter crashes on it.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(base_config("llama").join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["quantization_config"] =
        serde_json::json!({"quant_method": "bitsandbytes", "load_in_4bit": true});
    let nested = serde_json::json!({"architectures": ["LlamaForCausalLM"], "text_config": cfg});
    std::fs::write(base.join("config.json"), nested.to_string()).unwrap();
    let out = dir.path().join("o.gguf");
    convert_cmd(case_dir("llama"), &out)
        .arg("--base-config")
        .arg(&base)
        .args(["--outtype", "f32"])
        .assert()
        .success();
    assert_same_tensors(
        &out,
        &case_dir("llama").join("reference-converter-f32.gguf"),
    );
}

#[test]
fn rank_that_contradicts_the_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = adapter_copy("llama", dir.path(), |c| c["r"] = 4.into());
    let a = convert_on(&adapter, dir.path().join("o.gguf"), "llama")
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("the tensors have rank 8 but adapter_config.json gives r = 4"),
        "{stderr}"
    );
}

#[test]
fn invalid_config_json_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = adapter_copy("llama", dir.path(), |_| {});
    std::fs::write(
        adapter.join("adapter_config.json"),
        "{\n  \"r\": 8,\n  \"lora_alpha\": \n}",
    )
    .unwrap();
    let a = convert_on(&adapter, dir.path().join("o.gguf"), "llama")
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("adapter_config.json`:4:1: invalid JSON"),
        "{stderr}"
    );
}

#[test]
fn outputs_have_the_layout_llama_cpp_reads() {
    // Every written file parses with our reader, which enforces ggml's offset and alignment rules; ggml's own
    // parser and the llama.cpp loader accept them in tests/convert_logits.rs.
    let dir = tempfile::tempdir().unwrap();
    for outtype in ["f32", "f16", "bf16", "q8_0"] {
        let out = dir.path().join(format!("{outtype}.gguf"));
        convert("llama-embed-lmhead", outtype, &out).success();
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.tensors.len(), 2 * 16);
        assert_eq!(f.get_str("general.type"), Some("adapter"));
        assert_eq!(
            f.get("adapter.lora.alpha").map(|v| v.value_type()),
            Some(lora_gguf::gguf::ValueType::F32)
        );
        let embd = f.tensor("token_embd.weight.lora_a").unwrap();
        assert_eq!(embd.dims, vec![8, 272], "token_embd lora_a stores Aᵀ");
    }
}

#[test]
fn a_target_whose_shape_differs_in_the_base_is_refused() {
    use lora_gguf::gguf::{TensorSpec, Writer};
    // The tiny llama base with blk.1.attn_q.weight halved: same architecture and names, different shape.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.gguf");
    let f = GgufFile::open(&base_gguf("llama")).unwrap();
    let shrink = |t: &lora_gguf::gguf::TensorInfo| -> Vec<u64> {
        if t.name == "blk.1.attn_q.weight" {
            vec![t.dims[0], t.dims[1] / 2]
        } else {
            t.dims.clone()
        }
    };
    let specs: Vec<TensorSpec> = f
        .tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), shrink(t), t.ggml_type))
        .collect();
    let mut w = Writer::new(std::fs::File::create(&base).unwrap(), &f.metadata, &specs).unwrap();
    for (t, spec) in f.tensors.iter().zip(&specs) {
        let bytes = f.read_tensor_bytes(&t.name).unwrap();
        w.write_tensor(&t.name, &bytes[..spec.n_bytes().unwrap() as usize])
            .unwrap();
    }
    w.finish().unwrap();
    let out = dir.path().join("o.gguf");
    let a = convert_cmd(case_dir("llama"), &out)
        .arg("--base")
        .arg(&base)
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("module `model.layers.1.self_attn.q_proj` → `blk.1.attn_q.weight`: the adapter implies ne [64, 64]"),
        "{stderr}"
    );
    assert!(stderr.contains("has ne [64, 32]"), "{stderr}");
    assert!(!out.exists());
}

/// Without a base GGUF the experts are told apart and counted from config.json (`num_experts`, hidden and expert
/// FFN sizes); the output is the same file.
#[test]
fn moe_from_base_config_equals_moe_from_base_gguf() {
    let dir = tempfile::tempdir().unwrap();
    for case in [
        "mixtral",
        "qwen2moe",
        "qwen3moe",
        "olmoe-partial",
        "mixtral-legacy",
        "deepseek2",
        "deepseek2-mla",
    ] {
        let a = dir.path().join(format!("{case}-gguf.gguf"));
        let b = dir.path().join(format!("{case}-config.gguf"));
        convert_with(case, "f32", &a, &["--drop-ignored-pairs"]).success();
        convert_cmd(case_dir(case), &b)
            .arg("--base-config")
            .arg(base_config(&base_of(case)))
            .arg("--verify")
            .arg("--drop-ignored-pairs")
            .assert()
            .success();
        assert_same_but_the_base_record(&a, &b, case);
    }
}

/// `with_base` (converted with `--base`) is `without` plus what it records about the base GGUF (the
/// `general.base_model.*` keys and the fingerprint, docs/base-fingerprint.md): the same metadata otherwise, the same
/// tensors, the same bytes.
fn assert_same_but_the_base_record(
    with_base: &std::path::Path,
    without: &std::path::Path,
    case: &str,
) {
    let (a, b) = (
        GgufFile::open(with_base).unwrap(),
        GgufFile::open(without).unwrap(),
    );
    assert!(a.get("lora_gguf.base_fingerprint").is_some(), "{case}");
    let kept = |f: &GgufFile| {
        f.metadata
            .iter()
            .filter(|(k, _)| {
                k != "lora_gguf.base_fingerprint" && !k.starts_with("general.base_model.")
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(&a), kept(&b), "{case}");
    let infos = |f: &GgufFile| {
        f.tensors
            .iter()
            .map(|t| (t.name.clone(), t.ggml_type, t.dims.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(infos(&a), infos(&b), "{case}");
    for t in &a.tensors {
        assert!(
            a.read_tensor_bytes(&t.name).unwrap() == b.read_tensor_bytes(&t.name).unwrap(),
            "{case}: {}",
            t.name
        );
    }
}

#[test]
fn expert_count_mismatch_is_refused_from_base_config_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let a = convert_cmd(case_dir("expert-count-mismatch"), &out)
        .arg("--base-config")
        .arg(base_config("mixtral"))
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains(
            "the LoRA holds 8 experts (lora_A has 32 rows = 8 experts × r 4) but the base"
        ) && stderr.contains("has 4 experts per layer"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// DeepSeek-V2's MLA attention multiplies attn_q_a, attn_q_b and attn_kv_a_mqa with plain `ggml_mul_mat`
/// (llama.cpp `src/models/deepseek2.cpp`): a LoRA on them loads but does nothing. By default `lora-convert` refuses
/// the adapter, naming every such tensor and why (exit 2, nothing written); `--drop-ignored-pairs` writes the pairs
/// llama.cpp applies (o_proj, the experts' down_proj) with a warning per dropped tensor. That the dropped tensors
/// really have no effect in llama.cpp, and the others do, is checked on the logits (convert_logits.rs).
#[test]
fn deepseek2_mla_projections_are_refused_by_name_unless_dropped_knowingly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let ignored = |bid: u32| {
        [
            ("attn_kv_a_mqa", "kv_a_proj_with_mqa"),
            ("attn_q_a", "q_a_proj"),
            ("attn_q_b", "q_b_proj"),
        ]
        .map(|(gguf, hf)| {
            (
                format!("blk.{bid}.{gguf}.weight"),
                format!("model.layers.{bid}.self_attn.{hf}"),
            )
        })
    };
    let refused = convert("deepseek2-mla", "f32", &out).code(2);
    assert!(!out.exists());
    let stderr = stderr_of(&refused);
    let mut named: Vec<String> = stderr.lines().map(String::from).collect();
    named.sort();
    let mut expected: Vec<String> = (0..2)
        .flat_map(ignored)
        .map(|(gguf, hf)| {
            format!(
                "error: module `{hf}` → `{gguf}`: llama.cpp's `deepseek2` graph multiplies this tensor without LoRA \
                 (ggml_mul_mat, not build_lora_mm, in src/models/), so the pair would load and change nothing — the \
                 adapter would not behave as trained; retrain without this module, or pass `--drop-ignored-pairs` \
                 to convert without such pairs knowingly (llama.cpp then computes the adapter minus them)"
            )
        })
        .collect();
    expected.sort();
    assert_eq!(named, expected);

    let a = convert_with("deepseek2-mla", "f32", &out, &["--drop-ignored-pairs"]).success();
    let stderr = stderr_of(&a);
    let expected: String = (0..2)
        .flat_map(ignored)
        .map(|(gguf, hf)| {
            format!(
                "warning: `{gguf}` (from `{hf}`): llama.cpp's deepseek2 graph does not apply LoRA to this tensor; \
                 the pair is left out (--drop-ignored-pairs)\n"
            )
        })
        .collect();
    assert_eq!(stderr, expected);
    let written = GgufFile::open(&out).unwrap();
    let tensors: Vec<(String, Vec<u64>)> = written
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dims.clone()))
        .collect();
    let mut want = Vec::new();
    for bid in 0..2 {
        if bid == 1 {
            want.push((
                "blk.1.ffn_down_exps.weight.lora_a".to_string(),
                vec![24, 4, 4],
            ));
            want.push((
                "blk.1.ffn_down_exps.weight.lora_b".to_string(),
                vec![4, 32, 4],
            ));
        }
        want.push((format!("blk.{bid}.attn_output.weight.lora_a"), vec![32, 4]));
        want.push((format!("blk.{bid}.attn_output.weight.lora_b"), vec![4, 32]));
    }
    assert_eq!(tensors, want);
}

/// A write that fails (here a file-size limit below the output's size, which fails as a full disk would): exit 2,
/// the message names the output asked for and what was being written, and nothing is left in its directory.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_write_names_the_output_and_leaves_nothing_behind() {
    use assert_cmd::assert::OutputAssertExt;
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.gguf");
    convert("llama", "f32", &whole).success();
    let len = std::fs::metadata(&whole).unwrap().len();
    std::fs::remove_file(&whole).unwrap();

    let out = dir.path().join("out.gguf");
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("lora-convert"));
    cmd.arg(case_dir("llama"))
        .arg("-o")
        .arg(&out)
        .arg("--base")
        .arg(base_gguf(&base_of("llama")))
        .args(["--outtype", "f32"]);
    #[allow(unsafe_code)]
    // SAFETY: between fork and exec the closure only calls two async-signal-safe functions.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            // Over the limit a write fails with EFBIG once SIGXFSZ (which would kill the process) is ignored.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let assert = cmd.assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: cannot write `{}` (fallocate of all {len} bytes): File too large (os error 27); nothing was \
             written there",
            out.display()
        )
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// The default build is the pure-Rust converter: `merge` (ggml's quantizers, from the llama.cpp build) is not in it,
/// and it says how to get it instead of failing obscurely. Runs in `cargo test` without features.
#[cfg(not(feature = "merge"))]
#[test]
fn merge_without_the_feature_says_how_to_get_it() {
    let a = lora_convert()
        .args([
            "merge",
            "--base",
            "b.gguf",
            "--adapter",
            "a.gguf",
            "-o",
            "m.gguf",
        ])
        .assert()
        .code(2);
    assert_eq!(
        stderr_of(&a),
        "error: this lora-convert was built without feature `merge`: merging quantizes with ggml, from the \
         llama.cpp build. Get it with `cargo install --path . --features merge` (needs cmake, a C++ compiler and \
         libclang: tools/build-deps.sh installs them) or `pip install lora-gguf`\n"
    );
}
