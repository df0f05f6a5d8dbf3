"""Usage: adapters report the tokens upstreams count (real sims on loopback), the recorder writes
them in batches off the request path (real SQLite and PostgreSQL, and a PostgreSQL that is not
there), and operators read them with ``laneway usage`` and ``GET /admin/usage``."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from sqlalchemy import event, text

from laneway.api.app import GatewayApp
from laneway.clock import ManualClock
from laneway.config import settings_from_data
from laneway.config.schema import BackendConfig
from laneway.gateway import Gateway, GatewayOptions
from laneway.providers.anthropic import AnthropicProvider
from laneway.providers.base import Call, Usage
from laneway.providers.ollama import OllamaProvider
from laneway.providers.openai import OpenAIProvider, usage_of
from laneway.providers.streams import TranslatedStream
from laneway.sim.app import build_sim_app
from laneway.sim.options import SimOptions
from laneway.storage import Database, DatabaseUnavailable, InvalidValue, StorageError
from laneway.storage.db import create_engine
from laneway.storage.usage_writer import UsageRecorder
from laneway.testing import ServerThread
from laneway.usage import UsageRecord, parse_group_by, parse_since
from tests.conftest import CLIENT_KEY, Sim, three_family_config

KEY = "sim-secret"
ADMIN_KEY = "lw-test-admin-key"
START = 1_700_000_000.0
USER = [{"role": "user", "content": "hi there"}]
LANEWAY = [sys.executable, "-m", "laneway"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("LANEWAY_")}


# --- adapters fill Reply.usage ------------------------------------------------------------------


@contextmanager
def sim(**options: Any) -> Iterator[str]:
    with ServerThread(build_sim_app(SimOptions(**options))) as url:
        yield url


@asynccontextmanager
async def adapter(family: str, base_url: str) -> AsyncIterator[Any]:
    classes: dict[str, Any] = {
        "openai": OpenAIProvider,
        "ollama": OllamaProvider,
        "anthropic": AnthropicProvider,
    }
    provider = classes[family](
        f"test-{family}", BackendConfig(provider=family, base_url=base_url, api_key=KEY)
    )
    try:
        yield provider
    finally:
        await provider.aclose()


def chat(model: str, **body: Any) -> Call:
    return Call(model=model, body={"model": model, "messages": USER, **body})


def reported(body: bytes | dict[str, Any]) -> Usage:
    """The usage the client sees in an OpenAI-format body, as a ``Usage``."""
    data = orjson.loads(body) if isinstance(body, bytes) else body
    counts = data["usage"]
    return Usage(counts["prompt_tokens"], counts.get("completion_tokens"))


async def drain(stream: TranslatedStream) -> list[dict[str, Any]]:
    """Every JSON frame of a stream, however its bytes were chunked (the OpenAI pass-through
    forwards the upstream's chunks as they came)."""
    raw = b""
    try:
        async for chunk in stream:
            raw += chunk
    finally:
        await stream.aclose()
    frames = [f.removeprefix(b"data: ") for f in raw.split(b"\n\n") if f.strip()]
    assert frames[-1] == b"[DONE]"
    return [orjson.loads(f) for f in frames[:-1]]


@pytest.mark.anyio
async def test_openai_replies_carry_the_usage_of_the_answer() -> None:
    with sim(family="openai", api_key=KEY) as url:
        async with adapter("openai", url + "/v1") as openai:
            chat_reply = await openai.chat(chat("gpt-4o-mini", max_tokens=20))
            text_reply = await openai.complete(
                Call(model="gpt-4o-mini", body={"model": "gpt-4o-mini", "prompt": "Say hi"})
            )
            embed_reply = await openai.embed(
                Call(model="text-embedding-3-small", body={"model": "text-embedding-3-small", "input": "hi"})
            )
    for reply in (chat_reply, text_reply):
        assert reply.usage == reported(reply.body)
        assert reply.usage.prompt_tokens
        assert reply.usage.completion_tokens
    # Embeddings count their input only: no completion count is reported, so none is invented.
    assert embed_reply.usage == Usage(reported(embed_reply.body).prompt_tokens, None)
    assert embed_reply.usage.prompt_tokens


@pytest.mark.anyio
async def test_openai_stream_usage_is_known_only_when_the_client_asked_for_it() -> None:
    with sim(family="openai", api_key=KEY) as url:
        async with adapter("openai", url + "/v1") as openai:
            asked = await openai.stream_chat(
                chat("gpt-4o-mini", stream=True, stream_options={"include_usage": True})
            )
            assert asked.usage is None  # nothing is known before the end
            frames = await drain(asked)
            silent = await openai.stream_chat(chat("gpt-4o-mini", stream=True))
            await drain(silent)
            text = await openai.stream_complete(
                Call(
                    model="gpt-4o-mini",
                    body={
                        "model": "gpt-4o-mini",
                        "prompt": "Say hi",
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    },
                )
            )
            text_frames = await drain(text)
    assert frames[-1]["choices"] == []
    assert asked.usage == reported(frames[-1])
    assert asked.usage is not None
    assert asked.usage.completion_tokens
    assert silent.usage is None  # passed through untouched: the upstream said nothing
    assert text.usage == reported(text_frames[-1])


def test_openai_usage_counts_are_read_defensively() -> None:
    # A garbled count costs the count, never the answer (which passes through as it came).
    assert usage_of({"usage": {"prompt_tokens": "many", "completion_tokens": 4}}) == Usage(None, 4)
    assert usage_of({"usage": {"prompt_tokens": True}}) is None
    assert usage_of({"choices": []}) is None


@pytest.mark.anyio
async def test_ollama_replies_and_streams_carry_usage() -> None:
    with sim(family="ollama") as url:
        async with adapter("ollama", url) as ollama:
            chat_reply = await ollama.chat(chat("llama3.2:3b", max_tokens=20))
            text_reply = await ollama.complete(
                Call(model="llama3.2:3b", body={"model": "llama3.2:3b", "prompt": "Say hi"})
            )
            embed_reply = await ollama.embed(
                Call(
                    model="nomic-embed-text:latest", body={"model": "nomic-embed-text:latest", "input": "hi"}
                )
            )
            # The client did not ask for usage: the translator still reads it off the done line.
            stream = await ollama.stream_chat(chat("llama3.2:3b", stream=True))
            assert stream.usage is None
            await drain(stream)
            asked = await ollama.stream_chat(
                chat("llama3.2:3b", stream=True, stream_options={"include_usage": True})
            )
            frames = await drain(asked)
            text_stream = await ollama.stream_complete(
                Call(model="llama3.2:3b", body={"model": "llama3.2:3b", "prompt": "Say hi", "stream": True})
            )
            await drain(text_stream)
    for reply in (chat_reply, text_reply):
        assert reply.usage == reported(reply.body)
        assert reply.usage.prompt_tokens
        assert reply.usage.completion_tokens
    assert embed_reply.usage is not None
    assert embed_reply.usage.prompt_tokens == reported(embed_reply.body).prompt_tokens
    assert asked.usage == reported(frames[-1])
    assert stream.usage is not None
    assert stream.usage.completion_tokens
    assert text_stream.usage is not None
    assert text_stream.usage.completion_tokens


@pytest.mark.anyio
async def test_anthropic_replies_and_streams_carry_usage() -> None:
    with sim(family="anthropic", api_key=KEY) as url:
        async with adapter("anthropic", url) as claude:
            reply = await claude.chat(chat("claude-sonnet-4-6", max_tokens=20))
            stream = await claude.stream_chat(chat("claude-sonnet-4-6", stream=True))
            await drain(stream)
            asked = await claude.stream_chat(
                chat("claude-sonnet-4-6", stream=True, stream_options={"include_usage": True})
            )
            frames = await drain(asked)
    assert reply.usage == reported(reply.body)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens
    assert reply.usage.completion_tokens
    assert asked.usage == reported(frames[-1])
    assert stream.usage == asked.usage  # known whether or not the client asked for it


# --- the recorder -------------------------------------------------------------------------------


def rec(i: int, *, at: float = START, caller: str | None = None, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "at": at,
        "caller": caller or f"caller-{i % 3}",
        "requested": "smart",
        "lane": "cloud/openai/oai/chat/gpt-4o-mini",
        "backend": "oai",
        "model": "gpt-4o-mini",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "request_id": f"req-{i}",
        "attempts": 1,
        "streamed": False,
    }
    values.update(fields)
    return UsageRecord(**values)


async def until(condition: Callable[[], bool], tick: Callable[[], None] = lambda: None) -> None:
    """Wait (for at most 10 s of real time) until ``condition()``, calling ``tick`` in between."""
    for _ in range(1000):
        if condition():
            return
        tick()
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class Sink:
    """A writer that keeps what it was given; it can fail, or hang until released."""

    def __init__(self) -> None:
        self.batches: list[list[UsageRecord]] = []
        self.fail_with: list[BaseException] = []
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def __call__(self, batch: Sequence[UsageRecord]) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.batches.append(list(batch))

    @property
    def ids(self) -> list[str]:
        return [r.request_id for b in self.batches for r in b]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
async def sqlite_db(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Database]:
    async with await Database.open(f"sqlite:///{tmp_path}/usage.db", clock=clock) as database:
        yield database


def count_inserts(db: Database) -> list[str]:
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USAGE_RECORDS"):
            seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", before)
    return seen


@pytest.mark.anyio
async def test_recorder_writes_whole_batches_at_once_and_the_rest_on_the_tick(
    sqlite_db: Database, clock: ManualClock
) -> None:
    inserts = count_inserts(sqlite_db)
    recorder = UsageRecorder(sqlite_db.usage.add_many, clock, batch_size=500, flush_interval=1.0)
    for i in range(1200):
        recorder.record(rec(i))
    task = asyncio.create_task(recorder.run())
    try:
        await until(lambda: recorder.statistics().written == 1000)
        assert len(inserts) == 2  # two whole batches, written without waiting for the tick
        assert recorder.statistics().buffered == 200
        await until(lambda: recorder.statistics().written == 1200, tick=lambda: clock.advance(1.0))
    finally:
        await stop(task)
    assert len(inserts) == math.ceil(1200 / 500)
    assert all(s.count("VALUES") == 1 for s in inserts)  # each one multi-row INSERT
    (total,) = await sqlite_db.usage.summary(None, [])
    assert total.requests == 1200
    stats = recorder.statistics()
    assert (stats.buffered, stats.written, stats.dropped, stats.failed_writes) == (0, 1200, 0, 0)
    await recorder.aclose()
    assert repr(recorder) == "<UsageRecorder: 0 buffered, 1200 written, 0 dropped, 0 failed writes>"


@pytest.mark.anyio
async def test_recorder_never_blocks_or_raises_when_postgres_is_not_there(clock: ManualClock) -> None:
    url = "postgresql://postgres@127.0.0.1:1/laneway"
    db = Database(create_engine(url), url=url, clock=clock)
    recorder = UsageRecorder(db.usage.add_many, clock, batch_size=100, flush_interval=1.0)
    task = asyncio.create_task(recorder.run())
    try:
        for i in range(250):
            assert recorder.record(rec(i)) is None  # synchronous: nothing to await, nothing raised
        await until(lambda: recorder.statistics().failed_writes >= 2, tick=lambda: clock.advance(1.0))
        for i in range(250, 260):
            recorder.record(rec(i))  # while writes keep failing
        assert not task.done()  # the loop survives every failure
    finally:
        await stop(task)
    stats = recorder.statistics()
    assert (stats.buffered, stats.written, stats.dropped) == (260, 0, 0)  # kept for the next try
    await recorder.aclose()  # logs what is lost; shutting down never raises
    with pytest.raises(DatabaseUnavailable):  # what the recorder kept to itself
        await db.usage.add_many([rec(0)])
    await db.aclose()


@pytest.mark.anyio
async def test_recorder_drops_the_oldest_beyond_its_bound(clock: ManualClock) -> None:
    sink = Sink()
    recorder = UsageRecorder(sink, clock, batch_size=2, max_buffered=5)
    for i in range(8):
        recorder.record(rec(i))
    assert recorder.statistics().dropped == 3
    assert recorder.statistics().buffered == 5
    await recorder.aclose()
    assert sink.ids == [f"req-{i}" for i in range(3, 8)]
    assert [len(b) for b in sink.batches] == [2, 2, 1]


@pytest.mark.anyio
async def test_a_failed_write_keeps_its_batch_in_order_and_a_refused_one_is_dropped(
    clock: ManualClock,
) -> None:
    sink = Sink()
    sink.fail_with = [DatabaseUnavailable("down"), DatabaseUnavailable("still down")]
    recorder = UsageRecorder(sink, clock, batch_size=3)
    for i in range(5):
        recorder.record(rec(i))
    assert await recorder.flush() is False
    assert await recorder.flush() is False
    assert recorder.statistics().buffered == 5
    assert await recorder.flush() is True
    assert sink.ids == [f"req-{i}" for i in range(5)]  # each once, in order
    stats = recorder.statistics()
    assert (stats.written, stats.failed_writes, stats.dropped) == (5, 2, 0)

    # The database answers but refuses the data: retried a few times, then given up, counted.
    sink.fail_with = [StorageError("value too long")] * 3
    recorder.record(rec(5))
    for _ in range(3):
        assert await recorder.flush() is False
    assert recorder.statistics().dropped == 1
    assert recorder.statistics().buffered == 0
    recorder.record(rec(6))
    await recorder.aclose()
    assert sink.ids[-1] == "req-6"


@pytest.mark.anyio
async def test_cancelling_the_writer_mid_write_loses_and_duplicates_nothing(clock: ManualClock) -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    recorder = UsageRecorder(sink, clock, batch_size=2)
    for i in range(5):
        recorder.record(rec(i))
    task = asyncio.create_task(recorder.run())
    await until(lambda: sink.calls == 1)  # the first batch is being written, and hangs
    for i in range(5, 7):
        recorder.record(rec(i))  # the request path goes on meanwhile
    await stop(task)  # leaves at once, though its write is still running
    assert recorder.statistics().buffered == 7  # the batch in flight is still counted
    sink.gate.set()
    await recorder.aclose()  # waits for that write, then writes the rest
    assert sorted(sink.ids, key=lambda r: int(r.split("-")[1])) == [f"req-{i}" for i in range(7)]
    assert len(sink.ids) == 7
    assert recorder.statistics().buffered == 0


@pytest.mark.anyio
async def test_aclose_flushes_what_is_left(sqlite_db: Database, clock: ManualClock) -> None:
    recorder = UsageRecorder(sqlite_db.usage.add_many, clock)
    for i in range(7):
        recorder.record(rec(i))
    await recorder.aclose()
    assert len(await sqlite_db.usage.recent(100)) == 7


# --- the repository, on SQLite and PostgreSQL ---------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/laneway.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db(db_url: str, clock: ManualClock) -> AsyncIterator[Database]:
    database = await Database.open(db_url, clock=clock)
    async with database.engine.begin() as conn:
        await conn.execute(text("DELETE FROM usage_records"))  # the PostgreSQL database is shared
    try:
        yield database
    finally:
        await database.aclose()


@pytest.mark.anyio
async def test_summary_groups_sums_and_filters_by_time(db: Database) -> None:
    await db.usage.add_many(
        [
            rec(0, caller="ci", at=START - 7200),  # two hours before: outside "since 1h"
            rec(1, caller="ci", prompt_tokens=100, completion_tokens=50),
            rec(2, caller="ci", prompt_tokens=1, completion_tokens=2, lane="local/ollama/gpu-1/chat/llama3"),
            rec(3, caller="bob", prompt_tokens=None, completion_tokens=None, streamed=True),
            rec(4, caller="bob", prompt_tokens=7, completion_tokens=None),
            rec(5, caller="eve", model="claude", backend="claude", at=START + 60),
        ]
    )
    by_caller = await db.usage.summary(None, ["caller"])
    assert [t.as_dict() for t in by_caller] == [
        {"caller": "ci", "requests": 3, "prompt_tokens": 111, "completion_tokens": 57, "unreported": 0},
        {"caller": "bob", "requests": 2, "prompt_tokens": 7, "completion_tokens": None, "unreported": 1},
        {"caller": "eve", "requests": 1, "prompt_tokens": 10, "completion_tokens": 5, "unreported": 0},
    ]
    since = datetime.fromtimestamp(parse_since("1h", START), UTC)
    recent = await db.usage.summary(since, ["caller", "lane"])
    assert [(dict(t.group), t.requests) for t in recent] == [
        ({"caller": "bob", "lane": "cloud/openai/oai/chat/gpt-4o-mini"}, 2),
        ({"caller": "ci", "lane": "cloud/openai/oai/chat/gpt-4o-mini"}, 1),
        ({"caller": "ci", "lane": "local/ollama/gpu-1/chat/llama3"}, 1),
        ({"caller": "eve", "lane": "cloud/openai/oai/chat/gpt-4o-mini"}, 1),
    ]
    (total,) = await db.usage.summary(since, [])
    assert (total.requests, total.prompt_tokens, total.completion_tokens) == (5, 118, 57)
    assert await db.usage.summary(datetime.fromtimestamp(START + 3600, UTC), []) == []
    with pytest.raises(InvalidValue, match="colour"):
        await db.usage.summary(None, ["colour"])


@pytest.mark.anyio
async def test_summary_groups_and_filters_by_the_replica_that_served(db: Database) -> None:
    await db.usage.add_many(
        [rec(1, replica="r1"), rec(2, replica="r1"), rec(3, replica="r2"), rec(4)]  # rec(4): unknown
    )
    by_replica = await db.usage.summary(None, ["replica"])
    assert [(dict(t.group), t.requests) for t in by_replica] == [
        ({"replica": "r1"}, 2),
        ({"replica": ""}, 1),
        ({"replica": "r2"}, 1),
    ]
    (only,) = await db.usage.summary(None, [], replica="r1")
    assert only.requests == 2
    assert await db.usage.summary(None, [], replica="r9") == []
    assert (await db.usage.recent(4))[-1].replica == "r1"


@pytest.mark.anyio
async def test_records_round_trip_and_garbled_fields_cannot_poison_a_batch(db: Database) -> None:
    await db.usage.add_many([rec(1, streamed=True, attempts=3), rec(2, at=START + 1)])
    newest, older = await db.usage.recent(2)
    assert newest == rec(2, at=START + 1)
    assert older == rec(1, streamed=True, attempts=3)
    # A 10 kB model name from a client and an absurd count from an upstream: stored, clipped.
    await db.usage.add_many(
        [rec(3, at=START + 2, requested="x" * 10_000, prompt_tokens=2**40, completion_tokens=-1)]
    )
    (odd,) = await db.usage.recent(1)
    assert odd.requested == "x" * 255
    assert (odd.prompt_tokens, odd.completion_tokens) == (None, None)
    assert await db.usage.add_many([]) == 0


def test_since_and_group_by_as_people_type_them() -> None:
    now = START
    assert parse_since("3600", now) == now - 3600
    assert parse_since("1h30m", now) == now - 5400
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2023-11-14T22:13:20", now) == START  # naive means UTC
    assert parse_since("2023-11-14T23:13:20+01:00", now) == START
    assert parse_since("2023-11-14T22:13:20Z", now) == START
    assert parse_since("1e12", now) == 0.0  # before 1970 reads as "everything"
    for bad in ("yesterday", "-5", "1h-", "nan", "inf", ""):
        with pytest.raises(ValueError, match="not a"):
            parse_since(bad, now)
    assert parse_group_by("caller, lane,caller") == ["caller", "lane"]
    assert parse_group_by("") == []
    with pytest.raises(ValueError, match="'colour'"):
        parse_group_by("caller,colour")


# --- laneway usage ------------------------------------------------------------------------------


def laneway(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*LANEWAY, *args], capture_output=True, text=True, timeout=60, check=False, env=ENV)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def fill(url: str, records: list[UsageRecord]) -> None:
    async def write() -> None:
        async with await Database.open(url) as database:
            await database.usage.add_many(records)

    asyncio.run(write())


