//! The public face: models with their queues and instances, submission, introspection, and
//! a watchdog that expires waiting requests and recovers stuck runs.

use crate::config::ModelConfig;
use crate::cpus;
use crate::error::SubmitError;
use crate::instance::{Instance, InstanceState};
use crate::model::{Model, Shared};
use crate::policy::Policy;
use crate::prompt_cache::PromptFiles;
use crate::queue::{sweep, Pending, Queue};
use crate::records::Choices;
use crate::request::{BatchKey, Failure, Request, RequestStream};
use crate::snapshot::{InstanceSnapshot, ModelSnapshot, ModelStatus};
use crate::stats::{LatencyStats, ModelSummary};
use crate::telemetry::{FailKind, ModelTelemetry, Telemetry};
use crate::worker;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::unbounded_channel;

pub struct Scheduler {
    models: Arc<RwLock<HashMap<String, Arc<Model>>>>,
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
    next_id: AtomicU64,
    big_cores: Vec<usize>,
    stats: Arc<LatencyStats>,
}

impl Scheduler {
    /// Starts every model's instances; they load in the background (see [`Scheduler::snapshot`]).
    pub fn new(models: Vec<ModelConfig>) -> Scheduler {
        Scheduler::with_stats_window(models, Duration::from_secs(60))
    }

