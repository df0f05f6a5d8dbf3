"""The ``ollama`` family: Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/tags`` + ``/api/show``). This module is the provider: identity, base URL, auth and
client; the wire-format translation lives in ``ollama_translate``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, Protocol

import orjson

from laneway.config.schema import BackendConfig
from laneway.errors import UpstreamError
from laneway.providers import ollama_translate as tr
from laneway.providers.base import Call, ModelInfo, Reply, Usage
from laneway.providers.http import StreamingBody, Upstream
from laneway.providers.streams import TranslatedStream, sse_frame
from laneway.sse import DONE

NDJSON = ("application/x-ndjson", "application/json")
SHOW_CONCURRENCY = 8  # /api/show calls in flight at once during discovery
SHOW_TIMEOUT = 30.0


def api_base(base_url: str) -> str:
    """Ollama's root URL: a configured ``…/v1`` (its OpenAI-compatible path) or ``…/api`` is cut off."""
    base = base_url.rstrip("/")
    for suffix in ("/v1", "/api"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


class LineTranslator(Protocol):
    usage: Usage | None  # what the ``done`` line reported; None before it

    def feed(self, data: dict[str, Any]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


async def ndjson_frames(
    body: StreamingBody, translator: LineTranslator, backend: str
) -> AsyncIterator[bytes]:
    """Read NDJSON lines, yield OpenAI SSE frames, end with ``[DONE]`` (or raise if cut off)."""
    async for line in body.lines():
        data = tr.parse_line(line, backend)
        if data is not None:
            for chunk in translator.feed(data):
                yield sse_frame(chunk)
    translator.close()
    yield DONE


class OllamaProvider:
    family = "ollama"

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        key = config.resolve_api_key()  # Ollama itself has no auth; a proxy in front of it may
        self.upstream = Upstream(
            name=name,
            base_url=api_base(config.base_url),
            headers={"authorization": f"Bearer {key}"} if key else {},
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            max_connections=config.max_connections,
        )
        # model -> can it think, from the last discovery (a route's effort skips those that cannot)
        self.thinks: dict[str, bool] = {}

    async def list_models(self) -> list[ModelInfo]:
        """``/api/tags`` names the models; then, all at once, ``/api/show`` describes each and
        ``/api/ps`` says which are in memory. A failed ``/api/show`` or ``/api/ps`` costs only
        what it would have told: the model list itself stands."""
        names = tr.tag_names(await self.upstream.get_json("/api/tags"), self.name)
        limit = asyncio.Semaphore(SHOW_CONCURRENCY)
        timeout = min(SHOW_TIMEOUT, self.upstream.timeout)

        async def describe(model: str) -> ModelInfo:
            async with limit:
                try:
                    _, show = await self.upstream.post_json("/api/show", {"model": model}, timeout=timeout)
                except UpstreamError:
                    show = None  # the name still tells us something; one bad model must not hide the rest
            info = tr.model_info(model, show)
            if show is not None:
                self.thinks[model] = "reasoning" in info.capabilities
            return info

        async def running() -> set[str] | None:
            try:
                return tr.running_names(await self.upstream.get_json("/api/ps", timeout=timeout), self.name)
            except UpstreamError:
                return None  # unknown, not "none loaded"

        # A task group: cancelled (a refresh deadline), it cancels and awaits every call in flight.
        async with asyncio.TaskGroup() as group:
            ps = group.create_task(running())
            described = [group.create_task(describe(n)) for n in names]
        infos = [task.result() for task in described]
        loaded = ps.result()
        if loaded is None:
            return infos
        return [replace(info, loaded=info.id in loaded) for info in infos]

    async def probe(self) -> Mapping[str, str]:
        _, headers, _ = await self.upstream.request("GET", "/api/tags")
        return headers

    async def _stream(
        self, path: str, payload: dict[str, Any], call: Call, translator: LineTranslator
    ) -> TranslatedStream:
        body = await self.upstream.open_stream(
            path, orjson.dumps(payload), timeout=call.timeout, expect=NDJSON
        )
        return TranslatedStream(body, ndjson_frames(body, translator, self.name), lambda: translator.usage)

    async def chat(self, call: Call) -> Reply:
        payload = tr.chat_request(call, stream=False, thinks=self.thinks.get(call.model))
        headers, data = await self.upstream.post_json("/api/chat", payload, timeout=call.timeout)
        answer = tr.chat_response(data, model=call.model, backend=self.name)
        return Reply(orjson.dumps(answer), headers, tr.usage_of(data))

    async def stream_chat(self, call: Call) -> TranslatedStream:
        payload = tr.chat_request(call, stream=True, thinks=self.thinks.get(call.model))
        return await self._stream("/api/chat", payload, call, tr.chat_stream(call, self.name))

    async def complete(self, call: Call) -> Reply:
        payload = tr.generate_request(call, stream=False)
        headers, data = await self.upstream.post_json("/api/generate", payload, timeout=call.timeout)
        answer = tr.generate_response(data, model=call.model, backend=self.name)
        return Reply(orjson.dumps(answer), headers, tr.usage_of(data))

    async def stream_complete(self, call: Call) -> TranslatedStream:
        payload = tr.generate_request(call, stream=True)
        return await self._stream("/api/generate", payload, call, tr.generate_stream(call, self.name))

    async def embed(self, call: Call) -> Reply:
        payload = tr.embed_request(call)
        headers, data = await self.upstream.post_json("/api/embed", payload, timeout=call.timeout)
        encoding = call.body.get("encoding_format")
        answer = tr.embed_response(data, model=call.model, encoding_format=encoding, backend=self.name)
        return Reply(orjson.dumps(answer), headers, tr.usage_of(data))

    async def aclose(self) -> None:
        await self.upstream.aclose()
