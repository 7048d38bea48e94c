//! `lora-convert inspect PATH` on PEFT and mlx-lm directories (dense and mixture-of-experts) and GGUF adapters, and
//! `lora-convert --manifest FILE.json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::common::*;
use lora_gguf::convert::{self, OutType, manifest};
use lora_gguf::gguf::GgufFile;

/// What `lora-convert` plans for fixture `case` on the tiny llama base (the reference the CLI output is checked
/// against).
fn prepared_against_llama(case: &str) -> convert::Prepared {
    convert::prepare(
        &case_dir(case),
        Some(&base_gguf("llama")),
        None,
        None,
        OutType::Auto,
        &Default::default(),
    )
    .unwrap()
}

fn inspect(path: &Path) -> assert_cmd::Command {
    let mut c = lora_convert();
    c.arg("inspect").arg(path);
    c
}

/// Convert a case with the CLI, returning the manifest text.
fn convert_with_manifest(case: &str, out: &Path, manifest: &Path) -> assert_cmd::assert::Assert {
    convert_on(case_dir(case), out, &base_of(case))
        .arg("--manifest")
        .arg(manifest)
        .arg("--force")
        .assert()
}

#[test]
fn inspect_adapter_dir_shows_every_module_and_its_target() {
    let a = inspect(&case_dir("torchtune-llama"))
        .arg("--base")
        .arg(base_gguf("llama"))
        .assert()
        .success();
    let text = stdout_of(&a);
    for want in [
        "trainer   torchtune: adapter_config.json has only torchtune's keys",
        "family    llama",
        "alpha     adapter.lora.alpha = 16",
        "model.layers.1.self_attn.q_proj",
        "blk.1.attn_q.weight",
        "blk.0.attn_q.weight: rows llama_rope_permute(n_head)",
        "blk.0.attn_k.weight: rows llama_rope_permute(n_head_kv)",
        "verdict   convertible: fits",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
}

/// A safetensors file's header: key → (dtype, shape), and the data bytes of each tensor.
fn safetensors_of(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                (
                    format!("{:?}", t.dtype()),
                    t.shape().to_vec(),
                    t.data().to_vec(),
                ),
            )
        })
        .collect()
}

fn find<'j>(items: &'j Value, field: &str, value: &str) -> &'j Value {
    items
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x[field] == value)
        .unwrap_or_else(|| panic!("no {field} = {value} in {items:#}"))
}

