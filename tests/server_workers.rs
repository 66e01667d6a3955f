//! Runtime crashes are per-instance events: each instance's runtime runs in a worker process
//! (the default isolation), so a synthetic runtime that aborts, segfaults, hangs or stalls
//! fails its own run's requests (a 5xx in each API's shape, or an error event once streaming
//! began, naming the signal), restarts, and serves again, while the server and its other
//! models go on. Also: the n_batch fallback when init keeps crashing above some n_batch, and
//! a soak that checks the server leaks no processes, descriptors or threads across restarts.

mod common;

use common::{post_json, Reply, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A model that always serves, beside the faulty ones.
const STEADY: (&str, &str) = ("steady", "[timing]\ndecode_step_ms = 1.0\n");

fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}],
           "max_tokens": max_tokens})
}

fn ollama_chat(model: &str, max_tokens: u32, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}],
           "stream": stream, "options": {"num_predict": max_tokens}})
}

async fn start(profiles: &[(&str, &str)], preload: &[&str], extra: &str) -> Server {
    Server::start_synthetic(profiles, &common::config(preload, extra), &[]).await
}

#[track_caller]
fn assert_serves(r: &Reply) {
    assert_eq!(r.status, 200, "{r:?}");
}

async fn openai(s: &Server, model: &str, max_tokens: u32) -> Reply {
    post_json(&s.url("/v1/chat/completions"), &chat(model, max_tokens)).await
}

async fn steady_serves(s: &Server) {
    let r = openai(s, "steady", 3).await;
    assert_serves(&r);
}

/// Waits until `model`'s instance is idle again after `restarts` restarts at least.
async fn wait_restarted(s: &Server, model: &str, restarts: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = s.loaded(model).await;
        let i = &m["instances"][0];
        if i["state"] == "idle" && i["restarts"].as_u64().unwrap_or(0) >= restarts {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{model} did not restart: {m}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The OpenAI error of a failed run: a 500 whose message names how the worker ended.
#[track_caller]
fn openai_runtime_error(r: &Reply, how: &str) {
    assert_eq!(r.status, 500, "{r:?}");
    let m = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains(how), "{how:?} not in {r:?}");
    assert!(r.json["error"]["type"].is_string(), "{r:?}");
}

#[track_caller]
fn ollama_runtime_error(r: &Reply, how: &str) {
    assert_eq!(r.status, 500, "{r:?}");
    let m = r.json["error"].as_str().unwrap_or_default();
    assert!(m.contains(how), "{how:?} not in {r:?}");
}

/// Every way a mid-run crash shows: both APIs, streaming and not.
async fn crash_mid_run(profile: &str, how: &str) {
    let crashy = ("crashy", profile);
    let s = start(&[crashy, STEADY], &["crashy", "steady"], "").await;
    let mut restarts = 0;

    // Another model, and the server's metrics, are untouched while one crashes.
    let (r, _) = tokio::join!(openai(&s, "crashy", 12), steady_serves(&s));
    openai_runtime_error(&r, how);
    restarts += 1;
    wait_restarted(&s, "crashy", restarts).await;
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("rkserve_worker_restarts_total"),
        "restarts are counted"
    );

    let r = post_json(&s.url("/api/chat"), &ollama_chat("crashy", 12, false)).await;
    ollama_runtime_error(&r, how);
    restarts += 1;
    wait_restarted(&s, "crashy", restarts).await;

    // Streaming: the error comes as an event after what was already sent.
    let mut body = chat("crashy", 12);
    body["stream"] = json!(true);
    let r = reqwest::Client::new()
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let errors: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v.get("error").is_some())
        .collect();
    assert_eq!(errors.len(), 1, "one error event: {text}");
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains(how),
        "{text}"
    );
    restarts += 1;
    wait_restarted(&s, "crashy", restarts).await;

    let r = reqwest::Client::new()
        .post(s.url("/api/chat"))
        .json(&ollama_chat("crashy", 12, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        last["error"].as_str().is_some_and(|e| e.contains(how)),
        "{text}"
    );
    restarts += 1;
    let m = wait_restarted(&s, "crashy", restarts).await;
    assert_eq!(m["status"], "ready", "{m}");

    // The recovered instance serves a request that stays below the fault.
    let r = openai(&s, "crashy", 2).await;
    assert_serves(&r);
    steady_serves(&s).await;
    assert!(
        s.log().contains(how),
        "the worker's death is logged:\n{}",
        s.log()
    );
}

