//! The exported RKLLM C API. Everything `unsafe` in the CPU runtime lives here: reading the
//! caller's structs (in the layout of the ABI family chosen by `RKLLM_CPU_ABI`), and calling
//! the caller's callback. Nothing here may unwind into C: each entry point catches panics and
//! turns them, like every other failure, into -1 and a line on stderr.

use crate::handle::RtHandle;
use crate::request::{RunRequest, SlotInput};
use parking_lot::Mutex;
use rkllm::abi::{
    self, infer_mode, input_type, v1_2, v1_3, LLMHandle, LLMResultCallback, RKLLMPromptCacheParam,
    RKLLMResult,
};
use rkllm::{AbiFamily, InitParams, Sampling};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The ABI family, read from `RKLLM_CPU_ABI` before the first call and fixed after.
pub fn family() -> AbiFamily {
    static FAMILY: OnceLock<AbiFamily> = OnceLock::new();
    *FAMILY.get_or_init(|| match std::env::var("RKLLM_CPU_ABI") {
        Ok(v) => v.parse().unwrap_or_else(|e| {
            eprintln!("rkllm-cpu: RKLLM_CPU_ABI: {e}; using 1.3");
            AbiFamily::V1_3
        }),
        Err(_) => AbiFamily::V1_3,
    })
}

/// `int rkllm_cpu_abi_family(void)`: 12 or 13, the family this library's structs follow. Not
/// part of Rockchip's API (its library speaks one family and cannot say which): the `rkllm`
/// crate calls it when present and refuses to load a library of the other family, instead of
/// passing structs of the wrong layout.
#[unsafe(no_mangle)]
pub extern "C" fn rkllm_cpu_abi_family() -> c_int {
    family().code()
}

/// Kills the process with SIGSEGV (the synthetic engine's `faults.segfault_after_tokens`).
pub(crate) fn raise_segfault() -> ! {
    // SAFETY: raise() only delivers a signal to the calling thread; no memory is involved.
    unsafe { libc::raise(libc::SIGSEGV) };
    // Still alive: a host handler returned, as Rust's own stack-overflow handler does after
    // restoring the default action, counting on the faulting instruction to run again. A
    // raised signal has no such instruction, so raise it once more under the default action.
    // SAFETY: resets SIGSEGV to its default disposition and raises it; nothing else changes.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    std::process::abort()
}

// Handles given to the caller are keys into this table, not pointers: a stale or forged
// handle is reported as an error instead of being dereferenced.
fn handles() -> &'static Mutex<HashMap<usize, Arc<RtHandle>>> {
    static HANDLES: OnceLock<Mutex<HashMap<usize, Arc<RtHandle>>>> = OnceLock::new();
    HANDLES.get_or_init(Default::default)
}

fn lookup(function: &str, handle: LLMHandle) -> Option<Arc<RtHandle>> {
    let h = handles().lock().get(&(handle as usize)).cloned();
    if h.is_none() {
        eprintln!("rkllm-cpu: {function}: invalid or destroyed handle {handle:p}");
    }
    h
}

fn fail(function: &str, msg: impl std::fmt::Display) -> c_int {
    eprintln!("rkllm-cpu: {function}: {msg}");
    -1
}

/// Runs an entry point, turning a panic into -1.
fn guard(function: &str, f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| fail(function, "internal error (panic)"))
}

/// Calls the caller's result callback with one step's array.
pub(crate) fn invoke_callback(
    callback: LLMResultCallback,
    results: &mut [RKLLMResult],
    userdata: *mut c_void,
    state: c_int,
) -> c_int {
    // SAFETY: the callback was registered at rkllm_init with the LLMResultCallback signature;
    // `results` is an array of n_batch results valid for the call, and userdata is the
    // caller's own pointer, passed back untouched.
    unsafe { callback(results.as_mut_ptr(), userdata, state) }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn opt_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: per this function's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

fn default_params() -> InitParams {
    InitParams {
        max_context_len: 4096,
        max_new_tokens: -1,
        ..InitParams::default()
    }
}

extern "C" fn default_param_v1_2() -> v1_2::RKLLMParam {
    default_params().to_v1_2(c"")
}

extern "C" fn default_param_v1_3() -> v1_3::RKLLMParam {
    default_params().to_v1_3(c"")
}

extern "C" fn abi_is_v1_2() -> bool {
    family() == AbiFamily::V1_2
}

/// `RKLLMParam rkllm_createDefaultParam(void)`. The two families return structs of different
/// sizes (208 and 184 bytes) through the caller's return buffer, so the choice must be made
/// before any byte is written: this tail-jumps to the right function with the caller's
/// return-buffer register (rdi on x86_64, x8 on aarch64) intact.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn rkllm_createDefaultParam() {
    core::arch::naked_asm!(
        "push rdi",
        "call {is_v1_2}",
        "pop rdi",
        "test al, al",
        "jnz {v1_2}",
        "jmp {v1_3}",
        is_v1_2 = sym abi_is_v1_2,
        v1_2 = sym default_param_v1_2,
        v1_3 = sym default_param_v1_3,
    )
}

