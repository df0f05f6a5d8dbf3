"""langchain-anthropic's ``ChatAnthropic`` pointed at laneway (``base_url``): invoke, stream and
tools over two turns (``bind_tools``, then the tool's result), on every family's lane."""

from __future__ import annotations

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool

from tests.conftest import RunningGateway

FAMILIES = [
    pytest.param("llama3.2:3b", id="ollama"),
    pytest.param("gpt-4o-mini", id="openai"),
    pytest.param("claude-haiku-4-5", id="anthropic"),
]


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return f"rain in {city}"


def chat(gw: RunningGateway, model: str) -> ChatAnthropic:
    return ChatAnthropic(model=model, base_url=gw.url, api_key=gw.key, max_retries=0, max_tokens=200)


@pytest.mark.parametrize("model", FAMILIES)
def test_invoke_and_stream(gw: RunningGateway, model: str) -> None:
    answer = chat(gw, model).invoke("Say hello to laneway")
    assert isinstance(answer.content, str | list)
    assert f"Hello from {model}." in answer.text
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] > 0
    chunks = list(chat(gw, model).stream("Stream to me"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    assert f"Hello from {model}." in whole.text


@pytest.mark.parametrize("model", FAMILIES)
def test_bind_tools_over_two_turns(gw: RunningGateway, model: str) -> None:
    llm = chat(gw, model).bind_tools([get_weather])
    question = HumanMessage("weather in Paris?")
    first = llm.invoke([question])
    (call,) = first.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"] == {"city": "sim"}
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    second = llm.invoke([question, first, result])
    assert "The tool said: rain in sim" in second.text
