"""Pools: the fair-share assignment as plain data, then the pool on a real event loop with a
``ManualClock`` (queue deadlines move only when the test says so), cancellation in the middle of
everything, and the registry.

Nothing here sleeps on the wall clock or asserts on timing: "who got a slot when" is recorded as
an order of grants, and the event loop's FIFO scheduling makes that order the same on every run.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

import pytest

from laneway.clock import ManualClock
from laneway.config.schema import BackendConfig
from laneway.errors import LanewayError, QueueFull, QueueTimeout, UpstreamError
from laneway.pools import FairQueue, Pool, PoolRegistry, Slot, Waiter, assign

LONG = 3600.0  # a queue deadline no test reaches unless it advances the clock on purpose


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def settle(rounds: int = 10) -> None:
    """Let every task that can run, run (deterministic: the loop's ready queue is FIFO)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_pool(clock: ManualClock, *, slots: int = 1, queue_size: int = 1000, timeout: float = LONG) -> Pool:
    return Pool("gpu-1", slots=slots, queue_size=queue_size, queue_timeout=timeout, clock=clock)


def callers(waiters: list[Waiter]) -> list[str]:
    return [w.caller for w in waiters]


# --- the assignment step, without an event loop ------------------------------------------------


def test_assign_takes_turns_between_callers() -> None:
    queue: FairQueue[Waiter] = FairQueue()
    for _ in range(5):
        queue.push(Waiter("heavy"))
    queue.push(Waiter("light"))
    queue.push(Waiter("other"))
    assert callers(assign(queue, 5)) == ["heavy", "light", "other", "heavy", "heavy"]
    assert len(queue) == 2
    assert queue.by_caller() == {"heavy": 2}


def test_assign_is_fifo_within_a_caller() -> None:
    queue: FairQueue[Waiter] = FairQueue()
    mine = [Waiter("a", queued_at=float(i)) for i in range(4)]
    for i, waiter in enumerate(mine):
        queue.push(waiter)
        queue.push(Waiter("b", queued_at=float(i)))
    granted = assign(queue, 8)
    assert [w for w in granted if w.caller == "a"] == mine
    assert [w.queued_at for w in granted if w.caller == "b"] == [0.0, 1.0, 2.0, 3.0]


def test_assign_serves_higher_priority_first() -> None:
    queue: FairQueue[Waiter] = FairQueue()
    queue.push(Waiter("a", 0))
    queue.push(Waiter("b", 0))
    queue.push(Waiter("c", 5))
    queue.push(Waiter("d", 1))
    queue.push(Waiter("c", 5))
    queue.push(Waiter("e", -1))
    assert [(w.caller, w.priority) for w in assign(queue, 6)] == [
        ("c", 5),
        ("c", 5),
        ("d", 1),
        ("a", 0),
        ("b", 0),
        ("e", -1),
    ]
    assert not queue


def test_a_caller_who_starts_waiting_joins_the_back_of_the_rotation() -> None:
    queue: FairQueue[Waiter] = FairQueue()
    for caller in ("a", "a", "b", "b"):
        queue.push(Waiter(caller))
    assert callers(assign(queue, 1)) == ["a"]  # rotation now b, a
    queue.push(Waiter("c"))  # joins behind a
    assert callers(assign(queue, 4)) == ["b", "a", "c", "b"]


def test_assign_hands_out_no_more_than_is_free() -> None:
    queue: FairQueue[Waiter] = FairQueue()
    assert assign(queue, 3) == []
    queue.push(Waiter("a"))
    assert assign(queue, 0) == []
    assert len(queue) == 1


def test_remove_takes_one_waiter_out_and_keeps_the_others_places() -> None:
    queue: FairQueue[Waiter] = FairQueue()
    a1, a2, b1, c1 = Waiter("a"), Waiter("a"), Waiter("b"), Waiter("c")
    twin = Waiter("a")  # equal fields, another request: identity decides
    for waiter in (a1, a2, b1, c1):
        queue.push(waiter)
    assert not queue.remove(twin)
    assert queue.remove(b1)
    assert not queue.remove(b1)
    assert b1 not in queue
    assert a2 in queue
    assert len(queue) == 3
    assert queue.by_caller() == {"a": 2, "c": 1}
    assert assign(queue, 3) == [a1, c1, a2]
    assert repr(queue) == "<FairQueue: 0 waiting, 0 callers>"


# --- the acceptance test ----------------------------------------------------------------


class Recorder:
    """Requests that hold their slot until the test releases it, and the order slots were granted
    in. ``queued_at[key]`` is how many grants had happened when request ``key`` arrived."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.grants: list[tuple[str, int]] = []
        self.held: deque[Slot] = deque()
        self.queued_at: dict[tuple[str, int], int] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def send(self, caller: str, n: int, priority: int = 0) -> None:
        async def request() -> None:
            slot = await self.pool.acquire(caller, priority)
            self.grants.append((caller, n))
            self.held.append(slot)

        self.queued_at[(caller, n)] = len(self.grants)
        self.tasks.append(asyncio.create_task(request()))

    async def release_oldest(self) -> None:
        self.held.popleft().release()
        await settle()

    def lag(self, key: tuple[str, int]) -> int:
        """Grants from this request's arrival to its own, its own included (1: served next)."""
        return self.grants.index(key) + 1 - self.queued_at[key]


@pytest.mark.anyio
async def test_a_flood_from_one_caller_does_not_hold_up_another(clock: ManualClock) -> None:
    """One caller floods 200 requests at a pool of 2 slots; another sends 5, one at a time, while
    the flood drains. Each light request gets the second slot freed after it arrives: the flood
    costs it one grant, not 198."""
    pool = make_pool(clock, slots=2)
    rec = Recorder(pool)
    for n in range(200):
        rec.send("heavy", n)
    await settle()
    assert repr(pool) == "<Pool gpu-1: 2 active, 198 queued>"

    arrivals = {0: 0, 30: 1, 60: 2, 90: 3, 150: 4}  # releases done -> the light request sent then
    releases = 0
    while len(rec.grants) < 205:
        if releases in arrivals:
            rec.send("light", arrivals[releases])
            await settle()
        await rec.release_oldest()
        releases += 1

    light = [("light", n) for n in range(5)]
    positions = [rec.grants.index(key) + 1 for key in light]
    assert positions == [4, 34, 64, 94, 154]  # 1-based grant numbers, out of 205
    assert [rec.lag(key) for key in light] == [2, 2, 2, 2, 2]
    # Plain FIFO would have served the first light request after the whole queued flood (grant 201).
    heavy = [n for caller, n in rec.grants if caller == "heavy"]
    assert heavy == list(range(200))  # the flood itself stays in order
    while rec.held:
        await rec.release_oldest()
    await asyncio.gather(*rec.tasks)
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


@pytest.mark.anyio
async def test_a_burst_from_a_light_caller_alternates_with_the_flood(clock: ManualClock) -> None:
    """The light caller sends its 5 at once, behind 198 queued flood requests: from then on the
    grants alternate, so all 5 are served within the next 10 grants."""
    pool = make_pool(clock, slots=2)
    rec = Recorder(pool)
    for n in range(200):
        rec.send("heavy", n)
    await settle()
    for n in range(5):
        rec.send("light", n)
    await settle()
    assert pool.statistics().queued_by_caller == {"heavy": 198, "light": 5}

    while len(rec.grants) < 205:
        await rec.release_oldest()
    assert [rec.lag(("light", n)) for n in range(5)] == [2, 4, 6, 8, 10]
    assert rec.grants[2:12] == [x for n in range(5) for x in (("heavy", 2 + n), ("light", n))]
    while rec.held:
        await rec.release_oldest()
    await asyncio.gather(*rec.tasks)


@pytest.mark.anyio
async def test_priority_is_served_before_lower_classes(clock: ManualClock) -> None:
    pool = make_pool(clock)
    rec = Recorder(pool)
    rec.send("a", 0)
    await settle()
    rec.send("a", 1)
    rec.send("b", 0)
    rec.send("batch", 0, priority=-1)
    rec.send("vip", 0, priority=5)
    rec.send("c", 0, priority=1)
    await settle()
    while len(rec.grants) < 6:
        await rec.release_oldest()
    assert rec.grants == [("a", 0), ("vip", 0), ("c", 0), ("a", 1), ("b", 0), ("batch", 0)]
    await rec.release_oldest()
    await asyncio.gather(*rec.tasks)


# --- leaving the queue -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_caller_who_cancels_while_queued_never_runs(clock: ManualClock) -> None:
    pool = make_pool(clock)
    ran: list[str] = []

    async def call(caller: str) -> None:
        async with await pool.acquire(caller):
            ran.append(caller)
            await clock.sleep(1)

    first = asyncio.create_task(call("first"))
    await settle()
    quitter = asyncio.create_task(call("quitter"))
    patient = asyncio.create_task(call("patient"))
    await settle()
    assert pool.statistics().queued_by_caller == {"quitter": 1, "patient": 1}

    quitter.cancel()
    await settle()
    assert quitter.cancelled()
    assert repr(pool) == "<Pool gpu-1: 1 active, 1 queued>"
    clock.advance(1)
    await settle()
    clock.advance(1)
    await asyncio.gather(first, patient)
    assert ran == ["first", "patient"]
    stats = pool.statistics()
    assert (stats.served, stats.cancelled, stats.active, stats.queued) == (2, 1, 0, 0)


@pytest.mark.anyio
async def test_a_slot_granted_to_a_waiter_cancelled_at_that_moment_is_handed_on(clock: ManualClock) -> None:
    pool = make_pool(clock)
    holder = await pool.acquire("holder")
    ran: list[str] = []

    async def call(caller: str) -> None:
        slot = await pool.acquire(caller)
        ran.append(caller)
        slot.release()

    doomed = asyncio.create_task(call("doomed"))
    await settle()
    nxt = asyncio.create_task(call("next"))
    await settle()
    holder.release()  # assigns the slot to "doomed" now; it wakes on the next loop iteration...
    doomed.cancel()  # ...but it is cancelled first
    assert repr(pool) == "<Pool gpu-1: 1 active, 1 queued>"
    await asyncio.gather(doomed, nxt, return_exceptions=True)
    assert doomed.cancelled()
    assert ran == ["next"]
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


@pytest.mark.anyio
async def test_a_cancellation_storm_leaks_nothing(clock: ManualClock) -> None:
    """500 waiters of 7 callers on 4 slots, each call a few loop iterations of work; half of them
    cancelled at random (seeded) while slots keep coming back. Nobody cancelled while queued runs,
    everybody else does, and the pool ends empty."""
    pool = Pool("storm", slots=4, queue_size=1000, queue_timeout=LONG, clock=clock)
    rng = random.Random(20240611)
    state: dict[int, str] = {}
    ran: set[int] = set()

    async def call(i: int) -> None:
        state[i] = "queued"
        async with await pool.acquire(f"caller-{i % 7}", priority=i % 3 - 1):
            state[i] = "running"
            ran.add(i)
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
        state[i] = "done"

    tasks = [asyncio.create_task(call(i)) for i in range(500)]
    await asyncio.sleep(0)
    assert all(state[i] == "queued" or i in ran for i in range(500))
    cancelled_while_queued: set[int] = set()
    for k, i in enumerate(rng.sample(range(500), 250)):
        if state[i] == "queued":
            cancelled_while_queued.add(i)
        tasks[i].cancel()
        if k % 5 == 0:
            await asyncio.sleep(0)  # let the pool turn over between cancellations
    await asyncio.gather(*tasks, return_exceptions=True)

    assert len(cancelled_while_queued) > 150  # the storm hit the queue, not only finished calls
    assert not ran & cancelled_while_queued
    assert ran == set(range(500)) - cancelled_while_queued
    stats = pool.statistics()
    assert (stats.active, stats.queued, stats.queued_by_caller) == (0, 0, {})
    assert stats.served == len(ran)
    assert stats.cancelled == len(cancelled_while_queued)
    assert (stats.rejected, stats.timed_out) == (0, 0)
    assert repr(pool) == "<Pool storm: 0 active, 0 queued>"


# --- refusals and deadlines --------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_full_queue_refuses_at_once_with_retry_after(clock: ManualClock) -> None:
    pool = make_pool(clock, slots=1, queue_size=2)
    holder = await pool.acquire("a")
    waiting = [asyncio.create_task(pool.acquire("b")) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFull) as refused:
        await pool.acquire("c")
    err = refused.value
    assert err.retry_after >= 1
    assert err.headers() == {"retry-after": "1"}
    assert err.status == 429
    assert err.to_openai()["error"]["type"] == "rate_limit_error"
    assert err.to_openai()["error"]["code"] == "queue_full"
    assert isinstance(err, LanewayError)
    assert not isinstance(err, UpstreamError)
    assert "gpu-1" in err.message
    assert pool.statistics().rejected == 1
    assert repr(pool) == "<Pool gpu-1: 1 active, 2 queued>"

    holder.release()
    for waiter in waiting:  # one slot: each waiter in turn
        (await waiter).release()
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


@pytest.mark.anyio
async def test_queue_size_zero_serves_free_slots_and_never_queues(clock: ManualClock) -> None:
    pool = make_pool(clock, slots=1, queue_size=0)
    async with await pool.acquire("a"):
        with pytest.raises(QueueFull):
            await pool.acquire("b")
    async with await pool.acquire("b"):
        pass
    assert pool.statistics().served == 2


@pytest.mark.anyio
async def test_the_queue_deadline_runs_on_the_injected_clock(clock: ManualClock) -> None:
    pool = make_pool(clock, slots=1, timeout=30)
    holder = await pool.acquire("a")
    waiter = asyncio.create_task(pool.acquire("b"))
    await settle()
    clock.advance(29.5)
    await settle()
    assert not waiter.done()
    clock.advance(0.5)
    with pytest.raises(QueueTimeout) as timed_out:
        await waiter
    err = timed_out.value
    assert err.status == 503
    assert err.to_openai()["error"]["code"] == "queue_timeout"
    assert err.to_openai()["error"]["type"] == "service_unavailable"
    assert int(err.headers()["retry-after"]) >= 1
    assert not isinstance(err, UpstreamError)
    stats = pool.statistics()
    assert (stats.timed_out, stats.queued, stats.active) == (1, 0, 1)
    holder.release()
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


@pytest.mark.anyio
async def test_one_advance_expires_every_deadline_together(clock: ManualClock) -> None:
    pool = make_pool(clock, slots=1, timeout=10)
    holder = await pool.acquire("a")
    waiters = [asyncio.create_task(pool.acquire(f"c{i}")) for i in range(20)]
    await settle()
    clock.advance(10)
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, QueueTimeout) for r in results)
    assert pool.statistics().timed_out == 20
    holder.release()
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


