//! Adapters from other trainers than plain PEFT (fixtures/generate_trainers.py): torchtune, Unsloth, axolotl,
//! LLaMA-Factory. Each converts exactly (their logits are checked in convert_logits.rs) or is refused with a message
//! that says what to do.

use std::path::{Path, PathBuf};

use crate::common::*;
use lora_gguf::gguf::GgufFile;

fn convert_against(case: &str, base: &Path, out: &Path) -> assert_cmd::Command {
    let mut c = lora_convert();
    c.arg(case_dir(case))
        .arg("-o")
        .arg(out)
        .arg("--base")
        .arg(base);
    c
}

/// Every tensor's name, type, shape and bytes.
fn tensors_of(path: &Path) -> Vec<(String, Vec<u64>, Vec<u8>)> {
    let f = GgufFile::open(path).unwrap();
    f.tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dims.clone(),
                f.read_tensor_bytes(&t.name).unwrap(),
            )
        })
        .collect()
}

/// Copy a fixture adapter with its safetensors keys renamed (and extra F32 tensors added).
fn rewritten_copy(
    case: &str,
    dir: &Path,
    rename: impl Fn(&str) -> String,
    extra: &[(&str, Vec<usize>)],
) -> PathBuf {
    use safetensors::tensor::{Dtype, TensorView};
    let out = dir.join(format!("{case}-rewritten"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        case_dir(case).join("adapter_config.json"),
        out.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(case_dir(case).join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let zeros: Vec<Vec<u8>> = extra
        .iter()
        .map(|(_, shape)| vec![0u8; 4 * shape.iter().product::<usize>()])
        .collect();
    let mut views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (rename(&k), v))
        .collect();
    for ((key, shape), data) in extra.iter().zip(&zeros) {
        views.push((
            key.to_string(),
            TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
        ));
    }
    let serialized = safetensors::serialize(views, None).unwrap();
    std::fs::write(out.join("adapter_model.safetensors"), serialized).unwrap();
    out
}

#[test]
fn torchtune_export_converts_with_its_permutation_undone_as_llama_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tt.gguf");
    let a = convert_against("torchtune-llama", &base_gguf("llama"), &out)
        .arg("--verify")
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
    assert!(stdout.contains("pairs     15 (rank 8)"), "{stdout}");
    // torchtune writes `lora_alpha: 16.0` (a float) and lm_head under `output` → `lm_head`.
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_f64("adapter.lora.alpha"), Some(16.0));
    assert!(f.tensor("output.weight.lora_b").is_some());
}

#[test]
fn torchtune_without_a_base_points_at_the_config_it_copied() {
    let dir = tempfile::tempdir().unwrap();
    let a = convert_cmd(case_dir("torchtune-llama"), dir.path().join("x.gguf"))
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains(
            "holds a config.json (torchtune copies the base model's there): `--base-config"
        ),
        "{stderr}"
    );
    // Following the hint works, and gives the same tensors as the GGUF base.
    let via_config = dir.path().join("config.gguf");
    convert_cmd(case_dir("torchtune-llama"), &via_config)
        .arg("--base-config")
        .arg(case_dir("torchtune-llama"))
        .assert()
        .success();
    let via_gguf = dir.path().join("gguf.gguf");
    convert_against("torchtune-llama", &base_gguf("llama"), &via_gguf)
        .assert()
        .success();
    assert_eq!(tensors_of(&via_config), tensors_of(&via_gguf));
}

