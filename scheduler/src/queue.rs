//! A model's waiting requests, in arrival order, and how an instance takes its next batch.

use crate::policy::{Decision, Freed, Policy, Waiting};
use crate::records::{counted, Choices};
use crate::request::{BatchKey, Event, Failure, FinishReason, Request, Timings};
use crate::telemetry::{FailKind, ModelTelemetry, Outcome, RequestRecord};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug)]
pub struct Pending {
    pub id: u64,
    pub req: Request,
    pub key: BatchKey,
    pub tx: UnboundedSender<Event>,
    /// The other choices of its API request, when it has several.
    pub choices: Option<Arc<Choices>>,
    /// The span it was submitted in (the server's request id), for the lines it causes on
    /// the instance's thread.
    pub span: tracing::Span,
}

impl Pending {
    /// Ends a request that never ran, and records why.
    pub fn fail(self, failure: Failure, tel: &ModelTelemetry) {
        let waited = self.req.arrival.elapsed();
        self.record(failure.kind, waited, tel);
        self.span.in_scope(|| {
            tracing::info!(request = self.id, model = %tel.model, kind = %failure.kind, "{}", failure.message)
        });
        let _ = self.tx.send(Event::End {
            reason: FinishReason::Error(failure),
            prompt_tokens: self.req.prompt_tokens as u32,
            completion_tokens: 0,
            timings: Timings {
                queue: waited,
                ..Timings::default()
            },
        });
    }

    fn record(&self, kind: FailKind, waited: Duration, tel: &ModelTelemetry) {
        tel.request(RequestRecord {
            model: tel.model.clone(),
            outcome: Outcome::Failed(kind),
            counted: counted(self.choices.as_deref(), Outcome::Failed(kind)),
            prompt_tokens: self.req.prompt_tokens as u32,
            completion_tokens: 0,
            prefilled_tokens: None,
            queue: waited,
            ttft: None,
            prefill: None,
            decode: Duration::ZERO,
            e2e: waited,
            itl_us: Vec::new(),
        });
    }
}

pub struct Queue {
    pub waiting: Mutex<VecDeque<Pending>>,
    /// Signalled when a request arrives or the scheduler shuts down.
    pub arrived: Condvar,
    pub tel: ModelTelemetry,
}

impl Queue {
    pub fn new(tel: ModelTelemetry) -> Queue {
        Queue {
            waiting: Mutex::default(),
            arrived: Condvar::new(),
            tel,
        }
    }
}

/// Drops requests whose client left and fails those that waited too long.
pub fn sweep(
    waiting: &mut VecDeque<Pending>,
    max_wait: Duration,
    now: Instant,
    tel: &ModelTelemetry,
) {
    let mut i = 0;
    while i < waiting.len() {
        let p = &waiting[i];
        if p.tx.is_closed() {
            let p = waiting.remove(i).expect("index in range");
            p.record(
                FailKind::Cancelled,
                now.saturating_duration_since(p.req.arrival),
                tel,
            );
        } else if now.saturating_duration_since(p.req.arrival) > max_wait {
            let p = waiting.remove(i).expect("index in range");
            let waited = now.saturating_duration_since(p.req.arrival).as_secs_f64();
            p.fail(Failure::new(FailKind::Timeout, format!(
                "the request waited {waited:.1}s in the queue, longer than the configured maximum of {:.1}s",
                max_wait.as_secs_f64()
            )), tel);
        } else {
            i += 1;
        }
    }
}

/// Whether waiting requests of `key` may join a run that goes on: not while the oldest
/// request, of other sampling, has waited `starvation` (runs of `key` could otherwise go on
/// for ever).
pub fn may_join(
    waiting: &VecDeque<Pending>,
    key: BatchKey,
    starvation: Duration,
    now: Instant,
) -> bool {
    waiting.front().is_none_or(|oldest| {
        oldest.key == key || now.saturating_duration_since(oldest.req.arrival) < starvation
    })
}

/// `prefill` of each waiting request that may join a run of `key` (its prompt tokens the
/// runtime is expected to prefill), oldest first, at most `free`, into `out` (the runtime's
/// callback asks, so it does not allocate).
pub fn joinable_prompts(
    waiting: &VecDeque<Pending>,
    key: BatchKey,
    free: usize,
    starvation: Duration,
    now: Instant,
    mut prefill: impl FnMut(&Request) -> usize,
    out: &mut Vec<usize>,
) {
    if free == 0 || !may_join(waiting, key, starvation, now) {
        return;
    }
    out.extend(
        waiting
            .iter()
            .filter(|p| p.key == key && !p.tx.is_closed())
            .take(free)
            .map(|p| prefill(&p.req)),
    );
}

/// Takes, without waiting, up to `free` requests of `key` to join a run that goes on (oldest
/// first), unless a request of other sampling has waited `starvation`: the run is then left
/// to drain so that one can go next.
pub fn take_joining(
    queue: &Queue,
    key: BatchKey,
    free: usize,
    max_wait: Duration,
    starvation: Duration,
) -> Vec<Pending> {
    let mut waiting = queue.waiting.lock();
    let now = Instant::now();
    sweep(&mut waiting, max_wait, now, &queue.tel);
    let mut out = Vec::new();
    if !may_join(&waiting, key, starvation, now) {
        return out;
    }
    let mut i = 0;
    while i < waiting.len() && out.len() < free {
        if waiting[i].key == key {
            out.push(waiting.remove(i).expect("index in range"));
        } else {
            i += 1;
        }
    }
    out
}

/// Blocks until the policy forms a run (returned in slot order) or `stop()` says to give up.
/// The policy sees no request that `leave` says another idle instance should take (it
/// holds much more of the request's prompt); an instance that starts a run wakes the
/// others, for `leave` may then say otherwise.
#[allow(clippy::too_many_arguments)]
pub fn take_batch(
    queue: &Queue,
    policy: &Policy,
    n_batch: usize,
    max_wait: Duration,
    preferred: Option<BatchKey>,
    freed: Option<Freed>,
    stop: impl Fn() -> bool,
    leave: impl Fn(&Request) -> bool,
) -> Option<(BatchKey, Vec<Pending>)> {
    let mut waiting = queue.waiting.lock();
    let mut view = Vec::with_capacity(waiting.len());
    // Indices into `waiting` of the requests in `view`.
    let mut seen = Vec::with_capacity(waiting.len());
    loop {
        if stop() {
            return None;
        }
        let now = Instant::now();
        sweep(&mut waiting, max_wait, now, &queue.tel);
        view.clear();
        seen.clear();
        for (i, p) in waiting.iter().enumerate() {
            if p.key == BatchKey::EMBEDDING || !leave(&p.req) {
                seen.push(i);
                view.push(Waiting {
                    key: p.key,
                    arrival: p.req.arrival,
                });
            }
        }
        match policy.decide(&view, n_batch, now, preferred, freed) {
            Decision::Run(slots) => {
                let key = view[slots[0]].key;
                let mut members: Vec<Pending> = slots
                    .iter()
                    .rev()
                    .map(|&i| waiting.remove(seen[i]).expect("policy index in range"))
                    .collect();
                members.reverse();
                return Some((key, members));
            }
            Decision::WaitUntil(t) => {
                queue.arrived.wait_until(&mut waiting, t);
            }
            // Woken by arrivals; the timeout lets it notice shutdown and expiries.
            Decision::Idle => {
                queue
                    .arrived
                    .wait_for(&mut waiting, Duration::from_millis(200));
            }
        }
    }
}