#[tokio::test]
async fn an_abort_mid_run_fails_that_run_only_and_the_instance_serves_again() {
    crash_mid_run(
        "[faults]\nabort_after_tokens = 3\n[timing]\ndecode_step_ms = 2.0\n",
        "SIGABRT",
    )
    .await;
}

#[tokio::test]
async fn a_segfault_mid_run_fails_that_run_only_and_the_instance_serves_again() {
    crash_mid_run(
        "[faults]\nsegfault_after_tokens = 3\n[timing]\ndecode_step_ms = 2.0\n",
        "SIGSEGV",
    )
    .await;
}

/// A model that cannot load: 503 with a Retry-After of at least a second.
fn assert_unavailable(r: &Reply) {
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.retry_after() >= 1, "{r:?}");
}

#[tokio::test]
async fn an_abort_at_init_makes_that_model_unavailable_and_nothing_else() {
    let broken = ("broken", "[faults]\nabort_at_init = true\n");
    let s = start(&[broken, STEADY], &["steady"], "").await;
    // Unavailable, not a server bug: 503 with Retry-After, which routers retry elsewhere.
    let r = openai(&s, "broken", 3).await;
    assert_unavailable(&r);
    assert!(r.text.contains("SIGABRT"), "{r:?}");
    let r = post_json(&s.url("/api/chat"), &ollama_chat("broken", 3, false)).await;
    assert_unavailable(&r);
    assert!(r.json["error"].is_string(), "{r:?}");
    steady_serves(&s).await;
}

#[tokio::test]
async fn an_init_failure_says_what_the_runtime_printed() {
    // rkllm_init returns an error; its reason is only in what the runtime printed.
    let broken = ("broken", "[faults]\ninit_fails = true\n");
    let s = start(&[broken, STEADY], &["steady"], "").await;
    let r = openai(&s, "broken", 3).await;
    assert_unavailable(&r);
    assert!(
        r.text.contains("the profile sets faults.init_fails"),
        "the runtime's own words reach the client: {r:?}"
    );
    let m = s.loaded("broken").await;
    assert!(
        m.to_string().contains("faults.init_fails"),
        "and /v1/models/loaded: {m}"
    );
    steady_serves(&s).await;
}

#[tokio::test]
async fn init_crashes_above_an_n_batch_fall_back_to_one_that_works() {
    let picky = (
        "picky",
        "[faults]\nabort_at_init = true\nabort_at_init_above_n_batch = 2\n",
    );
    let s = start(&[picky], &["picky"], "[scheduler]\nn_batch = 8\n").await;
    let m = s.loaded("picky").await;
    let i = &m["instances"][0];
    assert_eq!(m["status"], "ready", "{m}");
    assert_eq!(i["n_batch"], 2, "8 -> 4 -> 2: {m}");
    let why = i["n_batch_fallback"].as_str().unwrap_or_default();
    assert!(why.contains("n_batch 4") && why.contains("SIGABRT"), "{m}");
    // Batches of up to two serve.
    let (a, b, c) = tokio::join!(
        openai(&s, "picky", 3),
        openai(&s, "picky", 3),
        openai(&s, "picky", 3),
    );
    for r in [a, b, c] {
        assert_serves(&r);
    }
    let text = s.metrics().await;
    let fallbacks = text
        .lines()
        .find(|l| l.starts_with("rkserve_n_batch_fallbacks_total{"))
        .unwrap_or_else(|| panic!("no fallback metric:\n{text}"));
    assert!(fallbacks.ends_with(" 2"), "two fallbacks: {fallbacks}");
    assert!(s.log().contains("falling back to n_batch 4"), "{}", s.log());
}

/// The worker processes the server has now.
fn workers_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised name.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ppid: u32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == pid {
            out.push(child);
        }
    }
    out
}

