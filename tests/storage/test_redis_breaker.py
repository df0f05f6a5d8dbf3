"""Redis trouble never hangs the gateway: a Redis of this test's own (``redis-server`` on a free
port; the machine's Redis is never touched) is killed and restarted under a ``RedisStore``. Calls
that cannot reach it fail with ``StoreUnavailable``; after three in a row the breaker answers at
once, without trying, until its cooldown (on the injected clock) has passed; a Redis that is back
closes it with the first call that reaches it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from laneway.api.app import readiness
from laneway.clock import ManualClock
from laneway.config import settings_from_data
from laneway.gateway import Gateway, GatewayOptions
from laneway.storage.errors import StoreUnavailable
from laneway.storage.redisstore import RedisBreaker, RedisStore
from tests.e2e.test_inventory import free_port

pytestmark = pytest.mark.anyio


class OwnRedis:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server is not None, "redis-server is installed on this machine and in CI"
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    if redis.proc is not None:
        redis.kill()


async def test_the_breaker_opens_on_a_dead_redis_and_closes_when_it_is_back(own_redis: OwnRedis) -> None:
    clock = ManualClock()
    breaker = RedisBreaker(clock, failures=3, cooldown=2.0)
    store = RedisStore(f"redis://127.0.0.1:{own_redis.port}/0", timeout=0.5, breaker=breaker)
    try:
        await store.set("k", b"v")
        assert await store.get("k") == b"v"

        own_redis.kill()
        for _ in range(3):  # each of these tried, and could not reach it
            with pytest.raises(StoreUnavailable, match="cannot use Redis"):
                await store.get("k")
        assert breaker.closed_for() == 2.0
        untried = r"not tried again for 2\.0 s; check that Redis is running"
        with pytest.raises(StoreUnavailable, match=untried):  # at once, without trying
            await store.get("k")
        clock.advance(2.0)
        with pytest.raises(StoreUnavailable, match="cannot use Redis"):  # tried once more, still down
            await store.get("k")
        assert breaker.closed_for() == 2.0

        own_redis.start()  # back (empty: it keeps nothing on disk)
        with pytest.raises(StoreUnavailable, match="not tried again"):
            await store.get("k")
        clock.advance(2.0)
        assert await store.get("k") is None  # reached: it answers again
        assert breaker.closed_for() == 0.0
        await store.set("k", b"again")
        assert await store.get("k") == b"again"
    finally:
        await store.aclose()


async def test_readyz_says_degraded_while_redis_is_down_and_recovers_by_itself(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    settings = settings_from_data(
        {
            "storage": {"runtime_url": f"redis://127.0.0.1:{own_redis.port}/0", "data_dir": str(tmp_path)},
            "cluster": {"redis_timeout": 0.5},
        },
        source="test.yaml",
    )
    async with await Gateway.open(settings, options=GatewayOptions(schedule=False)) as gateway:
        before = readiness(gateway)
        assert before["degraded"] is None
        own_redis.kill()
        await gateway.replicas.renew()  # a heartbeat (the loop's, when scheduled): Redis is gone
        body = readiness(gateway)
        assert body["degraded"] == "runtime store unreachable"
        # Its readiness is not Redis's to decide: it still serves, from what it knows.
        assert (body["ready"], body["reason"]) == (before["ready"], before["reason"])
        assert "127.0.0.1" not in str(body)  # laneway's words only: /readyz is unauthenticated
        own_redis.start()
        gateway.runtime.breaker.succeeded()  # type: ignore[attr-defined]  # skip its 2 s of real time
        await gateway.replicas.renew()  # the next heartbeat reaches it: one with the cluster again
        assert readiness(gateway)["degraded"] is None
