"""Lanes that ask to be left alone for a moment (``routing.holdoff``): a 503 that says when to come
back is unavailability, not used-up quota nor ill health; a short Retry-After or quota reset is
waited out, on the injected clock and cancellably, instead of failing the request.

The router runs in the test's loop in front of real simulated upstreams on loopback, which share
the test's ``ManualClock`` (their rate-limit windows move only when the test advances it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from laneway.clock import ManualClock
from laneway.config.schema import BackendConfig, InventoryConfig, RoutingConfig, SignalsConfig
from laneway.errors import NoLaneAvailable, QuotaExhausted, UpstreamStatusError
from laneway.inventory.cooldown import AuthCooldowns
from laneway.inventory.modelcache import ModelListCache
from laneway.inventory.reconcile import Reconciler
from laneway.inventory.refresher import RefreshContext
from laneway.inventory.store import Inventory
from laneway.operations import Operation
from laneway.providers.base import Reply
from laneway.providers.registry import build_provider
from laneway.routing.dispatch import Router, Served
from laneway.routing.failover import RequestInfo
from laneway.routing.resolve import Resolver
from laneway.routing.standalone import standalone_router
from laneway.signals.state import Status
from laneway.signals.store import Signals
from laneway.sim.app import SimApp, build_sim_app
from laneway.sim.options import SimOptions
from laneway.storage import MemoryStore
from laneway.testing import ServerThread

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Bench:
    clock: ManualClock
    router: Router
    signals: Signals
    sims: dict[str, SimApp]

    async def send(self) -> Served[Reply]:
        return await self.router.send(Operation.CHAT, BODY, orjson.dumps(BODY), RequestInfo("tests"))

    def calls(self, name: str) -> int:
        return int(self.sims[name].stats.inference_requests)


@asynccontextmanager
async def bench(*names: str, **routing: Any) -> AsyncIterator[Bench]:
    """One OpenAI-compatible sim per name (the first far heavier, so it is tried first), all on
    one ``ManualClock`` with the router."""
    clock = ManualClock()
    sims = {name: build_sim_app(SimOptions(family="openai", models=[MODEL]), clock=clock) for name in names}
    async with AsyncExitStack() as stack:
        urls = {name: stack.enter_context(ServerThread(app)) for name, app in sims.items()}
        configs = {
            name: BackendConfig(provider="openai", base_url=url, weight=1000 if i == 0 else 100)
            for i, (name, url) in enumerate(urls.items())
        }
        store = MemoryStore(clock)
        ctx = RefreshContext(
            Inventory(), AuthCooldowns(store, clock), ModelListCache(store), clock, InventoryConfig()
        )

        async def declared() -> dict[str, BackendConfig]:
            return configs

        reconciler = Reconciler(ctx, declared=declared, build_provider=build_provider)
        stack.push_async_callback(reconciler.aclose)
        await reconciler.sync_declared()
        await reconciler.cycle()
        signals = Signals(store, clock, SignalsConfig())
        resolver = Resolver(ctx.inventory, {}, frozenset(configs))
        router = standalone_router(
            resolver, reconciler, clock, signals=signals, settings=RoutingConfig(**routing)
        )
        yield Bench(clock, router, signals, sims)


async def drive(clock: ManualClock, task: asyncio.Task[Any]) -> None:
    """Move the fake clock in half-second steps until ``task`` is done (bounded by a number of
    steps, not by a time): what it waits for on the clock then passes."""
    for _ in range(200):
        await asyncio.sleep(0.02)  # let it get as far as it can (the sims answer on real sockets)
        if task.done():
            return
        clock.advance(0.5)
    raise AssertionError("gave up driving the clock")


async def test_a_503_that_says_when_to_come_back_holds_the_backend_without_calling_it_out_of_quota() -> None:
    async with bench("first", "second") as b:
        assert (await b.send()).lane.backend == "first"
        first = b.sims["first"].options
        first.fail_status, first.fail_retry_after = 503, "30"
        served = await b.send()
        assert (served.lane.backend, served.attempts) == ("second", 2)
        served = await b.send()  # held for its 30 s: not even asked
        assert (served.lane.backend, served.attempts) == ("second", 1)
        assert b.calls("first") == 2
        # Unavailable, which is neither used-up quota nor ill health.
        assert b.signals.status("first") == Status.AVAILABLE
        sig = b.signals.get("first")
        assert sig is not None
        assert sig.exhausted_until is None
        assert sig.unavailable_until == b.clock.now() + 30
        assert b.router.breakers.snapshot() == {}
        (record,) = b.router.failovers.recent(2)
        assert [(a.outcome, a.status) for a in record.attempts] == [("unavailable", 503), ("served", None)]

        second = b.sims["second"].options
        second.fail_status, second.fail_retry_after = 503, "20"
        with pytest.raises(UpstreamStatusError):  # asked (it was not held), said 503: its error
            await b.send()
        with pytest.raises(NoLaneAvailable) as refused:  # both held now: a 503, not a 429
            await b.send()
        assert not isinstance(refused.value, QuotaExhausted)
        assert refused.value.retry_after == 20  # when the first of them is back
        assert (b.calls("first"), b.calls("second")) == (2, 3)

        b.clock.advance(20)
        second.fail_status = None
        assert (await b.send()).lane.backend == "second"  # back by itself
        assert b.signals.get("second").unavailable_until is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("status", "retry_after"), [(503, "2"), (529, "2"), (429, None)])
async def test_a_short_retry_after_is_waited_out_instead_of_failing(
    status: int, retry_after: str | None
) -> None:
    async with bench("only") as b:
        only = b.sims["only"].options
        only.fail_status, only.fail_first, only.fail_retry_after = status, 1, retry_after  # 429: "1"
        request = asyncio.create_task(b.send())
        await drive(b.clock, request)
        served = request.result()
        assert (served.lane.backend, served.attempts) == ("only", 2)
        assert b.calls("only") == 2


async def test_an_exhausted_lane_whose_reset_is_close_is_waited_out() -> None:
    async with bench("only") as b:
        only = b.sims["only"].options
        only.ratelimit, only.rpm = "openai", 1  # one request a minute, said in OpenAI's headers
        await b.send()
        assert b.signals.status("only") == Status.EXHAUSTED
        with pytest.raises(QuotaExhausted):  # its reset is a minute away: not worth waiting for
            await b.send()
        assert b.calls("only") == 1

        b.clock.advance(57)  # the reset is 3 s away now
        request = asyncio.create_task(b.send())
        await drive(b.clock, request)
        served = request.result()
        assert served.attempts == 1  # the lane was waited for, not tried in vain
        assert b.calls("only") == 2


async def test_a_request_waits_no_longer_than_retry_wait_nor_its_deadline() -> None:
    async with bench("only", retry_wait=1.5) as b:
        only = b.sims["only"].options
        only.fail_status, only.fail_retry_after = 503, "2"
        with pytest.raises(UpstreamStatusError):  # 2 s is more than its 1.5 s: its error at once
            await b.send()
    async with bench("only", deadline=1.0) as b:
        only = b.sims["only"].options
        only.fail_status, only.fail_retry_after = 503, "2"
        with pytest.raises(UpstreamStatusError):
            await b.send()
    async with bench("only") as b:
        only = b.sims["only"].options
        only.fail_status, only.fail_retry_after = 503, "2"  # every answer says "in 2 s"
        request = asyncio.create_task(b.send())
        await drive(b.clock, request)
        with pytest.raises(UpstreamStatusError):  # waited twice (4 s of its 5), then gave up
            request.result()
        assert b.calls("only") == 3  # its attempt budget


async def test_a_client_that_leaves_while_its_request_waits_ends_the_wait() -> None:
    async with bench("only") as b:
        only = b.sims["only"].options
        only.fail_status, only.fail_retry_after = 503, "3"
        request = asyncio.create_task(b.send())
        for _ in range(500):  # until it waits (the sim answers on a real socket)
            await asyncio.sleep(0.01)
            if b.calls("only") == 1 and not request.done():
                break
        await asyncio.sleep(0.05)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        only.fail_status = None
        b.clock.advance(3)
        await asyncio.sleep(0.05)
        assert b.calls("only") == 1  # it never came back for another try
        (pool,) = b.router.pools.statistics()
        assert (pool.active, pool.queued) == (0, 0)
