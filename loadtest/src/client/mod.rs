//! Sends one streaming request and measures it; the API modules know the wire formats.

pub mod ollama;
pub mod openai;
pub mod stream;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::StreamExt;
use reqwest::RequestBuilder;
use serde_json::Value;

use crate::cli::{Api, Endpoint};
use crate::record::{Outcome, Record, Recorder};
use stream::{LineBuffer, SseDecoder};

/// What one streamed message (SSE event or NDJSON line) says.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Chunk {
    /// It carries non-empty generated text: one token arrival.
    pub content: bool,
    /// A choice reported its finish reason.
    pub finished: bool,
    /// The stream's last message (`[DONE]`, `"done": true`).
    pub done: bool,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// Puts the prompt where both APIs take it for `endpoint`: one user message for chat, the
/// bare text for completions.
pub fn set_prompt(body: &mut Value, endpoint: Endpoint, prompt: &str) {
    match endpoint {
        Endpoint::Chat => {
            body["messages"] = serde_json::json!([{"role": "user", "content": prompt}])
        }
        Endpoint::Completions => body["prompt"] = serde_json::json!(prompt),
    }
}

/// The message of an error body in any of the shapes servers use (OpenAI `error.message`,
/// Ollama `error`, FastAPI `detail`, plain `message`), else the body itself, shortened.
pub fn error_text(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let candidates = [
            &v["error"]["message"],
            &v["error"],
            &v["message"],
            &v["detail"],
        ];
        if let Some(s) = candidates
            .iter()
            .find_map(|c| c.as_str().filter(|s| !s.is_empty()))
        {
            return s.to_owned();
        }
    }
    let body = body.trim();
    match body.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &body[..cut]),
        None => body.to_owned(),
    }
}

/// A reqwest error with its causes, which hold the useful part ("Connection refused").
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub api: Api,
    pub endpoint: Endpoint,
    pub model: String,
    pub api_key: Option<String>,
    pub max_tokens: u32,
    pub temperature: f64,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    settings: Settings,
}

impl Client {
    pub fn new(mut settings: Settings) -> anyhow::Result<Client> {
        let url = settings.url.trim_end_matches('/');
        // OpenAI clients take base URLs ending in /v1; accept those as given.
        let url = url.strip_suffix("/v1").unwrap_or(url);
        settings.url = url.to_owned();
        let http = reqwest::Client::builder()
            // A proxy would be measured along with the server.
            .no_proxy()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .build()?;
        Ok(Client { http, settings })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn set_model(&mut self, model: String) {
        self.settings.model = model;
    }

    /// Models the server lists, in its order.
    pub async fn models(&self) -> anyhow::Result<Vec<String>> {
        let (path, list, field) = match self.settings.api {
            Api::Openai => ("/v1/models", "data", "id"),
            Api::Ollama => ("/api/tags", "models", "name"),
        };
        let url = format!("{}{path}", self.settings.url);
        let response = self
            .authorize(self.http.get(&url))
            .timeout(self.settings.timeout)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach the server at {}: {}",
                    self.settings.url,
                    describe(&e)
                )
            })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| anyhow!("GET {url}: {}", describe(&e)))?;
        if !status.is_success() {
            bail!("GET {url}: HTTP {}: {}", status.as_u16(), error_text(&body));
        }
        let v: Value =
            serde_json::from_str(&body).map_err(|e| anyhow!("GET {url}: not JSON ({e})"))?;
        Ok(v[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m[field].as_str().map(str::to_owned))
            .collect())
    }

    /// One request with the configured output limit.
    pub async fn send(&self, prompt: &str) -> Record {
        self.send_limited(prompt, self.settings.max_tokens).await
    }

    pub async fn send_limited(&self, prompt: &str, max_tokens: u32) -> Record {
        let s = &self.settings;
        let (path, body) = match s.api {
            Api::Openai => (
                openai::path(s.endpoint),
                openai::body(s.endpoint, &s.model, prompt, max_tokens, s.temperature),
            ),
            Api::Ollama => (
                ollama::path(s.endpoint),
                ollama::body(s.endpoint, &s.model, prompt, max_tokens, s.temperature),
            ),
        };
        let request = self
            .authorize(self.http.post(format!("{}{path}", s.url)))
            .json(&body);
        let mut recorder = Recorder::new(Instant::now());
        let outcome = tokio::time::timeout(s.timeout, self.stream(request, &mut recorder))
            .await
            .unwrap_or(Outcome::Timeout(s.timeout));
        recorder.finish(outcome, Instant::now())
    }

    fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.settings.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn stream(&self, request: RequestBuilder, recorder: &mut Recorder) -> Outcome {
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Transport(describe(&e)),
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Outcome::Http {
                status: status.as_u16(),
                message: error_text(&body),
            };
        }
        let mut reader = MessageReader::new(self.settings.api);
        let mut body = response.bytes_stream();
        while let Some(read) = body.next().await {
            let bytes = match read {
                Ok(b) => b,
                Err(e) => return Outcome::Transport(describe(&e)),
            };
            let at = Instant::now();
            for message in reader.push(&bytes) {
                if let Some(outcome) = reader.apply(message, recorder, at) {
                    return outcome;
                }
            }
        }
        let at = Instant::now();
        for message in reader.finish() {
            if let Some(outcome) = reader.apply(message, recorder, at) {
                return outcome;
            }
        }
        reader.ended()
    }
}

