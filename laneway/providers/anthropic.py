"""The ``anthropic`` family: Anthropic's Messages API (``/v1/messages``, ``/v1/models``). This
module is the provider: identity, base URL, auth and client; the wire-format translation lives
in ``anthropic_translate``.

Anthropic has no text-completion and no embeddings API: ``complete``, ``stream_complete`` and
``embed`` raise ``UnsupportedParameter`` (422) without calling the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import orjson

from laneway.config.schema import BackendConfig
from laneway.errors import UnsupportedParameter, UpstreamProtocolError
from laneway.providers import anthropic_translate as tr
from laneway.providers.base import Call, ModelInfo, Reply
from laneway.providers.http import StreamingBody, Upstream
from laneway.providers.streams import TranslatedStream, sse_frame
from laneway.sse import DONE

MODELS_PAGE = 1000  # the largest page /v1/models serves
MAX_PAGES = 50  # a backend that keeps saying has_more is not allowed to loop us forever


def api_root(base_url: str) -> str:
    """``https://api.anthropic.com`` and ``https://api.anthropic.com/v1`` both mean the same API."""
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class SSEDecoder:
    """Server-sent events from lines (line endings already cut): yields each event's JSON data,
    with the ``event:`` name as its ``type`` when the data has none."""

    def __init__(self, backend: str = "") -> None:
        self.backend = backend
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, line: bytes) -> dict[str, Any] | None:
        if not line:
            return self.flush()
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        return None

    def flush(self) -> dict[str, Any] | None:
        """The pending event, if any (a blank line ends an event)."""
        data, event = self._data, self._event
        self._data, self._event = [], None
        if not data:
            return None
        try:
            payload = orjson.loads(b"\n".join(data))
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(
                f"backend '{self.backend}' sent a stream event that is not JSON", backend=self.backend
            ) from None
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(
                f"backend '{self.backend}' sent a stream event that is not an object", backend=self.backend
            )
        if event and "type" not in payload:
            payload["type"] = event
        return payload


async def sse_frames(body: StreamingBody, stream: tr.MessageStream, backend: str) -> AsyncIterator[bytes]:
    """Read Anthropic SSE events, yield OpenAI SSE frames, end with ``[DONE]`` (or raise if cut off)."""
    decoder = SSEDecoder(backend)
    async for line in body.lines():
        event = decoder.feed(line)
        if event is not None:
            for chunk in stream.feed(event):
                yield sse_frame(chunk)
    # An event without its closing blank line is incomplete and dropped (as the SSE spec says);
    # if it was message_stop, close() reports the stream as broken.
    stream.close()
    yield DONE


class AnthropicProvider:
    family = "anthropic"

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        headers = {"anthropic-version": config.anthropic_version}
        if key := config.resolve_api_key():
            headers["x-api-key"] = key
        self.upstream = Upstream(
            name=name,
            base_url=api_root(config.base_url),
            headers=headers,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            max_connections=config.max_connections,
        )

    async def list_models(self) -> list[ModelInfo]:
        models: list[ModelInfo] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            path = f"/models?limit={MODELS_PAGE}" + (f"&after_id={quote(after, safe='')}" if after else "")
            page, after = tr.model_page(await self.upstream.get_json(path), self.name)
            models.extend(page)
            if after is None:
                break
        return models

    async def probe(self) -> Mapping[str, str]:
        _, headers, _ = await self.upstream.request("GET", "/models?limit=1")
        return headers

    async def chat(self, call: Call) -> Reply:
        payload = tr.messages_request(call, stream=False)
        headers, data = await self.upstream.post_json("/messages", payload, timeout=call.timeout)
        answer = tr.message_response(data, model=call.model, backend=self.name)
        return Reply(body=orjson.dumps(answer), headers=headers, usage=tr.usage_of(data))

    async def stream_chat(self, call: Call) -> TranslatedStream:
        payload = orjson.dumps(tr.messages_request(call, stream=True))
        body = await self.upstream.open_stream("/messages", payload, timeout=call.timeout)
        translator = tr.message_stream(call, self.name)
        return TranslatedStream(body, sse_frames(body, translator, self.name), lambda: translator.usage)

    async def complete(self, call: Call) -> Reply:
        raise _no_completions()

    async def stream_complete(self, call: Call) -> TranslatedStream:
        raise _no_completions()

    async def embed(self, call: Call) -> Reply:
        raise UnsupportedParameter("the anthropic family has no embeddings API", param="model")

    async def aclose(self) -> None:
        await self.upstream.aclose()


def _no_completions() -> UnsupportedParameter:
    # Deliberately not emulated through /v1/messages: a chat model continuing raw text is a
    # different contract, and a client asking for /v1/completions should learn to use chat.
    return UnsupportedParameter("the anthropic family has no text-completion API; use chat", param="model")
