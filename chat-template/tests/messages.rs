use chat_template::{ChatMessage, ToolCall};
use serde_json::json;

#[test]
fn tool_calls_serialize_in_the_shape_hugging_face_templates_read() {
    let m = ChatMessage {
        role: "assistant".into(),
        tool_calls: vec![ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        }],
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&m).unwrap(),
        json!({
            "role": "assistant",
            "content": "",
            "tool_calls": [{
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}}
            }]
        })
    );
}

#[test]
fn empty_tool_fields_are_left_out() {
    let m = ChatMessage::new("user", "hi");
    assert_eq!(
        serde_json::to_value(&m).unwrap(),
        json!({"role": "user", "content": "hi"})
    );
    let m = ChatMessage {
        tool_call_id: Some("call_1".into()),
        name: Some("get_weather".into()),
        ..ChatMessage::new("tool", "22C")
    };
    assert_eq!(
        serde_json::to_value(&m).unwrap(),
        json!({"role": "tool", "content": "22C", "tool_call_id": "call_1", "name": "get_weather"})
    );
}

#[test]
fn tool_calls_deserialize_from_the_openai_and_flat_shapes() {
    let openai: ToolCall = serde_json::from_value(json!({
        "id": "call_1", "type": "function",
        "function": {"name": "f", "arguments": "{\"x\": 1}"}
    }))
    .unwrap();
    let expected = ToolCall {
        id: "call_1".into(),
        name: "f".into(),
        arguments: json!({"x": 1}),
    };
    assert_eq!(openai, expected);
    let roundtrip: ToolCall =
        serde_json::from_value(serde_json::to_value(&expected).unwrap()).unwrap();
    assert_eq!(roundtrip, expected);
    let flat: ToolCall = serde_json::from_value(json!({"name": "f"})).unwrap();
    assert_eq!(flat.arguments, json!({}));
    assert_eq!(flat.id, "");
    let m: ChatMessage = serde_json::from_value(json!({"role": "user", "content": "x"})).unwrap();
    assert_eq!(m, ChatMessage::new("user", "x"));
}
