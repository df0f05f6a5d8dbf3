"""An OpenAI chat stream as the Responses API's event stream.

Events, each with its ``sequence_number`` (0, 1, 2, ...) and named by its type (``event:``):
``response.created`` and ``response.in_progress`` first; then per output item, in the order the
answer produces them: ``response.output_item.added``, its content (a reasoning item:
``response.content_part.added`` / ``response.reasoning_text.delta`` ... ``.done`` /
``response.content_part.done``; a message: the same with ``output_text``; a function call:
``response.function_call_arguments.delta`` ... ``.done``; a custom tool call: its whole input
as one ``response.custom_tool_call_input.delta`` and ``.done``), ``response.output_item.done``;
last ``response.completed`` (``response.incomplete`` when cut by ``max_output_tokens``) with
the whole response and its usage. An item ends when the next kind begins (reasoning, then
text, then tool calls, as models write them); tool calls end together at the finish, as chat
deltas of several calls may interleave.

A stored response is written (``on_complete``) before ``response.completed`` is sent, so a
client that chains on it at once finds it. A failure after the stream began is a
``response.failed`` event (``error_frame``, for ``api.streaming.ReplyStreamResponse``) holding
the items so far.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from laneway import sse
from laneway.dialects.responses.response import Turn, finish, message_item, new_id, text_part, usage
from laneway.dialects.responses.tools import Tool, call_item
from laneway.errors import LanewayError, UpstreamProtocolError
from laneway.providers.base import ReplyStream

OnComplete = Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class _Item:
    """An output item being streamed: where it is, its id and what it has gathered."""

    index: int
    id: str
    kind: str  # reasoning | message | call
    text: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)
    call_id: str = ""
    name: str = ""  # a call's chat function name
    tool: Tool | None = None
    done: bool = False


class ResponseEvents:
    """The Responses events of one chat ``stream`` (a ``ReplyStream`` of the router)."""

    def __init__(
        self,
        stream: ReplyStream,
        turn: Turn,
        *,
        now: Callable[[], float],
        on_complete: OnComplete | None = None,
        backend: str = "",
    ) -> None:
        self.stream = stream
        self.turn = turn
        self.headers = stream.headers
        self._now = now
        self._on_complete = on_complete
        self._backend = backend
        self._seq = 0
        self._items: list[_Item] = []
        self._output: dict[int, dict[str, Any]] = {}  # finished items, by output index
        self._calls: dict[int, _Item] = {}  # by the chat tool call's index
        self._open: _Item | None = None  # the reasoning or message item being written
        self._finish: Any = None
        self._usage: Any = None
        self._model: str | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def aclose(self) -> None:
        await self.stream.aclose()

    def _event(self, kind: str, **fields: Any) -> bytes:
        frame = sse.encode({"type": kind, "sequence_number": self._seq, **fields}, event=kind)
        self._seq += 1
        return frame

    async def _events(self) -> AsyncIterator[bytes]:
        yield self._event("response.created", response=self.turn.response("in_progress"))
        yield self._event("response.in_progress", response=self.turn.response("in_progress"))
        decoder = sse.Decoder()
        async for frame in self.stream:
            out: list[bytes] = []  # all of one read in one write: a send per event costs
            for event in decoder.feed(frame):
                if event.data != b"[DONE]":
                    out += self._chunk(self._parse(event.data))
            if out:
                yield b"".join(out)
        yield b"".join(self._close_all())
        response = self._final()
        if self._on_complete is not None:
            await self._on_complete(response, self._assistant())
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        yield self._event(kind, response=response)

    def _parse(self, data: bytes) -> Mapping[str, Any]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError(
                f"backend '{self._backend}' sent a chunk that is not JSON", backend=self._backend
            )
        return chunk

    def _chunk(self, chunk: Mapping[str, Any]) -> list[bytes]:
        if isinstance(chunk.get("model"), str):
            self._model = chunk["model"]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        out: list[bytes] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out += self._text("reasoning", reasoning)
            if isinstance(delta.get("thinking_blocks"), list):
                self._blocks(delta["thinking_blocks"], out)
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._text("message", delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _start(self, kind: str, item: dict[str, Any], **extra: Any) -> _Item:
        state = _Item(len(self._items), item["id"], kind, **extra)
        self._items.append(state)
        return state

    def _text(self, kind: str, text: str) -> list[bytes]:
        """A reasoning or message delta: the item opened (the one before closed) if need be."""
        out: list[bytes] = []
        item = self._open
        if item is None or item.kind != kind:
            out += self._close_open()
            if kind == "reasoning":
                added = self.turn.reasoning_item("", [], new_id("rs"))
                part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
            else:
                added = message_item(new_id("msg"), [], "in_progress")
                part = text_part("")
            item = self._open = self._start(kind, added)
            out.append(self._event("response.output_item.added", output_index=item.index, item=added))
            out.append(self._part("response.content_part.added", item, part))
        item.text += text
        delta = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra: dict[str, Any] = {} if kind == "reasoning" else {"logprobs": []}
        out.append(
            self._event(delta, item_id=item.id, output_index=item.index, content_index=0, delta=text, **extra)
        )
        return out

    def _part(self, kind: str, item: _Item, part: dict[str, Any]) -> bytes:
        return self._event(kind, item_id=item.id, output_index=item.index, content_index=0, part=part)

    def _blocks(self, blocks: list[Any], out: list[bytes]) -> None:
        """Thinking blocks (signed) belong to the reasoning item they end."""
        reasoning = [i for i in self._items if i.kind == "reasoning"]
        if not reasoning:
            out += self._text("reasoning", "")
            reasoning = [i for i in self._items if i.kind == "reasoning"]
        reasoning[-1].blocks += [b for b in blocks if isinstance(b, dict)]

    def _close_open(self) -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        item.done = True
        if item.kind == "reasoning":
            final = self.turn.reasoning_item(item.text, item.blocks, item.id)
            part: dict[str, Any] = {"type": "reasoning_text", "text": item.text}
            text_done = self._event(
                "response.reasoning_text.done",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                text=item.text,
            )
        else:
            part = text_part(item.text)
            final = message_item(item.id, [part])
            text_done = self._event(
                "response.output_text.done",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                text=item.text,
                logprobs=[],
            )
        self._output[item.index] = final
        return [
            text_done,
            self._part("response.content_part.done", item, part),
            self._event("response.output_item.done", output_index=item.index, item=final),
        ]

    def _tool_call(self, call: Mapping[str, Any]) -> list[bytes]:
        index = call.get("index", len(self._calls))
        function = call.get("function") or {}
        out: list[bytes] = []
        item = self._calls.get(index)
        if item is None:
            out += self._close_open()
            name = str(function.get("name"))
            tool = self.turn.tools.tool(name)
            call_id = str(call.get("id") or new_id("call"))
            added = call_item(tool, call_id, "", new_id("fc"), "in_progress")
            item = self._calls[index] = self._start("call", added, call_id=call_id, name=name, tool=tool)
            out.append(self._event("response.output_item.added", output_index=item.index, item=added))
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            item.text += fragment
            if item.tool is not None and item.tool.kind == "function":
                out.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=item.id,
                        output_index=item.index,
                        delta=fragment,
                    )
                )
        return out

    def _close_call(self, item: _Item) -> list[bytes]:
        assert item.tool is not None
        item.done = True
        final = call_item(item.tool, item.call_id, item.text, item.id, "completed")
        self._output[item.index] = final
        where = {"item_id": item.id, "output_index": item.index}
        out: list[bytes] = []
        if final["type"] == "function_call":
            out.append(
                self._event(
                    "response.function_call_arguments.done", **where, name=final["name"], arguments=item.text
                )
            )
        elif final["type"] == "custom_tool_call":
            out.append(self._event("response.custom_tool_call_input.delta", **where, delta=final["input"]))
            out.append(self._event("response.custom_tool_call_input.done", **where, input=final["input"]))
        out.append(self._event("response.output_item.done", output_index=item.index, item=final))
        return out

    def _close_all(self) -> list[bytes]:
        out = self._close_open()
        for item in self._calls.values():
            if not item.done:
                out += self._close_call(item)
        return out

    def _final(self) -> dict[str, Any]:
        response = self.turn.response("completed", self._model)
        response["output"] = [self._output[i] for i in sorted(self._output)]
        response["usage"] = usage(self._usage)
        finish(response, self._finish or "stop")
        response["completed_at"] = int(self._now()) if response["status"] == "completed" else None
        return response

    def _assistant(self) -> dict[str, Any]:
        """The answer as a chat assistant message, for the stored conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": None}
        text = "".join(i.text for i in self._items if i.kind == "message")
        reasoning = "".join(i.text for i in self._items if i.kind == "reasoning")
        blocks = [b for i in self._items if i.kind == "reasoning" for b in i.blocks]
        calls = [i for i in self._items if i.kind == "call"]
        if text:
            message["content"] = text
        if calls:
            message["tool_calls"] = [
                {"id": i.call_id, "type": "function", "function": {"name": i.name, "arguments": i.text}}
                for i in calls
            ]
        if reasoning:
            message["reasoning_content"] = reasoning
        if blocks:
            message["thinking_blocks"] = blocks
        return message

    def error_frame(self, exc: LanewayError, body: dict[str, Any]) -> bytes:
        """The ``response.failed`` event that ends a stream broken after it began."""
        response = self.turn.response("failed", self._model)
        response["output"] = [self._output[i] for i in sorted(self._output)]
        code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        response["error"] = {
            "code": code,
            "message": body.get("error", {}).get("message", exc.client_message),
        }
        return self._event("response.failed", response=response)
