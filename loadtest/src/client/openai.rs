//! The OpenAI API: request bodies and SSE event payloads.

use serde_json::{json, Value};

use super::{error_text, set_prompt, Chunk};
use crate::cli::Endpoint;

pub fn path(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
    }
}

pub fn body(
    endpoint: Endpoint,
    model: &str,
    prompt: &str,
    max_tokens: u32,
    temperature: f64,
) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": true,
        // Without it most servers send no token counts in a stream.
        "stream_options": {"include_usage": true},
    });
    set_prompt(&mut body, endpoint, prompt);
    body
}

/// One SSE `data:` payload.
pub fn parse(data: &str) -> Result<Chunk, String> {
    if data.trim() == "[DONE]" {
        return Ok(Chunk {
            done: true,
            ..Chunk::default()
        });
    }
    let v: Value = serde_json::from_str(data).map_err(|e| format!("malformed event ({e})"))?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(error_text(data));
    }
    let mut chunk = Chunk::default();
    for choice in v["choices"].as_array().into_iter().flatten() {
        // Reasoning models stream their thinking in separate fields (vLLM `reasoning_content`,
        // llama.cpp and others `reasoning`): those are generated tokens too.
        let texts = [
            &choice["delta"]["content"],
            &choice["delta"]["reasoning_content"],
            &choice["delta"]["reasoning"],
            &choice["text"],
        ];
        if texts
            .iter()
            .any(|t| t.as_str().is_some_and(|s| !s.is_empty()))
        {
            chunk.content = true;
        }
        if choice["finish_reason"].is_string() {
            chunk.finished = true;
        }
    }
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        chunk.prompt_tokens = usage["prompt_tokens"].as_u64();
        chunk.completion_tokens = usage["completion_tokens"].as_u64();
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_role_and_usage_chunks() {
        let role = parse(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#).unwrap();
        assert!(!role.content && !role.finished && !role.done);
        let tok =
            parse(r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#)
                .unwrap();
        assert!(tok.content);
        let last =
            parse(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":null}"#)
                .unwrap();
        assert!(last.finished && !last.content && last.completion_tokens.is_none());
        let usage = parse(
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#,
        )
        .unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (Some(9), Some(4))
        );
        assert!(parse("[DONE]").unwrap().done);
    }

    #[test]
    fn completions_and_reasoning_text_count() {
        assert!(
            parse(r#"{"choices":[{"text":" the","finish_reason":null}]}"#)
                .unwrap()
                .content
        );
        assert!(
            parse(r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#)
                .unwrap()
                .content
        );
    }

    #[test]
    fn errors_in_stream() {
        assert_eq!(
            parse(r#"{"error":{"message":"slot cancelled","type":"server_error"}}"#).unwrap_err(),
            "slot cancelled"
        );
        assert!(parse("{not json")
            .unwrap_err()
            .starts_with("malformed event"));
    }

    #[test]
    fn bodies() {
        let chat = body(Endpoint::Chat, "m", "hi", 16, 0.0);
        assert_eq!(chat["messages"][0]["content"], "hi");
        assert_eq!(chat["max_tokens"], 16);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        let comp = body(Endpoint::Completions, "m", "hi", 16, 0.0);
        assert_eq!(comp["prompt"], "hi");
        assert!(comp.get("messages").is_none());
    }
}
