//! Family-neutral parameters, and their conversion to and from both families' structs. The
//! CPU runtime decodes incoming structs with the same conversions, so the two sides of the
//! FFI boundary cannot drift apart.

use crate::abi::{v1_2, v1_3, RKLLMExtendParam};
use std::ffi::CStr;
use std::path::PathBuf;

/// Sampling parameters, applied per handle (v1.2) or per run (v1.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub top_k: i32,
    pub top_p: f32,
    pub temperature: f32,
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// 0 off, 1 Mirostat, 2 Mirostat 2.0.
    pub mirostat: i32,
    pub mirostat_tau: f32,
    pub mirostat_eta: f32,
}

impl Default for Sampling {
    /// The SDK manual's `rkllm_createDefaultParam` values.
    fn default() -> Self {
        Sampling {
            top_k: 40,
            top_p: 0.9,
            temperature: 0.8,
            repeat_penalty: 1.1,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            mirostat: 0,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
        }
    }
}

impl Sampling {
    /// Deterministic decoding: always the most likely token, no penalties.
    pub fn greedy() -> Self {
        Sampling {
            top_k: 1,
            top_p: 1.0,
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Sampling::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.mirostat == 0 && (self.temperature <= 0.0 || self.top_k == 1)
    }
}

impl From<v1_3::RKLLMSamplingParam> for Sampling {
    fn from(p: v1_3::RKLLMSamplingParam) -> Self {
        Sampling {
            top_k: p.top_k,
            top_p: p.top_p,
            temperature: p.temperature,
            repeat_penalty: p.repeat_penalty,
            frequency_penalty: p.frequency_penalty,
            presence_penalty: p.presence_penalty,
            mirostat: p.mirostat,
            mirostat_tau: p.mirostat_tau,
            mirostat_eta: p.mirostat_eta,
        }
    }
}

impl From<Sampling> for v1_3::RKLLMSamplingParam {
    fn from(s: Sampling) -> Self {
        v1_3::RKLLMSamplingParam {
            top_k: s.top_k,
            top_p: s.top_p,
            temperature: s.temperature,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            mirostat: s.mirostat,
            mirostat_tau: s.mirostat_tau,
            mirostat_eta: s.mirostat_eta,
        }
    }
}

/// Everything `rkllm_init` takes, in either family.
#[derive(Debug, Clone, PartialEq)]
pub struct InitParams {
    pub model_path: PathBuf,
    pub max_context_len: i32,
    pub max_new_tokens: i32,
    pub n_keep: i32,
    pub sampling: Sampling,
    pub skip_special_token: bool,
    /// v1.3 only; v1.2 always stops at EOS.
    pub ignore_eos_token: bool,
    /// Sequences decoded together in one pass (1 to 8).
    pub n_batch: u8,
    pub enabled_cpus_num: i8,
    pub enabled_cpus_mask: u32,
    pub base_domain_id: i32,
    pub embed_flash: bool,
}

impl Default for InitParams {
    fn default() -> Self {
        InitParams {
            model_path: PathBuf::new(),
            max_context_len: 512,
            max_new_tokens: -1,
            n_keep: -1,
            sampling: Sampling::default(),
            skip_special_token: true,
            ignore_eos_token: false,
            n_batch: 1,
            enabled_cpus_num: 4,
            enabled_cpus_mask: 0,
            base_domain_id: 0,
            embed_flash: false,
        }
    }
}

// The two families' RKLLMParam share every field but three; one macro reads both.
macro_rules! neutral_from_param {
    ($p:expr, $ignore_eos:expr) => {{
        let p = $p;
        InitParams {
            model_path: PathBuf::new(),
            max_context_len: p.max_context_len,
            max_new_tokens: p.max_new_tokens,
            n_keep: p.n_keep,
            sampling: Sampling {
                top_k: p.top_k,
                top_p: p.top_p,
                temperature: p.temperature,
                repeat_penalty: p.repeat_penalty,
                frequency_penalty: p.frequency_penalty,
                presence_penalty: p.presence_penalty,
                mirostat: p.mirostat,
                mirostat_tau: p.mirostat_tau,
                mirostat_eta: p.mirostat_eta,
            },
            skip_special_token: p.skip_special_token,
            ignore_eos_token: $ignore_eos,
            n_batch: p.extend_param.n_batch,
            enabled_cpus_num: p.extend_param.enabled_cpus_num,
            enabled_cpus_mask: p.extend_param.enabled_cpus_mask,
            base_domain_id: p.extend_param.base_domain_id,
            embed_flash: p.extend_param.embed_flash != 0,
        }
    }};
}

macro_rules! c_param {
    ($ty:path, $n:expr, $model_path:expr, $($field:ident: $val:expr),* $(,)?) => {{
        let n: &InitParams = $n;
        let s = &n.sampling;
        $ty {
            model_path: $model_path.as_ptr(),
            max_context_len: n.max_context_len,
            max_new_tokens: n.max_new_tokens,
            top_k: s.top_k,
            n_keep: n.n_keep,
            top_p: s.top_p,
            temperature: s.temperature,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            mirostat: s.mirostat,
            mirostat_tau: s.mirostat_tau,
            mirostat_eta: s.mirostat_eta,
            skip_special_token: n.skip_special_token,
            extend_param: n.extend_param(),
            $($field: $val),*
        }
    }};
}

impl InitParams {
    /// Reads a v1.2 struct (the model path is not copied: it is the caller's C string).
    pub fn from_v1_2(p: &v1_2::RKLLMParam) -> InitParams {
        neutral_from_param!(p, false)
    }

