"""A chat completion → a Response object, and a chat stream → the Responses events
(``laneway.dialects.responses.response`` and ``.stream``), as pure translations checked against
the openai SDK's own models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from openai.types.responses import Response

from laneway import sse
from laneway.dialects.responses.items import decode_reasoning
from laneway.dialects.responses.request import translate
from laneway.dialects.responses.response import Turn, from_completion
from laneway.dialects.responses.stream import ResponseEvents
from laneway.errors import StreamBroken, UpstreamProtocolError

TOOLS = [
    {"type": "function", "name": "weather", "parameters": {"type": "object"}},
    {"type": "custom", "name": "apply_patch"},
    {"type": "local_shell"},
]
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def turn(**body: Any) -> Turn:
    request = {"model": "m", "input": "hi", "tools": TOOLS, **body}
    return Turn(request, translate(request).tools, created_at=1000)


class Frames:
    """An established chat stream's frames, as a provider hands them out (``ReplyStream``)."""

    def __init__(self, chunks: list[Mapping[str, Any]], *, broken: bool = False) -> None:
        self.frames = [sse.encode(c) for c in chunks] + ([] if broken else [sse.DONE])
        self.broken = broken
        self.headers: dict[str, str] = {}
        self.dialect = "openai"
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[bytes]:
        for frame in self.frames:
            yield frame
        if self.broken:
            raise StreamBroken("cut off", backend="b")

    async def aclose(self) -> None:
        self.closed = True


def delta(**fields: Any) -> dict[str, Any]:
    return {"model": "lane-model", "choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def end(reason: str) -> list[dict[str, Any]]:
    return [
        {"model": "lane-model", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]},
        {"model": "lane-model", "choices": [], "usage": USAGE},
    ]


async def events_of(stream: ResponseEvents) -> list[dict[str, Any]]:
    out = []
    async for frame in stream:
        for event in sse.parse(frame):
            data = event.json()
            assert event.event == data["type"]
            out.append(data)
    return out


def test_a_completion_as_a_response() -> None:
    completion = {
        "model": "lane-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "reasoning_content": "They want weather.",
                    "thinking_blocks": [
                        {"type": "thinking", "thinking": "They want weather.", "signature": "s"}
                    ],
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "apply_patch", "arguments": '{"input":"P"}'},
                        },
                        {
                            "id": "c3",
                            "type": "function",
                            "function": {"name": "local_shell", "arguments": '{"command":["ls"]}'},
                        },
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {**USAGE, "prompt_tokens_details": {"cached_tokens": 3}},
    }
    response, answer = from_completion(turn(include=["reasoning.encrypted_content"]), completion, 1005)
    parsed = Response.model_validate(response)
    assert parsed.status == "completed"
    assert parsed.completed_at == 1005
    assert parsed.model == "lane-model"
    assert [item.type for item in parsed.output] == [
        "reasoning",
        "message",
        "function_call",
        "custom_tool_call",
        "local_shell_call",
    ]
    reasoning, _, function, custom, shell = parsed.output
    assert (
        decode_reasoning(reasoning.encrypted_content)
        == completion["choices"][0]["message"]["thinking_blocks"]
    )  # type: ignore[union-attr,index]
    assert (function.call_id, function.name) == ("c1", "weather")  # type: ignore[union-attr]
    assert custom.input == "P"  # type: ignore[union-attr]
    assert shell.action.command == ["ls"]  # type: ignore[union-attr]
    assert parsed.output_text == "Let me check."
    assert parsed.usage is not None
    assert parsed.usage.input_tokens_details.cached_tokens == 3
    assert answer["tool_calls"] == completion["choices"][0]["message"]["tool_calls"]
    assert answer["thinking_blocks"]


def test_a_cut_answer_is_incomplete() -> None:
    completion = {
        "model": "x",
        "choices": [{"message": {"role": "assistant", "content": "a b"}, "finish_reason": "length"}],
    }
    response, _ = from_completion(turn(), completion, 1005)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["completed_at"] is None


