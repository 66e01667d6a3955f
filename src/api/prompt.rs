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

/// Stands for the first user message's content when the head of a conversation is rendered:
/// what precedes it there is the same for every conversation that opens with that system
/// message and a user turn.
const USER_CONTENT_MARK: &str = "\u{E000}rkserve-user-content\u{E000}";

/// How much of `full` the conversation's leading system message accounts for, with the
/// template text that opens the user turn after it: the system message and a placeholder
/// user message rendered (with the same tools, which templates put beside it), up to the
/// placeholder, as far as that agrees with the whole rendering. Taking the user turn's
/// opening too means a prompt-cache file holds every token a later request shares with it,
/// so that request prefills only its own question. `shared`: the part of the system text
/// other requests share (a named cache's), when that is not all of it. `None` without a
/// system message, or when the template renders nothing it shares (or refuses the head).
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
    let opened = [first.clone(), ChatMessage::new("user", USER_CONTENT_MARK)];
    let opened_head = template
        .render_opts(&opened, &alone)
        .ok()
        .and_then(|mut text| {
            text.truncate(text.find(USER_CONTENT_MARK)?);
            Some(text)
        });
    let head = match opened_head {
        Some(head) => head,
        // A template that drops or rewrites the user's text: the system message alone.
        None => template
            .render_opts(std::slice::from_ref(&first), &alone)
            .ok()?,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared head of a conversation ends where its first user message's text begins,
    /// for every built-in template: the system text and the user turn's opening are in it,
    /// the question is not.
    #[test]
    fn the_system_prefix_ends_where_the_question_begins() {
        let system = "You are a careful assistant who answers in one line.";
        let question = "What is the capital of France?";
        let messages = [
            ChatMessage::new("system", system),
            ChatMessage::new("user", question),
        ];
        let opts = RenderOptions {
            add_generation_prompt: true,
            ..Default::default()
        };
        for family in ChatTemplate::builtin_families() {
            let t = ChatTemplate::builtin(family).unwrap();
            let full = t.render_opts(&messages, &opts).unwrap();
            let n = system_prefix(&t, &messages, &opts, &full, None)
                .unwrap_or_else(|| panic!("{family}: no prefix in {full:?}"));
            let head = &full[..n];
            assert!(head.contains(system), "{family}: {head:?}");
            assert!(
                full[n..].starts_with(question),
                "{family}: the prefix {head:?} stops before {:?}",
                &full[n..]
            );
        }
    }
}
