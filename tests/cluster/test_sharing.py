"""Signals, breakers and stale lanes shared between replicas, as components on this machine's Redis
(a namespace of each test's own): each replica is the real ``Signals``, ``Breakers`` and
``Inventory`` behind the real ``ClusterSharing`` on its own ``RedisStore`` and ``RedisBus``, with an
injected clock of its own (their monotonic clocks differ, as two processes' do; their wall clocks
agree, as one machine's). Redis's death is that of a ``redis-server`` of the test's own."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from laneway.clock import ManualClock
from laneway.cluster.breakers import TRIAL_PREFIX
from laneway.cluster.bus import RedisBus
from laneway.cluster.sharing import ClusterSharing
from laneway.cluster.signals import EVENT_GAP, SIGNALS_CHANGED
from laneway.config.schema import BreakerConfig, SignalsConfig
from laneway.errors import UpstreamStatusError, UpstreamTimeout, classify
from laneway.inventory.lanes import Health, Lane
from laneway.inventory.store import Inventory
from laneway.routing.breaker import CLOSED, HALF_OPEN, OPEN, Breakers
from laneway.signals.state import Status
from laneway.signals.store import Signals
from laneway.storage.redisstore import RedisBreaker, RedisStore
from tests.storage.test_redis_breaker import OwnRedis, own_redis  # noqa: F401  (a fixture)

pytestmark = pytest.mark.anyio
REDIS_URL = os.environ.get("LANEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
LANE = Lane("cloud", "openai", "b", "chat", "gpt-4o-mini")
OTHER = Lane("cloud", "openai", "b", "chat", "gpt-4o")
START = 1_700_000_000.0


async def eventually(check: Callable[[], bool], what: str, tries: int = 500) -> None:
    """Poll ``check`` a bounded number of times (no timing is asserted, only that it happens)."""
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


class Replica:
    """One replica's signals, breakers and inventory, sharing through Redis."""

    def __init__(self, name: str, url: str, namespace: str, mono: float) -> None:
        self.name = name
        # A monotonic clock of its own; the wall clock is the machine's, the same for all.
        self.clock = ManualClock(START - mono)
        self.clock.advance(mono)
        self.store = RedisStore(url, namespace=namespace, timeout=0.5, breaker=RedisBreaker(self.clock))
        self.bus = RedisBus(url, namespace=namespace, replica=name, clock=self.clock, timeout=0.5)
        self.inventory = Inventory()
        self.inventory.write_lanes([LANE, OTHER])
        self.signals = Signals(self.store, self.clock, SignalsConfig())
        self.sharing = ClusterSharing(
            self.store,
            self.bus,
            replica=name,
            clock=self.clock,
            signals=self.signals,
            inventory=self.inventory,
        )
        config = BreakerConfig(failures=2, window=60, cooldown=30)
        self.breakers = Breakers(self.clock, config, self.inventory, self.sharing.breakers)
        self.sharing.start(self.breakers)
        self.listened = 0
        self.bus.on_listening(self._listening)  # after the sharing's own catch-up
        self.loop: asyncio.Task[None] | None = None

    async def _listening(self) -> None:
        self.listened += 1

    async def start(self) -> None:
        self.loop = asyncio.create_task(self.bus.run())
        await eventually(lambda: self.listened > 0, f"{self.name} listens")

    async def aclose(self) -> None:
        if self.loop is not None:
            self.loop.cancel()
            await asyncio.gather(self.loop, return_exceptions=True)
        await self.sharing.aclose()
        await self.bus.aclose()
        await self.store.aclose()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def breaker(self) -> str:
        found = self.breakers.get(LANE.id)
        return CLOSED if found is None else found.state

    def open_for(self) -> float:
        found = self.breakers.get(LANE.id)
        assert found is not None
        return found.open_until - self.clock.monotonic()

    def health(self, lane_id: str = LANE.id) -> str:
        lane = self.inventory.get(lane_id)
        assert lane is not None
        return lane.health

    def limited(self, retry_after: str = "60", backend: str = "b") -> None:
        exc = UpstreamStatusError(
            "429", backend=backend, upstream_status=429, upstream_headers={"retry-after": retry_after}
        )
        self.signals.failure(backend, "openai", LANE.id, exc, classify(exc, now=self.clock.now()))

    def broken(self) -> None:
        exc = UpstreamTimeout("timed out", backend="b")
        self.signals.failure("b", "openai", LANE.id, exc, classify(exc, now=self.clock.now()))


