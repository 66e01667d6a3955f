//! The llama.cpp engine: a GGUF model, `n_batch` llama.cpp sequences in one context, decoded
//! together in one forward pass per step. Each sequence has its own KV stream of
//! `max_context_len` cells (non-unified KV), so slots never see each other's tokens.
//!
//! Prefix reuse: a run without `keep_history` leaves its tokens in the slot's KV cells, and the
//! slot's next prompt skips prefilling the part it shares with them (the chat template's
//! system message, an earlier turn of the same conversation), as llama.cpp's server does with
//! `cache_prompt`. A paused run keeps its tokens as history; a following run without
//! `keep_history` starts from them the same way, so a reply cut at a step boundary and resumed
//! with prompt + reply as input prefills one token. Outputs are unchanged (the same tokens at
//! the same positions have the same keys and values); only prefill time and the perf stats'
//! `prefill_tokens` drop. Rockchip's runtime does not do this, so `RKLLM_CPU_PREFIX_REUSE=0`
//! turns it off to time prefill as an NPU would.

use crate::engine::{Backend, EngineError, Hidden, Sampled};
use crate::request::{RunRequest, SlotInput};
use crate::sysinfo;
use crate::template::ChatTemplate;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use parking_lot::Mutex;
use rkllm::Sampling;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};

/// llama.cpp's backend may be initialised once per process.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let verbose = std::env::var_os("RKLLM_CPU_LOG").is_some_and(|v| v != "0");
            if !verbose {
                llama_cpp_2::send_logs_to_tracing(
                    llama_cpp_2::LogOptions::default().with_logs_enabled(false),
                );
            }
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load {
            path: String::new(),
            reason: format!("llama.cpp backend: {e}"),
        })
}

/// Handles of one model share its weights, as instances of one `.rkllm` do on the NPU.
pub fn load_model(path: &Path) -> Result<Arc<LlamaModel>, EngineError> {
    static MODELS: OnceLock<Mutex<HashMap<PathBuf, Weak<LlamaModel>>>> = OnceLock::new();
    let err = |reason: String| EngineError::Load {
        path: path.display().to_string(),
        reason,
    };
    let key = path.canonicalize().map_err(|e| err(e.to_string()))?;
    let mut models = MODELS.get_or_init(Default::default).lock();
    if let Some(m) = models.get(&key).and_then(Weak::upgrade) {
        return Ok(m);
    }
    let mut magic = [0u8; 4];
    use std::io::Read;
    std::fs::File::open(&key)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| err(format!("cannot read the file: {e}")))?;
    if &magic != b"GGUF" {
        return Err(err("not a GGUF file (bad magic)".into()));
    }
    let model = LlamaModel::load_from_file(backend()?, &key, &LlamaModelParams::default())
        .map_err(|e| err(format!("llama.cpp rejected it: {e}")))?;
    let model = Arc::new(model);
    models.insert(key, Arc::downgrade(&model));
    Ok(model)
}

/// What the engine needs from `rkllm_init`.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_batch: usize,
    pub max_context_len: i32,
    pub threads: i32,
}

#[derive(Default)]
struct Slot {
    /// Tokens in this slot's KV cache.
    tokens: Vec<LlamaToken>,
    /// Prompt tokens waiting for prefill.
    pending: Vec<LlamaToken>,
    /// Tokens of the system prompt at the start of `tokens`.
    system_len: usize,
    /// Tokens of an ended run still in this slot's KV cells (empty while `tokens` is not):
    /// not history, only a prefix the next prompt may start from.
    reusable: Vec<LlamaToken>,
    sampler: Option<LlamaSampler>,
    /// Index of this slot's logits in the last decoded batch.
    logits: i32,
    /// The unfinished character that ends this run's token input (see `Backend::held_bytes`).
    held: Vec<u8>,
}

/// One slot's input, checked and tokenized, before the run touches the slot.
struct Prepared {
    tokens: Vec<LlamaToken>,
    /// Tokens of the system prompt at its start.
    system_len: usize,
    /// The unfinished character it ends with.
    held: Vec<u8>,
}

