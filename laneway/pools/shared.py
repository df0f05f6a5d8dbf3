"""A pool whose slots are counted across the cluster: ``SharedPool``, the cluster mode's ``Pool``.

A backend with ``slots: N`` never has more than N calls in flight across all replicas. The count
and the queue live in a ``Ledger`` every replica asks (``laneway.cluster.slots.RedisSlots``):

- ``acquire`` asks the ledger for a slot: granted at once (a lease, whose id is the request's
  ticket), refused (the cluster's queue is full: ``QueueFull``), or queued in the cluster's fair
  queue. A queued request waits here, on an event, until the ledger grants its ticket (the bus
  brings ``slot.granted``: ``granted``) or its queue deadline passes. Priority and the turns
  between callers are the cluster's, not this replica's.
- a slot's release tells the ledger off the request path (the answer is already on its way); the
  ledger hands the slot to the next ticket, on whichever replica it waits.
- **spare leases**: while nobody in the cluster waits for the pool, a released slot's lease is kept
  here as a spare and the next acquire takes it without asking the ledger, so an uncontended pool
  costs no Redis round trip per request. Spares still count in the cluster's total (they are
  leases), so the bound always holds. The moment anyone queues for the pool, every replica is told
  (``slot.wanted``) and gives its spares back; while requests wait, every release goes to the
  ledger, which serves the cluster's queue in its order. Each heartbeat a replica keeps only as
  many spares as its recent peak of calls needs, so an idle replica holds none; and never more
  than its local share (below), so that what it runs from spares when Redis goes stays within it.
- ``sync`` (every heartbeat, ``SlotKeeper``) renews the leases held here, so they lapse only when
  this replica stops renewing them (killed: they come back to the others within the lease TTL),
  and catches up on what a lost message did not say.

Redis away: a pool that cannot reach its ledger serves from **a local share** of its slots
(``slots // live replicas``, at least 1), with a local fair queue, and says so once in the log.
When the ledger answers again (the next ``sync``), the leases held here are re-taken, the slots
released meanwhile given back, the requests still waiting queued in the cluster again, and the pool
counts cluster-wide again: nothing to restart.

Invariants between two awaits: every waiting request is in ``_waiting`` (by ticket) and in the
local queue ``_queue`` (whose order only matters while alone); a lease in ``_held`` is this
replica's (held by a request, granted to one that has not woken yet, or spare: then it is in
``_spare`` too); no spare is kept while the pool is contended; a request that leaves takes its
ticket out of the ledger (or gives its lease back, if it was granted meanwhile) before its
exception goes on, so a slot is never leaked for longer than a lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from laneway.clock import Clock, within
from laneway.latency import DEFAULT_SIZE
from laneway.pools.ledger import FULL, GRANTED, HOLDS, QUEUED, Answer, Ledger
from laneway.pools.pool import Bounds, PoolStatistics, Slot
from laneway.pools.queue import FairQueue, Waiter, assign
from laneway.storage.errors import StoreUnavailable

log = logging.getLogger("laneway.pools")


@dataclass(eq=False)
class _Request(Waiter):
    ticket: str = ""
    granted: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class SharedPool(Bounds):
    """The same face as ``Pool`` (``acquire``, ``configure``, ``statistics``, ``queued``,
    ``active``), over the cluster's ``ledger``."""

    def __init__(
        self,
        name: str,
        *,
        slots: int,
        queue_size: int,
        queue_timeout: float,
        clock: Clock,
        ledger: Ledger,
        window: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__(
            name, slots=slots, queue_size=queue_size, queue_timeout=queue_timeout, clock=clock, window=window
        )
        self._ledger = ledger
        self._held: set[str] = set()  # leases of this replica: its requests' and its spares
        self._spare: list[str] = []  # held leases no request uses now (a subset of _held)
        self._peak = 0  # the most leases in use here since the last sync (spares kept for it)
        self._waiting: dict[str, _Request] = {}  # ticket -> request queued here
        self._queue: FairQueue[_Request] = FairQueue()  # the same requests, in local order
        self._gone: set[str] = set()  # released while the ledger was away: to give back
        # Tickets whose requests are leaving at their deadline: the ledger's answer to the leave
        # says whether the slot is theirs, not a grant message that crosses it.
        self._leaving: set[str] = set()
        # Tickets whose acquire is on its way to the ledger, and those of them a grant message
        # reached first (the ledger queued the ticket and another replica's release granted it
        # before this replica read the answer): theirs as soon as the answer is read.
        self._asking: set[str] = set()
        self._early: set[str] = set()
        self._alone: str | None = None  # why the ledger cannot be reached (None: it can)
        self._replicas = 1  # live replicas, as of the last sync
        self._cluster_held = 0  # as of the ledger's last answer
        self._cluster_queued = 0
        self._elsewhere = 0  # requests other replicas have queued (as last heard)
        self.next_lapse: float | None = None  # as of the last sync
        self._background: set[asyncio.Task[None]] = set()

    # -- what ranking reads on every request (no I/O) ------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue) if self._alone else max(self._cluster_queued, len(self._queue))

    @property
    def active(self) -> int:
        if self._alone:
            return self.in_use
        return max(self._cluster_held - len(self._spare), self.in_use)

    @property
    def _contended(self) -> bool:
        """Someone in the cluster waits for this pool (as last heard): no spares kept."""
        return self._cluster_queued > 0

    @property
    def in_use(self) -> int:
        """Leases this replica's requests hold (not its spares)."""
        return len(self._held) - len(self._spare)

    @property
    def alone(self) -> bool:
        """The ledger cannot be reached: serving from the local share."""
        return self._alone is not None

    def share(self) -> int:
        """The slots this replica may use alone: its share of the pool's, at least one."""
        return max(1, self._slots // self._replicas)

    # -- acquiring -----------------------------------------------------------------------------

    def configure(self, *, slots: int, queue_size: int, queue_timeout: float) -> None:
        self._bound(slots, queue_size, queue_timeout)
        if self._alone:
            self._assign_alone()

    async def acquire(self, caller: str, priority: int = 0) -> Slot:
        if self._spare and not self._contended and not self._alone:
            return self._serve(self._spare.pop(), caller, 0.0)  # no round trip: nobody waits
        ticket = self._ledger.ticket()
        if not self._alone:
            answer = await self._ask(ticket, caller, priority)
            if answer is not None:
                if answer.outcome == GRANTED:
                    self._held.add(ticket)
                    return self._serve(ticket, caller, 0.0)
                if answer.outcome == FULL:
                    raise self._full(answer.queued)
                return await self._wait(self._enqueue(ticket, caller, priority))
        if self.in_use < self.share() and not self._queue:
            self._held.add(ticket)
            return self._serve(ticket, caller, 0.0)
        if len(self._queue) >= self._queue_size:
            raise self._full(len(self._queue))
        return await self._wait(self._enqueue(ticket, caller, priority))

    async def _ask(self, ticket: str, caller: str, priority: int) -> Answer | None:
        """The ledger's answer to an acquire (None: it cannot be reached; this pool is alone now).
        A grant that reached this replica before the answer (another replica's release gave the
        just-queued ticket its slot) makes it granted. An acquire cancelled on its way leaves
        nothing behind: its ticket is taken out, or its slot given back."""
        self._asking.add(ticket)
        try:
            answer = await self._ledger.acquire(
                self.name, self._slots, ticket, caller, priority, self._queue_size
            )
        except StoreUnavailable as exc:
            if ticket in self._early:
                self._gone.add(ticket)  # granted after all: given back when the ledger returns
            self._go_alone(exc.message)
            return None
        except BaseException:
            self._spawn(self._give_back(ticket))
            raise
        finally:
            self._asking.discard(ticket)
            early = ticket in self._early
            self._early.discard(ticket)
        self._seen(answer)
        if early and answer.outcome == QUEUED:
            return replace(answer, outcome=GRANTED)
        return answer

    def _enqueue(self, ticket: str, caller: str, priority: int) -> _Request:
        request = _Request(caller, priority, self._clock.monotonic(), ticket)
        self._waiting[ticket] = request
        self._queue.push(request)
        return request

    async def _wait(self, request: _Request) -> Slot:
        timeout = self._queue_timeout
        try:
            await within(self._clock, timeout, request.ready.wait())
        except TimeoutError:
            if not request.granted and not await self._leave_at_deadline(request):
                raise self._expired(timeout, self.queued) from None
        except BaseException as exc:
            if request.granted:
                self._release(request.ticket)  # handed a slot as we left: hand it on
            else:
                self._forget(request)
                if not self._alone:  # its ticket out of the cluster's queue (its lease, if granted)
                    self._spawn(self._give_back(request.ticket))
            if isinstance(exc, asyncio.CancelledError):
                self._cancelled += 1
            raise
        return self._serve(request.ticket, request.caller, self._clock.monotonic() - request.queued_at)

    async def _leave_at_deadline(self, request: _Request) -> bool:
        """The queue deadline passed: out of the queue. True if the slot arrived meanwhile (the
        ledger granted it, the message is on its way): then it is used rather than refused."""
        self._forget(request)
        if self._alone:
            return False
        self._leaving.add(request.ticket)
        try:
            answer = await self._ledger.leave(self.name, self._slots, request.ticket, give_back=False)
        except StoreUnavailable as exc:
            self._gone.add(request.ticket)  # granted or not: nothing of it may stay in the ledger
            self._go_alone(exc.message)
            return False
        finally:
            self._leaving.discard(request.ticket)
        self._seen(answer)
        if answer.outcome == HOLDS:
            self._held.add(request.ticket)
            request.granted = True
        return request.granted

    def _forget(self, request: _Request) -> None:
        self._waiting.pop(request.ticket, None)
        self._queue.remove(request)

    def _serve(self, lease: str, caller: str, waited: float) -> Slot:
        self._peak = max(self._peak, self.in_use)
        self._served_after(waited)
        return Slot(self, caller, waited, lease)

    # -- what the ledger says ------------------------------------------------------------------

    def granted(self, ticket: str) -> None:
        """The ledger granted ``ticket`` (the bus's ``slot.granted``, or ``sync``): its request
        holds the slot from now on. A ticket nobody waits for any more gives its slot back."""
        request = self._waiting.pop(ticket, None)
        if request is None:
            if ticket in self._asking:
                self._early.add(ticket)  # the acquire's answer, once read, finds it granted
            elif ticket not in self._held and ticket not in self._leaving:
                self._spawn(self._give_back(ticket))
            return
        self._queue.remove(request)
        self._held.add(ticket)
        request.granted = True
        request.ready.set()

    def _seen(self, answer: Answer) -> None:
        self._cluster_held, self._cluster_queued = answer.held, answer.queued
        self._replicas = max(1, answer.replicas)
        self._elsewhere = answer.elsewhere
        for ticket in answer.granted:
            self.granted(ticket)
        if self._contended:
            self._give_back_spares()

    def wanted(self, replica: str | None = None) -> None:
        """``replica`` queued for this pool (the bus's ``slot.wanted``, sent when a replica's
        first request queues): the spares kept here go back to the ledger, which hands them to
        the queue; and if it is another replica, this one's releases go to the cluster's queue
        too, not to its own waiters first."""
        self._cluster_queued = max(self._cluster_queued, 1)
        if replica is not None and replica != self._ledger.replica:
            self._elsewhere = max(self._elsewhere, 1)
        self._give_back_spares()

    def _give_back_spares(self) -> None:
        spares, self._spare = self._spare, []
        for lease in spares:
            self._held.discard(lease)
            self._spawn(self._give_back(lease))

    # -- releasing -----------------------------------------------------------------------------

    def _release(self, lease: str | None = None) -> None:
        """A slot came back (``Slot.release``). The ledger is told off the request path."""
        if lease is None or lease not in self._held:
            return
        if not (self._alone or self._contended or self._queue) and len(self._held) <= self.share():
            # Kept for the next call here: nobody else waits for it. Never more than this
            # replica's share, so that should Redis go, what it then runs from its spares stays
            # within the share it would run alone.
            self._spare.append(lease)
            return
        self._held.discard(lease)
        if self._alone:
            self._gone.add(lease)  # its lease may still be in the ledger: given back on return
            self._assign_alone()
        elif self._queue and not self._elsewhere:
            self._hand_over(lease)
        else:
            self._spawn(self._give_back(lease))

    def _hand_over(self, lease: str) -> None:
        """Every request the cluster has queued for this pool waits here (as of the ledger's last
        answer): the slot goes to the next of them at once, as the ledger would give it, and the
        ledger is told off the path (the lease becomes the ticket's). A request that queued on
        another replica since is served after at most the hand-overs made before this one hears
        of it: within one grant per replica, as the cluster's fairness promises."""
        request = self._queue.pop()
        assert request is not None  # the caller saw the queue non-empty
        self._waiting.pop(request.ticket, None)
        self._held.add(request.ticket)
        self._cluster_queued -= 1
        request.granted = True
        request.ready.set()
        self._spawn(self._transfer(lease, request.ticket))

    async def _transfer(self, lease: str, ticket: str) -> None:
        try:
            self._seen(await self._ledger.transfer(self.name, self._slots, lease, ticket))
        except StoreUnavailable as exc:
            self._gone.add(lease)  # may still be in the ledger: given back on its return
            self._go_alone(exc.message)

    async def _give_back(self, ticket: str) -> None:
        """Release the lease ``ticket`` holds, or take the ticket out of the queue."""
        try:
            self._seen(await self._ledger.leave(self.name, self._slots, ticket, give_back=True))
        except StoreUnavailable as exc:
            self._gone.add(ticket)
            self._go_alone(exc.message)

    # -- the ledger away, and back ---------------------------------------------------------------

    def _go_alone(self, why: str) -> None:
        if self._alone is None:
            log.warning(
                "pool '%s' serves from its local share of %d of its %d slots while the cluster's "
                "count cannot be reached: %s",
                self.name,
                self.share(),
                self._slots,
                why,
            )
        self._alone = why
        for lease in self._spare:  # not used while alone; given back when the ledger answers again
            self._held.discard(lease)
            self._gone.add(lease)
        self._spare = []
        self._assign_alone()

    def _assign_alone(self) -> None:
        for request in assign(self._queue, self.share() - self.in_use):
            self._waiting.pop(request.ticket, None)
            self._held.add(request.ticket)
            request.granted = True
            request.ready.set()

    async def sync(self) -> None:
        """Renew this replica's leases, give back what was released while the ledger was away,
        (re-)queue the tickets waiting here, and take the grants a lost message did not bring.
        After an outage this is the way back to counting cluster-wide."""
        # Spares beyond the recent peak of calls go back: an idle replica keeps none.
        keep = 0 if self._contended else max(0, min(self._peak, self.share()) - self.in_use)
        while len(self._spare) > keep:
            lease = self._spare.pop(0)
            self._held.discard(lease)
            self._gone.add(lease)
        self._peak = self.in_use
        queued = [(r.ticket, r.priority, r.caller) for r in self._queue]
        gone = sorted(self._gone)
        try:
            synced = await self._ledger.sync(self.name, self._slots, sorted(self._held), gone, queued)
        except StoreUnavailable as exc:
            self._go_alone(exc.message)
            return
        self._gone.difference_update(gone)
        self._replicas = synced.replicas
        self._cluster_held, self._cluster_queued = synced.held, synced.queued
        self._elsewhere = synced.elsewhere
        if self._contended:
            self._give_back_spares()  # a slot.wanted this replica did not hear
        self.next_lapse = synced.next_lapse
        if self._alone is not None:
            self._alone = None
            log.info("pool '%s' counts its %d slots across the cluster again", self.name, self._slots)
        for ticket in synced.granted:
            self.granted(ticket)

    @property
    def busy(self) -> bool:
        """Has this replica anything in the ledger to keep up (leases, tickets, debts)?"""
        return bool(self._held or self._waiting or self._gone or self._alone)

    # -- background work -------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Wait for the ledger calls under way (releases): a replica that stops gives its slots
        back rather than let them lapse."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- reading -------------------------------------------------------------------------------

    async def holders(self) -> dict[str, dict[str, int]]:
        """Which replica holds and queues what, read from the cluster's count now (an operator's
        view: ``/admin/pools``). Spare leases count as held: they are. Empty when it cannot be
        read."""
        try:
            census = await self._ledger.census(self.name)
        except StoreUnavailable:
            return {}
        return {replica: {"held": h, "queued": q} for replica, (h, q) in sorted(census.items())}

    def statistics(self) -> PoolStatistics:
        return self._statistics(
            self.active,
            self.queued,
            self._queue.by_caller(),
            scope="local share" if self._alone else "cluster",
            active_here=self.in_use,
            queued_here=len(self._queue),
        )

    def __repr__(self) -> str:
        where = "alone" if self._alone else "cluster"
        return (
            f"<SharedPool {self.name} ({where}): {self.active} active, {self.queued} queued; "
            f"here {self.in_use} active, {len(self._spare)} spare, {len(self._queue)} queued>"
        )


class SlotKeeper:
    """Every ``heartbeat``, ``sync`` the shared pools that have something in the ledger; sooner
    when a pool with requests waiting here has a lease about to lapse (a dead replica's slot is
    handed on when its lease lapses, not a heartbeat later)."""

    def __init__(self, pools: Callable[[], Iterable[SharedPool]], clock: Clock, heartbeat: float) -> None:
        self._pools = pools
        self._clock = clock
        self._heartbeat = heartbeat

    async def sync_all(self) -> None:
        pools = [pool for pool in self._pools() if pool.busy]
        await asyncio.gather(*(pool.sync() for pool in pools))

    async def run(self) -> None:
        while True:
            try:
                await self.sync_all()
            except Exception:  # one bad pass must not stop the leases from being renewed
                log.exception("renewing the pools' leases failed")
            wait = self._heartbeat
            for pool in self._pools():
                if pool.queued and pool.next_lapse is not None:
                    wait = min(wait, pool.next_lapse + 0.01)
            await self._clock.sleep(max(wait, 0.01))
