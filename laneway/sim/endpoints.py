"""The sim's replies and cheap endpoints: error shapes, the auth check, model lists, Ollama
metadata, count_tokens, and the /_sim/ controls.

Each handler is a plain synchronous function ``(app, request) -> Reply``; none of them sleeps,
fails on purpose or counts against rate limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson

from laneway.sim import anthropic_wire, model_lists, ollama_wire, openai_wire
from laneway.sim.options import SimOptions, apply_patch
from laneway.sim.ratelimit import Headers
from laneway.sim.wire import WireError

if TYPE_CHECKING:
    from laneway.sim.app import SimApp

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: Headers = field(default_factory=list)


@dataclass(slots=True)
class Request:
    family: str  # whose error shape to answer in
    body: bytes


def error_reply(
    family: str, status: int, message: str, *, param: str | None = None, code: str | None = None
) -> Reply:
    if family == "openai":
        return Reply(status, openai_wire.error_body(status, message, param=param, code=code))
    if family == "anthropic":
        return Reply(status, anthropic_wire.error_body(status, message))
    return Reply(status, ollama_wire.error_body(status, message))  # ollama and the /_sim/ endpoints


def check_auth(
    options: SimOptions, family: str, authorization: str | None, x_api_key: str | None
) -> Reply | None:
    """None if the request may pass; else the 401/403 reply in ``family``'s shape.

    Anthropic clients send ``x-api-key`` (Bearer also accepted); everyone else Bearer."""
    if options.api_key is None and not options.forbidden_keys:
        return None
    bearer = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else None
    key = (x_api_key or bearer) if family == "anthropic" else bearer
    if key is not None and key in options.forbidden_keys:
        if family == "anthropic":
            return error_reply(
                family, 403, "Your API key does not have permission to use the specified resource."
            )
        return error_reply(
            family, 403, "Forbidden: this API key may not use this resource.", code="forbidden"
        )
    if options.api_key is None or key == options.api_key:
        return None
    if family == "anthropic":
        return error_reply(
            family, 401, "x-api-key header is required" if key is None else "invalid x-api-key"
        )
    if family == "ollama":
        return error_reply(family, 401, "unauthorized")
    if key is None:
        message = "You didn't provide an API key. Provide it in an Authorization header (Bearer auth)."
        return error_reply(family, 401, message)
    shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
    return error_reply(family, 401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")


def status_phrase(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json(request: Request) -> Any:
    try:
        return orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise WireError(400, f"The request body is not valid JSON: {exc}") from None


# -- model lists and metadata ------------------------------------------------------------------


def models(app: SimApp, request: Request) -> Reply:
    """GET /v1/models (and /api/v1/models): Anthropic's shape for an anthropic sim or an
    ``anthropic-version`` request; else the ``models_format`` server's, OpenAI's by default
    (Ollama's OpenAI compatibility says ``owned_by: library``)."""
    options = app.options
    if request.family == "anthropic":
        return Reply(200, anthropic_wire.models_body(options.models, options.context_length))
    if options.models_format == "vllm":
        body = model_lists.vllm_body(options.models, int(app.clock.now()), options.context_length)
        return Reply(200, body)
    if options.models_format == "openrouter":
        return Reply(200, model_lists.openrouter_body(options.models, options.context_length))
    owned_by = "library" if options.family == "ollama" else "system"
    return Reply(200, openai_wire.models_body(options.models, 1_730_000_000, owned_by))


def ollama_root(app: SimApp, request: Request) -> Reply:
    if app.options.family != "ollama":
        return error_reply("openai", 404, "Invalid URL (GET /)")
    return Reply(200, b"Ollama is running", TEXT)


def ollama_version(app: SimApp, request: Request) -> Reply:
    return Reply(200, ollama_wire.version_body())


def ollama_tags(app: SimApp, request: Request) -> Reply:
    return Reply(200, ollama_wire.tags_body(app.options.models))


def ollama_ps(app: SimApp, request: Request) -> Reply:
    loaded = [name for name in app.loaded if name in app.options.models]
    return Reply(200, ollama_wire.ps_body(loaded, app.clock.now(), app.options.context_length))


def ollama_show(app: SimApp, request: Request) -> Reply:
    try:
        body = _json(request)
    except WireError as exc:
        return error_reply("ollama", exc.status, exc.message)
    name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
    if not isinstance(name, str):
        return error_reply("ollama", 400, "model is required")
    resolved = app.resolve_model(name)
    if resolved is None:
        return error_reply("ollama", 404, f"model '{name}' not found")
    options = app.options
    return Reply(200, ollama_wire.show_body(resolved, options.context_length, options.embedding_dim))


def anthropic_count_tokens(app: SimApp, request: Request) -> Reply:
    try:
        call = anthropic_wire.parse_count_tokens(_json(request))
    except WireError as exc:
        return error_reply("anthropic", exc.status, exc.message)
    if app.resolve_model(call.model) is None:
        return error_reply("anthropic", 404, f"model: {call.model}")
    return Reply(200, anthropic_wire.count_tokens_body(call))


# -- /_sim/ controls ---------------------------------------------------------------------------


def sim_stats(app: SimApp, request: Request) -> Reply:
    return Reply(200, orjson.dumps(app.stats.as_dict()))


def sim_options(app: SimApp, request: Request) -> Reply:
    return Reply(200, orjson.dumps(app.options.to_dict()))


def sim_patch_options(app: SimApp, request: Request) -> Reply:
    """POST /_sim/options: a JSON object of SimOptions fields, validated and applied at once."""
    try:
        patch = _json(request)
        if not isinstance(patch, dict):
            raise WireError(400, "expected a JSON object of option names and values")
        changed = apply_patch(app.options, patch)
    except (WireError, ValueError) as exc:
        return error_reply("sim", 400, exc.message if isinstance(exc, WireError) else str(exc))
    if "seed" in changed:
        app.rng.seed(app.options.seed)
    if "fail_first" in changed:
        app.fail_index = 0
    return Reply(200, orjson.dumps(app.options.to_dict()))


def sim_reset(app: SimApp, request: Request) -> Reply:
    app.reset()
    return Reply(200, orjson.dumps(app.stats.as_dict()))
