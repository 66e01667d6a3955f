//! An instance's thread: it opens its engine (falling back to a smaller n_batch when init
//! keeps crashing), forms each run (new requests from the queue by the batch policy, or the
//! sequences a cut run left plus the waiting requests that may join them), hands it to
//! `runner.rs`, replaces the engine when its worker dies (with backoff), and destroys it when
//! the model goes.

use crate::affinity;
use crate::config::{CutVia, Reform};
use crate::cost::{CostModel, Priors};
use crate::cpus;
use crate::engine;
use crate::instance::{Instance, InstanceState};
use crate::model::{Model, Shared};
use crate::policy::Freed;
use crate::prompt_cache;
use crate::queue::{take_batch, take_joining, Pending};
use crate::request::{BatchKey, Failure, FinishReason, Request};
use crate::runner::{Cutter, Reforming, Run};
use crate::sequence::Sequence;
use crate::telemetry::{FailKind, ModelTelemetry, Outcome};
use rkllm::Engine;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts (or restarts) the thread of `inst` at its current generation.
pub(crate) fn spawn(model: Arc<Model>, inst: Arc<Instance>, shared: Arc<Shared>) {
    let generation = inst.generation.load(Ordering::Acquire);
    *inst.state.lock() = InstanceState::Starting;
    let name = format!("rkserve-{}-{}", model.cfg.name, inst.index);
    let i2 = inst.clone();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || instance_main(model, i2, shared, generation))
        .expect("spawn an instance thread");
    *inst.thread.lock() = Some(thread);
}

/// Init crashes at one n_batch before the instance tries half of it.
const CRASHES_BEFORE_FALLBACK: u32 = 2;
/// Failed starts in a row after which a restarting instance gives up.
const RESTART_ATTEMPTS: u32 = 6;

/// Opens the engine, falling back to half the n_batch when init keeps crashing the worker
/// (Rockchip's runtime has aborted in init at some n_batch values): 8 → 4 → 2 → 1.
fn open_with_fallback(
    model: &Model,
    inst: &Instance,
    n_batch: &mut u8,
) -> Result<Box<dyn Engine>, String> {
    let cfg = &model.cfg;
    let label = format!("{}#{}", cfg.name, inst.index);
    let mut crashes = 0;
    loop {
        match engine::open(model, *n_batch, &label) {
            Ok(e) => {
                inst.n_batch.store(e.n_batch() as u8, Ordering::Relaxed);
                return Ok(e);
            }
            Err(e @ rkllm::Error::WorkerDied { .. }) => {
                crashes += 1;
                if crashes < CRASHES_BEFORE_FALLBACK {
                    tracing::warn!(model = %cfg.name, instance = inst.index, "init crashed at n_batch {n_batch}: {e}; trying again");
                    continue;
                }
                if *n_batch <= 1 {
                    return Err(format!(
                        "rkllm_init crashed {crashes} times at n_batch 1: {e}"
                    ));
                }
                let next = (*n_batch / 2).max(1);
                let why = format!(
                    "n_batch {next} (configured {}): rkllm_init crashed {crashes} times at n_batch {n_batch}: {e}",
                    cfg.n_batch
                );
                tracing::warn!(model = %cfg.name, instance = inst.index, "falling back to {why}");
                metrics::counter!(crate::telemetry::NBATCH_FALLBACKS, "model" => cfg.name.clone())
                    .increment(1);
                *inst.fallback.lock() = Some(why);
                *n_batch = next;
                crashes = 0;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Shows the engine to the other threads: its stopper (watchdog, unload, cutter) and memory.
fn publish(inst: &Instance, engine: &dyn Engine) {
    *inst.abort.lock() = Some(engine.stopper());
    *inst.memory.lock() = engine.memory();
}

/// Replaces a dead engine: waits (doubling from `restart_backoff`, cut short by `stop`),
/// then opens a new one. `None` when the instance gave up or must stop.
fn restart(
    model: &Model,
    inst: &Instance,
    dead: Box<dyn Engine>,
    n_batch: &mut u8,
    stop: &dyn Fn() -> bool,
) -> Option<Box<dyn Engine>> {
    let cfg = &model.cfg;
    inst.abort.lock().take();
    *inst.memory.lock() = None;
    let _ = dead.destroy(cfg.destroy_timeout);
    *inst.state.lock() = InstanceState::Restarting;
    let mut wait = cfg.restart_backoff;
    for attempt in 1..=RESTART_ATTEMPTS {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if stop() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10).min(wait));
        }
        inst.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::WORKER_RESTARTS, "model" => cfg.name.clone())
            .increment(1);
        match open_with_fallback(model, inst, n_batch) {
            Ok(e) => {
                tracing::info!(model = %cfg.name, instance = inst.index, "instance restarted (attempt {attempt})");
                publish(inst, &*e);
                *inst.state.lock() = InstanceState::Idle;
                return Some(e);
            }
            Err(reason) => {
                tracing::warn!(model = %cfg.name, instance = inst.index, "restart {attempt} failed: {reason}");
                if attempt == RESTART_ATTEMPTS {
                    model.instance_failed(inst, reason);
                    return None;
                }
            }
        }
        wait = (wait * 2).min(cfg.restart_backoff * 32);
    }
    None
}

