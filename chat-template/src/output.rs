//! Splitting a model's output, as it streams, into its answer, its reasoning (`<think>`
//! blocks) and the tool calls it writes.
//!
//! Markers can arrive split over several chunks, so text that could still turn out to be
//! the start of one is held back until the next chunk decides it, as stop strings are;
//! everything else goes out as soon as it arrives.

use crate::ToolSyntax;
use serde_json::Value as Json;
use std::mem;

/// A decided part of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Answer text.
    Content(String),
    /// Text of the `<think>` block, without the tags.
    Reasoning(String),
    ToolCall(ParsedToolCall),
}

/// A tool call read from the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToolCall {
    pub name: String,
    /// A JSON object.
    pub arguments: Json,
}

/// What [`OutputParser`] looks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseConfig {
    /// The syntax tool calls are written in; `None`: never parse tool calls (no tools were
    /// offered), so text that looks like one is answer text.
    pub tools: Option<ToolSyntax>,
    /// Split off a `<think>` block that opens the output.
    pub reasoning: bool,
    /// The prompt already opened the think block (see
    /// [`ChatTemplate::starts_in_reasoning`](crate::ChatTemplate::starts_in_reasoning)), so
    /// the output starts as reasoning.
    pub starts_in_reasoning: bool,
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing decided yet: the output may open with `<think>`.
    Start,
    Reasoning,
    /// Just past `</think>`: the newlines that separate it from the answer are dropped.
    AfterReasoning,
    /// At the start of the answer, where a Llama 3 tool call must begin.
    ContentStart,
    Content,
    /// Inside a `<tool_call>` block, which is held whole until it closes.
    HermesCall,
    /// Inside Llama 3 JSON calls, held until each parses.
    JsonCalls,
}

enum Step {
    Again,
    Wait,
}

/// Splits streamed model output into [`Piece`]s. Feed it text in whatever chunks it comes
/// with [`OutputParser::push`], then call [`OutputParser::finish`] once for the rest. The
/// pieces do not depend on the chunking (adjacent pieces of one kind may come split
/// differently), and no text is lost: malformed tool calls come back as content.
#[derive(Debug)]
pub struct OutputParser {
    cfg: ParseConfig,
    state: State,
    /// Text received and not yet decided.
    buf: String,
    /// Llama 3 calls already emitted in the current run, so the separators after them are
    /// part of the calls rather than answer text.
    json_calls: usize,
    /// Some reasoning text has been emitted.
    thought: bool,
    out: Vec<Piece>,
}

impl OutputParser {
    pub fn new(cfg: ParseConfig) -> OutputParser {
        let state = if cfg.starts_in_reasoning {
            State::Reasoning
        } else if cfg.reasoning {
            State::Start
        } else {
            State::ContentStart
        };
        OutputParser {
            cfg,
            state,
            buf: String::new(),
            json_calls: 0,
            thought: false,
            out: Vec::new(),
        }
    }

