//! The strict Rust clients against a real server on the default model: whatever rkserve
//! answers, async-openai and ollama-rs must parse it into their typed responses, and the
//! answers must agree with each other (greedy decoding is deterministic).

mod common;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, CreateChatCompletionResponse, FinishReason, Prompt,
    StopConfiguration,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::Client;
use common::{Server, DEFAULT_MODEL};
use futures_util::StreamExt;
use ollama_rs::generation::chat::request::ChatMessageRequest;
use ollama_rs::generation::chat::ChatMessage;
use ollama_rs::generation::completion::request::GenerationRequest;
use ollama_rs::models::ModelOptions;
use ollama_rs::Ollama;

const QUESTION: &str = "What is the capital of France? Answer in one sentence.";
const MAX_TOKENS: u32 = 16;

fn chat_request(n: Option<u8>, stop: Option<&str>) -> CreateChatCompletionRequest {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(DEFAULT_MODEL)
        .messages([ChatCompletionRequestUserMessage::from(QUESTION).into()])
        .temperature(0.0)
        .max_tokens(MAX_TOKENS);
    if let Some(n) = n {
        args.n(n);
    }
    if let Some(s) = stop {
        args.stop(StopConfiguration::String(s.to_string()));
    }
    args.build().expect("a valid request")
}

fn text_of(r: &CreateChatCompletionResponse, i: usize) -> String {
    r.choices[i]
        .message
        .content
        .clone()
        .expect("a choice carries content")
}

fn ollama_options() -> ModelOptions {
    ModelOptions::default()
        .temperature(0.0)
        .num_predict(MAX_TOKENS as i32)
}

/// One server for every check: loading the model is the slow part, and the checks only read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_clients_parse_every_answer_and_the_answers_agree() {
    let server = Server::start(
        &common::workspace_models(),
        &common::config(&[DEFAULT_MODEL], ""),
        &[],
    )
    .await;
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(server.url("/v1"))
            .with_api_key("unused"),
    );
    let ollama = Ollama::builder().url(server.url("")).build();

    let reference = openai_chat(&client).await;
    openai_chat_stream(&client, &reference).await;
    openai_n_choices(&client, &reference).await;
    openai_stop(&client, &reference).await;
    openai_completions(&client).await;
    openai_models_and_unknown_model(&client).await;

    let ollama_text = ollama_chat(&ollama).await;
    assert_eq!(
        ollama_text,
        text_of(&reference, 0),
        "the same greedy request gives the same text through either API"
    );
    ollama_chat_stream(&ollama, &ollama_text).await;
    ollama_generate(&ollama, &ollama_text).await;
    ollama_tags_and_show(&ollama).await;
}

/// Non-streaming chat; returns the greedy reference answer.
async fn openai_chat(client: &Client<OpenAIConfig>) -> CreateChatCompletionResponse {
    let a = client
        .chat()
        .create(chat_request(None, None))
        .await
        .unwrap();
    assert_eq!(a.model, DEFAULT_MODEL);
    assert_eq!(a.object, "chat.completion");
    assert_eq!(a.choices.len(), 1);
    assert!(!text_of(&a, 0).is_empty(), "empty answer: {a:?}");
    assert!(a.choices[0].finish_reason.is_some(), "{a:?}");
    let usage = a.usage.clone().expect("usage");
    assert!(usage.prompt_tokens > 0, "{usage:?}");
    assert!(
        (1..=MAX_TOKENS).contains(&usage.completion_tokens),
        "{usage:?}"
    );
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );

    let b = client
        .chat()
        .create(chat_request(None, None))
        .await
        .unwrap();
    let usage_b = b.usage.clone().expect("usage");
    assert_eq!(
        usage_b.prompt_tokens, usage.prompt_tokens,
        "the same prompt counts the same"
    );
    assert_eq!(text_of(&b, 0), text_of(&a, 0), "greedy decoding repeats");
    assert_ne!(a.id, b.id, "every completion has its own id");
    a
}

