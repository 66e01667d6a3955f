//! Graceful drain, as a rolling restart sees it: after SIGTERM or POST /admin/drain the
//! server refuses new work with 503 and Retry-After in each API's shape, finishes every
//! stream in flight and every request already queued, and exits 0; a second signal or the
//! deadline exits at once and says how many requests it cut.

mod common;

use common::{post_json, Reply, Server, SseLines};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MODEL: &str = "steady";
/// 10 ms per step, whatever the batch: a reply of n tokens takes n x 10 ms.
const PROFILE: &str = "[model]\nname = \"steady\"\ncontext_length = 4096\nmemory_mb = 0.0\n\n\
    [timing]\nprefill_tokens_per_second = 0.0\ndecode_step_ms = 10.0\nbatch_alpha = 0.0\n";

async fn start(extra: &str) -> Server {
    let config = common::config(&[MODEL], extra);
    Server::start_synthetic(&[("steady", PROFILE)], &config, &[]).await
}

fn chat(max_tokens: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": max_tokens,
        "stream": true,
    })
}

/// An OpenAI stream read to its end: the number of content chunks and the finish reason.
async fn read_openai(mut lines: SseLines) -> (usize, String) {
    let (mut chunks, mut finish) = (0, String::new());
    while let Some(data) = lines.next_data().await {
        if data == "[DONE]" {
            return (chunks, finish);
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        assert!(v.get("error").is_none(), "the stream failed: {v}");
        let choice = &v["choices"][0];
        if choice["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            chunks += 1;
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    panic!("the stream was cut before [DONE] after {chunks} chunks");
}

/// An Ollama NDJSON stream read to its end: its final line.
async fn read_ollama(r: reqwest::Response) -> Value {
    let text = r.text().await.expect("the stream is read to its end");
    let last = text.lines().last().expect("at least one line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

/// Waits until the model holds `n` requests, running or queued.
async fn admitted(s: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = s.loaded(MODEL).await;
        let held = m["busy_slots"].as_u64().unwrap() + m["waiting"].as_u64().unwrap();
        if held == n {
            return;
        }
        assert!(Instant::now() < deadline, "never held {n} requests: {m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_draining_refusal(r: &Reply, ollama: bool) {
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.retry_after() >= 1, "{r:?}");
    if ollama {
        assert!(
            r.json["error"].as_str().unwrap().contains("draining"),
            "{r:?}"
        );
    } else {
        let e = &r.json["error"];
        assert!(e["message"].as_str().unwrap().contains("draining"), "{r:?}");
        assert_eq!(e["type"], "service_unavailable_error");
        assert!(e["code"].is_null() || e["code"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_streams_and_queued_requests_refuses_new_ones_and_exits_0() {
    // 4 slots and 6 requests: 2 of them are still queued when the signal comes.
    let mut s = start("[scheduler]\nn_batch = 4\n").await;
    let client = reqwest::Client::new();
    let mut openai = Vec::new();
    for _ in 0..4 {
        let r = client.post(s.url("/v1/chat/completions")).json(&chat(80));
        openai.push(tokio::spawn(async move {
            read_openai(SseLines::new(r.send().await.unwrap())).await
        }));
    }
    let mut ollama = Vec::new();
    for _ in 0..2 {
        let r = client.post(s.url("/api/chat")).json(&json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "count"}],
            "options": {"num_predict": 80},
        }));
        ollama.push(tokio::spawn(async move {
            read_ollama(r.send().await.unwrap()).await
        }));
    }
    admitted(&s, 6).await;
    s.signal("TERM");

    // Routers and new clients are told at once; health and metrics answer on.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = Reply::read(reqwest::get(s.url("/ready")).await.unwrap()).await;
        if r.status == 503 {
            assert_eq!(r.json["status"], "draining", "{r:?}");
            break;
        }
        assert!(Instant::now() < deadline, "/ready still {r:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = post_json(&s.url("/v1/chat/completions"), &chat(5)).await;
    assert_draining_refusal(&r, false);
    let r = post_json(
        &s.url("/v1/completions"),
        &json!({"model": MODEL, "prompt": "x"}),
    )
    .await;
    assert_draining_refusal(&r, false);
    let r = post_json(
        &s.url("/api/generate"),
        &json!({"model": MODEL, "prompt": "x"}),
    )
    .await;
    assert_draining_refusal(&r, true);
    assert_eq!(reqwest::get(s.url("/health")).await.unwrap().status(), 200);
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);

    for t in openai {
        let (chunks, finish) = t.await.unwrap();
        assert_eq!(finish, "length");
        assert!(chunks >= 70, "a reply of 80 tokens came in {chunks} chunks");
    }
    for t in ollama {
        let last = t.await.unwrap();
        assert_eq!(last["done"], true, "{last}");
        assert_eq!(last["done_reason"], "length", "{last}");
        assert_eq!(last["eval_count"], 80, "{last}");
    }
    let status = s
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the server exits once drained");
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(s.log().contains("drained in"), "{}", s.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_says_how_many_were_cut() {
    let mut s = start("").await;
    let client = reqwest::Client::new();
    // Two streams of 3000 tokens (30 s, far longer than this test waits), one generating
    // and one perhaps still queued behind it: both are in flight.
    let _streams: Vec<_> = (0..2)
        .map(|_| {
            let r = client.post(s.url("/v1/chat/completions")).json(&chat(3000));
            tokio::spawn(async move { r.send().await })
        })
        .collect();
    admitted(&s, 2).await;
    s.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.wait_exit(Duration::ZERO).await.is_none(),
        "one signal drains, it does not exit"
    );
    let asked = Instant::now();
    s.signal("TERM");
    let status = s
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("a second signal exits at once");
    println!(
        "second signal to exit: {:.0} ms",
        asked.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(status.code(), Some(1), "{}", s.log());
    assert!(s.log().contains("requests in flight cut: 2"), "{}", s.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_needs_the_key_survives_the_following_sigterm_and_exits_0() {
    let mut s = start("[server]\napi_keys = [\"k\"]\n").await;
    let client = reqwest::Client::new();
    let r = Reply::read(client.post(s.url("/admin/drain")).send().await.unwrap()).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(reqwest::get(s.url("/ready")).await.unwrap().status(), 200);

    // 150 tokens: 1.5 s, spanning the drain request and the orchestrator's SIGTERM after it.
    let r = client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth("k")
        .json(&chat(150))
        .send()
        .await
        .unwrap();
    let mut lines = SseLines::new(r);
    assert!(lines.next_data().await.is_some());
    let r = Reply::read(
        client
            .post(s.url("/admin/drain"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json["in_flight"], 1, "{r:?}");
    // Kubernetes sends SIGTERM once the preStop hook returns: that is the first signal.
    s.signal("TERM");
    let (chunks, finish) = read_openai(lines).await;
    assert_eq!(finish, "length");
    assert!(chunks >= 140, "{chunks}");
    let status = s.wait_exit(Duration::from_secs(10)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", s.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_exits_with_what_is_left_cut() {
    let mut s = start("[server]\ndrain_timeout = \"1s\"\n").await;
    let r = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&chat(3000))
        .send()
        .await
        .unwrap();
    let mut lines = SseLines::new(r);
    assert!(lines.next_data().await.is_some());
    let asked = Instant::now();
    s.signal("INT");
    let status = s
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits at the deadline");
    let took = asked.elapsed();
    assert!(took >= Duration::from_millis(900), "exited after {took:?}");
    assert_eq!(status.code(), Some(1), "{}", s.log());
    assert!(s.log().contains("deadline"), "{}", s.log());
    assert!(s.log().contains("requests in flight cut: 1"), "{}", s.log());
}
