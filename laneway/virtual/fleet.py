"""The fleet: publisher sessions, their virtual lanes and the task relay, composed for the gateway.

    registry    the sessions and their lanes: the lifecycle state machine (no I/O, no tasks)
    relay       the control streams, and every task until it ends: parked (with its give-up
                timer) or sent; the result and chunk posts
    dispatch    a call for a virtual lane becomes a task: wake first, send, fail over or park;
                a session that went away gives its tasks back (``VirtualProvider`` is its face)
    sessions    the publisher endpoints and the lifecycle around them

The API calls ``sessions`` (``api.publisher_routes``); the router calls the ``VirtualProvider`` of
each publisher name like any other provider (``providers``); the gateway reads the rest here.

Alone, the registry is the truth and every control stream and task is this replica's. In a
cluster (``join``: the gateway gives it a shared ``SessionStore`` and the ``Peers`` of
``laneway.cluster.fleet``) the registry mirrors the shared state (``mirror``), tasks go to the
replica holding their publisher's stream, and posts to the replica whose request waits for them
(``inbox`` takes what the others tell this one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from laneway.auth.tokens import PublisherTokens
from laneway.clock import Clock
from laneway.config.schema import BackendConfig, Settings
from laneway.errors import LanewayError
from laneway.inventory.store import Inventory
from laneway.pools import PoolRegistry
from laneway.providers.base import Provider
from laneway.virtual.dispatch import Dispatcher
from laneway.virtual.inbox import Inbox
from laneway.virtual.mirror import Mirror
from laneway.virtual.peers import Peers
from laneway.virtual.registry import Registry
from laneway.virtual.relay import Relay
from laneway.virtual.sessions import Sessions
from laneway.virtual.shared import SessionStore

log = logging.getLogger("laneway.virtual")


class Fleet:
    def __init__(
        self,
        inventory: Inventory,
        clock: Clock,
        settings: Settings,
        *,
        declared: Callable[[], Collection[str]] = frozenset,
        serves_declared: Callable[[str], bool] = lambda model: False,
        pools: PoolRegistry | None = None,
    ) -> None:
        self.clock = clock
        self.settings = settings.publishers
        self.tokens = PublisherTokens(self.settings.tokens, settings.source)
        self.registry = Registry(
            inventory,
            clock,
            self.settings,
            weights=settings.inventory,
            declared=declared,
            serves_declared=serves_declared,
        )
        self.relay = Relay(clock, redispatch_wait=self.settings.redispatch_wait)
        self.dispatcher = Dispatcher(self.registry, self.relay, inventory, clock, self.settings)
        self.sessions = Sessions(
            self.registry,
            self.relay,
            self.dispatcher,
            self.settings,
            self.tokens,
            declared=declared,
            pools=pools,
        )
        # One VirtualProvider per publisher name with lanes: the router's view of them.
        self.providers: dict[str, Provider] = self.sessions.providers
        self.relay.on_undelivered = self.dispatcher.undelivered
        self.inbox = Inbox(self.relay, self.dispatcher, self.sessions)
        self.mirror: Mirror | None = None  # in a cluster (``join``)

    def join(self, store: SessionStore, peers: Peers) -> Mirror:
        """Take part in a cluster: the sessions' truth is ``store``'s, tasks and posts reach the
        other replicas through ``peers``. Before the gateway starts (nothing is bound yet)."""
        self.relay.peers = peers
        self.mirror = Mirror(self.registry, store, self.sessions.reconcile, me=peers.me)
        self.sessions.shared = self.dispatcher.shared = self.mirror
        return self.mirror

    def config(self, backend: str) -> BackendConfig | None:
        return self.sessions.config(backend)

    def is_virtual(self, backend: str) -> bool:
        return self.sessions.is_virtual(backend)

    def may_join(self, backend: str) -> bool:
        return self.sessions.may_join(backend)

    def cut_off(self) -> list[str]:
        return self.sessions.cut_off()

    async def sweep(self) -> None:
        await self.sessions.sweep()

    async def check_holders(self) -> None:
        """In a cluster: the sessions bound to a replica that is gone are unbound (their tasks
        given back). Nothing to do alone, or while the live replicas cannot be known."""
        live = await self.relay.peers.live()
        if live is not None:
            await self.sessions.check_holders(live)

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.settings.sweep_interval)
            try:
                await self.sweep()
                await self.check_holders()
            except LanewayError as exc:  # the shared state busy: the next sweep tries again
                log.warning("fleet sweep not done: %s", exc.message)
            except Exception:  # a bug in one sweep must not stop the lifecycle for good
                log.exception("fleet sweep failed")

    def close_streams(self) -> None:
        self.sessions.close_streams()

    async def aclose(self) -> None:
        self.close_streams()
        await self.dispatcher.aclose()
        await self.relay.aclose()
        if self.mirror is not None:
            await self.mirror.aclose()
        await self.relay.peers.aclose()

    # -- reading -------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, object]]:
        now = self.clock.now()
        out = []
        for session in sorted(self.registry.sessions.values(), key=lambda s: (s.name, s.id)):
            shown = session.as_dict(now)
            shown["lanes"] = [lane.model_dump() for lane in self.registry.lanes_of(session)]
            shown["tasks_in_flight"] = len(self.relay.in_flight(session.id))
            out.append(shown)
        return out

    def control_streams(self) -> int:
        """Publishers' control streams open on this replica."""
        return self.relay.streams()

    def pending(self) -> int:
        """Tasks parked until their publisher comes back."""
        return self.relay.parked()

    def in_flight(self) -> int:
        """Relayed tasks not finished: sent to a publisher, or waiting for one. A draining
        gateway keeps the control streams open until this is 0 (``laneway.api.drain``)."""
        return len(self.relay)