async fn openai_chat_stream(
    client: &Client<OpenAIConfig>,
    reference: &CreateChatCompletionResponse,
) {
    let mut req = chat_request(None, None);
    req.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("every chunk parses");
        chunks += 1;
        assert!(usage.is_none(), "the usage chunk must come last: {chunk:?}");
        if let Some(u) = chunk.usage {
            assert!(
                chunk.choices.is_empty(),
                "the usage chunk has no choices: {:?}",
                chunk.choices
            );
            usage = Some(u);
            continue;
        }
        assert_eq!(chunk.choices.len(), 1, "{chunk:?}");
        let choice = &chunk.choices[0];
        assert_eq!(choice.index, 0);
        assert!(finish.is_none(), "nothing after finish_reason but usage");
        text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        finish = choice.finish_reason;
    }
    assert!(chunks > 2, "a streamed answer arrives in pieces");
    assert_eq!(text, text_of(reference, 0));
    assert_eq!(finish, reference.choices[0].finish_reason);
    let usage = usage.expect("include_usage sends a usage chunk");
    let expected = reference.usage.clone().unwrap();
    assert_eq!(usage.prompt_tokens, expected.prompt_tokens);
    assert_eq!(usage.completion_tokens, expected.completion_tokens);
}

async fn openai_n_choices(client: &Client<OpenAIConfig>, reference: &CreateChatCompletionResponse) {
    let r = client
        .chat()
        .create(chat_request(Some(2), None))
        .await
        .unwrap();
    let mut indices: Vec<u32> = r.choices.iter().map(|c| c.index).collect();
    indices.sort_unstable();
    assert_eq!(indices, [0, 1], "{r:?}");
    for c in &r.choices {
        assert_eq!(
            c.message.content.as_deref(),
            Some(text_of(reference, 0).as_str()),
            "each greedy choice is the greedy answer"
        );
        assert!(c.finish_reason.is_some());
    }
    let usage = r.usage.expect("usage");
    let one = reference.usage.clone().unwrap();
    assert_eq!(usage.prompt_tokens, one.prompt_tokens);
    assert_eq!(
        usage.completion_tokens,
        2 * one.completion_tokens,
        "usage counts both choices"
    );
}

async fn openai_stop(client: &Client<OpenAIConfig>, reference: &CreateChatCompletionResponse) {
    let full = text_of(reference, 0);
    // A word from the middle of the greedy answer: generation must end just before it.
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(
        words.len() >= 3,
        "the reference answer is too short to pick a stop word: {full:?}"
    );
    let stop = words[words.len() / 2];
    let cut = full.find(stop).expect("the word is in the text");
    assert!(cut > 0);
    let r = client
        .chat()
        .create(chat_request(None, Some(stop)))
        .await
        .unwrap();
    assert_eq!(text_of(&r, 0), full[..cut], "stop {stop:?} in {full:?}");
    assert_eq!(r.choices[0].finish_reason, Some(FinishReason::Stop));
}

async fn openai_completions(client: &Client<OpenAIConfig>) {
    let req = CreateCompletionRequestArgs::default()
        .model(DEFAULT_MODEL)
        .prompt(Prompt::String("The three primary colours are".into()))
        .temperature(0.0)
        .max_tokens(8u32)
        .build()
        .unwrap();
    let r = client.completions().create(req).await.unwrap();
    assert_eq!(r.object, "text_completion");
    assert_eq!(r.choices.len(), 1);
    assert_eq!(r.choices[0].index, 0);
    assert!(!r.choices[0].text.is_empty(), "{r:?}");
    assert!(r.choices[0].finish_reason.is_some(), "{r:?}");
    let usage = r.usage.expect("usage");
    assert!(usage.prompt_tokens > 0);
    assert!((1..=8).contains(&usage.completion_tokens), "{usage:?}");
}

