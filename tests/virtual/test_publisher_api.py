"""The publisher endpoints and virtual lanes from outside: the real gateway on loopback, a
publisher driven by hand over the real protocol (tests/scripted_publisher.py), and the official
``openai`` SDK as the client. ``laneway publish`` itself: test_publish_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import CLIENT_KEY, RunningGateway, Sim, three_family_config
from tests.scripted_publisher import ScriptedPublisher, chunk, completion, embedding

pytestmark = pytest.mark.anyio

TOKEN = "lw-pub-alice"
NARROW = "lw-pub-carol"
JOINER = "lw-pub-joiner"  # may publish models the declared backends serve (join_declared)
ADMIN = "lw-test-admin"
MODEL = "alice-llama:1b"
LANE = "fleet:virtual:alice-laptop:chat:alice-llama%3A1b"
CHAT: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def pub_gw(gateway_factory: Any, three_sims: dict[str, Sim], tmp_path: Path) -> RunningGateway:
    config = three_family_config(three_sims, tmp_path / "gw")
    config["auth"]["keys"].append({"name": "ops", "key": ADMIN, "admin": True})
    config["publishers"] = {
        "tokens": [
            {"name": "alice", "token": TOKEN, "names": ["alice-*"]},
            {"name": "carol", "token": NARROW, "names": ["carol-*"], "models": ["carol-*"]},
            {"name": "joiner", "token": JOINER, "names": ["alice-*"], "join_declared": True},
        ],
        "redispatch_wait": 30,
    }
    config["routes"]["pooled"] = [
        {"backend": "alice-laptop", "model": "llama3.2:3b"},
        {"backend": "gpu-1", "model": "llama3.2:3b"},
    ]
    running: RunningGateway = gateway_factory(config, three_sims)
    return running


@pytest.fixture
async def publisher(pub_gw: RunningGateway) -> Any:
    pub = ScriptedPublisher(pub_gw.url, TOKEN)
    yield pub
    await pub.aclose()


@pytest.fixture
async def joiner(pub_gw: RunningGateway) -> Any:
    pub = ScriptedPublisher(pub_gw.url, JOINER)
    yield pub
    await pub.aclose()


_CLIENTS: list[openai.AsyncOpenAI] = []


def client(gw: RunningGateway, key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    made = openai.AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    _CLIENTS.append(made)
    return made


@pytest.fixture(autouse=True)
async def _close_clients() -> Any:
    """Every SDK client a test made is closed on the test's own loop."""
    yield
    while _CLIENTS:
        await _CLIENTS.pop().close()


