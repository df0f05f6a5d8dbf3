"""OpenAI answers and streams → Anthropic's message and event stream, and errors in Anthropic's
shape (``dialects.anthropic.response``, ``.stream``, ``.errors``), as pure functions, with the
official anthropic SDK's own types and stream accumulator reading what they make."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from laneway import sse
from laneway.dialects.anthropic.errors import ANTHROPIC, error_frame, status_of
from laneway.dialects.anthropic.response import to_message
from laneway.dialects.anthropic.stream import AnthropicStream, Translator
from laneway.errors import (
    InvalidRequest,
    ModelNotFound,
    NoLaneAvailable,
    QueueFull,
    StreamBroken,
    UpstreamStatusError,
)
from laneway.providers.base import OPENAI

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def completion(message: dict[str, Any], finish: str = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "llama3.2:3b",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}},
    }


def test_text_answer() -> None:
    message = to_message(completion({"content": "Hello."}), model="asked", stop_sequences=[])
    parsed = Message.model_validate(message)
    assert parsed.id == "msg_chatcmpl-1"
    assert parsed.model == "llama3.2:3b"
    assert [b.type for b in parsed.content] == ["text"]
    assert parsed.stop_reason == "end_turn"
    assert parsed.usage.input_tokens == 8
    assert parsed.usage.cache_read_input_tokens == 4
    assert parsed.usage.output_tokens == 5


def test_reasoning_text_and_tool_calls_in_anthropics_order() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{broken"}},
    ]
    answer = completion(
        {"content": "Checking.", "reasoning_content": "hmm", "tool_calls": calls}, "tool_calls"
    )
    parsed = Message.model_validate(to_message(answer, model="m", stop_sequences=[]))
    assert [b.type for b in parsed.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert parsed.stop_reason == "tool_use"
    thinking, _, first, second = parsed.content
    assert thinking.type == "thinking"
    assert (thinking.thinking, thinking.signature) == ("hmm", "")
    assert first.type == "tool_use"
    assert (first.id, first.name, first.input) == ("call_1", "get_weather", {"city": "Paris"})
    assert second.type == "tool_use"
    assert second.input == {}  # arguments that are not JSON: the call, without them


def test_signed_thinking_blocks_are_kept_with_their_signatures() -> None:
    blocks = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "xyz"},
    ]
    answer = completion({"content": "Hi.", "reasoning_content": "hmm", "thinking_blocks": blocks})
    content = to_message(answer, model="m", stop_sequences=[])["content"]
    assert content == [*blocks, {"type": "text", "text": "Hi."}]


@pytest.mark.parametrize(
    ("finish", "choice", "reason", "sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("stop", {"stop_reason": 128001}, "end_turn", None),  # vLLM names a stop token id
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
    ],
)
def test_stop_reasons(finish: str, choice: dict[str, Any], reason: str, sequence: str | None) -> None:
    message = to_message(completion({"content": "x"}, finish, **choice), model="m", stop_sequences=["END"])
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


# --- streams --------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "model": "llama3.2:3b",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE = {"id": "chatcmpl-9", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}


class Frames:
    """A ReplyStream of OpenAI frames, cut as given."""

    dialect = OPENAI
    headers: dict[str, str] = {}

    def __init__(self, frames: list[bytes], error: Exception | None = None) -> None:
        self.frames = frames
        self.error = error
        self.closed = 0

    async def _gen(self) -> Any:
        for frame in self.frames:
            yield frame
        if self.error is not None:
            raise self.error

    def __aiter__(self) -> Any:
        return self._gen()

    async def aclose(self) -> None:
        self.closed += 1


def openai_frames(chunks: list[dict[str, Any]]) -> list[bytes]:
    return [sse.encode(c) for c in chunks] + [sse.DONE]


async def translate(frames: list[bytes]) -> list[sse.Event]:
    inner = Frames(frames)
    stream = AnthropicStream(inner, model="m", stop_sequences=[])
    out = b"".join([frame async for frame in stream])
    await stream.aclose()
    assert inner.closed == 1
    return list(sse.parse(out))


def accumulated(events: list[sse.Event]) -> Message:
    """The message the anthropic SDK's own accumulator builds from the events."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for e in events:
        if e.event == "ping":
            continue
        event = EVENTS.validate_python(e.json())
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    return Message.model_validate(snapshot.model_dump())


