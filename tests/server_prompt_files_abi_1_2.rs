//! Prompt-cache files on the 1.2 ABI, where a save run is ended the way runs are cut there
//! (`rkllm_abort` from its own thread with `reform_via = "abort"`, since a callback's pause
//! was seen to crash a board): the hot system prompt is saved, survives a restart, is loaded
//! into the handle, and a greedy reply started from it reads as one prefilled from scratch.
//! Its own test binary: the CPU runtime reads RKLLM_CPU_ABI once per process, and the server
//! inherits it from this one.

mod common;
use common::{config, post_json, workspace_models, Server, DEFAULT_MODEL};
use serde_json::json;

const SYSTEM: &str = include_str!("data/coding-system-prompt.txt");

/// (reply, prompt tokens, cached tokens) of a greedy chat with the shared system prompt.
async fn ask(server: &Server, question: &str) -> (String, u64, u64) {
    let mut body = common::system_chat(DEFAULT_MODEL, SYSTEM, question);
    body["temperature"] = json!(0);
    body["max_tokens"] = json!(8);
    let r = post_json(&server.url("/v1/chat/completions"), &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    let (prompt, cached) = common::cached_usage(&r.json["usage"]);
    let reply = r.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    (reply, prompt, cached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prompt_cache_file_is_saved_by_abort_and_loaded_on_abi_1_2() {
    std::env::set_var("RKLLM_CPU_ABI", "1.2");
    let cfg = config(
        &[DEFAULT_MODEL],
        "[scheduler]\nn_batch = 4\nreform_via = \"abort\"\n\n[runtime]\nabi = \"1.2\"\n",
    );
    let mut server = Server::start(&workspace_models(), &cfg, &[]).await;
    let question = "How do I sort a map by value in Go?";
    ask(&server, "How do I reverse a list in Python?").await;
    // Seen twice: hot, so its save run goes before this request's own run.
    ask(&server, "What is a Rust lifetime?").await;
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        1.0,
        "{}",
        server.log()
    );
    assert_eq!(
        server.counter("rkserve_prompt_cache_errors_total").await,
        0.0
    );
    let (fresh, prompt, _) = ask(&server, question).await;

    // A new process: nothing is held, only the file is left.
    server.restart().await;
    let (reply, after_prompt, cached) = ask(&server, question).await;
    assert_eq!(after_prompt, prompt);
    assert!(
        prompt - cached <= 24,
        "after the restart the request prefilled {} of {prompt} tokens",
        prompt - cached
    );
    assert_eq!(
        server.counter("rkserve_prompt_cache_loads_total").await,
        1.0
    );
    assert_eq!(
        reply, fresh,
        "a reply started from the loaded file differs from one before it"
    );
}
