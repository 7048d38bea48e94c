//! Everything that can stop a conversion. Each variant names the file, module or tensor it is about and says what
//! the user can do; the binary prints the chain and exits with status 2.

use std::path::PathBuf;

use super::base::BaseError;
use super::factor::RowsMismatch;
use crate::{adapter, arch, gguf, peft};

/// Why a conversion was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The adapter directory could not be read, or uses something a GGUF LoRA cannot express.
    #[error(transparent)]
    Adapter(#[from] adapter::Error),
    /// The base model description could not be read.
    #[error(transparent)]
    Base(#[from] BaseError),
    /// No base model was given and none could be found.
    #[error(
        "no base model to check the adapter against: {why}; pass `--base BASE.gguf` (the GGUF you will run the \
         adapter with: every tensor is checked against it) or `--base-config HF_MODEL_DIR` (its config.json){hint}"
    )]
    NoBase {
        /// Why `base_model_name_or_path` did not help.
        why: String,
        /// What else we know (a quantized repo name, a config.json beside the adapter), or empty.
        hint: String,
    },
    /// The architecture is not one llama.cpp converts, or not one we know.
    #[error("{what}; supported GGUF architectures: {supported}")]
    UnknownArchitecture {
        /// What was looked up.
        what: String,
        /// A list of the supported ones.
        supported: String,
    },
    /// The architecture of the base and the one requested disagree.
    #[error(
        "architecture mismatch: {left} but {right}; llama.cpp refuses such an adapter (\"model arch and LoRA arch \
         mismatch\") — convert against the base you deploy"
    )]
    ArchMismatch {
        /// One side, described.
        left: String,
        /// The other side, described.
        right: String,
    },
    /// `base_model_name_or_path` names another model family than the base GGUF.
    #[error(
        "the adapter was trained on `{}` ({}) but the base is {} ({}): the shapes may fit, the weights are another \
         model's — convert against the base it was trained on, or pass --allow-other-base-family if its \
         base_model_name_or_path is wrong",
        .0.adapter_base,
        .0.adapter_families.join(", "),
        .0.base,
        .0.base_families.join(", ")
    )]
    BaseFamily(super::base_family::FamilyMismatch),
    /// A PEFT module has no GGUF counterpart.
    #[error("module `{module}`: {source}")]
    Map {
        /// The PEFT module path.
        module: String,
        /// Why it could not be mapped.
        #[source]
        source: arch::MapError,
    },
    /// A row transform does not fit the module's shape.
    #[error("module `{module}` → `{target}`: {source} (is the base model's head count right?)")]
    Rows {
        /// The PEFT module path.
        module: String,
        /// The GGUF target.
        target: String,
        /// The mismatch.
        #[source]
        source: RowsMismatch,
    },
    /// A transform needs head counts that the base description does not give.
    #[error(
        "module `{module}` → `{target}` needs the base model's attention head counts, which {base} does not give"
    )]
    NeedHeads {
        /// The PEFT module path.
        module: String,
        /// The GGUF target.
        target: String,
        /// The base description.
        base: String,
    },
    /// A LoRA on the token embedding or output head of a model whose output shares the embedding.
    #[error(
        "module `{module}` → `{target}`: the base {base} ties its output head to the token embedding; {why} — \
         retrain without `{module}` in target_modules, or merge the adapter into the base instead"
    )]
    TiedEmbedding {
        /// The PEFT module path.
        module: String,
        /// The GGUF target.
        target: String,
        /// The base description.
        base: String,
        /// What llama.cpp would do.
        why: &'static str,
    },
    /// The target tensor does not exist in the base GGUF.
    #[error(
        "module `{module}` → `{target}`: no such tensor in the base `{base}` (wrong base model? its arch is \
         `{arch}` with {n_tensors} tensors)"
    )]
    TargetMissing {
        /// The PEFT module path.
        module: String,
        /// The GGUF target.
        target: String,
        /// The base file.
        base: String,
        /// The base's architecture.
        arch: String,
        /// How many tensors the base has.
        n_tensors: usize,
    },
    /// The adapter's factor shapes do not fit the base tensor.
    #[error(
        "module `{module}` → `{target}`: the adapter implies ne {expected:?} but the base `{base}` has ne \
         {found:?} (wrong base model, or an adapter trained on another size)"
    )]
    ShapeMismatch {
        /// The PEFT module path.
        module: String,
        /// The GGUF target.
        target: String,
        /// The base file.
        base: String,
        /// What the adapter implies (ggml order).
        expected: Vec<u64>,
        /// What the base has (ggml order).
        found: Vec<u64>,
    },
    /// An expert index beyond the base's expert count (llama.cpp would not notice and corrupt memory).
    #[error(
        "module `{module}`: expert {expert} but the base {base} has {n_expert} experts per layer (wrong base model?)"
    )]
    ExpertCount {
        /// The PEFT module path.
        module: String,
        /// The expert index.
        expert: usize,
        /// The base description.
        base: String,
        /// The base's expert count.
        n_expert: u64,
    },
    /// A LoRA holding a whole expert stack with another expert count than the base (llama.cpp checks only
    /// ne[0] and ne[1] and would run it, reading and writing out of bounds).
    #[error(
        "`{module}`: the LoRA holds {held} experts ({detail}) but the base {base} has {n_expert} experts per layer \
         — the adapter was trained on another model; llama.cpp would load it without noticing and compute garbage"
    )]
    ExpertStack {
        /// The PEFT module (and parameter).
        module: String,
        /// Experts the adapter holds.
        held: usize,
        /// How that was counted.
        detail: String,
        /// The base description.
        base: String,
        /// The base's expert count.
        n_expert: u64,
    },
    /// A `target_parameters` pair whose shapes fit none of the parameters targeted on its module.
    #[error(
        "`{saved_as}` (lora_A {a_shape:?}, lora_B {b_shape:?}) fits none of the parameters target_parameters names \
         for this module ({candidates}): {why} (wrong base model, or r / rank_pattern not the ones trained with?)"
    )]
    ParameterShape {
        /// The module path as saved.
        saved_as: String,
        /// A's shape.
        a_shape: Vec<usize>,
        /// B's shape.
        b_shape: Vec<usize>,
        /// The targeted parameters of the module.
        candidates: String,
        /// What each one would need.
        why: String,
    },
    /// A `target_parameters` pair whose shapes fit several targeted parameters.
    #[error(
        "`{saved_as}`: its shapes fit more than one of the parameters target_parameters names for this module \
         ({candidates}) against the base {base}, so which one it adapts cannot be told (PEFT's nesting order is no \
         evidence); pass `--base BASE.gguf` so every parameter's shape is known"
    )]
    ParameterAmbiguous {
        /// The module path as saved.
        saved_as: String,
        /// The candidates.
        candidates: String,
        /// The base description.
        base: String,
    },
    /// Expert LoRAs of one stacked tensor with different ranks cannot be stacked.
    #[error(
        "`{target}`: experts have different LoRA ranks ({ranks}); a stacked GGUF tensor needs one rank"
    )]
    ExpertRanks {
        /// The GGUF target.
        target: String,
        /// The ranks found.
        ranks: String,
    },
    /// llama.cpp multiplies this target's base output by a scale from the base (`….scale`) but not its LoRA term,
    /// and the scale cannot be read (a config-only base, or an NVFP4 weight whose scale also holds its
    /// quantization's).
    #[error(
        "module `{module}` → `{target}`: llama.cpp multiplies this tensor's base output by `{scale}` but not its \
         LoRA term, while PyTorch scales both, so the scale must be folded into lora_b — {why}"
    )]
    BaseScale {
        /// The PEFT module path.
        module: String,
        /// The GGUF target.
        target: String,
        /// The scale tensor.
        scale: String,
        /// Why it cannot be read, and what to do.
        why: String,
    },
    /// A LoRA for one part of a split the base stores fused (gate or up experts on a `--fuse-gate-up-exps` base).
    #[error(
        "module `{module}` → `{target}`: the base {base} stores the gate and up experts fused as `{fused}` \
         (convert_hf_to_gguf.py --fuse-gate-up-exps), and a LoRA for gate or up alone cannot be expressed on it \
         without combining both into one pair of twice the rank, which lora-convert does not do yet; convert the \
         base without --fuse-gate-up-exps, or train the experts with target_parameters on the fused gate_up_proj"
    )]
    FusedInBase {
        /// The PEFT module path.
        module: String,
        /// The GGUF target (the part).
        target: String,
        /// The fused tensor the base has.
        fused: String,
        /// The base.
        base: String,
    },
    /// llama.cpp's graph multiplies the target without LoRA: the pair would load and do nothing.
    #[error(
        "module `{module}` → `{target}`: llama.cpp's `{arch}` graph multiplies this tensor without LoRA \
         (ggml_mul_mat, not build_lora_mm, in src/models/), so the pair would load and change nothing — the \
         adapter would not behave as trained; retrain without this module, or pass `--drop-ignored-pairs` to \
         convert without such pairs knowingly (llama.cpp then computes the adapter minus them)"
    )]
    NoEffect {
        /// The PEFT module path.
        module: String,
        /// The GGUF target.
        target: String,
        /// The GGUF architecture.
        arch: &'static str,
    },
    /// Two PEFT modules map to the same GGUF tensor.
    #[error(
        "modules `{first}` and `{second}` both map to `{target}`; a GGUF adapter holds one pair per tensor"
    )]
    DuplicateTarget {
        /// The GGUF target.
        target: String,
        /// The first module.
        first: String,
        /// The second module.
        second: String,
    },
    /// The module's kind does not fit the target (an embedding LoRA on a linear weight or the reverse).
    #[error(
        "module `{module}` → `{target}`: a {found} LoRA pair cannot target a {expected} tensor"
    )]
    KindMismatch {
        /// The PEFT module path.
        module: String,
        /// The GGUF target.
        target: String,
        /// What the target needs.
        expected: &'static str,
        /// What the adapter has.
        found: &'static str,
    },
    /// torchtune's PEFT export of a Qwen2 model: the q/k factors are in the wrong row order (see `convert::quirks`).
    #[error(
        "module `{module}`: this is torchtune's PEFT export ({evidence}) of a Qwen2 model, and torchtune 0.6.1 \
         permutes the lora_B rows of q_proj and k_proj as if the model were Llama (`tune_to_peft_adapter_weights` → \
         `_permute_lora_matrix`) although its Qwen2 keeps the HF rotary layout, so these factors are not what was \
         trained (PEFT in PyTorch runs them wrongly too) — pass `--torchtune-qwen2 undo` to convert what torchtune \
         trained (the permutation is reversed exactly), or `--torchtune-qwen2 as-saved` to convert the file as PEFT \
         reads it"
    )]
    TorchtuneQwen2 {
        /// The PEFT module path.
        module: String,
        /// Why we think torchtune wrote it.
        evidence: String,
    },
    /// The adapter has no LoRA pairs at all.
    #[error("`{dir}` holds no LoRA pairs: nothing to convert")]
    Empty {
        /// The adapter directory.
        dir: PathBuf,
    },
    /// The output exists and `--force` was not given.
    #[error("`{path}` exists; pass --force to overwrite it")]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// Writing the output failed.
    #[error("writing `{path}`: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the output's data failed part-way (a full disk, a file-size limit …); nothing is left behind.
    #[error("cannot write `{path}` ({what}): {source}; nothing was written there")]
    Write {
        /// The output path asked for.
        path: PathBuf,
        /// What was being written: the space reservation, the header, a tensor.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The GGUF container layer refused something.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// A finite factor value that the output type cannot hold once scaled (f16 above 65504, a q8_0 block scale
    /// above f16's range, or the scaling fold beyond f32): it would be written as infinity.
    #[error(
        "`{path}`: module `{module}` → `{tensor}`: value #{index} is too large for {ggml_type} once scaled (it \
         would be written as infinity){}",
        overflow_hint(*ggml_type)
    )]
    Overflow {
        /// The adapter's weights file.
        path: PathBuf,
        /// The PEFT module path.
        module: String,
        /// The GGUF tensor being written (`blk.0.attn_q.weight.lora_b`).
        tensor: String,
        /// The output type.
        ggml_type: gguf::GgmlType,
        /// The first value concerned, in the written tensor's element order.
        index: usize,
    },
    /// Reading back the written file found a difference beyond the output type's rounding.
    #[error(
        "verification failed for `{target}`: |ΔW error| {error:.3e} exceeds the {dtype} rounding bound {bound:.3e} \
         at row {row}, column {col} — please report this as a bug"
    )]
    Verify {
        /// The GGUF target.
        target: String,
        /// The output type.
        dtype: String,
        /// The worst error.
        error: f64,
        /// Its bound.
        bound: f64,
        /// Where (ΔW row).
        row: usize,
        /// Where (ΔW column).
        col: usize,
    },
}

