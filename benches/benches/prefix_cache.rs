//! Automatic prefix caching on the default model through the HTTP API (streamed chat, time to
//! the first content chunk), the seed project's scenario: a ~1300-character coding-assistant
//! system prompt and several questions.
//! 1. One client: cold (a system prompt no slot holds) against warm (the same system prompt,
//!    another question), over several rounds, each round with a system prompt of its own.
//! 2. Eight clients with one new system prompt arriving together (every slot prefills it once),
//!    then eight more with it (every slot holds it).
//!
//! Prints figures; the targets (warm at most 1/10 of cold; 8 together at most 2x the
//! single warm p50) are compared in docs/BENCHMARKS.md.
//!
//! `cargo build --release && cargo bench -p rkserve-benches --bench prefix_cache`
//! Env: ROUNDS (default 5), RKSERVE_EXE (default target/release/rkserve).

use futures_util::StreamExt;
use rkserve_benches::{workspace, Server};
use std::time::{Duration, Instant};

const MODEL: &str = "smollm2-135m-instruct";
const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

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

fn start() -> Server {
    let dir = std::env::temp_dir().join(format!("rkserve-bench-prefix-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let model = workspace().join("models").join(GGUF);
    assert!(model.is_file(), "run scripts/fetch-default-model first");
    std::os::unix::fs::symlink(&model, dir.join("models").join(GGUF)).unwrap();
    let config = format!(
        "[models]\npreload = [\"{MODEL}\"]\nfetch_default_model = false\n[scheduler]\nn_batch = 8\n"
    );
    Server::start(&dir, &config, Duration::from_secs(120))
}

/// Time to the first content chunk of a streamed chat completion.
async fn ttft(client: &reqwest::Client, url: &str, system: &str, question: &str) -> Duration {
    let body = serde_json::json!({
        "model": MODEL,
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

async fn together(client: &reqwest::Client, url: &str, system: &str) -> Vec<Duration> {
    let tasks: Vec<_> = QUESTIONS
        .iter()
        .map(|q| {
            let (client, url, system) = (client.clone(), url.to_string(), system.to_string());
            tokio::spawn(async move { ttft(&client, &url, &system, q).await })
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
    let server = start();
    let client = reqwest::Client::new();
    println!(
        "system prompt: {} characters; default model, n_batch 8",
        SYSTEM.len()
    );
    // The first request pays llama.cpp's own warm-up: not a cold prefill.
    ttft(&client, &server.url, "Warm-up.", "Hi").await;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // A system prompt of its own per round, different from its first token on.
        let system = format!("Round {round}. {SYSTEM}");
        cold.push(ttft(&client, &server.url, &system, QUESTIONS[0]).await);
        for q in &QUESTIONS[1..6] {
            warm.push(ttft(&client, &server.url, &system, q).await);
        }
    }
    let (c, w) = (p50(cold), p50(warm));
    println!(
        "1 client: TTFT p50 cold {:.0} ms, warm {:.0} ms (warm/cold {:.2}, {:.1}x)",
        ms(c),
        ms(w),
        ms(w) / ms(c),
        ms(c) / ms(w)
    );
    let system = format!("Together. {SYSTEM}");
    let first = together(&client, &server.url, &system).await;
    let again = together(&client, &server.url, &system).await;
    let show = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        format!(
            "p50 {:.0} ms, max {:.0} ms",
            ms(v[v.len() / 2]),
            ms(*v.last().unwrap())
        )
    };
    println!(
        "8 clients together, a new system prompt: TTFT {}",
        show(&first)
    );
    println!(
        "8 clients together, the system prompt cached: TTFT {} ({:.2}x the single warm p50)",
        show(&again),
        ms(p50(again.clone())) / ms(w)
    );
}
