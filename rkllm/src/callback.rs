//! The C callback trampoline: turns each `LLMResultCallback` invocation into a [`Step`] for a
//! Rust closure. It runs on the runtime's thread, so it never blocks, never allocates, and
//! never lets a panic unwind into C.

use crate::abi::{call_state, callback_return, RKLLMPerfStat, RKLLMResult};
use std::ffi::{c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Normal,
    /// Some slot holds the first bytes of a UTF-8 character; its text comes later.
    Waiting,
    /// The run is over; every slot has finished. Perf stats are final.
    Finish,
    Error,
}

impl StepState {
    fn from_c(state: c_int) -> StepState {
        match state {
            call_state::NORMAL => StepState::Normal,
            call_state::WAITING => StepState::Waiting,
            call_state::FINISH => StepState::Finish,
            _ => StepState::Error,
        }
    }
}

/// What the step callback tells the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop this run but keep the KV cache.
    Pause,
}

/// One decode step: the results of every slot of the batch.
pub struct Step<'a> {
    state: StepState,
    results: &'a [RKLLMResult],
}

/// One slot's result in one step.
#[derive(Debug, Clone, Copy)]
pub struct SlotResult<'a> {
    /// The new text, if the slot produced complete characters this step.
    pub text: Option<&'a [u8]>,
    /// Negative once the slot has finished.
    pub token_id: i32,
    pub perf: RKLLMPerfStat,
}

impl SlotResult<'_> {
    pub fn finished(&self) -> bool {
        self.token_id < 0
    }
}

impl<'a> Step<'a> {
    /// Builds a step over results that did not come from C (tests, replay).
    pub fn from_results(state: StepState, results: &'a [RKLLMResult]) -> Step<'a> {
        Step { state, results }
    }

    pub fn state(&self) -> StepState {
        self.state
    }

    pub fn len(&self) -> usize {
        self.results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    pub fn slot(&self, i: usize) -> SlotResult<'a> {
        let r = &self.results[i];
        let text = if r.text.is_null() {
            None
        } else {
            // SAFETY: a non-NULL `text` is a NUL-terminated string the runtime keeps alive for
            // the duration of the callback, and `'a` does not outlive the callback.
            Some(unsafe { CStr::from_ptr(r.text) }.to_bytes())
        };
        SlotResult {
            text,
            token_id: r.token_id,
            perf: r.perf,
        }
    }

    pub fn slots(&self) -> impl Iterator<Item = SlotResult<'a>> + '_ {
        (0..self.results.len()).map(|i| self.slot(i))
    }
}

pub(crate) type StepFn<'f> = dyn FnMut(&Step<'_>) -> Flow + Send + 'f;

/// What `userdata` points at during a run.
pub(crate) struct CallbackCtx<'f> {
    pub on_step: Box<StepFn<'f>>,
    pub n_batch: usize,
    pub saw_finish: bool,
    pub saw_error: bool,
    pub panic: Option<String>,
}

impl<'f> CallbackCtx<'f> {
    pub fn new(n_batch: usize, on_step: Box<StepFn<'f>>) -> Self {
        CallbackCtx {
            on_step,
            n_batch,
            saw_finish: false,
            saw_error: false,
            panic: None,
        }
    }
}

/// The `LLMResultCallback` handed to the runtime.
///
/// # Safety
/// `userdata` must be the `CallbackCtx` of the run in progress, and `result` NULL or an array
/// of `n_batch` results, as the RKLLM API promises.
pub(crate) unsafe extern "C" fn trampoline(
    result: *mut RKLLMResult,
    userdata: *mut c_void,
    state: c_int,
) -> c_int {
    if userdata.is_null() {
        return callback_return::CONTINUE;
    }
    // SAFETY: per this function's contract, userdata is the live CallbackCtx of this run,
    // and the runtime calls back from one thread at a time.
    let ctx = unsafe { &mut *(userdata as *mut CallbackCtx<'_>) };
    let results: &[RKLLMResult] = if result.is_null() {
        &[]
    } else {
        // SAFETY: the runtime passes an array of n_batch results, valid during the callback.
        unsafe { std::slice::from_raw_parts(result, ctx.n_batch) }
    };
    let state = StepState::from_c(state);
    match state {
        StepState::Finish => ctx.saw_finish = true,
        StepState::Error => ctx.saw_error = true,
        _ => {}
    }
    if ctx.panic.is_some() {
        return callback_return::PAUSE;
    }
    let step = Step { state, results };
    match catch_unwind(AssertUnwindSafe(|| (ctx.on_step)(&step))) {
        Ok(Flow::Continue) => callback_return::CONTINUE,
        Ok(Flow::Pause) => callback_return::PAUSE,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            ctx.panic = Some(msg);
            callback_return::PAUSE
        }
    }
}
