"""Pool slots counted across replicas (``pools.shared`` on ``cluster.slots``), on this machine's Redis
under a namespace of each test's own. Each "replica" here is what a gateway builds: a ledger, a
bus whose ``slot.granted`` wakes its pools, its pools and their keeper, in one process; the
process tests (``test_slots_processes``) do it with real ``laneway serve`` replicas.

What holds: never more calls than slots across the replicas; the cluster's queue serves priority
first and takes turns between callers wherever they wait; a full queue refuses, a deadline
expires, a request that leaves never runs and leaks nothing; a replica that stops renewing (killed)
gives its slots back when their leases lapse; a missed grant is found by the next sync; Redis away
means a local share of the slots, and its return means counting across the cluster again."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from laneway.clock import ManualClock, SystemClock
from laneway.cluster.bus import RedisBus
from laneway.cluster.slots import RedisSlots
from laneway.errors import QueueFull, QueueTimeout
from laneway.pools import Slot
from laneway.pools.shared import SharedPool, SlotKeeper
from laneway.storage.redisstore import RedisBreaker, RedisStore
from tests.storage.test_redis_breaker import OwnRedis, own_redis

pytestmark = pytest.mark.anyio
REDIS_URL = os.environ.get("LANEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")


@dataclass(eq=False)
class Replica:
    """One replica's side of the cluster's slots."""

    name: str
    store: RedisStore
    bus: RedisBus
    ledger: RedisSlots
    clock: Any
    pools: dict[str, SharedPool] = field(default_factory=dict)
    loop: asyncio.Task[None] | None = None

    def pool(
        self, name: str = "gpu", slots: int = 2, queue_size: int = 100, timeout: float = 30
    ) -> SharedPool:
        if name not in self.pools:
            self.pools[name] = SharedPool(
                name,
                slots=slots,
                queue_size=queue_size,
                queue_timeout=timeout,
                clock=self.clock,
                ledger=self.ledger,
            )
        return self.pools[name]

    def keeper(self, heartbeat: float = 0.1) -> SlotKeeper:
        return SlotKeeper(lambda: list(self.pools.values()), SystemClock(), heartbeat)

    async def granted(self, payload: dict[str, Any]) -> None:
        pool = self.pools.get(payload["pool"])
        if pool is not None:
            pool.granted(payload["ticket"])

    async def wanted(self, payload: dict[str, Any]) -> None:
        pool = self.pools.get(payload["pool"])
        if pool is not None:
            pool.wanted(payload.get("replica"))


@asynccontextmanager
async def cluster(
    *names: str, url: str = REDIS_URL, lease_ttl: float = 10.0, clock: Any = None, listen: bool = True
) -> AsyncIterator[dict[str, Replica]]:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    replicas: dict[str, Replica] = {}
    for name in names:
        store = RedisStore(url, namespace=namespace, timeout=0.5, breaker=RedisBreaker(SystemClock()))
        bus = RedisBus(url, namespace=namespace, replica=name, clock=SystemClock(), timeout=0.5)
        ledger = RedisSlots(store, name, lease_ttl, bus.direct_channel(""), bus.channel)
        replica = Replica(name, store, bus, ledger, clock or SystemClock())
        bus.on("slot.granted", replica.granted)
        bus.on("slot.wanted", replica.wanted)
        replicas[name] = replica
    listening = asyncio.Event()
    heard: set[str] = set()
    for name, replica in replicas.items():

        async def ready(name: str = name) -> None:
            heard.add(name)
            if len(heard) == len(replicas):
                listening.set()

        replica.bus.on_listening(ready)
        if listen:
            replica.loop = asyncio.create_task(replica.bus.run())
    if listen:
        await asyncio.wait_for(listening.wait(), 10)
    try:
        yield replicas
    finally:
        for replica in replicas.values():
            if replica.loop is not None:
                replica.loop.cancel()
                await asyncio.gather(replica.loop, return_exceptions=True)
            for pool in replica.pools.values():
                await pool.aclose()
            await replica.bus.aclose()
            try:
                await replica.store.aclose()
            except Exception:
                pass


async def until(check: Any, what: str, tries: int = 500) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


class Calls:
    """Requests that hold their slot until told to finish; counts how many run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.order: list[str] = []
        self.finish: dict[str, asyncio.Event] = {}

    async def run(self, pool: SharedPool, label: str, caller: str = "c", priority: int = 0) -> None:
        self.finish[label] = asyncio.Event()
        slot = await pool.acquire(caller, priority)
        async with slot:
            self.running += 1
            self.most = max(self.most, self.running)
            self.order.append(label)
            await self.finish[label].wait()
            self.running -= 1

    def done(self, label: str) -> None:
        self.finish[label].set()


