//! The llama.cpp engine (through the llama-cpp-2 crate) — the only module that touches llama.cpp.
//!
//! One process-wide backend; one model load per run; adapters loaded once before any context (llama-cpp-2 needs the
//! model mutably to load one); two contexts on the one model — base and adapted — whose KV caches are emptied
//! between passes. A run:
//!
//! 1. the base model's greedy continuations, once;
//! 2. teacher forcing on them, chunk by chunk: a chunk (whole sequences, one logical batch) is decoded once by the
//!    base context, and its base rows stay there while the adapted context decodes the identical batch at every
//!    scale (switch, decode, compare over the whole vocabulary) — the base logits are never recomputed per scale;
//! 3. the adapted model's greedy continuations at every scale > 0 (at scale 0 the graph is the base's, checked bit
//!    for bit in step 2, so its continuations are the base's).
//!
//! Base and adapted passes use the identical batch layout, because ggml's CPU kernels make logits depend on batch
//! composition. `--sequential` runs the same steps one prompt at a time (the baseline for benchmarks).

use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use rayon::prelude::*;

use super::alora::{self, Activation};
use super::divergence::{BaseRow, RowComparison, compare, max_argmax};
use super::golden::{GoldenPrompt, PromptText};
pub use super::request::{EngineConfig, EngineError, Progress};
use super::results::{
    AloraRun, BaseContinuation, EngineSettings, MergedMeasurement, Partial, PassTiming,
    PhaseTimings, PromptMeasurement, RunMeasurements, Timings,
};

/// The process-wide llama.cpp backend (llama.cpp allows one initialisation per process).
pub fn backend(verbose: bool) -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    let b = BACKEND.get_or_init(|| {
        let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
        // LORA_GGUF_LLAMA_LOG=1 shows llama.cpp's log in tests too.
        if !verbose && std::env::var_os("LORA_GGUF_LLAMA_LOG").is_none() {
            b.void_logs();
        }
        Ok(b)
    });
    b.as_ref().map_err(|e| EngineError::Backend(e.clone()))
}

/// The GPU devices of the llama.cpp backends built in (`cuda`, `vulkan`, `metal`, `rocm` features), as
/// "Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))". Empty for a CPU-only build or when no device is found.
pub fn gpu_devices(verbose: bool) -> Result<Vec<String>, EngineError> {
    use llama_cpp_2::LlamaBackendDeviceType as Type;
    backend(verbose)?;
    Ok(llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, Type::Gpu | Type::IntegratedGpu))
        .map(|d| format!("{} ({})", d.name, d.description))
        .collect())
}

/// Layers offloaded: `asked` (None: every layer when there is a GPU device, else none), never more than the model
/// has (llama.cpp counts the output layer as one more).
fn offloaded_layers(asked: Option<u32>, gpus: &[String], n_layer: u32) -> u32 {
    if gpus.is_empty() {
        return 0;
    }
    asked.unwrap_or(u32::MAX).min(n_layer + 1)
}

/// Where the model runs, for the reports: "CPU" or the GPU devices with the layers offloaded to them.
fn backend_description(gpus: &[String], gpu_layers: u32, n_layer: u32) -> String {
    if gpu_layers == 0 {
        let why = if gpus.is_empty() {
            "no GPU backend built in or no GPU device found"
        } else {
            "--gpu-layers 0"
        };
        return format!("CPU ({why})");
    }
    format!(
        "{}; {gpu_layers} of {} layers offloaded",
        gpus.join(", "),
        n_layer + 1
    )
}

/// Load a model file (memory-mapped) on the CPU, whatever backends are built in (tests and tools that compare
/// numbers with CPU references).
pub fn load_model(path: &Path, verbose: bool) -> Result<LlamaModel, EngineError> {
    load_model_offloaded(path, verbose, Some(0)).map(|(model, _)| model)
}

/// Load a model file (memory-mapped), with `gpu_layers` of its layers on the GPU devices (None: all when there is
/// one). Returns the model and the layers offloaded.
pub fn load_model_offloaded(
    path: &Path,
    verbose: bool,
    gpu_layers: Option<u32>,
) -> Result<(LlamaModel, u32), EngineError> {
    let backend = backend(verbose)?;
    let gpus = gpu_devices(verbose)?;
    let load = |n: u32| {
        LlamaModel::load_from_file(
            backend,
            path,
            &LlamaModelParams::default().with_n_gpu_layers(n),
        )
        .map_err(|e| EngineError::ModelLoad {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    if gpus.is_empty() || gpu_layers == Some(0) {
        return Ok((load(0)?, 0));
    }
    // llama.cpp clamps n_gpu_layers to the model's layers (+1 for the output layer); read the count back.
    let model = load(gpu_layers.unwrap_or(u32::MAX))?;
    let offloaded = offloaded_layers(gpu_layers, &gpus, model.n_layer());
    Ok((model, offloaded))
}

/// Load a GGUF LoRA adapter for `model`.
pub fn load_adapter(model: &mut LlamaModel, path: &Path) -> Result<LlamaLoraAdapter, EngineError> {
    model
        .lora_adapter_init(path)
        .map_err(|e| EngineError::AdapterLoad {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Create a context for `n_seq` sequences of up to `n_ctx` tokens in all, decoding logical batches of up to
/// `n_batch` tokens in physical batches of `n_ubatch`.
pub fn new_context<'m>(
    model: &'m LlamaModel,
    n_ctx: u32,
    n_batch: u32,
    n_ubatch: u32,
    n_seq: u32,
    threads: i32,
) -> Result<LlamaContext<'m>, EngineError> {
    let backend = backend(false)?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx.max(1)))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_ubatch)
        .with_n_seq_max(n_seq.max(1))
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_kv_unified(true);
    model
        .new_context(backend, params)
        .map_err(|e| EngineError::Context {
            n_ctx,
            message: e.to_string(),
        })
}

/// llama.cpp serialises model loading poorly across threads in one process; tests load models in parallel.
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// Decode `tokens` as one sequence with the base model and, when given, an adapter at each of `scales`; returns
/// all-position logits (T × V, row-major) per pass: first the base, then one per scale. Used by the converter's
/// end-to-end tests and `lora-convert --check-logits`-style probes.
pub fn logits_for_tokens(
    base: &Path,
    adapter: Option<&Path>,
    scales: &[f32],
    tokens: &[i32],
    threads: i32,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let (mut model, mut lora) = {
        let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut model = load_model(base, false)?;
        let lora = adapter.map(|a| load_adapter(&mut model, a)).transpose()?;
        (model, lora)
    };
    let _ = &mut model;
    let n = tokens.len();
    let mut ctx = exact_probe_context(&model, n, threads)?;
    let n_vocab = model.n_vocab() as usize;
    let mut out = Vec::new();
    let pass = |ctx: &mut LlamaContext| -> Result<Vec<f32>, EngineError> {
        ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(n, 1);
        for (i, &t) in tokens.iter().enumerate() {
            batch
                .add(LlamaToken::new(t), i as i32, &[0], true)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| EngineError::Decode(e.to_string()))?;
        let mut logits = Vec::with_capacity(n * n_vocab);
        for i in 0..n {
            logits.extend_from_slice(ctx.get_logits_ith(i as i32));
        }
        Ok(logits)
    };
    out.push(pass(&mut ctx)?);
    if let Some(lora) = lora.as_mut() {
        for &s in scales {
            ctx.lora_adapter_set(lora, s)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            out.push(pass(&mut ctx)?);
        }
        ctx.lora_adapter_remove(lora)
            .map_err(|e| EngineError::Decode(e.to_string()))?;
    }
    Ok(out)
}

/// A context for the exactness probes: room for `n` tokens in one batch, an F32 KV cache and no flash attention
/// (the CPU flash-attention kernel rounds Q to f16), so that a comparison with PyTorch measures the adapter, not f16
/// rounding of queries, keys and values.
fn exact_probe_context(
    model: &LlamaModel,
    n: usize,
    threads: i32,
) -> Result<LlamaContext<'_>, EngineError> {
    let n_ctx = (n as u32).next_power_of_two().max(64);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_type_k(KvCacheType::F32)
        .with_type_v(KvCacheType::F32)
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED);
    model
        .new_context(backend(false)?, params)
        .map_err(|e| EngineError::Context {
            n_ctx,
            message: e.to_string(),
        })
}