struct PromptCache {
    tokens: Vec<LlamaToken>,
    state: llama_cpp_2::context::session::SeqState,
}

pub struct LlamaEngine<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    slots: Vec<Slot>,
    context_len: usize,
    batch: LlamaBatch<'static>,
    batch_capacity: usize,
    template: ChatTemplate,
    bos_text: String,
    cache: Option<PromptCache>,
    save_cache: Option<PathBuf>,
    skip_special: bool,
    reuse_prefix: bool,
    /// A decode failed during this run: the KV cells may not match the slots' tokens.
    dirty: bool,
    /// For hidden-state runs, made on the first: llama.cpp fixes per context whether it
    /// outputs embeddings, and a context of its own leaves the slots' KV cells alone.
    embed_ctx: Option<LlamaContext<'m>>,
    threads: i32,
}

/// Tokens per forward pass of a hidden-state run. Every token is an output there, and
/// llama.cpp sizes its output buffer (logits included) by this, so it is kept small.
const EMBED_CHUNK: usize = 128;

/// llama.cpp's CPU flash attention takes its tiled path only for 64 query tokens or more;
/// below that each query token walks every cached position alone, ~3x the CPU time of plain
/// matrix-product attention for a warm prompt of a dozen new tokens, and 2.3x for decoding
/// 8 slots of 400 tokens (docs/runtime.md). It stays on: plain attention rounds by the
/// shape of each pass, not by the query token alone, so a greedy reply batched with others
/// and cut and resumed drifts from the same reply served alone (even when both start from
/// the same warm slot), which continuous batching promises it does not. The per-token path
/// computes each query the same whatever the batch. `RKLLM_CPU_FLASH_ATTN=0` turns it off,
/// `1` forces it on; otherwise it is llama.cpp's choice (`auto`: on, on CPUs).
pub fn flash_attention() -> llama_cpp_sys_2::llama_flash_attn_type {
    match std::env::var("RKLLM_CPU_FLASH_ATTN").as_deref() {
        Ok("0") => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        Ok("1") => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        _ => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
    }
}

/// The type of the KV cache's keys and values. 8-bit (`q8_0`, llama.cpp's, quantized per
/// cell) by default: with flash attention each query token's dot products against the cache
/// are then integer ones, and on the 2-vCPU VM of BENCHMARKS.md one slot decoding 512
/// tokens went from 62 to 148 tok/s, 8 slots of 400 tokens from 109 to 352, at about half
/// the cache memory (docs/runtime.md). Each query is still computed the same whatever the
/// batch, so a cut and resumed reply stays exact. `RKLLM_CPU_KV_TYPE=f16` (llama.cpp's
/// default) or `f32` chooses another.
pub fn kv_type() -> llama_cpp_2::context::params::KvCacheType {
    use llama_cpp_2::context::params::KvCacheType;
    match std::env::var("RKLLM_CPU_KV_TYPE").as_deref() {
        Ok("f16") => KvCacheType::F16,
        Ok("f32") => KvCacheType::F32,
        _ => KvCacheType::Q8_0,
    }
}

fn prefix_reuse_enabled() -> bool {
    std::env::var_os("RKLLM_CPU_PREFIX_REUSE").is_none_or(|v| v != "0")
}

/// How many leading tokens `prompt` shares with `cached`, leaving at least one prompt token to
/// decode (its logits start the reply).
fn common_prefix(cached: &[LlamaToken], prompt: &[LlamaToken]) -> usize {
    cached
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count()
        .min(prompt.len().saturating_sub(1))
}

/// How many of the latest context tokens the repetition penalties look at.
const PENALTY_LAST_N: usize = 64;

