//! Every way a request can fail, answered with the right status and in the shape the calling
//! API's clients parse: OpenAI `{"error": {"message", "type", "param", "code"}}` under `/v1`,
//! Ollama `{"error": "..."}` under `/api`. Synthetic models throughout: errors need no real
//! model, and synthetic ones start instantly and count tokens exactly (ceil(bytes / 4)).

mod common;

use common::{post_json, post_raw, Reply, Server, SseLines};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// A model whose context is small enough to overflow with a short prompt.
const TINY: (&str, &str) = ("tiny", "[model]\ncontext_length = 64\n");

/// Checks what both APIs' errors share (status, a JSON body holding only `error`) and
/// returns that `error`.
#[track_caller]
fn error_field(r: &Reply, status: u16) -> &Value {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "errors are JSON: {:?}",
        r.headers
    );
    let top = r
        .json
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {r:?}"));
    assert_eq!(top.len(), 1, "only `error` at the top level: {r:?}");
    &top["error"]
}

/// Checks the OpenAI error shape and returns the inner error object.
#[track_caller]
fn openai_error(r: &Reply, status: u16) -> &Map<String, Value> {
    let e = error_field(r, status)
        .as_object()
        .unwrap_or_else(|| panic!("OpenAI errors are objects: {r:?}"));
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
    assert!(e["type"].is_string(), "{r:?}");
    for key in ["param", "code"] {
        let v = e
            .get(key)
            .unwrap_or_else(|| panic!("`{key}` must be present, if null: {r:?}"));
        assert!(
            v.is_string() || v.is_null(),
            "`{key}` is a string or null, never {v}: {r:?}"
        );
    }
    e
}

/// Checks the Ollama error shape and returns the message.
#[track_caller]
fn ollama_error(r: &Reply, status: u16) -> &str {
    let m = error_field(r, status)
        .as_str()
        .unwrap_or_else(|| panic!("Ollama errors are strings: {r:?}"));
    assert!(!m.is_empty());
    m
}

fn chat(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4})
}

async fn tiny_server(extra_config: &str) -> Server {
    Server::start_synthetic(&[TINY], &common::config(&["tiny"], extra_config), &[]).await
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_400_naming_the_field() {
    let s = tiny_server("").await;
    let broken = r#"{"model": "tiny", "messages": ["#;
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let r = post_raw(&s.url(path), broken).await;
        let e = openai_error(&r, 400);
        assert_eq!(e["type"], "invalid_request_error");
        assert!(e["message"].as_str().unwrap().contains("JSON"), "{r:?}");
    }
    for path in ["/api/chat", "/api/generate", "/api/show"] {
        let r = post_raw(&s.url(path), broken).await;
        assert!(ollama_error(&r, 400).contains("JSON"), "{path}: {r:?}");
    }
    let r = post_raw(&s.url("/v1/chat/completions"), "").await;
    openai_error(&r, 400);

    // Refused in the right shape; that the field is named is openai_wrong_type_names_the_field.
    let mut body = chat("tiny", "hi");
    body["max_tokens"] = json!("ten");
    let r = post_json(&s.url("/v1/chat/completions"), &body).await;
    assert_eq!(openai_error(&r, 400)["type"], "invalid_request_error");

    // A field outside the flattened common fields is named already.
    let r = post_json(
        &s.url("/v1/chat/completions"),
        &json!({"model": "tiny", "messages": "hi"}),
    )
    .await;
    assert_eq!(openai_error(&r, 400)["param"], "messages", "{r:?}");

    let r = post_json(
        &s.url("/api/generate"),
        &json!({"model": "tiny", "prompt": "hi", "options": {"num_predict": "ten"}}),
    )
    .await;
    assert!(ollama_error(&r, 400).contains("num_predict"), "{r:?}");

    let r = post_json(
        &s.url("/api/chat"),
        &json!({"model": "tiny", "messages": "hi"}),
    )
    .await;
    assert!(ollama_error(&r, 400).contains("messages"), "{r:?}");
}

