use chat_template::{extract_json, OutputParser, ParseConfig, ParsedToolCall, Piece, ToolSyntax};
use serde_json::json;

fn content(s: &str) -> Piece {
    Piece::Content(s.into())
}

fn reasoning(s: &str) -> Piece {
    Piece::Reasoning(s.into())
}

fn call(name: &str, arguments: serde_json::Value) -> Piece {
    Piece::ToolCall(ParsedToolCall {
        name: name.into(),
        arguments,
    })
}

/// Joins adjacent text pieces of one kind: how a piece is split depends on the chunking.
fn merged(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    for p in pieces {
        match (out.last_mut(), &p) {
            (Some(Piece::Content(a)), Piece::Content(b))
            | (Some(Piece::Reasoning(a)), Piece::Reasoning(b)) => a.push_str(b),
            _ => out.push(p),
        }
    }
    out
}

fn parse_chunks(cfg: ParseConfig, chunks: &[&str]) -> Vec<Piece> {
    let mut p = OutputParser::new(cfg);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(p.push(c));
    }
    out.extend(p.finish());
    merged(out)
}

/// Parses `output` whole, split at every point, and one character at a time, and checks
/// every way gives `expected`.
fn check(cfg: ParseConfig, output: &str, expected: &[Piece]) {
    assert_eq!(parse_chunks(cfg, &[output]), expected, "whole: {output:?}");
    for (i, _) in output.char_indices().skip(1) {
        let (a, b) = output.split_at(i);
        assert_eq!(parse_chunks(cfg, &[a, b]), expected, "split {a:?} | {b:?}");
    }
    let chars: Vec<String> = output.chars().map(String::from).collect();
    let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(parse_chunks(cfg, &chars), expected, "by char: {output:?}");
}

const HERMES: ParseConfig = ParseConfig {
    tools: Some(ToolSyntax::Hermes),
    reasoning: true,
    starts_in_reasoning: false,
};

const LLAMA3: ParseConfig = ParseConfig {
    tools: Some(ToolSyntax::Llama3Json),
    reasoning: false,
    starts_in_reasoning: false,
};

const PLAIN: ParseConfig = ParseConfig {
    tools: None,
    reasoning: false,
    starts_in_reasoning: false,
};

#[test]
fn text_without_markers_is_content_verbatim() {
    for cfg in [HERMES, LLAMA3, PLAIN] {
        for text in [
            "",
            "Hello, world!",
            "  indented\n",
            "a < b > c",
            "日本語 <t",
            "<",
            "</think>",
        ] {
            let expected: Vec<Piece> = if text.is_empty() {
                vec![]
            } else {
                vec![content(text)]
            };
            check(cfg, text, &expected);
        }
    }
}

#[test]
fn reasoning_at_the_start_is_split_off() {
    check(
        HERMES,
        "\n<think>\nLet me see: 2+2.\n</think>\n\nIt is 4.",
        &[reasoning("Let me see: 2+2.\n"), content("It is 4.")],
    );
    // Only at the start: later a think tag is answer text.
    check(
        HERMES,
        "Sure. <think>x</think>",
        &[content("Sure. <think>x</think>")],
    );
    // Not asked for: no reasoning.
    check(PLAIN, "<think>x</think>y", &[content("<think>x</think>y")]);
    // Output that ends while thinking stays reasoning, even a partial closing tag.
    check(HERMES, "<think>hmm</thi", &[reasoning("hmm</thi")]);
    // An empty think block (thinking switched off) leaves just the answer.
    check(HERMES, "<think>\n\n</think>\n\nHi", &[content("Hi")]);
    check(HERMES, "<think>\n  ", &[]);
}

#[test]
fn output_can_start_inside_the_reasoning() {
    let cfg = ParseConfig {
        starts_in_reasoning: true,
        ..HERMES
    };
    check(
        cfg,
        "Okay, so 日本.\n</think>\n\nAnswer",
        &[reasoning("Okay, so 日本.\n"), content("Answer")],
    );
    check(cfg, "still thinking", &[reasoning("still thinking")]);
}

