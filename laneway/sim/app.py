"""The sim's ASGI app: routing, auth, injected failures, rate limits, pacing, disconnects, stats.

Raw ASGI on purpose: the benchmark measures the gateway against this app, so a request costs a
dict lookup, one ``orjson.loads``, the wire module's rendering and two ``send`` calls. All state
hangs off the ``SimApp`` instance; the options are re-read on every request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from laneway.clock import Clock, SystemClock
from laneway.sim import anthropic_wire, endpoints, ollama_wire, openai_wire
from laneway.sim.endpoints import TEXT, Reply, Request, check_auth, error_reply, status_phrase
from laneway.sim.options import SimOptions, is_embedding_model
from laneway.sim.ratelimit import Headers, RateLimiter
from laneway.sim.text import Answer, answer
from laneway.sim.wire import Embed, Generate, Meta, StreamPlan, WireError

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

GARBAGE = b"\x00\xffsim garbage <html><body>502 Bad Gateway</body></html> {not json"
HANG_POLL = 0.05  # seconds between looks at hang_discovery while a discovery request hangs
OPENROUTER_PREFIX = "/api"  # OpenRouter serves the OpenAI API under /api/v1


class SimulatedDrop(Exception):
    """Raised mid-stream so the ASGI server aborts the connection without the final chunk."""


class _HideSimulatedDrops(logging.Filter):
    """uvicorn logs every exception an app raises; a drop we asked for is not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedDrop))


@dataclass
class SimStats:
    total_requests: int = 0  # every request except the /_sim/ control endpoints
    requests_by_path: dict[str, int] = field(default_factory=dict)  # unknown paths count as "<other>"
    inference_requests: int = 0  # requests to inference endpoints that passed auth
    failures_injected: int = 0
    rate_limited: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0  # the client left before the end
    streams_dropped: int = 0  # drop_after_chunks cut them on purpose
    active_streams: int = 0
    active_hangs: int = 0  # discovery requests hang_discovery holds right now
    active_calls: int = 0  # inference requests being answered right now (streams to their end)
    most_active_calls: int = 0  # the most at once since start (or the last reset)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reset(self) -> None:
        """Zero the counters; ``active_*`` are live state, not counters, and stay."""
        streams, hangs, calls = self.active_streams, self.active_hangs, self.active_calls
        for name, value in asdict(SimStats()).items():
            setattr(self, name, value)
        self.active_streams, self.active_hangs, self.active_calls = streams, hangs, calls
        self.most_active_calls = calls


@dataclass(frozen=True, slots=True)
class Route:
    family: str | None  # "openai" | "ollama" | "anthropic" | "sim"; None: GET /v1/models decides
    handler: Callable[[SimApp, Request], Reply] | None = None
    endpoint: Generate | Embed | None = None
    auth: bool = True
    discovery: bool = False  # a model list or model metadata: hang_discovery holds it


