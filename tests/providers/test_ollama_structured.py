"""Ollama's emulated forced tool call: tool_choice → ``format`` (the tool's schema), and the
answer's JSON → a call of that tool, in whole answers and in streams. Pure functions, no server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from laneway.errors import InvalidRequest, UnsupportedParameter
from laneway.providers.base import Call
from laneway.providers.ollama_request import chat_request, forced_tool
from laneway.providers.ollama_response import chat_response
from laneway.providers.ollama_stream import ChatStream, chat_stream

USER = [{"role": "user", "content": "weather in Oslo?"}]
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "weather", "description": "The forecast", "parameters": WEATHER_PARAMS},
}
CLOCK = {
    "type": "function",
    "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}},
}
NAMED = {"type": "function", "function": {"name": "weather"}}


def call(body: dict[str, Any]) -> Call:
    return Call(model="llama3.2:3b", body={"model": "llama3.2:3b", **body})


def chat(body: dict[str, Any]) -> dict[str, Any]:
    return chat_request(call(body), stream=False)


# --- requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "choice"), [([WEATHER, CLOCK], NAMED), ([WEATHER], "required"), ([WEATHER], NAMED)]
)
def test_one_forced_tool_becomes_its_schema_as_format(tools: list[Any], choice: Any) -> None:
    out = chat(
        {
            "messages": [{"role": "system", "content": "Be brief."}, *USER],
            "tools": tools,
            "tool_choice": choice,
        }
    )
    assert out["format"] == WEATHER_PARAMS
    assert "tools" not in out  # else Ollama might read the JSON answer as a call of its own
    system = out["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("Be brief.\n\n")
    assert "weather: The forecast" in system["content"]
    assert out["messages"][1:] == USER


def test_required_with_several_tools_ties_each_name_to_its_arguments() -> None:
    out = chat({"messages": USER, "tools": [WEATHER, CLOCK], "tool_choice": "required"})
    assert out["format"] == {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": ["weather"]}, "arguments": WEATHER_PARAMS},
                "required": ["name", "arguments"],
            },
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": ["clock"]},
                    "arguments": {"type": "object", "properties": {}},
                },
                "required": ["name", "arguments"],
            },
        ]
    }
    assert out["messages"][0]["role"] == "system"  # made, as the request had none
    assert "- weather: The forecast\n- clock" in out["messages"][0]["content"]


def test_definitions_move_to_the_root_and_a_clash_is_refused() -> None:
    def tool(name: str, city: dict[str, Any]) -> dict[str, Any]:
        params = {"type": "object", "properties": {"c": {"$ref": "#/$defs/City"}}, "$defs": {"City": city}}
        return {"type": "function", "function": {"name": name, "parameters": params}}

    same = {"type": "string"}
    out = chat({"messages": USER, "tools": [tool("a", same), tool("b", same)], "tool_choice": "required"})
    assert out["format"]["$defs"] == {"City": same}
    assert all("$defs" not in b["properties"]["arguments"] for b in out["format"]["anyOf"])
    with pytest.raises(UnsupportedParameter) as exc:  # cannot be done faithfully: another lane may
        chat(
            {
                "messages": USER,
                "tools": [tool("a", same), tool("b", {"type": "integer"})],
                "tool_choice": "required",
            }
        )
    assert exc.value.param == "tool_choice"


def test_forcing_a_tool_that_is_not_there_is_the_clients_fault() -> None:
    missing = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(InvalidRequest):
        chat({"messages": USER, "tools": [WEATHER], "tool_choice": missing})


def test_auto_and_none_are_not_forced() -> None:
    assert forced_tool({"tools": [WEATHER], "tool_choice": "auto"}) is None
    assert forced_tool({"tools": [WEATHER]}) is None
    assert forced_tool({"tool_choice": "required"}) is None
    out = chat({"messages": USER, "tools": [WEATHER]})
    assert "format" not in out
    assert out["tools"]


# --- whole answers ------------------------------------------------------------------------------


def answer(content: str, done_reason: str = "stop") -> dict[str, Any]:
    return {
        "model": "llama3.2:3b",
        "message": {"role": "assistant", "content": content},
        "done": True,
        "done_reason": done_reason,
        "prompt_eval_count": 7,
        "eval_count": 3,
    }


def test_the_answer_is_a_call_of_the_forced_tool() -> None:
    forced = forced_tool({"tools": [WEATHER], "tool_choice": NAMED})
    out = chat_response(answer(' {"city": "Oslo"}\n'), model="m", forced=forced)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (tool_call,) = choice["message"]["tool_calls"]
    assert tool_call["id"].startswith("call_")
    assert tool_call["type"] == "function"
    assert tool_call["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    cut = chat_response(answer('{"city": "Os', "length"), model="m", forced=forced)
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Os'


def test_an_answer_naming_one_of_several_tools_is_mapped_to_its_call() -> None:
    forced = forced_tool({"tools": [WEATHER, CLOCK], "tool_choice": "required"})
    out = chat_response(answer('{"name": "clock", "arguments": {}}'), model="m", forced=forced)
    function = out["choices"][0]["message"]["tool_calls"][0]["function"]
    assert function == {"name": "clock", "arguments": "{}"}
    for unreadable in ('{"name": "nope", "arguments": {}}', '{"name": "clock"}', "not json"):
        out = chat_response(answer(unreadable), model="m", forced=forced)
        assert out["choices"][0]["message"]["content"] == unreadable  # left as the model said it
        assert out["choices"][0]["finish_reason"] == "stop"


# --- streams ------------------------------------------------------------------------------------


def line(content: str, done: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "m", "message": {"role": "assistant", "content": content}, "done": done}
    if done:
        out.update(done_reason="stop", prompt_eval_count=7, eval_count=3)
    return out


def run(stream: ChatStream, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for data in lines:
        out.extend(stream.feed(data))
    stream.close()
    return out


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_one_forced_tools_arguments_stream_as_they_come() -> None:
    stream = chat_stream(call({"messages": USER, "tools": [WEATHER], "tool_choice": "required"}))
    chunks = run(stream, [line('{"city": '), line('"Oslo"}'), line("", done=True)])
    got = deltas(chunks)
    assert got[0] == {"role": "assistant", "content": ""}
    start = got[1]["tool_calls"][0]
    assert start["index"] == 0
    assert start["id"].startswith("call_")
    assert start["function"]["name"] == "weather"
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in got[1:-1]]  # the start has ""
    assert "".join(fragments) == '{"city": "Oslo"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_an_empty_forced_answer_is_a_call_without_arguments() -> None:
    stream = chat_stream(call({"messages": USER, "tools": [CLOCK], "tool_choice": "required"}))
    got = deltas(run(stream, [line("", done=True)]))
    assert got[1]["tool_calls"][0]["function"] == {"name": "clock", "arguments": "{}"}


def test_one_of_several_is_read_whole_and_sent_as_one_call() -> None:
    stream = chat_stream(call({"messages": USER, "tools": [WEATHER, CLOCK], "tool_choice": "required"}))
    chunks = run(
        stream, [line('{"name": "weather", '), line('"arguments": {"city": "Oslo"}}'), line("", True)]
    )
    got = deltas(chunks)
    assert len(got) == 3  # role, the call, finish
    function = got[1]["tool_calls"][0]["function"]
    assert function["name"] == "weather"
    assert orjson.loads(function["arguments"]) == {"city": "Oslo"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    stream = chat_stream(call({"messages": USER, "tools": [WEATHER, CLOCK], "tool_choice": "required"}))
    chunks = run(stream, [line("no idea"), line("", True)])
    assert deltas(chunks)[1] == {"content": "no idea"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
