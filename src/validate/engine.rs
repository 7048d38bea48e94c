//! The llama.cpp engine (through the llama-cpp-2 crate) — the only module that touches llama.cpp.
//!
//! One process-wide backend; one model load per run; adapters loaded once before any context (llama-cpp-2 needs the
//! model mutably to load one); one context whose KV cache is cleared between passes. Base and adapted passes use the
//! identical batch layout, because ggml's CPU kernels make logits depend on batch composition.

use std::num::NonZeroU32;
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

use super::golden::{GoldenPrompt, PromptText};
use super::results::{
    BaseContinuation, EngineSettings, PassTiming, PromptMeasurement, RunMeasurements, Timings,
};

/// Why the engine failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// llama.cpp's backend could not start.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// The model could not be loaded.
    #[error(
        "llama.cpp could not load the model `{path}`: {message} (run with -v to see llama.cpp's log)"
    )]
    ModelLoad {
        /// The model file.
        path: PathBuf,
        /// llama.cpp's error.
        message: String,
    },
    /// An adapter could not be loaded.
    #[error(
        "llama.cpp could not load the adapter `{path}`: {message} (run with -v to see llama.cpp's log)"
    )]
    AdapterLoad {
        /// The adapter file.
        path: PathBuf,
        /// llama.cpp's error.
        message: String,
    },
    /// A context could not be created.
    #[error("llama.cpp could not create a context of {n_ctx} tokens: {message}")]
    Context {
        /// Requested context size.
        n_ctx: u32,
        /// llama.cpp's error.
        message: String,
    },
    /// Decoding failed.
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
    /// A prompt (with its continuation) does not fit the context.
    #[error(
        "prompt `{id}` needs {tokens} tokens but the context holds {n_ctx}; raise --ctx or shorten it"
    )]
    PromptTooLong {
        /// Prompt id.
        id: String,
        /// Tokens needed.
        tokens: usize,
        /// Context size.
        n_ctx: u32,
    },
    /// The chat template could not be applied.
    #[error("prompt `{id}`: {message}")]
    Template {
        /// Prompt id.
        id: String,
        /// What went wrong.
        message: String,
    },
}

impl EngineError {
    /// Problems with the user's input (exit 2) as opposed to llama.cpp failing (exit 3).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            EngineError::PromptTooLong { .. } | EngineError::Template { .. }
        )
    }
}

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

/// Load a model file (memory-mapped; CPU only).
pub fn load_model(path: &Path, verbose: bool) -> Result<LlamaModel, EngineError> {
    let backend = backend(verbose)?;
    LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|e| {
        EngineError::ModelLoad {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
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

/// Create a context for `n_seq` sequences of up to `n_ctx` tokens in all.
pub fn new_context<'m>(
    model: &'m LlamaModel,
    n_ctx: u32,
    n_batch: u32,
    n_seq: u32,
    threads: i32,
) -> Result<LlamaContext<'m>, EngineError> {
    let backend = backend(false)?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx.max(1)))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
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
    let n_ctx = (n as u32).next_power_of_two().max(64);
    // An F32 KV cache and no flash attention: the comparison with PyTorch measures the adapter, not f16 rounding of keys and values.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_type_k(KvCacheType::F32)
        .with_type_v(KvCacheType::F32)
        // The CPU flash-attention kernel rounds Q to f16; the exactness probe wants f32 attention.
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED);
    let mut ctx = model
        .new_context(backend(false)?, params)
        .map_err(|e| EngineError::Context {
            n_ctx,
            message: e.to_string(),
        })?;
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

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Context size in tokens (0: sized from the prompts).
    pub n_ctx: u32,
    /// Logical and physical batch size.
    pub n_batch: u32,
    /// Worker threads.
    pub threads: i32,
    /// Default new tokens per prompt.
    pub max_tokens: u32,
    /// Most sequences decoded together.
    pub max_parallel: usize,
    /// Show llama.cpp's own log.
    pub verbose: bool,
    /// One prompt at a time (the baseline the batched engine is measured against).
    pub sequential: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_ctx: 0,
            n_batch: 512,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
            max_tokens: 32,
            max_parallel: 64,
            verbose: false,
            sequential: false,
        }
    }
}