async def test_never_more_calls_than_slots_across_replicas() -> None:
    async with cluster("a", "b", "c") as rs:
        calls = Calls()
        tasks = [
            asyncio.create_task(calls.run(rs[name].pool(slots=2), f"{name}{i}"))
            for i in range(3)
            for name in ("a", "b", "c")
        ]
        await until(lambda: calls.running == 2, "two calls running")
        await until(
            lambda: sum(p.queued_here or 0 for r in rs.values() for p in [r.pool().statistics()]) == 7,
            "7 queued",
        )
        await rs["a"].pool().sync()
        assert rs["a"].pool().statistics().queued == 7  # the cluster's queue, seen from any replica
        while len(calls.order) < 9:
            running = [label for label in calls.order if not calls.finish[label].is_set()]
            calls.done(running[0])
            await until(
                lambda n=len(calls.order): len(calls.order) > n or len(calls.order) == 9, "next served"
            )
        for label in calls.order:
            calls.done(label)
        await asyncio.gather(*tasks)
        assert calls.most == 2
        assert sorted(calls.order) == sorted(f"{n}{i}" for i in range(3) for n in "abc")
        for _ in range(2):  # the first heartbeat keeps spares for the recent peak, the next none
            for replica in rs.values():
                await replica.pool().sync()
        for replica in rs.values():
            await replica.pool().aclose()
        await rs["a"].pool().sync()
        assert rs["a"].pool().active == 0  # every lease given back


async def test_the_cluster_queue_takes_turns_between_callers_wherever_they_wait() -> None:
    async with cluster("a", "b") as rs:
        calls = Calls()
        first = asyncio.create_task(calls.run(rs["a"].pool(slots=1), "first", caller="heavy"))
        await until(lambda: calls.running == 1, "the slot taken")
        heavy = []
        for i in range(4):  # one after the other: the order they reach the queue is theirs
            heavy.append(asyncio.create_task(calls.run(rs["a"].pool(), f"heavy{i}", caller="heavy")))
            await until(lambda i=i: rs["a"].pool().statistics().queued_here == i + 1, f"heavy{i} queued")
        light = asyncio.create_task(calls.run(rs["b"].pool(slots=1), "light", caller="light"))
        await until(lambda: rs["b"].pool().statistics().queued_here == 1, "light queued on b")
        urgent = asyncio.create_task(calls.run(rs["b"].pool(), "urgent", caller="light", priority=5))
        await until(lambda: rs["b"].pool().statistics().queued_here == 2, "urgent queued on b")
        for _ in range(6):
            calls.done(calls.order[-1])
            await until(lambda n=len(calls.order): len(calls.order) > n or len(calls.order) == 7, "next")
        calls.done(calls.order[-1])
        await asyncio.gather(first, *heavy, light, urgent)
        # priority first (wherever it waits), then heavy and light in turns, FIFO within heavy
        assert calls.order == ["first", "urgent", "heavy0", "light", "heavy1", "heavy2", "heavy3"]


async def test_a_full_cluster_queue_refuses_on_any_replica() -> None:
    async with cluster("a", "b") as rs:
        calls = Calls()
        holder = asyncio.create_task(calls.run(rs["a"].pool(slots=1, queue_size=2), "held"))
        await until(lambda: calls.running == 1, "held")
        waiting = [asyncio.create_task(calls.run(rs["a"].pool(), f"w{i}")) for i in range(2)]
        await until(lambda: rs["a"].pool().statistics().queued_here == 2, "two queued on a")
        with pytest.raises(QueueFull) as refused:
            await rs["b"].pool(slots=1, queue_size=2).acquire("other")
        assert refused.value.retry_after is not None
        assert rs["b"].pool().statistics().rejected == 1
        for label in ("held", "w0", "w1"):
            await until(lambda label=label: label in calls.order, label)
            calls.done(label)
        await asyncio.gather(holder, *waiting)


