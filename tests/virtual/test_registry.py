"""The fleet's state machine on a manual clock: the sticky register rules, heartbeats, the 90 s
timeout, the 4 h deletion, wake dedup and re-dispatch, with no HTTP in between (the endpoints
are tested in test_publisher_api.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from laneway.auth.tokens import PublisherGrant
from laneway.clock import ManualClock
from laneway.config import settings_from_data
from laneway.errors import InvalidRequest, PermissionDenied, UpstreamTimeout
from laneway.inventory.lanes import Health, Lane
from laneway.inventory.store import Inventory
from laneway.providers.base import Call
from laneway.publishing.protocol import Chunks, Heartbeat, HeartbeatAnswer, Register, Registered, Result, read
from laneway.sse import parse
from laneway.virtual import Fleet
from laneway.virtual.errors import Conflict, PublisherUnavailable, UnknownSession, UnknownTask, WakeFailed
from laneway.virtual.registry import State
from laneway.virtual.relay import ControlChannel

pytestmark = pytest.mark.anyio

ALICE = PublisherGrant("alice", ("alice-*",), ("*",))
BOB = PublisherGrant("bob", ("*",), ("*",))
LANE = "fleet:virtual:alice-laptop:chat:llama3.2%3A3b"


def make_fleet(declared: tuple[str, ...] = (), **publishers: Any) -> tuple[Fleet, Inventory, ManualClock]:
    settings = settings_from_data({"publishers": publishers}, source="test.yaml")
    inventory, clock = Inventory(), ManualClock()
    return Fleet(inventory, clock, settings, declared=lambda: declared), inventory, clock


async def register(fleet: Fleet, grant: PublisherGrant = ALICE, **body: Any) -> Registered:
    """A register as the endpoint takes it: the body read as the protocol's message, then served."""
    body.setdefault("name", "alice-laptop")
    body.setdefault("lanes", [{"model": "llama3.2:3b", "type": "chat"}])
    return await fleet.sessions.register(grant, read(Register, body))


async def heartbeat(
    fleet: Fleet, sid: str, body: dict[str, Any], grant: PublisherGrant = ALICE
) -> HeartbeatAnswer:
    return await fleet.sessions.heartbeat(grant, sid, read(Heartbeat, body))


async def result(fleet: Fleet, sid: str, task_id: str, body: dict[str, Any]) -> None:
    await fleet.sessions.result(ALICE, sid, task_id, read(Result, body))


async def chunks(fleet: Fleet, sid: str, task_id: str, body: dict[str, Any]) -> int:
    return await fleet.sessions.chunks(ALICE, sid, task_id, read(Chunks, body))


def events(channel: ControlChannel) -> list[tuple[str, str]]:
    out = []
    while not channel.events.empty():
        frame = channel.events.get_nowait()
        if frame is not None:
            out += [(event.event, event.data.decode()) for event in parse(frame)]
    return out


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- register -------------------------------------------------------------------------------------


async def test_register_creates_fleet_lanes_and_a_session() -> None:
    fleet, inventory, _ = make_fleet()
    answer = await register(fleet, max_concurrency=3)
    assert answer.session_id.startswith("ps_")
    assert [lane.id for lane in answer.lanes] == [LANE]
    lane = inventory.get(LANE)
    assert lane is not None
    # Not routable until its control stream opens: no task could reach it before.
    assert (lane.tier, lane.family, lane.backend, lane.health) == (
        "fleet",
        "virtual",
        "alice-laptop",
        "inactive",
    )
    assert not lane.routable
    await fleet.sessions.open_control(ALICE, answer.session_id)
    assert inventory.get(LANE).health == Health.HEALTHY  # type: ignore[union-attr]
    assert inventory.get(LANE).routable  # type: ignore[union-attr]
    config = fleet.config("alice-laptop")
    assert config is not None
    assert (config.provider, config.pool_slots, config.stream_holds_slot) == ("virtual", 3, True)


