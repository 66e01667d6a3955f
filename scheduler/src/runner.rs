//! One run on an instance's handle: the inputs of the sequences placed in its slots, the
//! blocking `rkllm_run`, every step handed to the [`Demux`], and at each step boundary the
//! question whether to cut the run to re-form it ([`reform::decide`]). A cut run returns the
//! sequences still generating, which the instance resumes in its next run.

use crate::affinity::expected_prefill;
use crate::config::CutVia;
use crate::cost::CostModel;
use crate::demux::{Cut, Demux};
use crate::instance::{Instance, InstanceState};
use crate::model::Model;
use crate::queue::joinable_prompts;
use crate::reform::{self, Continuing, QueueView, RunView};
use crate::request::{BatchKey, Failure};
use crate::sequence::Sequence;
use crate::telemetry::FailKind;
use crossbeam_channel::{bounded, Sender};
use parking_lot::Mutex;
use rkllm::{Engine, Flow, Input, RunOutcome, RunParams, Sampling, StepState};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Steps a runtime may go on after a callback returned pause before we conclude it ignores
/// pausing (and stop asking).
const PAUSE_GRACE_STEPS: u32 = 3;

/// What a run left behind.
pub struct RunEnd {
    /// The sequences still generating after a cut, by slot (all `None` otherwise).
    pub continuing: Vec<Option<Sequence>>,
    /// The runtime did not stop when asked to: stop re-forming on this instance.
    pub cut_failed: Option<String>,
}

/// Asks for `rkllm_abort` off the runtime's thread: the callback must not block, and a
/// runtime's abort may wait for its own thread. The target guards against aborting a run
/// other than the one that asked: it is set for the duration of one `rkllm_run`.
pub struct Cutter {
    tx: Sender<u64>,
    target: Arc<Mutex<u64>>,
}

