"""The Ollama API through the official `ollama` Python client."""

import ollama
import pytest

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "What is the capital of France?"
OPTIONS = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(server_url):
    return ollama.Client(host=server_url, timeout=60)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _assert_final(r, max_tokens: int):
    assert r.done is True
    assert r.done_reason in ("stop", "length")
    for name in ("eval_count", "prompt_eval_count", "total_duration", "load_duration",
                 "prompt_eval_duration", "eval_duration"):
        assert _is_int(getattr(r, name)), f"{name} = {getattr(r, name)!r}"
    assert r.prompt_eval_count > 0
    assert 0 < r.eval_count <= max_tokens
    if r.done_reason == "length":
        assert r.eval_count == max_tokens
    assert r.total_duration > 0


@pytest.fixture(scope="module")
def chat_reference(client, model):
    return client.chat(model=model, messages=MESSAGES, options=OPTIONS, stream=False)


def test_chat_non_streaming(chat_reference, model):
    r = chat_reference
    assert r.model == model
    assert r.message.role == "assistant"
    assert isinstance(r.message.content, str) and r.message.content.strip()
    _assert_final(r, OPTIONS["num_predict"])


def test_chat_streaming(client, chat_reference, model):
    chunks = list(client.chat(model=model, messages=MESSAGES, options=OPTIONS, stream=True))
    assert len(chunks) >= 2
    for c in chunks[:-1]:
        assert c.done is False
        assert c.model == model
        assert c.message.role == "assistant"
    last = chunks[-1]
    _assert_final(last, OPTIONS["num_predict"])
    text = "".join(c.message.content or "" for c in chunks)
    assert text == chat_reference.message.content
    assert last.done_reason == chat_reference.done_reason
    assert last.eval_count == chat_reference.eval_count
    assert last.prompt_eval_count == chat_reference.prompt_eval_count


def test_chat_stop_option(client, chat_reference, model):
    ref = chat_reference.message.content
    words = [w for w in ref.split() if len(w) >= 3 and ref.index(w) > 0]
    if not words:
        pytest.skip(f"no usable stop word in {ref!r}")
    stop = words[len(words) // 2]
    r = client.chat(
        model=model, messages=MESSAGES, options={**OPTIONS, "stop": [stop]}, stream=False
    )
    assert r.done_reason == "stop"
    assert r.message.content == ref[: ref.index(stop)], f"stop={stop!r} reference={ref!r}"


@pytest.fixture(scope="module")
def generate_reference(client, model):
    return client.generate(model=model, prompt=PROMPT, options=OPTIONS, stream=False)


def test_generate_non_streaming(generate_reference, model):
    r = generate_reference
    assert r.model == model
    assert isinstance(r.response, str) and r.response.strip()
    _assert_final(r, OPTIONS["num_predict"])


def test_generate_streaming_matches_non_streaming(client, generate_reference, model):
    ref = generate_reference
    chunks = list(client.generate(model=model, prompt=PROMPT, options=OPTIONS, stream=True))
    assert len(chunks) >= 2
    assert all(c.done is False for c in chunks[:-1])
    _assert_final(chunks[-1], OPTIONS["num_predict"])
    assert "".join(c.response or "" for c in chunks) == ref.response
    assert chunks[-1].eval_count == ref.eval_count


def test_generate_raw(client, model):
    r = client.generate(
        model=model, prompt="The capital of France is", raw=True, options=OPTIONS, stream=False
    )
    assert r.response
    _assert_final(r, OPTIONS["num_predict"])


def test_list(client, model):
    models = client.list().models
    names = [m.model for m in models]
    assert model in names
    m = next(m for m in models if m.model == model)
    assert _is_int(m.size) and m.size > 0
    assert m.digest
    assert m.modified_at is not None
    assert m.details is not None and m.details.format == "gguf"


def test_show(client, model):
    r = client.show(model)
    info = r.modelinfo
    assert isinstance(info, dict) and info
    assert info.get("general.architecture")
    assert r.details is not None
    assert r.details.format == "gguf"
    assert r.details.family
    assert r.template
    assert r.modelfile


def test_ps_lists_the_loaded_model(client, model):
    # Loaded: the default configuration preloads it, and earlier tests used it.
    models = client.ps().models
    names = [m.model for m in models]
    assert model in names
    m = next(m for m in models if m.model == model)
    assert _is_int(m.size) and m.size > 0
    assert m.expires_at is not None


def test_version(client):
    # Not wrapped by every client version: ask through the client's own HTTP layer.
    r = client._client.get("/api/version")
    assert r.status_code == 200
    assert r.json()["version"]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.chat(model="no-such-model", messages=MESSAGES, stream=False),
        lambda c: list(c.chat(model="no-such-model", messages=MESSAGES, stream=True)),
        lambda c: c.generate(model="no-such-model", prompt=PROMPT, stream=False),
        lambda c: list(c.generate(model="no-such-model", prompt=PROMPT, stream=True)),
        lambda c: c.show("no-such-model"),
    ],
    ids=["chat", "chat-stream", "generate", "generate-stream", "show"],
)
def test_unknown_model_is_404(client, call):
    with pytest.raises(ollama.ResponseError) as ei:
        call(client)
    assert ei.value.status_code == 404
    assert "no-such-model" in ei.value.error


def test_bad_option_is_400(client, model):
    with pytest.raises(ollama.ResponseError) as ei:
        client.chat(model=model, messages=MESSAGES, options={"temperature": 5}, stream=False)
    assert ei.value.status_code == 400
    assert "temperature" in ei.value.error