#[cfg(target_arch = "aarch64")]
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn rkllm_createDefaultParam() {
    core::arch::naked_asm!(
        "stp x8, x30, [sp, #-16]!",
        "bl {is_v1_2}",
        "ldp x8, x30, [sp], #16",
        "cbz w0, 2f",
        "b {v1_2}",
        "2:",
        "b {v1_3}",
        is_v1_2 = sym abi_is_v1_2,
        v1_2 = sym default_param_v1_2,
        v1_3 = sym default_param_v1_3,
    )
}

/// Other architectures get the v1.3 family only.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[unsafe(no_mangle)]
pub extern "C" fn rkllm_createDefaultParam() -> v1_3::RKLLMParam {
    default_param_v1_3()
}

/// `int rkllm_init(LLMHandle*, RKLLMParam*, callback)`: the callback is a bare function
/// pointer in v1.2 and an `RKLLMCallback*` in v1.3.
///
/// # Safety
/// Pointers as rkllm.h documents them for the configured family.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_init(
    handle: *mut LLMHandle,
    param: *mut c_void,
    callback: *mut c_void,
) -> c_int {
    guard("rkllm_init", || {
        if handle.is_null() || param.is_null() {
            return fail("rkllm_init", "handle and param must not be NULL");
        }
        let (mut params, model_path, cb, userdata) = match family() {
            AbiFamily::V1_2 => {
                // SAFETY: non-NULL, and a v1.2 RKLLMParam per the configured family.
                let p = unsafe { &*(param as *const v1_2::RKLLMParam) };
                // SAFETY: in v1.2 the third argument is an LLMResultCallback (or NULL).
                let cb = unsafe {
                    std::mem::transmute::<*mut c_void, Option<LLMResultCallback>>(callback)
                };
                // SAFETY: model_path is NULL or a C string.
                (
                    InitParams::from_v1_2(p),
                    unsafe { opt_str(p.model_path) },
                    cb,
                    0,
                )
            }
            AbiFamily::V1_3 => {
                // SAFETY: non-NULL, and a v1.3 RKLLMParam per the configured family.
                let p = unsafe { &*(param as *const v1_3::RKLLMParam) };
                let (cb, userdata) = if callback.is_null() {
                    (None, 0)
                } else {
                    // SAFETY: in v1.3 the third argument points to an RKLLMCallback.
                    let c = unsafe { &*(callback as *const v1_3::RKLLMCallback) };
                    (c.result_callback, c.result_userdata as usize)
                };
                // SAFETY: model_path is NULL or a C string.
                (
                    InitParams::from_v1_3(p),
                    unsafe { opt_str(p.model_path) },
                    cb,
                    userdata,
                )
            }
        };
        let Some(model_path) = model_path.filter(|p| !p.is_empty()) else {
            return fail("rkllm_init", "model_path is NULL or empty");
        };
        if params.n_batch == 0 || params.n_batch > 8 {
            return fail(
                "rkllm_init",
                format!(
                    "extend_param.n_batch must be 1 to 8, got {}",
                    params.n_batch
                ),
            );
        }
        params.model_path = PathBuf::from(&model_path);
        if !params.model_path.is_file() {
            return fail(
                "rkllm_init",
                format!("model file {model_path} does not exist"),
            );
        }
        match RtHandle::spawn(params, cb, userdata) {
            Ok(h) => {
                static NEXT: AtomicUsize = AtomicUsize::new(0x7000_0000);
                let id = NEXT.fetch_add(0x10, Ordering::Relaxed);
                handles().lock().insert(id, Arc::new(h));
                // SAFETY: handle is non-NULL (checked above) and points to an LLMHandle.
                unsafe { *handle = id as LLMHandle };
                0
            }
            Err(e) => fail("rkllm_init", e),
        }
    })
}

