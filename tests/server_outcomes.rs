//! Each request's outcome is counted once, under the kind the client saw: a mix of runtime
//! errors (streamed and not), overload (n = 1 and n = 4), queue-wait timeouts and a
//! cancellation, and the failure counters in /metrics equal the clients' own tally; a
//! request whose reply is generated again until it meets its shape is one request too.

mod common;

use common::{post_json, Server, SseLines};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The value of `rkserve_request_failure_total{model, kind}` (0 when absent).
fn failures(text: &str, model: &str, kind: &str) -> f64 {
    let want_model = format!("model=\"{model}\"");
    let want_kind = format!("kind=\"{kind}\"");
    text.lines()
        .filter(|l| l.starts_with("rkserve_request_failure_total{"))
        .filter(|l| l.contains(&want_model) && l.contains(&want_kind))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn completion(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "prompt": "count with me", "max_tokens": max_tokens})
}

/// What a client saw, by the status it got (each status has one meaning in this test).
fn kind_of(status: u16) -> &'static str {
    match status {
        200 => "success",
        429 => "overloaded",
        503 => "timeout",
        500 => "runtime_error",
        other => panic!("unexpected status {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_counters_equal_what_the_clients_saw() {
    let s = Server::start_synthetic(
        &[
            (
                "flaky",
                "[timing]\ndecode_step_ms = 2.0\n[faults]\nerror_after_tokens = 3\n",
            ),
            ("slow", "[timing]\ndecode_step_ms = 50.0\n"),
        ],
        &common::config(
            &["flaky", "slow"],
            "[scheduler]\nn_batch = 4\nmax_queue = 2\nmax_queue_wait = \"600ms\"\n",
        ),
        &[],
    )
    .await;
    let url = s.url("/v1/completions");
    // (model, kind) -> requests the clients saw end that way.
    let mut seen: BTreeMap<(&str, &'static str), u32> = BTreeMap::new();

    // Runtime errors: three answered with 500, one after its stream began.
    for _ in 0..3 {
        let r = post_json(&url, &completion("flaky", 20)).await;
        *seen.entry(("flaky", kind_of(r.status))).or_default() += 1;
    }
    let r = reqwest::Client::new()
        .post(&url)
        .json(&json!({"model": "flaky", "prompt": "go", "max_tokens": 20, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut lines = SseLines::new(r);
    let mut errored = false;
    while let Some(data) = lines.next_data().await {
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        errored |= v.get("error").is_some();
    }
    assert!(errored, "the stream carries the runtime error as an event");
    *seen.entry(("flaky", "runtime_error")).or_default() += 1;

    // Slow's four slots are taken by one long stream of four choices; two requests queue and
    // time out; two more (one asking for four choices) find the queue full.
    let running = reqwest::Client::new()
        .post(&url)
        .json(&json!({"model": "slow", "prompt": "go", "max_tokens": 1000, "stream": true, "n": 4}))
        .send()
        .await
        .unwrap();
    let mut running = SseLines::new(running);
    running.next_data().await.expect("the long request runs");
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post_json(&url, &completion("slow", 2)).await })
        })
        .collect();
    let t = Instant::now();
    while s.loaded("slow").await["waiting"] != 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "nothing queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for body in [
        completion("slow", 2),
        json!({"model": "slow", "prompt": "go", "max_tokens": 2, "n": 4}),
    ] {
        let r = post_json(&url, &body).await;
        assert_eq!(r.status, 429, "{r:?}");
        *seen.entry(("slow", "overloaded")).or_default() += 1;
    }
    for q in queued {
        let r = q.await.unwrap();
        assert_eq!(r.status, 503, "the queue wait ran out: {r:?}");
        *seen.entry(("slow", kind_of(r.status))).or_default() += 1;
    }
    // The long request's client leaves: one request, one cancellation, whatever its n.
    drop(running);
    *seen.entry(("slow", "cancelled")).or_default() += 1;

    let kinds = [
        "overloaded",
        "cancelled",
        "timeout",
        "runtime_error",
        "bad_request",
        "unavailable",
    ];
    let expected = |model: &str, kind: &str| -> f64 {
        seen.iter()
            .filter(|((m, k), _)| *m == model && *k == kind)
            .map(|(_, n)| f64::from(*n))
            .sum()
    };
    // The cancellation is counted once the server notices the closed connection.
    let t = Instant::now();
    let text = loop {
        let text = s.metrics().await;
        if failures(&text, "slow", "cancelled") >= 1.0 || t.elapsed() > Duration::from_secs(10) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for model in ["flaky", "slow"] {
        for kind in kinds {
            assert_eq!(
                failures(&text, model, kind),
                expected(model, kind),
                "{model}/{kind}: clients saw {seen:?}\n{text}"
            );
        }
    }
    // Nothing else is counted later (a failure counted twice shows up late, from the
    // instance thread).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = s.metrics().await;
    for model in ["flaky", "slow"] {
        for kind in kinds {
            assert_eq!(
                failures(&again, model, kind),
                failures(&text, model, kind),
                "{model}/{kind} changed after every request had ended"
            );
        }
    }
}

/// A request that demands JSON is generated again while its reply is not JSON: its attempts
/// are one request, counted once when final, a success or the 422 the client saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_generated_again_is_counted_once() {
    let profile = "[timing]\ndecode_step_ms = 0.0\n[output]\nscript = \"Hello.\"\n\
        [[output.replies]]\nwhen = \"bad json\"\ntext = \"Sure: {oops\"\n\
        [[output.replies]]\nwhen = \"JSON\"\ntext = \"{\\\"name\\\": \\\"Ada\\\"}\"\n";
    let s = Server::start_synthetic(
        &[("scripted", profile)],
        &common::config(&["scripted"], "[server]\nstructured_retries = 2\n"),
        &[],
    )
    .await;
    let ask = |content: &str| {
        json!({"model": "scripted", "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": content}]})
    };
    let url = s.url("/v1/chat/completions");
    let r = post_json(&url, &ask("give me JSON")).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Three attempts each, then 422, in both APIs.
    let r = post_json(&url, &ask("bad json")).await;
    assert_eq!(r.status, 422, "{r:?}");
    common::ollama_json_is_refused(&s, "scripted").await;

    let success = "rkserve_request_success_total";
    assert_eq!(s.counter_when(success, 1.0).await, 1.0);
    let text = s.metrics().await;
    assert_eq!(failures(&text, "scripted", "bad_request"), 2.0, "{text}");
    // Nothing more is counted later, from the instance thread.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.counter(success).await, 1.0);
    assert_eq!(s.counter("rkserve_request_failure_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_a_request_causes_carries_its_id() {
    let s = Server::start_synthetic(
        &[(
            "flaky",
            "[timing]\ndecode_step_ms = 2.0\n[faults]\nerror_after_tokens = 3\n",
        )],
        &common::config(&["flaky"], ""),
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    // The client's own id is kept and answered.
    let r = client
        .post(s.url("/v1/completions"))
        .header("x-request-id", "trace-me-42")
        .json(&completion("flaky", 20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    // Without one (or with one a log line could be forged with), the server makes one.
    let r = client
        .get(s.url("/health"))
        .header("x-request-id", "a b\"c")
        .send()
        .await
        .unwrap();
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 16, "{made}");
    assert_ne!(made, "a b\"c");

    let t = Instant::now();
    let log = loop {
        let log = s.log();
        if log.contains(&format!("request{{id={made}}}")) || t.elapsed() > Duration::from_secs(5) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tagged = |id: &str| -> Vec<&str> {
        log.lines()
            .filter(|l| l.contains(&format!("request{{id={id}}}")))
            .collect()
    };
    let mine = tagged("trace-me-42");
    // The runtime error, logged on the instance's thread, and the access line.
    assert!(
        mine.iter().any(|l| l.contains("runtime_error")),
        "the failure line carries the id:\n{log}"
    );
    assert!(
        mine.iter().any(|l| l.contains("POST /v1/completions 500")),
        "the access line carries the id:\n{log}"
    );
    assert!(tagged(&made).iter().any(|l| l.contains("GET /health 200")));

    // An unload that a request's keep_alive 0 causes once its streamed reply has gone out
    // (its lease released as the body ended): logged under that request's id too.
    let r = client
        .post(s.url("/api/generate"))
        .header("x-request-id", "unload-me-7")
        .json(
            &json!({"model": "flaky", "prompt": "hi", "keep_alive": 0, "stream": true,
            "options": {"num_predict": 2}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Streamed: the body, and with it the lease, ends after the handler has returned.
    assert!(r.text().await.unwrap().contains("\"done\":true"));
    let t = Instant::now();
    let unloaded = loop {
        let log = s.log();
        let line = log
            .lines()
            .find(|l| l.contains("unloaded"))
            .map(str::to_string);
        if line.is_some() || t.elapsed() > Duration::from_secs(5) {
            break line.unwrap_or_else(|| panic!("no unload logged:\n{log}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        unloaded.contains("request{id=unload-me-7}"),
        "the unload line carries the id: {unloaded}"
    );
}