/// The fields shared by chat and text completions (`max_tokens`, `temperature`, `stream`,
/// `model`, ...) sit in a `#[serde(flatten)]` struct, through which serde_path_to_error
/// loses the path: the server answers `invalid request: invalid type: string "ten",
/// expected u32` with `param: null`.
#[tokio::test]
async fn openai_wrong_type_names_the_field() {
    let s = tiny_server("").await;
    let mut body = chat("tiny", "hi");
    body["max_tokens"] = json!("ten");
    let r = post_json(&s.url("/v1/chat/completions"), &body).await;
    let e = openai_error(&r, 400);
    assert_eq!(e["param"], "max_tokens", "{r:?}");
    assert!(
        e["message"].as_str().unwrap().contains("max_tokens"),
        "{r:?}"
    );

    let r = post_json(
        &s.url("/v1/completions"),
        &json!({"model": "tiny", "prompt": "hi", "temperature": "hot"}),
    )
    .await;
    let e = openai_error(&r, 400);
    assert_eq!(e["param"], "temperature", "{r:?}");
    assert!(
        e["message"].as_str().unwrap().contains("temperature"),
        "{r:?}"
    );
}

#[tokio::test]
async fn an_unknown_model_is_404() {
    let s = tiny_server("").await;
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = if path.ends_with("chat/completions") {
            chat("no-such-model", "hi")
        } else {
            json!({"model": "no-such-model", "prompt": "hi"})
        };
        let r = post_json(&s.url(path), &body).await;
        let e = openai_error(&r, 404);
        assert_eq!(e["code"], "model_not_found", "{r:?}");
        assert_eq!(e["param"], "model", "{r:?}");
        assert!(
            e["message"].as_str().unwrap().contains("no-such-model"),
            "{r:?}"
        );
    }
    let r = Reply::read(
        reqwest::get(s.url("/v1/models/no-such-model"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(openai_error(&r, 404)["param"], "model");

    let bodies = [
        (
            "/api/chat",
            json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/api/generate",
            json!({"model": "no-such-model", "prompt": "hi"}),
        ),
        ("/api/show", json!({"model": "no-such-model"})),
    ];
    for (path, body) in bodies {
        let r = post_json(&s.url(path), &body).await;
        assert!(
            ollama_error(&r, 404).contains("no-such-model"),
            "{path}: {r:?}"
        );
    }
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_413() {
    let s = tiny_server("[server]\nmax_body_bytes = 1000\n").await;
    let big = "x".repeat(1200);
    let r = post_json(&s.url("/v1/chat/completions"), &chat("tiny", &big)).await;
    let e = openai_error(&r, 413);
    assert_eq!(e["code"], "request_too_large");
    assert!(e["message"].as_str().unwrap().contains("1000"), "{r:?}");
    let r = post_json(
        &s.url("/v1/completions"),
        &json!({"model": "tiny", "prompt": big}),
    )
    .await;
    openai_error(&r, 413);
    let r = post_json(
        &s.url("/api/chat"),
        &json!({"model": "tiny", "messages": [{"role": "user", "content": big}]}),
    )
    .await;
    assert!(ollama_error(&r, 413).contains("1000"), "{r:?}");
    let r = post_json(
        &s.url("/api/generate"),
        &json!({"model": "tiny", "prompt": big}),
    )
    .await;
    ollama_error(&r, 413);

    // The limit is inclusive and counts the body's bytes: exactly 1000 is served, 1001 is not.
    let padded = |size: usize| {
        let mut body = json!({"model": "tiny", "prompt": "hi", "max_tokens": 2, "user": ""});
        let bare = serde_json::to_vec(&body).unwrap().len();
        body["user"] = json!("u".repeat(size - bare));
        assert_eq!(serde_json::to_vec(&body).unwrap().len(), size);
        body
    };
    let r = post_json(&s.url("/v1/completions"), &padded(1000)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = post_json(&s.url("/v1/completions"), &padded(1001)).await;
    openai_error(&r, 413);
}

/// All integers in a message, to check that an error names the numbers at fault.
fn numbers(s: &str) -> Vec<usize> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_400_with_both_numbers() {
    let s = tiny_server("").await;
    // 400 bytes are exactly 100 synthetic tokens, against a context of 64.
    let long = "x".repeat(400);
    let r = post_json(
        &s.url("/v1/completions"),
        &json!({"model": "tiny", "prompt": long}),
    )
    .await;
    let e = openai_error(&r, 400);
    let n = numbers(e["message"].as_str().unwrap());
    assert!(n.contains(&100) && n.contains(&64), "{r:?}");

    // The chat template adds its own tokens, so only a lower bound is known here.
    let r = post_json(&s.url("/v1/chat/completions"), &chat("tiny", &long)).await;
    let e = openai_error(&r, 400);
    let n = numbers(e["message"].as_str().unwrap());
    assert!(n.contains(&64) && n.iter().any(|&k| k > 100), "{r:?}");
    assert_eq!(e["param"], "messages", "{r:?}");

    let r = post_json(
        &s.url("/api/generate"),
        &json!({"model": "tiny", "prompt": long, "raw": true, "stream": false}),
    )
    .await;
    let n = numbers(ollama_error(&r, 400));
    assert!(n.contains(&100) && n.contains(&64), "{r:?}");
    let r = post_json(
        &s.url("/api/chat"),
        &json!({"model": "tiny", "messages": [{"role": "user", "content": long}]}),
    )
    .await;
    assert!(numbers(ollama_error(&r, 400)).contains(&64), "{r:?}");

    // The boundary: 64 prompt tokens leave no room to generate; 63 leave room for one.
    let at = |bytes: usize| json!({"model": "tiny", "prompt": "y".repeat(bytes), "max_tokens": 5});
    let r = post_json(&s.url("/v1/completions"), &at(256)).await;
    openai_error(&r, 400);
    let r = post_json(&s.url("/v1/completions"), &at(252)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["usage"]["prompt_tokens"], 63, "{r:?}");
    assert_eq!(r.json["usage"]["completion_tokens"], 1, "{r:?}");
    assert_eq!(r.json["choices"][0]["finish_reason"], "length", "{r:?}");
}

/// The context check blames `messages` whichever endpoint was called.
#[tokio::test]
async fn a_text_prompt_longer_than_the_context_names_prompt() {
    let s = tiny_server("").await;
    let r = post_json(
        &s.url("/v1/completions"),
        &json!({"model": "tiny", "prompt": "x".repeat(400)}),
    )
    .await;
    assert_eq!(openai_error(&r, 400)["param"], "prompt", "{r:?}");
}

#[tokio::test]
async fn unsupported_features_are_refused_not_ignored() {
    let s = tiny_server("").await;
    let url = s.url("/v1/chat/completions");
    let refused = [("logprobs", json!(true)), ("top_logprobs", json!(3))];
    for (field, value) in refused {
        let mut body = chat("tiny", "hi");
        body[field] = value;
        let r = post_json(&url, &body).await;
        let e = openai_error(&r, 400);
        let param = e["param"].as_str().unwrap_or_default();
        assert!(field.contains(param) && !param.is_empty(), "{field}: {r:?}");
    }
    let r = post_json(
        &s.url("/v1/completions"),
        &json!({"model": "tiny", "prompt": "hi", "echo": true}),
    )
    .await;
    assert_eq!(openai_error(&r, 400)["param"], "echo");

    // What a client sends to say "off" must still be served.
    let mut off = chat("tiny", "hi");
    off["logprobs"] = json!(false);
    off["tools"] = json!([]);
    off["response_format"] = json!({"type": "text"});
    let r = post_json(&url, &off).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Malformed tool and format requests are the client's error, naming the field.
    let mut bad = chat("tiny", "hi");
    bad["tools"] = json!({"type": "function"});
    assert_eq!(
        openai_error(&post_json(&url, &bad).await, 400)["param"],
        "tools"
    );
    let mut bad = chat("tiny", "hi");
    bad["response_format"] = json!({"type": "xml"});
    assert_eq!(
        openai_error(&post_json(&url, &bad).await, 400)["param"],
        "response_format"
    );
    let r = post_json(
        &s.url("/api/generate"),
        &json!({"model": "tiny", "prompt": "hi", "format": 7}),
    )
    .await;
    assert!(ollama_error(&r, 400).contains("format"), "{r:?}");
}

#[tokio::test]
async fn an_unknown_route_is_404_json() {
    let s = tiny_server("").await;
    for path in ["/v1/nothing", "/nothing"] {
        let r = Reply::read(reqwest::get(s.url(path)).await.unwrap()).await;
        let e = openai_error(&r, 404);
        assert!(e["message"].as_str().unwrap().contains(path), "{r:?}");
    }
    let r = Reply::read(reqwest::get(s.url("/api/nothing")).await.unwrap()).await;
    assert!(ollama_error(&r, 404).contains("/api/nothing"), "{r:?}");
    let r = post_json(&s.url("/v1/chat/completion"), &chat("tiny", "hi")).await;
    openai_error(&r, 404);
}

/// Every OpenAI 404 gets `code: "model_not_found"`, so a client told a route does not exist
/// reports a missing model instead.
#[tokio::test]
async fn an_unknown_route_is_not_reported_as_a_missing_model() {
    let s = tiny_server("").await;
    let r = Reply::read(reqwest::get(s.url("/v1/nothing")).await.unwrap()).await;
    assert_ne!(openai_error(&r, 404)["code"], "model_not_found", "{r:?}");
}

#[track_caller]
fn assert_retry_after(r: &Reply) {
    assert!(r.retry_after() >= 1, "{r:?}");
    assert!(
        !r.header("content-type")
            .unwrap_or_default()
            .contains("event-stream"),
        "refused before streaming starts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_429_with_retry_after_before_streaming_starts() {
    // One slot, one waiting place: the third request has nowhere to go.
    let s = Server::start_synthetic(
        &[("slow", "[timing]\ndecode_step_ms = 50.0\n")],
        &common::config(&["slow"], "[scheduler]\nn_batch = 1\nmax_queue = 1\n"),
        &[],
    )
    .await;
    let url = s.url("/v1/chat/completions");
    let mut long = chat("slow", "occupy the instance");
    long["max_tokens"] = json!(1000);
    long["stream"] = json!(true);
    let r = reqwest::Client::new()
        .post(&url)
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut running = SseLines::new(r);
    running.next_data().await.expect("the first request runs");

    let queued = {
        let (url, mut body) = (url.clone(), chat("slow", "wait in the queue"));
        body["max_tokens"] = json!(3);
        tokio::spawn(async move { post_json(&url, &body).await })
    };
    let started = Instant::now();
    while s.loaded("slow").await["waiting"] != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the second request never queued: {}",
            s.loaded("slow").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let r = post_json(&url, &chat("slow", "no room")).await;
    let e = openai_error(&r, 429);
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert_retry_after(&r);

    let mut streaming = chat("slow", "no room either");
    streaming["stream"] = json!(true);
    let r = post_json(&url, &streaming).await;
    openai_error(&r, 429);
    assert_retry_after(&r);

    let r = post_json(
        &s.url("/v1/completions"),
        &json!({"model": "slow", "prompt": "no room", "stream": true}),
    )
    .await;
    openai_error(&r, 429);
    assert_retry_after(&r);

    // Ollama streams by default: refused all the same, in its own shape.
    let r = post_json(
        &s.url("/api/chat"),
        &json!({"model": "slow", "messages": [{"role": "user", "content": "no room"}]}),
    )
    .await;
    ollama_error(&r, 429);
    assert_retry_after(&r);
    let r = post_json(
        &s.url("/api/generate"),
        &json!({"model": "slow", "prompt": "no room"}),
    )
    .await;
    ollama_error(&r, 429);
    assert_retry_after(&r);

    // Refusals leave the queue alone: once the running request goes, the queued one is served.
    drop(running);
    let r = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("the queued request runs once the slot is free")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["usage"]["completion_tokens"], 3, "{r:?}");
}

#[tokio::test]
async fn api_keys_guard_everything_but_health() {
    let s = Server::start_synthetic(
        &[("fast", "[timing]\ndecode_step_ms = 0.0\n")],
        &common::config(&["fast"], ""),
        &["--api-keys", "k1,k2"],
    )
    .await;
    let client = reqwest::Client::new();
    let get = |path: &str, key: Option<&str>| {
        let mut b = client.get(s.url(path));
        if let Some(k) = key {
            b = b.bearer_auth(k);
        }
        async move { Reply::read(b.send().await.unwrap()).await }
    };

    for key in [None, Some("k3"), Some("k"), Some("k1k2")] {
        let r = get("/v1/models", key).await;
        let e = openai_error(&r, 401);
        assert_eq!(e["code"], "invalid_api_key", "{r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = get("/api/tags", key).await;
        ollama_error(&r, 401);
        let mut post = client.post(s.url("/v1/chat/completions"));
        if let Some(k) = key {
            post = post.bearer_auth(k);
        }
        let r = Reply::read(post.json(&chat("fast", "hi")).send().await.unwrap()).await;
        openai_error(&r, 401);
    }

    for key in ["k1", "k2"] {
        let r = get("/v1/models", Some(key)).await;
        assert_eq!(r.status, 200, "{key}: {r:?}");
        let r = get("/api/tags", Some(key)).await;
        assert_eq!(r.status, 200, "{key}: {r:?}");
        let r = Reply::read(
            client
                .post(s.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(&chat("fast", "hi"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{key}: {r:?}");
    }

    // The scheme is case-insensitive; a different scheme is no key.
    for (header, status) in [
        ("BEARER k1", 200),
        ("bearer k2", 200),
        ("  Bearer k1", 200),
        ("Basic k1", 401),
        ("Bearerk1", 401),
    ] {
        let r = client
            .get(s.url("/v1/models"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{header}");
    }

    for path in ["/health", "/ready"] {
        assert_eq!(get(path, None).await.status, 200, "{path} is open");
    }
}

/// Sends `bytes` on one connection and reads every response until the server closes it.
async fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<Reply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    // Closed by the server, or this test fails by timeout: a refusal must end the connection.
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 65536];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection stayed open: {got:?}");
    let mut replies = Vec::new();
    let mut rest = &got[..];
    while let Some((reply, used)) = Reply::parse(rest) {
        replies.push(reply);
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "bytes after the last response: {rest:?}");
    replies
}

#[tokio::test]
async fn requests_that_are_not_http_get_the_error_shape_of_their_api() {
    let s = tiny_server("").await;
    let replies = raw_exchange(s.port, b"GARBAGE\r\n\r\n").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let e = openai_error(&replies[0], 400);
    assert!(
        e["message"].as_str().unwrap().contains("not valid HTTP"),
        "{e:?}"
    );
    assert_eq!(replies[0].header("connection"), Some("close"));

    // Both lengths: a request-smuggling attempt, on an Ollama path.
    let smuggle = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
        Transfer-Encoding: chunked\r\n\r\n";
    let replies = raw_exchange(s.port, smuggle).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    ollama_error(&replies[0], 400);

    // A header section over actix-http's limit (96 headers) is 431. Small, so that all of it
    // is read before the server closes: unread bytes would make the close a reset.
    let mut huge = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..120 {
        huge.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let replies = raw_exchange(s.port, &huge).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    openai_error(&replies[0], 431);

    // A good request and then garbage on the same connection: the good one is answered as
    // usual, the garbage in the shape of the API spoken last.
    let replies = raw_exchange(
        s.port,
        b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n",
    )
    .await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0].status, 200, "{replies:?}");
    assert!(replies[0].json["models"].is_array(), "{replies:?}");
    ollama_error(&replies[1], 400);

    // And the server serves on.
    let r = post_json(&s.url("/v1/chat/completions"), &chat("tiny", "hi")).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A body that is declared and never sent: `server.body_timeout` after the headers, the
/// request gets 408 in its API's error shape, instead of holding the connection for ever.
#[tokio::test]
async fn a_body_that_never_arrives_is_408_in_the_apis_shape() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tiny_server("[server]\nbody_timeout = \"1s\"\n").await;
    for path in ["/v1/chat/completions", "/api/chat"] {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"model\""
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let sent = Instant::now();
        // The response, read whole (its head and Content-Length bytes), or the test fails.
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                if let Some((reply, _)) = Reply::parse(&got) {
                    return reply;
                }
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed without a response: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("a response within 10 s");
        let waited = sent.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "{path}: after {waited:?}"
        );
        let message = if path.starts_with("/api/") {
            ollama_error(&r, 408).to_string()
        } else {
            openai_error(&r, 408)["message"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(message.contains("did not arrive"), "{path}: {message}");
    }
    // The server serves on.
    let r = post_json(&s.url("/v1/chat/completions"), &chat("tiny", "hi")).await;
    assert_eq!(r.status, 200, "{r:?}");
}
