//! One level's records reduced to throughput, latency percentiles and goodput.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::record::Record;

/// The load a level applies: closed-loop workers or open-loop arrivals per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    Concurrency(u64),
    Rate(f64),
}

impl Load {
    pub fn value(self) -> f64 {
        match self {
            Load::Concurrency(c) => c as f64,
            Load::Rate(r) => r,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Load::Concurrency(c) => format!("concurrency {c}"),
            Load::Rate(r) => format!("rate {r}/s"),
        }
    }
}

/// Service-level objectives, seconds; absent ones are not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_seconds: Option<f64>,
    pub tpot_seconds: Option<f64>,
    pub e2e_seconds: Option<f64>,
}

impl Slo {
    pub fn is_empty(&self) -> bool {
        self.ttft_seconds.is_none() && self.tpot_seconds.is_none() && self.e2e_seconds.is_none()
    }

    /// A completed request that produced no text has no TTFT and misses a TTFT objective; one
    /// with a single token has no TPOT and cannot miss a TPOT objective.
    pub fn met(&self, r: &Record) -> bool {
        let within = |limit: Option<f64>, value: Option<Duration>| match (limit, value) {
            (None, _) => true,
            (Some(l), Some(v)) => v.as_secs_f64() <= l,
            (Some(_), None) => false,
        };
        r.outcome.is_ok()
            && within(self.ttft_seconds, r.ttft)
            && (r.tpot().is_none() || within(self.tpot_seconds, r.tpot()))
            && within(self.e2e_seconds, Some(r.e2e))
    }
}

