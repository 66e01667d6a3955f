//! One run's demultiplexer: slot i of every step goes to the sequence in slot i. It runs in
//! the runtime's callback, so it never blocks (unbounded channels) and allocates only the
//! text it sends.
//!
//! A run may be cut to re-form ([`Demux::cut`]): the sequences still generating then survive
//! the run's end ([`Demux::into_continuing`]) instead of ending with it, and go on in the
//! next run in the same slots.

use crate::request::{Failure, FinishReason};
use crate::sequence::Sequence;
use crate::telemetry::{FailKind, ModelTelemetry, Outcome, RunRecord};
use rkllm::{Flow, Step, StepState};
use std::time::Instant;

/// How the run is being ended early, once a re-form was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The callback returns 1 (pause) from the next step on.
    Pause,
    /// `rkllm_abort` was asked for; steps may still come until it takes effect.
    Abort,
}

pub struct Demux {
    slots: Vec<Option<Sequence>>,
    /// Slots the runtime is still decoding (given an input, not yet reported finished),
    /// whether or not a request still wants them.
    decoding: Vec<bool>,
    /// Slots holding a resumed sequence whose first step of this run has not come yet.
    resumed: Vec<bool>,
    started: Instant,
    context_len: usize,
    tel: Option<ModelTelemetry>,
    /// Counted as tokens come, so tokens/s is smooth even for long replies.
    generated_tokens: Option<metrics::Counter>,
    steps: u64,
    slot_steps: u64,
    dead_slot_steps: u64,
    /// Tokens resumed sequences prefilled again (the runtime's perf stats).
    resumed_prefill: u64,
    memory_mb: Option<f32>,
    cut: Option<(Cut, Instant)>,
    /// Steps seen since the cut was decided (a runtime that ignores pause keeps going).
    steps_since_cut: u32,
    /// When the previous step arrived, and how many slots the runtime decoded for it.
    last_step: Option<(Instant, usize)>,
    /// Per-run figures the cost model learns from: (slots decoded, ms) of each step, and the
    /// prefill seen at the first step.
    pub observed: Observed,
}

/// What a run showed about the runtime's costs, for the instance's cost model.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Decode steps: (slots decoded, milliseconds), most recent last; bounded.
    pub steps: Vec<(usize, f64)>,
    /// Prompt tokens prefilled at the run's start (from perf stats) and how long it took.
    pub prefill: Option<(usize, f64)>,
    /// Resumed sequences, and new ones placed where their slot held part of their prompt:
    /// (tokens of what was held prefilled again, tokens held).
    pub resumes: Vec<(usize, usize)>,
    /// Replies that ended by themselves, in tokens.
    pub replies: Vec<u32>,
}

/// Steps kept per run for the cost model; a run of thousands of steps needs no more.
const OBSERVED_STEPS: usize = 64;

impl Demux {
    /// `slots` has one entry per runtime slot (`n_batch`); `resumed` marks the sequences
    /// continuing from an earlier run.
    pub fn new(
        slots: Vec<Option<Sequence>>,
        resumed: Vec<bool>,
        started: Instant,
        context_len: usize,
    ) -> Demux {
        let decoding = slots.iter().map(Option::is_some).collect();
        let n = slots.len();
        Demux {
            slots,
            decoding,
            resumed,
            started,
            context_len,
            tel: None,
            generated_tokens: None,
            steps: 0,
            slot_steps: 0,
            dead_slot_steps: 0,
            resumed_prefill: 0,
            memory_mb: None,
            cut: None,
            steps_since_cut: 0,
            last_step: None,
            observed: Observed {
                steps: Vec::with_capacity(OBSERVED_STEPS),
                resumes: Vec::with_capacity(n),
                replies: Vec::with_capacity(n),
                prefill: None,
            },
        }
    }

    /// Records every request's latencies and the run's figures through `tel`.
    pub fn with_telemetry(mut self, tel: ModelTelemetry) -> Demux {
        let (prompt, generated) = tel.token_counters();
        // New requests' prompts are prefilled when the run starts; resumed ones were counted
        // in their first run.
        let fresh: usize = self
            .slots
            .iter()
            .zip(&self.resumed)
            .filter(|(_, &r)| !r)
            .filter_map(|(s, _)| s.as_ref().map(|s| s.prompt_tokens))
            .sum();
        prompt.increment(fresh as u64);
        self.generated_tokens = Some(generated);
        self.tel = Some(tel);
        self
    }

