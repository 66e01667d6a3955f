//! Drives one level of load: warm-up, then the measured requests, closed or open loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};

use crate::arrivals::Arrivals;
use crate::cli::Stop;
use crate::client::Client;
use crate::lengths::MaxTokens;
use crate::progress;
use crate::prompts::PromptSet;
use crate::record::{Outcome, Record};
use crate::summary::Load;

/// Consecutive transport failures after which the server is taken to be gone.
const GONE_AFTER: u64 = 20;

/// One level's measured requests.
#[derive(Debug)]
pub struct LevelRun {
    pub records: Vec<Record>,
    /// First request sent to last one finished, warm-up excluded.
    pub wall: Duration,
    /// Set when the level stopped early because the server stopped accepting connections:
    /// the last transport error.
    pub server_gone: Option<String>,
}

/// Watches for a server that has gone away. A closed loop against a refused port would
/// otherwise record thousands of failures a second until the level's end.
#[derive(Debug, Default)]
struct Health {
    consecutive_transport_errors: AtomicU64,
    gone: Mutex<Option<String>>,
}

impl Health {
    fn note(&self, record: &Record) {
        if let Outcome::Transport(message) = &record.outcome {
            let n = self
                .consecutive_transport_errors
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n >= GONE_AFTER {
                *self.gone.lock().expect("not poisoned") = Some(message.clone());
            }
        } else {
            self.consecutive_transport_errors
                .store(0, Ordering::Relaxed);
        }
    }

    fn gone(&self) -> Option<String> {
        self.gone.lock().expect("not poisoned").clone()
    }
}

#[derive(Debug, Clone)]
pub struct Driver {
    pub client: Arc<Client>,
    pub prompts: Arc<PromptSet>,
    pub stop: Stop,
    pub warmup: u64,
    /// Gamma shape of open-loop inter-arrival times (1 = Poisson).
    pub shape: f64,
    pub seed: u64,
    pub max_tokens: MaxTokens,
}

impl Driver {
    pub async fn level(&self, load: Load) -> LevelRun {
        let health = Arc::new(Health::default());
        if self.warmup > 0 {
            // Closed-loop levels warm up at their own concurrency (capped by the warm-up
            // count) so the batch the server forms is the one about to be measured; open-loop
            // levels have no concurrency to match and warm up one request at a time.
            let workers = match load {
                Load::Concurrency(c) => c.min(self.warmup),
                Load::Rate(_) => 1,
            };
            let bar = progress::bar(Some(self.warmup), format!("{} warm-up", load.describe()));
            self.closed_loop(workers, Stop::Requests(self.warmup), &bar, &health)
                .await;
            bar.finish_and_clear();
        }
        let len = match self.stop {
            Stop::Requests(n) => Some(n),
            Stop::Duration(_) => None,
        };
        let bar = progress::bar(len, load.describe());
        let (records, wall) = match load {
            Load::Concurrency(c) => self.closed_loop(c, self.stop, &bar, &health).await,
            Load::Rate(r) => self.open_loop(r, &bar, &health).await,
        };
        bar.finish_and_clear();
        LevelRun {
            records,
            wall,
            server_gone: health.gone(),
        }
    }

    /// `workers` tasks, each sending its next request as soon as its previous one ends.
    async fn closed_loop(
        &self,
        workers: u64,
        stop: Stop,
        bar: &ProgressBar,
        health: &Arc<Health>,
    ) -> (Vec<Record>, Duration) {
        let start = Instant::now();
        // Requests are numbered in the order they are claimed, so prompt i goes out i-th
        // whatever the number of workers.
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..workers {
            let (client, prompts, next, bar, health) = (
                self.client.clone(),
                self.prompts.clone(),
                next.clone(),
                bar.clone(),
                health.clone(),
            );
            let max_tokens = self.max_tokens;
            tasks.spawn(async move {
                let mut records = Vec::new();
                loop {
                    if let Stop::Duration(d) = stop {
                        if start.elapsed() >= d {
                            break;
                        }
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if matches!(stop, Stop::Requests(n) if i >= n) || health.gone().is_some() {
                        break;
                    }
                    let limit = max_tokens.of(i);
                    let record = client.send_limited(&prompts.get(i).text, limit).await;
                    health.note(&record);
                    records.push(record);
                    bar.inc(1);
                }
                records
            });
        }
        let mut records = Vec::new();
        while let Some(done) = tasks.join_next().await {
            records.extend(done.expect("request worker panicked"));
        }
        (records, start.elapsed())
    }

    /// Requests sent at `rate` per second on a fixed schedule, whether or not earlier ones have
    /// finished: the server's queue, not the client, absorbs overload.
    async fn open_loop(
        &self,
        rate: f64,
        bar: &ProgressBar,
        health: &Arc<Health>,
    ) -> (Vec<Record>, Duration) {
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for (i, offset) in Arrivals::new(rate, self.shape, self.seed).enumerate() {
            let i = i as u64;
            let last = match self.stop {
                Stop::Requests(n) => i >= n,
                Stop::Duration(d) => offset >= d,
            };
            if last {
                break;
            }
            tokio::time::sleep_until(start + offset).await;
            if health.gone().is_some() {
                break;
            }
            let (client, prompts, bar, health) = (
                self.client.clone(),
                self.prompts.clone(),
                bar.clone(),
                health.clone(),
            );
            let limit = self.max_tokens.of(i);
            tasks.spawn(async move {
                let record = client.send_limited(&prompts.get(i).text, limit).await;
                health.note(&record);
                bar.inc(1);
                record
            });
        }
        let mut records = Vec::new();
        while let Some(done) = tasks.join_next().await {
            records.push(done.expect("request task panicked"));
        }
        (records, start.elapsed())
    }
}
