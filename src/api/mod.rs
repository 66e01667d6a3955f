//! The HTTP front end: routes, authentication, and the service endpoints. Each API's
//! handlers live in their own module and answer errors in their own shape.

mod admission;
mod body;
mod cache_routes;
mod cors;
pub mod disconnect;
mod embed;
mod embed_routes;
pub mod error;
mod frames;
mod generate;
pub mod http_refusals;
mod manage;
pub mod named_caches;
mod ndjson;
mod ollama;
mod ollama_models;
mod openai;
mod prompt;
mod request;
mod request_id;
mod route;
mod sse;
mod stats;
mod structured;

pub use admission::admit;
pub use cache_routes::create_configured as create_configured_caches;
pub use cors::cors;
pub use request_id::trace;

use crate::catalog::Catalog;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use error::{Api, ApiError};
use serde_json::json;
use subtle::ConstantTimeEq;

pub struct AppState {
    pub catalog: Catalog,
    /// None when another recorder was installed first (embedding, tests): /metrics is 503.
    pub exporter: Option<crate::exporter::Exporter>,
    /// Whether new work is still taken, and how much admitted work is unfinished.
    pub drain: std::sync::Arc<crate::drain::Drain>,
    /// Named prompt caches (`POST /v1/cache/{model}`, `use_cache`).
    pub caches: named_caches::NamedCaches,
}

/// The application: every route behind its middleware, for one server worker.
pub fn app(
    state: web::Data<AppState>,
    origins: &[String],
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .app_data(state)
        // Inside auth: a request without a valid key is not work to wait for.
        .wrap(actix_web::middleware::from_fn(admit))
        .wrap(actix_web::middleware::from_fn(auth))
        // Outside auth: a browser's preflight carries no credentials.
        .wrap(cors(origins))
        // Outermost: every line a request causes, refusals included, carries its id.
        .wrap(actix_web::middleware::from_fn(trace))
        .configure(routes)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    // A known path with the wrong method is a 405, not a 404.
    fn resource(path: &'static str, r: actix_web::Route) -> actix_web::Resource {
        web::resource(path)
            .route(r)
            .default_service(web::to(wrong_method))
    }
    cfg.service(
        web::resource("/")
            .route(web::get().to(root))
            .route(web::head().to(root))
            .default_service(web::to(wrong_method)),
    )
    .service(resource("/health", web::get().to(health)))
    .service(resource("/ready", web::get().to(ready)))
    .service(resource("/admin/drain", web::post().to(admission::drain)))
    .service(resource("/openapi.json", web::get().to(openapi)))
    .service(resource("/metrics", web::get().to(stats::metrics)))
    .service(resource("/v1/stats", web::get().to(stats::latency)))
    .service(resource(
        "/v1/chat/completions",
        web::post().to(openai::chat),
    ))
    .service(resource(
        "/v1/completions",
        web::post().to(openai::completions),
    ))
    .service(resource(
        "/v1/embeddings",
        web::post().to(embed_routes::openai),
    ))
    .service(
        web::resource("/v1/cache/{model}")
            .route(web::post().to(cache_routes::create))
            .route(web::get().to(cache_routes::list))
            .default_service(web::to(wrong_method)),
    )
    .service(resource(
        "/v1/cache/{model}/{name}",
        web::delete().to(cache_routes::delete),
    ))
    .service(resource("/v1/models", web::get().to(openai::list_models)))
    .service(resource("/v1/models/loaded", web::get().to(manage::loaded)))
    .service(resource(
        "/v1/models/{id}/load",
        web::post().to(manage::load),
    ))
    .service(resource(
        "/v1/models/{id}/unload",
        web::post().to(manage::unload),
    ))
    .service(resource(
        "/v1/models/{id}",
        web::get().to(openai::get_model),
    ))
    .service(resource("/api/chat", web::post().to(ollama::chat)))
    .service(resource("/api/generate", web::post().to(ollama::generate)))
    .service(resource("/api/embed", web::post().to(embed_routes::ollama)))
    .service(resource(
        "/api/embeddings",
        web::post().to(embed_routes::ollama_legacy),
    ))
    .service(resource("/api/tags", web::get().to(ollama::tags)))
    .service(resource("/api/show", web::post().to(ollama::show)))
    .service(resource("/api/ps", web::get().to(ollama::ps)))
    .service(resource("/api/version", web::get().to(ollama::version)))
    .service(resource("/api/pull", web::post().to(ollama_models::pull)))
    .service(resource(
        "/api/delete",
        web::delete().to(ollama_models::delete),
    ))
    .service(resource("/api/copy", web::post().to(ollama_models::copy)))
    .service(resource(
        "/api/create",
        web::post().to(ollama_models::create),
    ))
    .default_service(web::to(not_found));
}