@pytest.mark.anyio
async def test_a_text_stream_and_its_stored_answer() -> None:
    stored: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def on_complete(response: dict[str, Any], answer: dict[str, Any]) -> None:
        stored.append((response, answer))

    chunks = [
        delta(role="assistant", content=""),
        delta(content="Hello"),
        delta(content=" there"),
        *end("stop"),
    ]
    events = await events_of(
        ResponseEvents(Frames(chunks), turn(), now=lambda: 1001.0, on_complete=on_complete)
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Hello there"
    assert final.usage is not None
    assert final.usage.total_tokens == 12
    assert stored == [(events[-1]["response"], {"role": "assistant", "content": "Hello there"})]


@pytest.mark.anyio
async def test_reasoning_then_tool_calls_of_each_kind() -> None:
    chunks = [
        delta(reasoning_content="Think"),
        delta(thinking_blocks=[{"type": "thinking", "thinking": "Think", "signature": "s"}]),
        delta(
            tool_calls=[
                {"index": 0, "id": "c1", "type": "function", "function": {"name": "weather", "arguments": ""}}
            ]
        ),
        delta(
            tool_calls=[
                {
                    "index": 1,
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": '{"inp'},
                }
            ]
        ),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a":1}'}}]),
        delta(tool_calls=[{"index": 1, "function": {"arguments": 'ut":"P"}'}}]),
        delta(
            tool_calls=[
                {
                    "index": 2,
                    "id": "c3",
                    "type": "function",
                    "function": {"name": "local_shell", "arguments": '{"command":["ls"]}'},
                }
            ]
        ),
        *end("tool_calls"),
    ]
    stream = ResponseEvents(Frames(chunks), turn(include=["reasoning.encrypted_content"]), now=lambda: 1.0)
    events = await events_of(stream)
    kinds = [e["type"] for e in events]
    assert kinds[2:7] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
    ]
    assert kinds.count("response.function_call_arguments.delta") == 1  # only a function's arguments stream
    assert kinds[-7:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = Response.model_validate(events[-1]["response"])
    assert [i.type for i in final.output] == [
        "reasoning",
        "function_call",
        "custom_tool_call",
        "local_shell_call",
    ]
    assert decode_reasoning(final.output[0].encrypted_content) == [  # type: ignore[union-attr]
        {"type": "thinking", "thinking": "Think", "signature": "s"}
    ]
    assert final.output[1].arguments == '{"a":1}'  # type: ignore[union-attr]
    assert final.output[2].input == "P"  # type: ignore[union-attr]
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [i.id for i in final.output]  # the same ids from added to done


@pytest.mark.anyio
async def test_a_broken_stream_ends_with_response_failed_holding_the_items_so_far() -> None:
    stream = ResponseEvents(Frames([delta(content="Hel")], broken=True), turn(), now=lambda: 1.0)
    events: list[dict[str, Any]] = []

    async def read() -> None:
        async for frame in stream:
            events.extend(e.json() for e in sse.parse(frame))

    with pytest.raises(StreamBroken) as broken:
        await read()
    failed = sse.parse(
        stream.error_frame(broken.value, {"error": {"message": "The model's backend broke off"}})
    )
    [event] = [e.json() for e in failed]
    assert event["type"] == "response.failed"
    assert event["sequence_number"] == len(events)
    response = Response.model_validate(event["response"])
    assert response.status == "failed"
    assert response.error is not None
    assert response.error.code == "server_error"
    assert response.error.message == "The model's backend broke off"
    await stream.aclose()
    assert stream.stream.closed  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_a_chunk_that_is_not_json_is_the_backends_fault() -> None:
    frames = Frames([])
    frames.frames = [b"data: {nope\n\n"]
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        await events_of(ResponseEvents(frames, turn(), now=lambda: 1.0, backend="b"))
