"""What the router asks of the backends, and tells them.

The router reads a backend's config (once per attempt), its model policy, why a known model has
no lane now, and how long a refused credential's cooldown lasts; it tells the backends of a
refused credential and of a stale lane, and asks for a refresh of the local backends when a name
no lane serves is requested. ``AllBackends`` answers for the declared backends (the reconciler)
and for the publishers' (the fleet, through the small ``Publishers`` view of it).
"""

from __future__ import annotations

import logging
from typing import Protocol

from laneway.config.schema import BackendConfig
from laneway.errors import NoLaneAvailable, UpstreamError
from laneway.inventory.reconcile import Reconciler

log = logging.getLogger("laneway.routing")


class Backends(Protocol):
    def config(self, backend: str) -> BackendConfig | None:
        """The backend's config (None: it is gone, its lanes are not to be called)."""
        ...

    def allows(self, backend: str, model: str) -> bool: ...

    async def refresh_local(self) -> bool: ...

    def credential_refused(self, backend: str, exc: UpstreamError) -> None:
        """Start the credential's cooldown (at once; what is written to a store, off the path)."""
        ...

    def lane_stale(self, lane_id: str) -> None: ...

    def unavailable(self, name: str) -> NoLaneAvailable | None:
        """Why a name no lane serves is a known model that cannot be served now (None: unknown)."""
        ...

    def cooldown_left(self, backend: str) -> float:
        """Seconds left of the backend's auth cooldown (0: none)."""
        ...


class Publishers(Protocol):
    """What ``AllBackends`` asks of the publishers' side (``laneway.virtual.Fleet``)."""

    def config(self, backend: str) -> BackendConfig | None: ...

    def is_virtual(self, backend: str) -> bool: ...

    def may_join(self, backend: str) -> bool: ...


class NoPublishers:
    """A gateway without publishers (a router over declared backends only)."""

    def config(self, backend: str) -> BackendConfig | None:
        return None

    def is_virtual(self, backend: str) -> bool:
        return False

    def may_join(self, backend: str) -> bool:
        return False


class AllBackends:
    """The declared backends (the reconciler) and the publishers' (the fleet). A publisher's lanes
    are scoped by its token when it registers, and a 404 or 401 from one is about its own machine:
    neither marks lanes stale nor starts a cooldown."""

    def __init__(self, reconciler: Reconciler, publishers: Publishers) -> None:
        self.reconciler = reconciler
        self.publishers = publishers

    def config(self, backend: str) -> BackendConfig | None:
        return self.reconciler.config(backend) or self.publishers.config(backend)

    def allows(self, backend: str, model: str) -> bool:
        if backend not in self.reconciler.refreshers and self.publishers.is_virtual(backend):
            # A published lane never takes a declared backend's model, unless its token may.
            return self.publishers.may_join(backend) or not self.reconciler.serves(model)
        return self.reconciler.allows(backend, model)

    def unavailable(self, name: str) -> NoLaneAvailable | None:
        return self.reconciler.unavailable(name)

    def cooldown_left(self, backend: str) -> float:
        refresher = self.reconciler.refreshers.get(backend)
        until = refresher.status.cooldown_until if refresher is not None else None
        return max(0.0, until - self.reconciler.ctx.clock.now()) if until is not None else 0.0

    async def refresh_local(self) -> bool:
        return await self.reconciler.refresh_local()

    def credential_refused(self, backend: str, exc: UpstreamError) -> None:
        self.reconciler.credential_refused(backend, exc)

    def lane_stale(self, lane_id: str) -> None:
        lane = self.reconciler.ctx.inventory.get(lane_id)
        if lane is not None and self.publishers.is_virtual(lane.backend):
            log.warning("publisher answered 404 for its own lane", extra={"lane": lane_id})
            return
        self.reconciler.lane_stale(lane_id)
