//! The one validated request both APIs parse into. Everything a generation needs is here in
//! API-neutral terms, so the features built on it (tools, reasoning, structured output) are
//! written once.

use super::error::ApiError;
use chat_template::ChatMessage;
use rkllm::Sampling;
use serde_json::Value;

/// Where the prompt comes from.
#[derive(Clone)]
pub enum Prompt {
    /// A conversation, rendered through the model's chat template.
    Chat {
        messages: Vec<ChatMessage>,
        /// The last (assistant) message is continued, not closed: Open WebUI's "continue".
        continue_final: bool,
    },
    /// One or more texts, each its own choice group. `raw` texts go to the runtime verbatim;
    /// others are wrapped as a user turn (after `system`, if any).
    Text {
        prompts: Vec<String>,
        raw: bool,
        system: Option<String>,
    },
}

/// What the client allows the model to do with the tools it sent.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// No tools in the request, or `tool_choice: "none"`: plain text only.
    None,
    Auto,
    /// The reply must call at least one of the tools.
    Required,
    /// The reply must call this function.
    Named(String),
}

/// The reply's required shape (`response_format`, Ollama `format`).
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema {
        name: String,
        schema: Value,
    },
}

#[derive(Clone)]
pub struct GenRequest {
    pub prompt: Prompt,
    /// The request field the prompt came from, named when it is too long or invalid.
    pub prompt_param: &'static str,
    pub sampling: Sampling,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// Choices per prompt.
    pub n: usize,
    /// OpenAI tool definitions (`{"type": "function", "function": {...}}`).
    pub tools: Vec<Value>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    /// `None`: the model family's default.
    pub thinking: Option<bool>,
    pub format: Format,
    /// A named prompt cache to put in front of the prompt (`use_cache`).
    pub use_cache: Option<String>,
    /// The system text a named cache put first: the prefix other requests share, kept in a
    /// prompt-cache file from its first request.
    pub cache_prefix: Option<String>,
}

impl GenRequest {
    pub fn new(prompt: Prompt, prompt_param: &'static str) -> GenRequest {
        GenRequest {
            prompt,
            prompt_param,
            sampling: Sampling::default(),
            max_tokens: None,
            stop: Vec::new(),
            n: 1,
            tools: Vec::new(),
            tool_choice: ToolChoice::None,
            parallel_tool_calls: true,
            thinking: None,
            format: Format::Text,
            use_cache: None,
            cache_prefix: None,
        }
    }

