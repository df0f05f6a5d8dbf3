"""Running what the gateway sends: a task against the local backend (its whole answer, or its
stream's chunks as they come), a wake; and posting what came of each.

At most ``max_concurrency`` tasks call the backend at once; a task sent again under the same id
replaces the copy still running. Every post for a task the gateway no longer wants (404 or 409:
cancelled, timed out, re-dispatched) ends that task quietly. The publisher's loops
(``runner``) start and cancel the work; this module reports back through three callbacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from laneway.clock import Clock, within
from laneway.errors import UpstreamError
from laneway.operations import OPERATIONS
from laneway.publisher.chunks import ChunkSender
from laneway.publisher.client import GatewayClient, GatewayError
from laneway.publisher.local import Lane, LocalBackend, WakeFailed, WakeRecipe, error_result
from laneway.publishing.protocol import Chunks, Failure, Result, TaskEvent

# A chunk or result post refused with one of these: the gateway no longer wants the task.
TASK_GONE = frozenset({404, 409})


class _TaskGone(Exception):
    """The gateway refused a post for a task: it was cancelled, timed out or re-dispatched."""


async def cancel_all(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class TaskRunner:
    """The tasks and wakes of one publisher, by task id. ``arrived`` is called when one arrives or
    a wake succeeds (the publisher is not idle), ``counted(in_flight, done)`` with the change of
    those counts, ``noted`` with what went wrong."""

    def __init__(
        self,
        client: GatewayClient,
        backend: LocalBackend,
        clock: Clock,
        *,
        max_concurrency: int,
        task_timeout: float,
        wake: WakeRecipe,
        arrived: Callable[[], None],
        counted: Callable[[int, int], None],
        noted: Callable[[str], None],
    ) -> None:
        self._client = client
        self._backend = backend
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrency)
        self._task_timeout = task_timeout
        self._wake = wake
        self._arrived = arrived
        self._counted = counted
        self._noted = noted
        self._running: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._running)

    # -- starting and stopping -----------------------------------------------------------------

    def run(self, session_id: str, task: TaskEvent, lane: Lane | None) -> None:
        """Run ``task`` on ``lane`` (None: this publisher has no lane for it)."""
        self._spawn(task.task_id, self._run_task(session_id, task, lane))

    def wake(self, session_id: str, task_id: str) -> None:
        self._spawn(task_id, self._run_wake(session_id, task_id))

    def refuse(self, session_id: str, task_id: str, message: str) -> None:
        """Answer a task this publisher cannot read at once, so that its call fails over now
        rather than at its timeout."""
        self._spawn(
            task_id,
            self._post_quietly(session_id, task_id, Result(error=Failure(status=400, message=message))),
        )

    def cancel(self, task_id: str) -> None:
        running = self._running.get(task_id)
        if running is not None:
            running.cancel()

    async def cancel_all(self) -> None:
        running = list(self._running.values())
        self._running.clear()
        await cancel_all(*running)

    async def finished(self) -> None:
        """Until nothing runs."""
        while self._running:
            await asyncio.wait(list(self._running.values()))

    def _spawn(self, task_id: str, work: Coroutine[Any, Any, None]) -> None:
        previous = self._running.pop(task_id, None)
        if previous is not None:  # sent again: the gateway refuses the old copy's posts anyway
            previous.cancel()
        task = asyncio.create_task(work, name=f"publisher-task-{task_id}")
        self._running[task_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._running.get(task_id) is done:
                del self._running[task_id]

        task.add_done_callback(forget)

    # -- posting -------------------------------------------------------------------------------

    async def _post_result(self, session_id: str, task_id: str, result: Result) -> None:
        await self._to_gateway(self._client.post_result(session_id, task_id, result))

    async def _post_quietly(self, session_id: str, task_id: str, result: Result) -> None:
        """Post ``result``; a failure to is only noted (there is nothing more to do for the task)."""
        try:
            await self._post_result(session_id, task_id, result)
        except _TaskGone:
            pass
        except GatewayError as exc:
            self._noted(exc.message)

    @staticmethod
    async def _to_gateway(call: Awaitable[None]) -> None:
        try:
            await call
        except GatewayError as exc:
            if exc.status_code in TASK_GONE:
                raise _TaskGone from None
            raise

    # -- a task --------------------------------------------------------------------------------

    async def _run_task(self, session_id: str, task: TaskEvent, lane: Lane | None) -> None:
        self._arrived()
        try:
            if lane is None:
                problem = f"no {task.operation} lane for model '{task.model}' here"
                await self._post_result(
                    session_id, task.task_id, Result(error=Failure(status=404, message=problem))
                )
                return
            async with self._slots:
                self._counted(1, 0)
                done = 0
                try:
                    await self._call_backend(session_id, task, lane)
                    done = 1
                finally:
                    self._counted(-1, done)
        except _TaskGone:
            pass  # cancelled, timed out or re-dispatched on the gateway: nothing more to say
        except GatewayError as exc:
            self._noted(exc.message)

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
                await cancel_all(sending, reading)
        return sender.ended

    # -- a wake --------------------------------------------------------------------------------

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
            self._arrived()
        await self._post_quietly(session_id, task_id, result)