#[test]
fn reasoning_and_content_stream_promptly() {
    let mut p = OutputParser::new(HERMES);
    assert_eq!(p.push("<thi"), []);
    assert_eq!(p.push("nk>Let"), [reasoning("Let")]);
    assert_eq!(p.push(" me</th"), [reasoning(" me")]);
    assert_eq!(p.push("ink>\n"), []);
    assert_eq!(p.push("\nThe answer <"), [content("The answer ")]);
    assert_eq!(p.push("b>"), [content("<b>")]);
    assert_eq!(p.push(" and <tool_"), [content(" and ")]);
    assert_eq!(p.push("call>{\"name\": \"f\", "), []);
    assert_eq!(
        p.push("\"arguments\": {}}</tool_call>ok"),
        [call("f", json!({})), content("ok")]
    );
    assert_eq!(p.finish(), []);
}

#[test]
fn hermes_tool_calls() {
    check(
        HERMES,
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        &[call("get_weather", json!({"city": "Paris"}))],
    );
    // After text, between text, several, arguments as JSON text, "parameters".
    check(
        HERMES,
        "<think>Two cities.</think>\n\nChecking both.\n<tool_call>\n{\"name\": \"w\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}\n</tool_call>\n\
         <tool_call>{\"name\": \"w\", \"parameters\": {\"city\": \"Rome\"}}</tool_call> done",
        &[
            reasoning("Two cities."),
            content("Checking both.\n"),
            call("w", json!({"city": "Paris"})),
            content("\n"),
            call("w", json!({"city": "Rome"})),
            content(" done"),
        ],
    );
}

#[test]
fn malformed_hermes_calls_come_back_as_content() {
    for bad in [
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": }\n</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": 3}</tool_call>",
        "<tool_call>[1, 2]</tool_call>",
    ] {
        check(HERMES, bad, &[content(bad)]);
    }
    // Unterminated at the end.
    let cut = "Let me check. <tool_call>\n{\"name\": \"f\", \"argu";
    check(HERMES, cut, &[content(cut)]);
    // A bad block does not hide a good one after it.
    check(
        HERMES,
        "<tool_call>oops</tool_call><tool_call>{\"name\": \"g\"}</tool_call>",
        &[content("<tool_call>oops</tool_call>"), call("g", json!({}))],
    );
}

#[test]
fn without_tools_tool_calls_are_text() {
    let text = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
    check(PLAIN, text, &[content(text)]);
    let json = "{\"name\": \"f\", \"parameters\": {}}";
    check(PLAIN, json, &[content(json)]);
    check(
        ParseConfig {
            tools: Some(ToolSyntax::Llama3Json),
            ..PLAIN
        },
        text,
        &[content(text)],
    );
}

#[test]
fn llama3_json_tool_calls() {
    check(
        LLAMA3,
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        &[call("get_weather", json!({"city": "Paris"}))],
    );
    check(
        LLAMA3,
        " <|python_tag|>{\"name\": \"a\", \"parameters\": {\"s\": \"}{\"}}; {\"name\": \"b\", \"arguments\": {}}\n{\"name\": \"c\", \"parameters\": {}}\n",
        &[
            call("a", json!({"s": "}{"})),
            call("b", json!({})),
            call("c", json!({})),
        ],
    );
    // Reasoning first, then a call.
    check(
        ParseConfig {
            reasoning: true,
            ..LLAMA3
        },
        "<think>ok</think>\n{\"name\": \"a\", \"parameters\": {}}",
        &[reasoning("ok"), call("a", json!({}))],
    );
    // Text after a call is content.
    check(
        LLAMA3,
        "{\"name\": \"a\", \"parameters\": {}} That is all.",
        &[call("a", json!({})), content(" That is all.")],
    );
}

