"""Published models on every replica: three gateways in this process (each on its own server
thread and loop) sharing this machine's Redis under a namespace of the test's own, a publisher
driven by hand over the real protocol (tests/scripted_publisher.py) whose calls go to whichever
replica the test says (as a load balancer would send them), and the official ``openai`` SDK.

What a replica that restarts or is killed does is in test_publish_processes.py (real processes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from redis.asyncio import Redis

from laneway.gateway import GatewayOptions
from tests.cluster.test_replicas import REDIS_URL
from tests.conftest import CLIENT_KEY, RunningGateway
from tests.scripted_publisher import ScriptedPublisher, chunk, completion

pytestmark = pytest.mark.anyio

TOKEN = "lw-pub-alice"
ADMIN = "lw-test-admin"
MODEL = "alice-llama:1b"
LANE = "fleet:virtual:alice-laptop:chat:alice-llama%3A1b"
CHAT: Any = [{"role": "user", "content": "hi"}]
NAMES = ("r1", "r2", "r3")


def replica_config(name: str, namespace: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "storage": {"data_dir": str(tmp_path / name), "runtime_url": REDIS_URL},
        "auth": {"keys": [{"name": "app", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN, "admin": True}]},
        "cluster": {"replica_id": name, "namespace": namespace, "lease_ttl": 2, "heartbeat": 0.5},
        "publishers": {"tokens": [{"name": "alice", "token": TOKEN, "names": ["alice-*"]}]},
    }


async def eventually(check: Callable[[], Awaitable[bool]], what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never: {what}")


async def admin(gw: RunningGateway, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.url + path, headers={"authorization": f"Bearer {ADMIN}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def lane_health(gw: RunningGateway, lane_id: str = LANE) -> str | None:
    lanes = (await admin(gw, "/admin/lanes"))["lanes"]
    return next((lane["health"] for lane in lanes if lane["id"] == lane_id), None)


async def healths(cluster: dict[str, RunningGateway]) -> list[str | None]:
    return [await lane_health(gw) for gw in cluster.values()]


@pytest.fixture
async def cluster(gateway_factory: Any, tmp_path: Path) -> AsyncIterator[dict[str, RunningGateway]]:
    """r1, r2, r3: each lists the three and listens to the others' events."""
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    options = GatewayOptions(schedule=True, key_reload_interval=3600)
    started = {n: gateway_factory(replica_config(n, namespace, tmp_path), options=options) for n in NAMES}
    raw = Redis.from_url(REDIS_URL)
    try:

        async def listening() -> bool:
            subscribed = (await raw.pubsub_numsub(namespace + "events"))[0][1]
            lists = [
                [r["id"] for r in (await admin(gw, "/admin/replicas"))["replicas"]] for gw in started.values()
            ]
            return subscribed == len(NAMES) and all(ids == list(NAMES) for ids in lists)

        await eventually(listening, "every replica listens and lists the three")
        yield started
    finally:
        await raw.aclose()


@pytest.fixture
async def publisher(cluster: dict[str, RunningGateway]) -> AsyncIterator[ScriptedPublisher]:
    pub = ScriptedPublisher(cluster["r1"].url, TOKEN)
    yield pub
    await pub.aclose()


_CLIENTS: list[openai.AsyncOpenAI] = []


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    made = openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)
    _CLIENTS.append(made)
    return made


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _CLIENTS:
        await _CLIENTS.pop().close()


async def serving(cluster: dict[str, RunningGateway], publisher: ScriptedPublisher, **register: Any) -> None:
    """The publisher registers and opens its control stream on r1; its lanes are routable on every
    replica."""
    r1 = cluster["r1"]
    await publisher.register(at=r1.url, **register)
    await publisher.connect(at=r1.url)
    await eventually(lambda: _all(cluster, "healthy"), "routable everywhere")