    /// Checks what the runtime cannot take, so that one bad request is refused alone
    /// instead of failing the run it would share with others.
    pub fn validate(&self) -> Result<(), ApiError> {
        let nul = |s: &str| s.contains('\0');
        const NUL: &str =
            "the text contains a NUL character (\\u0000), which the runtime cannot take";
        match &self.prompt {
            Prompt::Chat { messages, .. } => {
                for (i, m) in messages.iter().enumerate() {
                    if nul(&m.content) {
                        return Err(ApiError::bad_param(&format!("messages[{i}].content"), NUL));
                    }
                    // The other fields a template may print; the content is checked above
                    // and not copied again.
                    let fields = [
                        &m.role,
                        m.name.as_deref().unwrap_or(""),
                        m.tool_call_id.as_deref().unwrap_or(""),
                    ];
                    if fields.into_iter().any(nul) || has_nul(&m.tool_calls) {
                        return Err(ApiError::bad_param(&format!("messages[{i}]"), NUL));
                    }
                }
                if self.tools.iter().any(value_has_nul) {
                    return Err(ApiError::bad_param("tools", NUL));
                }
            }
            Prompt::Text {
                prompts, system, ..
            } => {
                if prompts.iter().any(|p| nul(p)) || system.as_deref().is_some_and(nul) {
                    return Err(ApiError::bad_param(self.prompt_param, NUL));
                }
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::bad_param(
                "stop",
                "stop strings must not be empty",
            ));
        }
        if self.max_tokens == Some(0) {
            return Err(ApiError::bad_param(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        if let ToolChoice::Named(name) = &self.tool_choice {
            if !self.tools.iter().any(|t| tool_name(t) == Some(name)) {
                return Err(ApiError::bad_param(
                    "tool_choice",
                    format!("tool_choice names '{name}', which is not among the tools sent"),
                ));
            }
        }
        if self.tool_choice != ToolChoice::None && self.tools.is_empty() {
            return Err(ApiError::bad_param(
                "tool_choice",
                "tool_choice asks for a tool call but no tools were sent",
            ));
        }
        for (i, t) in self.tools.iter().enumerate() {
            if tool_name(t).is_none() {
                return Err(ApiError::bad_param(
                    &format!("tools[{i}]"),
                    "each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ));
            }
        }
        Ok(())
    }

    /// Replies that must be checked (a JSON shape, a forced tool call) before they are
    /// returned.
    pub fn is_checked(&self) -> bool {
        self.format != Format::Text
            || matches!(
                self.tool_choice,
                ToolChoice::Required | ToolChoice::Named(_)
            )
    }

    /// Whether a reply may be refused and generated again: one that must be checked, or
    /// one whose tool calls must name the request's tools. Such a request's outcome is
    /// counted once it is final, not at each attempt.
    pub fn may_retry(&self) -> bool {
        self.is_checked() || !self.tools.is_empty()
    }

    /// One more attempt at choice group `prompt`: its prompt alone, one choice.
    pub fn retry_of(&self, prompt: usize) -> GenRequest {
        let mut g = self.clone();
        g.n = 1;
        if let Prompt::Text { prompts, .. } = &mut g.prompt {
            *prompts = vec![prompts.swap_remove(prompt)];
        }
        g
    }

    /// The tools the prompt shows the model: only the named one when a function is forced.
    pub fn offered_tools(&self) -> Vec<Value> {
        match &self.tool_choice {
            ToolChoice::None => Vec::new(),
            ToolChoice::Named(name) => self
                .tools
                .iter()
                .filter(|t| tool_name(t) == Some(name))
                .cloned()
                .collect(),
            ToolChoice::Auto | ToolChoice::Required => self.tools.clone(),
        }
    }
}

/// A tool call in a history message, as both APIs send it (Ollama without an id).
#[derive(Debug, serde::Deserialize)]
pub struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Debug, serde::Deserialize)]
pub struct WireFunction {
    name: String,
    /// A JSON text in OpenAI's API, an object in Ollama's (some OpenAI clients send that too).
    #[serde(default)]
    arguments: Option<Value>,
}

impl WireToolCall {
    /// Templates want the arguments as an object, whichever form they came in.
    pub fn into_tool_call(self, default_id: impl FnOnce() -> String) -> chat_template::ToolCall {
        let arguments = match self.function.arguments {
            Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
            Some(v) => v,
            None => serde_json::json!({}),
        };
        chat_template::ToolCall {
            id: self.id.unwrap_or_else(default_id),
            name: self.function.name,
            arguments,
        }
    }
}

/// The function name of an OpenAI tool definition.
pub fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function")?.get("name")?.as_str()
}

/// The shape clients send for tools and choices, shared by both APIs (Ollama takes OpenAI's
/// tool definitions). `functions` is OpenAI's deprecated form of `tools`.
pub fn tools_from(tools: Option<Value>, functions: Option<Value>) -> Result<Vec<Value>, ApiError> {
    let list = |v: Option<Value>, param: &str| -> Result<Vec<Value>, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(ApiError::bad_param(
                param,
                format!("'{param}' must be a list"),
            )),
        }
    };
    let mut tools = list(tools, "tools")?;
    for f in list(functions, "functions")? {
        tools.push(serde_json::json!({"type": "function", "function": f}));
    }
    Ok(tools)
}

/// OpenAI's `tool_choice` (or the legacy `function_call`): a string or a named function.
pub fn tool_choice_from(v: Option<&Value>, has_tools: bool) -> Result<ToolChoice, ApiError> {
    let default = if has_tools {
        ToolChoice::Auto
    } else {
        ToolChoice::None
    };
    let bad = || {
        ApiError::bad_param(
            "tool_choice",
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(default),
            "required" | "any" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| v.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(bad)?;
            Ok(ToolChoice::Named(name.to_string()))
        }
    }
}

/// OpenAI's `response_format` and Ollama's `format`, in one type.
pub fn format_from_openai(v: Option<&Value>) -> Result<Format, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Format::Text);
    };
    let bad = |m: &str| ApiError::bad_param("response_format", m.to_string());
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Format::Text),
        Some("json_object") => Ok(Format::JsonObject),
        Some("json_schema") => {
            let js = v
                .get("json_schema")
                .ok_or_else(|| bad("json_schema format needs a 'json_schema' object"))?;
            let schema = js
                .get("schema")
                .cloned()
                .ok_or_else(|| bad("json_schema needs a 'schema'"))?;
            let name = js
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("response")
                .to_string();
            Ok(Format::JsonSchema { name, schema })
        }
        _ => Err(bad(
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

pub fn format_from_ollama(v: Option<&Value>) -> Result<Format, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Format::Text),
        Some(Value::String(s)) if s.is_empty() => Ok(Format::Text),
        Some(Value::String(s)) if s == "json" => Ok(Format::JsonObject),
        Some(schema @ Value::Object(_)) => Ok(Format::JsonSchema {
            name: "response".into(),
            schema: schema.clone(),
        }),
        Some(_) => Err(ApiError::bad_param(
            "format",
            "format must be \"json\" or a JSON schema object",
        )),
    }
}

/// Sampling from optional request fields over the runtime's defaults.
#[derive(Default)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub repeat_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
}

