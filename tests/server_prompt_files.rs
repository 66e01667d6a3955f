//! Prompt-cache files on a runtime that reuses nothing between runs (the synthetic engine
//! with `prefix_reuse = false`, what Rockchip's runtime is assumed to do with
//! `keep_history = 0`): a system prompt seen twice is saved with `save_prompt_cache`, loaded
//! into the handle, and from then on requests with it prefill only what follows it; the file
//! outlives a restart, and a file the runtime cannot load is removed and saved again.

mod common;
use common::{config, post_json, Server};
use serde_json::json;
use std::path::Path;

const SYSTEM: &str = include_str!("data/coding-system-prompt.txt");
const MODEL: &str = "board";

/// Slow enough that a cold prefill is plain, and reusing nothing of its own.
const PROFILE: &str = r#"
[model]
name = "board"
[timing]
prefill_tokens_per_second = 2000.0
decode_step_ms = 1.0
prefix_reuse = false
"#;

/// (prompt tokens, cached tokens) of a chat with the shared system prompt.
async fn ask(server: &Server, question: &str) -> (u64, u64) {
    let mut body = common::system_chat(MODEL, SYSTEM, question);
    body["max_tokens"] = json!(3);
    let r = post_json(&server.url("/v1/chat/completions"), &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    common::cached_usage(&r.json["usage"])
}

fn cache_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "rkcache"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_system_prompt_is_saved_loaded_and_outlives_a_restart() {
    let cfg = config(&[MODEL], "[scheduler]\nn_batch = 4\n");
    let mut server = Server::start_synthetic(&[(MODEL, PROFILE)], &cfg, &[]).await;
    let dir = server.prompt_cache_dir();

    // Seen once: not worth a file yet, and nothing is reused.
    let (prompt, cached) = ask(&server, "How do I reverse a list in Python?").await;
    assert_eq!(cached, 0);
    assert!(prompt > 100, "{prompt} prompt tokens");
    assert!(cache_files(&dir).is_empty());

    // Seen twice: saved, loaded, and this very request already starts from it.
    let (prompt, cached) = ask(&server, "What is a closure?").await;
    assert_eq!(cache_files(&dir).len(), 1, "one file for the prefix");
    assert!(
        prompt - cached <= 24 && cached > 0,
        "with the file loaded, a request prefilled {} of its {prompt} tokens",
        prompt - cached
    );
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        1.0
    );
    assert!(server.counter("rkserve_prompt_cache_bytes").await > 0.0);

    // Later requests reuse the loaded file without loading it again.
    for q in ["Explain Rust lifetimes.", "What is a mutex?"] {
        let (prompt, cached) = ask(&server, q).await;
        assert!(prompt - cached <= 24, "{cached} of {prompt} cached");
    }
    assert_eq!(
        server.counter("rkserve_prompt_cache_loads_total").await,
        1.0
    );
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        1.0
    );

    // Another system prompt, used once, gets no file and leaves the first one's alone.
    let other = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": format!("{SYSTEM} Answer in French.")},
            {"role": "user", "content": "Bonjour?"},
        ],
        "max_tokens": 3,
    });
    let r = post_json(&server.url("/v1/chat/completions"), &other).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(cache_files(&dir).len(), 1);

    // After a restart the file is there for the first request.
    server.restart().await;
    let (prompt, cached) = ask(&server, "How do I read a file in Go?").await;
    assert!(
        prompt - cached <= 24,
        "after a restart the first request prefilled {} of {prompt}",
        prompt - cached
    );
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        0.0
    );
    assert_eq!(
        server.counter("rkserve_prompt_cache_loads_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_the_runtime_cannot_load_is_removed_and_saved_again() {
    let cfg = config(&[MODEL], "[scheduler]\nn_batch = 4\n");
    let mut server = Server::start_synthetic(&[(MODEL, PROFILE)], &cfg, &[]).await;
    let dir = server.prompt_cache_dir();
    ask(&server, "one").await;
    ask(&server, "two").await;
    let files = cache_files(&dir);
    assert_eq!(files.len(), 1);
    server.stop();
    std::fs::write(&files[0], b"not a prompt cache").unwrap();
    server.restart().await;

    // The broken file costs the request nothing but its reuse.
    let (_, cached) = ask(&server, "three").await;
    assert_eq!(cached, 0, "nothing can be reused from a broken file");
    assert_eq!(
        server.counter("rkserve_prompt_cache_errors_total").await,
        1.0
    );
    assert!(cache_files(&dir).is_empty(), "the broken file was removed");
    assert!(server.log().contains("could not load"), "{}", server.log());

    // Its prefix is hot again at its next request: saved afresh, and reused.
    let (prompt, cached) = ask(&server, "four").await;
    assert!(prompt - cached <= 24, "{cached} of {prompt} cached");
    assert_eq!(cache_files(&dir).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prompt_cache_files_can_be_turned_off() {
    let cfg = config(
        &[MODEL],
        "[scheduler]\nn_batch = 4\n\n[prompt_cache]\nenabled = false\n",
    );
    let server = Server::start_synthetic(&[(MODEL, PROFILE)], &cfg, &[]).await;
    for q in ["one", "two", "three"] {
        let (_, cached) = ask(&server, q).await;
        assert_eq!(cached, 0);
    }
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        0.0
    );
}

/// The seed project's caches were files that outlived the server; so do named caches here:
/// the name (kept beside the prompt-cache files) and the prefix's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_named_cache_outlives_a_restart() {
    let cfg = config(&[MODEL], "[scheduler]\nn_batch = 4\n");
    let mut server = Server::start_synthetic(&[(MODEL, PROFILE)], &cfg, &[]).await;
    let caches = server.url(&format!("/v1/cache/{MODEL}"));
    let r = post_json(&caches, &json!({"cache_name": "coder", "prompt": SYSTEM})).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(cache_files(&server.prompt_cache_dir()).len(), 1);

    server.restart().await;
    let listed: serde_json::Value = reqwest::get(&caches).await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"][0]["cache_name"], "coder", "{listed}");
    let body = json!({
        "model": MODEL,
        "use_cache": "coder",
        "messages": [{"role": "user", "content": "What is a closure?"}],
        "max_tokens": 3,
    });
    let r = post_json(&server.url("/v1/chat/completions"), &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    let u = &r.json["usage"];
    let (prompt, cached) = common::cached_usage(u);
    assert!(
        prompt - cached <= 24,
        "the first request after a restart naming the cache prefilled {} of {prompt}",
        prompt - cached
    );
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        0.0
    );
}

/// The named caches of the model, once `name` is among them (made at start-up, unasked).
async fn listed_with(server: &Server, name: &str) -> serde_json::Value {
    let url = server.url(&format!("/v1/cache/{MODEL}"));
    for _ in 0..200 {
        let listed: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if listed["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c["cache_name"] == name))
        {
            return listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("cache {name} never made\n{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configured_cache_is_hot_from_the_first_request_and_loaded_after_a_restart() {
    let named = format!(
        "[prompt_cache.named.{MODEL}]\ncoder = {}\n",
        toml::Value::String(SYSTEM.into())
    );
    let cfg = config(&[MODEL], &format!("[scheduler]\nn_batch = 4\n\n{named}"));
    let mut server = Server::start_synthetic(&[(MODEL, PROFILE)], &cfg, &[]).await;
    let dir = server.prompt_cache_dir();
    // Made at start-up: its file saved before any request.
    let listed = listed_with(&server, "coder").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        1.0
    );
    assert_eq!(cache_files(&dir).len(), 1);

    // The first request with that system prompt, naming no cache, starts from it.
    let (prompt, cached) = ask(&server, "How do I reverse a list in Python?").await;
    assert!(
        prompt - cached <= 24,
        "the first request prefilled {} of {prompt} tokens",
        prompt - cached
    );

    // A restart makes it again from the file: loaded, not saved.
    server.restart().await;
    listed_with(&server, "coder").await;
    assert_eq!(
        server.counter("rkserve_prompt_cache_loads_total").await,
        1.0
    );
    assert_eq!(
        server.counter("rkserve_prompt_cache_saves_total").await,
        0.0
    );
    let (prompt, cached) = ask(&server, "What is a closure?").await;
    assert!(prompt - cached <= 24, "{cached} of {prompt} cached");
}
