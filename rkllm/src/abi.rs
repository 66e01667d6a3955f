//! `#[repr(C)]` declarations of the RKLLM C API (`rkllm.h`), both ABI families.
//!
//! Types whose layout is the same in v1.2.x and v1.3.0 live at the top level; the ones that
//! differ live in [`v1_2`] and [`v1_3`]. Sizes and offsets are asserted in `tests/layout.rs`
//! against the numbers measured with a C compiler (shared/rkllm-runtime.md).

use std::ffi::{c_char, c_int, c_void};

/// `LLMHandle`: an opaque pointer owned by the runtime.
pub type LLMHandle = *mut c_void;

/// `LLMCallState`.
pub mod call_state {
    use std::ffi::c_int;
    pub const NORMAL: c_int = 0;
    /// Waiting for the rest of a UTF-8 character.
    pub const WAITING: c_int = 1;
    pub const FINISH: c_int = 2;
    pub const ERROR: c_int = 3;
}

/// `RKLLMInputType`.
pub mod input_type {
    use std::ffi::c_int;
    pub const PROMPT: c_int = 0;
    pub const TOKEN: c_int = 1;
    pub const EMBED: c_int = 2;
    pub const MULTIMODAL: c_int = 3;
}

/// `RKLLMInferMode`.
pub mod infer_mode {
    use std::ffi::c_int;
    pub const GENERATE: c_int = 0;
    pub const GET_LAST_HIDDEN_LAYER: c_int = 1;
    pub const GET_LOGITS: c_int = 2;
}

