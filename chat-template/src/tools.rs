//! Tool calling for templates that have no tool format of their own: the conversation is
//! rewritten into plain turns carrying the Hermes format (the one Qwen 2.5/3 are trained on,
//! and the most widely imitated), so any model can at least be asked.

use crate::pyjson::dumps;
use crate::{ChatMessage, ToolCall};
use serde_json::Value as Json;

/// Which syntax a model writes tool calls in, so its output can be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` blocks (Qwen, Hermes and
    /// every emulated template).
    Hermes,
    /// A bare `{"name": …, "parameters": {…}}` object, optionally after `<|python_tag|>`
    /// (Llama 3.1+).
    Llama3Json,
}

/// The system-prompt section that offers tools; the `chatml` built-in writes the same text.
pub(crate) fn hermes_section(tools: &[Json]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        s.push('\n');
        s.push_str(&dumps(tool, None));
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

fn hermes_call(call: &ToolCall) -> String {
    format!(
        "<tool_call>\n{{\"name\": {}, \"arguments\": {}}}\n</tool_call>",
        Json::String(call.name.clone()),
        dumps(&call.arguments, None)
    )
}

/// Where the tool instructions go in an emulated conversation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Merged into the caller's system message, or a new one ahead of the conversation.
    System,
    /// Ahead of the first user message, for templates that reject a system role.
    FirstUser,
}

/// The conversation with tool definitions offered as text and, when `rewrite_history`, its
/// calls and results turned into plain text turns.
pub(crate) fn emulate(
    messages: &[ChatMessage],
    tools: &[Json],
    rewrite_history: bool,
    at: Placement,
) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut prev_was_tool = false;
    for m in messages {
        if !rewrite_history {
            out.push(m.clone());
            continue;
        }
        if m.role == "tool" {
            let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
            match out.last_mut() {
                // Results of calls made together go back together, as Qwen's template does.
                Some(last) if prev_was_tool => {
                    last.content.push('\n');
                    last.content.push_str(&block);
                }
                _ => out.push(ChatMessage::new("user", block)),
            }
            prev_was_tool = true;
            continue;
        }
        prev_was_tool = false;
        let mut m = m.clone();
        if !m.tool_calls.is_empty() {
            let calls: Vec<String> = m.tool_calls.iter().map(hermes_call).collect();
            if !m.content.is_empty() {
                m.content.push('\n');
            }
            m.content.push_str(&calls.join("\n"));
            m.tool_calls.clear();
        }
        out.push(m);
    }
    if tools.is_empty() {
        return out;
    }
    let section = hermes_section(tools);
    match at {
        Placement::System => match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content.push_str("\n\n");
                first.content.push_str(&section);
            }
            _ => out.insert(0, ChatMessage::new("system", section)),
        },
        Placement::FirstUser => match out.iter_mut().find(|m| m.role == "user") {
            Some(user) => user.content = format!("{section}\n\n{}", user.content),
            None => out.insert(0, ChatMessage::new("user", section)),
        },
    }
    out
}