/// Percentiles and mean, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    /// Values are kept in microseconds at 3 significant digits: percentiles are exact to 0.1%
    /// (anything beyond a day is clamped to a day).
    pub fn of(values: impl IntoIterator<Item = Duration>) -> Option<Stats> {
        const DAY_US: u64 = 86_400_000_000;
        let mut h = Histogram::<u64>::new_with_bounds(1, DAY_US, 3).expect("valid bounds");
        for v in values {
            h.saturating_record(u64::try_from(v.as_micros()).unwrap_or(u64::MAX));
        }
        if h.is_empty() {
            return None;
        }
        let secs = |us: u64| us as f64 / 1e6;
        Some(Stats {
            p50: secs(h.value_at_quantile(0.50)),
            p90: secs(h.value_at_quantile(0.90)),
            p99: secs(h.value_at_quantile(0.99)),
            max: secs(h.max()),
            mean: h.mean() / 1e6,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Goodput {
    /// Requests meeting every objective, per second of the level.
    pub requests_per_second: f64,
    /// Of all measured requests (failed ones miss the objectives).
    pub fraction: f64,
    pub met: u64,
    pub slo: Slo,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelSummary {
    #[serde(flatten)]
    pub load: Load,
    pub completed: u64,
    pub failed: u64,
    pub duration_seconds: f64,
    pub requests_per_second: f64,
    pub output_tokens_per_second: f64,
    pub input_tokens_per_second: f64,
    pub output_tokens: u64,
    pub input_tokens: u64,
    pub ttft_seconds: Option<Stats>,
    pub itl_seconds: Option<Stats>,
    pub tpot_seconds: Option<Stats>,
    pub e2e_seconds: Option<Stats>,
    pub goodput: Option<Goodput>,
    pub errors: BTreeMap<String, u64>,
}

/// `wall` is the level's measured wall time, warm-up excluded. Latencies and token counts come
/// from completed requests only: a failed request's timings describe the failure.
pub fn summarize(load: Load, records: &[Record], wall: Duration, slo: &Slo) -> LevelSummary {
    let ok: Vec<&Record> = records.iter().filter(|r| r.outcome.is_ok()).collect();
    let mut errors = BTreeMap::new();
    for message in records.iter().filter_map(|r| r.outcome.error_message()) {
        *errors.entry(message).or_insert(0) += 1;
    }
    let secs = wall.as_secs_f64();
    let per_second = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let output_tokens: u64 = ok.iter().map(|r| r.output_tokens).sum();
    let input_tokens: u64 = ok.iter().filter_map(|r| r.prompt_tokens).sum();
    let goodput = (!slo.is_empty()).then(|| {
        let met = ok.iter().filter(|r| slo.met(r)).count() as u64;
        Goodput {
            requests_per_second: per_second(met),
            fraction: if records.is_empty() {
                0.0
            } else {
                met as f64 / records.len() as f64
            },
            met,
            slo: *slo,
        }
    });
    LevelSummary {
        load,
        completed: ok.len() as u64,
        failed: (records.len() - ok.len()) as u64,
        duration_seconds: secs,
        requests_per_second: per_second(ok.len() as u64),
        output_tokens_per_second: per_second(output_tokens),
        input_tokens_per_second: per_second(input_tokens),
        output_tokens,
        input_tokens,
        ttft_seconds: Stats::of(ok.iter().filter_map(|r| r.ttft)),
        itl_seconds: Stats::of(ok.iter().flat_map(|r| r.itl.iter().copied())),
        tpot_seconds: Stats::of(ok.iter().filter_map(|r| r.tpot())),
        e2e_seconds: Stats::of(ok.iter().map(|r| r.e2e)),
        goodput,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Outcome;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn record(ttft: u64, e2e: u64, tokens: u64) -> Record {
        Record {
            outcome: Outcome::Ok,
            ttft: Some(ms(ttft)),
            itl: vec![],
            e2e: ms(e2e),
            prompt_tokens: Some(10),
            output_tokens: tokens,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.002
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_ms() {
        let s = Stats::of((1..=1000).map(ms)).unwrap();
        assert!(close(s.p50, 0.500), "{s:?}");
        assert!(close(s.p90, 0.900), "{s:?}");
        assert!(close(s.p99, 0.990), "{s:?}");
        assert!(close(s.max, 1.000), "{s:?}");
        assert!(close(s.mean, 0.5005), "{s:?}");
        assert_eq!(Stats::of(std::iter::empty()), None);
    }

    #[test]
    fn throughput_counts_completed_requests_only() {
        let mut records = vec![record(100, 1100, 11), record(200, 2200, 21)];
        records.push(Record {
            outcome: Outcome::Http {
                status: 429,
                message: "queue full".into(),
            },
            ttft: None,
            itl: vec![],
            e2e: ms(1),
            prompt_tokens: None,
            output_tokens: 0,
        });
        let s = summarize(
            Load::Concurrency(2),
            &records,
            Duration::from_secs(4),
            &Slo::default(),
        );
        assert_eq!((s.completed, s.failed), (2, 1));
        assert_eq!((s.output_tokens, s.input_tokens), (32, 20));
        assert!(close(s.output_tokens_per_second, 8.0));
        assert!(close(s.input_tokens_per_second, 5.0));
        assert!(close(s.requests_per_second, 0.5));
        assert_eq!(s.errors["HTTP 429: queue full"], 1);
        assert!(
            close(s.tpot_seconds.unwrap().max, 0.100),
            "(2200-200)/20 ms"
        );
        assert!(s.goodput.is_none());
    }

    #[test]
    fn goodput_requires_every_given_slo() {
        // tpot = (e2e - ttft) / (tokens - 1)
        let records = vec![
            record(100, 1100, 11), // ttft 0.1, tpot 0.1, e2e 1.1: meets all
            record(600, 1600, 11), // misses ttft
            record(100, 3100, 11), // misses tpot and e2e
            record(100, 100, 1),   // one token: no tpot, meets all
        ];
        let slo = Slo {
            ttft_seconds: Some(0.5),
            tpot_seconds: Some(0.15),
            e2e_seconds: Some(2.0),
        };
        let s = summarize(Load::Rate(1.0), &records, Duration::from_secs(2), &slo);
        let g = s.goodput.unwrap();
        assert_eq!(g.met, 2);
        assert!(close(g.requests_per_second, 1.0));
        assert!(close(g.fraction, 0.5));
        let ttft_only = Slo {
            ttft_seconds: Some(0.5),
            ..Slo::default()
        };
        let g = summarize(
            Load::Rate(1.0),
            &records,
            Duration::from_secs(2),
            &ttft_only,
        )
        .goodput
        .unwrap();
        assert_eq!(g.met, 3);
    }

    #[test]
    fn load_serializes_as_its_own_key() {
        let s = summarize(
            Load::Rate(2.0),
            &[],
            Duration::from_secs(1),
            &Slo::default(),
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["rate"], 2.0);
        assert!(v["ttft_seconds"].is_null() && v["goodput"].is_null());
        let s = summarize(
            Load::Concurrency(8),
            &[],
            Duration::from_secs(1),
            &Slo::default(),
        );
        assert_eq!(serde_json::to_value(&s).unwrap()["concurrency"], 8);
    }
}
