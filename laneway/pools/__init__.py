"""Bounded pools with a fair-share queue in front of every backend (or lane).

Every call to an upstream holds a ``Slot`` of its pool while it runs. Slots bound concurrency;
callers who find none wait in a queue that serves higher priorities first and, within a priority,
takes turns between callers, so a heavy caller cannot starve the others (``queue``). The queue has
its own deadline, apart from the call's timeout; a full queue refuses at once (``QueueFull``, 429
with Retry-After), a wait that runs out raises ``QueueTimeout`` (503). ``PoolRegistry`` hands out
the pool of a backend or a lane.
"""

from laneway.pools.pool import Pool, PoolStatistics, Slot
from laneway.pools.queue import FairQueue, Waiter, assign
from laneway.pools.registry import PoolRegistry

__all__ = ["FairQueue", "Pool", "PoolRegistry", "PoolStatistics", "Slot", "Waiter", "assign"]
