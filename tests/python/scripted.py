"""What models/synthetic/scripted-tools.toml answers, shared by the tests that use it.

Its rules (first match in the rendered prompt wins): a prompt holding a `<tool_response>`
gets WEATHER_ANSWER; one holding `get_weather` (a tool definition) gets a call of
get_weather(city="Paris"); a tool named WeatherReport is called with REPORT; a schema titled
WeatherReport is answered with REPORT as JSON; anything else gets the fallback script.
Every reply but the last two opens with a `<think>` block.
"""

import pydantic

WEATHER_QUESTION = "What is the weather like in Paris?"
CALL_THINKING = "Let me see.\n"
CALL_ARGUMENTS = {"city": "Paris"}
WEATHER_ANSWER = "It is sunny in Paris, 22 °C."
ANSWER_THINKING = "The tool answered.\n"
FALLBACK_THINKING = "Nothing to look up.\n"
FALLBACK_ANSWER = "Hello! How can I help?"
REPORT = {"city": "Paris", "temperature_c": 22, "sunny": True}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


class GetWeather(pydantic.BaseModel):
    """Get the current weather in a city."""

    city: str


class WeatherReport(pydantic.BaseModel):
    """The weather in a city."""

    city: str
    temperature_c: int
    sunny: bool


class Person(pydantic.BaseModel):
    """A schema no scripted reply meets (the fallback script is no JSON)."""

    name: str
    age: int
