//! Reading and parsing request bodies ourselves, so that an oversized body, malformed JSON
//! or a wrong type gets the calling API's error shape and names the field at fault.

use super::error::ApiError;
use actix_web::http::StatusCode;
use actix_web::web;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

/// Reads the body, up to `max_body_bytes` and within `body_timeout`: a client that declares
/// a body and never sends it would otherwise hold its connection forever.
pub async fn read(
    payload: web::Payload,
    server: &crate::config::Server,
) -> Result<web::Bytes, ApiError> {
    let timeout = server.body_timeout;
    tokio::time::timeout(timeout, read_all(payload, server.max_body_bytes))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:.0}s",
                    timeout.as_secs_f64()
                ),
            ))
        })
}

async fn read_all(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the limit of {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("malformed JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("invalid request: {inner}"))
        } else {
            ApiError::bad_param(&path, format!("invalid value for '{path}': {inner}"))
        }
    })
}

pub async fn json<T: DeserializeOwned>(
    payload: web::Payload,
    server: &crate::config::Server,
) -> Result<T, ApiError> {
    parse(&read(payload, server).await?)
}