async def test_hello_is_the_register_answer_with_the_protocol_version() -> None:
    fleet, _, _ = make_fleet()
    answer = await register(fleet)
    channel = await fleet.sessions.open_control(ALICE, answer.session_id)
    ((name, data),) = events(channel)
    hello = orjson.loads(data)
    assert (name, hello["session_id"], hello["protocol"]) == ("hello", answer.session_id, 1)
    assert hello["lanes"] == [{"id": LANE, "model": "llama3.2:3b", "type": "chat", "state": "active"}]
    assert answer.protocol == 1


async def test_same_session_reactivates_its_rows_in_place() -> None:
    fleet, inventory, _ = make_fleet()
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    fleet.sessions.close_control(channel)
    assert inventory.get(LANE).health == Health.INACTIVE  # type: ignore[union-attr]
    again = await register(fleet, session_id=sid)
    assert again.session_id == sid
    assert inventory.get(LANE).health == Health.INACTIVE  # type: ignore[union-attr]  # until it connects
    await fleet.sessions.open_control(ALICE, sid)
    assert inventory.get(LANE).health == Health.HEALTHY  # type: ignore[union-attr]
    assert len(fleet.registry.sessions) == 1


async def test_another_sessions_active_lane_is_never_overwritten() -> None:
    fleet, _inventory, _ = make_fleet()
    first = (await register(fleet)).session_id
    with pytest.raises(Conflict, match="another session that is still active"):
        await register(fleet)  # a second process, no session id
    assert fleet.registry.owner_of(LANE).id == first  # type: ignore[union-attr]


async def test_an_inactive_lane_of_another_session_is_adopted() -> None:
    fleet, inventory, clock = make_fleet()
    first = (await register(fleet, lanes=[{"model": "llama3.2:3b"}, {"model": "qwen2.5:7b"}])).session_id
    clock.advance(91)
    await fleet.sweep()
    assert inventory.get(LANE).health == Health.INACTIVE  # type: ignore[union-attr]
    second = (await register(fleet)).session_id  # lost its state file: a new session, adopts llama
    assert second != first
    assert fleet.registry.owner_of(LANE).id == second  # type: ignore[union-attr]
    await fleet.sessions.open_control(ALICE, second)
    assert inventory.get(LANE).health == Health.HEALTHY  # type: ignore[union-attr]
    qwen = LANE.replace("llama3.2%3A3b", "qwen2.5%3A7b")
    assert fleet.registry.owner_of(qwen).id == first  # type: ignore[union-attr]  # not listed: left as it was
    assert inventory.get(qwen).health == Health.INACTIVE  # type: ignore[union-attr]


async def test_a_declared_backend_is_never_shadowed() -> None:
    fleet, inventory, _ = make_fleet(declared=("alice-laptop",))
    with pytest.raises(Conflict, match="declared backend"):
        await register(fleet)
    assert len(inventory) == 0
    assert fleet.registry.sessions == {}


async def test_scope_of_the_token_is_enforced_all_or_nothing() -> None:
    fleet, inventory, _ = make_fleet()
    narrow = PublisherGrant("carol", ("carol-*",), ("llama*",))
    with pytest.raises(PermissionDenied, match="may not publish as 'alice-laptop'"):
        await register(fleet, narrow)
    with pytest.raises(PermissionDenied, match=r"may not publish the model 'qwen2\.5:7b'"):
        await register(fleet, narrow, name="carol-box", lanes=[{"model": "llama3"}, {"model": "qwen2.5:7b"}])
    assert len(inventory) == 0


async def test_a_session_of_another_token_is_refused() -> None:
    fleet, _, _ = make_fleet()
    sid = (await register(fleet)).session_id
    with pytest.raises(PermissionDenied):
        await register(fleet, BOB, session_id=sid)
    with pytest.raises(PermissionDenied):
        await heartbeat(fleet, sid, {}, BOB)
    with pytest.raises(Conflict, match="publishes as 'alice-laptop'"):
        await register(fleet, session_id=sid, name="alice-desktop")


