//! The embedding routes in each API's wire format: OpenAI `POST /v1/embeddings`, Ollama
//! `POST /api/embed` and the legacy `POST /api/embeddings`. The work is `embed.rs`'s.

use super::disconnect::Client;
use super::embed::{self, EmbedRequest, Embedded};
use super::error::{Api, ApiError};
use super::route;
use super::AppState;
use crate::duration::KeepAlive;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
pub struct OpenAiEmbed {
    model: String,
    /// A string or a list of strings; token arrays are refused by name.
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
}

/// OpenAI's `input`: text only. Token ids would need the model's tokenizer on the client's
/// side, which it does not have for these models.
fn openai_inputs(input: Value) -> Result<Vec<String>, ApiError> {
    let token_arrays = || {
        ApiError::bad_param(
            "input",
            "token arrays are not supported: send the text (a string or a list of strings)",
        )
    };
    let inputs = match input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Array(_) => Err(token_arrays()),
                _ => Err(ApiError::bad_param(
                    "input",
                    "input must be a string or a list of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad_param(
                "input",
                "input must be a string or a list of strings",
            ))
        }
    };
    if inputs.is_empty() {
        return Err(ApiError::bad_param(
            "input",
            "input must not be an empty list",
        ));
    }
    if let Some(i) = inputs.iter().position(String::is_empty) {
        return Err(ApiError::bad_param(
            "input",
            format!("input {i} is empty: every input needs some text"),
        ));
    }
    Ok(inputs)
}

fn base64_of(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub async fn openai(
    state: web::Data<AppState>,
    http: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (state, http) = (&state, &http);
    route::serve(
        state,
        payload,
        Api::OpenAi,
        |r: &OpenAiEmbed| r.model.clone(),
        |req: OpenAiEmbed| async move {
            let base64 = match req.encoding_format.as_deref() {
                None | Some("float") => false,
                Some("base64") => true,
                Some(other) => {
                    return Err(ApiError::bad_param(
                        "encoding_format",
                        format!("encoding_format must be \"float\" or \"base64\", not \"{other}\""),
                    ))
                }
            };
            let inputs = openai_inputs(req.input)?;
            let served = super::generate::resolve(state, &req.model).await?;
            embed::check_dimensions(req.dimensions, &served, None)?;
            let e = embed::embed(
                state,
                EmbedRequest {
                    model: req.model,
                    inputs,
                    // OpenAI refuses input over the model's limit.
                    truncate: false,
                    param: "input",
                },
                &Client::of(http),
            )
            .await?;
            embed::check_dimensions(req.dimensions, &e.served, e.vectors.first().map(Vec::len))?;
            let data: Vec<Value> = e
                .vectors
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let embedding = if base64 {
                        json!(base64_of(v))
                    } else {
                        json!(v)
                    };
                    json!({"object": "embedding", "index": i, "embedding": embedding})
                })
                .collect();
            Ok(HttpResponse::Ok().json(json!({
                "object": "list",
                "data": data,
                "model": e.served.entry.name,
                "usage": {"prompt_tokens": e.prompt_tokens, "total_tokens": e.prompt_tokens},
            })))
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct OllamaEmbed {
    model: String,
    #[serde(default)]
    input: Option<OneOrMany>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    dimensions: Option<u64>,
    #[serde(default)]
    keep_alive: Option<KeepAlive>,
}

#[derive(Debug, Deserialize)]
pub struct OllamaLegacyEmbed {
    model: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    keep_alive: Option<KeepAlive>,
}

fn nanos(d: std::time::Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Ollama answers an empty input with no embeddings, having loaded the model (clients use
/// it to warm a model up): so does rkserve.
async fn ollama_embed(
    state: &web::Data<AppState>,
    http: &HttpRequest,
    model: String,
    inputs: Vec<String>,
    truncate: bool,
    param: &'static str,
    keep_alive: Option<KeepAlive>,
) -> Result<Embedded, ApiError> {
    let inputs: Vec<String> = inputs.into_iter().filter(|s| !s.is_empty()).collect();
    let e = if inputs.is_empty() {
        let served = super::generate::resolve(state, &model).await?;
        let load_duration = super::generate::ensure_loaded(state, &served).await?;
        Embedded {
            served,
            vectors: Vec::new(),
            prompt_tokens: 0,
            load_duration,
            total_duration: load_duration,
        }
    } else {
        embed::embed(
            state,
            EmbedRequest {
                model,
                inputs,
                truncate,
                param,
            },
            &Client::of(http),
        )
        .await?
    };
    if let Some(k) = keep_alive {
        state.catalog.keep_alive(&e.served.entry.name, k);
    }
    Ok(e)
}

pub async fn ollama(
    state: web::Data<AppState>,
    http: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (state, http) = (&state, &http);
    route::serve(
        state,
        payload,
        Api::Ollama,
        |r: &OllamaEmbed| r.model.clone(),
        |req: OllamaEmbed| async move {
            let inputs = match req.input {
                None => Vec::new(),
                Some(OneOrMany::One(s)) => vec![s],
                Some(OneOrMany::Many(v)) => v,
            };
            if req.dimensions.is_some() {
                let served = super::generate::resolve(state, &req.model).await?;
                embed::check_dimensions(req.dimensions, &served, None)?;
            }
            let e = ollama_embed(
                state,
                http,
                req.model,
                inputs,
                req.truncate.unwrap_or(true),
                "input",
                req.keep_alive,
            )
            .await?;
            embed::check_dimensions(req.dimensions, &e.served, e.vectors.first().map(Vec::len))?;
            Ok(HttpResponse::Ok().json(json!({
                "model": e.served.entry.name,
                "embeddings": e.vectors,
                "total_duration": nanos(e.total_duration),
                "load_duration": nanos(e.load_duration),
                "prompt_eval_count": e.prompt_tokens,
            })))
        },
    )
    .await
}

/// The legacy route: one `prompt`, one `embedding` (normalised too; Ollama's legacy route
/// returns raw vectors, so only lengths differ, never cosine similarity).
pub async fn ollama_legacy(
    state: web::Data<AppState>,
    http: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (state, http) = (&state, &http);
    route::serve(
        state,
        payload,
        Api::Ollama,
        |r: &OllamaLegacyEmbed| r.model.clone(),
        |req: OllamaLegacyEmbed| async move {
            let inputs = req.prompt.into_iter().collect();
            let e = ollama_embed(
                state,
                http,
                req.model,
                inputs,
                true,
                "prompt",
                req.keep_alive,
            )
            .await?;
            let embedding = e.vectors.into_iter().next().unwrap_or_default();
            Ok(HttpResponse::Ok().json(json!({ "embedding": embedding })))
        },
    )
    .await
}
