"""OpenAI SSE → Ollama NDJSON (laneway.dialects.ollama.stream), over a stream of ready frames."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from laneway import sse
from laneway.clock import ManualClock
from laneway.dialects.ollama.response import Timing
from laneway.dialects.ollama.stream import Lines, NdjsonStream
from laneway.errors import UpstreamProtocolError

pytestmark = pytest.mark.anyio


class Frames:
    """What the router hands back: ready SSE frames, and whether it was closed."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.closed = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for frame in self.frames:
            yield frame

    async def aclose(self) -> None:
        self.closed += 1


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse.encode(
        {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


USAGE = sse.encode({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}})


async def translate(frames: list[bytes], path: str = "chat") -> tuple[list[dict[str, Any]], Frames]:
    clock = ManualClock(start=1_700_000_000.0)
    upstream = Frames(frames)
    stream = NdjsonStream(
        upstream, Lines(path=path, model="asked", clock=clock, timing=Timing(0.0)), backend="b"
    )
    body = b"".join([frame async for frame in stream])
    await stream.aclose()
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body.splitlines()], upstream


async def test_content_lines_then_a_done_line_with_the_counts() -> None:
    frames = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "hmm"}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        USAGE,
        sse.DONE,
    ]
    lines, upstream = await translate(frames)
    assert [line["message"] for line in lines[:-1]] == [
        {"role": "assistant", "content": "", "thinking": "hmm"},
        {"role": "assistant", "content": "Hel"},
        {"role": "assistant", "content": "lo"},
    ]
    assert all(line["done"] is False and line["model"] == "asked" for line in lines[:-1])
    assert lines[0]["created_at"] == "2023-11-14T22:13:20Z"
    last = lines[-1]
    assert last["done"] is True
    assert last["done_reason"] == "stop"
    assert last["message"] == {"role": "assistant", "content": ""}
    assert (last["prompt_eval_count"], last["eval_count"]) == (4, 3)
    assert set(last) >= {"total_duration", "load_duration", "prompt_eval_duration", "eval_duration"}
    assert upstream.closed == 1


async def test_tool_call_fragments_are_sent_whole() -> None:
    frames = [
        chunk(
            {
                "role": "assistant",
                "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}],
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        sse.DONE,
    ]
    lines, _ = await translate(frames)
    assert len(lines) == 2
    assert lines[0]["message"]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"city": "Paris"}}},
        {"id": "c2", "function": {"index": 1, "name": "g", "arguments": {}}},
    ]
    assert lines[0]["done"] is False
    assert lines[1]["done_reason"] == "stop"
    assert "eval_count" not in lines[1]  # no usage chunk came


async def test_generate_lines_carry_response_from_chat_or_completion_chunks() -> None:
    lines, _ = await translate([chunk({"content": "Blue"}), chunk({}, "length"), sse.DONE], path="generate")
    assert [(line["response"], line["done"]) for line in lines] == [("Blue", False), ("", True)]
    assert lines[-1]["done_reason"] == "length"
    text = sse.encode({"object": "text_completion", "choices": [{"text": "upon", "finish_reason": None}]})
    lines, _ = await translate([text, sse.DONE], path="generate")
    assert lines[0]["response"] == "upon"


async def test_a_malformed_chunk_is_the_backends_fault() -> None:
    with pytest.raises(UpstreamProtocolError, match="backend 'b'"):
        await translate([sse.encode(b"{not json")])
    with pytest.raises(UpstreamProtocolError, match="not an object"):
        await translate([sse.encode(b"[1]")])
    broken = chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "[1]"}}]})
    with pytest.raises(UpstreamProtocolError, match="tool call"):
        await translate([broken, sse.DONE])


async def test_closing_early_closes_the_upstream() -> None:
    upstream = Frames([chunk({"content": "a"}), chunk({"content": "b"}), sse.DONE])
    stream = NdjsonStream(
        upstream, Lines(path="chat", model="m", clock=ManualClock(), timing=Timing(0.0)), backend="b"
    )
    async for _ in stream:
        break
    await stream.aclose()
    await stream.aclose()
    assert upstream.closed == 2  # safe more than once, as ReplyStream.aclose is