#[test]
fn llama3_json_that_is_not_a_call_is_content() {
    for text in [
        "{\"name\": \"Bob\", \"age\": 3}",
        "{\"name\": \"a\", \"parameters\": {}",
        "{not json at all}",
        "<|python_tag|>brave_search.call(query=\"x\")",
        "The call is {\"name\": \"a\", \"parameters\": {}}",
        "  ",
    ] {
        check(LLAMA3, text, &[content(text)]);
    }
}

#[test]
fn llama3_text_streams_unless_it_may_be_a_call() {
    let mut p = OutputParser::new(LLAMA3);
    assert_eq!(p.push(" "), []);
    assert_eq!(p.push("Hi"), [content(" Hi")]);
    assert_eq!(p.push(" {there"), [content(" {there")]);
    let mut p = OutputParser::new(LLAMA3);
    assert_eq!(p.push("{\"name\": \"a\", "), []);
    assert_eq!(p.push("\"parameters\": {}}"), [call("a", json!({}))]);
    assert_eq!(p.finish(), []);
}

#[test]
fn extract_json_tolerates_fences_and_whitespace() {
    assert_eq!(extract_json(" {\"a\": 1}\n"), Some(json!({"a": 1})));
    assert_eq!(
        extract_json("```json\n{\"a\": [1]}\n```"),
        Some(json!({"a": [1]}))
    );
    assert_eq!(extract_json("```\n[true]\n```\n"), Some(json!([true])));
    assert_eq!(extract_json("42"), Some(json!(42)));
    assert_eq!(extract_json("Here: {\"a\": 1}"), None);
    assert_eq!(extract_json("{\"a\": 1"), None);
    assert_eq!(extract_json(""), None);
}

/// Outputs stitched from fragments that exercise every marker, each parsed whole, one
/// character at a time and in pseudo-random chunks: the pieces must always agree, and when
/// nothing is parsed out the text must come back exactly.
#[test]
fn pieces_do_not_depend_on_the_chunking() {
    const FRAGMENTS: &[&str] = &[
        "<think>",
        "</think>",
        "\n\n",
        " ",
        "plain text ",
        "é日",
        "<",
        "<tool_call>",
        "</tool_call>",
        "{\"name\": \"f\", \"arguments\": {\"a\": [1, \"}\"]}}",
        "{\"name\": \"g\", \"parameters\": {}}",
        "{\"name\": ",
        ";",
        "<|python_tag|>",
        "<tool_call>\n{\"name\": \"h\", \"arguments\": \"{}\"}\n</tool_call>",
        "}",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let configs = [
        HERMES,
        LLAMA3,
        PLAIN,
        ParseConfig {
            starts_in_reasoning: true,
            ..HERMES
        },
        ParseConfig {
            reasoning: true,
            ..LLAMA3
        },
    ];
    for _ in 0..400 {
        let output: String = (0..1 + next(6))
            .map(|_| FRAGMENTS[next(FRAGMENTS.len())])
            .collect();
        for cfg in configs {
            let whole = parse_chunks(cfg, &[&output]);
            let chars: Vec<String> = output.chars().map(String::from).collect();
            let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_eq!(
                parse_chunks(cfg, &chars),
                whole,
                "{cfg:?} by char: {output:?}"
            );
            let mut chunks = Vec::new();
            let mut rest = output.as_str();
            while !rest.is_empty() {
                let mut at = (1 + next(8)).min(rest.len());
                while !rest.is_char_boundary(at) {
                    at += 1;
                }
                let (a, b) = rest.split_at(at);
                chunks.push(a);
                rest = b;
            }
            assert_eq!(parse_chunks(cfg, &chunks), whole, "{cfg:?} {chunks:?}");
            // Without reasoning nothing is dropped: unless calls were read, the text is all.
            let calls = whole.iter().any(|p| matches!(p, Piece::ToolCall(_)));
            if !cfg.reasoning && !cfg.starts_in_reasoning && !calls {
                let text: String = whole
                    .iter()
                    .map(|p| match p {
                        Piece::Content(t) => t.as_str(),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                assert_eq!(text, output, "{cfg:?}");
            }
        }
    }
}
