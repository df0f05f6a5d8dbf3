"""The events bus on this machine's Redis (a namespace of the test's own): the others get what
one replica publishes, the sender does not, and a bad message or a failing handler does not stop
the loop."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from laneway.clock import SystemClock
from laneway.cluster.bus import NoBus, RedisBus

pytestmark = pytest.mark.anyio
REDIS_URL = os.environ.get("LANEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def test_others_hear_an_event_and_the_sender_does_not() -> None:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    buses = {
        name: RedisBus(REDIS_URL, namespace=namespace, replica=name, clock=SystemClock())
        for name in ("a", "b")
    }
    heard: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    def handler(name: str) -> Any:
        async def handle(payload: dict[str, Any]) -> None:
            if payload.get("boom"):
                raise RuntimeError("a handler that fails")
            heard[name].append(payload)

        return handle

    for name, bus in buses.items():
        bus.on("cooldown.lifted", handler(name))
    loops = [asyncio.create_task(bus.run()) for bus in buses.values()]
    raw = Redis.from_url(REDIS_URL)
    try:
        for _ in range(100):  # both subscribed
            if (await raw.pubsub_numsub(namespace + "events"))[0][1] == 2:
                break
            await asyncio.sleep(0.02)
        await raw.publish(namespace + "events", b"not json")  # ignored
        await buses["a"].publish("cooldown.lifted", {"boom": True})  # b's handler fails: b goes on
        await buses["a"].publish("other.topic", {"x": 1})  # nobody handles it
        await buses["a"].publish("cooldown.lifted", {"backend": "cloud"})
        for _ in range(100):
            if heard["b"]:
                break
            await asyncio.sleep(0.02)
        assert heard == {"a": [], "b": [{"backend": "cloud"}]}
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for bus in buses.values():
            await bus.aclose()
        await raw.aclose()


async def test_alone_there_is_no_one_to_tell() -> None:
    bus = NoBus()
    bus.on("cooldown.lifted", lambda payload: asyncio.sleep(0))
    await bus.publish("cooldown.lifted", {"backend": "x"})  # nothing to reach, nothing raised
    loop = asyncio.create_task(bus.run())
    await asyncio.sleep(0)
    assert not loop.done()  # it waits forever, doing nothing, until the gateway stops it
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    await bus.aclose()


async def test_a_message_for_one_replica_reaches_it_alone_in_order() -> None:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    names = ("a", "b", "c")
    buses = {n: RedisBus(REDIS_URL, namespace=namespace, replica=n, clock=SystemClock()) for n in names}
    heard: dict[str, list[int]] = {n: [] for n in names}
    listening: dict[str, int] = {n: 0 for n in names}

    def handler(name: str) -> Any:
        async def handle(payload: dict[str, Any]) -> None:
            heard[name].append(payload["n"])

        return handle

    def caught_up(name: str) -> Any:
        async def callback() -> None:
            listening[name] += 1

        return callback

    for name, bus in buses.items():
        bus.on("slot.granted", handler(name))
        bus.on_listening(caught_up(name))
    loops = [asyncio.create_task(bus.run()) for bus in buses.values()]
    raw = Redis.from_url(REDIS_URL)
    try:
        for _ in range(100):
            if all(listening.values()):
                break
            await asyncio.sleep(0.02)
        assert listening == {"a": 1, "b": 1, "c": 1}  # each told once that it listens now
        for n in range(20):
            assert await buses["a"].send("b", "slot.granted", {"n": n}) is True
        assert await buses["a"].send("a", "slot.granted", {"n": 99}) is True  # itself: no Redis
        assert await buses["a"].send("gone", "slot.granted", {"n": -1}) is False  # nobody listens
        for _ in range(100):
            if len(heard["b"]) == 20:
                break
            await asyncio.sleep(0.02)
        assert heard == {"a": [99], "b": list(range(20)), "c": []}
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for bus in buses.values():
            await bus.aclose()
        await raw.aclose()
