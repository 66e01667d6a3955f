//! `RKLLM_INFER_GET_LAST_HIDDEN_LAYER` runs: every busy slot's input is prefilled (together,
//! where the engine can) and its tokens' last hidden layer is reported, as Rockchip's runtime
//! does: one NORMAL callback whose result for each slot carries that slot's
//! `num_tokens x embd_size` states, then FINISH with the perf stats. Nothing is generated and
//! no slot's history changes. The states are per token, not pooled: pooling is the caller's
//! (rkserve's scheduler pools them by the model's pooling type).

use crate::engine::{Backend, EngineError};
use crate::generate::StepSink;
use crate::request::RunRequest;
use rkllm::abi::{call_state, RKLLMPerfStat};
use rkllm::{Flow, HiddenStates, SlotResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Runs one hidden-state request. The buffers stay ours: a callback returning 2 (v1.3.0's
/// "release") is accepted and changes nothing, since they are dropped when the run ends.
pub fn hidden_states(
    backend: &mut dyn Backend,
    req: &RunRequest,
    abort: &AtomicBool,
    sink: &mut dyn StepSink,
) -> Result<(), EngineError> {
    let started = Instant::now();
    let states = backend.hidden_states(req, abort)?;
    let prefill_ms = started.elapsed().as_secs_f32() * 1000.0;
    let memory_mb = backend.memory_mb();
    let perf = |tokens: usize| RKLLMPerfStat {
        prefill_time_ms: if tokens > 0 { prefill_ms } else { 0.0 },
        prefill_tokens: tokens as i32,
        generate_time_ms: 0.0,
        generate_tokens: 0,
        memory_usage_mb: memory_mb,
    };
    let results: Vec<SlotResult<'_>> = states
        .iter()
        .map(|h| SlotResult {
            text: None,
            token_id: -1,
            perf: perf(h.as_ref().map_or(0, |h| h.num_tokens)),
            hidden: h.as_ref().map(|h| HiddenStates {
                states: &h.states,
                embd_size: h.embd_size,
                num_tokens: h.num_tokens,
            }),
        })
        .collect();
    // An aborted run reports nothing but its end, as a generation run cut before its first
    // token does.
    let flow = if abort.load(Ordering::Acquire) {
        Flow::Continue
    } else {
        sink.step(call_state::NORMAL, &results)
    };
    if flow == Flow::Pause {
        return Ok(());
    }
    let finish: Vec<SlotResult<'_>> = results
        .iter()
        .map(|r| SlotResult { hidden: None, ..*r })
        .collect();
    sink.step(call_state::FINISH, &finish);
    Ok(())
}
