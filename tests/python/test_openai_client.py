"""The OpenAI API through the official `openai` Python client."""

import openai
import pytest

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(server_url):
    # No retries: an error must surface as the status the server sent, at once.
    c = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(client, model):
    """The greedy non-streaming chat answer the other tests compare against."""
    r = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=16
    )
    return r


def test_chat_non_streaming(reference, model):
    r = reference
    assert r.object == "chat.completion"
    assert r.id
    assert r.model == model
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u is not None
    for v in (u.prompt_tokens, u.completion_tokens, u.total_tokens):
        assert isinstance(v, int) and not isinstance(v, bool)
    assert u.prompt_tokens > 0
    assert 0 < u.completion_tokens <= 16
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if choice.finish_reason == "length":
        assert u.completion_tokens == 16


def test_chat_streaming_matches_non_streaming(client, reference, model):
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=16, stream=True
    )
    text = ""
    finish = None
    ids = set()
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        ids.add(chunk.id)
        assert chunk.usage is None
        assert len(chunk.choices) == 1
        choice = chunk.choices[0]
        assert choice.index == 0
        if choice.delta.content:
            text += choice.delta.content
        if choice.finish_reason is not None:
            assert finish is None, "finish_reason came twice"
            finish = choice.finish_reason
    assert len(ids) == 1, "every chunk carries the same id"
    assert text == reference.choices[0].message.content
    assert finish == reference.choices[0].finish_reason


def test_chat_streaming_include_usage(client, reference, model):
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "the stream was empty"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    for c in chunks[:-1]:
        assert c.usage is None
        assert len(c.choices) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == reference.choices[0].message.content
    u = last.usage
    assert u.prompt_tokens == reference.usage.prompt_tokens
    assert u.completion_tokens == reference.usage.completion_tokens
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_chat_n_2(client, model):
    r = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=8, n=2
    )
    assert len(r.choices) == 2
    assert sorted(c.index for c in r.choices) == [0, 1]
    for c in r.choices:
        assert c.message.content.strip()
        assert c.finish_reason in ("stop", "length")
    # Usage counts both choices' tokens, each at most max_tokens.
    assert 2 <= r.usage.completion_tokens <= 2 * 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def _stop_word(text: str) -> str:
    """A word from the middle of `text` whose first occurrence leaves a non-empty prefix."""
    words = [w for w in text.split() if len(w) >= 3]
    assert words, f"no usable word in the reference answer {text!r}"
    for w in words[len(words) // 2 :] + words[: len(words) // 2]:
        if text.index(w) > 0:
            return w
    pytest.fail(f"no usable stop word in the reference answer {text!r}")


def test_chat_stop_sequence(client, reference, model):
    ref = reference.choices[0].message.content
    stop = _stop_word(ref)
    expected = ref[: ref.index(stop)]
    r = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=16, stop=[stop, "\u2603\u2603"]
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert stop not in choice.message.content
    assert choice.message.content == expected, f"stop={stop!r} reference={ref!r}"


def test_chat_stop_sequence_streaming(client, reference, model):
    ref = reference.choices[0].message.content
    stop = _stop_word(ref)
    expected = ref[: ref.index(stop)]
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=16, stop=stop, stream=True
    )
    text, finish = "", None
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "stop"
    assert text == expected, f"stop={stop!r} reference={ref!r}"


@pytest.fixture(scope="module")
def completion_reference(client, model):
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)


def test_completions_non_streaming(completion_reference, model):
    r = completion_reference
    assert r.object == "text_completion"
    assert r.model == model
    assert len(r.choices) == 1
    c = r.choices[0]
    assert isinstance(c.text, str) and c.text
    assert c.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completions_streaming_matches_non_streaming(client, completion_reference, model):
    ref = completion_reference
    stream = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=0, stream=True
    )
    text, finish = "", None
    for chunk in stream:
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            text += c.text
            finish = c.finish_reason or finish
    assert text == ref.choices[0].text
    assert finish == ref.choices[0].finish_reason


def test_models_list(client, model):
    ids = [m.id for m in client.models.list()]
    assert model in ids
    m = client.models.retrieve(model)
    assert m.id == model
    assert m.object == "model"


def _assert_error(e: openai.APIStatusError, status: int):
    assert e.status_code == status
    assert isinstance(e.message, str) and e.message
    assert isinstance(e.body, dict), e.body
    assert e.body.get("message"), e.body


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(
            model="no-such-model", messages=MESSAGES, temperature=0, max_tokens=8
        )
    _assert_error(ei.value, 404)
    assert "no-such-model" in ei.value.message


def test_unknown_model_is_not_found_streaming(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(
            model="no-such-model", messages=MESSAGES, max_tokens=8, stream=True
        )
    _assert_error(ei.value, 404)


def test_unknown_model_retrieve_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("no-such-model")
    _assert_error(ei.value, 404)


def test_bad_temperature_is_bad_request(client, model):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model=model, messages=MESSAGES, temperature=5, max_tokens=8
        )
    _assert_error(ei.value, 400)
    assert "temperature" in ei.value.message
    assert ei.value.body.get("param") == "temperature"


def test_logprobs_is_bad_request(client, model):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model=model, messages=MESSAGES, temperature=0, max_tokens=8, logprobs=True
        )
    _assert_error(ei.value, 400)
    assert "logprobs" in ei.value.message


def test_completions_bad_parameter_is_bad_request(client, model):
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=8, top_p=3)
    _assert_error(ei.value, 400)