/// Decode `tokens` as one sequence with `adapter` at `scale` acting only from position `first_adapted` on (the
/// positions before it decoded first, without the adapter, as llama-server runs an aLoRA); returns the logits of
/// every position (T × V, row-major). The probe the aLoRA fixture's logits are checked with.
pub fn logits_activated_from(
    base: &Path,
    adapter: &Path,
    scale: f32,
    tokens: &[i32],
    first_adapted: usize,
    threads: i32,
) -> Result<Vec<f32>, EngineError> {
    let (model, mut lora) = {
        let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut model = load_model(base, false)?;
        let lora = load_adapter(&mut model, adapter)?;
        (model, lora)
    };
    let n = tokens.len();
    let mut ctx = exact_probe_context(&model, n, threads)?;
    let n_vocab = model.n_vocab() as usize;
    let dec = |e: String| EngineError::Decode(e);
    let mut logits = Vec::with_capacity(n * n_vocab);
    for (range, on) in [
        (0..first_adapted.min(n), false),
        (first_adapted.min(n)..n, true),
    ] {
        if range.is_empty() {
            continue;
        }
        if on {
            ctx.lora_adapter_set(&mut lora, scale)
                .map_err(|e| dec(e.to_string()))?;
        }
        let mut batch = LlamaBatch::new(range.len(), 1);
        for i in range.clone() {
            batch
                .add(LlamaToken::new(tokens[i]), i as i32, &[0], true)
                .map_err(|e| dec(e.to_string()))?;
        }
        ctx.decode(&mut batch).map_err(|e| dec(e.to_string()))?;
        for k in 0..range.len() {
            logits.extend_from_slice(&ctx.get_logits_ith(k as i32)[..n_vocab]);
        }
    }
    Ok(logits)
}

/// The base model and adapters, loaded once for a whole run.
pub struct Engine {
    model: LlamaModel,
    adapters: Vec<(PathBuf, f32, LlamaLoraAdapter)>,
    cfg: EngineConfig,
    /// Where the model runs, for the reports (`backend_description`).
    backend: String,
    /// Layers offloaded to GPU devices.
    gpu_layers: u32,
    model_load_ms: f64,
    adapter_load_ms: f64,
    /// Holds the combined adapter of a stack for the engine's lifetime.
    _stack_dir: Option<tempfile::TempDir>,
    /// `--merged`: a model with the adapters merged into it, run next to base + runtime adapter at scale 1.
    merged: Option<LlamaModel>,
}

/// One prompt ready to run.
struct Prepared {
    tokens: Vec<i32>,
    max_tokens: usize,
    /// Where the adapter acts (an aLoRA: from its invocation, as llama-server runs it).
    activation: Activation,
}

/// Per-prompt teacher-forced comparison.
#[derive(Clone, Copy, Default)]
struct Compare {
    kl_sum: f64,
    kl_max: f64,
    agree: usize,
    positions: usize,
    max_abs: f32,
}

impl Compare {
    fn add(&mut self, c: RowComparison) {
        self.kl_sum += c.kl;
        self.kl_max = self.kl_max.max(c.kl);
        self.agree += usize::from(c.same_top1);
        self.positions += 1;
        self.max_abs = self.max_abs.max(c.max_abs);
    }
}

impl Engine {
    /// Load the base model once and every adapter once (before any context exists).
    pub fn load(
        base: &Path,
        adapters: &[(PathBuf, f32)],
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        // llama-cpp-2 exposes one active adapter per context: a stack runs as one equivalent adapter.
        let mut stack_dir = None;
        let combined;
        let adapters: &[(PathBuf, f32)] = if adapters.len() > 1 {
            let dir = tempfile::tempdir().map_err(|e| EngineError::AdapterLoad {
                path: adapters[0].0.clone(),
                message: format!("creating a temporary directory for the stack: {e}"),
            })?;
            let path = dir.path().join("stack.gguf");
            crate::gguf_adapter::stack::combine(adapters, &path).map_err(|e| {
                EngineError::AdapterLoad {
                    path: adapters[0].0.clone(),
                    message: format!("combining the stack: {e}"),
                }
            })?;
            stack_dir = Some(dir);
            combined = [(path, 1.0)];
            &combined
        } else {
            adapters
        };
        let t = Instant::now();
        let (mut model, gpu_layers) = {
            let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            load_model_offloaded(base, cfg.verbose, cfg.gpu_layers)?
        };
        let backend = backend_description(&gpu_devices(cfg.verbose)?, gpu_layers, model.n_layer());
        let model_load_ms = ms(t);
        let t = Instant::now();
        let mut loaded = Vec::new();
        for (path, scale) in adapters {
            loaded.push((path.clone(), *scale, load_adapter(&mut model, path)?));
        }
        Ok(Engine {
            model,
            adapters: loaded,
            cfg,
            backend,
            gpu_layers,
            model_load_ms,
            adapter_load_ms: ms(t),
            _stack_dir: stack_dir,
            merged: None,
        })
    }

    /// Also run every teacher-forced chunk through a merged model (`lora-validate --merged`) in the identical batch
    /// layout, compared with the runtime adapter at scale 1 and with the base. It must share the base's vocabulary.
    pub fn with_merged(mut self, path: &Path) -> Result<Self, EngineError> {
        let t = Instant::now();
        let merged = {
            let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            load_model(path, self.cfg.verbose)?
        };
        self.model_load_ms += ms(t);
        if merged.n_vocab() != self.model.n_vocab() {
            return Err(EngineError::ModelLoad {
                path: path.to_path_buf(),
                message: format!(
                    "its vocabulary has {} tokens and the base's {}: it is not a merge of this base",
                    merged.n_vocab(),
                    self.model.n_vocab()
                ),
            });
        }
        self.merged = Some(merged);
        Ok(self)
    }

    /// The prompt as tokens: raw text with BOS as the model wants, chat messages through the GGUF's own template.
    pub fn tokenize_prompt(&self, p: &GoldenPrompt) -> Result<Vec<i32>, EngineError> {
        let vocab = self.model.vocab();
        let text = self.render_prompt(p)?;
        // A template that already writes the BOS text must not get a second BOS token.
        let bos = vocab.token_to_piece(vocab.bos(), true, None);
        let add_bos = bos.is_empty() || !text.as_bytes().starts_with(&bos);
        Ok(vocab
            .tokenize(text.as_bytes(), add_bos, true)
            .into_iter()
            .map(|t| t.0)
            .collect())
    }