/// Callback return values.
pub mod callback_return {
    use std::ffi::c_int;
    pub const CONTINUE: c_int = 0;
    /// Stop generating but keep the KV cache; a later `rkllm_run` resumes.
    pub const PAUSE: c_int = 1;
    /// v1.3.0: the hidden states (or logits) of this callback have been copied; the runtime
    /// may free them. Earlier runtimes leaked them (rknn-llm#504) and know no such value.
    pub const RELEASE: c_int = 2;
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMExtendParam {
    pub base_domain_id: i32,
    pub embed_flash: i8,
    pub enabled_cpus_num: i8,
    pub enabled_cpus_mask: u32,
    pub n_batch: u8,
    pub use_cross_attn: i8,
    pub reserved: [u8; 104],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RKLLMTokenInput {
    pub input_ids: *mut i32,
    pub n_tokens: usize,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RKLLMEmbedInput {
    pub embed: *mut f32,
    pub n_tokens: usize,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMLoraAdapter {
    pub lora_adapter_path: *const c_char,
    pub lora_adapter_name: *const c_char,
    pub scale: f32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMLoraParam {
    pub lora_adapter_name: *const c_char,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMPromptCacheParam {
    pub save_prompt_cache: c_int,
    pub prompt_cache_path: *const c_char,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RKLLMPerfStat {
    pub prefill_time_ms: f32,
    pub prefill_tokens: i32,
    pub generate_time_ms: f32,
    pub generate_tokens: i32,
    /// VmHWM of the process, in MB.
    pub memory_usage_mb: f32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMResultLastHiddenLayer {
    pub hidden_states: *const f32,
    pub embd_size: i32,
    pub num_tokens: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMResultLogits {
    pub logits: *const f32,
    pub vocab_size: i32,
    pub num_tokens: i32,
}

/// One slot's result in one callback. With `n_batch = N` the callback receives an array of N.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RKLLMResult {
    /// May be NULL in any step.
    pub text: *const c_char,
    /// Negative once the slot has finished.
    pub token_id: i32,
    pub last_hidden_layer: RKLLMResultLastHiddenLayer,
    pub logits: RKLLMResultLogits,
    pub perf: RKLLMPerfStat,
}

impl RKLLMResult {
    pub const EMPTY: RKLLMResult = RKLLMResult {
        text: std::ptr::null(),
        token_id: -1,
        last_hidden_layer: RKLLMResultLastHiddenLayer {
            hidden_states: std::ptr::null(),
            embd_size: 0,
            num_tokens: 0,
        },
        logits: RKLLMResultLogits {
            logits: std::ptr::null(),
            vocab_size: 0,
            num_tokens: 0,
        },
        perf: RKLLMPerfStat {
            prefill_time_ms: 0.0,
            prefill_tokens: 0,
            generate_time_ms: 0.0,
            generate_tokens: 0,
            memory_usage_mb: 0.0,
        },
    };
}

/// `LLMResultCallback`: `int (*)(RKLLMResult*, void* userdata, LLMCallState)`.
pub type LLMResultCallback =
    unsafe extern "C" fn(result: *mut RKLLMResult, userdata: *mut c_void, state: c_int) -> c_int;

/// The ABI of v1.2.1, v1.2.2 and v1.2.3.
pub mod v1_2 {
    use super::*;

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMParam {
        pub model_path: *const c_char,
        pub max_context_len: i32,
        pub max_new_tokens: i32,
        pub top_k: i32,
        pub n_keep: i32,
        pub top_p: f32,
        pub temperature: f32,
        pub repeat_penalty: f32,
        pub frequency_penalty: f32,
        pub presence_penalty: f32,
        pub mirostat: i32,
        pub mirostat_tau: f32,
        pub mirostat_eta: f32,
        pub skip_special_token: bool,
        pub is_async: bool,
        pub img_start: *const c_char,
        pub img_end: *const c_char,
        pub img_content: *const c_char,
        pub extend_param: RKLLMExtendParam,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMMultiModelInput {
        pub prompt: *const c_char,
        pub image_embed: *mut f32,
        pub n_image_tokens: usize,
        pub n_image: usize,
        pub image_width: usize,
        pub image_height: usize,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union RKLLMInputUnion {
        pub prompt_input: *const c_char,
        pub token_input: RKLLMTokenInput,
        pub embed_input: RKLLMEmbedInput,
        pub multimodal_input: RKLLMMultiModelInput,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct RKLLMInput {
        pub role: *const c_char,
        pub enable_thinking: bool,
        pub input_type: c_int,
        pub input: RKLLMInputUnion,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMInferParam {
        pub mode: c_int,
        pub lora_params: *mut RKLLMLoraParam,
        pub prompt_cache_params: *mut RKLLMPromptCacheParam,
        pub keep_history: c_int,
    }

    pub type CreateDefaultParamFn = unsafe extern "C" fn() -> RKLLMParam;
    /// The third argument is a bare callback function pointer.
    pub type InitFn = unsafe extern "C" fn(
        handle: *mut LLMHandle,
        param: *mut RKLLMParam,
        callback: Option<LLMResultCallback>,
    ) -> c_int;
    pub type RunFn = unsafe extern "C" fn(
        handle: LLMHandle,
        input: *mut RKLLMInput,
        infer_param: *mut RKLLMInferParam,
        userdata: *mut c_void,
    ) -> c_int;
}

/// The ABI of v1.3.0.
pub mod v1_3 {
    use super::*;

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMParam {
        pub model_path: *const c_char,
        pub max_context_len: i32,
        pub max_new_tokens: i32,
        pub top_k: i32,
        pub n_keep: i32,
        pub top_p: f32,
        pub temperature: f32,
        pub repeat_penalty: f32,
        pub frequency_penalty: f32,
        pub presence_penalty: f32,
        pub mirostat: i32,
        pub mirostat_tau: f32,
        pub mirostat_eta: f32,
        pub skip_special_token: bool,
        pub ignore_eos_token: bool,
        pub is_async: bool,
        pub extend_param: RKLLMExtendParam,
    }

    /// Sampling that overrides the init-time values for one run.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct RKLLMSamplingParam {
        pub top_k: i32,
        pub top_p: f32,
        pub temperature: f32,
        pub repeat_penalty: f32,
        pub frequency_penalty: f32,
        pub presence_penalty: f32,
        pub mirostat: i32,
        pub mirostat_tau: f32,
        pub mirostat_eta: f32,
    }

    /// The v1.3 multimodal member: nested image and video blocks, 144 bytes. rkserve never
    /// sends multimodal input, so its fields are kept opaque; only its size matters, because
    /// it sets the stride of an `RKLLMInput` array.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMMultiModalInput {
        pub opaque: [u64; 18],
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union RKLLMInputUnion {
        pub prompt_input: *const c_char,
        pub token_input: RKLLMTokenInput,
        pub embed_input: RKLLMEmbedInput,
        pub multimodal_input: RKLLMMultiModalInput,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct RKLLMInput {
        pub role: *const c_char,
        pub enable_thinking: bool,
        pub input_type: c_int,
        pub input: RKLLMInputUnion,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMInferParam {
        pub mode: c_int,
        pub lora_params: *mut RKLLMLoraParam,
        pub prompt_cache_params: *mut RKLLMPromptCacheParam,
        /// NULL: use the init-time sampling.
        pub sampling_params: *mut RKLLMSamplingParam,
        pub keep_history: c_int,
        /// `<= 0`: use the init-time value.
        pub max_new_tokens: c_int,
    }

    /// Passed by pointer to `rkllm_init`. The tokenizer and embed callbacks are not used by
    /// rkserve and are declared as untyped pointers.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RKLLMCallback {
        pub result_callback: Option<LLMResultCallback>,
        pub result_userdata: *mut c_void,
        pub tokenizer_callback: *mut c_void,
        pub tokenizer_userdata: *mut c_void,
        pub embed_callback: *mut c_void,
        pub embed_userdata: *mut c_void,
    }

    pub type CreateDefaultParamFn = unsafe extern "C" fn() -> RKLLMParam;
    pub type InitFn = unsafe extern "C" fn(
        handle: *mut LLMHandle,
        param: *mut RKLLMParam,
        callback: *mut RKLLMCallback,
    ) -> c_int;
    pub type RunFn = unsafe extern "C" fn(
        handle: LLMHandle,
        input: *mut RKLLMInput,
        infer_param: *mut RKLLMInferParam,
        userdata: *mut c_void,
    ) -> c_int;
}

// Functions whose signature is the same in both families.
pub type DestroyFn = unsafe extern "C" fn(handle: LLMHandle) -> c_int;
pub type AbortFn = unsafe extern "C" fn(handle: LLMHandle) -> c_int;
pub type IsRunningFn = unsafe extern "C" fn(handle: LLMHandle) -> c_int;
pub type ClearKvCacheFn = unsafe extern "C" fn(
    handle: LLMHandle,
    keep_system_prompt: c_int,
    start_pos: *mut c_int,
    end_pos: *mut c_int,
) -> c_int;
pub type GetKvCacheSizeFn = unsafe extern "C" fn(handle: LLMHandle, sizes: *mut c_int) -> c_int;
pub type SetChatTemplateFn = unsafe extern "C" fn(
    handle: LLMHandle,
    system_prompt: *const c_char,
    prompt_prefix: *const c_char,
    prompt_postfix: *const c_char,
) -> c_int;
pub type SetFunctionToolsFn = unsafe extern "C" fn(
    handle: LLMHandle,
    system_prompt: *const c_char,
    tools: *const c_char,
    tool_response_str: *const c_char,
) -> c_int;
pub type LoadPromptCacheFn =
    unsafe extern "C" fn(handle: LLMHandle, prompt_cache_path: *const c_char) -> c_int;
pub type ReleasePromptCacheFn = unsafe extern "C" fn(handle: LLMHandle) -> c_int;
pub type LoadLoraFn =
    unsafe extern "C" fn(handle: LLMHandle, lora_adapter: *mut RKLLMLoraAdapter) -> c_int;
