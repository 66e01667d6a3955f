//! What the server measures, read back the way users read it: Prometheus exposition at
//! /metrics (checked by `promtool`) and exact percentiles at /v1/stats, after requests that
//! succeed, are refused, overload the queue and disconnect mid-stream.

mod common;

use common::{post_json, Server, SseLines};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The value of the sample `name{labels}` in an exposition, labels in any order.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let body = rest.strip_suffix('}')?;
        let have: Vec<(&str, &str)> = body
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        (have.len() == labels.len() && labels.iter().all(|l| have.contains(l)))
            .then(|| value.parse().ok())
            .flatten()
    })
}

async fn scrape(s: &Server) -> String {
    let r = reqwest::get(s.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    r.text().await.unwrap()
}

/// Scrapes until `ok` holds: the scheduler records on its own thread, a moment behind.
async fn scrape_until(s: &Server, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(s).await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never showed in:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn completion(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "prompt": "count with me", "max_tokens": max_tokens})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_stats_account_for_every_request() {
    let s = Server::start_synthetic(
        &[
            (
                "fast",
                "[model]\nmemory_mb = 512.0\n[timing]\ndecode_step_ms = 2.0\n",
            ),
            ("slow", "[timing]\ndecode_step_ms = 50.0\n"),
        ],
        &common::config(
            &["fast", "slow"],
            "[scheduler]\nn_batch = 1\nmax_queue = 1\n",
        ),
        &[],
    )
    .await;
    let url = s.url("/v1/completions");

    // Three completions of five tokens each.
    for _ in 0..3 {
        let r = post_json(&url, &completion("fast", 5)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let fast = [("model", "fast")];
    let text = scrape_until(&s, "three successes", |t| {
        sample(
            t,
            "rkserve_request_success_total",
            &[("model", "fast"), ("finished_reason", "length")],
        ) == Some(3.0)
    })
    .await;
    assert_eq!(
        sample(&text, "rkserve_generation_tokens_total", &fast),
        Some(15.0)
    );
    assert_eq!(
        sample(&text, "rkserve_time_to_first_token_seconds_count", &fast),
        Some(3.0)
    );
    // Five tokens, four gaps, in every request.
    assert_eq!(
        sample(&text, "rkserve_inter_token_latency_seconds_count", &fast),
        Some(12.0)
    );
    // Real histograms with the buckets set for NPU latencies, not summaries.
    assert!(
        sample(
            &text,
            "rkserve_time_to_first_token_seconds_bucket",
            &[("model", "fast"), ("le", "60")]
        ) == Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "rkserve_batch_runs_total",
            &[("model", "fast"), ("slots", "1")]
        ),
        Some(3.0)
    );
    assert_eq!(sample(&text, "rkserve_slots", &fast), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "rkserve_model_state",
            &[("model", "fast"), ("state", "ready")]
        ),
        Some(1.0)
    );
    assert!(sample(&text, "rkserve_model_load_seconds", &fast).is_some());
    // The memory the runtime reports in its perf stats (the profile says 512 MB).
    assert_eq!(
        sample(&text, "rkserve_runtime_memory_bytes", &fast),
        Some(512.0 * 1024.0 * 1024.0)
    );

    // Refused: a malformed request, an unknown model.
    assert_eq!(post_json(&url, &completion("fast", 0)).await.status, 400);
    assert_eq!(post_json(&url, &completion("nope", 3)).await.status, 404);

    // Overloaded: one request runs on slow's single slot, one waits, the third is refused.
    let r = reqwest::Client::new()
        .post(&url)
        .json(&json!({"model": "slow", "prompt": "go", "max_tokens": 1000, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut running = SseLines::new(r);
    running.next_data().await.expect("the long request runs");
    let queued = {
        let url = url.clone();
        tokio::spawn(async move { post_json(&url, &completion("slow", 2)).await })
    };
    let t = Instant::now();
    while s.loaded("slow").await["waiting"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "nothing queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post_json(&url, &completion("slow", 2)).await.status, 429);
    // The long request's client leaves: it is cancelled, and the queued one runs.
    drop(running);
    assert_eq!(queued.await.unwrap().status, 200);

    let failures = |t: &str, model: &str, kind: &str| {
        sample(
            t,
            "rkserve_request_failure_total",
            &[("model", model), ("kind", kind)],
        )
    };
    let slow_length = |t: &str| {
        sample(
            t,
            "rkserve_request_success_total",
            &[("model", "slow"), ("finished_reason", "length")],
        )
    };
    // The telemetry thread records an outcome just after the reply goes out: wait for both.
    let text = scrape_until(&s, "the cancellation and the queued success", |t| {
        failures(t, "slow", "cancelled") == Some(1.0) && slow_length(t) == Some(1.0)
    })
    .await;
    assert_eq!(failures(&text, "slow", "overloaded"), Some(1.0));
    // A refusal is counted under the model the request named if the server knows it, and
    // without a model otherwise (a client must not be able to mint label values).
    assert_eq!(failures(&text, "fast", "bad_request"), Some(1.0));
    assert_eq!(failures(&text, "", "bad_request"), Some(1.0));
    assert_eq!(failures(&text, "fast", "runtime_error"), Some(0.0));
    assert_eq!(slow_length(&text), Some(1.0));

    // The exposition passes Prometheus' own linter.
    common::promtool_check_metrics(std::path::Path::new("promtool"), &text);

    // Exact percentiles: the same requests, counted the same way.
    let stats: Value = reqwest::get(s.url("/v1/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["object"], "stats");
    assert_eq!(stats["window_seconds"], 60.0);
    let fast = stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "fast")
        .unwrap_or_else(|| panic!("no fast in {stats}"));
    for part in ["window", "since_start"] {
        let p = &fast[part];
        assert_eq!(p["requests"], 3, "{part}: {p}");
        assert_eq!(p["itl_seconds"]["count"], 12, "{part}: {p}");
        let ttft = &p["ttft_seconds"];
        let (p50, p99, max) = (
            ttft["p50"].as_f64().unwrap(),
            ttft["p99"].as_f64().unwrap(),
            ttft["max"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max && max < 5.0, "{ttft}");
        let itl = p["itl_seconds"]["p50"].as_f64().unwrap();
        assert!((0.001..0.05).contains(&itl), "2 ms steps: {itl}");
        assert!(p["e2e_seconds"]["p90"].as_f64().unwrap() >= p50);
    }
    let slow = stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "slow")
        .unwrap();
    assert_eq!(slow["since_start"]["failed"], 1, "the cancelled request");
}
