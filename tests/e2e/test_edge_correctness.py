"""Correctness at the edges: a malformed upstream frame, wrongly typed or absurd request fields,
a client that leaves mid-upload, a database that goes away, 503s that say when to come back.

The real gateway in front of real sims; the official SDKs (and raw sockets where the behaviour
is below any SDK)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import asyncpg
import openai
import orjson
import pytest

from laneway.clock import ManualClock
from laneway.config import settings_from_data
from laneway.gateway import Gateway, GatewayOptions
from tests.conftest import CLIENT_KEY, PG_ADMIN_DSN, RunningGateway, Sim, fresh_pg_database

pytestmark = pytest.mark.anyio

ADMIN = "lw-edge-admin"
CHAT: Any = [{"role": "user", "content": "hi"}]
KEYS = {"keys": [{"name": "tests", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN, "admin": True}]}
LANE = "cloud:openai:one:chat:gpt-4o-mini"


def sdk(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)


def one_openai(gateway_factory: Any, sim: Sim, **extra: Any) -> RunningGateway:
    backends = {"one": {"provider": "openai", "base_url": sim.url}}
    running: RunningGateway = gateway_factory({"auth": KEYS, "backends": backends, **extra})
    return running


async def admin(gw: RunningGateway, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.url + path, headers={"authorization": f"Bearer {ADMIN}"}) as resp,
    ):
        return await resp.json()


async def post(gw: RunningGateway, path: str, body: Any) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gw.url + path, data=orjson.dumps(body), headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


# -- 5: a frame that does not parse --------------------------------------------------------------


async def read_text(client: openai.AsyncOpenAI) -> str:
    text = ""
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text


async def test_a_malformed_frame_mid_stream_is_an_error_event_and_counts_against_the_lane(
    gateway_factory: Any, sim_factory: Any
) -> None:
    sim = sim_factory(
        family="openai", reply="one two three four five", malformed_after_chunks=2, tokens_per_second=20
    )
    gw = one_openai(gateway_factory, sim, routing={"breaker": {"failures": 2, "window": 60, "cooldown": 30}})
    async with sdk(gw) as client:
        for _ in range(2):
            with pytest.raises(openai.APIError) as broken:  # the SDK's own error, never a JSONDecodeError
                await read_text(client)
            assert broken.value.message.startswith("The model's backend answered with something laneway")
    breakers = (await admin(gw, "/admin/breakers"))["breakers"]
    assert breakers[LANE]["state"] == "open"  # two broken streams: out of rotation


async def test_a_malformed_first_frame_fails_over_before_the_client_saw_a_byte(
    gateway_factory: Any, sim_factory: Any
) -> None:
    bad = sim_factory(family="openai", malformed_after_chunks=0)
    good = sim_factory(family="openai", reply="all good")
    backends = {
        "bad": {"provider": "openai", "base_url": bad.url, "weight": 1000},
        "good": {"provider": "openai", "base_url": good.url},
    }
    gw = gateway_factory({"auth": KEYS, "backends": backends, "routes": {"r": ["bad/*", "good/*"]}})
    async with sdk(gw) as client:
        stream = await client.chat.completions.with_raw_response.create(model="r", messages=CHAT, stream=True)
        assert stream.headers["x-laneway-backend"] == "good"
        text = "".join(
            [c.choices[0].delta.content or "" async for c in stream.parse() if c.choices]  # type: ignore[union-attr]
        )
    assert text == "all good"


async def test_a_malformed_ndjson_line_from_ollama_ends_the_stream_with_an_error(
    gateway_factory: Any, sim_factory: Any
) -> None:
    sim = sim_factory(
        family="ollama", reply="one two three four", malformed_after_chunks=2, tokens_per_second=20
    )
    backends = {"gpu-1": {"provider": "ollama", "base_url": sim.url}}
    gw = gateway_factory({"auth": KEYS, "backends": backends})
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="llama3.2:3b", messages=CHAT, stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass


# -- 6 and 8: what laneway validates is what it forwards ------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("stream", "true", "Invalid type for 'stream': expected a boolean, but got a string instead."),
        ("max_tokens", "5", "Invalid type for 'max_tokens': expected an integer, but got a string instead."),
        ("max_tokens", 10**7, "Invalid 'max_tokens': value above maximum. Expected a value <= 1048576"),
        ("n", 1000, "Invalid 'n': value above maximum. Expected a value <= 128, but got 1000 instead."),
        ("top_logprobs", 50, "Invalid 'top_logprobs': value above maximum"),
        (
            "temperature",
            "hot",
            "Invalid type for 'temperature': expected a number, but got a string instead.",
        ),
        ("presence_penalty", 9, "Invalid 'presence_penalty': value above maximum"),
    ],
)
async def test_wrongly_typed_or_absurd_fields_are_refused_before_any_upstream_sees_them(
    gateway_factory: Any, sim_factory: Any, field: str, value: Any, words: str
) -> None:
    sim = sim_factory(family="openai")
    gw = one_openai(gateway_factory, sim)
    status, body = await post(
        gw, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": CHAT, field: value}
    )
    assert status == 400, body
    assert body["error"]["param"] == field
    assert body["error"]["message"].startswith(words)
    assert sim.stats.inference_requests == 0
    assert (await admin(gw, "/admin/breakers"))["breakers"] == {}


async def test_an_absurd_embedding_size_never_reaches_the_upstream(
    gateway_factory: Any, sim_factory: Any
) -> None:
    sim = sim_factory(family="openai")
    gw = one_openai(gateway_factory, sim)
    payload = {"model": "text-embedding-3-small", "input": "x", "dimensions": 2147483648}
    status, body = await post(gw, "/v1/embeddings", payload)
    assert (status, body["error"]["param"]) == (400, "dimensions")
    assert sim.stats.inference_requests == 0


async def test_the_sims_refuse_what_the_real_apis_refuse(sim_factory: Any) -> None:
    oai = sim_factory(family="openai", embedding_dim=16)
    claude = sim_factory(family="anthropic")
    ollama = sim_factory(family="ollama", embedding_dim=16)
    direct = openai.AsyncOpenAI(base_url=oai.url + "/v1", api_key="x", max_retries=0)
    async with direct:
        with pytest.raises(openai.BadRequestError) as dims:
            await direct.embeddings.create(model="text-embedding-3-small", input="x", dimensions=17)
        assert dims.value.body["param"] == "dimensions"  # type: ignore[index]
        shorter = await direct.embeddings.create(model="text-embedding-3-small", input="x", dimensions=8)
        assert len(shorter.data[0].embedding) == 8
        with pytest.raises(openai.BadRequestError, match="max_tokens is too large"):
            await direct.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=100_000)
        with pytest.raises(openai.BadRequestError, match="expected a boolean"):
            await direct.chat.completions.create(
                model="gpt-4o-mini", messages=CHAT, extra_body={"stream": "true"}
            )
    async with anthropic.AsyncAnthropic(base_url=claude.url, api_key="x", max_retries=0) as direct_claude:
        with pytest.raises(anthropic.BadRequestError, match="maximum allowed number of output tokens"):
            await direct_claude.messages.create(
                model="claude-haiku-4-5", max_tokens=100_000, messages=CHAT, timeout=30
            )
    async with aiohttp.ClientSession() as http:
        body = {"model": "nomic-embed-text:latest", "input": "x", "dimensions": 4096}
        async with http.post(ollama.url + "/api/embed", json=body) as resp:
            assert resp.status == 200
            assert len((await resp.json())["embeddings"][0]) == 16  # shortened, never lengthened
        body = {"model": "llama3.2:3b", "messages": CHAT, "stream": "true"}
        async with http.post(ollama.url + "/api/chat", json=body) as resp:
            assert resp.status == 400
            assert "cannot unmarshal string" in (await resp.json())["error"]


# -- 9: quiet logs, Retry-After --------------------------------------------------------------------


async def test_a_client_that_leaves_mid_upload_is_no_error(
    gateway_factory: Any, sim_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw = one_openai(gateway_factory, sim_factory(family="openai"))
    host, port = gw.url.removeprefix("http://").split(":")
    caplog.set_level(logging.INFO)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + CLIENT_KEY.encode() + b'\r\ncontent-length: 1000\r\n\r\n{"model":'
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.3)  # the gateway notices
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], [
        r.getMessage() for r in caplog.records
    ]
    async with sdk(gw) as client:  # and it serves on
        assert await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)


async def test_a_stream_broken_mid_way_says_so_in_laneways_words(
    gateway_factory: Any, sim_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sim = sim_factory(
        family="openai", reply="one two three four five", drop_after_chunks=2, tokens_per_second=20
    )
    gw = one_openai(gateway_factory, sim)
    caplog.set_level(logging.WARNING, logger="laneway.api")
    async with sdk(gw) as client:
        with pytest.raises(openai.APIError) as broken:
            await read_text(client)
    assert broken.value.message.startswith("The model's backend broke off its answer")
    # The operator's line says what happened, in words of laneway's: not aiohttp's.
    (line,) = [r for r in caplog.records if r.getMessage() == "stream failed after it started"]
    said = line.__dict__["error"]
    assert said == "backend 'one' broke off its response mid-body"
    for text in (broken.value.message, said):
        for internal in ("aiohttp", "TransferEncoding", "payload", "ClientPayloadError"):
            assert internal not in text, text


async def test_an_open_breaker_is_a_503_with_retry_after(gateway_factory: Any, sim_factory: Any) -> None:
    sim = sim_factory(family="openai", fail_status=500)
    gw = one_openai(gateway_factory, sim, routing={"breaker": {"failures": 1, "window": 60, "cooldown": 30}})
    async with sdk(gw) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert refused.value.status_code == 503
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 30


async def test_a_denied_lane_is_a_503_with_retry_after(gateway_factory: Any, sim_factory: Any) -> None:
    sim = sim_factory(family="openai", fail_status=401)
    gw = one_openai(gateway_factory, sim, inventory={"auth_cooldown": 120})
    async with sdk(gw) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert refused.value.status_code == 503
    assert 60 <= int(refused.value.response.headers["retry-after"]) <= 120


@pytest.fixture
def doomed_database() -> Any:
    """A database of its own, for a test that drops it under a running gateway."""
    with fresh_pg_database() as url:
        yield url


async def test_a_database_outage_is_one_warning_not_a_traceback_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, doomed_database: str
) -> None:
    clock = ManualClock()
    url = doomed_database
    if True:
        data = {"storage": {"data_dir": str(tmp_path), "database_url": url}, "auth": KEYS}
        gateway = await Gateway.open(
            settings_from_data(data, source="test.yaml"),
            clock=clock,
            options=GatewayOptions(schedule=False, key_reload_interval=5),
        )
        try:
            conn = await asyncpg.connect(PG_ADMIN_DSN)  # the database goes from under the gateway
            try:
                await conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            finally:
                await conn.close()
            caplog.set_level(logging.DEBUG, logger="laneway")
            for _ in range(4):
                clock.advance(5)
                for _ in range(50):
                    await asyncio.sleep(0.01)
            reloads = [r for r in caplog.records if "reload" in r.getMessage()]
            assert [r.levelname for r in reloads] == ["WARNING"]
            assert not any(r.exc_info for r in caplog.records)
            assert len(gateway.keys) == 2  # the keys loaded before are kept
        finally:
            await gateway.aclose()
