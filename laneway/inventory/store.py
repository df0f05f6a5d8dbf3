"""The inventory: the live set of lanes, in memory.

Reads are on every request, writes happen on refresh; so writes rebuild small read indexes
(by model, by backend) and reads are dict lookups. ``replace_backend`` writes a backend's new
lanes first and deletes the orphans of its previous snapshot after, so a reader never sees the
backend with zero lanes in between.

Every change is logged as one structured event (``lane added``, ``lane changed``, ``lane
removed``) with the lane id and what changed; a refresh that finds the same lanes logs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from laneway.errors import LanewayError
from laneway.inventory.lanes import Health, InvalidLaneId, Lane, compose_lane_id

log = logging.getLogger("laneway.inventory")

# Fields that say what a lane is; a refresh that changes only its timestamps is not a change.
_COMPARED = ("capabilities", "context_length", "base_weight", "health", "loaded")


def _changes(old: Lane, new: Lane) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in _COMPARED:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out[name] = sorted(after) if isinstance(after, frozenset) else after
    return out


class Inventory:
    def __init__(self) -> None:
        self._lanes: dict[str, Lane] = {}
        self._by_model: dict[str, tuple[Lane, ...]] = {}
        self._by_backend: dict[str, tuple[Lane, ...]] = {}
        self.version = 0  # bumped on every change; caches key on it

    def _reindex(self) -> None:
        by_model: dict[str, list[Lane]] = {}
        by_backend: dict[str, list[Lane]] = {}
        for lane in sorted(self._lanes.values(), key=lambda ln: (-ln.weight, ln.backend, ln.id)):
            by_model.setdefault(lane.model, []).append(lane)
            by_backend.setdefault(lane.backend, []).append(lane)
        self._by_model = {k: tuple(v) for k, v in by_model.items()}
        self._by_backend = {k: tuple(v) for k, v in by_backend.items()}
        self.version += 1

    @staticmethod
    def _check(lane: Lane) -> None:
        expected = compose_lane_id(
            tier=lane.tier,
            provider_family=lane.family,
            instance_id=lane.backend,
            type=lane.type,
            model=lane.model,
        )
        if lane.id != expected:
            raise InvalidLaneId(f"refusing lane with malformed id '{lane.id}' (expected '{expected}')")

    def write_lanes(self, lanes: Iterable[Lane]) -> None:
        """Add or update lanes. A lane written without health keeps the health it has (new: healthy)."""
        lanes = list(lanes)
        for lane in lanes:  # all checked before any is written: one bad lane writes nothing
            self._check(lane)
        for lane in lanes:
            old = self._lanes.get(lane.id)
            if lane.health is None:
                lane = lane.replace(health=old.health if old is not None else Health.HEALTHY)
            self._lanes[lane.id] = lane
            if old is None:
                log.info(
                    "lane added",
                    extra={"lane": lane.id, "backend": lane.backend, "model": lane.model, "type": lane.type},
                )
            elif diff := _changes(old, lane):
                log.info("lane changed", extra={"lane": lane.id, "backend": lane.backend, "changes": diff})
        if lanes:  # even an unchanged lane is a new object (new expiry): the indexes must hold it
            self._reindex()

    def delete_lanes(self, ids: Iterable[str], *, reason: str = "") -> int:
        n = 0
        for lane_id in ids:
            lane = self._lanes.pop(lane_id, None)
            if lane is not None:
                n += 1
                log.info("lane removed", extra={"lane": lane_id, "backend": lane.backend, "reason": reason})
        if n:
            self._reindex()
        return n

    def replace_backend(self, backend: str, lanes: list[Lane]) -> int:
        """Write ``lanes`` for ``backend``, then delete its lanes that are not among them (the orphans
        of its previous snapshot). Returns how many orphans went."""
        if any(lane.backend != backend for lane in lanes):
            raise LanewayError(f"replace_backend('{backend}') given a lane of another backend")
        previous = {lane.id for lane in self._by_backend.get(backend, ())}
        self.write_lanes(lanes)
        return self.delete_lanes(previous - {lane.id for lane in lanes}, reason="no longer reported")

    def remove_backend(self, backend: str, *, reason: str = "backend removed") -> int:
        return self.delete_lanes([lane.id for lane in self._by_backend.get(backend, ())], reason=reason)

    def set_health(self, ids: Iterable[str], health: str) -> int:
        """Set the health of the given lanes; returns how many changed."""
        updated = [
            lane.replace(health=health)
            for lane_id in ids
            if (lane := self._lanes.get(lane_id)) is not None and lane.health != health
        ]
        if updated:
            self.write_lanes(updated)
        return len(updated)

    def sweep(self, now: float) -> int:
        """Delete lanes whose expiry has passed (their backend has not confirmed them for too long)."""
        expired = [
            i for i, lane in self._lanes.items() if lane.expires_at is not None and lane.expires_at <= now
        ]
        return self.delete_lanes(expired, reason="expired") if expired else 0

    def get(self, lane_id: str) -> Lane | None:
        return self._lanes.get(lane_id)

    def by_model(self, model: str) -> tuple[Lane, ...]:
        return self._by_model.get(model, ())

    def by_backend(self, backend: str) -> tuple[Lane, ...]:
        return self._by_backend.get(backend, ())

    def lanes(self) -> list[Lane]:
        return [lane for group in self._by_backend.values() for lane in group]

    def query(self, filters: Mapping[str, str]) -> list[Lane]:
        """Lanes whose ``as_dict()`` fields equal the given values (compared as text; lists
        such as ``capabilities`` match when they contain the value)."""
        out = []
        for lane in self.lanes():
            shown = lane.as_dict()
            if all(_field_matches(shown.get(k), v) for k, v in filters.items()):
                out.append(lane)
        return out

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def backends(self) -> list[str]:
        return sorted(self._by_backend)

    def __len__(self) -> int:
        return len(self._lanes)

    def __repr__(self) -> str:
        return f"<Inventory: {len(self._lanes)} lanes, {len(self._by_backend)} backends>"


def _field_matches(value: object, wanted: str) -> bool:
    if isinstance(value, list):
        return wanted in value
    if isinstance(value, bool):
        return wanted.lower() == str(value).lower()
    if isinstance(value, int | float):
        try:
            return value == float(wanted)  # weight=1e8 and weight=100000000.0 mean the same
        except ValueError:
            return False
    return value is not None and str(value) == wanted
