"""Discovery with one leader per backend, on Redis (a namespace of each test's own; a
``redis-server`` of its own where Redis must die): reconcilers standing for replicas share one
namespace, in front of a simulated Ollama whose request counts say who called it. Refresh
schedules run on a ``ManualClock``; the leases are timed by Redis itself."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from laneway.clock import ManualClock, SystemClock
from laneway.cluster.bus import RedisBus
from laneway.cluster.discovery import ClusterDiscovery
from laneway.config.cluster import ClusterConfig
from laneway.config.schema import BackendConfig, InventoryConfig
from laneway.inventory.cooldown import AuthCooldowns
from laneway.inventory.modelcache import ModelListCache
from laneway.inventory.reconcile import Reconciler
from laneway.inventory.refresher import RefreshContext
from laneway.inventory.store import Inventory
from laneway.providers.ollama import OllamaProvider
from laneway.providers.registry import build_provider
from laneway.storage.redisstore import RedisBreaker, RedisStore
from tests.storage.test_redis_breaker import OwnRedis

pytestmark = pytest.mark.anyio
REDIS_URL = os.environ.get("LANEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
INTERVAL = 15.0  # Ollama's default refresh interval
MODELS = {"llama3.2:3b", "nomic-embed-text:latest"}


@dataclass
class Replica:
    name: str
    reconciler: Reconciler
    discovery: ClusterDiscovery
    bus: RedisBus

    def models(self) -> set[str]:
        return {lane.model for lane in self.reconciler.ctx.inventory.lanes()}

    def status(self, backend: str = "gpu") -> Any:
        return self.reconciler.refreshers[backend].status

    async def listen(self, stack: AsyncExitStack) -> None:
        """Run its events loop until the test ends; return once it listens."""
        listening = asyncio.Event()

        async def heard() -> None:
            listening.set()

        self.bus.on_listening(heard)
        task = asyncio.create_task(self.bus.run())
        stack.push_async_callback(_cancelled, task)
        await asyncio.wait_for(listening.wait(), 10)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def cluster(
    names: Sequence[str],
    backends: dict[str, dict[str, Any]],
    clock: ManualClock,
    *,
    url: str = REDIS_URL,
    lease_ttl: float = 10.0,
) -> AsyncIterator[dict[str, Replica]]:
    """Reconcilers named ``names`` sharing discovery through one Redis namespace, as replicas
    would; the declared ``backends`` read, nothing refreshed yet, no lease claimed."""
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    config = ClusterConfig(lease_ttl=lease_ttl, heartbeat=lease_ttl / 4, namespace=namespace)
    settings = InventoryConfig()
    declared = {name: BackendConfig(**cfg) for name, cfg in backends.items()}

    async def read_declared() -> dict[str, BackendConfig]:
        return dict(declared)

    replicas: dict[str, Replica] = {}
    async with AsyncExitStack() as stack:
        for name in names:
            store = RedisStore(url, namespace=namespace, timeout=0.5, breaker=RedisBreaker(clock))
            stack.push_async_callback(store.aclose)
            bus = RedisBus(url, namespace=namespace, replica=name, clock=SystemClock(), timeout=0.5)
            stack.push_async_callback(bus.aclose)
            discovery = ClusterDiscovery(store, bus, replica=name, clock=clock, config=config)
            ctx = RefreshContext(
                inventory=Inventory(),
                cooldowns=AuthCooldowns(store, clock, ttl=settings.auth_cooldown),
                cache=ModelListCache(store, ttl=settings.model_cache_ttl),
                clock=clock,
                settings=settings,
            )
            reconciler = Reconciler(
                ctx, declared=read_declared, build_provider=build_provider, sharing=discovery
            )
            stack.push_async_callback(reconciler.aclose)
            await reconciler.sync_declared()
            replicas[name] = Replica(name, reconciler, discovery, bus)
        yield replicas


async def claim(replicas: dict[str, Replica]) -> None:
    for replica in replicas.values():  # in order: the first one to claim takes the free leases
        await replica.discovery.claim()


async def eventually(check: Callable[[], Any], what: str, tries: int = 400) -> None:
    """Poll (awaiting ``check()`` if it is a coroutine) a bounded number of times: no timing is
    asserted, only that it happens."""
    for _ in range(tries):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


def tags(sim: Any) -> int:
    """The sim's model-list calls (Ollama's /api/tags)."""
    return int(sim.stats.requests_by_path.get("/api/tags", 0))


def ollama(sim: Any) -> dict[str, dict[str, Any]]:
    return {"gpu": {"provider": "ollama", "base_url": sim.url}}


async def test_one_replica_refreshes_and_the_others_adopt_what_it_found(sim_factory: Any) -> None:
    sim = sim_factory(family="ollama")
    clock = ManualClock()
    async with cluster(("a", "b", "c"), ollama(sim), clock) as replicas:
        await claim(replicas)
        assert [r.discovery.leads("gpu") for r in replicas.values()] == [True, False, False]
        assert {r.discovery.leader("gpu") for r in replicas.values()} == {"a"}
        for replica in replicas.values():
            await replica.reconciler.warm_up()  # a: nothing shared yet, it refreshes; b, c: adopt
        assert tags(sim) == 1
        calls = sim.stats.total_requests  # the list, /api/show of each model, /api/ps
        for replica in replicas.values():
            assert replica.models() == MODELS, replica.name
            assert replica.status().last_refresh == replicas["a"].status().last_refresh
            assert replica.status().refreshed_by == "a"
            assert [st.leader for st in replica.reconciler.statuses()] == ["a"]
        a, b = (replicas[n].reconciler.providers["gpu"] for n in "ab")
        assert isinstance(a, OllamaProvider)
        assert isinstance(b, OllamaProvider)
        assert b.reported  # what /api/show said, though b never called it
        assert (b.reported, b.thinks) == (a.reported, a.thinks)

        for n in range(1, 4):  # the schedule, an interval at a time: a refreshes, b and c adopt
            sim.options.models = [*sorted(MODELS), f"qwen3:{n}b"]
            clock.advance(INTERVAL)
            for replica in replicas.values():
                await replica.reconciler.run_once()
            for replica in replicas.values():
                assert f"qwen3:{n}b" in replica.models(), replica.name
        assert tags(sim) == 4
        assert sim.stats.total_requests - calls == 3 * (calls + 1)  # one more model each time


async def test_leadership_is_spread_over_the_replicas(sim_factory: Any) -> None:
    sim = sim_factory(family="ollama")
    clock = ManualClock()
    backends = {f"gpu-{i}": {"provider": "ollama", "base_url": sim.url} for i in range(3)}
    async with cluster(("a", "b", "c"), backends, clock) as replicas:
        await claim(replicas)  # a was alone when it claimed: it took all three
        assert [len(r.discovery._held) for r in replicas.values()] == [3, 0, 0]
        await claim(replicas)  # a gives back what is above its share, the others take theirs
        held = {name: sorted(r.discovery._held) for name, r in replicas.items()}
        assert sorted(len(h) for h in held.values()) == [1, 1, 1], held
        assert sorted(b for h in held.values() for b in h) == sorted(backends)
        await claim(replicas)
        assert {name: sorted(r.discovery._held) for name, r in replicas.items()} == held  # stable
        for replica in replicas.values():
            leaders = [replica.discovery.leader(b) for b in sorted(backends)]
            assert sorted(leaders) == ["a", "b", "c"]


async def test_when_the_leader_stops_renewing_another_takes_over_at_once(sim_factory: Any) -> None:
    sim = sim_factory(family="ollama")
    clock = ManualClock()
    async with cluster(("a", "b"), ollama(sim), clock, lease_ttl=0.4) as replicas:
        a, b = replicas["a"], replicas["b"]
        await claim(replicas)
        await a.reconciler.warm_up()
        await b.reconciler.warm_up()
        assert tags(sim) == 1
        # a dies (no more renewals). An interval later b's backstop reads the snapshot: nothing new.
        clock.advance(INTERVAL)
        await b.reconciler.run_once()
        assert tags(sim) == 1
        assert not b.discovery.leads("gpu")

        async def b_leads() -> bool:
            await b.discovery.claim()
            return b.discovery.leads("gpu")

        await eventually(b_leads, "b takes the lapsed lease")
        assert b.discovery.leader("gpu") == "b"
        # The last refresh anyone shared is an interval old: b refreshes now, not an interval on.
        await b.reconciler.run_once()
        assert tags(sim) == 2
        assert b.status().refreshed_by == "b"
        await b.reconciler.run_once()
        assert tags(sim) == 2  # and not again until the next interval
        clock.advance(INTERVAL)
        await b.reconciler.run_once()
        assert tags(sim) == 3


async def test_a_new_leader_does_not_refresh_again_what_its_predecessor_just_did(
    sim_factory: Any,
) -> None:
    sim = sim_factory(family="ollama")
    clock = ManualClock()
    async with cluster(("a", "b"), ollama(sim), clock) as replicas:
        a, b = replicas["a"], replicas["b"]
        await claim(replicas)
        await a.reconciler.warm_up()
        await b.reconciler.warm_up()
        await a.discovery.aclose()  # a is stopped: its lease is freed at once
        await b.discovery.claim()
        assert b.discovery.leads("gpu")
        clock.advance(INTERVAL / 2)
        await b.reconciler.run_once()
        assert tags(sim) == 1  # a's refresh is half an interval old
        clock.advance(INTERVAL / 2)
        await b.reconciler.run_once()
        assert tags(sim) == 2


async def test_a_refresh_anywhere_reaches_the_others_by_event(sim_factory: Any) -> None:
    sim = sim_factory(family="ollama")
    clock = ManualClock()
    async with cluster(("a", "b"), ollama(sim), clock) as replicas, AsyncExitStack() as stack:
        a, b = replicas["a"], replicas["b"]
        await claim(replicas)
        for replica in replicas.values():
            await replica.listen(stack)
            await replica.reconciler.warm_up()
        assert tags(sim) == 1

        sim.options.models = [*sorted(MODELS), "qwen3:8b"]
        clock.advance(1)
        await a.reconciler.cycle(["gpu"])  # the leader, asked (POST /admin/refresh)
        await eventually(lambda: "qwen3:8b" in b.models(), "b adopts a's refresh at once")

        sim.options.models = sorted(MODELS)
        clock.advance(1)
        await b.reconciler.cycle(["gpu"])  # a follower's refresh (a stale lane, say) is shared too
        await eventually(lambda: "qwen3:8b" not in a.models(), "a adopts b's refresh")
        assert a.status().refreshed_by == "b"
        assert tags(sim) == 3
        # a's schedule counts from b's refresh: nothing is due an interval after its own
        clock.advance(INTERVAL - 1)
        await a.reconciler.run_once()
        assert tags(sim) == 3


async def test_without_redis_each_refreshes_alone_then_one_leads_again(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama")
    clock = ManualClock()
    own = OwnRedis(tmp_path)
    own.start()
    url = f"redis://127.0.0.1:{own.port}/0"
    try:
        async with cluster(("a", "b"), ollama(sim), clock, url=url) as replicas:
            a, b = replicas["a"], replicas["b"]
            await claim(replicas)
            await a.reconciler.warm_up()
            await b.reconciler.warm_up()
            assert tags(sim) == 1

            own.kill()
            await claim(replicas)
            assert [a.discovery.leads("gpu"), b.discovery.leads("gpu")] == [True, True]  # each alone
            sim.options.models = [*sorted(MODELS), "qwen3:8b"]
            clock.advance(INTERVAL)
            for replica in replicas.values():
                await replica.reconciler.run_once()
            assert tags(sim) == 3
            assert all("qwen3:8b" in r.models() for r in replicas.values())

            own.start()  # empty: leases and snapshots are gone
            clock.advance(INTERVAL)  # also past the breakers' pause
            await claim(replicas)
            assert [a.discovery.leads("gpu"), b.discovery.leads("gpu")] == [True, False]
            assert {a.discovery.leader("gpu"), b.discovery.leader("gpu")} == {"a"}
            # the leader stores its snapshot again (Redis lost it): b need not refresh
            await eventually(lambda: b.discovery.read(["gpu"]), "a's snapshot is stored again")
            for replica in replicas.values():
                await replica.reconciler.run_once()
            assert tags(sim) == 4  # a's scheduled refresh; b read a's snapshot
            clock.advance(INTERVAL)
            for replica in replicas.values():
                await replica.reconciler.run_once()
            assert tags(sim) == 5
    finally:
        if own.proc is not None:
            own.kill()


async def test_alone_a_replica_leads_everything_without_the_store(gw: Any) -> None:
    """The embedded default (memory://): no leases, no snapshots; every local backend probed here."""
    gateway = gw.gateway
    assert gateway.reconciler.sharing is None
    assert "gpu-1" in gateway._probe_targets()
    assert {st.leader for st in gateway.reconciler.statuses()} == {None}
