"""The task relay: calls for virtual lanes go to their publisher as ``task`` events on its control
stream, and come back as result and chunk posts.

A task is *parked* until its publisher's control stream can take it, then *sent*. The relay owns a
parked task whole: its place in its publisher's queue and its give-up timer. Sending it stops the
timer; a task still parked after ``redispatch_wait`` fails (503, retryable: the router tries the
route's other lanes). When a publisher drops with tasks in flight, each one that has not produced
output yet is *renewed* (a new id, so a late result for the old one is refused) and dispatched
again (``dispatch`` decides: sent elsewhere, failed over at once, or parked). A stream that already
produced output cannot be replayed: it breaks, and the client gets an error event.

Every result and chunk is checked against the task's session, its kind and its sequence number,
so a post for an unknown, re-dispatched, cancelled or finished task is refused and changes nothing.

In a cluster a task stays with the replica that serves its request; when its publisher's control
stream is held by another replica, the task is told to that one (``send_to``), which puts it on
the stream (``deliver``) or says it could not (``on_undelivered``). See ``laneway.virtual.peers``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from laneway.clock import Clock, within
from laneway.errors import InvalidRequest, StreamBroken, UpstreamStatusError, UpstreamTimeout
from laneway.operations import Operation
from laneway.providers.base import OPENAI, Reply, Usage
from laneway.providers.openai import usage_of
from laneway.publishing.protocol import CancelEvent, Chunks, EventName, Message, Result, TaskEvent, WakeEvent
from laneway.sse import DONE, encode
from laneway.virtual.errors import Conflict, PublisherUnavailable, UnknownTask
from laneway.virtual.peers import CANCEL, TASK, NoPeers, Peers, new_task_id

_END = object()  # the end of a stream's frames


def _task_id() -> str:
    return new_task_id("")


class ControlChannel:
    """One open control stream: events queued here are written to the publisher by the SSE
    response (``api.publisher_routes``). ``close`` ends that response."""

    def __init__(self, session_id: str, epoch: int = 0) -> None:
        self.session_id = session_id
        self.epoch = epoch  # the session's bind this stream is (``Session.epoch``)
        self.events: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    def send(self, event: EventName, message: Message) -> None:
        self.send_frame(encode(message.wire(), event=event))

    def send_frame(self, frame: bytes) -> None:
        """An event already framed (a task another replica relays)."""
        if not self.closed:
            self.events.put_nowait(frame)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.events.put_nowait(None)


@dataclass(eq=False)
class Task:
    """One call (``infer``) or one wake, from the moment it is dispatched until its caller is done
    with it. ``session_id`` is the session it was sent to, None while it is parked."""

    kind: Literal["infer", "wake"]
    backend: str  # the publisher's name
    lane_id: str
    model: str
    operation: Operation = Operation.CHAT  # what an infer task runs
    stream: bool = False
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=_task_id)
    session_id: str | None = None
    epoch: int = 0  # the bind of the session it was sent on
    holder: str | None = None  # the replica it was told to (None: sent on a stream of this one)
    done: asyncio.Future[Reply | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    frames: asyncio.Queue[Any] | None = None  # a stream's frames (bytes), then _END or an error
    seq: int = 0  # the next chunk post expected
    produced: bool = False  # a chunk arrived: it can no longer be re-dispatched
    usage: Usage | None = None

    def __post_init__(self) -> None:
        if self.stream:
            self.frames = asyncio.Queue()

    def event(self) -> tuple[EventName, TaskEvent | WakeEvent]:
        if self.kind == "wake":
            return EventName.WAKE, WakeEvent(task_id=self.id, model=self.model, lane=self.lane_id)
        return EventName.TASK, TaskEvent(
            task_id=self.id,
            lane=self.lane_id,
            model=self.model,
            operation=self.operation,
            stream=self.stream,
            body=self.body,
        )

    def fail(self, exc: BaseException) -> None:
        if self.frames is not None:
            self.frames.put_nowait(exc)  # a stream's reader raises it where the stream stands
        if not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()  # retrieved: nobody may be awaiting a stream's ``done``


class Relay:
    """The control streams (one per session) and every task not finished: parked (by publisher
    name, oldest first, each with its give-up timer) or sent (to one session)."""

    def __init__(self, clock: Clock, *, redispatch_wait: float, peers: Peers | None = None) -> None:
        self._clock = clock
        self._wait = redispatch_wait
        self.peers: Peers = peers or NoPeers()
        # A task told to another replica did not reach its stream: (task id, session id, epoch).
        self.on_undelivered: Callable[[str, str, int], None] = lambda task_id, session_id, epoch: None
        self._channels: dict[str, ControlChannel] = {}  # by session id
        self._tasks: dict[str, Task] = {}  # by id: parked and sent
        self._parked: dict[str, list[Task]] = {}  # by publisher name
        self._timers: dict[Task, asyncio.Task[None]] = {}  # the parked tasks' give-up timers

    # -- control streams -----------------------------------------------------------------------

    def bind(self, channel: ControlChannel) -> ControlChannel | None:
        """Make ``channel`` its session's control stream; returns the one it replaces (closed)."""
        old = self._channels.get(channel.session_id)
        self._channels[channel.session_id] = channel
        if old is not None:
            old.close()
        return old

    def unbind(self, channel: ControlChannel) -> bool:
        """Close ``channel`` and forget it if it is still its session's current one (False: it
        had been replaced)."""
        channel.close()
        if self._channels.get(channel.session_id) is channel:
            del self._channels[channel.session_id]
            return True
        return False

    def channel(self, session_id: str) -> ControlChannel | None:
        return self._channels.get(session_id)

    def close_all(self) -> None:
        for channel in list(self._channels.values()):
            channel.close()

    def streams(self) -> int:
        """Control streams open here."""
        return len(self._channels)

    def deliver(self, session_id: str, epoch: int, frame: bytes) -> bool:
        """Another replica's task, onto the session's stream here if it is the one of bind
        ``epoch``; False if there is none (it closed, or the publisher reconnected since)."""
        channel = self._channels.get(session_id)
        if channel is None or channel.closed or channel.epoch != epoch:
            return False
        channel.send_frame(frame)
        return True

    def cancel_here(self, session_id: str, task_id: str) -> None:
        """Another replica's caller left: its publisher is told to stop the task."""
        channel = self._channels.get(session_id)
        if channel is not None:
            channel.send(EventName.CANCEL, CancelEvent(task_id=task_id))

    # -- tasks ---------------------------------------------------------------------------------

    def new_id(self) -> str:
        """A task id naming this replica (``laneway.virtual.peers.new_task_id``)."""
        return new_task_id(self.peers.me)

    def send(self, task: Task, session_id: str) -> bool:
        """Send ``task`` on the session's control stream (no longer parked); False if the
        session has no open one here."""
        channel = self._channels.get(session_id)
        if channel is None or channel.closed:
            return False
        self._sent(task, session_id, None, channel.epoch)
        channel.send(*task.event())
        return True

    def send_to(self, task: Task, session_id: str, holder: str, epoch: int) -> None:
        """Tell ``task`` to the replica ``holder``, for the session's stream of bind ``epoch``
        there. Counted as sent: if it does not get there, ``on_undelivered`` hears of it."""
        self._sent(task, session_id, holder, epoch)
        event, message = task.event()
        frame = encode(message.wire(), event=event).decode()
        task_id = task.id
        payload = {
            "task": task_id,
            "session": session_id,
            "epoch": epoch,
            "frame": frame,
            "requester": self.peers.me,
        }
        self.peers.tell(holder, TASK, payload, lost=lambda: self.on_undelivered(task_id, session_id, epoch))

    def _sent(self, task: Task, session_id: str, holder: str | None, epoch: int) -> None:
        self._stop_timer(task)
        self._tasks[task.id] = task
        task.session_id, task.holder, task.epoch = session_id, holder, epoch

    def task(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def park(self, task: Task) -> None:
        """Keep ``task`` until its publisher can take it, for ``redispatch_wait`` at most: the
        timer starts when it is first parked and keeps running while it is parked again."""
        self._tasks[task.id] = task
        task.session_id = task.holder = None
        self._parked.setdefault(task.backend, []).append(task)
        if task not in self._timers:
            self._timers[task] = asyncio.create_task(self._give_up(task), name=f"parked-{task.id}")

    def take_parked(self, backend: str) -> list[Task]:
        """The tasks parked for the publisher ``backend``, to dispatch again (their timers run on
        until they are sent or parked again)."""
        return self._parked.pop(backend, [])

    def renew(self, task: Task) -> None:
        """A new id for a task given back by a session that went away: a result for the old one
        is refused."""
        self._tasks.pop(task.id, None)
        task.id = self.new_id()
        task.session_id = task.holder = None

    def release(self, task: Task) -> None:
        """The task's caller is done with it (served, failed, left or timed out). A publisher
        still running it is told to stop: only a result it posted means there is nothing to stop
        (awaiting ``done`` and being cancelled, by a timeout or a client gone, cancels it)."""
        answered = task.done.done() and not task.done.cancelled()
        self._drop(task)
        if answered or task.session_id is None:
            return
        if task.holder is None:
            self.cancel_here(task.session_id, task.id)
        else:
            self.peers.tell(task.holder, CANCEL, {"session": task.session_id, "task": task.id})

    def fail(self, task: Task, exc: BaseException) -> None:
        """End ``task`` with ``exc`` on the gateway's side; its publisher (gone, or never sent it)
        is told nothing."""
        self._drop(task)
        task.fail(exc)

    def _drop(self, task: Task) -> None:
        self._tasks.pop(task.id, None)
        self._stop_timer(task)
        queue = self._parked.get(task.backend)
        if queue is not None and task in queue:
            queue.remove(task)
            if not queue:
                del self._parked[task.backend]

    def _stop_timer(self, task: Task) -> None:
        timer = self._timers.pop(task, None)
        if timer is not None:
            timer.cancel()

    async def _give_up(self, task: Task) -> None:
        await self._clock.sleep(self._wait)
        self._timers.pop(task, None)
        if task.session_id is None and not task.done.done():
            self.fail(
                task,
                PublisherUnavailable(
                    f"publisher '{task.backend}' is offline and did not come back within {self._wait:g}s",
                    backend=task.backend,
                ),
            )

    def sent_elsewhere(self) -> list[Task]:
        """Tasks told to other replicas' streams and not finished."""
        return [t for t in self._tasks.values() if t.holder is not None and not t.done.done()]

    def in_flight(self, session_id: str) -> list[Task]:
        return [t for t in self._tasks.values() if t.session_id == session_id and not t.done.done()]

    def parked(self) -> int:
        return sum(len(queue) for queue in self._parked.values())

    def __len__(self) -> int:
        """Tasks not finished: parked or sent."""
        return len(self._tasks)

    async def aclose(self) -> None:
        timers = list(self._timers.values())
        self._timers.clear()
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)

    # -- what publishers post ------------------------------------------------------------------

    def _task(self, session_id: str, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None or task.session_id != session_id:
            raise UnknownTask(
                f"no task '{task_id}' in flight for this session (finished, cancelled or re-sent)"
            )
        if task.done.done():
            raise Conflict(f"task '{task_id}' has already ended")
        return task

    def chunks(self, session_id: str, task_id: str, post: Chunks) -> int:
        """A streamed task's next chunks, in order; ``done`` ends the stream with them."""
        task = self._task(session_id, task_id)
        if task.frames is None:
            raise Conflict(f"task '{task_id}' is not a streamed call: post its result instead")
        if post.seq != task.seq:
            raise Conflict(f"chunk post {post.seq} out of order: expected seq {task.seq}", param="seq")
        task.seq += 1
        for chunk in post.chunks:
            if chunk.get("usage"):
                task.usage = usage_of(chunk) or task.usage
            task.frames.put_nowait(encode(chunk))
        if post.chunks:
            task.produced = True
        if post.done:
            self._finish(task, None)
        return len(post.chunks)

    def result(self, session_id: str, task_id: str, result: Result) -> None:
        task = self._task(session_id, task_id)
        if result.error is not None:
            self._tasks.pop(task.id, None)
            task.fail(
                UpstreamStatusError(
                    f"publisher '{task.backend}': {result.error.message}",
                    backend=task.backend,
                    upstream_status=result.error.status,
                )
            )
            return
        reply: Reply | None = None
        if task.kind == "infer" and not task.stream:
            if result.body is None:
                raise InvalidRequest(
                    "the result of a call that was not streamed needs its 'body'", param="body"
                )
            reply = Reply(body=orjson.dumps(result.body), headers={}, usage=usage_of(result.body))
        self._finish(task, reply)

    def _finish(self, task: Task, reply: Reply | None) -> None:
        if task.frames is not None:
            task.frames.put_nowait(_END)
        task.done.set_result(reply)
        self._tasks.pop(task.id, None)


class RelayStream:
    """A ReplyStream over a streamed task: frames as the publisher posts them, then ``[DONE]``.
    Until its first frame arrives it is bounded by the call's deadline (the router's prefetch
    waits for that frame); after that the publisher's liveness bounds it (a publisher that goes
    away breaks it)."""

    def __init__(self, task: Task, release: Callable[[Task], None], clock: Clock, deadline: float) -> None:
        self.task = task
        self._release = release
        self._clock = clock
        self._deadline = deadline
        self.headers: Mapping[str, str] = {}
        self.dialect = OPENAI  # a publisher's stream is always OpenAI's (virtual.dispatch)
        self._closed = False

    @property
    def usage(self) -> Usage | None:
        return self.task.usage

    async def _next(self, frames: asyncio.Queue[Any]) -> Any:
        if self.task.produced or not frames.empty():
            return await frames.get()
        left = self._deadline - self._clock.monotonic()
        try:
            return await within(self._clock, max(left, 0.001), frames.get())
        except TimeoutError:
            raise UpstreamTimeout(
                f"publisher '{self.task.backend}' sent nothing before the call's deadline",
                backend=self.task.backend,
            ) from None

    async def _frames(self) -> AsyncIterator[bytes]:
        frames = self.task.frames
        assert frames is not None
        while True:
            item = await self._next(frames)
            if item is _END:
                break
            if isinstance(item, BaseException):
                if isinstance(item, PublisherUnavailable) and self.task.produced:
                    raise StreamBroken(
                        f"publisher '{self.task.backend}' went away mid-stream", backend=self.task.backend
                    )
                raise item
            yield item
        self._closed = True
        self._release(self.task)
        yield DONE

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._release(self.task)
