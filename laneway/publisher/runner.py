"""The publisher's loops: stay registered and connected, hand the tasks the gateway sends to the
``TaskRunner`` (``tasks``), announce idleness, drain when stopping.

Shape of a run (``Publisher.run``)::

    serve:      register → control stream + heartbeats + tasks → lost → backoff → register ...
    hibernate:  no task for ``hibernate_after`` seconds → state "hibernating", heartbeat at once

A *connection* is one register plus one control stream. Tasks belong to their connection: when
the stream is lost the gateway re-dispatches what was in flight, so the copies still running here
could only post results it refuses; they are cancelled, which frees their slots for the
re-dispatched ones. Everything that waits on time waits on the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from laneway.clock import Clock, SystemClock, within
from laneway.errors import InvalidRequest, UpstreamError
from laneway.publisher.client import GatewayClient, GatewayError
from laneway.publisher.local import Lane, LocalBackend, WakeRecipe
from laneway.publisher.state import PublisherState, save_state, session_for
from laneway.publisher.tasks import TaskRunner, cancel_all
from laneway.publishing.protocol import (
    CancelEvent,
    EventName,
    Register,
    Registered,
    SessionState,
    TaskEvent,
    WakeEvent,
    read,
)

# A register refused with one of these will be refused again: a wrong token, a name or model
# outside its scope, a malformed body, no publisher endpoint at all. Other failures are retried.
FATAL_REGISTER = frozenset({400, 401, 403, 404, 413, 422})


def backoff_delay(failures: int, base: float = 5.0, cap: float = 60.0) -> float:
    """Seconds before the next connection attempt after ``failures`` failed ones in a row
    (counting from 1): 5, 10, 20, 40, 60, 60... for the defaults."""
    return float(min(base * 2 ** max(failures - 1, 0), cap))


@dataclass(frozen=True, slots=True)
class PublisherStatus:
    """What the publisher shows its user. ``lanes`` are the lane ids the gateway gave (published
    names until it answered); ``retry_in`` is set while waiting to reconnect."""

    gateway: str
    name: str
    connected: bool = False
    session_id: str | None = None
    lanes: tuple[str, ...] = ()
    state: SessionState = SessionState.ACTIVE
    in_flight: int = 0
    done: int = 0
    last_error: str | None = None
    retry_in: float | None = None


class _SessionLost(Exception):
    """The gateway no longer knows the session (a heartbeat got 404): register again at once."""


class Publisher:
    """Publishes ``lanes`` of ``backend`` on the gateway at ``gateway`` as ``name``.

    ``run()`` returns after ``stop()`` (having unregistered, best effort) and raises
    ``GatewayError`` only when the gateway refuses the registration for good (see
    ``FATAL_REGISTER``). ``status`` is a snapshot; ``on_status`` gets every new one. The caller
    owns ``backend``; the publisher owns its gateway client and closes it when ``run`` ends.
    """

    def __init__(
        self,
        *,
        gateway: str,
        token: str,
        backend: LocalBackend,
        lanes: Sequence[Lane],
        name: str,
        max_concurrency: int = 1,
        state_file: Path | None = None,
        wake: WakeRecipe | None = None,
        hibernate_after: float | None = None,
        heartbeat_interval: float = 30.0,
        backoff_base: float = 5.0,
        backoff_cap: float = 60.0,
        task_timeout: float = 600.0,
        unregister_timeout: float = 5.0,
        drain_timeout: float = 30.0,
        rediscover: Callable[[], Awaitable[Sequence[Lane]]] | None = None,
        rediscover_interval: float = 60.0,
        clock: Clock | None = None,
        on_status: Callable[[PublisherStatus], None] | None = None,
    ) -> None:
        self._client = GatewayClient(gateway, token)
        self._backend = backend
        self._set_lanes(lanes)
        self._rediscover = rediscover
        self._rediscover_interval = rediscover_interval
        self._name = name
        self._max_concurrency = max_concurrency
        self._state_file = state_file
        self._hibernate_after = hibernate_after
        self._heartbeat_interval = heartbeat_interval
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._unregister_timeout = unregister_timeout
        self._drain_timeout = drain_timeout
        self._clock: Clock = clock or SystemClock()
        self._on_status = on_status
        self._session_id = (
            session_for(state_file, gateway=self._client.url, name=name) if state_file else None
        )
        self._status = PublisherStatus(
            gateway=self._client.url,
            name=name,
            session_id=self._session_id,
            lanes=tuple(f"{lane.type}:{lane.published}" for lane in lanes),  # ids once registered
        )
        self._tasks = TaskRunner(
            self._client,
            backend,
            self._clock,
            max_concurrency=max_concurrency,
            task_timeout=task_timeout,
            wake=wake or WakeRecipe(),
            arrived=self._activity,
            counted=self._counted,
            noted=self._note_error,
        )
        self._stopping = asyncio.Event()
        self._stop_now = asyncio.Event()  # a second stop(): no draining
        self._beat_now = asyncio.Event()  # the hibernate loop asks for a heartbeat at once
        self._awake = asyncio.Event()  # set while the state is "active"
        self._awake.set()
        self._good = False  # this connection got as far as the control stream's hello
        self._registered = False
        self._last_activity = 0.0

    # --- the public face ------------------------------------------------------------------------

    @property
    def status(self) -> PublisherStatus:
        return self._status

    def stop(self) -> None:
        """Ask ``run`` to drain, unregister and return (safe from a signal handler on the loop).
        A second call skips what is left of the drain."""
        if self._stopping.is_set():
            self._stop_now.set()
        self._stopping.set()

    async def run(self) -> None:
        self._last_activity = self._clock.monotonic()
        serve = asyncio.create_task(self._serve())
        stopping = asyncio.create_task(self._stopping.wait())
        helpers: list[asyncio.Task[Any]] = [stopping]
        if self._hibernate_after is not None:
            helpers.append(asyncio.create_task(self._hibernate(self._hibernate_after)))
        if self._rediscover is not None and self._rediscover_interval > 0:
            helpers.append(
                asyncio.create_task(self._rediscovering(self._rediscover, self._rediscover_interval))
            )
        try:
            done, _ = await asyncio.wait((serve, stopping), return_when=asyncio.FIRST_COMPLETED)
            if serve in done:
                serve.result()  # it ends on its own only by a fatal refusal
            await self._drain()
        finally:
            await cancel_all(serve, *helpers)
            try:
                if self._stopping.is_set():
                    await self._unregister()
            finally:
                await self._client.aclose()

    async def _drain(self) -> None:
        """Stopping with tasks in flight: say "draining" (the gateway sends nothing new and leaves
        these tasks here), then let them finish, for at most ``drain_timeout`` or until a second
        ``stop()``. What is still running after that is cancelled; the gateway re-dispatches it."""
        session_id = self._session_id
        if not self._tasks or not self._status.connected or session_id is None or self._drain_timeout <= 0:
            return
        self._set_state(SessionState.DRAINING)
        try:
            await self._client.heartbeat(session_id, SessionState.DRAINING)
        except GatewayError as exc:
            self._note_error(exc.message)
            return

        draining = asyncio.ensure_future(within(self._clock, self._drain_timeout, self._tasks.finished()))
        hurry = asyncio.ensure_future(self._stop_now.wait())
        try:
            await asyncio.wait((draining, hurry), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_all(draining, hurry)

    # --- the local backend's models -------------------------------------------------------------

    def _set_lanes(self, lanes: Sequence[Lane]) -> None:
        self._lanes = list(lanes)
        self._by_name: dict[tuple[str, str], Lane] = {(lane.published, lane.type): lane for lane in lanes}

    async def _rediscovering(self, discover: Callable[[], Awaitable[Sequence[Lane]]], every: float) -> None:
        """Every ``every`` seconds, ask the local backend what it serves; a model pulled or removed
        since is registered again (the gateway adds and drops lanes to match). A backend that does
        not answer, or answers with nothing, changes nothing: it may be restarting."""
        while True:
            await self._clock.sleep(every)
            try:
                lanes = list(await discover())
            except (UpstreamError, ValueError) as exc:
                self._note_error(f"could not list the local models: {exc}")
                continue
            if not lanes or set(lanes) == set(self._lanes):
                continue
            previous, registered = self._lanes, self._registered
            self._set_lanes(lanes)
            if not registered:
                continue  # the connection loop registers them when it connects
            try:
                await self._register()
            except GatewayError as exc:
                # Refused (a new model outside the token's scope, say) or not reached: the gateway
                # still has the previous set, and a reconnect must not offer one it refuses.
                self._set_lanes(previous)
                self._registered = True
                self._note_error(f"could not register the local models as they are now: {exc.message}")

    # --- status ---------------------------------------------------------------------------------

    def _update(self, **changes: Any) -> None:
        new = replace(self._status, **changes)
        if new != self._status:
            self._status = new
            if self._on_status is not None:
                self._on_status(new)

    def _note_error(self, message: str) -> None:
        self._update(last_error=message)

    def _set_state(self, state: SessionState) -> None:
        if state == SessionState.ACTIVE:
            self._awake.set()
        else:
            self._awake.clear()
        self._update(state=state)

    def _activity(self) -> None:
        """A task arrived or a wake succeeded: not idle any more."""
        self._last_activity = self._clock.monotonic()
        if self._status.state != SessionState.ACTIVE and not self._stopping.is_set():  # never undo draining
            self._set_state(SessionState.ACTIVE)

    def _counted(self, in_flight: int, done: int) -> None:
        if in_flight < 0:  # a task ended: idle from now on, if nothing else runs
            self._last_activity = self._clock.monotonic()
        self._update(in_flight=self._status.in_flight + in_flight, done=self._status.done + done)

    # --- connections ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        failures = 0
        while True:
            self._good = False
            try:
                await self._connection()
                self._note_error("the gateway closed the control stream")
            except _SessionLost:
                self._note_error("the gateway no longer knew this session; registered again")
                failures = 0
                continue
            except GatewayError as exc:
                if not self._registered and exc.status_code in FATAL_REGISTER:
                    raise
                self._note_error(exc.message)
            failures = 1 if self._good else failures + 1
            delay = backoff_delay(failures, self._backoff_base, self._backoff_cap)
            self._update(connected=False, retry_in=delay)
            await self._clock.sleep(delay)
            self._update(retry_in=None)

    async def _register(self) -> Registered:
        announced = self._status.state
        if announced == SessionState.DRAINING:  # stopping: what it registered stays as it was
            raise GatewayError("register: not while draining")
        request = Register(
            name=self._name,
            session_id=self._session_id,
            max_concurrency=self._max_concurrency,
            state=announced,
            lanes=[lane.offer() for lane in self._lanes],
        )
        self._registered = False
        answer = await self._client.register(request)
        session_id = answer.session_id
        self._registered = True
        if session_id != self._session_id and self._state_file is not None:
            state = PublisherState(session_id=session_id, gateway=self._client.url, name=self._name)
            try:
                save_state(self._state_file, state)
            except OSError as exc:  # only a restart's re-adoption is lost: keep publishing
                self._note_error(f"cannot write the state file {self._state_file}: {exc.strerror or exc}")
        self._session_id = session_id
        ids = tuple(lane.id for lane in answer.lanes)
        self._update(session_id=session_id, lanes=ids or self._status.lanes)
        return answer

    async def _connection(self) -> None:
        answer = await self._register()
        session_id = answer.session_id
        interval = min(
            self._heartbeat_interval, answer.heartbeat_interval
        )  # more often than asked, never less
        beats = asyncio.create_task(self._heartbeats(session_id, interval))
        listen = asyncio.create_task(self._listen(session_id))
        try:
            done, _ = await asyncio.wait((beats, listen), return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()
        finally:
            await cancel_all(beats, listen)
            await self._tasks.cancel_all()
            self._update(connected=False)

    async def _listen(self, session_id: str) -> None:
        async with contextlib.aclosing(self._client.control(session_id)) as events:
            async for event, data in events:
                try:
                    self._on_event(session_id, event, data)
                except InvalidRequest as exc:  # an event this publisher cannot read
                    self._refuse(session_id, event, data, exc)

    def _on_event(self, session_id: str, event: str, data: dict[str, Any]) -> None:
        """One control-stream event; a ping, or an event of a later version, does nothing."""
        if event == EventName.HELLO:
            self._good = True
            self._update(connected=True, retry_in=None)
        elif event == EventName.TASK:
            task = read(TaskEvent, data)
            self._tasks.run(session_id, task, self._by_name.get((task.model, task.operation)))
        elif event == EventName.WAKE:
            self._tasks.wake(session_id, read(WakeEvent, data).task_id)
        elif event == EventName.CANCEL:
            self._tasks.cancel(read(CancelEvent, data).task_id)

    def _refuse(self, session_id: str, event: str, data: dict[str, Any], exc: InvalidRequest) -> None:
        self._note_error(f"the gateway sent a {event} this publisher cannot read: {exc.message}")
        task_id = data.get("task_id")
        if event in (EventName.TASK, EventName.WAKE) and isinstance(task_id, str) and task_id:
            self._tasks.refuse(session_id, task_id, exc.message)

    async def _heartbeats(self, session_id: str, interval: float) -> None:
        while True:
            await self._next_beat(interval)
            try:
                answer = await self._client.heartbeat(session_id, self._status.state)
            except GatewayError as exc:
                if exc.status_code == 404:
                    raise _SessionLost from None
                self._note_error(exc.message)  # the control stream tells whether the link is gone
                continue
            if not answer.control:
                raise GatewayError("heartbeat: the gateway says this session's control stream is closed")

    async def _next_beat(self, interval: float) -> None:
        """Wait ``interval`` on the clock, or less when the hibernate loop wants a beat now."""
        sleeper = asyncio.ensure_future(self._clock.sleep(interval))
        poked = asyncio.ensure_future(self._beat_now.wait())
        try:
            await asyncio.wait((sleeper, poked), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_all(sleeper, poked)
        self._beat_now.clear()

    async def _unregister(self) -> None:
        if self._session_id is None or not self._registered:
            return
        try:
            await self._client.unregister(self._session_id, timeout=self._unregister_timeout)
        except GatewayError as exc:
            self._note_error(exc.message)
        self._registered = False

    # --- idleness -------------------------------------------------------------------------------

    async def _hibernate(self, after: float) -> None:
        """Announce hibernation once nothing ran for ``after`` seconds; wait for a wake or a task."""
        while True:
            if not self._awake.is_set():
                await self._awake.wait()
                continue
            idle = self._clock.monotonic() - self._last_activity
            if not self._tasks and idle >= after:
                self._set_state(SessionState.HIBERNATING)
                self._beat_now.set()
                continue
            await self._clock.sleep(after if self._tasks else after - idle)  # then look again
