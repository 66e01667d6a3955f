//! What real clients send beyond plain chat: tools, reasoning, structured output, lists of
//! prompts, continuation, and the calls clients make at start-up (HEAD /, CORS, pull). A
//! small real model cannot be relied on to call a tool, so these run against synthetic
//! models with scripted replies, streamed in awkward pieces (`<tool_call>` and `<think>`
//! arrive cut across several callbacks).

mod common;

use common::{post_json, sse_events, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOOL_CALL: &str = "<tool_call>\n{\"name\": \"get_current_timestamp\", \"arguments\": {\"tz\": \"UTC\"}}\n</tool_call>";

/// A scripted model: `rules` are `(substring of the prompt, reply)`, tried in order;
/// `fallback` answers everything else.
fn scripted(rules: &[(&str, &str)], fallback: &str) -> String {
    let mut s = format!(
        "[model]\ncontext_length = 4096\n\n[output]\nsplit = [1, 3, 2, 5]\nscript = {}\n",
        toml_str(fallback)
    );
    for (when, text) in rules {
        s.push_str(&format!(
            "\n[[output.replies]]\nwhen = {}\ntext = {}\n",
            toml_str(when),
            toml_str(text)
        ));
    }
    s
}

fn toml_str(s: &str) -> String {
    // A TOML basic string is a JSON string for everything used here.
    serde_json::to_string(s).unwrap()
}

/// Open WebUI's built-in tools, as its middleware adds them to every chat.
fn webui_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_current_timestamp",
            "description": "Get the current Unix timestamp in seconds",
            "parameters": {"type": "object", "properties": {}, "required": []}}},
        {"type": "function", "function": {"name": "calculate_timestamp",
            "description": "Get the timestamp relative to now",
            "parameters": {"type": "object", "properties": {
                "days_ago": {"type": "integer"}, "weeks_ago": {"type": "integer"}}, "required": []}}}
    ])
}

async fn server() -> Server {
    let tools = scripted(
        &[
            ("what time", TOOL_CALL),
            (
                "two calls",
                &format!(
                    "{TOOL_CALL}\n{}",
                    TOOL_CALL.replace("get_current_timestamp", "calculate_timestamp")
                ),
            ),
            (
                "capital",
                "<think>\nThe capital of France is Paris.\n</think>\n\nParis.",
            ),
            ("Once upon a time<|im_end|>", "CLOSED"),
            ("Once upon a time", " there was a board."),
            ("bad json", "Sure! Here is your JSON: {oops"),
            ("JSON", "```json\n{\"name\": \"Ada\", \"age\": 36}\n```"),
        ],
        "Hello from the script.",
    );
    let llama = scripted(
        &[],
        "{\"name\": \"get_current_timestamp\", \"parameters\": {}}",
    );
    Server::start_synthetic(
        &[("scripted", &tools), ("llama3-scripted", &llama)],
        &common::config(
            &["scripted", "llama3-scripted"],
            "[server]\nstructured_retries = 1\n",
        ),
        &[],
    )
    .await
}

fn chat(content: &str) -> Value {
    json!({"model": "scripted", "messages": [{"role": "user", "content": content}]})
}

/// The tool calls of a streamed chat, put together as the openai SDK's helpers do.
fn assemble_tool_calls(events: &[Value]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for e in events {
        let Some(tcs) = e["choices"][0]["delta"]["tool_calls"].as_array() else {
            continue;
        };
        for tc in tcs {
            let i = tc["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.resize(i + 1, Default::default());
            }
            if let Some(id) = tc["id"].as_str() {
                calls[i].0 = id.to_string();
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                calls[i].1.push_str(n);
            }
            if let Some(a) = tc["function"]["arguments"].as_str() {
                calls[i].2.push_str(a);
            }
        }
    }
    calls
}

