//! The Ollama API: `/api/chat`, `/api/generate` (NDJSON streaming by default), `/api/tags`,
//! `/api/show`, `/api/ps`, `/api/version`.

use super::body;
use super::error::{Api, ApiError};
use super::generate::{self, reason_str, GenRequest};
use super::AppState;
pub use crate::duration::KeepAlive;
use actix_web::{web, HttpResponse};
use chat_template::ChatMessage;
use futures_util::stream::{self, StreamExt};
use scheduler::{Event, FinishReason};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Deserialize, Default)]
pub struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct Msg {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Vec<Msg>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default)]
    keep_alive: Option<KeepAlive>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    model: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default)]
    keep_alive: Option<KeepAlive>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    images: Option<Vec<String>>,
    #[serde(default)]
    suffix: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

fn gen_request(
    prompt: String,
    prompt_param: &'static str,
    o: Option<&Options>,
    format: &Option<Value>,
) -> Result<GenRequest, ApiError> {
    if format.as_ref().is_some_and(|f| !f.is_null() && f != "") {
        return Err(ApiError::bad_request(
            "format (structured output) is not supported by rkserve",
        ));
    }
    let d = Options::default();
    let o = o.unwrap_or(&d);
    Ok(GenRequest {
        prompt,
        prompt_param,
        sampling: generate::sampling(
            o.temperature,
            o.top_p,
            o.top_k,
            o.repeat_penalty,
            o.frequency_penalty,
            o.presence_penalty,
        )?,
        // Ollama: -1 is unlimited, -2 fills the context.
        max_tokens: o
            .num_predict
            .filter(|n| *n > 0)
            .map(|n| n.min(u32::MAX as i64) as u32),
        stop: o.stop.clone().unwrap_or_default(),
        n: 1,
    })
}

/// The final line's statistics, all six always present (clients drop them all otherwise).
fn stats(
    load: Duration,
    arrival: Instant,
    prompt_tokens: usize,
    completion: u32,
    t: &scheduler::Timings,
) -> Value {
    let prompt_eval = t.ttft.unwrap_or_default().saturating_sub(t.queue);
    json!({
        "total_duration": nanos(arrival.elapsed() + load),
        "load_duration": nanos(load),
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": nanos(prompt_eval),
        "eval_count": completion,
        "eval_duration": nanos(t.decode),
    })
}

enum Shape {
    Chat,
    Generate,
}

