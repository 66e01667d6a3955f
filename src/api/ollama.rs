//! The Ollama API: `/api/chat`, `/api/generate` (NDJSON streaming by default), `/api/tags`,
//! `/api/show`, `/api/ps`, `/api/version`, and the model-management calls clients make at
//! start-up. Requests are parsed into the shared [`GenRequest`]; replies are built from frames.

use super::disconnect::Client;
use super::error::{Api, ApiError};
use super::frames::{Finish, Frame, Reply, Shape, ToolCallFrame};
use super::generate::{self, Meta};
use super::request::{self, GenRequest, Prompt, SamplingFields, WireToolCall};
use super::{body, route};
use super::{ndjson, AppState};
pub use crate::duration::KeepAlive;
use actix_web::{web, HttpRequest, HttpResponse};
use chat_template::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

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
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    /// Which tool a `tool` message answers.
    #[serde(default)]
    tool_name: Option<String>,
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
    /// true/false, or a level ("high", "medium", "low") that turns thinking on.
    #[serde(default)]
    think: Option<Value>,
    /// A named prompt cache to put first (rkserve's, from the seed project's API).
    #[serde(default)]
    use_cache: Option<String>,
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
    #[serde(default)]
    think: Option<Value>,
    /// A named prompt cache to put first (rkserve's, from the seed project's API).
    #[serde(default)]
    use_cache: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

fn think(v: Option<&Value>) -> Result<Option<bool>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if matches!(s.as_str(), "high" | "medium" | "low") => Ok(Some(true)),
        Some(_) => Err(ApiError::bad_param(
            "think",
            "think must be true, false, \"high\", \"medium\" or \"low\"",
        )),
    }
}

fn gen_request(
    prompt: Prompt,
    prompt_param: &'static str,
    o: Option<Options>,
    format: Option<&Value>,
    thinking: Option<&Value>,
) -> Result<GenRequest, ApiError> {
    let o = o.unwrap_or_default();
    let mut g = GenRequest::new(prompt, prompt_param);
    g.sampling = SamplingFields {
        temperature: o.temperature,
        top_p: o.top_p,
        top_k: o.top_k,
        repeat_penalty: o.repeat_penalty,
        frequency_penalty: o.frequency_penalty,
        presence_penalty: o.presence_penalty,
    }
    .sampling()?;
    // Ollama: -1 is unlimited, -2 fills the context.
    g.max_tokens = o
        .num_predict
        .filter(|n| *n > 0)
        .map(|n| n.min(u32::MAX as i64) as u32);
    g.stop = o.stop.unwrap_or_default();
    g.format = request::format_from_ollama(format)?;
    g.thinking = think(thinking)?;
    Ok(g)
}

