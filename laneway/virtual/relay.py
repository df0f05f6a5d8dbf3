"""The task relay: calls for virtual lanes go to their publisher as ``task`` events on its control
stream, and come back as result and chunk posts.

A task is *pending* until its publisher's control stream can take it, then *sent*. When the
publisher drops with tasks in flight, each one that has not yet produced output goes back to
pending (with a new id, so a late result for the old one is refused): the fleet decides whether it
waits for the publisher to come back or fails over at once. A stream that already produced output
cannot be replayed: it breaks, and the client gets an error event.

Every result and chunk is checked against the task's session, its kind and its sequence number,
so a post for an unknown, re-dispatched, cancelled or finished task is refused and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from laneway.clock import Clock, within
from laneway.errors import InvalidRequest, StreamBroken, UpstreamError, UpstreamStatusError, UpstreamTimeout
from laneway.providers.base import Reply, Usage
from laneway.providers.openai import usage_of
from laneway.sse import DONE, encode
from laneway.virtual.errors import Conflict, PublisherUnavailable, UnknownTask

log = logging.getLogger("laneway.virtual")

_END = object()  # the end of a stream's frames


def control_frame(event: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class ControlChannel:
    """One open control stream: events queued here are written to the publisher by the SSE
    response (``api.publisher_routes``). ``close`` ends that response."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.events: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    def send(self, event: str, data: Mapping[str, Any]) -> None:
        if not self.closed:
            self.events.put_nowait(control_frame(event, data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.events.put_nowait(None)


@dataclass(eq=False)
class Task:
    kind: str  # infer | wake
    backend: str  # the publisher's name
    lane_id: str
    model: str
    operation: str = ""  # chat | completion | embedding (infer)
    stream: bool = False
    body: dict[str, Any] | None = None
    id: str = field(default_factory=lambda: "t_" + secrets.token_hex(12))
    session_id: str | None = None  # the session it was sent to; None: pending
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

    def event(self) -> tuple[str, dict[str, Any]]:
        if self.kind == "wake":
            return "wake", {"task_id": self.id, "model": self.model, "lane": self.lane_id}
        return "task", {
            "task_id": self.id,
            "lane": self.lane_id,
            "model": self.model,
            "operation": self.operation,
            "stream": self.stream,
            "body": self.body,
        }

    def fail(self, exc: BaseException) -> None:
        if self.frames is not None:
            self.frames.put_nowait(exc)  # a stream's reader raises it where the stream stands
        if not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()  # retrieved: nobody may be awaiting a stream's ``done``


class Relay:
    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}  # by id: pending and sent
        self.channels: dict[str, ControlChannel] = {}  # by session id
        self.pending: dict[str, list[Task]] = {}  # by publisher name

    # -- channels ------------------------------------------------------------------------------

    def bind(self, channel: ControlChannel) -> ControlChannel | None:
        """Make ``channel`` its session's control stream; returns the one it replaces (closed)."""
        old = self.channels.get(channel.session_id)
        self.channels[channel.session_id] = channel
        if old is not None:
            old.close()
        return old

    def unbind(self, channel: ControlChannel) -> bool:
        """Forget ``channel`` if it is still its session's current one (False: it was replaced)."""
        channel.close()
        if self.channels.get(channel.session_id) is channel:
            del self.channels[channel.session_id]
            return True
        return False

    def bound(self, session_id: str) -> bool:
        return session_id in self.channels

    # -- tasks ---------------------------------------------------------------------------------

    def send(self, task: Task, session_id: str) -> bool:
        """Send ``task`` on the session's control stream; False if it has none (still pending)."""
        channel = self.channels.get(session_id)
        if channel is None or channel.closed:
            return False
        self.tasks[task.id] = task
        task.session_id = session_id
        name, data = task.event()
        channel.send(name, data)
        return True

    def park(self, task: Task) -> None:
        self.tasks[task.id] = task
        task.session_id = None
        self.pending.setdefault(task.backend, []).append(task)

    def take_pending(self, backend: str) -> list[Task]:
        return self.pending.pop(backend, [])

    def forget(self, task: Task, *, cancel: bool) -> None:
        """The task's caller is done with it (served, failed, left or timed out). ``cancel`` tells
        its publisher to stop, if it had been sent one."""
        self.tasks.pop(task.id, None)
        queue = self.pending.get(task.backend)
        if queue is not None and task in queue:
            queue.remove(task)
            if not queue:
                del self.pending[task.backend]
        if cancel and task.session_id is not None:
            channel = self.channels.get(task.session_id)
            if channel is not None:
                channel.send("cancel", {"task_id": task.id})

    def in_flight(self, session_id: str) -> list[Task]:
        return [t for t in self.tasks.values() if t.session_id == session_id and not t.done.done()]

    def renew(self, task: Task) -> None:
        """A new id for a task going back to pending: a result for the old one is refused."""
        self.tasks.pop(task.id, None)
        task.id = "t_" + secrets.token_hex(12)
        task.session_id = None

    # -- results -------------------------------------------------------------------------------

    def _task(self, session_id: str, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None or task.session_id != session_id:
            raise UnknownTask(
                f"no task '{task_id}' in flight for this session (finished, cancelled or re-sent)"
            )
        if task.done.done():
            raise Conflict(f"task '{task_id}' has already ended")
        return task

    def chunks(self, session_id: str, task_id: str, seq: Any, chunks: Any, done: Any = False) -> int:
        """A streamed task's next chunks, in order; ``done`` ends the stream with them (the same
        as a ``{"status": 200}`` result after them, one post fewer)."""
        task = self._task(session_id, task_id)
        if not task.stream or task.frames is None:
            raise Conflict(f"task '{task_id}' is not a streamed call: post its result instead")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq != task.seq:
            raise Conflict(f"chunk post {seq!r} out of order: expected seq {task.seq}", param="seq")
        if not isinstance(chunks, list) or not all(isinstance(c, dict) for c in chunks):
            raise InvalidRequest("chunks must be a list of OpenAI stream chunk objects", param="chunks")
        task.seq += 1
        for chunk in chunks:
            if chunk.get("usage"):
                task.usage = usage_of(chunk) or task.usage
            task.frames.put_nowait(encode(chunk))
        if chunks:
            task.produced = True
        if done is True:
            task.frames.put_nowait(_END)
            task.done.set_result(None)
            self.tasks.pop(task.id, None)
        return len(chunks)

    def result(self, session_id: str, task_id: str, payload: Mapping[str, Any]) -> None:
        task = self._task(session_id, task_id)
        error = payload.get("error")
        if error is not None:
            task.fail(_publisher_error(task, error))
            self.tasks.pop(task.id, None)
            return
        status = payload.get("status")
        if status != 200:
            raise InvalidRequest("a result is {'status': 200, ...} or {'error': {...}}", param="status")
        reply: Reply | None = None
        if task.kind == "infer" and not task.stream:
            body = payload.get("body")
            if not isinstance(body, dict):
                raise InvalidRequest(
                    "the result of a call that was not streamed needs its 'body'", param="body"
                )
            reply = Reply(body=orjson.dumps(body), headers={}, usage=usage_of(body))
        if task.frames is not None:
            task.frames.put_nowait(_END)
        task.done.set_result(reply)
        self.tasks.pop(task.id, None)


def _publisher_error(task: Task, error: Any) -> UpstreamError:
    if not isinstance(error, dict):
        return UpstreamStatusError(
            f"publisher '{task.backend}': {error}", backend=task.backend, upstream_status=502
        )
    status = error.get("status")
    message = str(error.get("message") or "the publisher's backend failed")
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        status = 502
    return UpstreamStatusError(
        f"publisher '{task.backend}': {message}", backend=task.backend, upstream_status=status
    )


class RelayStream:
    """A ReplyStream over a streamed task: frames as the publisher posts them, then ``[DONE]``.
    Until its first frame arrives it is bounded by the call's deadline (the router's prefetch
    waits for that frame); after that the publisher's liveness bounds it (a publisher that goes
    away breaks it)."""

    def __init__(self, task: Task, forget: Callable[[Task], None], clock: Clock, deadline: float) -> None:
        self.task = task
        self._forget = forget
        self._clock = clock
        self._deadline = deadline
        self.headers: Mapping[str, str] = {}
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
        self._forget(self.task)
        yield DONE

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._forget(self.task)