fn seed() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var("RKLLM_CPU_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        });
    base.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn sampler_for(s: &Sampling, n_vocab: i32) -> LlamaSampler {
    let penalties = LlamaSampler::penalties(
        n_vocab,
        PENALTY_LAST_N as i32,
        if s.repeat_penalty > 0.0 {
            s.repeat_penalty
        } else {
            1.0
        },
        s.frequency_penalty,
        s.presence_penalty,
    );
    let mut chain = vec![penalties];
    match s.mirostat {
        1 => {
            chain.push(LlamaSampler::temp(s.temperature.max(0.01)));
            chain.push(LlamaSampler::mirostat(
                n_vocab,
                seed(),
                s.mirostat_tau,
                s.mirostat_eta,
                100,
            ));
        }
        2 => {
            chain.push(LlamaSampler::temp(s.temperature.max(0.01)));
            chain.push(LlamaSampler::mirostat_v2(
                seed(),
                s.mirostat_tau,
                s.mirostat_eta,
            ));
        }
        _ if s.is_greedy() => chain.push(LlamaSampler::greedy()),
        _ => {
            if s.top_k > 0 {
                chain.push(LlamaSampler::top_k(s.top_k));
            }
            if s.top_p > 0.0 && s.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(s.top_p, 1));
            }
            chain.push(LlamaSampler::temp(s.temperature));
            chain.push(LlamaSampler::dist(seed()));
        }
    }
    LlamaSampler::chain_simple(chain)
}

impl<'m> LlamaEngine<'m> {
    pub fn new(model: &'m LlamaModel, cfg: &LlamaConfig) -> Result<Self, EngineError> {
        let trained = model.n_ctx_train() as usize;
        let context_len = if cfg.max_context_len > 0 {
            (cfg.max_context_len as usize).min(trained)
        } else {
            trained
        };
        if cfg.max_context_len as usize > trained {
            eprintln!(
                "rkllm-cpu: max_context_len {} exceeds the model's trained context {trained}; using {trained}",
                cfg.max_context_len
            );
        }
        let n = cfg.n_batch;
        let batch_capacity = 512;
        let n_ctx = NonZeroU32::new((context_len * n) as u32);
        let kv = kv_type();
        let params = LlamaContextParams::default()
            .with_n_ctx(n_ctx)
            .with_n_seq_max(n as u32)
            .with_kv_unified(false)
            .with_flash_attention_policy(flash_attention())
            .with_type_k(kv)
            .with_type_v(kv)
            .with_n_batch(batch_capacity as u32)
            .with_n_ubatch(batch_capacity as u32)
            .with_n_threads(cfg.threads)
            .with_n_threads_batch(cfg.threads);
        let ctx = model
            .new_context(backend()?, params)
            .map_err(|e| EngineError::Load {
                path: String::new(),
                reason: format!("cannot create a context of {context_len} x {n}: {e}"),
            })?;
        let vocab = model.vocab();
        let bos_text = vocab
            .text(vocab.bos())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let eos_text = vocab
            .text(vocab.eos())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let template = match model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
        {
            Some(source) => ChatTemplate::jinja(&source, &bos_text, &eos_text),
            None => {
                eprintln!("rkllm-cpu: the model has no chat template; prompts are used verbatim");
                ChatTemplate::verbatim()
            }
        };
        Ok(LlamaEngine {
            model,
            ctx,
            slots: (0..n).map(|_| Slot::default()).collect(),
            context_len,
            batch: LlamaBatch::new(batch_capacity, n as i32),
            batch_capacity,
            template,
            bos_text,
            cache: None,
            save_cache: None,
            skip_special: true,
            reuse_prefix: prefix_reuse_enabled(),
            dirty: false,
            embed_ctx: None,
            threads: cfg.threads,
        })
    }

