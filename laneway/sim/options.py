"""What the simulated upstream does: its personality, its models and the trouble it makes.

``SimOptions`` is deliberately a plain mutable dataclass: a test may flip ``fail_status`` or
``models`` on a running sim (directly, or through ``POST /_sim/options``) and the next request
sees the change. The app reads the options on every request and caches nothing derived from them.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

FAMILIES = ("openai", "ollama", "anthropic")
RATELIMIT_FORMATS = ("openai", "anthropic", "openrouter")
MODELS_FORMATS = ("openai", "vllm", "openrouter")
TOOL_CALLS = ("auto", "forced")

_DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-4o-mini", "text-embedding-3-small"),
    "ollama": ("llama3.2:3b", "nomic-embed-text:latest"),
    "anthropic": ("claude-sonnet-4-6", "claude-haiku-4-5"),
}


def default_models(family: str) -> list[str]:
    """The models a sim of ``family`` serves when none are given."""
    return list(_DEFAULT_MODELS.get(family, _DEFAULT_MODELS["openai"]))


def is_embedding_model(name: str) -> bool:
    return "embed" in name


@dataclass
class SimOptions:
    """Behaviour of one sim. Every field may be changed while the sim runs.

    ``models`` left empty at construction means the family's defaults; set it to ``[]`` on a
    built instance (or patch it) to simulate a server with no models at all.

    Failures (inference endpoints only): the first ``fail_first`` inference requests since start,
    reset or the last patch of ``fail_first`` fail; after that a ``fail_rate`` fraction fails
    (drawn from ``random.Random(seed)``); ``fail_status`` alone, with neither of those, fails
    every inference request. The status is ``fail_status``, or 500 when it is not set; the
    message ``fail_message`` (see there), or "simulated failure: ...".

    Discovery (the model lists and metadata an inventory reads): ``models_format`` picks whose
    OpenAI-style model list ``GET /v1/models`` (and ``/api/v1/models``) answers with: None or
    "openai" (OpenAI's), "vllm" (adds ``max_model_len``, ``root``, ``permission``) or
    "openrouter" (its catalogue entries: modalities, pricing, supported parameters).
    ``hang_discovery`` makes the discovery endpoints (``/v1/models``, ``/api/v1/models``,
    ``/api/tags``, ``/api/show``, ``/api/ps``) take the request and never answer, until the
    client leaves or the option is turned off; inference is unaffected. The non-inference
    endpoints at ``fail_metadata_paths`` answer 500 (inference ignores it: see ``fail_*``).

    Tool calls: with ``tool_calls`` "auto" the sim calls the first tool offered (or the named one)
    whenever a request offers tools and tool choice is not "none", as a tool-happy model would;
    "forced" calls one only when tool choice forces it (required / any / a named tool) and
    answers text otherwise. Coding agents (Claude Code, Codex) offer shell tools on every turn:
    under "forced" a sim never asks them to run a command.
    """

    family: str = "openai"
    models: list[str] = field(default_factory=list)
    latency: float = 0.0
    tokens_per_second: float = 0.0
    reply: str | None = None
    api_key: str | None = None
    forbidden_keys: list[str] = field(default_factory=list)
    fail_status: int | None = None
    # Chaos: the message of injected failures. ``{credential}`` becomes the credential header the
    # request carried (Authorization or x-api-key): an upstream (or a proxy before one) that
    # quotes what it was sent, as some do; the real APIs mask it.
    fail_message: str | None = None
    # The Retry-After header of injected failures (a 503 that says when to come back); None: "1"
    # on a 429, none on any other status.
    fail_retry_after: str | None = None
    fail_rate: float = 0.0
    fail_first: int = 0
    seed: int = 0
    drop_after_chunks: int | None = None
    malformed_after_chunks: int | None = None  # chaos: a frame cut mid-JSON after this many chunks
    garbage: bool = False
    ratelimit: str | None = None
    rpm: int = 0
    tpm: int = 0
    embedding_dim: int = 16
    context_length: int = 8192
    models_format: str | None = None
    hang_discovery: bool = False
    fail_metadata_paths: list[str] = field(default_factory=list)
    tool_calls: str = "auto"

    def __post_init__(self) -> None:
        if not self.models:
            self.models = default_models(self.family)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value makes no sense."""
        problems = _problems(self)
        if problems:
            raise ValueError(problems[0])

    def to_dict(self) -> dict[str, Any]:
        return {f.name: copy.copy(getattr(self, f.name)) for f in fields(self)}


def _problems(o: SimOptions) -> list[str]:
    checks: list[tuple[bool, str]] = [
        (o.family in FAMILIES, f"family must be one of {', '.join(FAMILIES)}, not {o.family!r}"),
        (all(isinstance(m, str) and m for m in o.models), "models must be non-empty names"),
        (o.latency >= 0, "latency must be >= 0"),
        (o.tokens_per_second >= 0, "tokens_per_second must be >= 0"),
        (o.fail_status is None or 400 <= o.fail_status <= 599, "fail_status must be within 400..599"),
        (0.0 <= o.fail_rate <= 1.0, "fail_rate must be within 0..1"),
        (o.fail_first >= 0, "fail_first must be >= 0"),
        (o.drop_after_chunks is None or o.drop_after_chunks >= 0, "drop_after_chunks must be >= 0"),
        (
            o.malformed_after_chunks is None or o.malformed_after_chunks >= 0,
            "malformed_after_chunks must be >= 0",
        ),
        (
            o.ratelimit is None or o.ratelimit in RATELIMIT_FORMATS,
            f"ratelimit must be one of {', '.join(RATELIMIT_FORMATS)}, not {o.ratelimit!r}",
        ),
        (o.rpm >= 0 and o.tpm >= 0, "rpm and tpm must be >= 0"),
        (1 <= o.embedding_dim <= 65536, "embedding_dim must be within 1..65536"),
        (o.context_length >= 1, "context_length must be >= 1"),
        (
            o.models_format is None or o.models_format in MODELS_FORMATS,
            f"models_format must be one of {', '.join(MODELS_FORMATS)}, not {o.models_format!r}",
        ),
        (
            all(isinstance(p, str) and p.startswith("/") for p in o.fail_metadata_paths),
            "fail_metadata_paths must be paths starting with '/'",
        ),
        (
            o.tool_calls in TOOL_CALLS,
            f"tool_calls must be one of {', '.join(TOOL_CALLS)}, not {o.tool_calls!r}",
        ),
    ]
    return [message for ok, message in checks if not ok]


def apply_patch(options: SimOptions, patch: Mapping[str, Any]) -> list[str]:
    """Validate ``patch`` (field name -> new value) and apply it to ``options`` in place.

    All or nothing: on any bad name, type or value ``ValueError`` is raised and ``options`` is
    unchanged. Returns the names that were set.
    """
    from pydantic import TypeAdapter, ValidationError  # only the control endpoint pays for this

    hints = typing.get_type_hints(SimOptions)
    unknown = sorted(set(patch) - set(hints))
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(unknown)}")
    candidate = copy.copy(options)  # copy.copy skips __post_init__: [] models stays []
    for name, value in patch.items():
        try:
            setattr(candidate, name, TypeAdapter(hints[name]).validate_python(value))
        except ValidationError as exc:
            raise ValueError(f"{name}: {exc.errors()[0]['msg']}") from None
    candidate.validate()
    for name in patch:
        setattr(options, name, getattr(candidate, name))
    return list(patch)
