//! An instance's thread: it loads the runtime and its handle, forms each run (new requests
//! from the queue by the batch policy, or the sequences a cut run left plus the waiting
//! requests that may join them), hands it to `runner.rs`, and destroys the
//! handle when the model goes.

use crate::affinity;
use crate::config::{CutVia, Reform};
use crate::cost::{CostModel, Priors};
use crate::cpus;
use crate::instance::{Instance, InstanceState};
use crate::model::{Model, Shared};
use crate::queue::{take_batch, take_joining, Pending};
use crate::request::{BatchKey, Failure, FinishReason};
use crate::runner::{Cutter, Reforming, Run};
use crate::sequence::Sequence;
use crate::telemetry::{FailKind, ModelTelemetry, Outcome};
use rkllm::{AbiFamily, Handle, Runtime, Sampling};
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

fn init_handle(rt: &Runtime, model: &Model, sampling: Option<Sampling>) -> Result<Handle, String> {
    let cfg = &model.cfg;
    let mut p = rt.default_params();
    p.model_path = cfg.model_path.clone();
    p.n_batch = cfg.n_batch;
    p.max_context_len = cfg.context_len as i32;
    // Each request stops at its own max_tokens; the handle's limit is the context.
    p.max_new_tokens = cfg.context_len as i32;
    p.enabled_cpus_mask = cpus::mask(&model.cpus);
    p.enabled_cpus_num = if model.cpus.is_empty() {
        std::thread::available_parallelism().map_or(1, |n| n.get()) as i8
    } else {
        model.cpus.len() as i8
    };
    if let Some(s) = sampling {
        p.sampling = s;
    }
    let mut h = rt.init(&p).map_err(|e| e.to_string())?;
    // Prompts arrive rendered by the server's chat templates.
    h.set_chat_template("", "", "").map_err(|e| e.to_string())?;
    Ok(h)
}

/// Destroys a handle on its own thread: `rkllm_destroy` is known to hang, and a hang must
/// not hold anything else up. Waits at most `limit`.
pub fn destroy_with_deadline(handle: Handle, limit: Duration, model: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("rkserve-destroy".into())
        .spawn(move || {
            let _ = tx.send(handle.destroy());
        });
    if spawned.is_err() {
        return;
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(model, "rkllm_destroy failed: {e}"),
        Err(_) => tracing::warn!(
            model,
            "rkllm_destroy did not return within {limit:?}; abandoned on its thread"
        ),
    }
}

fn instance_main(model: Arc<Model>, inst: Arc<Instance>, shared: Arc<Shared>, generation: u64) {
    let cfg = &model.cfg;
    if let Err(e) = cpus::pin_current_thread(&model.cpus) {
        tracing::warn!(model = %cfg.name, "cannot pin to CPUs {:?}: {e}", model.cpus);
    }
    let loaded = Runtime::load(&cfg.runtime_lib, cfg.abi)
        .map_err(|e| e.to_string())
        .and_then(|rt| init_handle(&rt, &model, None).map(|h| (rt, h)));
    let (rt, mut handle) = match loaded {
        Ok(x) => x,
        Err(reason) => {
            model.instance_failed(&inst, reason);
            return;
        }
    };
    *inst.abort.lock() = Some(handle.abort_handle());
    // On ABI 1.2 sampling is fixed per handle: remember which the handle has.
    let mut handle_key = BatchKey::of(&rt.default_params().sampling);
    *inst.state.lock() = InstanceState::Idle;
    model.instance_ready();

    let per_handle_sampling = cfg.abi == AbiFamily::V1_2;
    let n_batch = cfg.n_batch as usize;
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
    let mut carry: Vec<Option<Sequence>> = (0..n_batch).map(|_| None).collect();
    let mut free_since = None;
    let mut runs = 0u64;
    loop {
        let stop = || {
            shared.stopping()
                || model.unloading.load(Ordering::Acquire)
                || !inst.current(generation)
        };
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
            let preferred = per_handle_sampling.then_some(handle_key);
            let batch = take_batch(
                &model.queue,
                &model.policy,
                n_batch,
                cfg.max_queue_wait,
                preferred,
                free_since,
                stop,
            );
            let Some(batch) = batch else { break };
            batch
        };
        // Nothing is carried here (a re-formed run takes only its own key's requests), so an
        // embedding run never interrupts generation sequences in their slots.
        if key == BatchKey::EMBEDDING {
            let fresh = refuse_unrunnable(fresh, &model.queue.tel);
            if !fresh.is_empty() {
                crate::embed::run(&model, &inst, generation, &mut handle, fresh);
            }
            free_since = Some(Instant::now());
            continue;
        }
        if !continuing && per_handle_sampling && key != handle_key {
            let sampling = fresh[0].req.sampling;
            destroy_with_deadline(handle, cfg.destroy_timeout, &cfg.name);
            match init_handle(&rt, &model, Some(sampling)) {
                Ok(h) => {
                    handle = h;
                    handle_key = key;
                    *inst.abort.lock() = Some(handle.abort_handle());
                }
                Err(reason) => {
                    for p in fresh {
                        p.fail(
                            Failure::new(
                                FailKind::RuntimeError,
                                format!(
                                    "re-initialising the runtime for new sampling failed: {reason}"
                                ),
                            ),
                            &model.queue.tel,
                        );
                    }
                    model.instance_failed(&inst, reason);
                    return;
                }
            }
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
        place(&mut slots, &mut cached, fresh, reform);
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
        }
        .execute(&mut handle);
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
            free_since = Some(Instant::now());
        }
        if !inst.current(generation) {
            end_carried(&mut carry, &model);
            // Replaced while stuck: the new thread owns the instance now.
            std::thread::spawn(move || handle.destroy());
            return;
        }
    }
    destroy_with_deadline(handle, cfg.destroy_timeout, &cfg.name);
}

/// Puts new requests in the free slots, each where its prompt shares the most with what the
/// slot last held.
fn place(
    slots: &mut [Option<Sequence>],
    cached: &mut [Vec<u8>],
    fresh: Vec<Pending>,
    keep_output: bool,
) {
    let free: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_none()).collect();
    let cached_refs: Vec<&[u8]> = cached.iter().map(Vec::as_slice).collect();
    let prompts: Vec<&[u8]> = fresh.iter().map(|p| p.req.prompt.as_bytes()).collect();
    let at = affinity::assign(&free, &cached_refs, &prompts);
    let now = Instant::now();
    for (p, slot) in fresh.into_iter().zip(at) {
        cached[slot] = p.req.prompt.as_bytes().to_vec();
        slots[slot] = Some(Sequence::start(p, now, keep_output, true));
    }
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
