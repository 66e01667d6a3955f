//! Turns each step's per-slot results into the `RKLLMResult` array the C callback receives.
//! Buffers are allocated once per run and reused every step.

use crate::generate::StepSink;
use rkllm::abi::{call_state, callback_return, LLMResultCallback, RKLLMResult};
use rkllm::{Flow, SlotResult};
use std::ffi::{c_int, c_void};

pub struct CReporter {
    callback: Option<LLMResultCallback>,
    userdata: *mut c_void,
    results: Vec<RKLLMResult>,
    texts: Vec<Vec<u8>>,
}

impl CReporter {
    pub fn new(callback: Option<LLMResultCallback>, userdata: *mut c_void, n_batch: usize) -> Self {
        CReporter {
            callback,
            userdata,
            results: vec![RKLLMResult::EMPTY; n_batch],
            texts: (0..n_batch).map(|_| Vec::with_capacity(64)).collect(),
        }
    }

    /// Reports ERROR with every slot finished.
    pub fn error(&mut self) {
        let empty: Vec<SlotResult<'_>> = (0..self.results.len())
            .map(|_| SlotResult {
                text: None,
                token_id: -1,
                perf: Default::default(),
            })
            .collect();
        self.step(call_state::ERROR, &empty);
    }
}

impl StepSink for CReporter {
    fn step(&mut self, state: c_int, slots: &[SlotResult<'_>]) -> Flow {
        let Some(callback) = self.callback else {
            return Flow::Continue;
        };
        for (i, s) in slots.iter().enumerate().take(self.results.len()) {
            let r = &mut self.results[i];
            r.token_id = s.token_id;
            r.perf = s.perf;
            r.text = match s.text {
                Some(t) => {
                    let buf = &mut self.texts[i];
                    buf.clear();
                    buf.extend_from_slice(t);
                    buf.push(0);
                    buf.as_ptr().cast()
                }
                None => std::ptr::null(),
            };
        }
        let ret =
            crate::exports::invoke_callback(callback, &mut self.results, self.userdata, state);
        if ret == callback_return::PAUSE {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }
}
