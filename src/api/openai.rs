//! The OpenAI API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`. Requests are
//! parsed into the shared [`GenRequest`]; replies and stream chunks are built from frames.

use super::disconnect::Client;
use super::error::{Api, ApiError};
use super::frames::{Finish, Frame, Reply, Shape};
use super::generate::{self, Meta};
use super::request::{self, GenRequest, Prompt, SamplingFields, WireToolCall};
use super::route;
use super::{sse, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use chat_template::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize, Default)]
pub struct TemplateKwargs {
    #[serde(default)]
    enable_thinking: Option<bool>,
}

/// Chat and text completion requests in one struct (`messages` for one, `prompt` for the
/// other): `#[serde(flatten)]` would lose the path of a bad field. Unknown fields are
/// ignored, as OpenAI clients send extensions (`ignore_eos`, ...) freely.
#[derive(Debug, Deserialize)]
pub struct Common {
    model: String,
    /// A named prompt cache to put first (rkserve's, from the seed project's API).
    #[serde(default)]
    use_cache: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    /// A string or a list of strings; token arrays are refused by name.
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<i32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    repeat_penalty: Option<f32>,
    #[serde(default)]
    stop: Option<OneOrMany>,
    /// Accepted and ignored: RKLLM has no seed (greedy decoding is deterministic).
    #[serde(default)]
    #[allow(dead_code)]
    seed: Option<i64>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    function_call: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
    /// Any value but "none" turns a thinking model's reasoning on.
    #[serde(default)]
    reasoning_effort: Option<String>,
    #[serde(default)]
    chat_template_kwargs: Option<TemplateKwargs>,
    /// vLLM's: continue the final assistant message instead of closing it.
    #[serde(default)]
    continue_final_message: Option<bool>,
    // Features a client would silently miss: refused when asked for.
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    top_logprobs: Option<Value>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    best_of: Option<u32>,
    #[serde(default)]
    suffix: Option<String>,
}

fn refuse_unsupported(c: &Common) -> Result<(), ApiError> {
    let truthy = |v: &Option<Value>| {
        v.as_ref()
            .is_some_and(|v| !v.is_null() && *v != Value::Bool(false) && *v != json!([]))
    };
    if truthy(&c.logprobs) || truthy(&c.top_logprobs) {
        return Err(ApiError::bad_param(
            "logprobs",
            "logprobs are not supported: Rockchip's runtime gives no logits in batched runs",
        ));
    }
    if c.echo == Some(true) {
        return Err(ApiError::bad_param(
            "echo",
            "echo is not supported by rkserve",
        ));
    }
    if c.best_of.is_some_and(|b| b > 1) {
        return Err(ApiError::bad_param(
            "best_of",
            "best_of is not supported by rkserve",
        ));
    }
    if c.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_param(
            "suffix",
            "suffix (fill-in-the-middle) is not supported by rkserve",
        ));
    }
    Ok(())
}

fn gen_request(
    c: &mut Common,
    prompt: Prompt,
    param: &'static str,
) -> Result<GenRequest, ApiError> {
    refuse_unsupported(c)?;
    let mut g = GenRequest::new(prompt, param);
    g.sampling = SamplingFields {
        temperature: c.temperature,
        top_p: c.top_p,
        top_k: c.top_k,
        repeat_penalty: c.repeat_penalty,
        frequency_penalty: c.frequency_penalty,
        presence_penalty: c.presence_penalty,
    }
    .sampling()?;
    g.max_tokens = c.max_completion_tokens.or(c.max_tokens);
    g.stop = match c.stop.take() {
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
        None => vec![],
    };
    g.n = c.n.unwrap_or(1);
    g.tools = request::tools_from(c.tools.take(), c.functions.take())?;
    g.tool_choice = request::tool_choice_from(
        c.tool_choice.as_ref().or(c.function_call.as_ref()),
        !g.tools.is_empty(),
    )?;
    g.parallel_tool_calls = c.parallel_tool_calls.unwrap_or(true);
    g.use_cache = c.use_cache.take();
    g.format = request::format_from_openai(c.response_format.as_ref())?;
    g.thinking = c
        .chat_template_kwargs
        .as_ref()
        .and_then(|k| k.enable_thinking)
        .or(c.reasoning_effort.as_deref().map(|e| e != "none"));
    Ok(g)
}

fn messages(msgs: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    msgs.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(ApiError::bad_param(
                                &format!("messages[{i}].content"),
                                format!(
                                    "content parts of type '{}' are not supported; send text",
                                    p.kind
                                ),
                            ));
                        }
                        text.push_str(p.text.as_deref().unwrap_or(""));
                    }
                    text
                }
            };
            Ok(ChatMessage {
                role: request::role(&m.role, || format!("messages[{i}].role"))?,
                content,
                tool_calls: m
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(j, c)| c.into_tool_call(|| format!("call_{j}")))
                    .collect(),
                tool_call_id: m.tool_call_id,
                name: m.name,
            })
        })
        .collect()
}

