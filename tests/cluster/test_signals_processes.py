"""What one replica learns of a backend, every replica knows at once: three real ``laneway serve``
replicas on a fresh PostgreSQL database and a Redis prefix of their own, in front of one simulated
upstream, refreshing it only once an hour (so what they learn sooner, an event told them). Proved
with the upstream's own count of inference calls, and the official ``openai`` SDK as the client:

- a 429 with Retry-After that one replica saw holds the backend on the others, without a call;
- a breaker that one replica's failures opened is open on all three, the half-open trial after its
  cooldown is made by exactly one of them, and its success closes the breaker everywhere;
- a lane one replica found stale (a 404 for its model) is stale on the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

from tests.cluster.processes import replicas
from tests.conftest import Sim
from tests.e2e.test_publish import ADMIN, get, wait_for

KEY = "sim-key"
MODEL = "gpt-4o-mini"
CHAT: Any = [{"role": "user", "content": "hi"}]


@contextlib.contextmanager
def three_replicas(sim: Sim, tmp_path: Path, **extra: Any) -> Iterator[dict[str, str]]:
    """r1, r2, r3 in front of the OpenAI-family ``sim`` (backend ``cloud``), refreshing it once an
    hour, each listening for the others' events. ``extra``: more config sections."""
    with replicas(
        tmp_path,
        "r1",
        "r2",
        "r3",
        listening=True,
        backends={"cloud": {"provider": "openai", "base_url": sim.url + "/v1", "api_key": KEY}},
        # refreshed once an hour, and a refresh may hang a minute: what the replicas learn
        # sooner, an event told them
        inventory={"intervals": {"openai": 3600}, "refresh_deadline": 60},
        **extra,
    ) as cluster:
        yield cluster.urls


def chat(url: str) -> tuple[int, dict[str, str]]:
    """One chat request through the official SDK: its status and headers."""
    with openai.OpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0, timeout=30) as client:
        try:
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT)
        except openai.APIStatusError as exc:
            return exc.status_code, dict(exc.response.headers)
        return raw.http_response.status_code, dict(raw.headers)


def admin(url: str, path: str) -> Any:
    status, body = get(url + path, ADMIN)
    assert status == 200, body
    return body


def signal_status(url: str) -> str | None:
    shown = admin(url, "/admin/signals?backend=cloud")["signals"]
    return shown[0]["status"] if shown else None


def breaker(url: str) -> dict[str, Any] | None:
    """The chat lane's breaker as /admin/breakers shows it (None: plainly closed)."""
    found = admin(url, "/admin/breakers")["breakers"]
    return next((b for lane, b in found.items() if MODEL in lane), None)


def lane_health(url: str) -> str | None:
    lanes = admin(url, "/admin/lanes?backend=cloud")["lanes"]
    return next((lane["health"] for lane in lanes if lane["model"] == MODEL), None)


def test_a_429_seen_by_one_replica_holds_the_backend_on_all(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="openai", api_key=KEY)
    with three_replicas(sim, tmp_path) as urls:
        sim.options.fail_status, sim.options.fail_retry_after = 429, "60"
        status, _ = chat(urls["r1"])
        assert status == 429
        assert sim.stats.inference_requests == 1
        for name in ("r2", "r3"):
            wait_for(lambda name=name: signal_status(urls[name]) == "exhausted", f"{name} knows")  # type: ignore[misc]
        for name in ("r2", "r3"):
            status, headers = chat(urls[name])
            assert status == 429, name
            assert 50 <= float(headers["retry-after"]) <= 60, headers
        assert sim.stats.inference_requests == 1  # neither r2 nor r3 sent a call of its own


def test_a_breaker_opened_on_one_replica_is_open_on_all_and_one_makes_the_trial(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(family="openai", api_key=KEY)
    breakers = {"breaker": {"failures": 2, "window": 60, "cooldown": 8}}
    with three_replicas(sim, tmp_path, routing=breakers) as urls:
        sim.options.fail_status = 500
        assert [chat(urls["r1"])[0] for _ in range(2)] == [502, 502]
        assert sim.stats.inference_requests == 2
        for name in ("r2", "r3"):
            wait_for(lambda name=name: (breaker(urls[name]) or {}).get("state") == "open", f"{name} open")  # type: ignore[misc]
            assert breaker(urls[name])["opened_by"] == "r1"  # type: ignore[index]
            assert chat(urls[name])[0] == 503  # passed over: no lane to try
        assert sim.stats.inference_requests == 2

        for name, url in urls.items():  # the cooldown passes (/admin/breakers moves it along)
            wait_for(lambda url=url: breaker(url)["state"] == "half-open", f"{name} half-open", tries=600)  # type: ignore[index,misc]
        sim.options.fail_status, sim.options.latency = None, 2.0  # the trial stays in flight a while
        with ThreadPoolExecutor(3) as pool:
            statuses = sorted(status for status, _ in pool.map(chat, urls.values()))
        assert statuses == [200, 503, 503]
        assert sim.stats.inference_requests == 3  # exactly one trial call reached the upstream

        for name, url in urls.items():
            wait_for(lambda url=url: breaker(url) is None, f"{name}'s breaker closes")  # type: ignore[misc]
            assert lane_health(url) == "healthy", name
        sim.options.latency = 0
        assert [chat(url)[0] for url in urls.values()] == [200, 200, 200]
        assert sim.stats.inference_requests == 6


def test_a_lane_stale_on_one_replica_is_stale_on_all(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="openai", api_key=KEY)
    with three_replicas(sim, tmp_path) as urls:
        assert [lane_health(url) for url in urls.values()] == ["healthy"] * 3
        sim.options.models = ["gpt-4o"]  # the upstream no longer serves it: a 404 for it
        # ...and its model list hangs, so r1's refresh of the stale lane (whose result every
        # replica would take up) brings nothing for now: only the stale event can tell r2 and r3
        sim.options.hang_discovery = True
        assert chat(urls["r1"])[0] != 200
        calls = sim.stats.inference_requests
        for name in ("r2", "r3"):
            wait_for(lambda name=name: lane_health(urls[name]) == "stale", f"{name}'s lane is stale")  # type: ignore[misc]
            assert chat(urls[name])[0] != 200
        assert sim.stats.inference_requests == calls  # out of rotation: nothing sent to it
        sim.options.hang_discovery = False
