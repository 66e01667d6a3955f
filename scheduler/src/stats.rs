//! Exact latency percentiles per model, for people without a Prometheus server: HDR
//! histograms since start and over a sliding window (kept as a ring of sub-windows, so the
//! window slides in steps of a tenth of its length).

use crate::records::{Outcome, RequestRecord};
use crate::request::FailKind;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

const SUB_WINDOWS: u32 = 10;
/// Microseconds; latencies beyond an hour are clamped.
const MAX_US: u64 = 3_600_000_000;

#[derive(Clone)]
struct Set {
    requests: u64,
    failed: u64,
    failures: BTreeMap<FailKind, u64>,
    ttft: Histogram<u64>,
    itl: Histogram<u64>,
    e2e: Histogram<u64>,
}

impl Set {
    fn new() -> Set {
        let h = || Histogram::new_with_bounds(1, MAX_US, 3).expect("valid HDR bounds");
        Set {
            requests: 0,
            failed: 0,
            failures: BTreeMap::new(),
            ttft: h(),
            itl: h(),
            e2e: h(),
        }
    }

    fn record(&mut self, r: &RequestRecord) {
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, MAX_US);
        match r.counted {
            Some(Outcome::Failed(kind)) => {
                self.failed += 1;
                *self.failures.entry(kind).or_default() += 1;
            }
            Some(_) => self.requests += 1,
            None => {}
        }
        if matches!(r.outcome, Outcome::Failed(_)) {
            return;
        }
        if let Some(t) = r.ttft {
            let _ = self.ttft.record(us(t));
        }
        let _ = self.e2e.record(us(r.e2e));
        for &gap in &r.itl_us {
            let _ = self.itl.record((gap as u64).clamp(1, MAX_US));
        }
    }

    fn add(&mut self, other: &Set) {
        self.requests += other.requests;
        self.failed += other.failed;
        for (k, n) in &other.failures {
            *self.failures.entry(*k).or_default() += n;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.ttft.add(&other.ttft);
        let _ = self.itl.add(&other.itl);
        let _ = self.e2e.add(&other.e2e);
    }
}

struct ModelStats {
    since_start: Set,
    /// Sub-windows, oldest first, each with the time it began.
    recent: VecDeque<(Instant, Set)>,
}

/// Percentiles of one latency, in seconds. All zero when nothing was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let s = |us: u64| us as f64 / 1e6;
        Percentiles {
            count: h.len(),
            p50: s(h.value_at_quantile(0.5)),
            p90: s(h.value_at_quantile(0.9)),
            p99: s(h.value_at_quantile(0.99)),
            max: s(h.max()),
            mean: h.mean() / 1e6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// Requests that completed (stop or length).
    pub requests: u64,
    pub failed: u64,
    /// `failed` by kind (kinds with none are absent).
    pub failures: BTreeMap<FailKind, u64>,
    pub ttft: Percentiles,
    pub itl: Percentiles,
    pub e2e: Percentiles,
}

