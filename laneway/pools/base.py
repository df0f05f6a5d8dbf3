"""What the router needs of a pool, whichever counts its slots: ``Pool`` (this process's) or
``SharedPool`` (the cluster's, ``pools.shared``)."""

from __future__ import annotations

from typing import Protocol

from laneway.pools.pool import PoolStatistics, Slot


class Bounded(Protocol):
    name: str

    @property
    def slots(self) -> int: ...

    @property
    def queue_size(self) -> int: ...

    @property
    def queue_timeout(self) -> float: ...

    @property
    def queued(self) -> int:
        """Waiting now (ranking reads it on every request: no I/O)."""

    @property
    def active(self) -> int:
        """Slots held now (ranking reads it too)."""

    def configure(self, *, slots: int, queue_size: int, queue_timeout: float) -> None: ...

    async def acquire(self, caller: str, priority: int = 0) -> Slot: ...

    def statistics(self) -> PoolStatistics: ...

    async def aclose(self) -> None:
        """Finish what is owed to whoever counts the slots (nothing, for a local pool)."""


class PoolFactory(Protocol):
    def __call__(self, name: str, *, slots: int, queue_size: int, queue_timeout: float) -> Bounded: ...
