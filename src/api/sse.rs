//! Server-sent events, as OpenAI streams: `data: {json}` events, comment keep-alives, and a
//! closing `data: [DONE]`.

use super::frames::{encode, Frame, Shape};
use actix_web::HttpResponse;
use futures_util::stream::BoxStream;

fn event(v: &serde_json::Value) -> String {
    format!("data: {v}\n\n")
}

pub fn response(frames: BoxStream<'static, Frame>, shape: impl Shape) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        // nginx buffers proxied responses unless told not to.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(encode(
            frames,
            shape,
            event,
            Some(": keep-alive\n\n"),
            Some("data: [DONE]\n\n"),
        ))
}
