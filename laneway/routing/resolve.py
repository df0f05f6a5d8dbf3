"""Resolve a requested name to candidate lanes.

A client may ask for a route name (``smart``), a lane id, a model name (``llama3.2:3b``), or
``backend/model`` (``gpu-1/llama3.2:3b``). Tried in that order: an exact model name wins over
a ``backend/`` reading, so OpenRouter names such as ``meta-llama/llama-3.1-8b`` still work.
"""

from __future__ import annotations

from dataclasses import dataclass

from laneway.config.selectors import Selector
from laneway.errors import InvalidRequest, ModelNotFound, NoLaneAvailable
from laneway.inventory.lanes import Lane, is_lane_id
from laneway.inventory.store import Inventory


class OutOfRotation(NoLaneAvailable):
    """Lanes serve the name, but none is routable now (breakers open, credentials refused,
    publishers gone): ``lanes`` are those lanes, for the router to say when one is back."""

    def __init__(self, message: str, lanes: tuple[Lane, ...]) -> None:
        super().__init__(message)
        self.lanes = lanes


@dataclass(frozen=True, slots=True)
class Candidate:
    lane: Lane
    effort: str | None = None
    group: int = 0  # which selector of a route chose it: ranking never reorders across selectors


class Resolver:
    def __init__(
        self, inventory: Inventory, routes: dict[str, tuple[Selector, ...]], backends: frozenset[str]
    ):
        self.inventory = inventory
        self.routes = routes
        self.backends = backends
        self._cache: dict[tuple[str, str], tuple[Candidate, ...]] = {}
        self._cache_version = -1

    def resolve(self, name: str, lane_type: str) -> tuple[Candidate, ...]:
        """Candidates in the order they should be tried; raises ModelNotFound / InvalidRequest."""
        if self._cache_version != self.inventory.version:
            self._cache.clear()
            self._cache_version = self.inventory.version
        key = (name, lane_type)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._resolve(name, lane_type)
        return found

    def _resolve(self, name: str, lane_type: str) -> tuple[Candidate, ...]:
        lanes: list[Candidate]
        route = self.routes.get(name)
        if route is not None:
            lanes = self._route_candidates(route)
        elif is_lane_id(name):
            lane = self.inventory.get(name)
            lanes = [Candidate(lane)] if lane else []
        else:
            lanes = [Candidate(lane) for lane in self.inventory.by_model(name)]
            if not lanes:
                backend, sep, model = name.partition("/")
                # A declared backend, or a publisher's name (its lanes are in the inventory).
                if sep and (backend in self.backends or self.inventory.by_backend(backend)):
                    lanes = [Candidate(ln) for ln in self.inventory.by_model(model) if ln.backend == backend]
        if not lanes:
            raise ModelNotFound(
                f"The model '{name}' does not exist or is not available right now", param="model"
            )
        typed = [c for c in lanes if c.lane.type == lane_type]
        if not typed:
            served = ", ".join(sorted({c.lane.type for c in lanes}))
            raise InvalidRequest(f"'{name}' serves {served}, not {lane_type}", param="model")
        routable = tuple(c for c in typed if c.lane.routable)
        if not routable:
            why = ", ".join(sorted({f"{c.lane.backend} ({c.lane.health})" for c in typed}))
            raise OutOfRotation(
                f"'{name}' has {len(typed)} lane(s) but none can take requests right now: {why}",
                tuple(c.lane for c in typed),
            )
        return routable

    def _route_candidates(self, route: tuple[Selector, ...]) -> list[Candidate]:
        seen: set[str] = set()
        out: list[Candidate] = []
        all_lanes = self.inventory.lanes()
        for group, selector in enumerate(route):
            for lane in all_lanes:
                if lane.id not in seen and selector.matches(lane):
                    seen.add(lane.id)
                    out.append(Candidate(lane, selector.effort, group))
        return out