    /// The text llama.cpp tokenizes for a prompt: raw text as is, chat messages through the GGUF's own template.
    pub fn render_prompt(&self, p: &GoldenPrompt) -> Result<String, EngineError> {
        Ok(match &p.text {
            PromptText::Raw(t) => t.clone(),
            PromptText::Chat(messages) => {
                let err = |message: String| EngineError::Template {
                    id: p.id.clone(),
                    message,
                };
                let template = self.model.chat_template(None).map_err(|e| {
                    err(format!(
                        "the base model has no usable chat template ({e}); use `prompt`"
                    ))
                })?;
                let chat = messages
                    .iter()
                    .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(e.to_string()))?;
                self.model
                    .apply_chat_template(&template, &chat, true)
                    .map_err(|e| err(format!("applying the chat template: {e}")))?
            }
        })
    }

    /// Run the whole sweep. See the module docs for the pass structure.
    pub fn run(
        &mut self,
        prompts: &[GoldenPrompt],
        scales: &[f32],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunMeasurements, EngineError> {
        self.run_refined(prompts, scales, &mut |_| None, progress)
    }

    /// Run the sweep, then as long as `refine` asks for another scale (seeing everything measured so far), one more
    /// pass at that scale reusing the base pass: the base continuations are not generated again, and only the
    /// teacher-forced base rows are decoded again (one batch per chunk) to compare against. Refined scales join the
    /// sweep, which is then sorted by scale.
    pub fn run_refined(
        &mut self,
        prompts: &[GoldenPrompt],
        scales: &[f32],
        refine: &mut dyn FnMut(&RunMeasurements) -> Option<f32>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunMeasurements, EngineError> {
        self.sweep(prompts, scales, refine, progress, None)
    }

    /// One pass with the adapters at their own scales against `previous` (an adapter at its own scale) instead of
    /// the bare base: the reference continuations are the previous adapter's, and the KL is KL(previous ‖
    /// candidate). No scale-0 self-check (the reference is not the base graph); `--baseline-adapter`.
    pub fn run_against(
        &mut self,
        prompts: &[GoldenPrompt],
        previous: &(PathBuf, f32),
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunMeasurements, EngineError> {
        let t = Instant::now();
        let lora = {
            let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            load_adapter(&mut self.model, &previous.0)?
        };
        self.adapter_load_ms += ms(t);
        self.sweep(
            prompts,
            &[1.0],
            &mut |_| None,
            progress,
            Some((lora, previous.1)),
        )
    }

    /// The previous adapter alone against the base at its own scale (the scale-0 self-check and scale 1): its
    /// collateral drift, which `--baseline-adapter` compares the candidate's with. The merged model does not run.
    pub fn run_alone(
        &mut self,
        prompts: &[GoldenPrompt],
        previous: &(PathBuf, f32),
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunMeasurements, EngineError> {
        let t = Instant::now();
        let lora = {
            let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            load_adapter(&mut self.model, &previous.0)?
        };
        self.adapter_load_ms += ms(t);
        let mut adapters = vec![(previous.0.clone(), previous.1, lora)];
        std::mem::swap(&mut self.adapters, &mut adapters);
        let merged = self.merged.take();
        let run = self.sweep(prompts, &[1.0], &mut |_| None, progress, None);
        self.merged = merged;
        std::mem::swap(&mut self.adapters, &mut adapters);
        run
    }

    fn sweep(
        &mut self,
        prompts: &[GoldenPrompt],
        scales: &[f32],
        refine: &mut dyn FnMut(&RunMeasurements) -> Option<f32>,
        progress: &mut dyn FnMut(Progress),
        // A parameter, so it outlives the contexts that use it.
        mut reference: Option<(LlamaLoraAdapter, f32)>,
    ) -> Result<RunMeasurements, EngineError> {
        let started = Instant::now();
        let layout = self.layout(prompts)?;
        let Engine {
            model,
            adapters,
            cfg,
            backend,
            gpu_layers,
            model_load_ms,
            adapter_load_ms,
            merged,
            ..
        } = self;
        let against_base = reference.is_none();
        // The merged model (`--merged`) is compared with the runtime adapter, not in the baseline comparison.
        let merged = merged.as_ref().filter(|_| against_base);
        let mut run = Run::new(model, merged, &layout, cfg)?;
        if let Some((lora, scale)) = reference.as_mut() {
            run.ctx_base
                .lora_adapter_set(lora, *scale)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
        }
        // The engine self-check runs at scale 0 even when the sweep does not include it; a merged model is compared
        // with the runtime adapter at scale 1, which runs too.
        let mut sweep: Vec<(f32, bool)> = scales.iter().map(|&s| (s, true)).collect();
        if against_base && !scales.contains(&0.0) {
            sweep.insert(0, (0.0, false));
        }
        if merged.is_some() && !scales.contains(&1.0) {
            sweep.push((1.0, false));
        }
        let total_steps = 1 + layout.chunks.iter().map(Vec::len).sum::<usize>();

        progress(Progress::Pass {
            scale: None,
            done: 0,
            total: total_steps,
        });
        // From here on a failure or an interruption ends the run with what finished (a partial report), not an error.
        let (base_tokens, mut base_counts, mut stopped) = match run.base_continuations(&layout, cfg)
        {
            Ok((tokens, counts)) => (tokens, counts, None),
            Err(stop) => (Vec::new(), (0, 0), Some(stop)),
        };
        let base: Vec<BaseContinuation> = prompts
            .iter()
            .zip(&layout.prepared)
            .zip(&base_tokens)
            .map(|((p, prep), toks)| BaseContinuation {
                prompt_id: p.id.clone(),
                prompt_tokens: prep.tokens.clone(),
                text: detokenize(run.model, toks),
                tokens: toks.clone(),
            })
            .collect();
        let mut swept = Swept::new(sweep.len(), layout.prepared.len());
        if stopped.is_none() {
            stopped = run.teacher_forced(
                &layout,
                &base_tokens,
                adapters,
                &sweep,
                &mut base_counts,
                &mut swept,
                cfg,
                &mut |done| {
                    progress(Progress::Compare {
                        done,
                        total: total_steps,
                    })
                },
            );
        }
        let done = swept.done;
        let zero = sweep.iter().position(|s| s.0 == 0.0);
        let at_zero = zero.map_or(&[][..], |z| &swept.compares[z][..done]);
        let scale_zero_delta = at_zero.iter().map(|c| c.max_abs).fold(0.0, f32::max);
        let noise_floor = at_zero.iter().map(|c| c.kl_max).fold(0.0, f64::max);
        let mut timings = Timings {
            model_load_ms: *model_load_ms,
            adapter_load_ms: *adapter_load_ms,
            ..Timings::default()
        };
        timings.passes.push(PassTiming {
            scale: None,
            ..pass_timing(
                run.phases.base_generate_ms + run.phases.base_teacher_forced_ms,
                base_counts,
            )
        });
        let measurements = run.measurements(
            &prompts[..done],
            &sweep,
            &swept,
            &base_tokens,
            &mut timings.passes,
        );
        let merged_measurements = run.ctx_merged.is_some().then(|| {
            let one = sweep.iter().position(|s| s.0 == 1.0).unwrap_or(0);
            run.merged_measurements(&prompts[..done], &swept, one)
        });
        let mut measured = RunMeasurements {
            base,
            measurements,
            scale_zero_max_abs_logit_delta: scale_zero_delta,
            noise_floor_kl_max: noise_floor,
            settings: EngineSettings {
                n_ctx: layout.n_ctx,
                n_batch: layout.n_batch,
                n_ubatch: cfg.n_batch,
                threads: cfg.threads,
                max_tokens: cfg.max_tokens,
                scales: scales.to_vec(),
                backend: backend.clone(),
                gpu_layers: *gpu_layers,
            },
            timings: Timings::default(),
            partial: None,
            merged: merged_measurements,
            alora: cfg.alora_invocation.as_ref().map(|inv| {
                let (invoked, not): (Vec<_>, Vec<_>) = prompts
                    .iter()
                    .zip(&layout.prepared)
                    .partition(|(_, prep)| prep.activation != Activation::Never);
                AloraRun {
                    invocation_tokens: inv.clone(),
                    prompts_invoked: invoked.into_iter().map(|(p, _)| p.id.clone()).collect(),
                    prompts_not_invoked: not.into_iter().map(|(p, _)| p.id.clone()).collect(),
                }
            }),
        };
        // Refinement passes only follow a complete sweep; one that stops leaves the sweep's results, marked partial.
        let mut refined = false;
        let sweep_stopped = stopped.is_some();
        while stopped.is_none() {
            let Some(scale) = refine(&measured) else {
                break;
            };
            progress(Progress::Pass {
                scale: Some(scale),
                done: total_steps,
                total: total_steps,
            });
            let one = [(scale, true)];
            let mut swept = Swept::new(1, layout.prepared.len());
            stopped = run.teacher_forced(
                &layout,
                &base_tokens,
                adapters,
                &one,
                &mut (0, 0),
                &mut swept,
                cfg,
                &mut |_| {},
            );
            if stopped.is_none() {
                measured.measurements.extend(run.measurements(
                    prompts,
                    &one,
                    &swept,
                    &base_tokens,
                    &mut timings.passes,
                ));
                measured.settings.scales.push(scale);
                refined = true;
            }
        }
        if refined {
            measured.settings.scales.sort_by(f32::total_cmp);
            measured
                .measurements
                .sort_by(|a, b| a.scale.total_cmp(&b.scale));
        }
        let reset = set_scale(adapters, &mut run.ctx_adapted, 0.0);
        if stopped.is_none() {
            reset?;
        }
        timings.adapter_switch_ms = run.switch.mean_ms();
        timings.adapter_switch_max_ms = run.switch.max_ms;
        timings.adapter_switches = run.switch.count;
        timings.phases = run.phases;
        timings.total_ms = ms(started) + *model_load_ms + *adapter_load_ms;
        measured.timings = timings;
        let during = if sweep_stopped {
            ""
        } else {
            " while refining the recommended scale (the sweep finished)"
        };
        measured.partial = stopped.map(|stop| Partial {
            interrupted: matches!(stop, Stopped::Interrupted),
            reason: match stop {
                Stopped::Interrupted => format!("interrupted (Ctrl-C){during}"),
                Stopped::Failed(e) => format!("{e}{during}"),
            },
            prompts_done: done,
            prompts_total: prompts.len(),
        });
        Ok(measured)
    }

    /// Tokenize the prompts, group them (one group in sequential mode is one prompt), size the context for the
    /// largest group and cut each group into teacher-forced chunks; a prompt that cannot fit is an error.
    fn layout(&self, prompts: &[GoldenPrompt]) -> Result<Layout, EngineError> {
        let prepared: Vec<Prepared> = prompts
            .iter()
            .map(|p| {
                let tokens = self.tokenize_prompt(p)?;
                Ok(Prepared {
                    activation: alora::activation(&tokens, self.cfg.alora_invocation.as_deref()),
                    tokens,
                    max_tokens: p.max_tokens.unwrap_or(self.cfg.max_tokens) as usize,
                })
            })
            .collect::<Result<_, EngineError>>()?;
        let group_size = if self.cfg.sequential {
            1
        } else {
            self.cfg.max_parallel.max(1)
        };
        let groups: Vec<Range<usize>> = (0..prepared.len())
            .step_by(group_size)
            .map(|s| s..(s + group_size).min(prepared.len()))
            .collect();
        let need = |g: &Range<usize>| -> usize {
            prepared[g.clone()]
                .iter()
                .map(|p| p.tokens.len() + p.max_tokens + 1)
                .sum()
        };
        let needed = groups.iter().map(need).max().unwrap_or(1);
        let n_ctx = if self.cfg.n_ctx > 0 {
            self.cfg.n_ctx
        } else {
            (needed as u32).div_ceil(256) * 256
        };
        for (p, prep) in prompts.iter().zip(&prepared) {
            let tokens = prep.tokens.len() + prep.max_tokens + 1;
            if tokens > n_ctx as usize || tokens > self.model.n_ctx_train() as usize {
                return Err(EngineError::PromptTooLong {
                    id: p.id.clone(),
                    tokens,
                    n_ctx,
                });
            }
        }
        if needed > n_ctx as usize {
            return Err(EngineError::PromptTooLong {
                id: "(a group of prompts)".into(),
                tokens: needed,
                n_ctx,
            });
        }
        let n_seq = group_size.min(prepared.len()).max(1) as u32;
        // A teacher-forced chunk is one logical batch of whole sequences (llama.cpp splits it into ubatches of
        // `--batch` tokens), so the base rows stay in the base context while the adapted context runs every scale.
        // The longest single feed sets the logical batch size.
        let longest_feed = prepared
            .iter()
            .map(|p| p.tokens.len() + p.max_tokens)
            .max()
            .unwrap_or(1);
        let n_batch = self.cfg.n_batch.max(longest_feed as u32);
        let chunks = groups
            .iter()
            .map(|g| tf_chunks(&prepared[g.clone()], self.cfg.n_batch as usize))
            .collect();
        Ok(Layout {
            prepared,
            groups,
            chunks,
            n_ctx,
            n_batch,
            n_seq,
        })
    }
}

/// The prompts of a run, tokenized, grouped and chunked, and the context sizes they need.
struct Layout {
    prepared: Vec<Prepared>,
    /// Prompts decoded together (sequences of one context).
    groups: Vec<Range<usize>>,
    /// Per group: its teacher-forced chunks (ranges within the group).
    chunks: Vec<Vec<Range<usize>>>,
    n_ctx: u32,
    /// Logical batch size (the longest teacher-forced feed, at least `--batch`).
    n_batch: u32,
    n_seq: u32,
}

/// One run's working state: the base and adapted contexts on the one model, the worker pool, and the clocks.
struct Run<'m> {
    model: &'m LlamaModel,
    ctx_base: LlamaContext<'m>,
    ctx_adapted: LlamaContext<'m>,
    /// `--merged`: a context on the merged model, the same size as the others.
    ctx_merged: Option<LlamaContext<'m>>,
    pool: rayon::ThreadPool,
    n_vocab: usize,
    n_ubatch: u32,
    phases: PhaseTimings,
    switch: SwitchTimes,
}

/// Why a run ended before its last step.
enum Stopped {
    /// The interrupt flag was set (Ctrl-C).
    Interrupted,
    /// llama.cpp failed part-way.
    Failed(EngineError),
}

/// Whether the run has been asked to stop.
fn interrupted(cfg: &EngineConfig) -> bool {
    cfg.interrupt
        .as_ref()
        .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
}

/// What teacher forcing found at each scale of the sweep (indexed like the sweep).
struct Swept {
    /// Prompts (the first ones) measured at every scale.
    done: usize,
    /// Per scale, per prompt.
    compares: Vec<Vec<Compare>>,
    /// Per scale, per prompt: the adapted greedy continuation.
    adapted_tokens: Vec<Vec<Vec<i32>>>,
    /// Per scale: (wall ms, tokens decoded, tokens generated).
    per_scale: Vec<(f64, usize, usize)>,
    /// `--merged`, per prompt: the merged model against the runtime adapter at scale 1, against the base, and its
    /// greedy continuation.
    merged: Vec<(Compare, Compare)>,
    merged_tokens: Vec<Vec<i32>>,
}

impl Swept {
    fn new(scales: usize, prompts: usize) -> Self {
        Swept {
            done: 0,
            compares: vec![vec![Compare::default(); prompts]; scales],
            adapted_tokens: vec![Vec::new(); scales],
            per_scale: vec![(0.0f64, 0usize, 0usize); scales],
            merged: vec![(Compare::default(), Compare::default()); prompts],
            merged_tokens: Vec::new(),
        }
    }
}

impl<'m> Run<'m> {
    fn new(
        model: &'m LlamaModel,
        merged: Option<&'m LlamaModel>,
        layout: &Layout,
        cfg: &EngineConfig,
    ) -> Result<Self, EngineError> {
        let (n_ubatch, threads) = (cfg.n_batch, cfg.threads);
        let context_on = |model: &'m LlamaModel| {
            new_context(
                model,
                layout.n_ctx,
                layout.n_batch,
                n_ubatch,
                layout.n_seq,
                threads,
            )
        };
        let context = || context_on(model);
        let ctx_base = context()?;
        let ctx_adapted = context()?;
        let ctx_merged = merged.map(context_on).transpose()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1) as usize)
            .build()
            .map_err(|e| EngineError::Backend(format!("starting worker threads: {e}")))?;
        Ok(Run {
            model,
            ctx_base,
            ctx_adapted,
            ctx_merged,
            pool,
            n_vocab: model.n_vocab() as usize,
            n_ubatch,
            phases: PhaseTimings::default(),
            switch: SwitchTimes::default(),
        })
    }

    /// Step 1: the base model's greedy continuations, once; and (prompt tokens, generated tokens) decoded.
    fn base_continuations(
        &mut self,
        layout: &Layout,
        cfg: &EngineConfig,
    ) -> Result<Generated, Stopped> {
        let t = Instant::now();
        let mut base_tokens: Vec<Vec<i32>> = Vec::with_capacity(layout.prepared.len());
        let mut counts = (0usize, 0usize);
        for g in &layout.groups {
            if interrupted(cfg) {
                return Err(Stopped::Interrupted);
            }
            let (out, c) = generate(
                self.model,
                &mut self.ctx_base,
                &layout.prepared[g.clone()],
                self.n_ubatch,
                &self.pool,
            )
            .map_err(Stopped::Failed)?;
            base_tokens.extend(out);
            counts = (counts.0 + c.0, counts.1 + c.1);
        }
        self.phases.base_generate_ms = ms(t);
        Ok((base_tokens, counts))
    }

    /// Step 2: teacher forcing on the base continuations, chunk by chunk: the base context decodes a chunk once; the
    /// adapted context decodes the identical batch at every scale, is compared row by row with the base rows still
    /// held by the base context, and then continues greedily from the first position where its argmax differs from
    /// the base row's (up to there the adapted greedy continuation *is* the base's, and its KV cache is already
    /// filled). At scale 0 the adapter is removed, the graph is the base's — checked here bit for bit — and its
    /// continuations are the base's. `step(done)` is called as each chunk starts. Stops before a chunk when the run
    /// is interrupted, and at a chunk llama.cpp fails on; `swept.done` counts the prompts finished.
    #[allow(clippy::too_many_arguments)] // the run's inputs, the accumulators it fills, the stop flag, progress
    fn teacher_forced(
        &mut self,
        layout: &Layout,
        base_tokens: &[Vec<i32>],
        adapters: &mut [(PathBuf, f32, LlamaLoraAdapter)],
        sweep: &[(f32, bool)],
        base_counts: &mut (usize, usize),
        swept: &mut Swept,
        cfg: &EngineConfig,
        step: &mut dyn FnMut(usize),
    ) -> Option<Stopped> {
        let mut done = 1;
        for (g, g_chunks) in layout.groups.iter().zip(&layout.chunks) {
            for chunk in g_chunks {
                if interrupted(cfg) {
                    return Some(Stopped::Interrupted);
                }
                step(done);
                done += 1;
                let range = (g.start + chunk.start)..(g.start + chunk.end);
                if let Err(e) = self.chunk(
                    &layout.prepared[range.clone()],
                    &base_tokens[range.clone()],
                    range.start,
                    adapters,
                    sweep,
                    base_counts,
                    swept,
                ) {
                    return Some(Stopped::Failed(e));
                }
                swept.done = range.end;
            }
        }
        None
    }

    /// One teacher-forced chunk (prompts `first..` of the run) at every scale of the sweep.
    #[allow(clippy::too_many_arguments)] // the run's inputs and the three accumulators it fills
    fn chunk(
        &mut self,
        chunk_prompts: &[Prepared],
        chunk_base: &[Vec<i32>],
        first: usize,
        adapters: &mut [(PathBuf, f32, LlamaLoraAdapter)],
        sweep: &[(f32, bool)],
        base_counts: &mut (usize, usize),
        swept: &mut Swept,
    ) -> Result<(), EngineError> {
        let Run {
            model,
            ctx_base,
            ctx_adapted,
            ctx_merged,
            pool,
            n_vocab,
            phases,
            switch,
            ..
        } = self;
        let n_vocab = *n_vocab;
        let mut tf = TeacherForced::new(chunk_prompts, chunk_base)?;
        let t = Instant::now();
        clear(ctx_base)?;
        tf.decode(ctx_base, &mut |_| Ok(()))?;
        phases.base_teacher_forced_ms += ms(t);
        base_counts.0 += tf.tokens;
        let t = Instant::now();
        let base_rows: Vec<&[f32]> = tf
            .rows
            .iter()
            .map(|&(k, _)| row(ctx_base, k, n_vocab))
            .collect();
        let summaries: Vec<BaseRow> =
            pool.install(|| base_rows.par_iter().map(|r| BaseRow::new(r)).collect());
        phases.compare_ms += ms(t);
        // `--merged` is compared with the runtime adapter at scale 1 (every adapter at its own scale).
        let reference = sweep.iter().position(|s| s.0 == 1.0);
        for (si, &(scale, _)) in sweep.iter().enumerate() {
            let t = Instant::now();
            // An aLoRA's positions before its activation are decoded without it (llama-server's semantics).
            set_scale(
                adapters,
                ctx_adapted,
                if tf.pre.is_some() { 0.0 } else { scale },
            )?;
            clear(ctx_adapted)?;
            switch.push(t);
            let t = Instant::now();
            tf.decode(ctx_adapted, &mut |ctx| set_scale(adapters, ctx, scale))?;
            let decoded_ms = ms(t);
            phases.adapted_teacher_forced_ms += decoded_ms;
            let t = Instant::now();
            let adapted_rows: Vec<&[f32]> = tf
                .rows
                .iter()
                .map(|&(k, _)| row(ctx_adapted, k, n_vocab))
                .collect();
            let rows: Vec<RowComparison> = pool.install(|| {
                (0..adapted_rows.len())
                    .into_par_iter()
                    .map(|i| compare(base_rows[i], &summaries[i], adapted_rows[i]))
                    .collect()
            });
            // `--merged`: the merged model decodes the identical batch, compared with these adapted rows (the
            // reference, at scale 1) and with the base rows; its greedy continuation departs from the base's
            // exactly as the adapted one does.
            let (mut merged_outs, mut merged_compare_ms) = (None, 0.0);
            if Some(si) == reference
                && let Some(ctx_m) = ctx_merged.as_mut()
            {
                let t = Instant::now();
                clear(ctx_m)?;
                tf.decode(ctx_m, &mut |_| Ok(()))?;
                let merged_rows: Vec<&[f32]> = tf
                    .rows
                    .iter()
                    .map(|&(k, _)| row(ctx_m, k, n_vocab))
                    .collect();
                let pairs: Vec<(RowComparison, RowComparison)> = pool.install(|| {
                    (0..merged_rows.len())
                        .into_par_iter()
                        .map(|i| {
                            let reference = BaseRow::new(adapted_rows[i]);
                            (
                                compare(adapted_rows[i], &reference, merged_rows[i]),
                                compare(base_rows[i], &summaries[i], merged_rows[i]),
                            )
                        })
                        .collect()
                });
                let vs_base: Vec<RowComparison> = pairs.iter().map(|p| p.1).collect();
                for (&(_, seq), &(vs_adapted, vs_base)) in tf.rows.iter().zip(&pairs) {
                    let m = &mut swept.merged[first + seq];
                    m.0.add(vs_adapted);
                    m.1.add(vs_base);
                }
                merged_outs = Some(departures(&tf.rows, &vs_base, chunk_base));
                merged_compare_ms = ms(t);
                phases.merged_ms += merged_compare_ms;
            }
            drop(adapted_rows);
            // The adapted greedy continuation is the base's up to the first position where the adapter changes the
            // argmax — adapted vs base row of this same batch, so that logit noise from the batch layout (which
            // flips near-ties between layouts) is never counted as the adapter's doing.
            // An aLoRA not invoked in the prompt runs at scale 0 (the base graph, checked bit for bit at scale 0):
            // its prompts are the base's, exactly.
            for &(seq, positions) in &tf.never {
                swept.compares[si][first + seq] = Compare {
                    agree: positions,
                    positions,
                    ..Compare::default()
                };
            }
            for (&(_, seq), c) in tf.rows.iter().zip(&rows) {
                swept.compares[si][first + seq].add(*c);
            }
            let (mut outs, departed) = departures(&tf.rows, &rows, chunk_base);
            for &(seq, _) in &tf.never {
                outs[seq] = chunk_base[seq].clone();
            }
            let compared_ms = ms(t) - merged_compare_ms;
            phases.compare_ms += compared_ms;
            let t = Instant::now();
            let mut generated = 0;
            if scale == 0.0 {
                outs = chunk_base.to_vec();
            } else {
                // Keep each departed sequence's cache up to its shared prefix; continue from there.
                for (seq, out) in outs.iter().enumerate() {
                    if departed[seq] {
                        let keep = chunk_prompts[seq].tokens.len() + out.len() - 1;
                        ctx_adapted
                            .clear_kv_cache_seq(Some(seq as u32), Some(keep as u32), None)
                            .map_err(|e| EngineError::Decode(e.to_string()))?;
                    }
                }
                generated = continue_greedy(
                    model,
                    ctx_adapted,
                    chunk_prompts,
                    &mut outs,
                    &departed,
                    pool,
                )?;
            }
            let continued_ms = ms(t);
            if let (Some((mut outs_m, departed_m)), Some(ctx_m)) =
                (merged_outs, ctx_merged.as_mut())
            {
                let t = Instant::now();
                for (seq, out) in outs_m.iter().enumerate() {
                    if departed_m[seq] {
                        let keep = chunk_prompts[seq].tokens.len() + out.len() - 1;
                        ctx_m
                            .clear_kv_cache_seq(Some(seq as u32), Some(keep as u32), None)
                            .map_err(|e| EngineError::Decode(e.to_string()))?;
                    }
                }
                continue_greedy(model, ctx_m, chunk_prompts, &mut outs_m, &departed_m, pool)?;
                swept.merged_tokens.extend(outs_m);
                phases.merged_ms += ms(t);
            }
            phases.adapted_generate_ms += continued_ms;
            swept.adapted_tokens[si].extend(outs);
            let p = &mut swept.per_scale[si];
            *p = (
                p.0 + decoded_ms + compared_ms + continued_ms,
                p.1 + tf.tokens + generated,
                p.2 + generated,
            );
        }
        Ok(())
    }

    /// `--merged`: each finished prompt's merged measurement; `one` is the sweep index of scale 1 (the reference).
    fn merged_measurements(
        &self,
        prompts: &[GoldenPrompt],
        swept: &Swept,
        one: usize,
    ) -> Vec<MergedMeasurement> {
        let mean = |c: &Compare| c.kl_sum / c.positions.max(1) as f64;
        let agree = |c: &Compare| {
            if c.positions == 0 {
                1.0
            } else {
                c.agree as f64 / c.positions as f64
            }
        };
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (vs_adapted, vs_base) = &swept.merged[i];
                let reference = &swept.adapted_tokens[one][i];
                let merged = &swept.merged_tokens[i];
                let first_divergence = first_difference(merged, reference);
                let longest = reference.len().max(merged.len());
                MergedMeasurement {
                    prompt_id: p.id.clone(),
                    kl_mean: mean(vs_adapted),
                    kl_max: vs_adapted.kl_max,
                    top1_agreement: agree(vs_adapted),
                    max_abs_logit_delta: vs_adapted.max_abs,
                    base_kl_mean: mean(vs_base),
                    base_top1_agreement: agree(vs_base),
                    merged_text: detokenize(self.model, merged),
                    merged_tokens: merged.clone(),
                    first_divergence,
                    greedy_agreement: match first_divergence {
                        None => 1.0,
                        Some(d) => d as f64 / longest.max(1) as f64,
                    },
                    positions: vs_adapted.positions,
                }
            })
            .collect()
    }

    /// Step 3: per reported scale, each prompt's measurement, and the scale's pass timing (into `passes`).
    fn measurements(
        &self,
        prompts: &[GoldenPrompt],
        sweep: &[(f32, bool)],
        swept: &Swept,
        base_tokens: &[Vec<i32>],
        passes: &mut Vec<PassTiming>,
    ) -> Vec<PromptMeasurement> {
        let mut measurements = Vec::new();
        for (si, &(scale, is_reported)) in sweep.iter().enumerate() {
            if !is_reported {
                continue;
            }
            let (wall, decoded, generated) = swept.per_scale[si];
            passes.push(PassTiming {
                scale: Some(scale),
                ..pass_timing(wall, (decoded - generated, generated))
            });
            for (i, p) in prompts.iter().enumerate() {
                let c = swept.compares[si][i];
                let adapted = &swept.adapted_tokens[si][i];
                let first_divergence = first_difference(adapted, &base_tokens[i]);
                measurements.push(PromptMeasurement {
                    prompt_id: p.id.clone(),
                    scale,
                    adapted_text: detokenize(self.model, adapted),
                    adapted_tokens: adapted.clone(),
                    first_divergence,
                    kl_mean: if c.positions > 0 {
                        c.kl_sum / c.positions as f64
                    } else {
                        0.0
                    },
                    kl_max: c.kl_max,
                    top1_agreement: if c.positions > 0 {
                        c.agree as f64 / c.positions as f64
                    } else {
                        1.0
                    },
                    max_abs_logit_delta: c.max_abs,
                    positions: c.positions,
                });
            }
        }
        measurements
    }
}

