"""Anthropic's Messages stream → an OpenAI chat stream: the SSE events read with the one codec
(``laneway.sse``), each translated by a ``MessageStream`` into ``chat.completion.chunk`` objects.

An emulated JSON mode (``anthropic_request.json_answer``): the answer tool's ``input_json_delta``
fragments become content deltas as they come (a wrapped schema's answer is unwrapped at the
block's end, whole), text blocks are left out, and a ``tool_use`` stop is a "stop".

Usage (``MessageStream.usage``): a stream knows its prompt tokens from ``message_start`` and its
final output tokens from ``message_delta``, just before the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from laneway import sse
from laneway.errors import StreamBroken, UpstreamProtocolError
from laneway.providers.anthropic_request import JsonAnswer, json_answer
from laneway.providers.anthropic_response import (
    PROMPT_KEYS,
    answer_json,
    finish_reason,
    prompt_counts,
    status_error,
)
from laneway.providers.base import Call, Usage
from laneway.providers.http import StreamingBody, loads_object
from laneway.providers.openai_format import (
    ChunkWriter,
    include_usage,
    int_field,
    protocol_guard,
    str_field,
    usage,
)


async def frames(body: StreamingBody, stream: MessageStream, backend: str) -> AsyncIterator[bytes]:
    """Read Anthropic SSE events, yield OpenAI SSE frames, end with ``[DONE]`` (or raise if cut off)."""
    decoder = sse.Decoder()
    async for chunk in body.chunks():
        try:
            events = decoder.feed(chunk)
        except sse.EventTooLarge:
            raise UpstreamProtocolError(
                f"backend '{backend}' sent a stream event over {decoder.max_bytes} bytes", backend=backend
            ) from None
        for event in events:
            for out in stream.feed(event_data(event, backend)):
                yield sse.encode(out)
    # The decoder is not closed: an event without its closing blank line is incomplete and
    # dropped (as the SSE specification says); if it was message_stop, close() reports the
    # stream as broken.
    stream.close()
    yield sse.DONE


def event_data(event: sse.Event, backend: str = "") -> dict[str, Any]:
    """An event's JSON object, with the event's name as its ``type`` when the data has none
    (an unnamed event, ``message`` in SSE's words, names nothing)."""
    payload = loads_object(event.data, backend, "a stream event")
    if "type" not in payload and event.event != "message":
        payload["type"] = event.event
    return payload


@dataclass(slots=True)
class _Block:
    kind: str
    tool_index: int = -1
    has_arguments: bool = False
    thinking: str = ""
    signature: str = ""
    held: str = ""  # a wrapped JSON answer, read whole before it is unwrapped


class MessageStream:
    """Anthropic stream events → ``chat.completion.chunk`` objects.

    ``message_start`` gives the id and model (the role chunk); content blocks become content,
    ``reasoning_content`` and tool-call deltas (tool calls are numbered in order, whatever their
    block index); ``message_delta`` carries the stop reason and output tokens; ``message_stop``
    ends it (finish chunk, then usage if asked). An ``error`` event raises; a body that ends
    before ``message_stop`` raises StreamBroken (``close``).
    """

    def __init__(
        self, *, model: str, include_usage: bool, backend: str = "", answer: JsonAnswer | None = None
    ) -> None:
        self.model = model
        self.answer = answer  # the request's emulated JSON mode, if any
        self.answered = False
        self.include_usage = include_usage
        self.backend = backend
        self.writer: ChunkWriter | None = None
        self.blocks: dict[int, _Block] = {}
        self.tool_calls = 0
        self.stop_reason: Any = None
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.output_tokens = 0
        self._counted: set[str] = set()  # which counts the upstream reported at all
        self.done = False

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "error":
            raise status_error(event.get("error"), self.backend)
        if kind == "ping":
            return []
        if self.done:
            raise UpstreamProtocolError(
                f"backend '{self.backend}' sent events after message_stop", backend=self.backend
            )
        with protocol_guard(self.backend, f"'{kind}' event"):
            if kind == "message_start":
                message = event["message"]
                self.writer = ChunkWriter(
                    id=str_field(message, "id"),
                    model=message.get("model") or self.model,
                    include_usage=self.include_usage,
                )
                self._take_usage(message.get("usage") or {})
                return [self.writer.role()]
            if self.writer is None:
                raise ValueError("an event came before message_start")
            if kind == "content_block_start":
                return self._block_start(self.writer, int(event["index"]), event["content_block"])
            if kind == "content_block_delta":
                return self._block_delta(self.writer, self.blocks[int(event["index"])], event["delta"])
            if kind == "content_block_stop":
                return self._block_stop(self.writer, self.blocks[int(event["index"])])
            if kind == "message_delta":
                self.stop_reason = event["delta"].get("stop_reason") or self.stop_reason
                self._take_usage(event.get("usage") or {})
                return []
            if kind == "message_stop":
                self.done = True
                total = usage(self.prompt_tokens, self.output_tokens, cached_tokens=self.cached_tokens)
                finish = finish_reason(self.stop_reason, answered=self.answered, called=self.tool_calls > 0)
                return self.writer.end(finish, total)
        return []  # Anthropic may add event types; unknown ones are skipped, as its SDKs do

    def close(self) -> None:
        """Called when the upstream body ended; a stream without ``message_stop`` was cut off."""
        if not self.done:
            raise StreamBroken(
                f"backend '{self.backend}' ended its stream before message_stop", backend=self.backend
            )

    @property
    def usage(self) -> Usage | None:
        """The tokens reported so far: the prompt from ``message_start``, the output as of the
        last ``message_delta`` (final once the stream ended). None if nothing was reported."""
        if not self._counted:
            return None
        return Usage(
            self.prompt_tokens if "prompt" in self._counted else None,
            self.output_tokens if "output" in self._counted else None,
        )

    def _take_usage(self, data: Mapping[str, Any]) -> None:
        # message_start has the input count; message_delta the (cumulative) output count and,
        # in newer API versions, the input count again. Later values win.
        if any(k in data for k in PROMPT_KEYS):
            self.prompt_tokens, self.cached_tokens = prompt_counts(data)
            self._counted.add("prompt")
        if "output_tokens" in data:
            self.output_tokens = int_field(data, "output_tokens")
            self._counted.add("output")

    def _block_start(self, writer: ChunkWriter, index: int, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = block["type"]
        if self.answer is not None and kind in ("text", "tool_use"):
            answers = kind == "tool_use" and block.get("name") == self.answer.tool
            if answers or kind == "text":  # the answer's content is its JSON, and nothing else
                self.answered = self.answered or answers
                self.blocks[index] = _Block("answer" if answers else "left out")
                return []
        state = self.blocks[index] = _Block(kind)
        if kind == "text" and block.get("text"):
            return [writer.content(str_field(block, "text"))]
        if kind == "tool_use":
            state.tool_index = self.tool_calls
            self.tool_calls += 1
            return [
                writer.tool_call_start(state.tool_index, str_field(block, "id"), str_field(block, "name"))
            ]
        if kind == "thinking" and block.get("thinking"):
            state.thinking = str_field(block, "thinking")
            return [writer.reasoning(state.thinking)]
        if kind == "redacted_thinking":
            return [writer.chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": block["data"]}]})]
        return []

    def _block_delta(
        self, writer: ChunkWriter, state: _Block, delta: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        kind = delta["type"]
        if kind == "text_delta" and state.kind == "text":
            return [writer.content(str_field(delta, "text"))] if delta["text"] else []
        if kind == "input_json_delta" and state.kind == "answer":
            return self._answer_delta(writer, state, str_field(delta, "partial_json"))
        if kind == "input_json_delta" and state.kind == "tool_use":
            fragment = str_field(delta, "partial_json")
            if not fragment:
                return []
            state.has_arguments = True
            return [writer.tool_call_arguments(state.tool_index, fragment)]
        if kind == "thinking_delta":
            state.thinking += str_field(delta, "thinking")
            return [writer.reasoning(str_field(delta, "thinking"))]
        if kind == "signature_delta":
            state.signature += str_field(delta, "signature")
        return []

    def _answer_delta(self, writer: ChunkWriter, state: _Block, fragment: str) -> list[dict[str, Any]]:
        assert self.answer is not None
        if not fragment:
            return []
        state.has_arguments = True
        if self.answer.wrapped:
            state.held += fragment
            return []
        return [writer.content(fragment)]

    def _block_stop(self, writer: ChunkWriter, state: _Block) -> list[dict[str, Any]]:
        if state.kind == "answer":
            assert self.answer is not None
            if self.answer.wrapped:
                return [writer.content(answer_json(self.answer, orjson.loads(state.held or "{}")))]
            return [] if state.has_arguments else [writer.content("{}")]
        if state.kind == "tool_use" and not state.has_arguments:
            return [writer.tool_call_arguments(state.tool_index, "{}")]
        if state.kind == "thinking":
            block = {"type": "thinking", "thinking": state.thinking, "signature": state.signature}
            return [writer.chunk({"thinking_blocks": [block]})]
        return []


def message_stream(call: Call, backend: str = "") -> MessageStream:
    return MessageStream(
        model=call.model,
        include_usage=include_usage(call.body),
        backend=backend,
        answer=json_answer(call.body),
    )
