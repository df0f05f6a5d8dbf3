"""A bounded pool of slots in front of a backend (or one lane), with the fair-share queue.

Shaped after httpcore's ``connection_pool.py``:

- the state is plain data: a count of held slots and a ``FairQueue`` of waiters;
- the one decision, "which waiters get the free slots now", is ``queue.assign``, a synchronous
  function run after every change (a slot released, the pool resized); the pool only applies its
  answer: count the slots as held and wake the chosen waiters;
- a waiter that leaves for any reason (cancelled, timed out, anything else) is taken out of the
  queue before the exception goes on; one that was handed a slot at the same moment it was
  cancelled hands the slot on to the next waiter, so a slot is never leaked.

Invariants, true between any two awaits:

- ``0 <= active``; ``active <= slots`` except right after the pool was shrunk (then no grants
  happen until enough slots came back);
- a free slot and a waiter never coexist: ``active < slots`` implies the queue is empty. So a
  request that finds a free slot takes it at once, and one that finds none queues;
- ``active`` counts slots held by callers *and* slots granted to waiters that have not woken up
  yet; a granted waiter is no longer in the queue.

The queue has its own deadline (``queue_timeout``, on the injected clock): time spent queued does
not eat into the call's own timeout, which the router applies once the slot is held. The pool is
for one event loop; it takes no locks because nothing between two awaits can interleave.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Protocol

from laneway.clock import Clock, within
from laneway.errors import QueueFull, QueueTimeout
from laneway.latency import DEFAULT_SIZE, LatencyWindow
from laneway.pools.queue import FairQueue, Waiter, assign


@dataclass(frozen=True)
class PoolStatistics:
    name: str
    slots: int
    active: int
    queued: int
    queued_by_caller: dict[str, int]
    wait_p50: float | None  # seconds, over a window of recent waits of served requests
    wait_p95: float | None
    served: int  # acquired a slot (counters since start)
    rejected: int  # QueueFull
    timed_out: int  # QueueTimeout
    cancelled: int  # caller gave up while queued
    # "replica": this process's own pool; "cluster": slots and queue counted across the cluster
    # (``pools.shared``); "local share": the cluster's count cannot be reached, this replica serves
    # from its share. Then ``active_here``/``queued_here`` are this replica's part.
    scope: str = "replica"
    active_here: int | None = None
    queued_here: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class _Request(Waiter):
    """A queued ``acquire``: ``granted`` is set (and ``ready`` with it) when the pool hands it a
    slot; from then on the slot counts as active and is the request's to use or to hand on."""

    granted: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class _Releases(Protocol):
    name: str

    def _release(self, lease: str | None = None) -> None: ...


class Slot:
    """Held while the call runs; ``release()`` (idempotent) frees it for the next waiter. Also an
    async context manager (``async with await pool.acquire(...)``), which releases it at the end
    of the block unless it was handed on (``hand_on``) to whoever keeps using it after the block.
    ``lease``: the slot's id in the cluster's count (``pools.shared``); None in a local pool."""

    __slots__ = ("_pool", "_released", "caller", "lease", "waited")

    def __init__(self, pool: _Releases, caller: str, waited: float, lease: str | None = None) -> None:
        self._pool = pool
        self._released = False
        self.caller = caller
        self.waited = waited  # seconds spent queued for this slot
        self.lease = lease

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if self._released:
            return  # a second release must not free somebody else's slot
        self._released = True
        self._pool._release(self.lease)

    def hand_on(self) -> Slot:
        """Give the slot to a new owner: the returned handle holds it (its release frees it), this
        one is spent (its release, or the end of its ``async with``, frees nothing). So a slot
        always has exactly one owner: a stream that holds its slot to its end takes it over from
        the block that acquired it."""
        if self._released:
            raise RuntimeError(f"{self!r} cannot be handed on: it was released")
        self._released = True
        return Slot(self._pool, self.caller, self.waited, self.lease)

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Slot {self._pool.name} for {self.caller}: {state}>"


def _check(slots: int, queue_size: int, queue_timeout: float) -> None:
    if slots < 1:
        raise ValueError("a pool has at least one slot")
    if queue_size < 0:
        raise ValueError("a pool's queue_size cannot be negative")
    if not queue_timeout > 0:
        raise ValueError("a pool's queue_timeout must be positive")


