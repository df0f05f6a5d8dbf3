"""Anthropic's emulated JSON mode: response_format → one forced answer tool, and its input → the
message content, in whole answers and in streams. Pure translation functions, no server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from laneway import sse
from laneway.errors import InvalidRequest
from laneway.providers.anthropic_request import ANSWER_TOOL, json_answer, messages_request
from laneway.providers.anthropic_response import message_response
from laneway.providers.anthropic_stream import MessageStream, event_data, message_stream
from laneway.providers.base import Call

USER = [{"role": "user", "content": "a city, please"}]
CITY = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "City", "schema": CITY, "strict": True}}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def call(body: dict[str, Any], effort: str | None = None) -> Call:
    return Call(model="claude-sonnet-4-6", body={"model": "claude-sonnet-4-6", **body}, effort=effort)


def req(body: dict[str, Any], effort: str | None = None) -> dict[str, Any]:
    return messages_request(call(body, effort), stream=False)


# --- requests -----------------------------------------------------------------------------------


def test_json_schema_becomes_one_forced_tool_without_thinking() -> None:
    out = req({"messages": USER, "response_format": SCHEMA_FORMAT, "reasoning_effort": "high"}, effort="high")
    assert out["tools"] == [
        {"name": "City", "description": out["tools"][0]["description"], "input_schema": CITY}
    ]
    assert out["tool_choice"] == {"type": "tool", "name": "City", "disable_parallel_tool_use": True}
    assert "thinking" not in out  # Anthropic refuses thinking with a forced tool: dropped, not a 422
    assert "system" not in out


def test_json_object_takes_any_object_and_asks_for_json() -> None:
    out = req(
        {
            "messages": [{"role": "system", "content": "Be brief."}, *USER],
            "response_format": {"type": "json_object"},
        }
    )
    assert out["tools"][0]["name"] == ANSWER_TOOL
    assert out["tools"][0]["input_schema"] == {"type": "object"}
    assert out["tool_choice"]["name"] == ANSWER_TOOL
    assert out["system"].startswith("Be brief.\n\n")
    assert "JSON" in out["system"]


def test_a_schema_name_is_made_a_tool_name_and_a_missing_schema_takes_any_object() -> None:
    answer = json_answer({"response_format": {"type": "json_schema", "json_schema": {"name": "my city.v2"}}})
    assert answer is not None
    assert answer.tool == "my_city_v2"
    assert answer.schema == {"type": "object"}


def test_a_schema_whose_root_is_not_an_object_is_wrapped_with_its_definitions_at_the_root() -> None:
    schema = {"type": "array", "items": {"$ref": "#/$defs/City"}, "$defs": {"City": CITY}}
    out = req(
        {
            "messages": USER,
            "response_format": {"type": "json_schema", "json_schema": {"name": "L", "schema": schema}},
        }
    )
    assert out["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {"value": {"type": "array", "items": {"$ref": "#/$defs/City"}}},
        "required": ["value"],
        "$defs": {"City": CITY},
    }


def test_with_the_clients_tools_one_of_them_all_must_be_called() -> None:
    out = req(
        {"messages": USER, "response_format": SCHEMA_FORMAT, "tools": [WEATHER], "parallel_tool_calls": False}
    )
    assert [t["name"] for t in out["tools"]] == ["weather", "City"]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    # the answer tool's name never hides one of the client's
    clash = {"type": "function", "function": {"name": "City"}}
    answer = json_answer({"response_format": SCHEMA_FORMAT, "tools": [clash]})
    assert answer is not None
    assert answer.tool == "City_answer"
    # tool_choice none: the client's tools are not offered, the answer tool is forced
    out = req({"messages": USER, "response_format": SCHEMA_FORMAT, "tools": [WEATHER], "tool_choice": "none"})
    assert [t["name"] for t in out["tools"]] == ["City"]
    assert out["tool_choice"]["type"] == "tool"


def test_a_forced_tool_of_the_clients_wins_over_the_json_mode() -> None:
    body = {"messages": USER, "response_format": SCHEMA_FORMAT, "tools": [WEATHER], "tool_choice": "required"}
    assert json_answer(body) is None
    out = req(body)
    assert [t["name"] for t in out["tools"]] == ["weather"]
    assert out["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "nope"}},
        {"type": "json_schema"},
        {"type": "yaml"},
        "json",
    ],
)
def test_a_bad_response_format_is_the_clients_fault(response_format: Any) -> None:
    with pytest.raises(InvalidRequest) as exc:
        req({"messages": USER, "response_format": response_format})
    assert exc.value.param == "response_format"


# --- whole answers ------------------------------------------------------------------------------


def answer_message(blocks: list[dict[str, Any]], stop: str = "tool_use") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": blocks,
        "stop_reason": stop,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def tool_use(name: str, value: Any, id: str = "toolu_1") -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": value}


def test_the_answer_tools_input_is_the_content() -> None:
    answer = json_answer({"response_format": SCHEMA_FORMAT})
    data = answer_message(
        [{"type": "text", "text": "Here:"}, tool_use("City", {"name": "Oslo", "population": 1})]
    )
    out = message_response(data, model="claude-sonnet-4-6", answer=answer)
    choice = out["choices"][0]
    assert orjson.loads(choice["message"]["content"]) == {"name": "Oslo", "population": 1}
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    cut = message_response(
        answer_message([tool_use("City", {})], stop="max_tokens"), model="m", answer=answer
    )
    assert cut["choices"][0]["finish_reason"] == "length"


def test_a_wrapped_answer_is_unwrapped() -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    answer = json_answer(
        {"response_format": {"type": "json_schema", "json_schema": {"name": "L", "schema": schema}}}
    )
    out = message_response(answer_message([tool_use("L", {"value": ["a", "b"]})]), model="m", answer=answer)
    assert orjson.loads(out["choices"][0]["message"]["content"]) == ["a", "b"]


def test_calls_of_the_clients_tools_stay_tool_calls() -> None:
    answer = json_answer({"response_format": SCHEMA_FORMAT, "tools": [WEATHER]})
    out = message_response(answer_message([tool_use("weather", {"city": "Oslo"})]), model="m", answer=answer)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "weather"
    # without an emulated JSON mode a tool named like a schema is just a tool
    plain = message_response(answer_message([tool_use("City", {})]), model="m")
    assert plain["choices"][0]["finish_reason"] == "tool_calls"


# --- streams ------------------------------------------------------------------------------------


def events(*pairs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    raw = b"".join(sse.encode({"type": name, **data}, event=name) for name, data in pairs)
    return [event_data(e) for e in sse.Decoder().feed(raw)]


def run(stream: MessageStream, evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for event in evs:
        out.extend(stream.feed(event))
    stream.close()
    return out


START = ("message_start", {"message": {"id": "msg_9", "model": "claude-x", "usage": {"input_tokens": 9}}})


def answer_stream(name: str, pieces: list[str], stop: str = "tool_use") -> list[dict[str, Any]]:
    block = {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}
    return events(
        START,
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Sure:"}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": block}),
        *(
            ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": p}})
            for p in pieces
        ),
        ("content_block_stop", {"index": 1}),
        ("message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": 5}}),
        ("message_stop", {}),
    )


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_the_answer_tools_json_deltas_are_content_deltas() -> None:
    stream = message_stream(call({"messages": USER, "response_format": SCHEMA_FORMAT}))
    chunks = run(stream, answer_stream("City", ['{"name": "Os', 'lo", "population": 1}']))
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": '{"name": "Os'},
        {"content": 'lo", "population": 1}'},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_an_empty_answer_is_an_empty_object_and_a_wrapped_one_comes_whole() -> None:
    stream = message_stream(call({"messages": USER, "response_format": {"type": "json_object"}}))
    assert deltas(run(stream, answer_stream(ANSWER_TOOL, [])))[1] == {"content": "{}"}
    schema = {"type": "array", "items": {"type": "integer"}}
    rf = {"type": "json_schema", "json_schema": {"name": "L", "schema": schema}}
    stream = message_stream(call({"messages": USER, "response_format": rf}))
    chunks = run(stream, answer_stream("L", ['{"value": [1,', " 2]}"]))
    assert deltas(chunks)[1:] == [{"content": "[1,2]"}, {}]


def test_a_streamed_call_of_the_clients_tool_stays_a_tool_call() -> None:
    stream = message_stream(call({"messages": USER, "response_format": SCHEMA_FORMAT, "tools": [WEATHER]}))
    chunks = run(stream, answer_stream("weather", ['{"city": "Oslo"}']))
    assert deltas(chunks)[1]["tool_calls"][0]["function"]["name"] == "weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
