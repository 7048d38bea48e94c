//! Hugging Face PEFT LoRA adapter directories (`adapter_config.json` + `adapter_model.safetensors`), and those of
//! the trainers that write PEFT's format (torchtune, Unsloth, axolotl, LLaMA-Factory; their traces in `trainer`):
//! the configuration with PEFT's exact per-module scaling (`config`, `scaling` rules), the key scheme (`tensors`),
//! read into the shared [`Adapter`] by the one safetensors scan of `crate::adapter`.

pub mod config;
pub mod tensors;
pub mod trainer;

use std::path::Path;

pub use config::AdapterConfig;

use crate::adapter::scan::{self, Key, KeyScheme, Stored};
use crate::adapter::{
    Adapter, Error, Framework, KeyKind, LoraPair, Packing, PairKind, Scan, TensorRef,
};

/// The adapter weights file PEFT writes.
pub const SAFETENSORS_FILE: &str = "adapter_model.safetensors";
/// The adapter configuration file PEFT writes.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The pickle file older PEFT versions (or `safe_serialization=False`) write.
pub const PICKLE_FILE: &str = "adapter_model.bin";

const WHERE: &str = "point lora-convert at the directory PEFT's save_pretrained wrote";

/// Open and validate a PEFT adapter directory; anything a GGUF LoRA cannot express is an error (the first such).
pub fn open(dir: &Path) -> Result<Adapter, Error> {
    scan(dir)?.into_adapter()
}

/// Read a PEFT adapter directory, collecting refusals. Errors only when there is nothing to read: missing or
/// pickle files, invalid JSON, a malformed configuration, a corrupt safetensors file.
pub fn scan(dir: &Path) -> Result<Scan, Error> {
    let config_path = scan::require_config(dir, CONFIG_FILE, WHERE)?;
    let st_path = dir.join(SAFETENSORS_FILE);
    if !st_path.is_file() {
        if dir.join(PICKLE_FILE).is_file() {
            return Err(Error::Pickle {
                path: dir.join(PICKLE_FILE),
            });
        }
        return Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            file: SAFETENSORS_FILE,
            found: scan::listing(dir),
            hint: WHERE.into(),
        });
    }
    let text = scan::read_text(&config_path)?;
    let (config, mut refusals) = AdapterConfig::read(&text, &config_path)?;
    let trainers = trainer::detect(dir, &config.keys, config.base_model_name_or_path.as_deref());
    trainer::pissa_refusals(dir, &config_path, &mut refusals);

    let scanned = scan::scan(&st_path, &Scheme { config: &config })?;
    let (adapter, pair_refusals) = Adapter::new(
        dir.to_path_buf(),
        Framework::Peft,
        config,
        st_path,
        scanned,
        trainers,
    );
    refusals.extend(pair_refusals);
    Ok(Scan {
        adapter,
        refusals,
        mlx: None,
    })
}

/// PEFT's keys (peft 0.21.2 `utils/save_and_load.py`), and its pairs checked against the configuration.
struct Scheme<'c> {
    config: &'c AdapterConfig,
}

