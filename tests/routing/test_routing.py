"""Ranking (a pure function), per-lane breakers on an injected clock, and the router's pools,
usage and stale-lane handling through a real gateway."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from laneway.clock import ManualClock
from laneway.config.schema import BreakerConfig
from laneway.inventory.lanes import Health, Lane
from laneway.inventory.store import Inventory
from laneway.routing.breaker import CLOSED, HALF_OPEN, OPEN, Breakers
from laneway.routing.rank import Facts, rank, spread
from tests.conftest import CLIENT_KEY

CHAT = [{"role": "user", "content": "hi"}]
ADMIN = {"keys": [{"name": "ops", "key": CLIENT_KEY, "admin": True}]}


# -- ranking -----------------------------------------------------------------------------------------


def order(facts: list[Facts], seed: int = 7) -> list[str]:
    return [f.lane_id for f in rank(facts, lambda f: f, seed)]


def test_ranking_skips_exhausted_and_orders_by_status_weight_queue_latency_quota() -> None:
    assert order(
        [
            Facts("exhausted", 1e9, "exhausted"),
            Facts("degraded", 1e9, "degraded"),
            Facts("unknown", 100, "unknown"),
            Facts("available", 100, "available"),
        ]
    ) == ["available", "unknown", "degraded"]
    assert order([Facts("light", 100, "available"), Facts("heavy", 200, "available")]) == ["heavy", "light"]
    assert order([Facts("busy", 100, queued=5), Facts("idle", 100, queued=0)]) == ["idle", "busy"]
    assert order([Facts("slow", 100, p50=0.900), Facts("fast", 100, p50=0.200)]) == ["fast", "slow"]
    # a small pool already serving yields to an idle equal; a big one lets latency decide
    assert order([Facts("serving", 100, busy=1 / 2), Facts("idle", 100, busy=0.0)]) == ["idle", "serving"]
    assert order([Facts("fast", 100, busy=3 / 64, p50=0.2), Facts("slow", 100, p50=0.9)]) == ["fast", "slow"]
    assert order([Facts("queued", 100, queued=1), Facts("full", 100, busy=1.0)]) == ["full", "queued"]
    # within one 25% latency step, more quota left wins
    assert order(
        [Facts("poor", 100, p50=0.60, quota_share=0.1), Facts("rich", 100, p50=0.62, quota_share=0.9)]
    ) == [
        "rich",
        "poor",
    ]
    # a lane that has not been measured yet is not starved behind measured ones
    assert order([Facts("measured", 100, p50=0.3), Facts("new", 100, p50=None)]) == ["new", "measured"]
    # a route's selector order is never crossed
    assert order(
        [Facts("second-choice", 1e9, "available", group=1), Facts("first-choice", 1, "degraded")]
    ) == [
        "first-choice",
        "second-choice",
    ]


def test_ranking_ties_are_broken_by_the_seed_deterministically() -> None:
    equal = [Facts(f"lane-{i}", 100) for i in range(8)]
    assert order(equal, seed=1) == order(equal, seed=1)
    orders = {tuple(order(equal, seed=s)) for s in range(20)}
    assert len(orders) > 10  # different seeds spread the load over equal lanes
    firsts = {order(equal, seed=s)[0] for s in range(50)}
    assert len(firsts) >= 5


def test_equal_lanes_share_the_first_place_by_two_random_choices() -> None:
    equal = [(f"lane-{i}", Facts(f"lane-{i}", 100, "available")) for i in range(3)]
    rng = random.Random(7)
    firsts = Counter(spread(equal, rng)[0] for _ in range(3000))
    assert set(firsts) == {"lane-0", "lane-1", "lane-2"}
    assert all(800 <= n <= 1200 for n in firsts.values()), firsts
    assert spread(equal, random.Random(7)) == spread(equal, random.Random(7))  # one seed, one order
    for seed in range(20):  # behind the first, the ranked order stands (for failover)
        order = spread(equal, random.Random(seed))
        assert order[1:] == sorted(order[1:])


def firsts(ranked: list[tuple[str, Facts]]) -> set[str]:
    """Every lane ``spread`` puts first, over twenty seeds."""
    return {spread(ranked, random.Random(seed))[0] for seed in range(20)}


def test_of_two_equals_drawn_the_less_loaded_goes_first() -> None:
    def pair(a: Facts, b: Facts) -> set[str]:
        return firsts([("a", a), ("b", b)])

    assert pair(Facts("a", 100, queued=1), Facts("b", 100)) == {"b"}
    assert pair(Facts("a", 100, busy=2 / 64), Facts("b", 100, busy=1 / 64)) == {"b"}
    assert pair(Facts("a", 100, p50=0.5), Facts("b", 100, p50=0.2)) == {"b"}  # twice as slow: yields
    # within twice the latency it is a tie, drawn at random: no lane starves behind noise
    assert pair(Facts("a", 100, p50=0.3), Facts("b", 100, p50=0.2)) == {"a", "b"}
    assert pair(Facts("a", 100, p50=None), Facts("b", 100, p50=0.2)) == {"a"}  # unmeasured counts as fast
    # a lane nobody called yet is an equal of an available one (else it would never be called)
    assert pair(Facts("a", 100, "available"), Facts("b", 100, "unknown")) == {"a", "b"}
    # lanes that are not equals keep the ranked order
    assert pair(Facts("a", 200), Facts("b", 100)) == {"a"}
    assert pair(Facts("a", 100, "available"), Facts("b", 100, "degraded")) == {"a"}
    assert pair(Facts("a", 100, group=0), Facts("b", 100, group=1)) == {"a"}


# -- breakers ------------------------------------------------------------------------------------------


def breakers_with_lane() -> tuple[Breakers, Inventory, ManualClock, str]:
    clock = ManualClock()
    inventory = Inventory()
    lane = Lane("local", "ollama", "gpu", "chat", "m")
    inventory.write_lanes([lane])
    return (
        Breakers(clock, BreakerConfig(failures=3, window=60, cooldown=30), inventory),
        inventory,
        clock,
        lane.id,
    )


def test_a_breaker_opens_on_failures_in_the_window_then_half_opens_and_closes_on_schedule() -> None:
    breakers, inventory, clock, lane = breakers_with_lane()
    breakers.failure(lane)
    clock.advance(61)  # out of the window: forgotten
    breakers.failure(lane)
    breakers.failure(lane)
    assert breakers.get(lane).state == CLOSED  # type: ignore[union-attr]
    breakers.failure(lane)  # the third within 60 s
    assert breakers.get(lane).state == OPEN  # type: ignore[union-attr]
    assert inventory.get(lane).health == Health.OPEN  # type: ignore[union-attr]
    assert not inventory.get(lane).routable  # type: ignore[union-attr]
    assert not breakers.allow(lane)
    clock.advance(29)
    breakers.advance()
    assert breakers.get(lane).state == OPEN  # type: ignore[union-attr]
    clock.advance(1)
    breakers.advance()
    assert breakers.get(lane).state == HALF_OPEN  # type: ignore[union-attr]
    assert inventory.get(lane).health == Health.HALF_OPEN  # type: ignore[union-attr]
    assert inventory.get(lane).weight == 50  # type: ignore[union-attr]
    assert breakers.allow(lane)  # one trial
    assert not breakers.allow(lane)  # ... at a time
    breakers.success(lane)
    assert breakers.get(lane) is None
    assert inventory.get(lane).health == Health.HEALTHY  # type: ignore[union-attr]


def test_a_breaker_counts_failures_in_its_window_successes_in_between_or_not() -> None:
    breakers, inventory, clock, lane = breakers_with_lane()  # 3 failures in 60 s open it
    for _ in range(2):  # a lane that fails one call in two
        breakers.failure(lane)
        clock.advance(10)
        breakers.success(lane)
        clock.advance(10)
    assert breakers.get(lane).state == CLOSED  # type: ignore[union-attr]
    breakers.failure(lane)  # the third within 60 s: the successes did not wipe the first two
    assert breakers.get(lane).state == OPEN  # type: ignore[union-attr]
    assert inventory.get(lane).health == Health.OPEN  # type: ignore[union-attr]


def test_a_reopened_breaker_keeps_the_later_deadline() -> None:
    breakers, _, clock, lane = breakers_with_lane()
    for _ in range(3):
        breakers.failure(lane)
    clock.advance(30)
    breakers.advance()
    assert breakers.allow(lane)
    breakers.failure(lane)  # the trial failed: open again, for a fresh cooldown
    breaker = breakers.get(lane)
    assert breaker is not None
    assert breaker.state == OPEN
    assert breaker.open_until == clock.monotonic() + 30
    clock.advance(10)
    breakers.failure(lane)  # a call that was in flight fails later: never shortens it
    assert breaker.open_until == clock.monotonic() + 30
    clock.advance(5)
    before = breaker.open_until
    breakers._open_breaker(lane, breaker, clock.monotonic() - 100)  # an older deadline loses
    assert breaker.open_until == before


def test_breakers_never_overwrite_an_auth_denial() -> None:
    breakers, inventory, clock, lane = breakers_with_lane()
    inventory.set_health([lane], Health.DENIED)
    for _ in range(3):
        breakers.failure(lane)
    assert inventory.get(lane).health == Health.DENIED  # type: ignore[union-attr]
    clock.advance(30)
    breakers.advance()
    assert inventory.get(lane).health == Health.DENIED  # type: ignore[union-attr]


# -- through the gateway --------------------------------------------------------------------------------


async def admin_get(url: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession(headers={"authorization": f"Bearer {CLIENT_KEY}"}) as s,
        s.get(url + path) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


@pytest.mark.anyio
async def test_a_caller_that_leaves_while_queued_never_reaches_the_upstream(
    gateway_factory: Any, sim_factory: Any
) -> None:
    sim = sim_factory(family="openai", latency=0.5)
    gw = gateway_factory(
        {
            "auth": ADMIN,
            "backends": {"one": {"provider": "openai", "base_url": sim.url, "slots": 1, "tier": "local"}},
        }
    )
    body = {"model": "gpt-4o-mini", "messages": CHAT}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        holder = asyncio.create_task(session.post(gw.v1 + "/chat/completions", json=body))
        for _ in range(500):  # bounded: wait until the one slot is taken upstream
            if sim.stats.inference_requests == 1:
                break
            await asyncio.sleep(0.01)
        waiters = [
            asyncio.create_task(session.post(gw.v1 + "/chat/completions", json=body)) for _ in range(20)
        ]
        for _ in range(500):
            pools = (await admin_get(gw.url, "/admin/pools"))["pools"]
            if pools and pools[0]["queued"] == 20:
                break
            await asyncio.sleep(0.01)
        assert pools[0]["active"] == 1
        assert pools[0]["queued"] == 20
        for waiter in waiters:  # every queued client walks away
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        resp = await holder
        assert resp.status == 200
        resp.release()
        for _ in range(500):
            pool = (await admin_get(gw.url, "/admin/pools"))["pools"][0]
            if pool["queued"] == 0 and pool["active"] == 0:
                break
            await asyncio.sleep(0.01)
    assert (pool["active"], pool["queued"]) == (0, 0)
    assert pool["cancelled"] == 20
    assert sim.stats.inference_requests == 1  # none of the twenty ran


@pytest.mark.anyio
async def test_served_requests_are_recorded_as_usage(gateway_factory: Any, sim_factory: Any) -> None:
    sim = sim_factory(family="ollama", models=["llama3:8b"])
    gw = gateway_factory({"auth": ADMIN, "backends": {"gpu": {"provider": "ollama", "base_url": sim.url}}})
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0) as client:
        await client.chat.completions.create(model="llama3:8b", messages=CHAT)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(model="llama3:8b", messages=CHAT, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass
    for _ in range(500):  # the recorder writes in batches, off the request path, every second
        rows = (await admin_get(gw.url, "/admin/usage?group_by=lane"))["rows"]
        if rows and rows[0]["requests"] == 2:
            break
        await asyncio.sleep(0.02)
    assert len(rows) == 1
    assert rows[0]["requests"] == 2
    assert rows[0]["lane"] == "local:ollama:gpu:chat:llama3%3A8b"
    assert rows[0]["prompt_tokens"] > 0
    assert rows[0]["completion_tokens"] > 0


@pytest.mark.anyio
async def test_three_equal_backends_of_one_model_share_its_load(
    gateway_factory: Any, sim_factory: Any
) -> None:
    sims = {name: sim_factory(family="openai", models=["gpt-4o-mini"]) for name in ("a", "b", "c")}
    backends = {name: {"provider": "openai", "base_url": sim.url} for name, sim in sims.items()}
    gw = gateway_factory({"auth": ADMIN, "backends": backends, "routing": {"seed": 7}})
    body = {"model": "gpt-4o-mini", "messages": CHAT}
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {CLIENT_KEY}"}) as session:

        async def client(requests: int) -> None:
            for _ in range(requests):
                async with session.post(gw.v1 + "/chat/completions", json=body) as resp:
                    assert resp.status == 200, await resp.text()

        await client(150)  # one at a time
        await asyncio.gather(*(client(25) for _ in range(6)))  # and six at a time
    served = {name: sim.stats.inference_requests for name, sim in sims.items()}
    assert sum(served.values()) == 300
    assert all(60 <= n <= 140 for n in served.values()), served  # a fair share is 100


@pytest.mark.anyio
async def test_a_404_marks_the_lane_stale_and_the_next_lane_serves(
    gateway_factory: Any, sim_factory: Any, tmp_path: Path
) -> None:
    gone = sim_factory(family="openai")
    good = sim_factory(family="openai")
    gw = gateway_factory(
        {
            "auth": ADMIN,
            "backends": {
                "gone": {"provider": "openai", "base_url": gone.url, "tier": "local", "weight": 1000},
                "good": {"provider": "openai", "base_url": good.url, "tier": "local"},
            },
        }
    )
    gone.options.models = ["text-embedding-3-small"]  # gpt-4o-mini vanished since discovery
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
    assert raw.headers["x-laneway-backend"] == "good"
    assert raw.headers["x-laneway-attempts"] == "2"
    for _ in range(500):  # the stale lane's backend is refreshed at once: the lane goes
        lanes = (await admin_get(gw.url, "/admin/lanes?backend=gone&model=gpt-4o-mini"))["lanes"]
        if not lanes:
            break
        await asyncio.sleep(0.02)
    assert lanes == []


@pytest.mark.anyio
@pytest.mark.parametrize("holds", [False, True])
async def test_a_stream_holds_its_slot_while_starting_or_to_its_end_as_configured(
    gateway_factory: Any, sim_factory: Any, holds: bool
) -> None:
    sim = sim_factory(family="openai", tokens_per_second=20)  # a stream that takes a while
    gw = gateway_factory(
        {
            "auth": ADMIN,
            "backends": {
                "gpu": {
                    "provider": "openai",
                    "base_url": sim.url,
                    "tier": "local",
                    "stream_holds_slot": holds,
                }
            },
        }
    )
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)  # type: ignore[arg-type]
        first = await anext(aiter(stream))  # established, and streaming
        assert first.choices is not None
        (pool,) = (await admin_get(gw.url, "/admin/pools"))["pools"]
        assert pool["active"] == (1 if holds else 0)
        async for _ in stream:
            pass
    for _ in range(500):
        (pool,) = (await admin_get(gw.url, "/admin/pools"))["pools"]
        if pool["active"] == 0:
            break
        await asyncio.sleep(0.01)
    assert pool["active"] == 0  # released at the end either way


@pytest.mark.anyio
async def test_a_call_refused_for_its_credentials_starts_the_cooldown(
    gateway_factory: Any, sim_factory: Any
) -> None:
    sim = sim_factory(family="openai", api_key="good")
    gw = gateway_factory(
        {
            "auth": ADMIN,
            "backends": {
                "oai": {"provider": "openai", "base_url": sim.url, "api_key": "good", "tier": "local"}
            },
        }
    )
    sim.options.api_key = "rotated-upstream"
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
        assert refused.value.status_code == 502  # our credential, not the client's fault
        (backend,) = (await admin_get(gw.url, "/admin/backends"))["backends"]
        assert backend["cooldown_until"] is not None
        lanes = (await admin_get(gw.url, "/admin/lanes?backend=oai"))["lanes"]
        assert {ln["health"] for ln in lanes} == {"denied"}
        with pytest.raises(openai.APIStatusError) as out:  # out of rotation: not even asked
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)  # type: ignore[arg-type]
        assert out.value.status_code == 503
    assert sim.stats.requests_by_path["/v1/chat/completions"] == 1  # the refused one only