/// Where two continuations first differ (a shorter one differs where it ends); `None` when identical.
fn first_difference(a: &[i32], b: &[i32]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// A greedy continuation read off teacher-forced rows compared with the base rows of the same batch: per sequence,
/// the base continuation up to the first row whose argmax differs from the base's, then that argmax; and whether the
/// sequence departed there (it then continues greedily from that token).
fn departures(
    rows: &[(i32, usize)],
    comparisons: &[RowComparison],
    base: &[Vec<i32>],
) -> (Vec<Vec<i32>>, Vec<bool>) {
    let mut outs: Vec<Vec<i32>> = vec![Vec::new(); base.len()];
    let mut departed = vec![false; base.len()];
    for (&(_, seq), c) in rows.iter().zip(comparisons) {
        if !departed[seq] {
            departed[seq] = !c.same_top1;
            let next = if departed[seq] {
                c.adapted_argmax as i32
            } else {
                base[seq][outs[seq].len()]
            };
            outs[seq].push(next);
        }
    }
    (outs, departed)
}

/// Adapter switches (set or remove + KV-cache clear), timed one by one.
#[derive(Default)]
struct SwitchTimes {
    count: usize,
    total_ms: f64,
    max_ms: f64,
}

impl SwitchTimes {
    fn push(&mut self, started: Instant) {
        let t = ms(started);
        self.count += 1;
        self.total_ms += t;
        self.max_ms = self.max_ms.max(t);
    }

    fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_ms / self.count as f64
        }
    }
}

