"""Redis trouble never hangs a request, and a cluster converges again by itself: two real
``laneway serve`` replicas on a PostgreSQL database and on a Redis of this test's own (the
machine's is never touched), in front of one simulated upstream. Redis is killed under load, then
started again; then frozen (SIGSTOP: it accepts connections and answers nothing), then thawed.
Every request is answered throughout; each replica says it is degraded while Redis is away and
serves from its share of the pool's slots, and counts them across the cluster again once Redis is
back — no restart."""

from __future__ import annotations

import concurrent.futures
import signal
from pathlib import Path
from typing import Any

from tests.cluster.processes import chat, replicas
from tests.cluster.test_slots_processes import pool
from tests.e2e.test_publish import get, wait_for
from tests.storage.test_redis_breaker import OwnRedis, own_redis

__all__ = ["own_redis"]  # the fixture


def degraded(url: str) -> Any:
    _, body = get(url + "/readyz")
    return body["degraded"]


def scope(url: str) -> str:
    return str(pool(url)["scope"])


def burst(urls: list[str], n: int = 8) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(n) as threads:
        return list(threads.map(lambda i: chat(urls[i % len(urls)], 30), range(n)))


def until_counting_together(urls: list[str]) -> None:
    for url in urls:
        wait_for(lambda url=url: scope(url) == "cluster", "counting across the cluster", tries=300, step=0.1)  # type: ignore[misc]


def test_requests_are_served_while_redis_is_away_and_the_cluster_converges_when_it_is_back(
    sim_factory: Any, tmp_path: Path, own_redis: OwnRedis
) -> None:
    sim = sim_factory(family="openai", api_key="k", latency=0.05)
    backends = {"cloud": {"provider": "openai", "base_url": sim.url + "/v1", "api_key": "k", "slots": 4}}
    redis_url = f"redis://127.0.0.1:{own_redis.port}/0"
    with replicas(tmp_path, "r1", "r2", redis_url=redis_url, backends=backends) as cluster:
        urls = list(cluster.urls.values())
        assert burst(urls) == [200] * 8
        assert sim.stats.most_active_calls <= 4
        assert [scope(u) for u in urls] == ["cluster", "cluster"]
        assert [degraded(u) for u in urls] == [None, None]

        sim.stats.reset()
        own_redis.kill()  # dead: connections refused
        assert burst(urls) == [200] * 8  # served all the same, each replica on its share
        for url in urls:
            wait_for(lambda url=url: degraded(url) is not None, "degraded in /readyz", tries=200, step=0.1)  # type: ignore[misc]
            assert scope(url) == "local share"
            assert "share of their slots" in degraded(url)
        assert sim.stats.most_active_calls <= 4  # 2 each: 4 // 2 replicas

        own_redis.start()  # back, empty: nothing of the cluster's state survived
        for url in urls:
            wait_for(lambda url=url: degraded(url) is None, "no longer degraded", tries=300, step=0.1)  # type: ignore[misc]
        until_counting_together(urls)
        assert burst(urls) == [200] * 8

        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)  # frozen: it accepts, and answers nothing
        try:
            assert burst(urls) == [200] * 8  # every request answered: none waits on Redis
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        until_counting_together(urls)
        assert burst(urls) == [200] * 8
    for name in cluster.urls:
        assert "serves from its local share" in cluster.procs.log(name)  # said once in the log