/// # Safety
/// `handle` came from `rkllm_init`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_destroy(handle: LLMHandle) -> c_int {
    guard("rkllm_destroy", || {
        let Some(h) = handles().lock().remove(&(handle as usize)) else {
            return fail("rkllm_destroy", "invalid or already destroyed handle");
        };
        h.destroy();
        0
    })
}

/// Reads the common head of an `RKLLMInput` in either family (role, enable_thinking,
/// input_type and the first union members share offsets) into a slot input.
macro_rules! read_input {
    ($inp:expr) => {{
        let inp = $inp;
        // SAFETY: role is NULL or a C string.
        let role = unsafe { opt_str(inp.role) }.unwrap_or_else(|| "user".into());
        match inp.input_type {
            input_type::PROMPT => {
                // SAFETY: for PROMPT input the union holds prompt_input.
                let p = unsafe { inp.input.prompt_input };
                if p.is_null() {
                    Err("PROMPT input with a NULL prompt".to_string())
                } else {
                    Ok(SlotInput::Prompt {
                        // SAFETY: non-NULL C string.
                        text: unsafe { opt_str(p) }.unwrap_or_default(),
                        role,
                        enable_thinking: inp.enable_thinking,
                    })
                }
            }
            input_type::TOKEN => {
                // SAFETY: for TOKEN input the union holds token_input.
                let t = unsafe { inp.input.token_input };
                if t.n_tokens == 0 {
                    Ok(SlotInput::Idle)
                } else if t.input_ids.is_null() {
                    Err("TOKEN input with NULL input_ids".to_string())
                } else {
                    // SAFETY: input_ids points to n_tokens ids, per the API.
                    Ok(SlotInput::Tokens(
                        unsafe { std::slice::from_raw_parts(t.input_ids, t.n_tokens) }.to_vec(),
                    ))
                }
            }
            input_type::EMBED | input_type::MULTIMODAL => {
                Err("EMBED and MULTIMODAL input are not supported by the CPU runtime".to_string())
            }
            other => Err(format!("unknown input_type {other}")),
        }
    }};
}

/// # Safety
/// `input` points to `n` inputs of the configured family.
unsafe fn read_inputs(input: *const c_void, n: usize) -> Result<Vec<SlotInput>, String> {
    (0..n)
        .map(|i| match family() {
            // SAFETY: i < n entries of the family's stride.
            AbiFamily::V1_2 => read_input!(unsafe { &*(input as *const v1_2::RKLLMInput).add(i) }),
            AbiFamily::V1_3 => read_input!(unsafe { &*(input as *const v1_3::RKLLMInput).add(i) }),
        })
        .enumerate()
        .map(|(i, r)| r.map_err(|e| format!("slot {i}: {e}")))
        .collect()
}

/// Per-run settings from either family's RKLLMInferParam.
struct Infer {
    hidden_states: bool,
    keep_history: bool,
    sampling: Option<Sampling>,
    max_new_tokens: i32,
    save_prompt_cache: Option<PathBuf>,
}

/// # Safety
/// `param` is NULL or an RKLLMInferParam of the configured family.
unsafe fn read_infer(param: *const c_void) -> Result<Infer, String> {
    if param.is_null() {
        return Ok(Infer {
            hidden_states: false,
            keep_history: false,
            sampling: None,
            max_new_tokens: 0,
            save_prompt_cache: None,
        });
    }
    let (mode, lora, cache, keep, sampling, max_new) = match family() {
        AbiFamily::V1_2 => {
            // SAFETY: a v1.2 RKLLMInferParam.
            let p = unsafe { &*(param as *const v1_2::RKLLMInferParam) };
            (
                p.mode,
                p.lora_params,
                p.prompt_cache_params,
                p.keep_history,
                None,
                0,
            )
        }
        AbiFamily::V1_3 => {
            // SAFETY: a v1.3 RKLLMInferParam.
            let p = unsafe { &*(param as *const v1_3::RKLLMInferParam) };
            let sampling = if p.sampling_params.is_null() {
                None
            } else {
                // SAFETY: non-NULL RKLLMSamplingParam.
                Some(Sampling::from(unsafe { *p.sampling_params }))
            };
            (
                p.mode,
                p.lora_params,
                p.prompt_cache_params,
                p.keep_history,
                sampling,
                p.max_new_tokens,
            )
        }
    };
    if mode != infer_mode::GENERATE && mode != infer_mode::GET_LAST_HIDDEN_LAYER {
        return Err(format!(
            "infer mode {mode} (logits) is not supported by the CPU runtime"
        ));
    }
    if !lora.is_null() {
        return Err("LoRA adapters are not supported by the CPU runtime".into());
    }
    let save_prompt_cache = if cache.is_null() {
        None
    } else {
        // SAFETY: non-NULL RKLLMPromptCacheParam.
        let c: &RKLLMPromptCacheParam = unsafe { &*cache };
        if c.save_prompt_cache != 0 {
            // SAFETY: NULL or a C string.
            match unsafe { opt_str(c.prompt_cache_path) } {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => return Err("save_prompt_cache is set but prompt_cache_path is NULL".into()),
            }
        } else {
            None
        }
    };
    Ok(Infer {
        hidden_states: mode == infer_mode::GET_LAST_HIDDEN_LAYER,
        keep_history: keep != 0,
        sampling,
        max_new_tokens: max_new,
        save_prompt_cache,
    })
}

