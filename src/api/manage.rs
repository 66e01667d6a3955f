//! Model management: what is loaded, load, unload.

use super::error::{Api, ApiError};
use super::generate::ensure_loaded;
use super::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use scheduler::{InstanceState, ModelStatus};
use serde_json::{json, Value};

pub async fn loaded(state: web::Data<AppState>) -> HttpResponse {
    let models: Vec<Value> = state
        .catalog
        .scheduler
        .snapshot()
        .iter()
        .map(|m| {
            let (status, reason) = match &m.status {
                ModelStatus::Loading => ("loading", None),
                ModelStatus::Ready => ("ready", None),
                ModelStatus::Unavailable(r) => ("unavailable", Some(r.clone())),
            };
            let instances: Vec<Value> = m
                .instances
                .iter()
                .map(|i| {
                    let mut v = match &i.state {
                        InstanceState::Running { slots } => {
                            json!({"state": "running", "busy_slots": slots})
                        }
                        InstanceState::Failed(r) => json!({"state": "failed", "reason": r}),
                        other => json!({"state": other.label()}),
                    };
                    v["n_batch"] = json!(i.n_batch);
                    v["n_batch_fallback"] = json!(i.fallback);
                    v["restarts"] = json!(i.restarts);
                    v["rss_bytes"] = json!(i.rss_bytes);
                    v["peak_rss_bytes"] = json!(i.peak_rss_bytes);
                    v
                })
                .collect();
            json!({
                "id": m.name,
                "status": status,
                "reason": reason,
                "waiting": m.waiting,
                "n_batch": m.n_batch,
                "context_len": m.context_len,
                "busy_slots": m.busy_slots(),
                "instances": instances,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": models}))
}

pub async fn load(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let result = async {
        let served = super::generate::resolve(&state, &id).await?;
        let took = ensure_loaded(&state, &served).await?;
        let snap = state.catalog.scheduler.snapshot();
        match snap
            .iter()
            .find(|m| m.name == served.entry.name)
            .map(|m| &m.status)
        {
            Some(ModelStatus::Unavailable(reason)) => {
                let reason = reason.clone();
                state.catalog.unload(&served.entry.name);
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("model '{}' failed to load: {reason}", served.entry.name),
                ))
            }
            _ => Ok(HttpResponse::Ok().json(json!({
                "id": served.entry.name,
                "status": "loaded",
                "load_seconds": took.as_secs_f64(),
            }))),
        }
    }
    .await;
    result.unwrap_or_else(|e: ApiError| e.response(Api::OpenAi))
}

pub async fn unload(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let result = async {
        let served = super::generate::resolve(&state, &id).await?;
        if state.catalog.unload(&served.entry.name) {
            Ok(HttpResponse::Ok().json(json!({"id": served.entry.name, "status": "unloaded"})))
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model '{}' is not loaded", served.entry.name),
            ))
        }
    }
    .await;
    result.unwrap_or_else(|e: ApiError| e.response(Api::OpenAi))
}
