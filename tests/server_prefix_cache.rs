//! Automatic prefix caching through the HTTP API on the default model: a request with the
//! system prompt of the one before it and another question prefills only its new tokens (the
//! runtime's perf stats, reported as OpenAI's `usage.prompt_tokens_details.cached_tokens`),
//! and the prefix-cache counters say so.

mod common;
use common::{config, post_json, workspace_models, Server, DEFAULT_MODEL};
use serde_json::{json, Value};

/// The coding-assistant system prompt the prefix-cache tests share (622 characters).
const SYSTEM: &str = include_str!("data/coding-system-prompt.txt");

fn body(question: &str, stream: bool) -> Value {
    let mut body = common::system_chat(DEFAULT_MODEL, SYSTEM, question);
    body["temperature"] = json!(0);
    body["max_tokens"] = json!(4);
    body["stream"] = json!(stream);
    body["stream_options"] = json!({"include_usage": true});
    body
}

/// (prompt tokens, cached tokens) of a non-streamed chat completion.
async fn ask(server: &Server, question: &str) -> (u64, u64) {
    let r = post_json(&server.url("/v1/chat/completions"), &body(question, false)).await;
    assert_eq!(r.status, 200, "{r:?}");
    common::cached_usage(&r.json["usage"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_system_prompt_is_prefilled_once() {
    let cfg = config(&[DEFAULT_MODEL], "[scheduler]\nn_batch = 4\n");
    let server = Server::start(&workspace_models(), &cfg, &[]).await;
    assert_eq!(server.counter("rkserve_prefix_cache_hits_total").await, 0.0);

    let (cold_prompt, cold_cached) = ask(&server, "How do I reverse a list in Python?").await;
    assert_eq!(
        cold_cached, 0,
        "nothing was cached before the first request"
    );
    assert!(cold_prompt > 150, "{cold_prompt} prompt tokens");

    let (prompt, cached) = ask(&server, "What is a Rust lifetime?").await;
    let prefilled = prompt - cached;
    assert!(
        prefilled <= 24,
        "a warm request prefilled {prefilled} of its {prompt} tokens"
    );

    // Streamed, the usage chunk carries it too.
    let r = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&body("How do I read a file line by line in bash?", true))
        .send()
        .await
        .expect("POST");
    let events = common::sse_events(r).await;
    let usage = events
        .iter()
        .find(|e| e["usage"].is_object())
        .map(|e| e["usage"].clone())
        .expect("a usage chunk");
    let (streamed_prompt, streamed_cached) = common::cached_usage(&usage);
    assert!(
        streamed_prompt - streamed_cached <= 24,
        "a warm streamed request prefilled {} of its {streamed_prompt} tokens",
        streamed_prompt - streamed_cached
    );

    // The streamed request's outcome is recorded just after its last chunk: wait for it.
    assert_eq!(
        server
            .counter_when("rkserve_prefix_cache_hits_total", 2.0)
            .await,
        2.0
    );
    assert_eq!(
        server.counter("rkserve_prefix_cache_misses_total").await,
        1.0
    );
    assert_eq!(
        server
            .counter("rkserve_prefix_cache_saved_tokens_total")
            .await,
        (cached + streamed_cached) as f64
    );
}

/// Requests that share a system prompt and arrive together, on slots that never held it:
/// each starts from the prompt-cache file saved when the prefix became hot, so the prefix is
/// prefilled once for all of them (here, once before the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_arriving_together_start_from_the_prompt_cache_file() {
    let cfg = config(&[DEFAULT_MODEL], "[scheduler]\nn_batch = 4\n");
    let mut server = Server::start(&workspace_models(), &cfg, &[]).await;
    ask(&server, "How do I reverse a list in Python?").await;
    ask(&server, "What is a Rust lifetime?").await;
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        1.0
    );
    // A new process: no slot holds anything, only the file is left.
    server.restart().await;
    let questions = [
        "How do I sort a map by value in Go?",
        "What does git rebase do?",
        "How do I make a Python virtualenv?",
        "What is a C++ move constructor?",
    ];
    let asked = questions.iter().map(|q| ask(&server, q));
    for (prompt, cached) in futures_util::future::join_all(asked).await {
        assert!(
            prompt - cached <= 24,
            "a request arriving with three others prefilled {} of {prompt} tokens",
            prompt - cached
        );
    }
    assert_eq!(
        server.counter("rkserve_prompt_cache_loads_total").await,
        1.0
    );
}

