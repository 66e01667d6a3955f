//! The capacity signals routers read, against a running server with requests in flight: the
//! vLLM-named gauges the Gateway API Inference Extension scrapes, the free-slots gauge, and
//! HAProxy's agent-check answer.

mod common;

use common::{free_port, post_json, Server, SseLines};
use serde_json::json;
use std::io::Read;
use std::time::{Duration, Instant};

const MODEL: &str = "slow";
/// 20 ms per step: a 300-token reply holds its slot for about 6 s, long enough to look at.
const PROFILE: &str = "[model]\nname = \"slow\"\ncontext_length = 1000\nmemory_mb = 0.0\n\n\
    [timing]\nprefill_tokens_per_second = 0.0\ndecode_step_ms = 20.0\nbatch_alpha = 0.0\n";

/// The value of the one sample of `name` (these tests serve one model).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(['{', ' ']).next() == Some(name))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn agent(port: u16) -> String {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("agent port");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    conn.read_to_string(&mut line)
        .expect("the agent answers and closes");
    line
}

/// Starts a stream of `n` choices of `max_tokens` each (submitted together, so they share a
/// run) and reads its first event, so they hold their slots; read or drop it later.
async fn streaming(s: &Server, n: usize, max_tokens: u32) -> SseLines {
    let r = reqwest::Client::new()
        .post(s.url("/v1/completions"))
        .json(&json!({
            "model": MODEL, "prompt": "go", "n": n, "max_tokens": max_tokens, "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut lines = SseLines::new(r);
    assert!(lines.next_data().await.is_some());
    lines
}

/// Scrapes until `ok` holds for the exposition: the scheduler's state moves on its threads.
async fn until(s: &Server, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = s.metrics().await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never showed in:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_and_agent_report_free_capacity() {
    let agent_port = free_port();
    let config = common::config(&[MODEL], "[scheduler]\nn_batch = 4\n");
    let port_arg = agent_port.to_string();
    let s =
        Server::start_synthetic(&[("slow", PROFILE)], &config, &["--agent-port", &port_arg]).await;

    let idle = s.metrics().await;
    assert_eq!(
        sample(&idle, "vllm:num_requests_waiting"),
        Some(0.0),
        "{idle}"
    );
    assert_eq!(sample(&idle, "vllm:num_requests_running"), Some(0.0));
    assert_eq!(sample(&idle, "vllm:kv_cache_usage_perc"), Some(0.0));
    assert_eq!(sample(&idle, "rkserve_slots_free"), Some(4.0));
    assert!(
        idle.contains("vllm:num_requests_waiting{model_name=\"slow\"}"),
        "vLLM's label name: {idle}"
    );
    assert_eq!(agent(agent_port), "up ready 100%\n");

    // Three of four slots busy: a quarter free.
    let three = streaming(&s, 3, 300).await;
    let busy = until(&s, "3 running", |t| {
        sample(t, "vllm:num_requests_running") == Some(3.0)
    })
    .await;
    assert_eq!(sample(&busy, "rkserve_slots_free"), Some(1.0), "{busy}");
    assert_eq!(sample(&busy, "vllm:num_requests_waiting"), Some(0.0));
    let kv = sample(&busy, "vllm:kv_cache_usage_perc").unwrap();
    assert!(kv > 0.0 && kv < 1.0, "KV usage is a 0-1 fraction: {kv}");
    assert_eq!(
        sample(&busy, "rkserve_kv_cache_usage_ratio"),
        Some(kv),
        "ours and vLLM's agree"
    );
    assert_eq!(agent(agent_port), "up ready 25%\n");

    // Three more: whatever runs and waits, the board is full, and still takes a share.
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(
            reqwest::Client::new()
                .post(s.url("/v1/completions"))
                .json(&json!({"model": MODEL, "prompt": "go", "max_tokens": 100}))
                .send(),
        );
    }
    let pending = tokio::spawn(futures_util::future::join_all(more));
    let full = until(&s, "6 admitted", |t| {
        sample(t, "vllm:num_requests_running").unwrap_or(0.0)
            + sample(t, "vllm:num_requests_waiting").unwrap_or(0.0)
            == 6.0
    })
    .await;
    let running = sample(&full, "vllm:num_requests_running").unwrap();
    assert_eq!(
        sample(&full, "vllm:num_requests_waiting"),
        sample(&full, "rkserve_num_requests_waiting"),
        "{full}"
    );
    assert_eq!(sample(&full, "rkserve_slots_free"), Some(4.0 - running));
    assert_eq!(agent(agent_port), "up ready 1%\n");
    common::promtool_check_metrics(std::path::Path::new("promtool"), &full);

    // An unload while requests hold the model waits for them: meanwhile the board finishes
    // its work and takes no new connections; once they end, nothing can serve.
    let r = post_json(&s.url(&format!("/v1/models/{MODEL}/unload")), &json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        agent(agent_port),
        "drain\n",
        "unloading with requests in flight"
    );
    drop(three);
    for r in pending.await.unwrap() {
        assert_eq!(r.unwrap().status(), 200, "the unload let them finish");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent(agent_port) != "down\n" {
        assert!(Instant::now() < deadline, "the model never unloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = s.metrics().await;
    assert_eq!(
        sample(&gone, "vllm:num_requests_running"),
        Some(0.0),
        "{gone}"
    );
    assert_eq!(sample(&gone, "rkserve_slots_free"), Some(0.0));

    // Draining overrides everything else; a stream in flight keeps the server up meanwhile.
    let _last = streaming(&s, 1, 300).await;
    let r = post_json(&s.url("/admin/drain"), &json!({})).await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(agent(agent_port), "drain\n");
}
