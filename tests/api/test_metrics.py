"""``GET /metrics`` of a real gateway in front of simulated upstreams that send OpenAI's rate-limit
headers: what Prometheus would scrape, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from laneway.api.app import build_app
from laneway.config import settings_from_data
from laneway.gateway import Gateway, GatewayOptions
from laneway.inventory.lanes import Health
from laneway.signals.state import Status
from tests.conftest import CLIENT_KEY, OPENAI_KEY, RunningGateway, Sim

RPM, TPM = 5, 10_000
ADMIN_KEY = "lw-test-admin-key"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# Monotonic counts are counters (``..._total``), the RED timings histograms; everything else is a gauge.
COUNTERS = frozenset(f"laneway_pool_{name}" for name in ("served", "rejected", "timed_out", "cancelled")) | {
    "laneway_requests",
    "laneway_tokens",
    "laneway_errors",
    "laneway_http_connections_cut",
    "laneway_records_written",
    "laneway_records_dropped",
    "laneway_record_write_failures",
}
HISTOGRAMS = frozenset({"laneway_request_duration_seconds", "laneway_request_ttft_seconds"})


def metric_type(name: str) -> str:
    return "counter" if name in COUNTERS else "histogram" if name in HISTOGRAMS else "gauge"


def config(sims: dict[str, Sim]) -> dict[str, Any]:
    return {
        "auth": {
            "keys": [{"name": "ops", "key": ADMIN_KEY, "admin": True}, {"name": "app", "key": CLIENT_KEY}]
        },
        "backends": {
            "oai": {"provider": "openai", "base_url": sims["openai"].url + "/v1", "api_key": OPENAI_KEY},
            "gpu-1": {"provider": "ollama", "base_url": sims["ollama"].url},
        },
    }


@pytest.fixture
def gw(gateway_factory: Any, sim_factory: Any) -> RunningGateway:
    """An OpenAI-family sim with a 5 rpm / 10k tpm window, and an Ollama sim nobody calls (its
    lanes are discovered, but without probes it has no signal yet)."""
    sims = {
        "openai": sim_factory(family="openai", api_key=OPENAI_KEY, ratelimit="openai", rpm=RPM, tpm=TPM),
        "ollama": sim_factory(family="ollama"),
    }
    running: RunningGateway = gateway_factory(config(sims), sims)
    return running


async def chat(gw: RunningGateway, n: int) -> None:
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        for _ in range(n):
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello metrics"}]
            )
            assert reply.choices[0].message.content


async def scrape(gw: RunningGateway) -> tuple[str, Samples]:
    """The content type and every sample, keyed by name and labels (no key: /metrics is open)."""
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as r:
        assert r.status == 200
        content_type, text = r.headers["content-type"], await r.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == metric_type(family.name), family.name
        for s in family.samples:
            samples[s.name, frozenset(s.labels.items())] = s.value
    return content_type, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {key: v for (n, key), v in samples.items() if n == name and wanted <= key}


@pytest.mark.anyio
async def test_metrics_show_the_quota_the_upstream_reported(gw: RunningGateway) -> None:
    await chat(gw, 3)
    content_type, samples = await scrape(gw)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"

    # What the sim's headers said after the third call: its limiter's own counts.
    limiter = gw.sims["openai"].app.limiter
    assert limiter.requests == 3
    oai = {"backend": "oai", "family": "openai"}
    assert value(samples, "laneway_quota_remaining", **oai, kind="requests") == RPM - 3
    used = limiter.input_tokens + limiter.output_tokens
    assert used > 0
    assert value(samples, "laneway_quota_remaining", **oai, kind="tokens") == TPM - used
    assert value(samples, "laneway_quota_limit", **oai, kind="requests") == RPM
    assert value(samples, "laneway_quota_limit", **oai, kind="tokens") == TPM
    for kind in ("requests", "tokens"):
        reset = value(samples, "laneway_quota_reset_seconds", **oai, kind=kind)
        assert reset is not None
        assert 0 < reset <= 60  # the sim's window is 60 s

    # The same numbers the gateway's own snapshot holds.
    assert gw.gateway.signals is not None
    (snapshot,) = [s for s in gw.gateway.signals.snapshot() if s["backend"] == "oai"]
    assert snapshot["requests"]["remaining"] == RPM - 3
    assert snapshot["tokens"]["remaining"] == TPM - used


@pytest.mark.anyio
async def test_status_is_one_hot_for_every_declared_backend(gw: RunningGateway) -> None:
    await chat(gw, 1)
    _, samples = await scrape(gw)
    expected = {"oai": Status.AVAILABLE, "gpu-1": Status.UNKNOWN}  # gpu-1: never called nor probed
    for backend, current in expected.items():
        statuses = series(samples, "laneway_backend_status", backend=backend)
        assert {dict(k)["status"]: v for k, v in statuses.items()} == {
            s.value: (1.0 if s is current else 0.0) for s in Status
        }
    # Nothing observed about gpu-1: no quota, no latency, rather than zeros.
    assert not series(samples, "laneway_quota_remaining", backend="gpu-1")
    assert not series(samples, "laneway_latency_seconds", backend="gpu-1")
    assert not series(samples, "laneway_quota_remaining", backend="oai", kind="nope")


@pytest.mark.anyio
async def test_a_spent_window_reads_exhausted_until_its_reset(gw: RunningGateway) -> None:
    await chat(gw, RPM)
    _, samples = await scrape(gw)
    oai = {"backend": "oai", "family": "openai"}
    assert value(samples, "laneway_quota_remaining", **oai, kind="requests") == 0
    assert value(samples, "laneway_backend_status", **oai, status="exhausted") == 1
    assert value(samples, "laneway_backend_status", **oai, status="available") == 0


@pytest.mark.anyio
async def test_latency_quantiles_per_backend_and_lane(gw: RunningGateway) -> None:
    await chat(gw, 3)
    _, samples = await scrape(gw)
    oai = {"backend": "oai", "family": "openai"}
    p50 = value(samples, "laneway_latency_seconds", **oai, quantile="0.5")
    p95 = value(samples, "laneway_latency_seconds", **oai, quantile="0.95")
    assert p50 is not None
    assert p95 is not None
    assert 0 <= p50 <= p95 < 10
    lane = "cloud:openai:oai:chat:gpt-4o-mini"
    lanes = series(samples, "laneway_lane_latency_seconds", **oai)
    assert {dict(k)["lane"] for k in lanes} == {lane}
    assert value(samples, "laneway_lane_latency_seconds", **oai, lane=lane, quantile="0.5") == p50
    assert not series(samples, "laneway_ttft_seconds")  # nothing was streamed


@pytest.mark.anyio
async def test_lane_gauges_match_the_inventory(gw: RunningGateway) -> None:
    _, samples = await scrape(gw)
    counts = Counter((lane.backend, lane.health) for lane in gw.gateway.inventory.lanes())
    assert sum(counts.values()) == len(gw.gateway.inventory) > 0
    for backend in ("oai", "gpu-1"):
        shown = series(samples, "laneway_lanes", backend=backend)
        assert {dict(k)["health"]: v for k, v in shown.items()} == {
            h.value: counts[backend, h] for h in Health
        }

    assert gw.gateway.reconciler is not None
    for st in gw.gateway.reconciler.statuses():
        labels = {"backend": st.name, "family": st.family}
        assert value(samples, "laneway_backend_last_refresh_timestamp_seconds", **labels) == pytest.approx(
            st.last_refresh
        )
        assert value(samples, "laneway_backend_auth_cooldown_seconds", **labels) == 0
        assert value(samples, "laneway_backend_refresh_error", **labels) == 0


@pytest.mark.anyio
async def test_a_refused_refresh_shows_as_error_and_cooldown(gw: RunningGateway) -> None:
    gw.sims["openai"].options.forbidden_keys = [OPENAI_KEY]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.url + "/admin/refresh?backend=oai&cache=false", headers={"x-api-key": ADMIN_KEY}
        ) as r,
    ):
        assert r.status == 200
    _, samples = await scrape(gw)
    oai = {"backend": "oai", "family": "openai"}
    assert value(samples, "laneway_backend_refresh_error", **oai) == 1
    cooldown = value(samples, "laneway_backend_auth_cooldown_seconds", **oai)
    assert cooldown is not None
    assert cooldown > 0
    assert value(samples, "laneway_lanes", **oai, health="denied") == 3
    assert value(samples, "laneway_lanes", **oai, health="healthy") == 0


@pytest.mark.anyio
async def test_every_app_has_its_own_registry(tmp_path: Path) -> None:
    """Two apps in one process do not clash, and nothing lands in prometheus_client's global
    registry (a second registration there would raise)."""
    settings = [
        settings_from_data({"storage": {"data_dir": str(tmp_path / name)}}, source="test-config.yaml")
        for name in ("a", "b")
    ]
    options = GatewayOptions(schedule=False, key_reload_interval=3600)
    async with (
        await Gateway.open(settings[0], options=options) as a,
        await Gateway.open(settings[1], options=options) as b,
    ):
        build_app(a)
        build_app(b)
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("laneway") for name in names)


async def scrape_until(gw: RunningGateway, ready: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape until ``ready`` holds: bounded by a number of scrapes, not by a time."""
    for _ in range(500):
        _, samples = await scrape(gw)
        if ready(samples):
            return samples
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw {what}")