@asynccontextmanager
async def cluster(*names: str, url: str = REDIS_URL) -> AsyncIterator[dict[str, Replica]]:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    async with AsyncExitStack() as stack:
        replicas: dict[str, Replica] = {}
        for i, name in enumerate(names):
            replicas[name] = Replica(name, url, namespace, mono=1000.0 * (i + 1))
            stack.push_async_callback(replicas[name].aclose)
            await replicas[name].start()
        yield replicas


def advance_all(replicas: dict[str, Replica], seconds: float) -> None:
    for r in replicas.values():
        r.advance(seconds)


async def claim_gone(r: Replica) -> None:
    for _ in range(500):
        if await r.store.get(TRIAL_PREFIX + LANE.id) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the trial's claim was never let go")


# -- signals ---------------------------------------------------------------------------------------


async def test_a_429_on_one_replica_holds_the_backend_on_the_others_with_one_event() -> None:
    async with cluster("r1", "r2", "r3") as rs:
        r1, r2, r3 = rs["r1"], rs["r2"], rs["r3"]
        heard: list[dict[str, Any]] = []

        async def spy(payload: dict[str, Any]) -> None:
            heard.append(payload)

        r3.bus.on(SIGNALS_CHANGED, spy)
        r1.signals.success("b", "openai", LANE.id, {}, 0.2)  # the first answer: available (an event)
        await eventually(lambda: r2.signals.status("b") == Status.AVAILABLE, "r2 hears of b")
        advance_all(rs, 1)
        r1.limited()
        await eventually(lambda: r2.signals.status("b") == Status.EXHAUSTED, "r2 holds b")
        await eventually(lambda: r3.signals.status("b") == Status.EXHAUSTED, "r3 holds b")
        assert r2.signals.held_until("b") == r3.signals.held_until("b") == r1.signals.held_until("b")
        assert r2.signals.held_until("b") == START + 61
        assert r2.signals.get("b").latency.samples() == []  # type: ignore[union-attr]  # its own

        for _ in range(10):  # answers in flight when it was exhausted: nothing routing-relevant
            r1.signals.success("b", "openai", LANE.id, {}, 0.2)
        advance_all(rs, 1)
        for _ in range(5):  # a burst of changes at once: coalesced into one event, the last state
            r1.broken()
            r1.signals.success("b", "openai", LANE.id, {"x-ratelimit-remaining-requests": "5"}, 0.2)
            r1.limited()
        await eventually(lambda: r1.sharing.signals.sent >= 3, "r1 sent the burst")
        ends: list[dict[str, Any]] = []

        async def end(payload: dict[str, Any]) -> None:
            ends.append(payload)

        r3.bus.on("test.end", end)
        await r1.bus.publish("test.end", {})  # r1's events arrive in order: this one last
        await eventually(lambda: bool(ends), "r3 heard all of r1's events")
        assert (r1.sharing.signals.sent, len(heard)) == (3, 3)
        assert [len(event["signals"]) for event in heard] == [1, 1, 1]
        assert heard[-1]["signals"][0]["last_outcome"] == "success"
        assert r3.signals.status("b") == Status.EXHAUSTED

        r1.broken()  # within EVENT_GAP of the last event (r1's clock has not moved): it waits ...
        r1.limited(backend="c")  # ... and so does another backend's change
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert r1.sharing.signals.sent == 3
        advance_all(rs, EVENT_GAP)  # ... then both go out in one event
        await eventually(lambda: len(heard) == 4, "r3 heard the next event")
        assert [record["backend"] for record in heard[-1]["signals"]] == ["b", "c"]
        assert r2.signals.status("b") == Status.EXHAUSTED
        assert r2.signals.status("c") == Status.EXHAUSTED