@pytest.mark.anyio
async def test_a_slot_that_arrives_at_the_deadline_is_used(clock: ManualClock) -> None:
    pool = make_pool(clock, slots=1, timeout=5)
    holder = await pool.acquire("a")
    waiter = asyncio.create_task(pool.acquire("b"))
    await settle()
    holder.release()  # granted...
    clock.advance(5)  # ...and out of time, in the same instant
    slot = await waiter
    assert slot.waited == 5
    slot.release()
    stats = pool.statistics()
    assert (stats.served, stats.timed_out, stats.active) == (2, 0, 0)


# --- statistics, slots --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_statistics_count_and_measure_waits(clock: ManualClock) -> None:
    pool = make_pool(clock, slots=1, queue_size=2, timeout=60)
    empty = pool.statistics()
    assert (empty.wait_p50, empty.wait_p95, empty.served) == (None, None, 0)

    first = await pool.acquire("a")  # waited 0
    second = asyncio.create_task(pool.acquire("b"))
    third = asyncio.create_task(pool.acquire("b"))
    await settle()
    with pytest.raises(QueueFull):
        await pool.acquire("c")
    clock.advance(2)
    first.release()
    slot2 = await second  # waited 2
    clock.advance(3)
    slot2.release()
    slot3 = await third  # waited 5

    late = asyncio.create_task(pool.acquire("d"))
    quitter = asyncio.create_task(pool.acquire("e"))
    await settle()
    assert pool.statistics().queued_by_caller == {"d": 1, "e": 1}
    quitter.cancel()
    await settle()
    clock.advance(60)
    with pytest.raises(QueueTimeout):
        await late
    slot3.release()

    stats = pool.statistics()
    assert stats.wait_p50 == 2.0  # nearest rank over [0, 2, 5]
    assert stats.wait_p95 == 5.0
    assert (stats.served, stats.rejected, stats.timed_out, stats.cancelled) == (3, 1, 1, 1)
    assert stats.as_dict() == {
        "name": "gpu-1",
        "slots": 1,
        "active": 0,
        "queued": 0,
        "queued_by_caller": {},
        "wait_p50": 2.0,
        "wait_p95": 5.0,
        "served": 3,
        "rejected": 1,
        "timed_out": 1,
        "cancelled": 1,
        "scope": "replica",  # this process's pool: active and queued are all here
        "active_here": None,
        "queued_here": None,
    }


