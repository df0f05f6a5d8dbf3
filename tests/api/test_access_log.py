"""The access log and the RED metrics from outside: the real gateway on loopback in front of two
simulated OpenAI upstreams (a route tries them in order), driven by the official ``openai`` SDK
(or raw aiohttp where the test needs the socket). Each request leaves exactly one line on the
``laneway.access`` logger, captured as the JSON the formatter writes, and moves the counters of
``/metrics``, read with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from laneway.inventory.lanes import compose_lane_id
from laneway.logs import JsonFormatter
from tests.conftest import CLIENT_KEY, RunningGateway, Sim

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"
CHAT: Any = [{"role": "user", "content": "hello access log"}]
CHAT_ROUTE = "/v1/chat/completions"
FIELDS = {
    "request_id",
    "method",
    "path",
    "status",
    "caller",
    "dialect",
    "operation",
    "requested",
    "lane",
    "backend",
    "attempts",
    "queue_wait",
    "duration",
    "ttft",
    "prompt_tokens",
    "completion_tokens",
    "error",
    "streamed",
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def lane(backend: str) -> str:
    return compose_lane_id(
        tier="cloud", provider_family="openai", instance_id=backend, type="chat", model=MODEL
    )


def config(sims: dict[str, Sim], **server: Any) -> dict[str, Any]:
    """Route ``r`` tries ``first``, then ``second``."""
    return {
        "server": server,
        "auth": {"keys": [{"name": "tests", "key": CLIENT_KEY}]},
        "backends": {name: {"provider": "openai", "base_url": sim.url} for name, sim in sims.items()},
        "routes": {"r": [f"{name}/{MODEL}" for name in sims]},
    }


@pytest.fixture
def pair(sim_factory: Any) -> dict[str, Sim]:
    return {name: sim_factory(family="openai", models=[MODEL]) for name in ("first", "second")}


@pytest.fixture
def gw(gateway_factory: Any, pair: dict[str, Sim]) -> RunningGateway:
    running: RunningGateway = gateway_factory(config(pair), pair)
    return running


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="laneway.access")
    return caplog


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[dict[str, Any]]:
    """Every access line at ``level``, as the JSON line the formatter writes."""
    formatter = JsonFormatter()
    return [
        orjson.loads(formatter.format(r))
        for r in list(caplog.records)
        if r.name == "laneway.access" and r.levelno == level
    ]


async def line_of(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    """The one line of ``request_id``. Waited for: a stream's line is written as its last (empty)
    body message goes out, which may be just after the SDK read ``[DONE]``; a bound, not a timing."""
    for _ in range(500):
        found = [ln for ln in lines(caplog) if ln["request_id"] == request_id]
        if found:
            assert len(found) == 1, found
            (line,) = found
            assert set(line) == FIELDS | {"ts", "level", "logger", "event"}
            assert (line["logger"], line["level"], line["event"]) == ("laneway.access", "info", "request")
            return line
        await asyncio.sleep(0.01)
    raise AssertionError(f"no access line for {request_id}")


def client(gw: RunningGateway, key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0)


async def scrape(gw: RunningGateway) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for n, labels in samples if n == name]


async def test_a_served_request_leaves_one_line_and_counts(
    gw: RunningGateway, access: pytest.LogCaptureFixture
) -> None:
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(model="r", messages=CHAT)
    reply = raw.parse()
    assert reply.usage is not None
    line = await line_of(access, raw.headers["x-request-id"])
    assert {k: line[k] for k in FIELDS - {"queue_wait", "duration", "ttft"}} == {
        "request_id": raw.headers["x-request-id"],
        "method": "POST",
        "path": CHAT_ROUTE,
        "status": 200,
        "caller": "tests",
        "dialect": "openai",
        "operation": "chat",
        "requested": "r",
        "lane": lane("first"),
        "backend": "first",
        "attempts": 1,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": reply.usage.completion_tokens,
        "error": None,
        "streamed": False,
    }
    assert 0 <= line["queue_wait"] <= line["duration"]
    assert 0 <= line["ttft"] <= line["duration"]

    samples = await scrape(gw)
    served = {"route": CHAT_ROUTE, "lane": lane("first")}
    assert value(samples, "laneway_requests_total", **served, status="200") == 1
    assert value(samples, "laneway_request_duration_seconds_count", **served) == 1
    assert value(samples, "laneway_request_duration_seconds_bucket", **served, le="+Inf") == 1
    assert value(samples, "laneway_tokens_total", direction="input", lane=lane("first")) == (
        reply.usage.prompt_tokens
    )
    assert value(samples, "laneway_tokens_total", direction="output", lane=lane("first")) == (
        reply.usage.completion_tokens
    )
    assert names(samples, "laneway_request_ttft_seconds_count") == []  # streams only
    assert names(samples, "laneway_errors_total") == []


async def test_a_stream_logs_its_first_token_and_its_tokens(
    gw: RunningGateway, access: pytest.LogCaptureFixture
) -> None:
    async with (
        client(gw) as c,
        c.chat.completions.with_streaming_response.create(
            model="r",
            messages=CHAT,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": "req-access-stream"},
        ) as resp,
    ):
        assert resp.headers["x-request-id"] == "req-access-stream"
        chunks = [chunk async for chunk in await resp.parse()]
    usage = chunks[-1].usage
    assert usage is not None
    line = await line_of(access, "req-access-stream")
    assert (line["status"], line["streamed"], line["lane"], line["attempts"]) == (200, True, lane("first"), 1)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert line["ttft"] is not None
    assert 0 <= line["ttft"] <= line["duration"]

    samples = await scrape(gw)
    served = {"route": CHAT_ROUTE, "lane": lane("first")}
    assert value(samples, "laneway_request_ttft_seconds_count", **served) == 1
    assert value(samples, "laneway_request_duration_seconds_count", **served) == 1
    assert value(samples, "laneway_tokens_total", direction="output", lane=lane("first")) == (
        usage.completion_tokens
    )


async def test_a_failover_logs_the_serving_lane_and_both_attempts(
    gw: RunningGateway, pair: dict[str, Sim], access: pytest.LogCaptureFixture
) -> None:
    pair["first"].options.fail_status = 500
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="r", messages=CHAT, extra_headers={"x-request-id": "req-access-failover"}
        )
    assert raw.headers["x-laneway-attempts"] == "2"
    line = await line_of(access, "req-access-failover")
    assert (line["status"], line["lane"], line["backend"], line["attempts"], line["error"]) == (
        200,
        lane("second"),
        "second",
        2,
        None,
    )

    samples = await scrape(gw)
    assert names(samples, "laneway_requests_total") == [
        {"route": CHAT_ROUTE, "lane": lane("second"), "status": "200"}
    ]
    assert value(samples, "laneway_requests_total", route=CHAT_ROUTE, lane=lane("second"), status="200") == 1
    assert names(samples, "laneway_errors_total") == []  # served: the failed attempt is not an error


async def test_an_unknown_model_is_a_404_line_and_an_error(
    gw: RunningGateway, access: pytest.LogCaptureFixture
) -> None:
    async with client(gw) as c:
        with pytest.raises(openai.NotFoundError) as refused:
            await c.chat.completions.create(model="no-such-model", messages=CHAT)
    rid = refused.value.response.headers["x-request-id"]
    line = await line_of(access, rid)
    assert {k: line[k] for k in ("status", "error", "caller", "requested", "lane", "attempts")} == {
        "status": 404,
        "error": "model_not_found",
        "caller": "tests",
        "requested": "no-such-model",
        "lane": None,
        "attempts": 0,
    }

    samples = await scrape(gw)
    assert value(samples, "laneway_requests_total", route=CHAT_ROUTE, lane="", status="404") == 1
    assert value(samples, "laneway_errors_total", type="model_not_found") == 1


async def test_a_refused_key_is_a_401_line_and_an_error(
    gw: RunningGateway, access: pytest.LogCaptureFixture
) -> None:
    async with client(gw, key="lw-not-a-key") as c:
        with pytest.raises(openai.AuthenticationError) as refused:
            await c.chat.completions.create(model="r", messages=CHAT)
    line = await line_of(access, refused.value.response.headers["x-request-id"])
    assert {k: line[k] for k in ("status", "error", "caller", "operation", "lane")} == {
        "status": 401,
        "error": "invalid_api_key",
        "caller": None,  # refused before anyone was identified
        "operation": None,
        "lane": None,
    }

    samples = await scrape(gw)
    assert value(samples, "laneway_requests_total", route=CHAT_ROUTE, lane="", status="401") == 1
    assert value(samples, "laneway_errors_total", type="invalid_api_key") == 1


async def test_a_client_that_leaves_mid_stream_is_a_499(
    gateway_factory: Any, sim_factory: Any, access: pytest.LogCaptureFixture
) -> None:
    slow = {"first": sim_factory(family="openai", models=[MODEL], tokens_per_second=5, reply="word " * 200)}
    gw = gateway_factory(config(slow), slow)
    body = {"model": "r", "messages": CHAT, "stream": True}
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "req-access-gone"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gw.v1 + "/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b"data: ")
        resp.connection.transport.abort()  # type: ignore[union-attr]  # the client is gone
    line = await line_of(access, "req-access-gone")
    assert (line["status"], line["streamed"], line["lane"]) == (499, True, lane("first"))
    assert line["ttft"] is not None
    samples = await scrape(gw)
    assert value(samples, "laneway_requests_total", route=CHAT_ROUTE, lane=lane("first"), status="499") == 1


async def test_probes_are_counted_but_logged_at_debug(
    gw: RunningGateway, access: pytest.LogCaptureFixture
) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(gw.url + "/healthz") as r:
                assert r.status == 200
                probe_id = r.headers["x-request-id"]  # every response carries its id
        async with http.get(gw.url + "/no/such/path") as r:
            assert r.status == 404
            unknown_id = r.headers["x-request-id"]
    unknown = await line_of(access, unknown_id)
    assert (unknown["path"], unknown["status"]) == ("/no/such/path", 404)
    assert not [ln for ln in lines(access) if ln["path"] == "/healthz"]
    debug = [ln for ln in lines(access, logging.DEBUG) if ln["path"] == "/healthz"]
    assert len(debug) == 3
    assert debug[-1]["request_id"] == probe_id

    samples = await scrape(gw)
    assert value(samples, "laneway_requests_total", route="/healthz", lane="", status="200") == 3
    # A path no route matches is counted under route "", never under its own (client-chosen) path.
    assert value(samples, "laneway_requests_total", route="", lane="", status="404") == 1


async def test_access_log_off_writes_no_line_but_still_counts(
    gateway_factory: Any, pair: dict[str, Sim], access: pytest.LogCaptureFixture
) -> None:
    gw = gateway_factory(config(pair, access_log=False), pair)
    async with client(gw) as c:
        await c.chat.completions.create(model="r", messages=CHAT)
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="no-such-model", messages=CHAT)
    samples = await scrape(gw)
    assert value(samples, "laneway_requests_total", route=CHAT_ROUTE, lane=lane("first"), status="200") == 1
    assert value(samples, "laneway_requests_total", route=CHAT_ROUTE, lane="", status="404") == 1
    assert value(samples, "laneway_errors_total", type="model_not_found") == 1
    assert [r for r in access.records if r.name == "laneway.access"] == []
