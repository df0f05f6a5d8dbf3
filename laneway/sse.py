"""Server-sent events: the one codec laneway frames and parses every event stream with.

Every stream laneway reads or writes is SSE (the WHATWG "server-sent events" format): an
upstream's OpenAI or Anthropic stream, the OpenAI stream laneway sends a client, a publisher's
control stream. Framing is ``encode``/``comment``; parsing is the incremental ``Decoder`` (bytes in
any cut, whole events out, with their names), and, for a pass-through that forwards events as
they came, ``Splitter`` (bytes in any cut, the bytes of whole events out, untouched), built on
``boundary`` (where the last whole event in a buffer ends), and ``data_of`` (the data of whole
events, for checking them). Nothing else in laneway splits on blank lines or writes ``data:`` by
hand.

The format, as the specification has it: an event is a run of ``field: value`` lines ended by a
blank line; ``data`` lines are joined by newlines; a line starting with ``:`` is a comment
(a keep-alive); a single space after the colon is dropped; lines end with LF, CRLF or CR (CR alone
is not accepted here: no upstream sends it, and reading it would cost every frame a scan).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"  # the last event of an OpenAI stream
MAX_EVENT_BYTES = 4 * 1024 * 1024  # one event; beyond, it is not a stream laneway will read


class EventTooLarge(ValueError):
    """An event grew past ``max_bytes`` without ending: the stream is not one to read."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its data (``data`` lines joined by newlines) and name (``message`` when unnamed)."""

    data: bytes
    event: str = "message"
    id: str | None = None

    def json(self) -> Any:
        """The data parsed as JSON (``orjson.JSONDecodeError`` if it is not)."""
        return orjson.loads(self.data)


def encode(
    data: bytes | str | Mapping[str, Any], *, event: str | None = None, id: str | None = None
) -> bytes:
    """One event, framed. ``data`` is sent as it is (bytes or str) or as JSON (a mapping); a
    newline in it becomes a second ``data`` line, as the format requires."""
    if isinstance(data, Mapping):
        payload = orjson.dumps(data)  # JSON never holds a raw newline
    else:
        payload = data.encode() if isinstance(data, str) else data
        if b"\n" in payload or b"\r" in payload:
            payload = b"\ndata: ".join(payload.replace(b"\r\n", b"\n").split(b"\n"))
    head = b""
    if event is not None:
        head = b"event: " + _field(event) + b"\n"
    if id is not None:
        head += b"id: " + _field(id) + b"\n"
    return head + b"data: " + payload + b"\n\n"


def comment(text: str = "") -> bytes:
    """A comment line (a keep-alive a client ignores)."""
    return b": " + _field(text) + b"\n\n" if text else b":\n\n"


def _field(value: str) -> bytes:
    if "\n" in value or "\r" in value:
        raise ValueError(f"an SSE field value cannot hold a line break: {value!r}")
    return value.encode()


def boundary(buffer: bytes) -> int:
    """Where the last whole event in ``buffer`` ends (0: none yet); LF and CRLF both end lines."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def data_of(events: bytes) -> list[bytes]:
    """The data of each event in ``events`` (whole events, as ``boundary`` cut them); events
    without data (comments, a lone ``event:``) give nothing."""
    # Nearly every event an upstream sends is one ``data: ...`` line and its blank line, and a
    # read often holds several: each such event's data is a slice, without the general parse
    # (this is the hot path of a pass-through). Anything else (CRLF line ends, named events,
    # comments, data over several lines) goes through ``parse``.
    one = events.startswith(b"data: ") and events.find(b"\n") == len(events) - 2
    if one and events[-1] == 0x0A and events[-3] != 0x0D:
        return [events[6:-2]]  # the commonest read: one such event (a CR before it: CRLF ends)
    if b"\r" in events:
        return [event.data for event in parse(events)]
    out: list[bytes] = []
    for raw in events.split(b"\n\n"):
        if not raw:
            continue
        if raw.startswith(b"data: ") and b"\n" not in raw:
            out.append(raw[6:])
        else:
            out.extend(event.data for event in parse(raw))
    return out


class Splitter:
    """For a pass-through that forwards an upstream's events as they came: ``feed`` it the
    body's chunks, cut anywhere, and get back the bytes of the whole events each completes,
    exactly as they arrived (b"" while none has), the start of the next one held back;
    ``close`` at the end of the stream returns what is left (a last event without its blank
    line, or b""). Events are never re-framed, so what reaches the client is what the upstream
    wrote. ``max_bytes`` bounds one pending event, as for ``Decoder``."""

    __slots__ = ("_pending", "max_bytes")

    def __init__(self, *, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending and chunk.endswith(b"\n\n"):
            return chunk  # the common case: a chunk of whole events, passed on without a copy
        pending = self._pending + chunk
        end = boundary(pending)
        if end == 0:
            if len(pending) > self.max_bytes:
                raise EventTooLarge(f"a stream event grew past {self.max_bytes} bytes without ending")
            self._pending = pending
            return b""
        self._pending = pending[end:]
        return pending[:end]

    def close(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def parse(events: bytes) -> Iterator[Event]:
    """The events in ``events``; a last one without its blank line counts (the stream ended)."""
    decoder = Decoder(max_bytes=None)
    yield from decoder.feed(events)
    yield from decoder.close()


class Decoder:
    """Incremental: ``feed`` it bytes as they arrive, cut anywhere, and get the events completed so
    far; ``close`` at the end of the stream returns an event left without its blank line.

    ``max_bytes`` bounds one pending event (``EventTooLarge``): a peer that never ends an event
    cannot make laneway buffer without limit."""

    __slots__ = ("_buffer", "_data", "_event", "_id", "max_bytes")

    def __init__(self, *, max_bytes: int | None = MAX_EVENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._buffer + chunk if self._buffer else chunk
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer
            self._check_size()
            return []
        self._buffer = buffer[end + 1 :]
        out: list[Event] = []
        for raw in buffer[:end].split(b"\n"):
            self._line(raw[:-1] if raw.endswith(b"\r") else raw, out)
        self._check_size()
        return out

    def close(self) -> list[Event]:
        out: list[Event] = []
        if self._buffer:
            line, self._buffer = self._buffer, b""
            self._line(line.removesuffix(b"\r"), out)
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[Event]) -> None:
        if not line:
            if self._data:
                out.append(Event(b"\n".join(self._data), self._event or "message", self._id))
            self._data, self._event, self._id = [], None, None
            return
        if line[0] == 0x3A:  # ":" a comment
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            self._id = value.decode("utf-8", "replace")
        # ``retry`` and unknown fields are ignored, as the specification says.

    def _check_size(self) -> None:
        if self.max_bytes is None:
            return
        pending = len(self._buffer) + sum(len(d) for d in self._data)
        if pending > self.max_bytes:
            raise EventTooLarge(f"a stream event grew past {self.max_bytes} bytes without ending")
