//! What the threads that serve requests send to the telemetry thread: one record per finished
//! request and per run.

use crate::request::{FailKind, FinishReason};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// The choices of one API request (its `n` completions, or an embedding request's inputs).
/// Each is scheduled and ends on its own, but the client made one request: its outcome is
/// counted once, when the last choice ends.
#[derive(Debug)]
pub struct Choices {
    left: AtomicUsize,
    outcome: Mutex<Option<Outcome>>,
    /// The caller counts the request's outcome (one it may generate again): none here.
    by_caller: bool,
}

impl Choices {
    pub fn new(n: usize) -> Arc<Choices> {
        Choices::with(n, false)
    }

    /// Choices whose request's outcome the caller counts, not the scheduler.
    pub fn counted_by_caller(n: usize) -> Arc<Choices> {
        Choices::with(n, true)
    }

    fn with(n: usize, by_caller: bool) -> Arc<Choices> {
        Arc::new(Choices {
            left: AtomicUsize::new(n),
            outcome: Mutex::new(None),
            by_caller,
        })
    }

    /// One choice ended with `o`; the request's outcome when it was the last. The first
    /// failure is what the client saw (the others are cancelled because of it); a request
    /// any of whose choices ran out of tokens finished by length.
    fn end(&self, o: Outcome) -> Option<Outcome> {
        let mut acc = self.outcome.lock();
        *acc = Some(match (*acc, o) {
            (None, o) => o,
            (Some(Outcome::Failed(k)), _) | (Some(_), Outcome::Failed(k)) => Outcome::Failed(k),
            (Some(Outcome::Length), _) | (_, Outcome::Length) => Outcome::Length,
            _ => Outcome::Stop,
        });
        let last = self.left.fetch_sub(1, Ordering::AcqRel) == 1;
        (last && !self.by_caller).then_some((*acc)?)
    }
}

/// What a choice ending with `o` counts for its request: `o` itself for a request of one
/// choice, the whole request's outcome for the last of several, nothing for the others.
pub fn counted(choices: Option<&Choices>, o: Outcome) -> Option<Outcome> {
    match choices {
        None => Some(o),
        Some(c) => c.end(o),
    }
}

/// One request's measurements, sent when it ends.
#[derive(Debug)]
pub struct RequestRecord {
    pub model: Arc<str>,
    /// How this choice ended (its latencies are kept only if it succeeded).
    pub outcome: Outcome,
    /// The API request's outcome, on the record of its last choice to end: what the
    /// success and failure counters count.
    pub counted: Option<Outcome>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens the runtime prefilled in its first run, if it reported them.
    pub prefilled_tokens: Option<u32>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_of_several_choices_is_counted_once_by_its_first_failure() {
        let c = Choices::new(3);
        let failed = Outcome::Failed(FailKind::RuntimeError);
        assert_eq!(counted(Some(&c), Outcome::Stop), None);
        assert_eq!(counted(Some(&c), failed), None);
        assert_eq!(
            counted(Some(&c), Outcome::Failed(FailKind::Cancelled)),
            Some(failed)
        );
        let c = Choices::new(2);
        assert_eq!(counted(Some(&c), Outcome::Length), None);
        assert_eq!(counted(Some(&c), Outcome::Stop), Some(Outcome::Length));
        assert_eq!(counted(None, Outcome::Stop), Some(Outcome::Stop));
        // Counted by its caller: never here, whether it succeeds or fails.
        let c = Choices::counted_by_caller(2);
        assert_eq!(counted(Some(&c), Outcome::Stop), None);
        assert_eq!(counted(Some(&c), failed), None);
        let c = Choices::counted_by_caller(1);
        assert_eq!(counted(Some(&c), Outcome::Length), None);
    }
}