    pub fn from_v1_3(p: &v1_3::RKLLMParam) -> InitParams {
        neutral_from_param!(p, p.ignore_eos_token)
    }

    fn extend_param(&self) -> RKLLMExtendParam {
        RKLLMExtendParam {
            base_domain_id: self.base_domain_id,
            embed_flash: i8::from(self.embed_flash),
            enabled_cpus_num: self.enabled_cpus_num,
            enabled_cpus_mask: self.enabled_cpus_mask,
            n_batch: self.n_batch,
            use_cross_attn: 0,
            reserved: [0; 104],
        }
    }

    /// The v1.2 struct; `model_path` must outlive its use.
    pub fn to_v1_2(&self, model_path: &CStr) -> v1_2::RKLLMParam {
        c_param!(v1_2::RKLLMParam, self, model_path,
            is_async: false,
            img_start: std::ptr::null(),
            img_end: std::ptr::null(),
            img_content: std::ptr::null())
    }

    /// The v1.3 struct; `model_path` must outlive its use.
    pub fn to_v1_3(&self, model_path: &CStr) -> v1_3::RKLLMParam {
        c_param!(v1_3::RKLLMParam, self, model_path,
            ignore_eos_token: self.ignore_eos_token,
            is_async: false)
    }
}

/// What one batch slot is given.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    /// Text; the runtime applies its chat template unless it was set to pass text verbatim.
    Prompt(String),
    /// Token ids, fed as they are.
    Tokens(Vec<i32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub kind: InputKind,
    pub role: String,
    pub enable_thinking: bool,
}

impl Input {
    pub fn prompt(text: impl Into<String>) -> Input {
        Input {
            kind: InputKind::Prompt(text.into()),
            role: "user".to_string(),
            enable_thinking: false,
        }
    }

    pub fn tokens(ids: Vec<i32>) -> Input {
        Input {
            kind: InputKind::Tokens(ids),
            role: "user".to_string(),
            enable_thinking: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PromptCache {
    pub path: PathBuf,
    /// Save this run's prefill state to `path`.
    pub save: bool,
}

/// What a run computes (`RKLLMInferMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InferMode {
    /// Generate text.
    #[default]
    Generate,
    /// Prefill the inputs only and report the last hidden layer's states of their tokens
    /// ([`crate::SlotResult::hidden`]): what embeddings are made of.
    LastHiddenLayer,
}

impl InferMode {
    pub fn to_c(self) -> std::ffi::c_int {
        match self {
            InferMode::Generate => crate::abi::infer_mode::GENERATE,
            InferMode::LastHiddenLayer => crate::abi::infer_mode::GET_LAST_HIDDEN_LAYER,
        }
    }
}

/// Per-run parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferParams {
    pub mode: InferMode,
    /// Whether the callback returns 2 ("release the buffer") after a step that carried
    /// hidden states, once they have been read. `None`: on v1.3, where Rockchip's 1.3.0 frees
    /// the buffer so (it leaked before, rknn-llm#504); never on v1.2, which knows no such
    /// value. *A board must confirm* that 1.3.0 treats 2 so in every state and with several
    /// batches; `Some(false)` turns it off.
    pub release_hidden_states: Option<bool>,
    /// Keep the KV cache after the run, so the next run continues the conversation.
    pub keep_history: bool,
    /// v1.3 only: overrides the init-time sampling for this run.
    pub sampling: Option<Sampling>,
    /// v1.3 only: overrides the init-time `max_new_tokens` for this run.
    pub max_new_tokens: Option<i32>,
    pub prompt_cache: Option<PromptCache>,
}
