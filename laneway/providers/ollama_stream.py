"""Ollama's NDJSON streams → OpenAI chat and completion streams: each line parsed
(``parse_line``) and translated by a ``LineStream`` into OpenAI chunk objects, framed with the one
SSE codec (``laneway.sse``).

An emulated forced tool call (``ollama_request.forced_tool``): for one tool, the answer's content
fragments are that call's argument deltas as they come; for several, the answer is read whole
(it names the tool) and sent as one call at the end, as Ollama sends its own calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from laneway import sse
from laneway.errors import StreamBroken, UpstreamProtocolError
from laneway.providers.base import Call, Usage
from laneway.providers.http import StreamingBody, loads_object
from laneway.providers.ollama_request import ForcedTool, forced_tool
from laneway.providers.ollama_response import (
    call_id,
    finish_reason,
    forced_call,
    forced_finish,
    openai_tool_calls,
    openai_usage,
    raise_if_error,
    usage_of,
)
from laneway.providers.openai_format import (
    ChunkWriter,
    include_usage,
    new_id,
    protocol_guard,
    str_field,
    text_completion,
)


async def frames(body: StreamingBody, translator: LineStream, backend: str) -> AsyncIterator[bytes]:
    """Read NDJSON lines, yield OpenAI SSE frames, end with ``[DONE]`` (or raise if cut off)."""
    async for line in body.lines():
        data = parse_line(line, backend)
        if data is not None:
            for chunk in translator.feed(data):
                yield sse.encode(chunk)
    translator.close()
    yield sse.DONE


def parse_line(line: bytes, backend: str = "") -> dict[str, Any] | None:
    """One NDJSON line of an Ollama stream; None for a blank line."""
    if not line.strip():
        return None
    return loads_object(line, backend, "a stream line")


class LineStream:
    """Shared state of an Ollama stream: it must end with a ``done: true`` line."""

    what = "stream"

    def __init__(self, *, model: str, include_usage: bool, backend: str = "") -> None:
        self.model = model
        self.include_usage = include_usage
        self.backend = backend
        self.done = False
        self.usage: Usage | None = None  # from the ``done`` line: None until the stream ended

    def feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        raise_if_error(data, self.backend)
        if self.done:
            raise UpstreamProtocolError(
                f"backend '{self.backend}' sent data after 'done'", backend=self.backend
            )
        with protocol_guard(self.backend, f"{self.what} line"):
            return self._feed(data)

    def _feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Called when the upstream body ended; a stream without its ``done`` line was cut off."""
        if not self.done:
            raise StreamBroken(
                f"backend '{self.backend}' ended its stream before 'done'", backend=self.backend
            )


class ChatStream(LineStream):
    """``/api/chat`` NDJSON lines → ``chat.completion.chunk`` objects. Ollama sends each tool
    call whole, so one delta carries its id, name and all of its arguments."""

    what = "chat stream"

    def __init__(
        self, *, model: str, include_usage: bool, backend: str = "", forced: ForcedTool | None = None
    ) -> None:
        super().__init__(model=model, include_usage=include_usage, backend=backend)
        self.writer: ChunkWriter | None = None
        self.tool_calls = 0
        self.forced = forced  # the request's emulated forced tool call, if any
        self.held = ""  # its answer so far, when it names one of several tools

    def _feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = []
        if self.writer is None:
            self.writer = ChunkWriter(
                id=new_id("chatcmpl"), model=data.get("model") or self.model, include_usage=self.include_usage
            )
            out.append(self.writer.role())
        writer = self.writer
        message = data.get("message") or {}
        if thinking := str_field(message, "thinking", optional=True):
            out.append(writer.reasoning(thinking))
        if (content := str_field(message, "content", optional=True)) and self.forced is not None:
            out.extend(self._forced_content(writer, self.forced, content))
        elif content:
            out.append(writer.content(content))
        for call in openai_tool_calls(message):
            function = call["function"]
            out.append(
                writer.tool_call_start(self.tool_calls, call["id"], function["name"], function["arguments"])
            )
            self.tool_calls += 1
        if data.get("done") is True:
            self.done = True
            self.usage = usage_of(data)
            finish = finish_reason(data, self.tool_calls > 0)
            if self.forced is not None:
                out.extend(self._forced_end(writer, self.forced))
                finish = forced_finish(data, self.tool_calls > 0)
            out.extend(writer.end(finish, openai_usage(data)))
        return out

    def _forced_content(self, writer: ChunkWriter, forced: ForcedTool, content: str) -> list[dict[str, Any]]:
        if forced.single is None:
            self.held += content
            return []
        out = []
        if self.tool_calls == 0:
            out.append(writer.tool_call_start(0, call_id(), forced.single))
            self.tool_calls = 1
        out.append(writer.tool_call_arguments(0, content))
        return out

    def _forced_end(self, writer: ChunkWriter, forced: ForcedTool) -> list[dict[str, Any]]:
        if forced.single is not None:
            if self.tool_calls:
                return []
            self.tool_calls = 1
            return [writer.tool_call_start(0, call_id(), forced.single, "{}")]
        call = forced_call(forced, self.held)
        if call is None:
            return [writer.content(self.held)] if self.held else []
        function = call["function"]
        start = writer.tool_call_start(self.tool_calls, call["id"], function["name"], function["arguments"])
        self.tool_calls += 1
        return [start]


class GenerateStream(LineStream):
    """``/api/generate`` NDJSON lines → ``text_completion`` chunks."""

    what = "generate stream"

    def __init__(self, *, model: str, include_usage: bool, backend: str = "") -> None:
        super().__init__(model=model, include_usage=include_usage, backend=backend)
        self.id = new_id("cmpl")

    def _feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        model = data.get("model") or self.model
        out = []
        if text := str_field(data, "response", optional=True):
            out.append(text_completion(id=self.id, model=model, text=text, finish_reason=None))
        if data.get("done") is True:
            self.done = True
            self.usage = usage_of(data)
            out.append(
                text_completion(id=self.id, model=model, text="", finish_reason=finish_reason(data, False))
            )
            if self.include_usage:
                last = text_completion(
                    id=self.id, model=model, text="", finish_reason=None, usage=openai_usage(data)
                )
                last["choices"] = []
                out.append(last)
        return out


def chat_stream(call: Call, backend: str = "") -> ChatStream:
    return ChatStream(
        model=call.model,
        include_usage=include_usage(call.body),
        backend=backend,
        forced=forced_tool(call.body),
    )


def generate_stream(call: Call, backend: str = "") -> GenerateStream:
    return GenerateStream(model=call.model, include_usage=include_usage(call.body), backend=backend)
