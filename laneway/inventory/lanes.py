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
from laneway.operations import Operation


class Tier(StrEnum):
    LOCAL = "local"
    FLEET = "fleet"
    CLOUD = "cloud"
    FRONTIER = "frontier"
    DIRECT = "direct"


# A lane's type is the operation it serves (laneway.operations, the one operation map).
LaneType = Operation


class Health(StrEnum):
    """A lane's health. Discovery never sets it (writing a lane without health keeps the current
    one); the auth cooldown sets ``denied`` and lifts it, breakers set ``open`` and ``half-open``."""

    HEALTHY = "healthy"
    HALF_OPEN = "half-open"
    OPEN = "open"
    DENIED = "denied"
    STALE = "stale"  # the backend said 404 for it; a refresh decides
    # Virtual lanes (laneway.virtual): their publisher's state, set by the fleet registry only.
    INACTIVE = "inactive"  # the publisher is gone (no heartbeat, or its control stream closed)
    HIBERNATING = "hibernating"  # routable, but woken first: an awake lane is preferred


# Healths that only their owner changes: a breaker's verdict never overwrites them.
HELD = frozenset({Health.DENIED, Health.INACTIVE})


# What a lane's health does to its weight: 0 takes it out of rotation.
HEALTH_FACTOR: dict[str, float] = {
    Health.HEALTHY: 1.0,
    Health.HALF_OPEN: 0.5,
    Health.OPEN: 0.0,
    Health.DENIED: 0.0,
    Health.STALE: 0.0,
    Health.INACTIVE: 0.0,
    Health.HIBERNATING: 0.5,
}


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
    """One routable unit in the inventory.

    ``base_weight`` is tier x provider x instance x model weight (from config); ``weight`` applies
    the health factor. ``health`` None means "keep whatever the inventory has" when written.
    ``observed_at`` and ``expires_at`` are wall-clock seconds.
    """

    tier: str
    family: str
    backend: str
    type: str
    model: str
    capabilities: frozenset[str] = frozenset()
    context_length: int | None = None
    base_weight: float = 100.0
    health: str | None = None
    loaded: bool | None = None  # the model is in memory on its backend (Ollama /api/ps); None: unknown
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

    @property
    def weight(self) -> float:
        return self.base_weight * HEALTH_FACTOR.get(self.health or Health.HEALTHY, 0.0)

    @property
    def routable(self) -> bool:
        return self.weight > 0

    def replace(self, **changes: object) -> Lane:
        changes.setdefault("id", "")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        """The lane as the admin API and the CLI show it."""
        return {
            "id": self.id,
            "tier": self.tier,
            "family": self.family,
            "backend": self.backend,
            "type": self.type,
            "model": self.model,
            "capabilities": sorted(self.capabilities),
            "context_length": self.context_length,
            "health": self.health or Health.HEALTHY,
            "base_weight": self.base_weight,
            "weight": self.weight,
            "routable": self.routable,
            "loaded": self.loaded,
            "observed_at": self.observed_at,
            "expires_at": self.expires_at,
        }
