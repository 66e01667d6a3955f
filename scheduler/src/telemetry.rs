//! What the scheduler measures, off the runtime threads: the demultiplexer and the queue
//! send finished requests and runs down a channel, and one telemetry thread records them as
//! Prometheus metrics (through the `metrics` facade: a no-op until the server installs an
//! exporter) and in the exact-percentile [`LatencyStats`].
//!
//! Metric names follow vLLM's with our prefix (see shared/anchors.md); every name, its help
//! text and its histogram buckets are defined here so the server and the dashboards agree.

pub use crate::records::{Outcome, RequestRecord, RunRecord};
pub use crate::request::FailKind;
use crate::snapshot::ModelSnapshot;
use crate::stats::LatencyStats;
use crossbeam_channel::{unbounded, Receiver, Sender};
use metrics::{counter, gauge, histogram, Unit};
use std::sync::Arc;

pub const TTFT: &str = "rkserve_time_to_first_token_seconds";
pub const ITL: &str = "rkserve_inter_token_latency_seconds";
pub const TPOT: &str = "rkserve_time_per_output_token_seconds";
pub const E2E: &str = "rkserve_e2e_request_latency_seconds";
pub const QUEUE_TIME: &str = "rkserve_request_queue_time_seconds";
pub const PREFILL_TIME: &str = "rkserve_request_prefill_time_seconds";
pub const DECODE_TIME: &str = "rkserve_request_decode_time_seconds";
pub const REQUEST_PROMPT_TOKENS: &str = "rkserve_request_prompt_tokens";
pub const REQUEST_GENERATION_TOKENS: &str = "rkserve_request_generation_tokens";
pub const PROMPT_TOKENS: &str = "rkserve_prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "rkserve_generation_tokens_total";
pub const SUCCESS: &str = "rkserve_request_success_total";
pub const FAILURE: &str = "rkserve_request_failure_total";
pub const RUNS: &str = "rkserve_batch_runs_total";
pub const RUN_SLOTS: &str = "rkserve_batch_slots_filled";
pub const RUN_DURATION: &str = "rkserve_batch_run_duration_seconds";
pub const DECODE_STEPS: &str = "rkserve_decode_steps_total";
pub const SLOT_STEPS: &str = "rkserve_slot_steps_total";
pub const REFORMS: &str = "rkserve_batch_reforms_total";
pub const RESUMED_PREFILL_TOKENS: &str = "rkserve_resumed_prefill_tokens_total";
pub const DEAD_SLOT_STEPS: &str = "rkserve_dead_slot_steps_total";
pub const PREFIX_CACHE_HITS: &str = "rkserve_prefix_cache_hits_total";
pub const PREFIX_CACHE_MISSES: &str = "rkserve_prefix_cache_misses_total";
pub const PREFIX_CACHE_SAVED_TOKENS: &str = "rkserve_prefix_cache_saved_tokens_total";
pub const PROMPT_CACHE_BYTES: &str = "rkserve_prompt_cache_bytes";
pub const PROMPT_CACHE_SAVES: &str = "rkserve_prompt_cache_saves_total";
pub const PROMPT_CACHE_LOADS: &str = "rkserve_prompt_cache_loads_total";
pub const PROMPT_CACHE_EVICTIONS: &str = "rkserve_prompt_cache_evictions_total";
pub const PROMPT_CACHE_ERRORS: &str = "rkserve_prompt_cache_errors_total";
pub const MEMORY: &str = "rkserve_runtime_memory_bytes";
pub const RUNNING: &str = "rkserve_num_requests_running";
pub const WAITING: &str = "rkserve_num_requests_waiting";
pub const INSTANCES: &str = "rkserve_instances";
pub const INSTANCES_BUSY: &str = "rkserve_instances_busy";
pub const SLOTS: &str = "rkserve_slots";
pub const SLOTS_BUSY: &str = "rkserve_slots_busy";
pub const MODEL_STATE: &str = "rkserve_model_state";
pub const MODEL_LOAD_TIME: &str = "rkserve_model_load_seconds";
pub const WORKER_RESTARTS: &str = "rkserve_worker_restarts_total";
pub const NBATCH_FALLBACKS: &str = "rkserve_n_batch_fallbacks_total";
pub const INSTANCE_N_BATCH: &str = "rkserve_instance_n_batch";
pub const WORKER_RSS: &str = "rkserve_worker_rss_bytes";
pub const WORKER_PEAK_RSS: &str = "rkserve_worker_peak_rss_bytes";