    fn tokenize(&self, text: &str, first: bool) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        // Templates that write the BOS text themselves must not get a second one.
        let add_bos = first && vocab.should_add_bos() && !text.starts_with(&self.bos_text);
        vocab.tokenize(text.as_bytes(), add_bos, true)
    }

    /// Slot `i`'s token input, checked against the vocabulary.
    fn token_ids(&self, i: usize, ids: &[i32]) -> Result<Vec<LlamaToken>, EngineError> {
        let n_vocab = self.model.n_vocab();
        if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= n_vocab) {
            return Err(EngineError::InvalidInput(format!(
                "slot {i}: token id {bad} is outside the vocabulary (0..{n_vocab})"
            )));
        }
        Ok(ids.iter().map(|&t| LlamaToken(t)).collect())
    }

    fn clear_slot(&mut self, i: usize) {
        let _ = self.ctx.clear_kv_cache_seq(Some(i as u32), None, None);
        self.slots[i].tokens.clear();
        self.slots[i].reusable.clear();
        self.slots[i].system_len = 0;
    }

    fn decode_batch(&mut self) -> Result<(), EngineError> {
        self.ctx.decode(&mut self.batch).map_err(|e| {
            self.dirty = true;
            EngineError::Decode(e.to_string())
        })
    }

    /// The bytes of a character that `tokens` end in the middle of. A reply cut there had them
    /// held back (never reported), so the client's text lacks them.
    fn unfinished_character(&self, tokens: &[LlamaToken], skip_special: bool) -> Vec<u8> {
        let vocab = self.model.vocab();
        // A character has at most 4 bytes, and every token at least one.
        let mut bytes = Vec::new();
        for &t in &tokens[tokens.len().saturating_sub(4)..] {
            if !vocab.is_eog(t) {
                vocab.token_to_piece_into(t, &mut bytes, !skip_special, None);
            }
        }
        crate::utf8::incomplete_tail(&bytes).to_vec()
    }

    /// What slot `i`'s KV cells hold outside a continuing turn: the history a paused or
    /// `keep_history` run kept, else the tokens an ended run left there.
    fn cells_of(&self, i: usize) -> &[LlamaToken] {
        let s = &self.slots[i];
        if s.tokens.is_empty() {
            &s.reusable
        } else {
            &s.tokens
        }
    }

    /// Starts slot `i` from what its last run left in its KV cells, keeping the first `common`
    /// tokens, which `prompt` shares with them. Returns how many prompt tokens that saves.
    fn reuse_own_prefix(&mut self, i: usize, prompt: &[LlamaToken], common: usize) -> usize {
        self.slots[i].reusable.clear();
        // Also drops cells an aborted prefill wrote past the slot's known tokens.
        if self
            .ctx
            .kv_cache_seq_rm(i as i32, Some(common as u32), None)
            .is_err()
        {
            self.clear_slot(i);
            return 0;
        }
        self.slots[i].tokens = prompt[..common].to_vec();
        common
    }

    /// Starts slot `i` from the loaded prompt cache, keeping the first `common` tokens, which
    /// `prompt` shares with it. Returns how many prompt tokens that saves.
    fn reuse_prompt_cache(&mut self, i: usize, prompt: &[LlamaToken], common: usize) -> usize {
        let Some(cache) = &self.cache else { return 0 };
        if common == 0 || self.ctx.state_seq_set(&cache.state, i as i32).is_err() {
            return 0;
        }
        if common < cache.tokens.len() {
            let _ = self
                .ctx
                .kv_cache_seq_rm(i as i32, Some(common as u32), None);
        }
        self.slots[i].tokens = prompt[..common].to_vec();
        common
    }
}