fn instance_main(model: Arc<Model>, inst: Arc<Instance>, shared: Arc<Shared>, generation: u64) {
    let cfg = &model.cfg;
    if let Err(e) = cpus::pin_current_thread(&model.cpus) {
        tracing::warn!(model = %cfg.name, "cannot pin to CPUs {:?}: {e}", model.cpus);
    }
    let mut nb = cfg.n_batch;
    let mut engine = match open_with_fallback(&model, &inst, &mut nb) {
        Ok(e) => e,
        Err(reason) => {
            model.instance_failed(&inst, reason);
            return;
        }
    };
    publish(&inst, &*engine);
    *inst.state.lock() = InstanceState::Idle;
    model.instance_ready();

    let mut n_batch = engine.n_batch();
    let mut reform = cfg.reform == Reform::Auto;
    let cutter = (reform && cfg.cut_via == CutVia::Abort)
        .then(|| Cutter::start(inst.clone(), cfg.name.clone()));
    // The cut's own time is assumed small until one is measured: a pessimistic prior would
    // never be tested, and a slow abort is paid for once, then known. Resuming keeps the
    // cautious prior (everything re-prefilled): a runtime that reports no perf stats never
    // corrects it, and there caution is what the board needs.
    let mut cost = CostModel::new(Priors::default());
    // What each slot's KV cache was last given: new requests go where their prefix is.
    let mut cached: Vec<Vec<u8>> = vec![Vec::new(); n_batch];
    publish_held(&model, &inst, &cached, None);
    // The key of the prompt-cache file loaded into the handle, and its prefix's text.
    let mut loaded_prefix: Option<(String, Vec<u8>)> = None;
    let mut carry: Vec<Option<Sequence>> = (0..n_batch).map(|_| None).collect();
    let mut freed = None;
    let mut runs = 0u64;
    let stop = || {
        shared.stopping() || model.unloading.load(Ordering::Acquire) || !inst.current(generation)
    };
    loop {
        if !engine.alive() {
            // Its worker died: the run's requests have failed; the others wait for the new one.
            end_carried(&mut carry, &model);
            match restart(&model, &inst, engine, &mut nb, &stop) {
                Some(e) => engine = e,
                None => return,
            }
            n_batch = engine.n_batch();
            cached = vec![Vec::new(); n_batch];
            loaded_prefix = None;
            publish_held(&model, &inst, &cached, None);
            carry = (0..n_batch).map(|_| None).collect();
        }
        drop_cancelled(&mut carry, &model.queue.tel);
        let continuing = carry.iter().any(Option::is_some);
        let (key, fresh) = if continuing {
            if stop() {
                // Unloaded or shutting down between two runs of a re-formed batch.
                end_carried(&mut carry, &model);
                break;
            }
            let key = carry.iter().flatten().next().expect("checked").key;
            let free = carry.iter().filter(|s| s.is_none()).count();
            let fresh = take_joining(
                &model.queue,
                key,
                free,
                cfg.max_queue_wait,
                cfg.starvation_bound,
            );
            (key, fresh)
        } else {
            // Where sampling is fixed per handle (ABI 1.2), requests that share the handle's
            // go first: others cost a re-initialisation.
            let preferred = engine.handle_sampling().map(|s| BatchKey::of(&s));
            let batch = take_batch(
                &model.queue,
                &model.policy,
                n_batch,
                cfg.max_queue_wait,
                preferred,
                freed,
                stop,
                |r| held_elsewhere(&model, &inst, r),
            );
            let Some(batch) = batch else { break };
            batch
        };
        // Nothing is carried here (a re-formed run takes only its own key's requests), so an
        // embedding run never interrupts generation sequences in their slots.
        if key == BatchKey::EMBEDDING {
            let fresh = refuse_unrunnable(fresh, &model.queue.tel);
            let members = fresh.len();
            if !fresh.is_empty() {
                crate::embed::run(&model, &inst, generation, &mut *engine, fresh);
            }
            freed = Some(Freed {
                at: Instant::now(),
                members,
                late_join: reform,
            });
            *inst.memory.lock() = engine.memory();
            continue;
        }
        let fresh = refuse_unrunnable(fresh, &model.queue.tel);
        let sampling = carry
            .iter()
            .flatten()
            .next()
            .map(|s| s.sampling)
            .or_else(|| fresh.first().map(|p| p.req.sampling));
        let Some(sampling) = sampling else { continue };
        let resumed: Vec<bool> = carry.iter().map(Option::is_some).collect();
        let mut slots = std::mem::replace(&mut carry, (0..n_batch).map(|_| None).collect());
        let placed = place(&mut slots, &mut cached, fresh, reform);
        if let Some(files) = &model.prompt_files {
            let before = prompt_cache::Before {
                model_name: &cfg.name,
                files,
                inst: &inst,
                slots: &slots,
                fresh: &placed,
                sampling,
                abi: cfg.abi,
                cut_via: cfg.cut_via,
            };
            prompt_cache::prepare(&before, &mut *engine, &mut loaded_prefix);
        }
        publish_held(
            &model,
            &inst,
            &cached,
            loaded_prefix.as_ref().map(|(_, t)| t.as_slice()),
        );
        // A prompt the loaded file supplies says nothing about what the runtime keeps of
        // a slot's own prefix.
        if let Some((_, file)) = &loaded_prefix {
            for &i in &placed {
                if let Some(s) = slots[i].as_mut() {
                    if !file.is_empty() && s.prompt_bytes().starts_with(file) {
                        s.held_tokens = 0;
                    }
                }
            }
        }
        let members = slots.iter().filter(|s| s.is_some()).count();
        runs += 1;
        let end = Run {
            model: &model,
            inst: &inst,
            generation,
            key,
            sampling,
            slots,
            resumed,
            reform: reform.then_some(Reforming {
                via: cfg.cut_via,
                cutter: cutter.as_ref(),
                run_id: runs,
            }),
            cost: &mut cost,
            slot_texts: &cached,
            file_prefix: loaded_prefix
                .as_ref()
                .map_or(&[][..], |(_, t)| t.as_slice()),
        }
        .execute(&mut *engine);
        *inst.memory.lock() = engine.memory();
        if let Some(why) = end.cut_failed {
            tracing::warn!(
                model = %cfg.name,
                instance = inst.index,
                "re-forming runs is off for this instance: {why} (set scheduler.reform_via to the other way, or reform = \"off\")"
            );
            reform = false;
        }
        carry = end.continuing;
        if carry.iter().all(Option::is_none) {
            freed = Some(Freed {
                at: Instant::now(),
                members,
                late_join: reform,
            });
        }
        if !inst.current(generation) {
            end_carried(&mut carry, &model);
            // Replaced while stuck: the new thread owns the instance now.
            let _ = engine.destroy(cfg.destroy_timeout);
            return;
        }
    }
    inst.abort.lock().take();
    if let Err(e) = engine.destroy(cfg.destroy_timeout) {
        tracing::warn!(model = %cfg.name, instance = inst.index, "destroying the engine: {e}");
    }
}