async def test_registered_on_one_replica_heartbeats_and_lanes_on_all(
    cluster: dict[str, RunningGateway], publisher: ScriptedPublisher
) -> None:
    r1, r2, r3 = cluster.values()
    await publisher.register(at=r1.url)
    for gw in (r2, r3):  # no unknown_session: every replica knows the session at once
        status, body = await publisher.heartbeat(at=gw.url)
        assert (status, body["control"]) == (200, False), body
    await eventually(lambda: _all(cluster, "inactive"), "the lane on every replica, inactive: no stream yet")

    await publisher.connect(at=r2.url)  # the control stream held by r2
    await eventually(lambda: _all(cluster, "healthy"), "the lane routable on every replica")
    for gw in cluster.values():
        status, body = await publisher.heartbeat(at=gw.url)
        assert (status, body["control"]) == (200, True), body
        (shown,) = (await admin(gw, "/admin/publishers"))["publishers"]
        assert (shown["session_id"], shown["holder"]) == (publisher.session_id, "r2")
    held = {gw.gateway.replicas.id: gw.gateway.fleet.control_streams() for gw in cluster.values()}
    assert held == {"r1": 0, "r2": 1, "r3": 0}
    from tests.cli.test_admin import laneway, ok

    shown = await asyncio.to_thread(laneway, "publishers", "--url", r3.url, "--key", ADMIN)
    header, row = ok(shown).splitlines()[:2]
    assert (header.split()[-1], row.split()[0], row.split()[-1]) == ("HOLDER", "alice-laptop", "r2")

    status, _ = await publisher.call("DELETE", publisher.base, at=r3.url)  # unregistered on r3
    assert status == 200
    await eventually(lambda: _all(cluster, "inactive"), "inactive on every replica")
    await eventually(lambda: _is_true(r2.gateway.fleet.control_streams() == 0), "r2 closed its stream")


async def _all(cluster: dict[str, RunningGateway], health: str) -> bool:
    return await healths(cluster) == [health] * len(cluster)


async def _is_true(value: bool) -> bool:
    return value


async def test_one_name_registered_on_two_replicas_at_once_is_taken_once(
    cluster: dict[str, RunningGateway],
) -> None:
    r1, r2, _ = cluster.values()
    pubs = [ScriptedPublisher(r1.url, TOKEN) for _ in range(2)]
    try:
        for round_ in range(10):
            name = f"alice-box-{round_}"
            body = {"name": name, "lanes": [{"model": MODEL}]}
            answers = await asyncio.gather(
                pubs[0].call("POST", "/v1/publishers/register", body, at=r1.url),
                pubs[1].call("POST", "/v1/publishers/register", body, at=r2.url),
            )
            statuses = sorted(status for status, _ in answers)
            assert statuses == [200, 409], answers  # exactly one session has the name
            winner = next(answer["session_id"] for status, answer in answers if status == 200)
            for gw in cluster.values():

                async def one_session(gw: RunningGateway = gw, name: str = name, won: str = winner) -> bool:
                    shown = (await admin(gw, "/admin/publishers"))["publishers"]
                    return [s["session_id"] for s in shown if s["name"] == name] == [won]

                await eventually(one_session, f"{name}: one session on {gw.gateway.replicas.id}")
    finally:
        for pub in pubs:
            await pub.aclose()