impl<'m> LlamaEngine<'m> {
    /// The context of hidden-state runs: per-token states (no pooling: Rockchip's contract),
    /// one slot's context of KV cells shared by the inputs of a pass (unified), so memory
    /// grows by one context, not `n_batch`.
    fn embed_context(&mut self) -> Result<&mut LlamaContext<'m>, EngineError> {
        if self.embed_ctx.is_none() {
            let n = self.slots.len() as u32;
            let params = LlamaContextParams::default()
                .with_embeddings(true)
                .with_pooling_type(LlamaPoolingType::None)
                .with_n_ctx(NonZeroU32::new(self.context_len as u32))
                .with_n_seq_max(n)
                .with_kv_unified(true)
                .with_n_batch(EMBED_CHUNK as u32)
                .with_n_ubatch(EMBED_CHUNK as u32)
                .with_n_threads(self.threads)
                .with_n_threads_batch(self.threads);
            let ctx = self.model.new_context(backend()?, params).map_err(|e| {
                EngineError::Decode(format!("cannot create the embedding context: {e}"))
            })?;
            self.embed_ctx = Some(ctx);
        }
        Ok(self.embed_ctx.as_mut().expect("just made"))
    }

    /// One slot's input as tokens, checked against the context.
    fn embed_tokens(
        &self,
        i: usize,
        input: &SlotInput,
    ) -> Result<Option<Vec<LlamaToken>>, EngineError> {
        let tokens = match input {
            SlotInput::Idle => return Ok(None),
            SlotInput::Prompt {
                text,
                role,
                enable_thinking,
            } => {
                let wrapped = self
                    .template
                    .first_turn(role, text, *enable_thinking)
                    .map_err(EngineError::InvalidInput)?;
                self.tokenize(&wrapped, true)
            }
            SlotInput::Tokens(ids) => self.token_ids(i, ids)?,
        };
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput(format!("slot {i}: empty prompt")));
        }
        if tokens.len() > self.context_len {
            return Err(EngineError::ContextOverflow {
                slot: i,
                needed: tokens.len(),
                limit: self.context_len,
            });
        }
        Ok(Some(tokens))
    }
}

