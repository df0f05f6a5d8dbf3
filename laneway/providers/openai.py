"""The ``openai`` family: any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, LM Studio,
OpenRouter, Mistral, Groq...). Requests pass through: the client's bytes are forwarded as they
came whenever the model name did not change, and answers are checked, not re-serialised.

Usage is read from the ``usage`` object of the answer the adapter parses anyway. A stream passes
through untouched, so its usage is known only when the client asked for it
(``stream_options.include_usage``): the upstream then sends it in the last chunk before
``[DONE]``, which the pass-through keeps in its tail. Otherwise a stream's usage is None.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from laneway import sse
from laneway.config.schema import BackendConfig
from laneway.errors import StreamBroken, UpstreamProtocolError
from laneway.operations import Operation
from laneway.providers.base import Call, ModelInfo, Reply, Usage
from laneway.providers.capabilities import EMBEDDING_TYPES, TEXT_TYPES, capabilities_from_name
from laneway.providers.http import StreamingBody, Upstream, loads_object
from laneway.providers.streams import TranslatedStream, sse_events


def api_root(base_url: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1``; a URL with a path is kept as given
    (``https://openrouter.ai/api/v1``, Gemini's ``/v1beta/openai``)."""
    base = base_url.rstrip("/")
    return base + "/v1" if urlsplit(base).path in ("", "/") else base


def model_info(entry: Mapping[str, Any]) -> ModelInfo | None:
    """One entry of ``/v1/models``. OpenAI's says nothing but the id, so the name decides. vLLM
    adds ``max_model_len`` and ``root``/``parent`` (the weights behind a ``--served-model-name``
    alias or a LoRA adapter: better hints than the alias). OpenRouter adds ``context_length``,
    ``architecture`` and ``supported_parameters``, which win over the name: OpenRouter only
    routes a request to a provider that takes its images, tools or reasoning."""
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    weights = [v for v in (entry.get("root"), entry.get("parent")) if isinstance(v, str) and v != model_id]
    types, caps = capabilities_from_name(" ".join([model_id, *weights]))
    arch = entry.get("architecture")
    modalities = _modalities(arch) if isinstance(arch, Mapping) else None
    if modalities is not None:
        inputs, outputs = modalities
        if "text" in outputs:
            types = set(TEXT_TYPES)
            vision = {"vision"} if "image" in inputs else set()
            caps = (caps - EMBEDDING_TYPES - {"vision"}) | types | vision
        elif outputs & {"embeddings", "embedding"}:  # OpenRouter's modality names
            types, caps = set(EMBEDDING_TYPES), set(EMBEDDING_TYPES)
        else:  # image, audio or video generation only: nothing a lane here can serve
            types, caps = set(), set()
    params = entry.get("supported_parameters")
    if isinstance(params, list) and Operation.CHAT in types:
        caps -= {"tools", "reasoning"}
        if "tools" in params:
            caps.add("tools")
        if "reasoning" in params or "include_reasoning" in params:
            caps.add("reasoning")
    # OpenRouter's top-level context_length is the model's window: it sends a long request to a
    # provider that can take it. top_provider.context_length (often smaller) is only a fallback.
    top = entry.get("top_provider")
    context = (
        _positive_int(entry.get("max_model_len"))
        or _positive_int(entry.get("context_length"))
        or (_positive_int(top.get("context_length")) if isinstance(top, Mapping) else None)
    )
    return ModelInfo(
        id=model_id, types=frozenset(types), capabilities=frozenset(caps), context_length=context
    )


def usage_of(data: Mapping[str, Any]) -> Usage | None:
    """The ``usage`` of an OpenAI-format answer or chunk; None when it has none. A count that is
    missing or not a count stays None: the answer itself passes through to the client as it came,
    so a garbled usage object costs only the count, never the response."""
    reported = data.get("usage")
    if not isinstance(reported, Mapping):
        return None
    prompt, completion = _count(reported.get("prompt_tokens")), _count(reported.get("completion_tokens"))
    return None if prompt is None and completion is None else Usage(prompt, completion)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _modalities(arch: Mapping[str, Any]) -> tuple[set[str], set[str]] | None:
    """(input, output) modalities of an OpenRouter ``architecture``: the lists when present,
    else parsed from ``modality`` ("text+image->text"; older entries say just "text")."""
    inputs, outputs = arch.get("input_modalities"), arch.get("output_modalities")
    if isinstance(inputs, list) and isinstance(outputs, list) and outputs:
        return {str(m) for m in inputs}, {str(m) for m in outputs}
    modality = arch.get("modality")
    if not isinstance(modality, str) or not modality:
        return None
    left, arrow, right = modality.partition("->")
    parsed_inputs = set(left.split("+"))
    if "multimodal" in parsed_inputs:
        parsed_inputs |= {"text", "image"}
    return parsed_inputs, set(right.split("+")) if arrow else {"text"}


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return int(value)


