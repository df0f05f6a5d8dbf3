"""Runtime signals: latency windows, status, quota learnt from each family's real rate-limit
headers (the simulated upstream sends them, counting down on an injected clock), persistence,
and cheap coalesced probes of local backends."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from laneway.clock import ManualClock, SystemClock
from laneway.config.schema import BackendConfig, InventoryConfig, SignalsConfig
from laneway.errors import QuotaExhausted, StreamBroken, UpstreamStatusError, UpstreamTimeout, classify
from laneway.inventory.cooldown import AuthCooldowns
from laneway.inventory.modelcache import ModelListCache
from laneway.inventory.reconcile import Reconciler
from laneway.inventory.refresher import RefreshContext
from laneway.inventory.store import Inventory
from laneway.latency import LatencyWindow
from laneway.operations import Operation
from laneway.providers.registry import build_provider
from laneway.routing.dispatch import Router
from laneway.routing.resolve import Resolver
from laneway.routing.standalone import standalone_router
from laneway.signals.headers import Quota, RateLimits
from laneway.signals.state import BackendSignal, Status
from laneway.signals.store import Signals
from laneway.sim.app import build_sim_app
from laneway.sim.options import SimOptions
from laneway.storage import FileStore, MemoryStore
from laneway.testing import ServerThread

CHAT = [{"role": "user", "content": "hi"}]
STREAM = {"model": "gpt-4o-mini", "messages": CHAT, "stream": True}
NOW = 1_700_000_000.0


# -- latency windows ------------------------------------------------------------------------------


def test_a_latency_window_keeps_the_last_n_and_gives_nearest_rank_percentiles() -> None:
    window = LatencyWindow(4)
    assert window.summary().p50 is None
    for ms in (10, 20, 30, 40, 50, 60):
        window.record(ms / 1000)
    assert window.samples() == [0.03, 0.04, 0.05, 0.06]  # the two oldest were overwritten
    summary = window.summary()
    assert (summary.samples, summary.p50, summary.p95) == (4, 0.04, 0.06)
    window.record(math.nan)
    window.record(-1.0)
    assert len(window) == 4
    assert window.samples() == [0.03, 0.04, 0.05, 0.06]  # bad samples are dropped, not recorded


def test_a_latency_window_is_safe_under_concurrent_use() -> None:
    window = LatencyWindow(64)
    errors: list[BaseException] = []

    def hammer(offset: int) -> None:
        try:
            for i in range(2000):
                window.record((offset * 2000 + i) / 1e6)
                if i % 100 == 0:
                    window.summary()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(window) == 64
    assert len(set(window.samples())) == 64  # every slot holds a distinct, real sample


# -- status -----------------------------------------------------------------------------------------


def test_status_unknown_then_degraded_by_an_error_then_available_and_stale_after_the_ttl() -> None:
    sig = BackendSignal("b", "openai")
    assert sig.status(NOW, ttl=300) == Status.UNKNOWN
    sig.failed(NOW, "boom")
    assert sig.status(NOW, ttl=300) == Status.DEGRADED
    sig.succeeded(NOW + 1)
    assert sig.status(NOW + 1, ttl=300) == Status.AVAILABLE
    assert sig.status(NOW + 302, ttl=300) == Status.UNKNOWN  # nothing heard for longer than the TTL


def test_exhausted_until_the_reset_and_headers_only_change_what_they_report() -> None:
    sig = BackendSignal("b", "openai")
    sig.succeeded(NOW)
    full = RateLimits(requests=Quota(10, 0, NOW + 30), tokens=Quota(1000, 900, NOW + 5))
    sig.apply_limits(full, NOW, exhausted_for=60)
    assert sig.exhausted_until == NOW + 30
    assert sig.status(NOW + 29, ttl=300) == Status.EXHAUSTED
    assert sig.status(NOW + 30, ttl=300) == Status.AVAILABLE  # by time alone, no call needed
    sig.apply_limits(RateLimits(), NOW + 1, exhausted_for=60)  # a response without headers
    assert sig.exhausted_until == NOW + 30
    assert sig.requests == Quota(10, 0, NOW + 30)
    # a malformed tokens-remaining arrives as None: the good value before it stays
    sig.apply_limits(RateLimits(tokens=Quota(1000, None, NOW + 6)), NOW + 2, exhausted_for=60)
    assert sig.tokens == Quota(1000, 900, NOW + 6)
    # a counter at zero without a reset time: exhausted for exhausted_for
    sig.apply_limits(RateLimits(tokens=Quota(None, 0, None)), NOW + 3, exhausted_for=60)
    assert sig.exhausted_until == NOW + 63
    # retry-after wins when it is later than the counters' resets
    sig.apply_limits(
        RateLimits(requests=Quota(10, 3, NOW + 9), retry_at=NOW + 120), NOW + 4, exhausted_for=60
    )
    assert sig.exhausted_until == NOW + 120


def test_a_429_exhausts_without_making_the_backend_degraded() -> None:
    clock = ManualClock(NOW)
    signals = Signals(MemoryStore(clock), clock, SignalsConfig(exhausted_for=45))
    signals.success("b", "openai", "lane", {}, 0.1)
    limited = UpstreamStatusError("backend 'b' answered 429: slow down", backend="b", upstream_status=429)
    signals.failure("b", "openai", "lane", limited, classify(limited, now=NOW))
    sig = signals.get("b")
    assert sig is not None
    assert signals.status("b") == Status.EXHAUSTED
    assert sig.exhausted_until == NOW + 45
    clock.advance(45)
    assert signals.status("b") == Status.AVAILABLE
    # a client's own mistake says nothing about the backend
    fault = UpstreamStatusError("400", backend="b", upstream_status=400)
    signals.failure("b", "openai", "lane", fault, classify(fault, now=NOW))
    assert signals.status("b") == Status.AVAILABLE
    timeout = UpstreamTimeout("timed out", backend="b")
    signals.failure("b", "openai", "lane", timeout, classify(timeout, now=NOW))
    assert signals.status("b") == Status.DEGRADED


# -- driving the simulated upstream -----------------------------------------------------------------


@asynccontextmanager
async def routed(
    family: str, fmt: str, tmp_path: Path, clock: Any, **sim: Any
) -> AsyncIterator[tuple[Router, Signals, Any]]:
    """A router in front of one sim of ``family`` sending ``fmt`` rate-limit headers; the sim,
    the signals and the inventory share ``clock``."""
    app = build_sim_app(SimOptions(family=family, ratelimit=fmt, api_key="k", **sim), clock=clock)
    with ServerThread(app) as url:
        base = url + "/api/v1" if fmt == "openrouter" else url
        config = BackendConfig(provider=family, base_url=base, api_key="k", tier="local")  # type: ignore[arg-type]
        settings = InventoryConfig()
        ctx = RefreshContext(
            inventory=Inventory(),
            cooldowns=AuthCooldowns(MemoryStore(clock), clock),
            cache=ModelListCache(MemoryStore(clock)),
            clock=clock,
            settings=settings,
        )

        async def declared() -> dict[str, BackendConfig]:
            return {"up": config}

        reconciler = Reconciler(ctx, declared=declared, build_provider=build_provider)
        await reconciler.sync_declared()
        await reconciler.cycle()
        signals = Signals(FileStore(tmp_path / "cache", clock), clock, SignalsConfig())
        router = standalone_router(
            Resolver(ctx.inventory, {}, frozenset({"up"})), reconciler, clock, signals=signals
        )
        try:
            yield router, signals, app
        finally:
            await reconciler.aclose()


FAMILIES = [
    ("openai", "openai", "gpt-4o-mini"),
    ("anthropic", "anthropic", "claude-sonnet-4-6"),
    ("openai", "openrouter", "gpt-4o-mini"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("family", "fmt", "model"), FAMILIES, ids=[f for _, f, _ in FAMILIES])
async def test_quota_counts_down_exhausts_at_zero_and_recovers_after_the_reset(
    family: str, fmt: str, model: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    async with routed(family, fmt, tmp_path, clock, rpm=3) as (router, signals, sim):
        body = {"model": model, "messages": CHAT}
        seen = []
        for _ in range(3):
            await router.send(Operation.CHAT, body, orjson.dumps(body))
            sig = signals.get("up")
            assert sig is not None
            assert sig.requests is not None
            seen.append(sig.requests.remaining)
        assert seen == [2, 1, 0]
        assert sig.requests.limit == 3
        assert signals.status("up") == Status.EXHAUSTED
        reset_at = sig.requests.reset_at
        assert reset_at is not None
        assert math.isclose(reset_at, clock.now() + 60, abs_tol=1.0)  # the sim's 60 s window
        calls = sim.stats.inference_requests
        with pytest.raises(QuotaExhausted) as refused:  # skipped until the reset: not even asked
            await router.send(Operation.CHAT, body, orjson.dumps(body))
        assert sim.stats.inference_requests == calls
        assert math.isclose(refused.value.retry_after, 60, abs_tol=1.0)
        assert refused.value.headers()["retry-after"] in ("59", "60", "61")
        assert signals.status("up") == Status.EXHAUSTED
        clock.advance(61)
        assert signals.status("up") == Status.AVAILABLE  # the reset passed: back by itself
        await router.send(Operation.CHAT, body, orjson.dumps(body))
        assert sig.requests.remaining == 2  # a new window
        assert sig.latency.summary().samples == 4
        assert set(sig.lanes) == {
            ln.id for ln in router.resolver.inventory.by_model(model) if ln.type == "chat"
        }


@pytest.mark.anyio
async def test_signals_persist_and_survive_a_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    async with routed("openai", "openai", tmp_path, clock, rpm=10) as (router, signals, _):
        for _ in range(3):
            body = {"model": "gpt-4o-mini", "messages": CHAT}
            await router.send(Operation.CHAT, body, orjson.dumps(body))
        assert await signals.flush() == 1
        assert await signals.flush() == 0  # nothing changed since
        before = signals.snapshot()
    reborn = Signals(FileStore(tmp_path / "cache", clock), clock, SignalsConfig())
    assert await reborn.load() == 1
    assert reborn.snapshot() == before
    clock.advance(301)  # the persisted copy honours the TTL
    assert await Signals(FileStore(tmp_path / "cache", clock), clock, SignalsConfig()).load() == 0


@pytest.mark.anyio
async def test_streams_keep_time_to_first_byte_apart_from_total_time(tmp_path: Path) -> None:
    async with routed("openai", "openai", tmp_path, SystemClock(), rpm=100, tokens_per_second=200) as (
        router,
        signals,
        sim,
    ):
        served = await router.stream(Operation.CHAT, STREAM, orjson.dumps(STREAM))
        frames = [frame async for frame in served.result]
        await served.result.aclose()
        assert b"".join(frames).endswith(b"data: [DONE]\n\n")  # upstream chunks pass through as they come
        sig = signals.get("up")
        assert sig is not None
        ttft, total = sig.ttft.summary(), sig.latency.summary()
        assert (ttft.samples, total.samples) == (1, 1)
        assert ttft.p50 is not None
        assert total.p50 is not None
        assert ttft.p50 <= total.p50
        assert sig.requests is not None
        assert sig.requests.remaining == 99

        sim.options.drop_after_chunks = 2  # a stream that breaks after it started
        served = await router.stream(Operation.CHAT, STREAM, orjson.dumps(STREAM))
        with pytest.raises(StreamBroken):
            async for _ in served.result:
                pass
        await served.result.aclose()
        assert signals.status("up") == Status.DEGRADED
        assert sig.ttft.summary().samples == 2
        assert sig.latency.summary().samples == 1  # a broken stream has no total time


# -- probes -------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("family", "suffix", "path"),
    [
        ("openai", "", "/v1/models"),
        ("openai", "/v1", "/v1/models"),
        ("ollama", "", "/api/tags"),
        ("ollama", "/v1", "/api/tags"),
    ],
)
async def test_local_backends_are_probed_cheaply_with_or_without_v1(
    sim_factory: Any, family: str, suffix: str, path: str
) -> None:
    sim = sim_factory(family=family)
    provider = build_provider("local", BackendConfig(provider=family, base_url=sim.url + suffix))  # type: ignore[arg-type]
    clock = ManualClock()
    signals = Signals(MemoryStore(clock), clock, SignalsConfig())
    try:
        await signals.refresh("local", family, provider.probe)
    finally:
        await provider.aclose()
    assert signals.status("local") == Status.AVAILABLE
    assert sim.stats.requests_by_path == {path: 1}
    assert sim.stats.inference_requests == 0  # never a completion


@pytest.mark.anyio
async def test_concurrent_probes_of_one_backend_are_coalesced_and_bounded_by_the_deadline(
    sim_factory: Any,
) -> None:
    sim = sim_factory(family="ollama", hang_discovery=True)
    provider = build_provider("gpu", BackendConfig(provider="ollama", base_url=sim.url))
    clock = ManualClock()
    signals = Signals(MemoryStore(clock), clock, SignalsConfig(refresh_deadline=5))
    try:
        probes = asyncio.gather(*(signals.refresh("gpu", "ollama", provider.probe) for _ in range(5)))
        for _ in range(1000):
            if sim.stats.requests_by_path.get("/api/tags"):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert sim.stats.requests_by_path == {"/api/tags": 1}  # five callers, one probe
        clock.advance(5)
        await asyncio.wait_for(probes, 10)
        sig = signals.get("gpu")
        assert sig is not None
        assert sig.last_error == "probe timed out after 5s"
        assert signals.status("gpu") == Status.DEGRADED  # the error turned unknown into degraded
        sim.options.hang_discovery = False
        await signals.refresh("gpu", "ollama", provider.probe)
        assert signals.status("gpu") == Status.AVAILABLE
    finally:
        await provider.aclose()


@pytest.mark.anyio
async def test_the_gateway_probes_local_backends_and_serves_signals(
    gateway_factory: Any, sim_factory: Any
) -> None:
    import aiohttp

    from laneway.gateway import GatewayOptions
    from tests.conftest import CLIENT_KEY

    local = sim_factory(family="ollama")
    cloud = sim_factory(family="openai", ratelimit="openai", rpm=10, tpm=100_000)
    gw = gateway_factory(
        {
            "auth": {"keys": [{"name": "ops", "key": CLIENT_KEY, "admin": True}]},
            "backends": {
                "gpu": {"provider": "ollama", "base_url": local.url},
                "oai": {"provider": "openai", "base_url": cloud.url},
            },
            "signals": {"probe_interval": 0.05, "flush_interval": 0.05},
        },
        options=GatewayOptions(schedule=True, key_reload_interval=3600),
    )
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(500):  # a bound on waiting for the first probes, not a timing assertion
            async with session.get(gw.url + "/admin/signals") as resp:
                shown = {s["backend"]: s for s in (await resp.json())["signals"]}
            if "gpu" in shown and shown["gpu"]["status"] == "available":
                break
            await asyncio.sleep(0.02)
        assert shown["gpu"]["status"] == "available"
        assert local.stats.inference_requests == 0  # probed with /api/tags only
        assert local.stats.requests_by_path.get("/api/tags", 0) >= 2  # discovery, then probes
        assert "oai" not in shown  # cloud backends are never probed: nothing known yet
        assert cloud.stats.requests_by_path.get("/v1/models") == 1  # discovery only

        body = {"model": "gpt-4o-mini", "messages": CHAT}
        async with session.post(gw.v1 + "/chat/completions", json=body) as resp:
            assert resp.status == 200
        async with session.get(gw.url + "/admin/signals?backend=oai") as resp:
            (oai,) = (await resp.json())["signals"]
        assert oai["status"] == "available"
        assert oai["requests"]["remaining"] == 9
        assert oai["requests"]["limit"] == 10
        assert oai["latency"]["samples"] == 1
