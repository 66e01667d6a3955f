use chat_template::{
    ChatMessage, ChatTemplate, RenderOptions, TemplateError, ToolCall, ToolSyntax,
};
use serde_json::{json, Value};

fn weather_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather <now>",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
        }
    })
}

fn call(id: &str, city: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: "get_weather".into(),
        arguments: json!({"city": city}),
    }
}

fn tool_result(id: &str, content: &str) -> ChatMessage {
    ChatMessage {
        tool_call_id: Some(id.into()),
        ..ChatMessage::new("tool", content)
    }
}

/// A user question, two calls made together, their results.
fn tool_conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Weather in Paris and Rome?"),
        ChatMessage {
            tool_calls: vec![call("a", "Paris"), call("b", "Rome")],
            ..ChatMessage::new("assistant", "")
        },
        tool_result("a", "18C"),
        tool_result("b", "25C"),
    ]
}

fn render(t: &ChatTemplate, messages: &[ChatMessage], tools: &[Value]) -> String {
    t.render_opts(
        messages,
        &RenderOptions {
            add_generation_prompt: true,
            tools,
            ..Default::default()
        },
    )
    .unwrap()
}

// In the order the client sent it, as transformers' tojson (no sort_keys) prints it.
const TOOL_JSON: &str = r#"{"type": "function", "function": {"name": "get_weather", "description": "Weather <now>", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}"#;

fn hermes_section() -> String {
    format!(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
         {TOOL_JSON}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
    )
}

#[test]
fn chatml_renders_tools_calls_and_results_like_qwen() {
    let t = ChatTemplate::builtin("chatml").unwrap();
    let tools = [weather_tool()];
    assert_eq!(
        render(&t, &tool_conversation(), &tools),
        format!(
            "<|im_start|>system\nBe brief.\n\n{}<|im_end|>\n\
             <|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n\
             <|im_start|>assistant\n\
             <tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris\"}}}}\n</tool_call>\n\
             <tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Rome\"}}}}\n</tool_call><|im_end|>\n\
             <|im_start|>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\n25C\n</tool_response><|im_end|>\n\
             <|im_start|>assistant\n",
            hermes_section()
        )
    );
    assert!(t.renders_tools_natively());
    assert_eq!(t.tool_syntax(), ToolSyntax::Hermes);
}

#[test]
fn chatml_without_a_system_message_gets_one_for_the_tools() {
    let t = ChatTemplate::builtin("chatml").unwrap();
    let out = render(&t, &[ChatMessage::new("user", "Hi")], &[weather_tool()]);
    assert_eq!(
        out,
        format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            hermes_section()
        )
    );
}

#[test]
fn chatml_assistant_text_comes_before_its_calls() {
    let t = ChatTemplate::builtin("chatml").unwrap();
    let messages = [
        ChatMessage::new("user", "Paris?"),
        ChatMessage {
            tool_calls: vec![call("a", "Paris")],
            ..ChatMessage::new("assistant", "Checking.")
        },
    ];
    let out = t.render(&messages, false).unwrap();
    assert!(
        out.ends_with(
            "<|im_start|>assistant\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"
        ),
        "{out}"
    );
}

#[test]
fn without_tools_the_builtins_render_as_before() {
    let messages = [
        ChatMessage::new("system", "S"),
        ChatMessage::new("user", "U"),
    ];
    for family in ChatTemplate::builtin_families() {
        let t = ChatTemplate::builtin(family).unwrap();
        assert_eq!(
            t.render_opts(
                &messages,
                &RenderOptions {
                    add_generation_prompt: true,
                    enable_thinking: Some(true),
                    ..Default::default()
                }
            )
            .unwrap(),
            t.render(&messages, true).unwrap(),
            "{family}"
        );
    }
}