async fn wrong_method(req: actix_web::HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.path()),
    )
    .response(api_of(req.path()))
}

fn api_of(path: &str) -> Api {
    if path.starts_with("/api/") {
        Api::Ollama
    } else {
        Api::OpenAi
    }
}

async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .response(api_of(req.path()))
}

/// `Authorization: Bearer <key>`, compared in constant time, when keys are configured.
pub async fn auth(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered")
        .clone();
    let server = &state.catalog.config().server;
    let path = req.path();
    let open = server.open_health && matches!(path, "/health" | "/ready" | "/metrics");
    if server.api_keys.is_empty() || open {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110): clients send "Bearer", "bearer", "BEARER".
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key)
        .unwrap_or("")
        .trim();
    // Every key is compared, so the time taken says nothing about which one nearly matched.
    let ok = server.api_keys.iter().fold(0u8, |acc, k| {
        acc | k.as_bytes().ct_eq(presented.as_bytes()).unwrap_u8()
    });
    if ok == 1 {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let api = api_of(path);
    let message = if presented.is_empty() {
        "missing API key: send Authorization: Bearer <key>"
    } else {
        "invalid API key"
    };
    let resp = ApiError::new(StatusCode::UNAUTHORIZED, message).response(api);
    Ok(req.into_response(resp).map_into_right_body())
}

/// The API described for clients and fuzzers; `tests/openapi.rs` checks it against the routes.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Ollama's root answers this text, and the ollama CLI sends `HEAD /` before every command;
/// some clients detect an Ollama server by the exact words.
async fn root() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Ollama is running")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 once any model can serve; 503 with the reasons until then, and while draining (a
/// router's health check then sends new work elsewhere).
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.drain.is_draining() {
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "draining",
            "reason": "the server is draining for a restart",
            "in_flight": state.drain.in_flight(),
        }));
    }
    let snap = state.catalog.scheduler.snapshot();
    let ready: Vec<&str> = snap
        .iter()
        .filter(|m| m.status == scheduler::ModelStatus::Ready)
        .map(|m| m.name.as_str())
        .collect();
    if !ready.is_empty() {
        return HttpResponse::Ok().json(json!({"status": "ready", "models": ready}));
    }
    let reasons: Vec<String> = snap
        .iter()
        .map(|m| match &m.status {
            scheduler::ModelStatus::Loading => format!("{}: loading", m.name),
            scheduler::ModelStatus::Unavailable(r) => format!("{}: {r}", m.name),
            scheduler::ModelStatus::Ready => unreachable!(),
        })
        .collect();
    let reason = if reasons.is_empty() {
        "no model is loaded".to_string()
    } else {
        reasons.join("; ")
    };
    HttpResponse::ServiceUnavailable().json(json!({"status": "unavailable", "reason": reason}))
}

#[cfg(test)]
mod tests {
    use actix_web::{test, App};

    /// Every path and method in /openapi.json is served by a route (with no state, the
    /// handlers answer 500, but never the router's "no route" 404).
    #[actix_web::test]
    async fn every_documented_operation_is_routed() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let app = test::init_service(App::new().configure(super::routes)).await;
        let mut checked = 0;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                let uri = path.replace("{id}", "some-model");
                let req = match method.as_str() {
                    "get" => test::TestRequest::get(),
                    "post" => test::TestRequest::post(),
                    "head" => test::TestRequest::default().method(actix_web::http::Method::HEAD),
                    "delete" => test::TestRequest::delete(),
                    other => panic!("unexpected method {other}"),
                }
                .uri(&uri)
                .to_request();
                let resp = test::call_service(&app, req).await;
                let body = test::read_body(resp).await;
                assert!(
                    !String::from_utf8_lossy(&body).contains("no route for"),
                    "{method} {path} is documented but not routed"
                );
                checked += 1;
            }
        }
        assert!(checked >= 22);
        // And an undocumented path is not routed, so the check above can fail.
        let resp = test::call_service(
            &app,
            test::TestRequest::get().uri("/v2/nothing").to_request(),
        )
        .await;
        assert!(String::from_utf8_lossy(&test::read_body(resp).await).contains("no route for"));
    }
}
