"""Who can send prompts where: a publisher token cannot take a declared backend's model, a session
is routable only while its control stream is open, and a key may be kept off published lanes.

The real gateway in front of real sims, publishers driven over the real protocol
(``ScriptedPublisher``), clients through the official ``openai`` SDK."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import CLIENT_KEY, RunningGateway, Sim, three_family_config
from tests.scripted_publisher import ScriptedPublisher

pytestmark = pytest.mark.anyio

TOKEN = "lw-pub-any"  # models: ["*"], the default
JOINER = "lw-pub-joiner"  # join_declared: true
ADMIN = "lw-safety-admin"
DECLARED_ONLY = "lw-declared-only"  # published_lanes: false
CHAT: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gw(gateway_factory: Any, three_sims: dict[str, Sim], tmp_path: Path) -> RunningGateway:
    config = three_family_config(three_sims, tmp_path / "gw")
    config["auth"]["keys"] += [
        {"name": "ops", "key": ADMIN, "admin": True},
        {"name": "careful", "key": DECLARED_ONLY, "published_lanes": False},
    ]
    config["publishers"] = {
        "tokens": [
            {"name": "anyone", "token": TOKEN, "names": ["pub-*"]},
            {"name": "joiner", "token": JOINER, "names": ["join-*"], "join_declared": True},
        ]
    }
    running: RunningGateway = gateway_factory(config, three_sims)
    return running


@pytest.fixture
async def publishers(gw: RunningGateway) -> Any:
    made: list[ScriptedPublisher] = []

    def make(token: str = TOKEN) -> ScriptedPublisher:
        made.append(ScriptedPublisher(gw.url, token))
        return made[-1]

    yield make
    for pub in made:
        await pub.aclose()


def sdk(gw: RunningGateway, key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0)


async def test_a_token_cannot_publish_a_declared_backends_model(gw: RunningGateway, publishers: Any) -> None:
    pub = publishers()
    status, body = await pub.call(
        "POST",
        "/v1/publishers/register",
        {"name": "pub-laptop", "lanes": [{"model": "gpt-4o-mini"}, {"model": "pub-own:1b"}]},
    )
    assert status == 409, body
    assert "'gpt-4o-mini'" in body["error"]["message"]
    assert "join_declared" in body["error"]["message"]
    lanes = gw.gateway.inventory.by_model("gpt-4o-mini")
    assert {lane.backend for lane in lanes} == {"oai"}  # nothing was written: all or nothing
    assert not gw.gateway.inventory.by_model("pub-own:1b")


async def test_a_joining_token_may_share_a_declared_model(gw: RunningGateway, publishers: Any) -> None:
    pub = publishers(JOINER)
    await pub.register(name="join-box", lanes=[{"model": "gpt-4o-mini"}])
    await pub.connect()
    backends = {lane.backend for lane in gw.gateway.inventory.by_model("gpt-4o-mini") if lane.routable}
    assert backends == {"oai", "join-box"}


async def test_a_model_a_declared_backend_starts_serving_later_leaves_the_publisher(
    gw: RunningGateway, publishers: Any
) -> None:
    pub = publishers()
    await pub.register(name="pub-laptop", lanes=[{"model": "rare-model:1b"}])
    await pub.connect()
    gw.sims["openai"].options.models = [*gw.sims["openai"].options.models, "rare-model:1b"]
    async with aiohttp.ClientSession() as http:
        headers = {"authorization": f"Bearer {ADMIN}"}
        async with http.post(gw.url + "/admin/refresh?backend=oai&cache=false", headers=headers) as r:
            assert r.status == 200, await r.text()
    async with sdk(gw) as client:
        for _ in range(5):
            reply = await client.chat.completions.with_raw_response.create(
                model="rare-model:1b", messages=CHAT
            )
            assert reply.headers["x-laneway-backend"] == "oai"
    assert pub.events.empty()  # not one prompt reached the publisher


async def test_a_session_without_its_control_stream_is_never_routed(
    gw: RunningGateway, publishers: Any
) -> None:
    pub = publishers()
    await pub.register(name="pub-silent", lanes=[{"model": "silent:1b"}])
    async with sdk(gw) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="silent:1b", messages=CHAT)
    assert refused.value.status_code == 503
    assert refused.value.response.headers.get("retry-after")
    assert gw.gateway.fleet is not None
    assert gw.gateway.fleet.pending() == 0


async def test_dead_sessions_do_not_use_up_the_attempts(gw: RunningGateway, publishers: Any) -> None:
    # Four publishers registered the declared model and never opened their control streams;
    # the declared lane serves at the first attempt.
    for i in range(4):
        await publishers(JOINER).register(name=f"join-dead-{i}", lanes=[{"model": "llama3.2:3b"}])
    async with sdk(gw) as client:
        for _ in range(5):
            reply = await client.chat.completions.with_raw_response.create(model="llama3.2:3b", messages=CHAT)
            assert (reply.headers["x-laneway-backend"], reply.headers["x-laneway-attempts"]) == ("gpu-1", "1")


async def test_a_key_barred_from_published_lanes_is_never_served_by_one(
    gw: RunningGateway, publishers: Any
) -> None:
    shared, own = publishers(JOINER), publishers()
    await shared.register(name="join-box", lanes=[{"model": "llama3.2:3b"}], max_concurrency=4)
    await own.register(name="pub-laptop", lanes=[{"model": "pub-only:1b"}])
    await shared.connect()
    await own.connect()
    async with sdk(gw, DECLARED_ONLY) as careful:
        replies = await asyncio.gather(
            *(
                careful.chat.completions.with_raw_response.create(model="llama3.2:3b", messages=CHAT)
                for _ in range(8)
            )
        )
        assert {r.headers["x-laneway-backend"] for r in replies} == {"gpu-1"}
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await careful.chat.completions.create(model="pub-only:1b", messages=CHAT)
    assert "published lanes" in refused.value.message
    assert shared.events.empty()
    assert own.events.empty()
