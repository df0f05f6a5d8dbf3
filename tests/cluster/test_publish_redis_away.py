"""Redis away, for published models: two in-process replicas on a Redis of the test's own
(``redis-server`` on a free port, killed and started again empty; the machine's Redis is never
touched). While it is away nothing hangs: heartbeats are answered from what each replica knows,
the replica holding the control stream serves the model, another one gives up on it within
``publishers.redispatch_wait`` (503). When it is back, empty, the replica holding the stream writes
the session back, and the other serves the model again, relayed, without a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from laneway.gateway import GatewayOptions
from tests.cluster.test_publish import ADMIN, CHAT, MODEL, TOKEN, admin, eventually, lane_health
from tests.conftest import CLIENT_KEY, RunningGateway
from tests.scripted_publisher import ScriptedPublisher, completion
from tests.storage.test_redis_breaker import OwnRedis

pytestmark = pytest.mark.anyio


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    if redis.proc is not None:
        redis.kill()


@pytest.fixture
async def pair(gateway_factory: Any, own_redis: OwnRedis, tmp_path: Path) -> list[RunningGateway]:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    options = GatewayOptions(schedule=True, key_reload_interval=3600)
    started = []
    for name in ("r1", "r2"):
        config = {
            "storage": {
                "data_dir": str(tmp_path / name),
                "runtime_url": f"redis://127.0.0.1:{own_redis.port}/0",
            },
            "auth": {
                "keys": [{"name": "app", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN, "admin": True}]
            },
            "cluster": {
                "replica_id": name,
                "namespace": namespace,
                "lease_ttl": 2,
                "heartbeat": 0.5,
                "redis_timeout": 0.3,
            },
            "publishers": {
                "tokens": [{"name": "alice", "token": TOKEN, "names": ["alice-*"]}],
                "redispatch_wait": 2,
            },
        }
        started.append(gateway_factory(config, options=options))

    async def both_listed() -> bool:
        return [len((await admin(gw, "/admin/replicas"))["replicas"]) for gw in started] == [2, 2]

    await eventually(both_listed, "each replica lists both")
    return started


async def answer(publisher: ScriptedPublisher, text: str) -> None:
    task = await publisher.task()
    status, _ = await publisher.result(task["task_id"], {"status": 200, "body": completion(MODEL, text)})
    assert status == 200


async def test_redis_away_then_back_empty(pair: list[RunningGateway], own_redis: OwnRedis) -> None:
    r1, r2 = pair
    publisher = ScriptedPublisher(r1.url, TOKEN)
    sdk = {gw.url: openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0) for gw in pair}
    try:
        await publisher.register(at=r1.url)
        await publisher.connect(at=r1.url)  # held by r1

        async def routable_on_both() -> bool:
            return [await lane_health(r1), await lane_health(r2)] == ["healthy", "healthy"]

        await eventually(routable_on_both, "routable on both")
        own_redis.kill()

        for gw in (r1, r2):  # answered from what each knows, not hung
            status, body = await publisher.heartbeat(at=gw.url)
            assert (status, body["control"]) == (200, True), body
        served = asyncio.create_task(sdk[r1.url].chat.completions.create(model=MODEL, messages=CHAT))
        await answer(publisher, "from the holder")
        assert (await served).choices[0].message.content == "from the holder"
        with pytest.raises(openai.APIStatusError) as refused:  # its task cannot reach r1's stream
            await sdk[r2.url].chat.completions.create(model=MODEL, messages=CHAT)
        assert refused.value.status_code == 503

        own_redis.start()  # back, and empty: r1 writes back the session whose stream it holds
        namespace = r1.gateway.settings.cluster.namespace
        raw = Redis.from_url(f"redis://127.0.0.1:{own_redis.port}/0")

        async def written_back() -> bool:
            listening = (await raw.pubsub_numsub(namespace + "events"))[0][1]
            return listening == 2 and bool(await raw.exists(namespace + "fleet/name/alice-laptop"))

        try:
            await eventually(written_back, "both listen again, and the session is back in Redis", tries=800)
        finally:
            await raw.aclose()

        async def relayed_again() -> bool:
            shown = (await admin(r2, "/admin/publishers"))["publishers"]
            return [(s["session_id"], s["holder"]) for s in shown] == [(publisher.session_id, "r1")]

        await eventually(relayed_again, "r2 mirrors the session held by r1 again", tries=800)
        request = asyncio.create_task(sdk[r2.url].chat.completions.create(model=MODEL, messages=CHAT))
        await answer(publisher, "relayed again")
        assert (await request).choices[0].message.content == "relayed again"
        status, body = await publisher.heartbeat(at=r2.url)
        assert (status, body["control"]) == (200, True), body
    finally:
        await publisher.aclose()
        for made in sdk.values():
            await made.close()


async def test_tasks_sent_elsewhere_are_sent_again_when_the_bus_listens_again(
    pair: list[RunningGateway], own_redis: OwnRedis
) -> None:
    """The events channel cut (every subscriber's connection killed on the test's own Redis; its
    data stays): what a publisher posted for r2's task meanwhile may be lost, so r2 sends it
    again (a new id) once it listens again, instead of waiting for it until its timeout."""
    r1, r2 = pair
    publisher = ScriptedPublisher(r1.url, TOKEN)
    sdk = openai.AsyncOpenAI(base_url=r2.v1, api_key=CLIENT_KEY, max_retries=0)
    raw = Redis.from_url(f"redis://127.0.0.1:{own_redis.port}/0")
    namespace = r1.gateway.settings.cluster.namespace
    try:
        await publisher.register(at=r1.url)
        await publisher.connect(at=r1.url)  # held by r1
        await eventually(lambda: _healthy(r2), "routable on r2")
        request = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=CHAT))
        first = await publisher.task()
        assert await raw.client_kill_filter(_type="pubsub") == 2  # both replicas' subscriptions

        async def listening_again() -> bool:
            return (await raw.pubsub_numsub(namespace + "events"))[0][1] == 2

        await eventually(listening_again, "both listen again", tries=800)
        again = await publisher.task()
        assert again["task_id"] != first["task_id"]
        assert again["body"] == first["body"]
        status, body = await publisher.result(first["task_id"], {"status": 200, "body": completion(MODEL)})
        assert (status, body["error"]["code"]) == (404, "unknown_task")
        assert (
            await publisher.result(again["task_id"], {"status": 200, "body": completion(MODEL, "again")})
        )[0] == 200
        assert (await request).choices[0].message.content == "again"
    finally:
        await publisher.aclose()
        await sdk.close()
        await raw.aclose()


async def _healthy(gw: RunningGateway) -> bool:
    return await lane_health(gw) == "healthy"
