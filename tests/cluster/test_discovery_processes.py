"""Discovery has one leader per backend, with real ``laneway serve`` replicas on one PostgreSQL
database and one Redis (a key prefix of their own) in front of one simulated Ollama. The sim's own
counts say who called it: a refresh asks ``/api/tags``, ``/api/show`` per model and ``/api/ps``; a
probe asks ``/api/tags`` alone. So refreshes are its ``/api/ps`` calls, probes the ``/api/tags``
calls beyond them."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai

from tests.cluster.test_replicas_processes import start_replicas
from tests.conftest import Sim, fresh_pg_database
from tests.e2e.test_publish import ADMIN, ENV, LANEWAY, Processes, get, wait_for

INTERVAL = 2.0  # the backend's refresh interval (inventory.intervals.ollama)
PROBE = 1.0  # how often a leader probes it (signals.probe_interval)
MODEL = "llama3.2:3b"


def refreshes(sim: Sim) -> int:
    return int(sim.stats.requests_by_path.get("/api/ps", 0))


def probes(sim: Sim) -> int:
    return int(sim.stats.requests_by_path.get("/api/tags", 0)) - refreshes(sim)


def backend(url: str) -> Any:
    status, body = get(url + "/admin/backends", ADMIN)
    assert status == 200, body
    return next(b for b in body["backends"] if b["name"] == "gpu")


def models(url: str) -> set[str]:
    status, body = get(url + "/admin/lanes", ADMIN)
    assert status == 200, body
    return {lane["model"] for lane in body["lanes"] if lane["backend"] == "gpu"}


def chat(url: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0, timeout=30)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    return reply.model


@contextlib.contextmanager
def replicas(
    sim: Sim, tmp_path: Path, *names: str, interval: float = INTERVAL
) -> Iterator[tuple[Processes, dict[str, Any], dict[str, str], Any]]:
    """Replicas ``names`` in front of ``sim`` (backend ``gpu``), each listing the others; then
    (processes, their Popen by name, their URLs, a function that starts one more). Their logs
    are free of tracebacks at the end."""
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    procs = Processes(tmp_path)
    urls: dict[str, str] = {}
    started: dict[str, Any] = {}
    config: dict[str, Any] = {
        "backends": {"gpu": {"provider": "ollama", "base_url": sim.url}},
        "inventory": {"intervals": {"ollama": interval}},
        "signals": {"probe_interval": PROBE},
    }
    with fresh_pg_database() as database_url:

        def start(*more: str) -> None:
            found_procs, found = start_replicas(
                procs, tmp_path, database_url, namespace, *more, running=tuple(urls), **dict(config)
            )
            started.update(found_procs)
            urls.update(found)

        try:
            start(*names)
            yield procs, started, urls, start
        finally:
            procs.stop_all()
    for name in urls:
        assert "Traceback" not in procs.log(name), procs.log(name)


def one_leader(urls: dict[str, str]) -> str | None:
    """The replica every one of ``urls`` names as the backend's leader, if they agree on one."""
    leaders = {backend(url)["leader"] for url in urls.values()}
    leader = leaders.pop() if len(leaders) == 1 else None
    return leader if leader in urls else None


def test_three_replicas_refresh_and_probe_a_backend_once_per_interval(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama")
    with replicas(sim, tmp_path, "r1", "r2", "r3") as (_, started, urls, _):
        wait_for(lambda: all(MODEL in models(url) for url in urls.values()), "every replica has the lanes")
        wait_for(lambda: one_leader(urls) is not None, "the replicas agree on one leader")
        for url in urls.values():
            assert chat(url) == MODEL  # every replica serves it

        # A window of several intervals: alone, each replica would refresh every interval and probe
        # every second (3x); led, the cluster does each once.
        refreshed, probed, began = refreshes(sim), probes(sim), time.monotonic()
        time.sleep(5 * INTERVAL)
        window = time.monotonic() - began
        refreshed, probed = refreshes(sim) - refreshed, probes(sim) - probed
        assert 1 <= refreshed <= window / INTERVAL + 3, (refreshed, window)
        assert 1 <= probed <= window / PROBE + 3, (probed, window)
        leader = one_leader(urls)
        assert leader is not None
        assert {backend(url)["refreshed_by"] for url in urls.values()} <= {leader}

        # kill -9 the leader: another replica takes over and refreshes; what it finds reaches all
        started[leader].kill()
        started[leader].wait(timeout=10)
        survivors = {name: url for name, url in urls.items() if name != leader}
        sim.options.models = [*sim.options.models, "qwen3:8b"]
        wait_for(
            lambda: all("qwen3:8b" in models(url) for url in survivors.values()),
            "the survivors see the model the new leader found",
            tries=600,
        )
        wait_for(lambda: one_leader(survivors) is not None, "the survivors agree on a new leader")
        new_leader = one_leader(survivors)
        wait_for(
            lambda: {backend(url)["refreshed_by"] for url in survivors.values()} == {new_leader},
            "the new leader's refreshes are the ones shown",
        )
        urls.pop(leader)  # killed: its log may end anywhere


def test_a_replica_that_joins_serves_the_shared_inventory_without_calling_the_upstream(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama")
    # An hour's interval: nothing refreshes on schedule while r3 joins, so every call is counted.
    with replicas(sim, tmp_path, "r1", "r2", interval=3600) as (_, _started, urls, start):
        wait_for(lambda: all(MODEL in models(url) for url in urls.values()), "r1 and r2 have the lanes")
        wait_for(lambda: one_leader(urls) is not None, "r1 and r2 agree on one leader")
        leader = one_leader(urls)
        before = refreshes(sim)
        start("r3")
        assert MODEL in models(urls["r3"])  # ready with the lanes
        assert chat(urls["r3"]) == MODEL
        assert refreshes(sim) == before  # r3 called nothing to get them
        shown = backend(urls["r3"])
        assert shown["refreshed_by"] in ("r1", "r2")
        assert shown["last_refresh"] is not None
        wait_for(lambda: backend(urls["r3"])["leader"] == leader, "r3 names the leader")
        shown = subprocess.run(
            [*LANEWAY, "backends", "--url", urls["r3"], "--key", ADMIN],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        header, row = shown.stdout.splitlines()
        assert "LEADER" in header.split()
        assert row.split()[0] == "gpu"
        assert leader in row.split()