    /// As [`Scheduler::new`], with exact latency percentiles kept over `window`.
    pub fn with_stats_window(models: Vec<ModelConfig>, window: Duration) -> Scheduler {
        let stats = Arc::new(LatencyStats::new(window));
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            telemetry: Telemetry::start(stats.clone()),
        });
        let map: Arc<RwLock<HashMap<String, Arc<Model>>>> = Arc::default();
        let watchdog = {
            let (models, shared) = (map.clone(), shared.clone());
            std::thread::Builder::new()
                .name("rkserve-watchdog".into())
                .spawn(move || watchdog(models, shared))
                .expect("spawn the watchdog")
        };
        let s = Scheduler {
            models: map,
            shared,
            watchdog: Some(watchdog),
            next_id: AtomicU64::new(1),
            big_cores: cpus::big_cores(Path::new("/sys/devices/system/cpu")),
            stats,
        };
        for cfg in models {
            s.add_model(cfg);
        }
        s
    }

    /// Starts serving a model (replacing one of the same name); it loads in the background.
    /// A replaced model's waiting requests fail as unavailable: to load a model only if it
    /// is not there, use [`Scheduler::add_model_if_absent`].
    pub fn add_model(&self, cfg: ModelConfig) {
        let model = self.new_model(cfg);
        let old = self
            .models
            .write()
            .insert(model.cfg.name.clone(), model.clone());
        self.start_instances(&model);
        if let Some(old) = old {
            stop_model(&old, "it was replaced");
        }
    }

    /// Starts serving a model unless one of that name is served already (in any state).
    /// Returns whether it started it. The check and the insertion are one step, so callers
    /// racing to load the same model load it once and none replaces another's.
    pub fn add_model_if_absent(&self, cfg: ModelConfig) -> bool {
        let model = {
            let mut models = self.models.write();
            if models.contains_key(&cfg.name) {
                return false;
            }
            let model = self.new_model(cfg);
            models.insert(model.cfg.name.clone(), model.clone());
            model
        };
        self.start_instances(&model);
        true
    }

    fn start_instances(&self, model: &Arc<Model>) {
        for inst in &model.instances {
            worker::spawn(model.clone(), inst.clone(), self.shared.clone());
        }
    }

    fn new_model(&self, cfg: ModelConfig) -> Arc<Model> {
        Arc::new(Model {
            policy: Policy {
                batch_window: cfg.batch_window,
                starvation_bound: cfg.starvation_bound,
            },
            cpus: cfg.cpus.clone().unwrap_or_else(|| self.big_cores.clone()),
            queue: Queue::new(ModelTelemetry::new(
                self.shared.telemetry.clone(),
                &cfg.name,
            )),
            status: Mutex::new(ModelStatus::Loading),
            instances: (0..cfg.instances.max(1))
                .map(|i| Arc::new(Instance::new(i)))
                .collect(),
            unloading: AtomicBool::new(false),
            prompt_files: PromptFiles::new(&cfg),
            cfg,
        })
    }

    /// Stops serving a model: waiting requests fail, runs in progress are aborted, and its
    /// instances destroy their handles. Returns whether it was loaded.
    pub fn remove_model(&self, name: &str) -> bool {
        let removed = self.models.write().remove(name);
        match removed {
            Some(m) => {
                stop_model(&m, "it was unloaded");
                true
            }
            None => false,
        }
    }

    /// The model's status, if it is served.
    pub fn status(&self, name: &str) -> Option<ModelStatus> {
        let model = self.models.read().get(name).cloned()?;
        let status = model.status.lock().clone();
        Some(status)
    }

    /// Whether a model of that name is loaded (in any state).
    pub fn has_model(&self, name: &str) -> bool {
        self.models.read().contains_key(name)
    }

    /// Queues a request. Refusals come back at once, before any streaming could start.
    pub fn submit(&self, req: Request) -> Result<RequestStream, SubmitError> {
        let mut streams = self.submit_all(vec![req])?;
        Ok(streams.pop().expect("one request in, one stream out"))
    }

    /// Queues requests together (the `n` choices of one API request), or none of them: a
    /// refusal leaves nothing behind to be cancelled and counted a second time. Streams come
    /// back in the order of `reqs`; all must name the same model.
    pub fn submit_all(&self, reqs: Vec<Request>) -> Result<Vec<RequestStream>, SubmitError> {
        self.enqueue(reqs, |r| BatchKey::of(&r.sampling), false)
    }

    /// As [`Scheduler::submit_all`], for one attempt at a request whose caller counts its
    /// outcome itself ([`crate::telemetry::count_success`], [`crate::telemetry::count_failure`]): one it
    /// may generate again until the reply meets a check is one request, however many runs.
    pub fn submit_all_counted_by_caller(
        &self,
        reqs: Vec<Request>,
    ) -> Result<Vec<RequestStream>, SubmitError> {
        self.enqueue(reqs, |r| BatchKey::of(&r.sampling), true)
    }

    /// Queues embedding requests (one per input; `sampling`, `max_tokens` and `stop` are
    /// ignored) in the model's queue, where they wait and are refused like generation
    /// requests. They run together, up to `n_batch` per run, never beside generation. Each
    /// stream carries one [`crate::Event::Embedding`] (pooled by the model's
    /// [`crate::Pooling`], L2-normalised), then its End.
    pub fn submit_embeddings(&self, reqs: Vec<Request>) -> Result<Vec<RequestStream>, SubmitError> {
        self.enqueue(reqs, |_| BatchKey::EMBEDDING, false)
    }

    fn enqueue(
        &self,
        reqs: Vec<Request>,
        key_of: impl Fn(&Request) -> BatchKey,
        counted_by_caller: bool,
    ) -> Result<Vec<RequestStream>, SubmitError> {
        if self.shared.stopping() {
            return Err(SubmitError::ShuttingDown);
        }
        let Some(first) = reqs.first() else {
            return Ok(Vec::new());
        };
        let name = first.model.clone();
        let model = self
            .models
            .read()
            .get(&name)
            .cloned()
            .ok_or_else(|| SubmitError::UnknownModel(name.clone()))?;
        if let Some(other) = reqs.iter().find(|r| r.model != name) {
            return Err(SubmitError::UnknownModel(other.model.clone()));
        }
        if let ModelStatus::Unavailable(reason) = &*model.status.lock() {
            return Err(SubmitError::ModelUnavailable {
                model: name,
                reason: reason.clone(),
            });
        }
        let ctx = model.cfg.context_len;
        // The reply needs at least one token of room.
        if let Some(r) = reqs.iter().find(|r| r.prompt_tokens + 1 > ctx) {
            return Err(SubmitError::PromptTooLong {
                model: name,
                prompt_tokens: r.prompt_tokens,
                context_len: ctx,
            });
        }
        // Slots of idle instances take waiting requests at their next look at the queue:
        // a burst that fits them is not a backlog, however small max_queue is.
        let free_slots = model
            .instances
            .iter()
            .filter(|i| matches!(*i.state.lock(), InstanceState::Idle))
            .count()
            * model.cfg.n_batch as usize;
        let mut waiting = model.queue.waiting.lock();
        let room = (model.cfg.max_queue + free_slots).saturating_sub(waiting.len());
        if reqs.len() > room {
            return Err(SubmitError::Overloaded {
                model: name,
                waiting: waiting.len(),
                retry_after: Duration::from_secs(1),
            });
        }
        let mut streams = Vec::with_capacity(reqs.len());
        let choices = if counted_by_caller {
            Some(Choices::counted_by_caller(reqs.len()))
        } else {
            (reqs.len() > 1).then(|| Choices::new(reqs.len()))
        };
        for req in reqs {
            let (tx, rx) = unbounded_channel();
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(request = id, model = %name, "queued");
            waiting.push_back(Pending {
                id,
                key: key_of(&req),
                req,
                tx,
                choices: choices.clone(),
                span: tracing::Span::current(),
            });
            streams.push(RequestStream { rx, id });
        }
        drop(waiting);
        model.queue.arrived.notify_all();
        Ok(streams)
    }

    pub fn snapshot(&self) -> Vec<ModelSnapshot> {
        let mut out: Vec<ModelSnapshot> = self
            .models
            .read()
            .values()
            .map(|m| ModelSnapshot {
                name: m.cfg.name.clone(),
                status: m.status.lock().clone(),
                waiting: m.queue.waiting.lock().len(),
                n_batch: m.cfg.n_batch,
                context_len: m.cfg.context_len,
                instances: m
                    .instances
                    .iter()
                    .map(|i| {
                        let memory = *i.memory.lock();
                        InstanceSnapshot {
                            index: i.index,
                            state: i.state.lock().clone(),
                            kv_tokens: i.run.lock().as_ref().map_or(0, |d| d.lock().kv_tokens()),
                            n_batch: i.n_batch.load(Ordering::Relaxed),
                            fallback: i.fallback.lock().clone(),
                            restarts: i.restarts.load(Ordering::Relaxed),
                            rss_bytes: memory.map(|m| m.rss),
                            peak_rss_bytes: memory.map(|m| m.hwm),
                        }
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Exact TTFT, inter-token and end-to-end percentiles per model (see [`LatencyStats`]).
    pub fn latency_stats(&self) -> Vec<ModelSummary> {
        self.stats.summaries()
    }

    pub fn stats_window(&self) -> Duration {
        self.stats.window()
    }

    /// Waits until no model is loading any more, or `limit` passes.
    pub fn wait_loaded(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self
                .snapshot()
                .iter()
                .all(|m| m.status != ModelStatus::Loading)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let models: Vec<Arc<Model>> = self.models.read().values().cloned().collect();
        for m in &models {
            stop_model(m, "the server is shutting down");
        }
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        // Instance threads destroy their handles on the way out; a stuck one is left behind.
        let deadline = Instant::now() + Duration::from_secs(10);
        for m in &models {
            for inst in &m.instances {
                let Some(t) = inst.thread.lock().take() else {
                    continue;
                };
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if t.is_finished() {
                    let _ = t.join();
                }
            }
        }
    }
}

/// Fails a model's waiting requests and stops its instances (each aborts its run).
fn stop_model(m: &Model, why: &str) {
    m.unloading.store(true, Ordering::Release);
    tracing::info!(model = %m.cfg.name, "stopped serving: {why}");
    for p in m.queue.waiting.lock().drain(..) {
        p.fail(
            Failure::new(
                FailKind::Unavailable,
                format!("model '{}' stopped serving: {why}", m.cfg.name),
            ),
            &m.queue.tel,
        );
    }
    m.queue.arrived.notify_all();
    for inst in &m.instances {
        if let Some(a) = inst.abort.lock().as_ref() {
            if matches!(*inst.state.lock(), InstanceState::Running { .. }) {
                let _ = a.abort();
            }
        }
    }
}

fn watchdog(models: Arc<RwLock<HashMap<String, Arc<Model>>>>, shared: Arc<Shared>) {
    while !shared.stopping() {
        std::thread::sleep(Duration::from_millis(20));
        let models: Vec<Arc<Model>> = models.read().values().cloned().collect();
        for model in &models {
            {
                let mut waiting = model.queue.waiting.lock();
                let now = Instant::now();
                sweep(
                    &mut waiting,
                    model.cfg.max_queue_wait,
                    now,
                    &model.queue.tel,
                );
            }
            for inst in &model.instances {
                let running = matches!(*inst.state.lock(), InstanceState::Running { .. });
                if running && inst.since_progress() > model.cfg.stall_timeout {
                    recover_stuck(model, inst, &shared);
                }
            }
        }
    }
}

/// A run made no progress for `stall_timeout`: fail its requests, kill its worker (in
/// process: abort it, on a thread of its own, the abort may hang too), and start a new engine
/// on a new thread. The old thread, once its run returns, sees it was replaced and destroys
/// its engine.
fn recover_stuck(model: &Arc<Model>, inst: &Arc<Instance>, shared: &Arc<Shared>) {
    tracing::warn!(
        model = %model.cfg.name,
        instance = inst.index,
        "no progress for {:?}; failing its run and restarting the instance",
        model.cfg.stall_timeout
    );
    inst.generation.fetch_add(1, Ordering::AcqRel);
    inst.restarts.fetch_add(1, Ordering::Relaxed);
    *inst.state.lock() = InstanceState::Restarting;
    if let Some(run) = inst.run.lock().take() {
        run.lock().fail_all(&Failure::new(FailKind::Timeout, format!(
            "the runtime made no progress for {:.1}s; the run was abandoned and the instance restarted",
            model.cfg.stall_timeout.as_secs_f64()
        )));
    }
    // A worker is killed: its memory and threads go with it, and its instance thread's
    // run returns at once. An in-process runtime can only be asked to abort.
    if let Some(stop) = inst.abort.lock().take() {
        std::thread::spawn(move || {
            stop.kill();
        });
    }
    // The old thread's JoinHandle is dropped: it is detached and cleans up by itself.
    inst.thread.lock().take();
    worker::spawn(model.clone(), inst.clone(), shared.clone());
}