# --- pools, breakers, failover records ------------------------------------------------------------

SLOW_LANE = "cloud:openai:slow:chat:gpt-4o-mini"


def one_backend(sim: Sim, **extra: Any) -> dict[str, Any]:
    return {
        "auth": {
            "keys": [{"name": "ops", "key": ADMIN_KEY, "admin": True}, {"name": "app", "key": CLIENT_KEY}]
        },
        "backends": {
            "slow": {"provider": "openai", "base_url": sim.url + "/v1", "api_key": OPENAI_KEY, "slots": 1}
        },
        **extra,
    }


async def post_chat(session: aiohttp.ClientSession, gw: RunningGateway) -> int:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hold the slot"}]}
    headers = {"authorization": f"Bearer {gw.key}"}
    async with session.post(gw.v1 + "/chat/completions", json=body, headers=headers) as r:
        await r.read()
        return r.status


@pytest.mark.anyio
async def test_pool_gauges_show_who_holds_the_slot_and_who_waits(
    gateway_factory: Any, sim_factory: Any
) -> None:
    """One slot: a first request holds it (the sim takes a minute to answer), a second waits. The
    waiter's client leaves first (cancelled while queued), then the holder's (the slot comes back)."""
    sim = sim_factory(family="openai", api_key=OPENAI_KEY, latency=60)
    gw: RunningGateway = gateway_factory(one_backend(sim), {"openai": sim})
    _, before = await scrape(gw)
    assert not series(before, "laneway_pool_slots")  # a pool appears with its first request

    async with aiohttp.ClientSession() as session:
        holder = asyncio.create_task(post_chat(session, gw))
        await scrape_until(gw, lambda s: value(s, "laneway_pool_active", pool="slow") == 1, "the slot held")
        waiter = asyncio.create_task(post_chat(session, gw))
        samples = await scrape_until(
            gw, lambda s: value(s, "laneway_pool_queued", pool="slow") == 1, "a queued request"
        )
        assert value(samples, "laneway_pool_slots", pool="slow") == 1
        assert value(samples, "laneway_pool_active", pool="slow") == 1
        assert value(samples, "laneway_pool_queued_by_caller", pool="slow", caller="app") == 1
        assert value(samples, "laneway_pool_served_total", pool="slow") == 1
        # The one request served waited for nothing; the window has that one sample.
        assert value(samples, "laneway_pool_wait_seconds", pool="slow", quantile="0.5") == 0
        assert value(samples, "laneway_pool_wait_seconds", pool="slow", quantile="0.95") == 0
        for name in ("rejected", "timed_out", "cancelled"):
            assert value(samples, f"laneway_pool_{name}_total", pool="slow") == 0
        assert value(samples, "laneway_failover_records") == 0
        assert not series(samples, "laneway_breaker_state")

        waiter.cancel()
        samples = await scrape_until(
            gw, lambda s: value(s, "laneway_pool_cancelled_total", pool="slow") == 1, "the waiter gone"
        )
        assert value(samples, "laneway_pool_queued", pool="slow") == 0
        assert not series(samples, "laneway_pool_queued_by_caller")  # only callers queued now
        assert value(samples, "laneway_pool_active", pool="slow") == 1

        holder.cancel()
        samples = await scrape_until(
            gw, lambda s: value(s, "laneway_pool_active", pool="slow") == 0, "the slot back"
        )
        await asyncio.gather(holder, waiter, return_exceptions=True)

    assert value(samples, "laneway_pool_served_total", pool="slow") == 1
    assert value(samples, "laneway_pool_cancelled_total", pool="slow") == 1
    (stats,) = gw.gateway.pools.statistics()
    assert (stats.active, stats.queued) == (0, 0)