/// # Safety
/// Pointers as rkllm.h documents them for the configured family.
unsafe fn start_run(
    function: &str,
    handle: LLMHandle,
    input: *mut c_void,
    infer_param: *mut c_void,
    userdata: *mut c_void,
    wait: bool,
) -> c_int {
    let Some(h) = lookup(function, handle) else {
        return -1;
    };
    if input.is_null() {
        return fail(function, "input is NULL");
    }
    // SAFETY: the caller passes n_batch inputs of the configured family.
    let slots = match unsafe { read_inputs(input, h.n_batch) } {
        Ok(s) => s,
        Err(e) => return fail(function, e),
    };
    if slots.iter().all(|s| *s == SlotInput::Idle) {
        return fail(function, "every slot's input is empty");
    }
    // SAFETY: NULL or the family's RKLLMInferParam.
    let infer = match unsafe { read_infer(infer_param) } {
        Ok(i) => i,
        Err(e) => return fail(function, e),
    };
    let d = &h.defaults;
    let req = RunRequest {
        slots,
        keep_history: infer.keep_history,
        sampling: infer.sampling.unwrap_or(d.sampling),
        max_new_tokens: if infer.max_new_tokens > 0 {
            infer.max_new_tokens
        } else {
            d.max_new_tokens
        },
        ignore_eos: d.ignore_eos,
        skip_special_token: d.skip_special_token,
        save_prompt_cache: infer.save_prompt_cache,
        hidden_states: infer.hidden_states,
    };
    // v1.3 falls back to the init-time result_userdata; v1.2 always passes the run's.
    let userdata = if userdata.is_null() {
        h.default_userdata
    } else {
        userdata as usize
    };
    h.run(req, userdata, wait)
}

/// # Safety
/// Pointers as rkllm.h documents them for the configured family.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_run(
    handle: LLMHandle,
    input: *mut c_void,
    infer_param: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    // SAFETY: forwarded under the same contract.
    guard("rkllm_run", || unsafe {
        start_run("rkllm_run", handle, input, infer_param, userdata, true)
    })
}

/// # Safety
/// Pointers as rkllm.h documents them for the configured family.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_run_async(
    handle: LLMHandle,
    input: *mut c_void,
    infer_param: *mut c_void,
    userdata: *mut c_void,
) -> c_int {
    // SAFETY: forwarded under the same contract.
    guard("rkllm_run_async", || unsafe {
        start_run(
            "rkllm_run_async",
            handle,
            input,
            infer_param,
            userdata,
            false,
        )
    })
}

/// # Safety
/// `handle` came from `rkllm_init`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_abort(handle: LLMHandle) -> c_int {
    guard("rkllm_abort", || match lookup("rkllm_abort", handle) {
        Some(h) => {
            h.abort();
            0
        }
        None => -1,
    })
}

/// v1.2: 0 while a task runs, non-zero otherwise. v1.3: 1 while a task runs.
///
/// # Safety
/// `handle` came from `rkllm_init`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_is_running(handle: LLMHandle) -> c_int {
    guard("rkllm_is_running", || {
        let Some(h) = lookup("rkllm_is_running", handle) else {
            return -1;
        };
        match (family(), h.is_running()) {
            (AbiFamily::V1_2, true) => 0,
            (AbiFamily::V1_2, false) => 1,
            (AbiFamily::V1_3, running) => c_int::from(running),
        }
    })
}