@pytest.mark.anyio
async def test_retry_after_follows_recent_waits(clock: ManualClock) -> None:
    pool = make_pool(clock, slots=1, queue_size=3, timeout=60)
    held = await pool.acquire("a")  # waited 0
    waiting = [asyncio.create_task(pool.acquire("b")) for _ in range(3)]
    await settle()
    clock.advance(7)
    for waiter in waiting:  # each waited 7
        held.release()
        held = await waiter
    assert pool.statistics().wait_p50 == 7.0  # nearest rank over [0, 7, 7, 7]
    refill = [asyncio.create_task(pool.acquire("b")) for _ in range(3)]
    await settle()
    with pytest.raises(QueueFull) as refused:
        await pool.acquire("c")
    assert refused.value.retry_after == 7.0
    assert refused.value.headers() == {"retry-after": "7"}
    pool.configure(slots=1, queue_size=3, queue_timeout=4)  # never more than the queue's deadline
    with pytest.raises(QueueFull) as refused:
        await pool.acquire("c")
    assert refused.value.retry_after == 4.0
    for waiter in refill:
        held.release()
        held = await waiter
    held.release()
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


@pytest.mark.anyio
async def test_release_is_idempotent(clock: ManualClock) -> None:
    pool = make_pool(clock, slots=2)
    mine = await pool.acquire("a")
    theirs = await pool.acquire("b")
    mine.release()
    mine.release()  # must not free "b"'s slot
    assert mine.released
    assert not theirs.released
    assert repr(pool) == "<Pool gpu-1: 1 active, 0 queued>"
    theirs.release()
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


