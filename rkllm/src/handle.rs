//! An initialised runtime handle: one model, `n_batch` sequences.

use crate::abi::{self, input_type, v1_2, v1_3, LLMHandle, RKLLMPromptCacheParam};
use crate::callback::{trampoline, CallbackCtx, Flow, Step};
use crate::error::Error;
use crate::library::{FamilyFns, Runtime};
use crate::params::{InferParams, InitParams, Input, InputKind};
use crate::AbiFamily;
use std::ffi::{c_int, c_void, CString};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every slot finished and FINISH was reported.
    Finished,
    /// The runtime reported ERROR.
    Failed,
    /// [`AbortHandle::abort`] was called during the run.
    Aborted,
    /// The run returned without FINISH: paused by the callback.
    Stopped,
}

/// Aborts the run in progress from any thread.
#[derive(Clone)]
pub struct AbortHandle {
    rt: Runtime,
    raw: usize,
    requested: Arc<AtomicBool>,
}

impl AbortHandle {
    pub fn abort(&self) -> Result<(), Error> {
        self.requested.store(true, Ordering::Release);
        // SAFETY: the handle stays valid while this AbortHandle's Handle has not been
        // destroyed; Handle::destroy documents that outstanding AbortHandles must be dropped.
        let code = unsafe { (self.rt.inner.fns.abort)(self.raw as LLMHandle) };
        check("rkllm_abort", code)
    }
}

fn check(function: &'static str, code: c_int) -> Result<(), Error> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::CallFailed { function, code })
    }
}

fn cstring(what: &str, s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{what} contains a NUL byte")))
}

/// C-side copies of the inputs, alive for the duration of one `rkllm_run`.
struct CInputs {
    _strings: Vec<CString>,
    _tokens: Vec<Vec<i32>>,
    v1_2: Vec<v1_2::RKLLMInput>,
    v1_3: Vec<v1_3::RKLLMInput>,
}

fn c_inputs(family: AbiFamily, inputs: &[Input]) -> Result<CInputs, Error> {
    let mut strings = Vec::with_capacity(inputs.len() * 2);
    let mut tokens = Vec::new();
    let mut out = CInputs {
        _strings: Vec::new(),
        _tokens: Vec::new(),
        v1_2: Vec::new(),
        v1_3: Vec::new(),
    };
    for input in inputs {
        let role = cstring("role", &input.role)?;
        let role_ptr = role.as_ptr();
        strings.push(role);
        let (kind, prompt, token_input) = match &input.kind {
            InputKind::Prompt(text) => {
                let c = cstring("prompt", text)?;
                let p = c.as_ptr();
                strings.push(c);
                (input_type::PROMPT, p, None)
            }
            InputKind::Tokens(ids) => {
                let mut ids = ids.clone();
                let t = abi::RKLLMTokenInput {
                    input_ids: ids.as_mut_ptr(),
                    n_tokens: ids.len(),
                };
                tokens.push(ids);
                (input_type::TOKEN, ptr::null(), Some(t))
            }
        };
        match family {
            AbiFamily::V1_2 => out.v1_2.push(v1_2::RKLLMInput {
                role: role_ptr,
                enable_thinking: input.enable_thinking,
                input_type: kind,
                input: match token_input {
                    Some(token_input) => v1_2::RKLLMInputUnion { token_input },
                    None => v1_2::RKLLMInputUnion {
                        prompt_input: prompt,
                    },
                },
            }),
            AbiFamily::V1_3 => out.v1_3.push(v1_3::RKLLMInput {
                role: role_ptr,
                enable_thinking: input.enable_thinking,
                input_type: kind,
                input: match token_input {
                    Some(token_input) => v1_3::RKLLMInputUnion { token_input },
                    None => v1_3::RKLLMInputUnion {
                        multimodal_input: v1_3::RKLLMMultiModalInput { opaque: [0; 18] },
                    },
                },
            }),
        }
        if let (AbiFamily::V1_3, None) = (family, token_input) {
            out.v1_3.last_mut().unwrap().input.prompt_input = prompt;
        }
    }
    out._strings = strings;
    out._tokens = tokens;
    Ok(out)
}

/// A model loaded into the runtime with `n_batch` sequence slots.
pub struct Handle {
    rt: Runtime,
    raw: LLMHandle,
    n_batch: usize,
    // The v1.3 runtime may keep the pointer it was given at init.
    _v13_callback: Option<Box<v1_3::RKLLMCallback>>,
    async_ctx: Option<Box<CallbackCtx<'static>>>,
    abort_requested: Arc<AtomicBool>,
}

// SAFETY: an RKLLM handle is an opaque pointer the runtime lets any thread use; `run` takes
// `&mut self`, so one thread at a time makes calls that need exclusivity.
unsafe impl Send for Handle {}