    /// The run's figures, once it is over.
    pub fn run_record(&self, busy: std::time::Duration, slots: usize) -> Option<RunRecord> {
        let tel = self.tel.as_ref()?;
        Some(RunRecord {
            model: tel.model.clone(),
            slots,
            busy,
            steps: self.steps,
            slot_steps: self.slot_steps,
            dead_slot_steps: self.dead_slot_steps,
            cut: self.cut.is_some(),
            resumed_prefill_tokens: self.resumed_prefill,
            memory_bytes: self
                .memory_mb
                .map(|mb| (mb as f64 * 1024.0 * 1024.0) as u64),
        })
    }

    /// Requests still receiving output.
    pub fn open(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// The sequences still generating, by slot.
    pub fn sequences(&self) -> impl Iterator<Item = &Sequence> {
        self.slots.iter().flatten()
    }

    /// The slots no sequence holds, a bit each (slot `i` is bit `i`).
    pub fn free_slots(&self) -> u64 {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| s.is_none() && *i < 64)
            .fold(0, |m, (i, _)| m | (1 << i))
    }

    /// Slots the runtime still decodes for requests that ended.
    pub fn dead(&self) -> usize {
        self.slots
            .iter()
            .zip(&self.decoding)
            .filter(|(s, &d)| d && s.is_none())
            .count()
    }

    /// KV cells the open requests occupy: their prompts and the tokens generated so far.
    pub fn kv_tokens(&self) -> usize {
        self.sequences().map(Sequence::context_tokens).sum()
    }

    /// Whether a sequence would lose part of a character if the run were cut now.
    pub fn mid_char(&self) -> bool {
        self.sequences().any(|s| s.mid_char)
    }

    /// Marks the run as being cut: from now on its end does not end the open sequences.
    pub fn cut(&mut self, how: Cut, now: Instant) {
        if self.cut.is_none() {
            self.cut = Some((how, now));
            self.steps_since_cut = 0;
        }
    }

    /// The cut under way, and when it was decided.
    pub fn cutting(&self) -> Option<(Cut, Instant)> {
        self.cut
    }

    /// Steps that came after the cut was decided.
    pub fn steps_since_cut(&self) -> u32 {
        self.steps_since_cut
    }

