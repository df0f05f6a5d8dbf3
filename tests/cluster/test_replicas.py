"""The replica list: each replica renews its record, a record nobody renewed lapses on its own
(on the injected clock in memory; on Redis's own clock in cluster mode), and a stopped replica
leaves at once."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import pytest

from laneway.clock import ManualClock
from laneway.cluster.replicas import PREFIX, Holding, Replicas
from laneway.config.cluster import ClusterConfig
from laneway.storage.errors import StoreUnavailable
from laneway.storage.redisstore import RedisStore
from laneway.storage.runtime import MemoryStore
from laneway.testing import captured_logs

pytestmark = pytest.mark.anyio
REDIS_URL = os.environ.get("LANEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
CONFIG = ClusterConfig(lease_ttl=10, heartbeat=2)


def replica(store: MemoryStore | RedisStore, clock: ManualClock, name: str, **held: int) -> Replicas:
    config = CONFIG.model_copy(update={"replica_id": name})
    return Replicas(store, clock, config, address=f"http://{name}:8080", holding=lambda: Holding(**held))


async def test_replicas_see_each_other_and_what_each_holds() -> None:
    clock = ManualClock(start=1000.0)
    store = MemoryStore(clock)
    one = replica(store, clock, "r1", control_streams=2, slots_leased=3)
    two = replica(store, clock, "r2")
    await one.renew()
    await two.renew()
    live = await two.live()
    assert [r.id for r in live] == ["r1", "r2"]
    first = live[0]
    assert (first.address, first.control_streams, first.slots_leased) == ("http://r1:8080", 2, 3)
    assert first.started == first.heartbeat == 1000.0


async def test_a_record_nobody_renews_lapses_after_the_lease() -> None:
    clock = ManualClock(start=0.0)
    store = MemoryStore(clock)
    alive, killed = replica(store, clock, "alive"), replica(store, clock, "killed")
    await alive.renew()
    await killed.renew()
    for _ in range(5):  # 10 s of heartbeats: only one of them keeps renewing
        clock.advance(CONFIG.heartbeat)
        await alive.renew()
    assert [r.id for r in await alive.live()] == ["alive"]
    assert (await alive.live())[0].heartbeat == 10.0


async def test_a_stopped_replica_leaves_at_once() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    one, two = replica(store, clock, "r1"), replica(store, clock, "r2")
    await one.renew()
    await two.renew()
    await one.aclose()
    assert [r.id for r in await two.live()] == ["r2"]


async def test_an_unreadable_record_is_skipped_and_said() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    one = replica(store, clock, "r1")
    await one.renew()
    await store.set(PREFIX + "junk", b"{not json")
    with captured_logs("laneway.cluster", logging.WARNING) as records:
        assert [r.id for r in await one.live()] == ["r1"]
    assert any("unreadable replica record replicas/junk" in line["event"] for line in records)


async def test_a_default_id_is_new_at_every_start() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    a = Replicas(store, clock, ClusterConfig(), address="http://h:1")
    b = Replicas(store, clock, ClusterConfig(), address="http://h:1")
    assert a.id != b.id
    assert a.address == "http://h:1"
    advertised = Replicas(store, clock, ClusterConfig(advertise="http://10.0.0.7:8080"), address="x")
    assert advertised.address == "http://10.0.0.7:8080"


async def test_a_store_that_cannot_be_reached_does_not_stop_the_replica() -> None:
    clock = ManualClock()
    store = RedisStore("redis://127.0.0.1:1/0", timeout=1)  # nothing listens there
    one = replica(store, clock, "r1")  # type: ignore[arg-type]
    try:
        with captured_logs("laneway.cluster") as lines:
            await one.renew()  # raises nothing: the replica goes on serving, its record lapses
        assert lines == []  # nothing to say yet: it never was in the list
        with pytest.raises(StoreUnavailable):  # the list itself cannot be read: its view says so
            await one.live()
        await one.aclose()  # and leaving does not hang or raise either
    finally:
        await store.aclose()


async def test_on_redis_replicas_share_the_list_and_redis_expires_a_lapsed_one() -> None:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    stores = [RedisStore(REDIS_URL, namespace=namespace) for _ in range(2)]
    clock = ManualClock()
    try:
        short = ClusterConfig(lease_ttl=0.4, heartbeat=0.2)
        one = Replicas(stores[0], clock, short.model_copy(update={"replica_id": "r1"}), address="a")
        two = Replicas(stores[1], clock, short.model_copy(update={"replica_id": "r2"}), address="b")
        await one.renew()
        await two.renew()
        assert [r.id for r in await one.live()] == ["r1", "r2"]
        # r2 stops renewing: Redis (its own clock) drops its record once the lease has lapsed
        for _ in range(50):
            await one.renew()
            if [r.id for r in await one.live()] == ["r1"]:
                break
            await asyncio.sleep(0.1)
        assert [r.id for r in await one.live()] == ["r1"]
        await one.aclose()
        assert await two.live() == []
    finally:
        for store in stores:
            await store.aclose()
