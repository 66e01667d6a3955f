//! The one place where new work is admitted or refused while the server drains: generation
//! and model loads get 503 with Retry-After in their API's error shape, and admitted
//! requests are counted until their response body ends (see [`crate::drain`]).

use super::error::ApiError;
use super::{api_of, AppState};
use crate::drain::{Guard, Trigger};
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde_json::json;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Requests that start work a drain must wait for. Listings, metrics and health answer on
/// while draining: routers and operators watch them.
fn is_work(method: &Method, path: &str) -> bool {
    *method == Method::POST
        && (matches!(
            path,
            "/v1/chat/completions" | "/v1/completions" | "/api/chat" | "/api/generate"
        ) || (path.starts_with("/v1/models/") && path.ends_with("/load")))
}

/// A drained server exits soon; the client should go to another board, or come back to
/// this one once it has restarted.
const RETRY_AFTER: Duration = Duration::from_secs(2);

pub async fn admit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !is_work(req.method(), req.path()) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered")
        .clone();
    let Some(guard) = state.drain.admit() else {
        let e = ApiError {
            retry_after: Some(RETRY_AFTER),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is draining for a restart and takes no new requests; \
                 retry on another server",
            )
        };
        let resp = e.refuse(api_of(req.path()), &state.catalog, None);
        return Ok(req.into_response(resp));
    };
    let resp = next.call(req).await?;
    Ok(resp.map_body(|_, body| {
        Tracked {
            body: body.boxed(),
            _guard: guard,
        }
        .boxed()
    }))
}

/// A response body that holds its request's admission until the body is dropped.
struct Tracked {
    body: BoxBody,
    _guard: Guard,
}

impl MessageBody for Tracked {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// `POST /admin/drain`: the drain a SIGTERM starts, for a Kubernetes preStop hook or an
/// operator; the process exits once the work in flight is done. Behind the API key.
pub async fn drain(state: web::Data<AppState>) -> HttpResponse {
    let d = &state.drain;
    let started = d.begin(Trigger::Admin);
    let left = d
        .since()
        .map(|t| d.timeout().saturating_sub(t.elapsed()))
        .unwrap_or_default();
    HttpResponse::Accepted().json(json!({
        "status": "draining",
        "already_draining": !started,
        "in_flight": d.in_flight(),
        "deadline_seconds": left.as_secs_f64(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_generation_and_loads_only() {
        for p in [
            "/v1/chat/completions",
            "/v1/completions",
            "/api/chat",
            "/api/generate",
            "/v1/models/qwen3/load",
        ] {
            assert!(is_work(&Method::POST, p), "{p}");
        }
        for p in [
            "/v1/models/qwen3/unload",
            "/api/show",
            "/admin/drain",
            "/ready",
        ] {
            assert!(!is_work(&Method::POST, p), "{p}");
        }
        assert!(!is_work(&Method::GET, "/v1/chat/completions"));
    }
}