class OpenAIProvider:
    family = "openai"

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        key = config.resolve_api_key()
        self.upstream = Upstream(
            name=name,
            base_url=api_root(config.base_url),
            headers={"authorization": f"Bearer {key}"} if key else {},
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            max_connections=config.max_connections,
        )

    async def list_models(self) -> list[ModelInfo]:
        data = await self.upstream.get_json("/models")
        entries = data.get("data")
        if not isinstance(entries, list):
            raise UpstreamProtocolError(
                f"backend '{self.name}': /models has no 'data' list", backend=self.name
            )
        return [info for e in entries if isinstance(e, Mapping) and (info := model_info(e)) is not None]

    async def probe(self) -> Mapping[str, str]:
        _, headers, _ = await self.upstream.request("GET", "/models")
        return headers

    @staticmethod
    def _payload(call: Call) -> bytes:
        if call.effort and "reasoning_effort" not in call.body:
            return orjson.dumps({**call.body, "reasoning_effort": call.effort})
        return call.raw if call.raw is not None else orjson.dumps(call.body)

    async def _send(self, path: str, call: Call, required: str) -> Reply:
        _, headers, body = await self.upstream.request(
            "POST", path, body=self._payload(call), timeout=call.timeout
        )
        # Checked, not rebuilt: an answer that is not the family's JSON is the backend's fault (502).
        data = loads_object(body, self.name)
        if required not in data:
            raise UpstreamProtocolError(
                f"backend '{self.name}' answered without '{required}'", backend=self.name
            )
        return Reply(body=body, headers=headers, usage=usage_of(data))

    async def _stream(self, path: str, call: Call) -> TranslatedStream:
        body = await self.upstream.open_stream(path, self._payload(call), timeout=call.timeout)
        passthrough = _PassThrough(body, self.name)
        return TranslatedStream(body, passthrough.frames(), lambda: passthrough.usage)

    async def chat(self, call: Call) -> Reply:
        return await self._send("/chat/completions", call, "choices")

    async def stream_chat(self, call: Call) -> TranslatedStream:
        return await self._stream("/chat/completions", call)

    async def complete(self, call: Call) -> Reply:
        return await self._send("/completions", call, "choices")

    async def stream_complete(self, call: Call) -> TranslatedStream:
        return await self._stream("/completions", call)

    async def embed(self, call: Call) -> Reply:
        return await self._send("/embeddings", call, "data")

    async def aclose(self) -> None:
        await self.upstream.aclose()


class _PassThrough:
    """Forwards the upstream's SSE events as they are, once each has arrived whole and checked: a
    frame that does not parse (or an error object in place of a chunk) ends the stream with a
    laneway error instead of reaching the client, and counts against the lane; a stream that
    ends without ``data: [DONE]`` was cut off. The usage chunk, if any, is read on the way."""

    def __init__(self, body: StreamingBody, backend: str) -> None:
        self._body = body
        self._backend = backend
        self.usage: Usage | None = None
        self._done = False

    async def frames(self) -> AsyncIterator[bytes]:
        splitter = sse.Splitter()
        async for events in sse_events(self._body, splitter, self._backend):
            self._check(events)
            yield events
        rest = splitter.close()
        if rest.strip():  # a last event without its blank line
            self._check(rest)
            yield rest
        if not self._done:
            raise StreamBroken(
                f"backend '{self._backend}' ended its stream without [DONE]", backend=self._backend
            )

    def _check(self, events: bytes) -> None:
        for payload in sse.data_of(events):
            if payload == b"[DONE]":
                self._done = True
                continue
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                raise UpstreamProtocolError(
                    f"backend '{self._backend}' sent a stream frame that is not a JSON object: "
                    f"{payload[:80].decode('utf-8', 'replace')}",
                    backend=self._backend,
                )
            if "error" in data and "choices" not in data:
                raise StreamBroken(
                    f"backend '{self._backend}' reported an error mid-stream: {error_text(data)}",
                    backend=self._backend,
                )
            if data.get("usage"):
                self.usage = usage_of(data) or self.usage


def error_text(data: Mapping[str, Any]) -> str:
    error = data.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(error)[:200]
