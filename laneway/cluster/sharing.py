"""What one replica learns that every replica must know at once (cluster mode): the runtime
signals that change routing (``cluster.signals``), circuit breakers (``cluster.breakers``) and
lanes a call found stale (here). The gateway builds this only when the runtime store is Redis;
alone, none of it exists and nothing on the request path calls it.
"""

from __future__ import annotations

import logging
from typing import Any

from laneway.clock import Clock
from laneway.cluster.breakers import SharedBreakers
from laneway.cluster.bus import Bus
from laneway.cluster.signals import SharedSignals
from laneway.inventory.lanes import HELD, Health
from laneway.inventory.store import Inventory
from laneway.routing.breaker import Breakers
from laneway.signals.store import Signals
from laneway.storage.redisstore import RedisStore

log = logging.getLogger("laneway.cluster")

LANE_STALE = "lane.stale"  # payload: {"lane": lane id}


class ClusterSharing:
    def __init__(
        self,
        store: RedisStore,
        bus: Bus,
        *,
        replica: str,
        clock: Clock,
        signals: Signals,
        inventory: Inventory,
    ) -> None:
        self.bus = bus
        self.inventory = inventory
        self.signals = SharedSignals(signals, bus, clock)
        self.breakers = SharedBreakers(store, bus, replica, clock)  # the peers of this replica's Breakers

    def start(self, breakers: Breakers) -> None:
        """Tell the others, and take what they tell, from now on (the bus's loop delivers it)."""
        self.signals.start()
        self.breakers.listen(breakers)
        self.bus.on(LANE_STALE, self._stale_elsewhere)

    async def lane_stale(self, lane_id: str) -> None:
        """A call here found the lane stale (its backend said 404 for its model)."""
        await self.bus.publish(LANE_STALE, {"lane": lane_id})

    async def _stale_elsewhere(self, payload: dict[str, Any]) -> None:
        """Out of rotation here too, at once; this replica's next refresh of the backend (or the
        discovery leader's) brings it back or removes it. A lane the auth cooldown denied, or a
        publisher's, keeps what its owner set."""
        lane_id = payload.get("lane")
        lane = self.inventory.get(lane_id) if isinstance(lane_id, str) else None
        if lane is not None and lane.health not in HELD and lane.health != Health.STALE:
            self.inventory.set_health([lane.id], Health.STALE)
            log.warning("lane stale (told)", extra={"lane": lane.id})

    async def aclose(self) -> None:
        await self.signals.aclose()
        await self.breakers.aclose()