@pytest.mark.anyio
async def test_breaker_gauges_follow_a_failing_lane(gateway_factory: Any, sim_factory: Any) -> None:
    sim = sim_factory(family="openai", api_key=OPENAI_KEY, fail_status=500)
    config = one_backend(sim, routing={"breaker": {"failures": 2, "cooldown": 30}})
    gw: RunningGateway = gateway_factory(config, {"openai": sim})

    async with aiohttp.ClientSession() as session:
        assert await post_chat(session, gw) == 502
        _, samples = await scrape(gw)
        # One failure: still closed, but no longer plainly so.
        states = series(samples, "laneway_breaker_state", lane=SLOW_LANE)
        assert {dict(k)["state"]: v for k, v in states.items()} == {"closed": 1, "open": 0, "half-open": 0}
        assert value(samples, "laneway_breaker_recent_failures", lane=SLOW_LANE) == 1
        assert value(samples, "laneway_breaker_open_seconds", lane=SLOW_LANE) == 0

        assert await post_chat(session, gw) == 502
        _, samples = await scrape(gw)

    states = series(samples, "laneway_breaker_state", lane=SLOW_LANE)
    assert {dict(k)["state"]: v for k, v in states.items()} == {"closed": 0, "open": 1, "half-open": 0}
    assert value(samples, "laneway_breaker_recent_failures", lane=SLOW_LANE) == 0  # cleared on opening
    open_for = value(samples, "laneway_breaker_open_seconds", lane=SLOW_LANE)
    assert open_for is not None
    assert 0 < open_for <= 30
    assert {dict(k)["lane"] for k in series(samples, "laneway_breaker_state")} == {SLOW_LANE}
    # Both requests failed: each left a record. The pool served both attempts.
    assert value(samples, "laneway_failover_records") == 2
    assert value(samples, "laneway_pool_served_total", pool="slow") == 2
    assert value(samples, "laneway_lanes", backend="slow", family="openai", health="open") == 1
    # Both records reach the database, written off the request path (within about a second).
    samples = await scrape_until(
        gw, lambda s: value(s, "laneway_records_written_total", kind="failovers") == 2, "both written"
    )
    assert value(samples, "laneway_records_buffered", kind="failovers") == 0
    assert value(samples, "laneway_records_dropped_total", kind="failovers") == 0
    assert value(samples, "laneway_record_write_failures_total", kind="failovers") == 0
    assert value(samples, "laneway_records_written_total", kind="usage") == 0  # neither was served
