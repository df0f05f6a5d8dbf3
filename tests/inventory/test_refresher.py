"""The live lane inventory against real simulated upstreams on loopback: discovery, write-then-
delete-orphans, expiry, auth cooldown, deadlines, declared state, policy and the model-list
cache. Time is a ``ManualClock``: intervals, deadlines, cooldowns and TTLs move only when a test
advances it, so nothing here waits for the wall clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from laneway.clock import Clock, ManualClock
from laneway.config.schema import BackendConfig, InventoryConfig
from laneway.errors import NoLaneAvailable, PermissionDenied
from laneway.inventory.cooldown import AuthCooldowns
from laneway.inventory.lanes import Health, InvalidLaneId, Lane, compose_lane_id, parse_lane_id
from laneway.inventory.modelcache import ModelListCache
from laneway.inventory.reconcile import Reconciler
from laneway.inventory.refresher import RefreshContext
from laneway.inventory.store import Inventory
from laneway.operations import Operation
from laneway.providers.registry import build_provider
from laneway.routing.resolve import Resolver
from laneway.routing.standalone import standalone_router
from laneway.storage import FileStore, KeyValueStore, MemoryStore

pytestmark = pytest.mark.anyio


@dataclass
class Rig:
    clock: ManualClock
    inventory: Inventory
    reconciler: Reconciler
    declared: dict[str, BackendConfig]
    settings: InventoryConfig

    def models(self, backend: str | None = None) -> set[str]:
        return {ln.model for ln in self.inventory.lanes() if backend is None or ln.backend == backend}

    def status(self, backend: str) -> Any:
        return self.reconciler.refreshers[backend].status

    def resolver(self) -> Resolver:
        return Resolver(self.inventory, {}, frozenset(self.declared))


@asynccontextmanager
async def rig(
    backends: dict[str, dict[str, Any]],
    cache_dir: Path,
    runtime: Callable[[ManualClock], KeyValueStore] = MemoryStore,
    **inventory: Any,
) -> AsyncIterator[Rig]:
    """A reconciler over ``backends`` with a manual clock, cooldowns in ``runtime`` (memory) and
    the model-list cache in ``cache_dir`` (as the embedded default keeps it)."""
    clock = ManualClock()
    settings = InventoryConfig(**inventory)
    declared = {name: BackendConfig(**cfg) for name, cfg in backends.items()}
    ctx = RefreshContext(
        inventory=Inventory(),
        cooldowns=AuthCooldowns(runtime(clock), clock, ttl=settings.auth_cooldown),
        cache=ModelListCache(FileStore(cache_dir, clock), ttl=settings.model_cache_ttl),
        clock=clock,
        settings=settings,
    )

    async def read_declared() -> dict[str, BackendConfig]:
        return dict(declared)

    reconciler = Reconciler(ctx, declared=read_declared, build_provider=build_provider)
    await reconciler.sync_declared()
    try:
        yield Rig(clock, ctx.inventory, reconciler, declared, settings)
    finally:
        await reconciler.aclose()


async def eventually(predicate: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll until ``predicate()`` holds: a bound on waiting for real I/O, not a timing assertion."""
    for _ in range(int(limit / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def requests(sim: Any, path: str) -> int:
    return int(sim.stats.requests_by_path.get(path, 0))


# -- lanes and the inventory -------------------------------------------------------------------


@pytest.mark.parametrize("model", ["llama3:8b", "meta-llama/llama-3.1-8b-instruct:free", "50%/a:b:c"])
def test_lane_ids_round_trip_model_names_with_separators(model: str) -> None:
    lane_id = compose_lane_id(
        tier="cloud", provider_family="openai", instance_id="or", type="chat", model=model
    )
    assert lane_id.count(":") == 4  # exactly five segments, whatever the model name holds
    assert parse_lane_id(lane_id) == ("cloud", "openai", "or", "chat", model)


def test_a_lane_with_a_malformed_id_is_refused_and_nothing_is_written() -> None:
    inventory = Inventory()
    good = Lane("local", "ollama", "gpu", "chat", "llama3:8b")
    with pytest.raises(InvalidLaneId, match="does not match"):
        Lane("local", "ollama", "gpu", "chat", "llama3:8b", id="local:ollama:gpu:chat:llama3:8b")
    forged = Lane("local", "ollama", "gpu", "chat", "other")
    forged.id = "local:ollama:gpu:chat:llama3:8b"  # bypassing the constructor
    with pytest.raises(InvalidLaneId, match="malformed"):
        inventory.write_lanes([good, forged])
    assert len(inventory) == 0
    with pytest.raises(InvalidLaneId, match="empty"):
        Lane("local", "ollama", "", "chat", "m")


def test_weight_is_the_product_of_the_weights_times_health_and_health_is_kept() -> None:
    settings = InventoryConfig(weights={"tiers": {"local": 50}, "providers": {"ollama": 200}})
    config = BackendConfig(provider="ollama", base_url="http://x", weight=10, model_weights={"llama*": 3})
    assert settings.base_weight(config, "llama3:8b") == 50 * 200 * 10 * 3
    assert settings.base_weight(config, "qwen") == 50 * 200 * 10 * 100
    inventory = Inventory()
    lane = Lane("local", "ollama", "gpu", "chat", "m", base_weight=1000)
    inventory.write_lanes([lane])
    assert inventory.get(lane.id).health == Health.HEALTHY  # type: ignore[union-attr]
    inventory.set_health([lane.id], Health.HALF_OPEN)
    assert inventory.get(lane.id).weight == 500  # type: ignore[union-attr]
    inventory.write_lanes([lane.replace(context_length=4096)])  # a refresh: no health given
    kept = inventory.get(lane.id)
    assert kept is not None
    assert kept.health == Health.HALF_OPEN
    assert kept.context_length == 4096
    inventory.set_health([lane.id], Health.OPEN)
    assert not inventory.get(lane.id).routable  # type: ignore[union-attr]


def test_lane_changes_are_logged_as_structured_events(caplog: pytest.LogCaptureFixture) -> None:
    inventory = Inventory()
    lane = Lane("local", "ollama", "gpu", "chat", "m")
    with caplog.at_level(logging.INFO, logger="laneway.inventory"):
        inventory.write_lanes([lane])
        inventory.write_lanes([lane.replace(observed_at=5.0)])  # only a timestamp: no event
        inventory.write_lanes([lane.replace(context_length=2048)])
        inventory.replace_backend("gpu", [])  # an empty snapshot is written, then orphans go
    events = [(r.getMessage(), getattr(r, "lane", None)) for r in caplog.records]
    assert events == [("lane added", lane.id), ("lane changed", lane.id), ("lane removed", lane.id)]
    assert caplog.records[1].changes == {"context_length": 2048}  # type: ignore[attr-defined]
    assert caplog.records[2].reason == "no longer reported"  # type: ignore[attr-defined]


# -- refresh: discovery into the inventory ------------------------------------------------------


async def test_discovery_fills_the_inventory_from_each_family(sim_factory: Any, tmp_path: Path) -> None:
    ollama = sim_factory(
        family="ollama", models=["llama3:8b", "nomic-embed-text:latest"], context_length=4096
    )
    oai = sim_factory(family="openai", api_key="k")
    claude = sim_factory(family="anthropic", api_key="a")
    backends = {
        "gpu": {"provider": "ollama", "base_url": ollama.url},
        "oai": {"provider": "openai", "base_url": oai.url, "api_key": "k"},
        "claude": {"provider": "anthropic", "base_url": claude.url, "api_key": "a"},
    }
    async with rig(backends, tmp_path) as r:
        await r.reconciler.cycle()
        assert r.models("gpu") == {"llama3:8b", "nomic-embed-text:latest"}
        assert r.models("oai") == {"gpt-4o-mini", "text-embedding-3-small"}
        assert r.models("claude") == {"claude-sonnet-4-6", "claude-haiku-4-5"}
        chat = r.inventory.get(
            compose_lane_id(
                tier="local", provider_family="ollama", instance_id="gpu", type="chat", model="llama3:8b"
            )
        )
        assert chat is not None
        assert chat.context_length == 4096
        assert chat.health == Health.HEALTHY
        assert chat.expires_at == r.clock.now() + 3 * 15  # three ollama intervals
        embed = r.inventory.by_model("nomic-embed-text:latest")
        assert [ln.type for ln in embed] == ["embedding"]
        for name in backends:
            assert r.status(name).last_error is None
            assert r.status(name).lanes > 0


async def test_a_model_added_upstream_appears_within_one_interval_and_a_removed_one_goes(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b"])
    async with rig({"gpu": {"provider": "ollama", "base_url": sim.url}}, tmp_path) as r:
        runner = asyncio.create_task(r.reconciler.run())
        try:
            await eventually(lambda: r.models() == {"llama3:8b"}, "the first refresh")
            sim.options.models = ["llama3:8b", "qwen2.5:7b"]
            r.clock.advance(14)  # less than the ollama interval: nothing is due yet
            await asyncio.sleep(0.05)
            assert r.models() == {"llama3:8b"}
            r.clock.advance(1)  # one interval after the last refresh
            await eventually(lambda: r.models() == {"llama3:8b", "qwen2.5:7b"}, "the added model")
            sim.options.models = ["qwen2.5:7b"]
            r.clock.advance(15)
            await eventually(lambda: r.models() == {"qwen2.5:7b"}, "the removed model to go")
        finally:
            runner.cancel()
            await asyncio.wait((runner,))


async def test_a_cloud_backend_whose_first_model_list_failed_gets_lanes_at_the_first_retry_that_works(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="openai", fail_metadata_paths=["/v1/models"])  # a 500 at start-up
    async with rig({"oai": {"provider": "openai", "base_url": sim.url}}, tmp_path) as r:

        def fetches() -> int:
            return int(sim.stats.requests_by_path.get("/v1/models", 0))

        async def failed(times: int) -> None:
            await eventually(lambda: r.status("oai").failures == times, f"refresh {times} to fail")
            await asyncio.sleep(0.05)  # and the schedule to take note (no I/O: a few loop turns)

        runner = asyncio.create_task(r.reconciler.run())
        try:
            await failed(1)
            assert r.models() == set()
            r.clock.advance(1)  # retry_backoff: the first retry, long before the 60 s interval
            await failed(2)
            r.clock.advance(1)  # the second retry waits twice as long
            await asyncio.sleep(0.05)
            assert fetches() == 2
            sim.options.fail_metadata_paths = []  # the upstream is back
            r.clock.advance(1)
            await eventually(lambda: r.models() == {"gpt-4o-mini", "text-embedding-3-small"}, "the lanes")
            assert fetches() == 3
            assert r.status("oai").failures == 0
            await asyncio.sleep(0.05)
            r.clock.advance(59)  # back to the interval once it answers
            await asyncio.sleep(0.05)
            assert fetches() == 3
        finally:
            runner.cancel()
            await asyncio.wait((runner,))


async def test_a_failing_or_empty_refresh_never_empties_the_inventory(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b"])
    async with rig({"gpu": {"provider": "ollama", "base_url": sim.url}}, tmp_path) as r:
        await r.reconciler.cycle()
        before = {ln.id for ln in r.inventory.lanes()}
        assert before
        sim.options.models = []  # the upstream answers with nothing
        await r.reconciler.cycle()
        assert {ln.id for ln in r.inventory.lanes()} == before
        assert "no servable models" in (r.status("gpu").last_error or "")
        sim.thread.stop()  # the upstream goes away: refused connections
        await r.reconciler.cycle()
        assert {ln.id for ln in r.inventory.lanes()} == before
        assert "unreachable" in (r.status("gpu").last_error or "")
        assert r.status("gpu").cooldown_until is None  # a dead backend is not an auth failure
        # ... but lanes nobody confirms expire: after three intervals the sweep removes them.
        r.clock.advance(3 * 15)
        assert r.reconciler.sweep() == len(before)
        assert len(r.inventory) == 0


async def test_a_hanging_refresh_times_out_on_the_deadline_and_keeps_the_lanes(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b"])
    async with rig({"gpu": {"provider": "ollama", "base_url": sim.url}}, tmp_path, refresh_deadline=7) as r:
        await r.reconciler.cycle()
        lanes = len(r.inventory)
        sim.options.hang_discovery = True
        cycle = asyncio.create_task(r.reconciler.cycle())
        await eventually(lambda: requests(sim, "/api/tags") == 2, "the second /api/tags to arrive")
        await asyncio.sleep(0.05)
        assert not cycle.done()  # it hangs until the deadline, measured on the injected clock
        r.clock.advance(7)
        await asyncio.wait_for(cycle, 10)
        assert r.status("gpu").last_error == "refresh timed out after 7s"
        assert r.status("gpu").cooldown_until is None  # a timeout is not an auth failure
        assert len(r.inventory) == lanes


async def test_fifty_backends_five_hanging_reconcile_within_one_deadline(
    sim_factory: Any, tmp_path: Path
) -> None:
    """Every backend's refresh runs at once, each with its own deadline: the cycle ends when one
    deadline's worth of (injected) time has passed, however many backends hang."""
    healthy = sim_factory(family="ollama", models=["llama3:8b"])
    hanging = sim_factory(family="ollama", models=["llama3:8b"], hang_discovery=True)
    backends = {f"ok-{i:02d}": {"provider": "ollama", "base_url": healthy.url} for i in range(45)}
    backends |= {f"hung-{i}": {"provider": "ollama", "base_url": hanging.url} for i in range(5)}
    async with rig(backends, tmp_path, refresh_deadline=10) as r:
        cycle = asyncio.create_task(r.reconciler.cycle())
        ok = [n for n in backends if n.startswith("ok-")]
        await eventually(
            lambda: all(r.status(n).last_refresh is not None for n in ok), "the 45 healthy refreshes"
        )
        await eventually(lambda: requests(hanging, "/api/tags") == 5, "the 5 hanging requests")
        assert not cycle.done()
        r.clock.advance(10)  # one deadline: if the hanging five ran one after another, four would remain
        statuses = await asyncio.wait_for(cycle, 10)
        assert len(statuses) == 50
        assert {s.name for s in statuses if s.last_error} == {f"hung-{i}" for i in range(5)}
        assert all(s.last_error == "refresh timed out after 10s" for s in statuses if s.last_error)
        assert {ln.backend for ln in r.inventory.lanes()} == set(ok)


# -- auth cooldown ------------------------------------------------------------------------------


class HangingWrites(MemoryStore):
    """A runtime store whose writes never return (a Redis that hangs mid-command); reads answer."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.writes = 0

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.writes += 1
        await asyncio.Event().wait()


async def test_a_cooldown_write_that_hangs_never_holds_the_request(sim_factory: Any, tmp_path: Path) -> None:
    refusing, serving = sim_factory(family="openai"), sim_factory(family="openai")
    backends = {
        "refusing": {"provider": "openai", "base_url": refusing.url, "weight": 1000},
        "serving": {"provider": "openai", "base_url": serving.url},
    }
    async with rig(backends, tmp_path, runtime=HangingWrites) as r:
        await r.reconciler.cycle()
        refusing.options.api_key = "rotated-upstream"  # from now on it refuses laneway's calls
        router = standalone_router(r.resolver(), r.reconciler, r.clock)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        # A bound on waiting (the request would hang for good behind the write), not a timing.
        served = await asyncio.wait_for(router.send(Operation.CHAT, body, orjson.dumps(body)), 10)
        assert (served.lane.backend, served.attempts) == ("serving", 2)
        store = r.reconciler.ctx.cooldowns.store
        assert isinstance(store, HangingWrites)
        assert store.writes == 1  # the write was started, and still hangs
        assert r.status("refusing").cooldown_until == r.clock.now() + 300  # in effect all the same
        assert {ln.health for ln in r.inventory.by_backend("refusing")} == {Health.DENIED}
    # ... and closing the reconciler ended the hung write instead of waiting for it


class HangingReads(MemoryStore):
    """A runtime store whose reads never return (a Redis that stopped answering)."""

    async def get(self, key: str) -> bytes | None:
        await asyncio.Event().wait()
        return None


async def test_a_refresh_on_a_miss_is_not_held_by_a_store_that_stopped_answering(
    sim_factory: Any, tmp_path: Path
) -> None:
    """A request for a model nobody serves waits on one refresh of the local backends; its
    cooldown read is bounded by the refresh deadline (on the injected clock), then it refreshes."""
    sim = sim_factory(family="ollama", models=["llama3:8b"])
    backends = {"gpu": {"provider": "ollama", "base_url": sim.url}}
    async with rig(backends, tmp_path, runtime=HangingReads, refresh_deadline=7) as r:
        refresh = asyncio.create_task(r.reconciler.refresh_local())
        await asyncio.sleep(0.05)
        assert not refresh.done()  # held by the read until the deadline, measured on the clock
        r.clock.advance(7)
        assert await asyncio.wait_for(refresh, 10)  # a bound on waiting, not a timing
        assert {ln.model for ln in r.inventory.lanes()} == {"llama3:8b"}
        assert r.status("gpu").cooldown_until is None


@pytest.mark.parametrize("refusal", ["wrong-key", "forbidden"])
async def test_a_refused_credential_keeps_lanes_out_of_rotation_for_the_cooldown(
    sim_factory: Any, tmp_path: Path, refusal: str
) -> None:
    sim = sim_factory(family="openai", api_key="k1")
    backend = {"provider": "openai", "base_url": sim.url, "api_key": "k1", "tier": "local"}
    async with rig({"vllm": backend}, tmp_path) as r:
        await r.reconciler.cycle()
        assert r.resolver().resolve("gpt-4o-mini", "chat")
        if refusal == "wrong-key":
            sim.options.api_key = "rotated-upstream"  # the upstream now answers 401
        else:
            sim.options.forbidden_keys = ["k1"]  # ... or 403
        await r.reconciler.cycle()
        st = r.status("vllm")
        assert st.cooldown_until == r.clock.now() + 300
        assert all(ln.health == Health.DENIED for ln in r.inventory.lanes())
        with pytest.raises(NoLaneAvailable, match="denied"):
            r.resolver().resolve("gpt-4o-mini", "chat")

        sim.options.api_key, sim.options.forbidden_keys = "k1", []  # the operator fixes the key
        seen = requests(sim, "/v1/models")
        r.clock.advance(299)
        await r.reconciler.cycle()  # still cooling down: the refresh is skipped entirely
        assert requests(sim, "/v1/models") == seen
        assert "refreshes paused" in (st.last_error or "")
        with pytest.raises(NoLaneAvailable):
            r.resolver().resolve("gpt-4o-mini", "chat")

        r.clock.advance(1)  # the cooldown has expired: the lanes come back by themselves
        await r.reconciler.cycle()
        assert requests(sim, "/v1/models") == seen + 1
        assert st.cooldown_until is None
        assert st.last_error is None
        assert all(ln.health == Health.HEALTHY for ln in r.inventory.lanes())
        assert r.resolver().resolve("gpt-4o-mini", "chat")


async def test_the_cooldown_is_per_credential_and_can_be_lifted(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="openai", api_key="good")
    common = {"provider": "openai", "base_url": sim.url, "tier": "local"}
    backends = {
        "a": {**common, "api_key": "bad"},
        "b": {**common, "api_key": "bad"},
        "c": {**common, "api_key": "good"},
    }
    async with rig(backends, tmp_path) as r:
        await r.reconciler.cycle(["a"])
        # b shares a's credential: it is cooling down without ever having asked
        seen = requests(sim, "/v1/models")
        await r.reconciler.cycle(["b", "c"])
        assert requests(sim, "/v1/models") == seen + 1  # only c asked
        assert r.status("b").cooldown_until is not None
        assert r.models("c")
        cooldowns = await r.reconciler.ctx.cooldowns.all()
        assert [c.backend for c in cooldowns] == ["a"]
        assert "bad" not in repr(cooldowns)  # the credential is kept by fingerprint only
        assert await r.reconciler.ctx.cooldowns.lift(r.reconciler.refreshers["a"].credential)
        await r.reconciler.cycle(["b"])
        assert requests(sim, "/v1/models") == seen + 2


# -- declared state ---------------------------------------------------------------------------


async def test_declared_models_constrain_and_override_what_is_observed(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b", "qwen2.5:7b", "nomic-embed-text:latest"])
    backends = {
        "pinned": {
            "provider": "ollama",
            "base_url": sim.url,
            "models": [
                {"name": "llama3:8b", "context_length": 2048, "capabilities": ["chat", "tools"]},
                "gone:1b",
            ],
        },
        "all": {
            "provider": "ollama",
            "base_url": sim.url,
            "auto_discover": True,
            "models": [{"name": "qwen2.5:7b", "context_length": 32768}],
        },
        "none": {"provider": "ollama", "base_url": sim.url, "models": ["missing:1b", "also-missing:2b"]},
    }
    async with rig(backends, tmp_path) as r:
        await r.reconciler.cycle()
        pinned = r.inventory.by_backend("pinned")
        assert [(ln.model, ln.type) for ln in pinned] == [("llama3:8b", "chat")]  # declared types win
        assert pinned[0].context_length == 2048
        assert pinned[0].capabilities == {"chat", "tools"}
        assert r.status("pinned").missing_models == ["gone:1b"]
        assert r.status("pinned").last_error is None
        assert r.models("all") == {"llama3:8b", "qwen2.5:7b", "nomic-embed-text:latest"}
        qwen = [ln for ln in r.inventory.by_backend("all") if ln.model == "qwen2.5:7b"]
        assert {ln.context_length for ln in qwen} == {32768}
        assert r.models("none") == set()
        assert r.status("none").last_error == (
            "none of the declared models exists upstream: missing:1b, also-missing:2b"
        )


async def test_backends_added_and_removed_from_the_declared_state(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b"])
    async with rig({"a": {"provider": "ollama", "base_url": sim.url}}, tmp_path) as r:
        await r.reconciler.cycle()
        r.declared["b"] = BackendConfig(provider="ollama", base_url=sim.url, weight=5)
        del r.declared["a"]
        assert await r.reconciler.sync_declared()
        assert set(r.reconciler.providers) == {"b"}
        assert {ln.backend for ln in r.inventory.lanes()} == set()  # a's lanes went with it
        await r.reconciler.cycle()
        assert {ln.backend for ln in r.inventory.lanes()} == {"b"}
        assert not await r.reconciler.sync_declared()  # nothing changed


async def test_policy_applies_at_discovery_and_again_at_dispatch(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b", "qwen2.5:7b"])
    async with rig({"gpu": {"provider": "ollama", "base_url": sim.url, "deny": ["qwen*"]}}, tmp_path) as r:
        await r.reconciler.cycle()
        assert r.models() == {"llama3:8b"}
        assert r.status("gpu").excluded_models == ["qwen2.5:7b"]
        router = standalone_router(r.resolver(), r.reconciler, r.clock)
        assert await router.candidates("llama3:8b", "chat")
        # The policy tightens; until the next refresh the lane is still in the inventory, but
        # dispatch refuses it (fail closed).
        r.declared["gpu"] = BackendConfig(provider="ollama", base_url=sim.url, allow=["mistral*"])
        await r.reconciler.sync_declared()
        assert r.models() == {"llama3:8b"}
        with pytest.raises(PermissionDenied, match="policy"):
            await router.candidates("llama3:8b", "chat")


# -- the model-list cache -----------------------------------------------------------------------


async def test_cloud_model_lists_are_cached_by_credential_and_survive_a_restart(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="openai", api_key="k1")
    cloud = {"provider": "openai", "base_url": sim.url, "api_key": "k1"}  # tier cloud by default
    async with rig({"oai": cloud}, tmp_path) as r:
        await r.reconciler.cycle()
        await r.reconciler.cycle()
        assert requests(sim, "/v1/models") == 1
        assert r.status("oai").source == "cache"
        assert r.models() == {"gpt-4o-mini", "text-embedding-3-small"}
        r.clock.advance(3599)
        await r.reconciler.cycle()
        assert requests(sim, "/v1/models") == 1
        r.clock.advance(1)  # the TTL (1 h) is over
        await r.reconciler.cycle()
        assert requests(sim, "/v1/models") == 2

    async with rig({"oai": cloud}, tmp_path) as r:  # a restart on the same cache directory
        await r.reconciler.cycle()
        assert requests(sim, "/v1/models") == 2
        assert r.status("oai").source == "cache"

    sim.options.api_key = "k2"
    async with rig({"oai": {**cloud, "api_key": "k2"}}, tmp_path) as r:  # the key was rotated
        await r.reconciler.cycle()
        assert requests(sim, "/v1/models") == 3
        assert r.status("oai").source == "upstream"
        entries = await r.reconciler.ctx.cache.entries()
        assert len(entries) == 1  # the old credential's entry went


async def test_empty_lists_are_never_cached_and_invalidation_forces_a_fetch(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="openai", api_key="k")
    common = {"provider": "openai", "base_url": sim.url, "api_key": "k"}
    async with rig({"x": common, "y": common}, tmp_path) as r:
        sim.options.models = []
        await r.reconciler.cycle(["x"])
        await r.reconciler.cycle(["x"])
        assert requests(sim, "/v1/models") == 2  # nothing was cached
        sim.options.models = ["gpt-4o-mini"]
        await r.reconciler.cycle()
        assert requests(sim, "/v1/models") == 4
        cache = r.reconciler.ctx.cache
        assert await cache.invalidate("x") == 1
        await r.reconciler.cycle()
        assert requests(sim, "/v1/models") == 5  # x asked again, y came from the cache
        await r.reconciler.cycle(use_cache=False)
        assert requests(sim, "/v1/models") == 7
        assert await cache.clear() == 2
        assert await cache.entries() == []


async def test_local_backends_are_never_cached(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="openai")
    async with rig({"vllm": {"provider": "openai", "base_url": sim.url, "tier": "local"}}, tmp_path) as r:
        await r.reconciler.cycle()
        await r.reconciler.cycle()
        assert requests(sim, "/v1/models") == 2
        assert await r.reconciler.ctx.cache.entries() == []


# -- on-demand refresh -------------------------------------------------------------------------


async def test_an_unknown_model_refreshes_local_backends_once_debounced(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b"])
    cloud = sim_factory(family="openai")
    backends = {
        "gpu": {"provider": "ollama", "base_url": sim.url},
        "oai": {"provider": "openai", "base_url": cloud.url},
    }
    async with rig(backends, tmp_path) as r:
        await r.reconciler.cycle()
        router = standalone_router(r.resolver(), r.reconciler, r.clock)
        sim.options.models = ["llama3:8b", "new:1b"]
        tags, models = requests(sim, "/api/tags"), requests(cloud, "/v1/models")
        found = await asyncio.gather(*(router.candidates("new:1b", "chat") for _ in range(10)))
        assert all(c[0].lane.model == "new:1b" for c in found)
        assert requests(sim, "/api/tags") == tags + 1  # ten misses, one refresh
        assert requests(cloud, "/v1/models") == models  # of the local backends only
        from laneway.errors import ModelNotFound

        with pytest.raises(ModelNotFound):
            await router.candidates("nobody-serves-this", "chat")  # debounced: no refresh
        assert requests(sim, "/api/tags") == tags + 1
        r.clock.advance(5)
        with pytest.raises(ModelNotFound):
            await router.candidates("nobody-serves-this", "chat")
        assert requests(sim, "/api/tags") == tags + 2


async def test_a_cancelled_caller_leaves_the_shared_refresh_running(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b"], hang_discovery=True)
    async with rig({"gpu": {"provider": "ollama", "base_url": sim.url}}, tmp_path) as r:
        refresher = r.reconciler.refreshers["gpu"]
        first = asyncio.create_task(refresher.tick())
        second = asyncio.create_task(refresher.tick())
        await eventually(lambda: requests(sim, "/api/tags") == 1, "the refresh to start")
        first.cancel()
        await asyncio.wait((first,))
        assert not second.done()
        sim.options.hang_discovery = False
        r.clock.advance(10)  # the hung request times out; the shared refresh ends once
        await asyncio.wait_for(second, 10)
        assert requests(sim, "/api/tags") == 1
        await r.reconciler.cycle()
        assert r.models() == {"llama3:8b"}


async def test_concurrent_declared_state_syncs_apply_a_change_once(sim_factory: Any, tmp_path: Path) -> None:
    """The schedule and POST /admin/refresh may re-read the declared state at the same time."""
    sim = sim_factory(family="ollama", models=["llama3:8b"])
    async with rig({"a": {"provider": "ollama", "base_url": sim.url}}, tmp_path) as r:
        await r.reconciler.cycle()  # a's HTTP client is open: closing it takes a moment
        built: list[Any] = []
        build = r.reconciler.build_provider

        def counting_build(name: str, config: BackendConfig) -> Any:
            built.append(build(name, config))
            return built[-1]

        async def slow_declared() -> dict[str, BackendConfig]:
            await asyncio.sleep(0.01)  # a database round trip: the syncs could interleave here
            return dict(r.declared)

        r.reconciler.build_provider = counting_build
        r.reconciler.declared = slow_declared
        r.declared["a"] = BackendConfig(provider="ollama", base_url=sim.url, weight=7)  # changed
        r.declared["b"] = BackendConfig(provider="ollama", base_url=sim.url)  # added
        changed = await asyncio.gather(*(r.reconciler.sync_declared() for _ in range(5)))
        assert sorted(changed) == [False, False, False, False, True]
        assert len(built) == 2  # one new provider (one HTTP client) each, not five
        assert r.reconciler.providers == {"a": built[0], "b": built[1]}