impl SamplingFields {
    pub fn sampling(&self) -> Result<Sampling, ApiError> {
        let mut s = Sampling::default();
        let ranged = |v: Option<f32>, lo: f32, hi: f32, name: &str| match v {
            Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::bad_param(
                name,
                format!("{name} must be between {lo} and {hi}"),
            )),
            other => Ok(other),
        };
        if let Some(t) = ranged(self.temperature, 0.0, 2.0, "temperature")? {
            s.temperature = t;
        }
        if let Some(p) = ranged(self.top_p, 0.0, 1.0, "top_p")? {
            s.top_p = p;
        }
        if let Some(k) = self.top_k {
            s.top_k = k.max(0);
        }
        if let Some(r) = self.repeat_penalty {
            if !r.is_finite() {
                return Err(ApiError::bad_param(
                    "repeat_penalty",
                    "repeat_penalty must be a finite number",
                ));
            }
            s.repeat_penalty = r;
        }
        if let Some(f) = ranged(self.frequency_penalty, -2.0, 2.0, "frequency_penalty")? {
            s.frequency_penalty = f;
        }
        if let Some(p) = ranged(self.presence_penalty, -2.0, 2.0, "presence_penalty")? {
            s.presence_penalty = p;
        }
        Ok(s)
    }
}

/// Roles both APIs accept; `developer` is OpenAI's newer name for `system`.
pub fn role(role: &str, param: impl FnOnce() -> String) -> Result<String, ApiError> {
    match role {
        "developer" => Ok("system".into()),
        r @ ("system" | "user" | "assistant" | "tool") => Ok(r.to_string()),
        other => Err(ApiError::bad_param(
            &param(),
            format!("unknown role '{other}': use system, user, assistant or tool"),
        )),
    }
}

/// Whether any string in `v` holds a NUL (a tool call's arguments or name), which a
/// template may print into the prompt.
fn has_nul<T: serde::Serialize>(v: &T) -> bool {
    serde_json::to_value(v).is_ok_and(|v| value_has_nul(&v))
}

fn value_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(value_has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || value_has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_choice_forms() {
        assert_eq!(tool_choice_from(None, true).unwrap(), ToolChoice::Auto);
        assert_eq!(tool_choice_from(None, false).unwrap(), ToolChoice::None);
        assert_eq!(
            tool_choice_from(Some(&json!("none")), true).unwrap(),
            ToolChoice::None
        );
        assert_eq!(
            tool_choice_from(Some(&json!("required")), true).unwrap(),
            ToolChoice::Required
        );
        assert_eq!(
            tool_choice_from(
                Some(&json!({"type": "function", "function": {"name": "f"}})),
                true
            )
            .unwrap(),
            ToolChoice::Named("f".into())
        );
        assert!(tool_choice_from(Some(&json!("sometimes")), true).is_err());
    }

    #[test]
    fn a_nul_in_any_message_is_refused_naming_it() {
        let mut g = GenRequest::new(
            Prompt::Chat {
                messages: vec![
                    ChatMessage::new("system", "fine"),
                    ChatMessage::new("user", "bad\0text"),
                ],
                continue_final: false,
            },
            "messages",
        );
        let e = g.validate().unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[1].content"));
        // In a tool result's call id, or in a tool's description: the message, the tools.
        let mut tool = ChatMessage::new("tool", "42");
        tool.tool_call_id = Some("call\0x".into());
        g.prompt = Prompt::Chat {
            messages: vec![ChatMessage::new("user", "fine"), tool],
            continue_final: false,
        };
        assert_eq!(
            g.validate().unwrap_err().param.as_deref(),
            Some("messages[1]")
        );
        g.prompt = Prompt::Chat {
            messages: vec![ChatMessage::new("user", "fine")],
            continue_final: false,
        };
        assert!(g.validate().is_ok());
        g.tools =
            vec![json!({"type": "function", "function": {"name": "f", "description": "a\u{0}b"}})];
        assert_eq!(g.validate().unwrap_err().param.as_deref(), Some("tools"));
        // The text "\u0000" itself, escaped by its writer, is six characters, not a NUL.
        g.tools =
            vec![json!({"type": "function", "function": {"name": "f", "description": "\\u0000"}})];
        assert!(g.validate().is_ok());
    }

    #[test]
    fn a_named_tool_must_be_among_the_tools() {
        let mut g = GenRequest::new(
            Prompt::Text {
                prompts: vec!["x".into()],
                raw: true,
                system: None,
            },
            "prompt",
        );
        g.tools = vec![json!({"type": "function", "function": {"name": "a"}})];
        g.tool_choice = ToolChoice::Named("b".into());
        assert_eq!(
            g.validate().unwrap_err().param.as_deref(),
            Some("tool_choice")
        );
        g.tool_choice = ToolChoice::Named("a".into());
        assert!(g.validate().is_ok());
        assert_eq!(g.offered_tools().len(), 1);
    }

    #[test]
    fn formats() {
        assert_eq!(
            format_from_ollama(Some(&json!("json"))).unwrap(),
            Format::JsonObject
        );
        assert!(matches!(
            format_from_ollama(Some(&json!({"type": "object"}))).unwrap(),
            Format::JsonSchema { .. }
        ));
        assert!(format_from_ollama(Some(&json!(3))).is_err());
        assert_eq!(
            format_from_openai(Some(&json!({"type": "json_object"}))).unwrap(),
            Format::JsonObject
        );
        assert!(format_from_openai(Some(&json!({"type": "json_schema"}))).is_err());
    }
}
