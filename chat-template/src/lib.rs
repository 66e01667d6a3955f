//! Chat templates: turning a conversation into the prompt text a model was trained on.
//!
//! Models from Hugging Face bring a Jinja template (`tokenizer_config.json`, or
//! `tokenizer.chat_template` in a GGUF); `.rkllm` files do not, so built-in templates cover
//! the families people convert. Both render through one minijinja setup that behaves like
//! the Python `transformers` one: block trimming, Python string and dict methods, and the
//! `raise_exception` / `strftime_now` helpers templates call.
//!
//! Tools are offered in each family's own format where it has one (Hermes-style for ChatML,
//! JSON for Llama 3.1) and in the Hermes format elsewhere; [`OutputParser`] reads the reply
//! back into answer text, reasoning and tool calls.

mod builtin;
mod output;
mod pyjson;
mod strftime;
mod tools;

pub use output::{extract_json, OutputParser, ParseConfig, ParsedToolCall, Piece};
pub use tools::ToolSyntax;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// One turn of a conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// Calls the assistant made in this turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// On a `tool` message: the call this is the result of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// On a `tool` message: the function that produced it (some templates print it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }
}

/// A function call the assistant made, as a template sees it.
///
/// It serializes in the OpenAI shape Hugging Face templates read,
/// `{"id", "type": "function", "function": {"name", "arguments"}}`, with `arguments` an
/// object rather than the JSON text the OpenAI API carries: templates print it with
/// `tojson`, and a string would come out quoted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// A JSON object.
    pub arguments: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionRef<'a>,
}

#[derive(Serialize)]
struct WireFunctionRef<'a> {
    name: &'a str,
    arguments: &'a serde_json::Value,
}

impl Serialize for ToolCall {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireToolCall {
            id: &self.id,
            kind: "function",
            function: WireFunctionRef {
                name: &self.name,
                arguments: &self.arguments,
            },
        }
        .serialize(s)
    }
}

/// Accepts the shape it serializes to, the OpenAI request shape (arguments as JSON text) and
/// a flat `{"id", "name", "arguments"}`.
impl<'de> Deserialize<'de> for ToolCall {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ToolCall, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Nested {
                #[serde(default)]
                id: String,
                function: WireFunction,
            },
            Flat {
                #[serde(default)]
                id: String,
                name: String,
                #[serde(default)]
                arguments: serde_json::Value,
            },
        }
        let (id, name, arguments) = match Wire::deserialize(d)? {
            Wire::Nested { id, function } => (id, function.name, function.arguments),
            Wire::Flat {
                id,
                name,
                arguments,
            } => (id, name, arguments),
        };
        Ok(ToolCall {
            id,
            name,
            arguments: arguments_object(arguments),
        })
    }
}

/// Arguments as an object: JSON text holding one is parsed, absent arguments are `{}`;
/// anything else is kept as it is, for the template to print.
pub(crate) fn arguments_object(arguments: serde_json::Value) -> serde_json::Value {
    match arguments {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        serde_json::Value::String(text) => match serde_json::from_str(&text) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => serde_json::Value::String(text),
        },
        other => other,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("syntax error in chat template: {0}")]
    Syntax(String),
    /// The template called `raise_exception`, which templates use to reject a conversation
    /// they cannot format (e.g. roles that do not alternate): the caller's input is at fault.
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),
    /// Rendering failed for another reason (e.g. an unknown filter or a type error).
    #[error("chat template render error: {0}")]
    Render(String),
    /// `continue_final_message` was asked for, but the conversation does not end with an
    /// assistant message to continue; holds the role it ends with (empty if no messages).
    #[error(
        "continue_final_message needs the conversation to end with an assistant message, not '{0}'"
    )]
    NotContinuable(String),
}

/// How [`ChatTemplate::render_opts`] renders a conversation.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions<'a> {
    /// End with the opening of the assistant's turn, for the model to write it.
    pub add_generation_prompt: bool,
    /// Passed to the template as `enable_thinking`; `None` leaves it undefined, so the
    /// template's default applies (thinking on for Qwen3 and the thinking built-ins).
    pub enable_thinking: Option<bool>,
    /// OpenAI tool definitions, `{"type": "function", "function": {name, description,
    /// parameters}}`.
    pub tools: &'a [serde_json::Value],
    /// The last message is the start of an assistant reply for the model to go on with: the
    /// prompt stops right after its content, with no end of turn and no generation prompt
    /// (`add_generation_prompt` is then ignored).
    pub continue_final_message: bool,
}

/// Stands in after the final message's content to find where it ends in the rendered text;
/// private-use characters, so no template trims or rewrites them and no message holds them.
const CONTINUE_MARK: &str = "\u{F8FF}\u{E000}rkserve-continue\u{E000}\u{F8FF}";

/// Marks a render error as coming from `raise_exception`, so it can be told apart from
/// minijinja's own invalid-operation errors.
#[derive(Debug)]
struct Raised;

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("raised by the template")
    }
}

impl std::error::Error for Raised {}

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg).with_source(Raised))
}