/// A text prompt or a list of them; OpenAI also allows token ids, which need the model's
/// exact tokenizer on the client's side: refused by name rather than with a serde message.
fn prompts(v: Value) -> Result<Vec<String>, ApiError> {
    let token_arrays = || {
        ApiError::bad_param(
            "prompt",
            "token-id prompts are not supported by rkserve; send the prompt as text",
        )
    };
    match v {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) if items.is_empty() => {
            Err(ApiError::bad_param("prompt", "prompt must not be empty"))
        }
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Array(_) => Err(token_arrays()),
                _ => Err(ApiError::bad_param(
                    "prompt",
                    "prompt must be a string or a list of strings",
                )),
            })
            .collect(),
        _ => Err(ApiError::bad_param(
            "prompt",
            "prompt must be a string or a list of strings",
        )),
    }
}

pub async fn chat(
    state: web::Data<AppState>,
    http: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (state, http) = (&state, &http);
    route::serve(
        state,
        payload,
        Api::OpenAi,
        |r: &Common| r.model.clone(),
        |mut req: Common| async move {
            let msgs = req
                .messages
                .take()
                .ok_or_else(|| ApiError::bad_param("messages", "missing field 'messages'"))?;
            let messages = messages(msgs)?;
            // A conversation that ends with the assistant's words asks for more of them (Open
            // WebUI's "continue response"), as Ollama does; vLLM's flag can say otherwise.
            let continue_final = req.continue_final_message.unwrap_or_else(|| {
                messages
                    .last()
                    .is_some_and(|m| m.role == "assistant" && m.tool_calls.is_empty())
            });
            let g = gen_request(
                &mut req,
                Prompt::Chat {
                    messages,
                    continue_final,
                },
                "messages",
            )?;
            respond(state, http, &req, g, Kind::Chat).await
        },
    )
    .await
}

pub async fn completions(
    state: web::Data<AppState>,
    http: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (state, http) = (&state, &http);
    route::serve(
        state,
        payload,
        Api::OpenAi,
        |r: &Common| r.model.clone(),
        |mut req: Common| async move {
            let prompts = prompts(
                req.prompt
                    .take()
                    .ok_or_else(|| ApiError::bad_param("prompt", "missing field 'prompt'"))?,
            )?;
            let g = gen_request(
                &mut req,
                Prompt::Text {
                    prompts,
                    raw: true,
                    system: None,
                },
                "prompt",
            )?;
            respond(state, http, &req, g, Kind::Text).await
        },
    )
    .await
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// `cached`: prompt tokens the runtime did not prefill because its slot held them already
/// (OpenAI's `prompt_tokens_details.cached_tokens`); absent when the runtime does not say.
fn usage(prompt: usize, completion: u64, cached: Option<u32>) -> Value {
    let mut u = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt as u64 + completion,
    });
    if let Some(c) = cached {
        u["prompt_tokens_details"] = json!({ "cached_tokens": c });
    }
    u
}

/// Prompt tokens a choice found in its slot's cache: the prompt less what the runtime
/// prefilled for it (its perf stats).
fn cached_tokens(prompt: usize, t: &scheduler::Timings) -> Option<u32> {
    t.prefilled_tokens
        .map(|p| (prompt as u32).saturating_sub(p))
}

fn tool_calls_json(calls: &[super::frames::ToolCallFrame]) -> Value {
    calls
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })
        })
        .collect()
}

fn choice(kind: Kind, i: usize, r: &Reply) -> Value {
    match kind {
        Kind::Chat => {
            let mut message = json!({"role": "assistant", "content": r.text});
            if !r.tool_calls.is_empty() {
                message["tool_calls"] = tool_calls_json(&r.tool_calls);
                if r.text.is_empty() {
                    message["content"] = Value::Null;
                }
            }
            if !r.reasoning.is_empty() {
                message["reasoning_content"] = json!(r.reasoning);
            }
            json!({"index": i, "message": message, "logprobs": null, "finish_reason": r.finish.as_str()})
        }
        Kind::Text => {
            json!({"index": i, "text": r.text, "logprobs": null, "finish_reason": r.finish.as_str()})
        }
    }
}

async fn respond(
    state: &web::Data<AppState>,
    http: &HttpRequest,
    c: &Common,
    g: GenRequest,
    kind: Kind,
) -> Result<HttpResponse, ApiError> {
    let served = generate::resolve(state, &c.model).await?;
    let client = Client::of(http);
    let id = format!(
        "{}-{:x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        super::frames::unique_id()
    );
    let created = super::unix_now();
    if !c.stream {
        let (meta, replies) = generate::complete(state, served, &g, &client).await?;
        let completion: u64 = replies.iter().map(|r| u64::from(r.completion_tokens)).sum();
        let cached = replies
            .iter()
            .find_map(|r| cached_tokens(meta.prompt_tokens, &r.timings));
        let choices: Vec<Value> = replies
            .iter()
            .enumerate()
            .map(|(i, r)| choice(kind, i, r))
            .collect();
        return Ok(HttpResponse::Ok().json(json!({
            "id": id,
            "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": created,
            "model": meta.served.entry.name,
            "system_fingerprint": null,
            "choices": choices,
            "usage": usage(meta.prompt_tokens, completion, cached),
        })));
    }
    let (meta, frames) = generate::stream(state, served, &g, &client).await?;
    let shape = Chunks {
        id,
        created,
        kind,
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        completion: 0,
        cached: None,
        meta,
    };
    Ok(sse::response(frames, shape))
}

