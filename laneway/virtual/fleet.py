"""The fleet: publisher sessions, their virtual lanes and the task relay, as the gateway uses them.

The API calls ``register``, ``heartbeat``, ``open_control``/``close_control``, ``chunks``,
``result`` and ``unregister``; the router calls the ``VirtualProvider`` of each publisher name like
any other provider. A call for a virtual lane:

1. wakes the publisher first if it hibernates: one wake task per publisher, however many calls
   wait for it; a failed wake fails them all and leaves the lanes hibernating;
2. becomes a task sent on the publisher's control stream, or parked while there is none. A parked
   task is sent when the publisher is back, fails over at once when another lane of the same model
   can serve it, and gives up (503, retryable) after ``redispatch_wait``; all within the call's
   timeout, which never passes the request's deadline;
3. ends with the publisher's result post (or its chunks, for a stream).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from laneway.auth.tokens import PublisherGrant, PublisherTokens
from laneway.clock import Clock, within
from laneway.config.schema import VIRTUAL_CONTEXT, BackendConfig, Settings
from laneway.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from laneway.inventory.lanes import Tier, compose_lane_id
from laneway.inventory.store import Inventory
from laneway.pools import PoolRegistry
from laneway.providers.base import Call, ModelInfo, Provider, Reply, ReplyStream
from laneway.virtual.errors import PublisherUnavailable, WakeFailed
from laneway.virtual.registry import FAMILY, LaneSpec, Registry, Session, State
from laneway.virtual.relay import ControlChannel, Relay, RelayStream, Task

log = logging.getLogger("laneway.virtual")

_TYPES = {"chat": "chat", "completion": "completion", "embedding": "embedding"}


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
        self.inventory = inventory
        self.clock = clock
        self.settings = settings.publishers
        self.tokens = PublisherTokens(self.settings.tokens, settings.source)
        self.declared = declared
        self.registry = Registry(
            inventory,
            clock,
            self.settings,
            weights=settings.inventory,
            declared=declared,
            serves_declared=serves_declared,
        )
        self.registry.on_inactive = self._session_down
        self.relay = Relay()
        self.pools = pools
        # Shared with the router (through the gateway's view of all providers): mutated in place.
        self.providers: dict[str, Provider] = {}
        self._configs: dict[str, BackendConfig] = {}
        self._wakes: dict[str, asyncio.Task[None]] = {}
        self._timers: dict[Task, asyncio.Task[None]] = {}  # parked tasks' give-up timers

    # -- the publisher endpoints ---------------------------------------------------------------

    def identify(self, authorization: str | None) -> PublisherGrant:
        return self.tokens.identify(authorization)

    def register(self, grant: PublisherGrant, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'name' (the publisher's name) is required", param="name")
        session_id = body.get("session_id")
        if session_id is not None and not isinstance(session_id, str):
            raise InvalidRequest("'session_id' must be a string", param="session_id")
        concurrency = body.get("max_concurrency", 1)
        if (
            not isinstance(concurrency, int)
            or isinstance(concurrency, bool)
            or not 1 <= concurrency <= 10_000
        ):
            raise InvalidRequest(
                "'max_concurrency' must be an integer from 1 to 10000", param="max_concurrency"
            )
        session = self.registry.register(
            grant,
            name=name,
            session_id=session_id,
            lanes=_lane_specs(body.get("lanes")),
            max_concurrency=concurrency,
            state=_state(body.get("state")),
        )
        self._publisher_added(session)
        if self.relay.bound(session.id):
            self._flush(session)
        return self._answer(session)

    def heartbeat(self, grant: PublisherGrant, session_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        session = self.registry.heartbeat(grant, session_id, _state(body.get("state"), draining=True))
        if session.bound:
            self._flush(session)
        return {"lanes": self.registry.lanes_of(session), "control": session.bound}

    def open_control(self, grant: PublisherGrant, session_id: str) -> ControlChannel:
        """Bind a new control stream to the session (replacing an older one): it gets ``hello``
        and then whatever tasks were waiting for it."""
        session = self.registry.session(session_id, grant)
        channel = ControlChannel(session.id)
        old = self.relay.bind(channel)
        if old is not None:
            log.info("control stream replaced", extra={"publisher": session.name, "session": session.id})
        self.registry.bind(session)
        channel.send("hello", self._answer(session))
        self._flush(session)
        log.info("publisher connected", extra={"publisher": session.name, "session": session.id})
        return channel

    def close_control(self, channel: ControlChannel) -> None:
        """The control stream ended. Its session goes inactive at once unless a newer stream
        replaced it."""
        if not self.relay.unbind(channel):
            return
        session = self.registry.sessions.get(channel.session_id)
        if session is not None:
            self.registry.unbind(session, reason="control stream closed")

    def unregister(self, grant: PublisherGrant, session_id: str) -> None:
        session = self.registry.session(session_id, grant)
        channel = self.relay.channels.get(session.id)
        if channel is not None:
            self.relay.unbind(channel)
        self.registry.unbind(session, reason="publisher stopped")

    def chunks(self, grant: PublisherGrant, session_id: str, task_id: str, body: Mapping[str, Any]) -> int:
        session = self.registry.session(session_id, grant)
        return self.relay.chunks(session.id, task_id, body.get("seq"), body.get("chunks"), body.get("done"))

    def result(self, grant: PublisherGrant, session_id: str, task_id: str, body: Mapping[str, Any]) -> None:
        session = self.registry.session(session_id, grant)
        self.relay.result(session.id, task_id, body)

    def _answer(self, session: Session) -> dict[str, Any]:
        return {
            "session_id": session.id,
            "name": session.name,
            "heartbeat_interval": self.settings.heartbeat_interval,
            "heartbeat_timeout": self.settings.heartbeat_timeout,
            "lanes": self.registry.lanes_of(session),
        }

    # -- publishers as backends ----------------------------------------------------------------

    def _publisher_added(self, session: Session) -> None:
        name = session.name
        if name not in self.providers:
            self.providers[name] = VirtualProvider(name, self)
        self._configs[name] = BackendConfig.model_validate(
            {
                "provider": FAMILY,
                "base_url": "http://publisher.invalid",
                "slots": session.max_concurrency,
                "queue_size": self.settings.queue_size,
                "queue_timeout": self.settings.queue_timeout,
                "timeout": self.settings.timeout,
                "weight": self.settings.weight,
                # A publisher's max_concurrency counts whole calls, streams to their end.
                "stream_holds_slot": True,
            },
            context=VIRTUAL_CONTEXT,
        )

    def _publisher_gone(self, name: str) -> None:
        self.providers.pop(name, None)
        self._configs.pop(name, None)
        if self.pools is not None:
            self.pools.remove_backend(name)

    def config(self, backend: str) -> BackendConfig | None:
        return self._configs.get(backend)

    def is_virtual(self, backend: str) -> bool:
        return backend in self._configs

    def may_join(self, backend: str) -> bool:
        """May the publisher ``backend`` serve models that declared backends serve?"""
        return any(s.join_declared for s in self.registry.sessions.values() if s.name == backend and s.rows)

    # -- the lifecycle -------------------------------------------------------------------------

    def sweep(self) -> None:
        """Heartbeat timeouts and expired inactive lanes; a name that became a declared backend
        loses its virtual lanes (declared wins). Idempotent."""
        declared = set(self.declared())
        for name in sorted(self.registry.names() & declared):
            log.warning("publisher '%s' lost its lanes: a backend of that name was declared", name)
            for channel in [c for c in self.relay.channels.values() if self._name_of(c.session_id) == name]:
                self.close_control(channel)
            self.registry.forget(name)
        swept = self.registry.sweep()
        for session_id in swept.inactivated:
            # Silent for too long: its control stream, if the gateway still thinks one is open, is
            # a dead connection (or a publisher whose heartbeats are lost); closing it makes a live
            # publisher reconnect and re-register.
            stale = self.relay.channels.get(session_id)
            session = self.registry.sessions.get(session_id)
            if stale is not None and session is not None:
                self.relay.unbind(stale)
                session.bound = False
        for name in set(self._configs) - self.registry.names():
            self._publisher_gone(name)

    def _name_of(self, session_id: str) -> str | None:
        session = self.registry.sessions.get(session_id)
        return session.name if session is not None else None

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.settings.sweep_interval)
            try:
                self.sweep()
            except Exception:  # a bug in one sweep must not stop the lifecycle for good
                log.exception("fleet sweep failed")

    def cut_off(self) -> list[str]:
        """End the sessions whose owner no longer has a valid token (it was revoked): their
        control streams close and their lanes go inactive at once, their tasks in flight back to
        pending. Returns the session ids."""
        owners = self.tokens.owners()
        gone = [s for s in self.registry.sessions.values() if s.owner not in owners and s.bound]
        for session in gone:
            channel = self.relay.channels.get(session.id)
            if channel is not None:
                self.relay.unbind(channel)
            self.registry.unbind(session, reason="its publisher token was revoked")
        return [s.id for s in gone]

    def close_streams(self) -> None:
        """End every control stream (shutting down): publishers see it and reconnect elsewhere."""
        for channel in list(self.relay.channels.values()):
            channel.close()

    async def aclose(self) -> None:
        self.close_streams()
        pending = [*self._wakes.values(), *self._timers.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- relaying calls ------------------------------------------------------------------------

    async def call(self, backend: str, operation: str, call: Call) -> Reply:
        timeout = call.timeout or self.settings.timeout
        try:
            return await within(self.clock, timeout, self._call(backend, operation, call))
        except TimeoutError:
            raise UpstreamTimeout(
                f"publisher '{backend}' did not answer within {timeout:g}s", backend=backend
            ) from None

    async def _call(self, backend: str, operation: str, call: Call) -> Reply:
        lane_id = _lane_id(backend, operation, call.model)
        await self._ensure_awake(backend, lane_id)
        task = Task("infer", backend, lane_id, call.model, operation, False, call.body)
        self._dispatch(task)
        try:
            reply = await task.done
        finally:
            self._forget(task)
        assert reply is not None
        return reply

    async def open_stream(self, backend: str, operation: str, call: Call) -> ReplyStream:
        timeout = call.timeout or self.settings.timeout
        deadline = self.clock.monotonic() + timeout
        lane_id = _lane_id(backend, operation, call.model)
        try:
            await within(self.clock, timeout, self._ensure_awake(backend, lane_id))
        except TimeoutError:
            raise UpstreamTimeout(
                f"publisher '{backend}' did not wake within {timeout:g}s", backend=backend
            ) from None
        task = Task("infer", backend, lane_id, call.model, operation, True, call.body)
        self._dispatch(task)
        return RelayStream(task, self._forget, self.clock, deadline)

    def _forget(self, task: Task) -> None:
        timer = self._timers.pop(task, None)
        if timer is not None:
            timer.cancel()
        # Awaiting ``done`` and being cancelled (timeout, client gone) cancels it: only a result
        # the publisher posted means there is nothing left to stop.
        answered = task.done.done() and not task.done.cancelled()
        self.relay.forget(task, cancel=not answered)

    def _dispatch(self, task: Task) -> None:
        """Send the task to its lane's publisher, or park it (see the module's docstring)."""
        session = self.registry.owner_of(task.lane_id)
        if (
            session is not None
            and self.registry.state_of(task.lane_id) != State.INACTIVE
            and self.relay.send(task, session.id)
        ):
            timer = self._timers.pop(task, None)
            if timer is not None:
                timer.cancel()
            return
        if task.kind == "infer" and self._elsewhere(task):
            self.relay.forget(task, cancel=False)
            task.fail(
                PublisherUnavailable(
                    f"publisher '{task.backend}' is offline; another lane serves '{task.model}'",
                    backend=task.backend,
                )
            )
            return
        self.relay.park(task)
        if task not in self._timers:
            self._timers[task] = asyncio.create_task(self._give_up(task), name=f"parked-{task.id}")

    def _elsewhere(self, task: Task) -> bool:
        """Does another lane of the same model and type take requests now?"""
        lane = self.inventory.get(task.lane_id)
        lane_type = lane.type if lane is not None else _TYPES.get(task.operation)
        return any(
            other.backend != task.backend and other.type == lane_type and other.routable
            for other in self.inventory.by_model(task.model)
        )

    async def _give_up(self, task: Task) -> None:
        wait = self.settings.redispatch_wait
        await self.clock.sleep(wait)
        self._timers.pop(task, None)
        if task.session_id is None and not task.done.done():
            self.relay.forget(task, cancel=False)
            task.fail(
                PublisherUnavailable(
                    f"publisher '{task.backend}' is offline and did not come back within {wait:g}s",
                    backend=task.backend,
                )
            )

    def _flush(self, session: Session) -> None:
        for task in self.relay.take_pending(session.name):
            self._dispatch(task)

    def _session_down(self, session: Session) -> None:
        """The session went inactive: its tasks in flight go back to pending, except what
        cannot be replayed (a wake; a stream that already produced output)."""
        for task in self.relay.in_flight(session.id):
            if task.kind == "wake":
                task.fail(
                    WakeFailed(f"publisher '{session.name}' went away while waking", backend=session.name)
                )
                self.relay.forget(task, cancel=False)
            elif task.produced:
                task.fail(PublisherUnavailable(f"publisher '{session.name}' went away", backend=session.name))
                self.relay.forget(task, cancel=False)
            else:
                log.info("task re-dispatched", extra={"publisher": session.name, "task": task.id})
                self.relay.renew(task)
                self._dispatch(task)

    async def _ensure_awake(self, backend: str, lane_id: str) -> None:
        if self.registry.state_of(lane_id) != State.HIBERNATING:
            return
        wake = self._wakes.get(backend)
        if wake is None:
            wake = self._wakes[backend] = asyncio.create_task(
                self._wake(backend, lane_id), name=f"wake-{backend}"
            )
            wake.add_done_callback(lambda t: self._wake_done(backend, t))
        await asyncio.shield(wake)

    def _wake_done(self, backend: str, wake: asyncio.Task[None]) -> None:
        if self._wakes.get(backend) is wake:
            del self._wakes[backend]
        if not wake.cancelled():
            wake.exception()  # retrieved here: every waiter may have left

    async def _wake(self, backend: str, lane_id: str) -> None:
        lane = self.inventory.get(lane_id)
        task = Task("wake", backend, lane_id, lane.model if lane is not None else "")
        log.info("waking publisher", extra={"publisher": backend, "lane": lane_id})
        self._dispatch(task)
        wait = self.settings.wake_timeout
        try:
            await within(self.clock, wait, task.done)
        except TimeoutError:
            raise WakeFailed(
                f"publisher '{backend}' did not wake within {wait:g}s", backend=backend
            ) from None
        except UpstreamError as exc:
            if isinstance(exc, WakeFailed):
                raise
            raise WakeFailed(f"waking publisher '{backend}' failed: {exc.message}", backend=backend) from None
        finally:
            self._forget(task)
        session = self.registry.owner_of(lane_id)
        if session is not None:
            self.registry.awake(session)
            self._flush(session)
        log.info("publisher awake", extra={"publisher": backend})

    # -- reading -------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, object]]:
        now = self.clock.now()
        out = []
        for session in sorted(self.registry.sessions.values(), key=lambda s: (s.name, s.id)):
            shown = session.as_dict(now)
            shown["lanes"] = self.registry.lanes_of(session)
            shown["tasks_in_flight"] = len(self.relay.in_flight(session.id))
            out.append(shown)
        return out

    def pending(self) -> int:
        return sum(len(q) for q in self.relay.pending.values())

    def in_flight(self) -> int:
        """Relayed tasks not finished: sent to a publisher, or waiting for one. A draining
        gateway keeps the control streams open until this is 0 (``laneway.api.drain``)."""
        return len(self.relay.tasks)


class VirtualProvider:
    """A publisher as the router sees it: one provider per publisher name."""

    family = FAMILY

    def __init__(self, name: str, fleet: Fleet) -> None:
        self.name = name
        self._fleet = fleet

    async def list_models(self) -> list[ModelInfo]:
        return []  # its lanes come from the publisher's register, not from discovery

    async def probe(self) -> Mapping[str, str]:
        return {}

    async def chat(self, call: Call) -> Reply:
        return await self._fleet.call(self.name, "chat", call)

    async def stream_chat(self, call: Call) -> ReplyStream:
        return await self._fleet.open_stream(self.name, "chat", call)

    async def complete(self, call: Call) -> Reply:
        return await self._fleet.call(self.name, "completion", call)

    async def stream_complete(self, call: Call) -> ReplyStream:
        return await self._fleet.open_stream(self.name, "completion", call)

    async def embed(self, call: Call) -> Reply:
        return await self._fleet.call(self.name, "embedding", call)

    async def aclose(self) -> None:
        return None


def _lane_id(backend: str, operation: str, model: str) -> str:
    return compose_lane_id(
        tier=Tier.FLEET, provider_family=FAMILY, instance_id=backend, type=_TYPES[operation], model=model
    )


def _state(value: Any, *, draining: bool = False) -> State:
    """A state a publisher may announce: active or hibernating; draining in a heartbeat."""
    if value is None:
        return State.ACTIVE
    allowed = (
        (State.ACTIVE, State.HIBERNATING, State.DRAINING) if draining else (State.ACTIVE, State.HIBERNATING)
    )
    if value not in allowed:
        raise InvalidRequest(f"'state' must be one of: {', '.join(allowed)}", param="state")
    return State(value)


def _lane_specs(value: Any) -> list[LaneSpec]:
    if not isinstance(value, list):
        raise InvalidRequest("'lanes' must be a list of {model, type, ...}", param="lanes")
    specs: list[LaneSpec] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"lanes[{i}] must be an object", param="lanes")
        model, lane_type = item.get("model"), item.get("type", "chat")
        if not isinstance(model, str) or not model or len(model) > 256:
            raise InvalidRequest(f"lanes[{i}].model must be a model name", param="lanes")
        if lane_type not in _TYPES:
            raise InvalidRequest(f"lanes[{i}].type must be chat, completion or embedding", param="lanes")
        caps = item.get("capabilities") or []
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise InvalidRequest(f"lanes[{i}].capabilities must be a list of names", param="lanes")
        context = item.get("context_length")
        if context is not None and (
            not isinstance(context, int) or isinstance(context, bool) or context <= 0
        ):
            raise InvalidRequest(f"lanes[{i}].context_length must be a positive integer", param="lanes")
        specs.append(LaneSpec(model, lane_type, frozenset(caps), context))
    return specs