/// The final line's statistics, all six always present (clients drop them all otherwise).
fn stats(meta: &Meta, completion: u32, t: &scheduler::Timings) -> Value {
    let prompt_eval = t.ttft.unwrap_or_default().saturating_sub(t.queue);
    json!({
        "total_duration": nanos(meta.arrival.elapsed() + meta.load_duration),
        "load_duration": nanos(meta.load_duration),
        "prompt_eval_count": meta.prompt_tokens,
        "prompt_eval_duration": nanos(prompt_eval),
        "eval_count": completion,
        "eval_duration": nanos(t.decode),
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Generate,
}

/// Ollama's tool calls carry their arguments as an object.
fn tool_calls_json(calls: &[ToolCallFrame]) -> Value {
    calls
        .iter()
        .map(|c| {
            let args: Value = serde_json::from_str(&c.arguments).unwrap_or(json!({}));
            json!({"function": {"index": c.index, "name": c.name, "arguments": args}})
        })
        .collect()
}

/// Ollama's lines: one per piece of a reply, then a final one with the statistics.
struct Lines {
    kind: Kind,
    meta: Meta,
    unload_after: bool,
    state: web::Data<AppState>,
    keep_alive: Option<KeepAlive>,
}

impl Lines {
    fn line(
        &self,
        text: &str,
        thinking: &str,
        calls: &[ToolCallFrame],
        done: Option<Value>,
    ) -> Value {
        let mut v =
            json!({"model": self.meta.served.entry.name, "created_at": rfc3339(SystemTime::now())});
        match self.kind {
            Kind::Chat => {
                let mut m = json!({"role": "assistant", "content": text});
                if !thinking.is_empty() {
                    m["thinking"] = json!(thinking);
                }
                if !calls.is_empty() {
                    m["tool_calls"] = tool_calls_json(calls);
                }
                v["message"] = m;
            }
            Kind::Generate => {
                v["response"] = json!(text);
                if !thinking.is_empty() {
                    v["thinking"] = json!(thinking);
                }
            }
        }
        v["done"] = json!(done.is_some());
        if let Some(Value::Object(extra)) = done {
            for (k, x) in extra {
                v[k] = x;
            }
        }
        v
    }

    /// The final line; the request's keep_alive applies from here.
    fn done(&self, r: &Reply) -> Value {
        let mut d = stats(&self.meta, r.completion_tokens, &r.timings);
        // Ollama says "stop" after tool calls too; "tool_calls" is OpenAI's word.
        d["done_reason"] = json!(match &r.finish {
            _ if self.unload_after => "unload",
            Finish::ToolCalls => "stop",
            f => f.as_str(),
        });
        if let Finish::Error(e) = &r.finish {
            d["error"] = json!(e.message);
        }
        apply_keep_alive(
            &self.state.catalog,
            &self.meta.served.entry.name,
            self.keep_alive.as_ref(),
        );
        d
    }
}

impl Shape for Lines {
    fn frame(&mut self, frame: Frame) -> Vec<Value> {
        match frame {
            Frame::Text { text, .. } => vec![self.line(&text, "", &[], None)],
            Frame::Reasoning { text, .. } => vec![self.line("", &text, &[], None)],
            Frame::ToolCall { call, .. } => vec![self.line("", "", &[call], None)],
            Frame::End {
                finish,
                completion_tokens,
                timings,
                ..
            } => {
                let r = Reply {
                    finish,
                    completion_tokens,
                    timings,
                    ..Reply::default()
                };
                let done = self.done(&r);
                vec![self.line("", "", &[], Some(done))]
            }
            Frame::Role { .. } | Frame::KeepAlive => Vec::new(),
        }
    }
}

async fn run(
    state: web::Data<AppState>,
    http: &HttpRequest,
    model_query: &str,
    kind: Kind,
    g: GenRequest,
    stream_out: bool,
    keep_alive: Option<KeepAlive>,
) -> Result<HttpResponse, ApiError> {
    let served = generate::resolve(&state, model_query).await?;
    let client = Client::of(http);
    let lines = |meta| Lines {
        kind,
        meta,
        unload_after: keep_alive.as_ref().is_some_and(KeepAlive::is_zero),
        state: state.clone(),
        keep_alive,
    };
    if !stream_out {
        let (meta, mut replies) = generate::complete(&state, served, &g, &client).await?;
        let (r, lines) = (replies.remove(0), lines(meta));
        let done = lines.done(&r);
        return Ok(HttpResponse::Ok().json(lines.line(
            &r.text,
            &r.reasoning,
            &r.tool_calls,
            Some(done),
        )));
    }
    let (meta, frames) = generate::stream(&state, served, &g, &client).await?;
    let lines = lines(meta);
    Ok(ndjson::response(frames, lines))
}

/// What a request's keep_alive asks once it is done: 0 unloads the model once no request
/// holds it, a duration once idle that long, a negative value keeps it; none changes nothing.
fn apply_keep_alive(catalog: &crate::catalog::Catalog, name: &str, keep: Option<&KeepAlive>) {
    if let Some(k) = keep {
        catalog.keep_alive(name, *k);
    }
}

/// A request with no messages or prompt loads (or, with keep_alive 0, unloads) the model.
async fn load_or_unload(
    state: &web::Data<AppState>,
    model: &str,
    keep_alive: Option<KeepAlive>,
    kind: Kind,
) -> Result<HttpResponse, ApiError> {
    let served = generate::resolve(state, model).await?;
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
    match kind {
        Kind::Chat => v["message"] = json!({"role": "assistant", "content": ""}),
        Kind::Generate => v["response"] = json!(""),
    }
    Ok(HttpResponse::Ok().json(v))
}

fn messages(msgs: Vec<Msg>) -> Result<Vec<ChatMessage>, ApiError> {
    msgs.into_iter()
        .enumerate()
        .map(|(i, m)| {
            if m.images.as_ref().is_some_and(|im| !im.is_empty()) {
                return Err(ApiError::bad_param(
                    &format!("messages[{i}].images"),
                    "images are not supported by rkserve",
                ));
            }
            Ok(ChatMessage {
                role: request::role(&m.role, || format!("messages[{i}].role"))?,
                content: m.content,
                tool_calls: m
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(j, c)| c.into_tool_call(|| format!("call_{i}_{j}")))
                    .collect(),
                tool_call_id: None,
                name: m.tool_name,
            })
        })
        .collect()
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
        Api::Ollama,
        |r: &ChatRequest| r.model.clone(),
        |req: ChatRequest| async move {
            let keep_alive = req.keep_alive;
            if req.messages.is_empty() {
                return load_or_unload(state, &req.model, keep_alive, Kind::Chat).await;
            }
            let messages = messages(req.messages)?;
            // A conversation that ends with the assistant's words asks for more of them.
            let continue_final = messages
                .last()
                .is_some_and(|m| m.role == "assistant" && m.tool_calls.is_empty());
            let mut g = gen_request(
                Prompt::Chat {
                    messages,
                    continue_final,
                },
                "messages",
                req.options,
                req.format.as_ref(),
                req.think.as_ref(),
            )?;
            g.tools = request::tools_from(req.tools, None)?;
            g.use_cache = req.use_cache;
            g.tool_choice = request::tool_choice_from(None, !g.tools.is_empty())?;
            run(
                state.clone(),
                http,
                &req.model,
                Kind::Chat,
                g,
                req.stream.unwrap_or(true),
                keep_alive,
            )
            .await
        },
    )
    .await
}

