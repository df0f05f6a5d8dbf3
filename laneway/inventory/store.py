"""The inventory: the live set of lanes, in memory.

Reads are on every request, writes happen on refresh; so writes rebuild small read indexes
(by model, by backend) and reads are dict lookups. ``replace_backend`` writes a backend's new
lanes first and deletes the orphans of its previous snapshot after, so a reader never sees the
backend with zero lanes in between.
"""

from __future__ import annotations

from collections.abc import Iterable

from laneway.errors import LanewayError
from laneway.inventory.lanes import InvalidLaneId, Lane, compose_lane_id


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
        for lane in lanes:
            self._check(lane)
            self._lanes[lane.id] = lane
        self._reindex()

    def delete_lanes(self, ids: Iterable[str]) -> int:
        n = sum(1 for i in ids if self._lanes.pop(i, None) is not None)
        if n:
            self._reindex()
        return n

    def replace_backend(self, backend: str, lanes: list[Lane]) -> None:
        """Write ``lanes`` for ``backend``, then delete its lanes that are not among them."""
        if any(lane.backend != backend for lane in lanes):
            raise LanewayError(f"replace_backend('{backend}') given a lane of another backend")
        previous = {lane.id for lane in self._by_backend.get(backend, ())}
        self.write_lanes(lanes)
        self.delete_lanes(previous - {lane.id for lane in lanes})

    def remove_backend(self, backend: str) -> int:
        return self.delete_lanes([lane.id for lane in self._by_backend.get(backend, ())])

    def get(self, lane_id: str) -> Lane | None:
        return self._lanes.get(lane_id)

    def by_model(self, model: str) -> tuple[Lane, ...]:
        return self._by_model.get(model, ())

    def by_backend(self, backend: str) -> tuple[Lane, ...]:
        return self._by_backend.get(backend, ())

    def lanes(self) -> list[Lane]:
        return [lane for group in self._by_backend.values() for lane in group]

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def __len__(self) -> int:
        return len(self._lanes)

    def __repr__(self) -> str:
        return f"<Inventory: {len(self._lanes)} lanes, {len(self._by_backend)} backends>"
