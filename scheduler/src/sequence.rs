//! A request from the moment it leaves the queue to its end. It outlives the run it started
//! in: when a run is cut to re-form, what it generated so far (ids and text), its stop
//! matcher's held-back text and its timings go on into the next run, which continues it.

use crate::queue::Pending;
use crate::records::{counted, Choices};
use crate::request::{BatchKey, Event, FinishReason, Request, SharedPrefix, Timings};
use crate::stop::StopMatcher;
use crate::telemetry::{ModelTelemetry, Outcome, RequestRecord};
use rkllm::{Input, Sampling};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug)]
pub struct Sequence {
    pub id: u64,
    pub key: BatchKey,
    pub sampling: Sampling,
    tx: UnboundedSender<Event>,
    choices: Option<Arc<Choices>>,
    /// The span it was submitted in: the server's request id.
    span: tracing::Span,
    stop: StopMatcher,
    pub max_tokens: u32,
    prompt: String,
    prompt_ids: Option<Vec<i32>>,
    pub prefix: Option<SharedPrefix>,
    pub prompt_tokens: usize,
    arrival: Instant,
    /// When its first run started.
    started: Instant,
    pub generated: u32,
    /// What it generated, kept to continue it after a cut (empty when runs are never cut).
    generated_ids: Vec<i32>,
    generated_text: Vec<u8>,
    keep_output: bool,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    /// Gaps between tokens in µs, kept only when telemetry is on (allocated up front).
    itl_us: Vec<u32>,
    /// Runs it was resumed in, and the prompt tokens those resumptions prefilled.
    pub resumes: u32,
    pub resume_prefill_tokens: u32,
    /// Prompt tokens the runtime prefilled for it in its first run (its perf stats).
    pub prefilled_tokens: Option<u32>,
    /// Of its prompt's tokens, those its slot held when it was placed there (estimated from
    /// the bytes they share), where nothing else (a loaded prompt cache) could supply them.
    pub held_tokens: usize,
    /// Its last token brought no text: the runtime may hold part of a UTF-8 character, and a
    /// cut now would lose it.
    pub mid_char: bool,
}

impl Sequence {
    /// `keep_output`: record what it generates, so that it can be resumed after a cut.
    pub(crate) fn start(
        p: Pending,
        started: Instant,
        keep_output: bool,
        telemetry: bool,
    ) -> Sequence {
        let mut s = Sequence::new(p.id, p.req, p.tx, started, keep_output, telemetry);
        s.choices = p.choices;
        s.span = p.span;
        s
    }

    /// A request whose first run starts at `started`; its events go to `tx`.
    pub fn new(
        id: u64,
        req: Request,
        tx: UnboundedSender<Event>,
        started: Instant,
        keep_output: bool,
        telemetry: bool,
    ) -> Sequence {
        let reserve = req.max_tokens.min(4096) as usize;
        Sequence {
            id,
            key: BatchKey::of(&req.sampling),
            sampling: req.sampling,
            tx,
            choices: None,
            span: tracing::Span::none(),
            stop: StopMatcher::new(req.stop),
            max_tokens: req.max_tokens,
            prompt_tokens: req.prompt_tokens,
            prompt: req.prompt,
            prompt_ids: req.prompt_ids,
            prefix: req.prefix,
            arrival: req.arrival,
            started,
            generated: 0,
            // Room up front: the runtime's callback should not have to allocate.
            generated_ids: Vec::with_capacity(if keep_output { reserve } else { 0 }),
            generated_text: Vec::with_capacity(if keep_output { reserve * 4 } else { 0 }),
            keep_output,
            first_at: None,
            last_at: None,
            itl_us: Vec::with_capacity(if telemetry { reserve } else { 0 }),
            resumes: 0,
            resume_prefill_tokens: 0,
            prefilled_tokens: None,
            held_tokens: 0,
            mid_char: false,
        }
    }

    /// What the runtime is given for this sequence: its prompt, and after a cut the prompt
    /// followed by everything it generated. Token ids where the server tokenized the prompt
    /// exactly (GGUF), so the runtime sees the very tokens it produced; text otherwise.
    pub fn input(&self) -> Input {
        match &self.prompt_ids {
            Some(ids) => {
                let mut all = Vec::with_capacity(ids.len() + self.generated_ids.len());
                all.extend_from_slice(ids);
                all.extend_from_slice(&self.generated_ids);
                Input::tokens(all)
            }
            None if self.generated_text.is_empty() => Input::prompt(self.prompt.clone()),
            None => {
                let mut text = self.prompt.clone();
                text.push_str(&String::from_utf8_lossy(&self.generated_text));
                Input::prompt(text)
            }
        }
    }