/// Bytes to API messages to recorder events, for either framing.
struct MessageReader {
    api: Api,
    lines: LineBuffer,
    sse: SseDecoder,
    finished: bool,
}

impl MessageReader {
    fn new(api: Api) -> MessageReader {
        MessageReader {
            api,
            lines: LineBuffer::default(),
            sse: SseDecoder::default(),
            finished: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Vec<Result<Chunk, String>> {
        let lines = self.lines.push(bytes);
        lines.iter().filter_map(|l| self.line(l)).collect()
    }

    fn finish(&mut self) -> Vec<Result<Chunk, String>> {
        let mut out: Vec<_> = self
            .lines
            .finish()
            .iter()
            .filter_map(|l| self.line(l))
            .collect();
        if self.api == Api::Openai {
            out.extend(self.sse.finish().map(|data| openai::parse(&data)));
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<Result<Chunk, String>> {
        match self.api {
            Api::Openai => self.sse.line(line).map(|data| openai::parse(&data)),
            Api::Ollama => Some(ollama::parse(line)),
        }
    }

    /// Records a message; `Some` once the request's outcome is known.
    fn apply(
        &mut self,
        message: Result<Chunk, String>,
        recorder: &mut Recorder,
        at: Instant,
    ) -> Option<Outcome> {
        let chunk = match message {
            Ok(c) => c,
            Err(e) => return Some(Outcome::Stream(e)),
        };
        if chunk.content {
            recorder.content(at);
        }
        recorder.usage(chunk.prompt_tokens, chunk.completion_tokens);
        self.finished |= chunk.finished;
        chunk.done.then_some(Outcome::Ok)
    }

    /// The body ended without a final message. A finish reason already seen means the answer
    /// is complete and only the `[DONE]` marker is missing, which some servers omit.
    fn ended(&self) -> Outcome {
        if self.finished {
            return Outcome::Ok;
        }
        Outcome::Stream(match self.api {
            Api::Openai => "ended before a finish reason or [DONE]".to_owned(),
            Api::Ollama => "ended before \"done\": true".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_shapes() {
        assert_eq!(
            error_text(r#"{"error":{"message":"no such model","code":null}}"#),
            "no such model"
        );
        assert_eq!(
            error_text(r#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(error_text(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(error_text(r#"{"object":"error","message":"bad"}"#), "bad");
        assert_eq!(error_text("  Bad Gateway \n"), "Bad Gateway");
        assert_eq!(error_text(&"x".repeat(500)).len(), 203);
    }

    #[test]
    fn reader_whole_openai_stream() {
        let mut reader = MessageReader::new(Api::Openai);
        let t0 = Instant::now();
        let mut recorder = Recorder::new(t0);
        let body = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
                    data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                    data: {\"choices\":[{\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}]}\n\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n\
                    data: [DONE]\n\n";
        let mut outcome = None;
        for message in reader.push(body.as_bytes()) {
            outcome = outcome.or(reader.apply(message, &mut recorder, t0));
        }
        assert_eq!(outcome, Some(Outcome::Ok));
        let record = recorder.finish(Outcome::Ok, t0);
        assert_eq!((record.prompt_tokens, record.output_tokens), (Some(3), 2));
        assert_eq!(record.itl.len(), 1);
    }

    #[test]
    fn reader_truncated_streams() {
        let reader = MessageReader::new(Api::Ollama);
        assert!(matches!(reader.ended(), Outcome::Stream(_)));
        let mut reader = MessageReader::new(Api::Openai);
        let mut recorder = Recorder::new(Instant::now());
        for message in
            reader.push(b"data: {\"choices\":[{\"text\":\"x\",\"finish_reason\":\"length\"}]}\n\n")
        {
            assert_eq!(reader.apply(message, &mut recorder, Instant::now()), None);
        }
        assert_eq!(
            reader.ended(),
            Outcome::Ok,
            "finish reason seen, [DONE] omitted"
        );
    }
}