/// Shows the model's other instances what this one's runtime holds (each slot's last text,
/// the loaded prompt-cache file's prefix), for [`held_elsewhere`]. Nothing to show where
/// the model has one instance.
fn publish_held(model: &Model, inst: &Instance, cached: &[Vec<u8>], file: Option<&[u8]>) {
    if model.instances.len() < 2 {
        return;
    }
    let mut held = inst.held.lock();
    held.clear();
    held.extend(cached.iter().cloned());
    held.extend(file.map(<[u8]>::to_vec));
}

/// Whether another idle instance of the model (or one whose run has no request left) is the
/// better home for `r` ([`affinity::better_elsewhere`]: it holds much more of the prompt, or
/// an empty slot where `inst` would evict one): `inst` then leaves it to that one. A busy
/// instance is no better home: the request would wait.
fn held_elsewhere(model: &Model, inst: &Instance, r: &Request) -> bool {
    if model.instances.len() < 2 {
        return false;
    }
    let prompt = r.prompt.as_bytes();
    // Only where another instance is idle (mostly none is) is this one's prefix measured.
    // One instance's lock at a time: two instances asking at once never wait on each other.
    let mut here = None;
    model
        .instances
        .iter()
        .filter(|o| o.index != inst.index && idle_soon(o))
        .any(|o| {
            let here = *here.get_or_insert_with(|| affinity::holding(&inst.held.lock(), prompt));
            affinity::better_elsewhere(here, affinity::holding(&o.held.lock(), prompt))
        })
}