    /// Its shared prefix as the runtime is given it (ids where the prompt has them, else
    /// text), with the prefix's key.
    pub fn prefix_input(&self) -> Option<(Input, String)> {
        let p = self.prefix?;
        match &self.prompt_ids {
            Some(ids) => {
                let ids = ids.get(..p.ids).filter(|i| !i.is_empty())?;
                Some((
                    Input::tokens(ids.to_vec()),
                    crate::prompt_store::prefix_key(None, Some(ids)),
                ))
            }
            None => {
                let text = self.prompt.get(..p.bytes).filter(|t| !t.is_empty())?;
                Some((
                    Input::prompt(text.to_string()),
                    crate::prompt_store::prefix_key(Some(text.as_bytes()), None),
                ))
            }
        }
    }

    /// The text its slot's KV cache holds after it: for choosing slots by shared prefix.
    pub fn context_text(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(self.prompt.len() + self.generated_text.len());
        t.extend_from_slice(self.prompt.as_bytes());
        t.extend_from_slice(&self.generated_text);
        t
    }

    pub fn prompt_bytes(&self) -> &[u8] {
        self.prompt.as_bytes()
    }

    pub fn context_tokens(&self) -> usize {
        self.prompt_tokens + self.generated as usize
    }

    pub fn client_gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// A token the runtime produced: `text` is its piece (whole characters), if any.
    /// Returns whether a stop sequence ended the request.
    pub fn token(&mut self, token_id: i32, text: Option<&[u8]>, now: Instant) -> bool {
        self.generated += 1;
        if self.keep_output {
            self.generated_ids.push(token_id);
            if let Some(t) = text {
                self.generated_text.extend_from_slice(t);
            }
        }
        self.mid_char = text.is_none_or(|t| t.is_empty());
        if let Some(last) = self.last_at {
            if self.itl_us.len() < self.itl_us.capacity() {
                let gap = now.saturating_duration_since(last).as_micros();
                self.itl_us.push(gap.min(u32::MAX as u128) as u32);
            }
        }
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        self.text(text, now)
    }

    /// Text without a token (some runtimes send a last piece with the end).
    pub fn text(&mut self, text: Option<&[u8]>, now: Instant) -> bool {
        let Some(bytes) = text else { return false };
        let released = self.stop.push(&String::from_utf8_lossy(bytes));
        self.send_text(released.text, now);
        released.stopped
    }

    fn send_text(&mut self, text: String, now: Instant) {
        if !text.is_empty() {
            // A closed channel means the client left; the next step notices.
            let _ = self.tx.send(Event::Text { text, at: now });
        }
    }

    /// Sends what the stop matcher held back: the stream ended without a stop sequence.
    pub fn flush(&mut self, now: Instant) {
        let held = self.stop.finish();
        self.send_text(held, now);
    }

    /// Why a sequence the runtime finished ended: a full context counts as length.
    pub fn natural_end(&self, context_len: usize) -> FinishReason {
        if self.prompt_tokens + self.generated as usize + 1 >= context_len {
            FinishReason::Length
        } else {
            FinishReason::Stop
        }
    }

    fn timings(&self) -> Timings {
        Timings {
            queue: self.started.saturating_duration_since(self.arrival),
            ttft: self
                .first_at
                .map(|t| t.saturating_duration_since(self.arrival)),
            decode: match (self.first_at, self.last_at) {
                (Some(a), Some(b)) => b.saturating_duration_since(a),
                _ => Default::default(),
            },
            resumes: self.resumes,
            resume_prefill_tokens: self.resume_prefill_tokens,
            prefilled_tokens: self.prefilled_tokens,
        }
    }

    /// Sends this request's measurements to the telemetry thread.
    pub fn record(&mut self, tel: Option<&ModelTelemetry>, outcome: Outcome, now: Instant) {
        let Some(tel) = tel else { return };
        let t = self.timings();
        tel.request(RequestRecord {
            model: tel.model.clone(),
            outcome,
            counted: counted(self.choices.as_deref(), outcome),
            prompt_tokens: self.prompt_tokens as u32,
            completion_tokens: self.generated,
            prefilled_tokens: self.prefilled_tokens,
            queue: t.queue,
            ttft: t.ttft,
            prefill: self
                .first_at
                .map(|f| f.saturating_duration_since(self.started)),
            decode: t.decode,
            e2e: now.saturating_duration_since(self.arrival),
            itl_us: std::mem::take(&mut self.itl_us),
        });
    }

    /// Ends the request: records it and sends its End event. Each request ends once, since
    /// ending consumes it.
    pub fn end(mut self, reason: FinishReason, tel: Option<&ModelTelemetry>, now: Instant) {
        let timings = self.timings();
        self.record(tel, Outcome::of(&reason), now);
        self.span.in_scope(|| match &reason {
            FinishReason::Error(f) => {
                tracing::info!(request = self.id, kind = %f.kind, "{}", f.message)
            }
            done => tracing::debug!(
                request = self.id,
                tokens = self.generated,
                "finished: {done:?}"
            ),
        });
        let _ = self.tx.send(Event::End {
            reason,
            prompt_tokens: self.prompt_tokens as u32,
            completion_tokens: self.generated,
            timings,
        });
    }
}