async def admin(gw: RunningGateway, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.url + path, headers={"authorization": f"Bearer {ADMIN}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def lane_health(gw: RunningGateway, lane_id: str = LANE) -> str | None:
    lanes = (await admin(gw, "/admin/lanes"))["lanes"]
    return next((ln["health"] for ln in lanes if ln["id"] == lane_id), None)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never: {what}")


# -- tokens ---------------------------------------------------------------------------------------


def endpoints(sid: str) -> Iterator[tuple[str, str, Any]]:
    base = f"/v1/publishers/sessions/{sid}"
    yield "POST", "/v1/publishers/register", {"name": "alice-laptop", "lanes": [{"model": MODEL}]}
    yield "GET", base + "/control", None
    yield "POST", base + "/heartbeat", {}
    yield "POST", base + "/tasks/t_x/chunks", {"seq": 0, "chunks": []}
    yield "POST", base + "/tasks/t_x/result", {"status": 200}
    yield "DELETE", base, None


@pytest.mark.parametrize("token", [None, "", "wrong", CLIENT_KEY, ADMIN])
async def test_every_publisher_endpoint_refuses_a_bad_token(
    pub_gw: RunningGateway, publisher: ScriptedPublisher, token: str | None
) -> None:
    await publisher.register()
    async with aiohttp.ClientSession() as http:
        for method, path, body in endpoints(publisher.session_id or ""):
            headers = {} if token is None else {"authorization": f"Bearer {token}"}
            data = orjson.dumps(body) if body is not None else None
            async with http.request(method, pub_gw.url + path, data=data, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == 401, (method, path, answer)
                assert answer["error"]["type"] == "authentication_error"
                assert "publisher token" in answer["error"]["message"].lower()
    assert await lane_health(pub_gw) == "inactive"  # nothing changed (no control stream yet)


async def test_a_publisher_token_is_not_a_client_key(pub_gw: RunningGateway) -> None:
    bad = client(pub_gw, TOKEN)
    with pytest.raises(openai.AuthenticationError):
        await bad.chat.completions.create(model="llama3.2:3b", messages=CHAT)


async def test_register_refuses_shadowing_scope_and_garbage(pub_gw: RunningGateway) -> None:
    carol = ScriptedPublisher(pub_gw.url, NARROW)
    bob = ScriptedPublisher(pub_gw.url, TOKEN)
    try:
        status, body = await bob.call(
            "POST", "/v1/publishers/register", {"name": "gpu-1", "lanes": [{"model": MODEL}]}
        )
        assert status == 403  # outside alice-*; and were it allowed, gpu-1 is declared
        status, body = await carol.call(
            "POST", "/v1/publishers/register", {"name": "carol-box", "lanes": [{"model": "llama3"}]}
        )
        assert status == 403
        assert "may not publish the model 'llama3'" in body["error"]["message"]
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                pub_gw.url + "/v1/publishers/register",
                data=b"{not json",
                headers={"authorization": f"Bearer {TOKEN}"},
            ) as resp,
        ):
            assert resp.status == 400
            assert "not valid JSON" in (await resp.json())["error"]["message"]
        assert (await admin(pub_gw, "/admin/publishers"))["publishers"] == []
    finally:
        await carol.aclose()
        await bob.aclose()


async def test_register_says_which_protocol_version_it_speaks(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    lanes = [{"model": MODEL}]
    status, body = await publisher.call(
        "POST", "/v1/publishers/register", {"name": "alice-laptop", "lanes": lanes, "protocol": 2}
    )
    assert status == 400
    assert body["error"]["param"] == "protocol"
    assert "speaks version 1 of the publisher protocol, not 2" in body["error"]["message"]
    assert (await admin(pub_gw, "/admin/publishers"))["publishers"] == []
    # A register without the field (every publisher from before versions) speaks version 1.
    answer = await publisher.register(lanes=lanes)
    assert answer["protocol"] == 1


async def test_malformed_posts_are_400_naming_the_field(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    await publisher.register()
    await publisher.connect()
    request = asyncio.create_task(
        client(pub_gw).chat.completions.create(model=MODEL, messages=CHAT, stream=True)
    )
    task = await publisher.task()
    base = f"{publisher.base}/tasks/{task['task_id']}"
    for path, body, param in [
        ("/chunks", {"seq": "0", "chunks": []}, "seq"),  # a number in a string: not coerced
        ("/chunks", {"seq": 0, "chunks": ["data: {}"]}, "chunks"),
        ("/result", {"status": 200, "body": []}, "body"),
        ("/result", {}, "status"),
    ]:
        status, answer = await publisher.call("POST", base + path, body)
        assert (status, answer["error"]["param"]) == (400, param), answer
        assert f"'{param}'" in answer["error"]["message"]
    status, answer = await publisher.heartbeat("asleep")
    assert (status, answer["error"]["param"]) == (400, "state")
    assert "one of: active, hibernating, draining" in answer["error"]["message"]
    # None of them changed anything: the task is still the publisher's to answer.
    assert (await publisher.chunks(task["task_id"], 0, [chunk(MODEL, "fine")]))[0] == 200
    assert (await publisher.result(task["task_id"], {"status": 200}))[0] == 200
    stream = await request
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "fine"


async def test_a_declared_backend_name_is_refused_with_409(
    gateway_factory: Any, three_sims: dict[str, Sim], tmp_path: Path
) -> None:
    config = three_family_config(three_sims, tmp_path / "gw")
    config["publishers"] = {"tokens": [{"name": "ops", "token": TOKEN, "names": ["*"]}]}
    gw = gateway_factory(config, three_sims)
    pub = ScriptedPublisher(gw.url, TOKEN)
    try:
        status, body = await pub.call(
            "POST", "/v1/publishers/register", {"name": "gpu-1", "lanes": [{"model": "llama3.2:3b"}]}
        )
        assert status == 409
        assert body["error"]["code"] == "conflict"
        assert "declared backend" in body["error"]["message"]
    finally:
        await pub.aclose()


async def test_sticky_reconnect_and_adoption_over_http(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    first = (await publisher.register())["session_id"]
    await publisher.connect()
    other = ScriptedPublisher(pub_gw.url, TOKEN)
    try:
        status, body = await other.call(
            "POST", "/v1/publishers/register", {"name": "alice-laptop", "lanes": [{"model": MODEL}]}
        )
        assert status == 409, body  # the first session is alive
        assert "still active" in body["error"]["message"]
        await publisher.drop()
        await eventually(lambda: _is(pub_gw, "inactive"), "inactive after the drop")
        again = await publisher.register()  # the same session id: its rows, reactivated...
        assert again["session_id"] == first
        assert await lane_health(pub_gw) == "inactive"  # ...once tasks can reach it
        await publisher.connect()
        assert await lane_health(pub_gw) == "healthy"
    finally:
        await other.aclose()


async def _is(gw: RunningGateway, health: str) -> bool:
    return await lane_health(gw) == health


# -- serving through the router -------------------------------------------------------------------


async def answer_tasks(pub: ScriptedPublisher, n: int) -> list[dict[str, Any]]:
    """Answer ``n`` tasks like a well-behaved publisher; returns them."""
    seen = []
    for _ in range(n):
        task = await pub.task()
        seen.append(task)
        model = task["model"]
        if task["operation"] == "embedding":
            status, _ = await pub.result(task["task_id"], {"status": 200, "body": embedding(model)})
        elif task["stream"]:
            for seq, text in enumerate(["hel", "lo"]):
                status, _ = await pub.chunks(task["task_id"], seq, [chunk(model, text)])
                assert status == 200
            status, _ = await pub.chunks(task["task_id"], 2, [chunk(model, "", finish="stop")])
            status, _ = await pub.result(task["task_id"], {"status": 200})
        else:
            status, _ = await pub.result(task["task_id"], {"status": 200, "body": completion(model)})
        assert status == 200
    return seen


async def test_chat_stream_and_embeddings_through_a_virtual_lane(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    await publisher.register(
        max_concurrency=2,
        lanes=[{"model": MODEL, "type": "chat"}, {"model": "alice-embed", "type": "embedding"}],
    )
    await publisher.connect()
    sdk = client(pub_gw)
    models = [m.id async for m in sdk.models.list()]
    assert MODEL in models
    assert "alice-embed" in models
    worker = asyncio.create_task(answer_tasks(publisher, 3))
    reply = await sdk.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT)
    assert reply.headers["x-laneway-lane"] == LANE
    assert reply.parse().choices[0].message.content == "hello from the publisher"
    stream = await sdk.chat.completions.create(model=MODEL, messages=CHAT, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "hello"
    emb = await sdk.embeddings.create(model="alice-embed", input="x")
    assert emb.data[0].embedding == [0.1, 0.2, 0.3]
    tasks = await worker
    assert [(t["operation"], t["stream"]) for t in tasks] == [
        ("chat", False),
        ("chat", True),
        ("embedding", False),
    ]
    assert tasks[0]["body"]["messages"] == CHAT

    async def recorded() -> bool:
        rows = (await admin(pub_gw, "/admin/usage?group_by=backend"))["rows"]
        return any(row["backend"] == "alice-laptop" and row["requests"] == 3 for row in rows)

    await eventually(recorded, "3 requests recorded against the publisher")


async def test_killed_publisher_means_inactive_and_503(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    await publisher.register()
    await publisher.connect()
    await publisher.drop()
    await eventually(lambda: _is(pub_gw, "inactive"), "inactive at once after the drop")
    with pytest.raises(openai.APIStatusError) as err:
        await client(pub_gw).chat.completions.create(model=MODEL, messages=CHAT)
    assert err.value.status_code == 503
    assert "alice-laptop (inactive)" in err.value.message


async def test_a_task_in_flight_is_resent_when_the_publisher_reconnects(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    await publisher.register()
    await publisher.connect()
    request = asyncio.create_task(client(pub_gw).chat.completions.create(model=MODEL, messages=CHAT))
    first = await publisher.task()
    await publisher.drop()  # dies before answering
    await eventually(lambda: _is(pub_gw, "inactive"), "inactive")
    status, _ = await publisher.result(first["task_id"], {"status": 200, "body": completion(MODEL, "late")})
    assert status == 404  # the old id is void: the task went back to pending
    await publisher.connect()  # back, same session
    resent = await publisher.task()
    assert resent["task_id"] != first["task_id"]
    assert resent["body"] == first["body"]
    await publisher.result(resent["task_id"], {"status": 200, "body": completion(MODEL, "second try")})
    reply = await request
    assert reply.choices[0].message.content == "second try"


async def test_a_dropped_task_fails_over_to_another_lane_of_the_model(
    pub_gw: RunningGateway, joiner: ScriptedPublisher
) -> None:
    publisher = joiner
    # llama3.2:3b is also served by the declared Ollama sim (gpu-1); the route tries the
    # publisher first, so the request reaches it, and fails over when it drops.
    await publisher.register(lanes=[{"model": "llama3.2:3b"}])
    await publisher.connect()
    ollama = pub_gw.sims["ollama"]
    before = ollama.stats.inference_requests
    request = asyncio.create_task(
        client(pub_gw).chat.completions.with_raw_response.create(model="pooled", messages=CHAT)
    )
    await publisher.task()
    await publisher.drop()
    reply = await request
    assert reply.headers["x-laneway-lane"].startswith("local:ollama:gpu-1:chat:")
    assert reply.headers["x-laneway-attempts"] == "2"
    assert ollama.stats.inference_requests == before + 1


async def test_a_publisher_dropped_mid_stream_ends_it_with_an_error_event(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    await publisher.register()
    await publisher.connect()
    reading = asyncio.create_task(_stream_text(pub_gw))
    task = await publisher.task()
    assert (await publisher.chunks(task["task_id"], 0, [chunk(MODEL, "partial ")]))[0] == 200
    await asyncio.sleep(0.2)  # the client has its first bytes
    await publisher.drop()
    text, error = await reading
    assert text == "partial "  # kept what it got, then an error event, never a silent switch
    assert error is not None
    # laneway's words to the client; the publisher's name and what happened to operators
    assert error.startswith("The model's backend broke off its answer")
    assert "alice-laptop" not in error


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


async def test_ten_concurrent_requests_wake_a_hibernating_publisher_once(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    await publisher.register(state="hibernating", max_concurrency=10)
    await publisher.connect()
    assert await lane_health(pub_gw) == "hibernating"
    sdk = client(pub_gw)
    requests = [
        asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=CHAT)) for _ in range(10)
    ]
    _, wake = await publisher.next("wake")
    await asyncio.sleep(0.3)  # every request has arrived and is waiting for the same wake
    assert publisher.events.empty()
    assert (await publisher.result(wake["task_id"], {"status": 200}))[0] == 200
    await answer_tasks(publisher, 10)
    replies = await asyncio.gather(*requests)
    assert len(replies) == 10
    assert await lane_health(pub_gw) == "healthy"
    assert publisher.events.empty()  # no second wake


async def test_a_failed_wake_fails_them_all_and_stays_hibernating(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    await publisher.register(state="hibernating", max_concurrency=10)
    await publisher.connect()
    sdk = client(pub_gw)
    requests = [
        asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=CHAT)) for _ in range(10)
    ]
    _, wake = await publisher.next("wake")
    await asyncio.sleep(0.3)
    await publisher.result(wake["task_id"], {"error": {"status": 500, "message": "wake command exited 1"}})
    results = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(r, openai.APIStatusError) and r.status_code == 503 for r in results), results
    assert all("could not be woken" in r.message for r in results if isinstance(r, openai.APIStatusError))
    assert not any("exited" in r.message for r in results if isinstance(r, openai.APIStatusError))
    failures = (await admin(pub_gw, "/admin/failovers"))["failovers"]
    assert "wake command exited 1" in failures[0]["attempts"][0]["error"]  # the operator's view
    snapshot = (await admin(pub_gw, "/admin/publishers"))["publishers"][0]
    assert [lane["state"] for lane in snapshot["lanes"]] == ["hibernating"]


async def test_a_flood_of_bogus_results_harms_nothing(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    await publisher.register()
    await publisher.connect()
    request = asyncio.create_task(client(pub_gw).chat.completions.create(model=MODEL, messages=CHAT))
    task = await publisher.task()
    statuses = await asyncio.gather(
        *[publisher.result(f"t_bogus{i}", {"status": 200, "body": completion(MODEL)}) for i in range(100)],
        *[publisher.chunks(f"t_bogus{i}", 0, [chunk(MODEL, "x")]) for i in range(100)],
        *[publisher.result(task["task_id"], {"status": 201}) for _ in range(20)],  # malformed
        publisher.chunks(task["task_id"], 0, [chunk(MODEL, "x")]),  # not a stream
    )
    codes = [s for s, _ in statuses]
    assert codes.count(404) == 200
    assert codes.count(400) == 20
    assert codes[-1] == 409
    assert not request.done()
    assert (await publisher.result(task["task_id"], {"status": 200, "body": completion(MODEL, "real")}))[
        0
    ] == 200
    assert (await publisher.result(task["task_id"], {"status": 200, "body": completion(MODEL)}))[
        0
    ] == 404  # twice
    assert (await request).choices[0].message.content == "real"


async def test_heartbeat_answers_and_unknown_sessions(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    await publisher.register()
    status, body = await publisher.heartbeat()
    assert status == 200
    assert body["control"] is False
    status, body = await publisher.call("POST", "/v1/publishers/sessions/ps_unknown123/heartbeat", {})
    assert status == 404
    assert "register again" in body["error"]["message"]
    await publisher.connect()
    status, body = await publisher.heartbeat("hibernating")
    assert (status, body["control"]) == (200, True)
    assert await lane_health(pub_gw) == "hibernating"
    status, _ = await publisher.call("DELETE", publisher.base)
    assert status == 200
    assert await lane_health(pub_gw) == "inactive"


async def test_laneway_publishers_shows_the_sessions(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    from tests.cli.test_admin import laneway, ok

    def run(*args: str) -> str:
        return ok(laneway("publishers", *args, "--url", pub_gw.url, "--key", ADMIN))

    assert "no publishers" in await asyncio.to_thread(run)
    await publisher.register(lanes=[{"model": MODEL}, {"model": "alice-embed", "type": "embedding"}])
    await publisher.connect()
    out = await asyncio.to_thread(run, "--lanes")
    header, row = out.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "OWNER", "STATE", "CONTROL"]
    assert row.split()[:4] == ["alice-laptop", "alice", "active", "open"]
    assert "2 active" in row
    assert LANE in out
    await publisher.drop()
    await eventually(lambda: _is(pub_gw, "inactive"), "inactive")
    out = await asyncio.to_thread(run)
    assert "closed" in out
    assert "2 inactive" in out


async def test_a_published_model_by_publisher_slash_model(
    pub_gw: RunningGateway, joiner: ScriptedPublisher
) -> None:
    publisher = joiner
    await publisher.register(lanes=[{"model": "llama3.2:3b"}])  # the declared gpu-1 serves it too
    await publisher.connect()
    worker = asyncio.create_task(answer_tasks(publisher, 1))
    raw = await client(pub_gw).chat.completions.with_raw_response.create(
        model="alice-laptop/llama3.2:3b", messages=CHAT
    )
    assert raw.headers["x-laneway-backend"] == "alice-laptop"
    assert len(await worker) == 1


async def test_two_publishers_of_one_model_share_the_requests(
    pub_gw: RunningGateway, publisher: ScriptedPublisher
) -> None:
    other = ScriptedPublisher(pub_gw.url, TOKEN)
    try:
        await publisher.register(max_concurrency=2)
        await other.register(name="alice-desktop", max_concurrency=2)
        await publisher.connect()
        await other.connect()
        sdk = client(pub_gw)
        waiting = {pub: asyncio.create_task(pub.task()) for pub in (publisher, other)}
        first = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=CHAT))
        # The first request reached one of them and holds a slot of its pool...
        await asyncio.wait(waiting.values(), return_when=asyncio.FIRST_COMPLETED)
        second = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=CHAT))
        # ...so the second goes to the idle one, not behind it.
        tasks = {pub: await task for pub, task in waiting.items()}
        assert {task["lane"] for task in tasks.values()} == {
            "fleet:virtual:alice-desktop:chat:alice-llama%3A1b",
            "fleet:virtual:alice-laptop:chat:alice-llama%3A1b",
        }
        for pub, task in tasks.items():
            await pub.result(task["task_id"], {"status": 200, "body": completion(MODEL)})
        assert len(await asyncio.gather(first, second)) == 2
    finally:
        await other.aclose()