async def test_a_request_that_leaves_the_queue_never_runs_and_leaks_nothing() -> None:
    async with cluster("a", "b") as rs:
        calls = Calls()
        holder = asyncio.create_task(calls.run(rs["a"].pool(slots=1), "held"))
        await until(lambda: calls.running == 1, "held")
        leaver = asyncio.create_task(calls.run(rs["b"].pool(slots=1), "leaver"))
        stayer = asyncio.create_task(calls.run(rs["b"].pool(), "stayer"))
        await until(lambda: rs["b"].pool().statistics().queued_here == 2, "both queued on b")
        leaver.cancel()
        await asyncio.gather(leaver, return_exceptions=True)
        assert rs["b"].pool().statistics().cancelled == 1
        calls.done("held")
        await until(lambda: "stayer" in calls.order, "the one who stayed is served")
        calls.done("stayer")
        await asyncio.gather(holder, stayer)
        assert calls.order == ["held", "stayer"]
        await rs["b"].pool().aclose()
        await rs["b"].pool().sync()
        assert (rs["b"].pool().active, rs["b"].pool().queued) == (0, 0)


async def test_a_queue_deadline_is_the_replicas_own() -> None:
    clock = ManualClock()
    async with cluster("a", "b", clock=clock) as rs:
        held = await rs["a"].pool(slots=1, timeout=5).acquire("x")
        waiter = asyncio.create_task(rs["b"].pool(slots=1, timeout=5).acquire("y"))
        await until(lambda: rs["b"].pool().statistics().queued_here == 1, "queued")
        await asyncio.sleep(0.05)  # its deadline's timer is set on the manual clock
        clock.advance(5)
        with pytest.raises(QueueTimeout):
            await waiter
        held.release()
        await rs["a"].pool().aclose()
        await rs["a"].pool().sync()
        assert (rs["a"].pool().active, rs["a"].pool().queued) == (0, 0)  # nothing left behind


async def test_a_killed_replica_gives_its_slots_back_when_its_leases_lapse() -> None:
    async with cluster("a", "b", lease_ttl=0.5) as rs:
        dead = [await rs["a"].pool(slots=2).acquire("x") for _ in range(2)]  # a is "killed" holding them
        assert len(dead) == 2
        keeper = asyncio.create_task(rs["b"].keeper(heartbeat=0.1).run())
        try:
            got = await asyncio.wait_for(rs["b"].pool(slots=2).acquire("y"), 10)
            got2 = await asyncio.wait_for(rs["b"].pool().acquire("y"), 10)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        assert rs["b"].pool().statistics().active_here == 2
        got.release(), got2.release()


async def test_a_dead_replicas_queued_requests_do_not_hold_up_the_others() -> None:
    async with cluster("a", "b", "c", lease_ttl=0.5) as rs:
        held = await rs["a"].pool(slots=1).acquire("x")
        ghost = asyncio.create_task(rs["c"].pool(slots=1).acquire("ghost"))  # c dies while queued
        await until(lambda: rs["c"].pool().statistics().queued_here == 1, "c queued")
        live = asyncio.create_task(rs["b"].pool(slots=1).acquire("live"))
        await until(lambda: rs["b"].pool().statistics().queued_here == 1, "b queued")
        assert rs["c"].loop is not None
        rs["c"].loop.cancel()  # c hears nothing any more
        keeper = asyncio.create_task(rs["b"].keeper(heartbeat=0.1).run())  # b stays alive; c does not
        try:
            await asyncio.sleep(0.7)  # c's liveness lapses (0.5 s): it renews nothing
            held.release()
            slot = await asyncio.wait_for(live, 10)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        assert slot.lease is not None
        assert slot.lease.startswith("b#")
        assert not ghost.done()
        ghost.cancel()
        await asyncio.gather(ghost, return_exceptions=True)
        slot.release()