/// What the engine is doing, for a progress bar.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// A pass started: `None` is the base model, else a scale.
    Pass {
        /// The scale, or None for the base pass.
        scale: Option<f32>,
        /// Passes done before this one.
        done: usize,
        /// Passes in all.
        total: usize,
    },
}

/// The base model and adapters, loaded once for a whole run.
pub struct Engine {
    model: LlamaModel,
    adapters: Vec<(PathBuf, f32, LlamaLoraAdapter)>,
    cfg: EngineConfig,
    model_load_ms: f64,
    adapter_load_ms: f64,
    /// Holds the combined adapter of a stack for the engine's lifetime.
    _stack_dir: Option<tempfile::TempDir>,
}

/// One prompt ready to run.
struct Prepared {
    tokens: Vec<i32>,
    max_tokens: usize,
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
            super::stack::combine(adapters, &path).map_err(|e| EngineError::AdapterLoad {
                path: adapters[0].0.clone(),
                message: format!("combining the stack: {e}"),
            })?;
            stack_dir = Some(dir);
            combined = [(path, 1.0)];
            &combined
        } else {
            adapters
        };
        let t = Instant::now();
        let mut model = {
            let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            load_model(base, cfg.verbose)?
        };
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
            model_load_ms,
            adapter_load_ms: ms(t),
            _stack_dir: stack_dir,
        })
    }

    /// The prompt as tokens: raw text with BOS as the model wants, chat messages through the GGUF's own template.
    pub fn tokenize_prompt(&self, p: &GoldenPrompt) -> Result<Vec<i32>, EngineError> {
        let vocab = self.model.vocab();
        let text = match &p.text {
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
        };
        // A template that already writes the BOS text must not get a second BOS token.
        let bos = vocab.token_to_piece(vocab.bos(), true, None);
        let add_bos = bos.is_empty() || !text.as_bytes().starts_with(&bos);
        Ok(vocab
            .tokenize(text.as_bytes(), add_bos, true)
            .into_iter()
            .map(|t| t.0)
            .collect())
    }

    /// Run the whole sweep. See the module docs for the pass structure.
    pub fn run(
        &mut self,
        prompts: &[GoldenPrompt],
        scales: &[f32],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunMeasurements, EngineError> {
        let started = Instant::now();
        let prepared: Vec<Prepared> = prompts
            .iter()
            .map(|p| {
                Ok(Prepared {
                    tokens: self.tokenize_prompt(p)?,
                    max_tokens: p.max_tokens.unwrap_or(self.cfg.max_tokens) as usize,
                })
            })
            .collect::<Result<_, EngineError>>()?;
        let group_size = if self.cfg.sequential {
            1
        } else {
            self.cfg.max_parallel.max(1)
        };
        let groups: Vec<std::ops::Range<usize>> = (0..prepared.len())
            .step_by(group_size)
            .map(|s| s..(s + group_size).min(prepared.len()))
            .collect();
        let need = |g: &std::ops::Range<usize>| -> usize {
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
        let Engine {
            model,
            adapters,
            cfg,
            model_load_ms,
            adapter_load_ms,
            ..
        } = self;
        let model: &LlamaModel = model;
        let (n_batch, threads) = (cfg.n_batch, cfg.threads);
        let mut ctx_base = new_context(model, n_ctx, n_batch, n_seq, threads)?;
        let mut ctx_adapted = new_context(model, n_ctx, n_batch, n_seq, threads)?;
        let n_vocab = model.n_vocab() as usize;
        let total_passes = 1 + scales.len();
        let mut timings = Timings {
            model_load_ms: *model_load_ms,
            adapter_load_ms: *adapter_load_ms,
            ..Timings::default()
        };

        // Base pass: greedy continuations, once.
        progress(Progress::Pass {
            scale: None,
            done: 0,
            total: total_passes,
        });
        let t = Instant::now();
        let mut base_tokens: Vec<Vec<i32>> = Vec::with_capacity(prepared.len());
        let mut counts = (0usize, 0usize);
        for g in &groups {
            let (out, c) = generate(model, &mut ctx_base, &prepared[g.clone()], n_batch)?;
            base_tokens.extend(out);
            counts = (counts.0 + c.0, counts.1 + c.1);
        }
        timings.passes.push(pass_timing(None, t, counts));
        let base: Vec<BaseContinuation> = prompts
            .iter()
            .zip(&prepared)
            .zip(&base_tokens)
            .map(|((p, prep), toks)| BaseContinuation {
                prompt_id: p.id.clone(),
                prompt_tokens: prep.tokens.clone(),
                text: detokenize(model, toks),
                tokens: toks.clone(),
            })
            .collect();

        let mut measurements = Vec::new();
        let mut switch_ms = Vec::new();
        let mut scale_zero_delta = 0.0f32;
        let mut noise_floor = 0.0f64;
        // The engine self-check runs at scale 0 even when the sweep does not include it.
        let mut sweep: Vec<(f32, bool)> = scales.iter().map(|&s| (s, true)).collect();
        if !scales.contains(&0.0) {
            sweep.insert(0, (0.0, false));
        }
        let mut done = 1;
        for (scale, reported) in sweep {
            if reported {
                progress(Progress::Pass {
                    scale: Some(scale),
                    done,
                    total: total_passes,
                });
                done += 1;
            }
            let t = Instant::now();
            set_scale(adapters, &mut ctx_adapted, scale)?;
            ctx_adapted.clear_kv_cache();
            switch_ms.push(ms(t));
            let t = Instant::now();
            let mut compares = Vec::with_capacity(prepared.len());
            let mut tf_tokens = 0usize;
            for g in &groups {
                let (c, n) = teacher_forced(
                    &mut ctx_base,
                    &mut ctx_adapted,
                    &prepared[g.clone()],
                    &base_tokens[g.clone()],
                    n_batch,
                    n_vocab,
                )?;
                compares.extend(c);
                tf_tokens += n;
            }
            if scale == 0.0 {
                scale_zero_delta = compares.iter().map(|c| c.max_abs).fold(0.0, f32::max);
                noise_floor = compares.iter().map(|c| c.kl_max).fold(0.0, f64::max);
            }
            if !reported {
                continue;
            }
            let mut gen_count = 0;
            let mut adapted_tokens = Vec::with_capacity(prepared.len());
            for g in &groups {
                let (out, c) = generate(model, &mut ctx_adapted, &prepared[g.clone()], n_batch)?;
                adapted_tokens.extend(out);
                gen_count += c.1;
                tf_tokens += c.0;
            }
            timings
                .passes
                .push(pass_timing(Some(scale), t, (tf_tokens, gen_count)));
            for (i, p) in prompts.iter().enumerate() {
                let c = compares[i];
                let adapted = &adapted_tokens[i];
                let first_divergence = adapted
                    .iter()
                    .zip(&base_tokens[i])
                    .position(|(a, b)| a != b)
                    .or_else(|| {
                        (adapted.len() != base_tokens[i].len())
                            .then(|| adapted.len().min(base_tokens[i].len()))
                    });
                measurements.push(PromptMeasurement {
                    prompt_id: p.id.clone(),
                    scale,
                    adapted_text: detokenize(model, adapted),
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
        set_scale(adapters, &mut ctx_adapted, 0.0)?;
        timings.adapter_switch_ms = if switch_ms.is_empty() {
            0.0
        } else {
            switch_ms.iter().sum::<f64>() / switch_ms.len() as f64
        };
        timings.total_ms = ms(started) + *model_load_ms + *adapter_load_ms;
        Ok(RunMeasurements {
            base,
            measurements,
            scale_zero_max_abs_logit_delta: scale_zero_delta,
            noise_floor_kl_max: noise_floor,
            settings: EngineSettings {
                n_ctx,
                n_batch,
                n_ubatch: n_batch,
                threads,
                max_tokens: cfg.max_tokens,
                scales: scales.to_vec(),
            },
            timings,
        })
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

fn pass_timing(
    scale: Option<f32>,
    t: Instant,
    (prompt_tokens, gen_tokens): (usize, usize),
) -> PassTiming {
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    PassTiming {
        scale,
        prompt_tokens_per_s: prompt_tokens as f64 / secs,
        gen_tokens_per_s: gen_tokens as f64 / secs,
        wall_ms: secs * 1000.0,
    }
}

/// Argmax with ties resolved to the lowest id (deterministic greedy decoding).
fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best
}

/// Continuations, and (prompt tokens, generated tokens) decoded.
type Generated = (Vec<Vec<i32>>, (usize, usize));

/// Greedy continuations of `prompts` as sequences 0..n in one context: shared prefill batches, then one decode per
/// step with one token for every live sequence. Returns the continuations (EOG token included when produced) and
/// (prompt tokens, generated tokens) decoded.
fn generate(
    model: &LlamaModel,
    ctx: &mut LlamaContext,
    prompts: &[Prepared],
    n_batch: u32,
) -> Result<Generated, EngineError> {
    let vocab = model.vocab();
    let dec = |e: String| EngineError::Decode(e);
    ctx.clear_kv_cache();
    let n_batch = n_batch as usize;
    let mut out: Vec<Vec<i32>> = vec![Vec::new(); prompts.len()];
    let mut next: Vec<Option<i32>> = vec![None; prompts.len()];
    let mut batch = LlamaBatch::new(n_batch.max(prompts.len()), prompts.len() as i32);
    let mut owners: Vec<usize> = Vec::new(); // batch index → sequence whose next token it predicts
    let mut prompt_tokens = 0;
    let flush = |ctx: &mut LlamaContext,
                 batch: &mut LlamaBatch,
                 owners: &mut Vec<usize>,
                 next: &mut Vec<Option<i32>>|
     -> Result<(), EngineError> {
        if batch.n_tokens() == 0 {
            return Ok(());
        }
        ctx.decode(batch).map_err(|e| dec(e.to_string()))?;
        for (k, &seq) in owners.iter().enumerate() {
            if seq != usize::MAX {
                next[seq] = Some(argmax(ctx.get_logits_ith(k as i32)) as i32);
            }
        }
        batch.clear();
        owners.clear();
        Ok(())
    };
    for (s, p) in prompts.iter().enumerate() {
        for (i, &t) in p.tokens.iter().enumerate() {
            if batch.n_tokens() as usize >= n_batch {
                flush(ctx, &mut batch, &mut owners, &mut next)?;
            }
            let last = i + 1 == p.tokens.len();
            batch
                .add(LlamaToken::new(t), i as i32, &[s as i32], last)
                .map_err(|e| dec(e.to_string()))?;
            owners.push(if last { s } else { usize::MAX });
            prompt_tokens += 1;
        }
    }
    flush(ctx, &mut batch, &mut owners, &mut next)?;
    let mut generated = 0;
    loop {
        let mut any = false;
        for s in 0..prompts.len() {
            let Some(t) = next[s].take() else { continue };
            out[s].push(t);
            generated += 1;
            if vocab.is_eog(LlamaToken::new(t)) || out[s].len() >= prompts[s].max_tokens {
                continue;
            }
            let pos = (prompts[s].tokens.len() + out[s].len() - 1) as i32;
            batch
                .add(LlamaToken::new(t), pos, &[s as i32], true)
                .map_err(|e| dec(e.to_string()))?;
            owners.push(s);
            any = true;
        }
        if !any {
            break;
        }
        flush(ctx, &mut batch, &mut owners, &mut next)?;
    }
    Ok((out, (prompt_tokens, generated)))
}

/// Teacher-forced comparison: the same token batches (prompt + base continuation) go through the base context and
/// the adapted context in lockstep, and every predicting position is compared right away, so no logits are kept
/// beyond one batch. KL(base ‖ adapted) is exact over the whole vocabulary.
fn teacher_forced(
    ctx_base: &mut LlamaContext,
    ctx_adapted: &mut LlamaContext,
    prompts: &[Prepared],
    continuations: &[Vec<i32>],
    n_batch: u32,
    n_vocab: usize,
) -> Result<(Vec<Compare>, usize), EngineError> {
    let dec = |e: String| EngineError::Decode(e);
    ctx_base.clear_kv_cache();
    ctx_adapted.clear_kv_cache();
    let n_batch = n_batch as usize;
    let mut result = vec![Compare::default(); prompts.len()];
    let mut batch = LlamaBatch::new(n_batch, prompts.len() as i32);
    let mut owners: Vec<(usize, i32)> = Vec::new(); // (sequence, the token the position predicts) or usize::MAX
    let mut tokens = 0;
    let mut run = |batch: &mut LlamaBatch,
                   owners: &mut Vec<(usize, i32)>,
                   result: &mut Vec<Compare>|
     -> Result<(), EngineError> {
        if batch.n_tokens() == 0 {
            return Ok(());
        }
        ctx_base.decode(batch).map_err(|e| dec(e.to_string()))?;
        ctx_adapted.decode(batch).map_err(|e| dec(e.to_string()))?;
        for (k, &(seq, _)) in owners.iter().enumerate() {
            if seq == usize::MAX {
                continue;
            }
            let p = ctx_base.get_logits_ith(k as i32);
            let q = ctx_adapted.get_logits_ith(k as i32);
            let (kl, same_top, max_abs) =
                compare_position(&p[..n_vocab.min(p.len())], &q[..n_vocab.min(q.len())]);
            let r = &mut result[seq];
            r.kl_sum += kl;
            r.kl_max = r.kl_max.max(kl);
            r.agree += usize::from(same_top);
            r.positions += 1;
            r.max_abs = r.max_abs.max(max_abs);
        }
        batch.clear();
        owners.clear();
        Ok(())
    };
    for (s, (p, cont)) in prompts.iter().zip(continuations).enumerate() {
        // Feed prompt + continuation minus its last token; positions from the prompt's last token on predict the
        // continuation, one distribution per generated token.
        let feed: Vec<i32> = p
            .tokens
            .iter()
            .chain(cont.iter().take(cont.len().saturating_sub(1)))
            .copied()
            .collect();
        for (i, &t) in feed.iter().enumerate() {
            if batch.n_tokens() as usize >= n_batch {
                run(&mut batch, &mut owners, &mut result)?;
            }
            let predicts = i + 1 >= p.tokens.len();
            batch
                .add(LlamaToken::new(t), i as i32, &[s as i32], predicts)
                .map_err(|e| dec(e.to_string()))?;
            owners.push(if predicts { (s, 0) } else { (usize::MAX, 0) });
            tokens += 1;
        }
    }
    run(&mut batch, &mut owners, &mut result)?;
    Ok((result, tokens))
}

/// KL(p ‖ q) in nats of the softmaxes of two logit rows, whether their argmaxes agree, and max |Δlogit|.
fn compare_position(p: &[f32], q: &[f32]) -> (f64, bool, f32) {
    let log_z = |x: &[f32]| {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
    };
    let (zp, zq) = (log_z(p), log_z(q));
    let mut kl = 0.0;
    let mut max_abs = 0.0f32;
    for (&a, &b) in p.iter().zip(q) {
        let lp = a as f64 - zp;
        let lq = b as f64 - zq;
        kl += lp.exp() * (lp - lq);
        max_abs = max_abs.max((a - b).abs());
    }
    (kl.max(0.0), argmax(p) == argmax(q), max_abs)
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
