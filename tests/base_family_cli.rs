//! An adapter whose `base_model_name_or_path` names another model family than the base GGUF is refused (its shapes
//! may fit: the weights are another model's), naming both; `--allow-other-base-family` converts it anyway.

use crate::common::*;

/// The trained Gemma test adapter, its config saying it was trained on `base_model`.
fn gemma_adapter_claiming(dir: &std::path::Path, base_model: &str) -> std::path::PathBuf {
    let src = root().join("fixtures/gemma-lora/adapter");
    let out = dir.join("adapter");
    std::fs::create_dir(&out).unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        out.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    config["base_model_name_or_path"] = base_model.into();
    std::fs::write(out.join("adapter_config.json"), config.to_string()).unwrap();
    out
}

#[test]
fn a_llama_adapter_on_a_gemma_base_is_refused_with_both_names_and_the_override_converts_it() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = gemma_adapter_claiming(dir.path(), "meta-llama/Llama-3.2-1B-Instruct");
    let out = dir.path().join("out.gguf");
    let a = convert_cmd(&adapter, &out)
        .arg("--base")
        .arg(test_model())
        .assert()
        .code(2);
    let stderr = stderr_of(&a);
    assert!(
        stderr.contains(&format!(
            "the adapter was trained on `meta-llama/Llama-3.2-1B-Instruct` (Llama) but the base is `{}` \
             (general.architecture gemma3, general.name `Gemma 3 270m`, general.basename `gemma-3`) (Gemma)",
            test_model().display()
        )) && stderr.contains("pass --allow-other-base-family"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");

    convert_cmd(&adapter, &out)
        .arg("--base")
        .arg(test_model())
        .arg("--allow-other-base-family")
        .assert()
        .success();
    // The same family under another name, and a name that names no family, convert as they are.
    for name in ["google/gemma-3-270m-it", "my-org/my-finetune"] {
        let d = tempfile::tempdir().unwrap();
        let adapter = gemma_adapter_claiming(d.path(), name);
        convert_cmd(&adapter, d.path().join("o.gguf"))
            .arg("--base")
            .arg(test_model())
            .assert()
            .success();
    }
}
