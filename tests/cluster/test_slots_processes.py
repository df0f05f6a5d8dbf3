"""Slots are cluster-wide, proven with three real ``laneway serve`` replicas on one PostgreSQL
database and one Redis (a key prefix of their own), in front of one simulated upstream that counts
the calls it answers at once: a backend with ``slots: 2`` never has more than two calls in flight
across the replicas (each replica alone would let two through: six), and the slots of a replica
killed with ``kill -9`` while holding them come back to the others when their leases lapse."""

from __future__ import annotations

import concurrent.futures
import itertools
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

from tests.cluster.test_replicas_processes import start_replicas
from tests.conftest import Sim, fresh_pg_database
from tests.e2e.test_publish import ADMIN, Processes, get, wait_for


def chat(url: str, timeout: float = 60) -> int:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=body,
        method="POST",
        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # the replica went away under the call
        return -1


def pool(url: str) -> dict[str, Any]:
    status, body = get(url + "/admin/pools", ADMIN)
    assert status == 200, body
    return next(p for p in body["pools"] if p["name"] == "cloud")


def replicas_with_a_small_pool(
    procs: Processes, tmp_path: Path, sim: Sim, database_url: str
) -> dict[str, Any]:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    started, urls = start_replicas(
        procs,
        tmp_path,
        database_url,
        namespace,
        "r1",
        "r2",
        "r3",
        backends={
            "cloud": {
                "provider": "openai",
                "base_url": sim.url + "/v1",
                "api_key": "k",
                "slots": 2,
                "queue_timeout": 60,
            }
        },
    )
    return {"started": started, "urls": urls}


def test_a_backend_never_has_more_calls_than_its_slots_across_replicas(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="openai", api_key="k", latency=0.4)
    procs = Processes(tmp_path)
    names: list[str] = []
    with fresh_pg_database() as database_url:
        try:
            found = replicas_with_a_small_pool(procs, tmp_path, sim, database_url)
            urls = found["urls"]
            names = list(urls)
            targets = list(itertools.islice(itertools.cycle(urls.values()), 12))
            with concurrent.futures.ThreadPoolExecutor(len(targets)) as threads:
                statuses = list(threads.map(chat, targets))
            assert statuses == [200] * 12
            assert sim.stats.most_active_calls == 2  # two at once, never more: six without sharing
            for url in urls.values():  # every replica counts the cluster's slots
                shown = pool(url)
                assert (shown["scope"], shown["slots"]) == ("cluster", 2)
        finally:
            procs.stop_all()
    for name in names:
        assert "Traceback" not in procs.log(name), procs.log(name)


def test_the_slots_of_a_killed_replica_come_back_when_their_leases_lapse(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="openai", api_key="k", latency=600)  # calls that hold their slots
    procs = Processes(tmp_path)
    names: list[str] = []
    with fresh_pg_database() as database_url:
        try:
            found = replicas_with_a_small_pool(procs, tmp_path, sim, database_url)
            urls, started = found["urls"], found["started"]
            names = list(urls)
            threads = concurrent.futures.ThreadPoolExecutor(3)
            held = [threads.submit(chat, urls["r1"], 120) for _ in range(2)]  # r1 holds both slots
            wait_for(lambda: sim.stats.active_calls == 2, "r1's two calls reach the upstream")
            waiting = threads.submit(chat, urls["r2"], 60)  # r2's call waits for a slot
            wait_for(lambda: pool(urls["r2"])["queued"] == 1, "r2's call is queued in the cluster")
            assert sim.stats.active_calls == 2
            for url in (urls["r2"], urls["r3"]):  # who holds and who waits, seen from any replica
                assert pool(url)["replicas"] == {
                    "r1": {"held": 2, "queued": 0},
                    "r2": {"held": 0, "queued": 1},
                }
            sim.options.latency = 0.0  # from now on the upstream answers at once
            started["r1"].kill()  # kill -9: it gives nothing back; its leases lapse (lease_ttl 2 s)
            started["r1"].wait(timeout=10)
            assert waiting.result(timeout=60) == 200  # served once r1's leases lapsed
            for future in held:
                assert future.result(timeout=60) == -1  # r1 died under them
            threads.shutdown()
            assert sim.stats.most_active_calls == 2
        finally:
            procs.stop_all()
    for name in names[1:]:
        assert "Traceback" not in procs.log(name), procs.log(name)
