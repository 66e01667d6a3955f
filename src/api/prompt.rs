//! From a validated request to the runtime's prompts: the chat template renders the
//! conversation with its tools and thinking switch, instructions steer what the runtime
//! cannot constrain (JSON shapes, forced tool calls), and each prompt gets the parser setup
//! its reply needs.

use super::error::ApiError;
use super::request::{Format, GenRequest, Prompt, ToolChoice};
use crate::catalog::Served;
use chat_template::{ChatMessage, ChatTemplate, ParseConfig, RenderOptions};

/// The prompts of one request (one per text prompt; a chat has one), each rendered.
pub struct Prepared {
    pub prompts: Vec<String>,
    /// Per prompt, the bytes at its start that its system prompt renders to: a prefix other
    /// requests share, worth a prompt-cache file when it recurs.
    pub prefixes: Vec<Option<usize>>,
    /// How every reply of this request is split into content, reasoning and tool calls.
    pub parse: ParseConfig,
}

/// Instructions for what decoding cannot enforce on this runtime (logits are unavailable in
/// batched runs, rknn-llm#406): the reply is then checked, and retried if it misses.
fn steering(g: &GenRequest) -> Option<String> {
    let mut parts = Vec::new();
    match &g.format {
        Format::Text => {}
        Format::JsonObject => parts.push(
            "Respond with a single JSON object and nothing else: no prose, no code fence."
                .to_string(),
        ),
        Format::JsonSchema { schema, .. } => parts.push(format!(
            "Respond with a single JSON object and nothing else (no prose, no code fence) that \
             is valid against this JSON schema:\n{schema}"
        )),
    }
    match &g.tool_choice {
        ToolChoice::Required => {
            parts.push("You must answer by calling one or more of the tools.".to_string())
        }
        ToolChoice::Named(name) => {
            parts.push(format!("You must answer by calling the function '{name}'."))
        }
        ToolChoice::None | ToolChoice::Auto => {}
    }
    if !g.parallel_tool_calls && g.tool_choice != ToolChoice::None {
        parts.push("Call at most one tool.".to_string());
    }
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// Adds `text` to the conversation's system message, or opens the conversation with one.
fn with_system(messages: &mut Vec<ChatMessage>, text: &str) {
    match messages.first_mut() {
        Some(m) if m.role == "system" => {
            m.content = if m.content.is_empty() {
                text.to_string()
            } else {
                format!("{}\n\n{text}", m.content)
            }
        }
        _ => messages.insert(0, ChatMessage::new("system", text)),
    }
}

/// How much of `full` the conversation's leading system message accounts for: that message
/// rendered alone (with the same tools, which templates put beside it), as far as it agrees
/// with the whole rendering. `shared`: the part of the system text other requests share (a
/// named cache's), when that is not all of it. `None` without a system message, or when the
/// template renders nothing it shares (or refuses a conversation of a system message alone).
fn system_prefix(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    opts: &RenderOptions<'_>,
    full: &str,
    shared: Option<&str>,
) -> Option<usize> {
    let first = messages.first().filter(|m| m.role == "system")?;
    let first = match shared {
        Some(text) => ChatMessage::new("system", text),
        None => first.clone(),
    };
    let alone = RenderOptions {
        add_generation_prompt: false,
        continue_final_message: false,
        ..*opts
    };
    let head = template
        .render_opts(std::slice::from_ref(&first), &alone)
        .ok()?;
    let mut n = scheduler::affinity::common_prefix(head.as_bytes(), full.as_bytes());
    while !full.is_char_boundary(n) {
        n -= 1;
    }
    (n > 0).then_some(n)
}

fn render(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    opts: &RenderOptions<'_>,
    param: &str,
) -> Result<String, ApiError> {
    template
        .render_opts(messages, opts)
        .map_err(|e| ApiError::bad_param(param, e.to_string()))
}

pub fn prepare(served: &Served, g: &GenRequest) -> Result<Prepared, ApiError> {
    let template = &served.template;
    let tools = g.offered_tools();
    let steer = steering(g);
    let opts = |continue_final: bool| RenderOptions {
        add_generation_prompt: !continue_final,
        enable_thinking: g.thinking,
        tools: &tools,
        continue_final_message: continue_final,
    };
    let rendered = |messages: &[ChatMessage], continue_final: bool| {
        let o = opts(continue_final);
        let full = render(template, messages, &o, g.prompt_param)?;
        let prefix = system_prefix(template, messages, &o, &full, g.cache_prefix.as_deref());
        Ok::<_, ApiError>((full, prefix))
    };
    let (prompts, prefixes) = match &g.prompt {
        Prompt::Chat {
            messages,
            continue_final,
        } => {
            let mut messages = messages.clone();
            if let Some(s) = &steer {
                with_system(&mut messages, s);
            }
            let (p, prefix) = rendered(&messages, *continue_final)?;
            (vec![p], vec![prefix])
        }
        Prompt::Text {
            prompts, raw: true, ..
        } => {
            let shared = |p: &String| {
                let c = g.cache_prefix.as_deref()?;
                (!c.is_empty() && p.starts_with(c)).then_some(c.len())
            };
            (prompts.clone(), prompts.iter().map(shared).collect())
        }
        Prompt::Text {
            prompts,
            raw: false,
            system,
        } => prompts
            .iter()
            .map(|p| {
                let mut messages = Vec::new();
                if let Some(s) = system {
                    messages.push(ChatMessage::new("system", s.clone()));
                }
                messages.push(ChatMessage::new("user", p.clone()));
                if let Some(s) = &steer {
                    with_system(&mut messages, s);
                }
                rendered(&messages, false)
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip(),
    };
    let parse = ParseConfig {
        tools: (g.tool_choice != ToolChoice::None).then(|| template.tool_syntax()),
        reasoning: template.thinks() && g.thinking != Some(false),
        starts_in_reasoning: prompts
            .first()
            .is_some_and(|p| ChatTemplate::starts_in_reasoning(p)),
    };
    Ok(Prepared {
        prompts,
        prefixes,
        parse,
    })
}