/// OpenAI's stream chunks.
struct Chunks {
    id: String,
    created: u64,
    kind: Kind,
    include_usage: bool,
    completion: u64,
    /// The first choice's cached prompt tokens, for the usage chunk.
    cached: Option<u32>,
    meta: Meta,
}

impl Chunks {
    fn chunk(&self, choices: Value) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.meta.served.entry.name,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn delta(&self, choice: usize, delta: Value, finish: Option<&str>) -> Value {
        self.chunk(
            json!([{"index": choice, "delta": delta, "logprobs": null, "finish_reason": finish}]),
        )
    }

    fn text(&self, choice: usize, text: &str, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => self.delta(
                choice,
                if text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                },
                finish,
            ),
            Kind::Text => self.chunk(
                json!([{"index": choice, "text": text, "logprobs": null, "finish_reason": finish}]),
            ),
        }
    }
}

/// Splits a JSON text in two at a character boundary: arguments arrive in pieces, as
/// OpenAI streams them, and clients must append them.
fn halves(s: &str) -> (&str, &str) {
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid += 1;
    }
    s.split_at(mid)
}

impl Shape for Chunks {
    fn frame(&mut self, frame: Frame) -> Vec<Value> {
        match frame {
            Frame::Role { choice } if self.kind == Kind::Chat => {
                vec![self.delta(choice, json!({"role": "assistant", "content": ""}), None)]
            }
            Frame::Text { choice, text } => vec![self.text(choice, &text, None)],
            Frame::Reasoning { choice, text } if self.kind == Kind::Chat => {
                vec![self.delta(choice, json!({"reasoning_content": text}), None)]
            }
            Frame::ToolCall { choice, call } if self.kind == Kind::Chat => {
                let (a, b) = halves(&call.arguments);
                let mut out = vec![self.delta(
                    choice,
                    json!({"tool_calls": [{"index": call.index, "id": call.id, "type": "function",
                        "function": {"name": call.name, "arguments": ""}}]}),
                    None,
                )];
                for piece in [a, b].into_iter().filter(|p| !p.is_empty()) {
                    out.push(self.delta(
                        choice,
                        json!({"tool_calls": [{"index": call.index, "function": {"arguments": piece}}]}),
                        None,
                    ));
                }
                out
            }
            Frame::End {
                choice,
                finish,
                completion_tokens,
                timings,
            } => {
                self.completion += u64::from(completion_tokens);
                if self.cached.is_none() {
                    self.cached = cached_tokens(self.meta.prompt_tokens, &timings);
                }
                let mut out = Vec::new();
                if let Finish::Error(e) = &finish {
                    out.push(e.body(Api::OpenAi));
                }
                out.push(self.text(choice, "", Some(finish.as_str())));
                out
            }
            _ => Vec::new(),
        }
    }

    fn end(&mut self) -> Vec<Value> {
        if !self.include_usage {
            return Vec::new();
        }
        let mut u = self.chunk(json!([]));
        u["usage"] = usage(self.meta.prompt_tokens, self.completion, self.cached);
        vec![u]
    }
}

/// The models directory, scanned off the async workers.
async fn entries(
    state: &web::Data<AppState>,
) -> Result<Vec<crate::registry::ModelEntry>, ApiError> {
    let st = state.clone();
    generate::blocking(move || st.catalog.list()).await
}

pub async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    match entries(&state).await {
        Ok(list) => {
            let data: Vec<Value> = list.iter().map(model_object).collect();
            HttpResponse::Ok().json(json!({"object": "list", "data": data}))
        }
        Err(e) => e.response(Api::OpenAi),
    }
}

fn model_object(e: &crate::registry::ModelEntry) -> Value {
    let created = e
        .modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({"id": e.name, "object": "model", "created": created, "owned_by": "rkserve"})
}

pub async fn get_model(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let entries = match entries(&state).await {
        Ok(list) => list,
        Err(e) => return e.response(Api::OpenAi),
    };
    match crate::registry::find(&entries, &id) {
        Some(e) => HttpResponse::Ok().json(model_object(e)),
        None => ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::new(
                actix_web::http::StatusCode::NOT_FOUND,
                format!("model '{id}' not found"),
            )
        }
        .response(Api::OpenAi),
    }
}