async def test_reregister_drops_lanes_no_longer_listed() -> None:
    fleet, inventory, _ = make_fleet()
    sid = (await register(fleet, lanes=[{"model": "llama3.2:3b"}, {"model": "qwen2.5:7b"}])).session_id
    assert len(inventory) == 2
    await register(fleet, session_id=sid)
    assert [lane.model for lane in inventory.lanes()] == ["llama3.2:3b"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": ""}, "name"),
        ({"lanes": "llama"}, "lanes"),
        ({"lanes": []}, "lanes"),
        ({"lanes": [{"model": "m", "type": "image"}]}, "lanes"),
        ({"lanes": [{"model": "m", "context_length": -1}]}, "lanes"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"state": "asleep"}, "state"),
        ({"session_id": "x y"}, "session_id"),
    ],
)
async def test_malformed_registrations_name_the_field(body: dict[str, Any], param: str) -> None:
    fleet, inventory, _ = make_fleet()
    with pytest.raises(InvalidRequest) as err:
        await register(fleet, **body)
    assert err.value.param == param
    assert len(inventory) == 0


# -- lifecycle ------------------------------------------------------------------------------------


async def test_heartbeat_timeout_then_four_hour_deletion_idempotent() -> None:
    fleet, inventory, clock = make_fleet()
    sid = (await register(fleet)).session_id
    await fleet.sessions.open_control(ALICE, sid)
    clock.advance(60)
    await heartbeat(fleet, sid, {})
    clock.advance(89)
    await fleet.sweep()
    assert inventory.get(LANE).health == Health.HEALTHY  # type: ignore[union-attr]  # 89 s since the heartbeat
    clock.advance(1)
    await fleet.sweep()
    assert inventory.get(LANE).health == Health.INACTIVE  # type: ignore[union-attr]
    await fleet.sweep()  # idempotent
    assert inventory.get(LANE).health == Health.INACTIVE  # type: ignore[union-attr]
    clock.advance(4 * 3600 - 1)
    await fleet.sweep()
    assert inventory.get(LANE) is not None
    clock.advance(1)
    await fleet.sweep()
    assert inventory.get(LANE) is None
    assert fleet.registry.rows == {}
    assert "alice-laptop" not in fleet.providers
    await fleet.sweep()  # idempotent
    assert len(inventory) == 0
    with pytest.raises(UnknownSession):
        await heartbeat(fleet, sid, {})


async def test_heartbeat_revives_only_with_the_control_stream_open() -> None:
    fleet, inventory, clock = make_fleet()
    sid = (await register(fleet)).session_id
    clock.advance(100)
    await fleet.sweep()
    assert (await heartbeat(fleet, sid, {})).control is False
    assert inventory.get(LANE).health == Health.INACTIVE  # type: ignore[union-attr]  # no way to reach it
    channel = await fleet.sessions.open_control(ALICE, sid)
    assert inventory.get(LANE).health == Health.HEALTHY  # type: ignore[union-attr]
    assert (await heartbeat(fleet, sid, {"state": "hibernating"})).control is True
    assert inventory.get(LANE).health == Health.HIBERNATING  # type: ignore[union-attr]
    clock.advance(100)
    await fleet.sweep()
    assert inventory.get(LANE).health == Health.INACTIVE  # type: ignore[union-attr]
    # Silent too long with its stream open: the stream is closed too, so a live publisher reconnects.
    assert channel.closed
    assert (await heartbeat(fleet, sid, {})).control is False
    await fleet.sessions.open_control(ALICE, sid)
    assert inventory.get(LANE).health == Health.HEALTHY  # type: ignore[union-attr]


async def test_disconnect_is_inactive_at_once_and_a_replaced_stream_is_not() -> None:
    fleet, inventory, _ = make_fleet()
    sid = (await register(fleet)).session_id
    first = await fleet.sessions.open_control(ALICE, sid)
    second = await fleet.sessions.open_control(ALICE, sid)  # it reconnected before the old stream noticed
    assert first.closed
    fleet.sessions.close_control(first)
    assert inventory.get(LANE).health == Health.HEALTHY  # type: ignore[union-attr]
    fleet.sessions.close_control(second)
    assert inventory.get(LANE).health == Health.INACTIVE  # type: ignore[union-attr]


