//! The harness against an in-process fake server that streams fixed answers in both APIs'
//! formats, with known timings and token counts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rkserve_loadtest::cli::Cli;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODEL: &str = "fake-model";
/// Fails every request except the preflight's (max_tokens 1), with 503.
const FLAKY_MODEL: &str = "flaky-model";
const TOKENS: u64 = 5;
const PROMPT_TOKENS: u64 = 7;
const FIRST_TOKEN: Duration = Duration::from_millis(20);
const BETWEEN_TOKENS: Duration = Duration::from_millis(5);

struct Fake {
    url: String,
    /// Generation requests received (POSTs), preflight and warm-up included.
    generations: Arc<AtomicUsize>,
}

async fn fake(usage: bool) -> Fake {
    fake_closing_after(usage, usize::MAX).await
}

/// Stops listening after `connections` connections, as a server that goes down mid-run.
async fn fake_closing_after(usage: bool, connections: usize) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let generations = Arc::new(AtomicUsize::new(0));
    let seen = generations.clone();
    tokio::spawn(async move {
        for _ in 0..connections {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(socket, usage, seen.clone()));
        }
    });
    Fake { url, generations }
}

/// One request per connection, answered with `Connection: close`.
async fn serve(mut socket: TcpStream, usage: bool, generations: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut read = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut read).await.unwrap();
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&read[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut read).await.unwrap();
        buf.extend_from_slice(&read[..n]);
    }
    let body: Value =
        serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap(), words.next().unwrap().to_owned());

    if method == "GET" {
        let list = match path.as_str() {
            "/v1/models" => json!({"object": "list", "data": [{"id": MODEL, "object": "model"}]}),
            "/api/tags" => json!({"models": [{"name": MODEL, "model": MODEL}]}),
            _ => return respond(&mut socket, 404, "{}").await,
        };
        return respond(&mut socket, 200, &list.to_string()).await;
    }
    generations.fetch_add(1, Ordering::SeqCst);
    let ollama = path.starts_with("/api/");
    let limit = body["max_tokens"]
        .as_u64()
        .or(body["options"]["num_predict"].as_u64())
        .unwrap();
    let model = body["model"].as_str().unwrap_or_default();
    let error = |message: &str| {
        if ollama {
            json!({"error": message}).to_string()
        } else {
            json!({"error": {"message": message, "type": "invalid_request_error", "code": null}})
                .to_string()
        }
    };
    if model == FLAKY_MODEL && limit > 1 {
        return respond(&mut socket, 503, &error("overloaded")).await;
    }
    if model != MODEL && model != FLAKY_MODEL {
        return respond(
            &mut socket,
            404,
            &error(&format!("unknown model '{model}'")),
        )
        .await;
    }

    let content_type = if ollama {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    };
    let head =
        format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    let chat = path.ends_with("chat") || path.ends_with("chat/completions");
    let n = TOKENS.min(limit);
    tokio::time::sleep(FIRST_TOKEN).await;
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(BETWEEN_TOKENS).await;
        }
        let text = format!("tok{i} ");
        let message = match (ollama, chat) {
            (false, true) => format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
            ),
            (false, false) => format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "text": text, "finish_reason": null}]})
            ),
            (true, true) => format!(
                "{}\n",
                json!({"model": model, "message": {"role": "assistant", "content": text}, "done": false})
            ),
            (true, false) => format!(
                "{}\n",
                json!({"model": model, "response": text, "done": false})
            ),
        };
        socket.write_all(message.as_bytes()).await.unwrap();
    }
    let tail = if ollama {
        let mut last = json!({"model": model, "done": true, "done_reason": "length"});
        if usage {
            last["prompt_eval_count"] = json!(PROMPT_TOKENS);
            last["eval_count"] = json!(n);
        }
        format!("{last}\n")
    } else {
        let mut tail = format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        );
        if usage {
            let u = json!({"choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n, "total_tokens": PROMPT_TOKENS + n}});
            tail.push_str(&format!("data: {u}\n\n"));
        }
        tail + "data: [DONE]\n\n"
    };
    socket.write_all(tail.as_bytes()).await.unwrap();
    let _ = socket.shutdown().await;
}

async fn respond(socket: &mut TcpStream, status: u16, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    let _ = socket.shutdown().await;
}

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("rkserve-loadtest").chain(args.iter().copied())).unwrap()
}

