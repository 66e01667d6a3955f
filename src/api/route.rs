//! What every generation and embedding route does around its own work: read and parse the
//! body, run the route, and answer any failure in the calling API's error shape, counted
//! against the model the body named (or none, when the body did not parse).

use super::body;
use super::error::{Api, ApiError};
use super::AppState;
use actix_web::{web, HttpResponse};
use serde::de::DeserializeOwned;
use std::future::Future;

/// Parses the body as `T`, then answers with what `handle` makes of it. `model` says which
/// model a parsed request names.
pub async fn serve<T, M, F, Fut>(
    state: &web::Data<AppState>,
    payload: web::Payload,
    api: Api,
    model: M,
    handle: F,
) -> HttpResponse
where
    T: DeserializeOwned,
    M: FnOnce(&T) -> String,
    F: FnOnce(T) -> Fut,
    Fut: Future<Output = Result<HttpResponse, ApiError>>,
{
    let req: T = match body::json(payload, &state.catalog.config().server).await {
        Ok(r) => r,
        Err(e) => return e.refuse(api, &state.catalog, None),
    };
    let named = model(&req);
    handle(req)
        .await
        .unwrap_or_else(|e| e.refuse(api, &state.catalog, Some(&named)))
}
