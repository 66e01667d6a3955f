//! `/v1/cache/{model}`: create, list and delete named prompt caches (named_caches.rs).

use super::disconnect::Client;
use super::error::{Api, ApiError};
use super::generate;
use super::named_caches::{not_found, NamedCache};
use super::request::{GenRequest, Prompt};
use super::{route, AppState};
use crate::config::valid_cache_name;
use actix_web::{web, HttpRequest, HttpResponse};
use chat_template::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    cache_name: String,
    prompt: String,
}

fn described(model: &str, name: &str, c: &NamedCache) -> Value {
    json!({
        "object": "prompt_cache",
        "cache_name": name,
        "model": model,
        "prompt_tokens": c.prompt_tokens,
        "created": c.created.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    })
}

/// Creates (or replaces) a cache: the prompt is run once as a system message, so a slot
/// holds it before the first request that names it.
pub async fn create(
    state: web::Data<AppState>,
    http: HttpRequest,
    model: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let (state, http, model) = (&state, &http, model.into_inner());
    let named = model.clone();
    route::serve(
        state,
        payload,
        Api::OpenAi,
        move |_: &Create| named,
        |req: Create| async move {
            if !valid_cache_name(&req.cache_name) {
                return Err(ApiError::bad_param(
                    "cache_name",
                    "cache_name must be 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            if req.prompt.is_empty() {
                return Err(ApiError::bad_param("prompt", "prompt must not be empty"));
            }
            let (name, cache, replaced) = put(
                state,
                &model,
                &req.cache_name,
                req.prompt,
                &Client::of(http),
            )
            .await?;
            let mut body = described(&name, &req.cache_name, &cache);
            body["replaced"] = json!(replaced);
            Ok(HttpResponse::Created().json(body))
        },
    )
    .await
}

/// Runs `prompt` once (saving its prompt-cache file) and keeps it as `cache_name` of `model`:
/// the model's name, the cache, and whether it replaced one.
async fn put(
    state: &web::Data<AppState>,
    model: &str,
    cache_name: &str,
    prompt: String,
    client: &Client,
) -> Result<(String, NamedCache, bool), ApiError> {
    let served = generate::resolve(state, model).await?;
    let mut warm = GenRequest::new(
        Prompt::Chat {
            messages: vec![
                ChatMessage::new("system", prompt.clone()),
                ChatMessage::new("user", "Hi"),
            ],
            continue_final: false,
        },
        "prompt",
    );
    warm.max_tokens = Some(1);
    // Saved to a prompt-cache file now, for the requests that will name it.
    warm.cache_prefix = Some(prompt.clone());
    let (meta, _) = generate::complete(state, served.clone(), &warm, client).await?;
    let name = served.entry.name.clone();
    let cache = NamedCache {
        prompt,
        prompt_tokens: meta.prompt_tokens,
        created: SystemTime::now(),
    };
    let replaced = state.caches.put(&name, cache_name, cache.clone());
    tracing::info!(model = %name, cache = %cache_name, replaced, "prompt cache created");
    Ok((name, cache, replaced))
}

/// The caches the configuration names (`[prompt_cache.named]`), made at start-up so that their
/// prefixes are prefilled and their files saved (or loaded) before the first request. A model
/// that fails to load is logged and its caches are left out; the server serves on.
pub async fn create_configured(state: web::Data<AppState>) {
    let named = state.catalog.config().prompt_cache.named.clone();
    for (model, caches) in named {
        for (cache_name, prompt) in caches {
            if let Err(e) = put(&state, &model, &cache_name, prompt, &Client::default()).await {
                tracing::error!(
                    "prompt_cache.named.{model}.{cache_name}: not created: {}",
                    e.message
                );
            }
        }
    }
}

pub async fn list(state: web::Data<AppState>, model: web::Path<String>) -> HttpResponse {
    let result = async {
        let served = generate::resolve(&state, &model).await?;
        let name = &served.entry.name;
        let data: Vec<Value> = state
            .caches
            .list(name)
            .iter()
            .map(|(n, c)| described(name, n, c))
            .collect();
        Ok::<_, ApiError>(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
    }
    .await;
    result.unwrap_or_else(|e| e.response(Api::OpenAi))
}

pub async fn delete(state: web::Data<AppState>, path: web::Path<(String, String)>) -> HttpResponse {
    let (model, cache_name) = path.into_inner();
    let result = async {
        let served = generate::resolve(&state, &model).await?;
        let name = &served.entry.name;
        if !state.caches.remove(name, &cache_name) {
            return Err(not_found(name, &cache_name));
        }
        Ok(HttpResponse::Ok().json(json!({
            "object": "prompt_cache.deleted",
            "cache_name": cache_name,
            "model": name,
            "deleted": true,
        })))
    }
    .await;
    result.unwrap_or_else(|e| e.response(Api::OpenAi))
}