async def test_a_declared_backend_appearing_later_takes_the_name() -> None:
    declared: list[str] = []
    settings = settings_from_data({}, source="test.yaml")
    inventory, clock = Inventory(), ManualClock()
    fleet = Fleet(inventory, clock, settings, declared=lambda: declared)
    await register(fleet)
    declared.append("alice-laptop")
    await fleet.sweep()
    assert len(inventory) == 0
    assert "alice-laptop" not in fleet.providers


# -- relaying -------------------------------------------------------------------------------------


def chat_call(model: str = "llama3.2:3b", timeout: float = 60) -> Call:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return Call(model=model, body=body, timeout=timeout)


async def test_a_call_is_a_task_and_its_result_the_reply() -> None:
    fleet, _, _ = make_fleet()
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    (hello, _), (kind, data) = events(channel)
    assert (hello, kind) == ("hello", "task")
    task = orjson.loads(data)
    assert (task["lane"], task["operation"], task["stream"]) == (LANE, "chat", False)
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    await result(fleet, sid, task["task_id"], {"status": 200, "body": body})
    reply = await call
    assert orjson.loads(reply.body) == body
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 4
    with pytest.raises(UnknownTask):  # posted twice: the task is gone
        await result(fleet, sid, task["task_id"], {"status": 200, "body": body})


async def test_a_task_in_flight_goes_back_to_pending_and_is_resent_on_reconnect() -> None:
    fleet, _, _ = make_fleet()
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    first = orjson.loads(events(channel)[-1][1])["task_id"]
    fleet.sessions.close_control(channel)  # the publisher dropped mid-task
    assert fleet.pending() == 1
    with pytest.raises(UnknownTask):  # its result, late, for the old id: refused
        await result(fleet, sid, first, {"status": 200, "body": {}})
    channel = await fleet.sessions.open_control(ALICE, sid)
    resent = orjson.loads(events(channel)[-1][1])
    assert resent["task_id"] != first
    await result(fleet, sid, resent["task_id"], {"status": 200, "body": {"ok": 1}})
    assert orjson.loads((await call).body) == {"ok": 1}
    assert fleet.pending() == 0


async def test_a_parked_task_gives_up_after_the_redispatch_wait() -> None:
    fleet, _, clock = make_fleet(redispatch_wait=30)
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    fleet.sessions.close_control(channel)
    await settle()  # the give-up timer is sleeping on the clock
    clock.advance(30)
    with pytest.raises(PublisherUnavailable, match="did not come back within 30s"):
        await call
    assert fleet.pending() == 0


async def test_a_parked_task_sent_when_its_publisher_returns_no_longer_gives_up() -> None:
    fleet, _, clock = make_fleet(redispatch_wait=30)
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call(timeout=600)))
    await settle()
    fleet.sessions.close_control(channel)
    await settle()
    clock.advance(20)
    channel = await fleet.sessions.open_control(ALICE, sid)  # back within the wait: sent again
    resent = orjson.loads(events(channel)[-1][1])
    assert fleet.pending() == 0
    clock.advance(20)  # past the wait since it was parked: its timer stopped when it was sent
    await settle()
    assert not call.done()
    await result(fleet, sid, resent["task_id"], {"status": 200, "body": {"ok": 1}})
    assert orjson.loads((await call).body) == {"ok": 1}


def parked_timers() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("parked-") and not t.done()]


async def test_a_caller_who_leaves_while_parked_leaves_nothing_behind() -> None:
    fleet, _, _ = make_fleet()
    await register(fleet)  # no control stream yet: its task waits for one
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    assert (fleet.pending(), fleet.in_flight(), len(parked_timers())) == (1, 1, 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await settle()
    assert (fleet.pending(), fleet.in_flight(), parked_timers()) == (0, 0, [])


async def test_closing_the_fleet_stops_the_parked_tasks_timers() -> None:
    fleet, _, _ = make_fleet()
    await register(fleet)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    assert len(parked_timers()) == 1
    await fleet.aclose()
    assert parked_timers() == []
    call.cancel()


async def test_a_dropped_task_fails_over_at_once_when_another_lane_serves_the_model() -> None:
    fleet, inventory, _ = make_fleet()
    inventory.write_lanes([Lane("local", "ollama", "gpu-1", "chat", "llama3.2:3b")])
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    fleet.sessions.close_control(channel)
    with pytest.raises(PublisherUnavailable, match="another lane serves"):
        await call
    assert fleet.pending() == 0


async def test_a_call_times_out_on_the_injected_clock_and_cancels_its_task() -> None:
    fleet, _, clock = make_fleet()
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call(timeout=20)))
    await settle()
    clock.advance(20)
    with pytest.raises(UpstreamTimeout):
        await call
    assert [name for name, _ in events(channel)] == ["hello", "task", "cancel"]


