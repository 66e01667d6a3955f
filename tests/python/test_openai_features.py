"""Tool calling, reasoning and structured output through the official `openai` client.

Feature assertions run against the scripted synthetic model (see scripted.py); against the
default model (a real 135M model that cannot be relied on to call a tool or write JSON) the
same request shapes are only checked to be served, not refused.
"""

import json

import openai
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
    GetWeather,
    Person,
    WeatherReport,
)

QUESTION = [{"role": "user", "content": WEATHER_QUESTION}]


@pytest.fixture(scope="module")
def client(server_url):
    c = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=60)
    yield c
    c.close()


def _extra(obj, name):
    """A field the SDK does not declare (reasoning_content), wherever this version keeps it."""
    v = getattr(obj, name, None)
    if v is None and obj.model_extra:
        v = obj.model_extra.get(name)
    return v


def _assert_weather_call(call):
    assert call.type == "function"
    assert call.id and call.id.startswith("call_"), call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == CALL_ARGUMENTS


def _assemble(chunks):
    """Tool calls of a stream, put together by index as the SDK's docs describe."""
    calls = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    c["id"] = tc.id
                if tc.function and tc.function.name:
                    c["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    c["arguments"] += tc.function.arguments
    return [calls[i] for i in sorted(calls)]


def test_tool_call_non_streaming(client, scripted_model):
    r = client.chat.completions.create(model=scripted_model, messages=QUESTION, tools=[WEATHER_TOOL])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert len(choice.message.tool_calls) == 1
    _assert_weather_call(choice.message.tool_calls[0])
    # The call is not repeated as text, and the reasoning is split out.
    assert not choice.message.content or "<tool_call>" not in choice.message.content
    assert _extra(choice.message, "reasoning_content") == CALL_THINKING
    assert r.usage.completion_tokens > 0


def test_tool_call_streaming(client, scripted_model):
    chunks = list(
        client.chat.completions.create(
            model=scripted_model, messages=QUESTION, tools=[WEATHER_TOOL], stream=True
        )
    )
    calls = _assemble(chunks)
    assert len(calls) == 1, calls
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == CALL_ARGUMENTS
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_call>" not in content and "<think>" not in content
    reasoning = "".join(
        _extra(c.choices[0].delta, "reasoning_content") or "" for c in chunks if c.choices
    )
    assert reasoning == CALL_THINKING


def test_tool_call_stream_helper(client, scripted_model):
    """The SDK's own stream helper accumulates the deltas and parses strict tools."""
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    with client.chat.completions.stream(
        model=scripted_model, messages=QUESTION, tools=[tool]
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events, events
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    _assert_weather_call(call)
    assert call.function.parsed_arguments.city == "Paris"


def test_reasoning_content_split_from_content(client, scripted_model):
    r = client.chat.completions.create(
        model=scripted_model, messages=[{"role": "user", "content": "hi"}]
    )
    m = r.choices[0].message
    assert m.content == FALLBACK_ANSWER
    assert _extra(m, "reasoning_content") == FALLBACK_THINKING
    assert not m.tool_calls
    assert r.choices[0].finish_reason == "stop"

    chunks = list(
        client.chat.completions.create(
            model=scripted_model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        _extra(c.choices[0].delta, "reasoning_content") or "" for c in chunks if c.choices
    )
    assert content == FALLBACK_ANSWER
    assert reasoning == FALLBACK_THINKING


def test_second_turn_with_tool_result(client, scripted_model):
    first = client.chat.completions.create(
        model=scripted_model, messages=QUESTION, tools=[WEATHER_TOOL]
    )
    call = first.choices[0].message.tool_calls[0]
    messages = QUESTION + [
        # The assistant message exactly as the SDK gives it back, then the tool's result.
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "temp_c": 22}'},
    ]
    r = client.chat.completions.create(model=scripted_model, messages=messages, tools=[WEATHER_TOOL])
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    assert not m.tool_calls
    assert m.content == WEATHER_ANSWER
    assert _extra(m, "reasoning_content") == ANSWER_THINKING


def test_tool_choice_none_returns_text(client, scripted_model):
    # With tool_choice "none" the tools are not rendered, so the get_weather rule does not
    # fire and the fallback script answers; nothing is parsed as a call.
    r = client.chat.completions.create(
        model=scripted_model, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="none"
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert choice.message.content == FALLBACK_ANSWER


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
def test_tool_choice_forcing_a_call(client, scripted_model, tool_choice):
    r = client.chat.completions.create(
        model=scripted_model, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice=tool_choice
    )
    _assert_weather_call(r.choices[0].message.tool_calls[0])
    # One rule for clients that branch on it: a reply that carries calls ends "tool_calls",
    # however the call was asked for (OpenAI itself ends a named call with "stop").
    assert r.choices[0].finish_reason == "tool_calls"


def test_tool_choice_required_unmet_is_422(client, scripted_model):
    # Tool shown, but the scripted reply to a history ending in a tool result is text.
    messages = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(
            model=scripted_model, messages=messages, tools=[WEATHER_TOOL], tool_choice="required"
        )
    assert ei.value.status_code == 422
    assert ei.value.body.get("code") == "invalid_model_output", ei.value.body


def _parse(client):
    # The SDK's structured-output helper moved out of `beta` in newer versions.
    return getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse


def test_structured_output_parse(client, scripted_model):
    r = _parse(client)(
        model=scripted_model,
        messages=[{"role": "user", "content": "Report the weather in Paris."}],
        response_format=WeatherReport,
    )
    m = r.choices[0].message
    assert isinstance(m.parsed, WeatherReport)
    assert m.parsed == WeatherReport(**REPORT)
    # The ```json fence of the scripted reply is stripped: content is the JSON alone.
    assert json.loads(m.content) == REPORT
    assert m.refusal is None


def test_structured_output_json_object(client, scripted_model):
    r = client.chat.completions.create(
        model=scripted_model,
        messages=[{"role": "user", "content": "The WeatherReport for Paris, as JSON."}],
        response_format={"type": "json_object"},
    )
    assert json.loads(r.choices[0].message.content) == REPORT


def test_structured_output_streamed(client, scripted_model):
    chunks = list(
        client.chat.completions.create(
            model=scripted_model,
            messages=[{"role": "user", "content": "Report the weather in Paris."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "WeatherReport", "strict": True,
                                "schema": openai.lib._pydantic.to_strict_json_schema(WeatherReport)},
            },
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == REPORT


def test_structured_output_unmet_is_422(client, scripted_model):
    with pytest.raises(openai.APIStatusError) as ei:
        _parse(client)(
            model=scripted_model,
            messages=[{"role": "user", "content": "hi"}],
            response_format=Person,
        )
    e = ei.value
    assert e.status_code == 422
    assert isinstance(e.body, dict) and e.body.get("code") == "invalid_model_output", e.body
    assert e.message


# The default model: the same request shapes are served, not refused.


def test_default_model_serves_tools(client, model):
    r = client.chat.completions.create(
        model=model, messages=QUESTION, tools=[WEATHER_TOOL], temperature=0, max_tokens=12
    )
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    for call in choice.message.tool_calls or []:
        json.loads(call.function.arguments)
    chunks = list(
        client.chat.completions.create(
            model=model, messages=QUESTION, tools=[WEATHER_TOOL], temperature=0, max_tokens=12,
            stream=True,
        )
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def test_default_model_serves_reasoning_effort(client, model):
    r = client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=8, reasoning_effort="low"
    )
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_default_model_serves_response_format(client, model):
    """A 200 is JSON that validates; a 135M model may also miss every retry (422)."""
    # Up to 1 + server.structured_retries generations, each with its own prefill: on a busy
    # 2-core machine that can outlast the default 60 s timeout.
    try:
        r = client.with_options(timeout=180).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": 'Answer in JSON: {"capital": "..."} for France.'}],
            response_format={"type": "json_object"},
            temperature=0,
            max_tokens=8,
        )
    except openai.APIStatusError as e:
        assert e.status_code == 422, (e.status_code, e.body)
        assert e.body.get("code") == "invalid_model_output", e.body
    else:
        assert isinstance(json.loads(r.choices[0].message.content), dict)