class SimApp:
    """The simulated upstream. ``options`` may be changed at any time; ``stats`` counts."""

    def __init__(self, options: SimOptions, clock: Clock) -> None:
        self.options = options
        self.clock = clock
        self.stats = SimStats()
        self.limiter = RateLimiter(clock)
        self.rng = random.Random(options.seed)
        self.fail_index = 0  # inference requests seen by the failure injector since reset
        self.loaded: dict[str, None] = {}  # models used since reset, for /api/ps
        self._seq = itertools.count(1)
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", "/v1/models"): Route(None, endpoints.models, discovery=True),
            ("POST", "/v1/chat/completions"): Route("openai", endpoint=openai_wire.CHAT),
            ("POST", "/v1/completions"): Route("openai", endpoint=openai_wire.COMPLETIONS),
            ("POST", "/v1/embeddings"): Route("openai", endpoint=openai_wire.EMBEDDINGS),
            ("POST", "/v1/messages"): Route("anthropic", endpoint=anthropic_wire.MESSAGES),
            ("POST", "/v1/messages/count_tokens"): Route("anthropic", endpoints.anthropic_count_tokens),
            ("GET", "/"): Route("ollama", endpoints.ollama_root, auth=False),
            ("HEAD", "/"): Route("ollama", endpoints.ollama_root, auth=False),
            ("GET", "/api/version"): Route("ollama", endpoints.ollama_version, auth=False),
            ("GET", "/api/tags"): Route("ollama", endpoints.ollama_tags, discovery=True),
            ("GET", "/api/ps"): Route("ollama", endpoints.ollama_ps, discovery=True),
            ("POST", "/api/show"): Route("ollama", endpoints.ollama_show, discovery=True),
            ("POST", "/api/chat"): Route("ollama", endpoint=ollama_wire.CHAT),
            ("POST", "/api/generate"): Route("ollama", endpoint=ollama_wire.GENERATE),
            ("POST", "/api/embed"): Route("ollama", endpoint=ollama_wire.EMBED),
            ("POST", "/api/embeddings"): Route("ollama", endpoint=ollama_wire.LEGACY_EMBEDDINGS),
            ("GET", "/_sim/stats"): Route("sim", endpoints.sim_stats, auth=False),
            ("GET", "/_sim/options"): Route("sim", endpoints.sim_options, auth=False),
            ("POST", "/_sim/options"): Route("sim", endpoints.sim_patch_options, auth=False),
            ("POST", "/_sim/reset"): Route("sim", endpoints.sim_reset, auth=False),
        }
        # Every OpenAI route again under /api/v1, as OpenRouter serves them: more dict keys,
        # so a request still costs one lookup whatever its path.
        self.routes.update(
            {
                (method, OPENROUTER_PREFIX + path): route
                for (method, path), route in self.routes.items()
                if route.family in (None, "openai") and path.startswith("/v1/")
            }
        )
        self._paths = {path for _, path in self.routes}

    def reset(self) -> None:
        """Zero the counters and the rate-limit window; restart the failure schedule."""
        self.stats.reset()
        self.limiter.reset()
        self.rng.seed(self.options.seed)
        self.fail_index = 0
        self.loaded.clear()

    def resolve_model(self, name: str) -> str | None:
        """The served model ``name`` means (Ollama's implicit ``:latest`` included), or None."""
        models = self.options.models
        if name in models:
            return name
        if ":" not in name and f"{name}:latest" in models:
            return f"{name}:latest"
        return None

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        path: str = scope["path"]
        route = self.routes.get((scope["method"], path))
        stats = self.stats
        if not path.startswith("/_sim/"):
            stats.total_requests += 1
            key = path if path in self._paths else "<other>"
            stats.requests_by_path[key] = stats.requests_by_path.get(key, 0) + 1
        if route is None:
            await respond(send, self._no_route(scope["method"], path))
            return
        authorization = api_key = version = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                api_key = value.decode("latin-1")
            elif name == b"anthropic-version":
                version = value
        family = route.family
        if family is None:
            personality = self.options.family
            family = "anthropic" if version is not None or personality == "anthropic" else "openai"
        if route.auth:
            denied = check_auth(self.options, family, authorization, api_key)
            if denied is not None:
                await respond(send, denied)
                return
        if family == "anthropic" and version is None and path.startswith("/v1/messages"):
            await respond(send, error_reply(family, 400, "anthropic-version: header is required"))
            return
        body = await _read_body(receive)
        if route.endpoint is not None:
            await self._infer(route.endpoint, family, body, receive, send, api_key or authorization or "")
        elif route.handler is not None:
            # Not the inference path: the checks below cost nothing to inference requests.
            if route.discovery and self.options.hang_discovery and not await self._hang(receive):
                return
            if path in self.options.fail_metadata_paths and family != "sim":
                self.stats.failures_injected += 1
                said = self.options.fail_message or "simulated failure: 500 Internal Server Error"
                credential = api_key or authorization or ""
                await respond(send, error_reply(family, 500, said.replace("{credential}", credential)))
                return
            await respond(send, route.handler(self, Request(family, body)))

    def _no_route(self, method: str, path: str) -> Reply:
        status = 405 if path in self._paths else 404
        ollama_path = path.startswith("/api/") and not path.startswith(OPENROUTER_PREFIX + "/v1/")
        if ollama_path or (path == "/" and self.options.family == "ollama"):
            return Reply(status, f"{status} {status_phrase(status).lower()}".encode(), TEXT)
        family = (
            "anthropic" if path.startswith("/v1/messages") or self.options.family == "anthropic" else "openai"
        )
        return error_reply(family, status, f"Invalid URL ({method} {path})")

    # -- inference -----------------------------------------------------------------------------

    async def _infer(
        self,
        endpoint: Generate | Embed,
        family: str,
        body: bytes,
        receive: Receive,
        send: Send,
        credential: str,
    ) -> None:
        """One inference request, counted while it is answered: how many calls a gateway has in
        flight at once is what its pools promise to bound."""
        stats = self.stats
        stats.active_calls += 1
        stats.most_active_calls = max(stats.most_active_calls, stats.active_calls)
        try:
            await self._answer(endpoint, family, body, receive, send, credential)
        finally:
            stats.active_calls -= 1

    async def _answer(
        self,
        endpoint: Generate | Embed,
        family: str,
        body: bytes,
        receive: Receive,
        send: Send,
        credential: str,
    ) -> None:
        options = self.options
        self.stats.inference_requests += 1
        seq = next(self._seq)
        try:
            call = endpoint.parse(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            await respond(send, error_reply(family, 400, f"The request body is not valid JSON: {exc}"))
            return
        except WireError as exc:
            await respond(send, error_reply(family, exc.status, exc.message, param=exc.param))
            return
        refused = self._refuse_model(family, call.model, call.capability) or self._refuse_dimensions(
            family, call.dimensions
        )
        if refused is not None:
            await respond(send, refused)
            return
        headers: Headers = []
        if family == "openai":
            headers.append((b"x-request-id", f"req_sim{seq:020x}".encode()))
        elif family == "anthropic":
            headers.append((b"request-id", f"req_sim{seq:020x}".encode()))

        status = self._injected_failure()
        if status is not None:
            self.stats.failures_injected += 1
            said = options.fail_message or f"simulated failure: {status} {status_phrase(status)}"
            reply = error_reply(family, status, said.replace("{credential}", credential))
            retry_after = options.fail_retry_after or ("1" if status == 429 else None)
            if retry_after is not None:
                headers.append((b"retry-after", retry_after.encode()))
            reply.headers = headers
            if await self._pause(options.latency, receive):
                await respond(send, reply)
            return
        if options.garbage:
            if await self._pause(options.latency, receive):
                await respond(send, Reply(200, GARBAGE, headers=headers))
            return

        result: Answer | None = None
        if isinstance(endpoint, Generate):
            result = answer(call.model, call.prompt, options.reply, options.tool_calls)
            output_tokens = result.completion_tokens
        else:
            output_tokens = 0
        if options.ratelimit is not None and (options.rpm > 0 or options.tpm > 0):
            verdict = self.limiter.admit(
                options.ratelimit, options.rpm, options.tpm, call.prompt.prompt_tokens, output_tokens
            )
            headers.extend(verdict.headers)
            if not verdict.allowed:
                self.stats.rate_limited += 1
                reply = error_reply(family, 429, "Rate limit reached for requests or tokens per minute.")
                reply.headers = headers
                await respond(send, reply)
                return
        self.loaded[self.resolve_model(call.model) or call.model] = None

        meta = Meta(seq, self.clock.now(), options.embedding_dim, options.tokens_per_second, options.latency)
        if isinstance(endpoint, Embed):
            rendered = endpoint.render(call, meta)
        else:
            assert result is not None  # every Generate endpoint has an answer
            if call.stream:
                await self._stream(send, receive, endpoint.render_stream(call, result, meta), headers)
                return
            rendered = endpoint.render(call, result, meta)
        if await self._pause(options.latency, receive):
            await respond(send, Reply(200, rendered, headers=headers))

    def _refuse_model(self, family: str, name: str, capability: str) -> Reply | None:
        if self.resolve_model(name) is None:
            if family == "openai":
                message = f"The model `{name}` does not exist or you do not have access to it."
                return error_reply(family, 404, message, param="model", code="model_not_found")
            if family == "anthropic":
                return error_reply(family, 404, f"model: {name}")
            return error_reply(family, 404, f'model "{name}" not found, try pulling it first')
        if is_embedding_model(name) != (capability == "embedding"):
            verb = "embeddings" if capability == "embedding" else capability
            return error_reply(family, 400, f'"{name}" does not support {verb}', param="model")
        return None

    def _refuse_dimensions(self, family: str, dimensions: int | None) -> Reply | None:
        """OpenAI refuses more dimensions than the model has (Ollama shortens, never lengthens)."""
        native = self.options.embedding_dim
        if family != "openai" or dimensions is None or dimensions <= native:
            return None
        message = f"Invalid value for 'dimensions' = {dimensions}. Must be less than or equal to {native}."
        return error_reply(family, 400, message, param="dimensions", code="invalid_value")

    def _injected_failure(self) -> int | None:
        options = self.options
        status = options.fail_status or 500
        self.fail_index += 1
        if self.fail_index <= options.fail_first:
            return status
        if options.fail_rate > 0:
            return status if self.rng.random() < options.fail_rate else None
        if options.fail_status is not None and options.fail_first == 0:
            return status
        return None

    # -- time and streams ----------------------------------------------------------------------

    async def _hang(self, receive: Receive) -> bool:
        """Hold a request while ``hang_discovery`` is on: False once the client left, True once
        the option was turned off (answer it then). The option is polled, not awaited: a test
        may flip it on the options object directly, which no event would notice."""
        watcher = asyncio.ensure_future(_disconnected(receive))
        self.stats.active_hangs += 1
        try:
            while self.options.hang_discovery:
                done, _ = await asyncio.wait((watcher,), timeout=HANG_POLL)
                if done:
                    return False
            return True
        finally:
            watcher.cancel()
            self.stats.active_hangs -= 1

    async def _pause(self, seconds: float, receive: Receive) -> bool:
        """Sleep ``seconds`` of the sim's clock; False if the client left meanwhile."""
        if seconds <= 0:
            return True
        watcher = asyncio.ensure_future(_disconnected(receive))
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            done, _ = await asyncio.wait((sleeper, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            watcher.cancel()
        return watcher not in done

    async def _stream(self, send: Send, receive: Receive, plan: StreamPlan, headers: Headers) -> None:
        """Run the stream against a disconnect watcher: whichever ends first ends the other."""
        stats = self.stats
        stats.streams_started += 1
        stats.active_streams += 1
        watcher = asyncio.ensure_future(_disconnected(receive))
        producer = asyncio.ensure_future(self._produce(send, plan, headers))
        outcome = "cancelled"
        try:
            await asyncio.wait((producer, watcher), return_when=asyncio.FIRST_COMPLETED)
            if producer.done():
                producer.result()
                outcome = "completed"
        except SimulatedDrop:
            outcome = "dropped"
            raise
        finally:
            producer.cancel()
            watcher.cancel()
            await asyncio.gather(producer, watcher, return_exceptions=True)
            stats.active_streams -= 1
            if outcome == "completed":
                stats.streams_completed += 1
            elif outcome == "dropped":
                stats.streams_dropped += 1
            else:
                stats.streams_cancelled += 1

    async def _produce(self, send: Send, plan: StreamPlan, headers: Headers) -> None:
        options = self.options
        if options.latency > 0:
            await self.clock.sleep(options.latency)
        start_headers = [(b"content-type", plan.content_type), (b"cache-control", b"no-cache"), *headers]
        await send({"type": "http.response.start", "status": 200, "headers": start_headers})
        ndjson = plan.content_type.startswith(b"application/x-ndjson")
        bad = MALFORMED_NDJSON if ndjson else MALFORMED_SSE
        # malformed_after_chunks counts every chunk sent before it, the head (a role chunk) too.
        malformed = options.malformed_after_chunks
        sent = 0
        if malformed == 0:
            await send({"type": "http.response.body", "body": bad, "more_body": True})
        if plan.head:
            await send({"type": "http.response.body", "body": plan.head, "more_body": True})
            sent = 1
        drop_after = options.drop_after_chunks
        frames = plan.body if drop_after is None else plan.body[:drop_after]
        delay = 1.0 / options.tokens_per_second if options.tokens_per_second > 0 else 0.0
        for i, frame in enumerate(frames):
            if delay and i:
                await self.clock.sleep(delay)
            if malformed and sent == malformed:
                await send({"type": "http.response.body", "body": bad, "more_body": True})
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            sent += 1
        if drop_after is not None:
            raise SimulatedDrop(f"dropped the connection after {len(frames)} chunks, as configured")
        await send({"type": "http.response.body", "body": plan.tail, "more_body": False})


# What a chaos run's broken upstream sends in the middle of a stream: a frame cut mid-JSON.
MALFORMED_SSE = b'data: {"id":"chatcmpl-sim","choices":[{"delta":{"content":"bro\n\n'
MALFORMED_NDJSON = b'{"model":"sim","message":{"role":"assistant","content":"bro\n'


async def respond(send: Send, reply: Reply) -> None:
    headers = [(b"content-type", reply.content_type), (b"content-length", str(len(reply.body)).encode())]
    if reply.headers:
        headers.extend(reply.headers)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_sim_app(options: SimOptions | None = None, clock: Clock | None = None) -> SimApp:
    """A sim with ``options`` (validated; default ``SimOptions()``) on ``clock`` (default system)."""
    options = options if options is not None else SimOptions()
    options.validate()
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideSimulatedDrops) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_HideSimulatedDrops())
    return SimApp(options, clock if clock is not None else SystemClock())