fn strftime_now(fmt: String) -> String {
    strftime::DateTime::now().format(&fmt)
}

fn render_error(e: JinjaError) -> TemplateError {
    let raised = std::error::Error::source(&e).is_some_and(|s| s.is::<Raised>());
    match (raised, e.detail()) {
        (true, Some(msg)) => TemplateError::Raised(msg.to_string()),
        _ => TemplateError::Render(e.to_string()),
    }
}

const NAME: &str = "chat";

/// End-of-turn markers of the families we know; a template that writes one is assumed to
/// end its turns with it.
const TURN_MARKERS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<｜end▁of▁sentence｜>",
    // MiniCPM has no end-of-turn marker; a model that goes on writes the next user turn.
    "<用户>",
];

/// A compiled chat template, ready to render conversations. Cloning is cheap: clones share
/// the compiled template.
#[derive(Debug, Clone)]
pub struct ChatTemplate(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    // Holds the compiled template, so rendering does not parse it again.
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
    family: Option<&'static str>,
}

impl ChatTemplate {
    fn compile(
        source: &str,
        bos: &str,
        eos: &str,
        family: Option<&'static str>,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        // transformers renders with these on, and templates are written for it.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", pyjson::tojson_filter);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(ChatTemplate(Arc::new(Inner {
            env,
            source: source.to_string(),
            bos: bos.to_string(),
            eos: eos.to_string(),
            family,
        })))
    }

    /// A Hugging Face Jinja chat template (as in `tokenizer_config.json` or GGUF
    /// `tokenizer.chat_template`); `bos`/`eos` are the token texts passed to the template as
    /// `bos_token`/`eos_token`. Fails if the template does not compile.
    pub fn from_jinja(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TemplateError> {
        ChatTemplate::compile(source, bos, eos, None)
    }

    /// A built-in template, so `.rkllm` files work without downloading anything. Families:
    /// `chatml` (Qwen 2/2.5/3, SmolLM and many others), `llama3`, `gemma`, `phi3`, `minicpm`
    /// and `deepseek` (DeepSeek-R1-Distill / V2-style `<｜User｜>`/`<｜Assistant｜>`).
    pub fn builtin(family: &str) -> Option<ChatTemplate> {
        let b = builtin::BUILTINS.iter().find(|b| b.name == family)?;
        let t = ChatTemplate::compile(b.source, b.bos, b.eos, Some(b.name))
            .expect("built-in chat templates compile");
        Some(t)
    }

    /// The names [`ChatTemplate::builtin`] accepts.
    pub fn builtin_families() -> impl Iterator<Item = &'static str> {
        builtin::BUILTINS.iter().map(|b| b.name)
    }

    /// Guesses the built-in family from a model file name or friendly name
    /// (case-insensitive), e.g. `Qwen_Qwen3-0.6B-w8a8-…-rk3588.rkllm` → `chatml`.
    pub fn guess_family(model_name: &str) -> Option<&'static str> {
        let name: String = model_name
            .to_lowercase()
            .chars()
            .map(|c| if c == '_' || c == ' ' { '-' } else { c })
            .collect();
        let has = |needles: &[&str]| needles.iter().any(|n| name.contains(n));
        // Order matters: distilled models name their base family too
        // ("DeepSeek-R1-Distill-Qwen", "DeepSeek-R1-Distill-Llama") but use DeepSeek's format.
        if has(&["deepseek"]) {
            Some("deepseek")
        } else if has(&[
            "minicpm3",
            "minicpm-3",
            "minicpm4",
            "minicpm-4",
            "minicpm-v",
        ]) {
            // MiniCPM 3 and 4 moved to ChatML; only the first generations use <用户>/<AI>.
            Some("chatml")
        } else if has(&["minicpm"]) {
            Some("minicpm")
        } else if has(&["llama-3", "llama3"]) {
            Some("llama3")
        } else if has(&["gemma"]) {
            Some("gemma")
        } else if has(&["phi-3", "phi3", "phi-4", "phi4"]) {
            Some("phi3")
        } else if has(&["qwen", "qwq", "smollm"]) {
            Some("chatml")
        } else {
            None
        }
    }

    /// Renders a conversation (all turns, in full), ending with the assistant's turn opening
    /// when `add_generation_prompt`. Thinking models keep their default (thinking on).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with(messages, add_generation_prompt, true)
    }

    /// [`ChatTemplate::render`] with `enable_thinking` passed to the template; templates of
    /// thinking models (Qwen3, and the `chatml`/`deepseek` built-ins) then open the
    /// assistant's turn with an empty think block.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: bool,
    ) -> Result<String, TemplateError> {
        self.render_opts(
            messages,
            &RenderOptions {
                add_generation_prompt,
                enable_thinking: Some(enable_thinking),
                ..Default::default()
            },
        )
    }

    /// Renders a conversation with tools, thinking control or a reply to continue. A
    /// template that never mentions `tools` is given them, and the conversation's tool calls
    /// and results, as Hermes-format text in ordinary turns (see
    /// [`ChatTemplate::renders_tools_natively`]).
    pub fn render_opts(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        if opts.continue_final_message {
            match messages.last() {
                Some(m) if m.role == "assistant" => {}
                last => {
                    let role = last.map(|m| m.role.clone()).unwrap_or_default();
                    return Err(TemplateError::NotContinuable(role));
                }
            }
        }
        let src = &self.0.source;
        // A template may lay out earlier calls and results without offering tools itself.
        let history_native = src.contains("tools") || src.contains("tool_call");
        let rewrite_history = !history_native
            && messages
                .iter()
                .any(|m| m.role == "tool" || !m.tool_calls.is_empty());
        let offer: &[serde_json::Value] = if self.renders_tools_natively() {
            &[]
        } else {
            opts.tools
        };
        if offer.is_empty() && !rewrite_history {
            return self.render_final(messages, opts);
        }
        let emulate = |at| tools::emulate(messages, offer, rewrite_history, at);
        match self.render_final(&emulate(tools::Placement::System), opts) {
            // Templates without a system role (Gemma's on Hugging Face) raise at one; they
            // get the instructions in the first user turn instead.
            Err(TemplateError::Raised(_))
                if !offer.is_empty() && messages.first().is_none_or(|m| m.role != "system") =>
            {
                self.render_final(&emulate(tools::Placement::FirstUser), opts)
            }
            other => other,
        }
    }

    fn render_final(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        if !opts.continue_final_message {
            return self.render_context(messages, opts.add_generation_prompt, opts);
        }
        let mut marked = messages.to_vec();
        if let Some(last) = marked.last_mut() {
            last.content.push_str(CONTINUE_MARK);
        }
        let out = self.render_context(&marked, false, opts)?;
        match out.find(CONTINUE_MARK) {
            Some(end) => Ok(out[..end].to_string()),
            None => Err(TemplateError::Render(
                "continue_final_message: the template does not print the final message's content"
                    .to_string(),
            )),
        }
    }

    fn render_context(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        let template = self.0.env.get_template(NAME).map_err(render_error)?;
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", add_generation_prompt.into());
        ctx.insert("bos_token", self.0.bos.as_str().into());
        ctx.insert("eos_token", self.0.eos.as_str().into());
        if let Some(on) = opts.enable_thinking {
            ctx.insert("enable_thinking", on.into());
        }
        // transformers passes `tools=None` when there are none; templates test `if tools`.
        let tools = if opts.tools.is_empty() {
            Value::from(())
        } else {
            Value::from_serialize(opts.tools)
        };
        ctx.insert("tools", tools);
        template.render(ctx).map_err(render_error)
    }

    /// Whether the template lays out tools, tool calls and tool results itself; those that
    /// do not have them emulated in Hermes format by [`ChatTemplate::render_opts`].
    pub fn renders_tools_natively(&self) -> bool {
        self.0.source.contains("tools")
    }

    /// The syntax the model is asked to write tool calls in, for [`OutputParser`].
    pub fn tool_syntax(&self) -> ToolSyntax {
        let src = &self.0.source;
        let llama3 = match self.0.family {
            Some(family) => family == "llama3",
            None => {
                self.renders_tools_natively()
                    && src.contains("<|eot_id|>")
                    && (src.contains("<|python_tag|>")
                        || src.contains("dictionary of argument name"))
            }
        };
        if llama3 {
            ToolSyntax::Llama3Json
        } else {
            ToolSyntax::Hermes
        }
    }

    /// Whether the model may open its reply with a `<think>` block (Qwen3, QwQ, DeepSeek-R1
    /// and their distills), which [`OutputParser`] should split off as reasoning.
    pub fn thinks(&self) -> bool {
        self.0.source.contains("<think>")
    }

    /// Whether a rendered prompt already opened the think block, as R1-distill templates do
    /// (`<｜Assistant｜><think>\n`), so the model's output starts inside its reasoning.
    pub fn starts_in_reasoning(rendered_prompt: &str) -> bool {
        rendered_prompt.trim_end().ends_with("<think>")
    }

    /// End-of-turn strings a server should stop at besides the EOS token: the EOS text
    /// (for runtimes that return special tokens as text) and every known turn marker the
    /// template writes, e.g. `<|im_end|>` for ChatML or `<end_of_turn>` for Gemma.
    pub fn stop_strings(&self) -> Vec<String> {
        let mut stops: Vec<String> = Vec::new();
        if !self.0.eos.is_empty() {
            stops.push(self.0.eos.clone());
        }
        for marker in TURN_MARKERS {
            if self.0.source.contains(marker) && !stops.iter().any(|s| s == marker) {
                stops.push(marker.to_string());
            }
        }
        stops
    }

    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// The built-in family name; `None` for a template from [`ChatTemplate::from_jinja`].
    pub fn family(&self) -> Option<&str> {
        self.0.family
    }

    /// The text passed to the template as `bos_token`.
    pub fn bos_token(&self) -> &str {
        &self.0.bos
    }

    /// The text passed to the template as `eos_token`.
    pub fn eos_token(&self) -> &str {
        &self.0.eos
    }
}