/// Every adapter at its own scale × `scale` (0: llama.cpp drops it, leaving the base graph).
fn set_scale(
    adapters: &mut [(PathBuf, f32, LlamaLoraAdapter)],
    ctx: &mut LlamaContext,
    scale: f32,
) -> Result<(), EngineError> {
    let decode_err = |e: String| EngineError::Decode(e);
    for (_, own, adapter) in adapters.iter_mut() {
        if scale == 0.0 {
            ctx.lora_adapter_remove(adapter)
                .map_err(|e| decode_err(e.to_string()))?;
        } else {
            ctx.lora_adapter_set(adapter, *own * scale)
                .map_err(|e| decode_err(e.to_string()))?;
        }
    }
    Ok(())
}

fn detokenize(model: &LlamaModel, tokens: &[i32]) -> String {
    let vocab = model.vocab();
    let mut bytes = Vec::new();
    for &t in tokens {
        let t = LlamaToken::new(t);
        if vocab.is_eog(t) {
            break;
        }
        bytes.extend(vocab.token_to_piece(t, false, None));
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn pass_timing(wall_ms: f64, (prompt_tokens, gen_tokens): (usize, usize)) -> PassTiming {
    let secs = (wall_ms / 1000.0).max(1e-9);
    PassTiming {
        scale: None,
        prompt_tokens_per_s: prompt_tokens as f64 / secs,
        gen_tokens_per_s: gen_tokens as f64 / secs,
        wall_ms,
    }
}

/// Empty the KV cache, keeping its buffers as they are. Clearing the data too (`llama_memory_clear(.., true)`)
/// writes zeros over tens of megabytes — the cost of an adapter switch — and buys nothing: cells not in use are
/// masked out of attention, so what they hold never reaches a logit (the scale-0 self-check shows it bit for bit).
fn clear(ctx: &mut LlamaContext) -> Result<(), EngineError> {
    ctx.clear_kv_cache_seq(None, None, None)
        .map(|_| ())
        .map_err(|e| EngineError::Decode(e.to_string()))
}

/// The logits of batch position `k`, cut to the vocabulary.
fn row<'c>(ctx: &'c LlamaContext, k: i32, n_vocab: usize) -> &'c [f32] {
    let r = ctx.get_logits_ith(k);
    &r[..n_vocab.min(r.len())]
}