async def test_a_grant_whose_message_was_missed_is_found_by_the_next_sync() -> None:
    async with cluster("a", "b", listen=False) as rs:  # nobody hears the bus
        held = await rs["a"].pool(slots=1).acquire("x")
        waiter = asyncio.create_task(rs["b"].pool(slots=1).acquire("y"))
        await until(lambda: rs["b"].pool().statistics().queued_here == 1, "queued")
        held.release()  # a did not hear that b waits: it keeps the lease as a spare
        await rs["a"].pool().sync()  # its heartbeat learns the cluster's queue: the spare goes back
        await rs["a"].pool().aclose()  # that release reached Redis: b's ticket holds the slot now
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the grant message went to nobody
        await rs["b"].pool().sync()
        slot = await asyncio.wait_for(waiter, 5)
        assert slot.lease is not None
        assert slot.lease.startswith("b#")
        slot.release()


async def test_redis_away_means_a_local_share_and_its_return_counting_together_again(
    own_redis: OwnRedis,
) -> None:
    server = own_redis
    if True:
        async with cluster("a", "b", url=f"redis://127.0.0.1:{own_redis.port}/0") as rs:
            for replica in [*rs.values(), *rs.values()]:  # each knows there are two of them
                await replica.pool(slots=4).sync()
            before = await rs["a"].pool().acquire("x")  # a lease taken while Redis is there
            server.kill()
            local = [await rs["a"].pool().acquire("x") for _ in range(1)]  # share: 4 // 2 = 2 in all
            assert rs["a"].pool().alone
            assert rs["a"].pool().statistics().scope == "local share"
            third = asyncio.create_task(rs["a"].pool().acquire("x"))
            await until(lambda: rs["a"].pool().statistics().queued_here == 1, "the third waits")
            local[0].release()
            extra = await asyncio.wait_for(third, 5)  # the local share served it
            server.start()
            await rs["a"].pool().sync()  # back: the leases held here are taken again
            assert not rs["a"].pool().alone
            await rs["b"].pool().sync()
            assert rs["b"].pool().active == 2  # a's two calls are in the cluster's count again
            more = [await rs["b"].pool().acquire("y") for _ in range(2)]
            fifth = asyncio.create_task(rs["b"].pool().acquire("y"))
            await until(lambda: rs["b"].pool().statistics().queued_here == 1, "the fifth waits for a slot")
            before.release()
            # the buses may not listen again yet (they reconnect with backoff): the keepers' next
            # syncs find what the messages did not bring (a's spare wanted, b's grant)
            keepers = [asyncio.create_task(r.keeper(heartbeat=0.1).run()) for r in rs.values()]
            try:
                await asyncio.wait_for(fifth, 5)
            finally:
                for keeper in keepers:
                    keeper.cancel()
                await asyncio.gather(*keepers, return_exceptions=True)
            extra.release()
            for slot in more:
                slot.release()


async def test_a_slot_handed_on_keeps_its_lease() -> None:
    async with cluster("a") as rs:
        slot = await rs["a"].pool(slots=1).acquire("x")
        kept = slot.hand_on()
        slot.release()  # spent: frees nothing
        assert isinstance(kept, Slot)
        assert kept.lease == slot.lease
        assert rs["a"].pool().statistics().active_here == 1
        kept.release()
        assert rs["a"].pool().statistics().active_here == 0


__all__ = ["own_redis"]  # the fixture, imported for this module's tests


async def test_an_uncontended_pool_keeps_spare_leases_and_gives_them_up_when_wanted() -> None:
    async with cluster("a", "b") as rs:
        pool = rs["a"].pool(slots=2)
        calls = {"n": 0}
        acquire = rs["a"].ledger.acquire

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            return await acquire(*args, **kwargs)

        rs["a"].ledger.acquire = counted  # type: ignore[method-assign]
        for _ in range(20):  # one call after the other: one lease, asked for once, then kept
            (await pool.acquire("x")).release()
        assert calls["n"] == 1
        assert (pool.in_use, pool.statistics().active_here) == (0, 0)
        two = [await pool.acquire("x"), await pool.acquire("x")]  # the spare, and one more lease
        assert calls["n"] == 2
        for slot in two:
            slot.release()  # both kept as spares: a holds the pool's two slots, using none
        waiter = asyncio.create_task(rs["b"].pool(slots=2).acquire("y"))
        slot = await asyncio.wait_for(waiter, 5)  # b queued; a heard slot.wanted and gave them back
        assert slot.lease is not None
        assert slot.lease.startswith("b#")
        slot.release()
        await pool.sync()
        await rs["b"].pool().sync()
        assert pool.statistics().active_here == 0


