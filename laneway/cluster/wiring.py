"""The cluster's parts, built for the gateway (``laneway.gateway``) when the runtime store is
Redis; in the embedded default each builder answers what one replica alone needs: no bus, this
process's pools, no discovery leadership.
"""

from __future__ import annotations

from laneway.clock import Clock
from laneway.cluster.bus import Bus, NoBus, RedisBus
from laneway.cluster.discovery import ClusterDiscovery
from laneway.cluster.slots import RedisSlots
from laneway.config.schema import Settings
from laneway.inventory.sharing import Sharing
from laneway.pools import PoolRegistry
from laneway.pools.base import Bounded
from laneway.pools.shared import SharedPool, SlotKeeper
from laneway.storage import KeyValueStore, RedisStore


def open_bus(settings: Settings, replica: str, clock: Clock) -> Bus:
    """Redis pub/sub when the runtime store is Redis (a cluster); else no one to tell."""
    url = settings.storage.runtime_url
    if not url.startswith(("redis://", "rediss://")):
        return NoBus()
    cluster = settings.cluster
    return RedisBus(
        url, namespace=cluster.namespace, replica=replica, clock=clock, timeout=cluster.redis_timeout
    )


def build_pools(
    settings: Settings, clock: Clock, hot: RedisStore | None, bus: Bus, replica: str
) -> tuple[PoolRegistry, SlotKeeper | None]:
    """The pools: this process's own in the embedded default; in cluster mode (``hot``: the
    request path's Redis) pools whose slots and queue are the cluster's (``pools.shared``), and
    the keeper that renews their leases."""
    if hot is None or not isinstance(bus, RedisBus):
        return PoolRegistry(clock), None
    cluster = settings.cluster
    ledger = RedisSlots(hot, replica, cluster.lease_ttl, bus.direct_channel(""), bus.channel)

    def shared(name: str, *, slots: int, queue_size: int, queue_timeout: float) -> Bounded:
        return SharedPool(
            name, slots=slots, queue_size=queue_size, queue_timeout=queue_timeout, clock=clock, ledger=ledger
        )

    pools = PoolRegistry(clock, make=shared)
    keeper = SlotKeeper(
        lambda: [p for p in pools.pools() if isinstance(p, SharedPool)], clock, cluster.heartbeat
    )
    return pools, keeper


def open_discovery(
    settings: Settings, runtime: KeyValueStore, bus: Bus, replica: str, clock: Clock
) -> Sharing | None:
    """One leader per backend's discovery when the runtime store is Redis (a cluster); else this
    replica leads everything and shares nothing (None: no store calls for it)."""
    if not isinstance(runtime, RedisStore):
        return None
    return ClusterDiscovery(runtime, bus, replica=replica, clock=clock, config=settings.cluster)