@pytest.mark.anyio
async def test_a_slot_is_a_context_manager(clock: ManualClock) -> None:
    pool = make_pool(clock)
    async with await pool.acquire("a") as slot:
        assert repr(slot) == "<Slot gpu-1 for a: held>"
        assert repr(pool) == "<Pool gpu-1: 1 active, 0 queued>"
    assert repr(slot) == "<Slot gpu-1 for a: released>"
    with pytest.raises(RuntimeError):
        async with await pool.acquire("a"):
            raise RuntimeError("the call failed")
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


@pytest.mark.anyio
async def test_a_slot_handed_on_outlives_its_block_and_has_one_owner(clock: ManualClock) -> None:
    pool = make_pool(clock)  # one slot
    async with await pool.acquire("a") as slot:
        kept = slot.hand_on()
    assert repr(pool) == "<Pool gpu-1: 1 active, 0 queued>"  # the block's end freed nothing
    slot.release()  # the spent handle frees nothing either
    assert repr(pool) == "<Pool gpu-1: 1 active, 0 queued>"
    with pytest.raises(RuntimeError):
        slot.hand_on()
    waiter = asyncio.create_task(pool.acquire("b"))
    await asyncio.sleep(0)
    assert repr(pool) == "<Pool gpu-1: 1 active, 1 queued>"
    kept.release()  # the new owner's release is the one that counts
    (await waiter).release()
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


