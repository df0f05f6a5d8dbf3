"""Lanes and lane ids.

A lane is one routable unit: (tier, provider family, instance id, type, model). Its id is composed
by ``compose_lane_id`` and nowhere else. Each segment is percent-encoded for ``%``, ``:`` and ``/``
so model names such as Ollama's ``llama3:8b`` or OpenRouter's ``meta-llama/llama-3.1-8b:free``
round-trip without ambiguity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum

from laneway.errors import LanewayError


class Tier(StrEnum):
    LOCAL = "local"
    FLEET = "fleet"
    CLOUD = "cloud"
    FRONTIER = "frontier"
    DIRECT = "direct"


class LaneType(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


class InvalidLaneId(LanewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_lane_id"


_SEGMENTS = ("tier", "provider_family", "instance_id", "type", "model")


def _encode(segment: str) -> str:
    return segment.replace("%", "%25").replace(":", "%3A").replace("/", "%2F")


def _decode(segment: str) -> str:
    return segment.replace("%2F", "/").replace("%3A", ":").replace("%25", "%")


def compose_lane_id(*, tier: str, provider_family: str, instance_id: str, type: str, model: str) -> str:
    """The one place a lane id is made: ``tier:family:instance:type:model``, each part encoded."""
    parts = (tier, provider_family, instance_id, type, model)
    for name, value in zip(_SEGMENTS, parts, strict=True):
        if not value:
            raise InvalidLaneId(f"lane id segment '{name}' is empty")
    return ":".join(_encode(p) for p in parts)


def parse_lane_id(lane_id: str) -> tuple[str, str, str, str, str]:
    """Split a lane id back into (tier, family, instance, type, model); raises ``InvalidLaneId``."""
    parts = lane_id.split(":")
    if len(parts) != 5 or not all(parts):
        raise InvalidLaneId(f"'{lane_id}' is not a lane id (want tier:family:instance:type:model)")
    decoded = tuple(_decode(p) for p in parts)
    return decoded[0], decoded[1], decoded[2], decoded[3], decoded[4]


def is_lane_id(value: str) -> bool:
    try:
        tier, _family, _instance, type_, _model = parse_lane_id(value)
    except InvalidLaneId:
        return False
    return tier in Tier.__members__.values() and type_ in LaneType.__members__.values()


@dataclass(slots=True)
class Lane:
    """One routable unit in the inventory."""

    tier: str
    family: str
    backend: str
    type: str
    model: str
    capabilities: frozenset[str] = frozenset()
    context_length: int | None = None
    weight: float = 100.0
    health: str = "healthy"
    observed_at: float = 0.0
    expires_at: float | None = None
    id: str = field(default="")

    def __post_init__(self) -> None:
        composed = compose_lane_id(
            tier=self.tier,
            provider_family=self.family,
            instance_id=self.backend,
            type=self.type,
            model=self.model,
        )
        if self.id and self.id != composed:
            raise InvalidLaneId(f"lane id '{self.id}' does not match its fields (expected '{composed}')")
        self.id = composed

    def replace(self, **changes: object) -> Lane:
        changes.setdefault("id", "")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
