"""The publisher endpoints, gateway side: register, heartbeat, the control stream, result and
chunk posts, unregister; and what follows from them: a publisher with lanes is a backend (its
``VirtualProvider`` and its config), a session that goes away gives its tasks back, a revoked
token ends its sessions, and the sweep applies the lifecycle's deadlines.

Each endpoint takes the message ``laneway.publishing.protocol`` read from the request and answers
one; the registry keeps the state, the relay the control streams and tasks, the dispatcher decides
where tasks go. This module only calls them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from laneway.auth.tokens import PublisherGrant, PublisherTokens
from laneway.config.schema import VIRTUAL_CONTEXT, BackendConfig, PublishersConfig
from laneway.pools import PoolRegistry
from laneway.providers.base import Provider
from laneway.publishing.protocol import (
    Chunks,
    EventName,
    Heartbeat,
    HeartbeatAnswer,
    Register,
    Registered,
    Result,
)
from laneway.virtual.dispatch import Dispatcher, VirtualProvider
from laneway.virtual.registry import FAMILY, Registry, Session, State
from laneway.virtual.relay import ControlChannel, Relay

log = logging.getLogger("laneway.virtual")


class Sessions:
    def __init__(
        self,
        registry: Registry,
        relay: Relay,
        dispatcher: Dispatcher,
        settings: PublishersConfig,
        tokens: PublisherTokens,
        *,
        declared: Callable[[], Collection[str]],
        pools: PoolRegistry | None,
    ) -> None:
        self._registry = registry
        self._relay = relay
        self._dispatcher = dispatcher
        self._settings = settings
        self._tokens = tokens
        self._declared = declared
        self._pools = pools
        # Shared with the router (through the gateway's view of all providers): mutated in place.
        self.providers: dict[str, Provider] = {}
        self._configs: dict[str, BackendConfig] = {}

    # -- the endpoints -------------------------------------------------------------------------

    def register(self, grant: PublisherGrant, request: Register) -> Registered:
        session = self._registry.register(grant, request)
        self._publisher_added(session)
        if self._relay.channel(session.id) is not None:
            self._dispatcher.flush(session)
        return self._registered(session)

    def heartbeat(self, grant: PublisherGrant, session_id: str, beat: Heartbeat) -> HeartbeatAnswer:
        session = self._registry.heartbeat(grant, session_id, State(beat.state))
        if session.bound:
            self._dispatcher.flush(session)
        return HeartbeatAnswer(lanes=self._registry.lanes_of(session), control=session.bound)

    def open_control(self, grant: PublisherGrant, session_id: str) -> ControlChannel:
        """Bind a new control stream to the session (replacing an older one): it gets ``hello``
        and then whatever tasks were waiting for it."""
        session = self._registry.session(session_id, grant)
        channel = ControlChannel(session.id)
        if self._relay.bind(channel) is not None:
            log.info("control stream replaced", extra={"publisher": session.name, "session": session.id})
        self._registry.bind(session)
        channel.send(EventName.HELLO, self._registered(session))
        self._dispatcher.flush(session)
        log.info("publisher connected", extra={"publisher": session.name, "session": session.id})
        return channel

    def close_control(self, channel: ControlChannel) -> None:
        """The control stream ended. Its session goes inactive at once unless a newer stream
        replaced it."""
        if not self._relay.unbind(channel):
            return
        session = self._registry.sessions.get(channel.session_id)
        if session is not None:
            self._down(session, "control stream closed")

    def unregister(self, grant: PublisherGrant, session_id: str) -> None:
        self._end(self._registry.session(session_id, grant), "publisher stopped")

    def chunks(self, grant: PublisherGrant, session_id: str, task_id: str, post: Chunks) -> int:
        session = self._registry.session(session_id, grant)
        return self._relay.chunks(session.id, task_id, post)

    def result(self, grant: PublisherGrant, session_id: str, task_id: str, result: Result) -> None:
        session = self._registry.session(session_id, grant)
        self._relay.result(session.id, task_id, result)

    def _registered(self, session: Session) -> Registered:
        return Registered(
            session_id=session.id,
            name=session.name,
            heartbeat_interval=self._settings.heartbeat_interval,
            heartbeat_timeout=self._settings.heartbeat_timeout,
            lanes=self._registry.lanes_of(session),
        )

    # -- going away ----------------------------------------------------------------------------

    def _end(self, session: Session, reason: str) -> None:
        """End the session from the gateway's side: its control stream closes, it goes down."""
        channel = self._relay.channel(session.id)
        if channel is not None:
            self._relay.unbind(channel)
        self._down(session, reason)

    def _down(self, session: Session, reason: str) -> None:
        self._registry.unbind(session, reason=reason)
        self._dispatcher.session_down(session)

    def cut_off(self) -> list[str]:
        """End the sessions whose owner no longer has a valid token (it was revoked): their
        control streams close and their lanes go inactive at once, their tasks in flight back to
        pending. Returns the session ids."""
        owners = self._tokens.owners()
        gone = [s for s in self._registry.sessions.values() if s.owner not in owners and s.bound]
        for session in gone:
            self._end(session, "its publisher token was revoked")
        return [s.id for s in gone]

    def close_streams(self) -> None:
        """End every control stream (shutting down): publishers see it and reconnect elsewhere."""
        self._relay.close_all()

    def sweep(self) -> None:
        """Heartbeat timeouts and expired inactive lanes; a name that became a declared backend
        loses its virtual lanes (declared wins). Idempotent."""
        for name in sorted(self._registry.names() & set(self._declared())):
            log.warning("publisher '%s' lost its lanes: a backend of that name was declared", name)
            for session in self._registry.named(name):
                channel = self._relay.channel(session.id)
                if channel is not None:
                    self.close_control(channel)
            self._registry.forget(name)
        for session in self._registry.sweep().inactivated:
            stale = self._relay.channel(session.id)
            if stale is not None:  # closed, so that a live publisher reconnects
                self._relay.unbind(stale)
            self._dispatcher.session_down(session)
        for name in set(self._configs) - self._registry.names():
            self._publisher_gone(name)

    # -- publishers as backends ----------------------------------------------------------------

    def config(self, backend: str) -> BackendConfig | None:
        return self._configs.get(backend)

    def is_virtual(self, backend: str) -> bool:
        return backend in self._configs

    def may_join(self, backend: str) -> bool:
        """May the publisher ``backend`` serve models that declared backends serve?"""
        return any(s.join_declared and s.rows for s in self._registry.named(backend))

    def _publisher_added(self, session: Session) -> None:
        name = session.name
        if name not in self.providers:
            self.providers[name] = VirtualProvider(name, self._dispatcher)
        self._configs[name] = BackendConfig.model_validate(
            {
                "provider": FAMILY,
                "base_url": "http://publisher.invalid",
                "slots": session.max_concurrency,
                "queue_size": self._settings.queue_size,
                "queue_timeout": self._settings.queue_timeout,
                "timeout": self._settings.timeout,
                "weight": self._settings.weight,
                # A publisher's max_concurrency counts whole calls, streams to their end.
                "stream_holds_slot": True,
            },
            context=VIRTUAL_CONTEXT,
        )

    def _publisher_gone(self, name: str) -> None:
        self.providers.pop(name, None)
        self._configs.pop(name, None)
        if self._pools is not None:
            self._pools.remove_backend(name)