#[test]
fn llama3_puts_tools_in_the_first_user_message_and_results_in_ipython_turns() {
    let t = ChatTemplate::builtin("llama3").unwrap();
    assert_eq!(t.tool_syntax(), ToolSyntax::Llama3Json);
    assert!(t.renders_tools_natively());
    let messages = &tool_conversation()[..4];
    let tool_pretty = "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n        \"description\": \"Weather <now>\",\n        \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {\n                \"city\": {\n                    \"type\": \"string\"\n                }\n            }\n        }\n    }\n}";
    assert_eq!(
        render(&t, messages, &[weather_tool()]),
        format!(
            "<|begin_of_text|>\
             <|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\n\
             Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n\
             Respond in the format {{\"name\": function name, \"parameters\": dictionary of argument name and its value}}. Do not use variables.\n\n\
             {tool_pretty}\n\nWeather in Paris and Rome?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n\
             {{\"name\": \"get_weather\", \"parameters\": {{\"city\": \"Paris\"}}}}; \
             {{\"name\": \"get_weather\", \"parameters\": {{\"city\": \"Rome\"}}}}<|eot_id|>\
             <|start_header_id|>ipython<|end_header_id|>\n\n18C<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    );
    let err = t
        .render_opts(
            &[ChatMessage::new("system", "S")],
            &RenderOptions {
                tools: &[weather_tool()],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, TemplateError::Raised(_)), "{err:?}");
}

#[test]
fn families_without_a_tool_format_get_hermes_instructions_in_the_system_message() {
    let tools = [weather_tool()];
    for family in ["gemma", "phi3", "minicpm", "deepseek"] {
        let t = ChatTemplate::builtin(family).unwrap();
        assert!(!t.renders_tools_natively(), "{family}");
        assert_eq!(t.tool_syntax(), ToolSyntax::Hermes, "{family}");
        let out = render(&t, &tool_conversation(), &tools);
        assert!(
            out.contains(&format!("Be brief.\n\n{}", hermes_section())),
            "{family}: {out}"
        );
        assert!(
            out.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>"),
            "{family}: {out}"
        );
        assert!(
            out.contains(
                "<tool_response>\n18C\n</tool_response>\n<tool_response>\n25C\n</tool_response>"
            ),
            "{family}: {out}"
        );
    }
    // The phi3 layout in full: the results are one user turn.
    let t = ChatTemplate::builtin("phi3").unwrap();
    let out = render(&t, &tool_conversation()[1..], &tools);
    assert_eq!(
        out,
        format!(
            "<|system|>\n{}<|end|>\n<|user|>\nWeather in Paris and Rome?<|end|>\n\
             <|assistant|>\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris\"}}}}\n</tool_call>\n\
             <tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Rome\"}}}}\n</tool_call><|end|>\n\
             <|user|>\n<tool_response>\n18C\n</tool_response>\n<tool_response>\n25C\n</tool_response><|end|>\n<|assistant|>\n",
            hermes_section()
        )
    );
}

const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn jinja_templates_that_never_mention_tools_are_emulated() {
    let t = ChatTemplate::from_jinja(SMOLLM2, "", "<|im_end|>").unwrap();
    assert!(!t.renders_tools_natively());
    let out = render(&t, &[ChatMessage::new("user", "Hi")], &[weather_tool()]);
    assert_eq!(
        out,
        format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            hermes_section()
        )
    );
}

#[test]
fn templates_rejecting_a_system_role_get_the_tools_in_the_first_user_turn() {
    let source = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}[{{ m.role }}: {{ m.content }}]{% endfor %}";
    let t = ChatTemplate::from_jinja(source, "", "").unwrap();
    let out = render(&t, &[ChatMessage::new("user", "Hi")], &[weather_tool()]);
    assert_eq!(out, format!("[user: {}\n\nHi]", hermes_section()));
}

#[test]
fn templates_that_reference_tools_render_them_themselves() {
    let source = "{% if tools %}{% for t in tools %}<{{ t.function.name }}>{% endfor %}{% else %}none{% endif %}|{{ messages[0].content }}";
    let t = ChatTemplate::from_jinja(source, "", "").unwrap();
    assert!(t.renders_tools_natively());
    let messages = [ChatMessage::new("user", "Hi")];
    assert_eq!(render(&t, &messages, &[weather_tool()]), "<get_weather>|Hi");
    assert_eq!(render(&t, &messages, &[]), "none|Hi");
    // transformers passes tools=None when there are none: defined, but none.
    let t = ChatTemplate::from_jinja("{{ tools is defined }} {{ tools is none }}", "", "").unwrap();
    assert_eq!(render(&t, &messages, &[]), "True True");
}

#[test]
fn hf_qwen_style_templates_read_tool_calls_through_function() {
    let source = "{% for m in messages %}{% for tool_call in m.tool_calls %}{% if tool_call.function is defined %}{% set tool_call = tool_call.function %}{% endif %}{{ tool_call.name }}={% if tool_call.arguments is string %}{{ tool_call.arguments }}{% else %}{{ tool_call.arguments | tojson }}{% endif %};{% endfor %}{% endfor %}";
    let t = ChatTemplate::from_jinja(source, "", "").unwrap();
    let messages = [ChatMessage {
        tool_calls: vec![ToolCall {
            id: "x".into(),
            name: "f".into(),
            arguments: json!({"q": "<b>", "n": [1, 2]}),
        }],
        ..ChatMessage::new("assistant", "")
    }];
    assert_eq!(
        t.render(&messages, false).unwrap(),
        r#"f={"q": "<b>", "n": [1, 2]};"#
    );
}

#[test]
fn tool_syntax_of_jinja_templates() {
    let llama31 = "{% if tools %}{{ 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}{% endif %}{{ '<|python_tag|>' }}<|eot_id|>";
    let t = ChatTemplate::from_jinja(llama31, "", "").unwrap();
    assert_eq!(t.tool_syntax(), ToolSyntax::Llama3Json);
    // Llama 3.0 had no tools: emulated, so Hermes.
    let llama30 = "{% for m in messages %}{{ m.content }}<|eot_id|>{% endfor %}";
    let t = ChatTemplate::from_jinja(llama30, "", "").unwrap();
    assert_eq!(t.tool_syntax(), ToolSyntax::Hermes);
    let qwen = "{% if tools %}<tools>{% endif %}<|im_end|>";
    let t = ChatTemplate::from_jinja(qwen, "", "").unwrap();
    assert_eq!(t.tool_syntax(), ToolSyntax::Hermes);
}
