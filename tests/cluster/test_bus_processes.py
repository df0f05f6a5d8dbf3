"""What one replica does, the others learn at once: an auth cooldown lifted on one replica (the
backend's key was fixed) makes every replica refresh that backend now, so its lanes are back in
rotation everywhere — here the replicas would otherwise refresh it once an hour, and keep the
cooldown for an hour."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tests.cluster.processes import chat, replicas
from tests.conftest import Sim
from tests.e2e.test_publish import ADMIN, Processes, get, wait_for


def routable(url: str) -> list[bool]:
    status, body = get(url + "/admin/lanes", ADMIN)
    assert status == 200, body
    return [lane["routable"] for lane in body["lanes"] if lane["backend"] == "cloud"]


def lift(url: str) -> Any:
    request = urllib.request.Request(
        url + "/admin/cooldowns/cloud", method="DELETE", headers={"authorization": f"Bearer {ADMIN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return orjson.loads(resp.read())


@contextlib.contextmanager
def two_replicas(sim: Sim, tmp_path: Path, key: str) -> Iterator[tuple[Processes, dict[str, str]]]:
    """Replicas r1 and r2 in front of one OpenAI-family ``sim`` declared with ``key``, refreshing it
    only once an hour (so what they learn sooner, an event told them), each listening for the
    other's events."""
    with replicas(
        tmp_path,
        "r1",
        "r2",
        listening=True,
        backends={"cloud": {"provider": "openai", "base_url": sim.url + "/v1", "api_key": key}},
        inventory={"intervals": {"openai": 3600}, "auth_cooldown": 3600},
    ) as cluster:
        yield cluster.procs, cluster.urls


def cooldown_until(url: str) -> Any:
    status, body = get(url + "/admin/backends", ADMIN)
    assert status == 200, body
    return next(b for b in body["backends"] if b["name"] == "cloud")["cooldown_until"]


def test_a_cooldown_lifted_on_one_replica_is_lifted_on_all(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="openai", api_key="the-right-key")
    with two_replicas(sim, tmp_path, "a-fixed-key") as (_, urls):
        for name, url in urls.items():  # each refused at its start: a cooldown, in the shared store
            assert cooldown_until(url) is not None, name
        sim.options.api_key = "a-fixed-key"  # the operator fixed the key upstream
        assert lift(urls["r1"])["lifted"] is True
        assert routable(urls["r1"])
        assert all(routable(urls["r1"]))
        wait_for(lambda: bool(routable(urls["r2"])) and all(routable(urls["r2"])), "r2's lanes are back")
        assert cooldown_until(urls["r2"]) is None


def test_a_key_refused_on_one_replica_takes_its_lanes_out_on_all(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="openai", api_key="the-key")
    with two_replicas(sim, tmp_path, "the-key") as (_, urls):
        assert chat(urls["r1"]) == 200
        assert all(routable(urls["r2"]))
        calls_before = sim.stats.total_requests
        sim.options.api_key = "a-rotated-key"  # the key was rotated upstream, not yet here
        assert chat(urls["r1"]) != 200  # r1's call is refused: its cooldown begins
        wait_for(lambda: not any(routable(urls["r2"])), "r2's lanes are out of rotation too")
        assert cooldown_until(urls["r2"]) is not None
        assert sim.stats.total_requests == calls_before + 1  # r1's refused call: r2 called nothing