async def test_posts_on_a_third_replica_reach_the_waiting_request_in_order(
    cluster: dict[str, RunningGateway], publisher: ScriptedPublisher
) -> None:
    r1, r2, r3 = cluster.values()
    await serving(cluster, publisher)  # held by r1

    # A streamed request on r2; its chunks posted to r3, r1 and r3 again: in order, streamed.
    reading = asyncio.create_task(_stream_text(r2))
    task = await publisher.task()
    assert task["task_id"].startswith("t_")
    tid = task["task_id"]
    assert (await publisher.chunks(tid, 0, [chunk(MODEL, "one ")], at=r3.url))[0] == 200
    assert (await publisher.chunks(tid, 1, [chunk(MODEL, "two ")], at=r1.url))[0] == 200
    status, body = await publisher.chunks(tid, 1, [chunk(MODEL, "again ")], at=r3.url)  # a stale seq
    assert (status, body["error"]["code"], body["error"]["param"]) == (409, "conflict", "seq"), body
    assert (await publisher.chunks(tid, 2, [chunk(MODEL, "three", finish="stop")], at=r3.url))[0] == 200
    assert (await publisher.result(tid, {"status": 200}, at=r1.url))[0] == 200
    assert await reading == ("one two three", None)
    status, body = await publisher.result(tid, {"status": 200}, at=r3.url)  # it ended: gone
    assert (status, body["error"]["code"]) == (404, "unknown_task")

    # A call that is not streamed, on r3, answered through r2.
    request = asyncio.create_task(client(r3).chat.completions.create(model=MODEL, messages=CHAT))
    task = await publisher.task()
    status, _ = await publisher.result(
        task["task_id"], {"status": 200, "body": completion(MODEL, "hi!")}, at=r2.url
    )
    assert status == 200
    assert (await request).choices[0].message.content == "hi!"

    # A bogus task id naming no replica, and one naming a replica nobody is: 404 on any.
    for task_id in ("t_bogus", "t_bogus.bm9ib2R5"):
        status, body = await publisher.result(task_id, {"status": 200, "body": {}}, at=r3.url)
        assert (status, body["error"]["code"]) == (404, "unknown_task"), body


async def _stream_text(gw: RunningGateway) -> tuple[str, str | None]:
    text = ""
    try:
        stream = await client(gw).chat.completions.create(model=MODEL, messages=CHAT, stream=True)
        async for c in stream:
            if c.choices:
                text += c.choices[0].delta.content or ""
    except openai.APIError as exc:
        return text, exc.message
    return text, None


async def test_a_stream_dropped_on_its_holder_breaks_on_the_requester(
    cluster: dict[str, RunningGateway], publisher: ScriptedPublisher
) -> None:
    _, r2, _ = cluster.values()
    await serving(cluster, publisher)
    reading = asyncio.create_task(_stream_text(r2))
    task = await publisher.task()
    assert (await publisher.chunks(task["task_id"], 0, [chunk(MODEL, "partial ")], at=r2.url))[0] == 200
    await publisher.drop()  # its stream on r1 is gone: r2's request cannot be replayed
    text, error = await reading
    assert text == "partial "
    assert error is not None
    assert error.startswith("The model's backend broke off its answer")
    await eventually(lambda: _all(cluster, "inactive"), "inactive on every replica")


async def test_a_task_in_flight_is_sent_again_when_the_publisher_reconnects_elsewhere(
    cluster: dict[str, RunningGateway], publisher: ScriptedPublisher
) -> None:
    r1, r2, r3 = cluster.values()
    await serving(cluster, publisher)
    request = asyncio.create_task(client(r2).chat.completions.create(model=MODEL, messages=CHAT))
    first = await publisher.task()
    # The publisher reconnects through r3 before r1 noticed its old stream is gone (a new bind).
    await publisher.connect(at=r3.url)
    resent = await publisher.task()
    assert resent["task_id"] != first["task_id"]
    assert resent["body"] == first["body"]
    status, body = await publisher.result(
        first["task_id"], {"status": 200, "body": completion(MODEL)}, at=r1.url
    )
    assert (status, body["error"]["code"]) == (404, "unknown_task")  # the old id is void
    await publisher.result(resent["task_id"], {"status": 200, "body": completion(MODEL, "second")}, at=r3.url)
    assert (await request).choices[0].message.content == "second"
    await eventually(lambda: _is_true(r1.gateway.fleet.control_streams() == 0), "r1 closed the old stream")
    assert r3.gateway.fleet.control_streams() == 1


