//! The Ollama model-management calls clients make at start-up (`pull` to make sure a model is
//! there; `delete`, `copy`, `create` from their model menus). rkserve serves the files in its
//! models directory and fetches nothing from a registry, so a pull of a present model
//! succeeds and the rest are refused saying what to do instead.

use super::body;
use super::error::{Api, ApiError};
use super::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
}

pub async fn pull(state: web::Data<AppState>, payload: web::Payload) -> HttpResponse {
    let result = async {
        let req: PullRequest = body::json(payload, &state.catalog.config().server).await?;
        let query = req
            .model
            .or(req.name)
            .ok_or_else(|| ApiError::bad_param("model", "missing 'model'"))?;
        let dir = state.catalog.config().models.dir.clone();
        let catalog = state.clone();
        let q = query.clone();
        let found = web::block(move || catalog.catalog.known_name(&q))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if found.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "model '{query}' is not in the models directory {}; rkserve downloads nothing: \
                     put its .gguf or .rkllm file there",
                    dir.display()
                ),
            ));
        }
        let statuses = [
            json!({"status": "pulling manifest"}),
            json!({"status": "success"}),
        ];
        if req.stream == Some(false) {
            return Ok(HttpResponse::Ok().json(json!({"status": "success"})));
        }
        let body: String = statuses.iter().map(|s| format!("{s}\n")).collect();
        Ok(HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .body(body))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| e.response(Api::Ollama))
}

fn refuse(what: &str, state: &AppState) -> HttpResponse {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{what} is not supported by rkserve: it serves the model files in {}; add, rename or \
             remove files there instead",
            state.catalog.config().models.dir.display()
        ),
    )
    .response(Api::Ollama)
}

pub async fn delete(state: web::Data<AppState>) -> HttpResponse {
    refuse("deleting models", &state)
}

pub async fn copy(state: web::Data<AppState>) -> HttpResponse {
    refuse("copying models", &state)
}

pub async fn create(state: web::Data<AppState>) -> HttpResponse {
    refuse("creating models from a Modelfile", &state)
}