async fn run(
    state: web::Data<AppState>,
    model_query: String,
    shape: Shape,
    build: impl FnOnce(&crate::catalog::Served) -> Result<GenRequest, ApiError>,
    stream_out: bool,
    keep_alive: Option<KeepAlive>,
) -> Result<HttpResponse, ApiError> {
    let unload_after = keep_alive.as_ref().is_some_and(KeepAlive::is_zero);
    let served = state.catalog.resolve(&model_query)?;
    let g = build(&served)?;
    let mut generation = generate::start(&state, served, g).await?;
    let model = generation.served.entry.name.clone();
    let line = move |text: &str, done: Option<Value>| {
        let mut v = json!({"model": model, "created_at": rfc3339(SystemTime::now())});
        match shape {
            Shape::Chat => v["message"] = json!({"role": "assistant", "content": text}),
            Shape::Generate => v["response"] = json!(text),
        }
        v["done"] = json!(done.is_some());
        if let Some(Value::Object(extra)) = done {
            for (k, x) in extra {
                v[k] = x;
            }
        }
        v
    };
    let finish = {
        let state = state.clone();
        move |name: &str| apply_keep_alive(&state.catalog, name, keep_alive.as_ref())
    };
    let name = generation.served.entry.name.clone();
    if !stream_out {
        let (arrival, load, prompt_tokens) = (
            generation.arrival,
            generation.load_duration,
            generation.prompt_tokens,
        );
        let (mut choices, _) = generation.collect(1).await?;
        let ch = choices.remove(0);
        let mut done = stats(
            load,
            arrival,
            prompt_tokens,
            ch.completion_tokens,
            &ch.timings,
        );
        done["done_reason"] = json!(if unload_after {
            "unload"
        } else {
            reason_str(&ch.reason)
        });
        finish(&name);
        return Ok(HttpResponse::Ok().json(line(&ch.text, Some(done))));
    }
    let first = generation.first().await?;
    let body = stream::unfold(
        (generation, first, false, line, finish, name),
        move |(mut g, mut first, done, line, finish, name)| async move {
            if done {
                return None;
            }
            let next = match first.take() {
                Some(e) => Some(e),
                None => g.events.next().await,
            };
            let (out, done) = match next {
                Some((_, Event::Text { text, .. })) => (line(&text, None), false),
                Some((
                    _,
                    Event::End {
                        reason,
                        completion_tokens,
                        timings,
                        ..
                    },
                )) => {
                    let mut d = stats(
                        g.load_duration,
                        g.arrival,
                        g.prompt_tokens,
                        completion_tokens,
                        &timings,
                    );
                    d["done_reason"] = json!(if unload_after {
                        "unload"
                    } else {
                        reason_str(&reason)
                    });
                    if let FinishReason::Error(failure) = &reason {
                        d["error"] = json!(failure.message);
                    }
                    finish(&name);
                    (line("", Some(d)), true)
                }
                None => return None,
            };
            let mut bytes = out.to_string();
            bytes.push('\n');
            Some((
                Ok::<_, actix_web::Error>(web::Bytes::from(bytes)),
                (g, first, done, line, finish, name),
            ))
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(body))
}

/// What a request's keep_alive asks once it is done: 0 unloads the model now, a duration
/// unloads it once idle that long, a negative value keeps it loaded; none changes nothing.
fn apply_keep_alive(catalog: &crate::catalog::Catalog, name: &str, keep: Option<&KeepAlive>) {
    match keep {
        Some(k) if k.is_zero() => {
            catalog.unload(name);
        }
        Some(k) => catalog.keep_alive(name, *k),
        None => {}
    }
}

/// A request with no messages or prompt loads (or, with keep_alive 0, unloads) the model.
async fn load_or_unload(
    state: &web::Data<AppState>,
    model: &str,
    keep_alive: Option<KeepAlive>,
    shape: Shape,
) -> Result<HttpResponse, ApiError> {
    let served = state.catalog.resolve(model)?;
    let unload = keep_alive.as_ref().is_some_and(KeepAlive::is_zero);
    if !unload {
        generate::ensure_loaded(state, &served).await?;
    }
    apply_keep_alive(&state.catalog, &served.entry.name, keep_alive.as_ref());
    let reason = if unload { "unload" } else { "load" };
    let mut v = json!({
        "model": served.entry.name,
        "created_at": rfc3339(SystemTime::now()),
        "done": true,
        "done_reason": reason,
    });
    match shape {
        Shape::Chat => v["message"] = json!({"role": "assistant", "content": ""}),
        Shape::Generate => v["response"] = json!(""),
    }
    Ok(HttpResponse::Ok().json(v))
}

pub async fn chat(state: web::Data<AppState>, payload: web::Payload) -> HttpResponse {
    let limit = state.catalog.config().server.max_body_bytes;
    let mut named = None;
    let result = async {
        let req: ChatRequest = body::json(payload, limit).await?;
        named = Some(req.model.clone());
        let keep_alive = req.keep_alive;
        if req.messages.is_empty() {
            return load_or_unload(&state, &req.model, keep_alive, Shape::Chat).await;
        }
        if req
            .tools
            .as_ref()
            .is_some_and(|t| !t.is_null() && t != &json!([]))
        {
            return Err(ApiError::bad_request(
                "tool calling is not supported by rkserve yet",
            ));
        }
        if req
            .messages
            .iter()
            .any(|m| m.images.as_ref().is_some_and(|i| !i.is_empty()))
        {
            return Err(ApiError::bad_request("images are not supported by rkserve"));
        }
        let msgs: Vec<ChatMessage> = req
            .messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect();
        let (options, format) = (req.options, req.format);
        run(
            state.clone(),
            req.model,
            Shape::Chat,
            |served| {
                let prompt = served
                    .template
                    .render(&msgs, true)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                gen_request(prompt, "messages", options.as_ref(), &format)
            },
            req.stream.unwrap_or(true),
            keep_alive,
        )
        .await
    }
    .await;
    result.unwrap_or_else(|e| e.refuse(Api::Ollama, &state.catalog, named.as_deref()))
}

pub async fn generate(state: web::Data<AppState>, payload: web::Payload) -> HttpResponse {
    let limit = state.catalog.config().server.max_body_bytes;
    let mut named = None;
    let result = async {
        let req: GenerateRequest = body::json(payload, limit).await?;
        named = Some(req.model.clone());
        let keep_alive = req.keep_alive;
        if req.prompt.is_empty() {
            return load_or_unload(&state, &req.model, keep_alive, Shape::Generate).await;
        }
        if req.images.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(ApiError::bad_request("images are not supported by rkserve"));
        }
        if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request(
                "suffix (fill-in-the-middle) is not supported by rkserve",
            ));
        }
        let (prompt, system, raw, options, format) =
            (req.prompt, req.system, req.raw, req.options, req.format);
        run(
            state.clone(),
            req.model,
            Shape::Generate,
            |served| {
                let text = if raw {
                    prompt
                } else {
                    let mut msgs = Vec::new();
                    if let Some(s) = system {
                        msgs.push(ChatMessage {
                            role: "system".into(),
                            content: s,
                        });
                    }
                    msgs.push(ChatMessage {
                        role: "user".into(),
                        content: prompt,
                    });
                    served
                        .template
                        .render(&msgs, true)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?
                };
                gen_request(text, "prompt", options.as_ref(), &format)
            },
            req.stream.unwrap_or(true),
            keep_alive,
        )
        .await
    }
    .await;
    result.unwrap_or_else(|e| e.refuse(Api::Ollama, &state.catalog, named.as_deref()))
}

