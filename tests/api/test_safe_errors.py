"""Secrets an upstream quotes never reach a client, and reach operators only redacted; a model
laneway knows but cannot serve now is a 503 that says why; /readyz holds no upstream text.

A real sim that echoes the credential it was sent (``fail_message: "... {credential}"``) stands for
the upstreams (and proxies) that do; the gateway in front, the official ``openai`` SDK as client."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from laneway.redact import MASK, redact
from tests.conftest import CLIENT_KEY, RunningGateway, Sim

pytestmark = pytest.mark.anyio

ADMIN = "lw-safe-admin"
SECRET = "sk-upstream-0123456789abcdef"  # shaped like an OpenAI key
PLAIN = "plainsecret-without-a-shape"  # a key no pattern knows: removed as the backend's own
CHAT: Any = [{"role": "user", "content": "hi"}]
KEYS = {"keys": [{"name": "tests", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN, "admin": True}]}


def config(backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"auth": KEYS, "backends": backends, **extra}


def echoing(sim_factory: Any, **options: Any) -> Sim:
    """A sim whose injected failures quote the credential it was sent."""
    sim: Sim = sim_factory(family="openai", fail_message="bad key {credential}", **options)
    return sim


async def get(gw: RunningGateway, path: str, key: str | None = ADMIN) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http, http.get(gw.url + path, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


def sdk(gw: RunningGateway, key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0)


async def read_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)
    async for _ in stream:
        pass


def test_redact_removes_shapes_and_the_backends_own_secrets() -> None:
    said = f"Incorrect API key provided: {SECRET}; header Authorization: Bearer {PLAIN}; key={PLAIN}"
    cleaned = redact(said, [PLAIN])
    assert SECRET not in cleaned
    assert PLAIN not in cleaned
    assert cleaned.count(MASK) == 3
    assert redact("model gpt-4o-mini not found (lane cloud:openai:one:chat:gpt-4o-mini)") == (
        "model gpt-4o-mini not found (lane cloud:openai:one:chat:gpt-4o-mini)"
    )  # laneway's own words and names are left alone


@pytest.mark.parametrize("key", [SECRET, PLAIN])
async def test_an_upstream_that_quotes_its_key_never_shows_it(
    gateway_factory: Any, sim_factory: Any, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    one = echoing(sim_factory, fail_status=500)
    gw = gateway_factory(config({"one": {"provider": "openai", "base_url": one.url, "api_key": key}}))
    caplog.set_level(logging.DEBUG)
    async with sdk(gw) as client:
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=CHAT, extra_headers={"x-request-id": "req-echo"}
            )
        with pytest.raises(openai.APIError) as broken:  # the stream's first frame never came
            await read_stream(client)
    for text in (failed.value.response.text, str(broken.value.body), broken.value.message):
        assert key not in text
        assert "bad key" not in text  # no upstream text at all to a client
        assert "'one'" not in text  # nor the backend's name
    assert failed.value.response.json()["error"]["message"] == (
        "The model's backend failed (HTTP 500). Request id: req-echo"
    )
    status, failovers = await get(gw, "/admin/failovers")
    assert status == 200
    said = failovers["failovers"][0]["attempts"][0]["error"]
    assert said == f"backend 'one' answered 500: bad key {MASK}"  # the operator's view
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert "bad key [redacted]" in logged
    assert key not in logged


async def test_a_failed_model_list_that_quotes_the_key_is_redacted_and_absent_from_readyz(
    gateway_factory: Any, sim_factory: Any
) -> None:
    one = echoing(sim_factory, fail_metadata_paths=["/v1/models"])
    gw = gateway_factory(config({"one": {"provider": "openai", "base_url": one.url, "api_key": SECRET}}))
    status, ready = await get(gw, "/readyz", key=None)
    assert status == 503
    assert ready["ready"] is False
    assert ready["backends"]["one"]["state"] == "unreachable"
    assert "no lane can take requests" in ready["reason"]
    assert SECRET not in str(ready)
    assert "bad key" not in str(ready)
    status, backends = await get(gw, "/admin/backends")
    assert status == 200
    assert SECRET not in str(backends)
    assert MASK in str(backends)  # the operator sees what it said, redacted


async def test_a_refused_key_echoed_back_is_redacted_in_the_cooldown(
    gateway_factory: Any, sim_factory: Any
) -> None:
    one = echoing(sim_factory, fail_status=401)
    gw = gateway_factory(config({"one": {"provider": "openai", "base_url": one.url, "api_key": SECRET}}))
    async with sdk(gw) as client:
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert failed.value.status_code == 502  # our credentials, not the client's
    assert "refused laneway's credentials" in failed.value.message
    assert SECRET not in failed.value.response.text
    _, backends = await get(gw, "/admin/backends")
    (one_status,) = [b for b in backends["backends"] if b["name"] == "one"]
    assert one_status["cooldown_reason"] == f"backend 'one' answered 401: bad key {MASK}"


async def test_a_client_fault_explained_by_the_upstream_reaches_the_client(
    gateway_factory: Any, sim_factory: Any
) -> None:
    one = sim_factory(family="openai")
    gw = gateway_factory(config({"one": {"provider": "openai", "base_url": one.url}}))
    async with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=CHAT, tools=[{"type": "function"}]
            )  # type: ignore[list-item]
    message = refused.value.response.json()["error"]["message"]
    assert message.startswith("The model's backend refused the request (HTTP 400): ")
    assert "function.name" in message


async def test_lanes_are_named_to_admin_keys_or_when_the_operator_allows_it(
    gateway_factory: Any, sim_factory: Any
) -> None:
    one = sim_factory(family="openai", fail_status=500)
    backends = {"one": {"provider": "openai", "base_url": one.url}}
    hidden = gateway_factory(config(backends))
    shown = gateway_factory(config(backends, server={"show_lane_in_errors": True}))
    lane = "cloud:openai:one:chat:gpt-4o-mini"
    for gw, key, named in ((hidden, CLIENT_KEY, False), (hidden, ADMIN, True), (shown, CLIENT_KEY, True)):
        async with sdk(gw, key) as client:
            with pytest.raises(openai.InternalServerError) as failed:
                await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
        error = failed.value.response.json()["error"]
        assert (lane in error["message"], "lane" in error["laneway"]) == (named, named), (key, error)


async def test_a_known_model_whose_backend_is_down_is_a_503_that_says_why(
    gateway_factory: Any, tmp_path: Path
) -> None:
    # Declared models are known before the backend ever answered: nothing listens on this port.
    down = {"provider": "ollama", "base_url": "http://127.0.0.1:9", "models": ["llama3.2:3b"]}
    gw = gateway_factory(config({"gpu-1": down}))
    async with sdk(gw) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="llama3.2:3b", messages=CHAT)
        with pytest.raises(openai.NotFoundError):  # a model nobody ever served is still a 404
            await client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert refused.value.status_code == 503
    assert int(refused.value.response.headers["retry-after"]) >= 1
    message = refused.value.response.json()["error"]["message"]
    assert "'gpu-1' (unreachable since 20" in message
    status, ready = await get(gw, "/readyz", key=None)
    assert (status, ready["ready"], ready["lanes"]) == (503, False, 0)
    assert ready["backends"]["gpu-1"]["state"] == "unreachable"


async def test_a_model_whose_lanes_expired_while_its_backend_is_down_is_a_503(
    gateway_factory: Any, sim_factory: Any
) -> None:
    box = sim_factory(family="ollama")
    gw = gateway_factory(
        config({"gpu-1": {"provider": "ollama", "base_url": box.url, "refresh_interval": 0.1}})
    )
    async with sdk(gw) as client:
        await client.chat.completions.create(model="llama3.2:3b", messages=CHAT)
        box.thread.stop()
        await asyncio.sleep(0.4)  # three intervals: the lanes expire at the next sweep
        async with aiohttp.ClientSession() as http:
            await http.post(gw.url + "/admin/refresh", headers={"authorization": f"Bearer {ADMIN}"})
        assert not gw.gateway.inventory.by_model("llama3.2:3b")
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="llama3.2:3b", messages=CHAT)
    assert refused.value.status_code == 503
    assert "'gpu-1' (unreachable since" in refused.value.response.json()["error"]["message"]