enum Record {
    Request(RequestRecord),
    Run(RunRecord),
    /// Registers a model's counters at zero, so rates and panels have series before the
    /// first error of each kind.
    ModelAdded(Arc<str>),
}

/// The sending side, cloned into every model's queue and run. Sending never blocks.
#[derive(Clone)]
pub struct Telemetry {
    tx: Sender<Record>,
}

impl Telemetry {
    /// Starts the telemetry thread; it ends when the last `Telemetry` is dropped.
    pub fn start(stats: Arc<LatencyStats>) -> Telemetry {
        let (tx, rx) = unbounded();
        std::thread::Builder::new()
            .name("rkserve-telemetry".into())
            .spawn(move || record_all(rx, &stats))
            .expect("spawn the telemetry thread");
        Telemetry { tx }
    }

    pub fn request(&self, r: RequestRecord) {
        let _ = self.tx.send(Record::Request(r));
    }

    pub fn run(&self, r: RunRecord) {
        let _ = self.tx.send(Record::Run(r));
    }

    pub fn model_added(&self, model: Arc<str>) {
        let _ = self.tx.send(Record::ModelAdded(model));
    }
}

/// A [`Telemetry`] bound to one model, as queues and runs hold it.
#[derive(Clone)]
pub struct ModelTelemetry {
    tel: Telemetry,
    pub model: Arc<str>,
}

impl ModelTelemetry {
    pub fn new(tel: Telemetry, model: &str) -> ModelTelemetry {
        let model: Arc<str> = model.into();
        tel.model_added(model.clone());
        ModelTelemetry { tel, model }
    }

    pub fn request(&self, r: RequestRecord) {
        self.tel.request(r)
    }

    pub fn run(&self, r: RunRecord) {
        self.tel.run(r)
    }

    /// The prompt and generated token counters, for a run to count into directly (one
    /// registry lookup per run, then an atomic add per step).
    pub fn token_counters(&self) -> (metrics::Counter, metrics::Counter) {
        let m = self.model.to_string();
        (
            counter!(PROMPT_TOKENS, "model" => m.clone()),
            counter!(GENERATION_TOKENS, "model" => m),
        )
    }
}

fn record_all(rx: Receiver<Record>, stats: &LatencyStats) {
    for record in rx {
        match record {
            Record::Request(r) => {
                record_request(&r);
                stats.record(&r);
            }
            Record::Run(r) => record_run(&r),
            Record::ModelAdded(m) => {
                for reason in ["stop", "length"] {
                    counter!(SUCCESS, "model" => m.to_string(), "finished_reason" => reason)
                        .increment(0);
                }
                for kind in FailKind::ALL {
                    count_failure(&m, kind, 0);
                }
                counter!(PROMPT_TOKENS, "model" => m.to_string()).increment(0);
                counter!(GENERATION_TOKENS, "model" => m.to_string()).increment(0);
                for name in [
                    REFORMS,
                    RESUMED_PREFILL_TOKENS,
                    DEAD_SLOT_STEPS,
                    PREFIX_CACHE_HITS,
                    PREFIX_CACHE_MISSES,
                    PREFIX_CACHE_SAVED_TOKENS,
                    PROMPT_CACHE_SAVES,
                    PROMPT_CACHE_LOADS,
                    PROMPT_CACHE_ERRORS,
                    WORKER_RESTARTS,
                    NBATCH_FALLBACKS,
                ] {
                    counter!(name, "model" => m.to_string()).increment(0);
                }
            }
        }
    }
}

/// Counts a failed or refused request (the server's refusals come through here too).
pub fn count_failure(model: &str, kind: FailKind, n: u64) {
    counter!(FAILURE, "model" => model.to_string(), "kind" => kind.label()).increment(n);
}

/// Counts a request that succeeded; `length` when a reply of it ran out of tokens.
pub fn count_success(model: &str, length: bool) {
    let reason = if length { "length" } else { "stop" };
    counter!(SUCCESS, "model" => model.to_string(), "finished_reason" => reason).increment(1);
}

