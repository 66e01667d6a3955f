//! What the worker process costs: the same requests through a scheduler whose instance runs
//! in-process and one whose instance runs in a worker (`rkserve worker`), alternated so that
//! both see the same machine. Prints figures; the targets (>= 97% of in-process tokens/s at
//! B = 1 and 8, <= 100 µs more per token at p50) are compared in docs/BENCHMARKS.md.
//!
//! 1. The default model: aggregate decode tokens/s with 1 and with 8 concurrent requests.
//! 2. A synthetic profile with 1 ms steps: time to first token of a short request (the Run
//!    command and the first step each cross the boundary once, so its increase bounds what
//!    one step's trip adds to every token), and the inter-token gap seen by the consumer.
//!
//! `cargo build --release && cargo bench -p rkserve-benches --bench isolation`
//! Env: RUNS (default 5), RKSERVE_EXE (default: rkserve next to the runtime library).

use hdrhistogram::Histogram;
use rkllm::Sampling;
use scheduler::{Event, Isolation, ModelConfig, Request, Scheduler};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn lib() -> PathBuf {
    std::env::var_os("RKLLM_LIB")
        .map(PathBuf::from)
        .or_else(rkllm::cpu_runtime_near_exe)
        .expect("librkllmrt.so: run cargo build --release first")
}

fn exe() -> PathBuf {
    if let Some(e) = std::env::var_os("RKSERVE_EXE") {
        return e.into();
    }
    let lib = lib();
    let dir = lib.parent().expect("a directory");
    [dir.join("rkserve"), dir.join("../rkserve")]
        .into_iter()
        .find(|p| p.is_file())
        .expect("the rkserve binary: run cargo build --release first")
}

fn request(prompt: String, max_tokens: u32) -> Request {
    Request {
        model: "m".into(),
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

fn scheduler(model: PathBuf, isolation: &Isolation, context: usize) -> Scheduler {
    let mut m = ModelConfig::new("m", model, lib());
    m.n_batch = 8;
    m.context_len = context;
    m.batch_window = Duration::from_millis(20);
    m.cpus = Some(vec![]);
    m.isolation = isolation.clone();
    let s = Scheduler::new(vec![m]);
    assert!(s.wait_loaded(Duration::from_secs(60)));
    s
}

/// Each request's (tokens, first token, last token, gaps between tokens).
fn run_batch(
    s: &Scheduler,
    prompts: &[String],
    max_tokens: u32,
) -> Vec<(u32, Instant, Instant, Vec<Duration>)> {
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| s.submit(request(p.clone(), max_tokens)).unwrap())
        .collect();
    std::thread::scope(|scope| {
        let hs: Vec<_> = streams
            .into_iter()
            .map(|mut st| {
                scope.spawn(move || {
                    let (mut first, mut last, mut n, mut gaps) = (None, None, 0, Vec::new());
                    while let Some(e) = st.blocking_next() {
                        match e {
                            Event::Text { .. } => {
                                let now = Instant::now();
                                if let Some(l) = last {
                                    gaps.push(now - l);
                                }
                                first.get_or_insert(now);
                                last = Some(now);
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
                    let l = last.unwrap_or_else(Instant::now);
                    (n, first.unwrap_or(l), l, gaps)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn decode_rate(per: &[(u32, Instant, Instant, Vec<Duration>)]) -> f64 {
    let tokens: u32 = per.iter().map(|p| p.0).sum();
    let start = per.iter().map(|p| p.1).min().unwrap();
    let end = per.iter().map(|p| p.2).max().unwrap();
    (tokens - per.len() as u32) as f64 / (end - start).as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let modes = [
        ("in-process", Isolation::InProcess),
        ("process", Isolation::Process { exe: exe() }),
    ];
    println!(
        "machine: {} CPUs; runtime {}; worker {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        lib().display(),
        exe().display()
    );

    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if model.is_file() {
        let topics = [
            "dragons", "the sea", "a robot", "the moon", "a city", "a forest", "winter", "a train",
        ];
        let prompts: Vec<String> = topics
            .iter()
            .map(|t| format!("<|im_start|>user\nWrite a long story about {t}.<|im_end|>\n<|im_start|>assistant\n"))
            .collect();
        let scheds: Vec<Scheduler> = modes
            .iter()
            .map(|(_, i)| scheduler(model.clone(), i, 512))
            .collect();
        println!("\n## Default model: aggregate decode tok/s, median of {runs} alternated runs (64 tokens each)");
        println!("| concurrent requests | in-process | process | process / in-process |");
        println!("|---|---|---|---|");
        for b in [1usize, 8] {
            let mut rates = [Vec::new(), Vec::new()];
            for run in 0..=runs {
                for (k, s) in scheds.iter().enumerate() {
                    let r = decode_rate(&run_batch(s, &prompts[..b], 64));
                    if run > 0 {
                        rates[k].push(r);
                    }
                }
            }
            let (a, p) = (median(rates[0].clone()), median(rates[1].clone()));
            println!("| {b} | {a:.1} | {p:.1} | {:.3} |", p / a);
        }
    } else {
        println!(
            "default model missing ({}): run scripts/fetch-default-model",
            model.display()
        );
    }

    let profile =
        std::env::temp_dir().join(format!("rkserve-isolation-{}.toml", std::process::id()));
    std::fs::write(&profile, "[timing]\ndecode_step_ms = 1.0\n").unwrap();
    let scheds: Vec<Scheduler> = modes
        .iter()
        .map(|(_, i)| scheduler(profile.clone(), i, 4096))
        .collect();
    // Bounded: saturating_record never resizes an auto-resizing histogram, so one made with
    // new(3) clamped every first token (~20 ms) to its initial top and read "2 µs".
    let micros = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut ttft = vec![micros(), micros()];
    let mut gap = vec![micros(), micros()];
    for i in 0..(200 * runs.max(1)) {
        for (k, s) in scheds.iter().enumerate() {
            let started = Instant::now();
            let per = run_batch(s, &[format!("request {i}")], 8);
            ttft[k].saturating_record((per[0].1 - started).as_micros() as u64);
            for g in &per[0].3 {
                gap[k].saturating_record(g.as_micros() as u64);
            }
        }
    }
    println!("\n## Synthetic, 1 ms decode steps, one request at a time ({} requests of 8 tokens per mode; the first token includes the 20 ms batch window)", 200 * runs.max(1));
    println!("| | in-process p50 | process p50 | difference |");
    println!("|---|---|---|---|");
    for (name, h) in [("time to first token", &ttft), ("inter-token gap", &gap)] {
        let (a, p) = (h[0].value_at_quantile(0.5), h[1].value_at_quantile(0.5));
        println!("| {name} | {a} µs | {p} µs | {} µs |", p as i64 - a as i64);
    }
    let _ = std::fs::remove_file(profile);
}
