"""Slots are cluster-wide, proven with three real ``laneway serve`` replicas on one PostgreSQL
database and one Redis (a key prefix of their own), in front of one simulated upstream that counts
the calls it answers at once: a backend with ``slots: 2`` never has more than two calls in flight
across the replicas (each replica alone would let two through: six), and the slots of a replica
killed with ``kill -9`` while holding them come back to the others when their leases lapse."""

from __future__ import annotations

import concurrent.futures
import itertools
from pathlib import Path
from typing import Any

from tests.cluster.processes import chat, replicas
from tests.conftest import Sim
from tests.e2e.test_publish import ADMIN, get, wait_for


def pool(url: str) -> dict[str, Any]:
    status, body = get(url + "/admin/pools", ADMIN)
    assert status == 200, body
    return next(p for p in body["pools"] if p["name"] == "cloud")


def small_pool(sim: Sim) -> dict[str, Any]:
    """The backend ``cloud`` in front of ``sim``, with two slots."""
    config = {
        "provider": "openai",
        "base_url": sim.url + "/v1",
        "api_key": "k",
        "slots": 2,
        "queue_timeout": 60,
    }
    return {"cloud": config}


def test_a_backend_never_has_more_calls_than_its_slots_across_replicas(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="openai", api_key="k", latency=0.4)
    with replicas(tmp_path, "r1", "r2", "r3", backends=small_pool(sim)) as cluster:
        targets = list(itertools.islice(itertools.cycle(cluster.urls.values()), 12))
        with concurrent.futures.ThreadPoolExecutor(len(targets)) as threads:
            statuses = list(threads.map(chat, targets))
        assert statuses == [200] * 12
        assert sim.stats.most_active_calls == 2  # two at once, never more: six without sharing
        for url in cluster.urls.values():  # every replica counts the cluster's slots
            shown = pool(url)
            assert (shown["scope"], shown["slots"]) == ("cluster", 2)


def test_the_slots_of_a_killed_replica_come_back_when_their_leases_lapse(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="openai", api_key="k", latency=600)  # calls that hold their slots
    with replicas(tmp_path, "r1", "r2", "r3", backends=small_pool(sim)) as cluster:
        urls = cluster.urls
        threads = concurrent.futures.ThreadPoolExecutor(3)
        held = [threads.submit(chat, urls["r1"], 120) for _ in range(2)]  # r1 holds both slots
        wait_for(lambda: sim.stats.active_calls == 2, "r1's two calls reach the upstream")
        waiting = threads.submit(chat, urls["r2"], 60)  # r2's call waits for a slot
        wait_for(lambda: pool(urls["r2"])["queued"] == 1, "r2's call is queued in the cluster")
        assert sim.stats.active_calls == 2
        for url in (urls["r2"], urls["r3"]):  # who holds and who waits, seen from any replica
            assert pool(url)["replicas"] == {"r1": {"held": 2, "queued": 0}, "r2": {"held": 0, "queued": 1}}
        sim.options.latency = 0.0  # from now on the upstream answers at once
        cluster.started["r1"].kill()  # kill -9: it gives nothing back; its leases lapse (lease_ttl 2 s)
        cluster.started["r1"].wait(timeout=10)
        assert waiting.result(timeout=60) == 200  # served once r1's leases lapsed
        for future in held:
            assert future.result(timeout=60) == -1  # r1 died under them
        threads.shutdown()
        assert sim.stats.most_active_calls == 2
