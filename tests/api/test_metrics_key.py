"""``GET /metrics`` closed and discreet: a publisher's session id (its sticky identity) never
appears, and with ``auth.metrics_key`` the endpoint needs that key or an admin key. The real
gateway on loopback, a publisher driven over the real protocol, raw HTTP as the scraper; the
start-up error of an unset ``metrics_key_env`` from a real ``laneway serve`` process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from laneway.api.metrics import publisher_metrics
from laneway.storage import hash_key
from tests.conftest import CLIENT_KEY, RunningGateway, Sim, three_family_config
from tests.scripted_publisher import ScriptedPublisher

pytestmark = pytest.mark.anyio

ADMIN_KEY = "lw-test-admin-key"
METRICS_KEY = "lw-test-metrics-key"
TOKEN = "lw-pub-alice"
KEYS = [{"name": "tests", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN_KEY, "admin": True}]


async def get_metrics(gw: RunningGateway, key: str | None = None) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics", headers=headers) as r:
        if r.status == 200:
            return r.status, await r.text()
        return r.status, await r.json()


async def test_a_publishers_session_id_never_appears(
    gateway_factory: Any, three_sims: dict[str, Sim], tmp_path: Path
) -> None:
    config = three_family_config(three_sims, tmp_path / "gw")
    config["publishers"] = {"tokens": [{"name": "alice", "token": TOKEN, "names": ["alice-*"]}]}
    gw = gateway_factory(config, three_sims)
    publisher = ScriptedPublisher(gw.url, TOKEN)
    try:
        session_id = (await publisher.register())["session_id"]
        await publisher.connect()
        status, text = await get_metrics(gw)
    finally:
        await publisher.aclose()
    assert status == 200
    assert session_id not in text
    connected = {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "laneway_publisher_connected"
    }
    assert connected == {frozenset({("publisher", "alice-laptop")}): 1.0}


def test_sessions_of_one_publisher_are_one_series() -> None:
    """A dead session not yet swept beside its successor: one series per name, not two."""
    sessions = [
        {
            "name": "alice-laptop",
            "session_id": "s-old",
            "control": False,
            "heartbeat_age": 80.0,
            "tasks_in_flight": 1,
        },
        {
            "name": "alice-laptop",
            "session_id": "s-new",
            "control": True,
            "heartbeat_age": 2.0,
            "tasks_in_flight": 2,
        },
        {
            "name": "bob-box",
            "session_id": "s-bob",
            "control": False,
            "heartbeat_age": 5.0,
            "tasks_in_flight": 0,
        },
    ]
    control, age, tasks, _ = publisher_metrics(sessions, 0)
    assert [(s.labels, s.value) for s in control.samples] == [
        ({"publisher": "alice-laptop"}, 1.0),
        ({"publisher": "bob-box"}, 0.0),
    ]
    assert [s.value for s in age.samples] == [2.0, 5.0]
    assert [s.value for s in tasks.samples] == [3.0, 0.0]


@pytest.mark.parametrize("given", ["metrics_key", "metrics_key_hash", "metrics_key_env"])
async def test_a_metrics_key_closes_the_endpoint(
    gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    auth: dict[str, Any] = {"keys": KEYS}
    if given == "metrics_key":
        auth["metrics_key"] = METRICS_KEY
    elif given == "metrics_key_hash":
        auth["metrics_key_hash"] = hash_key(METRICS_KEY)
    else:
        monkeypatch.setenv("LW_TEST_METRICS_KEY", METRICS_KEY)
        auth["metrics_key_env"] = "LW_TEST_METRICS_KEY"
    gw = gateway_factory({"auth": auth})

    status, body = await get_metrics(gw)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert "metrics key" in body["error"]["message"]
    status, body = await get_metrics(gw, "lw-not-a-key")
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    status, body = await get_metrics(gw, CLIENT_KEY)
    assert (status, body["error"]["code"]) == (403, "permission_denied")
    assert "/metrics" in body["error"]["message"]
    for key in (METRICS_KEY, ADMIN_KEY):
        status, text = await get_metrics(gw, key)
        assert status == 200
        assert "laneway_requests_total" in text


async def test_without_a_metrics_key_the_endpoint_stays_open(gateway_factory: Any) -> None:
    gw = gateway_factory({"auth": {"keys": KEYS}})
    status, _ = await get_metrics(gw)
    assert status == 200


def test_an_unset_metrics_key_env_stops_serve_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "laneway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"port": 0},
                "storage": {"data_dir": str(tmp_path / "data")},
                "auth": {"keys": KEYS, "metrics_key_env": "LW_TEST_UNSET_METRICS_KEY"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANEWAY_", "LW_TEST_"))}
    done = subprocess.run(
        [sys.executable, "-m", "laneway", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "auth.metrics_key_env" in done.stderr
    assert "LW_TEST_UNSET_METRICS_KEY" in done.stderr
    assert "is not set" in done.stderr
