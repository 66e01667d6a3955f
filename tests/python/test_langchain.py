"""LangChain's ChatOpenAI and ChatOllama against rkserve: tool binding and structured output.

Feature assertions use the scripted synthetic model (see scripted.py).
"""

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from scripted import CALL_ARGUMENTS, REPORT, WEATHER_ANSWER, WEATHER_QUESTION, WeatherReport


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return "sunny, 22 °C"


def _openai(server_url, model, **kw):
    return ChatOpenAI(
        base_url=f"{server_url}/v1", api_key="unused", model=model, max_retries=0, timeout=60, **kw
    )


def _ollama(server_url, model, **kw):
    return ChatOllama(base_url=server_url, model=model, **kw)


def _assert_weather_call(msg):
    assert isinstance(msg, AIMessage)
    assert len(msg.tool_calls) == 1, msg
    call = msg.tool_calls[0]
    assert call["name"] == "get_weather"
    assert call["args"] == CALL_ARGUMENTS
    assert call["id"]
    assert not msg.invalid_tool_calls


@pytest.mark.parametrize("chat", [_openai, _ollama], ids=["ChatOpenAI", "ChatOllama"])
def test_bind_tools_invoke(server_url, scripted_model, chat):
    llm = chat(server_url, scripted_model).bind_tools([get_weather])
    _assert_weather_call(llm.invoke(WEATHER_QUESTION))


@pytest.mark.parametrize("chat", [_openai, _ollama], ids=["ChatOpenAI", "ChatOllama"])
def test_bind_tools_stream(server_url, scripted_model, chat):
    llm = chat(server_url, scripted_model).bind_tools([get_weather])
    full = None
    for chunk in llm.stream(WEATHER_QUESTION):
        full = chunk if full is None else full + chunk
    _assert_weather_call(full)


@pytest.mark.parametrize("chat", [_openai, _ollama], ids=["ChatOpenAI", "ChatOllama"])
def test_tool_round_trip(server_url, scripted_model, chat):
    """The agent loop: call, run the tool, send its result back, get the answer."""
    llm = chat(server_url, scripted_model).bind_tools([get_weather])
    messages = [HumanMessage(WEATHER_QUESTION)]
    ai = llm.invoke(messages)
    _assert_weather_call(ai)
    call = ai.tool_calls[0]
    messages += [ai, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    answer = llm.invoke(messages)
    assert not answer.tool_calls
    assert WEATHER_ANSWER in answer.content
    assert "<think>" not in answer.content


@pytest.mark.parametrize(
    "method", [None, "json_schema", "function_calling", "json_mode"],
    ids=["default", "json_schema", "function_calling", "json_mode"],
)
@pytest.mark.parametrize("chat", [_openai, _ollama], ids=["ChatOpenAI", "ChatOllama"])
def test_with_structured_output(server_url, scripted_model, chat, method):
    # The default is "json_schema" in both integrations (langchain-openai >= 0.3,
    # langchain-ollama >= 0.3); "function_calling" sends a tool named WeatherReport with a
    # forced tool_choice; "json_mode" only asks for JSON, so the question names the schema.
    kw = {} if method is None else {"method": method}
    llm = chat(server_url, scripted_model).with_structured_output(WeatherReport, **kw)
    out = llm.invoke("Give me the WeatherReport for Paris as JSON.")
    assert isinstance(out, WeatherReport), out
    assert out == WeatherReport(**REPORT)


@pytest.mark.parametrize("chat", [_openai, _ollama], ids=["ChatOpenAI", "ChatOllama"])
def test_default_model_with_tools_is_served(server_url, model, chat):
    if chat is _openai:
        llm = _openai(server_url, model, temperature=0, max_tokens=8)
    else:
        llm = _ollama(server_url, model, temperature=0, num_predict=8)
    msg = llm.bind_tools([get_weather]).invoke(WEATHER_QUESTION)
    assert isinstance(msg, AIMessage)
    assert msg.content or msg.tool_calls
    assert msg.response_metadata
