//! Models loaded and unloaded while the server runs: the management endpoints, Ollama's
//! keep_alive (0 unloads at once, a duration unloads once idle that long), and loading on
//! first request.

mod common;

use common::{post_json, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const FAST: (&str, &str) = ("fast", "[timing]\ndecode_step_ms = 1.0\n");
const OTHER: (&str, &str) = ("other", "[timing]\ndecode_step_ms = 1.0\n");

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

#[tokio::test]
async fn models_load_on_demand_and_unload_by_endpoint_and_keep_alive() {
    let s = Server::start_synthetic(&[FAST, OTHER], &common::config(&["fast"], ""), &[]).await;
    assert_eq!(loaded_names(&s).await, vec!["fast"]);

    // A request for a model that is not loaded loads it.
    let r = post_json(
        &s.url("/api/generate"),
        &json!({"model": "other", "prompt": "hi", "stream": false, "options": {"num_predict": 2}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(loaded_names(&s).await.contains(&"other".to_string()));

    // keep_alive 0 unloads once the request is done, and says so.
    let r = post_json(&s.url("/api/generate"), &json!({"model": "other", "prompt": "hi", "stream": false, "keep_alive": 0, "options": {"num_predict": 2}})).await;
    assert_eq!(r.json["done_reason"], "unload", "{r:?}");
    assert!(!loaded_names(&s).await.contains(&"other".to_string()));

    // A keep_alive duration unloads the model once it has been idle that long.
    let r = post_json(&s.url("/api/chat"), &json!({"model": "other", "messages": [{"role": "user", "content": "hi"}], "stream": false, "keep_alive": "1s", "options": {"num_predict": 2}})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let ps: Value = reqwest::get(s.url("/api/ps"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expires = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "other")
        .unwrap()["expires_at"]
        .as_str()
        .unwrap()
        .to_string();
    // Ollama's clients show when the model goes: within seconds here, not the far future
    // reported for models without a keep_alive.
    let at = humantime::parse_rfc3339(&expires).unwrap();
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left <= Duration::from_secs(2),
        "expires_at {expires} is {left:?} away"
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    while loaded_names(&s).await.contains(&"other".to_string()) {
        assert!(
            Instant::now() < deadline,
            "keep_alive 1s did not unload the model"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The model without keep_alive stays.
    assert_eq!(loaded_names(&s).await, vec!["fast"]);

    // The management endpoints.
    let r = post_json(&s.url("/v1/models/other/load"), &json!({})).await;
    assert_eq!(
        (r.status, r.json["status"].clone()),
        (200, json!("loaded")),
        "{r:?}"
    );
    let r = post_json(&s.url("/v1/models/other/unload"), &json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = post_json(&s.url("/v1/models/other/unload"), &json!({})).await;
    assert_eq!(r.status, 404, "unloading twice: {r:?}");
    let r = post_json(&s.url("/v1/models/nope/load"), &json!({})).await;
    assert_eq!(r.status, 404, "{r:?}");
}
