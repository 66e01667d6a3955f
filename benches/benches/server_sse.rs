//! The HTTP server under load, on the zero-delay synthetic profile (the runtime costs
//! nothing, so this measures rkserve's own HTTP, scheduling and streaming path):
//! 1. streamed tokens/s over SSE to 64 concurrent clients on loopback;
//! 2. the server's resident memory with 1,000 concurrent streams open.
//!
//! `cargo build --release && cargo bench -p rkserve-benches --bench server_sse`

use futures_util::StreamExt;
use rkserve_benches::{workspace, Server};
use std::time::{Duration, Instant};

/// Starts rkserve serving one synthetic profile, `model` (the file holds `profile`).
fn start(model: &str, profile: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("rkserve-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join(format!("models/{model}.toml")), profile).unwrap();
    let config = format!(
        "[models]\npreload = [\"{model}\"]\nfetch_default_model = false\n\
         [scheduler]\nn_batch = 8\nmax_queue = 2000\nbatch_window = \"0ms\"\n"
    );
    Server::start(&dir, &config, Duration::from_secs(30))
}

fn body(model: &str, max_tokens: u32, i: usize) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("client {i}")}],
        "max_tokens": max_tokens,
        "stream": true,
    })
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn sse_throughput() {
    let zero =
        std::fs::read_to_string(workspace().join("models/synthetic/zero-delay.toml")).unwrap();
    let server = start("zero-delay", &zero);
    let client = reqwest::Client::new();
    let (clients, per_client, tokens) = (64usize, 4usize, 256u32);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (client, url) = (client.clone(), server.url.clone());
            tokio::spawn(async move {
                let mut chunks = 0u64;
                for _ in 0..per_client {
                    let resp = client
                        .post(format!("{url}/v1/chat/completions"))
                        .json(&body("zero-delay", tokens, i))
                        .send()
                        .await
                        .unwrap();
                    assert!(resp.status().is_success(), "{}", resp.status());
                    let mut s = resp.bytes_stream();
                    let mut buf = Vec::new();
                    while let Some(b) = s.next().await {
                        buf.extend_from_slice(&b.unwrap());
                    }
                    let text = String::from_utf8_lossy(&buf);
                    chunks += text.matches("\"content\":\"").count() as u64 - 1;
                }
                chunks
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!("## SSE to 64 concurrent clients (zero-delay profile, 1 instance, n_batch 8)");
    println!("| clients | requests | streamed tokens | seconds | tokens/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| {clients} | {} | {total} | {secs:.2} | {:.0} |",
        clients * per_client,
        total as f64 / secs
    );
}

async fn open_streams() {
    // Slow decode, so that streams stay open while they are counted.
    let server = start("slow", "[timing]\ndecode_step_ms = 50.0\n");
    let pid = server.pid();
    let idle = rss_mb(pid);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let n = 1000;
    // Long replies on one instance: 8 stream at a time, the rest wait in the queue with
    // their connections open.
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, url) = (client.clone(), server.url.clone());
            tokio::spawn(async move {
                // Reading (not dropping) the response keeps the stream open: a dropped
                // connection cancels its request.
                if let Ok(resp) = client
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&body("slow", 1000, i))
                    .send()
                    .await
                {
                    let mut s = resp.bytes_stream();
                    while s.next().await.is_some() {}
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut held = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let loaded: serde_json::Value = client
            .get(format!("{}/v1/models/loaded", server.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let m = &loaded["data"][0];
        held = m["waiting"].as_u64().unwrap_or(0) + m["busy_slots"].as_u64().unwrap_or(0);
        if held >= n as u64 {
            break;
        }
    }
    let rss = rss_mb(pid);
    println!();
    println!(
        "## 1,000 concurrent streams held (synthetic profile, 50 ms steps, 1 instance, n_batch 8)"
    );
    println!("| streams open | server RSS idle | server RSS with the streams open |");
    println!("|---|---|---|");
    println!("| {held} | {idle:.1} MB | {rss:.1} MB |");
    for t in tasks {
        t.abort();
    }
}

#[tokio::main]
async fn main() {
    println!(
        "machine: {} CPUs",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    sse_throughput().await;
    open_streams().await;
}
