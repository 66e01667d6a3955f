//! What the server measured: Prometheus exposition at GET /metrics, and exact latency
//! percentiles as JSON at GET /v1/stats for people without a Prometheus server.

use super::error::{Api, ApiError};
use super::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use scheduler::stats::{Percentiles, Summary};
use serde_json::{json, Value};

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let st = state.clone();
    // Rendering takes locks the runtime threads' telemetry also takes: off the event loop.
    let text = web::block(move || st.exporter.as_ref().map(|e| e.render(&st.catalog))).await;
    match text {
        Ok(Some(body)) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(body),
        Ok(None) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not being recorded in this process",
        )
        .response(Api::OpenAi),
        Err(e) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).response(Api::OpenAi)
        }
    }
}

fn percentiles(p: &Percentiles) -> Value {
    json!({
        "count": p.count,
        "p50": p.p50,
        "p90": p.p90,
        "p99": p.p99,
        "max": p.max,
        "mean": p.mean,
    })
}

fn summary(s: &Summary) -> Value {
    json!({
        "requests": s.requests,
        "failed": s.failed,
        "ttft_seconds": percentiles(&s.ttft),
        "itl_seconds": percentiles(&s.itl),
        "e2e_seconds": percentiles(&s.e2e),
    })
}

/// p50/p90/p99/max of time to first token, inter-token latency and end-to-end latency per
/// model, over the sliding window and since start, from HDR histograms (3 significant digits).
pub async fn latency(state: web::Data<AppState>) -> HttpResponse {
    let scheduler = &state.catalog.scheduler;
    let models: Vec<Value> = scheduler
        .latency_stats()
        .iter()
        .map(|m| {
            json!({
                "model": m.model,
                "window": summary(&m.window),
                "since_start": summary(&m.since_start),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "object": "stats",
        "window_seconds": scheduler.stats_window().as_secs_f64(),
        "models": models,
    }))
}