async def test_ten_concurrent_calls_share_one_wake() -> None:
    fleet, inventory, _ = make_fleet()
    sid = (await register(fleet, state="hibernating", max_concurrency=10)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    assert inventory.get(LANE).health == Health.HIBERNATING  # type: ignore[union-attr]
    calls = [asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call())) for _ in range(10)]
    await settle()
    sent = events(channel)
    wakes = [orjson.loads(d) for name, d in sent if name == "wake"]
    assert len(wakes) == 1
    assert not [name for name, _ in sent if name == "task"]  # nothing runs before it is awake
    await result(fleet, sid, wakes[0]["task_id"], {"status": 200})
    await settle()
    tasks = [orjson.loads(d) for name, d in events(channel) if name == "task"]
    assert len(tasks) == 10
    assert fleet.registry.state_of(LANE) == State.ACTIVE
    for t in tasks:
        await result(fleet, sid, t["task_id"], {"status": 200, "body": {"n": 1}})
    assert len(await asyncio.gather(*calls)) == 10


async def test_a_failed_wake_fails_every_waiter_and_stays_hibernating() -> None:
    fleet, _, _ = make_fleet()
    sid = (await register(fleet, state="hibernating", max_concurrency=10)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    calls = [asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call())) for _ in range(10)]
    await settle()
    (wake,) = [orjson.loads(d) for name, d in events(channel) if name == "wake"]
    await result(fleet, sid, wake["task_id"], {"error": {"status": 500, "message": "GPU on fire"}})
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, WakeFailed) and "GPU on fire" in r.message for r in results)
    assert fleet.registry.state_of(LANE) == State.HIBERNATING
    nxt = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    assert [name for name, _ in events(channel)] == ["wake"]  # the next request tries again
    nxt.cancel()


async def test_bogus_posts_change_nothing() -> None:
    fleet, _, _ = make_fleet()
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    real = orjson.loads(events(channel)[-1][1])["task_id"]
    for i in range(500):
        with pytest.raises(UnknownTask):
            await result(fleet, sid, f"t_bogus{i}", {"status": 200, "body": {}})
        with pytest.raises(UnknownTask):
            await chunks(fleet, sid, f"t_bogus{i}", {"seq": 0, "chunks": []})
    with pytest.raises(Conflict):  # not a streamed call
        await chunks(fleet, sid, real, {"seq": 0, "chunks": [{}]})
    with pytest.raises(InvalidRequest):
        await result(fleet, sid, real, {"status": 200})  # no body for a non-streamed call
    assert not call.done()
    await result(fleet, sid, real, {"status": 200, "body": {"fine": True}})
    assert orjson.loads((await call).body) == {"fine": True}


async def test_a_draining_publisher_takes_no_new_task_and_finishes_its_own() -> None:
    fleet, inventory, _ = make_fleet()
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    task = orjson.loads(events(channel)[-1][1])
    await heartbeat(fleet, sid, {"state": "draining"})
    assert inventory.get(LANE).health == Health.INACTIVE  # type: ignore[union-attr]
    assert fleet.pending() == 0  # its task was not taken back
    await result(fleet, sid, task["task_id"], {"status": 200, "body": {"done": True}})
    assert orjson.loads((await call).body) == {"done": True}
    with pytest.raises(InvalidRequest):  # draining is announced by a heartbeat, not registered
        await register(fleet, session_id=sid, state="draining")


