//! Newline-delimited JSON, as Ollama streams. It has no keep-alive: Ollama's clients parse
//! every line as JSON, so even an empty line would break them.

use super::frames::{encode, Frame, Shape};
use actix_web::HttpResponse;
use futures_util::stream::BoxStream;

fn line(v: &serde_json::Value) -> String {
    format!("{v}\n")
}

pub fn response(frames: BoxStream<'static, Frame>, shape: impl Shape) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(encode(frames, shape, line, None, None))
}
