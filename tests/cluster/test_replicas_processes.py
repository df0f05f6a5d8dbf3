"""Three real ``laneway serve`` replicas on one PostgreSQL database and one Redis (a key prefix of
their own): each lists all three, a replica killed with ``kill -9`` drops out once its lease
lapses, one stopped with SIGTERM leaves at once, and ``laneway replicas`` shows the list."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import fresh_pg_database
from tests.e2e.test_inventory import free_port
from tests.e2e.test_publish import ADMIN, ENV, LANEWAY, Processes, get, wait_for

REDIS_URL = os.environ.get("LANEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")


def ids(url: str) -> list[str]:
    status, body = get(url + "/admin/replicas", ADMIN)
    assert status == 200, body
    return [r["id"] for r in body["replicas"]]


def start_replicas(
    procs: Processes,
    tmp_path: Path,
    database_url: str,
    namespace: str,
    *names: str,
    redis_url: str = REDIS_URL,
    running: tuple[str, ...] = (),
    **extra: Any,
) -> tuple[dict[str, subprocess.Popen[bytes]], dict[str, str]]:
    """Real ``laneway serve`` replicas on one database and one Redis prefix: (process, url) by name.
    ``running``: replicas already started on them (each new one waits to list them too).
    ``extra``: more config sections (``auth`` is merged over the admin key)."""
    started: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    auth = extra.pop("auth", {})  # every replica's, not the first one's only
    for name in names:
        port = free_port()
        config: dict[str, Any] = {
            "server": {"port": port, "drain_timeout": 1},
            "storage": {
                "database_url": database_url,
                "runtime_url": redis_url,
                "data_dir": str(tmp_path / name),
            },
            "auth": {"keys": [{"name": "ops", "key": ADMIN, "admin": True}], **auth},
            "cluster": {"replica_id": name, "lease_ttl": 2, "heartbeat": 0.5, "namespace": namespace},
            **extra,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        started[name] = procs.start(name, "serve", "-c", str(path))
        urls[name] = f"http://127.0.0.1:{port}"
    every = sorted([*running, *names])
    for name, url in urls.items():
        wait_for(lambda url=url: ids(url) == every, f"{name} lists every replica")  # type: ignore[misc]
    return started, urls


def test_replicas_see_each_other_and_lose_the_dead(tmp_path: Path) -> None:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    procs = Processes(tmp_path)
    urls: dict[str, str] = {}
    with fresh_pg_database() as database_url:
        try:
            started, found = start_replicas(procs, tmp_path, database_url, namespace, "r1", "r2", "r3")
            urls.update(found)

            shown = subprocess.run(
                [*LANEWAY, "replicas", "--url", urls["r1"], "--key", ADMIN],
                capture_output=True,
                text=True,
                env=ENV,
                timeout=30,
                check=False,
            )
            assert shown.returncode == 0, shown.stderr
            lines = shown.stdout.splitlines()
            assert lines[0].split()[:2] == ["REPLICA", "ADDRESS"]
            assert [line.split()[0:2] for line in lines[1:]] == [
                ["*", "r1"],
                ["r2", urls["r2"]],
                ["r3", urls["r3"]],
            ]

            started["r3"].kill()  # kill -9: it says nothing, its lease lapses
            started["r3"].wait(timeout=10)
            wait_for(lambda: ids(urls["r1"]) == ["r1", "r2"], "r3's lease lapsed", tries=200, step=0.1)
            assert ids(urls["r2"]) == ["r1", "r2"]

            started["r2"].send_signal(signal.SIGTERM)  # stopped: it leaves the list on its way out
            assert started["r2"].wait(timeout=30) == 0, procs.log("r2")
            assert ids(urls["r1"]) == ["r1"]
        finally:
            procs.stop_all()
    for name in urls:
        assert "Traceback" not in procs.log(name), procs.log(name)