async fn openai_models_and_unknown_model(client: &Client<OpenAIConfig>) {
    let list = client.models().list().await.unwrap();
    assert!(
        list.data.iter().any(|m| m.id == DEFAULT_MODEL),
        "{:?}",
        list.data
    );

    let mut req = chat_request(None, None);
    req.model = "no-such-model".into();
    match client.chat().create(req).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code, 404);
            assert!(
                e.api_error.message.contains("no-such-model"),
                "{:?}",
                e.api_error
            );
            assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn ollama_chat(ollama: &Ollama) -> String {
    let req = ChatMessageRequest::new(
        DEFAULT_MODEL.into(),
        vec![ChatMessage::user(QUESTION.into())],
    )
    .options(ollama_options());
    let r = ollama.send_chat_messages(req).await.unwrap();
    assert!(r.done);
    assert_eq!(r.model, DEFAULT_MODEL);
    assert!(!r.message.content.is_empty());
    let f = r.final_data.expect("the final response carries statistics");
    assert!(f.prompt_eval_count > 0, "{f:?}");
    assert!((1..=u64::from(MAX_TOKENS)).contains(&f.eval_count), "{f:?}");
    assert!(f.eval_duration > 0, "{f:?}");
    assert!(f.total_duration >= f.eval_duration, "{f:?}");
    r.message.content
}

async fn ollama_chat_stream(ollama: &Ollama, expected: &str) {
    let req = ChatMessageRequest::new(
        DEFAULT_MODEL.into(),
        vec![ChatMessage::user(QUESTION.into())],
    )
    .options(ollama_options());
    let mut stream = ollama.send_chat_messages_stream(req).await.unwrap();
    let mut text = String::new();
    let mut last = None;
    let mut parts = 0;
    while let Some(item) = stream.next().await {
        let item = item.expect("every line parses");
        assert!(last.is_none(), "nothing follows the done line: {item:?}");
        parts += 1;
        text.push_str(&item.message.content);
        if item.done {
            last = Some(item);
        } else {
            assert!(item.final_data.is_none(), "{item:?}");
        }
    }
    assert!(parts > 2, "a streamed answer arrives in pieces");
    assert_eq!(text, expected);
    let f = last
        .expect("a done line")
        .final_data
        .expect("the done line carries statistics");
    assert!(f.eval_count > 0 && f.prompt_eval_count > 0 && f.eval_duration > 0);
}

async fn ollama_generate(ollama: &Ollama, expected: &str) {
    // /api/generate renders the prompt as one user message, so it answers what chat answered.
    let req = GenerationRequest::new(DEFAULT_MODEL.into(), QUESTION).options(ollama_options());
    let r = ollama.generate(req).await.unwrap();
    assert!(r.done);
    assert_eq!(r.response, expected);
    assert!(r.eval_count.is_some_and(|n| n > 0), "{r:?}");
    assert!(r.prompt_eval_count.is_some_and(|n| n > 0), "{r:?}");
    assert!(r.eval_duration.is_some_and(|n| n > 0), "{r:?}");
    assert!(r.total_duration.is_some());
    assert!(r.load_duration.is_some());
}

async fn ollama_tags_and_show(ollama: &Ollama) {
    let models = ollama.list_local_models().await.unwrap();
    let m = models
        .iter()
        .find(|m| m.name == DEFAULT_MODEL)
        .unwrap_or_else(|| panic!("{DEFAULT_MODEL} not in {models:?}"));
    assert!(m.size > 0);
    assert!(!m.modified_at.is_empty());

    let info = ollama.show_model_info(DEFAULT_MODEL.into()).await.unwrap();
    assert!(!info.template.is_empty(), "{info:?}");
    assert!(info.capabilities.iter().any(|c| c == "completion"));
    assert!(
        info.model_info
            .iter()
            .any(|(k, v)| k.ends_with(".context_length") && v.as_u64().is_some_and(|n| n > 0)),
        "{:?}",
        info.model_info
    );
}
