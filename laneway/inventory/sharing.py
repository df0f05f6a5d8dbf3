"""Discovery shared between replicas: what one refresh of a backend found, as others take it up.

In cluster mode one replica leads each backend's discovery (``Sharing.leads``; a lease in the
runtime store, ``laneway.cluster.discovery``) and refreshes it once per interval for everyone;
after every refresh, the leader's or any other (a request for an unknown model, a stale lane,
``POST /admin/refresh``), the replica that made it shares a ``BackendSnapshot``: the backend's
lanes, its ``BackendStatus``, the models it is known to serve and what its provider learnt
beyond the list (``DiscoveryNotes``). The others adopt it (``Reconciler.adopt``) instead of
calling the upstream themselves.

A snapshot carries discovery's verdicts on lane health only (``denied``: its credential is in a
cooldown; ``stale``: it answered 404 and no refresh confirmed it since). ``open`` and
``half-open`` are each replica's breakers' to say: a snapshot never carries them, and adopting
one keeps the breaker health a lane has here.

Nothing here does I/O: this module is the shape and its encoding (JSON-ready dicts, for the
runtime store and the events bus); ``Sharing`` is the seam ``laneway.cluster`` implements. The
embedded default has no ``Sharing`` at all: one replica leads everything and shares nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from laneway.config.schema import BackendConfig
from laneway.errors import LanewayError
from laneway.inventory.cooldown import credential_fingerprint
from laneway.inventory.lanes import Health, Lane

# The healths a refresh decides; any other is this replica's own (its breakers').
DISCOVERY_HEALTH = frozenset({Health.DENIED, Health.STALE})


def sharing_scope(backend: str, config: BackendConfig) -> str:
    """What a backend's discovery is led and shared under: its name and a fingerprint of its
    declaration and credential (a hash; never the secret). Replicas that declare the name alike
    share one leader and one snapshot; any that declare it otherwise (another base URL or key, a
    config being rolled out, another deployment on the same namespace) lead and share their own,
    so a replica never adopts lanes its own declaration would not find."""
    material = f"{config.model_dump_json()}\n{credential_fingerprint(config)}"
    return f"{backend}:{hashlib.sha256(material.encode()).hexdigest()[:12]}"


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """One backend as a refresh left it. ``refreshed_at`` (wall clock, the refresh's start:
    ``BackendStatus.last_attempt``) orders snapshots: a replica adopts only a newer one than it
    has. ``status`` holds ``BackendStatus`` fields by name."""

    backend: str
    scope: str  # ``sharing_scope``: a replica adopts only a snapshot of the backend as it declares it
    replica: str  # the replica that made the refresh
    refreshed_at: float
    lanes: tuple[Lane, ...]
    status: Mapping[str, Any]
    known: frozenset[str]
    notes: Mapping[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "scope": self.scope,
            "replica": self.replica,
            "refreshed_at": self.refreshed_at,
            "lanes": [_lane_payload(lane) for lane in self.lanes],
            "status": dict(self.status),
            "known": sorted(self.known),
            "notes": dict(self.notes),
        }

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> BackendSnapshot | None:
        """The snapshot in ``data``, or None if it is not one (another version's, or torn): a
        replica that cannot read a snapshot refreshes the backend itself."""
        try:
            backend = str(data["backend"])
            lanes = tuple(_lane(raw) for raw in data["lanes"])
            if any(lane.backend != backend for lane in lanes):
                return None
            return cls(
                backend=backend,
                scope=str(data["scope"]),
                replica=str(data["replica"]),
                refreshed_at=float(data["refreshed_at"]),
                lanes=lanes,
                status=dict(data["status"]),
                known=frozenset(str(m) for m in data["known"]),
                notes=dict(data.get("notes") or {}),
            )
        except (KeyError, TypeError, ValueError, LanewayError):  # LanewayError: a malformed lane id
            return None


def _lane_payload(lane: Lane) -> dict[str, Any]:
    return {
        "tier": lane.tier,
        "family": lane.family,
        "backend": lane.backend,
        "type": lane.type,
        "model": lane.model,
        "capabilities": sorted(lane.capabilities),
        "context_length": lane.context_length,
        "base_weight": lane.base_weight,
        # Discovery's verdicts only; a breaker's state stays with the replica whose breaker it is.
        "health": lane.health if lane.health in DISCOVERY_HEALTH else None,
        "loaded": lane.loaded,
        "observed_at": lane.observed_at,
        "expires_at": lane.expires_at,
    }


def _lane(raw: Mapping[str, Any]) -> Lane:
    health = raw.get("health")
    context = raw.get("context_length")
    expires = raw.get("expires_at")
    loaded = raw.get("loaded")
    return Lane(
        tier=str(raw["tier"]),
        family=str(raw["family"]),
        backend=str(raw["backend"]),
        type=str(raw["type"]),
        model=str(raw["model"]),
        capabilities=frozenset(str(c) for c in raw["capabilities"]),
        context_length=int(context) if context is not None else None,
        base_weight=float(raw["base_weight"]),
        health=str(health) if health in DISCOVERY_HEALTH else None,
        loaded=bool(loaded) if loaded is not None else None,
        observed_at=float(raw["observed_at"]),
        expires_at=float(expires) if expires is not None else None,
    )


def status_fields(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of the dataclass ``cls`` (a snapshot another
    version wrote may have more, or fewer)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


class Discoverer(Protocol):
    """What ``Sharing`` drives: the reconciler (``laneway.inventory.reconcile``)."""

    def scopes(self) -> dict[str, str]:
        """The declared backends, each with the ``sharing_scope`` it is led and shared under."""

    def adopt(self, snapshot: BackendSnapshot) -> bool:
        """Take up another replica's refresh; False if it was not newer than what this one has."""

    def leadership_changed(self, gained: frozenset[str], lost: frozenset[str]) -> None:
        """This replica began, or stopped, leading these backends' discovery."""


class Sharing(Protocol):
    """Who leads each backend's discovery, and the snapshots replicas share (cluster mode)."""

    replica: str  # this replica's id

    def attach(self, discoverer: Discoverer) -> None:
        """The reconciler whose refreshes are shared, and that adopts the others'."""

    def leads(self, backend: str) -> bool:
        """Does this replica lead the backend's discovery (refresh it on schedule, probe it)?
        True for every backend while the shared store cannot be reached: each replica then
        refreshes everything itself, as a replica alone does."""

    def leader(self, backend: str) -> str | None:
        """The replica that leads the backend now, as of the last renewal; None if nobody does."""

    async def share(self, snapshot: BackendSnapshot, *, ttl: float) -> None:
        """Store the snapshot for ``ttl`` seconds and tell the other replicas, unless the store
        holds a newer one (then it is no news). Never raises for the store's trouble (logged):
        the others read it later, or refresh themselves."""

    async def read(self, backends: Sequence[str]) -> dict[str, BackendSnapshot] | None:
        """The stored snapshots of these backends (a backend without one is absent); None if the
        store could not be read."""

    async def claim(self) -> None:
        """Renew this replica's leases and take its share of the free ones, once (``run`` does it
        every heartbeat); the discoverer is told what it gained or lost."""

    async def run(self) -> None:
        """``claim`` every heartbeat, forever."""

    async def aclose(self) -> None:
        """Give up the leases held (a replica stopped, not killed): the others take over now."""
