//! The OpenAI API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

use super::body;
use super::error::{Api, ApiError};
use super::generate::{self, reason_str, unix_now, GenRequest, Generation};
use super::AppState;
use actix_web::{web, HttpResponse};
use chat_template::ChatMessage;
use futures_util::stream::{self, StreamExt};
use scheduler::{Event, FinishReason};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
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
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Chat and text completion requests in one struct (`messages` for one, `prompt` for the
/// other): `#[serde(flatten)]` would lose the path of a bad field. Unknown fields are
/// ignored, as OpenAI clients send extensions (`ignore_eos`, ...) freely.
#[derive(Debug, Deserialize)]
pub struct Common {
    model: String,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<OneOrMany>,
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
    // Features a client would silently miss: refused when asked for.
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    top_logprobs: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
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
            "logprobs are not supported by rkserve",
        ));
    }
    if truthy(&c.tools) || truthy(&c.functions) {
        return Err(ApiError::bad_param(
            "tools",
            "tool calling is not supported by rkserve yet",
        ));
    }
    if let Some(f) = &c.response_format {
        if f.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "text")
        {
            return Err(ApiError::bad_param(
                "response_format",
                "structured output (json_object, json_schema) is not supported by rkserve",
            ));
        }
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
    c: &Common,
    prompt: String,
    prompt_param: &'static str,
) -> Result<GenRequest, ApiError> {
    refuse_unsupported(c)?;
    if c.max_completion_tokens.or(c.max_tokens) == Some(0) {
        return Err(ApiError::bad_param(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    Ok(GenRequest {
        prompt,
        prompt_param,
        sampling: generate::sampling(
            c.temperature,
            c.top_p,
            c.top_k,
            c.repeat_penalty,
            c.frequency_penalty,
            c.presence_penalty,
        )?,
        max_tokens: c.max_completion_tokens.or(c.max_tokens),
        stop: match &c.stop {
            Some(OneOrMany::One(s)) => vec![s.clone()],
            Some(OneOrMany::Many(v)) => v.clone(),
            None => vec![],
        },
        n: c.n.unwrap_or(1),
    })
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
            let role = match m.role.as_str() {
                "developer" => "system".to_string(),
                r @ ("system" | "user" | "assistant" | "tool") => r.to_string(),
                other => {
                    return Err(ApiError::bad_param(
                        &format!("messages[{i}].role"),
                        format!("unknown role '{other}'"),
                    ))
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

pub async fn chat(state: web::Data<AppState>, payload: web::Payload) -> HttpResponse {
    let limit = state.catalog.config().server.max_body_bytes;
    let mut named = None;
    let result = async {
        let mut req: Common = body::json(payload, limit).await?;
        named = Some(req.model.clone());
        let msgs = req
            .messages
            .take()
            .ok_or_else(|| ApiError::bad_param("messages", "missing field 'messages'"))?;
        let served = state.catalog.resolve(&req.model)?;
        let msgs = messages(msgs)?;
        let prompt = served
            .template
            .render(&msgs, true)
            .map_err(|e| ApiError::bad_param("messages", e.to_string()))?;
        let g = gen_request(&req, prompt, "messages")?;
        respond(&state, served, g, &req, Kind::Chat).await
    }
    .await;
    result.unwrap_or_else(|e| e.refuse(Api::OpenAi, &state.catalog, named.as_deref()))
}

pub async fn completions(state: web::Data<AppState>, payload: web::Payload) -> HttpResponse {
    let limit = state.catalog.config().server.max_body_bytes;
    let mut named = None;
    let result = async {
        let mut req: Common = body::json(payload, limit).await?;
        named = Some(req.model.clone());
        let prompts = req
            .prompt
            .take()
            .ok_or_else(|| ApiError::bad_param("prompt", "missing field 'prompt'"))?
            .into_vec();
        if prompts.len() != 1 {
            return Err(ApiError::bad_param(
                "prompt",
                "send exactly one prompt per request",
            ));
        }
        let served = state.catalog.resolve(&req.model)?;
        let g = gen_request(
            &req,
            prompts.into_iter().next().unwrap_or_default(),
            "prompt",
        )?;
        respond(&state, served, g, &req, Kind::Text).await
    }
    .await;
    result.unwrap_or_else(|e| e.refuse(Api::OpenAi, &state.catalog, named.as_deref()))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

fn usage(prompt: usize, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt as u64 + completion,
    })
}

async fn respond(
    state: &web::Data<AppState>,
    served: std::sync::Arc<crate::catalog::Served>,
    g: GenRequest,
    c: &Common,
    kind: Kind,
) -> Result<HttpResponse, ApiError> {
    let n = g.n;
    let mut generation = generate::start(state, served, g).await?;
    let id = format!(
        "{}-{:x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        rand_id()
    );
    let created = unix_now();
    let model = generation.served.entry.name.clone();
    if !c.stream {
        let (choices, generation) = generation.collect(n).await?;
        let completion: u64 = choices.iter().map(|c| u64::from(c.completion_tokens)).sum();
        let choices: Vec<Value> = choices
            .into_iter()
            .enumerate()
            .map(|(i, ch)| match kind {
                Kind::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": ch.text},
                    "logprobs": null,
                    "finish_reason": reason_str(&ch.reason),
                }),
                Kind::Text => json!({
                    "index": i,
                    "text": ch.text,
                    "logprobs": null,
                    "finish_reason": reason_str(&ch.reason),
                }),
            })
            .collect();
        return Ok(HttpResponse::Ok().json(json!({
            "id": id,
            "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": created,
            "model": model,
            "system_fingerprint": null,
            "choices": choices,
            "usage": usage(generation.prompt_tokens, completion),
        })));
    }

    let include_usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let first = generation.first().await?;
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choices: Value| {
        let mut v = json!({
            "id": id,
            "object": object,
            "created": created,
            "model": model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    };
    let choice = move |i: usize, text: Option<&str>, role: bool, finish: Option<&str>| match kind {
        Kind::Chat => {
            let mut delta = json!({});
            if role {
                delta["role"] = json!("assistant");
            }
            if let Some(t) = text {
                delta["content"] = json!(t);
            }
            json!([{"index": i, "delta": delta, "logprobs": null, "finish_reason": finish}])
        }
        Kind::Text => {
            json!([{"index": i, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}])
        }
    };

    struct S<F, G> {
        generation: Generation,
        pending: std::collections::VecDeque<String>,
        first: Option<(usize, Event)>,
        completion: u64,
        open: usize,
        done: bool,
        chunk: F,
        choice: G,
        include_usage: bool,
    }
    let mut pending = std::collections::VecDeque::new();
    if kind == Kind::Chat {
        for i in 0..n {
            pending.push_back(sse(&chunk(choice(i, Some(""), true, None))));
        }
    }
    let s = S {
        generation,
        pending,
        first,
        completion: 0,
        open: n,
        done: false,
        chunk,
        choice,
        include_usage,
    };
    let body = stream::unfold(s, |mut s| async move {
        loop {
            if let Some(line) = s.pending.pop_front() {
                return Some((Ok::<_, actix_web::Error>(web::Bytes::from(line)), s));
            }
            if s.done {
                return None;
            }
            let next = match s.first.take() {
                Some(e) => Some(e),
                None => {
                    match tokio::time::timeout(Duration::from_secs(15), s.generation.events.next())
                        .await
                    {
                        Ok(e) => e,
                        // Proxies close idle connections; a comment line keeps this one open.
                        Err(_) => {
                            s.pending.push_back(": keep-alive\n\n".into());
                            continue;
                        }
                    }
                }
            };
            match next {
                Some((i, Event::Text { text, .. })) => {
                    s.pending
                        .push_back(sse(&(s.chunk)((s.choice)(i, Some(&text), false, None))));
                }
                Some((
                    i,
                    Event::End {
                        reason,
                        completion_tokens,
                        ..
                    },
                )) => {
                    s.completion += u64::from(completion_tokens);
                    if let FinishReason::Error(failure) = &reason {
                        s.pending.push_back(sse(&json!({"error": {
                            "message": failure.message, "type": "server_error", "param": null, "code": null
                        }})));
                    }
                    s.pending.push_back(sse(&(s.chunk)((s.choice)(
                        i,
                        None,
                        false,
                        Some(reason_str(&reason)),
                    ))));
                    s.open -= 1;
                }
                None => s.open = 0,
            }
            if s.open == 0 {
                if s.include_usage {
                    let mut u = (s.chunk)(json!([]));
                    u["usage"] = usage(s.generation.prompt_tokens, s.completion);
                    s.pending.push_back(sse(&u));
                }
                s.pending.push_back("data: [DONE]\n\n".into());
                s.done = true;
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(40)
}

pub async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    let data: Vec<Value> = state.catalog.list().iter().map(model_object).collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

fn model_object(e: &crate::registry::ModelEntry) -> Value {
    let created = e
        .modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({"id": e.name, "object": "model", "created": created, "owned_by": "rkserve"})
}

pub async fn get_model(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let entries = state.catalog.list();
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