fn idle_soon(inst: &Instance) -> bool {
    match *inst.state.lock() {
        InstanceState::Idle => true,
        InstanceState::Running { .. } => inst.finishing.load(Ordering::Acquire),
        _ => false,
    }
}

/// Puts new requests in the free slots, each where its prompt shares the most with what the
/// slot last held. Returns the slots they went to.
fn place(
    slots: &mut [Option<Sequence>],
    cached: &mut [Vec<u8>],
    fresh: Vec<Pending>,
    keep_output: bool,
) -> Vec<usize> {
    let free: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_none()).collect();
    let cached_refs: Vec<&[u8]> = cached.iter().map(Vec::as_slice).collect();
    let prompts: Vec<&[u8]> = fresh.iter().map(|p| p.req.prompt.as_bytes()).collect();
    let at = affinity::assign(&free, &cached_refs, &prompts);
    let now = Instant::now();
    for (p, &slot) in fresh.into_iter().zip(&at) {
        let prompt = p.req.prompt.as_bytes();
        let shared = affinity::common_prefix(&cached[slot], prompt);
        let held = (affinity::tokens_in(p.req.prompt_tokens, prompt.len(), shared as f64) as usize)
            .saturating_sub(1);
        cached[slot] = prompt.to_vec();
        let mut seq = Sequence::start(p, now, keep_output, true);
        seq.held_tokens = held;
        slots[slot] = Some(seq);
    }
    at
}

/// A carried sequence whose client left is dropped before the next run, and counted.
fn drop_cancelled(carry: &mut [Option<Sequence>], tel: &ModelTelemetry) {
    for slot in carry.iter_mut() {
        if slot.as_ref().is_some_and(Sequence::client_gone) {
            if let Some(mut s) = slot.take() {
                s.record(
                    Some(tel),
                    Outcome::Failed(FailKind::Cancelled),
                    Instant::now(),
                );
            }
        }
    }
}

/// Ends the carried sequences when the instance stops between two runs of a re-formed batch.
fn end_carried(carry: &mut [Option<Sequence>], model: &Model) {
    let failure = Failure::new(
        FailKind::Unavailable,
        format!(
            "model '{}' stopped serving during the request",
            model.cfg.name
        ),
    );
    for s in carry.iter_mut().filter_map(Option::take) {
        s.end(
            FinishReason::Error(failure.clone()),
            Some(&model.queue.tel),
            Instant::now(),
        );
    }
}

/// Ends the requests whose prompt the runtime cannot take (it passes prompts as C strings,
/// so a NUL byte would make it reject the whole run) and returns the others, in order.
fn refuse_unrunnable(
    members: Vec<Pending>,
    tel: &crate::telemetry::ModelTelemetry,
) -> Vec<Pending> {
    let (bad, good): (Vec<Pending>, Vec<Pending>) = members
        .into_iter()
        .partition(|p| p.req.prompt.contains('\0'));
    for p in bad {
        p.fail(
            Failure::new(
                FailKind::BadRequest,
                "the prompt contains a NUL character, which the runtime cannot take",
            ),
            tel,
        );
    }
    good
}
