"""The fair-share queue in front of a pool: plain data, no event loop, no I/O.

Who is served next is decided here and nowhere else:

1. **Priority first.** A waiter of a higher priority class is always served before any waiter of
   a lower one (0 is normal; the key's ``max_priority`` bounds what a caller may ask for).
2. **Round-robin between callers** within a priority class. Each class keeps its callers in a
   rotation (an ordered dict, caller -> that caller's waiters); the caller at the head is served
   next and then moves to the tail if it still has waiters. A caller who starts waiting joins at
   the tail. So with ``k`` callers waiting in a class, a newly queued caller is served within
   ``k`` grants of that class, however many requests the others have queued: a flood of 1,000
   requests from one caller costs another caller at most one grant per round.
3. **FIFO within a caller**: a caller's own requests are served in the order they were queued.

Invariants (checked by the tests, relied on by ``Pool``):

- every waiter in the queue is live: a waiter that leaves (cancelled, timed out) is removed at
  once, never skipped lazily, so ``len(queue)`` is exactly the number of callers waiting;
- no empty deque, no empty rotation: a caller with nothing queued is not in any rotation, and a
  priority class with no waiters does not exist;
- waiters are compared by identity (``eq=False``), so removing one never removes its twin.

``assign`` is the step the pool runs whenever a slot frees up or a waiter arrives: "given ``n``
free slots, which waiters get them now". It is synchronous and deterministic, touches nothing but
the queue it is given, and can be unit-tested without an event loop. Handing the slots over
(waking the waiters) is the pool's business.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar


@dataclass(eq=False)
class Waiter:
    """One request waiting for a slot. ``queued_at`` is on the pool's monotonic clock."""

    caller: str
    priority: int = 0
    queued_at: float = 0.0

    def __repr__(self) -> str:
        return f"<Waiter {self.caller} p{self.priority} @{self.queued_at:g}>"


W = TypeVar("W", bound=Waiter)


class FairQueue(Generic[W]):
    """Waiters by priority class, and within a class a rotation of callers, each FIFO."""

    def __init__(self) -> None:
        # priority -> rotation (head is served next) of caller -> that caller's waiters, oldest first
        self._classes: dict[int, OrderedDict[str, deque[W]]] = {}
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __contains__(self, waiter: object) -> bool:
        if not isinstance(waiter, Waiter):
            return False
        rotation = self._classes.get(waiter.priority)
        waiting = rotation.get(waiter.caller) if rotation is not None else None
        return waiting is not None and any(w is waiter for w in waiting)

    def push(self, waiter: W) -> None:
        """Queue ``waiter`` behind its caller's other waiters of its class; a caller who was not
        waiting in that class joins the tail of the rotation."""
        rotation = self._classes.setdefault(waiter.priority, OrderedDict())
        waiting = rotation.get(waiter.caller)
        if waiting is None:
            rotation[waiter.caller] = waiting = deque()
        waiting.append(waiter)
        self._len += 1

    def remove(self, waiter: W) -> bool:
        """Take ``waiter`` out wherever it is (it gave up). False if it was not queued (it was
        already assigned a slot, or removed before). The other callers keep their places."""
        rotation = self._classes.get(waiter.priority)
        if rotation is None:
            return False
        waiting = rotation.get(waiter.caller)
        if waiting is None:
            return False
        try:
            waiting.remove(waiter)  # by identity: waiters do not define equality
        except ValueError:
            return False
        self._len -= 1
        if not waiting:
            del rotation[waiter.caller]
            if not rotation:
                del self._classes[waiter.priority]
        return True

    def pop(self) -> W | None:
        """The next waiter to serve (and out of the queue), or None if nobody waits."""
        if not self._classes:
            return None
        priority = max(self._classes)
        rotation = self._classes[priority]
        caller, waiting = next(iter(rotation.items()))
        waiter = waiting.popleft()
        self._len -= 1
        if waiting:
            rotation.move_to_end(caller)  # served once this round: to the back of the rotation
        else:
            del rotation[caller]
            if not rotation:
                del self._classes[priority]
        return waiter

    def by_caller(self) -> dict[str, int]:
        """How many requests each caller has queued, over all priority classes."""
        counts: dict[str, int] = {}
        for rotation in self._classes.values():
            for caller, waiting in rotation.items():
                counts[caller] = counts.get(caller, 0) + len(waiting)
        return counts

    def __iter__(self) -> Iterator[W]:
        """Every queued waiter, highest priority first, rotation order, FIFO per caller. (Not the
        exact service order: serving rotates the callers.)"""
        for priority in sorted(self._classes, reverse=True):
            for waiting in self._classes[priority].values():
                yield from waiting

    def __repr__(self) -> str:
        return f"<FairQueue: {self._len} waiting, {len(self.by_caller())} callers>"


def assign(queue: FairQueue[W], free: int) -> list[W]:
    """Which waiters get the ``free`` slots now, in the order they are served. They are taken out
    of ``queue``; the caller of this function owns the slots it hands them."""
    granted: list[W] = []
    while len(granted) < free:
        waiter = queue.pop()
        if waiter is None:
            break
        granted.append(waiter)
    return granted