impl Summary {
    fn of(s: &Set) -> Summary {
        Summary {
            requests: s.requests,
            failed: s.failed,
            failures: s.failures.clone(),
            ttft: Percentiles::of(&s.ttft),
            itl: Percentiles::of(&s.itl),
            e2e: Percentiles::of(&s.e2e),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub model: String,
    pub window: Summary,
    pub since_start: Summary,
}

pub struct LatencyStats {
    window: Duration,
    models: Mutex<BTreeMap<String, ModelStats>>,
}

impl LatencyStats {
    pub fn new(window: Duration) -> LatencyStats {
        LatencyStats {
            window: window.max(Duration::from_secs(1)),
            models: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn record(&self, r: &RequestRecord) {
        self.record_at(r, Instant::now());
    }

    fn record_at(&self, r: &RequestRecord, now: Instant) {
        let sub = self.window / SUB_WINDOWS;
        let mut models = self.models.lock();
        let m = models
            .entry(r.model.to_string())
            .or_insert_with(|| ModelStats {
                since_start: Set::new(),
                recent: VecDeque::new(),
            });
        m.since_start.record(r);
        let fresh = m
            .recent
            .back()
            .is_some_and(|(began, _)| now.saturating_duration_since(*began) < sub);
        if !fresh {
            m.recent.push_back((now, Set::new()));
        }
        m.recent.back_mut().expect("just ensured").1.record(r);
        self.expire(m, now);
    }

    fn expire(&self, m: &mut ModelStats, now: Instant) {
        while m
            .recent
            .front()
            .is_some_and(|(began, _)| now.saturating_duration_since(*began) >= self.window)
        {
            m.recent.pop_front();
        }
    }

    /// Every model's percentiles, over the window and since start.
    pub fn summaries(&self) -> Vec<ModelSummary> {
        self.summaries_at(Instant::now())
    }

    fn summaries_at(&self, now: Instant) -> Vec<ModelSummary> {
        let mut models = self.models.lock();
        models
            .iter_mut()
            .map(|(name, m)| {
                self.expire(m, now);
                let mut window = Set::new();
                for (_, s) in &m.recent {
                    window.add(s);
                }
                ModelSummary {
                    model: name.clone(),
                    window: Summary::of(&window),
                    since_start: Summary::of(&m.since_start),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::FailKind;

    fn record(model: &str, ttft_ms: u64, itl_ms: &[u32], outcome: Outcome) -> RequestRecord {
        RequestRecord {
            model: model.into(),
            outcome,
            counted: Some(outcome),
            prompt_tokens: 5,
            completion_tokens: itl_ms.len() as u32 + 1,
            prefilled_tokens: None,
            queue: Duration::ZERO,
            ttft: Some(Duration::from_millis(ttft_ms)),
            prefill: None,
            decode: Duration::ZERO,
            e2e: Duration::from_millis(ttft_ms + itl_ms.iter().map(|&g| g as u64).sum::<u64>()),
            itl_us: itl_ms.iter().map(|g| g * 1000).collect(),
        }
    }

    #[test]
    fn percentiles_are_exact_to_three_digits() {
        let stats = LatencyStats::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 1..=100 {
            stats.record_at(&record("m", i * 10, &[20, 40], Outcome::Stop), t0);
        }
        stats.record_at(&record("m", 1, &[], Outcome::Failed(FailKind::Timeout)), t0);
        let s = &stats.summaries_at(t0)[0];
        assert_eq!((s.since_start.requests, s.since_start.failed), (100, 1));
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1e-6;
        assert!(
            close(s.since_start.ttft.p50, 0.5),
            "{:?}",
            s.since_start.ttft
        );
        assert!(
            close(s.since_start.ttft.p99, 0.99),
            "{:?}",
            s.since_start.ttft
        );
        assert!(close(s.since_start.ttft.max, 1.0));
        assert_eq!(s.since_start.itl.count, 200);
        assert!(close(s.since_start.itl.p50, 0.02) && close(s.since_start.itl.max, 0.04));
        assert_eq!(s.window, s.since_start);
    }

    #[test]
    fn the_window_forgets_old_requests_and_since_start_does_not() {
        let stats = LatencyStats::new(Duration::from_secs(10));
        let t0 = Instant::now();
        stats.record_at(&record("a", 5000, &[], Outcome::Stop), t0);
        stats.record_at(
            &record("a", 100, &[], Outcome::Stop),
            t0 + Duration::from_secs(6),
        );
        stats.record_at(
            &record("b", 100, &[], Outcome::Length),
            t0 + Duration::from_secs(6),
        );
        let at = |secs| stats.summaries_at(t0 + Duration::from_secs(secs));
        let s = at(8);
        assert_eq!(s[0].window.requests, 2, "both inside the window");
        let s = at(12);
        assert_eq!((s[0].model.as_str(), s[0].window.requests), ("a", 1));
        assert!(
            s[0].window.ttft.max < 0.2,
            "the 5 s request left the window"
        );
        assert_eq!(s[0].since_start.requests, 2);
        assert!(s[0].since_start.ttft.max >= 4.99);
        assert_eq!(s[1].model, "b");
        let s = at(30);
        assert_eq!(s[0].window, Summary::default());
    }
}
