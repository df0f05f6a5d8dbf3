"""Failover seen from outside: the gateway on loopback in front of two (or three) simulated OpenAI
upstreams serving the same model through a route that orders them, driven with the official
``openai`` SDK (no SDK retries) and the admin API. The breaker's schedule is tested in-process,
on a ``ManualClock``, against the same real sims."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from laneway.clock import ManualClock
from laneway.config import settings_from_data
from laneway.errors import UpstreamStatusError
from laneway.gateway import Gateway, GatewayOptions
from laneway.inventory.lanes import compose_lane_id
from laneway.operations import Operation
from laneway.providers.base import Reply
from laneway.routing.dispatch import Served
from laneway.routing.failover import RequestInfo
from tests.conftest import CLIENT_KEY, RunningGateway, Sim

pytestmark = pytest.mark.anyio

ADMIN_KEY = "lw-test-admin-key"  # admin, and may ask for any priority
TRUSTED_KEY = "lw-test-trusted-key"  # may name a sub-caller, priority up to 5
MODEL = "gpt-4o-mini"
CHAT: Any = [{"role": "user", "content": "hi"}]
KEYS = {
    "keys": [
        {"name": "tests", "key": CLIENT_KEY},
        {"name": "ops", "key": ADMIN_KEY, "admin": True, "max_priority": 9},
        {"name": "svc", "key": TRUSTED_KEY, "max_priority": 5, "trusted": True},
    ]
}


def lane(backend: str, type: str = "chat") -> str:
    return compose_lane_id(
        tier="cloud", provider_family="openai", instance_id=backend, type=type, model=MODEL
    )


def client(gw: RunningGateway, key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0)


def calls(sim: Sim) -> int:
    """Inference requests the sim received (discovery and probes are not counted)."""
    return int(sim.stats.inference_requests)


async def admin(gw: RunningGateway, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def drain(stream: Any, into: list[Any] | None = None) -> None:
    """Read a stream to its end (or its error), keeping its chunks in ``into``."""
    async for chunk in stream:
        if into is not None:
            into.append(chunk)


async def wait_for(predicate: Callable[[], Awaitable[bool]], what: str, limit: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; a bound on waiting, not a timing assertion."""
    for _ in range(int(limit / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def sims(sim_factory: Any, *names: str) -> dict[str, Sim]:
    return {name: sim_factory(family="openai", models=[MODEL]) for name in names}


def config(sims: dict[str, Sim], **extra: Any) -> dict[str, Any]:
    """One openai backend per sim, the first far heavier; route ``r`` tries them in order."""
    backends: dict[str, Any] = {
        name: {"provider": "openai", "base_url": sim.url} for name, sim in sims.items()
    }
    first = next(iter(backends))
    backends[first]["weight"] = 1000
    for name, settings in extra.pop("backend_settings", {}).items():
        backends[name].update(settings)
    return {
        "auth": KEYS,
        "backends": backends,
        "routes": {"r": [f"{name}/{MODEL}" for name in sims]},
        **extra,
    }


@pytest.fixture
def pair(sim_factory: Any) -> dict[str, Sim]:
    return sims(sim_factory, "first", "second")


# -- 1-3: a failed call moves on to the next lane ------------------------------------------------


async def test_a_500_fails_over_and_leaves_a_failover_record(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    gw = gateway_factory(config(pair), pair)
    pair["first"].options.fail_status = 500
    async with client(gw) as c:
        for rid in ("req-failover-1", "req-failover-2"):
            raw = await c.chat.completions.with_raw_response.create(
                model="r", messages=CHAT, extra_headers={"x-request-id": rid}
            )
            assert raw.headers["x-laneway-lane"] == lane("second")
            assert raw.headers["x-laneway-backend"] == "second"
            assert raw.headers["x-laneway-attempts"] == "2"
            assert raw.headers["x-request-id"] == rid
            assert raw.parse().choices[0].message.content
    assert (calls(pair["first"]), calls(pair["second"])) == (2, 2)

    body = await admin(gw, "/admin/failovers")
    assert body["kept"] == 2
    newest, oldest = body["failovers"]
    assert (newest["request_id"], oldest["request_id"]) == ("req-failover-2", "req-failover-1")
    assert newest["outcome"] == "served"
    assert newest["served_by"] == lane("second")
    assert newest["caller"] == "tests"
    assert newest["requested"] == "r"
    assert newest["operation"] == "chat"
    failed, served = newest["attempts"]
    assert (failed["attempt"], failed["lane"], failed["backend"]) == (1, lane("first"), "first")
    assert (failed["outcome"], failed["status"]) == ("failed", 500)
    assert "500" in failed["error"]
    assert (served["attempt"], served["lane"], served["outcome"], served["error"]) == (
        2,
        lane("second"),
        "served",
        None,
    )
    limited = await admin(gw, "/admin/failovers?limit=1")
    assert [r["request_id"] for r in limited["failovers"]] == ["req-failover-2"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_lane_that_times_out_fails_over(
    gateway_factory: Any, pair: dict[str, Sim], stream: bool
) -> None:
    pair["first"].options.latency = 5  # far past the backend's timeout below
    gw = gateway_factory(config(pair, backend_settings={"first": {"timeout": 0.3}}), pair)
    async with client(gw) as c:
        if stream:
            async with c.chat.completions.with_streaming_response.create(
                model="r", messages=CHAT, stream=True
            ) as resp:
                headers = resp.headers
                chunks = [chunk async for chunk in await resp.parse()]
            assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).strip()
        else:
            raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
            headers = raw.headers
            assert raw.parse().choices[0].message.content
    assert headers["x-laneway-lane"] == lane("second")
    assert headers["x-laneway-attempts"] == "2"
    assert calls(pair["first"]) == 1
    record = (await admin(gw, "/admin/failovers"))["failovers"][0]
    assert record["attempts"][0]["code"] == "upstream_timeout"
    assert record["attempts"][0]["status"] is None


async def test_a_429_fails_over(gateway_factory: Any, pair: dict[str, Sim]) -> None:
    pair["first"].options.fail_status = 429
    gw = gateway_factory(config(pair), pair)
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
    assert raw.headers["x-laneway-lane"] == lane("second")
    assert raw.headers["x-laneway-attempts"] == "2"
    record = (await admin(gw, "/admin/failovers"))["failovers"][0]
    assert [(a["lane"], a["status"], a["outcome"], a["code"]) for a in record["attempts"]] == [
        (lane("first"), 429, "rate_limited", "rate_limit_exceeded"),
        (lane("second"), None, "served", None),
    ]
    assert (await admin(gw, "/admin/breakers"))["breakers"] == {}  # quota is not ill health


async def test_every_lane_answering_429_is_a_429_with_retry_after(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    for sim in pair.values():
        sim.options.fail_status = 429  # the sim says retry-after: 1
    # Not worth waiting for here (a wait laneway may take is the test after this one).
    gw = gateway_factory(config(pair, routing={"retry_wait": 0}), pair)
    async with client(gw, ADMIN_KEY) as c:  # an admin key's errors name the lane
        with pytest.raises(openai.RateLimitError) as refused:
            await c.chat.completions.create(model="r", messages=CHAT)
    assert refused.value.status_code == 429
    assert refused.value.response.headers["retry-after"] == "1"
    error = refused.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert (error["laneway"]["lane"], error["laneway"]["attempt"]) == (lane("second"), 2)
    assert [calls(sim) for sim in pair.values()] == [1, 1]


def one_request_a_minute(pair: dict[str, Sim]) -> None:
    """Each sim takes one request a minute and says so in OpenAI's headers (remaining 0, reset
    in about 60 s): after its one request a lane is known to be exhausted until then."""
    for sim in pair.values():
        sim.options.ratelimit, sim.options.rpm = "openai", 1


async def test_lanes_known_to_be_out_of_quota_are_passed_over_then_refused_with_retry_after(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    one_request_a_minute(pair)
    first, second = pair["first"], pair["second"]
    gw = gateway_factory(config(pair), pair)
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
        assert raw.headers["x-laneway-lane"] == lane("first")  # its one request of the minute
        raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
        assert raw.headers["x-laneway-lane"] == lane("second")  # the first is not even asked
        assert raw.headers["x-laneway-attempts"] == "1"
        assert (calls(first), calls(second)) == (1, 1)
        with pytest.raises(openai.RateLimitError) as exhausted:  # every lane is out: nobody asked
            await c.chat.completions.create(model="r", messages=CHAT)
    assert 1 <= int(exhausted.value.response.headers["retry-after"]) <= 60
    assert exhausted.value.response.json()["error"]["code"] == "rate_limit_exceeded"
    assert (calls(first), calls(second)) == (1, 1)
    assert first.stats.rate_limited == second.stats.rate_limited == 0


async def test_every_lane_exhausted_429_carries_attribution(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    one_request_a_minute(pair)
    gw = gateway_factory(config(pair), pair)
    async with client(gw) as c:
        for _ in range(2):
            await c.chat.completions.create(model="r", messages=CHAT)
        with pytest.raises(openai.RateLimitError) as exhausted:
            await c.chat.completions.create(
                model="r", messages=CHAT, extra_headers={"x-request-id": "req-exhausted"}
            )
    error = exhausted.value.response.json()["error"]
    assert error["laneway"]["caller"] == "tests"
    assert error["laneway"]["request_id"] == "req-exhausted"


# -- a refused credential -----------------------------------------------------------------------------


async def test_a_credential_refused_by_one_backend_fails_over_and_cools_that_credential_down(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    gw = gateway_factory(config(pair), pair)
    pair["first"].options.api_key = "rotated-upstream"  # the first now refuses laneway's (lack of a) key
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
        assert (raw.headers["x-laneway-lane"], raw.headers["x-laneway-attempts"]) == (lane("second"), "2")
        again = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
        assert (again.headers["x-laneway-lane"], again.headers["x-laneway-attempts"]) == (lane("second"), "1")
    assert pair["first"].stats.requests_by_path["/v1/chat/completions"] == 1  # cooling down: not asked again
    (first,) = [st for st in (await admin(gw, "/admin/backends"))["backends"] if st["name"] == "first"]
    assert first["cooldown_until"] is not None
    lanes = (await admin(gw, "/admin/lanes?backend=first"))["lanes"]
    assert {ln["health"] for ln in lanes} == {"denied"}
    record = (await admin(gw, "/admin/failovers"))["failovers"][0]
    assert [(a["lane"], a["status"], a["outcome"]) for a in record["attempts"]] == [
        (lane("first"), 401, "failed"),
        (lane("second"), None, "served"),
    ]
    assert (await admin(gw, "/admin/breakers"))["breakers"] == {}  # the cooldown's, not the breaker's


# -- a 404 for the lane's model: the lane is stale --------------------------------------------------


async def first_refreshed_since(gw: RunningGateway, before: float) -> bool:
    statuses = (await admin(gw, "/admin/backends"))["backends"]
    (first,) = [st for st in statuses if st["name"] == "first"]
    return bool(first["last_refresh"] is not None and first["last_refresh"] > before)


async def lose_the_model_on_first(gw: RunningGateway, pair: dict[str, Sim]) -> None:
    """The first stops serving the model: a 404 fails the request over and marks its lane stale,
    which starts a refresh of the first; wait for that refresh to end."""
    statuses = (await admin(gw, "/admin/backends"))["backends"]
    (status,) = [st for st in statuses if st["name"] == "first"]
    pair["first"].options.models = ["some-other-model"]
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
    assert raw.headers["x-laneway-lane"] == lane("second")
    assert raw.headers["x-laneway-attempts"] == "2"
    record = (await admin(gw, "/admin/failovers"))["failovers"][0]
    assert record["attempts"][0]["status"] == 404
    await wait_for(lambda: first_refreshed_since(gw, status["last_refresh"]), "the stale lane's refresh")


async def test_a_404_for_a_model_gone_upstream_fails_over_and_the_lane_leaves(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    # tier local: no model-list cache, so the refresh asks the backend itself.
    gw = gateway_factory(config(pair, backend_settings={"first": {"tier": "local"}}), pair)
    local_lane = compose_lane_id(
        tier="local", provider_family="openai", instance_id="first", type="chat", model=MODEL
    )
    await lose_the_model_on_first(gw, pair)
    assert local_lane not in {ln["id"] for ln in (await admin(gw, "/admin/lanes?backend=first"))["lanes"]}
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
    assert (raw.headers["x-laneway-lane"], raw.headers["x-laneway-attempts"]) == (lane("second"), "1")
    assert calls(pair["first"]) == 1


async def test_a_cloud_lane_gone_upstream_is_not_confirmed_by_the_model_list_cache(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    gw = gateway_factory(config(pair), pair)  # tier cloud: model lists cached for an hour
    await lose_the_model_on_first(gw, pair)
    healthy = (await admin(gw, f"/admin/lanes?backend=first&type=chat&model={MODEL}&health=healthy"))["lanes"]
    assert healthy == []
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
    assert (raw.headers["x-laneway-lane"], raw.headers["x-laneway-attempts"]) == (lane("second"), "1")
    assert calls(pair["first"]) == 1


# -- 4-5: streams ----------------------------------------------------------------------------------


async def test_a_stream_broken_before_its_first_byte_fails_over(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    # A completions stream has no head frame: with no content chunk the upstream sends nothing
    # after its status line before it drops the connection.
    pair["first"].options.drop_after_chunks = 0
    gw = gateway_factory(config(pair), pair)
    async with (
        client(gw) as c,
        c.completions.with_streaming_response.create(
            model="r", prompt="Once upon a time", stream=True
        ) as resp,
    ):
        assert resp.headers["x-laneway-lane"] == lane("second", "completion")
        assert resp.headers["x-laneway-attempts"] == "2"
        chunks = [chunk async for chunk in await resp.parse()]
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices).strip()
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert pair["first"].stats.streams_dropped == 1
    assert pair["second"].stats.streams_completed == 1
    record = (await admin(gw, "/admin/failovers"))["failovers"][0]
    assert record["attempts"][0]["code"] == "upstream_stream_broken"


@pytest.mark.parametrize("trouble", [{"fail_status": 503}, {"garbage": True}], ids=["503", "not-sse"])
async def test_a_chat_stream_refused_before_its_first_byte_fails_over(
    gateway_factory: Any, pair: dict[str, Sim], trouble: dict[str, Any]
) -> None:
    for name, value in trouble.items():
        setattr(pair["first"].options, name, value)
    gw = gateway_factory(config(pair), pair)
    async with (
        client(gw) as c,
        c.chat.completions.with_streaming_response.create(model="r", messages=CHAT, stream=True) as resp,
    ):
        assert resp.headers["x-laneway-lane"] == lane("second")
        assert resp.headers["x-laneway-attempts"] == "2"
        chunks = [chunk async for chunk in await resp.parse()]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).strip()
    assert calls(pair["first"]) == 1


async def test_a_stream_broken_after_its_first_bytes_ends_with_an_error_event(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    # Head and first chunk at once, the second chunk half a second later, then the drop: the first
    # bytes are surely with the client before the break.
    pair["first"].options.drop_after_chunks = 2
    pair["first"].options.tokens_per_second = 2
    gw = gateway_factory(config(pair), pair)
    received: list[Any] = []
    async with client(gw) as c:
        stream = await c.chat.completions.create(model="r", messages=CHAT, stream=True)
        with pytest.raises(openai.APIError) as broken:
            await drain(stream, received)
    # The role chunk and the first content chunk reached the client (the second may be lost with
    # the connection: aiohttp raises a pending error before handing out buffered bytes).
    assert len(received) in (2, 3)
    assert received[0].choices[0].delta.role == "assistant"
    assert received[1].choices[0].delta.content
    assert not isinstance(broken.value, openai.APIStatusError)  # an event in a 200 stream
    assert "broke off" in broken.value.message
    assert isinstance(broken.value.body, dict)
    assert broken.value.body["code"] == "upstream_stream_broken"
    assert broken.value.body["type"] == "upstream_error"
    assert pair["first"].stats.streams_dropped == 1
    assert calls(pair["second"]) == 0  # never silently switched
    assert (await admin(gw, "/admin/failovers"))["failovers"] == []


async def test_streams_broken_after_their_first_bytes_count_against_the_lanes_breaker(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    pair["first"].options.drop_after_chunks = 2
    pair["first"].options.tokens_per_second = 2  # the break comes after the first bytes
    gw = gateway_factory(
        config(pair, routing={"breaker": {"failures": 2, "window": 60, "cooldown": 30}}), pair
    )
    async with client(gw) as c:
        for _ in range(2):
            stream = await c.chat.completions.create(model="r", messages=CHAT, stream=True)
            with pytest.raises(openai.APIError):
                await drain(stream)
        breakers = (await admin(gw, "/admin/breakers"))["breakers"]
        assert breakers[lane("first")]["state"] == "open"  # out of rotation, like failed calls
        raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
        assert (raw.headers["x-laneway-lane"], raw.headers["x-laneway-attempts"]) == (lane("second"), "1")
    assert pair["first"].stats.streams_dropped == 2


async def test_a_mid_stream_error_event_carries_attribution(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    pair["first"].options.drop_after_chunks = 2
    pair["first"].options.tokens_per_second = 2  # the break comes after the first bytes
    gw = gateway_factory(config(pair, server={"show_lane_in_errors": True}), pair)
    async with client(gw) as c:
        stream = await c.chat.completions.create(
            model="r", messages=CHAT, stream=True, extra_headers={"x-request-id": "req-mid-stream"}
        )
        with pytest.raises(openai.APIError) as broken:
            await drain(stream)
    assert isinstance(broken.value.body, dict)
    attribution = broken.value.body.get("laneway")
    assert attribution is not None
    assert (attribution["request_id"], attribution["lane"], attribution["attempt"]) == (
        "req-mid-stream",
        lane("first"),
        1,
    )


# -- 6: the client's fault is not retried -----------------------------------------------------------


async def test_an_upstream_400_is_not_failed_over(gateway_factory: Any, pair: dict[str, Sim]) -> None:
    gw = gateway_factory(config(pair), pair)
    tools: Any = [{"type": "function"}]  # valid for the gateway's checks; the upstream wants a name
    async with client(gw, ADMIN_KEY) as c:
        with pytest.raises(openai.BadRequestError) as refused:
            await c.chat.completions.create(model="r", messages=CHAT, tools=tools)
    error = refused.value.response.json()["error"]
    assert "function.name" in error["message"]
    assert error["code"] == "upstream_400"
    assert error["laneway"]["lane"] == lane("first")
    assert error["laneway"]["attempt"] == 1
    assert calls(pair["first"]) == 1
    assert calls(pair["second"]) == 0
    assert (await admin(gw, "/admin/breakers"))["breakers"] == {}  # the request's fault, not the lane's


# -- 7: the breaker ---------------------------------------------------------------------------------


async def test_breaker_opens_and_takes_the_lane_out_of_rotation(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    first, second = pair["first"], pair["second"]
    first.options.fail_status = 500
    breaker = {"failures": 2, "window": 60, "cooldown": 30}
    gw = gateway_factory(config(pair, routing={"breaker": breaker}), pair)
    async with client(gw) as c:
        for _ in range(2):
            raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
            assert raw.headers["x-laneway-attempts"] == "2"
        assert calls(first) == 2
        lanes = (await admin(gw, "/admin/lanes?backend=first&type=chat"))["lanes"]
        assert [(ln["id"], ln["health"], ln["routable"]) for ln in lanes] == [(lane("first"), "open", False)]
        breakers = (await admin(gw, "/admin/breakers"))["breakers"]
        assert breakers[lane("first")]["state"] == "open"
        assert 0 < breakers[lane("first")]["open_for"] <= 30
        for _ in range(3):
            raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
            assert raw.headers["x-laneway-lane"] == lane("second")
            assert raw.headers["x-laneway-attempts"] == "1"
        assert calls(first) == 2  # straight to the second
        assert calls(second) == 5
        second.options.fail_status = 500
        with pytest.raises(openai.InternalServerError):  # the first stays out even now
            await c.chat.completions.create(model="r", messages=CHAT)
        assert calls(first) == 2


async def test_every_breaker_open_is_a_503_with_attribution(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    for sim in pair.values():
        sim.options.fail_status = 500
    breaker = {"failures": 1, "window": 60, "cooldown": 30}
    gw = gateway_factory(config(pair, routing={"breaker": breaker}), pair)
    async with client(gw) as c:
        with pytest.raises(openai.InternalServerError):  # both fail: both breakers open
            await c.chat.completions.create(model="r", messages=CHAT)
        with pytest.raises(openai.InternalServerError) as unavailable:
            await c.chat.completions.create(
                model="r", messages=CHAT, extra_headers={"x-request-id": "req-all-open"}
            )
    assert unavailable.value.status_code == 503
    assert [calls(sim) for sim in pair.values()] == [1, 1]
    error = unavailable.value.response.json()["error"]
    assert error["code"] == "no_lane_available"
    assert error["laneway"]["request_id"] == "req-all-open"


class BreakerBench:
    """A gateway started in the test's own event loop on a ``ManualClock``: the router is called
    directly, so the breaker's cooldown passes when the test says so."""

    def __init__(self, gateway: Gateway, clock: ManualClock, sims: dict[str, Sim]) -> None:
        self.gateway = gateway
        self.clock = clock
        self.sims = sims
        self.requests = 0

    async def send(self, model: str = "r") -> Served[Reply]:
        router = self.gateway.router
        self.requests += 1
        body = {"model": model, "messages": CHAT}
        info = RequestInfo("tests", f"req-{self.requests}")
        return await router.send(Operation.CHAT, body, orjson.dumps(body), info)

    def health(self, backend: str) -> str | None:
        found = self.gateway.inventory.get(lane(backend))
        assert found is not None
        return found.health

    def state(self, backend: str) -> dict[str, object] | None:
        return self.gateway.breakers.snapshot().get(lane(backend))


@pytest.fixture
async def breakers(sim_factory: Any, tmp_path: Path) -> Any:
    pair = sims(sim_factory, "first", "second")
    data = config(pair, routing={"breaker": {"failures": 2, "window": 60, "cooldown": 30}})
    data["storage"] = {"data_dir": str(tmp_path / "gw")}
    clock = ManualClock()
    async with await Gateway.open(
        settings_from_data(data, source="test-config.yaml"),
        clock=clock,
        options=GatewayOptions(schedule=False, key_reload_interval=3600),
    ) as gateway:
        yield BreakerBench(gateway, clock, pair)


async def test_breaker_schedule_half_open_trial_success_closes(breakers: BreakerBench) -> None:
    first = breakers.sims["first"]
    first.options.fail_status = 500
    for _ in range(2):
        served = await breakers.send()
        assert (served.lane.backend, served.attempts) == ("second", 2)
    assert breakers.health("first") == "open"
    assert breakers.state("first") == {"state": "open", "recent_failures": 0, "open_for": 30.0}

    breakers.clock.advance(29.9)
    assert (await breakers.send()).lane.backend == "second"
    assert calls(first) == 2
    assert breakers.health("first") == "open"

    first.options.fail_status = None
    breakers.clock.advance(0.2)  # past the cooldown
    breakers.gateway.breakers.advance()
    assert breakers.health("first") == "half-open"
    half = breakers.gateway.inventory.get(lane("first"))
    assert half is not None
    assert half.weight == half.base_weight / 2  # routable at half weight
    assert breakers.state("first") == {"state": "half-open", "recent_failures": 0, "open_for": 0.0}

    # One trial at a time: while it is in flight, a second request goes to the second lane.
    first.options.latency = 2  # real seconds, on the sim's own clock: the trial stays in flight
    trial = asyncio.create_task(breakers.send())

    async def trial_reached_first() -> bool:
        return calls(first) == 3

    await wait_for(trial_reached_first, "the trial call to reach the first lane")
    meanwhile = await breakers.send()
    assert (meanwhile.lane.backend, meanwhile.attempts) == ("second", 1)
    assert calls(first) == 3
    skipped = breakers.gateway.failovers.recent(1)[0]
    assert [(a.lane, a.outcome) for a in skipped.attempts] == [
        (lane("first"), "skipped"),
        (lane("second"), "served"),
    ]

    served = await trial
    assert (served.lane.backend, served.attempts) == ("first", 1)
    assert breakers.health("first") == "healthy"
    assert breakers.state("first") is None
    first.options.latency = 0
    assert (await breakers.send()).lane.backend == "first"


async def test_breaker_schedule_failed_trial_reopens_with_a_fresh_cooldown(breakers: BreakerBench) -> None:
    first = breakers.sims["first"]
    first.options.fail_status = 500
    for _ in range(2):
        await breakers.send()
    assert breakers.health("first") == "open"

    breakers.clock.advance(31)
    served = await breakers.send()  # the trial goes to the first, fails, the second serves
    assert (served.lane.backend, served.attempts) == ("second", 2)
    assert calls(first) == 3
    assert breakers.health("first") == "open"
    assert breakers.state("first") == {"state": "open", "recent_failures": 0, "open_for": 30.0}

    breakers.clock.advance(29)  # the old deadline passed long ago; the new one has not
    assert (await breakers.send()).lane.backend == "second"
    assert calls(first) == 3
    assert breakers.health("first") == "open"

    first.options.fail_status = None
    breakers.clock.advance(2)
    served = await breakers.send()
    assert (served.lane.backend, served.attempts) == ("first", 1)
    assert breakers.health("first") == "healthy"
    assert calls(first) == 4


async def test_breaker_failures_outside_the_window_do_not_open_it(breakers: BreakerBench) -> None:
    first = breakers.sims["first"]
    first.options.fail_status = 500
    await breakers.send()
    breakers.clock.advance(61)
    await breakers.send()
    assert breakers.health("first") == "healthy"
    assert breakers.state("first") == {"state": "closed", "recent_failures": 1, "open_for": 0.0}
    await breakers.send()
    assert breakers.health("first") == "open"


async def test_error_attribution_names_the_lane_that_failed_not_one_skipped(breakers: BreakerBench) -> None:
    first, second = breakers.sims["first"], breakers.sims["second"]
    second.options.fail_status = 500
    for _ in range(2):  # open the second's breaker
        with pytest.raises(UpstreamStatusError):
            await breakers.send("second/" + MODEL)
    breakers.clock.advance(31)  # half-open
    second.options.fail_status = None
    second.options.latency = 2
    trial = asyncio.create_task(breakers.send("second/" + MODEL))

    async def trial_in_flight() -> bool:
        return calls(second) == 3

    await wait_for(trial_in_flight, "the trial call to reach the second lane")
    first.options.fail_status = 500
    try:
        with pytest.raises(UpstreamStatusError) as failed:  # first fails; second skipped (trial busy)
            await breakers.send()
        record = breakers.gateway.failovers.recent(1)[0]
        assert [(a.lane, a.outcome) for a in record.attempts] == [
            (lane("first"), "failed"),
            (lane("second"), "skipped"),
        ]
        attribution = failed.value.attribution
        assert attribution is not None
        assert (attribution.lane, attribution.attempt) == (lane("first"), 1)
    finally:
        await trial


# -- 8: attribution ----------------------------------------------------------------------------------


async def test_an_error_from_every_lane_carries_attribution_without_the_prompt(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    for sim in pair.values():
        sim.options.fail_status = 500
    gw = gateway_factory(config(pair), pair)
    headers = {"x-request-id": "req-attributed", "x-laneway-run-id": "run-42"}
    async with client(gw) as c:
        with pytest.raises(openai.InternalServerError) as failed:
            await c.chat.completions.create(model="r", messages=CHAT, extra_headers=headers)
    assert failed.value.status_code == 502
    assert failed.value.response.headers["x-request-id"] == "req-attributed"
    error = failed.value.response.json()["error"]
    assert error["type"] == "upstream_error"
    # laneway's own words, the request id to quote; no backend or lane to a client key
    assert error["message"] == "The model's backend failed (HTTP 500). Request id: req-attributed"
    assert error["laneway"] == {
        "caller": "tests",
        "request_id": "req-attributed",
        "run_id": "run-42",
        "attempt": 2,
    }
    record = (await admin(gw, "/admin/failovers"))["failovers"][0]
    assert (record["request_id"], record["run_id"], record["outcome"]) == (
        "req-attributed",
        "run-42",
        "failed",
    )
    assert record["served_by"] is None
    assert [(a["lane"], a["status"]) for a in record["attempts"]] == [
        (lane("first"), 500),
        (lane("second"), 500),
    ]
    assert "prompt" not in record


async def test_recorded_prompts_appear_in_errors_and_failover_records_when_enabled(
    gateway_factory: Any, pair: dict[str, Sim]
) -> None:
    for sim in pair.values():
        sim.options.fail_status = 500
    gw = gateway_factory(config(pair, routing={"record_prompts": True}), pair)
    async with client(gw) as c:
        with pytest.raises(openai.InternalServerError) as failed:
            await c.chat.completions.create(model="r", messages=CHAT)
    assert failed.value.response.json()["error"]["laneway"]["prompt"] == CHAT
    record = (await admin(gw, "/admin/failovers"))["failovers"][0]
    assert record["prompt"] == CHAT
    assert failed.value.response.headers["x-request-id"] == record["request_id"]


# -- 9: the attempt budget ---------------------------------------------------------------------------


async def test_the_attempt_budget_bounds_the_lanes_tried(gateway_factory: Any, sim_factory: Any) -> None:
    three = sims(sim_factory, "a", "b", "c")
    for sim in three.values():
        sim.options.fail_status = 503
    gw = gateway_factory(config(three, routing={"attempts": 2}), three)
    async with client(gw, ADMIN_KEY) as c:
        with pytest.raises(openai.InternalServerError) as failed:
            await c.chat.completions.create(model="r", messages=CHAT)
    assert [calls(sim) for sim in three.values()] == [1, 1, 0]
    attribution = failed.value.response.json()["error"]["laneway"]
    assert (attribution["lane"], attribution["attempt"]) == (lane("b"), 2)
    record = (await admin(gw, "/admin/failovers"))["failovers"][0]
    assert [a["backend"] for a in record["attempts"]] == ["a", "b"]


# -- 10: priority and sub-callers --------------------------------------------------------------------


async def test_priority_is_capped_by_the_key_and_trusted_keys_name_sub_callers(
    gateway_factory: Any, sim_factory: Any
) -> None:
    solo = sim_factory(family="openai", models=[MODEL])
    data = {
        "auth": KEYS,
        "backends": {
            "solo": {"provider": "openai", "base_url": solo.url, "slots": 1, "stream_holds_slot": True}
        },
    }
    gw = gateway_factory(data, {"solo": solo})

    async def pool() -> dict[str, Any]:
        (only,) = (await admin(gw, "/admin/pools"))["pools"]
        return dict(only)

    solo.options.reply = " ".join(["word"] * 500)  # a long stream that holds the one slot
    solo.options.tokens_per_second = 2
    async with (
        client(gw) as plain,
        client(gw, TRUSTED_KEY) as trusted,
        client(gw, ADMIN_KEY) as ops,
        aiohttp.ClientSession() as session,
    ):
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await plain.chat.completions.create(
                model=MODEL, messages=CHAT, extra_headers={"x-laneway-caller": "alice"}
            )
        assert "trusted" in denied.value.message

        holder = await session.post(
            gw.v1 + "/chat/completions",
            json={"model": MODEL, "messages": CHAT, "stream": True},
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
        )
        assert holder.status == 200
        await holder.content.readline()

        async def queued(n: int) -> bool:
            return bool((await pool())["queued"] == n)

        async def ask(key: openai.AsyncOpenAI, **headers: str) -> int:
            """The sim's sequence number of the request that served this one."""
            reply = await key.chat.completions.create(model=MODEL, messages=CHAT, extra_headers=headers)
            return int(reply.id.removeprefix("chatcmpl-sim"), 16)

        # Queued in the order A, B, C; served by priority: C (7), B (9 asked, 5 allowed), A (0).
        a = asyncio.create_task(ask(plain, **{"x-laneway-priority": "9"}))
        await wait_for(lambda: queued(1), "A to queue")
        b = asyncio.create_task(ask(trusted, **{"x-laneway-priority": "9", "x-laneway-caller": "alice"}))
        await wait_for(lambda: queued(2), "B to queue")
        c = asyncio.create_task(ask(ops, **{"x-laneway-priority": "7"}))
        await wait_for(lambda: queued(3), "C to queue")
        assert (await pool())["queued_by_caller"] == {"tests": 1, "svc/alice": 1, "ops": 1}

        holder.close()  # the slot comes back
        served = await asyncio.gather(a, b, c)

    order = sorted(zip(served, "ABC", strict=True))
    assert [name for _, name in order] == ["C", "B", "A"]
    assert (await pool())["active"] == 0


async def test_a_trusted_sub_caller_is_attributed(gateway_factory: Any, pair: dict[str, Sim]) -> None:
    for sim in pair.values():
        sim.options.fail_status = 500
    gw = gateway_factory(config(pair), pair)
    async with client(gw, TRUSTED_KEY) as c:
        with pytest.raises(openai.InternalServerError) as failed:
            await c.chat.completions.create(
                model="r",
                messages=CHAT,
                extra_headers={"x-laneway-caller": "alice", "x-laneway-priority": "9"},
            )
    assert failed.value.response.json()["error"]["laneway"]["caller"] == "svc/alice"
    assert (await admin(gw, "/admin/failovers"))["failovers"][0]["caller"] == "svc/alice"