#[test]
fn torchtune_qwen2_is_refused_until_the_user_says_how_to_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.gguf");
    let a = convert_against("torchtune-qwen2", &base_gguf("qwen2"), &out)
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains(
            "this is torchtune's PEFT export (adapter_config.json has only torchtune's keys"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("pass `--torchtune-qwen2 undo` to convert what torchtune trained"),
        "{stderr}"
    );
    assert!(!out.exists());

    let undo = dir.path().join("undo.gguf");
    convert_against("torchtune-qwen2", &base_gguf("qwen2"), &undo)
        .args(["--torchtune-qwen2", "undo", "--verify"])
        .assert()
        .success();
    let saved = dir.path().join("saved.gguf");
    convert_against("torchtune-qwen2", &base_gguf("qwen2"), &saved)
        .args(["--torchtune-qwen2", "as-saved", "--verify"])
        .assert()
        .success();
    // Only the q/k lora_b differ, by llama.cpp's rotary permutation (the inverse of torchtune's); the rest is the
    // same bytes.
    let (u, s) = (tensors_of(&undo), tensors_of(&saved));
    assert_eq!(u.len(), s.len());
    for ((name, dims, ub), (_, _, sb)) in u.iter().zip(&s) {
        let permuted =
            name.ends_with("attn_q.weight.lora_b") || name.ends_with("attn_k.weight.lora_b");
        assert_eq!(ub != sb, permuted, "{name}");
        if permuted {
            let (rank, rows) = (dims[0] as usize, dims[1] as usize);
            let n_head = if name.contains("attn_q") { 4 } else { 2 };
            let hd = rows / n_head;
            let row = |b: &[u8], r: usize| b[r * rank * 4..(r + 1) * rank * 4].to_vec();
            for h in 0..n_head {
                for i in 0..hd / 2 {
                    for j in 0..2 {
                        // LlamaModel.permute: out[h, 2i + j] = w[h, j·hd/2 + i]
                        assert_eq!(
                            row(ub, h * hd + 2 * i + j),
                            row(sb, h * hd + j * hd / 2 + i),
                            "{name} head {h} row {i},{j}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn unsloth_bnb_base_name_gets_a_specific_explanation() {
    let dir = tempfile::tempdir().unwrap();
    let a = convert_cmd(case_dir("unsloth-llama"), dir.path().join("u.gguf"))
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    for want in [
        "`base_model_name_or_path` is `unsloth/tiny-llama-bnb-4bit`, which is not a local directory",
        "is a pre-quantized (bnb-4bit) repository",
        "pass `--base` with the GGUF you deploy",
        "`--base-config` with the unquantized model's config.json (usually `unsloth/tiny-llama`)",
        "the quantized repo's own config.json works as well if you have it locally",
    ] {
        assert!(stderr.contains(want), "missing `{want}` in: {stderr}");
    }
    convert_against(
        "unsloth-llama",
        &base_gguf("llama"),
        &dir.path().join("u.gguf"),
    )
    .arg("--verify")
    .assert()
    .success();
}

#[test]
fn added_tokens_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.gguf");
    let a = convert_against("axolotl-added-tokens", &base_gguf("llama"), &out)
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    for want in [
        "error: `base_model.model.lm_head.weight` has 288 vocabulary rows but the base",
        "has 272: the vocabulary was grown by 16 rows for added tokens",
        "the base GGUF itself must be re-made: merge the adapter with its resized embeddings into the base",
        "or retrain without new tokens",
        "(2 more reason(s) to refuse;",
    ] {
        assert!(stderr.contains(want), "missing `{want}` in: {stderr}");
    }
    assert!(!out.exists());
    // Without a base the vocabulary cannot be compared; modules_to_save is refused with the trainers' names.
    let a = convert_cmd(case_dir("axolotl-added-tokens"), &out)
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains(
            "`modules_to_save` is [\"embed_tokens\",\"lm_head\"]: the embedding / output head are trained and saved \
             as full matrices (what Unsloth, axolotl `lora_modules_to_save` and LLaMA-Factory `additional_target`"
        ),
        "{stderr}"
    );
}

#[test]
fn llamafactory_pissa_output_dir_points_at_the_converted_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.gguf");
    let top = case_dir("llamafactory-pissa");
    let a = convert_against("llamafactory-pissa", &base_gguf("llama"), &out)
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("`init_lora_weights` is `pissa_niter_16`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "LLaMA-Factory already did: convert `{}`",
            top.join("pissa_converted").display()
        )),
        "{stderr}"
    );
    // The backup and the initial adapter say `init_lora_weights: true` but only work on the PiSSA-modified base.
    for sub in ["pissa_backup", "pissa_init"] {
        let a = convert_against(
            &format!("llamafactory-pissa/{sub}"),
            &base_gguf("llama"),
            &out,
        )
        .assert()
        .code(2);
        let stderr = stderr_of(&a);
        assert!(
            stderr.contains("`init_lora_weights` says `true`, but")
                && stderr.contains("is LLaMA-Factory's")
                && stderr.contains(&format!(
                    "convert `{}`",
                    top.join("pissa_converted").display()
                )),
            "{sub}: {stderr}"
        );
        assert!(!out.exists());
    }
    convert_against(
        "llamafactory-pissa/pissa_converted",
        &base_gguf("llama"),
        &out,
    )
    .arg("--verify")
    .assert()
    .success();
}