fn record_request(r: &RequestRecord) {
    let model = r.model.to_string();
    match r.counted {
        Some(Outcome::Stop) => count_success(&model, false),
        Some(Outcome::Length) => count_success(&model, true),
        Some(Outcome::Failed(kind)) => count_failure(&model, kind, 1),
        None => {}
    }
    if !matches!(r.outcome, Outcome::Failed(_)) {
        histogram!(E2E, "model" => model.clone()).record(r.e2e.as_secs_f64());
    }
    // Latency distributions describe requests that ran: one refused at the door has none.
    if r.ttft.is_none() && matches!(r.outcome, Outcome::Failed(_)) {
        return;
    }
    if let Some(prefilled) = r.prefilled_tokens {
        // Every prompt prefills at least its last token, whose logits start the reply.
        let saved = r.prompt_tokens.saturating_sub(prefilled);
        let kind = if saved > 0 {
            PREFIX_CACHE_HITS
        } else {
            PREFIX_CACHE_MISSES
        };
        counter!(kind, "model" => model.clone()).increment(1);
        counter!(PREFIX_CACHE_SAVED_TOKENS, "model" => model.clone()).increment(saved.into());
    }
    histogram!(QUEUE_TIME, "model" => model.clone()).record(r.queue.as_secs_f64());
    histogram!(REQUEST_PROMPT_TOKENS, "model" => model.clone()).record(r.prompt_tokens as f64);
    histogram!(REQUEST_GENERATION_TOKENS, "model" => model.clone())
        .record(r.completion_tokens as f64);
    if let Some(t) = r.ttft {
        histogram!(TTFT, "model" => model.clone()).record(t.as_secs_f64());
    }
    if let Some(p) = r.prefill {
        histogram!(PREFILL_TIME, "model" => model.clone()).record(p.as_secs_f64());
    }
    histogram!(DECODE_TIME, "model" => model.clone()).record(r.decode.as_secs_f64());
    if r.completion_tokens > 1 {
        let tpot = r.decode.as_secs_f64() / (r.completion_tokens - 1) as f64;
        histogram!(TPOT, "model" => model.clone()).record(tpot);
    }
    let itl = histogram!(ITL, "model" => model);
    for &us in &r.itl_us {
        itl.record(us as f64 / 1e6);
    }
}

fn record_run(r: &RunRecord) {
    let model = r.model.to_string();
    counter!(RUNS, "model" => model.clone(), "slots" => r.slots.to_string()).increment(1);
    histogram!(RUN_SLOTS, "model" => model.clone()).record(r.slots as f64);
    // Its _sum over time is the instances' busy time: metrics counters count integers.
    histogram!(RUN_DURATION, "model" => model.clone()).record(r.busy.as_secs_f64());
    counter!(DECODE_STEPS, "model" => model.clone()).increment(r.steps);
    counter!(SLOT_STEPS, "model" => model.clone()).increment(r.slot_steps);
    counter!(DEAD_SLOT_STEPS, "model" => model.clone()).increment(r.dead_slot_steps);
    counter!(RESUMED_PREFILL_TOKENS, "model" => model.clone()).increment(r.resumed_prefill_tokens);
    if r.cut {
        counter!(REFORMS, "model" => model.clone()).increment(1);
    }
    if let Some(b) = r.memory_bytes {
        gauge!(MEMORY, "model" => model).set(b as f64);
    }
}