async def test_a_replica_that_joins_or_missed_events_gets_the_signals_from_redis() -> None:
    async with cluster("r1") as rs:
        r1 = rs["r1"]
        r1.limited()
        await r1.signals.flush()  # what the signals loop does every second
        joining = Replica("r9", REDIS_URL, r1.store.namespace, mono=5.0)
        try:
            await joining.start()
            assert joining.signals.status("b") == Status.EXHAUSTED
            assert joining.signals.held_until("b") == r1.signals.held_until("b")
        finally:
            await joining.aclose()


# -- breakers --------------------------------------------------------------------------------------


async def test_an_opening_reaches_every_replica_and_exactly_one_gets_the_trial() -> None:
    async with cluster("r1", "r2", "r3") as rs:
        r1, r2, r3 = rs["r1"], rs["r2"], rs["r3"]
        r1.breakers.failure(LANE.id)
        r1.breakers.failure(LANE.id)
        assert r1.breaker() == OPEN
        for r in (r2, r3):
            await eventually(lambda r=r: r.breaker() == OPEN, f"{r.name}'s breaker opens")  # type: ignore[misc]
            assert r.health() == Health.OPEN
            assert r.open_for() == 30.0  # the same deadline, on each replica's own monotonic clock
            assert not r.breakers.allow(LANE.id)
        assert r2.breakers.snapshot()[LANE.id]["opened_by"] == "r1"

        advance_all(rs, 30)
        for r in rs.values():
            r.breakers.advance()
            assert r.breaker() == HALF_OPEN
            assert r.breakers.allow(LANE.id)  # locally, each would take the trial ...
            assert r.breakers.needs_claim(LANE.id)
        claims = await asyncio.gather(*(r.breakers.claim_trial(LANE.id, 600) for r in rs.values()))
        assert sorted(claims) == [False, False, True]  # ... but only one replica's claim holds
        holder = next(r for r, won in zip(rs.values(), claims, strict=True) if won)
        others = [r for r in rs.values() if r is not holder]
        for r in others:
            assert not r.breakers.allow(LANE.id)  # passed over, without asking Redis again
            assert r.breakers.snapshot()[LANE.id]["trial"] == holder.name
        advance_all(rs, 1)  # a second later they ask again: the trial is still the holder's
        assert not holder.breakers.allow(LANE.id)
        for r in others:
            assert r.breakers.allow(LANE.id)
            assert not await r.breakers.claim_trial(LANE.id, 600)
        assert await holder.store.get(TRIAL_PREFIX + LANE.id) == holder.name.encode()

        holder.breakers.success(LANE.id)  # the trial succeeded: closed here ...
        for r in others:  # ... and everywhere
            await eventually(lambda r=r: r.breaker() == CLOSED, f"{r.name}'s breaker closes")  # type: ignore[misc]
            assert r.health() == Health.HEALTHY
            assert r.breakers.allow(LANE.id)
        await claim_gone(holder)  # the claim let go


async def test_a_failed_trial_reopens_everywhere_and_the_later_deadline_wins() -> None:
    async with cluster("r1", "r2") as rs:
        r1, r2 = rs["r1"], rs["r2"]
        r1.breakers.failure(LANE.id)
        r1.breakers.failure(LANE.id)
        await eventually(lambda: r2.breaker() == OPEN, "r2's breaker opens")
        advance_all(rs, 10)
        r2.breakers.opened_elsewhere(LANE.id, 5, "r1", START)  # told again with less left: kept
        assert r2.open_for() == 20.0
        advance_all(rs, 20)
        r2.breakers.advance()
        assert r2.breakers.allow(LANE.id)
        assert await r2.breakers.claim_trial(LANE.id, 600)
        r2.breakers.failure(LANE.id)  # the trial failed: open again on both, a fresh cooldown
        assert r2.open_for() == 30.0
        await eventually(lambda: r1.breaker() == OPEN and r1.open_for() == 30.0, "r1 re-opens")
        assert r1.breakers.snapshot()[LANE.id]["opened_by"] == "r2"


