//! A request id on every log line a request causes, and on its response. The client's own
//! `X-Request-Id` is kept when it is a sane token (routers and proxies set one to follow a
//! request across hops, as vLLM and nginx do); otherwise one is made. Every line logged while
//! the request is handled, the scheduler's included (it keeps the span of each queued
//! request), carries `request{id=...}`; the access line is the last.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client id kept: enough for a UUID with a prefix, short enough for a log line.
const MAX_LEN: usize = 64;

/// The client's id if it is a plain token; a log line must not be forgeable by the client.
fn from_client(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let sane = !s.is_empty()
        && s.len() <= MAX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    sane.then(|| s.to_string())
}

/// 16 hex digits, random per request: `RandomState` keys are random per process and differ
/// per instance, so no two requests of a process share one.
fn fresh() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    format!("{:016x}", h.finish())
}

pub async fn trace(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(from_client)
        .unwrap_or_else(fresh);
    let value = HeaderValue::from_str(&id).expect("ids are header-safe tokens");
    // Handlers may name the id (in error logs) through the request's own header.
    req.headers_mut().insert(HEADER, value.clone());
    let span = tracing::info_span!("request", id = %id);
    let (method, path, start) = (req.method().clone(), req.path().to_string(), Instant::now());
    let res = next.call(req).instrument(span.clone()).await;
    let ms = start.elapsed().as_millis();
    let _in = span.enter();
    match res {
        Ok(mut res) => {
            res.headers_mut().insert(HEADER, value);
            let status = res.status().as_u16();
            tracing::info!(target: "rkserve::http", "{method} {path} {status} {ms}ms");
            Ok(res)
        }
        Err(e) => {
            let status = e.as_response_error().status_code().as_u16();
            tracing::info!(target: "rkserve::http", "{method} {path} {status} {ms}ms");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_kept_only_when_it_is_a_plain_token() {
        let keep = |s: &str| from_client(&HeaderValue::from_str(s).unwrap());
        assert_eq!(keep("abc-123_x.y:z").as_deref(), Some("abc-123_x.y:z"));
        assert_eq!(keep("a b"), None);
        assert_eq!(keep("x\"}"), None);
        assert_eq!(keep(""), None);
        assert_eq!(keep(&"a".repeat(MAX_LEN + 1)), None);
        assert_ne!(fresh(), fresh());
        assert_eq!(fresh().len(), 16);
    }
}
