//! Prefix caching through the HTTP API (streamed chat, time to the first content chunk), the
//! seed project's scenario: a ~1300-character coding-assistant system prompt and 5 questions.
//! 1. One client: cold (a system prompt never seen) against warm (the same system prompt,
//!    another question), over several rounds, each round with a system prompt of its own.
//!    The second request of a round is the one that saves the prompt-cache file, if any.
//! 2. Eight clients with one new system prompt arriving together, then eight more with it and
//!    other questions.
//!
//! Each on several setups, in one run: the default model (CPU runtime) with prompt-cache
//! files and without, and the RK3588 projection (synthetic Qwen3-0.6B): prefix reuse off
//! (the assumed board) without and with files, and reuse on.
//!
//! Prints figures; the targets (warm at most 1/10 of cold; 8 together at most 2x the
//! single warm p50; reuse off plus files as good as reuse on) are compared in
//! docs/BENCHMARKS.md.
//!
//! `cargo build --release && cargo bench -p rkserve-benches --bench prefix_cache`
//! Env: ROUNDS (default 5), SETUPS (comma-separated names; default all), RKSERVE_EXE
//! (default target/release/rkserve).

use futures_util::StreamExt;
use rkserve_benches::{workspace, Server};
use std::time::{Duration, Instant};

/// One server to measure: a model file from the workspace's models directory, the name it is
/// served as, and extra configuration.
struct Setup {
    name: &'static str,
    file: &'static str,
    model: &'static str,
    config: &'static str,
}

const SETUPS: [Setup; 5] = [
    Setup {
        name: "cpu",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        model: "smollm2-135m-instruct",
        config: "",
    },
    Setup {
        name: "cpu-no-files",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        model: "smollm2-135m-instruct",
        config: "[prompt_cache]\nenabled = false\n",
    },
    Setup {
        name: "rk3588-no-reuse-no-files",
        file: "synthetic/qwen3-0.6b-rk3588.toml",
        model: "qwen3-0.6b-rk3588-synthetic",
        config: "[prompt_cache]\nenabled = false\n",
    },
    Setup {
        name: "rk3588-no-reuse-files",
        file: "synthetic/qwen3-0.6b-rk3588.toml",
        model: "qwen3-0.6b-rk3588-synthetic",
        config: "",
    },
    Setup {
        name: "rk3588-reuse",
        file: "synthetic/qwen3-0.6b-rk3588-reuse.toml",
        model: "qwen3-0.6b-rk3588-reuse-synthetic",
        config: "[prompt_cache]\nenabled = false\n",
    },
];

/// The tests' coding-assistant system prompt, lengthened to the ~1300 characters of the
/// issue's scenario.
const SYSTEM: &str = concat!(
    include_str!("../../tests/data/coding-system-prompt.txt"),
    " If the question \
is ambiguous, state the assumption you make. Security matters: validate inputs, avoid \
injection, never log secrets. Performance matters: avoid needless allocation and copies. \
Format code with the language's standard formatter. Use descriptive names and small \
functions. Prefer composition over inheritance and pure functions over shared mutable state. \
Write tests first when fixing a bug, and show how to run them. Explain errors in plain words \
and suggest the smallest change that fixes them. Cite the documentation you rely on. \
Answer in English unless asked otherwise, and say when a question is outside programming."
);

const QUESTIONS: [&str; 8] = [
    "How do I reverse a list in Python?",
    "What is a Rust lifetime?",
    "How do I read a file line by line in bash?",
    "Explain a mutex.",
    "What does git rebase do?",
    "How do I sort a dict by value?",
    "What is a closure?",
    "How do I parse JSON in Rust?",
];

/// Eight more, for the second group arriving together: the system prompt is known by then,
/// the questions are not.
const MORE_QUESTIONS: [&str; 8] = [
    "How do I make a Python virtualenv?",
    "What is a C++ move constructor?",
    "How do I sort a map by value in Go?",
    "What is tail recursion?",
    "How do I undo the last git commit?",
    "What is a race condition?",
    "How do I format a date in JavaScript?",
    "What does the Rust borrow checker check?",
];

