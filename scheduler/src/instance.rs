//! A runtime instance: one RKLLM handle owned by one dedicated OS thread, which takes a batch
//! from its model's queue, makes the blocking `rkllm_run` call, and hands every step to the
//! run's [`Demux`].

use crate::cpus;
use crate::demux::{Demux, Member};
use crate::queue::{take_batch, Pending};
use crate::request::{BatchKey, Failure};
use crate::scheduler::{Model, Shared};
use crate::telemetry::FailKind;
use parking_lot::Mutex;
use rkllm::{AbiFamily, AbortHandle, Handle, InferParams, Input, RunOutcome, Runtime, Sampling};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What an instance is doing, for introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    Starting,
    Idle,
    Running {
        slots: usize,
    },
    /// Its run stopped making progress; a new handle is being created.
    Restarting,
    Failed(String),
}

impl InstanceState {
    /// The state's name, as the API shows it.
    pub fn label(&self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Idle => "idle",
            InstanceState::Running { .. } => "running",
            InstanceState::Restarting => "restarting",
            InstanceState::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstanceState::Running { slots } => write!(f, "running ({slots} slots)"),
            InstanceState::Failed(r) => write!(f, "failed: {r}"),
            other => f.write_str(other.label()),
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub struct Instance {
    pub index: usize,
    /// Bumped when the instance is replaced; a thread of an older generation only cleans up.
    pub generation: AtomicU64,
    pub state: Mutex<InstanceState>,
    /// Microseconds since `epoch()` of the last callback (or run start).
    last_progress: AtomicU64,
    /// The run in progress, so the watchdog can fail its requests.
    pub run: Mutex<Option<Arc<Mutex<Demux>>>>,
    pub abort: Mutex<Option<AbortHandle>>,
    pub thread: Mutex<Option<JoinHandle<()>>>,
}

impl Instance {
    pub fn new(index: usize) -> Instance {
        Instance {
            index,
            generation: AtomicU64::new(0),
            state: Mutex::new(InstanceState::Starting),
            last_progress: AtomicU64::new(0),
            run: Mutex::new(None),
            abort: Mutex::new(None),
            thread: Mutex::new(None),
        }
    }

    fn touch(&self) {
        let us = epoch().elapsed().as_micros() as u64;
        self.last_progress.store(us, Ordering::Relaxed);
    }

    /// How long the current run has gone without a callback.
    pub fn since_progress(&self) -> Duration {
        let last = Duration::from_micros(self.last_progress.load(Ordering::Relaxed));
        epoch().elapsed().saturating_sub(last)
    }

    fn current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }
}

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
    let mut free_since = None;
    loop {
        let preferred = per_handle_sampling.then_some(handle_key);
        let batch = take_batch(
            &model.queue,
            &model.policy,
            cfg.n_batch as usize,
            cfg.max_queue_wait,
            preferred,
            free_since,
            || {
                shared.stopping()
                    || model.unloading.load(Ordering::Acquire)
                    || !inst.current(generation)
            },
        );
        let Some((key, members)) = batch else { break };
        let sampling = members[0].req.sampling;
        if per_handle_sampling && key != handle_key {
            destroy_with_deadline(handle, cfg.destroy_timeout, &cfg.name);
            match init_handle(&rt, &model, Some(sampling)) {
                Ok(h) => {
                    handle = h;
                    handle_key = key;
                    *inst.abort.lock() = Some(handle.abort_handle());
                }
                Err(reason) => {
                    for p in members {
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
        run_batch(&model, &inst, &mut handle, sampling, members, generation);
        free_since = Some(Instant::now());
        if !inst.current(generation) {
            // Replaced while stuck: the new thread owns the instance now.
            std::thread::spawn(move || handle.destroy());
            return;
        }
    }
    destroy_with_deadline(handle, cfg.destroy_timeout, &cfg.name);
}

fn run_batch(
    model: &Model,
    inst: &Arc<Instance>,
    handle: &mut Handle,
    sampling: Sampling,
    members: Vec<Pending>,
    generation: u64,
) {
    let cfg = &model.cfg;
    let started = Instant::now();
    let members = refuse_unrunnable(members, &model.queue.tel);
    if members.is_empty() {
        return;
    }
    let inputs: Vec<Input> = members
        .iter()
        .map(|p| Input::prompt(p.req.prompt.clone()))
        .collect();
    let max_new = members.iter().map(|p| p.req.max_tokens).max().unwrap_or(1);
    let infer = match cfg.abi {
        AbiFamily::V1_3 => InferParams {
            sampling: Some(sampling),
            max_new_tokens: Some(max_new.min(i32::MAX as u32) as i32),
            ..InferParams::default()
        },
        AbiFamily::V1_2 => InferParams::default(),
    };
    let slots = members.len();
    let demux = Arc::new(Mutex::new(
        Demux::new(
            members
                .into_iter()
                .map(|p| Member {
                    id: p.id,
                    tx: p.tx,
                    max_tokens: p.req.max_tokens,
                    stop: p.req.stop,
                    prompt_tokens: p.req.prompt_tokens,
                    arrival: p.req.arrival,
                })
                .collect(),
            started,
            cfg.context_len,
        )
        .with_telemetry(model.queue.tel.clone()),
    ));
    inst.touch();
    *inst.run.lock() = Some(demux.clone());
    *inst.state.lock() = InstanceState::Running { slots };

    let (d, i) = (demux.clone(), inst.clone());
    let unloading = &model.unloading;
    let unloaded = Failure::new(
        FailKind::Unavailable,
        format!("model '{}' was unloaded during the run", cfg.name),
    );
    let result = handle.run(&inputs, &infer, move |step| {
        if i.current(generation) {
            i.touch();
        }
        let mut d = d.lock();
        // The FINISH that follows the unload's abort must not read as a natural end.
        if unloading.load(Ordering::Acquire) {
            d.fail_all(&unloaded);
            return rkllm::Flow::Pause;
        }
        d.step(step, Instant::now())
    });

    let mut d = demux.lock();
    match result {
        Ok(RunOutcome::Failed) => d.fail_all(&Failure::new(
            FailKind::RuntimeError,
            "the runtime reported an error during the run",
        )),
        Ok(_) => d.finish(Instant::now()),
        Err(e) => {
            tracing::warn!(model = %cfg.name, instance = inst.index, "the run failed: {e}");
            d.fail_all(&Failure::new(
                FailKind::RuntimeError,
                format!("the run failed: {e}"),
            ))
        }
    }
    if let Some(r) = d.run_record(started.elapsed()) {
        model.queue.tel.run(r);
    }
    drop(d);
    if inst.current(generation) {
        inst.run.lock().take();
        *inst.state.lock() = InstanceState::Idle;
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
