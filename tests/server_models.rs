//! The model lifecycle through the real server: concurrent first requests load a model once,
//! keep_alive 0 waits for the requests holding the model, keep_alive values never crash a
//! handler, blank API keys are refused at start-up, and a models directory of the user's
//! choosing is not filled with the default model.

mod common;

use common::{post_json, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn loaded_names(s: &Server) -> Vec<String> {
    let v: Value = reqwest::get(s.url("/api/ps"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

fn generate(model: &str, tokens: u32, stream: bool) -> Value {
    json!({"model": model, "prompt": "hello", "stream": stream, "options": {"num_predict": tokens}})
}

/// Reads an Ollama NDJSON stream to its end; returns its last line.
async fn last_line(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.expect("the stream reads to its end"));
    }
    let text = String::from_utf8(buf).unwrap();
    let last = text.lines().last().expect("at least one line");
    serde_json::from_str(last).unwrap()
}

/// The log without its terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn concurrent_first_requests_load_the_model_once() {
    let s = Server::start_synthetic(
        &[
            ("base", "[timing]\ndecode_step_ms = 1.0\n"),
            ("slow", "[timing]\nload_ms = 600\ndecode_step_ms = 1.0\n"),
        ],
        &common::config(&["base"], ""),
        &[],
    )
    .await;
    let url = s.url("/api/generate");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post_json(&url, &generate("slow", 2, false)).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{r:?}\n{}", s.log());
    }
    let log = strip_ansi(&s.log());
    let loads = log
        .lines()
        .filter(|l| l.contains("model=slow") && l.contains(" loaded"))
        .count();
    assert_eq!(loads, 1, "the model loaded {loads} times:\n{log}");
    assert!(!log.contains("replaced"), "{log}");
}

#[tokio::test]
async fn keep_alive_zero_unloads_only_once_every_request_is_done() {
    let s = Server::start_synthetic(
        &[("m", "[timing]\ndecode_step_ms = 15.0\n")],
        &common::config(&["m"], "[scheduler]\nn_batch = 2\n"),
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    // Two run at once, the others queue behind them.
    let streams: Vec<_> = (0..6)
        .map(|_| {
            let (client, url) = (client.clone(), s.url("/api/generate"));
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .json(&generate("m", 20, true))
                    .send()
                    .await
                    .unwrap();
                last_line(r).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut unload = generate("m", 1, false);
    unload["keep_alive"] = json!(0);
    let r = post_json(&s.url("/api/generate"), &unload).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["done_reason"], "unload", "{r:?}");
    for t in streams {
        let last = t.await.unwrap();
        assert_eq!(last["done"], true, "{last}");
        assert!(
            last.get("error").is_none(),
            "a request in flight failed: {last}"
        );
        assert_eq!(last["done_reason"], "length", "{last}");
    }
    // With the last request done, the model goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while loaded_names(&s).await.contains(&"m".to_string()) {
        assert!(
            Instant::now() < deadline,
            "keep_alive 0 never unloaded the model"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn keep_alive_values_never_crash_the_handler() {
    let s = Server::start_synthetic(
        &[("m", "[timing]\ndecode_step_ms = 1.0\n")],
        &common::config(&["m"], ""),
        &[],
    )
    .await;
    for bad in [
        json!("NaN"),
        json!("inf"),
        json!("-inf"),
        json!("5 parsecs"),
    ] {
        let mut body = generate("m", 1, false);
        body["keep_alive"] = bad.clone();
        let r = post_json(&s.url("/api/generate"), &body).await;
        assert_eq!(r.status, 400, "keep_alive {bad}: {r:?}");
        assert!(r.text.contains("keep_alive"), "keep_alive {bad}: {r:?}");
    }
    for huge in [
        json!(1.8e19),
        json!(1e300),
        json!(u64::MAX),
        json!("99999999999h"),
    ] {
        let mut body = generate("m", 1, false);
        body["keep_alive"] = huge.clone();
        let r = post_json(&s.url("/api/generate"), &body).await;
        assert_eq!(r.status, 200, "keep_alive {huge}: {r:?}");
        let ps = reqwest::get(s.url("/api/ps")).await.unwrap();
        assert_eq!(ps.status(), 200, "/api/ps after keep_alive {huge}");
    }
    assert_eq!(loaded_names(&s).await, vec!["m"]);
}

/// Runs rkserve to its exit (it must not start serving); returns its status and log.
fn run_to_exit(config: &str, models_dir: &Path) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rkserve.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rkserve"))
        .arg("--config")
        .arg(&cfg)
        .arg("--models-dir")
        .arg(models_dir)
        .args(["--port", "0"])
        .env_remove("RKSERVE_API_KEYS")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_blank_api_key_is_refused_at_start_up() {
    let models = common::synthetic_models(&[("m", "[timing]\ndecode_step_ms = 1.0\n")]);
    for keys in [r#"["k1", ""]"#, r#"["  "]"#] {
        let (status, log) = run_to_exit(
            &common::config(&["m"], &format!("[server]\napi_keys = {keys}\n")),
            models.path(),
        );
        assert!(!status.success(), "started with api_keys = {keys}:\n{log}");
        assert!(log.contains("api_keys"), "{log}");
    }
}

#[tokio::test]
async fn a_chosen_models_directory_gets_no_default_model_and_profiles_keep_their_names() {
    let models = common::synthetic_models(&[(
        "stem",
        "[model]\nname = \"profile-name\"\n[timing]\ndecode_step_ms = 1.0\n",
    )]);
    let dir = tempfile::tempdir().unwrap();
    // No configuration file: every default, the default model's fetch included.
    let mut child = Command::new(env!("CARGO_BIN_EXE_rkserve"))
        .arg("--models-dir")
        .arg(models.path())
        .args(["--port", "0"])
        .env("RKSERVE_LOG", "info")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("listening on") {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("rkserve exited ({status}):\n{}", log());
        }
        assert!(Instant::now() < deadline, "not listening:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let files: Vec<String> = std::fs::read_dir(models.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec!["stem.toml"], "{}", log());
    assert!(
        log().contains("not preloading the default model"),
        "{}",
        log()
    );

    let s = Server::start(models.path(), &common::config(&["stem"], ""), &[]).await;
    let tags: Value = reqwest::get(s.url("/api/tags"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["models"][0]["name"], "profile-name", "{tags}");
    assert_eq!(loaded_names(&s).await, vec!["profile-name"]);
}
