//! Closed-loop streaming load for the router tests: clients that send their next request
//! when the last one ends, count the tokens streamed in a window, and keep every request's
//! outcome (when it was sent, which board answered, why it failed) for the test to judge.

use futures_util::StreamExt;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request's outcome, as a client saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sent: Instant,
    /// When the response headers came, and which board sent them (via haproxy's header).
    pub answered: Option<(Instant, String)>,
    /// Why it failed; None if it streamed to `[DONE]`.
    pub failure: Option<String>,
    pub ended: Instant,
}

/// Closed-loop streaming clients: each sends its next request when the last one ends.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Content chunks (one per token) received while `counting`.
    tokens: Arc<AtomicU64>,
    counting: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` streaming chat clients of `model` against `url`; `board_header` names the
    /// response header saying which board answered.
    pub fn start(
        url: String,
        model: &str,
        max_tokens: u32,
        clients: usize,
        board_header: &'static str,
    ) -> Load {
        Load::start_with(
            reqwest::Client::new(),
            url,
            model,
            max_tokens,
            clients,
            board_header,
        )
    }

    /// As [`Load::start`], with a client of the caller's (an API key in its default headers).
    pub fn start_with(
        client: reqwest::Client,
        url: String,
        model: &str,
        max_tokens: u32,
        clients: usize,
        board_header: &'static str,
    ) -> Load {
        let load = Load {
            stop: Arc::default(),
            tokens: Arc::default(),
            counting: Arc::default(),
            outcomes: Arc::default(),
            tasks: vec![],
        };
        let tasks = (0..clients)
            .map(|c| {
                let (client, url, model) = (client.clone(), url.clone(), model.to_string());
                let (stop, tokens, counting, outcomes) = (
                    load.stop.clone(),
                    load.tokens.clone(),
                    load.counting.clone(),
                    load.outcomes.clone(),
                );
                tokio::spawn(async move {
                    // Bounded: a client makes at most this many requests whatever happens.
                    for n in 0..1000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let body = json!({
                            "model": model,
                            "messages": [{"role": "user", "content": format!("client {c} request {n}")}],
                            "max_tokens": max_tokens,
                            "stream": true,
                        });
                        let o = one(&client, &url, &body, board_header, &tokens, &counting).await;
                        let failed = o.failure.is_some();
                        outcomes.lock().unwrap().push(o);
                        if failed {
                            // Not a tight loop against a board that refuses everything.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    /// Tokens per second over `window`, after the clients have settled in.
    pub async fn measure(&self, window: Duration) -> f64 {
        self.tokens.store(0, Ordering::SeqCst);
        self.counting.store(true, Ordering::SeqCst);
        tokio::time::sleep(window).await;
        self.counting.store(false, Ordering::SeqCst);
        self.tokens.load(Ordering::SeqCst) as f64 / window.as_secs_f64()
    }

    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("every client finishes its last request")
                .unwrap();
        }
        Arc::try_unwrap(self.outcomes)
            .unwrap()
            .into_inner()
            .unwrap()
    }

    /// Waits until `board` has completed a request sent after `since`; how long after
    /// `since` that was.
    pub async fn wait_served(&self, board: &str, since: Instant) -> Duration {
        let limit = Duration::from_secs(15);
        while served_by(&self.outcomes(), board, since) == 0 {
            assert!(
                since.elapsed() < limit,
                "{board} served nothing in {limit:?}: it did not rejoin"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        since.elapsed()
    }

    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }
}

async fn one(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    board_header: &str,
    tokens: &AtomicU64,
    counting: &AtomicBool,
) -> Outcome {
    let sent = Instant::now();
    let mut o = Outcome {
        sent,
        answered: None,
        failure: None,
        ended: sent,
    };
    o.failure = stream(
        client,
        url,
        body,
        board_header,
        tokens,
        counting,
        &mut o.answered,
    )
    .await;
    o.ended = Instant::now();
    o
}

/// Sends one streaming request and reads it to its end; why it failed, if it did.
async fn stream(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    board_header: &str,
    tokens: &AtomicU64,
    counting: &AtomicBool,
    answered: &mut Option<(Instant, String)>,
) -> Option<String> {
    let r = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return Some(format!("send: {e}")),
    };
    let board = r
        .headers()
        .get(board_header)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("direct")
        .to_string();
    *answered = Some((Instant::now(), board));
    if r.status() != 200 {
        return Some(format!("status {}", r.status()));
    }
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return Some("the stream broke".into());
        };
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                return None;
            }
            if data.contains("\"error\"") {
                return Some(format!("error event: {data}"));
            }
            if data.contains("\"content\":\"") && counting.load(Ordering::Relaxed) {
                tokens.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Some("the stream ended without [DONE]".into())
}

pub fn served_by(outcomes: &[Outcome], board: &str, after: Instant) -> usize {
    outcomes
        .iter()
        .filter(|o| o.failure.is_none() && o.sent >= after)
        .filter(|o| o.answered.as_ref().is_some_and(|(_, b)| b == board))
        .count()
}
