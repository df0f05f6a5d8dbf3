"""Task dispatch: a call for a virtual lane, from the router's ``VirtualProvider`` to the relay.

A call:

1. wakes the publisher first if it hibernates: one wake task per publisher, however many calls
   wait for it; a failed wake fails them all and leaves the lanes hibernating;
2. becomes a task, sent on the publisher's control stream, or parked while there is none. A parked
   task is sent when the publisher is back, fails over at once when another lane of the same model
   can serve it, and gives up (503, retryable) after ``redispatch_wait`` (the relay's timer); all
   within the call's timeout, which never passes the request's deadline;
3. ends with the publisher's result post (or its chunks, for a stream).

When a session goes away (``session_down``) its tasks in flight are dispatched again, except what
cannot be replayed: a wake, or a stream that already produced output.

In a cluster the publisher's control stream may be held by another replica: the task is told to
it (``Relay.send_to``). A task it could not put on that stream (``undelivered``), and one sent on
a bind of the session that is over (``session_moved``: the publisher reconnected, maybe to another
replica), is dispatched again the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from laneway.clock import Clock, within
from laneway.config.schema import PublishersConfig
from laneway.errors import UpstreamError, UpstreamTimeout
from laneway.inventory.lanes import Tier, compose_lane_id
from laneway.inventory.store import Inventory
from laneway.operations import Operation
from laneway.providers.base import Call, ModelInfo, Reply, ReplyStream
from laneway.virtual.errors import PublisherUnavailable, RelayUnavailable, WakeFailed
from laneway.virtual.registry import FAMILY, Registry, Session, State
from laneway.virtual.relay import Relay, RelayStream, Task
from laneway.virtual.shared import SharedRegistry, Solo

log = logging.getLogger("laneway.virtual")


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        relay: Relay,
        inventory: Inventory,
        clock: Clock,
        settings: PublishersConfig,
        shared: SharedRegistry | None = None,
    ) -> None:
        self.shared: SharedRegistry = shared or Solo()
        self._registry = registry
        self._relay = relay
        self._inventory = inventory
        self._clock = clock
        self._settings = settings
        self._wakes: dict[str, asyncio.Task[None]] = {}  # by publisher name: the wake under way

    # -- calls ---------------------------------------------------------------------------------

    async def call(self, backend: str, op: Operation, call: Call) -> Reply:
        timeout = call.timeout or self._settings.timeout
        try:
            return await within(self._clock, timeout, self._call(backend, op, call))
        except TimeoutError:
            raise UpstreamTimeout(
                f"publisher '{backend}' did not answer within {timeout:g}s", backend=backend
            ) from None

    async def _call(self, backend: str, op: Operation, call: Call) -> Reply:
        lane_id = _lane_id(backend, op, call.model)
        await self._ensure_awake(backend, lane_id)
        task = Task("infer", backend, lane_id, call.model, op, False, call.body, id=self._relay.new_id())
        self.dispatch(task)
        try:
            reply = await task.done
        finally:
            self._relay.release(task)
        assert reply is not None
        return reply

    async def open_stream(self, backend: str, op: Operation, call: Call) -> ReplyStream:
        timeout = call.timeout or self._settings.timeout
        deadline = self._clock.monotonic() + timeout
        lane_id = _lane_id(backend, op, call.model)
        try:
            await within(self._clock, timeout, self._ensure_awake(backend, lane_id))
        except TimeoutError:
            raise UpstreamTimeout(
                f"publisher '{backend}' did not wake within {timeout:g}s", backend=backend
            ) from None
        task = Task("infer", backend, lane_id, call.model, op, True, call.body, id=self._relay.new_id())
        self.dispatch(task)
        return RelayStream(task, self._relay.release, self._clock, deadline)

    # -- where a task goes ---------------------------------------------------------------------

    def dispatch(self, task: Task) -> None:
        """Send the task to its lane's publisher, fail it over, or park it (see the module's
        docstring)."""
        session = self._registry.owner_of(task.lane_id)
        if (
            session is not None
            and self._registry.state_of(task.lane_id) != State.INACTIVE
            and self._send(task, session)
        ):
            return
        self._hold(task)

    def _send(self, task: Task, session: Session) -> bool:
        """On the session's control stream: here, or told to the replica that holds it."""
        if session.holder is None or session.holder == self._relay.peers.me:
            return self._relay.send(task, session.id)
        self._relay.send_to(task, session.id, session.holder, session.epoch)
        return True

    def _hold(self, task: Task) -> None:
        """The task cannot be sent now: it fails over at once if another lane serves its model,
        else it waits for its publisher (parked)."""
        if task.kind == "infer" and self._elsewhere(task):
            self._relay.fail(
                task,
                PublisherUnavailable(
                    f"publisher '{task.backend}' is offline; another lane serves '{task.model}'",
                    backend=task.backend,
                ),
            )
            return
        self._relay.park(task)

    def _elsewhere(self, task: Task) -> bool:
        """Does another lane of the same model and type take requests now?"""
        lane = self._inventory.get(task.lane_id)
        lane_type = lane.type if lane is not None else task.operation
        return any(
            other.backend != task.backend and other.type == lane_type and other.routable
            for other in self._inventory.by_model(task.model)
        )

    def flush(self, session: Session) -> None:
        """The session can take tasks: what is parked for its name is dispatched again."""
        for task in self._relay.take_parked(session.name):
            self.dispatch(task)

    def session_down(self, session: Session) -> None:
        """The session went inactive: its tasks in flight go back to pending, except what cannot
        be replayed (a wake; a stream that already produced output)."""
        for task in self._relay.in_flight(session.id):
            self._give_back(task, session.name)

    def session_moved(self, session: Session) -> None:
        """The session was bound again (its publisher reconnected, here or elsewhere): what was
        sent on an earlier bind is lost with that stream, and is given back as by ``session_down``."""
        for task in self._relay.in_flight(session.id):
            if task.epoch < session.epoch:
                self._give_back(task, session.name)

    def sent_elsewhere_lost(self) -> None:
        """This replica's bus was away (it listens again): what the publishers posted for the
        tasks it had sent to other replicas' streams may be lost with it. They are given back as
        by ``session_down`` (a copy still running gets a new id: its posts are refused)."""
        for task in self._relay.sent_elsewhere():
            self._give_back(task, task.backend)

    def holder_back(self, replica: str) -> None:
        """The replica ``replica`` listens again: what was parked for the streams it holds (told
        while it could not hear) is sent."""
        for session in list(self._registry.sessions.values()):
            if session.holder == replica:
                self.flush(session)

    def abandoned(self, task_id: str, session_id: str) -> None:
        """A post for the task could not be answered in time on the replica it reached: the
        publisher was told it failed, and stopped the task. Given back as by ``session_down``."""
        task = self._relay.task(task_id)
        if task is not None and task.session_id == session_id and not task.done.done():
            self._give_back(task, task.backend)

    def _give_back(self, task: Task, name: str) -> None:
        if task.kind == "wake":
            self._relay.fail(task, WakeFailed(f"publisher '{name}' went away while waking", backend=name))
        elif task.produced:
            self._relay.fail(task, PublisherUnavailable(f"publisher '{name}' went away", backend=name))
        else:
            log.info("task re-dispatched", extra={"publisher": name, "task": task.id})
            self._relay.renew(task)
            self.dispatch(task)

    def undelivered(self, task_id: str, session_id: str, epoch: int) -> None:
        """A task told to another replica did not reach the session's stream there (it closed,
        the publisher reconnected, or that replica is gone): sent again if the session is bound
        anew since, else held (failed over, or parked until its publisher is back)."""
        task = self._relay.task(task_id)
        if task is None or task.done.done() or (task.session_id, task.epoch) != (session_id, epoch):
            return  # answered, given back or sent again since
        log.info("task not delivered; dispatched again", extra={"publisher": task.backend, "task": task_id})
        self._relay.renew(task)
        session = self._registry.owner_of(task.lane_id)
        if session is not None and (session.id, session.epoch) != (session_id, epoch):
            self.dispatch(task)
        else:
            self._hold(task)

    # -- waking --------------------------------------------------------------------------------

    async def _ensure_awake(self, backend: str, lane_id: str) -> None:
        if self._registry.state_of(lane_id) != State.HIBERNATING:
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
        lane = self._inventory.get(lane_id)
        task = Task("wake", backend, lane_id, lane.model if lane is not None else "", id=self._relay.new_id())
        log.info("waking publisher", extra={"publisher": backend, "lane": lane_id})
        self.dispatch(task)
        wait = self._settings.wake_timeout
        try:
            await within(self._clock, wait, task.done)
        except TimeoutError:
            raise WakeFailed(
                f"publisher '{backend}' did not wake within {wait:g}s", backend=backend
            ) from None
        except UpstreamError as exc:
            if isinstance(exc, WakeFailed):
                raise
            raise WakeFailed(f"waking publisher '{backend}' failed: {exc.message}", backend=backend) from None
        finally:
            self._relay.release(task)
        await self._awoken(backend, lane_id)
        log.info("publisher awake", extra={"publisher": backend})

    async def _awoken(self, backend: str, lane_id: str) -> None:
        """The wake succeeded: the publisher's lanes are active (everywhere), and what waited for
        it is sent."""

        def awake() -> None:
            session = self._registry.owner_of(lane_id)
            if session is not None:
                self._registry.awake(session)

        before = self._registry.named(backend)
        try:
            await self.shared.change(backend, awake)
        except RelayUnavailable as exc:  # the wake succeeded all the same: here at least
            log.warning(
                "the publisher's wake could not be shared: %s", exc.message, extra={"publisher": backend}
            )
            awake()
        session = self._registry.owner_of(lane_id)
        if session is not None:
            self.flush(session)
        self.shared.changed(backend, before)

    async def aclose(self) -> None:
        wakes = list(self._wakes.values())
        for wake in wakes:
            wake.cancel()
        await asyncio.gather(*wakes, return_exceptions=True)