/// The message of `err` with its sources appended where they add something (what the command lines print).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl ConvertError {
    /// What the refusal is about — a module, key, tensor or file — for listings (`inspect`, the manifest).
    pub fn subject(&self) -> String {
        use ConvertError as C;
        let path = |p: &std::path::Path| p.display().to_string();
        match self {
            C::Adapter(e) => e.subject(),
            C::Base(_) | C::NoBase { .. } | C::BaseFamily(_) => "(base)".into(),
            C::UnknownArchitecture { .. } | C::ArchMismatch { .. } => "(architecture)".into(),
            C::Map { module, .. }
            | C::Rows { module, .. }
            | C::NeedHeads { module, .. }
            | C::TiedEmbedding { module, .. }
            | C::TargetMissing { module, .. }
            | C::ShapeMismatch { module, .. }
            | C::ExpertCount { module, .. }
            | C::KindMismatch { module, .. }
            | C::ExpertStack { module, .. }
            | C::BaseScale { module, .. }
            | C::FusedInBase { module, .. }
            | C::NoEffect { module, .. }
            | C::TorchtuneQwen2 { module, .. } => module.clone(),
            C::ParameterShape { saved_as, .. } | C::ParameterAmbiguous { saved_as, .. } => {
                peft::tensors::strip_base_layers(saved_as)
            }
            C::DuplicateTarget { second, .. } => second.clone(),
            C::ExpertRanks { target, .. } | C::Verify { target, .. } => target.clone(),
            C::Overflow { tensor, .. } => tensor.clone(),
            C::Empty { dir } => path(dir),
            C::OutputExists { path: p } | C::Io { path: p, .. } | C::Write { path: p, .. } => {
                path(p)
            }
            C::Gguf(_) => "(gguf)".into(),
        }
    }
}

/// What to do about an [`ConvertError::Overflow`] of `ty`.
fn overflow_hint(ty: gguf::GgmlType) -> &'static str {
    if ty == gguf::GgmlType::F32 {
        "; the adapter's values are beyond f32 and cannot be converted (a diverged training run?)"
    } else {
        "; convert with `--outtype f32`"
    }
}