/// # Safety
/// `start_pos`/`end_pos` are both NULL or arrays of n_batch ints.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_clear_kv_cache(
    handle: LLMHandle,
    keep_system_prompt: c_int,
    start_pos: *mut c_int,
    end_pos: *mut c_int,
) -> c_int {
    guard("rkllm_clear_kv_cache", || {
        let Some(h) = lookup("rkllm_clear_kv_cache", handle) else {
            return -1;
        };
        let ranges = match (start_pos.is_null(), end_pos.is_null()) {
            (true, true) => None,
            (false, false) => {
                // SAFETY: both are arrays of n_batch ints, per the API.
                let (s, e) = unsafe {
                    (
                        std::slice::from_raw_parts(start_pos, h.n_batch),
                        std::slice::from_raw_parts(end_pos, h.n_batch),
                    )
                };
                Some(s.iter().copied().zip(e.iter().copied()).collect())
            }
            _ => return fail("rkllm_clear_kv_cache", "start_pos and end_pos go together"),
        };
        h.clear_kv_cache(keep_system_prompt != 0, ranges)
    })
}

/// # Safety
/// `sizes` is an array of n_batch ints.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_get_kv_cache_size(handle: LLMHandle, sizes: *mut c_int) -> c_int {
    guard("rkllm_get_kv_cache_size", || {
        let Some(h) = lookup("rkllm_get_kv_cache_size", handle) else {
            return -1;
        };
        if sizes.is_null() {
            return fail("rkllm_get_kv_cache_size", "sizes is NULL");
        }
        let Some(v) = h.kv_cache_sizes() else {
            return -1;
        };
        // SAFETY: sizes has n_batch entries and v has n_batch values.
        let out = unsafe { std::slice::from_raw_parts_mut(sizes, h.n_batch) };
        out.copy_from_slice(&v[..h.n_batch]);
        0
    })
}

/// # Safety
/// Three NUL-terminated strings (NULL reads as empty).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_set_chat_template(
    handle: LLMHandle,
    system_prompt: *const c_char,
    prompt_prefix: *const c_char,
    prompt_postfix: *const c_char,
) -> c_int {
    guard("rkllm_set_chat_template", || {
        let Some(h) = lookup("rkllm_set_chat_template", handle) else {
            return -1;
        };
        // SAFETY: each is NULL or a C string.
        let parts = unsafe {
            [system_prompt, prompt_prefix, prompt_postfix].map(|p| opt_str(p).unwrap_or_default())
        };
        h.set_chat_template(parts)
    })
}

/// Function calling is rendered by the server's own templates; the CPU runtime refuses it
/// rather than silently ignoring the tools.
///
/// # Safety
/// `handle` came from `rkllm_init`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_set_function_tools(
    handle: LLMHandle,
    _system_prompt: *const c_char,
    _tools: *const c_char,
    _tool_response_str: *const c_char,
) -> c_int {
    guard("rkllm_set_function_tools", || {
        if lookup("rkllm_set_function_tools", handle).is_none() {
            return -1;
        }
        fail(
            "rkllm_set_function_tools",
            "not supported by the CPU runtime",
        )
    })
}

/// # Safety
/// `path` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_load_prompt_cache(handle: LLMHandle, path: *const c_char) -> c_int {
    guard("rkllm_load_prompt_cache", || {
        let Some(h) = lookup("rkllm_load_prompt_cache", handle) else {
            return -1;
        };
        // SAFETY: NULL or a C string.
        match unsafe { opt_str(path) } {
            Some(p) if !p.is_empty() => h.load_prompt_cache(PathBuf::from(p)),
            _ => fail("rkllm_load_prompt_cache", "path is NULL or empty"),
        }
    })
}

/// # Safety
/// `handle` came from `rkllm_init`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_release_prompt_cache(handle: LLMHandle) -> c_int {
    guard("rkllm_release_prompt_cache", || {
        match lookup("rkllm_release_prompt_cache", handle) {
            Some(h) => h.release_prompt_cache(),
            None => -1,
        }
    })
}

/// # Safety
/// `handle` came from `rkllm_init`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_load_lora(
    handle: LLMHandle,
    _lora_adapter: *mut abi::RKLLMLoraAdapter,
) -> c_int {
    guard("rkllm_load_lora", || {
        if lookup("rkllm_load_lora", handle).is_none() {
            return -1;
        }
        fail(
            "rkllm_load_lora",
            "LoRA adapters are not supported by the CPU runtime",
        )
    })
}

/// # Safety
/// `handle` came from `rkllm_init`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rkllm_set_cross_attn_params(
    handle: LLMHandle,
    _params: *mut c_void,
) -> c_int {
    guard("rkllm_set_cross_attn_params", || {
        if lookup("rkllm_set_cross_attn_params", handle).is_none() {
            return -1;
        }
        fail(
            "rkllm_set_cross_attn_params",
            "cross attention is not supported by the CPU runtime",
        )
    })
}