def test_a_pool_refuses_impossible_settings(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="slot"):
        Pool("x", slots=0, queue_size=1, queue_timeout=1, clock=clock)
    with pytest.raises(ValueError, match="queue_size"):
        Pool("x", slots=1, queue_size=-1, queue_timeout=1, clock=clock)
    with pytest.raises(ValueError, match="queue_timeout"):
        Pool("x", slots=1, queue_size=1, queue_timeout=0, clock=clock)


# --- the registry --------------------------------------------------------------------------------


def backend(**settings: object) -> BackendConfig:
    return BackendConfig.model_validate({"provider": "ollama", "base_url": "http://127.0.0.1:1", **settings})


def test_one_pool_per_backend_by_default(clock: ManualClock) -> None:
    pools = PoolRegistry(clock)
    config = backend(queue_size=7, queue_timeout=9)
    pool = pools.pool_for("gpu-1", "gpu-1/llama3.2:1b", config)
    assert pools.pool_for("gpu-1", "gpu-1/qwen3:8b", config) is pool
    assert (pool.name, pool.slots, pool.queue_size, pool.queue_timeout) == ("gpu-1", 4, 7, 9)
    other = pools.pool_for("gpu-2", "gpu-2/llama3.2:1b", backend(slots=2))
    assert other is not pool
    assert other.name == "gpu-2"
    assert [s.name for s in pools.statistics()] == ["gpu-1", "gpu-2"]
    assert pools.statistics()[1].slots == 2