impl KeyScheme for Scheme<'_> {
    const HALVES: [&'static str; 2] = ["lora_A", "lora_B"];
    const UNKNOWN: [&'static str; 3] = [
        "LoRA factors",
        "base_model.model.<module>.lora_A.weight",
        "a PEFT LoRA adapter",
    ];

    fn classify(&self, key: &str, shape: &[usize]) -> Key {
        let refused = |kind: KeyKind, message: String| Key::Other {
            kind,
            refusal: Some(message),
        };
        match tensors::classify(key) {
            KeyKind::Factor { module, kind, is_a } => Key::Factor { module, kind, is_a },
            KeyKind::BaseLayerCopy => Key::Ignored,
            KeyKind::DoraMagnitude => refused(
                KeyKind::DoraMagnitude,
                "is a DoRA magnitude vector: DoRA cannot be a GGUF LoRA adapter — merge the adapter into the \
                 base model with `lora-convert merge` instead"
                    .into(),
            ),
            KeyKind::LoraBias => refused(
                KeyKind::LoraBias,
                "is a LoRA bias: llama.cpp LoRA has no bias term — retrain with lora_bias=False, or merge".into(),
            ),
            KeyKind::TrainableTokens => refused(
                KeyKind::TrainableTokens,
                "is a trainable-token delta: llama.cpp cannot apply it — merge instead".into(),
            ),
            KeyKind::FullWeight => refused(
                KeyKind::FullWeight,
                format!(
                    "is a full weight {shape:?}, not a LoRA factor ({}): llama.cpp cannot swap full tensors at run \
                     time — merge the adapter into the base and convert the merged model, or retrain without \
                     modules_to_save / added tokens",
                    if tensors::is_vocabulary_key(key) {
                        "modules_to_save or a resized embedding — trainers save these when tokens are added"
                    } else {
                        "modules_to_save"
                    }
                ),
            ),
            KeyKind::Unknown => Key::Unknown,
        }
    }

    fn pair(
        &self,
        path: &Path,
        saved_as: &str,
        kind: PairKind,
        a: &Stored,
        b: &Stored,
    ) -> Result<LoraPair, Error> {
        let shape_err = |message: String| Error::Shape {
            path: path.to_path_buf(),
            module: saved_as.to_string(),
            message,
            factors: format!("A `{}` {:?}, B `{}` {:?}", a.key, a.shape, b.key, b.shape),
        };
        let (&[ra, _], &[_, rb]) = (a.shape.as_slice(), b.shape.as_slice()) else {
            return Err(shape_err("both factors must be 2-D".into()));
        };
        if ra != rb {
            return Err(shape_err(format!("A has rank {ra} but B has rank {rb}")));
        }
        if ra == 0 || a.shape.contains(&0) || b.shape.contains(&0) {
            return Err(shape_err("a factor is empty".into()));
        }
        let module = tensors::strip_base_layers(saved_as);
        // A ParamWrapper pair's rank and parameter are decided later, from the base's shapes
        // (convert::params): its A has E·r rows for a 3-D expert parameter.
        let candidates = if kind == PairKind::Linear {
            self.config.targeted_parameters(&module)
        } else {
            Vec::new()
        };
        let scaling = self.config.scaling_for(&module);
        if candidates.is_empty() && scaling.rank as usize != ra {
            return Err(shape_err(format!(
                "the tensors have rank {ra} but adapter_config.json gives r = {} for this module (r / rank_pattern)",
                scaling.rank
            )));
        }
        if candidates.is_empty() && module != saved_as {
            return Err(shape_err(
                "is saved under a `base_layer` path, which PEFT only writes for target_parameters, but \
                 adapter_config.json's target_parameters names no parameter of this module"
                    .into(),
            ));
        }
        let factor = |t: &Stored| TensorRef {
            key: t.key.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            transposed: false,
        };
        Ok(LoraPair {
            module,
            saved_as: saved_as.to_string(),
            parameter: None,
            candidates,
            packing: Packing::Single,
            kind,
            a: factor(a),
            b: factor(b),
            rank: ra,
            scaling,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::Dtype;

    #[test]
    fn scan_lists_the_factors_of_refused_pairs_and_reports_each_module_once() {
        use safetensors::tensor::TensorView;
        let dir = tempfile::tempdir().unwrap();
        let f32s: Vec<u8> = (0..8).flat_map(|x| (x as f32).to_le_bytes()).collect();
        let i32s: Vec<u8> = (0..8).flat_map(|x: i32| x.to_le_bytes()).collect();
        let m = |module: &str, half: &str| {
            format!("base_model.model.model.layers.0.self_attn.{module}.lora_{half}.weight")
        };
        let views = vec![
            // rank 2 of r = 2, but B is 3-D
            (
                m("q_proj", "A"),
                TensorView::new(Dtype::F32, vec![2, 4], &f32s).unwrap(),
            ),
            (
                m("q_proj", "B"),
                TensorView::new(Dtype::F32, vec![2, 2, 2], &f32s).unwrap(),
            ),
            // an I32 A: refused once, its B listed
            (
                m("v_proj", "A"),
                TensorView::new(Dtype::I32, vec![2, 4], &i32s).unwrap(),
            ),
            (
                m("v_proj", "B"),
                TensorView::new(Dtype::F32, vec![4, 2], &f32s).unwrap(),
            ),
        ];
        std::fs::write(
            dir.path().join(SAFETENSORS_FILE),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj","v_proj"]}"#,
        )
        .unwrap();
        let s = scan(dir.path()).unwrap();
        let found: Vec<String> = s
            .refusals
            .iter()
            .map(|e| match e {
                Error::Dtype { key, .. } => format!("dtype {key}"),
                Error::Shape {
                    module, message, ..
                } => format!("shape {module}: {message}"),
                other => panic!("unexpected {other}"),
            })
            .collect();
        assert_eq!(
            found,
            [
                format!("dtype {}", m("v_proj", "A")),
                "shape model.layers.0.self_attn.q_proj: both factors must be 2-D".to_string(),
            ]
        );
        assert!(s.adapter.pairs.is_empty());
        let mut others: Vec<&str> = s.adapter.others.iter().map(|t| t.key.as_str()).collect();
        others.sort_unstable();
        assert_eq!(
            others,
            [
                m("q_proj", "A"),
                m("q_proj", "B"),
                m("v_proj", "A"),
                m("v_proj", "B")
            ]
        );
    }
}