async def test_an_idle_replica_keeps_no_spares_past_its_heartbeat() -> None:
    async with cluster("a") as rs:
        pool = rs["a"].pool(slots=4)
        slots = [await pool.acquire("x") for _ in range(3)]
        for slot in slots:
            slot.release()
        await pool.sync()  # the peak since the last sync was 3: three spares kept for it
        assert (pool.active, await pool.holders()) == (0, {"a": {"held": 3, "queued": 0}})
        await pool.sync()  # no call since: the spares go back
        await pool.aclose()
        assert await pool.holders() == {}  # the cluster's count holds nothing of a's
        assert not pool.busy


async def test_when_every_waiter_is_here_a_released_slot_is_handed_over_at_once() -> None:
    async with cluster("a", "b") as rs:
        pool = rs["a"].pool(slots=1)
        held = await pool.acquire("x")
        waiters = [asyncio.create_task(pool.acquire("y")) for _ in range(2)]
        await until(lambda: pool.statistics().queued_here == 2, "both queued on a")
        held.release()  # every request the cluster has queued waits here: the next one has it now
        assert pool.statistics().queued_here == 1
        first = await asyncio.wait_for(waiters[0], 5)
        await pool.aclose()  # the hand-over told to the ledger
        await pool.sync()
        assert (pool.active, pool.queued) == (1, 1)  # the count agrees: one held, one waiting
        other = asyncio.create_task(rs["b"].pool(slots=1).acquire("z"))  # b queues: a hears of it
        await until(lambda: rs["b"].pool().statistics().queued_here == 1, "b queued")
        await until(lambda: pool._elsewhere > 0, "a heard that b waits")
        first.release()  # now the cluster's order decides: y (queued first) then z
        second = await asyncio.wait_for(waiters[1], 5)
        second.release()
        third = await asyncio.wait_for(other, 5)
        assert third.lease is not None
        assert third.lease.startswith("b#")
        third.release()


async def test_a_grant_told_before_the_acquires_answer_is_read_is_not_lost() -> None:
    async with cluster("a", "b") as rs:
        held = await rs["a"].pool(slots=1).acquire("x")
        pool = rs["b"].pool(slots=1)
        acquire = rs["b"].ledger.acquire

        async def answered_late(*args: Any, **kwargs: Any) -> Any:
            answer = await acquire(*args, **kwargs)  # b's ticket is queued in the cluster...
            held.release()  # ...a's release grants it, and b hears of it before reading this
            await until(lambda: bool(pool._early), "b heard the grant first")
            return answer

        rs["b"].ledger.acquire = answered_late  # type: ignore[method-assign]
        slot = await asyncio.wait_for(pool.acquire("y"), 5)
        assert slot.lease is not None
        assert slot.lease.startswith("b#")
        await rs["a"].pool().aclose()
        await pool.sync()
        assert (pool.active, pool.queued) == (1, 0)  # it holds the slot the grant gave it
        slot.release()


async def test_a_queued_request_that_redis_lost_is_queued_again_by_the_next_sync() -> None:
    async with cluster("a", "b") as rs:
        held = await rs["a"].pool(slots=1).acquire("x")
        waiter = asyncio.create_task(rs["b"].pool(slots=1).acquire("y"))
        await until(lambda: rs["b"].pool().statistics().queued_here == 1, "queued")
        raw = Redis.from_url(REDIS_URL)
        try:  # Redis loses the pool (as a restart would): the lease and the queue are gone
            namespace = rs["a"].store.namespace
            async for key in raw.scan_iter(match=namespace + "slots:gpu:*"):
                await raw.delete(key)
        finally:
            await raw.aclose()
        await rs["a"].pool().sync()  # a holds its slot again (renewed, re-taken)
        await rs["b"].pool().sync()  # b's request is queued again, behind it
        assert not waiter.done()
        held.release()
        slot = await asyncio.wait_for(waiter, 5)
        slot.release()
