"""The ``anthropic`` family: Anthropic's Messages API (``/v1/messages``, ``/v1/models``). This
module is the provider: identity, base URL, auth and client; the wire-format translation lives
in ``anthropic_request`` (requests), ``anthropic_response`` (answers, errors, model lists) and
``anthropic_stream`` (streams). A call that came in by Anthropic's own ``/v1/messages`` (its
``native`` request) is served as the client sent it instead (``anthropic_native``).

Anthropic has no text-completion and no embeddings API: ``complete``, ``stream_complete`` and
``embed`` raise ``UnsupportedParameter`` (422) without calling the backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from laneway.config.schema import BackendConfig
from laneway.errors import UnsupportedParameter
from laneway.providers import anthropic_native
from laneway.providers.anthropic_request import messages_request
from laneway.providers.anthropic_response import message_response, model_page, usage_of
from laneway.providers.anthropic_stream import frames, message_stream
from laneway.providers.base import Call, ModelInfo, Reply
from laneway.providers.http import Upstream
from laneway.providers.streams import TranslatedStream

MODELS_PAGE = 1000  # the largest page /v1/models serves
MAX_PAGES = 50  # a backend that keeps saying has_more is not allowed to loop us forever


def api_root(base_url: str) -> str:
    """``https://api.anthropic.com`` and ``https://api.anthropic.com/v1`` both mean the same API."""
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


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
            page, after = model_page(await self.upstream.get_json(path), self.name)
            models.extend(page)
            if after is None:
                break
        return models

    async def probe(self) -> Mapping[str, str]:
        _, headers, _ = await self.upstream.request("GET", "/models?limit=1")
        return headers

    async def chat(self, call: Call) -> Reply:
        if anthropic_native.is_native(call):
            return await anthropic_native.reply(self.upstream, call)
        payload = messages_request(call, stream=False)
        headers, data = await self.upstream.post_json("/messages", payload, timeout=call.timeout)
        answer = message_response(data, model=call.model, backend=self.name)
        return Reply(body=orjson.dumps(answer), headers=headers, usage=usage_of(data))

    async def stream_chat(self, call: Call) -> TranslatedStream:
        if anthropic_native.is_native(call):
            return await anthropic_native.stream(self.upstream, call)
        payload = orjson.dumps(messages_request(call, stream=True))
        body = await self.upstream.open_stream("/messages", payload, timeout=call.timeout)
        translator = message_stream(call, self.name)
        return TranslatedStream(body, frames(body, translator, self.name), lambda: translator.usage)

    async def count_tokens(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> int:
        """The input tokens of a ``/v1/messages/count_tokens`` body (its model the backend's),
        as Anthropic counts them; ``headers``: the client's (``anthropic-beta``) to forward."""
        return await anthropic_native.count_tokens(self.upstream, body, headers)

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