/// Waits (a killed worker is reaped within moments) until the server has `n` workers.
async fn expect_workers(s: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while workers_of(s.pid()).len() != n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(workers_of(s.pid()).len(), n, "{}", s.log());
}

fn count(dir: String) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

async fn unload_and_reload(s: &Server, model: &str) {
    let r = post_json(&s.url(&format!("/v1/models/{model}/unload")), &json!({})).await;
    assert_serves(&r);
    let r = post_json(&s.url(&format!("/v1/models/{model}/load")), &json!({})).await;
    assert_serves(&r);
    let r = openai(s, model, 2).await;
    assert_serves(&r);
}

#[tokio::test]
async fn an_abort_at_destroy_is_survived() {
    let bad = ("bad-destroy", "[faults]\nabort_at_destroy = true\n");
    let s = start(&[bad, STEADY], &["bad-destroy", "steady"], "").await;
    unload_and_reload(&s, "bad-destroy").await;
    steady_serves(&s).await;
    assert_eq!(workers_of(s.pid()).len(), 2, "one worker per loaded model");
}

#[tokio::test]
async fn a_hang_at_destroy_is_killed_after_the_deadline() {
    let hang = ("hang-destroy", "[faults]\nhang_at_destroy = true\n");
    let s = start(
        &[hang, STEADY],
        &["hang-destroy", "steady"],
        "[scheduler]\ndestroy_timeout = \"300ms\"\n",
    )
    .await;
    let before = workers_of(s.pid());
    assert_eq!(before.len(), 2);
    let started = Instant::now();
    unload_and_reload(&s, "hang-destroy").await;
    assert!(started.elapsed() < Duration::from_secs(20));
    steady_serves(&s).await;
    // The hung worker was killed and reaped: no third process.
    expect_workers(&s, 2).await;
    assert!(s.log().contains("the worker was killed"), "{}", s.log());
}

#[tokio::test]
async fn a_stalled_run_is_killed_and_the_instance_serves_again() {
    let stall = (
        "stall",
        "[faults]\nstall_after_tokens = 3\nstall_ms = 0\n[timing]\ndecode_step_ms = 1.0\n",
    );
    let s = start(
        &[stall, STEADY],
        &["stall", "steady"],
        "[scheduler]\nstall_timeout = \"1s\"\n",
    )
    .await;
    let (r, _) = tokio::join!(openai(&s, "stall", 12), steady_serves(&s));
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.text.contains("no progress"), "{r:?}");
    wait_restarted(&s, "stall", 1).await;
    let r = openai(&s, "stall", 2).await;
    assert_serves(&r);
    // The stuck worker was killed, not left behind.
    expect_workers(&s, 2).await;
    assert!(s.log().contains("SIGKILL"), "{}", s.log());
}

#[tokio::test]
async fn many_restarts_leak_no_processes_descriptors_or_threads() {
    let crashy = (
        "crashy",
        "[faults]\nabort_after_tokens = 3\n[timing]\ndecode_step_ms = 1.0\n",
    );
    let s = start(
        &[crashy],
        &["crashy"],
        "[scheduler]\nrestart_backoff = \"10ms\"\n",
    )
    .await;
    let pid = s.pid();
    let cycle = |n: u64| {
        let s = &s;
        async move {
            let r = openai(s, "crashy", 12).await;
            openai_runtime_error(&r, "SIGABRT");
            wait_restarted(s, "crashy", n).await;
            let r = openai(s, "crashy", 2).await;
            assert_serves(&r);
        }
    };
    // Warm up: the first cycle starts the threads and connections that stay.
    cycle(1).await;
    let fds = count(format!("/proc/{pid}/fd"));
    let threads = count(format!("/proc/{pid}/task"));
    for n in 2..=25 {
        cycle(n).await;
    }
    assert_eq!(workers_of(pid).len(), 1, "one worker, the others reaped");
    let fds_after = count(format!("/proc/{pid}/fd"));
    let threads_after = count(format!("/proc/{pid}/task"));
    // A few may come and go with HTTP connections; 24 restarts leaking would add 24 or more.
    assert!(fds_after <= fds + 4, "fds {fds} -> {fds_after}");
    assert!(
        threads_after <= threads + 4,
        "threads {threads} -> {threads_after}"
    );
}