def test_cli_usage_reads_the_database_directly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/laneway.db"
    now = datetime.now(UTC).timestamp()
    fill(
        url,
        [
            rec(1, caller="ci", at=now - 60),
            rec(2, caller="ci", at=now - 30, prompt_tokens=None, completion_tokens=None),
            rec(3, caller="bob", at=now - 10, lane="local/ollama/gpu-1/chat/llama3"),
            rec(4, caller="old", at=now - 86400 * 3),
        ],
    )
    done = laneway("usage", "--database-url", url, "--since", "1h", "--by", "caller,lane")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.strip().splitlines()
    assert header.split()[:3] == ["CALLER", "LANE", "REQUESTS"]
    assert [r.split() for r in rows] == [
        ["ci", "cloud/openai/oai/chat/gpt-4o-mini", "2", "10", "5", "1"],
        ["bob", "local/ollama/gpu-1/chat/llama3", "1", "10", "5", "0"],
    ]

    config = tmp_path / "laneway.yaml"
    config.write_text(yaml.safe_dump({"storage": {"database_url": url}}))
    done = laneway("usage", "-c", str(config), "--by", "", "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["group_by"] == []
    assert body["since"] is None
    assert body["rows"] == [{"requests": 4, "prompt_tokens": 30, "completion_tokens": 15, "unreported": 1}]

    done = laneway("usage", "--database-url", url, "--since", "2099-01-01")
    assert done.returncode == 0
    assert done.stdout.startswith("no usage recorded since 2099-01-01 00:00:00Z")


def test_cli_usage_says_what_is_wrong_with_its_options(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/laneway.db"
    done = laneway("usage", "--database-url", url, "--since", "yesterday")
    assert done.returncode == 2
    assert "Invalid value for '--since': 'yesterday' is not a time" in done.stderr
    assert "1h30m" in done.stderr  # and what would be
    done = laneway("usage", "--database-url", url, "--by", "caller,colour")
    assert done.returncode == 2
    assert "cannot group usage by 'colour'" in done.stderr
    done = laneway("usage", "--database-url", "postgresql://postgres:hunter2@127.0.0.1:1/laneway")
    assert done.returncode == 1
    assert "cannot use the database at postgresql://postgres:***@127.0.0.1:1/laneway" in done.stderr
    assert "hunter2" not in done.stderr


# --- GET /admin/usage ---------------------------------------------------------------------------


@pytest.fixture
def usage_gateway(three_sims: dict[str, Sim], tmp_path: Path) -> Iterator[str]:
    """A real gateway in front of the three sims, its database filled with usage beforehand."""
    url = f"sqlite:///{tmp_path}/gw/laneway.db"
    fill(
        url,
        [
            rec(1, caller="ci", at=START),
            rec(2, caller="ci", at=START + 10, lane="local/ollama/gpu-1/chat/llama3"),
            rec(3, caller="bob", at=START + 20, prompt_tokens=None, completion_tokens=None),
        ],
    )
    config = three_family_config(three_sims, tmp_path / "gw")
    config["storage"]["database_url"] = url
    config["auth"] = {
        "keys": [{"name": "tests", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN_KEY, "admin": True}]
    }
    settings = settings_from_data(config, source="test-config.yaml")
    options = GatewayOptions(schedule=False, key_reload_interval=3600)
    with ServerThread(GatewayApp(lambda: Gateway.open(settings, options=options))) as base:
        yield base


async def get(base: str, path: str, key: str = ADMIN_KEY) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + path, headers={"authorization": f"Bearer {key}"}) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.anyio
async def test_admin_usage_through_a_running_gateway(usage_gateway: str) -> None:
    status, body = await get(usage_gateway, "/admin/usage")
    assert status == 200, body
    assert body["group_by"] == ["caller"]
    assert body["since"] is None
    assert body["now"] > START
    assert body["rows"] == [
        {"caller": "ci", "requests": 2, "prompt_tokens": 20, "completion_tokens": 10, "unreported": 0},
        {"caller": "bob", "requests": 1, "prompt_tokens": None, "completion_tokens": None, "unreported": 1},
    ]

    since = datetime.fromtimestamp(START + 5, UTC).isoformat()
    status, body = await get(
        usage_gateway, f"/admin/usage?since={since.replace('+', '%2B')}&group_by=caller,lane"
    )
    assert status == 200, body
    assert body["since"] == START + 5
    assert [(r["caller"], r["lane"], r["requests"]) for r in body["rows"]] == [
        ("bob", "cloud/openai/oai/chat/gpt-4o-mini", 1),
        ("ci", "local/ollama/gpu-1/chat/llama3", 1),
    ]
    status, body = await get(usage_gateway, "/admin/usage?since=60&group_by=")
    assert status == 200
    assert body["group_by"] == []
    assert body["rows"] == []  # the records are from 2023; nothing in the last minute


@pytest.mark.anyio
async def test_admin_usage_refuses_bad_parameters_and_non_admin_keys(usage_gateway: str) -> None:
    status, body = await get(usage_gateway, "/admin/usage?since=yesterday")
    assert status == 400
    assert body["error"]["param"] == "since"
    assert "yesterday" in body["error"]["message"]
    status, body = await get(usage_gateway, "/admin/usage?group_by=caller,colour")
    assert status == 400
    assert body["error"]["param"] == "group_by"
    status, body = await get(usage_gateway, "/admin/usage?colour=blue")
    assert status == 400
    assert body["error"]["param"] == "colour"
    status, body = await get(usage_gateway, "/admin/usage", key=CLIENT_KEY)
    assert status == 403
    assert "admin" in body["error"]["message"]


# --- which records: the gateway's or its database, never a new empty one --------------------------


def test_cli_usage_asks_a_running_gateway_with_url_and_key(usage_gateway: str) -> None:
    done = laneway("usage", "--url", usage_gateway, "--key", ADMIN_KEY)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.strip().splitlines()
    assert header.split()[:2] == ["CALLER", "REQUESTS"]
    assert [r.split() for r in rows] == [["ci", "2", "20", "10", "0"], ["bob", "1", "-", "-", "1"]]

    done = laneway(
        "usage", "--url", usage_gateway, "--key", ADMIN_KEY, "--by", "lane", "--json", "--since", "7d"
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["group_by"] == ["lane"]
    assert body["rows"] == []  # the records are from 2023

    done = laneway("usage", "--url", usage_gateway, "--key", CLIENT_KEY)
    assert done.returncode == 1
    assert "admin" in done.stderr
    assert "--key" in done.stderr


def test_cli_usage_without_a_gateway_or_database_says_what_to_pass_and_creates_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "xdg"
    env = {**ENV, "XDG_DATA_HOME": str(home), "HOME": str(tmp_path)}

    def usage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LANEWAY, "usage", *args], capture_output=True, text=True, timeout=60, check=False, env=env
        )

    done = usage()
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "Error: laneway usage needs the gateway or its database: pass --url URL --key ADMIN_KEY (or set "
        "LANEWAY_URL) to ask a running gateway, or -c FILE (the server's config) or --database-url URL "
        "to read its database"
    )

    config = tmp_path / "not-the-servers.yaml"
    config.write_text(yaml.safe_dump({"backends": {}}))  # no data_dir: the database would be a new one
    done = usage("-c", str(config))
    assert done.returncode == 1
    assert "Error: there is no database at " in done.stderr
    assert f"(the config {config})" in done.stderr

    missing = tmp_path / "typo" / "laneway.db"
    done = usage("--database-url", f"sqlite:///{missing}")
    assert done.returncode == 1
    assert f"there is no database at {missing} (--database-url)" in done.stderr
    assert not home.exists()
    assert not missing.parent.exists()
