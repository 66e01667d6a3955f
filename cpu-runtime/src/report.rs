//! Turns each step's per-slot results into the `RKLLMResult` array the C callback receives.
//! Buffers are allocated once per run and reused every step.

use crate::generate::StepSink;
use rkllm::abi::{
    call_state, callback_return, LLMResultCallback, RKLLMPerfStat, RKLLMResult,
    RKLLMResultLastHiddenLayer,
};
use rkllm::{Flow, SlotResult};
use serde::Deserialize;
use std::ffi::{c_int, c_void};

/// How many results the FINISH and ERROR callbacks pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishResults {
    /// One per slot, each with that slot's final perf stats.
    #[default]
    All,
    /// One, carrying the batch's totals: the one public encoding of Rockchip's batched
    /// callback does this, so a consumer that reads n_batch results there reads past it.
    Single,
}

pub struct CReporter {
    callback: Option<LLMResultCallback>,
    userdata: *mut c_void,
    results: Vec<RKLLMResult>,
    texts: Vec<Vec<u8>>,
    finish: FinishResults,
}

impl CReporter {
    pub fn new(callback: Option<LLMResultCallback>, userdata: *mut c_void, n_batch: usize) -> Self {
        CReporter {
            callback,
            userdata,
            results: vec![RKLLMResult::EMPTY; n_batch],
            texts: (0..n_batch).map(|_| Vec::with_capacity(64)).collect(),
            finish: FinishResults::All,
        }
    }

    pub fn with_finish_results(mut self, finish: FinishResults) -> Self {
        self.finish = finish;
        self
    }

    /// Reports ERROR with every slot finished.
    pub fn error(&mut self) {
        let empty: Vec<SlotResult<'_>> = (0..self.results.len())
            .map(|_| SlotResult {
                text: None,
                token_id: -1,
                perf: Default::default(),
                hidden: None,
            })
            .collect();
        self.step(call_state::ERROR, &empty);
    }
}

/// The whole batch's figures: prefill and decode run for all slots at once, so times are the
/// longest slot's and token counts add up.
fn batch_totals(slots: &[SlotResult<'_>]) -> RKLLMPerfStat {
    slots.iter().fold(RKLLMPerfStat::default(), |mut t, s| {
        t.prefill_time_ms = t.prefill_time_ms.max(s.perf.prefill_time_ms);
        t.prefill_tokens += s.perf.prefill_tokens;
        t.generate_time_ms = t.generate_time_ms.max(s.perf.generate_time_ms);
        t.generate_tokens += s.perf.generate_tokens;
        t.memory_usage_mb = t.memory_usage_mb.max(s.perf.memory_usage_mb);
        t
    })
}

impl StepSink for CReporter {
    fn step(&mut self, state: c_int, slots: &[SlotResult<'_>]) -> Flow {
        let Some(callback) = self.callback else {
            return Flow::Continue;
        };
        let single = self.finish == FinishResults::Single
            && matches!(state, call_state::FINISH | call_state::ERROR);
        let n = if single {
            self.results.len().min(1)
        } else {
            for (i, s) in slots.iter().enumerate().take(self.results.len()) {
                let r = &mut self.results[i];
                r.token_id = s.token_id;
                r.perf = s.perf;
                // Points into the engine's buffer, which outlives the callback.
                r.last_hidden_layer = match s.hidden {
                    Some(h) => RKLLMResultLastHiddenLayer {
                        hidden_states: h.states.as_ptr(),
                        embd_size: h.embd_size as i32,
                        num_tokens: h.num_tokens as i32,
                    },
                    None => RKLLMResult::EMPTY.last_hidden_layer,
                };
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
            self.results.len()
        };
        if single {
            if let Some(r) = self.results.first_mut() {
                *r = RKLLMResult::EMPTY;
                r.token_id = -1;
                r.perf = batch_totals(slots);
            }
        }
        let ret =
            crate::exports::invoke_callback(callback, &mut self.results[..n], self.userdata, state);
        if ret == callback_return::PAUSE {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }
}
