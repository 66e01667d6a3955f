use chat_template::{ChatMessage, ChatTemplate, RenderOptions, TemplateError};

fn continuing() -> RenderOptions<'static> {
    RenderOptions {
        continue_final_message: true,
        // Ignored when continuing: the assistant's turn is already open.
        add_generation_prompt: true,
        ..Default::default()
    }
}

#[test]
fn continue_final_message_stops_right_after_the_partial_reply() {
    let messages = [
        ChatMessage::new("user", "Count to five"),
        ChatMessage::new("assistant", "1, 2, "),
    ];
    let expected = [
        (
            "chatml",
            "<|im_start|>user\nCount to five<|im_end|>\n<|im_start|>assistant\n1, 2, ",
        ),
        (
            "llama3",
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nCount to five<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n1, 2, ",
        ),
        (
            "gemma",
            "<bos><start_of_turn>user\nCount to five<end_of_turn>\n<start_of_turn>model\n1, 2, ",
        ),
        (
            "phi3",
            "<|user|>\nCount to five<|end|>\n<|assistant|>\n1, 2, ",
        ),
        ("minicpm", "<用户>Count to five<AI>1, 2, "),
        (
            "deepseek",
            "<｜begin▁of▁sentence｜><｜User｜>Count to five<｜Assistant｜>1, 2, ",
        ),
    ];
    for (family, want) in expected {
        let t = ChatTemplate::builtin(family).unwrap();
        assert_eq!(
            t.render_opts(&messages, &continuing()).unwrap(),
            want,
            "{family}"
        );
    }
}

#[test]
fn continue_final_message_works_with_an_empty_reply_and_jinja_templates() {
    let source = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    let t = ChatTemplate::from_jinja(source, "", "").unwrap();
    let messages = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", ""),
    ];
    assert_eq!(
        t.render_opts(&messages, &continuing()).unwrap(),
        "<user>Hi</user><assistant>"
    );
}

#[test]
fn continue_final_message_needs_an_assistant_message_last() {
    let t = ChatTemplate::builtin("chatml").unwrap();
    let err = t
        .render_opts(&[ChatMessage::new("user", "Hi")], &continuing())
        .unwrap_err();
    assert!(
        matches!(&err, TemplateError::NotContinuable(role) if role == "user"),
        "{err:?}"
    );
    let err = t.render_opts(&[], &continuing()).unwrap_err();
    assert!(
        matches!(&err, TemplateError::NotContinuable(role) if role.is_empty()),
        "{err:?}"
    );
    // A template that never prints the content cannot be continued.
    let t = ChatTemplate::from_jinja("{{ messages | length }}", "", "").unwrap();
    let err = t
        .render_opts(&[ChatMessage::new("assistant", "x")], &continuing())
        .unwrap_err();
    assert!(matches!(err, TemplateError::Render(_)), "{err:?}");
}

#[test]
fn enable_thinking_none_leaves_the_template_default() {
    let t = ChatTemplate::from_jinja(
        "{{ enable_thinking is defined }}{% if enable_thinking is defined %} {{ enable_thinking }}{% endif %}",
        "",
        "",
    )
    .unwrap();
    let render = |enable_thinking| {
        t.render_opts(
            &[],
            &RenderOptions {
                enable_thinking,
                ..Default::default()
            },
        )
        .unwrap()
    };
    assert_eq!(render(None), "False");
    assert_eq!(render(Some(false)), "True False");
    assert_eq!(render(Some(true)), "True True");
    // The thinking built-ins think unless told not to.
    let chatml = ChatTemplate::builtin("chatml").unwrap();
    let out = chatml
        .render_opts(
            &[ChatMessage::new("user", "Hi")],
            &RenderOptions {
                add_generation_prompt: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(out.ends_with("<|im_start|>assistant\n"), "{out:?}");
}

#[test]
fn thinking_templates() {
    for (family, thinks) in [
        ("chatml", true),
        ("deepseek", true),
        ("llama3", false),
        ("gemma", false),
        ("phi3", false),
        ("minicpm", false),
    ] {
        assert_eq!(
            ChatTemplate::builtin(family).unwrap().thinks(),
            thinks,
            "{family}"
        );
    }
    let r1 = "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %}";
    let t = ChatTemplate::from_jinja(r1, "", "").unwrap();
    assert!(t.thinks());
    let prompt = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
    assert_eq!(prompt, "Hi<｜Assistant｜><think>\n");
    assert!(ChatTemplate::starts_in_reasoning(&prompt));
    // Thinking switched off: the block is opened and closed.
    let qwen3_off = ChatTemplate::builtin("chatml")
        .unwrap()
        .render_with(&[ChatMessage::new("user", "Hi")], true, false)
        .unwrap();
    assert!(!ChatTemplate::starts_in_reasoning(&qwen3_off));
    assert!(!ChatTemplate::starts_in_reasoning(
        "<|im_start|>assistant\n"
    ));
    let smollm = ChatTemplate::from_jinja("{{ messages[0].content }}<|im_end|>", "", "").unwrap();
    assert!(!smollm.thinks());
}
