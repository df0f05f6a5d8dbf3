"""Runtime stores: one contract for every ``KeyValueStore`` (memory, a local directory, and the real
Redis of this machine), then what only the file and Redis stores promise, and the URL factory.

Redis is never skipped: it runs on this machine and in CI, and a run without it is a failed run.
Each Redis test uses a namespace of its own and deletes its keys at the end."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from laneway.clock import ManualClock
from laneway.storage import (
    FileStore,
    KeyValueStore,
    MemoryStore,
    RedisStore,
    StoreUnavailable,
    open_runtime_store,
)
from laneway.storage.redisstore import escape_glob, redact_redis_url

REDIS_URL = os.environ.get("LANEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
START = 1_700_000_000.0
LONG_TTL = 3600.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=START)


@pytest.fixture
async def redis_namespace() -> AsyncIterator[str]:
    """A namespace no other test uses; its keys are deleted at the end, whatever happened."""
    namespace = f"laneway-test:{uuid.uuid4().hex}:"
    try:
        yield namespace
    finally:
        await delete_redis_namespace(namespace)


async def delete_redis_namespace(namespace: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        names = [name async for name in client.scan_iter(match=escape_glob(namespace) + "*")]
        if names:
            await client.delete(*names)
    finally:
        await client.aclose()


@dataclass
class Subject:
    """A store under test, and how to let its short TTLs run out."""

    kind: str
    store: KeyValueStore
    short_ttl: float
    expire: Callable[[str], Awaitable[None]]  # returns once the short-TTL entry ``key`` is gone


@pytest.fixture(params=["memory", "file", "redis"])
async def subject(
    request: pytest.FixtureRequest, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[Subject]:
    async def advance(key: str) -> None:
        clock.advance(10)  # the deadline itself is already expired

    async def poll(key: str) -> None:
        # Redis keeps time on its server: wait for it, bounded, without asserting how long it took.
        deadline = time.monotonic() + 10
        while await store.get(key) is not None:
            assert time.monotonic() < deadline, f"{key} outlived its TTL by 10 s"
            await asyncio.sleep(0.01)

    namespace = f"laneway-test:{uuid.uuid4().hex}:"
    store: KeyValueStore
    if request.param == "memory":
        store, short, expire = MemoryStore(clock), 10.0, advance
    elif request.param == "file":
        store, short, expire = FileStore(tmp_path / "runtime", clock), 10.0, advance
    else:
        store, short, expire = RedisStore(REDIS_URL, namespace=namespace), 0.05, poll
    try:
        yield Subject(request.param, store, short, expire)
    finally:
        await store.aclose()
        if request.param == "redis":
            await delete_redis_namespace(namespace)


# --- the contract -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_get_set_overwrite_delete(subject: Subject) -> None:
    store = subject.store
    assert await store.get("a") is None
    await store.set("a", b"one")
    assert await store.get("a") == b"one"
    await store.set("a", b"two")  # overwrite
    assert await store.get("a") == b"two"
    for value in (b"", b"\x00\xff\nlaneway-kv 1\n{}", os.urandom(100_000)):
        await store.set("bytes", value)
        assert await store.get("bytes") == value
    assert await store.delete("a") is True
    assert await store.delete("a") is False
    assert await store.get("a") is None
    assert await store.delete("never") is False


KEYS = [
    "a*b",
    "a?c",
    "a[b]c",
    "a\\b",
    "ab",
    "lane:1",
    "lane:1/x",
    "lane:10",
    "lane:2",
    "Model:A",
    "model:a",
    "with space",
    "%41",
    "café:ü/日本",
    ".",
    "..",
    "",
    "long:" + "x" * 300,
    "long:" + "ü" * 100,
]


@pytest.mark.anyio
async def test_scan_matches_prefixes_literally(subject: Subject) -> None:
    store = subject.store
    for i, key in enumerate(KEYS):
        await store.set(key, str(i).encode())
    expected = {key: str(i).encode() for i, key in enumerate(KEYS)}
    assert await store.scan("") == expected
    for key in KEYS:
        assert await store.get(key) == expected[key]

    def under(prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in expected.items() if k.startswith(prefix)}

    for prefix in ("a*", "a?", "a[", "a[b]", "a\\", "a", "lane:1", "lane:1/", "lane:", "Model", "model"):
        assert await store.scan(prefix) == under(prefix), prefix
    for prefix in ("%", "café:", "long:", ".", "*", "?", "[", "lane:3", "zzz"):
        assert await store.scan(prefix) == under(prefix), prefix
    assert list(await store.scan("lane:")) == ["lane:1", "lane:1/x", "lane:10", "lane:2"]  # sorted

    for key in KEYS:
        assert await store.delete(key) is True
    assert await store.scan("") == {}


@pytest.mark.anyio
async def test_ttl_is_honoured_and_a_plain_set_clears_it(subject: Subject) -> None:
    store, short = subject.store, subject.short_ttl
    await store.set("short", b"1", ttl=short)
    await store.set("forever", b"2")
    await store.set("long", b"3", ttl=LONG_TTL)
    await store.set("renewed", b"4", ttl=short)
    await store.set("renewed", b"4", ttl=LONG_TTL)  # a new TTL replaces the old one
    await store.set("made-permanent", b"5", ttl=short)
    await store.set("made-permanent", b"5")  # no TTL: kept until deleted
    await store.set("infinite", b"6", ttl=float("inf"))
    assert await store.get("long") == b"3"

    await subject.expire("short")

    assert await store.get("short") is None
    assert await store.delete("short") is False  # get, scan and delete agree at once
    assert await store.scan("") == {
        "forever": b"2",
        "infinite": b"6",
        "long": b"3",
        "made-permanent": b"5",
        "renewed": b"4",
    }
    await store.set("short", b"again")  # an expired key can be written afresh
    assert await store.get("short") == b"again"


@pytest.mark.anyio
@pytest.mark.parametrize("ttl", [0, -1, float("nan")])
async def test_a_ttl_must_be_positive(subject: Subject, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        await subject.store.set("x", b"v", ttl=ttl)
    assert await subject.store.get("x") is None


@pytest.mark.anyio
async def test_cancelled_callers_leave_the_store_consistent(subject: Subject) -> None:
    """Cancel writers in the middle of their operations, at each of them, after 0 to 3 turns of the
    event loop. Whether a cancelled operation lands is the store's business, but it lands whole:
    each key holds what the operations before it left, with or without the one that was cut.
    Get and scan agree, nothing half-written is visible, and the store keeps working."""
    store = subject.store
    count = 48
    states: list[bytes | None] = [None, b"a", b"b", None]  # before and after each operation
    started = [[asyncio.Event() for _ in range(3)] for _ in range(count)]
    in_flight = [0] * count  # the operation (or the turn after it) a writer was in when stopped

    async def writer(i: int) -> None:
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: store.set(f"k{i}", b"a", ttl=LONG_TTL),
            lambda: store.set(f"k{i}", b"b"),
            lambda: store.delete(f"k{i}"),
        ]
        for step, operation in enumerate(operations):
            in_flight[i] = step
            started[i][step].set()
            await operation()
            await asyncio.sleep(0)  # a MemoryStore never suspends inside an operation: here it can
        in_flight[i] = 3

    async def cancel_midway(i: int, task: asyncio.Task[None]) -> None:
        await started[i][i % 3].wait()
        for _ in range((i // 3) % 4):
            await asyncio.sleep(0)
        task.cancel()

    tasks = [asyncio.create_task(writer(i)) for i in range(count)]
    await asyncio.gather(*(cancel_midway(i, task) for i, task in enumerate(tasks)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) >= count // 2

    seen = await store.scan("k")
    for i in range(count):
        value = await store.get(f"k{i}")
        assert value == seen.get(f"k{i}")
        step = in_flight[i]
        assert value in states[step : step + 2], (i, step, value)
    if isinstance(store, FileStore):
        assert not [name for name in os.listdir(store.directory) if name.startswith(".tmp.")]
    await store.set("after", b"ok")
    assert await store.get("after") == b"ok"


# --- FileStore ----------------------------------------------------------------------------------

READER = """
import asyncio, json, sys
from laneway.clock import ManualClock
from laneway.storage import FileStore

