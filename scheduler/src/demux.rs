//! One run's demultiplexer: slot i of every step goes to the request in slot i. It runs in
//! the runtime's callback, so it never blocks (unbounded channels) and allocates only the
//! text it sends.

use crate::request::{Event, Failure, FinishReason, Timings};
use crate::stop::StopMatcher;
use crate::telemetry::{FailKind, ModelTelemetry, Outcome, RequestRecord, RunRecord};
use rkllm::{Flow, Step, StepState};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// A request placed in a slot of a run.
#[derive(Debug)]
pub struct Member {
    pub id: u64,
    pub tx: UnboundedSender<Event>,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub prompt_tokens: usize,
    pub arrival: Instant,
}

struct Slot {
    tx: UnboundedSender<Event>,
    stop: StopMatcher,
    max_tokens: u32,
    prompt_tokens: usize,
    arrival: Instant,
    generated: u32,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    /// Gaps between tokens in µs, kept only when telemetry is on (allocated up front).
    itl_us: Vec<u32>,
    open: bool,
}

pub struct Demux {
    slots: Vec<Slot>,
    started: Instant,
    context_len: usize,
    tel: Option<ModelTelemetry>,
    /// Counted as tokens come, so tokens/s is smooth even for long replies.
    generated_tokens: Option<metrics::Counter>,
    steps: u64,
    slot_steps: u64,
    memory_mb: Option<f32>,
}

impl Demux {
    pub fn new(members: Vec<Member>, started: Instant, context_len: usize) -> Demux {
        Demux {
            slots: members
                .into_iter()
                .map(|m| Slot {
                    tx: m.tx,
                    stop: StopMatcher::new(m.stop),
                    max_tokens: m.max_tokens,
                    prompt_tokens: m.prompt_tokens,
                    arrival: m.arrival,
                    generated: 0,
                    first_at: None,
                    last_at: None,
                    itl_us: Vec::new(),
                    open: true,
                })
                .collect(),
            started,
            context_len,
            tel: None,
            generated_tokens: None,
            steps: 0,
            slot_steps: 0,
            memory_mb: None,
        }
    }

    /// Records every request's latencies and the run's figures through `tel`.
    pub fn with_telemetry(mut self, tel: ModelTelemetry) -> Demux {
        for s in &mut self.slots {
            // Room for every gap up front: the callback should not have to allocate.
            s.itl_us = Vec::with_capacity(s.max_tokens.min(4096) as usize);
        }
        let (prompt, generated) = tel.token_counters();
        // The whole batch is prefilled when the run starts.
        prompt.increment(self.slots.iter().map(|s| s.prompt_tokens as u64).sum());
        self.generated_tokens = Some(generated);
        self.tel = Some(tel);
        self
    }

    /// The run's figures, once it is over.
    pub fn run_record(&self, busy: std::time::Duration) -> Option<RunRecord> {
        let tel = self.tel.as_ref()?;
        Some(RunRecord {
            model: tel.model.clone(),
            slots: self.slots.len(),
            busy,
            steps: self.steps,
            slot_steps: self.slot_steps,
            memory_bytes: self
                .memory_mb
                .map(|mb| (mb as f64 * 1024.0 * 1024.0) as u64),
        })
    }

