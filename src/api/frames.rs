//! Typed frames: what a generation yields, whatever API encodes it. The scheduler's per-slot
//! text goes through each choice's output parser here, so reasoning and tool calls are split
//! out once for both APIs.

use super::error::ApiError;
use chat_template::{OutputParser, ParseConfig, Piece};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use scheduler::{Event, FinishReason, Timings};
use std::collections::VecDeque;
use std::time::Duration;

/// Why a choice ended, in the terms both APIs report.
#[derive(Debug, Clone)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
    /// The generation failed after it began; encoded as an error in the stream's format.
    Error(ApiError),
}

impl Finish {
    /// OpenAI's `finish_reason` and Ollama's `done_reason`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Finish::Stop | Finish::Error(_) => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ToolCallFrame {
    /// Position among this choice's calls.
    pub index: usize,
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text (OpenAI's form; Ollama's clients get the object).
    pub arguments: String,
}

#[derive(Debug, Clone)]
pub enum Frame {
    /// A choice's reply begins (OpenAI's first delta carries the role).
    Role {
        choice: usize,
    },
    Text {
        choice: usize,
        text: String,
    },
    Reasoning {
        choice: usize,
        text: String,
    },
    ToolCall {
        choice: usize,
        call: ToolCallFrame,
    },
    End {
        choice: usize,
        finish: Finish,
        completion_tokens: u32,
        timings: Timings,
    },
    /// Nothing to say for a while; proxies close idle connections.
    KeepAlive,
}

/// How long a stream may stay silent before a keep-alive frame.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A number unique within this process and unlikely to repeat across restarts, for
/// response and tool-call ids.
pub fn unique_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(40)
}

/// A unique tool-call id, in OpenAI's `call_…` form.
pub fn call_id() -> String {
    format!("call_{:016x}", unique_id())
}

/// One choice's state while its events turn into frames.
struct ChoiceState {
    parser: Option<OutputParser>,
    calls: usize,
    ended: bool,
}

/// Scheduler events of all choices in, frames out. Ends at the last choice's End event,
/// not when the channels close: a run's other members may keep its senders for a while.
pub struct Frames {
    events: BoxStream<'static, (usize, Event)>,
    choices: Vec<ChoiceState>,
    open: usize,
    pending: VecDeque<Frame>,
    /// At most one tool call per choice (`parallel_tool_calls: false`).
    single_call: bool,
    keep_alive: Duration,
    /// The model stays loaded while its frames are read.
    lease: crate::models::Lease,
    /// Its caller counts the request's outcome: a failure found here is left to it.
    counted_by_caller: bool,
}

impl Frames {
    pub fn new(
        events: BoxStream<'static, (usize, Event)>,
        n: usize,
        parse: &ParseConfig,
        single_call: bool,
        first: Option<(usize, Event)>,
        lease: crate::models::Lease,
        counted_by_caller: bool,
    ) -> Frames {
        let needs_parser = parse.tools.is_some() || parse.reasoning || parse.starts_in_reasoning;
        let mut f = Frames {
            events,
            choices: (0..n)
                .map(|_| ChoiceState {
                    parser: needs_parser.then(|| OutputParser::new(*parse)),
                    calls: 0,
                    ended: false,
                })
                .collect(),
            open: n,
            pending: (0..n).map(|choice| Frame::Role { choice }).collect(),
            single_call,
            keep_alive: KEEP_ALIVE,
            lease,
            counted_by_caller,
        };
        if let Some((i, e)) = first {
            f.on_event(i, e);
        }
        f
    }

    fn pieces(&mut self, choice: usize, pieces: Vec<Piece>) {
        for p in pieces {
            let frame = match p {
                Piece::Content(text) if text.is_empty() => continue,
                Piece::Reasoning(text) if text.is_empty() => continue,
                Piece::Content(text) => Frame::Text { choice, text },
                Piece::Reasoning(text) => Frame::Reasoning { choice, text },
                Piece::ToolCall(call) => {
                    let c = &mut self.choices[choice];
                    if self.single_call && c.calls == 1 {
                        continue;
                    }
                    c.calls += 1;
                    Frame::ToolCall {
                        choice,
                        call: ToolCallFrame {
                            index: c.calls - 1,
                            id: call_id(),
                            name: call.name,
                            arguments: call.arguments.to_string(),
                        },
                    }
                }
            };
            self.pending.push_back(frame);
        }
    }