#[test]
fn inspect_shows_an_mlx_lm_moe_adapter_in_its_own_terms() {
    let case = "mlx-mixtral";
    let base = base_gguf("mixtral");
    let a = inspect(&case_dir(case))
        .arg("--base")
        .arg(&base)
        .arg("--json")
        .assert()
        .success();
    let j = json_of(&a);
    assert_eq!(j["kind"], "adapter_dir");
    assert_eq!(j["adapter"]["framework"], "mlx-lm");
    // mlx-lm's own settings, and the PEFT configuration they are equivalent to (lora_alpha = scale·rank).
    assert_eq!(
        j["adapter"]["mlx"],
        json!({"fine_tune_type": "lora", "rank": 8, "scale": 20.0, "keys": null, "num_layers": -1,
               "model": "models/mixtral"})
    );
    assert_eq!(j["adapter"]["config"]["lora_alpha"], 160.0);
    assert_eq!(j["gguf_alpha"], 160.0);
    // llama.cpp's converter writes Mixtral as the llama architecture.
    assert_eq!(j["family"], "llama");
    assert_eq!(
        (&j["convertible"], &j["fits"]),
        (&json!(true), &json!(true))
    );

    // Shapes, dtypes and sizes are the file's.
    let weights = case_dir(case).join("adapters.safetensors");
    let header = safetensors_of(&weights);
    assert_eq!(j["dtypes"], json!({"F32": header.len()}));
    let data: usize = header.values().map(|(_, _, d)| d.len()).sum();
    assert_eq!(j["size"]["factor_bytes"], data);
    assert_eq!(j["size"]["gguf_tensor_bytes"], data);
    assert_eq!(
        j["size"]["weights_bytes"],
        std::fs::metadata(&weights).unwrap().len()
    );
    let tensors = j["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), header.len());
    for t in tensors {
        let (dtype, shape, _) = &header[t["key"].as_str().unwrap()];
        assert_eq!(t["dtype"], dtype.as_str());
        assert_eq!(t["file_shape"], json!(shape), "{t}");
        assert_eq!(t["status"], "converted", "{t}");
    }

    // A SwitchLinear stack: the Hugging Face name the tables map, mlx-lm's (E, r, in) / (E, out, r) in the file,
    // PEFT's (E·r, in) / (out, E·r) view, one stacked GGUF pair as deep as the base's expert count.
    let n_expert = GgufFile::open(&base)
        .unwrap()
        .get_u64("llama.expert_count")
        .unwrap();
    assert_eq!(n_expert, 4);
    let m = find(
        &j["modules"],
        "module",
        "model.layers.0.block_sparse_moe.experts.w1",
    );
    assert_eq!(
        m["saved_as"],
        "model.layers.0.block_sparse_moe.switch_mlp.gate_proj"
    );
    assert_eq!(m["packing"], "mlx_experts");
    assert_eq!(m["n_expert"], n_expert);
    assert_eq!(m["expert"], Value::Null);
    assert_eq!(m["rank"], 8);
    assert_eq!(m["peft_scaling"], 20.0);
    assert_eq!(m["a_shape"], json!([32, 32]));
    assert_eq!(m["b_shape"], json!([24, 32]));
    assert_eq!(m["file_shapes"], json!([[4, 8, 32], [4, 24, 8]]));
    assert_eq!(m["targets"], json!(["blk.0.ffn_gate_exps.weight"]));
    let p = find(&j["pairs"], "target", "blk.0.ffn_gate_exps.weight");
    assert_eq!(p["kind"], "experts");
    assert_eq!(p["n_expert"], n_expert);
    assert_eq!(p["zero_filled_experts"], json!([]));
    assert_eq!(p["lora_a"]["ne"], json!([32, 8, 4]));
    assert_eq!(p["lora_b"]["ne"], json!([8, 24, 4]));
    assert_eq!(p["runtime_factor"], 20.0);
    // The router mlx-lm adapts by default is a plain Linear, stored transposed.
    let r = find(
        &j["modules"],
        "module",
        "model.layers.0.block_sparse_moe.gate",
    );
    assert_eq!(r["packing"], "single");
    assert_eq!(r["n_expert"], Value::Null);
    assert_eq!(r["file_shapes"], json!([[32, 8], [8, 4]]));
    assert_eq!(r["targets"], json!(["blk.0.ffn_gate_inp.weight"]));
    assert_eq!(j["modules"].as_array().unwrap().len(), 16);

    let a = inspect(&case_dir(case))
        .arg("--base")
        .arg(&base)
        .assert()
        .success();
    let text = stdout_of(&a);
    for want in [
        "adapter   fixtures/cases/mlx-mixtral (mlx-lm LoRA)",
        "mlx-lm    fine_tune_type lora, rank 8, scale 20, num_layers -1, keys —, model models/mixtral",
        "as PEFT   r 8, lora_alpha 160,",
        "(saved as model.layers.0.block_sparse_moe.switch_mlp.gate_proj)",
        "blk.0.ffn_gate_exps.weight: 4 experts, lora_a ne [32, 8, 4], lora_b ne [8, 24, 4]; from expert(s) all \
         (mlx_experts)",
        "verdict   convertible: fits",
    ] {
        let want = want.replace(
            "fixtures/cases/mlx-mixtral",
            &case_dir(case).display().to_string(),
        );
        assert!(text.contains(&want), "missing `{want}` in:\n{text}");
    }
    let row = text
        .lines()
        .find(|l| l.starts_with("model.layers.1.block_sparse_moe.experts.w2 "))
        .unwrap();
    assert!(
        row.contains(
            "4×lin    8       20 F32   [32, 24]     [32, 32]     blk.1.ffn_down_exps.weight"
        ),
        "{row}"
    );
}

#[test]
fn inspect_lists_every_refusal_of_an_mlx_lm_dora_adapter() {
    let case = "mlx-dora";
    // Without a base: inspected (exit 0), with every reason listed.
    let a = inspect(&case_dir(case)).arg("--json").assert().success();
    let j = json_of(&a);
    assert_eq!(j["adapter"]["mlx"]["fine_tune_type"], "dora");
    assert_eq!(j["convertible"], false);
    assert_eq!(j["fits"], Value::Null);
    let refusals = j["refusals"].as_array().unwrap();
    let want = case_info(case)["error_contains"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(refusals[0]["subject"], "fine_tune_type");
    assert!(
        refusals[0]["reason"].as_str().unwrap().contains(&want),
        "{refusals:#?}"
    );
    // Each `.m` magnitude vector is refused by name; the LoRA factors beside them are read.
    let header = safetensors_of(&case_dir(case).join("adapters.safetensors"));
    let magnitudes: Vec<&String> = header.keys().filter(|k| k.ends_with(".m")).collect();
    assert_eq!(magnitudes.len(), 7);
    // … and, without --base, that `model` (models/llama) is not a local directory.
    assert_eq!(refusals.len(), 1 + magnitudes.len() + 1);
    assert_eq!(refusals[8]["subject"], "(base)");
    for (k, r) in magnitudes.iter().zip(&refusals[1..8]) {
        assert_eq!(r["subject"], k.as_str());
        assert_eq!(
            r["reason"],
            format!(
                "`{}`: tensor `{k}` is a DoRA magnitude vector: DoRA cannot be a GGUF LoRA adapter — merge the \
                 adapter into the base model with `lora-convert merge` instead",
                case_dir(case).join("adapters.safetensors").display()
            )
        );
        let t = find(&j["tensors"], "key", k);
        assert_eq!(t["role"], "dora_magnitude");
        assert_eq!(t["status"], "refused");
        assert_eq!(t["reason"], r["reason"]);
        assert_eq!(t["file_shape"], json!(header[k.as_str()].1));
    }
    assert_eq!(j["tensors"].as_array().unwrap().len(), header.len());
    // With a base it does not fit: exit 2, and the text lists all eight.
    let a = inspect(&case_dir(case))
        .arg("--base")
        .arg(base_gguf("llama"))
        .assert()
        .code(2);
    assert!(
        stdout_of(&a).contains("verdict   refused: 8 reason(s) conversion would stop at"),
        "{}",
        stdout_of(&a)
    );
    // A full fine-tune has no LoRA settings to show: its refusal is the error.
    let a = inspect(&case_dir("mlx-full")).assert().code(2);
    let want = case_info("mlx-full")["error_contains"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(stderr_of(&a).contains(&want), "{}", stderr_of(&a));
}

#[test]
fn manifest_of_an_mlx_lm_conversion_says_what_each_stored_tensor_became() {
    for case in ["mlx-mixtral", "mlx-llama-keys"] {
        let dir = tempfile::tempdir().unwrap();
        let (out, mpath) = (dir.path().join("o.gguf"), dir.path().join("m.json"));
        convert_with_manifest(case, &out, &mpath).success();
        let m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
        assert_eq!(m["status"], "written");
        let scale = m["adapter"]["mlx"]["scale"].as_f64().unwrap();
        let rank = m["adapter"]["mlx"]["rank"].as_f64().unwrap();
        let gguf = GgufFile::open(&out).unwrap();
        // α = scale·rank, so llama.cpp's α/rank is mlx-lm's scale for every pair.
        assert_eq!(gguf.get_f64("adapter.lora.alpha"), Some(scale * rank));
        assert_eq!(m["output"]["alpha"].as_f64(), Some(scale * rank));
        let header = safetensors_of(&case_dir(case).join("adapters.safetensors"));
        let mut checked = BTreeMap::<String, usize>::new();
        for t in m["tensors"].as_array().unwrap() {
            let key = t["key"].as_str().unwrap();
            let (_, file_shape, bytes) = &header[key];
            assert_eq!(t["file_shape"], json!(file_shape), "{t}");
            assert_eq!(t["status"], "converted", "{t}");
            let dest = t["gguf"].as_array().unwrap();
            assert_eq!(dest.len(), 1, "{t}");
            let d = &dest[0];
            assert_eq!(d["effective_factor"].as_f64(), Some(scale), "{t}");
            let written = gguf.read_tensor_f32(d["tensor"].as_str().unwrap()).unwrap();
            let stored = f32s(bytes);
            // What the manifest says was done, checked on the bytes written.
            let transform = d["transform"].as_str().unwrap();
            let expect = match transform {
                "copy"
                | "rows identity"
                | "copy, all 4 experts"
                | "rows identity, all 4 experts" => stored.clone(),
                "transpose" | "transpose, rows identity" => {
                    let (rows, cols) = (file_shape[0], file_shape[1]);
                    (0..rows * cols)
                        .map(|i| stored[(i % rows) * cols + i / rows])
                        .collect()
                }
                // the rope permutation of q/k rows is checked by the logits tests
                t if t.starts_with("transpose, rows llama_rope_permute") => continue,
                other => panic!("{case}: unexpected transform `{other}` for {key}"),
            };
            assert_eq!(written, expect, "{case}: {key} → {d}");
            *checked.entry(transform.to_string()).or_default() += 1;
        }
        eprintln!("{case}: {checked:?}");
        match case {
            "mlx-mixtral" => {
                // 2 blocks × 3 stacks × (A, B), the routers and attention transposed.
                assert_eq!(checked["copy, all 4 experts"], 6);
                assert_eq!(checked["rows identity, all 4 experts"], 6);
                assert_eq!(checked["transpose"], 8 + 2);
            }
            _ => {
                // mlx-lm's embedding LoRA stores lora_a (vocab, r): exactly llama.cpp's token_embd lora_a.
                let e = find(&m["tensors"], "key", "model.embed_tokens.lora_a");
                assert_eq!(e["gguf"][0]["tensor"], "token_embd.weight.lora_a");
                assert_eq!(e["gguf"][0]["transform"], "copy");
                assert!(checked["copy"] >= 1);
            }
        }
    }
}

#[test]
fn manifest_of_peft_moe_conversions_shows_slots_gaps_interleaving_and_the_router() {
    // Legacy per-expert Linear LoRAs (experts.N.w1/w2/w3): stacked by slot, the expert without a LoRA zero-filled.
    let case = "mixtral-legacy";
    let dir = tempfile::tempdir().unwrap();
    let (out, mpath) = (dir.path().join("o.gguf"), dir.path().join("m.json"));
    convert_with_manifest(case, &out, &mpath).success();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    let gguf = GgufFile::open(&out).unwrap();
    let header = safetensors_of(&case_dir(case).join("adapter_model.safetensors"));
    let p = find(&m["pairs"], "target", "blk.0.ffn_gate_exps.weight");
    assert_eq!(p["kind"], "experts");
    assert_eq!(p["n_expert"], 4);
    assert_eq!(p["zero_filled_experts"], json!([2]));
    let slots: Vec<u64> = p["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["expert"].as_u64().unwrap())
        .collect();
    assert_eq!(slots, [0, 1, 3]);
    assert_eq!(p["lora_a"]["ne"], json!([32, 4, 4]));
    assert_eq!(p["lora_b"]["ne"], json!([4, 24, 4]));
    let a = gguf
        .read_tensor_f32("blk.0.ffn_gate_exps.weight.lora_a")
        .unwrap();
    let b = gguf
        .read_tensor_f32("blk.0.ffn_gate_exps.weight.lora_b")
        .unwrap();
    let (a_slot, b_slot) = (4 * 32, 24 * 4);
    for e in 0..4 {
        let (a_e, b_e) = (
            &a[e * a_slot..(e + 1) * a_slot],
            &b[e * b_slot..(e + 1) * b_slot],
        );
        if e == 2 {
            assert!(a_e.iter().chain(b_e).all(|&x| x == 0.0), "slot 2 is zero");
            continue;
        }
        for (half, got) in [("A", a_e), ("B", b_e)] {
            let key = format!(
                "base_model.model.model.layers.0.block_sparse_moe.experts.{e}.w1.lora_{half}.weight"
            );
            let t = find(&m["tensors"], "key", &key);
            let want = if half == "A" {
                format!("copy, expert slot {e} of 4")
            } else {
                format!("rows identity, expert slot {e} of 4")
            };
            assert_eq!(
                t["gguf"],
                json!([{"tensor": format!("blk.0.ffn_gate_exps.weight.lora_{}", half.to_lowercase()),
                        "transform": want, "fold": 1.0, "effective_factor": 2.0}])
            );
            assert_eq!(got, f32s(&header[&key].2).as_slice(), "{key}");
        }
    }
    assert!(
        m["warnings"].as_array().unwrap().iter().any(|w| w
            == "`blk.0.ffn_gate_exps.weight`: expert(s) 2 of 4 have no LoRA in the adapter and are written as zero \
                (no change), as PEFT leaves them"),
        "{:#}",
        m["warnings"]
    );
    let router = find(&m["pairs"], "target", "blk.0.ffn_gate_inp.weight");
    assert_eq!(router["kind"], "linear");
    assert_eq!(
        router["sources"][0]["module"],
        "model.layers.0.block_sparse_moe.gate"
    );

    // transformers-5 fused experts through PEFT's ParamWrapper: B's columns are interleaved by expert, gate_up is
    // split gate first; the router (`mlp.gate.weight`) and the shared expert's gate are plain pairs.
    let case = "qwen2moe";
    let (out, mpath) = (dir.path().join("q.gguf"), dir.path().join("q.json"));
    convert_with_manifest(case, &out, &mpath).success();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    let gguf = GgufFile::open(&out).unwrap();
    let header = safetensors_of(&case_dir(case).join("adapter_model.safetensors"));
    let key = "base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight";
    let t = find(&m["tensors"], "key", key);
    assert_eq!(t["module"], "model.layers.0.mlp.experts.gate_up_proj");
    assert_eq!(t["file_shape"], json!([48, 16]));
    let (e_n, r, ff) = (4usize, 4usize, 24usize);
    let stored = f32s(&header[key].2);
    for (i, (target, part)) in [
        ("blk.0.ffn_gate_exps.weight", 0),
        ("blk.0.ffn_up_exps.weight", 1),
    ]
    .into_iter()
    .enumerate()
    {
        let d = &t["gguf"][i];
        assert_eq!(d["tensor"], format!("{target}.lora_b"));
        assert_eq!(
            d["transform"],
            format!(
                "expert e = columns e, E+e, 2E+e, … (PEFT interleaves them), rows chunk({part} of 2), all 4 experts"
            )
        );
        let written = gguf.read_tensor_f32(&format!("{target}.lora_b")).unwrap();
        // lora_b ne [r, ff, E]: expert e, row i, rank k is the stored B[part·ff + i][k·E + e].
        let expect: Vec<f32> = (0..e_n)
            .flat_map(|e| {
                let stored = &stored;
                (0..ff).flat_map(move |i| {
                    (0..r).map(move |k| stored[(part * ff + i) * (e_n * r) + k * e_n + e])
                })
            })
            .collect();
        assert_eq!(written, expect, "{target}");
        let p = find(&m["pairs"], "target", target);
        assert_eq!(p["sources"][0]["packing"], "peft_experts");
        assert_eq!(
            p["sources"][0]["saved_as"],
            "model.layers.0.mlp.experts.base_layer"
        );
        assert_eq!(p["n_expert"], 4);
    }
    for (target, module) in [
        (
            "blk.0.ffn_gate_inp.weight",
            "model.layers.0.mlp.gate.weight",
        ),
        (
            "blk.0.ffn_gate_inp_shexp.weight",
            "model.layers.0.mlp.shared_expert_gate",
        ),
    ] {
        let p = find(&m["pairs"], "target", target);
        assert_eq!(p["kind"], "linear");
        assert_eq!(p["sources"][0]["module"], module);
        assert_eq!(p["sources"][0]["effective_factor"], 2.0);
    }
}

#[test]
fn inspect_names_every_stack_with_the_wrong_expert_count() {
    let case = "expert-count-mismatch";
    let a = inspect(&case_dir(case))
        .arg("--base")
        .arg(base_gguf(&base_of(case)))
        .arg("--json")
        .assert()
        .code(2);
    let j = json_of(&a);
    let subjects = subjects(&j["refusals"]);
    assert_eq!(
        subjects,
        [
            "model.layers.0.mlp.experts.down_proj",
            "model.layers.0.mlp.experts.gate_up_proj",
            "model.layers.1.mlp.experts.down_proj",
            "model.layers.1.mlp.experts.gate_up_proj"
        ]
    );
    assert_eq!(
        j["refusals"][0]["reason"],
        format!(
            "`model.layers.0.mlp.experts.down_proj`: the LoRA holds 8 experts (lora_A has 32 rows = 8 experts × r 4) \
             but the base {} has 4 experts per layer — the adapter was trained on another model; llama.cpp would \
             load it without noticing and compute garbage",
            base_gguf(&base_of(case)).display()
        )
    );
}

#[test]
fn inspect_json_agrees_with_the_plan() {
    let case = "llama-patterns";
    let a = inspect(&case_dir(case))
        .arg("--base")
        .arg(base_gguf("llama"))
        .arg("--json")
        .assert()
        .success();
    let j = json_of(&a);
    assert_eq!(j["schema"], "lora-gguf.inspect/1");
    assert_eq!(j["kind"], "adapter_dir");
    assert_eq!(j["family"], "llama");
    assert_eq!(j["fits"], true);
    assert_eq!(j["convertible"], true);
    let prepared = prepared_against_llama(case);
    let plan = prepared.plan.as_ref().unwrap();
    let modules = j["modules"].as_array().unwrap();
    assert_eq!(modules.len(), prepared.adapter.pairs.len());
    for (m, p) in modules.iter().zip(&prepared.adapter.pairs) {
        assert_eq!(m["module"], p.pattern_key().as_str());
        assert_eq!(m["rank"], p.rank);
        assert_eq!(m["peft_scaling"].as_f64(), Some(p.scaling.factor()));
        assert_eq!(m["status"], "converted");
        assert_eq!(m["targets"].as_array().unwrap().len(), 1);
    }
    // rank_pattern q_proj → 4, down_proj → 16; alpha_pattern changes s for some modules: those carry a fold.
    let ranks: Vec<u64> = modules
        .iter()
        .map(|m| m["rank"].as_u64().unwrap())
        .collect();
    assert!(
        ranks.contains(&4) && ranks.contains(&16) && ranks.contains(&8),
        "{ranks:?}"
    );
    assert_eq!(j["gguf_alpha"].as_f64(), Some(f64::from(plan.alpha)));
    assert_eq!(j["pairs"].as_array().unwrap().len(), plan.pairs.len());
    assert!(j["refusals"].as_array().unwrap().is_empty());
}

#[test]
fn inspect_lists_every_refusal_not_just_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("many");
    std::fs::create_dir(&adapter).unwrap();
    std::fs::copy(
        case_dir("llama").join("adapter_model.safetensors"),
        adapter.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(case_dir("llama").join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    cfg["use_dora"] = true.into();
    cfg["lora_bias"] = true.into();
    cfg["modules_to_save"] = serde_json::json!(["input_layernorm"]);
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string()).unwrap();

    // Without a base: inspected (exit 0), not convertible, every reason listed.
    let a = inspect(&adapter).arg("--json").assert().success();
    let j = json_of(&a);
    assert_eq!(j["convertible"], false);
    assert_eq!(j["fits"], Value::Null);
    let subjects = subjects(&j["refusals"]);
    assert_eq!(
        subjects,
        ["use_dora", "lora_bias", "modules_to_save", "(base)"],
        "{j:#}"
    );
    let norm = j["refusals"][2]["reason"].as_str().unwrap();
    assert!(
        norm.contains("llama.cpp ignores norm vectors in an adapter"),
        "{norm}"
    );
    // With the base: the same reasons, and it does not fit → exit 2.
    let a = inspect(&adapter)
        .arg("--base")
        .arg(base_gguf("llama"))
        .assert()
        .code(2);
    let text = stdout_of(&a);
    assert!(
        text.contains("verdict   refused: 3 reason(s) conversion would stop at"),
        "{text}"
    );
    assert!(text.contains("`use_dora` is true: DoRA"), "{text}");
}

#[test]
fn inspect_gguf_adapter_shows_metadata_pairs_and_the_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("llama.gguf");
    convert_case("llama", OutType::F32, &out, false);
    let a = inspect(&out).arg("--json").assert().success();
    let j = json_of(&a);
    assert_eq!(j["kind"], "gguf_adapter");
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["general_type"], "adapter");
    assert_eq!(j["alpha"].as_f64(), Some(16.0));
    let alpha_kv = j["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == "adapter.lora.alpha")
        .unwrap();
    assert_eq!(alpha_kv["type"], "f32");
    assert_eq!(j["tensors"].as_array().unwrap().len(), 28);
    let pairs = j["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 14);
    let q = pairs
        .iter()
        .find(|p| p["target"] == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q["rank"], 8);
    assert_eq!(q["lora_a"], serde_json::json!([64, 8]));
    assert_eq!(q["lora_b"], serde_json::json!([8, 64]));
    assert_eq!(q["runtime_factor"].as_f64(), Some(2.0));
    assert_eq!(j["fit"], Value::Null);
    assert!(j["problems"].as_array().unwrap().is_empty());

    let a = inspect(&out)
        .arg("--base")
        .arg(base_gguf("llama"))
        .assert()
        .success();
    assert!(
        stdout_of(&a).contains("verdict   fits"),
        "{}",
        stdout_of(&a)
    );

    // The wrong base: the precheck lora-validate runs, every mismatch listed, exit 2.
    let a = inspect(&out)
        .arg("--base")
        .arg(base_gguf("qwen2"))
        .arg("--json")
        .assert()
        .code(2);
    let j = json_of(&a);
    assert_eq!(j["fit"]["fits"], false);
    let first = &j["fit"]["mismatches"][0];
    assert_eq!(first["subject"], "general.architecture");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("the adapter is for `llama` but the base is `qwen2`"),
        "{first}"
    );
}

#[test]
fn inspect_a_base_model_says_it_is_not_an_adapter() {
    let a = inspect(&base_gguf("llama")).assert().success();
    let text = stdout_of(&a);
    assert!(
        text.contains(
            "problem: `general.type`: is \"model\", not \"adapter\": this is not a LoRA adapter"
        ),
        "{text}"
    );
    assert!(text.contains("pairs     none"), "{text}");
    assert_eq!(text.matches("problem:").count(), 1, "{text}");
}

#[test]
fn inspect_refuses_what_it_cannot_read() {
    let a = inspect(Path::new("/nonexistent/adapter")).assert().code(2);
    assert!(
        stderr_of(&a).contains("`/nonexistent/adapter` is neither an adapter directory"),
        "{}",
        stderr_of(&a)
    );
    let a = inspect(&case_dir("llama").join("adapter_config.json"))
        .assert()
        .code(2);
    assert!(
        stderr_of(&a).contains("pass the directory that holds it"),
        "{}",
        stderr_of(&a)
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("llama.gguf");
    convert_case("llama", OutType::F32, &out, false);
    let a = inspect(&out)
        .arg("--base-config")
        .arg(base_config("llama"))
        .assert()
        .code(2);
    assert!(
        stderr_of(&a).contains("to check the GGUF adapter"),
        "{}",
        stderr_of(&a)
    );
    // A truncated GGUF: our reader's message, exit 2.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &std::fs::read(&out).unwrap()[..100]).unwrap();
    let a = inspect(&cut).assert().code(2);
    assert!(
        stderr_of(&a).contains("is truncated or corrupt"),
        "{}",
        stderr_of(&a)
    );
}

#[test]
fn subcommand_and_positional_forms_parse_unambiguously() {
    // A directory named `inspect` is converted when given as a path (`./inspect`).
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("inspect");
    std::fs::create_dir(&named).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(case_dir("llama").join(f), named.join(f)).unwrap();
    }
    lora_convert()
        .current_dir(dir.path())
        .args(["./inspect", "-o", "out.gguf", "--base"])
        .arg(base_gguf("llama"))
        .assert()
        .success();
    assert!(dir.path().join("out.gguf").is_file());
    // `inspect` as the first word is the subcommand, which has no -o.
    let a = lora_convert()
        .current_dir(dir.path())
        .args(["inspect", "-o", "x.gguf"])
        .assert()
        .code(2);
    assert!(
        stderr_of(&a).contains("unexpected argument '-o'"),
        "{}",
        stderr_of(&a)
    );
    // The subcommand on that directory inspects it.
    let a = lora_convert()
        .current_dir(dir.path())
        .args(["inspect", "inspect"])
        .assert()
        .success();
    assert!(
        stdout_of(&a).contains("adapter   inspect (PEFT LoRA)"),
        "{}",
        stdout_of(&a)
    );
    // Conversion still needs -o.
    let a = lora_convert().arg(case_dir("llama")).assert().code(2);
    assert!(
        stderr_of(&a).contains("--output <OUT.gguf>"),
        "{}",
        stderr_of(&a)
    );
}

#[test]
fn manifest_matches_the_plan_field_by_field() {
    let case = "llama-patterns";
    let dir = tempfile::tempdir().unwrap();
    let (out, mpath) = (dir.path().join("o.gguf"), dir.path().join("m.json"));
    convert_with_manifest(case, &out, &mpath).success();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    assert_eq!(m["schema"], "lora-gguf.manifest/1");
    assert_eq!(m["status"], "written");
    let prepared = prepared_against_llama(case);
    let (plan, adapter) = (prepared.plan.as_ref().unwrap(), &prepared.adapter);
    assert_eq!(m["output"]["alpha"].as_f64(), Some(f64::from(plan.alpha)));
    assert_eq!(
        m["output"]["bytes"].as_u64(),
        Some(std::fs::metadata(&out).unwrap().len())
    );
    let pairs = m["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), plan.pairs.len());
    let mut folded = 0;
    for (e, p) in pairs.iter().zip(&plan.pairs) {
        assert_eq!(e["target"], p.target.as_str());
        assert_eq!(e["rank"], p.rank);
        assert_eq!(e["lora_a"]["name"], p.a.name.as_str());
        assert_eq!(e["lora_a"]["type"], p.a.ggml_type.name());
        assert_eq!(e["lora_a"]["ne"], serde_json::json!(p.a.dims));
        assert_eq!(e["lora_b"]["ne"], serde_json::json!(p.b.dims));
        let runtime = f64::from(plan.alpha / p.rank as f32);
        assert_eq!(e["runtime_factor"].as_f64(), Some(runtime));
        let sources = e["sources"].as_array().unwrap();
        assert_eq!(sources.len(), p.sources.len());
        for (se, s) in sources.iter().zip(&p.sources) {
            assert_eq!(se["module"], adapter.pairs[s.pair].pattern_key().as_str());
            assert_eq!(se["peft_scaling"].as_f64(), Some(s.peft_scaling));
            assert_eq!(se["fold"].as_f64(), Some(f64::from(s.fold as f32)));
            assert_eq!(se["rows"], manifest::rows_name(s.rows).as_str());
            assert_eq!(se["cols"], manifest::rows_name(s.cols).as_str());
            let effective = se["effective_factor"].as_f64().unwrap();
            assert!(
                (effective - s.peft_scaling).abs() <= 1e-6 * s.peft_scaling,
                "{}: effective {effective} vs PEFT {}",
                p.target,
                s.peft_scaling
            );
            if s.fold as f32 != 1.0 {
                folded += 1;
            }
        }
    }
    assert!(
        folded > 0,
        "llama-patterns has per-module factors folded into lora_b"
    );
    // Every source tensor is listed once, and goes where the plan sends it.
    let tensors = m["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 2 * adapter.pairs.len());
    for t in tensors {
        assert_eq!(t["status"], "converted", "{t}");
        let dest = t["gguf"].as_array().unwrap();
        assert_eq!(dest.len(), 1, "{t}");
        let to = dest[0]["tensor"].as_str().unwrap();
        let role = t["role"].as_str().unwrap();
        assert!(
            (role == "lora_A" && to.ends_with(".lora_a"))
                || (role == "lora_B" && to.ends_with(".lora_b")),
            "{t}"
        );
    }
    assert!(m["refusals"].as_array().unwrap().is_empty());
}

#[test]
fn manifest_shows_fused_splits_and_skipped_base_layer_copies() {
    let dir = tempfile::tempdir().unwrap();
    let (out, mpath) = (dir.path().join("o.gguf"), dir.path().join("m.json"));
    // InternLM2's fused wqkv becomes three GGUF tensors: one lora_A goes to three places, lora_B is split.
    let adapter = internlm2_wqkv_adapter(dir.path());
    convert_cmd(&adapter, &out)
        .arg("--base-config")
        .arg(&adapter)
        .arg("--manifest")
        .arg(&mpath)
        .arg("--force")
        .assert()
        .success();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    let t = |key: &str| {
        m["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == key)
            .unwrap_or_else(|| panic!("{key} not in manifest"))
            .clone()
    };
    let dest = |t: &Value, field: &str| -> Vec<String> {
        t["gguf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[field].as_str().unwrap().to_string())
            .collect()
    };
    let a = t("base_model.model.model.layers.0.attention.wqkv.lora_A.weight");
    assert_eq!(
        dest(&a, "tensor"),
        [
            "blk.0.attn_q.weight.lora_a",
            "blk.0.attn_k.weight.lora_a",
            "blk.0.attn_v.weight.lora_a"
        ]
    );
    assert_eq!(dest(&a, "transform"), ["copy", "copy", "copy"]);
    let b = t("base_model.model.model.layers.0.attention.wqkv.lora_B.weight");
    assert_eq!(
        dest(&b, "transform"),
        [
            "rows internlm2_qkv_split(q, llama_rope_permute)",
            "rows internlm2_qkv_split(k, llama_rope_permute)",
            "rows internlm2_qkv_split(v)"
        ]
    );

    // Embedding LoRAs come with base_layer copies in PEFT files: listed as skipped, with the reason.
    convert_with_manifest("llama-embed-lmhead", &out, &mpath).success();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    let embd_a = m["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "base_model.model.model.embed_tokens.lora_embedding_A")
        .unwrap()
        .clone();
    assert_eq!(embd_a["gguf"][0]["tensor"], "token_embd.weight.lora_a");
    assert_eq!(embd_a["gguf"][0]["transform"], "transpose");
    let skipped: Vec<&Value> = m["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "skipped")
        .collect();
    let keys: Vec<&str> = skipped.iter().map(|s| s["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "base_model.model.lm_head.base_layer.weight",
            "base_model.model.model.embed_tokens.base_layer.weight"
        ]
    );
    for s in &skipped {
        assert_eq!(s["role"], "base_layer_copy");
        assert!(
            s["reason"]
                .as_str()
                .unwrap()
                .contains("copy of the wrapped base layer")
        );
    }
}

/// A one-module PEFT adapter on InternLM2's fused `wqkv` (4 heads, 2 KV heads, head_dim 16), with the base's
/// config.json in the same directory.
fn internlm2_wqkv_adapter(dir: &Path) -> std::path::PathBuf {
    use safetensors::tensor::{Dtype, TensorView};
    let out = dir.join("internlm2");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("config.json"),
        r#"{"architectures": ["InternLM2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 272, "intermediate_size": 128}"#,
    )
    .unwrap();
    std::fs::write(
        out.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none", "target_modules": ["wqkv"]}"#,
    )
    .unwrap();
    let a: Vec<u8> = (0..8 * 64)
        .flat_map(|i| (i as f32 / 512.0).to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..128 * 8)
        .flat_map(|i| (i as f32 / 1024.0).to_le_bytes())
        .collect();
    let views = vec![
        (
            "base_model.model.model.layers.0.attention.wqkv.lora_A.weight",
            TensorView::new(Dtype::F32, vec![8, 64], &a).unwrap(),
        ),
        (
            "base_model.model.model.layers.0.attention.wqkv.lora_B.weight",
            TensorView::new(Dtype::F32, vec![128, 8], &b).unwrap(),
        ),
    ];
    std::fs::write(
        out.join("adapter_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    out
}

#[test]
fn manifest_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let (m1, m2) = (dir.path().join("m1.json"), dir.path().join("m2.json"));
    convert_with_manifest("torchtune-llama", &out, &m1).success();
    convert_with_manifest("torchtune-llama", &out, &m2).success();
    let (a, b) = (std::fs::read(&m1).unwrap(), std::fs::read(&m2).unwrap());
    assert!(a == b, "two runs gave different manifests");
}

#[test]
fn manifest_is_written_on_refusal_with_every_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (out, mpath) = (dir.path().join("o.gguf"), dir.path().join("m.json"));
    let a = convert_with_manifest("axolotl-added-tokens", &out, &mpath).code(2);
    assert!(
        stderr_of(&a).contains("(2 more reason(s) to refuse; the manifest lists them)"),
        "{}",
        stderr_of(&a)
    );
    assert!(!out.exists());
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    assert_eq!(m["status"], "refused");
    assert_eq!(m["output"], Value::Null);
    let subjects = subjects(&m["refusals"]);
    assert_eq!(
        subjects,
        [
            "base_model.model.lm_head.weight",
            "base_model.model.model.embed_tokens.weight",
            "modules_to_save"
        ]
    );
    // The full weights are listed as refused tensors with their reason; the LoRA pairs were planned.
    let embed = m["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "base_model.model.model.embed_tokens.weight")
        .unwrap()
        .clone();
    assert_eq!(embed["role"], "full_weight");
    assert_eq!(embed["status"], "refused");
    assert_eq!(embed["shape"], serde_json::json!([288, 64]));
    assert!(
        embed["reason"]
            .as_str()
            .unwrap()
            .contains("has 288 vocabulary rows")
    );
    assert_eq!(m["pairs"].as_array().unwrap().len(), 4);

    // Unreadable input: status `error`, the reason, exit 2.
    let a = convert_cmd(dir.path().join("missing"), &out)
        .arg("--manifest")
        .arg(&mpath)
        .assert()
        .code(2);
    assert!(
        stderr_of(&a).contains("not a directory"),
        "{}",
        stderr_of(&a)
    );
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    assert_eq!(m["status"], "error");
    assert_eq!(m["refusals"].as_array().unwrap().len(), 1);
    assert_eq!(m["adapter"], Value::Null);
}

#[test]
fn inspect_gguf_moe_adapter_checks_the_expert_count_llama_cpp_does_not() {
    use lora_gguf::gguf::{TensorSpec, Writer};
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("mixtral.gguf");
    convert_case("mixtral", OutType::F32, &good, false);
    let a = inspect(&good)
        .arg("--base")
        .arg(base_gguf("mixtral"))
        .arg("--json")
        .assert()
        .success();
    let j = json_of(&a);
    assert_eq!(j["fit"]["fits"], true);
    let p = find(&j["pairs"], "target", "blk.0.ffn_gate_exps.weight");
    assert_eq!(p["lora_a"], json!([32, 4, 4]));
    assert_eq!(p["lora_b"], json!([4, 24, 4]));

    // The same adapter with every expert stack doubled to 8 experts: llama.cpp loads it onto the 4-expert base
    // without complaint (it does not compare ne[2]); inspect names every such pair.
    let f = GgufFile::open(&good).unwrap();
    let eight = |t: &lora_gguf::gguf::TensorInfo| {
        let mut dims = t.dims.clone();
        if dims.len() == 3 {
            dims[2] *= 2;
        }
        dims
    };
    let specs: Vec<TensorSpec> = f
        .tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), eight(t), t.ggml_type))
        .collect();
    let bad = dir.path().join("eight.gguf");
    let mut w = Writer::new(std::fs::File::create(&bad).unwrap(), &f.metadata, &specs).unwrap();
    for t in &f.tensors {
        let mut bytes = f.read_tensor_bytes(&t.name).unwrap();
        if t.dims.len() == 3 {
            bytes.extend_from_within(..);
        }
        w.write_tensor(&t.name, &bytes).unwrap();
    }
    w.finish().unwrap();
    let a = inspect(&bad)
        .arg("--base")
        .arg(base_gguf("mixtral"))
        .arg("--json")
        .assert()
        .code(2);
    let j = json_of(&a);
    assert_eq!(j["fit"]["fits"], false);
    let stacks: Vec<&str> = f
        .tensors
        .iter()
        .filter(|t| t.dims.len() == 3 && t.name.ends_with(".lora_a"))
        .map(|t| t.name.trim_end_matches(".lora_a"))
        .collect();
    assert_eq!(stacks.len(), 6, "3 stacks in each of 2 blocks");
    let mismatches = j["fit"]["mismatches"].as_array().unwrap();
    assert_eq!(mismatches.len(), stacks.len(), "{mismatches:#?}");
    for m in mismatches {
        assert!(stacks.contains(&m["subject"].as_str().unwrap()), "{m}");
        assert_eq!(m["message"], "the adapter has 8 experts, the base has 4");
    }
}