/// Sets the gauges that describe the present (queue depth, running requests, instances and
/// slots, model state and load time) from a snapshot; the server calls it before each
/// scrape. `load_seconds` gives a model's last load duration; `gone` lists models unloaded
/// since the last call, whose gauges drop to zero.
pub fn publish(
    snapshot: &[ModelSnapshot],
    load_seconds: impl Fn(&str) -> Option<f64>,
    gone: &[String],
) {
    for m in snapshot {
        let name = m.name.clone();
        let busy = m.busy_slots();
        let instances_busy = m
            .instances
            .iter()
            .filter(|i| matches!(i.state, crate::InstanceState::Running { .. }))
            .count();
        gauge!(RUNNING, "model" => name.clone()).set(busy as f64);
        gauge!(WAITING, "model" => name.clone()).set(m.waiting as f64);
        gauge!(INSTANCES, "model" => name.clone()).set(m.instances.len() as f64);
        gauge!(INSTANCES_BUSY, "model" => name.clone()).set(instances_busy as f64);
        gauge!(SLOTS, "model" => name.clone()).set((m.instances.len() * m.n_batch as usize) as f64);
        gauge!(SLOTS_BUSY, "model" => name.clone()).set(busy as f64);
        let state = m.status.label();
        for s in ["loading", "ready", "unavailable"] {
            gauge!(MODEL_STATE, "model" => name.clone(), "state" => s).set(f64::from(s == state));
        }
        for i in &m.instances {
            let idx = i.index.to_string();
            gauge!(INSTANCE_N_BATCH, "model" => name.clone(), "instance" => idx.clone())
                .set(f64::from(i.n_batch));
            if let (Some(rss), Some(hwm)) = (i.rss_bytes, i.peak_rss_bytes) {
                gauge!(WORKER_RSS, "model" => name.clone(), "instance" => idx.clone())
                    .set(rss as f64);
                gauge!(WORKER_PEAK_RSS, "model" => name.clone(), "instance" => idx).set(hwm as f64);
            }
        }
        if let Some(secs) = load_seconds(&name) {
            gauge!(MODEL_LOAD_TIME, "model" => name).set(secs);
        }
    }
    for name in gone {
        for g in [
            RUNNING,
            WAITING,
            INSTANCES,
            INSTANCES_BUSY,
            SLOTS,
            SLOTS_BUSY,
        ] {
            gauge!(g, "model" => name.clone()).set(0.0);
        }
        for s in ["loading", "ready", "unavailable"] {
            gauge!(MODEL_STATE, "model" => name.clone(), "state" => s).set(0.0);
        }
    }
}