/// Continuations, and (prompt tokens, generated tokens) decoded.
type Generated = (Vec<Vec<i32>>, (usize, usize));

/// Greedy continuations of `prompts` as sequences 0..n in one context (emptied first): shared prefill batches of up
/// to `n_ubatch` tokens, then one decode per step with one token for every live sequence. Returns the continuations
/// (EOG token included when produced) and (prompt tokens, generated tokens) decoded.
fn generate(
    model: &LlamaModel,
    ctx: &mut LlamaContext,
    prompts: &[Prepared],
    n_ubatch: u32,
    pool: &rayon::ThreadPool,
) -> Result<Generated, EngineError> {
    let n_vocab = model.n_vocab() as usize;
    let dec = |e: String| EngineError::Decode(e);
    clear(ctx)?;
    let n_batch = n_ubatch as usize;
    let mut out: Vec<Vec<i32>> = vec![Vec::new(); prompts.len()];
    let mut batch = LlamaBatch::new(n_batch, prompts.len() as i32);
    let mut owners: Vec<(i32, usize)> = Vec::new(); // (batch position, sequence) of predicting positions
    let mut prompt_tokens = 0;
    let mut flush = |ctx: &mut LlamaContext,
                     batch: &mut LlamaBatch,
                     owners: &mut Vec<(i32, usize)>|
     -> Result<(), EngineError> {
        if batch.n_tokens() == 0 {
            return Ok(());
        }
        ctx.decode(batch).map_err(|e| dec(e.to_string()))?;
        for (seq, t) in argmax_rows(ctx, owners, n_vocab, pool) {
            out[seq].push(t);
        }
        batch.clear();
        owners.clear();
        Ok(())
    };
    for (s, p) in prompts.iter().enumerate() {
        for (i, &t) in p.tokens.iter().enumerate() {
            if batch.n_tokens() as usize >= n_batch {
                flush(ctx, &mut batch, &mut owners)?;
            }
            let last = i + 1 == p.tokens.len();
            if last {
                owners.push((batch.n_tokens(), s));
            }
            batch
                .add(LlamaToken::new(t), i as i32, &[s as i32], last)
                .map_err(|e| dec(e.to_string()))?;
            prompt_tokens += 1;
        }
    }
    flush(ctx, &mut batch, &mut owners)?;
    let live = vec![true; prompts.len()];
    let generated = continue_greedy(model, ctx, prompts, &mut out, &live, pool)?;
    Ok((out, (prompt_tokens, prompts.len() + generated)))
}

