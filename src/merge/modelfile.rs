//! `--modelfile`: an Ollama Modelfile next to the merged model, so `ollama create NAME -f MERGED.Modelfile` serves
//! it (Ollama 0.34.1 and later no longer build models from an ADAPTER line). `FROM` is the merged file, relative to
//! the Modelfile; Ollama reads the chat template and the tokenizer from the GGUF itself; the end-of-generation
//! tokens are given as `stop` parameters so that a raw completion stops where the model's turn ends.

use std::path::{Path, PathBuf};

use crate::gguf::{GgufFile, Value};

/// Where the Modelfile of `output` goes: `merged.gguf` → `merged.Modelfile`.
pub fn path_for(output: &Path) -> PathBuf {
    output.with_extension("Modelfile")
}

/// The token text of each end-of-generation id the model names (EOS, EOT), without duplicates.
fn stop_tokens(base: &GgufFile) -> Vec<String> {
    let tokens = base
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(|a| &a.values);
    let mut out = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        let text = base
            .get_u64(key)
            .and_then(|id| tokens?.get(usize::try_from(id).ok()?))
            .and_then(Value::as_str);
        if let Some(t) = text
            && !t.is_empty()
            && !out.iter().any(|o| o == t)
        {
            out.push(t.to_string());
        }
    }
    out
}

/// The Modelfile's text.
pub fn text(base: &GgufFile, output: &Path, adapters: &[(String, f32)]) -> String {
    let file = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = path_for(output)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut t = format!(
        "# Ollama Modelfile written by lora-convert merge: ollama create NAME -f {name}\n# base {}; adapters {}\nFROM ./{file}\n",
        base.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        adapters
            .iter()
            .map(|(n, s)| format!("{n} ×{s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for stop in stop_tokens(base) {
        t.push_str(&format!("PARAMETER stop {}\n", quote(&stop)));
    }
    t
}

/// A Modelfile string value: double-quoted, with `\` and `"` escaped.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