#[tokio::test]
async fn openai_tool_calls_plain_and_streamed() {
    let s = server().await;
    let mut req = chat("what time is it?");
    req["tools"] = webui_tools();
    let r = post_json(&s.url("/v1/chat/completions"), &req).await;
    assert_eq!(r.status, 200, "{r:?}");
    let choice = &r.json["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r:?}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_current_timestamp");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"tz": "UTC"}));
    assert!(
        choice["message"]["content"].is_null(),
        "no text beside the call: {r:?}"
    );

    req["stream"] = json!(true);
    let resp = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    let events = sse_events(resp).await;
    let calls = assemble_tool_calls(&events);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(calls[0].1, "get_current_timestamp");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].2).unwrap(),
        json!({"tz": "UTC"})
    );
    let last = events
        .iter()
        .rev()
        .find(|e| !e["choices"][0]["finish_reason"].is_null())
        .unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    // No piece of the markup leaks into the content.
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.contains("tool_call"), "{content:?}");

    // Two calls in one reply, with parallel_tool_calls on (default) and off.
    let mut two = chat("two calls please");
    two["tools"] = webui_tools();
    let r = post_json(&s.url("/v1/chat/completions"), &two).await;
    let names: Vec<&str> = r.json["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_current_timestamp", "calculate_timestamp"]);
    two["parallel_tool_calls"] = json!(false);
    let r = post_json(&s.url("/v1/chat/completions"), &two).await;
    assert_eq!(
        r.json["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn tools_with_choice_none_or_no_call_answer_in_text() {
    let s = server().await;
    for choice in [json!("none"), json!("auto")] {
        let mut req = chat("hello there");
        req["tools"] = webui_tools();
        req["tool_choice"] = choice.clone();
        let r = post_json(&s.url("/v1/chat/completions"), &req).await;
        assert_eq!(r.status, 200, "{choice}: {r:?}");
        assert_eq!(
            r.json["choices"][0]["message"]["content"],
            "Hello from the script."
        );
        assert_eq!(r.json["choices"][0]["finish_reason"], "stop");
    }
    // With "none" a call-shaped reply is just text.
    let mut req = chat("what time is it?");
    req["tools"] = webui_tools();
    req["tool_choice"] = json!("none");
    let r = post_json(&s.url("/v1/chat/completions"), &req).await;
    assert_eq!(r.json["choices"][0]["message"]["content"], TOOL_CALL);
    // "required" with a model that will not call: retried, then a clear 422.
    let mut req = chat("hello there");
    req["tools"] = webui_tools();
    req["tool_choice"] = json!("required");
    let r = post_json(&s.url("/v1/chat/completions"), &req).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 attempts"),
        "{r:?}"
    );
}