const STATS: [&str; 5] = ["p50", "p90", "p99", "max", "mean"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_closed_loop_sweep_with_json_and_plot() {
    let server = fake(true).await;
    let dir = tempfile::tempdir().unwrap();
    let (json_path, svg_path) = (dir.path().join("out.json"), dir.path().join("out.svg"));
    // No --model: the first of /v1/models is used.
    let report = rkserve_loadtest::execute(cli(&[
        "--url",
        &server.url,
        "--concurrency",
        "1,2",
        "--requests",
        "6",
        "--warmup",
        "1",
        "--slo-ttft",
        "10",
        "--slo-tpot",
        "0.000001",
        "--json",
        json_path.to_str().unwrap(),
        "--plot",
        svg_path.to_str().unwrap(),
    ]))
    .await
    .unwrap();

    assert_eq!(report.model, MODEL);
    assert_eq!(
        server.generations.load(Ordering::SeqCst),
        1 + 2 * (1 + 6),
        "preflight + (warm-up + measured) per level"
    );
    for level in &report.levels {
        assert_eq!((level.completed, level.failed), (6, 0));
        assert_eq!(level.output_tokens, 6 * TOKENS);
        assert_eq!(level.input_tokens, 6 * PROMPT_TOKENS);
        let ttft = level.ttft_seconds.unwrap();
        assert!(
            ttft.p50 >= FIRST_TOKEN.as_secs_f64() && ttft.p50 < 1.0,
            "{ttft:?}"
        );
        let tpot = level.tpot_seconds.unwrap();
        assert!(
            tpot.p50 >= 0.8 * BETWEEN_TOKENS.as_secs_f64() && tpot.p50 < 0.5,
            "{tpot:?}"
        );
        // TPOT is about 5 ms, far above the 1 us objective: nothing meets it.
        assert_eq!(level.goodput.unwrap().met, 0);
    }

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(v["server"], server.url.as_str());
    assert_eq!(v["api"], "openai");
    assert_eq!(v["model"], MODEL);
    let levels = v["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    assert_eq!(levels[0]["concurrency"], 1);
    assert_eq!(levels[1]["concurrency"], 2);
    for level in levels {
        for field in [
            "completed",
            "failed",
            "duration_seconds",
            "requests_per_second",
            "output_tokens_per_second",
            "input_tokens_per_second",
        ] {
            assert!(level[field].is_number(), "{field} in {level}");
        }
        for field in ["ttft_seconds", "itl_seconds", "tpot_seconds", "e2e_seconds"] {
            for stat in STATS {
                assert!(level[field][stat].is_number(), "{field}.{stat} in {level}");
            }
        }
        assert!(level["goodput"]["requests_per_second"].is_number());
        assert!(level["goodput"]["fraction"].is_number());
        assert_eq!(level["errors"], json!({}));
        let tokens = level["output_tokens_per_second"].as_f64().unwrap()
            * level["duration_seconds"].as_f64().unwrap();
        assert!((tokens - 30.0).abs() < 1e-6, "{tokens}");
    }
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Output tokens/s") && svg.contains("TTFT p99"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_generate_and_chat() {
    let server = fake(true).await;
    for endpoint in ["completions", "chat"] {
        let report = rkserve_loadtest::execute(cli(&[
            "--url",
            &server.url,
            "--api",
            "ollama",
            "--endpoint",
            endpoint,
            "--model",
            MODEL,
            "--concurrency",
            "2",
            "--requests",
            "4",
            "--warmup",
            "0",
        ]))
        .await
        .unwrap();
        let level = &report.levels[0];
        assert_eq!((level.completed, level.failed), (4, 0), "{endpoint}");
        assert_eq!(
            (level.output_tokens, level.input_tokens),
            (4 * TOKENS, 4 * PROMPT_TOKENS)
        );
        assert!(level.itl_seconds.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_usage_tokens_are_counted_from_chunks() {
    let server = fake(false).await;
    for api in ["openai", "ollama"] {
        let report = rkserve_loadtest::execute(cli(&[
            "--url",
            &server.url,
            "--api",
            api,
            "--model",
            MODEL,
            "--concurrency",
            "1",
            "--requests",
            "2",
            "--warmup",
            "0",
        ]))
        .await
        .unwrap();
        let level = &report.levels[0];
        assert_eq!(
            (level.completed, level.output_tokens, level.input_tokens),
            (2, 2 * TOKENS, 0),
            "{api}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_the_requested_count() {
    let server = fake(true).await;
    let report = rkserve_loadtest::execute(cli(&[
        "--url",
        &server.url,
        "--model",
        MODEL,
        "--rate",
        "40,80",
        "--arrival",
        "gamma",
        "--burstiness",
        "0.5",
        "--requests",
        "5",
        "--warmup",
        "1",
    ]))
    .await
    .unwrap();
    assert_eq!(report.mode, "open");
    assert_eq!(report.levels.len(), 2);
    assert!(report
        .levels
        .iter()
        .all(|l| l.completed == 5 && l.output_tokens == 5 * TOKENS));
    assert_eq!(server.generations.load(Ordering::SeqCst), 1 + 2 * (1 + 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_and_aggregated() {
    let server = fake(true).await;
    let report = rkserve_loadtest::execute(cli(&[
        "--url",
        &server.url,
        "--model",
        FLAKY_MODEL,
        "--concurrency",
        "2",
        "--requests",
        "4",
        "--warmup",
        "0",
    ]))
    .await
    .unwrap();
    let level = &report.levels[0];
    assert_eq!((level.completed, level.failed), (0, 4));
    assert_eq!(level.errors["HTTP 503: overloaded"], 4);
    assert!(level.ttft_seconds.is_none());
    assert_eq!(level.output_tokens_per_second, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_stops_at_the_first_request() {
    let server = fake(true).await;
    for api in ["openai", "ollama"] {
        let err = rkserve_loadtest::execute(cli(&[
            "--url",
            &server.url,
            "--api",
            api,
            "--model",
            "nope",
        ]))
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("HTTP 404")
                && err.contains("unknown model 'nope'")
                && err.ends_with("(models on the server: fake-model)"),
            "{err}"
        );
    }
    assert_eq!(
        server.generations.load(Ordering::SeqCst),
        2,
        "one request per attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    for model in [None, Some(MODEL)] {
        let mut args = vec!["--url", url.as_str(), "--timeout", "5"];
        args.extend(model.iter().flat_map(|m| ["--model", m]));
        let err = rkserve_loadtest::execute(cli(&args))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot reach the server at"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_going_away_ends_the_sweep_with_the_results_so_far() {
    let server = fake_closing_after(true, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("out.json");
    let run = rkserve_loadtest::execute(cli(&[
        "--url",
        &server.url,
        "--model",
        MODEL,
        "--concurrency",
        "2,4",
        "--duration",
        "60",
        "--warmup",
        "0",
        "--json",
        json_path.to_str().unwrap(),
    ]));
    let err = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("stops well before --duration")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("the server stopped accepting connections during concurrency 2"),
        "{err}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let levels = v["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 1, "the sweep stops at the level it was in");
    assert_eq!(
        levels[0]["completed"], 4,
        "5 connections, one of them the preflight"
    );
    // 20 refusals in a row stop the level; a request already streaming when the port closed
    // still succeeds and restarts the count, so a few more than 20 may fail, but not the
    // thousands a closed loop against a refused port would otherwise rack up.
    let failed = levels[0]["failed"].as_u64().unwrap();
    assert!((20..60).contains(&failed), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_dist_sets_each_requests_limit_and_is_reported() {
    use rkserve_loadtest::lengths::LengthSpec;
    let server = fake(true).await;
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("out.json");
    let run = |extra: &'static [&'static str]| {
        let mut args = vec![
            "--url",
            &server.url,
            "--concurrency",
            "1,3",
            "--requests",
            "12",
            "--warmup",
            "1",
            "--json",
            json_path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        rkserve_loadtest::execute(cli(&args))
    };
    // The fake streams min(max_tokens, 5) tokens: below 5 the output is the drawn limit.
    let report = run(&["--max-tokens-dist", "uniform:1:4", "--seed", "5"])
        .await
        .unwrap();
    let spec: LengthSpec = "uniform:1:4".parse().unwrap();
    let drawn: Vec<u64> = (0..12).map(|i| u64::from(spec.draw(5, i))).collect();
    assert!(
        drawn.iter().any(|&n| n != drawn[0]),
        "lengths vary: {drawn:?}"
    );
    for level in &report.levels {
        assert_eq!(level.output_tokens, drawn.iter().sum::<u64>());
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let dist = &v["max_tokens_dist"];
    assert_eq!(dist["spec"], "uniform:1:4");
    assert_eq!(
        (dist["seed"].as_u64(), dist["count"].as_u64()),
        (Some(5), Some(12))
    );
    let mean = drawn.iter().sum::<u64>() as f64 / 12.0;
    assert!((dist["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert_eq!(dist["max"].as_u64(), drawn.iter().max().copied());
    assert!(dist["p50"].is_u64() && dist["p90"].is_u64());

    // Without the flag every request asks for --max-tokens and the report has no such field.
    let report = run(&[]).await.unwrap();
    assert_eq!(report.levels[0].output_tokens, 12 * TOKENS);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert!(v.get("max_tokens_dist").is_none());
}