    fn on_event(&mut self, choice: usize, e: Event) {
        if self.choices.get(choice).is_none_or(|c| c.ended) {
            return;
        }
        match e {
            Event::Text { text, .. } => match self.choices[choice].parser.as_mut() {
                Some(p) => {
                    let pieces = p.push(&text);
                    self.pieces(choice, pieces);
                }
                None if text.is_empty() => {}
                None => self.pending.push_back(Frame::Text { choice, text }),
            },
            // Generation requests get none.
            Event::Embedding { .. } => {}
            Event::End {
                reason,
                completion_tokens,
                timings,
                ..
            } => {
                if let Some(p) = self.choices[choice].parser.as_mut() {
                    let pieces = p.finish();
                    self.pieces(choice, pieces);
                }
                let c = &mut self.choices[choice];
                c.ended = true;
                self.open -= 1;
                let finish = match reason {
                    FinishReason::Error(_) => Finish::Error(ApiError::from_finish(&reason)),
                    _ if c.calls > 0 => Finish::ToolCalls,
                    FinishReason::Stop => Finish::Stop,
                    FinishReason::Length => Finish::Length,
                };
                self.pending.push_back(Frame::End {
                    choice,
                    finish,
                    completion_tokens,
                    timings,
                });
            }
        }
    }

    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            if self.open == 0 {
                return None;
            }
            match tokio::time::timeout(self.keep_alive, self.events.next()).await {
                Ok(Some((i, e))) => self.on_event(i, e),
                // Every channel closed without an End: the scheduler went away without
                // recording the request, so it is counted here (once, whatever its n),
                // unless its caller counts it.
                Ok(None) => {
                    if !self.counted_by_caller {
                        scheduler::telemetry::count_failure(
                            self.lease.model(),
                            scheduler::FailKind::RuntimeError,
                            1,
                        );
                    }
                    for choice in 0..self.choices.len() {
                        if !self.choices[choice].ended {
                            self.on_event(
                                choice,
                                Event::End {
                                    reason: FinishReason::Error(scheduler::Failure::new(
                                        scheduler::FailKind::RuntimeError,
                                        "the scheduler stopped before the reply ended",
                                    )),
                                    prompt_tokens: 0,
                                    completion_tokens: 0,
                                    timings: Timings::default(),
                                },
                            );
                        }
                    }
                }
                Err(_) => return Some(Frame::KeepAlive),
            }
        }
    }

    /// The frames as a stream, for the encoders.
    pub fn into_stream(self) -> BoxStream<'static, Frame> {
        futures_util::stream::unfold(self, |mut f| async move {
            let frame = f.next().await?;
            Some((frame, f))
        })
        .boxed()
    }
}

/// One choice read to its end.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCallFrame>,
    pub finish: Finish,
    pub completion_tokens: u32,
    pub timings: Timings,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            text: String::new(),
            reasoning: String::new(),
            tool_calls: Vec::new(),
            finish: Finish::Stop,
            completion_tokens: 0,
            timings: Timings::default(),
        }
    }
}

impl Reply {
    /// Replays a finished reply as frames (a checked reply is streamed once it passed).
    pub fn frames(&self, choice: usize) -> Vec<Frame> {
        let mut out = vec![Frame::Role { choice }];
        if !self.reasoning.is_empty() {
            out.push(Frame::Reasoning {
                choice,
                text: self.reasoning.clone(),
            });
        }
        if !self.text.is_empty() {
            out.push(Frame::Text {
                choice,
                text: self.text.clone(),
            });
        }
        out.extend(self.tool_calls.iter().map(|c| Frame::ToolCall {
            choice,
            call: c.clone(),
        }));
        out.push(Frame::End {
            choice,
            finish: self.finish.clone(),
            completion_tokens: self.completion_tokens,
            timings: self.timings.clone(),
        });
        out
    }
}

/// Reads every choice to its own end (not to the end of the run it shares).
pub async fn collect(mut frames: Frames, n: usize) -> Vec<Reply> {
    let mut replies: Vec<Reply> = (0..n).map(|_| Reply::default()).collect();
    while let Some(f) = frames.next().await {
        match f {
            Frame::Text { choice, text } => replies[choice].text.push_str(&text),
            Frame::Reasoning { choice, text } => replies[choice].reasoning.push_str(&text),
            Frame::ToolCall { choice, call } => replies[choice].tool_calls.push(call),
            Frame::End {
                choice,
                finish,
                completion_tokens,
                timings,
            } => {
                let r = &mut replies[choice];
                r.finish = finish;
                r.completion_tokens = completion_tokens;
                r.timings = timings;
            }
            Frame::Role { .. } | Frame::KeepAlive => {}
        }
    }
    replies
}

/// An API's mapping of frames to the JSON events its clients parse.
pub trait Shape: Send + 'static {
    fn frame(&mut self, frame: Frame) -> Vec<serde_json::Value>;
    /// Events after the last frame (OpenAI's usage chunk).
    fn end(&mut self) -> Vec<serde_json::Value> {
        Vec::new()
    }
}

/// Drives `frames` through `shape`, writing each event with `write` and keep-alives with
/// `keep_alive` (if the encoding has one); `close` ends the stream.
pub fn encode<S: Shape>(
    frames: BoxStream<'static, Frame>,
    shape: S,
    write: fn(&serde_json::Value) -> String,
    keep_alive: Option<&'static str>,
    close: Option<&'static str>,
) -> BoxStream<'static, Result<actix_web::web::Bytes, std::convert::Infallible>> {
    let events = frames
        .map(Some)
        .chain(futures_util::stream::once(async { None }));
    futures_util::stream::unfold(
        (events.boxed(), shape),
        move |(mut events, mut shape)| async move {
            let mut out = String::new();
            match events.next().await? {
                Some(Frame::KeepAlive) => out.push_str(keep_alive.unwrap_or("")),
                Some(f) => shape.frame(f).iter().for_each(|v| out.push_str(&write(v))),
                None => {
                    shape.end().iter().for_each(|v| out.push_str(&write(v)));
                    out.push_str(close.unwrap_or(""));
                }
            }
            Some((Ok(actix_web::web::Bytes::from(out)), (events, shape)))
        },
    )
    .filter(|b| std::future::ready(b.as_ref().is_ok_and(|b| !b.is_empty())))
    .boxed()
}
