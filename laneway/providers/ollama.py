"""The ``ollama`` family: Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/tags`` + ``/api/show``). This module is the provider: identity, base URL, auth and
client; the wire-format translation lives in ``ollama_request`` (requests), ``ollama_response``
(answers and discovery's) and ``ollama_stream`` (streams)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from laneway.config.schema import BackendConfig
from laneway.errors import UpstreamError
from laneway.providers.base import Call, ModelInfo, Reply
from laneway.providers.http import Upstream
from laneway.providers.ollama_request import chat_request, embed_request, forced_tool, generate_request
from laneway.providers.ollama_response import (
    chat_response,
    embed_response,
    generate_response,
    listed_capabilities,
    model_info,
    running_names,
    tag_names,
    usage_of,
)
from laneway.providers.ollama_stream import LineStream, chat_stream, frames, generate_stream
from laneway.providers.streams import TranslatedStream

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
        # model -> the capabilities /api/show listed for it (``providers.abilities``: the router
        # leaves out a lane whose model is known to lack what a request needs)
        self.reported: dict[str, frozenset[str]] = {}

    async def list_models(self) -> list[ModelInfo]:
        """``/api/tags`` names the models; then, all at once, ``/api/show`` describes each and
        ``/api/ps`` says which are in memory. A failed ``/api/show`` or ``/api/ps`` costs only
        what it would have told: the model list itself stands."""
        names = tag_names(await self.upstream.get_json("/api/tags"), self.name)
        limit = asyncio.Semaphore(SHOW_CONCURRENCY)
        timeout = min(SHOW_TIMEOUT, self.upstream.timeout)

        async def describe(model: str) -> ModelInfo:
            async with limit:
                try:
                    _, show = await self.upstream.post_json("/api/show", {"model": model}, timeout=timeout)
                except UpstreamError:
                    show = None  # the name still tells us something; one bad model must not hide the rest
            info = model_info(model, show)
            if show is not None:
                self.thinks[model] = "reasoning" in info.capabilities
                if listed_capabilities(show):
                    self.reported[model] = info.capabilities
                else:
                    self.reported.pop(model, None)
            return info

        async def running() -> set[str] | None:
            try:
                return running_names(await self.upstream.get_json("/api/ps", timeout=timeout), self.name)
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

    def discovery_notes(self) -> dict[str, Any]:
        """``thinks`` and ``reported`` as JSON (``providers.base.DiscoveryNotes``)."""
        return {
            "thinks": dict(self.thinks),
            "reported": {model: sorted(caps) for model, caps in self.reported.items()},
        }

    def take_notes(self, notes: Mapping[str, Any]) -> None:
        thinks, reported = notes.get("thinks"), notes.get("reported")
        if isinstance(thinks, Mapping):
            self.thinks = {str(m): bool(v) for m, v in thinks.items()}
        if isinstance(reported, Mapping):
            self.reported = {
                str(m): frozenset(str(c) for c in caps)
                for m, caps in reported.items()
                if isinstance(caps, list)
            }

    async def probe(self) -> Mapping[str, str]:
        _, headers, _ = await self.upstream.request("GET", "/api/tags")
        return headers

    async def _stream(
        self, path: str, payload: dict[str, Any], call: Call, translator: LineStream
    ) -> TranslatedStream:
        body = await self.upstream.open_stream(
            path, orjson.dumps(payload), timeout=call.timeout, expect=NDJSON
        )
        return TranslatedStream(body, frames(body, translator, self.name), lambda: translator.usage)

    async def chat(self, call: Call) -> Reply:
        payload = chat_request(call, stream=False, thinks=self.thinks.get(call.model))
        headers, data = await self.upstream.post_json("/api/chat", payload, timeout=call.timeout)
        answer = chat_response(data, model=call.model, backend=self.name, forced=forced_tool(call.body))
        return Reply(orjson.dumps(answer), headers, usage_of(data))

    async def stream_chat(self, call: Call) -> TranslatedStream:
        payload = chat_request(call, stream=True, thinks=self.thinks.get(call.model))
        return await self._stream("/api/chat", payload, call, chat_stream(call, self.name))

    async def complete(self, call: Call) -> Reply:
        payload = generate_request(call, stream=False)
        headers, data = await self.upstream.post_json("/api/generate", payload, timeout=call.timeout)
        answer = generate_response(data, model=call.model, backend=self.name)
        return Reply(orjson.dumps(answer), headers, usage_of(data))

    async def stream_complete(self, call: Call) -> TranslatedStream:
        payload = generate_request(call, stream=True)
        return await self._stream("/api/generate", payload, call, generate_stream(call, self.name))

    async def embed(self, call: Call) -> Reply:
        payload = embed_request(call)
        headers, data = await self.upstream.post_json("/api/embed", payload, timeout=call.timeout)
        encoding = call.body.get("encoding_format")
        answer = embed_response(data, model=call.model, encoding_format=encoding, backend=self.name)
        return Reply(orjson.dumps(answer), headers, usage_of(data))

    async def aclose(self) -> None:
        await self.upstream.aclose()