#[test]
fn default_adapter_names_and_base_layer_copies_convert_to_the_same_bytes() {
    // A raw `model.state_dict()` export keeps PEFT's adapter name (`lora_A.default.weight`) and the wrapped base
    // layers; the LoRA is the same, so the output must be byte-identical.
    let dir = tempfile::tempdir().unwrap();
    let raw = rewritten_copy(
        "llama",
        dir.path(),
        |k| {
            k.replace(".lora_A.weight", ".lora_A.default.weight")
                .replace(".lora_B.weight", ".lora_B.default.weight")
        },
        &[(
            "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
            vec![64, 64],
        )],
    );
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    convert_on(&raw, &a, "llama").assert().success();
    convert_against("llama", &base_gguf("llama"), &b)
        .assert()
        .success();
    assert_eq!(tensors_of(&a), tensors_of(&b));
    assert_eq!(
        GgufFile::open(&a).unwrap().get_f64("adapter.lora.alpha"),
        GgufFile::open(&b).unwrap().get_f64("adapter.lora.alpha")
    );
}

#[test]
fn torchtune_dora_export_is_refused_by_its_tensors() {
    // torchtune's adapter_config never says `use_dora`; its DoRA export is only recognisable by the magnitudes.
    let dir = tempfile::tempdir().unwrap();
    let dora = rewritten_copy(
        "torchtune-llama",
        dir.path(),
        |k| k.to_string(),
        &[(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
            vec![64],
        )],
    );
    let a = convert_on(&dora, dir.path().join("d.gguf"), "llama")
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains("tensor `base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector` is a DoRA \
                         magnitude vector"),
        "{stderr}"
    );
}

