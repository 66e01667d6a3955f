"""Tool calling, thinking and structured output through the official `ollama` client,
plus the calls clients make at start-up (HEAD /, /api/pull).

Feature assertions use the scripted synthetic model (see scripted.py).
"""

import json

import httpx
import ollama
import pytest

from scripted import (
    ANSWER_THINKING,
    CALL_ARGUMENTS,
    CALL_THINKING,
    FALLBACK_ANSWER,
    FALLBACK_THINKING,
    REPORT,
    WEATHER_ANSWER,
    WEATHER_QUESTION,
    WEATHER_TOOL,
    Person,
    WeatherReport,
)

QUESTION = [{"role": "user", "content": WEATHER_QUESTION}]


@pytest.fixture(scope="module")
def client(server_url):
    return ollama.Client(host=server_url, timeout=60)


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city
    """
    return "sunny"


@pytest.mark.parametrize("tool", [WEATHER_TOOL, get_weather], ids=["dict", "function"])
def test_chat_tool_call(client, scripted_model, tool):
    r = client.chat(model=scripted_model, messages=QUESTION, tools=[tool], stream=False)
    calls = r.message.tool_calls
    assert calls and len(calls) == 1, r
    assert calls[0].function.name == "get_weather"
    # Ollama's arguments are an object, not a JSON string.
    assert calls[0].function.arguments == CALL_ARGUMENTS
    assert isinstance(calls[0].function.arguments, dict)
    assert "<tool_call>" not in (r.message.content or "")
    assert r.done is True


def test_chat_tool_call_done_reason_is_stop(client, scripted_model):
    r = client.chat(model=scripted_model, messages=QUESTION, tools=[WEATHER_TOOL], stream=False)
    assert r.message.tool_calls
    assert r.done_reason == "stop"


def test_chat_tool_call_streaming(client, scripted_model):
    chunks = list(client.chat(model=scripted_model, messages=QUESTION, tools=[WEATHER_TOOL], stream=True))
    calls = [tc for c in chunks for tc in (c.message.tool_calls or [])]
    assert len(calls) == 1, chunks
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == CALL_ARGUMENTS
    text = "".join(c.message.content or "" for c in chunks)
    assert "<tool_call>" not in text and "<think>" not in text
    assert chunks[-1].done is True
    assert all(c.done is False for c in chunks[:-1])


def test_think_splits_thinking(client, scripted_model):
    r = client.chat(
        model=scripted_model, messages=[{"role": "user", "content": "hi"}], think=True, stream=False
    )
    assert r.message.thinking == FALLBACK_THINKING
    assert r.message.content == FALLBACK_ANSWER
    chunks = list(
        client.chat(
            model=scripted_model, messages=[{"role": "user", "content": "hi"}], think=True, stream=True
        )
    )
    assert "".join(c.message.thinking or "" for c in chunks) == FALLBACK_THINKING
    assert "".join(c.message.content or "" for c in chunks) == FALLBACK_ANSWER


def test_think_with_a_tool_call(client, scripted_model):
    r = client.chat(model=scripted_model, messages=QUESTION, tools=[WEATHER_TOOL], think=True)
    assert r.message.thinking == CALL_THINKING
    assert r.message.tool_calls[0].function.arguments == CALL_ARGUMENTS


def test_generate_thinking(client, scripted_model):
    r = client.generate(model=scripted_model, prompt="hi", think=True, stream=False)
    assert r.thinking == FALLBACK_THINKING
    assert r.response == FALLBACK_ANSWER


def test_tool_message_in_history(client, scripted_model):
    first = client.chat(model=scripted_model, messages=QUESTION, tools=[WEATHER_TOOL])
    messages = QUESTION + [
        first.message,  # the assistant's message with its tool_calls, as the client returned it
        {"role": "tool", "content": '{"sky": "sunny", "temp_c": 22}', "tool_name": "get_weather"},
    ]
    r = client.chat(model=scripted_model, messages=messages, tools=[WEATHER_TOOL], think=True)
    assert r.message.content == WEATHER_ANSWER
    assert r.message.thinking == ANSWER_THINKING
    assert not r.message.tool_calls


def test_format_json(client, scripted_model):
    r = client.chat(
        model=scripted_model,
        messages=[{"role": "user", "content": "The WeatherReport for Paris, in JSON."}],
        format="json",
        stream=False,
    )
    assert json.loads(r.message.content) == REPORT


def test_format_schema(client, scripted_model):
    r = client.chat(
        model=scripted_model,
        messages=[{"role": "user", "content": "Report the weather in Paris."}],
        format=WeatherReport.model_json_schema(),
        stream=False,
    )
    assert WeatherReport.model_validate_json(r.message.content) == WeatherReport(**REPORT)
    # Streamed: generated to its end, validated, then sent.
    chunks = list(
        client.chat(
            model=scripted_model,
            messages=[{"role": "user", "content": "Report the weather in Paris."}],
            format=WeatherReport.model_json_schema(),
            stream=True,
        )
    )
    assert json.loads("".join(c.message.content or "" for c in chunks)) == REPORT


def test_format_schema_unmet_is_422(client, scripted_model):
    with pytest.raises(ollama.ResponseError) as ei:
        client.chat(
            model=scripted_model,
            messages=[{"role": "user", "content": "hi"}],
            format=Person.model_json_schema(),
            stream=False,
        )
    assert ei.value.status_code == 422
    assert ei.value.error


def test_default_model_serves_tools_and_think(client, model):
    # (format on the default model is covered on the OpenAI side: each of its retries costs
    # a prefill of the schema instructions, too slow to pay twice on a small CPU.)
    opts = {"temperature": 0, "num_predict": 8}
    r = client.chat(model=model, messages=QUESTION, tools=[WEATHER_TOOL], options=opts)
    assert r.done is True and r.done_reason in ("stop", "length", "tool_calls")
    assert r.message.content or r.message.tool_calls
    for call in r.message.tool_calls or []:
        assert isinstance(call.function.arguments, dict)
    r = client.chat(model=model, messages=QUESTION, think=True, options=opts)
    assert r.done is True and r.message.content
    assert not r.message.thinking  # SmolLM2's template does not think


def test_pull_of_a_present_model(client, model):
    r = client.pull(model)
    assert r.status == "success"
    statuses = [p.status for p in client.pull(model, stream=True)]
    assert statuses and statuses[-1] == "success"


def test_pull_of_an_unknown_model_fails(client):
    with pytest.raises(ollama.ResponseError) as ei:
        client.pull("no-such-model")
    assert ei.value.status_code in (400, 404, 500)


def test_head_root(server_url):
    r = httpx.head(server_url + "/", timeout=10)
    assert r.status_code == 200
    r = httpx.get(server_url + "/", timeout=10)
    assert r.status_code == 200
    assert "running" in r.text.lower()


def test_cors_preflight(server_url):
    r = httpx.request(
        "OPTIONS",
        server_url + "/api/chat",
        headers={
            "Origin": "http://localhost:8080",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
        timeout=10,
    )
    assert r.status_code in (200, 204)
    assert r.headers.get("access-control-allow-origin") in ("*", "http://localhost:8080")
    assert "POST" in r.headers.get("access-control-allow-methods", "").upper() or \
        r.headers.get("access-control-allow-methods") == "*"
