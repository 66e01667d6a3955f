//! Prometheus exposition at GET /metrics: the scheduler records into the `metrics` facade,
//! this installs the exporter (with real histogram buckets, not summaries) and, before each
//! scrape, refreshes the gauges that describe the present from a scheduler snapshot.

use crate::capacity::Load;
use crate::catalog::Catalog;
use metrics::{describe_gauge, gauge};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use scheduler::telemetry;
use std::collections::BTreeSet;

pub struct Exporter {
    handle: PrometheusHandle,
    /// Models seen at the last scrape, so an unloaded model's gauges drop to zero.
    seen: Mutex<BTreeSet<String>>,
}

impl Exporter {
    /// Installs the process-wide recorder; call once, before any model loads.
    pub fn install() -> Result<Exporter, BuildError> {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in telemetry::buckets() {
            builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), &buckets)?;
        }
        let handle = builder.install_recorder()?;
        telemetry::describe();
        describe_capacity();
        Ok(Exporter {
            handle,
            seen: Mutex::new(BTreeSet::new()),
        })
    }

    /// The exposition text, with the present-state gauges refreshed.
    pub fn render(&self, catalog: &Catalog) -> String {
        let snapshot = catalog.scheduler.snapshot();
        let now: BTreeSet<String> = snapshot.iter().map(|m| m.name.clone()).collect();
        let gone: Vec<String> = {
            let mut seen = self.seen.lock();
            let gone = seen.difference(&now).cloned().collect();
            *seen = now;
            gone
        };
        telemetry::publish(
            &snapshot,
            |name| catalog.load_info(name).map(|(_, took)| took.as_secs_f64()),
            &gone,
        );
        publish_capacity(&snapshot, &gone);
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; without it they pile up between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// The gauges the Gateway API Inference Extension's endpoint picker reads by default (vLLM's
/// names and its `model_name` label, so no per-engine mapping is needed), our own KV-cache
/// and free-slots gauges beside them.
const VLLM_WAITING: &str = "vllm:num_requests_waiting";
const VLLM_RUNNING: &str = "vllm:num_requests_running";
const VLLM_KV_USAGE: &str = "vllm:kv_cache_usage_perc";
const SLOTS_FREE: &str = "rkserve_slots_free";
const KV_USAGE: &str = "rkserve_kv_cache_usage_ratio";

fn describe_capacity() {
    describe_gauge!(
        VLLM_WAITING,
        "Requests waiting for a batch slot (rkserve_num_requests_waiting under vLLM's name)."
    );
    describe_gauge!(
        VLLM_RUNNING,
        "Requests generating in a batch slot (rkserve_num_requests_running under vLLM's name)."
    );
    describe_gauge!(
        VLLM_KV_USAGE,
        "KV-cache cells in use over all there are, 0 to 1 (rkserve_kv_cache_usage_ratio)."
    );
    describe_gauge!(
        SLOTS_FREE,
        "Batch slots of working instances not generating now: what a new request can take."
    );
    describe_gauge!(
        KV_USAGE,
        "KV-cache cells held by requests in flight over n_batch x context per instance, 0 to 1."
    );
}

fn publish_capacity(snapshot: &[scheduler::ModelSnapshot], gone: &[String]) {
    for m in snapshot {
        let (l, name) = (Load::of(m), &m.name);
        gauge!(VLLM_WAITING, "model_name" => name.clone()).set(l.waiting as f64);
        gauge!(VLLM_RUNNING, "model_name" => name.clone()).set(l.busy as f64);
        gauge!(VLLM_KV_USAGE, "model_name" => name.clone()).set(l.kv_usage);
        gauge!(SLOTS_FREE, "model" => name.clone()).set(l.free_slots() as f64);
        gauge!(KV_USAGE, "model" => name.clone()).set(l.kv_usage);
    }
    for name in gone {
        for g in [VLLM_WAITING, VLLM_RUNNING, VLLM_KV_USAGE] {
            gauge!(g, "model_name" => name.clone()).set(0.0);
        }
        for g in [SLOTS_FREE, KV_USAGE] {
            gauge!(g, "model" => name.clone()).set(0.0);
        }
    }
}
