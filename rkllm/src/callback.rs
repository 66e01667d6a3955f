//! The C callback trampoline: turns each `LLMResultCallback` invocation into a [`Step`] for a
//! Rust closure. It runs on the runtime's thread, so it never blocks, never allocates, and
//! never lets a panic unwind into C.

use crate::abi::{
    call_state, callback_return, RKLLMPerfStat, RKLLMResult, RKLLMResultLastHiddenLayer,
};
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
    /// In `GET_LAST_HIDDEN_LAYER` runs: the last hidden layer of the slot's prompt tokens.
    pub hidden: Option<HiddenStates<'a>>,
}

/// The last hidden layer of a slot's tokens, `num_tokens` rows of `embd_size` floats, row
/// major (Rockchip's `RKLLMResultLastHiddenLayer`). Valid during the callback only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HiddenStates<'a> {
    pub states: &'a [f32],
    pub embd_size: usize,
    pub num_tokens: usize,
}

impl<'a> HiddenStates<'a> {
    /// Checks what the runtime passed before a float of it is read: a NULL pointer, a size
    /// that is zero or negative (a slot without states, or a field the runtime left
    /// unwritten), a product that overflows, or a misaligned pointer all mean "no states".
    ///
    /// # Safety
    /// A non-NULL `hidden_states` with positive sizes must point to `embd_size * num_tokens`
    /// floats that stay valid for `'a`, as rkllm.h documents for the callback's duration.
    pub unsafe fn from_c(h: &RKLLMResultLastHiddenLayer) -> Option<HiddenStates<'a>> {
        let embd_size = usize::try_from(h.embd_size).ok().filter(|&n| n > 0)?;
        let num_tokens = usize::try_from(h.num_tokens).ok().filter(|&n| n > 0)?;
        let len = embd_size.checked_mul(num_tokens)?;
        let bytes = len.checked_mul(std::mem::size_of::<f32>())?;
        if h.hidden_states.is_null() || !h.hidden_states.is_aligned() || bytes > isize::MAX as usize
        {
            return None;
        }
        // SAFETY: non-NULL, aligned, `len` floats within isize::MAX bytes, valid for 'a per
        // this function's contract.
        let states = unsafe { std::slice::from_raw_parts(h.hidden_states, len) };
        Some(HiddenStates {
            states,
            embd_size,
            num_tokens,
        })
    }

    /// Token `i`'s state.
    pub fn token(&self, i: usize) -> &'a [f32] {
        &self.states[i * self.embd_size..(i + 1) * self.embd_size]
    }
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
        // SAFETY: the runtime keeps a result's hidden-state buffer alive for the callback,
        // and `'a` does not outlive it; `from_c` reads nothing it has not checked.
        let hidden = unsafe { HiddenStates::from_c(&r.last_hidden_layer) };
        SlotResult {
            text,
            token_id: r.token_id,
            perf: r.perf,
            hidden,
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
    /// Return "release" after a step that carried hidden states (v1.3.0).
    pub release_hidden: bool,
}

impl<'f> CallbackCtx<'f> {
    pub fn new(n_batch: usize, on_step: Box<StepFn<'f>>) -> Self {
        CallbackCtx {
            on_step,
            n_batch,
            saw_finish: false,
            saw_error: false,
            panic: None,
            release_hidden: false,
        }
    }

    pub fn releasing_hidden_states(mut self, release: bool) -> Self {
        self.release_hidden = release;
        self
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
    // Only what this step may be read for counts, so a FINISH array of one is not overread.
    let carried_hidden = ctx.release_hidden && step.slots().any(|s| s.hidden.is_some());
    match catch_unwind(AssertUnwindSafe(|| (ctx.on_step)(&step))) {
        // The closure has returned, so nothing borrows the buffer any more.
        Ok(Flow::Continue) if carried_hidden => callback_return::RELEASE,
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

    fn with_hidden(states: &[f32], embd: i32, tokens: i32) -> RKLLMResult {
        let mut r = RKLLMResult::EMPTY;
        r.last_hidden_layer = RKLLMResultLastHiddenLayer {
            hidden_states: states.as_ptr(),
            embd_size: embd,
            num_tokens: tokens,
        };
        r
    }

    #[test]
    fn hidden_states_are_read_only_when_pointer_and_sizes_are_sound() {
        let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let ok = with_hidden(&data, 3, 2);
        let step = Step::from_results(StepState::Normal, std::slice::from_ref(&ok));
        let h = step.slot(0).hidden.expect("states");
        assert_eq!((h.embd_size, h.num_tokens), (3, 2));
        assert_eq!(h.token(1), &[4.0, 5.0, 6.0]);
        for bad in [
            with_hidden(&data, 0, 2),
            with_hidden(&data, 3, -1),
            with_hidden(&data, -3, -2),
            RKLLMResult::EMPTY,
        ] {
            let step = Step::from_results(StepState::Normal, std::slice::from_ref(&bad));
            assert!(step.slot(0).hidden.is_none());
        }
        // A misaligned pointer is refused rather than read.
        let mut odd = with_hidden(&data, 1, 1);
        odd.last_hidden_layer.hidden_states =
            (data.as_ptr() as *const u8).wrapping_add(1) as *const f32;
        let step = Step::from_results(StepState::Normal, std::slice::from_ref(&odd));
        assert!(step.slot(0).hidden.is_none());
    }

    #[test]
    fn a_step_with_hidden_states_returns_release_when_asked() {
        let data = [0.5f32; 4];
        for (release, expected) in [
            (true, callback_return::RELEASE),
            (false, callback_return::CONTINUE),
        ] {
            let on_step: Box<StepFn<'_>> = Box::new(|_: &Step<'_>| Flow::Continue);
            let mut ctx = CallbackCtx::new(2, on_step).releasing_hidden_states(release);
            let mut results = vec![with_hidden(&data, 4, 1), RKLLMResult::EMPTY];
            let ptr = &mut ctx as *mut CallbackCtx<'_> as *mut c_void;
            // SAFETY: ctx outlives the calls; the array holds n_batch results.
            let got = unsafe { trampoline(results.as_mut_ptr(), ptr, call_state::NORMAL) };
            assert_eq!(got, expected);
            let mut plain = vec![RKLLMResult::EMPTY, RKLLMResult::EMPTY];
            // SAFETY: as above.
            let got = unsafe { trampoline(plain.as_mut_ptr(), ptr, call_state::NORMAL) };
            assert_eq!(got, callback_return::CONTINUE);
        }
    }
}