async def test_a_draining_publisher_gone_silent_gives_its_tasks_back() -> None:
    fleet, _, clock = make_fleet()
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call(timeout=600)))
    await settle()
    await heartbeat(fleet, sid, {"state": "draining"})
    clock.advance(90)
    await fleet.sweep()
    assert channel.closed
    assert fleet.pending() == 1  # back to pending, for when it (or its restart) returns
    call.cancel()


def test_publisher_token_config_errors_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from laneway.auth.tokens import PublisherTokens
    from laneway.config.schema import PublisherTokenConfig
    from laneway.errors import ConfigError

    monkeypatch.delenv("LW_TEST_UNSET_TOKEN", raising=False)
    unset = PublisherTokenConfig(name="a", token_env="LW_TEST_UNSET_TOKEN", names=["*"])
    with pytest.raises(ConfigError) as err:
        PublisherTokens([unset], "laneway.yaml")
    assert "publishers.tokens[0].token_env" in err.value.message
    assert "'LW_TEST_UNSET_TOKEN' is not set" in err.value.message
    with pytest.raises(ConfigError) as bad:
        settings_from_data(
            {"publishers": {"tokens": [{"name": "a", "token": "x", "token_env": "Y", "names": ["*"]}]}},
            source="laneway.yaml",
        )
    assert "publishers.tokens" in bad.value.message
    assert "give exactly one of token, token_env, token_hash" in bad.value.message
    with pytest.raises(ConfigError) as short:
        settings_from_data({"publishers": {"heartbeat_timeout": 10}}, source="laneway.yaml")
    assert "key 'publishers.heartbeat_timeout'" in short.value.message
    assert "must be longer than heartbeat_interval (30s)" in short.value.message
    with pytest.raises(ConfigError, match="registered by publishers"):
        settings_from_data(
            {"backends": {"b": {"provider": "virtual", "base_url": "http://x"}}}, source="laneway.yaml"
        )


async def test_a_stream_ends_with_a_chunk_post_that_says_done() -> None:
    fleet, _, _ = make_fleet()
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    body = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    stream = await fleet.providers["alice-laptop"].stream_chat(
        Call(model="llama3.2:3b", body=body, timeout=60)
    )
    task = orjson.loads(events(channel)[-1][1])
    assert task["stream"] is True
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    usage = {
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
    }
    assert await chunks(fleet, sid, task["task_id"], {"seq": 0, "chunks": [chunk]}) == 1
    assert await chunks(fleet, sid, task["task_id"], {"seq": 1, "chunks": [usage], "done": True}) == 1
    frames = [frame async for frame in stream]
    assert frames[-1] == b"data: [DONE]\n\n"
    assert [orjson.loads(f[6:]) for f in frames[:-1]] == [chunk, usage]
    reported = stream.usage  # type: ignore[attr-defined]
    assert reported is not None
    assert reported.completion_tokens == 2
    with pytest.raises(UnknownTask):  # ended: a result after it is refused
        await result(fleet, sid, task["task_id"], {"status": 200})


async def test_a_task_abandoned_where_its_post_went_is_sent_again() -> None:
    """In a cluster, a replica that could not get the answer to a post in time tells the task's
    requester (this one) that the publisher was told the post failed: the task is sent again."""
    fleet, _, _ = make_fleet()
    sid = (await register(fleet)).session_id
    channel = await fleet.sessions.open_control(ALICE, sid)
    call = asyncio.create_task(fleet.providers["alice-laptop"].chat(chat_call()))
    await settle()
    first = orjson.loads(events(channel)[-1][1])["task_id"]
    await fleet.inbox.abandoned({"task": first, "session": "ps_another"})  # not its session: nothing
    assert events(channel) == []
    await fleet.inbox.abandoned({"task": first, "session": sid})
    ((name, data),) = events(channel)
    again = orjson.loads(data)
    assert (name, again["task_id"] != first) == ("task", True)
    await result(fleet, sid, again["task_id"], {"status": 200, "body": {"ok": 1}})
    assert orjson.loads((await call).body) == {"ok": 1}