fn start(setup: &Setup) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "rkserve-bench-prefix-{}-{}",
        std::process::id(),
        setup.name
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let model = workspace().join("models").join(setup.file);
    assert!(model.is_file(), "run scripts/fetch-default-model first");
    let name = model.file_name().unwrap();
    std::os::unix::fs::symlink(&model, dir.join("models").join(name)).unwrap();
    let config = format!(
        "[models]\npreload = [\"{}\"]\nfetch_default_model = false\n[scheduler]\nn_batch = 8\n{}",
        setup.model, setup.config
    );
    Server::start(&dir, &config, Duration::from_secs(120))
}

/// Time to the first content chunk of a streamed chat completion.
async fn ttft(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    system: &str,
    question: &str,
) -> Duration {
    let body = serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
        "max_tokens": 8,
        "temperature": 0,
        "stream": true,
    });
    let started = Instant::now();
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut first = None;
    let mut s = resp.bytes_stream();
    while let Some(b) = s.next().await {
        let b = b.unwrap();
        if first.is_none() && String::from_utf8_lossy(&b).contains("\"content\":\"") {
            first = Some(started.elapsed());
        }
    }
    first.unwrap_or_else(|| started.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn together(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    system: &str,
    questions: &[&'static str],
) -> Vec<Duration> {
    let tasks: Vec<_> = questions
        .iter()
        .map(|&q| {
            let (client, url, model, system) = (
                client.clone(),
                url.to_string(),
                model.to_string(),
                system.to_string(),
            );
            tokio::spawn(async move { ttft(&client, &url, &model, &system, q).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let only: Option<Vec<String>> = std::env::var("SETUPS")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    println!(
        "system prompt: {} characters, {} questions a round, {rounds} rounds; n_batch 8",
        SYSTEM.len(),
        QUESTIONS[1..6].len() + 1
    );
    println!("| setup | 1 client cold p50 | warm p50 | warm/cold | 8 together, new prompt p50 / max | 8 together, known system prompt p50 / max | known p50 / single warm |");
    println!("|---|---|---|---|---|---|---|");
    for setup in SETUPS
        .iter()
        .filter(|s| only.as_ref().is_none_or(|o| o.iter().any(|n| n == s.name)))
    {
        measure(setup, rounds).await;
    }
}

async fn measure(setup: &Setup, rounds: usize) {
    let server = start(setup);
    let (client, url, model) = (reqwest::Client::new(), server.url.as_str(), setup.model);
    // The first request pays llama.cpp's own warm-up: not a cold prefill.
    ttft(&client, url, model, "Warm-up.", "Hi").await;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // A system prompt of its own per round, different from its first token on.
        let system = format!("Round {round}. {SYSTEM}");
        cold.push(ttft(&client, url, model, &system, QUESTIONS[0]).await);
        for q in &QUESTIONS[1..6] {
            warm.push(ttft(&client, url, model, &system, q).await);
        }
    }
    let (c, w) = (p50(cold), p50(warm));
    let system = format!("Together. {SYSTEM}");
    let first = together(&client, url, model, &system, &QUESTIONS).await;
    let again = together(&client, url, model, &system, &MORE_QUESTIONS).await;
    let show = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        format!(
            "{:.0} / {:.0} ms",
            ms(v[v.len() / 2]),
            ms(*v.last().unwrap())
        )
    };
    println!(
        "| {} | {:.0} ms | {:.0} ms | {:.3} ({:.1}x) | {} | {} | {:.2}x |",
        setup.name,
        ms(c),
        ms(w),
        ms(w) / ms(c),
        ms(c) / ms(w),
        show(&first),
        show(&again),
        ms(p50(again.clone())) / ms(w)
    );
}