def test_pool_lane_gives_every_lane_its_own_pool(clock: ManualClock) -> None:
    pools = PoolRegistry(clock)
    config = backend(pool="lane", slots=1)
    small = pools.pool_for("gpu-1", "gpu-1/llama3.2:1b", config)
    big = pools.pool_for("gpu-1", "gpu-1/qwen3:8b", config)
    assert small is not big
    assert pools.pool_for("gpu-1", "gpu-1/llama3.2:1b", config) is small
    assert [s.name for s in pools.statistics()] == ["gpu-1/llama3.2:1b", "gpu-1/qwen3:8b"]
    # Switching the backend to one shared pool starts over.
    shared = pools.pool_for("gpu-1", "gpu-1/llama3.2:1b", backend(slots=1))
    assert shared.name == "gpu-1"
    assert [s.name for s in pools.statistics()] == ["gpu-1"]


@pytest.mark.anyio
async def test_a_changed_config_resizes_the_pool_in_place(clock: ManualClock) -> None:
    pools = PoolRegistry(clock)
    pool = pools.pool_for("gpu-1", "gpu-1/m", backend(slots=1))
    held = await pool.acquire("a")
    waiters = [asyncio.create_task(pool.acquire("b")) for _ in range(3)]
    await settle()
    assert repr(pool) == "<Pool gpu-1: 1 active, 3 queued>"

    grown = pools.pool_for("gpu-1", "gpu-1/m", backend(slots=3, queue_timeout=5))
    assert grown is pool
    await settle()
    assert repr(pool) == "<Pool gpu-1: 3 active, 1 queued>"  # two waiters served at once
    assert (pool.slots, pool.queue_timeout) == (3, 5)

    shrunk = pools.pool_for("gpu-1", "gpu-1/m", backend(slots=1))
    assert shrunk is pool
    held.release()  # three held, one slot allowed: the waiter stays queued
    await settle()
    assert repr(pool) == "<Pool gpu-1: 2 active, 1 queued>"
    done = [w for w in waiters if w.done()]
    done[0].result().release()
    await settle()
    assert repr(pool) == "<Pool gpu-1: 1 active, 1 queued>"
    done[1].result().release()  # back under the bound: the last waiter gets its slot
    await settle()
    assert repr(pool) == "<Pool gpu-1: 1 active, 0 queued>"
    for waiter in waiters:
        if not waiter.result().released:
            waiter.result().release()
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"


@pytest.mark.anyio
async def test_a_removed_backend_leaves_its_waiters_their_pool(clock: ManualClock) -> None:
    pools = PoolRegistry(clock)
    pool = pools.pool_for("gpu-1", "gpu-1/m", backend(slots=1))
    held = await pool.acquire("a")
    waiter = asyncio.create_task(pool.acquire("b"))
    await settle()
    pools.remove_backend("gpu-1")
    pools.remove_backend("never-there")
    assert pools.statistics() == []
    held.release()
    slot = await waiter
    slot.release()
    assert repr(pool) == "<Pool gpu-1: 0 active, 0 queued>"
    assert pools.pool_for("gpu-1", "gpu-1/m", backend(slots=1)) is not pool
