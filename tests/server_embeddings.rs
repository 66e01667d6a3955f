//! Embeddings over HTTP on the default model: OpenAI `/v1/embeddings`, Ollama `/api/embed`
//! and the legacy `/api/embeddings`. Shapes, determinism, unit length, meaning (close
//! sentences are closer than unrelated ones), a list sharing one run, and the refusals.

mod common;

use base64::Engine as _;
use common::{post_json, Reply, Server, DEFAULT_MODEL};
use serde_json::{json, Value};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

async fn openai(server: &Server, body: Value) -> Reply {
    post_json(&server.url("/v1/embeddings"), &body).await
}

async fn openai_vectors(server: &Server, input: Value) -> Vec<Vec<f32>> {
    let r = openai(server, json!({"model": DEFAULT_MODEL, "input": input})).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect()
}

/// Runs of the default model that filled `slots` slots, from `/metrics`.
async fn runs(server: &Server, slots: usize) -> u64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with("rkserve_batch_runs_total{") && l.contains(DEFAULT_MODEL))
        .filter(|l| l.contains(&format!("slots=\"{slots}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[track_caller]
fn openai_error(r: &Reply, status: u16, param: &str) -> String {
    assert_eq!(r.status, status, "{r:?}");
    let e = &r.json["error"];
    assert!(e["type"].is_string() && e["message"].is_string(), "{r:?}");
    assert_eq!(e["param"], param, "{r:?}");
    e["message"].as_str().unwrap().to_string()
}

#[track_caller]
fn ollama_error(r: &Reply, status: u16) -> String {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.json.as_object().map(|o| o.len()), Some(1), "{r:?}");
    r.json["error"]
        .as_str()
        .expect("error is a string")
        .to_string()
}

/// The context the tests give the default model (a sidecar next to a link to it): small, so
/// that inputs longer than it are quick to embed truncated.
const CONTEXT: u64 = 512;

/// One server for every check: loading the model is the slow part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_in_both_apis() {
    let models = tempfile::tempdir().expect("temp dir");
    let file = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let target = common::workspace_models().join(file);
    let target = target.canonicalize().unwrap_or(target);
    std::os::unix::fs::symlink(&target, models.path().join(file)).expect("link the model");
    std::fs::write(
        models.path().join("SmolLM2-135M-Instruct.Q4_1.toml"),
        format!("context_len = {CONTEXT}\n"),
    )
    .expect("sidecar");
    let server = Server::start(models.path(), &common::config(&[DEFAULT_MODEL], ""), &[]).await;

    // OpenAI: shape, usage, unit length.
    let r = openai(
        &server,
        json!({"model": DEFAULT_MODEL, "input": "The cat sat on the mat."}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["object"], "list");
    assert_eq!(r.json["model"], DEFAULT_MODEL);
    let data = r.json["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["object"], "embedding");
    assert_eq!(data[0]["index"], 0);
    let cat = floats(&data[0]["embedding"]);
    let dims = cat.len();
    assert_eq!(dims, 576, "SmolLM2-135M's hidden size");
    assert!((norm(&cat) - 1.0).abs() < 1e-4, "norm {}", norm(&cat));
    let usage = &r.json["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() >= 7, "{usage}");
    assert_eq!(usage["prompt_tokens"], usage["total_tokens"]);

    // Deterministic.
    let again = openai_vectors(&server, json!("The cat sat on the mat.")).await;
    assert!(max_diff(&cat, &again[0]) < 1e-5);

    // Meaning: a paraphrase is closer than an unrelated sentence.
    let v = openai_vectors(
        &server,
        json!([
            "The cat sat on the mat.",
            "A kitten was sitting on the rug.",
            "Quarterly revenue grew by twelve percent in Europe."
        ]),
    )
    .await;
    let (close, far) = (dot(&v[0], &v[1]), dot(&v[0], &v[2]));
    assert!(close > far, "paraphrase {close} vs unrelated {far}");

    // A list of n_batch inputs shares one run, in order, each equal to its embedding alone.
    let n_batch = server.loaded(DEFAULT_MODEL).await["n_batch"]
        .as_u64()
        .unwrap_or(8) as usize;
    let texts: Vec<String> = (0..n_batch)
        .map(|i| format!("Sentence number {i} is about the number {}.", i * 7))
        .collect();
    let before = runs(&server, n_batch).await;
    let batch = openai_vectors(&server, json!(texts)).await;
    // Runs are recorded by the telemetry thread, a moment after the reply.
    let mut after = runs(&server, n_batch).await;
    for _ in 0..40 {
        if after > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after = runs(&server, n_batch).await;
    }
    assert_eq!(
        after - before,
        1,
        "{n_batch} inputs in one run of {n_batch} slots"
    );
    assert_eq!(batch.len(), n_batch);
    for i in [0, n_batch - 1] {
        let alone = openai_vectors(&server, json!(texts[i])).await;
        // Batch shapes change the order of float sums in llama.cpp's kernels, not meaning.
        let cos = dot(&alone[0], &batch[i]);
        assert!(
            cos > 0.9999,
            "input {i}: cosine {cos} with its batched embedding"
        );
    }

    // base64: little-endian f32, the same vector.
    let r = openai(
        &server,
        json!({"model": DEFAULT_MODEL, "input": "The cat sat on the mat.", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(
            r.json["data"][0]["embedding"]
                .as_str()
                .expect("a base64 string"),
        )
        .expect("base64");
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(max_diff(&cat, &decoded) < 1e-6);

    // dimensions: the model's own size is honoured, any other refused.
    let r = openai(
        &server,
        json!({"model": DEFAULT_MODEL, "input": "x", "dimensions": dims}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = openai(
        &server,
        json!({"model": DEFAULT_MODEL, "input": "x", "dimensions": 256}),
    )
    .await;
    assert!(openai_error(&r, 400, "dimensions").contains("576"));

    // OpenAI refusals.
    let r = openai(&server, json!({"model": "no-such-model", "input": "x"})).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json["error"]["code"], "model_not_found");
    for input in [json!(""), json!([]), json!(["a", ""])] {
        let r = openai(&server, json!({"model": DEFAULT_MODEL, "input": input})).await;
        openai_error(&r, 400, "input");
    }
    for tokens in [json!([1, 2, 3]), json!([[1, 2], [3]])] {
        let r = openai(&server, json!({"model": DEFAULT_MODEL, "input": tokens})).await;
        assert!(openai_error(&r, 400, "input").contains("token arrays"));
    }
    let r = openai(
        &server,
        json!({"model": DEFAULT_MODEL, "input": "x", "encoding_format": "int8"}),
    )
    .await;
    openai_error(&r, 400, "encoding_format");
    let long = "word ".repeat(2_000);
    let r = openai(&server, json!({"model": DEFAULT_MODEL, "input": long})).await;
    assert!(openai_error(&r, 400, "input").contains("tokens"));

    // Ollama /api/embed: the same vectors, Ollama's shape.
    let url = server.url("/api/embed");
    let r = post_json(
        &url,
        &json!({"model": DEFAULT_MODEL, "input": ["The cat sat on the mat.", "A kitten was sitting on the rug."]}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["model"], DEFAULT_MODEL);
    let e = r.json["embeddings"].as_array().expect("embeddings");
    assert_eq!(e.len(), 2);
    assert!(max_diff(&cat, &floats(&e[0])) < 1e-5);
    assert!(r.json["prompt_eval_count"].as_u64().unwrap() > 10);
    assert!(r.json["total_duration"].as_u64().unwrap() > 0);
    assert!(r.json["load_duration"].is_u64());
    let r = post_json(
        &url,
        &json!({"model": DEFAULT_MODEL, "input": "The cat sat on the mat."}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(max_diff(&cat, &floats(&r.json["embeddings"][0])) < 1e-5);
    // Too long: truncated by default (so it equals its first context's worth), refused with
    // truncate false.
    let r = post_json(&url, &json!({"model": DEFAULT_MODEL, "input": long})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(server.loaded(DEFAULT_MODEL).await["context_len"], CONTEXT);
    assert_eq!(r.json["prompt_eval_count"], CONTEXT - 1, "{r:?}");
    assert!((norm(&floats(&r.json["embeddings"][0])) - 1.0).abs() < 1e-4);
    let r = post_json(
        &url,
        &json!({"model": DEFAULT_MODEL, "input": long, "truncate": false}),
    )
    .await;
    assert!(ollama_error(&r, 400).contains("tokens"));
    // Empty input loads the model and returns no embeddings, as Ollama does.
    let r = post_json(&url, &json!({"model": DEFAULT_MODEL, "input": []})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["embeddings"], json!([]));
    let r = post_json(&url, &json!({"model": "no-such-model", "input": "x"})).await;
    ollama_error(&r, 404);
    let r = post_json(
        &url,
        &json!({"model": DEFAULT_MODEL, "input": "x", "dimensions": 3}),
    )
    .await;
    ollama_error(&r, 400);

    // Legacy /api/embeddings: one prompt, one `embedding`.
    let r = post_json(
        &server.url("/api/embeddings"),
        &json!({"model": DEFAULT_MODEL, "prompt": "The cat sat on the mat."}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json.as_object().unwrap().len(), 1, "{r:?}");
    assert!(max_diff(&cat, &floats(&r.json["embedding"])) < 1e-5);
    let r = post_json(
        &server.url("/api/embeddings"),
        &json!({"model": "no-such-model", "prompt": "x"}),
    )
    .await;
    ollama_error(&r, 404);

    // Generation still works beside embeddings, unchanged by them.
    let chat = json!({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 8, "temperature": 0});
    let a = post_json(&server.url("/v1/chat/completions"), &chat).await;
    let _ = openai_vectors(&server, json!(["one", "two", "three"])).await;
    let b = post_json(&server.url("/v1/chat/completions"), &chat).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.json["choices"][0]["message"]["content"],
        b.json["choices"][0]["message"]["content"]
    );
}
