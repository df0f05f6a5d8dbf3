"""An OpenAI SSE stream (what the router hands back) → Ollama's NDJSON stream: one JSON object a
line, the last one ``done: true`` with the done reason, the timings and the counts.

OpenAI streams a tool call's arguments in fragments; Ollama sends each tool call whole, so the
fragments are gathered and the calls sent in one line when the model finishes. The counts come
from the stream's usage chunk (the translated request asks for it), which follows the finish
chunk: the ``done`` line is therefore written when the upstream stream ends. A failure after the
first line is not this module's: ``ReplyStreamResponse`` ends the stream with an ``{"error": ...}``
line (``errors.error_line``), as Ollama does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import orjson

from laneway import sse
from laneway.clock import Clock
from laneway.dialects.ollama.response import Timing, done_reason, final_fields, rfc3339_nano, thinking_of
from laneway.dialects.ollama.response import tool_calls as ollama_tool_calls
from laneway.providers.openai_format import protocol_guard

MEDIA_TYPE = "application/x-ndjson"


class Upstream(Protocol):
    """The stream the router served (a ``ReplyStream``): OpenAI SSE frames, closable."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


def line(obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


class Lines:
    """The Ollama lines of one stream. ``path``: ``chat`` (lines carry ``message``) or ``generate``
    (lines carry ``response``); ``model``: the name the client asked for."""

    def __init__(self, *, path: str, model: str, clock: Clock, timing: Timing) -> None:
        self.path = path
        self.model = model
        self.clock = clock
        self.timing = timing
        self.calls: dict[int, dict[str, str]] = {}  # index -> id, name, arguments so far
        self.finish: Any = None
        self.usage: Any = None

    def _line(
        self, text: str = "", thinking: str = "", calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": rfc3339_nano(self.clock.now())}
        if self.path == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        return out

    def _started(self) -> None:
        if self.timing.first_token is None:
            self.timing.first_token = self.clock.monotonic()

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The lines one OpenAI chunk makes (a chat or a completion chunk, or the usage chunk)."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta")
            text = choice.get("text") if delta is None else delta.get("content")
            thinking = thinking_of(delta) if isinstance(delta, Mapping) else ""
            if text or thinking:
                self._started()
                out.append({**self._line(text or "", thinking), "done": False})
            for call in (delta or {}).get("tool_calls") or []:
                self._gather(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _gather(self, call: Mapping[str, Any]) -> None:
        self._started()
        gathered = self.calls.setdefault(int(call.get("index", len(self.calls))), {"arguments": ""})
        if call.get("id"):
            gathered["id"] = call["id"]
        function = call.get("function") or {}
        if function.get("name"):
            gathered["name"] = function["name"]
        gathered["arguments"] += function.get("arguments") or ""

    def end(self) -> list[dict[str, Any]]:
        """The last lines: the tool calls (if any), then ``done``."""
        out = []
        if self.calls:
            calls = [
                {"id": c.get("id"), "function": {"name": c["name"], "arguments": c["arguments"]}}
                for _, c in sorted(self.calls.items())
            ]
            out.append({**self._line(calls=ollama_tool_calls(calls)), "done": False})
        timing = self.timing.durations(self.clock.monotonic())
        out.append({**self._line(), **final_fields(done_reason(self.finish), timing, self.usage)})
        return out


class NdjsonStream:
    """The NDJSON body of a streamed Ollama answer, read from the router's OpenAI stream
    (``ReplyStreamResponse`` pumps it and closes it)."""

    def __init__(self, upstream: Upstream, lines: Lines, *, backend: str) -> None:
        self.upstream = upstream
        self.lines = lines
        self.backend = backend
        self._body: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._body is None:
            self._body = self._translate()
        return self._body

    async def _translate(self) -> AsyncIterator[bytes]:
        decoder = sse.Decoder()
        async for frame in self.upstream:
            out: list[dict[str, Any]] = []  # all of one read in one write: a send per line costs
            for event in decoder.feed(frame):
                if event.data == b"[DONE]":
                    continue
                with protocol_guard(self.backend, "stream chunk"):
                    chunk = event.json()
                    if not isinstance(chunk, dict):
                        raise TypeError("a stream chunk is not an object")
                    out += self.lines.feed(chunk)
            if out:
                yield b"".join(line(obj) for obj in out)
        with protocol_guard(self.backend, "tool call in a stream"):
            last = self.lines.end()
        yield b"".join(line(obj) for obj in last)

    async def aclose(self) -> None:
        body, self._body = self._body, None
        if body is not None and hasattr(body, "aclose"):
            await body.aclose()
        await self.upstream.aclose()
