"""A key created or revoked with ``laneway keys`` on the shared PostgreSQL database is accepted or
refused by every replica as soon as the change commits: the replicas poll the database only once
an hour here (``auth.reload_interval: 3600``), so only the notification can have told them."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from tests.cluster.test_replicas_processes import start_replicas
from tests.conftest import fresh_pg_database
from tests.e2e.test_publish import ENV, LANEWAY, Processes, get, wait_for


def keys(database_url: str, *args: str) -> str:
    done = subprocess.run(
        [*LANEWAY, "keys", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def status_with(url: str, key: str) -> int:
    return get(url + "/v1/models", key)[0]


def test_a_key_created_or_revoked_reaches_every_replica_at_once(tmp_path: Path) -> None:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    procs = Processes(tmp_path)
    urls: dict[str, str] = {}
    with fresh_pg_database() as database_url:
        try:
            _, urls = start_replicas(
                procs, tmp_path, database_url, namespace, "r1", "r2", "r3", auth={"reload_interval": 3600}
            )
            for name in urls:  # each has its LISTEN in place before anything changes
                wait_for(lambda name=name: "listening for key changes" in procs.log(name), f"{name} listens")  # type: ignore[misc]
            secret = keys(database_url, "create", "team")
            for name, url in urls.items():
                wait_for(lambda url=url: status_with(url, secret) == 200, f"{name} accepts the new key")  # type: ignore[misc]
            assert keys(database_url, "revoke", "team") == "revoked key 'team'"
            for name, url in urls.items():
                wait_for(lambda url=url: status_with(url, secret) == 401, f"{name} refuses the revoked key")  # type: ignore[misc]
        finally:
            procs.stop_all()
    for name in urls:
        assert "Traceback" not in procs.log(name), procs.log(name)
