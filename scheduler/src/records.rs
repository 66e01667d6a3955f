//! What the threads that serve requests send to the telemetry thread: one record per finished
//! request and per run.

use crate::request::{FailKind, FinishReason};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stop,
    Length,
    Failed(FailKind),
}

impl Outcome {
    pub(crate) fn of(reason: &FinishReason) -> Outcome {
        match reason {
            FinishReason::Stop => Outcome::Stop,
            FinishReason::Length => Outcome::Length,
            FinishReason::Error(f) => Outcome::Failed(f.kind),
        }
    }
}

/// One request's measurements, sent when it ends.
#[derive(Debug)]
pub struct RequestRecord {
    pub model: Arc<str>,
    pub outcome: Outcome,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Arrival to the start of its run (or to its end, if it never ran).
    pub queue: Duration,
    /// Arrival to the first token.
    pub ttft: Option<Duration>,
    /// Start of the run to the first token.
    pub prefill: Option<Duration>,
    /// First token to the last.
    pub decode: Duration,
    pub e2e: Duration,
    /// Gaps between consecutive tokens, in microseconds.
    pub itl_us: Vec<u32>,
}

/// One run's measurements, sent when it ends.
#[derive(Debug)]
pub struct RunRecord {
    pub model: Arc<str>,
    pub slots: usize,
    pub busy: Duration,
    pub steps: u64,
    /// Sum over steps of the slots still generating.
    pub slot_steps: u64,
    /// Sum over steps of the slots the runtime decoded for requests that had ended.
    pub dead_slot_steps: u64,
    /// The run was cut to re-form.
    pub cut: bool,
    /// Prompt tokens the runtime prefilled again for the sequences it resumed.
    pub resumed_prefill_tokens: u64,
    /// The runtime's reported memory (VmHWM on the CPU runtime).
    pub memory_bytes: Option<u64>,
}