class Bounds:
    """What every pool has, whoever counts its slots (this process: ``Pool``; the cluster:
    ``pools.shared.SharedPool``): its name and bounds, the window of recent waits, the counts of
    what became of its requests, and the errors that refuse one."""

    def __init__(
        self, name: str, *, slots: int, queue_size: int, queue_timeout: float, clock: Clock, window: int
    ) -> None:
        _check(slots, queue_size, queue_timeout)
        self.name = name
        self._slots, self._queue_size, self._queue_timeout = slots, queue_size, queue_timeout
        self._clock = clock
        self._waits = LatencyWindow(window)
        self._served = self._rejected = self._timed_out = self._cancelled = 0

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def queue_size(self) -> int:
        return self._queue_size

    @property
    def queue_timeout(self) -> float:
        return self._queue_timeout

    def _bound(self, slots: int, queue_size: int, queue_timeout: float) -> None:
        _check(slots, queue_size, queue_timeout)
        self._slots, self._queue_size, self._queue_timeout = slots, queue_size, queue_timeout

    def _served_after(self, waited: float) -> None:
        self._served += 1
        self._waits.record(waited)

    def _full(self, queued: int) -> QueueFull:
        self._rejected += 1
        return QueueFull(
            f"Pool '{self.name}' is busy: {queued} requests already wait for its "
            f"{self._slots} slots; try again shortly",
            retry_after=self._retry_after(),
        )

    def _expired(self, timeout: float, queued: int) -> QueueTimeout:
        self._timed_out += 1
        return QueueTimeout(
            f"Waited {timeout:g}s for a slot of pool '{self.name}' "
            f"({self._slots} slots, {queued} still queued); try again shortly",
            retry_after=self._retry_after(),
        )

    def _retry_after(self) -> float:
        """When asking again is worth it: about what recent callers waited for a slot, at least
        a second, at most the queue's own deadline."""
        p50 = self._waits.summary().p50
        return max(1.0, min(p50 if p50 is not None else 1.0, self._queue_timeout))

    def _statistics(
        self, active: int, queued: int, by_caller: dict[str, int], **scope: Any
    ) -> PoolStatistics:
        waits = self._waits.summary()
        return PoolStatistics(
            name=self.name,
            slots=self._slots,
            active=active,
            queued=queued,
            queued_by_caller=by_caller,
            wait_p50=waits.p50,
            wait_p95=waits.p95,
            served=self._served,
            rejected=self._rejected,
            timed_out=self._timed_out,
            cancelled=self._cancelled,
            **scope,
        )


class Pool(Bounds):
    """``slots`` calls at once; up to ``queue_size`` more wait, each at most ``queue_timeout``
    seconds of ``clock``, served by priority and then in turns between callers."""

    def __init__(
        self,
        name: str,
        *,
        slots: int,
        queue_size: int,
        queue_timeout: float,
        clock: Clock,
        window: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__(
            name, slots=slots, queue_size=queue_size, queue_timeout=queue_timeout, clock=clock, window=window
        )
        self._queue: FairQueue[_Request] = FairQueue()
        self._active = 0

    @property
    def queued(self) -> int:
        """Waiting now: what ranking reads on every request (``statistics()`` is for people)."""
        return len(self._queue)

    @property
    def active(self) -> int:
        """Slots held now (ranking reads it too)."""
        return self._active

    def configure(self, *, slots: int, queue_size: int, queue_timeout: float) -> None:
        """Resize in place. More slots serve waiters at once; fewer slots take effect as held ones
        come back (nobody is interrupted). A smaller ``queue_size`` refuses newcomers but keeps
        who already waits; a new ``queue_timeout`` applies to requests queued from now on."""
        self._bound(slots, queue_size, queue_timeout)
        self._assign()

    async def acquire(self, caller: str, priority: int = 0) -> Slot:
        """Wait for a slot: at once if one is free and nobody waits; else queued. Raises
        ``QueueFull`` at once when ``queue_size`` callers already wait; ``QueueTimeout`` after
        ``queue_timeout`` seconds of the injected clock; ``CancelledError`` propagates at once
        (the caller left) and the request is gone from the queue."""
        if self._active < self._slots and not self._queue:
            self._active += 1
            return self._serve(caller, 0.0)
        if len(self._queue) >= self._queue_size:
            raise self._full(len(self._queue))
        # By the invariant every slot is taken: nothing can be assigned until one comes back.
        request = _Request(caller, priority, self._clock.monotonic())
        timeout = self._queue_timeout  # ours to keep, even if the pool is reconfigured meanwhile
        self._queue.push(request)
        try:
            await within(self._clock, timeout, request.ready.wait())
        except TimeoutError:
            if not request.granted:
                self._queue.remove(request)
                raise self._expired(timeout, len(self._queue)) from None
            # The slot arrived at the deadline: it is ours, so use it rather than refuse.
        except BaseException as exc:
            if request.granted:
                self._release()  # handed a slot as we left: hand it on, never leak it
            else:
                self._queue.remove(request)
            if isinstance(exc, asyncio.CancelledError):
                self._cancelled += 1
            raise
        return self._serve(caller, self._clock.monotonic() - request.queued_at)

    def statistics(self) -> PoolStatistics:
        return self._statistics(self._active, len(self._queue), self._queue.by_caller())

    async def aclose(self) -> None:
        """Nothing to finish: this process alone counts its slots."""

    def __repr__(self) -> str:
        return f"<Pool {self.name}: {self._active} active, {len(self._queue)} queued>"

    # -- the state changes; each is synchronous ------------------------------------------------

    def _serve(self, caller: str, waited: float) -> Slot:
        """The slot (already counted in ``active``) goes to its caller."""
        self._served_after(waited)
        return Slot(self, caller, waited)

    def _release(self, lease: str | None = None) -> None:
        self._active -= 1
        self._assign()

    def _assign(self) -> None:
        """Apply ``assign``'s answer: the chosen waiters hold their slots from now on (they wake
        on the next loop iteration)."""
        for request in assign(self._queue, self._slots - self._active):
            self._active += 1
            request.granted = True
            request.ready.set()
