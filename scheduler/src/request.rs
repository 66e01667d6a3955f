//! A request in, a stream of events out.

use rkllm::Sampling;
use std::fmt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One generation request. The prompt is already rendered (chat template applied) and
/// counted by the caller's tokenizer.
#[derive(Debug, Clone)]
pub struct Request {
    pub model: String,
    pub prompt: String,
    /// The prompt's token ids, when the server tokenizes exactly as the runtime does (GGUF):
    /// a run cut to re-form then resumes from the very tokens, not from re-tokenized text.
    pub prompt_ids: Option<Vec<i32>>,
    pub prompt_tokens: usize,
    pub sampling: Sampling,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub arrival: Instant,
    /// The start of the prompt other requests share, if the server knows it.
    pub prefix: Option<SharedPrefix>,
}

/// The start of a prompt that other requests share (a rendered system prompt): what a
/// prompt-cache file holds, so that on a runtime that re-prefills every prompt, requests
/// with this start prefill only the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedPrefix {
    /// Its bytes at the prompt's start.
    pub bytes: usize,
    /// Its ids at the start of `prompt_ids`, where the request has them.
    pub ids: usize,
    /// Its tokens, to tell whether a file for it pays.
    pub tokens: usize,
    /// Cached from its first request: a named cache, made by a client to be reused.
    pub pinned: bool,
}

/// What must be equal for two requests to share a run: everything the runtime applies per
/// run. Floats are compared by their bits, so "equal" means identical settings. The last
/// word is the run's kind: embedding requests never share a run with generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchKey([u32; 10]);

impl BatchKey {
    /// Every embedding request's key: they share runs with each other only.
    pub const EMBEDDING: BatchKey = BatchKey([0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

    pub fn of(s: &Sampling) -> BatchKey {
        BatchKey([
            s.top_k as u32,
            s.top_p.to_bits(),
            s.temperature.to_bits(),
            s.repeat_penalty.to_bits(),
            s.frequency_penalty.to_bits(),
            s.presence_penalty.to_bits(),
            s.mirostat as u32,
            s.mirostat_tau.to_bits(),
            s.mirostat_eta.to_bits(),
            0,
        ])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// End of generation or a stop sequence.
    Stop,
    /// The request's max_tokens, or the end of the context.
    Length,
    /// The request did not complete: what kind of failure (which decides the client's
    /// status and the metric label) and, for people, why.
    Error(Failure),
}

/// Why a request that was accepted did not complete. The kind travels with the message so
/// that nobody downstream has to guess it from the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Arrival to the start of its run.
    pub queue: Duration,
    /// Arrival to the first token.
    pub ttft: Option<Duration>,
    /// First token to the last.
    pub decode: Duration,
    /// Runs it was resumed in after a cut to re-form, and the prompt tokens the runtime
    /// prefilled again for them (from its perf stats).
    pub resumes: u32,
    pub resume_prefill_tokens: u32,
    /// Prompt tokens the runtime prefilled in its first run (from its perf stats); fewer than
    /// the prompt's when it reused a cached prefix. `None` if the runtime reported nothing.
    pub prefilled_tokens: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (whole UTF-8 characters, stop sequences withheld) and when it was produced.
    Text { text: String, at: Instant },
    /// An embedding request's vector (pooled, L2-normalised), just before its End.
    Embedding { vector: Vec<f32>, at: Instant },
    /// Always the last event.
    End {
        reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
        timings: Timings,
    },
}

/// The receiving end of a request. Dropping it cancels the request: its slot's output is
/// discarded from the next step on, and a run whose requests are all gone stops.
#[derive(Debug)]
pub struct RequestStream {
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
    pub id: u64,
}

impl RequestStream {
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// For synchronous callers; never call it inside an async runtime.
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Reads to the end: the whole text and the End event.
    pub fn blocking_collect(mut self) -> (String, Event) {
        let mut text = String::new();
        while let Some(e) = self.blocking_next() {
            match e {
                Event::Text { text: t, .. } => text.push_str(&t),
                Event::Embedding { .. } => {}
                end @ Event::End { .. } => return (text, end),
            }
        }
        unreachable!("a stream always ends with an End event")
    }
}

/// Why an accepted request did not complete, and why a request was refused (the server
/// counts refusals under the same metric, so one panel shows every error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailKind {
    /// Refused: the queue was full (HTTP 429).
    Overloaded,
    /// The client went away before its request finished.
    Cancelled,
    /// Waited in the queue longer than allowed, or the run stalled.
    Timeout,
    /// The runtime failed the run.
    RuntimeError,
    /// Refused: malformed, unknown model, prompt too long (HTTP 4xx); or a prompt the
    /// runtime cannot take (a NUL byte), refused in its slot while the rest of its run goes on.
    BadRequest,
    /// The model could not load or was unloaded while the request waited.
    Unavailable,
}

impl std::fmt::Display for FailKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl FailKind {
    pub const ALL: [FailKind; 6] = [
        FailKind::Overloaded,
        FailKind::Cancelled,
        FailKind::Timeout,
        FailKind::RuntimeError,
        FailKind::BadRequest,
        FailKind::Unavailable,
    ];

    /// The `kind` label of the failure metric; also how the server names it in logs.
    pub fn label(self) -> &'static str {
        match self {
            FailKind::Overloaded => "overloaded",
            FailKind::Cancelled => "cancelled",
            FailKind::Timeout => "timeout",
            FailKind::RuntimeError => "runtime_error",
            FailKind::BadRequest => "bad_request",
            FailKind::Unavailable => "unavailable",
        }
    }
}