/// Greedy decoding of the `live` sequences (ids 0..n in `ctx`), each holding its prompt and all of `outs[s]` but the
/// last token in the KV cache: feeds every live sequence's last token in one batch per step until it is an EOG token
/// or the sequence has its `max_tokens`. Returns the tokens generated.
fn continue_greedy(
    model: &LlamaModel,
    ctx: &mut LlamaContext,
    prompts: &[Prepared],
    outs: &mut [Vec<i32>],
    live: &[bool],
    pool: &rayon::ThreadPool,
) -> Result<usize, EngineError> {
    let vocab = model.vocab();
    let n_vocab = model.n_vocab() as usize;
    let dec = |e: String| EngineError::Decode(e);
    let mut batch = LlamaBatch::new(prompts.len().max(1), prompts.len() as i32);
    let mut owners: Vec<(i32, usize)> = Vec::new();
    let mut generated = 0;
    loop {
        for (s, out) in outs.iter().enumerate() {
            let Some(&t) = out.last() else { continue };
            if !live[s] || vocab.is_eog(LlamaToken::new(t)) || out.len() >= prompts[s].max_tokens {
                continue;
            }
            let pos = (prompts[s].tokens.len() + out.len() - 1) as i32;
            owners.push((batch.n_tokens(), s));
            batch
                .add(LlamaToken::new(t), pos, &[s as i32], true)
                .map_err(|e| dec(e.to_string()))?;
        }
        if owners.is_empty() {
            return Ok(generated);
        }
        ctx.decode(&mut batch).map_err(|e| dec(e.to_string()))?;
        for (seq, t) in argmax_rows(ctx, &owners, n_vocab, pool) {
            outs[seq].push(t);
            generated += 1;
        }
        batch.clear();
        owners.clear();
    }
}

/// The argmax of the output rows of the last decode at `owners` (batch position, sequence), with their sequence.
fn argmax_rows(
    ctx: &LlamaContext,
    owners: &[(i32, usize)],
    n_vocab: usize,
    pool: &rayon::ThreadPool,
) -> Vec<(usize, i32)> {
    let rows: Vec<(usize, &[f32])> = owners
        .iter()
        .map(|&(k, seq)| (seq, row(ctx, k, n_vocab)))
        .collect();
    pool.install(|| {
        rows.par_iter()
            .map(|&(seq, r)| (seq, max_argmax(r).1 as i32))
            .collect()
    })
}

/// Consecutive runs of whole sequences whose teacher-forced feeds (prompt + continuation) fit `n_ubatch` tokens
/// together; a longer feed is a run of its own. Sequences are never split, so each run is one logical batch.
fn tf_chunks(prompts: &[Prepared], n_ubatch: usize) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, p) in prompts.iter().enumerate() {
        let feed = p.tokens.len() + p.max_tokens;
        if i > start && tokens + feed > n_ubatch {
            chunks.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += feed;
    }
    if start < prompts.len() {
        chunks.push(start..prompts.len());
    }
    chunks
}

/// One teacher-forced chunk: prompt + base continuation (minus its last token) of each sequence, in one batch; the
/// positions from each prompt's last token on predict the continuation, one distribution per generated token.
/// With an aLoRA, the positions before each sequence's activation go into a batch of their own (`pre`), decoded
/// first and without the adapter, and sequences that do not invoke it are left out (they run as the base).
struct TeacherForced<'a> {
    /// Positions before the aLoRA activation, when there are any.
    pre: Option<LlamaBatch<'a>>,
    batch: LlamaBatch<'a>,
    /// (batch position, sequence in the chunk) of every predicting position (all in `batch`).
    rows: Vec<(i32, usize)>,
    /// Sequences an aLoRA does not act on, with their predicting positions.
    never: Vec<(usize, usize)>,
    tokens: usize,
}