async def test_a_revoked_token_cuts_the_session_where_it_is_held(
    gateway_factory: Any, pg_url: str, tmp_path: Path
) -> None:
    """Three replicas on one PostgreSQL database (each reloads its keys when one is revoked, told
    by the database, and polls only once an hour): the replica holding the control stream cuts
    it, and the lanes go inactive on every replica."""
    from tests.cli.test_admin import laneway, ok

    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    options = GatewayOptions(schedule=True, key_reload_interval=3600)
    cluster = {}
    for name in NAMES:
        config = replica_config(name, namespace, tmp_path)
        config["storage"]["database_url"] = pg_url
        cluster[name] = gateway_factory(config, options=options)
    r1, r2, r3 = cluster.values()
    tokens, owner = ("publishers", "tokens"), f"bob-{uuid.uuid4().hex[:6]}"
    created = await asyncio.to_thread(
        laneway, *tokens, "create", owner, "--names", "alice-*", "--database-url", pg_url
    )
    secret = ok(created).strip()
    publisher = ScriptedPublisher(r1.url, secret)
    try:
        for gw in cluster.values():

            async def knows(gw: RunningGateway = gw) -> bool:
                return owner in gw.gateway.fleet.tokens.owners()

            await eventually(knows, "every replica has the new token")
        await publisher.register(at=r1.url)
        await publisher.connect(at=r2.url)  # held by r2
        await eventually(lambda: _all(cluster, "healthy"), "routable everywhere")
        ok(await asyncio.to_thread(laneway, *tokens, "revoke", owner, "--database-url", pg_url))
        await eventually(lambda: _all(cluster, "inactive"), "cut: inactive on every replica")
        assert [gw.gateway.fleet.control_streams() for gw in cluster.values()] == [0, 0, 0]
        assert publisher._reader is not None
        await asyncio.wait_for(publisher._reader, 10)  # r2 ended the stream
        status, _ = await publisher.heartbeat(at=r3.url)
        assert status == 401  # and the token is refused everywhere
    finally:
        await publisher.aclose()


async def test_a_caller_who_leaves_on_another_replica_cancels_the_task(
    cluster: dict[str, RunningGateway], publisher: ScriptedPublisher
) -> None:
    _, r2, _ = cluster.values()
    await serving(cluster, publisher)
    request = asyncio.create_task(client(r2).chat.completions.create(model=MODEL, messages=CHAT))
    task = await publisher.task()
    request.cancel()  # the client on r2 leaves: the publisher, on r1, is told to stop
    _, cancel = await publisher.next("cancel")
    assert cancel == {"task_id": task["task_id"]}
    status, body = await publisher.result(task["task_id"], {"status": 200, "body": completion(MODEL)})
    assert (status, body["error"]["code"]) == (404, "unknown_task")


async def test_a_hibernating_publisher_is_woken_for_a_request_on_another_replica(
    cluster: dict[str, RunningGateway], publisher: ScriptedPublisher
) -> None:
    r1, r2, r3 = cluster.values()
    await publisher.register(at=r1.url, state="hibernating")
    await publisher.connect(at=r1.url)
    await eventually(lambda: _all(cluster, "hibernating"), "hibernating everywhere")
    request = asyncio.create_task(client(r2).chat.completions.create(model=MODEL, messages=CHAT))
    _, wake = await publisher.next("wake")
    assert (await publisher.result(wake["task_id"], {"status": 200}, at=r3.url))[0] == 200
    await eventually(lambda: _all(cluster, "healthy"), "awake everywhere")
    task = await publisher.task()
    await publisher.result(task["task_id"], {"status": 200, "body": completion(MODEL, "awake")}, at=r3.url)
    assert (await request).choices[0].message.content == "awake"


async def test_a_publishers_max_concurrency_is_counted_across_the_replicas(
    cluster: dict[str, RunningGateway], publisher: ScriptedPublisher
) -> None:
    _, r2, r3 = cluster.values()
    await serving(cluster, publisher, max_concurrency=1)
    requests = [
        asyncio.create_task(client(gw).chat.completions.create(model=MODEL, messages=CHAT)) for gw in (r2, r3)
    ]
    first = await publisher.task()
    with pytest.raises(TimeoutError):  # one call at a time, whichever replica the other came to
        await publisher.task(timeout=1.0)
    status, body = await publisher.result(first["task_id"], {"status": 200, "body": completion(MODEL)})
    assert status == 200, body
    second = await publisher.task()  # its slot came back: the other one's call now
    status, body = await publisher.result(second["task_id"], {"status": 200, "body": completion(MODEL)})
    assert status == 200, body
    replies = await asyncio.gather(*requests)
    assert [r.choices[0].message.content for r in replies] == ["hello from the publisher"] * 2
