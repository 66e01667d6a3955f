//! The decode loop shared by every engine: prefill all slots together, then one forward pass
//! per step over the slots still generating, reporting every slot's result once per step.

use crate::engine::{Backend, EngineError};
use crate::request::RunRequest;
use crate::utf8::Utf8Carry;
use rkllm::abi::{call_state, RKLLMPerfStat};
use rkllm::{Flow, SlotResult};
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Receives each step's per-slot results (the C callback, or a test).
pub trait StepSink {
    fn step(&mut self, state: c_int, slots: &[SlotResult<'_>]) -> Flow;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every slot finished.
    Finished,
    /// Stopped by `rkllm_abort`.
    Aborted,
    /// The callback returned 1: the run stops, the KV cache is kept.
    Paused,
}

#[derive(Default)]
struct Slot {
    busy: bool,
    done: bool,
    prompt_tokens: i32,
    generated: i32,
    utf8: Utf8Carry,
    text: Vec<u8>,
    token: i32,
    /// The token sampled this step, not yet in the KV cache.
    undecoded: Option<i32>,
    /// Decode time when the slot finished; a slot's perf stops counting there.
    done_ms: Option<f32>,
}

/// Runs one request to its end. Before any step is reported an error leaves the engine
/// unchanged; after, the busy slots are cleared.
pub fn generate(
    backend: &mut dyn Backend,
    req: &RunRequest,
    abort: &AtomicBool,
    sink: &mut dyn StepSink,
) -> Result<RunEnd, EngineError> {
    let n = backend.n_slots();
    let plan = backend.prepare(req)?;
    let mut slots: Vec<Slot> = plan
        .iter()
        .map(|p| Slot {
            busy: p.is_some(),
            done: p.is_none(),
            prompt_tokens: p.unwrap_or(0) as i32,
            token: -1,
            ..Slot::default()
        })
        .collect();
    for (i, s) in slots.iter_mut().enumerate().filter(|(_, s)| s.busy) {
        // Incomplete by definition, so they stay in the carry: nothing comes out.
        s.utf8.push(backend.held_bytes(i), &mut s.text);
    }

    let started = Instant::now();
    if let Err(e) = backend.prefill(abort) {
        let _ = backend.end_run(false, &[]);
        return Err(e);
    }
    let prefill_ms = started.elapsed().as_secs_f32() * 1000.0;
    let decode_started = Instant::now();

    let max_new = if req.max_new_tokens > 0 {
        req.max_new_tokens
    } else {
        i32::MAX
    };
    let mut piece = Vec::with_capacity(64);
    let mut batch: Vec<(usize, i32)> = Vec::with_capacity(n);

    let end = loop {
        if abort.load(Ordering::Acquire) {
            break RunEnd::Aborted;
        }
        let mut any_text = false;
        let mut any_waiting = false;
        for (i, s) in slots.iter_mut().enumerate() {
            s.text.clear();
            s.undecoded = None;
            if s.done {
                s.token = -1;
                continue;
            }
            piece.clear();
            let sampled = match backend.sample(i, &mut piece) {
                Ok(t) => t,
                Err(e) => {
                    let _ = backend.end_run(false, &[]);
                    return Err(e);
                }
            };
            s.generated += 1;
            s.undecoded = Some(sampled.token);
            if sampled.eog && !req.ignore_eos {
                s.utf8.flush(&mut s.text);
                s.done = true;
                s.token = -1;
            } else {
                s.utf8.push(&piece, &mut s.text);
                s.token = sampled.token;
                if s.generated >= max_new || !backend.has_room(i) {
                    s.utf8.flush(&mut s.text);
                    s.done = true;
                }
            }
            if s.done {
                s.done_ms = Some(decode_started.elapsed().as_secs_f32() * 1000.0);
            }
            any_text |= !s.text.is_empty();
            any_waiting |= s.utf8.is_waiting();
        }
        let state = if !any_text && any_waiting {
            call_state::WAITING
        } else {
            call_state::NORMAL
        };
        let memory = backend.memory_mb();
        let results: Vec<SlotResult<'_>> = slots
            .iter()
            .map(|s| slot_result(s, perf_of(s, prefill_ms, &decode_started, memory)))
            .collect();
        let flow = sink.step(state, &results);
        drop(results);
        if slots.iter().all(|s| s.done) {
            break RunEnd::Finished;
        }
        if flow == Flow::Pause {
            break RunEnd::Paused;
        }
        if abort.load(Ordering::Acquire) {
            break RunEnd::Aborted;
        }
        batch.clear();
        batch.extend(
            slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.done)
                .filter_map(|(i, s)| s.undecoded.map(|t| (i, t))),
        );
        for s in slots.iter_mut().filter(|s| !s.done) {
            s.undecoded = None;
        }
        if let Err(e) = backend.decode(&batch) {
            let _ = backend.end_run(false, &[]);
            return Err(e);
        }
    };

    if end != RunEnd::Finished {
        backend.stopping(end);
    }
    // A paused run keeps its KV cache whatever keep_history says.
    let keep = req.keep_history || end == RunEnd::Paused;
    batch.clear();
    batch.extend(
        slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.undecoded.map(|t| (i, t))),
    );
    backend.end_run(keep, &batch)?;

    if end != RunEnd::Paused {
        let memory = backend.memory_mb();
        for s in slots.iter_mut() {
            s.token = -1;
            s.text.clear();
        }
        let results: Vec<SlotResult<'_>> = slots
            .iter()
            .map(|s| slot_result(s, perf_of(s, prefill_ms, &decode_started, memory)))
            .collect();
        sink.step(call_state::FINISH, &results);
    }
    Ok(end)
}

fn perf_of(s: &Slot, prefill_ms: f32, decode_started: &Instant, memory_mb: f32) -> RKLLMPerfStat {
    RKLLMPerfStat {
        prefill_time_ms: if s.busy { prefill_ms } else { 0.0 },
        prefill_tokens: s.prompt_tokens,
        generate_time_ms: match (s.busy, s.done_ms) {
            (false, _) => 0.0,
            (true, Some(ms)) => ms,
            (true, None) => decode_started.elapsed().as_secs_f32() * 1000.0,
        },
        generate_tokens: s.generated,
        memory_usage_mb: memory_mb,
    }
}

fn slot_result<'a>(s: &'a Slot, perf: RKLLMPerfStat) -> SlotResult<'a> {
    SlotResult {
        text: if s.text.is_empty() {
            None
        } else {
            Some(&s.text)
        },
        token_id: s.token,
        perf,
        hidden: None,
    }
}