fn details(s: &crate::catalog::Served) -> Value {
    let format = match s.entry.kind {
        crate::registry::ModelKind::Gguf => "gguf",
        crate::registry::ModelKind::Rkllm => "rkllm",
        crate::registry::ModelKind::Synthetic => "synthetic",
    };
    let quant = quantization(&s.entry.file_name);
    json!({
        "parent_model": "",
        "format": format,
        "family": s.family,
        "families": [s.family],
        "parameter_size": s.parameters.map(|p| format!("{:.0}M", p as f64 / 1e6)).unwrap_or_default(),
        "quantization_level": quant,
    })
}

/// The quantisation named in a file name: `Q4_1` in `SmolLM2-135M-Instruct.Q4_1.gguf`,
/// `w8a8` in `Qwen3-0.6B-w8a8-opt0-...rkllm`.
fn quantization(file_name: &str) -> String {
    let stem = file_name.rsplit_once('.').map_or(file_name, |(s, _)| s);
    let lower = stem.to_ascii_lowercase();
    let gguf_quant = |p: &str| {
        let p = p.to_ascii_lowercase();
        ["q", "iq", "f16", "f32", "bf16"]
            .iter()
            .any(|k| p.starts_with(k))
            && p.chars().any(|c| c.is_ascii_digit())
    };
    if let Some((_, q)) = stem.rsplit_once('.') {
        if gguf_quant(q) {
            return q.to_string();
        }
    }
    lower
        .split(['-', '_', '.'])
        .find(|seg| {
            let b = seg.as_bytes();
            b.first() == Some(&b'w')
                && seg[1..].split_once('a').is_some_and(|(w, a)| {
                    !w.is_empty()
                        && !a.is_empty()
                        && w.bytes().chain(a.bytes()).all(|c| c.is_ascii_digit())
                })
        })
        .unwrap_or("")
        .to_string()
}

