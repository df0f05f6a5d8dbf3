"""An OpenAI chat stream → Anthropic's Messages stream, in Anthropic's exact event order:

    message_start, ping,
    per content block: content_block_start, content_block_delta..., content_block_stop,
    message_delta (stop reason, usage), message_stop

Deltas are ``text_delta``, ``input_json_delta`` (a tool call's arguments), ``thinking_delta``
and ``signature_delta`` (when the lane's stream carried a signed thinking block, as laneway's
OpenAI streams from an Anthropic upstream do: ``providers.anthropic_stream``). Blocks are opened
as the stream's content changes kind (reasoning, text, a new tool call) and each is closed before
the next opens, as Anthropic's are.

Usage: an OpenAI stream reports it at its end (the translation asked for it), so
``message_start`` says 0 input tokens and ``message_delta`` carries the counts (input tokens
too, as Anthropic's newer streams do; its SDKs take them from there).

``AnthropicStream`` wraps the router's ``ReplyStream`` (already established, first frame read)
and is what the response pumps; closing it closes the lane's stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from laneway import sse
from laneway.dialects.anthropic.response import message_id, stop_reason, thinking_blocks, usage_of
from laneway.errors import UpstreamProtocolError
from laneway.providers.base import ReplyStream


def event(name: str, data: Mapping[str, Any]) -> bytes:
    """One Anthropic event: named, its data's ``type`` the same name."""
    return sse.encode({"type": name, **data}, event=name)


@dataclass(slots=True)
class _Open:
    """The content block being written: its index, kind, and for a tool call its OpenAI index."""

    index: int
    kind: str
    tool: int | None = None


@dataclass(slots=True)
class Translator:
    """OpenAI ``chat.completion.chunk`` objects in, Anthropic events (bytes) out."""

    model: str
    stop_sequences: list[str] = field(default_factory=list)
    started: bool = False
    finished: bool = False
    blocks: int = 0  # how many content blocks were opened
    current: _Open | None = None
    tools: dict[int, int] = field(default_factory=dict)  # OpenAI tool-call index → block index
    finish_reason: Any = None
    matched: Any = None
    usage: Any = None

    def start(self, chunk: Mapping[str, Any]) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"message": message}) + event("ping", {})

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        out = b"" if self.started else self.start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                out += self._delta(delta)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.matched = choice.get("stop_reason")
        return out

    def end(self) -> bytes:
        """The close of the last block, ``message_delta`` and ``message_stop``."""
        out = b"" if self.started else self.start({})
        out += self._close()
        self.finished = True
        reason, sequence = stop_reason(self.finish_reason, self.stop_sequences, self.matched)
        usage = usage_of(self.usage)
        delta = {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
        return out + event("message_delta", delta) + event("message_stop", {})

    # -- blocks ----------------------------------------------------------------------------------

    def _open(self, kind: str, block: Mapping[str, Any], tool: int | None = None) -> bytes:
        out = self._close()
        self.current = _Open(self.blocks, kind, tool)
        self.blocks += 1
        return out + event("content_block_start", {"index": self.current.index, "content_block": block})

    def _close(self) -> bytes:
        if self.current is None:
            return b""
        index, self.current = self.current.index, None
        return event("content_block_stop", {"index": index})

    def _write(self, index: int, delta: Mapping[str, Any]) -> bytes:
        return event("content_block_delta", {"index": index, "delta": delta})

    def _delta(self, delta: Mapping[str, Any]) -> bytes:
        out = b""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            out += self._thinking(reasoning)
        if isinstance(delta.get("thinking_blocks"), list):
            out += self._signed(delta)
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self.current is None or self.current.kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            assert self.current is not None
            out += self._write(self.current.index, {"type": "text_delta", "text": text})
        for call in delta.get("tool_calls") or []:
            if isinstance(call, Mapping):
                out += self._tool(call)
        return out

    def _thinking(self, text: str) -> bytes:
        out = b""
        if self.current is None or self.current.kind != "thinking":
            out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        assert self.current is not None
        return out + self._write(self.current.index, {"type": "thinking_delta", "thinking": text})

    def _signed(self, delta: Mapping[str, Any]) -> bytes:
        """A thinking block complete with its signature (sent at its end), or a redacted one."""
        out = b""
        for block in thinking_blocks(delta):
            if block["type"] == "redacted_thinking":
                out += self._open("redacted_thinking", block) + self._close()
                continue
            if self.current is None or self.current.kind != "thinking":
                # Not streamed as deltas before: the whole block, then its signature.
                out += self._thinking(str(block.get("thinking", "")))
            assert self.current is not None
            if block.get("signature"):
                signature = {"type": "signature_delta", "signature": block["signature"]}
                out += self._write(self.current.index, signature)
            out += self._close()
        return out

    def _tool(self, call: Mapping[str, Any]) -> bytes:
        out = b""
        position = call.get("index", 0)
        said = call.get("function")
        function: Mapping[str, Any] = said if isinstance(said, Mapping) else {}
        if position not in self.tools or call.get("id"):
            block = {
                "type": "tool_use",
                "id": str(call.get("id") or ""),
                "name": str(function.get("name") or ""),
                "input": {},
            }
            out += self._open("tool_use", block, position)
            assert self.current is not None
            self.tools[position] = self.current.index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            partial = {"type": "input_json_delta", "partial_json": arguments}
            out += self._write(self.tools[position], partial)
        return out


class AnthropicStream:
    """The router's OpenAI ``ReplyStream`` as Anthropic events: what ``ReplyStreamResponse``
    pumps for a ``/v1/messages`` stream a non-Anthropic lane serves."""

    def __init__(self, inner: ReplyStream, *, model: str, stop_sequences: list[str]) -> None:
        self.inner = inner
        self.translator = Translator(model, list(stop_sequences))

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[bytes]:
        decoder = sse.Decoder()
        translator = self.translator
        # Read to the lane stream's own end, past [DONE]: the router learns the usage and the
        # stream's end there, before the response ends (and its access line is written).
        async for frame in self.inner:
            out: list[bytes] = []  # all of one read in one write: a send per event costs
            for item in decoder.feed(frame):
                if translator.finished:
                    continue
                if item.data == b"[DONE]":
                    out.append(translator.end())
                elif events := translator.feed(_chunk(item.data)):
                    out.append(events)
            if out:
                yield b"".join(out)
        if not translator.finished:
            yield translator.end()  # a lane whose stream ends without [DONE] (the provider checked it)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _chunk(data: bytes) -> Mapping[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError("the lane's stream sent a frame that is not a JSON object")
    return chunk