    /// The next chunk of output; returns what it decides.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        self.run(false);
        mem::take(&mut self.out)
    }

    /// The output ended: everything still held back is decided.
    pub fn finish(&mut self) -> Vec<Piece> {
        self.run(true);
        mem::take(&mut self.out)
    }

    fn run(&mut self, end: bool) {
        loop {
            let step = match self.state {
                State::Start => self.start(end),
                State::Reasoning => self.reasoning(end),
                State::AfterReasoning => self.after_reasoning(),
                State::ContentStart => self.content_start(end),
                State::Content => self.content(end),
                State::HermesCall => self.hermes_call(end),
                State::JsonCalls => self.json_calls(end),
            };
            if let Step::Wait = step {
                return;
            }
        }
    }

    fn start(&mut self, end: bool) -> Step {
        let t = self.buf.trim_start();
        if let Some(rest) = t.strip_prefix(THINK_OPEN) {
            self.buf = rest.to_string();
            self.state = State::Reasoning;
        } else if THINK_OPEN.starts_with(t) && !end {
            return Step::Wait;
        } else {
            self.state = State::ContentStart;
        }
        Step::Again
    }

    fn reasoning(&mut self, end: bool) -> Step {
        if !self.thought {
            // The newlines that open a think block are layout, and a block of nothing but
            // whitespace (thinking switched off) is no reasoning at all.
            let start = self.buf.len() - self.buf.trim_start().len();
            self.buf.drain(..start);
            if self.buf.is_empty() {
                return Step::Wait;
            }
        }
        if let Some(i) = self.buf.find(THINK_CLOSE) {
            let text = self.buf[..i].to_string();
            self.thought |= !text.is_empty();
            self.emit(Piece::Reasoning(text));
            self.buf.drain(..i + THINK_CLOSE.len());
            self.state = State::AfterReasoning;
            return Step::Again;
        }
        let held = if end {
            0
        } else {
            partial_marker(&self.buf, THINK_CLOSE)
        };
        let text: String = self.buf.drain(..self.buf.len() - held).collect();
        self.thought |= !text.is_empty();
        self.emit(Piece::Reasoning(text));
        Step::Wait
    }

    fn after_reasoning(&mut self) -> Step {
        let answer = self.buf.trim_start_matches(['\n', '\r']);
        if answer.is_empty() {
            self.buf.clear();
            return Step::Wait;
        }
        self.buf = answer.to_string();
        self.state = State::ContentStart;
        Step::Again
    }

    fn content_start(&mut self, end: bool) -> Step {
        if self.cfg.tools != Some(ToolSyntax::Llama3Json) {
            self.state = State::Content;
            return Step::Again;
        }
        let t = self.buf.trim_start();
        let after_tag = t.strip_prefix(PYTHON_TAG).map(str::trim_start);
        let body = after_tag.unwrap_or(t);
        if body.starts_with('{') {
            self.state = State::JsonCalls;
            self.json_calls = 0;
            return Step::Again;
        }
        let undecided = body.is_empty() || (after_tag.is_none() && PYTHON_TAG.starts_with(t));
        if undecided && !end {
            return Step::Wait;
        }
        self.state = State::Content;
        Step::Again
    }

    fn content(&mut self, end: bool) -> Step {
        if self.cfg.tools == Some(ToolSyntax::Hermes) {
            if let Some(i) = self.buf.find(CALL_OPEN) {
                let text: String = self.buf.drain(..i).collect();
                self.emit(Piece::Content(text));
                self.state = State::HermesCall;
                return Step::Again;
            }
        }
        let held = if end || self.cfg.tools != Some(ToolSyntax::Hermes) {
            0
        } else {
            partial_marker(&self.buf, CALL_OPEN)
        };
        let text: String = self.buf.drain(..self.buf.len() - held).collect();
        self.emit(Piece::Content(text));
        Step::Wait
    }

    /// `buf` starts with `<tool_call>`.
    fn hermes_call(&mut self, end: bool) -> Step {
        let Some(j) = self.buf[CALL_OPEN.len()..].find(CALL_CLOSE) else {
            if end {
                // Unterminated: the model stopped mid-call, so the text is all there is.
                let text = mem::take(&mut self.buf);
                self.emit(Piece::Content(text));
                self.state = State::Content;
            }
            return Step::Wait;
        };
        let inner_end = CALL_OPEN.len() + j;
        let block_end = inner_end + CALL_CLOSE.len();
        let call = serde_json::from_str(self.buf[CALL_OPEN.len()..inner_end].trim())
            .ok()
            .and_then(|v| tool_call(v, false));
        let raw: String = self.buf.drain(..block_end).collect();
        self.emit(match call {
            Some(call) => Piece::ToolCall(call),
            None => Piece::Content(raw),
        });
        self.state = State::Content;
        Step::Again
    }

    /// `buf` holds Llama 3 calls: separators (whitespace, `;`, `<|python_tag|>`) and JSON.
    fn json_calls(&mut self, end: bool) -> Step {
        let skip = separators(&self.buf);
        let body = &self.buf[skip..];
        if body.is_empty() || (PYTHON_TAG.starts_with(body) && !end) {
            if end {
                let rest = mem::take(&mut self.buf);
                if self.json_calls == 0 {
                    self.emit(Piece::Content(rest));
                }
            }
            return Step::Wait;
        }
        if !body.starts_with('{') {
            // Text after the calls is answer text.
            self.state = State::Content;
            return Step::Again;
        }
        // An object is only complete once a `}` has arrived; spare the parse until then.
        if !body.contains('}') && !end {
            return Step::Wait;
        }
        let mut values = serde_json::Deserializer::from_str(body).into_iter::<Json>();
        match values.next() {
            Some(Ok(value)) => {
                let used = skip + values.byte_offset();
                match tool_call(value, true) {
                    Some(call) => {
                        self.buf.drain(..used);
                        self.emit(Piece::ToolCall(call));
                        self.json_calls += 1;
                    }
                    // JSON, but not a call (a JSON answer): answer text.
                    None => self.state = State::Content,
                }
                Step::Again
            }
            Some(Err(e)) if e.is_eof() && !end => Step::Wait,
            _ => {
                self.state = State::Content;
                Step::Again
            }
        }
    }

    /// Adds a piece, joined to the last one if it is text of the same kind.
    fn emit(&mut self, piece: Piece) {
        match (&piece, self.out.last_mut()) {
            (Piece::Content(t) | Piece::Reasoning(t), _) if t.is_empty() => {}
            (Piece::Content(t), Some(Piece::Content(last)))
            | (Piece::Reasoning(t), Some(Piece::Reasoning(last))) => last.push_str(t),
            _ => self.out.push(piece),
        }
    }
}