/// Every metric's help text and unit, for the exporter's `# HELP` lines (call once, after
/// installing the recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        TTFT,
        Unit::Seconds,
        "Request arrival to its first generated token."
    );
    describe_histogram!(
        ITL,
        Unit::Seconds,
        "Time between consecutive tokens of a request."
    );
    describe_histogram!(
        TPOT,
        Unit::Seconds,
        "Decode time per output token after the first, per request."
    );
    describe_histogram!(
        E2E,
        Unit::Seconds,
        "Arrival to the end of a successful request."
    );
    describe_histogram!(
        QUEUE_TIME,
        Unit::Seconds,
        "Time a request waited before its run started."
    );
    describe_histogram!(
        PREFILL_TIME,
        Unit::Seconds,
        "Start of a request's run to its first token."
    );
    describe_histogram!(
        DECODE_TIME,
        Unit::Seconds,
        "First token to last token of a request."
    );
    describe_histogram!(
        REQUEST_PROMPT_TOKENS,
        Unit::Count,
        "Prompt tokens per request."
    );
    describe_histogram!(
        REQUEST_GENERATION_TOKENS,
        Unit::Count,
        "Generated tokens per request."
    );
    describe_histogram!(
        RUN_SLOTS,
        Unit::Count,
        "Slots filled per runtime run (multi-batch size)."
    );
    describe_counter!(
        PROMPT_TOKENS,
        Unit::Count,
        "Prompt tokens prefilled (counted when a run starts)."
    );
    describe_counter!(
        GENERATION_TOKENS,
        Unit::Count,
        "Tokens generated (counted as they come)."
    );
    describe_counter!(
        SUCCESS,
        Unit::Count,
        "Requests completed, by finish reason."
    );
    describe_counter!(FAILURE, Unit::Count, "Requests refused or failed, by kind.");
    describe_counter!(RUNS, Unit::Count, "Runtime runs, by slots filled.");
    describe_histogram!(RUN_DURATION, Unit::Seconds, "Duration of runtime runs (the rate of its _sum divided by rkserve_instances is the busy ratio).");
    describe_counter!(DECODE_STEPS, Unit::Count, "Decode steps of all runs.");
    describe_counter!(
        REFORMS,
        Unit::Count,
        "Runs cut at a step boundary to re-form: the requests still generating went on in a new run with waiting requests in the freed slots."
    );
    describe_counter!(
        RESUMED_PREFILL_TOKENS,
        Unit::Count,
        "Prompt tokens the runtime prefilled again to resume requests after a re-form (low when it reuses their cached prefix)."
    );
    describe_counter!(
        DEAD_SLOT_STEPS,
        Unit::Count,
        "Slot-steps the runtime decoded for requests that had already ended (their max_tokens, a stop string, a client gone): compute spent for nobody."
    );
    describe_counter!(
        PREFIX_CACHE_HITS,
        Unit::Count,
        "Requests whose first run started from a prefix its slot already held (the runtime prefilled fewer tokens than the prompt's)."
    );
    describe_counter!(
        PREFIX_CACHE_MISSES,
        Unit::Count,
        "Requests whose runtime prefilled the whole prompt (only runtimes that report prefill tokens in their perf stats count)."
    );
    describe_gauge!(
        PROMPT_CACHE_BYTES,
        Unit::Bytes,
        "Bytes of prompt-cache files (saved prefill state of shared prefixes) in the cache directory."
    );
    describe_counter!(
        PROMPT_CACHE_SAVES,
        Unit::Count,
        "Prompt-cache files written: a hot prefix prefilled once and saved by the runtime."
    );
    describe_counter!(
        PROMPT_CACHE_LOADS,
        Unit::Count,
        "Prompt-cache files loaded into a runtime handle, whose runs then reuse that prefix."
    );
    describe_counter!(
        PROMPT_CACHE_EVICTIONS,
        Unit::Count,
        "Prompt-cache files removed, least recently used first, to keep the directory under its size limit."
    );
    describe_counter!(
        PROMPT_CACHE_ERRORS,
        Unit::Count,
        "Prompt-cache saves or loads that failed (the runtime refused, or wrote no file)."
    );
    describe_counter!(
        PREFIX_CACHE_SAVED_TOKENS,
        Unit::Count,
        "Prompt tokens new requests did not prefill because their slot held them (prompt tokens minus the runtime's prefill tokens)."
    );
    describe_counter!(SLOT_STEPS, Unit::Count, "Slots generating, summed over decode steps (divide by decode steps times n_batch for occupancy).");
    describe_gauge!(
        MEMORY,
        Unit::Bytes,
        "Runtime memory reported in the perf stats of the last run."
    );
    describe_gauge!(RUNNING, Unit::Count, "Requests in a run.");
    describe_gauge!(WAITING, Unit::Count, "Requests waiting in the queue.");
    describe_gauge!(INSTANCES, Unit::Count, "Runtime instances of the model.");
    describe_gauge!(INSTANCES_BUSY, Unit::Count, "Instances in a run.");
    describe_gauge!(
        SLOTS,
        Unit::Count,
        "Batch slots of all instances (instances times n_batch)."
    );
    describe_gauge!(SLOTS_BUSY, Unit::Count, "Batch slots holding a request.");
    describe_gauge!(
        MODEL_STATE,
        Unit::Count,
        "1 for the model's current state (loading, ready, unavailable)."
    );
    describe_counter!(
        WORKER_RESTARTS,
        Unit::Count,
        "Engines an instance started again after its worker died or its run stalled."
    );
    describe_counter!(
        NBATCH_FALLBACKS,
        Unit::Count,
        "Times an instance fell back to half its n_batch because rkllm_init kept crashing."
    );
    describe_gauge!(
        INSTANCE_N_BATCH,
        Unit::Count,
        "The n_batch an instance's runtime runs with (below the model's after a fallback)."
    );
    describe_gauge!(
        WORKER_RSS,
        Unit::Bytes,
        "Resident memory of an instance's worker process (VmRSS)."
    );
    describe_gauge!(
        WORKER_PEAK_RSS,
        Unit::Bytes,
        "Peak resident memory of an instance's worker process (VmHWM)."
    );
    describe_gauge!(
        MODEL_LOAD_TIME,
        Unit::Seconds,
        "How long the model's last load took."
    );
}

/// Histogram buckets in base units, sized for NPU latencies (a 0.6B model decodes a token in
/// ~50 ms on RK3588; an 8B one prefills for seconds).
pub fn buckets() -> Vec<(&'static str, Vec<f64>)> {
    let ttft = vec![
        0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0,
        30.0, 60.0,
    ];
    let itl = vec![
        0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
    ];
    let long = vec![
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ];
    let tokens = vec![
        1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
    ];
    let slots = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    vec![
        (TTFT, ttft.clone()),
        (PREFILL_TIME, ttft),
        (ITL, itl.clone()),
        (TPOT, itl),
        (E2E, long.clone()),
        (QUEUE_TIME, long.clone()),
        (DECODE_TIME, long.clone()),
        (RUN_DURATION, long),
        (REQUEST_PROMPT_TOKENS, tokens.clone()),
        (REQUEST_GENERATION_TOKENS, tokens),
        (RUN_SLOTS, slots),
    ]
}
