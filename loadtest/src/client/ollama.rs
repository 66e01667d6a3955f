//! The Ollama API: request bodies and NDJSON lines.

use serde_json::{json, Value};

use super::{error_text, set_prompt, Chunk};
use crate::cli::Endpoint;

pub fn path(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "/api/chat",
        Endpoint::Completions => "/api/generate",
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
        "stream": true,
        "options": {"num_predict": max_tokens, "temperature": temperature},
    });
    set_prompt(&mut body, endpoint, prompt);
    body
}

/// One NDJSON line.
pub fn parse(line: &str) -> Result<Chunk, String> {
    if line.trim().is_empty() {
        return Ok(Chunk::default());
    }
    let v: Value = serde_json::from_str(line).map_err(|e| format!("malformed line ({e})"))?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(error_text(line));
    }
    // Thinking models stream `thinking` beside `content`/`response`: generated tokens too.
    let texts = [
        &v["message"]["content"],
        &v["message"]["thinking"],
        &v["response"],
        &v["thinking"],
    ];
    let done = v["done"].as_bool().unwrap_or(false);
    Ok(Chunk {
        content: texts
            .iter()
            .any(|t| t.as_str().is_some_and(|s| !s.is_empty())),
        finished: done,
        done,
        prompt_tokens: if done {
            v["prompt_eval_count"].as_u64()
        } else {
            None
        },
        completion_tokens: if done { v["eval_count"].as_u64() } else { None },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_and_generate_lines() {
        let tok = parse(r#"{"model":"m","created_at":"x","message":{"role":"assistant","content":"Hi"},"done":false}"#).unwrap();
        assert!(tok.content && !tok.done);
        let gen = parse(r#"{"model":"m","response":" there","done":false}"#).unwrap();
        assert!(gen.content);
        let last = parse(r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":7}"#).unwrap();
        assert!(last.done && !last.content);
        assert_eq!(
            (last.prompt_tokens, last.completion_tokens),
            (Some(26), Some(7))
        );
    }

    #[test]
    fn errors_and_blank_lines() {
        assert_eq!(
            parse(r#"{"error":"model 'x' not found"}"#).unwrap_err(),
            "model 'x' not found"
        );
        assert!(!parse("").unwrap().content);
        assert!(parse("nope").is_err());
    }

    #[test]
    fn bodies() {
        let chat = body(Endpoint::Chat, "m", "hi", 16, 0.0);
        assert_eq!(chat["messages"][0]["content"], "hi");
        assert_eq!(chat["options"]["num_predict"], 16);
        let gen = body(Endpoint::Completions, "m", "hi", 16, 0.0);
        assert_eq!(gen["prompt"], "hi");
    }
}
