"""Which pool a call goes through: one per backend, or one per lane (``pool: lane``).

Pools are created on first use from the backend's config. When that config changes, the pool is
**resized in place** (``Pool.configure``) rather than replaced: the callers already queued keep
their places and their fair share, and the slots already held still count, so the new bound
holds at once instead of old and new pools together running more calls than either allows.
Switching a backend between ``pool: backend`` and ``pool: lane`` does start over with new pools;
the old ones are dropped here, and whoever still holds or waits for one of their slots keeps it.

Which kind of pool is built is the gateway's choice (``make``): this process's ``Pool`` in the
embedded default, the cluster's ``SharedPool`` in cluster mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from laneway.clock import Clock
from laneway.config.schema import BackendConfig
from laneway.pools.base import Bounded, PoolFactory
from laneway.pools.pool import Pool, PoolStatistics


@dataclass
class _BackendPools:
    mode: Literal["backend", "lane"]
    pools: dict[str, Bounded] = field(default_factory=dict)  # pool name -> pool


class PoolRegistry:
    def __init__(self, clock: Clock, *, make: PoolFactory | None = None) -> None:
        self._clock = clock
        self._make: PoolFactory = make or self._local
        self._backends: dict[str, _BackendPools] = {}

    def _local(self, name: str, *, slots: int, queue_size: int, queue_timeout: float) -> Bounded:
        return Pool(name, slots=slots, queue_size=queue_size, queue_timeout=queue_timeout, clock=self._clock)

    def pool_for(self, backend: str, lane_id: str, config: BackendConfig) -> Bounded:
        """The backend's pool (named after the backend), or the lane's (named after the lane id)
        when ``config.pool == "lane"``; created on first use with ``config.pool_slots``,
        ``queue_size`` and ``queue_timeout``, resized in place when those changed."""
        entry = self._backends.get(backend)
        if entry is None or entry.mode != config.pool:
            entry = self._backends[backend] = _BackendPools(config.pool)
        name = backend if config.pool == "backend" else lane_id
        slots, queue_size, queue_timeout = config.pool_slots, config.queue_size, config.queue_timeout
        pool = entry.pools.get(name)
        if pool is None:
            pool = entry.pools[name] = self._make(
                name, slots=slots, queue_size=queue_size, queue_timeout=queue_timeout
            )
        elif (pool.slots, pool.queue_size, pool.queue_timeout) != (slots, queue_size, queue_timeout):
            pool.configure(slots=slots, queue_size=queue_size, queue_timeout=queue_timeout)
        return pool

    def remove_backend(self, backend: str) -> None:
        """Drop the backend's pools. Waiters and holders keep the pool they have: their slots
        still come and go through it, it is just no longer handed out or reported."""
        self._backends.pop(backend, None)

    def pools(self) -> Iterator[Bounded]:
        """Every pool handed out and not dropped."""
        for entry in self._backends.values():
            yield from entry.pools.values()

    def named(self, name: str) -> Bounded | None:
        return next((pool for pool in self.pools() if pool.name == name), None)

    async def aclose(self) -> None:
        """Let every pool finish what it owes its count (a shared pool's releases under way)."""
        for pool in list(self.pools()):
            await pool.aclose()

    def statistics(self) -> list[PoolStatistics]:
        """Every pool's statistics, by name."""
        pools = [pool for entry in self._backends.values() for pool in entry.pools.values()]
        return [pool.statistics() for pool in sorted(pools, key=lambda p: p.name)]

    def __repr__(self) -> str:
        count = sum(len(entry.pools) for entry in self._backends.values())
        return f"<PoolRegistry: {count} pools over {len(self._backends)} backends>"