    /// KV cells the open requests occupy: their prompts and the tokens generated so far.
    pub fn kv_tokens(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.open)
            .map(|s| s.prompt_tokens + s.generated as usize)
            .sum()
    }

    /// Requests still receiving output.
    pub fn open(&self) -> usize {
        self.slots.iter().filter(|s| s.open).count()
    }

    /// Handles one step. Returns [`Flow::Pause`] once no slot needs more output, so the run
    /// stops and the instance takes new work at once.
    pub fn step(&mut self, step: &Step<'_>, now: Instant) -> Flow {
        // Runtimes report memory in some steps only (the last, on ours).
        if let Some(mb) = step
            .slots()
            .map(|r| r.perf.memory_usage_mb)
            .find(|&m| m > 0.0)
        {
            self.memory_mb = Some(mb);
        }
        match step.state() {
            StepState::Finish => self.end_all(|s, ctx| s.natural_end(ctx), now),
            StepState::Error => self.fail_all(&Failure::new(
                FailKind::RuntimeError,
                "the runtime reported an error during the run",
            )),
            StepState::Normal | StepState::Waiting => {
                let (ctx, tel) = (self.context_len, self.tel.as_ref());
                self.steps += 1;
                let mut tokens = 0;
                for (i, slot) in self.slots.iter_mut().enumerate().take(step.len()) {
                    if !slot.open {
                        continue;
                    }
                    self.slot_steps += 1;
                    if slot.tx.is_closed() {
                        // The client is gone: discard this slot's output from now on.
                        slot.open = false;
                        slot.record(tel, Outcome::Failed(FailKind::Cancelled), now, self.started);
                        continue;
                    }
                    let r = step.slot(i);
                    // The token that completes a stop sequence was generated: it counts.
                    if r.token_id >= 0 {
                        slot.generated += 1;
                        tokens += 1;
                        if let Some(last) = slot.last_at {
                            if slot.itl_us.len() < slot.itl_us.capacity() {
                                let gap = now.saturating_duration_since(last).as_micros();
                                slot.itl_us.push(gap.min(u32::MAX as u128) as u32);
                            }
                        }
                        slot.first_at.get_or_insert(now);
                        slot.last_at = Some(now);
                    }
                    if let Some(bytes) = r.text {
                        let released = slot.stop.push(&String::from_utf8_lossy(bytes));
                        slot.send_text(released.text, now);
                        if released.stopped {
                            slot.end(FinishReason::Stop, self.started, tel, now);
                            continue;
                        }
                    }
                    if r.token_id < 0 {
                        slot.flush(now);
                        let reason = slot.natural_end(ctx);
                        slot.end(reason, self.started, tel, now);
                    } else if slot.generated >= slot.max_tokens {
                        slot.flush(now);
                        slot.end(FinishReason::Length, self.started, tel, now);
                    }
                }
                if let Some(c) = &self.generated_tokens {
                    c.increment(tokens);
                }
            }
        }
        if self.open() == 0 {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }

    /// Ends every open request with this failure (a failed, stuck or unloaded run). A slot
    /// already ended keeps its first ending: each request ends, and is counted, once.
    pub fn fail_all(&mut self, failure: &Failure) {
        let (started, tel, now) = (self.started, self.tel.as_ref(), Instant::now());
        for s in self.slots.iter_mut().filter(|s| s.open) {
            s.end(FinishReason::Error(failure.clone()), started, tel, now);
        }
    }

    fn end_all(&mut self, reason: impl Fn(&Slot, usize) -> FinishReason, now: Instant) {
        let (started, ctx, tel) = (self.started, self.context_len, self.tel.as_ref());
        for s in self.slots.iter_mut().filter(|s| s.open) {
            s.flush(now);
            let r = reason(s, ctx);
            s.end(r, started, tel, now);
        }
    }

    /// The run ended without reporting every slot's end (FINISH after an abort or pause).
    pub fn finish(&mut self, now: Instant) {
        self.end_all(|s, ctx| s.natural_end(ctx), now);
    }
}

impl Slot {
    fn send_text(&mut self, text: String, now: Instant) {
        if !text.is_empty() {
            // A closed channel means the client left; the next step notices.
            let _ = self.tx.send(Event::Text { text, at: now });
        }
    }

    fn flush(&mut self, now: Instant) {
        let held = self.stop.finish();
        self.send_text(held, now);
    }

    /// Why a slot the runtime finished ended: a full context counts as length.
    fn natural_end(&self, context_len: usize) -> FinishReason {
        if self.prompt_tokens + self.generated as usize + 1 >= context_len {
            FinishReason::Length
        } else {
            FinishReason::Stop
        }
    }

    fn timings(&self, started: Instant) -> Timings {
        Timings {
            queue: started.saturating_duration_since(self.arrival),
            ttft: self
                .first_at
                .map(|t| t.saturating_duration_since(self.arrival)),
            decode: match (self.first_at, self.last_at) {
                (Some(a), Some(b)) => b.saturating_duration_since(a),
                _ => Default::default(),
            },
        }
    }

    /// Sends this request's measurements to the telemetry thread.
    fn record(
        &mut self,
        tel: Option<&ModelTelemetry>,
        outcome: Outcome,
        now: Instant,
        started: Instant,
    ) {
        let Some(tel) = tel else { return };
        let t = self.timings(started);
        tel.request(RequestRecord {
            model: tel.model.clone(),
            outcome,
            prompt_tokens: self.prompt_tokens as u32,
            completion_tokens: self.generated,
            queue: t.queue,
            ttft: t.ttft,
            prefill: self.first_at.map(|f| f.saturating_duration_since(started)),
            decode: t.decode,
            e2e: now.saturating_duration_since(self.arrival),
            itl_us: std::mem::take(&mut self.itl_us),
        });
    }