async def test_a_trial_that_ends_without_a_verdict_is_let_go_to_another_replica() -> None:
    async with cluster("r1", "r2") as rs:
        r1, r2 = rs["r1"], rs["r2"]
        r1.breakers.failure(LANE.id)
        r1.breakers.failure(LANE.id)
        await eventually(lambda: r2.breaker() == OPEN, "r2's breaker opens")
        advance_all(rs, 30)
        for r in (r1, r2):
            r.breakers.advance()
        assert r1.breakers.allow(LANE.id)
        assert await r1.breakers.claim_trial(LANE.id, 600)
        assert r2.breakers.allow(LANE.id)
        assert not await r2.breakers.claim_trial(LANE.id, 600)
        r1.breakers.release_trial(LANE.id)  # its caller left before the call was made
        await claim_gone(r1)
        advance_all(rs, 1)
        assert r2.breakers.allow(LANE.id)
        assert await r2.breakers.claim_trial(LANE.id, 600)  # r2's turn
        assert r2.breakers.snapshot()[LANE.id]["trial"] == "r2"


async def test_late_and_duplicate_breaker_events_never_undo_newer_ones() -> None:
    async with cluster("r1") as rs:
        breakers = rs["r1"].breakers
        breakers.opened_elsewhere(LANE.id, 30, "r2", START + 10)
        breakers.opened_elsewhere(LANE.id, 30, "r2", START + 10)  # twice: nothing changes
        assert rs["r1"].open_for() == 30.0
        breakers.closed_elsewhere(LANE.id, START + 9)  # a closing made before the opening, late
        assert rs["r1"].breaker() == OPEN
        breakers.closed_elsewhere(LANE.id, START + 11)
        assert rs["r1"].breaker() == CLOSED
        breakers.opened_elsewhere(LANE.id, 30, "r3", START + 10.5)  # an opening older than that
        assert rs["r1"].breaker() == CLOSED
        assert rs["r1"].health() == Health.HEALTHY
        breakers.opened_elsewhere(LANE.id, 30, "r3", START + 12)  # a newer one applies
        assert rs["r1"].breaker() == OPEN


# -- stale lanes -------------------------------------------------------------------------------------


async def test_a_lane_stale_on_one_replica_is_stale_on_the_others() -> None:
    async with cluster("r1", "r2") as rs:
        r1, r2 = rs["r1"], rs["r2"]
        await r1.sharing.lane_stale(LANE.id)
        await eventually(lambda: r2.health() == Health.STALE, "r2's lane is stale")
        r1.inventory.set_health([LANE.id], Health.DENIED)
        r2.inventory.set_health([LANE.id], Health.DENIED)  # the cooldown's: not overwritten
        await r2.sharing.lane_stale(LANE.id)
        await r2.sharing.lane_stale("no-such-lane")
        await r2.sharing.lane_stale(OTHER.id)  # told after the others: heard after them
        await eventually(lambda: r1.health(OTHER.id) == Health.STALE, "r1's other lane is stale")
        assert r1.health() == Health.DENIED


# -- Redis away ----------------------------------------------------------------------------------------


async def test_with_redis_gone_each_replica_decides_alone_and_they_converge_when_it_is_back(
    own_redis: OwnRedis,  # noqa: F811
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    async with cluster("r1", "r2", url=url) as rs:
        r1, r2 = rs["r1"], rs["r2"]
        r1.breakers.failure(LANE.id)
        r1.breakers.failure(LANE.id)
        await eventually(lambda: r2.breaker() == OPEN, "r2's breaker opens")
        advance_all(rs, 30)
        own_redis.kill()
        async with asyncio.timeout(30):  # a guard against hanging, not a timing assertion
            for r in rs.values():
                r.breakers.advance()
                assert r.breakers.allow(LANE.id)
            claims = await asyncio.gather(*(r.breakers.claim_trial(LANE.id, 600) for r in rs.values()))
            assert claims == [True, True]  # each its own trial: nobody to agree with, nobody blocked
            r1.breakers.failure(LANE.id)  # told to nobody (logged), raised to no one
            r1.limited("3600")
            await r1.signals.flush()  # kept to be written later
            assert r2.signals.get("b") is None

        own_redis.start()  # back, empty
        for _ in range(300):  # past the store's breaker and the buses' reconnect backoff
            if r1.listened > 1 and r2.listened > 1:
                break
            advance_all(rs, 1)
            await asyncio.sleep(0.02)
        assert (r1.listened > 1, r2.listened > 1) == (True, True)
        await eventually(lambda: r2.signals.status("b") == Status.EXHAUSTED, "r2 learns the 429")