impl TeacherForced<'_> {
    fn new(prompts: &[Prepared], continuations: &[Vec<i32>]) -> Result<Self, EngineError> {
        let feeds: Vec<Vec<i32>> = prompts
            .iter()
            .zip(continuations)
            .map(|(p, cont)| {
                p.tokens
                    .iter()
                    .chain(cont.iter().take(cont.len().saturating_sub(1)))
                    .copied()
                    .collect()
            })
            .collect();
        let first_adapted = |p: &Prepared| match p.activation {
            Activation::Always => Some(0),
            Activation::From(a) => Some(a),
            Activation::Never => None,
        };
        let (mut pre_tokens, mut tokens) = (0, 0);
        for (p, feed) in prompts.iter().zip(&feeds) {
            if let Some(a) = first_adapted(p) {
                pre_tokens += a.min(feed.len());
                tokens += feed.len();
            }
        }
        let add = |batch: &mut LlamaBatch, t: i32, i: usize, s: usize, logits: bool| {
            batch
                .add(LlamaToken::new(t), i as i32, &[s as i32], logits)
                .map_err(|e| EngineError::Decode(e.to_string()))
        };
        let mut pre = (pre_tokens > 0).then(|| LlamaBatch::new(pre_tokens, prompts.len() as i32));
        let mut batch = LlamaBatch::new((tokens - pre_tokens).max(1), prompts.len() as i32);
        let mut rows = Vec::new();
        let mut never = Vec::new();
        for (s, (p, feed)) in prompts.iter().zip(&feeds).enumerate() {
            let Some(a) = first_adapted(p) else {
                never.push((s, feed.len() + 1 - p.tokens.len()));
                continue;
            };
            for (i, &t) in feed.iter().enumerate() {
                let predicts = i + 1 >= p.tokens.len();
                match pre.as_mut() {
                    Some(pre) if i < a => add(pre, t, i, s, false)?,
                    _ => {
                        if predicts {
                            rows.push((batch.n_tokens(), s));
                        }
                        add(&mut batch, t, i, s, predicts)?;
                    }
                }
            }
        }
        Ok(TeacherForced {
            pre,
            batch,
            rows,
            never,
            tokens,
        })
    }

    /// Decode the chunk in `ctx` (its KV cache emptied before): the pre-activation batch, then `between(ctx)` (an
    /// aLoRA: switch the adapter on), then the main batch.
    fn decode(
        &mut self,
        ctx: &mut LlamaContext,
        between: &mut dyn FnMut(&mut LlamaContext) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let dec = |e: llama_cpp_2::DecodeError| EngineError::Decode(e.to_string());
        if let Some(pre) = self.pre.as_mut() {
            ctx.decode(pre).map_err(dec)?;
            between(ctx)?;
        }
        if self.batch.n_tokens() > 0 {
            ctx.decode(&mut self.batch).map_err(dec)?;
        }
        Ok(())
    }
}

/// Parse a GGUF file with ggml's own parser (`gguf_init_from_file`, metadata and tensor infos only) and return its
/// tensor count, or None when ggml rejects the file. Used to prove our writer's output is what ggml expects.
#[allow(unsafe_code)]
pub fn ggml_gguf_tensor_count(path: &Path) -> Option<i64> {
    let c_path = std::ffi::CString::new(path.to_str()?).ok()?;
    let params = llama_cpp_sys_2::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: `c_path` is a valid NUL-terminated string for the duration of the call; with `no_alloc` and a null
    // `ctx`, ggml allocates nothing for tensor data; the returned context is freed exactly once below.
    unsafe {
        let ctx = llama_cpp_sys_2::gguf_init_from_file(c_path.as_ptr(), params);
        if ctx.is_null() {
            return None;
        }
        let n = llama_cpp_sys_2::gguf_get_n_tensors(ctx);
        llama_cpp_sys_2::gguf_free(ctx);
        Some(n)
    }
}

// Reference packs (`lora-validate --reference`): the pack's own token ids, teacher-forced at the base and at adapter
// scales, rows handed to the caller (src/reference compares them with the pack); greedy continuations at a scale.

/// Hears each teacher-forced row: (scale index, feed index, row within the feed, logits).
pub type RowVisitor<'a> = dyn FnMut(usize, usize, usize, &[f32]) + 'a;
impl Engine {
    /// The model's vocabulary size (logit row length).
    pub fn vocab_size(&self) -> usize {
        self.model.n_vocab() as usize
    }

    /// Each token's text as llama.cpp renders it, special tokens included (`<bos>`); ids outside the vocabulary
    /// show as `<id N not in the vocabulary>`.
    pub fn token_pieces(&self, tokens: &[i32]) -> Vec<String> {
        let vocab = self.model.vocab();
        let n = self.vocab_size();
        tokens
            .iter()
            .map(|&t| {
                if t < 0 || t as usize >= n {
                    format!("<id {t} not in the vocabulary>")
                } else {
                    String::from_utf8_lossy(&vocab.token_to_piece(LlamaToken::new(t), true, None))
                        .into_owned()
                }
            })
            .collect()
    }

    /// Decode every feed (tokens, first predicting position) as its own sequence on an emptied cache, once per
    /// scale (0: the base graph, adapters removed), and call `visit(scale index, feed index, row, logits)` for
    /// every row from the feed's first predicting position on. Feeds use the identical layout at every scale.
    pub fn teacher_forced_rows(
        &mut self,
        feeds: &[(Vec<i32>, usize)],
        scales: &[f32],
        visit: &mut RowVisitor<'_>,
    ) -> Result<(), EngineError> {
        let longest = feeds.iter().map(|f| f.0.len()).max().unwrap_or(1).max(1);
        if longest > self.model.n_ctx_train() as usize {
            return Err(EngineError::PromptTooLong {
                id: "(a reference prompt)".into(),
                tokens: longest,
                n_ctx: self.model.n_ctx_train(),
            });
        }
        let n_ctx = (longest as u32).div_ceil(256) * 256;
        let Engine {
            model,
            adapters,
            cfg,
            ..
        } = self;
        let model: &LlamaModel = model;
        let n_vocab = model.n_vocab() as usize;
        let mut ctx = new_context(model, n_ctx, n_ctx, n_ctx, 1, cfg.threads)?;
        for (si, &scale) in scales.iter().enumerate() {
            set_scale(adapters, &mut ctx, scale)?;
            for (fi, (tokens, first)) in feeds.iter().enumerate() {
                let mut batch = LlamaBatch::new(tokens.len().max(1), 1);
                for (i, &t) in tokens.iter().enumerate() {
                    batch
                        .add(LlamaToken::new(t), i as i32, &[0], i >= *first)
                        .map_err(|e| EngineError::Decode(e.to_string()))?;
                }
                clear(&mut ctx)?;
                ctx.decode(&mut batch)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
                for (k, i) in (*first..tokens.len()).enumerate() {
                    visit(si, fi, k, row(&ctx, i as i32, n_vocab));
                }
            }
        }
        set_scale(adapters, &mut ctx, 0.0)
    }

    /// Greedy continuations (up to `max_tokens` each, EOG included when produced) of `prompts` at `scale` (0: the
    /// base), all prompts in one context.
    pub fn greedy_at(
        &mut self,
        prompts: &[(Vec<i32>, usize)],
        scale: f32,
    ) -> Result<Vec<Vec<i32>>, EngineError> {
        let prepared: Vec<Prepared> = prompts
            .iter()
            .map(|(tokens, max_tokens)| Prepared {
                tokens: tokens.clone(),
                max_tokens: *max_tokens,
                activation: Activation::Always, // --reference refuses aLoRAs
            })
            .collect();
        let needed: usize = prepared
            .iter()
            .map(|p| p.tokens.len() + p.max_tokens + 1)
            .sum();
        let n_ctx = (needed.max(1) as u32).div_ceil(256) * 256;
        let Engine {
            model,
            adapters,
            cfg,
            ..
        } = self;
        let model: &LlamaModel = model;
        let n_ubatch = cfg.n_batch;
        let mut ctx = new_context(
            model,
            n_ctx,
            n_ubatch,
            n_ubatch,
            prepared.len().max(1) as u32,
            cfg.threads,
        )?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.max(1) as usize)
            .build()
            .map_err(|e| EngineError::Backend(format!("starting worker threads: {e}")))?;
        set_scale(adapters, &mut ctx, scale)?;
        let (out, _) = generate(model, &mut ctx, &prepared, n_ubatch, &pool)?;
        set_scale(adapters, &mut ctx, 0.0)?;
        Ok(out)
    }
}