/// The seed project's API: a named cache is created once (which warms a slot with it), then
/// requests that name it in `use_cache` find its prompt already prefilled, in both APIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_named_cache_is_created_used_listed_and_deleted() {
    let cfg = config(&[DEFAULT_MODEL], "[scheduler]\nn_batch = 4\n");
    let server = Server::start(&workspace_models(), &cfg, &[]).await;
    let caches = server.url(&format!("/v1/cache/{DEFAULT_MODEL}"));

    let r = post_json(&caches, &json!({"cache_name": "coder", "prompt": SYSTEM})).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["cache_name"], "coder");
    assert_eq!(r.json["replaced"], false);
    let cache_tokens = r.json["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert!(cache_tokens > 100, "{r:?}");
    // A named cache is made to be reused: its prompt-cache file is written at once.
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        1.0
    );

    let listed: Value = reqwest::get(&caches).await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"][0]["cache_name"], "coder", "{listed}");

    // No system message of its own: the cache's prompt goes first and is found prefilled.
    let ask = |question: &str| {
        json!({
            "model": DEFAULT_MODEL,
            "use_cache": "coder",
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 4,
        })
    };
    let r = post_json(
        &server.url("/v1/chat/completions"),
        &ask("What is a Rust lifetime?"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let u = &r.json["usage"];
    let (prompt, cached) = common::cached_usage(u);
    assert!(
        prompt > cache_tokens - 10,
        "the cached prompt is in it: {u}"
    );
    assert!(
        prompt - cached <= 24,
        "the first request naming the cache prefilled {} of {prompt} tokens",
        prompt - cached
    );
    // The same through Ollama's API, and the plain answer without it is shorter.
    let r = post_json(
        &server.url("/api/chat"),
        &json!({
            "model": DEFAULT_MODEL, "use_cache": "coder", "stream": false,
            "messages": [{"role": "user", "content": "What is a Rust trait?"}],
            "options": {"temperature": 0, "num_predict": 4},
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.json["prompt_eval_count"].as_u64().unwrap() > cache_tokens - 10,
        "{r:?}"
    );

    // Unknown names are 404 in each API's shape; bad names 400.
    let mut unknown = ask("Hi");
    unknown["use_cache"] = json!("nope");
    let r = post_json(&server.url("/v1/chat/completions"), &unknown).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json["error"]["code"], "cache_not_found", "{r:?}");
    let r = post_json(
        &server.url("/api/generate"),
        &json!({"model": DEFAULT_MODEL, "prompt": "Hi", "use_cache": "nope", "stream": false}),
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.json["error"].as_str().unwrap().contains("nope"), "{r:?}");
    let r = post_json(&caches, &json!({"cache_name": "a b", "prompt": "x"})).await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = post_json(
        &server.url("/v1/cache/no-such-model"),
        &json!({"cache_name": "k", "prompt": "x"}),
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");

    let client = reqwest::Client::new();
    let r = client
        .delete(format!("{caches}/coder"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .delete(format!("{caches}/coder"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "deleted once");
    let r = post_json(&server.url("/v1/chat/completions"), &ask("Hi")).await;
    assert_eq!(r.status, 404, "{r:?}");
}

/// Two instances of one slot each, holding a system prompt each: a request goes to the
/// instance that holds its prompt, whichever instance looks at the queue first, so each of a
/// run of alternating requests prefills only its question. With that instance busy, the
/// other takes it rather than let it wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn across_instances_a_request_goes_where_its_prefix_is() {
    const TRAVEL: &str = "You are a travel planner for trips by train across Europe. Answer \
        with a day-by-day plan: where to sleep, which trains to take and when they leave, what \
        a ticket costs in second class, and one thing to see in each town. Prefer night trains \
        for legs over six hours, keep changes under three per day, and say when a seat must \
        be booked ahead. When the traveller gives no dates, assume the second week of May. \
        Keep each day to three lines.";
    let cfg = config(
        &[DEFAULT_MODEL],
        "[scheduler]\nn_batch = 1\ninstances = 2\n\n[prompt_cache]\nenabled = false\n",
    );
    let server = Server::start(&workspace_models(), &cfg, &[]).await;
    // Ready means one instance is: on a busy machine the other may still be loading, and
    // would then take no part in the first pair.
    let t = std::time::Instant::now();
    while !server.loaded(DEFAULT_MODEL).await["instances"]
        .as_array()
        .is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["state"] == "idle"))
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "{}",
            server.loaded(DEFAULT_MODEL).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let ask_with = |system: &'static str, question: &'static str| {
        let server = &server;
        async move {
            let mut body = body(question, false);
            body["messages"][0]["content"] = json!(system);
            let r = post_json(&server.url("/v1/chat/completions"), &body).await;
            assert_eq!(r.status, 200, "{r:?}");
            common::cached_usage(&r.json["usage"])
        }
    };
    // Together, cold: each instance takes one and holds its system prompt from then on.
    futures_util::future::join(
        ask_with(SYSTEM, "How do I reverse a list in Python?"),
        ask_with(TRAVEL, "Paris to Vienna in four days?"),
    )
    .await;
    let alternating = [
        (SYSTEM, "What is a Rust lifetime?"),
        (TRAVEL, "Rome to Munich with a stop in Verona?"),
        (SYSTEM, "How do I read a file line by line in bash?"),
        (TRAVEL, "Amsterdam to Copenhagen by night train?"),
        (SYSTEM, "What does git rebase do?"),
        (TRAVEL, "Three days around Lake Geneva?"),
    ];
    for (system, question) in alternating {
        let (prompt, cached) = ask_with(system, question).await;
        assert!(
            prompt - cached <= 24,
            "'{question}' prefilled {} of {prompt} tokens: it went to the instance that did \
             not hold its system prompt",
            prompt - cached
        );
    }
    // Two at once with one prompt: the instance holding it is busy with one, so the other
    // takes the second (cold) rather than leave it waiting; both are answered.
    let (a, b) = futures_util::future::join(
        ask_with(SYSTEM, "How do I make a Python virtualenv?"),
        ask_with(SYSTEM, "What is a C++ move constructor?"),
    )
    .await;
    let warm = [a, b]
        .iter()
        .filter(|(prompt, cached)| prompt - cached <= 24)
        .count();
    assert!(warm >= 1, "neither ran where the prompt is: {a:?} {b:?}");
}