fn digest(e: &crate::registry::ModelEntry) -> String {
    // Stable per file version without hashing gigabytes: path, size and mtime.
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&e.path, e.size_bytes, e.modified).hash(&mut h);
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        h.finish(),
        e.size_bytes,
        h.finish().rotate_left(17),
        e.size_bytes.rotate_left(7)
    )
}

pub async fn tags(state: web::Data<AppState>) -> HttpResponse {
    let models: Vec<Value> = state
        .catalog
        .list()
        .iter()
        .map(|e| {
            let d = state
                .catalog
                .resolve(&e.name)
                .map(|s| details(&s))
                .unwrap_or(json!({}));
            json!({
                "name": e.name,
                "model": e.name,
                "modified_at": rfc3339(e.modified),
                "size": e.size_bytes,
                "digest": digest(e),
                "details": d,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"models": models}))
}

#[derive(Debug, Deserialize)]
pub struct ShowRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

pub async fn show(state: web::Data<AppState>, payload: web::Payload) -> HttpResponse {
    let limit = state.catalog.config().server.max_body_bytes;
    let result = async {
        let req: ShowRequest = body::json(payload, limit).await?;
        let query = req
            .model
            .or(req.name)
            .ok_or_else(|| ApiError::bad_request("missing 'model'"))?;
        let s = state.catalog.resolve(&query)?;
        let mut info = json!({
            "general.architecture": s.family,
            "rkserve.context_length": s.context_len,
            "rkserve.n_batch": s.n_batch,
            "rkserve.instances": s.instances,
            "rkserve.file": s.entry.file_name,
        });
        if let Some(p) = s.parameters {
            info["general.parameter_count"] = json!(p);
        }
        info[format!("{}.context_length", s.family)] = json!(s.context_len);
        Ok(HttpResponse::Ok().json(json!({
            "modelfile": format!("FROM {}\n", s.entry.path.display()),
            "parameters": format!("num_ctx {}\n", s.context_len),
            "template": s.template.source(),
            "details": details(&s),
            "model_info": info,
            "capabilities": ["completion"],
            "modified_at": rfc3339(s.entry.modified),
        })))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| e.response(Api::Ollama))
}

pub async fn ps(state: web::Data<AppState>) -> HttpResponse {
    let models: Vec<Value> = state
        .catalog
        .scheduler
        .snapshot()
        .iter()
        .filter_map(|m| {
            let s = state.catalog.resolve(&m.name).ok()?;
            // Without a keep_alive a model stays loaded until unloaded: a far expiry says so.
            let expires = state
                .catalog
                .expires_at(&m.name)
                .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(10 * 365 * 24 * 3600));
            Some(json!({
                "name": m.name,
                "model": m.name,
                "size": s.entry.size_bytes,
                "digest": digest(&s.entry),
                "details": details(&s),
                "expires_at": rfc3339(expires),
                "size_vram": 0,
                "context_length": s.context_len,
            }))
        })
        .collect();
    HttpResponse::Ok().json(json!({"models": models}))
}

pub async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantization_from_file_names() {
        assert_eq!(
            super::quantization("SmolLM2-135M-Instruct.Q4_1.gguf"),
            "Q4_1"
        );
        assert_eq!(super::quantization("model.Q4_K_M.gguf"), "Q4_K_M");
        assert_eq!(
            super::quantization("Qwen_Qwen3-0.6B-w8a8-opt0-hybrid0-npu3-ctx16384-rk3588.rkllm"),
            "w8a8"
        );
        assert_eq!(super::quantization("zero-delay.toml"), "");
    }
}