impl Backend for LlamaEngine<'_> {
    fn hidden_states(
        &mut self,
        req: &RunRequest,
        abort: &AtomicBool,
    ) -> Result<Vec<Option<Hidden>>, EngineError> {
        let inputs = req
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| self.embed_tokens(i, s))
            .collect::<Result<Vec<_>, _>>()?;
        let embd = self.model.n_embd_out() as usize;
        let context_len = self.context_len;
        let mut out: Vec<Option<Hidden>> = inputs
            .iter()
            .map(|t| {
                t.as_ref().map(|t| Hidden {
                    states: Vec::with_capacity(t.len() * embd),
                    embd_size: embd,
                    num_tokens: t.len(),
                })
            })
            .collect();
        // Inputs share a pass while their tokens fit the context's cells together; each
        // input attends only to its own tokens (its own sequence id).
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut used = usize::MAX;
        for (i, t) in inputs.iter().enumerate() {
            let Some(t) = t else { continue };
            if used.saturating_add(t.len()) > context_len {
                groups.push(Vec::new());
                used = 0;
            }
            used += t.len();
            groups.last_mut().expect("pushed").push(i);
        }
        let mut batch = LlamaBatch::new(EMBED_CHUNK, self.slots.len() as i32);
        let ctx = self.embed_context()?;
        for group in groups {
            ctx.clear_kv_cache();
            let work: Vec<(usize, usize)> = group
                .iter()
                .flat_map(|&i| (0..inputs[i].as_ref().map_or(0, Vec::len)).map(move |j| (i, j)))
                .collect();
            for chunk in work.chunks(EMBED_CHUNK) {
                if abort.load(Ordering::Acquire) {
                    return Ok(out.iter().map(|_| None).collect());
                }
                batch.clear();
                for &(i, j) in chunk {
                    let t = inputs[i].as_ref().expect("busy")[j];
                    batch
                        .add(t, j as i32, &[i as i32], true)
                        .map_err(|e| EngineError::Decode(e.to_string()))?;
                }
                ctx.decode(&mut batch)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
                for (k, &(i, _)) in chunk.iter().enumerate() {
                    let row = ctx
                        .embeddings_ith(k as i32)
                        .map_err(|e| EngineError::Decode(format!("no hidden state: {e}")))?;
                    let h = out[i].as_mut().expect("busy");
                    h.states.extend_from_slice(&row[..embd.min(row.len())]);
                }
            }
        }
        // It holds nothing between runs.
        ctx.clear_kv_cache();
        Ok(out)
    }

    fn n_slots(&self) -> usize {
        self.slots.len()
    }

    fn prepare(&mut self, req: &RunRequest) -> Result<Vec<Option<usize>>, EngineError> {
        let mut prompts: Vec<Option<Prepared>> = Vec::with_capacity(req.slots.len());
        for (i, input) in req.slots.iter().enumerate() {
            let continuing = req.keep_history && !self.slots[i].tokens.is_empty();
            let history = if continuing {
                self.slots[i].tokens.len()
            } else {
                0
            };
            let tokens = match input {
                SlotInput::Idle => {
                    prompts.push(None);
                    continue;
                }
                SlotInput::Prompt {
                    text,
                    role,
                    enable_thinking,
                } => {
                    let wrapped = if continuing {
                        self.template.next_turn(role, text, *enable_thinking)
                    } else {
                        self.template.first_turn(role, text, *enable_thinking)
                    }
                    .map_err(EngineError::InvalidInput)?;
                    self.tokenize(&wrapped, !continuing)
                }
                SlotInput::Tokens(ids) => self.token_ids(i, ids)?,
            };
            if tokens.is_empty() {
                return Err(EngineError::InvalidInput(format!("slot {i}: empty prompt")));
            }
            if history + tokens.len() + 1 > self.context_len {
                return Err(EngineError::ContextOverflow {
                    slot: i,
                    needed: history + tokens.len() + 1,
                    limit: self.context_len,
                });
            }
            let system_len = if continuing {
                self.slots[i].system_len
            } else if let SlotInput::Prompt {
                enable_thinking, ..
            } = input
            {
                let system = self.template.system_part(*enable_thinking);
                if system.is_empty() {
                    0
                } else {
                    self.tokenize(&system, true).len()
                }
            } else {
                0
            };
            let held = match input {
                SlotInput::Tokens(_) => self.unfinished_character(&tokens, req.skip_special_token),
                _ => Vec::new(),
            };
            prompts.push(Some(Prepared {
                tokens,
                system_len,
                held,
            }));
        }

        // Nothing has changed so far; from here on the run owns the busy slots.
        let n_vocab = self.model.n_vocab();
        self.skip_special = req.skip_special_token;
        self.save_cache = req.save_prompt_cache.clone();
        let mut plan = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.into_iter().enumerate() {
            let Some(Prepared {
                tokens,
                system_len,
                held,
            }) = p
            else {
                plan.push(None);
                continue;
            };
            let continuing = req.keep_history && !self.slots[i].tokens.is_empty();
            let reused = if continuing {
                0
            } else {
                let own = if self.reuse_prefix {
                    common_prefix(self.cells_of(i), &tokens)
                } else {
                    0
                };
                let from_file = self
                    .cache
                    .as_ref()
                    .map_or(0, |c| common_prefix(&c.tokens, &tokens));
                if own > 0 && own >= from_file {
                    self.reuse_own_prefix(i, &tokens, own)
                } else {
                    self.clear_slot(i);
                    self.reuse_prompt_cache(i, &tokens, from_file)
                }
            };
            let slot = &mut self.slots[i];
            slot.held = held;
            slot.pending = tokens[reused..].to_vec();
            if !continuing {
                slot.system_len = system_len;
            }
            let mut sampler = sampler_for(&req.sampling, n_vocab);
            // The penalties see the whole context, prompt included (as llama.cpp's server
            // primes them), so a reply cut and resumed with its text as prompt is sampled
            // exactly as an uninterrupted one.
            let context = slot.tokens.iter().chain(&slot.pending);
            let skip = (slot.tokens.len() + slot.pending.len()).saturating_sub(PENALTY_LAST_N);
            sampler.accept_many(context.skip(skip));
            slot.sampler = Some(sampler);
            plan.push(Some(slot.pending.len()));
        }
        Ok(plan)
    }

    fn held_bytes(&self, slot: usize) -> &[u8] {
        &self.slots[slot].held
    }

    fn prefill(&mut self, abort: &AtomicBool) -> Result<(), EngineError> {
        // Every prompt token in chunks, the last token of each prompt at the very end with
        // its logits on. Chunks are cut from the end, so the last one is full (or all of it)
        // and holds every slot's last token: their logits come from the final pass and
        // survive to the first sampling step. A warm prompt of a few new tokens is then one
        // forward pass, not two; on llama.cpp's CPU path a pass costs about a decode step
        // whatever its size up to a dozen tokens, so the second pass was a large part of a
        // warm request's prefill.
        let mut work: Vec<(usize, usize, bool)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            for j in 0..s.pending.len().saturating_sub(1) {
                work.push((i, j, false));
            }
        }
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(j) = s.pending.len().checked_sub(1) {
                work.push((i, j, true));
            }
        }
        let cap = self.batch_capacity;
        let head = work.len() % cap;
        let chunks = std::iter::once(&work[..head]).chain(work[head..].chunks(cap));
        for chunk in chunks.filter(|c| !c.is_empty()) {
            if abort.load(Ordering::Acquire) {
                return Ok(());
            }
            self.batch.clear();
            for (k, &(i, j, last)) in chunk.iter().enumerate() {
                let s = &mut self.slots[i];
                let pos = (s.tokens.len() + j) as i32;
                self.batch
                    .add(s.pending[j], pos, &[i as i32], last)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
                if last {
                    s.logits = k as i32;
                }
            }
            self.decode_batch()?;
        }
        for s in &mut self.slots {
            let pending = std::mem::take(&mut s.pending);
            s.tokens.extend(pending);
        }
        if let Some(path) = self.save_cache.take() {
            if let Some((i, s)) = self
                .slots
                .iter()
                .enumerate()
                .find(|(_, s)| s.sampler.is_some())
            {
                self.ctx
                    .state_seq_save_file(&path, i as i32, &s.tokens)
                    .map_err(|e| {
                        EngineError::PromptCache(format!("saving {}: {e}", path.display()))
                    })?;
            }
        }
        Ok(())
    }

    fn sample(&mut self, slot: usize, piece: &mut Vec<u8>) -> Result<Sampled, EngineError> {
        let s = &mut self.slots[slot];
        let sampler = s
            .sampler
            .as_mut()
            .ok_or_else(|| EngineError::Decode(format!("slot {slot} has no sampler")))?;
        let token = sampler.sample(&self.ctx, s.logits);
        let vocab = self.model.vocab();
        let eog = vocab.is_eog(token);
        if !eog {
            vocab.token_to_piece_into(token, piece, !self.skip_special, None);
        }
        Ok(Sampled {
            token: token.0,
            eog,
        })
    }

    fn has_room(&self, slot: usize) -> bool {
        // The token just sampled still has to be decoded.
        self.slots[slot].tokens.len() + 1 < self.context_len
    }

    fn decode(&mut self, tokens: &[(usize, i32)]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Ok(());
        }
        self.batch.clear();
        for (idx, &(i, t)) in tokens.iter().enumerate() {
            let s = &mut self.slots[i];
            self.batch
                .add(LlamaToken(t), s.tokens.len() as i32, &[i as i32], true)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            s.tokens.push(LlamaToken(t));
            s.logits = idx as i32;
        }
        self.decode_batch()
    }

    fn end_run(&mut self, keep_history: bool, last: &[(usize, i32)]) -> Result<(), EngineError> {
        let busy: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].sampler.is_some())
            .collect();
        let result = if keep_history {
            // The reply's last token (end of generation included) joins the history, so the
            // next turn's template text follows it.
            let fits: Vec<(usize, i32)> = last
                .iter()
                .copied()
                .filter(|&(i, _)| self.slots[i].tokens.len() < self.context_len)
                .collect();
            self.decode(&fits)
        } else {
            for &i in &busy {
                if self.reuse_prefix && !self.dirty {
                    let slot = &mut self.slots[i];
                    slot.reusable = std::mem::take(&mut slot.tokens);
                    slot.system_len = 0;
                } else {
                    self.clear_slot(i);
                }
            }
            Ok(())
        };
        self.dirty = false;
        for &i in &busy {
            self.slots[i].sampler = None;
            self.slots[i].pending.clear();
        }
        if result.is_err() {
            for &i in &busy {
                self.clear_slot(i);
            }
        }
        result
    }

    fn memory_mb(&self) -> f32 {
        sysinfo::vm_hwm_mb()
    }

    fn clear_kv_cache(
        &mut self,
        keep_system_prompt: bool,
        ranges: Option<&[(i32, i32)]>,
    ) -> Result<(), EngineError> {
        match ranges {
            None => {
                for i in 0..self.slots.len() {
                    let keep = if keep_system_prompt {
                        self.slots[i].system_len
                    } else {
                        0
                    };
                    if keep == 0 {
                        self.clear_slot(i);
                    } else {
                        let _ = self.ctx.kv_cache_seq_rm(i as i32, Some(keep as u32), None);
                        self.slots[i].tokens.truncate(keep);
                    }
                }
            }
            Some(ranges) => {
                for (i, &(start, end)) in ranges.iter().enumerate().take(self.slots.len()) {
                    let len = self.slots[i].tokens.len() as i32;
                    let (start, end) = (
                        start.clamp(0, len),
                        if end < 0 { len } else { end.clamp(0, len) },
                    );
                    if start >= end {
                        continue;
                    }
                    self.ctx
                        .kv_cache_seq_rm(i as i32, Some(start as u32), Some(end as u32))
                        .map_err(|e| EngineError::InvalidInput(e.to_string()))?;
                    // Later positions move down so the sequence stays contiguous.
                    if end < len {
                        let _ = self.ctx.kv_cache_seq_add(
                            i as i32,
                            Some(end as u32),
                            None,
                            start - end,
                        );
                    }
                    self.slots[i].tokens.drain(start as usize..end as usize);
                    let sys = &mut self.slots[i].system_len;
                    *sys = (*sys).min(start as usize);
                }
            }
        }
        Ok(())
    }

    fn kv_cache_sizes(&self) -> Vec<i32> {
        self.slots.iter().map(|s| s.tokens.len() as i32).collect()
    }

    fn set_chat_template(&mut self, system: &str, prefix: &str, postfix: &str) {
        self.template = ChatTemplate::Fixed {
            system: system.into(),
            prefix: prefix.into(),
            postfix: postfix.into(),
        };
    }

    fn load_prompt_cache(&mut self, path: &Path) -> Result<(), EngineError> {
        if !path.is_file() {
            return Err(EngineError::PromptCache(format!(
                "{} does not exist",
                path.display()
            )));
        }
        // Load through the last slot, keeping whatever that slot held.
        let scratch = self.slots.len() - 1;
        self.slots[scratch].reusable.clear();
        let flags = LlamaStateSeqFlags::empty();
        let backup = if self.slots[scratch].tokens.is_empty() {
            None
        } else {
            Some(
                self.ctx
                    .state_seq_get(scratch as i32, flags)
                    .map_err(|e| EngineError::PromptCache(e.to_string()))?,
            )
        };
        let _ = self
            .ctx
            .clear_kv_cache_seq(Some(scratch as u32), None, None);
        let loaded = self
            .ctx
            .state_seq_load_file(path, scratch as i32, self.context_len)
            .map_err(|e| EngineError::PromptCache(format!("{}: {e}", path.display())))
            .and_then(|(tokens, _)| {
                let state = self
                    .ctx
                    .state_seq_get(scratch as i32, flags)
                    .map_err(|e| EngineError::PromptCache(e.to_string()))?;
                Ok(PromptCache { tokens, state })
            });
        let _ = self
            .ctx
            .clear_kv_cache_seq(Some(scratch as u32), None, None);
        if let Some(b) = backup {
            self.ctx
                .state_seq_set(&b, scratch as i32)
                .map_err(|e| EngineError::PromptCache(e.to_string()))?;
        }
        self.cache = Some(loaded?);
        Ok(())
    }

    fn release_prompt_cache(&mut self) {
        self.cache = None;
    }
}