/// Every trainer fixture that is refused, with the whole message it gets (what is wrong and what to do). `{cases}`
/// and `{bases}` stand for the fixture directories.
const REFUSALS: &[(&str, bool, &str)] = &[
    (
        "axolotl-added-tokens",
        true,
        "error: `base_model.model.lm_head.weight` has 288 vocabulary rows but the base {bases}/llama/base.gguf has \
         272: the vocabulary was grown by 16 rows for added tokens (chat or special tokens; trainers pad the new size \
         to a multiple of 32 or 64), so this adapter needs a base that has them. A GGUF LoRA cannot add tokens or \
         replace full tensors, so the base GGUF itself must be re-made: merge the adapter with its resized \
         embeddings into the base (`PeftModel.from_pretrained(base_with_resized_vocab, DIR).merge_and_unload()`, \
         saved with the trainer's tokenizer) and convert that model with convert_hf_to_gguf.py — or retrain without \
         new tokens\n(2 more reason(s) to refuse; `lora-convert inspect` lists them)\n",
    ),
    (
        "axolotl-added-tokens",
        false,
        "error: `{cases}/axolotl-added-tokens/adapter_config.json`: `modules_to_save` is [\"embed_tokens\",\"lm_head\"]: \
         the embedding / output head are trained and saved as full matrices (what Unsloth, axolotl \
         `lora_modules_to_save` and LLaMA-Factory `additional_target` / `resize_vocab` do, usually because tokens \
         were added), and a GGUF LoRA can only add B·A to the base's tensors: llama.cpp cannot swap full tensors at \
         run time, nor grow the vocabulary. Merge the adapter into the base model (`merge_and_unload()`, with the \
         resized tokenizer if tokens were added) and convert the merged model with convert_hf_to_gguf.py; or retrain \
         without modules_to_save (and without new tokens)\n(3 more reason(s) to refuse; `lora-convert inspect` lists \
         them)\n",
    ),
    (
        "llamafactory-pissa",
        true,
        "error: `{cases}/llamafactory-pissa/adapter_config.json`: `init_lora_weights` is `pissa_niter_16`: a pissa \
         adapter only works with the base model PEFT modified at initialisation; save it converted with \
         `model.save_pretrained(out, path_initial_model_for_weight_conversion=INIT_DIR)` (a plain LoRA of twice the \
         rank) and convert that (LLaMA-Factory does this with `pissa_convert: true` and writes it to \
         OUTPUT_DIR/pissa_converted); LLaMA-Factory already did: convert `{cases}/llamafactory-pissa/pissa_converted`\n",
    ),
    (
        "llamafactory-pissa/pissa_backup",
        true,
        "error: `{cases}/llamafactory-pissa/pissa_backup/adapter_config.json`: `init_lora_weights` says `true`, but \
         `{cases}/llamafactory-pissa/pissa_backup` is LLaMA-Factory's trained (backup) PiSSA adapter: its factors \
         only work on the base that PiSSA modified at initialisation; convert \
         `{cases}/llamafactory-pissa/pissa_converted` (the same adapter converted to a plain LoRA of the original \
         base) instead\n",
    ),
    (
        "llamafactory-pissa/pissa_init",
        true,
        "error: `{cases}/llamafactory-pissa/pissa_init/adapter_config.json`: `init_lora_weights` says `true`, but \
         `{cases}/llamafactory-pissa/pissa_init` is LLaMA-Factory's initial PiSSA adapter: its factors only work on \
         the base that PiSSA modified at initialisation; convert `{cases}/llamafactory-pissa/pissa_converted` (the \
         same adapter converted to a plain LoRA of the original base) instead\n",
    ),
    (
        "torchtune-qwen2",
        true,
        "error: module `model.layers.0.self_attn.k_proj`: this is torchtune's PEFT export (adapter_config.json has \
         only torchtune's keys (r, lora_alpha, target_modules, peft_type, base_model_name_or_path)) of a Qwen2 model, \
         and torchtune 0.6.1 permutes the lora_B rows of q_proj and k_proj as if the model were Llama \
         (`tune_to_peft_adapter_weights` → `_permute_lora_matrix`) although its Qwen2 keeps the HF rotary layout, so \
         these factors are not what was trained (PEFT in PyTorch runs them wrongly too) — pass `--torchtune-qwen2 \
         undo` to convert what torchtune trained (the permutation is reversed exactly), or `--torchtune-qwen2 \
         as-saved` to convert the file as PEFT reads it\n(3 more reason(s) to refuse; `lora-convert inspect` lists \
         them)\n",
    ),
    (
        "unsloth-llama",
        false,
        "error: no base model to check the adapter against: `base_model_name_or_path` is \
         `unsloth/tiny-llama-bnb-4bit`, which is not a local directory with a config.json (lora-convert never \
         downloads from a model hub); pass `--base BASE.gguf` (the GGUF you will run the adapter with: every tensor \
         is checked against it) or `--base-config HF_MODEL_DIR` (its config.json). `unsloth/tiny-llama-bnb-4bit` is a \
         pre-quantized (bnb-4bit) repository (Unsloth and QLoRA trainers record the repo they loaded): the adapter \
         fits the unquantized model it came from, so pass `--base` with the GGUF you deploy (made from the \
         unquantized model, quantized as you like) or `--base-config` with the unquantized model's config.json \
         (usually `unsloth/tiny-llama`); the quantized repo's own config.json works as well if you have it locally\n",
    ),
    (
        "torchtune-llama",
        false,
        "error: no base model to check the adapter against: `base_model_name_or_path` is `tiny-llama`, which is not a \
         local directory with a config.json (lora-convert never downloads from a model hub); pass `--base BASE.gguf` \
         (the GGUF you will run the adapter with: every tensor is checked against it) or `--base-config \
         HF_MODEL_DIR` (its config.json). `{cases}/torchtune-llama` holds a config.json (torchtune copies the base \
         model's there): `--base-config {cases}/torchtune-llama` uses it\n",
    ),
];

#[test]
fn every_refused_trainer_fixture_gets_its_whole_message_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let cases = root().join("fixtures/cases").display().to_string();
    let bases = root().join("fixtures/bases").display().to_string();
    for &(case, with_base, message) in REFUSALS {
        let mut c = if with_base {
            convert_against(case, &base_gguf(&base_of(case)), &out)
        } else {
            let mut c = lora_convert();
            c.arg(case_dir(case)).arg("-o").arg(&out);
            c
        };
        let a = c.assert().code(2);
        let want = message
            .replace("{cases}", &cases)
            .replace("{bases}", &bases);
        assert_eq!(stderr_of(&a), want, "{case} (base given: {with_base})");
        assert!(!out.exists(), "{case}");
        if with_base && case_info(case)["expect"] == "refused" {
            let key = case_info(case)["error_contains"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(want.contains(&key), "{case}: case.json's error_contains");
        }
    }
    // Every refused trainer fixture is in the table, with its base.
    for case in [
        "axolotl-added-tokens",
        "llamafactory-pissa",
        "llamafactory-pissa/pissa_backup",
        "llamafactory-pissa/pissa_init",
    ] {
        assert_eq!(case_info(case)["expect"], "refused", "{case}");
        assert!(REFUSALS.iter().any(|&(c, b, _)| c == case && b), "{case}");
    }
}
