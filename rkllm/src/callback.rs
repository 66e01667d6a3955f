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

/// How many results a callback in `state` may be read for: every slot's on a decode step, and
/// only the first (perf stats) at FINISH and ERROR, whose array may hold just one.
pub(crate) fn results_in(state: StepState, n_batch: usize) -> usize {
    match state {
        StepState::Normal | StepState::Waiting => n_batch,
        StepState::Finish | StepState::Error => n_batch.min(1),
    }
}

/// The `LLMResultCallback` handed to the runtime.
///
/// # Safety
/// `userdata` must be the `CallbackCtx` of the run in progress, and `result` NULL or an array
/// of `n_batch` results on NORMAL/WAITING steps and of at least one at FINISH/ERROR.
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
    let state = StepState::from_c(state);
    let results: &[RKLLMResult] = if result.is_null() {
        &[]
    } else {
        // SAFETY: the runtime passes a result array valid during the callback. Its length is
        // known only for decode steps (NORMAL, WAITING: n_batch results, one per slot); at
        // FINISH and ERROR the one public encoding passes a single result carrying the perf
        // stats, so only result 0 is read there, which is safe under either encoding.
        unsafe { std::slice::from_raw_parts(result, results_in(state, ctx.n_batch)) }
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::call_state;

    /// Calls the trampoline as a runtime would and returns how many results each step showed.
    fn lens_seen(calls: &mut [(c_int, Vec<RKLLMResult>)], n_batch: usize) -> Vec<usize> {
        let mut seen = Vec::new();
        {
            let on_step: Box<StepFn<'_>> = Box::new(|s: &Step<'_>| {
                seen.push(s.len());
                Flow::Continue
            });
            let mut ctx = CallbackCtx::new(n_batch, on_step);
            for (state, results) in calls.iter_mut() {
                let ptr = if results.is_empty() {
                    std::ptr::null_mut()
                } else {
                    results.as_mut_ptr()
                };
                // SAFETY: ctx outlives the call; each array holds what the runtime's encoding
                // passes for its state (n_batch results per decode step, one at FINISH/ERROR).
                unsafe { trampoline(ptr, &mut ctx as *mut CallbackCtx<'_> as *mut c_void, *state) };
            }
        }
        seen
    }

    /// The public encoding of a batched run: n_batch results per decode step, then a FINISH
    /// whose array holds a single result. Reading n_batch there would read past it.
    #[test]
    fn finish_and_error_read_only_result_zero() {
        let r = || RKLLMResult::EMPTY;
        let mut calls = vec![
            (call_state::NORMAL, (0..8).map(|_| r()).collect()),
            (call_state::WAITING, (0..8).map(|_| r()).collect()),
            (call_state::FINISH, vec![r()]),
            (call_state::ERROR, vec![r()]),
            (call_state::FINISH, vec![]),
        ];
        assert_eq!(lens_seen(&mut calls, 8), vec![8, 8, 1, 1, 0]);
    }
}
