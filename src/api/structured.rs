//! What a reply must be when the request demands a shape: JSON (any object, or valid against
//! a schema) or a tool call. The runtime cannot constrain decoding in a batch, so the prompt
//! asks for the shape ([`super::prompt`]) and the reply is checked here; a reply that passes
//! is normalised (the JSON alone, without fences or prose).

use super::error::ApiError;
use super::frames::Reply;
use super::request::{tool_name, Format, GenRequest, ToolChoice};
use serde_json::Value;

/// Compiles a request's schema up front, so a bad schema is the client's 400 and not a
/// failed generation.
pub fn check_schema(format: &Format, param: &str) -> Result<(), ApiError> {
    if let Format::JsonSchema { schema, .. } = format {
        jsonschema::validator_for(schema)
            .map_err(|e| ApiError::bad_param(param, format!("the JSON schema is invalid: {e}")))?;
    }
    Ok(())
}

/// Ok when the reply meets the request; otherwise why not, for the log and the final error.
pub fn check(g: &GenRequest, reply: &mut Reply) -> Result<(), String> {
    match &g.tool_choice {
        ToolChoice::Required if reply.tool_calls.is_empty() => {
            return Err("tool_choice is \"required\" but the reply called no tool".into())
        }
        ToolChoice::Named(name) => {
            if reply.tool_calls.is_empty() {
                return Err(format!("the reply did not call '{name}'"));
            }
            if let Some(c) = reply.tool_calls.iter().find(|c| &c.name != name) {
                return Err(format!("the reply called '{}' instead of '{name}'", c.name));
            }
        }
        _ => {}
    }
    for c in &reply.tool_calls {
        if !g
            .tools
            .iter()
            .any(|t| tool_name(t) == Some(c.name.as_str()))
        {
            return Err(format!(
                "the reply called '{}', which is not among the tools",
                c.name
            ));
        }
    }
    if !reply.tool_calls.is_empty() {
        return Ok(());
    }
    let value = match &g.format {
        Format::Text => return Ok(()),
        Format::JsonObject | Format::JsonSchema { .. } => {
            chat_template::extract_json(&reply.text).ok_or("the reply is not JSON")?
        }
    };
    match &g.format {
        Format::JsonObject if !value.is_object() => {
            return Err("the reply is JSON but not an object".into())
        }
        Format::JsonSchema { schema, .. } => validate(schema, &value)?,
        _ => {}
    }
    reply.text = value.to_string();
    Ok(())
}

fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    let v = jsonschema::validator_for(schema).map_err(|e| format!("invalid schema: {e}"))?;
    let first = v.iter_errors(value).next().map(|e| {
        format!(
            "the reply does not match the schema at '{}': {e}",
            e.instance_path()
        )
    });
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::frames::ToolCallFrame;
    use crate::api::request::Prompt;
    use serde_json::json;

    fn req(format: Format) -> GenRequest {
        let mut g = GenRequest::new(
            Prompt::Text {
                prompts: vec!["x".into()],
                raw: true,
                system: None,
            },
            "prompt",
        );
        g.format = format;
        g
    }

    fn reply(text: &str) -> Reply {
        Reply {
            text: text.into(),
            ..Reply::default()
        }
    }

    #[test]
    fn json_object_replies_are_normalised_and_prose_is_rejected() {
        let g = req(Format::JsonObject);
        let mut r = reply("```json\n{\"a\": 1}\n```");
        assert!(check(&g, &mut r).is_ok());
        assert_eq!(r.text, r#"{"a":1}"#);
        assert!(check(&g, &mut reply("Sure! Here it is.")).is_err());
        assert!(check(&g, &mut reply("[1, 2]")).is_err());
        assert!(check(&req(Format::Text), &mut reply("Sure!")).is_ok());
    }

    #[test]
    fn schema_replies_must_validate() {
        let schema = json!({"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]});
        let g = req(Format::JsonSchema {
            name: "p".into(),
            schema,
        });
        assert!(check(&g, &mut reply(r#"{"age": 3}"#)).is_ok());
        let err = check(&g, &mut reply(r#"{"age": "three"}"#)).unwrap_err();
        assert!(err.contains("/age"), "{err}");
        assert!(check(&g, &mut reply("{}")).is_err());
        assert!(check_schema(
            &Format::JsonSchema {
                name: "p".into(),
                schema: json!({"type": 5})
            },
            "format"
        )
        .is_err());
    }

    #[test]
    fn forced_tool_calls() {
        let mut g = req(Format::Text);
        g.tools = vec![
            json!({"type": "function", "function": {"name": "a"}}),
            json!({"type": "function", "function": {"name": "b"}}),
        ];
        g.tool_choice = ToolChoice::Required;
        assert!(check(&g, &mut reply("no call")).is_err());
        let call = |name: &str| ToolCallFrame {
            index: 0,
            id: "call_1".into(),
            name: name.into(),
            arguments: "{}".into(),
        };
        let mut r = Reply {
            tool_calls: vec![call("b")],
            ..Reply::default()
        };
        assert!(check(&g, &mut r).is_ok());
        g.tool_choice = ToolChoice::Named("a".into());
        assert!(check(&g, &mut r).is_err());
        r.tool_calls = vec![call("zzz")];
        g.tool_choice = ToolChoice::Auto;
        assert!(check(&g, &mut r).is_err(), "an unknown tool is not a call");
    }
}
