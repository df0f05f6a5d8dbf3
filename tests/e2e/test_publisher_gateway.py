"""``laneway publish``'s Publisher, in this process, against the real gateway (on loopback) and a
real simulated Ollama: what needs both sides at once: a caller who leaves stops the work at the
sim, and a stopping publisher drains its tasks in flight before it says goodbye."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from laneway.clock import ManualClock
from laneway.publisher.local import LocalBackend, select_lanes
from laneway.publisher.runner import Publisher
from tests.conftest import CLIENT_KEY, RunningGateway, Sim
from tests.virtual.test_publisher_api import ADMIN, TOKEN, admin, eventually, lane_health

pytestmark = pytest.mark.anyio

REPLY = " ".join(f"word{i}" for i in range(12))
LANE = "fleet:virtual:alice-box:chat:slow-llama"
CHAT: Any = [{"role": "user", "content": "hi"}]
NARROW = "lw-pub-carol-slow-only"


@pytest.fixture
def gw(gateway_factory: Any, tmp_path: Path) -> RunningGateway:
    config = {
        "storage": {"data_dir": str(tmp_path / "gw")},
        "auth": {"keys": [{"name": "app", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN, "admin": True}]},
        "publishers": {
            "tokens": [
                {"name": "alice", "token": TOKEN, "names": ["alice-*"]},
                {"name": "carol", "token": NARROW, "names": ["carol-*"], "models": ["slow-*"]},
            ]
        },
    }
    running: RunningGateway = gateway_factory(config)
    return running


@pytest.fixture
def slow(sim_factory: Any) -> Sim:
    """12 words at 20 tokens/s: a stream that lasts long enough to act in its middle."""
    sim: Sim = sim_factory(family="ollama", models=["slow-llama"], reply=REPLY, tokens_per_second=20)
    return sim


@pytest.fixture
async def publisher(gw: RunningGateway, slow: Sim, tmp_path: Path) -> AsyncIterator[Publisher]:
    backend, models = await LocalBackend.connect(slow.url, "ollama")
    pub = Publisher(
        gateway=gw.url,
        token=TOKEN,
        backend=backend,
        lanes=select_lanes(models),
        name="alice-box",
        max_concurrency=4,
        state_file=tmp_path / "state.json",
        drain_timeout=30,
    )
    running = asyncio.create_task(pub.run())
    try:
        await eventually(lambda: _health(gw, "healthy"), "the publisher's lane is routable")
        yield pub
    finally:
        pub.stop()
        pub.stop()  # no draining at teardown
        await asyncio.gather(running, return_exceptions=True)
        await backend.aclose()


async def _health(gw: RunningGateway, wanted: str) -> bool:
    return await lane_health(gw, LANE) == wanted


async def test_a_stopping_publisher_finishes_its_stream_then_goes(
    gw: RunningGateway, slow: Sim, publisher: Publisher
) -> None:
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="slow-llama", messages=CHAT, stream=True)
        text = ""
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not text:
                    publisher.stop()  # mid-stream: Ctrl-C on the publisher's machine
                    await eventually(lambda: _health(gw, "inactive"), "no new task while draining")
                    assert publisher.status.state == "draining"
                text += chunk.choices[0].delta.content
        assert text.split() == REPLY.split()  # the whole answer, no error event
    assert (slow.stats.streams_completed, slow.stats.streams_cancelled) == (1, 0)
    await eventually(lambda: _no_session(gw), "unregistered once drained")


async def test_a_prompt_of_a_megabyte_reaches_the_publisher_whole(
    gw: RunningGateway, slow: Sim, publisher: Publisher
) -> None:
    """A task carries the client's whole request in one control-stream event, one line of JSON:
    a long prompt (here 1.25 MiB, past aiohttp's 512 KiB line limit, which once broke the
    publisher's control stream) arrives whole and is answered."""
    words = 1 << 18
    prompt: Any = [{"role": "user", "content": "long " * words}]
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(model="slow-llama", messages=prompt)
    assert (reply.choices[0].message.content or "").split() == REPLY.split()
    assert reply.usage is not None
    assert reply.usage.prompt_tokens >= words  # the sim counted every word: nothing was cut
    assert publisher.status.last_error is None


async def _no_session(gw: RunningGateway) -> bool:
    sessions = (await admin(gw, "/admin/publishers"))["publishers"]
    return all(not s["control"] for s in sessions)


async def test_a_caller_who_leaves_stops_the_work_at_the_local_backend(
    gw: RunningGateway, slow: Sim, publisher: Publisher
) -> None:
    async with openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="slow-llama", messages=CHAT, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        assert slow.stats.active_streams == 1
        await stream.close()  # the caller leaves mid-answer
    await eventually(_stream_stopped(slow), "the sim's stream ended early: the cancel reached it")
    assert (slow.stats.streams_cancelled, slow.stats.streams_completed) == (1, 0)
    await eventually(lambda: _in_flight(publisher, 0), "the publisher has nothing in flight")


def _stream_stopped(sim: Sim) -> Any:
    async def check() -> bool:
        return bool(sim.stats.active_streams == 0 and sim.stats.streams_started == 1)

    return check


async def _in_flight(publisher: Publisher, n: int) -> bool:
    return publisher.status.in_flight == n


@dataclass
class Rediscovering:
    """A Publisher on a manual clock whose model list is asked for again every 60 s of it."""

    publisher: Publisher
    clock: ManualClock
    gw: RunningGateway
    name: str
    asked: int = 0  # how many times it asked its backend

    async def published(self) -> set[str]:
        lanes = (await admin(self.gw, f"/admin/lanes?backend={self.name}"))["lanes"]
        return {lane["model"] for lane in lanes}

    def moved(self, check: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
        """``check`` after a minute of the publisher's clock. The loop may still be registering
        the last change (not yet asleep) when the clock first moves, so each look moves it again."""

        async def look() -> bool:
            self.clock.advance(60)
            await asyncio.sleep(0.01)
            return await check()

        return look

    def has(self, wanted: set[str]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await self.published() == wanted

        return self.moved(check)


@contextlib.asynccontextmanager
async def rediscovering(gw: RunningGateway, sim: Sim, name: str, token: str) -> AsyncIterator[Rediscovering]:
    backend, models = await LocalBackend.connect(sim.url, "ollama")
    clock = ManualClock()
    state: Rediscovering

    async def discover() -> list[Any]:
        lanes = select_lanes(await backend.provider.list_models())
        state.asked += 1
        return lanes

    pub = Publisher(
        gateway=gw.url,
        token=token,
        backend=backend,
        lanes=select_lanes(models),
        name=name,
        rediscover=discover,
        rediscover_interval=60,
        clock=clock,
    )
    state = Rediscovering(pub, clock, gw, name)
    running = asyncio.create_task(pub.run())
    try:
        await eventually(lambda: _published_now(state), "published")
        yield state
    finally:
        pub.stop()
        pub.stop()
        await asyncio.gather(running, return_exceptions=True)
        await backend.aclose()


async def _published_now(state: Rediscovering) -> bool:
    return bool(await state.published())


async def test_a_model_pulled_or_removed_while_publishing_follows_on_the_gateway(
    gw: RunningGateway, slow: Sim
) -> None:
    async with rediscovering(gw, slow, "alice-box", TOKEN) as pub:
        slow.options.models.append("qwen2.5:7b")  # `ollama pull` on the publisher's machine
        await eventually(pub.has({"slow-llama", "qwen2.5:7b"}), "the new model is a lane")
        slow.options.models.remove("slow-llama")  # `ollama rm`
        await eventually(pub.has({"qwen2.5:7b"}), "the removed model's lanes are gone")
        slow.options.models.clear()  # the backend answers with nothing (restarting): nothing changes
        looked = pub.asked
        await eventually(pub.moved(lambda: _true(pub.asked > looked)), "another look at the backend")
        await asyncio.sleep(0.05)  # what a re-register would have taken, had there been one
        assert await pub.published() == {"qwen2.5:7b"}


async def test_a_new_model_outside_the_tokens_scope_leaves_the_published_set_as_it_was(
    gw: RunningGateway, slow: Sim
) -> None:
    async with rediscovering(gw, slow, "carol-box", NARROW) as pub:
        slow.options.models.append("qwen2.5:7b")

        async def refused() -> bool:
            return "may not publish the model 'qwen2.5:7b'" in (pub.publisher.status.last_error or "")

        await eventually(pub.moved(refused), "the new set refused")
        assert await pub.published() == {"slow-llama"}
        assert pub.publisher.status.connected  # still publishing what it may


async def _true(value: bool) -> bool:
    return value
