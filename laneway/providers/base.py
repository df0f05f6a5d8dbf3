"""The seam between laneway and an upstream: one small async Protocol per provider family.

Everything crosses this seam in the OpenAI format. An adapter takes an OpenAI-shaped request body
(``Call.body``), speaks its family's wire format to the backend, and hands back OpenAI-shaped bytes.
Errors come back as ``laneway.errors.UpstreamError`` subclasses, never as aiohttp or JSON errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from laneway.operations import OPERATIONS, Operation


@dataclass(slots=True, frozen=True)
class ModelInfo:
    """A model as a backend reports it. ``types`` are the lane types it serves: operations of the
    operation map (``laneway.operations``; ``providers.capabilities`` has them by kind of model)."""

    id: str
    types: frozenset[str]
    capabilities: frozenset[str] = frozenset()
    context_length: int | None = None
    loaded: bool | None = None  # in memory on the backend right now (Ollama /api/ps); None: not known


OPENAI = "openai"  # the dialect everything crosses the seam in, unless a call is native


@dataclass(frozen=True, slots=True)
class Native:
    """A client's request as it sent it, in a dialect other than OpenAI's (``dialect``: "anthropic"
    for ``/v1/messages``), for a lane whose family speaks that dialect itself: such a lane may send
    ``body`` on as it came (only its ``model`` rewritten) and answer in the same dialect
    (``Reply.dialect``, ``ReplyStream.dialect``), so nothing a translation would lose is lost.
    ``headers`` are the client's headers of that dialect worth forwarding (``anthropic-beta``).
    Every other lane serves the call's OpenAI ``body``, the same request translated."""

    dialect: str
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Call:
    """One request for one backend.

    ``body`` is the OpenAI-format request, with ``model`` already set to the backend's own model
    name. ``raw`` is the client's original bytes when they are still exactly ``body`` (same model
    name), so an OpenAI-compatible upstream gets them without a re-serialisation. ``native`` is
    the client's request in its own dialect, when it came in another one (see ``Native``).
    """

    model: str
    body: dict[str, Any]
    raw: bytes | None = None
    effort: str | None = None  # reasoning effort from a route selector (low|medium|high)
    timeout: float | None = None
    native: Native | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens an upstream says one call used, read from what the adapter parses anyway.

    Either count is None when the upstream did not say: usage is recorded as reported, never
    estimated, so a total is known to be a lower bound rather than silently wrong. (An embedding
    has no completion tokens to report; an Ollama prompt served from its cache may come back
    without a prompt count.)
    """

    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(slots=True)
class Reply:
    """A complete response body, the upstream's response headers, and the tokens the upstream
    reported (None when its answer said nothing about them). The body is in OpenAI's format,
    unless the provider served the call's ``native`` request: then in that ``dialect``."""

    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    usage: Usage | None = None
    dialect: str = OPENAI


class ReplyStream(Protocol):
    """An established upstream stream, already translated to OpenAI SSE bytes (or, when the
    provider served the call's ``native`` request, in that ``dialect``'s own frames).

    It is only handed out after the upstream answered with a success status, so a caller may
    still fail over on any error raised before it has one. Iterating yields ready-to-send
    ``data: ...\\n\\n`` frames, ending with ``data: [DONE]\\n\\n``. ``aclose`` releases the
    upstream connection and is safe to call more than once.
    """

    headers: Mapping[str, str]
    dialect: str  # OPENAI, or the dialect of the call's native request

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class DiscoveryNotes(Protocol):
    """A provider that keeps what its discovery learnt beyond the model list (Ollama: which models
    think, which capabilities ``/api/show`` listed), and uses it when it serves. In a cluster a
    replica that adopts another's refresh of the backend instead of making its own takes these
    up too (``laneway.inventory.sharing``), so it serves as the refreshing replica would."""

    def discovery_notes(self) -> dict[str, Any]:
        """What the last discovery learnt, JSON-ready."""

    def take_notes(self, notes: Mapping[str, Any]) -> None:
        """Adopt another replica's ``discovery_notes`` of this backend (unreadable parts are
        ignored: the next refresh learns them again)."""


class Provider(Protocol):
    """One backend instance of one provider family."""

    family: str
    name: str

    async def list_models(self) -> list[ModelInfo]: ...

    async def probe(self) -> Mapping[str, str]:
        """One cheap call that proves the backend answers (a model list, never a completion);
        returns its response headers. Raises ``UpstreamError`` like any call."""
        ...

    async def chat(self, call: Call) -> Reply: ...

    async def stream_chat(self, call: Call) -> ReplyStream: ...

    async def complete(self, call: Call) -> Reply: ...

    async def stream_complete(self, call: Call) -> ReplyStream: ...

    async def embed(self, call: Call) -> Reply: ...

    async def aclose(self) -> None: ...


def answer(provider: Provider, op: Operation, call: Call) -> Awaitable[Reply]:
    """The provider's whole answer to ``op`` (the method the operation map names)."""
    method: Callable[[Call], Awaitable[Reply]] = getattr(provider, OPERATIONS[op].call)
    return method(call)


def stream(provider: Provider, op: Operation, call: Call) -> Awaitable[ReplyStream]:
    """The provider's stream for ``op``; ``ValueError`` for an operation that never streams."""
    name = OPERATIONS[op].stream
    if name is None:
        raise ValueError(f"'{op}' is not an operation that streams")
    method: Callable[[Call], Awaitable[ReplyStream]] = getattr(provider, name)
    return method(call)