/// The length of the longest end of `text` that `marker` starts with (short of all of it).
fn partial_marker(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&n| text.ends_with(&marker[..n]))
        .unwrap_or(0)
}

/// The length of the separators `text` starts with, between Llama 3 calls.
fn separators(text: &str) -> usize {
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start();
        let trimmed = trimmed.strip_prefix(';').unwrap_or(trimmed);
        let trimmed = trimmed.strip_prefix(PYTHON_TAG).unwrap_or(trimmed);
        if trimmed.len() == rest.len() {
            return text.len() - rest.len();
        }
        rest = trimmed;
    }
}

/// A call from `{"name", "arguments"}` (or `"parameters"`, as Llama writes); arguments may
/// be JSON text holding an object. `require_arguments` for Llama 3, whose calls are bare
/// objects: an answer that happens to be JSON with a `name` is not a call.
fn tool_call(value: Json, require_arguments: bool) -> Option<ParsedToolCall> {
    let Json::Object(mut call) = value else {
        return None;
    };
    let name = match call.remove("name") {
        Some(Json::String(name)) if !name.is_empty() => name,
        _ => return None,
    };
    let arguments = match call
        .remove("arguments")
        .or_else(|| call.remove("parameters"))
    {
        None if require_arguments => return None,
        None | Some(Json::Null) => Json::Object(Default::default()),
        Some(args @ Json::Object(_)) => args,
        Some(Json::String(text)) => match serde_json::from_str(&text) {
            Ok(args @ Json::Object(_)) => args,
            _ => return None,
        },
        Some(_) => return None,
    };
    Some(ParsedToolCall { name, arguments })
}

/// The JSON value a reply consists of, if it is one: surrounding whitespace and a Markdown
/// code fence (```` ```json ````) around it are tolerated, as models add them unasked.
pub fn extract_json(text: &str) -> Option<Json> {
    let t = text.trim();
    let t = unfence(t).unwrap_or(t);
    serde_json::from_str(t).ok()
}

fn unfence(text: &str) -> Option<&str> {
    let inner = text.strip_prefix("```")?.strip_suffix("```")?;
    // The fence's info string (`json`) runs to the end of its line.
    let (info, body) = inner.split_once('\n')?;
    if !info.trim().chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some(body.trim())
}
