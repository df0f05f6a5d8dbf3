"""Runtime state: short-lived, shared, and allowed to expire (inventory, signals, breakers,
cooldowns, caches). One small interface, ``KeyValueStore``; in-process memory now, Redis in
cluster mode. Keys are strings, values bytes (callers choose the encoding), and a TTL makes an
entry disappear on its own.

The semantics follow Redis so both implementations behave alike: a TTL must be positive, ``set``
without a TTL keeps the entry until it is deleted or overwritten, and an expired entry is gone
for every operation at once (``get``, ``scan`` and ``delete`` all agree).

Implementations: ``MemoryStore`` here, ``FileStore`` (a local directory that survives restarts and
that the CLI can read) and ``RedisStore`` (cluster mode); ``open_runtime_store`` picks one by URL.
Their failures to reach or use what is behind them are ``StoreUnavailable``; foreign exceptions
(``OSError``, redis-py's) never travel past a store.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Protocol

from laneway.clock import Clock
from laneway.storage.errors import StoreUnavailable

__all__ = ["KeyValueStore", "MemoryStore", "MemoryStoreStatistics", "StoreUnavailable"]


class KeyValueStore(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The value, or None if absent or expired."""

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``; with ``ttl`` (seconds, > 0) it expires on its own."""

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there (and not expired)."""

    async def scan(self, prefix: str) -> dict[str, bytes]:
        """Every live entry whose key starts with ``prefix``."""

    async def aclose(self) -> None:
        """Release connections; the store is not used afterwards."""


@dataclass(frozen=True)
class MemoryStoreStatistics:
    keys: int  # entries stored, including expired ones not yet swept
    expiring: int  # pending expiry records (at least the entries with a TTL)


class MemoryStore:
    """A ``KeyValueStore`` in this process's memory, with TTLs measured on the injected clock.

    Every operation is synchronous under its ``async def``: nothing awaits half-way, so a
    cancellation lands before or after an operation, never inside one. Expired entries are swept
    by every write (a min-heap of deadlines), so keys written once and never read do not pile up.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # key -> (value, deadline on clock.monotonic() or None, generation)
        self._data: dict[str, tuple[bytes, float | None, int]] = {}
        # (deadline, generation, key); an entry whose generation no longer matches is stale.
        self._deadlines: list[tuple[float, int, str]] = []
        self._generation = itertools.count()

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key)
        return entry[0] if entry is not None else None

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self._sweep()
        generation = next(self._generation)
        deadline = None if ttl is None else self._clock.monotonic() + ttl
        self._data[key] = (bytes(value), deadline, generation)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, generation, key))

    async def delete(self, key: str) -> bool:
        existed = self._live(key) is not None
        self._data.pop(key, None)
        self._sweep()
        return existed

    async def scan(self, prefix: str) -> dict[str, bytes]:
        self._sweep()
        now = self._clock.monotonic()
        return {
            k: value
            for k, (value, deadline, _) in sorted(self._data.items())
            if k.startswith(prefix) and (deadline is None or deadline > now)
        }

    async def aclose(self) -> None:
        self._data.clear()
        self._deadlines.clear()

    def statistics(self) -> MemoryStoreStatistics:
        return MemoryStoreStatistics(keys=len(self._data), expiring=len(self._deadlines))

    def __repr__(self) -> str:
        return f"<MemoryStore: {len(self._data)} keys>"

    def _live(self, key: str) -> tuple[bytes, float | None, int] | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= self._clock.monotonic():
            del self._data[key]
            return None
        return entry

    def _sweep(self) -> None:
        now = self._clock.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, generation, key = heapq.heappop(self._deadlines)
            entry = self._data.get(key)
            if entry is not None and entry[2] == generation:
                del self._data[key]
        # Overwrites leave stale heap records behind; rebuild when they outnumber the live ones.
        if len(self._deadlines) > 64 and len(self._deadlines) > 2 * len(self._data):
            self._deadlines = [
                (d, g, k) for (d, g, k) in self._deadlines if self._data.get(k, (b"", None, -1))[2] == g
            ]
            heapq.heapify(self._deadlines)
