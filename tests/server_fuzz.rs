//! A seeded corpus of hostile requests across the endpoints, as a fuzzer would send them:
//! wrong types, absurd numbers, NUL characters, truncated JSON, random bytes. They go eight
//! at a time, so hostile requests share runs with each other and with good ones. Every one
//! must get an answer (no connection closed without a response), no 5xx (the synthetic
//! model never fails a run), every error in its API's shape, and the server must serve
//! afterwards.

mod common;

use common::{post_json, Server};
use serde_json::{json, Value};

/// xorshift64*: the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn hostile_value(rng: &mut Rng) -> Value {
    let long = "x".repeat(5000);
    let values = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1e308),
        json!(-1e308),
        json!(18_446_744_073_709_551_615u64),
        json!(-9_223_372_036_854_775_808i64),
        json!("NaN"),
        json!("inf"),
        json!("-5m"),
        json!("99999999999h"),
        json!(""),
        json!("a\u{0}b"),
        json!("\u{feff}\u{202e}ünïcødé 🦀"),
        json!(long),
        json!([]),
        json!([1, 2, 3]),
        json!([[1], [2]]),
        json!({}),
        json!({"type": "function"}),
        json!({"role": "tool"}),
        json!([{"role": "wizard", "content": "x"}]),
        json!([{"role": "user", "content": [{"type": "image_url"}]}]),
        json!([{"role": "assistant", "tool_calls": [{"function": {"name": 5}}]}]),
        json!({"type": "json_schema", "json_schema": {"schema": {"type": 12}}}),
    ];
    rng.pick(&values).clone()
}

fn base(path: &str) -> Value {
    match path {
        "/v1/chat/completions" => json!({"model": "tiny", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]}),
        "/v1/completions" => json!({"model": "tiny", "max_tokens": 4, "prompt": "hi"}),
        "/api/chat" => json!({"model": "tiny", "stream": false, "options": {"num_predict": 4},
            "messages": [{"role": "user", "content": "hi"}]}),
        "/api/generate" => {
            json!({"model": "tiny", "stream": false, "options": {"num_predict": 4}, "prompt": "hi"})
        }
        "/v1/embeddings" => json!({"model": "tiny", "input": ["hi", "there"]}),
        "/api/embed" => json!({"model": "tiny", "input": "hi"}),
        "/api/embeddings" => json!({"model": "tiny", "prompt": "hi"}),
        _ => json!({"model": "tiny"}),
    }
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "n",
    "stream",
    "tools",
    "tool_choice",
    "response_format",
    "format",
    "keep_alive",
    "options",
    "think",
    "reasoning_effort",
    "stream_options",
    "system",
    "raw",
    "name",
    "logprobs",
    "input",
    "dimensions",
    "encoding_format",
    "truncate",
];

const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/api/chat",
    "/api/generate",
    "/api/show",
    "/api/pull",
    "/v1/models/tiny/load",
    "/v1/embeddings",
    "/api/embed",
    "/api/embeddings",
];

/// One hostile body for `path`: a valid request with fields replaced, or broken JSON.
fn body(rng: &mut Rng, path: &str) -> Vec<u8> {
    let mut v = base(path);
    match rng.below(10) {
        0 => {
            let text = v.to_string();
            let cut = rng.below(text.len());
            return text.as_bytes()[..cut].to_vec();
        }
        1 => return (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        2 => return hostile_value(rng).to_string().into_bytes(),
        _ => {}
    }
    for _ in 0..1 + rng.below(3) {
        let field = *rng.pick(FIELDS);
        let value = hostile_value(rng);
        if field == "options" && rng.below(2) == 0 {
            v["options"] =
                json!({*rng.pick(&["num_predict", "temperature", "stop", "top_k"]): value});
        } else {
            v[field] = value;
        }
    }
    // Keep replies short whatever was replaced.
    if v.get("stream") == Some(&json!(true)) || v["max_tokens"].as_u64().is_some_and(|m| m > 64) {
        v["max_tokens"] = json!(4);
    }
    v.to_string().into_bytes()
}

#[tokio::test]
async fn hostile_requests_get_clean_answers_and_the_server_survives() {
    let s = Server::start_synthetic(
        &[("tiny", "[model]\ncontext_length = 256\n")],
        &common::config(&["tiny"], ""),
        &[],
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let corpus: Vec<(&str, Vec<u8>)> = (0..300)
        .map(|_| {
            let path = *rng.pick(PATHS);
            (path, body(&mut rng, path))
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut served = std::collections::BTreeSet::new();
    for (n, group) in corpus.chunks(8).enumerate() {
        let sent = group.iter().enumerate().map(|(k, (path, body))| {
            let (client, url) = (&client, s.url(path));
            async move {
                let i = n * 8 + k;
                let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                let r = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("request {i} {path} {shown}: no response: {e}"));
                let status = r.status().as_u16();
                let text = r
                    .text()
                    .await
                    .unwrap_or_else(|e| panic!("request {i} {path} {shown}: body cut: {e}"));
                (i, *path, shown, status, text)
            }
        });
        for (i, path, shown, status, text) in futures_util::future::join_all(sent).await {
            *statuses.entry(status).or_default() += 1;
            if status == 200 {
                served.insert(path);
            }
            assert!(
                status < 500,
                "request {i} {path} {shown}: {status} {text}\n{}",
                s.log()
            );
            if status >= 400 {
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                    panic!("request {i} {path} {shown}: error body not JSON: {text}")
                });
                let message = if path.starts_with("/api/") {
                    v["error"].as_str()
                } else {
                    v["error"]["message"].as_str()
                };
                assert!(
                    message.is_some_and(|m| !m.is_empty()),
                    "request {i} {path} {shown}: not the API's error shape: {text}"
                );
            }
        }
    }
    // The corpus must reach both outcomes, generation and embeddings, or it tests nothing.
    for path in [
        "/v1/chat/completions",
        "/api/generate",
        "/v1/embeddings",
        "/api/embed",
    ] {
        assert!(
            served.contains(path),
            "{path} never answered 200: {served:?}"
        );
    }
    assert!(statuses.get(&200).is_some_and(|&n| n > 20), "{statuses:?}");
    assert!(statuses.get(&400).is_some_and(|&n| n > 50), "{statuses:?}");
    assert_eq!(reqwest::get(s.url("/health")).await.unwrap().status(), 200);
    let r = post_json(
        &s.url("/v1/chat/completions"),
        &base("/v1/chat/completions"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}