    fn end(
        &mut self,
        reason: FinishReason,
        started: Instant,
        tel: Option<&ModelTelemetry>,
        now: Instant,
    ) {
        self.open = false;
        let timings = self.timings(started);
        self.record(tel, Outcome::of(&reason), now, started);
        let _ = self.tx.send(Event::End {
            reason,
            prompt_tokens: self.prompt_tokens as u32,
            completion_tokens: self.generated,
            timings,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkllm::abi::RKLLMResult;
    use std::ffi::CString;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn member(max_tokens: u32, stop: &[&str]) -> (Member, UnboundedReceiver<Event>) {
        let (tx, rx) = unbounded_channel();
        (
            Member {
                id: 0,
                tx,
                max_tokens,
                stop: stop.iter().map(|s| s.to_string()).collect(),
                prompt_tokens: 10,
                arrival: Instant::now(),
            },
            rx,
        )
    }

    /// Feeds steps given as per-slot (text, token_id).
    fn feed(d: &mut Demux, steps: &[&[(Option<&str>, i32)]]) -> Vec<Flow> {
        steps
            .iter()
            .map(|slots| {
                let texts: Vec<Option<CString>> = slots
                    .iter()
                    .map(|(t, _)| t.map(|t| CString::new(t).unwrap()))
                    .collect();
                let results: Vec<RKLLMResult> = slots
                    .iter()
                    .zip(&texts)
                    .map(|((_, id), t)| RKLLMResult {
                        text: t.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                        token_id: *id,
                        ..RKLLMResult::EMPTY
                    })
                    .collect();
                d.step(
                    &Step::from_results(StepState::Normal, &results),
                    Instant::now(),
                )
            })
            .collect()
    }

    fn drain(rx: &mut UnboundedReceiver<Event>) -> (String, Option<FinishReason>, u32) {
        let (mut text, mut reason, mut n) = (String::new(), None, 0);
        while let Ok(e) = rx.try_recv() {
            match e {
                Event::Text { text: t, .. } => text.push_str(&t),
                Event::End {
                    reason: r,
                    completion_tokens,
                    ..
                } => {
                    reason = Some(r);
                    n = completion_tokens;
                }
            }
        }
        (text, reason, n)
    }

    #[test]
    fn each_slot_gets_its_own_text_and_its_own_max_tokens() {
        let (a, mut ra) = member(2, &[]);
        let (b, mut rb) = member(10, &[]);
        let mut d = Demux::new(vec![a, b], Instant::now(), 4096);
        let flows = feed(
            &mut d,
            &[
                &[(Some("A1"), 5), (Some("B1"), 6)],
                &[(Some("A2"), 5), (Some("B2"), 6)],
                &[(Some("A3"), 5), (Some("B3"), 6)],
                &[(None, -1), (None, -1)],
            ],
        );
        assert_eq!(
            drain(&mut ra),
            ("A1A2".into(), Some(FinishReason::Length), 2)
        );
        assert_eq!(
            drain(&mut rb),
            ("B1B2B3".into(), Some(FinishReason::Stop), 3)
        );
        assert_eq!(flows.last(), Some(&Flow::Pause));
    }

    #[test]
    fn a_stop_sequence_split_across_tokens_is_withheld() {
        let (a, mut ra) = member(100, &["END"]);
        let mut d = Demux::new(vec![a], Instant::now(), 4096);
        let flows = feed(
            &mut d,
            &[
                &[(Some("done E"), 1)],
                &[(Some("N"), 2)],
                &[(Some("D more"), 3)],
            ],
        );
        assert_eq!(
            drain(&mut ra),
            ("done ".into(), Some(FinishReason::Stop), 3)
        );
        assert_eq!(flows, vec![Flow::Continue, Flow::Continue, Flow::Pause]);
    }

    #[test]
    fn a_dropped_stream_detaches_its_slot_and_the_last_one_stops_the_run() {
        let (a, ra) = member(100, &[]);
        let (b, mut rb) = member(100, &[]);
        let mut d = Demux::new(vec![a, b], Instant::now(), 4096);
        drop(ra);
        assert_eq!(
            feed(&mut d, &[&[(Some("x"), 1), (Some("y"), 1)]]),
            vec![Flow::Continue]
        );
        assert_eq!(d.open(), 1);
        drop(rb.try_recv());
        rb.close();
        assert_eq!(
            feed(&mut d, &[&[(Some("x"), 1), (Some("y"), 1)]]),
            vec![Flow::Pause]
        );
    }

    #[test]
    fn errors_end_every_open_request() {
        let (a, mut ra) = member(100, &[]);
        let mut d = Demux::new(vec![a], Instant::now(), 4096);
        feed(&mut d, &[&[(Some("x"), 1)]]);
        let boom = Failure::new(FailKind::RuntimeError, "boom");
        d.fail_all(&boom);
        d.fail_all(&Failure::new(FailKind::Timeout, "again"));
        assert_eq!(drain(&mut ra).1, Some(FinishReason::Error(boom)));
    }

    #[test]
    fn the_end_of_the_context_is_a_length_finish() {
        let (a, mut ra) = member(100, &[]);
        let mut d = Demux::new(vec![a], Instant::now(), 13);
        feed(
            &mut d,
            &[&[(Some("x"), 1)], &[(Some("y"), 1)], &[(None, -1)]],
        );
        assert_eq!(drain(&mut ra).1, Some(FinishReason::Length));
    }
}