    /// Handles one step. Returns [`Flow::Pause`] once no slot needs more output (the run
    /// stops and the instance takes new work at once), or when the run is cut by pausing.
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
            StepState::Finish if self.cut.is_some() => {}
            StepState::Finish => self.finish(now),
            StepState::Error => self.fail_all(&Failure::new(
                FailKind::RuntimeError,
                "the runtime reported an error during the run",
            )),
            StepState::Normal | StepState::Waiting => self.decode_step(step, now),
        }
        if self.open() == 0 || self.cut.is_some_and(|(c, _)| c == Cut::Pause) {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }

    fn decode_step(&mut self, step: &Step<'_>, now: Instant) {
        let (ctx, tel) = (self.context_len, self.tel.as_ref());
        self.steps += 1;
        if self.cut.is_some() {
            self.steps_since_cut += 1;
        }
        let decoded = self.decoding.iter().filter(|&&d| d).count();
        match self.last_step {
            Some((at, n)) if self.observed.steps.len() < OBSERVED_STEPS => {
                let ms = now.saturating_duration_since(at).as_secs_f64() * 1000.0;
                self.observed.steps.push((n, ms));
            }
            None => {
                // The first step: the prefill of the whole batch came before it. The runtime's
                // own prefill time, where it reports one: the wall clock since the run began
                // also holds whatever the engine did first (on ABI 1.2, re-initialising the
                // handle for the run's sampling loads the model again), and a prefill rate
                // learned from that makes every re-form look ten times too dear.
                let (prefilled, reported) =
                    step.slots()
                        .take(self.slots.len())
                        .fold((0i32, 0f32), |(tokens, ms), r| {
                            (
                                tokens + r.perf.prefill_tokens.max(0),
                                ms.max(r.perf.prefill_time_ms),
                            )
                        });
                let ms = if reported > 0.0 {
                    f64::from(reported)
                } else {
                    now.saturating_duration_since(self.started).as_secs_f64() * 1000.0
                };
                self.observed.prefill = Some((prefilled as usize, ms));
            }
            _ => {}
        }
        self.last_step = Some((now, decoded));
        let mut tokens = 0;
        for i in 0..step.len().min(self.slots.len()) {
            if !self.decoding[i] {
                continue;
            }
            let r = step.slot(i);
            if r.token_id < 0 {
                self.decoding[i] = false;
            }
            let Some(seq) = self.slots[i].as_mut() else {
                if self.decoding[i] {
                    self.dead_slot_steps += 1;
                }
                continue;
            };
            self.slot_steps += 1;
            // A prompt always prefills at least its last token, so 0 means the runtime does
            // not report it at the first step (Rockchip's may fill perf stats only at the end).
            if self.steps == 1 && !self.resumed[i] && r.perf.prefill_tokens > 0 {
                let prefilled = r.perf.prefill_tokens as u32;
                seq.prefilled_tokens = Some(prefilled);
                // What the runtime did with a prefix its slot held is what it does with a
                // resumed context: the same evidence for the cost model, and the only one
                // before any run has been cut.
                if seq.held_tokens > 0 {
                    let own = seq.prompt_tokens.saturating_sub(seq.held_tokens);
                    let again = (prefilled as usize).saturating_sub(own);
                    self.observed.resumes.push((again, seq.held_tokens));
                }
                tracing::debug!(
                    request = seq.id,
                    slot = i,
                    prompt_tokens = seq.prompt_tokens,
                    prefilled,
                    runtime_prefill_ms = r.perf.prefill_time_ms,
                    run_ms = now.saturating_duration_since(self.started).as_secs_f64() * 1000.0,
                    "prefilled"
                );
            }
            if std::mem::take(&mut self.resumed[i]) {
                let prefilled = r.perf.prefill_tokens.max(0) as u32;
                seq.resumes += 1;
                seq.resume_prefill_tokens += prefilled;
                self.resumed_prefill += u64::from(prefilled);
                self.observed
                    .resumes
                    .push((prefilled as usize, seq.context_tokens()));
            }
            if seq.client_gone() {
                // The client is gone: discard this slot's output from now on.
                let mut seq = self.slots[i].take().expect("checked above");
                seq.record(tel, Outcome::Failed(FailKind::Cancelled), now);
                continue;
            }
            // The token that completes a stop sequence was generated: it counts.
            let stopped = if r.token_id >= 0 {
                tokens += 1;
                seq.token(r.token_id, r.text, now)
            } else {
                seq.text(r.text, now)
            };
            let end = if stopped {
                Some(FinishReason::Stop)
            } else if r.token_id < 0 {
                seq.flush(now);
                Some(seq.natural_end(ctx))
            } else if seq.generated >= seq.max_tokens {
                seq.flush(now);
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = end {
                let seq = self.slots[i].take().expect("checked above");
                if reason == FinishReason::Stop {
                    self.observed.replies.push(seq.generated);
                }
                seq.end(reason, tel, now);
            }
        }
        if let Some(c) = &self.generated_tokens {
            c.increment(tokens);
        }
    }

    /// Ends every open request with this failure (a failed, stuck or unloaded run). A
    /// request already ended keeps its first ending: each request ends, and is counted, once.
    pub fn fail_all(&mut self, failure: &Failure) {
        let (tel, now) = (self.tel.as_ref(), Instant::now());
        for seq in self.slots.iter_mut().filter_map(Option::take) {
            seq.end(FinishReason::Error(failure.clone()), tel, now);
        }
    }

    /// Ends every open request as the runtime finished it: a FINISH step, or a run that
    /// ended without reporting every slot's end (after an abort or pause).
    pub fn finish(&mut self, now: Instant) {
        let (ctx, tel) = (self.context_len, self.tel.as_ref());
        for mut seq in self.slots.iter_mut().filter_map(Option::take) {
            seq.flush(now);
            let r = seq.natural_end(ctx);
            seq.end(r, tel, now);
        }
    }

    /// After a cut: the sequences still generating, by slot, to go on in the next run.
    pub fn into_continuing(&mut self) -> Vec<Option<Sequence>> {
        self.slots.iter_mut().map(Option::take).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Pending;
    use crate::request::{BatchKey, Event, Request};
    use rkllm::abi::RKLLMResult;
    use rkllm::Sampling;
    use std::ffi::CString;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn member(max_tokens: u32, stop: &[&str]) -> (Sequence, UnboundedReceiver<Event>) {
        let (tx, rx) = unbounded_channel();
        let p = Pending {
            id: 0,
            key: BatchKey::of(&Sampling::default()),
            tx,
            choices: None,
            span: tracing::Span::none(),
            req: Request {
                model: "m".into(),
                prompt: "p".into(),
                prompt_ids: None,
                prompt_tokens: 10,
                sampling: Sampling::default(),
                max_tokens,
                stop: stop.iter().map(|s| s.to_string()).collect(),
                arrival: Instant::now(),
                prefix: None,
            },
        };
        (Sequence::start(p, Instant::now(), true, false), rx)
    }

    fn demux(seqs: Vec<Sequence>, ctx: usize) -> Demux {
        let n = seqs.len();
        Demux::new(
            seqs.into_iter().map(Some).collect(),
            vec![false; n],
            Instant::now(),
            ctx,
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
                Event::Embedding { .. } => {}
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
        let mut d = demux(vec![a, b], 4096);
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
        // Slot 0 ended at its own max_tokens while the runtime went on decoding it.
        assert_eq!(d.dead_slot_steps, 1);
    }

    #[test]
    fn a_stop_sequence_split_across_tokens_is_withheld() {
        let (a, mut ra) = member(100, &["END"]);
        let mut d = demux(vec![a], 4096);
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
    fn a_stop_sequence_split_across_a_cut_is_withheld_and_the_text_continues() {
        let (a, mut ra) = member(100, &["END"]);
        let mut d = demux(vec![a], 4096);
        feed(&mut d, &[&[(Some("done E"), 1)]]);
        d.cut(Cut::Pause, Instant::now());
        // The FINISH that may follow a cut does not end the request.
        let fin = [RKLLMResult::EMPTY];
        d.step(&Step::from_results(StepState::Finish, &fin), Instant::now());
        let carried = d.into_continuing();
        let seq = carried.into_iter().flatten().next().expect("still open");
        assert_eq!(seq.generated, 1);
        match seq.input().kind {
            rkllm::InputKind::Prompt(t) => assert_eq!(t, "pdone E"),
            other => panic!("{other:?}"),
        }
        let mut d = Demux::new(vec![Some(seq)], vec![true], Instant::now(), 4096);
        feed(&mut d, &[&[(Some("ND more"), 2)]]);
        assert_eq!(
            drain(&mut ra),
            ("done ".into(), Some(FinishReason::Stop), 2)
        );
    }

    #[test]
    fn a_pause_cut_returns_pause_and_an_abort_cut_lets_steps_through() {
        let (a, _ra) = member(100, &[]);
        let (b, _rb) = member(100, &[]);
        let mut d = demux(vec![a, b], 4096);
        d.cut(Cut::Abort, Instant::now());
        assert_eq!(
            feed(&mut d, &[&[(Some("x"), 1), (Some("y"), 1)]]),
            vec![Flow::Continue]
        );
        assert_eq!(d.steps_since_cut(), 1);
        let (c, _rc) = member(100, &[]);
        let mut d = demux(vec![c], 4096);
        d.cut(Cut::Pause, Instant::now());
        assert_eq!(feed(&mut d, &[&[(Some("x"), 1)]]), vec![Flow::Pause]);
        assert_eq!(d.into_continuing().iter().flatten().count(), 1);
    }

    #[test]
    fn a_token_without_text_marks_a_character_in_flight() {
        let (a, _ra) = member(100, &[]);
        let mut d = demux(vec![a], 4096);
        feed(&mut d, &[&[(None, 7)]]);
        assert!(d.mid_char());
        feed(&mut d, &[&[(Some("é"), 8)]]);
        assert!(!d.mid_char());
    }

    #[test]
    fn a_dropped_stream_detaches_its_slot_and_the_last_one_stops_the_run() {
        let (a, ra) = member(100, &[]);
        let (b, mut rb) = member(100, &[]);
        let mut d = demux(vec![a, b], 4096);
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
        let mut d = demux(vec![a], 4096);
        feed(&mut d, &[&[(Some("x"), 1)]]);
        let boom = Failure::new(FailKind::RuntimeError, "boom");
        d.fail_all(&boom);
        d.fail_all(&Failure::new(FailKind::Timeout, "again"));
        assert_eq!(drain(&mut ra).1, Some(FinishReason::Error(boom)));
    }

    #[test]
    fn the_end_of_the_context_is_a_length_finish() {
        let (a, mut ra) = member(100, &[]);
        let mut d = demux(vec![a], 13);
        feed(
            &mut d,
            &[&[(Some("x"), 1)], &[(Some("y"), 1)], &[(None, -1)]],
        );
        assert_eq!(drain(&mut ra).1, Some(FinishReason::Length));
    }
}