impl Handle {
    pub(crate) fn init(rt: Runtime, params: &InitParams) -> Result<Handle, Error> {
        if params.n_batch == 0 || params.n_batch > 8 {
            return Err(Error::InvalidArgument(format!(
                "n_batch must be 1 to 8, got {}",
                params.n_batch
            )));
        }
        let model = params.model_path.to_string_lossy().into_owned();
        let model_c = cstring("model path", &model)?;
        let mut raw: LLMHandle = ptr::null_mut();
        let mut v13_callback = None;
        let code = match rt.inner.fns.family {
            FamilyFns::V1_2 { init, .. } => {
                let mut p = params.to_v1_2(&model_c);
                // SAFETY: p and model_c outlive the call; trampoline matches LLMResultCallback.
                unsafe { init(&mut raw, &mut p, Some(trampoline)) }
            }
            FamilyFns::V1_3 { init, .. } => {
                let mut p = params.to_v1_3(&model_c);
                let mut cb = Box::new(v1_3::RKLLMCallback {
                    result_callback: Some(trampoline),
                    result_userdata: ptr::null_mut(),
                    tokenizer_callback: ptr::null_mut(),
                    tokenizer_userdata: ptr::null_mut(),
                    embed_callback: ptr::null_mut(),
                    embed_userdata: ptr::null_mut(),
                });
                // SAFETY: p and model_c outlive the call; cb is boxed and kept in the Handle.
                let code = unsafe { init(&mut raw, &mut p, &mut *cb) };
                v13_callback = Some(cb);
                code
            }
        };
        if code != 0 || raw.is_null() {
            return Err(Error::InitFailed {
                model,
                hint: rt.other_family_fits(),
            });
        }
        Ok(Handle {
            rt,
            raw,
            n_batch: params.n_batch as usize,
            _v13_callback: v13_callback,
            async_ctx: None,
            abort_requested: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle {
            rt: self.rt.clone(),
            raw: self.raw as usize,
            requested: self.abort_requested.clone(),
        }
    }

    /// Runs one input per slot (at most `n_batch`; fewer leaves slots idle) and calls
    /// `on_step` with every step's results. Blocks until the run ends.
    pub fn run<'f>(
        &mut self,
        inputs: &[Input],
        infer: &InferParams,
        on_step: impl FnMut(&Step<'_>) -> Flow + Send + 'f,
    ) -> Result<RunOutcome, Error> {
        self.reap_async()?;
        self.abort_requested.store(false, Ordering::Release);
        let mut ctx = CallbackCtx::new(self.n_batch, Box::new(on_step))
            .releasing_hidden_states(self.releases_hidden(infer));
        let code = self.call_run(
            inputs,
            infer,
            &mut ctx as *mut CallbackCtx<'_> as *mut c_void,
            false,
        )?;
        if let Some(msg) = ctx.panic.take() {
            return Err(Error::CallbackPanicked(msg));
        }
        if ctx.saw_error {
            return Ok(RunOutcome::Failed);
        }
        if code != 0 {
            return Err(Error::CallFailed {
                function: "rkllm_run",
                code,
            });
        }
        Ok(if self.abort_requested.load(Ordering::Acquire) {
            RunOutcome::Aborted
        } else if ctx.saw_finish {
            RunOutcome::Finished
        } else {
            RunOutcome::Stopped
        })
    }

    /// Starts a run and returns at once; `on_step` is called on the runtime's thread.
    /// Poll [`Handle::is_running`] or watch for the FINISH step to know when it ends.
    pub fn run_async(
        &mut self,
        inputs: &[Input],
        infer: &InferParams,
        on_step: impl FnMut(&Step<'_>) -> Flow + Send + 'static,
    ) -> Result<(), Error> {
        self.reap_async()?;
        self.abort_requested.store(false, Ordering::Release);
        let mut ctx = Box::new(
            CallbackCtx::new(self.n_batch, Box::new(on_step))
                .releasing_hidden_states(self.releases_hidden(infer)),
        );
        let userdata = &mut *ctx as *mut CallbackCtx<'static> as *mut c_void;
        let code = self.call_run(inputs, infer, userdata, true)?;
        // Kept until the next run or destroy, after the runtime says it is idle.
        self.async_ctx = Some(ctx);
        check("rkllm_run_async", code)
    }

    /// Whether this run's callback returns "release" after reading hidden states.
    fn releases_hidden(&self, infer: &InferParams) -> bool {
        infer.mode == crate::InferMode::LastHiddenLayer
            && match self.rt.family() {
                AbiFamily::V1_2 => false,
                AbiFamily::V1_3 => infer.release_hidden_states.unwrap_or(true),
            }
    }

    fn reap_async(&mut self) -> Result<(), Error> {
        if self.async_ctx.is_some() {
            if self.is_running() {
                return Err(Error::InvalidArgument(
                    "a run is still in progress on this handle".into(),
                ));
            }
            self.async_ctx = None;
        }
        Ok(())
    }

    fn call_run(
        &mut self,
        inputs: &[Input],
        infer: &InferParams,
        userdata: *mut c_void,
        asynchronous: bool,
    ) -> Result<c_int, Error> {
        if inputs.is_empty() || inputs.len() > self.n_batch {
            return Err(Error::InvalidArgument(format!(
                "a run takes 1 to n_batch={} inputs, got {}",
                self.n_batch,
                inputs.len()
            )));
        }
        let family = self.rt.family();
        let mut c = c_inputs(family, inputs)?;
        let cache_path = match &infer.prompt_cache {
            Some(pc) => Some(cstring("prompt cache path", &pc.path.to_string_lossy())?),
            None => None,
        };
        let mut cache = cache_path.as_ref().map(|path| RKLLMPromptCacheParam {
            save_prompt_cache: c_int::from(infer.prompt_cache.as_ref().is_some_and(|p| p.save)),
            prompt_cache_path: path.as_ptr(),
        });
        let cache_ptr = cache
            .as_mut()
            .map_or(ptr::null_mut(), |c| c as *mut RKLLMPromptCacheParam);
        let code = match self.rt.inner.fns.family {
            FamilyFns::V1_2 { run, run_async, .. } => {
                if infer.sampling.is_some() {
                    return Err(Error::Unsupported {
                        what: "per-run sampling",
                        family,
                    });
                }
                if infer.max_new_tokens.is_some() {
                    return Err(Error::Unsupported {
                        what: "per-run max_new_tokens",
                        family,
                    });
                }
                let f = pick(run, run_async, asynchronous, family)?;
                pad(&mut c.v1_2, self.n_batch);
                let mut p = v1_2::RKLLMInferParam {
                    mode: infer.mode.to_c(),
                    lora_params: ptr::null_mut(),
                    prompt_cache_params: cache_ptr,
                    keep_history: c_int::from(infer.keep_history),
                };
                // SAFETY: the input array has n_batch entries whose pointers live in `c`;
                // `p`, `cache` and `userdata` outlive the call (async: userdata is boxed).
                unsafe { f(self.raw, c.v1_2.as_mut_ptr(), &mut p, userdata) }
            }
            FamilyFns::V1_3 { run, run_async, .. } => {
                let f = pick(run, run_async, asynchronous, family)?;
                pad(&mut c.v1_3, self.n_batch);
                let mut sampling = infer.sampling.map(v1_3::RKLLMSamplingParam::from);
                let mut p = v1_3::RKLLMInferParam {
                    mode: infer.mode.to_c(),
                    lora_params: ptr::null_mut(),
                    prompt_cache_params: cache_ptr,
                    sampling_params: sampling
                        .as_mut()
                        .map_or(ptr::null_mut(), |s| s as *mut v1_3::RKLLMSamplingParam),
                    keep_history: c_int::from(infer.keep_history),
                    max_new_tokens: infer.max_new_tokens.unwrap_or(0),
                };
                // SAFETY: as above, with the v1.3 layouts.
                unsafe { f(self.raw, c.v1_3.as_mut_ptr(), &mut p, userdata) }
            }
        };
        Ok(code)
    }

    /// Whether a run is in progress, whatever the family's return convention.
    pub fn is_running(&self) -> bool {
        // SAFETY: raw is a live handle.
        let code = unsafe { (self.rt.inner.fns.is_running)(self.raw) };
        match self.rt.family() {
            AbiFamily::V1_2 => code == 0,
            AbiFamily::V1_3 => code == 1,
        }
    }

    pub fn abort(&self) -> Result<(), Error> {
        self.abort_handle().abort()
    }

    /// Clears the KV cache. `ranges`, one `(start, end)` per slot, clears only those
    /// positions (valid while a run is paused with keep_history off).
    pub fn clear_kv_cache(
        &mut self,
        keep_system_prompt: bool,
        ranges: Option<&[(i32, i32)]>,
    ) -> Result<(), Error> {
        let f = self.optional_fn(self.rt.inner.fns.clear_kv_cache, "rkllm_clear_kv_cache")?;
        let (mut starts, mut ends): (Vec<c_int>, Vec<c_int>) =
            ranges.unwrap_or(&[]).iter().copied().unzip();
        if ranges.is_some() && starts.len() != self.n_batch {
            return Err(Error::InvalidArgument(format!(
                "clear_kv_cache ranges need one entry per slot ({})",
                self.n_batch
            )));
        }
        let (sp, ep) = if ranges.is_some() {
            (starts.as_mut_ptr(), ends.as_mut_ptr())
        } else {
            (ptr::null_mut(), ptr::null_mut())
        };
        // SAFETY: sp/ep are NULL or arrays of n_batch ints alive for the call.
        let code = unsafe { f(self.raw, c_int::from(keep_system_prompt), sp, ep) };
        check("rkllm_clear_kv_cache", code)
    }

    /// Tokens held in the KV cache, per slot.
    pub fn kv_cache_sizes(&self) -> Result<Vec<i32>, Error> {
        let f = self.optional_fn(
            self.rt.inner.fns.get_kv_cache_size,
            "rkllm_get_kv_cache_size",
        )?;
        let mut sizes = vec![0 as c_int; self.n_batch];
        // SAFETY: sizes has n_batch entries.
        let code = unsafe { f(self.raw, sizes.as_mut_ptr()) };
        check("rkllm_get_kv_cache_size", code)?;
        Ok(sizes)
    }

    /// Overrides the chat template; `("", "", "")` makes the runtime pass text verbatim.
    pub fn set_chat_template(
        &mut self,
        system: &str,
        prefix: &str,
        postfix: &str,
    ) -> Result<(), Error> {
        let f = self.optional_fn(
            self.rt.inner.fns.set_chat_template,
            "rkllm_set_chat_template",
        )?;
        let (s, p, q) = (
            cstring("system prompt", system)?,
            cstring("prefix", prefix)?,
            cstring("postfix", postfix)?,
        );
        // SAFETY: three C strings alive for the call.
        let code = unsafe { f(self.raw, s.as_ptr(), p.as_ptr(), q.as_ptr()) };
        check("rkllm_set_chat_template", code)
    }

    pub fn load_prompt_cache(&mut self, path: &std::path::Path) -> Result<(), Error> {
        let f = self.optional_fn(
            self.rt.inner.fns.load_prompt_cache,
            "rkllm_load_prompt_cache",
        )?;
        let c = cstring("prompt cache path", &path.to_string_lossy())?;
        // SAFETY: a C string alive for the call.
        let code = unsafe { f(self.raw, c.as_ptr()) };
        check("rkllm_load_prompt_cache", code)
    }

    pub fn release_prompt_cache(&mut self) -> Result<(), Error> {
        let f = self.optional_fn(
            self.rt.inner.fns.release_prompt_cache,
            "rkllm_release_prompt_cache",
        )?;
        // SAFETY: raw is a live handle.
        check("rkllm_release_prompt_cache", unsafe { f(self.raw) })
    }

    fn optional_fn<T>(&self, f: Option<T>, name: &'static str) -> Result<T, Error> {
        f.ok_or_else(|| {
            Error::Load(crate::LoadError::MissingSymbol {
                path: self.rt.path().to_path_buf(),
                symbol: name,
            })
        })
    }

    /// Releases the handle. Rockchip's runtime can hang here if a run is active, so this
    /// aborts first; callers that cannot afford a hang run it on a thread with a deadline.
    /// Outstanding [`AbortHandle`]s must not be used afterwards.
    pub fn destroy(mut self) -> Result<(), Error> {
        self.destroy_inner()
    }

    fn destroy_inner(&mut self) -> Result<(), Error> {
        if self.raw.is_null() {
            return Ok(());
        }
        if self.is_running() {
            let _ = self.abort();
        }
        // SAFETY: raw is live and is never used again after this call.
        let code = unsafe { (self.rt.inner.fns.destroy)(self.raw) };
        self.raw = ptr::null_mut();
        self.async_ctx = None;
        check("rkllm_destroy", code)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.destroy_inner();
    }
}

fn pick<T>(
    run: T,
    run_async: Option<T>,
    asynchronous: bool,
    family: AbiFamily,
) -> Result<T, Error> {
    if !asynchronous {
        return Ok(run);
    }
    run_async.ok_or(Error::Unsupported {
        what: "rkllm_run_async",
        family,
    })
}

/// The runtime reads n_batch inputs; unused slots get an empty token input, which the
/// runtime treats as an idle slot.
fn pad<T: Copy + EmptyInput>(v: &mut Vec<T>, n: usize) {
    while v.len() < n {
        v.push(T::empty());
    }
}

trait EmptyInput {
    fn empty() -> Self;
}

impl EmptyInput for v1_2::RKLLMInput {
    fn empty() -> Self {
        v1_2::RKLLMInput {
            role: ptr::null(),
            enable_thinking: false,
            input_type: input_type::TOKEN,
            input: v1_2::RKLLMInputUnion {
                token_input: abi::RKLLMTokenInput::default(),
            },
        }
    }
}

impl EmptyInput for v1_3::RKLLMInput {
    fn empty() -> Self {
        v1_3::RKLLMInput {
            role: ptr::null(),
            enable_thinking: false,
            input_type: input_type::TOKEN,
            input: v1_3::RKLLMInputUnion {
                token_input: abi::RKLLMTokenInput::default(),
            },
        }
    }
}