async def main() -> None:
    store = FileStore(sys.argv[1], ManualClock(start=float(sys.argv[2])))
    await store.set("from-child", "é".encode())
    found = await store.scan("")
    print(json.dumps({key: value.decode() for key, value in found.items()}))

asyncio.run(main())
"""


@pytest.mark.anyio
async def test_file_store_is_read_by_another_instance_and_another_process(
    tmp_path: Path, clock: ManualClock
) -> None:
    writer = FileStore(tmp_path / "runtime", clock)
    await writer.set("models:gpu-1", b'["llama3.2:3b"]')
    await writer.set("signal:oai", b"available", ttl=60)
    await writer.set("café:ü/日本", b"unicode")

    reader = FileStore(tmp_path / "runtime", ManualClock(start=START + 30))
    assert await reader.scan("") == {
        "café:ü/日本": b"unicode",
        "models:gpu-1": b'["llama3.2:3b"]',
        "signal:oai": b"available",
    }

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        READER,
        str(tmp_path / "runtime"),
        str(START + 60),  # at the deadline: the TTL'd entry is gone for the other process too
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    assert json.loads(out) == {
        "café:ü/日本": "unicode",
        "from-child": "é",
        "models:gpu-1": '["llama3.2:3b"]',
    }
    assert await writer.get("from-child") == "é".encode()


@pytest.mark.anyio
async def test_file_store_deadlines_survive_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    before = FileStore(tmp_path, clock)
    await before.set("signal", b"x", ttl=60)
    await before.set("keep", b"y")
    await before.aclose()
    # A new process: its monotonic clock starts afresh, its wall clock goes on.
    assert await FileStore(tmp_path, ManualClock(start=START + 59)).get("signal") == b"x"
    after = FileStore(tmp_path, ManualClock(start=START + 60))
    assert await after.get("signal") is None
    assert await after.scan("") == {"keep": b"y"}
    assert await after.delete("signal") is False
    assert sorted(os.listdir(tmp_path)) == [".lock", "k.keep"]  # the expired file was removed


@pytest.mark.anyio
async def test_file_store_sweeps_expired_entries_nobody_reads(tmp_path: Path, clock: ManualClock) -> None:
    store = FileStore(tmp_path, clock)
    for i in range(5):
        await store.set(f"old{i}", b"x", ttl=1)
    clock.advance(2)
    await store.set("new", b"y")
    assert len(os.listdir(tmp_path)) == 7  # expired, not yet swept: sweeps are at most a minute apart
    clock.advance(60)
    await store.set("newer", b"z")
    assert sorted(os.listdir(tmp_path)) == [".lock", "k.new", "k.newer"]


@pytest.mark.anyio
async def test_file_store_names_are_reversible_ascii_and_case_safe(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = FileStore(tmp_path, clock)
    for key in KEYS:
        await store.set(key, b"v")
    names = [name for name in os.listdir(tmp_path) if name != ".lock"]
    assert len(names) == len(KEYS)
    assert all(name.isascii() and len(name) <= 200 for name in names)
    assert len({name.casefold() for name in names}) == len(names)  # distinct on macOS too
    assert "k.%4Dodel%3A%41" in names
    assert "k.caf%C3%A9%3A%C3%BC%2F%E6%97%A5%E6%9C%AC" in names
    assert sum(name.startswith("h.") for name in names) == 2  # the two long keys, hashed
    assert set(await FileStore(tmp_path, clock).scan("")) == set(KEYS)


@pytest.mark.anyio
async def test_file_store_reads_corrupt_files_as_absent(tmp_path: Path, clock: ManualClock) -> None:
    store = FileStore(tmp_path, clock)
    await store.set("good", b"ok")
    garbage = {
        "k.empty": b"",
        "k.noise": os.urandom(64),
        "k.no-header-end": b"laneway-kv 1\n{",
        "k.bad-json": b"laneway-kv 1\n{not json}\nvalue",
        "k.deep": b"laneway-kv 1\n" + b"[" * 100_000 + b"\nvalue",
        "k.wrong-size": b'laneway-kv 1\n{"key": "wrong-size", "expires_at": null, "size": 99}\nvalue',
        "k.wrong-key": b'laneway-kv 1\n{"key": "other", "expires_at": null, "size": 5}\nvalue',
        "k.bad-deadline": b'laneway-kv 1\n{"key": "bad-deadline", "expires_at": "soon", "size": 5}\nvalue',
        "k.%zz": b'laneway-kv 1\n{"key": "%zz", "expires_at": null, "size": 5}\nvalue',
        "k.%61": b'laneway-kv 1\n{"key": "a", "expires_at": null, "size": 5}\nvalue',  # "a" is k.a
        "h.0000": b'laneway-kv 1\n{"key": "h", "expires_at": null, "size": 5}\nvalue',
        "README": b"not ours",
    }
    for name, data in garbage.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "k.a-directory").mkdir()

    assert await store.scan("") == {"good": b"ok"}
    for key in ("empty", "noise", "no-header-end", "bad-json", "deep", "wrong-size", "wrong-key", "a"):
        assert await store.get(key) is None
    assert await store.get("a-directory") is None
    assert await store.delete("noise") is False  # removes the file all the same
    assert not (tmp_path / "k.noise").exists()
    await store.set("bad-json", b"fixed")  # overwriting a corrupt file is an ordinary write
    assert await store.get("bad-json") == b"fixed"


@pytest.mark.anyio
async def test_file_store_ignores_leftover_temp_files_and_removes_stale_ones(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = FileStore(tmp_path, clock)
    await store.set("k", b"v")
    crashed, in_flight = tmp_path / ".tmp.crashed", tmp_path / ".tmp.in-flight"
    crashed.write_bytes(b"laneway-kv 1\n{half")
    in_flight.write_bytes(b"laneway-kv 1\n")
    os.utime(crashed, (START - 3600, START - 3600))  # left by a crash an hour ago
    os.utime(in_flight, (START, START))  # another writer's, a moment ago
    assert await store.scan("") == {"k": b"v"}
    assert not crashed.exists()
    assert in_flight.exists()


@pytest.mark.anyio
async def test_file_store_creates_its_directory_on_first_use(tmp_path: Path, clock: ManualClock) -> None:
    directory = tmp_path / "a" / "b"
    store = FileStore(directory, clock)
    assert not directory.exists()
    assert await store.get("x") is None
    assert directory.is_dir()

    (tmp_path / "a-file").write_text("")
    blocked = FileStore(tmp_path / "a-file" / "runtime", clock)
    with pytest.raises(StoreUnavailable) as info:
        await blocked.set("x", b"v")
    message = info.value.message
    assert str(tmp_path / "a-file" / "runtime") in message
    assert "check that it can be created and written" in message
    assert "\n" not in message
    assert repr(store) == f"<FileStore: {directory}>"


# --- RedisStore ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_keys_live_under_the_namespace(redis_namespace: str) -> None:
    glob_namespace = redis_namespace + "*[x]?:"  # glob characters in the namespace are escaped too
    one = RedisStore(REDIS_URL, namespace=glob_namespace)
    other = RedisStore(REDIS_URL, namespace=redis_namespace + "other:")
    raw = Redis.from_url(REDIS_URL)
    try:
        await one.set("lane:1", b"a", ttl=LONG_TTL)
        await other.set("lane:1", b"b")
        assert await one.scan("") == {"lane:1": b"a"}
        assert await other.scan("") == {"lane:1": b"b"}
        assert await raw.get(glob_namespace + "lane:1") == b"a"
        assert 0 < await raw.pttl(glob_namespace + "lane:1") <= LONG_TTL * 1000
        await one.set("lane:1", b"a")
        assert await raw.pttl(glob_namespace + "lane:1") == -1  # a plain SET clears the TTL
        assert repr(one) == f"<RedisStore: {REDIS_URL} namespace={glob_namespace!r}>"
    finally:
        await one.aclose()
        await other.aclose()
        await raw.aclose()


@pytest.mark.anyio
async def test_unreachable_redis_is_one_clear_error_without_the_password() -> None:
    store = RedisStore("redis://:hunter2@127.0.0.1:1/0", timeout=2)
    try:
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get("x"),
            lambda: store.set("x", b"v"),
            lambda: store.delete("x"),
            lambda: store.scan(""),
        ]
        for operation in operations:
            with pytest.raises(StoreUnavailable) as info:
                await operation()
            message = info.value.message
            assert "redis://:***@127.0.0.1:1/0" in message
            assert "hunter2" not in message
            assert "check that Redis is running" in message
    finally:
        await store.aclose()


def test_redis_urls_are_shown_without_passwords() -> None:
    assert redact_redis_url("redis://u:pw@h:6380/1") == "redis://u:***@h:6380/1"
    assert redact_redis_url("rediss://:pw@h") == "rediss://:***@h"
    assert redact_redis_url("redis://h/0?password=pw&ssl_cert_reqs=none") == (
        "redis://h/0?password=***&ssl_cert_reqs=none"
    )
    assert redact_redis_url("redis://h:6379") == "redis://h:6379"
    assert escape_glob("a*b?[c]\\d:e/f") == "a\\*b\\?\\[c\\]\\\\d:e/f"


# --- choosing by URL ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_open_runtime_store_by_url(tmp_path: Path, clock: ManualClock) -> None:
    assert isinstance(open_runtime_store("memory://", clock), MemoryStore)
    file_store = open_runtime_store(f"file://{tmp_path}/my%20dir", clock)
    assert isinstance(file_store, FileStore)
    assert file_store.directory == tmp_path / "my dir"
    cached = open_runtime_store("file://", clock, cache_dir=tmp_path / "cache")
    assert isinstance(cached, FileStore)
    assert cached.directory == tmp_path / "cache"
    for url in (REDIS_URL, "rediss://:pw@127.0.0.1:6380/0"):
        redis_store = open_runtime_store(url, clock)
        assert isinstance(redis_store, RedisStore)
        await redis_store.aclose()

    for bad in ("mysql://u:s3cret@h/db", "memory://x", "file:relative/dir", "file://host/x", "redis://", ""):
        with pytest.raises(ValueError, match="memory://") as info:
            open_runtime_store(bad, clock)
        assert "file:///absolute/path" in str(info.value)
        assert "redis://" in str(info.value)
        assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError, match="cache directory"):
        open_runtime_store("file://", clock)