pub async fn generate(
    state: web::Data<AppState>,
    http: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (state, http) = (&state, &http);
    route::serve(
        state,
        payload,
        Api::Ollama,
        |r: &GenerateRequest| r.model.clone(),
        |req: GenerateRequest| async move {
            let keep_alive = req.keep_alive;
            if req.prompt.is_empty() {
                return load_or_unload(state, &req.model, keep_alive, Kind::Generate).await;
            }
            if req.images.as_ref().is_some_and(|i| !i.is_empty()) {
                return Err(ApiError::bad_param(
                    "images",
                    "images are not supported by rkserve",
                ));
            }
            if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::bad_param(
                    "suffix",
                    "suffix (fill-in-the-middle) is not supported by rkserve",
                ));
            }
            let mut g = gen_request(
                Prompt::Text {
                    prompts: vec![req.prompt],
                    raw: req.raw,
                    system: req.system,
                },
                "prompt",
                req.options,
                req.format.as_ref(),
                req.think.as_ref(),
            )?;
            g.use_cache = req.use_cache;
            run(
                state.clone(),
                http,
                &req.model,
                Kind::Generate,
                g,
                req.stream.unwrap_or(true),
                keep_alive,
            )
            .await
        },
    )
    .await
}

/// What Ollama clients look for before offering a feature: every model can be given tools
/// (rendered natively or emulated), and thinking models say so.
fn capabilities(s: &crate::catalog::Served) -> Value {
    let mut c = vec!["completion", "tools"];
    if s.template.thinks() {
        c.push("thinking");
    }
    json!(c)
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

/// Lists the models directory; resolving a model may read its tokenizer, so it runs off the
/// async workers.
pub async fn tags(state: web::Data<AppState>) -> HttpResponse {
    let st = state.clone();
    let models = generate::blocking(move || {
        st.catalog
            .list()
            .iter()
            .map(|e| {
                let d = st
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
            .collect::<Vec<Value>>()
    })
    .await;
    match models {
        Ok(models) => HttpResponse::Ok().json(json!({"models": models})),
        Err(e) => e.response(Api::Ollama),
    }
}

#[derive(Debug, Deserialize)]
pub struct ShowRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

pub async fn show(state: web::Data<AppState>, payload: web::Payload) -> HttpResponse {
    let result = async {
        let req: ShowRequest = body::json(payload, &state.catalog.config().server).await?;
        let query = req
            .model
            .or(req.name)
            .ok_or_else(|| ApiError::bad_request("missing 'model'"))?;
        let s = generate::resolve(&state, &query).await?;
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
            "capabilities": capabilities(&s),
            "modified_at": rfc3339(s.entry.modified),
        })))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| e.response(Api::Ollama))
}

/// The loaded models; resolving one may read its tokenizer, so it runs off the async workers.
pub async fn ps(state: web::Data<AppState>) -> HttpResponse {
    let state = state.clone();
    let models = generate::blocking(move || loaded(&state)).await;
    match models {
        Ok(models) => HttpResponse::Ok().json(json!({"models": models})),
        Err(e) => e.response(Api::Ollama),
    }
}

fn loaded(state: &AppState) -> Vec<Value> {
    state
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
        .collect()
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
