//! Many clients at once: batched requests must each get their own answer, and a client that
//! goes away must give its slot back.

mod common;

use common::{Server, SseLines, DEFAULT_MODEL};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOPICS: [&str; 8] = [
    "the sea",
    "a mountain",
    "coffee",
    "a library",
    "winter",
    "a bicycle",
    "the moon",
    "a garden",
];

/// Streams one greedy chat answer and returns its text and finish reason.
async fn stream_answer(url: String, topic: &str) -> (String, String) {
    let body = json!({
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": format!("Write one sentence about {topic}.")}],
        "temperature": 0,
        "max_tokens": 24,
        "stream": true,
    });
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    let mut finish = None;
    for e in common::sse_events(r).await {
        let choice = &e["choices"][0];
        assert_eq!(choice["index"], 0, "{e}");
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        if let Some(f) = choice["finish_reason"].as_str() {
            assert!(finish.is_none(), "two finish reasons: {e}");
            finish = Some(f.to_string());
        }
    }
    (text, finish.expect("the stream ends with a finish reason"))
}

/// Greedy decoding in this runtime gives the same tokens whatever else shares the batch, so a
/// batched answer that differs from the answer given alone means slots were mixed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_simultaneous_streams_each_get_their_own_answer() {
    let server = Server::start(
        &common::workspace_models(),
        &common::config(&[DEFAULT_MODEL], ""),
        &[],
    )
    .await;
    let url = server.url("/v1/chat/completions");

    let mut alone = Vec::new();
    for topic in TOPICS {
        alone.push(stream_answer(url.clone(), topic).await);
    }

    // Proof that the requests really ran together rather than one after another.
    let peak = Arc::new(AtomicU64::new(0));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, stop_watch, loaded) = (peak.clone(), stop_watch.clone(), server.url(""));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop_watch.load(Ordering::Relaxed) {
                if let Ok(r) = client
                    .get(format!("{loaded}/v1/models/loaded"))
                    .send()
                    .await
                {
                    if let Ok(v) = r.json::<Value>().await {
                        let busy = v["data"]
                            .as_array()
                            .and_then(|d| d.iter().find(|m| m["id"] == DEFAULT_MODEL))
                            .and_then(|m| m["busy_slots"].as_u64())
                            .unwrap_or(0);
                        peak.fetch_max(busy, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let barrier = Arc::new(tokio::sync::Barrier::new(TOPICS.len()));
    let tasks: Vec<_> = TOPICS
        .into_iter()
        .map(|topic| {
            let (url, barrier) = (url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                stream_answer(url, topic).await
            })
        })
        .collect();
    let mut together = Vec::new();
    for t in tasks {
        together.push(t.await.expect("a stream task panicked"));
    }
    stop_watch.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    let distinct: HashSet<&str> = together.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        distinct.len(),
        TOPICS.len(),
        "different prompts give different answers: {together:#?}"
    );
    for ((topic, solo), batched) in TOPICS.iter().zip(&alone).zip(&together) {
        assert!(!batched.0.is_empty(), "{topic}: empty answer");
        assert_eq!(
            batched, solo,
            "{topic}: batched answer differs from the solo answer"
        );
    }
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak >= 2,
        "the eight requests never shared a run (peak busy_slots {peak})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    // 2000 tokens at 20 ms a step take 40 s, so a slot freed within 5 s was freed by the
    // disconnect, not by the end of generation; the synthetic engine never stops early.
    let server = Server::start_synthetic(
        &[("slow", "[timing]\ndecode_step_ms = 20.0\n")],
        &common::config(&["slow"], ""),
        &[],
    )
    .await;
    let r = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&json!({
            "model": "slow",
            "messages": [{"role": "user", "content": "go on for a long time"}],
            "max_tokens": 2000,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut lines = SseLines::new(r);
    // The role chunk is sent before any token; wait for real text so generation is under way.
    loop {
        let data = lines.next_data().await.expect("the stream goes on");
        let v: Value = serde_json::from_str(&data).unwrap();
        if v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            break;
        }
    }
    let busy = &server.loaded("slow").await["busy_slots"];
    assert_eq!(busy, 1, "the streaming request holds a slot");

    drop(lines);
    let dropped = Instant::now();
    loop {
        let busy = server.loaded("slow").await["busy_slots"].clone();
        if busy == 0 {
            break;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(5),
            "busy_slots is still {busy} 5 s after the client went away; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The freed slot serves again.
    let r = common::post_json(
        &server.url("/v1/chat/completions"),
        &json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["usage"]["completion_tokens"], 3, "{r:?}");
}
