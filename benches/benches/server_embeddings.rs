//! Embeddings per second through the server on the default model (CPU runtime, llama.cpp):
//! one input per request one at a time, one input per request from 8 concurrent clients
//! (the scheduler batches them into shared runs), and 8 inputs per request (one run).
//! Inputs are ~60-token passages, the size of a short RAG chunk.
//!
//! `cargo build --release && cargo bench -p rkserve-benches --bench server_embeddings`

use rkserve_benches::{workspace, Server};
use std::time::{Duration, Instant};

const MODEL: &str = "smollm2-135m-instruct";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Starts rkserve on a directory linking the default model, with a 512-token context (the
/// passages are short; a small context keeps the KV cache small).
fn start() -> Server {
    let model = workspace().join("models").join(FILE);
    let model = model
        .canonicalize()
        .expect("the default model: scripts/fetch-default-model");
    let dir = std::env::temp_dir().join(format!("rkserve-bench-embed-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let _ = std::fs::remove_file(dir.join("models").join(FILE));
    std::os::unix::fs::symlink(&model, dir.join("models").join(FILE)).unwrap();
    std::fs::write(
        dir.join("models/SmolLM2-135M-Instruct.Q4_1.toml"),
        "context_len = 512\n",
    )
    .unwrap();
    let config = format!(
        "[models]\npreload = [\"{MODEL}\"]\nfetch_default_model = false\n\
         [scheduler]\nn_batch = 8\n"
    );
    Server::start(&dir, &config, Duration::from_secs(120))
}

fn passage(i: usize) -> String {
    format!(
        "Passage {i}: the committee met on a Tuesday to review the budget for the coming year, \
         discussed the maintenance of the bridge over the river, and agreed to publish its \
         minutes before the end of the month so that residents could comment on item {i}."
    )
}

async fn embed(client: &reqwest::Client, url: &str, inputs: Vec<String>) -> usize {
    let n = inputs.len();
    let r = client
        .post(format!("{url}/v1/embeddings"))
        .json(&serde_json::json!({"model": MODEL, "input": inputs, "encoding_format": "base64"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(n));
    n
}

/// Embeddings per second for `clients` concurrent clients each sending `requests` requests
/// of `per_request` inputs.
async fn measure(server: &Server, clients: usize, requests: usize, per_request: usize) -> f64 {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, url) = (client.clone(), server.url.clone());
            tokio::spawn(async move {
                let mut n = 0;
                for r in 0..requests {
                    let inputs = (0..per_request)
                        .map(|k| passage((c * requests + r) * per_request + k))
                        .collect();
                    n += embed(&client, &url, inputs).await;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = start();
    // Warm-up: the first hidden-state run creates the runtime's embedding context.
    measure(&server, 1, 1, 8).await;
    println!("embeddings/s on {MODEL}, ~60-token passages, n_batch 8:");
    let one = measure(&server, 1, 16, 1).await;
    println!("  1 input per request, 1 client:    {one:7.1}");
    let concurrent = measure(&server, 8, 4, 1).await;
    println!("  1 input per request, 8 clients:   {concurrent:7.1}");
    let eight = measure(&server, 1, 4, 8).await;
    println!("  8 inputs per request, 1 client:   {eight:7.1}");
    println!(
        "  batching gain (8 inputs per request / 1): {:.2}x",
        eight / one.max(f64::EPSILON)
    );
}
