"""The publisher endpoints, gateway side: register, heartbeat, the control stream, result and
chunk posts, unregister; and what follows from them: a publisher with lanes is a backend (its
``VirtualProvider`` and its config), a session that goes away gives its tasks back, a revoked
token ends its sessions, and the sweep applies the lifecycle's deadlines.

Each endpoint takes the message ``laneway.publishing.protocol`` read from the request and answers
one; the registry keeps the state, the relay the control streams and tasks, the dispatcher decides
where tasks go. This module only calls them.

Every change of the registry goes through ``shared`` (``laneway.virtual.shared``): alone it is
simply made; in a cluster it is made on the shared state, and what this replica holds follows
(``reconcile``): a control stream of a session now bound elsewhere is closed, tasks sent on a bind
that is over are given back, tasks parked for a publisher bound anew are sent. A post for a task
another replica waits for is handed to it (``laneway.virtual.peers``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from functools import partial
from typing import Any

from laneway.auth.tokens import PublisherGrant, PublisherTokens
from laneway.config.schema import VIRTUAL_CONTEXT, BackendConfig, PublishersConfig
from laneway.errors import LanewayError
from laneway.pools import PoolRegistry
from laneway.providers.base import Provider
from laneway.publishing.protocol import (
    Chunks,
    EventName,
    Heartbeat,
    HeartbeatAnswer,
    Message,
    Register,
    Registered,
    Result,
    read,
)
from laneway.virtual.dispatch import Dispatcher, VirtualProvider
from laneway.virtual.errors import RelayUnavailable, error_record, from_error_record
from laneway.virtual.peers import ABANDONED, requester_of
from laneway.virtual.registry import FAMILY, Registry, Session, State
from laneway.virtual.relay import ControlChannel, Relay
from laneway.virtual.shared import SharedRegistry, Solo

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
        shared: SharedRegistry | None = None,
    ) -> None:
        self.shared: SharedRegistry = shared or Solo()
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
        self._binding: set[str] = set()  # sessions whose control stream is being opened here

    @property
    def _me(self) -> str:
        """This replica, as the holder of a control stream ("" alone)."""
        return self._relay.peers.me

    # -- the endpoints -------------------------------------------------------------------------

    async def register(self, grant: PublisherGrant, request: Register) -> Registered:
        if request.session_id is not None:
            await self.shared.find(request.session_id)
        before = self._registry.named(request.name)
        session = await self.shared.change(request.name, lambda: self._registry.register(grant, request))
        self._publisher_added(session)
        if self._relay.channel(session.id) is not None:
            self._dispatcher.flush(session)
        self.shared.changed(session.name, before)
        return self._registered(session)

    async def heartbeat(self, grant: PublisherGrant, session_id: str, beat: Heartbeat) -> HeartbeatAnswer:
        name = await self._name_of(session_id, grant)
        before = self._registry.named(name)
        session = await self.shared.change(
            name, lambda: self._registry.heartbeat(grant, session_id, State(beat.state))
        )
        if session.bound:
            self._dispatcher.flush(session)
        self.shared.changed(name, before)
        return HeartbeatAnswer(lanes=self._registry.lanes_of(session), control=session.bound)

    async def open_control(self, grant: PublisherGrant, session_id: str) -> ControlChannel:
        """Bind a new control stream to the session (replacing an older one, here or on another
        replica): it gets ``hello`` and then whatever tasks were waiting for it."""
        name = await self._name_of(session_id, grant)
        before = self._registry.named(name)

        def bind() -> Session:
            session = self._registry.session(session_id, grant)
            self._registry.bind(session, self._me)
            return session

        self._binding.add(session_id)
        try:
            session = await self.shared.change(name, bind)
        finally:
            self._binding.discard(session_id)
        channel = ControlChannel(session.id, session.epoch)
        if self._relay.bind(channel) is not None:
            log.info("control stream replaced", extra={"publisher": session.name, "session": session.id})
        channel.send(EventName.HELLO, self._registered(session))
        self._dispatcher.flush(session)
        log.info("publisher connected", extra={"publisher": session.name, "session": session.id})
        self.shared.changed(name, before)
        return channel

    def close_control(self, channel: ControlChannel) -> None:
        """The control stream ended. Its session goes inactive at once unless a newer stream
        replaced it (here, or on another replica)."""
        if not self._relay.unbind(channel):
            return
        session = self._registry.sessions.get(channel.session_id)
        if session is not None:
            self._down(session, "control stream closed", channel.epoch)

    async def unregister(self, grant: PublisherGrant, session_id: str) -> None:
        name = await self._name_of(session_id, grant)
        before = self._registry.named(name)

        def unbind() -> Session:
            session = self._registry.session(session_id, grant)
            self._registry.unbind(session, reason="publisher stopped")
            return session

        session = await self.shared.change(name, unbind)
        channel = self._relay.channel(session.id)
        if channel is not None:
            self._relay.unbind(channel)
        self._dispatcher.session_down(session)
        self.shared.changed(name, before)

    async def chunks(self, grant: PublisherGrant, session_id: str, task_id: str, post: Chunks) -> int:
        session = await self._session(session_id, grant)
        requester = self._elsewhere(task_id)
        if requester:
            answer = await self._ask(requester, "chunks", session.id, task_id, post)
            return int(answer.get("accepted", 0))
        return self._relay.chunks(session.id, task_id, post)

    async def result(self, grant: PublisherGrant, session_id: str, task_id: str, result: Result) -> None:
        session = await self._session(session_id, grant)
        requester = self._elsewhere(task_id)
        if requester:
            await self._ask(requester, "result", session.id, task_id, result)
            return
        self._relay.result(session.id, task_id, result)

    def _registered(self, session: Session) -> Registered:
        return Registered(
            session_id=session.id,
            name=session.name,
            heartbeat_interval=self._settings.heartbeat_interval,
            heartbeat_timeout=self._settings.heartbeat_timeout,
            lanes=self._registry.lanes_of(session),
        )

    async def _session(self, session_id: str, grant: PublisherGrant) -> Session:
        """The caller's session (404, 403 as ``Registry.session``), looked for in the shared
        state when this replica has not heard of it yet."""
        await self.shared.find(session_id)
        return self._registry.session(session_id, grant)

    async def _name_of(self, session_id: str, grant: PublisherGrant) -> str:
        return (await self._session(session_id, grant)).name

    # -- posts for the tasks of other replicas -------------------------------------------------

    def _elsewhere(self, task_id: str) -> str:
        """The replica the task's request waits on, if another one ("": this one)."""
        me = self._me
        if not me:
            return ""  # alone: every task is this replica's
        requester = requester_of(task_id)
        return requester if requester and requester != me else ""

    async def _ask(
        self, requester: str, kind: str, session_id: str, task_id: str, post: Message
    ) -> dict[str, Any]:
        payload = {"kind": kind, "session": session_id, "task": task_id, "post": post.model_dump(mode="json")}
        try:
            answer = await self._relay.peers.ask(requester, payload)
        except RelayUnavailable:
            # The publisher is told the post failed, and stops the task: its requester, told too,
            # gives it back instead of waiting for it until its timeout.
            self._relay.peers.tell(requester, ABANDONED, {"task": task_id, "session": session_id})
            raise
        error = answer.get("error")
        if isinstance(error, dict):
            raise from_error_record(error)
        return answer

    def posted(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A post another replica received for a task of this one: checked and taken here (the
        task's state is this replica's alone), and answered."""
        session_id, task_id = str(payload.get("session")), str(payload.get("task"))
        try:
            if payload.get("kind") == "chunks":
                post = read(Chunks, payload.get("post"))
                return {"accepted": self._relay.chunks(session_id, task_id, post)}
            self._relay.result(session_id, task_id, read(Result, payload.get("post")))
            return {"ok": True}
        except LanewayError as exc:
            return {"error": error_record(exc)}

    # -- going away ----------------------------------------------------------------------------

    def _end(self, session: Session, reason: str) -> None:
        """End the session from the gateway's side: its control stream closes, it goes down."""
        channel = self._relay.channel(session.id)
        if channel is not None:
            self._relay.unbind(channel)
        self._down(session, reason, session.epoch)

    def _down(self, session: Session, reason: str, epoch: int) -> None:
        """The session's stream here (of bind ``epoch``) is over: inactive at once, its tasks back
        to pending; and in the shared state, unless a newer stream is bound meanwhile."""
        self._registry.unbind(session, reason=reason)
        self._dispatcher.session_down(session)
        session_id, me = session.id, self._me
        self.shared.soon(
            session.name, lambda: self._registry.unbind_held(session_id, me, epoch, reason=reason)
        )

    def cut_off(self) -> list[str]:
        """End the sessions held here whose owner no longer has a valid token (it was revoked):
        their control streams close and their lanes go inactive at once, their tasks in flight
        back to pending. Returns the session ids. (Each replica cuts the ones it holds.)"""
        owners = self._tokens.owners()
        gone = [
            s
            for s in self._registry.sessions.values()
            if s.owner not in owners and s.bound and s.holder == self._me
        ]
        for session in gone:
            self._end(session, "its publisher token was revoked")
        return [s.id for s in gone]

    def close_streams(self) -> None:
        """End every control stream (shutting down): publishers see it and reconnect elsewhere."""
        self._relay.close_all()

    async def sweep(self) -> None:
        """Heartbeat timeouts and expired inactive lanes; a name that became a declared backend
        loses its virtual lanes (declared wins). Idempotent."""
        for name in sorted(self._registry.names() & set(self._declared())):
            log.warning("publisher '%s' lost its lanes: a backend of that name was declared", name)
            for session in self._registry.named(name):
                channel = self._relay.channel(session.id)
                if channel is not None:
                    self.close_control(channel)
            await self.shared.change(name, partial(self._registry.forget, name))
        for name in sorted(self._registry.due()):
            before = self._registry.named(name)
            swept = await self.shared.change(name, partial(self._registry.sweep, {name}))
            for session in swept.inactivated:
                stale = self._relay.channel(session.id)
                if stale is not None:  # closed, so that a live publisher reconnects
                    self._relay.unbind(stale)
                self._dispatcher.session_down(session)
            self.shared.changed(name, before)
        for name in set(self._configs) - self._registry.names():
            self._publisher_gone(name)

    async def check_holders(self, live: Collection[str]) -> None:
        """A session bound to a replica that is gone (not ``live``; or this one, without the
        stream) is as if its stream had closed: unbound, its tasks given back (by every replica,
        when it hears of it: ``reconcile``)."""
        for session in list(self._registry.sessions.values()):
            holder, session_id, epoch = session.holder, session.id, session.epoch
            if holder is None or session_id in self._binding:
                continue
            if (holder in live and holder != self._me) or self._relay.channel(session_id) is not None:
                continue
            before = self._registry.named(session.name)
            reason = f"the replica holding its control stream ({holder or 'this one'}) is gone"
            await self.shared.change(
                session.name, partial(self._registry.unbind_held, session_id, holder, epoch, reason=reason)
            )
            self.shared.changed(session.name, before)

    # -- what this replica holds follows the shared state --------------------------------------

    def reconcile(self, name: str, before: list[Session]) -> None:
        """The sessions published as ``name`` changed (``before``: as they were): a stream here
        that is no longer its session's current one is closed, the tasks of a session gone or
        unbound go back to pending, those sent on an earlier bind too, what is parked for a
        publisher bound now is sent, and the publisher is a backend here if it has lanes."""
        now = {s.id: s for s in self._registry.named(name)}
        for old in before:
            if old.id not in now:
                self._let_go(old)
        for session in now.values():
            channel = self._relay.channel(session.id)
            if channel is not None and (session.holder != self._me or channel.epoch != session.epoch):
                self._relay.unbind(channel)  # bound elsewhere, or anew: this stream is over
            if not session.bound:
                self._dispatcher.session_down(session)
                continue
            self._dispatcher.session_moved(session)
            if any(self._registry.state_of(i) not in (None, State.INACTIVE) for i in session.rows):
                self._dispatcher.flush(session)
        publishing = [s for s in now.values() if s.rows]
        if publishing:
            self._publisher_added(max(publishing, key=lambda s: (s.bound, s.last_heartbeat)))
        else:
            self._publisher_gone(name)

    def _let_go(self, session: Session) -> None:
        channel = self._relay.channel(session.id)
        if channel is not None:
            self._relay.unbind(channel)
        self._dispatcher.session_down(session)

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
