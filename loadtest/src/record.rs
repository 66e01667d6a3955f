//! Measurements of one request, taken while its stream arrives.
//!
//! A token arrival is a streamed chunk with non-empty text: servers send one chunk per decoded
//! token (rkserve, llama.cpp, vLLM, Ollama all do by default), and the client cannot see tokens
//! any finer than the chunks it receives. Chunks that arrive in the same network read share a
//! timestamp, so an inter-token gap of zero means the client got those tokens together.

use std::time::{Duration, Instant};

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// The server answered with a non-success status; the message is from its error body.
    Http {
        status: u16,
        message: String,
    },
    /// Connecting, sending, or reading the body failed.
    Transport(String),
    /// The stream broke its protocol or carried an error after it began.
    Stream(String),
    Timeout(Duration),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// The line the error tables aggregate by; `None` for success.
    pub fn error_message(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Http { status, message } if message.is_empty() => {
                Some(format!("HTTP {status}"))
            }
            Outcome::Http { status, message } => Some(format!("HTTP {status}: {message}")),
            Outcome::Transport(m) => Some(format!("transport: {m}")),
            Outcome::Stream(m) => Some(format!("stream: {m}")),
            Outcome::Timeout(d) => Some(format!("timeout after {}s", d.as_secs_f64())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub outcome: Outcome,
    /// Request sent to first non-empty content chunk; `None` if no content came.
    pub ttft: Option<Duration>,
    /// Gaps between consecutive content chunks.
    pub itl: Vec<Duration>,
    /// Request sent to end of stream (or to failure).
    pub e2e: Duration,
    /// Server-reported; `None` when the server reports no usage.
    pub prompt_tokens: Option<u64>,
    /// Server-reported, else the number of content chunks.
    pub output_tokens: u64,
}

impl Record {
    /// Mean time per output token after the first. Undefined for fewer than two tokens: there
    /// is no decode interval to average.
    pub fn tpot(&self) -> Option<Duration> {
        let ttft = self.ttft?;
        if self.output_tokens < 2 {
            return None;
        }
        let decode = self.e2e.saturating_sub(ttft);
        Some(decode.div_f64((self.output_tokens - 1) as f64))
    }
}

/// Collects one request's timings as its stream is read.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    itl: Vec<Duration>,
    chunks: u64,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl Recorder {
    /// `start` is when the request is handed to the HTTP client.
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            first: None,
            last: None,
            itl: Vec::new(),
            chunks: 0,
            prompt_tokens: None,
            completion_tokens: None,
        }
    }

    /// A chunk with non-empty text arrived at `at`.
    pub fn content(&mut self, at: Instant) {
        if self.first.is_none() {
            self.first = Some(at);
        }
        if let Some(last) = self.last {
            self.itl.push(at.saturating_duration_since(last));
        }
        self.last = Some(at);
        self.chunks += 1;
    }

    /// Usage as reported by the server; later reports replace earlier ones field by field.
    pub fn usage(&mut self, prompt: Option<u64>, completion: Option<u64>) {
        self.prompt_tokens = prompt.or(self.prompt_tokens);
        self.completion_tokens = completion.or(self.completion_tokens);
    }

    pub fn finish(self, outcome: Outcome, at: Instant) -> Record {
        Record {
            outcome,
            ttft: self.first.map(|f| f.saturating_duration_since(self.start)),
            itl: self.itl,
            e2e: at.saturating_duration_since(self.start),
            prompt_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens.unwrap_or(self.chunks),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn records_ttft_gaps_and_tpot() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        for at in [100, 110, 130, 160] {
            r.content(t0 + ms(at));
        }
        let rec = r.finish(Outcome::Ok, t0 + ms(160));
        assert_eq!(rec.ttft, Some(ms(100)));
        assert_eq!(rec.itl, vec![ms(10), ms(20), ms(30)]);
        assert_eq!(rec.e2e, ms(160));
        assert_eq!(rec.output_tokens, 4, "falls back to chunk count");
        assert_eq!(rec.prompt_tokens, None);
        assert_eq!(rec.tpot(), Some(ms(20)));
    }

    #[test]
    fn server_usage_wins_over_chunk_count() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        r.content(t0 + ms(50));
        r.content(t0 + ms(60));
        r.usage(Some(12), Some(5));
        r.usage(None, None);
        let rec = r.finish(Outcome::Ok, t0 + ms(90));
        assert_eq!(rec.prompt_tokens, Some(12));
        assert_eq!(rec.output_tokens, 5);
        assert_eq!(rec.tpot(), Some(ms(10)));
    }

    #[test]
    fn tpot_needs_two_tokens() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        r.content(t0 + ms(5));
        let rec = r.finish(Outcome::Ok, t0 + ms(5));
        assert_eq!(rec.tpot(), None);
        let empty = Recorder::new(t0).finish(Outcome::Ok, t0 + ms(1));
        assert_eq!(
            (empty.ttft, empty.tpot(), empty.output_tokens),
            (None, None, 0)
        );
    }

    #[test]
    fn error_messages() {
        let http = Outcome::Http {
            status: 404,
            message: "model 'x' not found".into(),
        };
        assert_eq!(
            http.error_message().unwrap(),
            "HTTP 404: model 'x' not found"
        );
        assert_eq!(
            Outcome::Timeout(Duration::from_secs(3))
                .error_message()
                .unwrap(),
            "timeout after 3s"
        );
        assert_eq!(Outcome::Ok.error_message(), None);
    }
}
