"""An anthropic-family lane serving a ``/v1/messages`` request natively: the client's body sent on
as it came, with only ``model`` rewritten to the lane's (and ``stream`` as asked), and the
answer, or the stream's events, passed back as they came. Nothing a translation through the
OpenAI format would lose is lost: ``cache_control``, thinking blocks and their signatures,
documents, citations, server tools and whatever Anthropic adds next.

The client's ``anthropic-beta`` header is forwarded, and its ``anthropic-version`` when it sent
one (else the backend's configured version). The answer is still read: for its usage, and so
that an error in place of an answer (an ``error`` object, or a stream's ``event: error``) is an
``UpstreamError`` the router's verdict sees (failover before the first byte, the breaker after).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from laneway import sse
from laneway.errors import StreamBroken, UpstreamProtocolError
from laneway.providers.anthropic_response import PROMPT_KEYS, status_error, usage_of
from laneway.providers.anthropic_stream import event_data
from laneway.providers.base import Call, Native, Reply, Usage
from laneway.providers.http import StreamingBody, Upstream, loads_object
from laneway.providers.streams import TranslatedStream, sse_events

DIALECT = "anthropic"
FORWARDED = ("anthropic-beta", "anthropic-version")


def is_native(call: Call) -> bool:
    return call.native is not None and call.native.dialect == DIALECT


def payload(native: Native, model: str, *, stream: bool) -> bytes:
    body: dict[str, Any] = {**native.body, "model": model}
    if stream or "stream" in body:
        body["stream"] = stream
    return orjson.dumps(body)


def headers_of(native: Native) -> dict[str, str]:
    return {name: native.headers[name] for name in FORWARDED if native.headers.get(name)}


async def reply(upstream: Upstream, call: Call) -> Reply:
    """The whole answer to a native call, as Anthropic sent it."""
    assert call.native is not None
    backend = upstream.name
    _, headers, body = await upstream.request(
        "POST",
        "/messages",
        body=payload(call.native, call.model, stream=False),
        headers=headers_of(call.native),
        timeout=call.timeout,
    )
    data = loads_object(body, backend)
    if data.get("type") == "error":
        raise status_error(data.get("error"), backend)
    if data.get("type") != "message" or not isinstance(data.get("content"), list):
        raise UpstreamProtocolError(f"backend '{backend}' answered without a message", backend=backend)
    return Reply(body=body, headers=headers, usage=usage_of(data), dialect=DIALECT)


async def stream(upstream: Upstream, call: Call) -> TranslatedStream:
    """A native call's stream: Anthropic's events passed on as they came, once each is whole."""
    assert call.native is not None
    body = await upstream.open_stream(
        "/messages",
        payload(call.native, call.model, stream=True),
        headers=headers_of(call.native),
        timeout=call.timeout,
    )
    events = NativeEvents(body, upstream.name)
    return TranslatedStream(body, events.frames(), lambda: events.usage, dialect=DIALECT)


async def count_tokens(upstream: Upstream, body: Mapping[str, Any], headers: Mapping[str, str]) -> int:
    """``/v1/messages/count_tokens`` for ``body`` (its model already the lane's)."""
    forwarded = {name: headers[name] for name in FORWARDED if headers.get(name)}
    _, data = await upstream.post_json("/messages/count_tokens", body, headers=forwarded)
    tokens = data.get("input_tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise UpstreamProtocolError(
            f"backend '{upstream.name}' answered count_tokens without input_tokens", backend=upstream.name
        )
    return tokens


class NativeEvents:
    """Forwards an Anthropic stream's events untouched, each checked once it is whole: an
    ``error`` event raises (the router decides what it means), a frame that is not JSON is a
    protocol error, and a stream that ends before ``message_stop`` was cut off. The usage is
    read on the way: input tokens from ``message_start``, output tokens from ``message_delta``."""

    def __init__(self, body: StreamingBody, backend: str) -> None:
        self._body = body
        self._backend = backend
        self._prompt: int | None = None
        self._output: int | None = None
        self._done = False

    @property
    def usage(self) -> Usage | None:
        if self._prompt is None and self._output is None:
            return None
        return Usage(self._prompt, self._output)

    async def frames(self) -> AsyncIterator[bytes]:
        splitter = sse.Splitter()
        async for events in sse_events(self._body, splitter, self._backend):
            self._check(events)
            yield events
        # An event left without its blank line is incomplete and not passed on (as the SSE
        # specification says); if it was message_stop, the stream is reported as broken.
        if not self._done:
            raise StreamBroken(
                f"backend '{self._backend}' ended its stream before message_stop", backend=self._backend
            )

    def _check(self, events: bytes) -> None:
        for event in sse.parse(events):
            data = event_data(event, self._backend)
            kind = data.get("type")
            if kind == "error":
                raise status_error(data.get("error"), self._backend)
            if kind == "message_start":
                message = data.get("message")
                self._take(message.get("usage") if isinstance(message, Mapping) else None)
            elif kind == "message_delta":
                self._take(data.get("usage"))
            elif kind == "message_stop":
                self._done = True

    def _take(self, usage: Any) -> None:
        if not isinstance(usage, Mapping):
            return
        counts = [v for k in PROMPT_KEYS if isinstance(v := usage.get(k), int) and not isinstance(v, bool)]
        if counts:
            self._prompt = sum(counts)
        output = usage.get("output_tokens")
        if isinstance(output, int) and not isinstance(output, bool):
            self._output = output
