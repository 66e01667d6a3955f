//! The scheduler under load, printing figures (no pass/fail: the targets are in the issue and
//! the docs compare against them).
//!
//! 1. Zero-delay synthetic profile: the runtime costs nothing, so what is measured is the
//!    scheduler itself: token events delivered to consumers per second, and the added
//!    latency per token (from the runtime's callback to the consumer holding the event).
//! 2. The default model: aggregate tokens/s of 8 concurrent requests on one instance of
//!    n_batch 8, to compare with the runtime's own ceiling (runtime_batch bench).
//!
//! `cargo bench -p rkserve-benches --bench scheduler_throughput`
//! Env: SKIP_MODEL=1 skips part 2.

use hdrhistogram::Histogram;
use rkllm::Sampling;
use scheduler::{Event, FinishReason, ModelConfig, Request, Scheduler};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn lib() -> PathBuf {
    std::env::var_os("RKLLM_LIB")
        .map(PathBuf::from)
        .or_else(rkllm::cpu_runtime_near_exe)
        .expect("librkllmrt.so: run cargo build --release first")
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn request(model: &str, prompt: String, max_tokens: u32) -> Request {
    Request {
        model: model.into(),
        prompt_ids: None,
        prompt_tokens: prompt.len().div_ceil(4),
        prompt,
        sampling: Sampling::greedy(),
        max_tokens,
        stop: vec![],
        arrival: Instant::now(),
        prefix: None,
    }
}

/// One instance of n_batch 8 on a synthetic profile with `step_ms` per decode step, no batch
/// window: every request starts as soon as a slot is free.
fn synthetic_scheduler(step_ms: f64) -> Scheduler {
    let profile = std::env::temp_dir().join(format!(
        "rkserve-bench-{}-{step_ms}.toml",
        std::process::id()
    ));
    std::fs::write(&profile, format!("[timing]\ndecode_step_ms = {step_ms}\n")).unwrap();
    let mut m = ModelConfig::new("zero", profile, lib());
    m.n_batch = 8;
    m.batch_window = Duration::ZERO;
    m.max_queue = 10_000;
    m.cpus = Some(vec![]);
    let s = Scheduler::new(vec![m]);
    assert!(s.wait_loaded(Duration::from_secs(30)));
    s
}

/// `step_ms` 0 saturates the scheduler (throughput); a realistic step leaves it idle between
/// steps, so the latency is the scheduler's own cost per token, not a backlog.
fn overhead(step_ms: f64, clients: usize, per_client: usize) {
    let s = synthetic_scheduler(step_ms);
    let tokens = if step_ms > 0.0 { 64u32 } else { 256 };
    let started = Instant::now();
    let results: Vec<(u64, Histogram<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let s = &s;
                scope.spawn(move || {
                    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let mut events = 0u64;
                    for r in 0..per_client {
                        let mut st = s
                            .submit(request("zero", format!("client {c} request {r}"), tokens))
                            .expect("submit");
                        while let Some(e) = st.blocking_next() {
                            match e {
                                Event::Text { at, .. } => {
                                    events += 1;
                                    let ns = at.elapsed().as_nanos() as u64;
                                    lat.saturating_record(ns.max(1));
                                }
                                Event::Embedding { .. } => {}
                                Event::End { reason, .. } => {
                                    assert_eq!(reason, FinishReason::Length);
                                    break;
                                }
                            }
                        }
                    }
                    (events, lat)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    print_row(step_ms, &clients.to_string(), started, &results);
}

/// The floor under the 1 ms rows: the same fan-out with no scheduler, no runtime and no
/// FFI. A thread stamps a step every `step_ms` and sends one event per consumer down the
/// same kind of channel (tokio unbounded mpsc, `blocking_recv`); what the consumers measure
/// is the OS waking a parked thread, which any consumer of any scheduler pays.
fn floor(step_ms: f64, clients: usize, steps: usize) {
    let mut txs = Vec::with_capacity(clients);
    let mut rxs = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        txs.push(tx);
        rxs.push(rx);
    }
    let started = Instant::now();
    let results: Vec<(u64, Histogram<u64>)> = std::thread::scope(|scope| {
        let consumers: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                scope.spawn(move || {
                    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let mut events = 0u64;
                    while let Some((_, at)) = rx.blocking_recv() {
                        events += 1;
                        lat.saturating_record((at.elapsed().as_nanos() as u64).max(1));
                    }
                    (events, lat)
                })
            })
            .collect();
        let step = Duration::from_secs_f64(step_ms / 1000.0);
        for _ in 0..steps {
            std::thread::sleep(step);
            let at = Instant::now();
            for (i, tx) in txs.iter().enumerate() {
                let _ = tx.send((format!("token {i}"), at));
            }
        }
        txs.clear();
        consumers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    print_row(
        step_ms,
        &format!("{clients} (bare channel, no scheduler)"),
        started,
        &results,
    );
}

/// One table row from every consumer's event count and latency histogram.
fn print_row(step_ms: f64, consumers: &str, started: Instant, results: &[(u64, Histogram<u64>)]) {
    let secs = started.elapsed().as_secs_f64();
    let events: u64 = results.iter().map(|r| r.0).sum();
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for (_, h) in results {
        lat.add(h).unwrap();
    }
    println!(
        "| {step_ms} ms | {consumers} | {events} | {secs:.2} | {:.0} | {:.1} µs | {:.1} µs | {:.1} µs |",
        events as f64 / secs,
        lat.value_at_quantile(0.5) as f64 / 1000.0,
        lat.value_at_quantile(0.99) as f64 / 1000.0,
        lat.max() as f64 / 1000.0
    );
}

/// As the server consumes events: async tasks on a 2-worker tokio runtime (actix's default
/// on this machine), not one parked OS thread per request.
fn overhead_async(step_ms: f64, clients: usize, per_client: usize) {
    let s = std::sync::Arc::new(synthetic_scheduler(step_ms));
    let tokens = if step_ms > 0.0 { 64u32 } else { 256 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let results: Vec<(u64, Histogram<u64>)> = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let mut events = 0u64;
                    for r in 0..per_client {
                        let mut st = s
                            .submit(request("zero", format!("client {c} request {r}"), tokens))
                            .expect("submit");
                        while let Some(e) = st.next().await {
                            match e {
                                Event::Text { at, .. } => {
                                    events += 1;
                                    lat.saturating_record((at.elapsed().as_nanos() as u64).max(1));
                                }
                                Event::Embedding { .. } => {}
                                Event::End { .. } => break,
                            }
                        }
                    }
                    (events, lat)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    print_row(
        step_ms,
        &format!("{clients} async tasks"),
        started,
        &results,
    );
}

fn default_model() {
    let path = workspace().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        println!(
            "default model missing ({}): run scripts/fetch-default-model",
            path.display()
        );
        return;
    }
    let mut m = ModelConfig::new("smollm2", path, lib());
    m.n_batch = 8;
    m.context_len = 512;
    m.batch_window = Duration::from_millis(50);
    m.cpus = Some(vec![]);
    let s = Scheduler::new(vec![m]);
    assert!(s.wait_loaded(Duration::from_secs(60)));
    let topics = [
        "dragons", "the sea", "a robot", "the moon", "a city", "a forest", "winter", "a train",
    ];
    let chat = |t: &str| {
        format!(
            "<|im_start|>user\nWrite a long story about {t}.<|im_end|>\n<|im_start|>assistant\n"
        )
    };
    let runs = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    // A warm-up run, then the measured ones.
    let mut rates = Vec::new();
    for run in 0..=runs {
        let streams: Vec<_> = topics
            .iter()
            .map(|t| s.submit(request("smollm2", chat(t), 64)).unwrap())
            .collect();
        let per: Vec<(u32, Instant, Instant)> = std::thread::scope(|scope| {
            let hs: Vec<_> = streams
                .into_iter()
                .map(|mut st| {
                    scope.spawn(move || {
                        let (mut first, mut last, mut n) = (None, Instant::now(), 0);
                        while let Some(e) = st.blocking_next() {
                            match e {
                                Event::Text { at, .. } => {
                                    first.get_or_insert(at);
                                    last = at;
                                }
                                Event::Embedding { .. } => {}
                                Event::End {
                                    completion_tokens, ..
                                } => {
                                    n = completion_tokens;
                                    break;
                                }
                            }
                        }
                        (n, first.unwrap_or(last), last)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let tokens: u32 = per.iter().map(|p| p.0).sum();
        let start = per.iter().map(|p| p.1).min().unwrap();
        let end = per.iter().map(|p| p.2).max().unwrap();
        // The first token of each comes from prefill; decode produced the rest.
        let decoded = tokens - per.len() as u32;
        let rate = decoded as f64 / (end - start).as_secs_f64();
        if run > 0 {
            rates.push((rate, tokens));
        }
    }
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (median, tokens) = rates[rates.len() / 2];
    println!();
    println!(
        "## Default model through the scheduler: 8 concurrent requests, 1 instance, n_batch 8"
    );
    println!("| runs | completion tokens per run | aggregate decode tok/s (median) |");
    println!("|---|---|---|");
    println!("| {runs} | {tokens} | {median:.1} |");
}

fn main() {
    // cargo bench passes --bench; nothing else to parse.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {threads} CPUs; runtime {}", lib().display());
    println!("## Scheduler overhead: synthetic engine, 1 instance, n_batch 8");
    println!(
        "Added latency: from the runtime's callback to the consumer thread holding the event."
    );
    println!("| decode step | consumer threads | token events | seconds | events/s | added latency p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    overhead(0.0, 8, 64);
    overhead(0.0, 64, 8);
    overhead(1.0, 8, 8);
    floor(1.0, 8, 512);
    overhead_async(0.0, 64, 8);
    overhead_async(1.0, 8, 8);
    if std::env::var_os("SKIP_MODEL").is_none() {
        default_model();
    }
}