@pytest.mark.anyio
async def test_a_text_stream_in_anthropics_order() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo."}),
    ]
    events = await translate(openai_frames([*chunks, chunk({}, "stop"), USAGE]))
    assert [e.event for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(e.json()["type"] == e.event for e in events)
    message = accumulated(events)
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)


@pytest.mark.anyio
async def test_reasoning_signature_text_and_tool_calls_become_blocks() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "let me "}),
        chunk({"reasoning_content": "think"}),
        chunk({"thinking_blocks": [{"type": "thinking", "thinking": "let me think", "signature": "sig"}]}),
        chunk({"content": "Sure."}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
                ]
            }
        ),
        chunk({}, "tool_calls"),
    ]
    events = await translate(openai_frames(chunks))
    deltas = [e.json()["delta"]["type"] for e in events if e.event == "content_block_delta"]
    assert deltas == [
        "thinking_delta",
        "thinking_delta",
        "signature_delta",
        "text_delta",
        "input_json_delta",
        "input_json_delta",
        "input_json_delta",
    ]
    starts = [e.json()["content_block"]["type"] for e in events if e.event == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use", "tool_use"]
    assert [e.json()["index"] for e in events if e.event == "content_block_stop"] == [0, 1, 2, 3]
    message = accumulated(events)
    thinking, text, first, second = message.content
    assert thinking.type == "thinking"
    assert (thinking.thinking, thinking.signature) == ("let me think", "sig")
    assert text.type == "text"
    assert first.type == "tool_use"
    assert (first.id, first.name, first.input) == ("c1", "f", {"a": 1})
    assert second.type == "tool_use"
    assert second.input == {}
    assert message.stop_reason == "tool_use"


@pytest.mark.anyio
async def test_frames_cut_anywhere_and_a_stream_without_done() -> None:
    whole = b"".join(
        sse.encode(c) for c in [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"})]
    )
    cut = [whole[:7], whole[7:40], whole[40:]]
    events = await translate(cut)  # no [DONE]: the stream is still ended in Anthropic's way
    assert [e.event for e in events][-2:] == ["message_delta", "message_stop"]
    assert accumulated(events).content[0].type == "text"


def test_translator_alone_for_an_empty_stream() -> None:
    translator = Translator("m")
    events = list(sse.parse(translator.end()))
    assert [e.event for e in events] == ["message_start", "ping", "message_delta", "message_stop"]


@pytest.mark.anyio
async def test_a_frame_that_is_not_json_is_a_protocol_error() -> None:
    stream = AnthropicStream(Frames([b"data: {not json\n\n"]), model="m", stop_sequences=[])
    with pytest.raises(Exception, match="not a JSON object"):
        _ = [frame async for frame in stream]


# --- errors -------------------------------------------------------------------------------------


def shaped(exc: Any) -> tuple[int, dict[str, Any]]:
    status = status_of(exc)
    return status, ANTHROPIC.error(status, exc.to_openai())


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (ModelNotFound("no model"), 404, "not_found_error"),
        (QueueFull("full", retry_after=1), 429, "rate_limit_error"),
        (NoLaneAvailable("none now"), 529, "overloaded_error"),
        (UpstreamStatusError("x", upstream_status=529), 529, "overloaded_error"),
        (UpstreamStatusError("x", upstream_status=503), 529, "overloaded_error"),
        (UpstreamStatusError("x", upstream_status=500), 502, "api_error"),
        (UpstreamStatusError("x", upstream_status=401), 502, "api_error"),
        (StreamBroken("cut"), 502, "api_error"),
    ],
)
def test_errors_in_anthropics_shape_and_status(exc: Any, status: int, kind: str) -> None:
    got_status, body = shaped(exc)
    assert got_status == status
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["error"]["message"] == exc.client_message


def test_the_stream_error_event() -> None:
    exc = StreamBroken("cut")
    (event,) = sse.parse(error_frame(exc, exc.to_openai()))
    assert event.event == "error"
    assert orjson.loads(event.data)["error"]["type"] == "api_error"