impl Cutter {
    pub fn start(inst: Arc<Instance>, model: String) -> Cutter {
        let (tx, rx) = bounded::<u64>(1);
        let target = Arc::new(Mutex::new(0u64));
        let t = target.clone();
        let spawned = std::thread::Builder::new()
            .name("rkserve-cutter".into())
            .spawn(move || {
                for run in rx {
                    let current = t.lock();
                    if *current != run {
                        continue;
                    }
                    if let Some(a) = inst.abort.lock().as_ref() {
                        if let Err(e) = a.abort() {
                            tracing::warn!(model, "rkllm_abort to re-form the run failed: {e}");
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the abort thread: {e}");
        }
        Cutter { tx, target }
    }

    fn request(&self, run: u64) {
        // Full: an abort is already asked for. Gone: the thread could not start, and the run
        // simply goes on to its natural end.
        let _ = self.tx.try_send(run);
    }
}

/// How the run may be cut, if at all.
pub struct Reforming<'a> {
    pub via: CutVia,
    pub cutter: Option<&'a Cutter>,
    /// This run's number, for the cutter.
    pub run_id: u64,
}

pub struct Run<'a> {
    pub model: &'a Model,
    pub inst: &'a Arc<Instance>,
    pub generation: u64,
    pub key: BatchKey,
    pub sampling: Sampling,
    pub slots: Vec<Option<Sequence>>,
    /// Which slots hold a sequence continuing from an earlier run.
    pub resumed: Vec<bool>,
    pub reform: Option<Reforming<'a>>,
    /// Learns from every run, and prices the cuts.
    pub cost: &'a mut CostModel,
    /// What each slot's KV cache was last given, and the prefix of the prompt-cache file
    /// the handle holds: what a joining request would not prefill again.
    pub slot_texts: &'a [Vec<u8>],
    pub file_prefix: &'a [u8],
}

impl Run<'_> {
    pub fn execute(self, engine: &mut dyn Engine) -> RunEnd {
        let Run {
            model,
            inst,
            generation,
            key,
            sampling,
            slots,
            resumed,
            reform,
            cost,
            slot_texts,
            file_prefix,
        } = self;
        let prices: &CostModel = cost;
        let cfg = &model.cfg;
        let started = Instant::now();
        let n_batch = slots.len();
        let occupied = slots.iter().flatten().count();
        let inputs: Vec<Input> = slots
            .iter()
            .map(|s| {
                s.as_ref()
                    .map_or_else(|| Input::tokens(Vec::new()), Sequence::input)
            })
            .collect();
        // The runtime's work follows the requests: the run lasts as long as the largest
        // remaining need of its members.
        let max_new = slots
            .iter()
            .flatten()
            .map(|s| s.max_tokens.saturating_sub(s.generated).max(1))
            .max()
            .unwrap_or(1);
        let params = RunParams {
            sampling: Some(sampling),
            max_new_tokens: Some(max_new.min(i32::MAX as u32) as i32),
            ..RunParams::default()
        };
        let demux = Arc::new(Mutex::new(
            Demux::new(slots, resumed, started, cfg.context_len)
                .with_telemetry(model.queue.tel.clone()),
        ));
        inst.touch();
        *inst.run.lock() = Some(demux.clone());
        *inst.state.lock() = InstanceState::Running { slots: occupied };
        inst.finishing.store(false, Ordering::Release);
        if model.instances.len() > 1 {
            // Requests the others left to this instance while it was idle are theirs now.
            model.queue.arrived.notify_all();
        }

        let (d, i) = (demux.clone(), inst.clone());
        let unloading = &model.unloading;
        let unloaded = Failure::new(
            FailKind::Unavailable,
            format!("model '{}' was unloaded during the run", cfg.name),
        );
        let queue = &model.queue;
        let starvation = cfg.starvation_bound;
        // Buffers for the decision, sized once: the callback does not allocate.
        let mut continuing: Vec<Continuing> = Vec::with_capacity(n_batch);
        let mut joining: Vec<usize> = Vec::with_capacity(n_batch);
        let reform_ref = reform.as_ref();
        if let Some(r) = reform_ref {
            if let Some(c) = r.cutter {
                *c.target.lock() = r.run_id;
            }
        }
        let result = engine.run(&inputs, &params, &mut move |step| {
            if i.current(generation) {
                i.touch();
            }
            let mut d = d.lock();
            // The FINISH that follows the unload's abort must not read as a natural end.
            if unloading.load(Ordering::Acquire) {
                d.fail_all(&unloaded);
                return Flow::Pause;
            }
            let now = Instant::now();
            let flow = d.step(step, now);
            if d.open() == 0 {
                i.finishing.store(true, Ordering::Release);
            }
            let Some(r) = reform_ref else { return flow };
            if flow != Flow::Continue
                || d.cutting().is_some()
                || step.state() != StepState::Normal
                || d.mid_char()
            {
                return flow;
            }
            continuing.clear();
            continuing.extend(d.sequences().map(|s| Continuing {
                context_tokens: s.context_tokens(),
                generated: s.generated,
                budget: s.max_tokens.saturating_sub(s.generated),
            }));
            let free = n_batch - continuing.len();
            joining.clear();
            // A queue someone holds is looked at again next step: never wait here.
            if let Some(w) = queue.waiting.try_lock() {
                // The learned resume cost says how much of a slot's prefix the runtime reuses.
                let own_reuse = 1.0 - prices.resume_fraction();
                let mut free_slots = d.free_slots();
                let prefill = |r: &crate::request::Request| {
                    expected_prefill(
                        r.prompt.as_bytes(),
                        r.prompt_tokens,
                        slot_texts,
                        &mut free_slots,
                        file_prefix,
                        own_reuse,
                    )
                };
                joinable_prompts(&w, key, free, starvation, now, prefill, &mut joining);
            }
            let verdict = reform::decide(
                &RunView {
                    n_batch,
                    continuing: &continuing,
                    dead: d.dead(),
                },
                &QueueView {
                    prompt_tokens: &joining,
                },
                prices,
            );
            if !verdict.reform {
                return flow;
            }
            match r.via {
                CutVia::Pause => {
                    d.cut(Cut::Pause, now);
                    Flow::Pause
                }
                CutVia::Abort => {
                    d.cut(Cut::Abort, now);
                    if let Some(c) = r.cutter {
                        c.request(r.run_id);
                    }
                    flow
                }
            }
        });
        if let Some(c) = reform.as_ref().and_then(|r| r.cutter) {
            // Waits for an abort in progress, so none lands on the next run.
            *c.target.lock() = 0;
        }

        let mut d = demux.lock();
        let now = Instant::now();
        let cut = d.cutting();
        let mut cut_failed = None;
        match result {
            Ok(RunOutcome::Failed) => d.fail_all(&Failure::new(
                FailKind::RuntimeError,
                "the runtime reported an error during the run",
            )),
            Ok(_) => {
                if let Some((how, _)) = cut {
                    if how == Cut::Pause && d.steps_since_cut() > PAUSE_GRACE_STEPS {
                        cut_failed = Some(format!(
                            "the runtime went on for {} steps after the callback returned pause",
                            d.steps_since_cut()
                        ));
                    }
                } else {
                    d.finish(now);
                }
            }
            Err(e) => {
                tracing::warn!(model = %cfg.name, instance = inst.index, "the run failed: {e}");
                d.fail_all(&Failure::new(
                    FailKind::RuntimeError,
                    format!("the run failed: {e}"),
                ))
            }
        }
        let continuing = d.into_continuing();
        learn(
            cost,
            &d,
            cut.map(|(_, at)| now.saturating_duration_since(at)),
        );
        if let Some(r) = d.run_record(started.elapsed(), occupied) {
            model.queue.tel.run(r);
        }
        drop(d);
        if inst.current(generation) {
            inst.run.lock().take();
            *inst.state.lock() = InstanceState::Idle;
        }
        RunEnd {
            continuing,
            cut_failed,
        }
    }
}

/// Feeds what the run showed into the cost model. Perf stats that are all zero mean the
/// runtime does not report prefill per step: then nothing is learned about resuming.
fn learn(cost: &mut CostModel, d: &Demux, cut: Option<Duration>) {
    let o = &d.observed;
    for &(slots, ms) in &o.steps {
        cost.observe_step(slots, ms);
    }
    if let Some((tokens, ms)) = o.prefill {
        if tokens > 0 {
            cost.observe_prefill(tokens, ms);
            for &(prefilled, context) in &o.resumes {
                cost.observe_resume(prefilled, context);
            }
        }
    }
    for &r in &o.replies {
        cost.observe_reply(r);
    }
    if let Some(c) = cut {
        cost.observe_cut(c.as_secs_f64() * 1000.0);
    }
}
