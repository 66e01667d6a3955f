"""litellm's SDK against rkserve, through both of its providers that fit: `openai/` (any
OpenAI-compatible server) and `ollama_chat/` (Ollama's /api/chat). litellm translates
requests and replies itself, so these catch shapes its translation needs beyond the official
clients: tool calls, reasoning, streamed reassembly, embeddings, and error mapping.

Feature assertions use the scripted synthetic model (see scripted.py).
"""

import json
import os

# litellm fetches a model price list from GitHub at import; offline, it retries for seconds.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
import pytest  # noqa: E402

from scripted import (  # noqa: E402
    CALL_ARGUMENTS,
    CALL_THINKING,
    WEATHER_ANSWER,
    WEATHER_QUESTION,
    WEATHER_TOOL,
)

QUESTION = [{"role": "user", "content": WEATHER_QUESTION}]


def _openai(server_url, model):
    return {"model": f"openai/{model}", "api_base": f"{server_url}/v1", "api_key": "unused"}


def _ollama(server_url, model):
    return {"model": f"ollama_chat/{model}", "api_base": server_url}


PROVIDERS = pytest.mark.parametrize("provider", [_openai, _ollama], ids=["openai", "ollama_chat"])


def _assert_weather_call(message):
    assert message.tool_calls, message
    assert len(message.tool_calls) == 1, message.tool_calls
    call = message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == CALL_ARGUMENTS
    assert call.id


@PROVIDERS
def test_tool_call(server_url, scripted_model, provider):
    r = litellm.completion(
        **provider(server_url, scripted_model), messages=QUESTION, tools=[WEATHER_TOOL],
        timeout=60,
    )
    choice = r.choices[0]
    _assert_weather_call(choice.message)
    assert choice.finish_reason == "tool_calls"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


@PROVIDERS
def test_tool_call_streamed_and_rebuilt(server_url, scripted_model, provider):
    chunks = list(
        litellm.completion(
            **provider(server_url, scripted_model), messages=QUESTION, tools=[WEATHER_TOOL],
            stream=True, timeout=60,
        )
    )
    assert len(chunks) > 1, "streamed in pieces"
    rebuilt = litellm.stream_chunk_builder(chunks, messages=QUESTION)
    _assert_weather_call(rebuilt.choices[0].message)
    assert rebuilt.choices[0].finish_reason == "tool_calls"


def test_reasoning_is_kept_apart(server_url, scripted_model):
    # Only the openai provider: litellm's ollama_chat translation drops Ollama's `thinking`.
    r = litellm.completion(
        **_openai(server_url, scripted_model), messages=QUESTION, tools=[WEATHER_TOOL],
        timeout=60,
    )
    message = r.choices[0].message
    assert (message.reasoning_content or "").strip() == CALL_THINKING.strip(), message
    assert "<think>" not in (message.content or "")


@PROVIDERS
def test_tool_result_round_trip(server_url, scripted_model, provider):
    kw = provider(server_url, scripted_model)
    first = litellm.completion(**kw, messages=QUESTION, tools=[WEATHER_TOOL], timeout=60)
    call = first.choices[0].message.tool_calls[0]
    messages = QUESTION + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "name": "get_weather",
         "content": "sunny, 22 °C"},
    ]
    answer = litellm.completion(**kw, messages=messages, tools=[WEATHER_TOOL], timeout=60)
    assert WEATHER_ANSWER in answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


@PROVIDERS
def test_default_model_text(server_url, model, provider):
    r = litellm.completion(
        **provider(server_url, model), messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8, temperature=0, timeout=60,
    )
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8


def test_embeddings(server_url, model):
    r = litellm.embedding(
        model=f"openai/{model}", api_base=f"{server_url}/v1", api_key="unused",
        input=["a cat", "a dog"], timeout=60,
    )
    assert len(r.data) == 2
    vectors = [d["embedding"] for d in r.data]
    assert len(vectors[0]) == len(vectors[1]) > 0
    assert r.usage.prompt_tokens > 0


def test_unknown_model_maps_to_not_found(server_url):
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(
            **_openai(server_url, "no-such-model"), messages=QUESTION, timeout=60,
            num_retries=0,
        )
