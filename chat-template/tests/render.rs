use chat_template::{ChatMessage, ChatTemplate, TemplateError};

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Bye?"),
    ]
}

fn render_builtin(family: &str) -> String {
    let t = ChatTemplate::builtin(family).unwrap();
    assert_eq!(t.family(), Some(family));
    t.render(&conversation(), true).unwrap()
}

#[test]
fn chatml() {
    assert_eq!(
        render_builtin("chatml"),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\nBye?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn llama3() {
    assert_eq!(
        render_builtin("llama3"),
        "<|begin_of_text|>\
         <|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nBye?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn gemma_folds_the_system_message_into_the_first_user_turn() {
    assert_eq!(
        render_builtin("gemma"),
        "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n\
         <start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\nBye?<end_of_turn>\n\
         <start_of_turn>model\n"
    );
    let no_system = ChatTemplate::builtin("gemma")
        .unwrap()
        .render(&[ChatMessage::new("user", "Hi")], true)
        .unwrap();
    assert_eq!(
        no_system,
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
}

#[test]
fn phi3() {
    assert_eq!(
        render_builtin("phi3"),
        "<|system|>\nYou are terse.<|end|>\n\
         <|user|>\nHi<|end|>\n\
         <|assistant|>\nHello!<|end|>\n\
         <|user|>\nBye?<|end|>\n\
         <|assistant|>\n"
    );
}

#[test]
fn minicpm() {
    assert_eq!(
        render_builtin("minicpm"),
        "You are terse.<用户>Hi<AI>Hello!<用户>Bye?<AI>"
    );
}

#[test]
fn deepseek() {
    assert_eq!(
        render_builtin("deepseek"),
        "<｜begin▁of▁sentence｜>You are terse.\
         <｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>\
         <｜User｜>Bye?<｜Assistant｜>"
    );
}

#[test]
fn without_generation_prompt_the_conversation_ends_after_the_last_turn() {
    let t = ChatTemplate::builtin("chatml").unwrap();
    let out = t.render(&conversation()[..3], false).unwrap();
    assert!(
        out.ends_with("<|im_start|>assistant\nHello!<|im_end|>\n"),
        "{out:?}"
    );
    let t = ChatTemplate::builtin("llama3").unwrap();
    let out = t.render(&conversation()[..2], false).unwrap();
    assert!(out.ends_with("Hi<|eot_id|>"), "{out:?}");
}

#[test]
fn thinking_builtins_strip_old_reasoning_and_can_skip_thinking() {
    let messages = [
        ChatMessage::new("user", "2+2?"),
        ChatMessage::new("assistant", "<think>\nEasy.\n</think>\n\n4"),
        ChatMessage::new("user", "3+3?"),
    ];
    let t = ChatTemplate::builtin("chatml").unwrap();
    assert_eq!(
        t.render(&messages, true).unwrap(),
        "<|im_start|>user\n2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n\
         <|im_start|>user\n3+3?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert!(t
        .render_with(&messages, true, false)
        .unwrap()
        .ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    let t = ChatTemplate::builtin("deepseek").unwrap();
    assert_eq!(
        t.render_with(&messages, true, false).unwrap(),
        "<｜begin▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>\
         <｜User｜>3+3?<｜Assistant｜><think>\n\n</think>\n\n"
    );
}

#[test]
fn unknown_builtin() {
    assert!(ChatTemplate::builtin("vicuna").is_none());
    assert_eq!(
        ChatTemplate::builtin_families().collect::<Vec<_>>(),
        ["chatml", "llama3", "gemma", "phi3", "minicpm", "deepseek"]
    );
}

const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn smollm2_template_adds_its_default_system_message() {
    let t = ChatTemplate::from_jinja(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(t.family(), None);
    assert_eq!(t.source(), SMOLLM2);
    let messages = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Bye?"),
    ];
    assert_eq!(
        t.render(&messages, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\nBye?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // A system message of the caller's own replaces the default one.
    assert_eq!(
        t.render(&conversation(), false).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\nBye?<|im_end|>\n"
    );
}

#[test]
fn syntax_errors_fail_at_construction() {
    let err =
        ChatTemplate::from_jinja("{% for m in messages %}{{ m.content }}", "", "").unwrap_err();
    assert!(matches!(err, TemplateError::Syntax(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("syntax error in chat template"),
        "{err}"
    );
    assert!(ChatTemplate::from_jinja("{{ messages[0]. }}", "", "").is_err());
}

#[test]
fn raise_exception_carries_its_message() {
    let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok";
    let t = ChatTemplate::from_jinja(source, "", "").unwrap();
    assert_eq!(
        t.render(&[ChatMessage::new("user", "x")], true).unwrap(),
        "ok"
    );
    let err = t
        .render(&[ChatMessage::new("assistant", "x")], true)
        .unwrap_err();
    match &err {
        TemplateError::Raised(msg) => {
            assert_eq!(msg, "Conversation must start with a user message")
        }
        other => panic!("expected Raised, got {other:?}"),
    }
    assert!(err
        .to_string()
        .contains("Conversation must start with a user message"));
}

#[test]
fn other_render_errors() {
    let t = ChatTemplate::from_jinja("{{ messages | no_such_filter }}", "", "").unwrap();
    let err = t.render(&[], true).unwrap_err();
    assert!(matches!(err, TemplateError::Render(_)), "{err:?}");
    assert!(err.to_string().contains("no_such_filter"), "{err}");
}

#[test]
fn template_variables() {
    // Booleans print as Python does, as in transformers.
    let source = "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ enable_thinking }}|{{ messages | length }}";
    let t = ChatTemplate::from_jinja(source, "<s>", "</s>").unwrap();
    assert_eq!(t.bos_token(), "<s>");
    assert_eq!(t.eos_token(), "</s>");
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<s>|</s>|True|True|4"
    );
    assert_eq!(
        t.render_with(&conversation(), false, false).unwrap(),
        "<s>|</s>|False|False|4"
    );
}

#[test]
fn python_methods_work() {
    let source = "{% for message in messages %}{% if message['content'].startswith('#') %}{{ message['content'][1:].strip().upper() }}{% else %}{{ message['content'].strip() }}{% endif %};{% endfor %}{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}{{ 'x,y'.split(',') | join('+') }}";
    let t = ChatTemplate::from_jinja(source, "", "").unwrap();
    let messages = [
        ChatMessage::new("user", "  padded \n"),
        ChatMessage::new("user", "# loud "),
    ];
    assert_eq!(t.render(&messages, true).unwrap(), "padded;LOUD;a=1x+y");
}

#[test]
fn blocks_are_trimmed_like_transformers_does() {
    // trim_blocks and lstrip_blocks: the newline after a tag and the indentation before it
    // are not output.
    let source = "{% for message in messages %}\n    {% if message.role == 'user' %}\n[{{ message.content }}]\n    {% endif %}\n{% endfor %}";
    let t = ChatTemplate::from_jinja(source, "", "").unwrap();
    let messages = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    assert_eq!(t.render(&messages, true).unwrap(), "[a]\n[b]\n");
}

#[test]
fn strftime_now_formats_the_current_date() {
    let t = ChatTemplate::from_jinja("Today Date: {{ strftime_now('%d %b %Y') }}", "", "").unwrap();
    let out = t.render(&[], true).unwrap();
    let date = out.strip_prefix("Today Date: ").unwrap();
    let parts: Vec<&str> = date.split(' ').collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert!(
        parts[0].len() == 2 && parts[0].parse::<u32>().is_ok(),
        "{out}"
    );
    assert!(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            .contains(&parts[1]),
        "{out}"
    );
    assert!(parts[2].parse::<u32>().unwrap() >= 2024, "{out}");
}

#[test]
fn guess_family() {
    let cases = [
        (
            "Qwen_Qwen3-0.6B-w8a8-opt0-hybrid0-npu3-ctx16384-rk3588.rkllm",
            Some("chatml"),
        ),
        ("Qwen2.5-1.5B-Instruct", Some("chatml")),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", Some("chatml")),
        ("Llama-3.2-1B-Instruct", Some("llama3")),
        ("meta-llama_Llama3.1-8B", Some("llama3")),
        ("gemma-2-2b-it", Some("gemma")),
        ("DeepSeek-R1-Distill-Qwen-1.5B", Some("deepseek")),
        ("deepseek-r1-distill-llama-8b", Some("deepseek")),
        ("MiniCPM4-0.5B", Some("chatml")),
        ("MiniCPM-2B-sft", Some("minicpm")),
        ("Phi-3-mini", Some("phi3")),
        ("phi3.5-mini-instruct", Some("phi3")),
        ("Phi-4-mini-instruct", Some("phi3")),
        ("unknown-model", None),
        ("TinyLlama-1.1B-Chat", None),
        ("", None),
    ];
    for (name, family) in cases {
        assert_eq!(ChatTemplate::guess_family(name), family, "{name}");
        if let Some(family) = family {
            assert!(ChatTemplate::builtin(family).is_some(), "{family}");
        }
    }
}

#[test]
fn stop_strings_per_family() {
    let stops = |family: &str| ChatTemplate::builtin(family).unwrap().stop_strings();
    assert_eq!(stops("chatml"), ["<|im_end|>"]);
    assert_eq!(stops("llama3"), ["<|eot_id|>"]);
    assert_eq!(stops("gemma"), ["<eos>", "<end_of_turn>"]);
    assert_eq!(stops("phi3"), ["<|endoftext|>", "<|end|>"]);
    assert_eq!(stops("minicpm"), ["</s>", "<用户>"]);
    assert_eq!(stops("deepseek"), ["<｜end▁of▁sentence｜>"]);
}

#[test]
fn stop_strings_of_a_jinja_template_are_its_eos_and_the_markers_it_writes() {
    let t = ChatTemplate::from_jinja(SMOLLM2, "<|im_start|>", "<|endoftext|>").unwrap();
    assert_eq!(t.stop_strings(), ["<|endoftext|>", "<|im_end|>"]);
    let t = ChatTemplate::from_jinja(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(t.stop_strings(), ["<|im_end|>"]);
    let t = ChatTemplate::from_jinja("{{ messages[0].content }}", "", "").unwrap();
    assert!(t.stop_strings().is_empty());
}

#[test]
fn templates_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_send_sync::<ChatTemplate>();
    let t = ChatTemplate::builtin("chatml").unwrap();
    let copy = t.clone();
    std::thread::spawn(move || copy.render(&conversation(), true).unwrap())
        .join()
        .unwrap();
}
