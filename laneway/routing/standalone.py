"""A ``Router`` without a gateway: over one reconciler's backends, for tests (ours and users').

The router takes every collaborator it talks to; here the ones a test does not care about are the
real thing, kept in memory (signals in a memory store, pools, breakers, a failover log), and
usage goes nowhere (``DiscardUsage``). A test that watches one of them passes its own.
"""

from __future__ import annotations

from laneway.clock import Clock
from laneway.config.schema import RoutingConfig, SignalsConfig
from laneway.inventory.reconcile import Reconciler
from laneway.pools import PoolRegistry
from laneway.routing.backends import AllBackends, NoPublishers
from laneway.routing.breaker import Breakers
from laneway.routing.dispatch import Router
from laneway.routing.failover import FailoverLog
from laneway.routing.resolve import Resolver
from laneway.signals.store import Signals
from laneway.storage import MemoryStore
from laneway.usage import UsageRecord


class DiscardUsage:
    """A usage sink that keeps nothing."""

    def record(self, rec: UsageRecord) -> None:
        pass


def standalone_router(
    resolver: Resolver,
    reconciler: Reconciler,
    clock: Clock,
    *,
    signals: Signals | None = None,
    settings: RoutingConfig | None = None,
) -> Router:
    """A router over ``reconciler``'s backends (no publishers), seeded with 0."""
    settings = settings or RoutingConfig()
    return Router(
        resolver,
        reconciler.providers,
        backends=AllBackends(reconciler, NoPublishers()),
        signals=signals or Signals(MemoryStore(clock), clock, SignalsConfig()),
        pools=PoolRegistry(clock),
        breakers=Breakers(clock, settings.breaker, resolver.inventory),
        failovers=FailoverLog(settings.failover_records),
        usage=DiscardUsage(),
        settings=settings,
        clock=clock,
        seed=0,
    )
