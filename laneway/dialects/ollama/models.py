"""laneway's models and routes as Ollama describes models: the entries of ``/api/tags`` and
``/api/ps`` and the answer of ``/api/show``, built from the lanes that serve a name.

An Ollama knows its models' files: size, digest, architecture, quantisation. laneway knows lanes
(a backend and a model name, with the capabilities and context length discovery found), served
by any family, so what it cannot know is an honest placeholder: ``size`` 0, ``parameter_size`` and
``quantization_level`` empty, ``digest`` the SHA-256 of the name (stable, so a client that keys
on it sees the same model each time), ``details.family`` the provider family of its lanes. What
laneway does know (which backends, families and lane types serve it, or a route's selectors) is
in an extra ``laneway`` field that Ollama's clients ignore.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from laneway.dialects.ollama.response import rfc3339_nano
from laneway.inventory.lanes import Lane
from laneway.operations import Operation

TEXT = frozenset({Operation.CHAT.value, Operation.COMPLETION.value})
# laneway's capability names → Ollama's
CAPABILITIES = (("tools", "tools"), ("vision", "vision"), ("reasoning", "thinking"))


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def details(lanes: Sequence[Lane]) -> dict[str, Any]:
    families = sorted({lane.family for lane in lanes})
    return {
        "parent_model": "",
        "format": "gguf" if families == ["ollama"] else "",
        "family": families[0] if len(families) == 1 else "laneway",
        "families": families,
        "parameter_size": "",
        "quantization_level": "",
    }


def capabilities(lanes: Iterable[Lane]) -> list[str]:
    """Ollama's capability words for what the lanes can do, in Ollama's order."""
    types: set[str] = set()
    caps: set[str] = set()
    for lane in lanes:
        types.add(lane.type)
        caps |= lane.capabilities
    out = ["completion"] if types & TEXT else []
    out += [theirs for ours, theirs in CAPABILITIES if ours in caps and types & TEXT]
    if Operation.EMBEDDING.value in types:
        out.append("embedding")
    return out


def context_length(lanes: Iterable[Lane]) -> int | None:
    return max((lane.context_length or 0 for lane in lanes), default=0) or None


def _laneway(lanes: Sequence[Lane], selectors: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "model" if selectors is None else "route",
        "backends": sorted({lane.backend for lane in lanes}),
        "types": sorted({lane.type for lane in lanes}),
    }
    if selectors is not None:
        out["selectors"] = list(selectors)
    return out


def _modified(lanes: Sequence[Lane], now: float) -> str:
    return rfc3339_nano(min((lane.observed_at for lane in lanes if lane.observed_at), default=now))


def tag(
    name: str, lanes: Sequence[Lane], *, now: float, selectors: Sequence[str] | None = None
) -> dict[str, Any]:
    """An ``/api/tags`` entry for a model (or, with ``selectors``, a route) served by ``lanes``."""
    return {
        "name": name,
        "model": name,
        "modified_at": _modified(lanes, now),
        "size": 0,
        "digest": digest(name),
        "details": details(lanes),
        "laneway": _laneway(lanes, selectors),
    }


def running(name: str, lanes: Sequence[Lane]) -> dict[str, Any]:
    """An ``/api/ps`` entry for a model some lanes have in memory. ``expires_at``: until when
    laneway's discovery vouches for it (Ollama's own keep-alive is not reported to laneway)."""
    out: dict[str, Any] = {
        "name": name,
        "model": name,
        "size": 0,
        "digest": digest(name),
        "details": details(lanes),
    }
    expiry = min((lane.expires_at for lane in lanes if lane.expires_at), default=None)
    if expiry is not None:
        out["expires_at"] = rfc3339_nano(expiry)
    out["size_vram"] = 0
    if (length := context_length(lanes)) is not None:
        out["context_length"] = length
    out["laneway"] = _laneway(lanes, None)
    return out


def show(
    name: str, lanes: Sequence[Lane], *, now: float, selectors: Sequence[str] | None = None
) -> dict[str, Any]:
    """The ``/api/show`` answer: details, capabilities, and ``model_info`` with the context
    length where discovery found one (under ``<architecture>.context_length``, where Ollama's
    clients look). laneway applies no Modelfile, so ``template`` and ``parameters`` are empty."""
    described = details(lanes)
    arch = described["family"]
    info: dict[str, Any] = {"general.architecture": arch, "general.basename": name}
    if (length := context_length(lanes)) is not None:
        info[f"{arch}.context_length"] = length
    return {
        "license": "",
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": described,
        "model_info": info,
        "capabilities": capabilities(lanes),
        "modified_at": _modified(lanes, now),
        "laneway": _laneway(lanes, selectors),
    }