class VirtualProvider:
    """A publisher as the router sees it: one provider per publisher name."""

    family = FAMILY

    def __init__(self, name: str, dispatcher: Dispatcher) -> None:
        self.name = name
        self._dispatcher = dispatcher

    async def list_models(self) -> list[ModelInfo]:
        return []  # its lanes come from the publisher's register, not from discovery

    async def probe(self) -> Mapping[str, str]:
        return {}

    async def chat(self, call: Call) -> Reply:
        return await self._dispatcher.call(self.name, Operation.CHAT, call)

    async def stream_chat(self, call: Call) -> ReplyStream:
        return await self._dispatcher.open_stream(self.name, Operation.CHAT, call)

    async def complete(self, call: Call) -> Reply:
        return await self._dispatcher.call(self.name, Operation.COMPLETION, call)

    async def stream_complete(self, call: Call) -> ReplyStream:
        return await self._dispatcher.open_stream(self.name, Operation.COMPLETION, call)

    async def embed(self, call: Call) -> Reply:
        return await self._dispatcher.call(self.name, Operation.EMBEDDING, call)

    async def aclose(self) -> None:
        return None


def _lane_id(backend: str, op: Operation, model: str) -> str:
    return compose_lane_id(tier=Tier.FLEET, provider_family=FAMILY, instance_id=backend, type=op, model=model)
