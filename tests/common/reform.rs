//! The exact-continuation check shared by the ABI 1.3 and 1.2 test binaries.

use crate::common::{post_json, Server, DEFAULT_MODEL};
use serde_json::{json, Value};
use std::time::Duration;

const PROMPTS: [&str; 2] = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain, step by step and in detail, how a bicycle works.",
];

async fn complete(server: &Server, prompt: &str, max_tokens: u32) -> Value {
    let body = json!({
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    });
    let r = post_json(&server.url("/v1/chat/completions"), &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json
}

fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `runtime`: extra TOML for the server's `[runtime]` section; `via`: how runs are cut.
pub async fn cut_replies_equal_uninterrupted_ones(runtime: &str, via: &str) {
    let config = crate::common::config(
        &[DEFAULT_MODEL],
        &format!(
            "[scheduler]\nn_batch = 4\nreform = \"auto\"\nreform_via = \"{via}\"\n\n[runtime]\n{runtime}\n"
        ),
    );
    let server = Server::start(&crate::common::workspace_models(), &config, &[]).await;
    let mut alone = Vec::new();
    for p in PROMPTS {
        alone.push(complete(&server, p, 160).await);
    }
    let reforms_before = server.counter("rkserve_batch_reforms_total").await;
    let resumed_before = server.counter("rkserve_resumed_prefill_tokens_total").await;

    // The two long replies again, with short requests arriving one after another beside
    // them: each arrival finds a free slot and the run is cut to take it in.
    let long: Vec<_> = PROMPTS
        .iter()
        .map(|p| {
            let s = &server;
            async move { complete(s, p, 160).await }
        })
        .collect();
    let shorts = async {
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = complete(&server, &format!("Say the number {i}."), 3).await;
            assert_eq!(r["usage"]["completion_tokens"], 3, "{r}");
        }
    };
    let (replies, ()) = tokio::join!(futures_util::future::join_all(long), shorts);
    // A run's figures are recorded as it ends, a moment after its last reply went out.
    let started = std::time::Instant::now();
    let mut reforms = 0.0;
    while started.elapsed() < Duration::from_secs(5) {
        reforms = server.counter("rkserve_batch_reforms_total").await - reforms_before;
        if reforms >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = server.counter("rkserve_resumed_prefill_tokens_total").await - resumed_before;
    assert!(
        reforms >= 3.0,
        "the runs were re-formed {reforms} times; log:\n{}",
        server.log()
    );
    for (i, r) in replies.iter().enumerate() {
        assert!(!content(r).is_empty());
        assert_eq!(
            content(r),
            content(&alone[i]),
            "prompt {i} after {reforms} re-forms"
        );
        // Token counts equal; how many prompt tokens the runtime found cached need not.
        for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(
                r["usage"][count], alone[i]["usage"][count],
                "prompt {i}: {count}"
            );
        }
    }
    // Each resumed request lands in its own slot, whose KV cache holds its context: the
    // runtime prefills only the token it sampled last (a few at most), never the context.
    let per_resume = resumed / (reforms * PROMPTS.len() as f64);
    assert!(
        per_resume <= 4.0,
        "{resumed} tokens prefilled again over {reforms} re-forms"
    );
}