#[tokio::test]
async fn tool_history_is_accepted_in_both_apis() {
    let s = server().await;
    let req = json!({"model": "scripted", "tools": webui_tools(), "messages": [
        {"role": "user", "content": "what time is it?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_current_timestamp", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "1764650000"},
    ]});
    let r = post_json(&s.url("/v1/chat/completions"), &req).await;
    assert_eq!(r.status, 200, "{r:?}");
    let req = json!({"model": "scripted", "stream": false, "tools": webui_tools(), "messages": [
        {"role": "user", "content": "what time is it?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_current_timestamp", "arguments": {}}}]},
        {"role": "tool", "tool_name": "get_current_timestamp", "content": "1764650000"},
    ]});
    let r = post_json(&s.url("/api/chat"), &req).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = post_json(
        &s.url("/api/chat"),
        &json!({"model": "scripted", "messages": [{"role": "wizard", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 400, "an unknown role is refused: {r:?}");
    assert!(r.json["error"].as_str().unwrap().contains("wizard"));
}

#[tokio::test]
async fn ollama_tool_calls_and_thinking() {
    let s = server().await;
    // Open WebUI's /api/chat: built-in tools, streamed, its usual options.
    let req = json!({"model": "scripted", "stream": true, "tools": webui_tools(),
        "options": {"num_ctx": 2048, "seed": 42, "num_predict": 128},
        "messages": [{"role": "user", "content": "what time is it?"}]});
    let resp = reqwest::Client::new()
        .post(s.url("/api/chat"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let calls: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l["message"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{text}");
    assert_eq!(calls[0]["function"]["name"], "get_current_timestamp");
    assert_eq!(
        calls[0]["function"]["arguments"],
        json!({"tz": "UTC"}),
        "arguments are an object"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    for k in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(last[k].is_u64(), "{k} in {last}");
    }

    let r = post_json(
        &s.url("/api/chat"),
        &json!({"model": "scripted", "stream": false, "think": true,
        "messages": [{"role": "user", "content": "the capital of France?"}]}),
    )
    .await;
    assert_eq!(
        r.json["message"]["thinking"], "The capital of France is Paris.\n",
        "{r:?}"
    );
    assert_eq!(r.json["message"]["content"], "Paris.");
    let r = post_json(
        &s.url("/api/generate"),
        &json!({"model": "scripted", "stream": false,
        "prompt": "the capital of France?"}),
    )
    .await;
    assert_eq!(
        r.json["thinking"], "The capital of France is Paris.\n",
        "{r:?}"
    );
    assert_eq!(r.json["response"], "Paris.");
}

#[tokio::test]
async fn openai_reasoning_content_plain_and_streamed() {
    let s = server().await;
    let r = post_json(
        &s.url("/v1/chat/completions"),
        &chat("the capital of France?"),
    )
    .await;
    let m = &r.json["choices"][0]["message"];
    assert_eq!(
        m["reasoning_content"], "The capital of France is Paris.\n",
        "{r:?}"
    );
    assert_eq!(m["content"], "Paris.");
    let mut req = chat("the capital of France?");
    req["stream"] = json!(true);
    let resp = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    let events = sse_events(resp).await;
    let field = |f: &str| -> String {
        events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"][f].as_str())
            .collect()
    };
    assert_eq!(
        field("reasoning_content"),
        "The capital of France is Paris.\n"
    );
    assert_eq!(field("content"), "Paris.");
}

#[tokio::test]
async fn llama3_json_tool_calls() {
    let s = server().await;
    let req = json!({"model": "llama3-scripted", "tools": webui_tools(),
        "messages": [{"role": "user", "content": "time?"}]});
    let r = post_json(&s.url("/v1/chat/completions"), &req).await;
    assert_eq!(r.json["choices"][0]["finish_reason"], "tool_calls", "{r:?}");
    assert_eq!(
        r.json["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_current_timestamp"
    );
}

#[tokio::test]
async fn structured_output_is_valid_json_or_a_clear_error() {
    let s = server().await;
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]});
    let mut req = chat("give me JSON");
    req["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}});
    let r = post_json(&s.url("/v1/chat/completions"), &req).await;
    assert_eq!(r.status, 200, "{r:?}");
    let content: Value =
        serde_json::from_str(r.json["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"name": "Ada", "age": 36}));
    // Streamed: the same JSON, fence stripped.
    req["stream"] = json!(true);
    let resp = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    let events = sse_events(resp).await;
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"name": "Ada", "age": 36})
    );
    // A schema the reply does not meet, then a reply that is no JSON at all.
    req["stream"] = json!(false);
    req["response_format"]["json_schema"]["schema"]["required"] = json!(["email"]);
    let r = post_json(&s.url("/v1/chat/completions"), &req).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.json["error"]["code"], "invalid_model_output");
    let r = common::ollama_json_is_refused(&s, "scripted").await;
    assert!(
        r.json["error"].as_str().unwrap().contains("not JSON"),
        "{r:?}"
    );
    let r = post_json(
        &s.url("/api/chat"),
        &json!({"model": "scripted", "stream": false, "format": "json",
        "messages": [{"role": "user", "content": "JSON"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        serde_json::from_str::<Value>(r.json["message"]["content"].as_str().unwrap()).unwrap()
            ["age"],
        36
    );
    // An invalid schema is the client's error.
    let mut bad = chat("JSON");
    bad["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}});
    assert_eq!(
        post_json(&s.url("/v1/chat/completions"), &bad).await.status,
        400
    );
}

#[tokio::test]
async fn a_final_assistant_message_is_continued() {
    let s = server().await;
    let msgs = json!([{"role": "user", "content": "tell a story"}, {"role": "assistant", "content": "Once upon a time"}]);
    let r = post_json(
        &s.url("/api/chat"),
        &json!({"model": "scripted", "stream": false, "messages": msgs}),
    )
    .await;
    assert_eq!(
        r.json["message"]["content"], " there was a board.",
        "the turn is left open: {r:?}"
    );
    let r = post_json(
        &s.url("/v1/chat/completions"),
        &json!({"model": "scripted", "messages": msgs}),
    )
    .await;
    assert_eq!(
        r.json["choices"][0]["message"]["content"],
        " there was a board."
    );
    let r = post_json(
        &s.url("/v1/chat/completions"),
        &json!({"model": "scripted", "messages": msgs, "continue_final_message": false}),
    )
    .await;
    assert_eq!(
        r.json["choices"][0]["message"]["content"], "CLOSED",
        "{r:?}"
    );
}

#[tokio::test]
async fn completions_take_a_list_of_prompts_and_refuse_token_ids() {
    let s = server().await;
    let r = post_json(
        &s.url("/v1/completions"),
        &json!({"model": "scripted", "prompt": ["what time", "hello", "capital"], "n": 2}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let choices = r.json["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 6);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    assert_eq!(choices[2]["text"], "Hello from the script.");
    assert!(
        choices[0]["text"].as_str().unwrap().contains("tool_call"),
        "raw completions parse nothing"
    );
    assert!(r.json["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    for prompt in [json!([1, 2, 3]), json!([[1, 2], [3]])] {
        let r = post_json(
            &s.url("/v1/completions"),
            &json!({"model": "scripted", "prompt": prompt}),
        )
        .await;
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.json["error"]["param"], "prompt");
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("token"),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn nul_characters_are_refused_naming_the_field() {
    let s = server().await;
    let r = post_json(
        &s.url("/v1/chat/completions"),
        &json!({"model": "scripted", "messages": [
        {"role": "system", "content": "ok"}, {"role": "user", "content": "a\u{0}b"}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json["error"]["param"], "messages[1].content");
    let r = post_json(
        &s.url("/api/generate"),
        &json!({"model": "scripted", "prompt": "a\u{0}b", "stream": false}),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn root_cors_and_pull() {
    let s = server().await;
    let c = reqwest::Client::new();
    for r in [
        c.get(s.url("/")).send().await.unwrap(),
        c.head(s.url("/")).send().await.unwrap(),
    ] {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        c.get(s.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "Ollama is running"
    );

    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, s.url("/v1/chat/completions"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "content-type, authorization",
            )
            .send()
    };
    let ok = preflight("http://localhost:3000").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let evil = preflight("https://evil.example").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let r = c
        .get(s.url("/api/tags"))
        .header("Origin", "http://127.0.0.1:8081")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://127.0.0.1:8081"
    );

    let r = post_json(
        &s.url("/api/pull"),
        &json!({"model": "scripted", "stream": false}),
    )
    .await;
    assert_eq!(r.json, json!({"status": "success"}), "{r:?}");
    let r = post_json(&s.url("/api/pull"), &json!({"model": "llama9:70b"})).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.json["error"]
        .as_str()
        .unwrap()
        .contains("models directory"));
    let r = post_json(
        &s.url("/api/copy"),
        &json!({"source": "scripted", "destination": "x"}),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = post_json(&s.url("/api/show"), &json!({"model": "scripted"})).await;
    let caps = r.json["capabilities"].as_array().unwrap();
    assert!(caps.contains(&json!("tools")), "{r:?}");
}

/// A model whose steps take real time, so that the order of events can be observed.
const SLOW: &str = "[model]\ncontext_length = 4096\n\n[timing]\nprefill_tokens_per_second = 0.0\ndecode_step_ms = 20.0\nbatch_alpha = 0.0\n";

#[tokio::test]
async fn a_short_reply_returns_at_its_own_end_not_its_batchs() {
    let s = Server::start_synthetic(&[("slow", SLOW)], &common::config(&["slow"], ""), &[]).await;
    let url = s.url("/v1/chat/completions");
    let long = json!({"model": "slow", "max_tokens": 150, "messages": [{"role": "user", "content": "long"}]});
    let short = json!({"model": "slow", "max_tokens": 3, "messages": [{"role": "user", "content": "short"}]});
    let started = Instant::now();
    let (l, sh) = tokio::join!(
        async {
            let r = post_json(&url, &long).await;
            (r, started.elapsed())
        },
        async {
            let r = post_json(&url, &short).await;
            (r, started.elapsed())
        },
    );
    assert_eq!(l.0.status, 200);
    assert_eq!(sh.0.json["usage"]["completion_tokens"], 3, "{:?}", sh.0);
    assert_eq!(l.0.json["usage"]["completion_tokens"], 150, "{:?}", l.0);
    // 150 steps of 20 ms: the short reply must not wait for them.
    assert!(
        sh.1 + Duration::from_secs(2) < l.1,
        "short {:?}, long {:?}",
        sh.1,
        l.1
    );
}

/// Clients that leave while queued (streaming or not) give up their queue places; one that
/// leaves a non-streamed generation mid-run gives up its slot.
#[tokio::test]
async fn a_client_that_leaves_while_queued_gives_up_its_place() {
    let s = Server::start_synthetic(
        &[("slow", SLOW)],
        &common::config(&["slow"], ""),
        &["--n-batch", "1"],
    )
    .await;
    let url = s.url("/v1/chat/completions");
    let busy = json!({"model": "slow", "max_tokens": 1000, "messages": [{"role": "user", "content": "long"}]});
    let running = tokio::spawn({
        let url = url.clone();
        async move { post_json(&url, &busy).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Queued behind it, then abandoned, streaming and not.
    for stream in [false, true] {
        let req = json!({"model": "slow", "stream": stream, "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]});
        let waiting = tokio::spawn({
            let url = url.clone();
            async move { reqwest::Client::new().post(&url).json(&req).send().await }
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        while s.loaded("slow").await["waiting"] != 1 {
            assert!(Instant::now() < deadline, "the request never queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        waiting.abort();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if s.loaded("slow").await["waiting"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the abandoned request kept its queue place (stream {stream})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        !running.is_finished(),
        "the run outlasted the test: make it longer"
    );
    // The non-streaming client mid-generation leaves too: its slot is freed, its run ends.
    assert_eq!(s.loaded("slow").await["busy_slots"], 1);
    running.abort();
    let deadline = Instant::now() + Duration::from_secs(3);
    while s.loaded("slow").await["busy_slots"] != 0 {
        assert!(
            Instant::now() < deadline,
            "a non-streaming client that left kept its slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that leaves while its model loads is counted once, as cancelled; the load goes
/// on, and the model then serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_the_model_loads_is_counted_once() {
    const LOAD: Duration = Duration::from_millis(3000);
    let profile = format!(
        "[timing]\ndecode_step_ms = 1.0\nload_ms = {}\n",
        LOAD.as_millis()
    );
    // Not preloaded (another model is, for /ready): the first request loads it.
    let quick = "[timing]\ndecode_step_ms = 1.0\n";
    let s = Server::start_synthetic(
        &[("slowload", &profile), ("quick", quick)],
        &common::config(&["quick"], ""),
        &[],
    )
    .await;
    let url = s.url("/v1/chat/completions");
    let body = json!({"model": "slowload", "max_tokens": 3,
        "messages": [{"role": "user", "content": "hi"}]});
    let sent = Instant::now();
    let leaving = tokio::spawn({
        let (url, body) = (url.clone(), body.clone());
        async move { reqwest::Client::new().post(&url).json(&body).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    leaving.abort();
    let cancelled = s.counter_when("rkserve_request_failure_total", 1.0).await;
    assert_eq!(cancelled, 1.0, "the leaving client is counted once");
    // The load began after the request was sent, so it had not ended: the client was let
    // go while the model loaded, not once it was ready.
    assert!(
        sent.elapsed() < LOAD,
        "the leaving client was noticed only after {:?}",
        sent.elapsed()
    );
    let r = post_json(&url, &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        s.counter_when("rkserve_request_success_total", 1.0).await,
        1.0
    );
    let metrics = s.metrics().await;
    let cancelled_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("rkserve_request_failure_total{")
                && l.contains("model=\"slowload\"")
                && l.contains("kind=\"cancelled\"")
        })
        .unwrap_or_else(|| panic!("no cancellation counted:\n{metrics}"));
    assert!(cancelled_line.ends_with(" 1"), "{cancelled_line}");
    assert_eq!(s.counter("rkserve_request_failure_total").await, 1.0);
}
