"""The publisher's loops: stay registered and connected, run the tasks the gateway sends, wake the
backend, announce idleness.

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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from laneway.clock import Clock, SystemClock, within
from laneway.errors import InvalidRequest, UpstreamError
from laneway.operations import OPERATIONS
from laneway.publisher.chunks import ChunkSender
from laneway.publisher.client import GatewayClient, GatewayError
from laneway.publisher.local import Lane, LocalBackend, WakeFailed, WakeRecipe, error_result
from laneway.publisher.state import PublisherState, save_state, session_for
from laneway.publishing.protocol import (
    CancelEvent,
    Chunks,
    EventName,
    Failure,
    Register,
    Registered,
    Result,
    SessionState,
    TaskEvent,
    WakeEvent,
    read,
)

# A register refused with one of these will be refused again: a wrong token, a name or model
# outside its scope, a malformed body, no publisher endpoint at all. Other failures are retried.
FATAL_REGISTER = frozenset({400, 401, 403, 404, 413, 422})
# A chunk or result post refused with one of these: the gateway no longer wants the task.
TASK_GONE = frozenset({404, 409})


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


class _TaskGone(Exception):
    """The gateway refused a post for a task: it was cancelled, timed out or re-dispatched."""


async def _cancel_all(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


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
        self._wake = wake or WakeRecipe()
        self._hibernate_after = hibernate_after
        self._heartbeat_interval = heartbeat_interval
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._task_timeout = task_timeout
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
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
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
            await _cancel_all(serve, *helpers)
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

        async def finished() -> None:
            while self._tasks:
                await asyncio.wait(list(self._tasks.values()))

        draining = asyncio.ensure_future(within(self._clock, self._drain_timeout, finished()))
        hurry = asyncio.ensure_future(self._stop_now.wait())
        try:
            await asyncio.wait((draining, hurry), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_all(draining, hurry)

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
            await _cancel_all(beats, listen, *self._tasks.values())
            self._tasks.clear()
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
            self._spawn(task.task_id, self._run_task(session_id, task))
        elif event == EventName.WAKE:
            wake = read(WakeEvent, data)
            self._spawn(wake.task_id, self._run_wake(session_id, wake.task_id))
        elif event == EventName.CANCEL:
            running = self._tasks.get(read(CancelEvent, data).task_id)
            if running is not None:
                running.cancel()

    def _refuse(self, session_id: str, event: str, data: dict[str, Any], exc: InvalidRequest) -> None:
        self._note_error(f"the gateway sent a {event} this publisher cannot read: {exc.message}")
        task_id = data.get("task_id")
        if event in (EventName.TASK, EventName.WAKE) and isinstance(task_id, str) and task_id:
            # Said at once, so that the call fails over now rather than at its timeout.
            refusal = Result(error=Failure(status=400, message=exc.message))
            self._spawn(task_id, self._post_quietly(session_id, task_id, refusal))

    def _spawn(self, task_id: str, work: Coroutine[Any, Any, None]) -> None:
        previous = self._tasks.pop(task_id, None)
        if previous is not None:  # sent again: the gateway refuses the old copy's posts anyway
            previous.cancel()
        task = asyncio.create_task(work, name=f"publisher-task-{task_id}")
        self._tasks[task_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(task_id) is done:
                del self._tasks[task_id]

        task.add_done_callback(forget)

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
            await _cancel_all(sleeper, poked)
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

    # --- tasks ----------------------------------------------------------------------------------

    async def _post_result(self, session_id: str, task_id: str, result: Result) -> None:
        await self._to_gateway(self._client.post_result(session_id, task_id, result))

    async def _post_quietly(self, session_id: str, task_id: str, result: Result) -> None:
        """Post ``result``; a failure to is only noted (there is nothing more to do for the task)."""
        try:
            await self._post_result(session_id, task_id, result)
        except _TaskGone:
            pass
        except GatewayError as exc:
            self._note_error(exc.message)

    @staticmethod
    async def _to_gateway(call: Awaitable[None]) -> None:
        try:
            await call
        except GatewayError as exc:
            if exc.status_code in TASK_GONE:
                raise _TaskGone from None
            raise

    async def _run_task(self, session_id: str, task: TaskEvent) -> None:
        self._activity()
        lane = self._by_name.get((task.model, task.operation))
        try:
            if lane is None:
                problem = f"no {task.operation} lane for model '{task.model}' here"
                await self._post_result(
                    session_id, task.task_id, Result(error=Failure(status=404, message=problem))
                )
                return
            async with self._slots:
                self._update(in_flight=self._status.in_flight + 1)
                try:
                    await self._call_backend(session_id, task, lane)
                    self._update(done=self._status.done + 1)
                finally:
                    self._last_activity = self._clock.monotonic()
                    self._update(in_flight=self._status.in_flight - 1)
        except _TaskGone:
            pass  # cancelled, timed out or re-dispatched on the gateway: nothing more to say
        except GatewayError as exc:
            self._note_error(exc.message)

    async def _call_backend(self, session_id: str, task: TaskEvent, lane: Lane) -> None:
        try:
            if task.stream and OPERATIONS[lane.type].streams:
                if await self._relay_stream(session_id, task.task_id, lane, task.body):
                    return  # its last chunk post said done
                result = Result(status=200)
            else:
                answer = await self._backend.reply(lane, task.body, timeout=self._task_timeout)
                result = Result(status=200, body=answer)
        except UpstreamError as exc:
            result = error_result(exc)
        await self._post_result(session_id, task.task_id, result)

    async def _relay_stream(self, session_id: str, task_id: str, lane: Lane, body: dict[str, Any]) -> bool:
        """Read the backend's stream and post its chunks as they come (see ``ChunkSender``).
        Returns once every chunk is posted: True if the last post also ended the stream (else a
        result must); raises ``UpstreamError`` when the backend fails (after posting what it sent
        before) and ``_TaskGone`` when the gateway drops the task."""

        async def post(seq: int, chunks: list[dict[str, Any]], done: bool) -> None:
            post = Chunks(seq=seq, chunks=chunks, done=done)
            await self._to_gateway(self._client.post_chunks(session_id, task_id, post))

        sender = ChunkSender(post)
        async with self._backend.stream(lane, body, timeout=self._task_timeout) as batches:

            async def pump() -> None:
                async for chunks in batches:
                    sender.put(chunks)

            sending = asyncio.create_task(sender.run())
            reading = asyncio.create_task(pump())
            try:
                await asyncio.wait((sending, reading), return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():  # the sender stopped first: only ever by an error
                    sending.result()
                # The last post may end the stream, unless the backend failed (a result says so).
                sender.close(final=not reading.cancelled() and reading.exception() is None)
                await sending  # flush what is pending, even when the backend failed
                reading.result()
            finally:
                await _cancel_all(sending, reading)
        return sender.ended

    # --- wake -----------------------------------------------------------------------------------

    async def _run_wake(self, session_id: str, task_id: str) -> None:
        timeout = self._wake.timeout
        try:
            await within(self._clock, timeout, self._backend.wake(self._wake, self._clock))
        except TimeoutError:
            message = f"the local backend did not answer within {timeout:g}s of the wake"
            result = Result(error=Failure(status=504, message=message))
        except WakeFailed as exc:
            result = Result(error=Failure(status=502, message=str(exc)))
        else:
            result = Result(status=200)
            self._activity()
        await self._post_quietly(session_id, task_id, result)
