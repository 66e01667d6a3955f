//! Prometheus exposition at GET /metrics: the scheduler records into the `metrics` facade,
//! this installs the exporter (with real histogram buckets, not summaries) and, before each
//! scrape, refreshes the gauges that describe the present from a scheduler snapshot.

use crate::catalog::Catalog;
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
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; without it they pile up between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}
