"""PostgreSQL away, for real: a ``laneway serve`` on a PostgreSQL of this test's own
(``tests/own_postgres.py``; the machine's server is never touched), which is stopped while requests
keep coming and started again.

While it is away: every request is served, with a key created (in the database) before the outage;
the usage rows and failover records of those requests wait in the writers' buffers (counted on
``/metrics``); ``/admin/failovers`` answers from this replica's memory and says so; what needs the
database answers 503 in the caller's dialect (a stored Response, through the OpenAI SDK; the
usage report); ``/readyz`` stays ready. Each writer says the outage once in the log, not per
record, and the key reload says once that it keeps the keys it has.

When it is back: every usage row and failover record of the load is in the database (counted
there against the requests served), nothing was dropped, ``/admin/failovers`` reads the database
again, and the credential watch has reconnected (it says it listens again; a key created now is
accepted). Not one request of the load failed, before, during or after the outage."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.test_failovers_processes import MODEL, failing_over
from tests.e2e.test_inventory import free_port
from tests.e2e.test_publish import ADMIN, ENV, LANEWAY, Processes, get, wait_for
from tests.own_postgres import OwnPostgres, own_pg

__all__ = ["own_pg"]  # the fixture, imported for pytest

SERVED = 12  # requests served while PostgreSQL is away, at least; half of them after a failover
CHAT: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    yield p
    p.stop_all()


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


def rows(database_url: str, table: str, prefix: str) -> int:
    """Rows of ``table`` whose request id starts with ``prefix``, read from the database itself."""

    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(
                await conn.fetchval(f"SELECT count(*) FROM {table} WHERE request_id LIKE $1", prefix + "%")
            )
        finally:
            await conn.close()

    return asyncio.run(count())


def metric(url: str, name: str, kind: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("kind") == kind:
                return float(sample.value)
    raise AssertionError(f"{name}{{kind={kind}}} is not on /metrics")


def serve(procs: Processes, tmp_path: Path, database_url: str, sim_factory: Any) -> str:
    port = free_port()
    config = {
        "server": {"port": port, "drain_timeout": 1},
        "storage": {
            "database_url": database_url,
            "runtime_url": "memory://",
            "data_dir": str(tmp_path / "r1"),
        },
        "auth": {"keys": [{"name": "ops", "key": ADMIN, "admin": True}], "reload_interval": 1},
        "cluster": {"replica_id": "r1"},
        **failing_over(sim_factory),
    }
    config["routes"]["direct"] = [f"good/{MODEL}"]
    path = tmp_path / "r1.yaml"
    path.write_text(yaml.safe_dump(config))
    procs.start("r1", "serve", "-c", str(path))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(url + "/readyz")[0] == 200, "r1 is ready", tries=600, step=0.1)
    return url


class Load(threading.Thread):
    """Requests, one after another, until stopped: every other one to the route that fails over
    (a usage row and a failover record), the others to a lane that serves at once (a usage row)."""

    def __init__(self, client: openai.OpenAI) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.served: list[str] = []  # the models of the requests served, in order
        self.failed: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            n = len(self.served) + len(self.failed)
            model = "r" if n % 2 else "direct"
            try:
                reply = self.client.chat.completions.create(
                    model=model, messages=CHAT, extra_headers={"x-request-id": f"load-{n}"}
                )
                assert reply.choices[0].message.content
                self.served.append(model)
            except Exception as exc:
                self.failed.append(f"load-{n}: {exc!r}")
            self.done.wait(0.02)

    def more(self, count: int, what: str) -> None:
        """Wait until ``count`` more requests were served."""
        target = len(self.served) + count
        wait_for(lambda: len(self.served) >= target or bool(self.failed), what, tries=600, step=0.1)
        assert not self.failed, self.failed


def test_requests_are_served_and_nothing_is_lost_while_postgres_is_away(
    own_pg: OwnPostgres, procs: Processes, sim_factory: Any, tmp_path: Path
) -> None:
    database_url = own_pg.create_database("laneway")
    url = serve(procs, tmp_path, database_url, sim_factory)
    wait_for(lambda: "listening for key changes" in procs.log("r1"), "the credential watch listens")
    secret = keys(database_url, "create", "app")  # in the database: loaded by the gateway, pushed
    wait_for(lambda: get(url + "/v1/models", secret)[0] == 200, "the new key is accepted")
    load = Load(openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0))
    load.start()
    try:
        load.more(4, "requests before the outage")
        own_pg.stop()
        load.more(SERVED, "requests served while PostgreSQL is away")
        while_away(url, secret)
        own_pg.start()
        load.more(4, "requests after the outage")
    finally:
        load.done.set()
        load.join(timeout=30)
    assert not load.failed, load.failed  # not one request failed, before, during or after

    sent, failed_over = len(load.served), load.served.count("r")
    usage, failovers = ("usage_records", "load-"), ("failover_records", "load-")
    wait_for(lambda: rows(database_url, *usage) == sent, "every usage row", tries=600, step=0.1)
    wait_for(lambda: rows(database_url, *failovers) == failed_over, "every failover", tries=600, step=0.1)
    assert rows(database_url, "usage_records", "responses-") == 2  # both were served upstream
    for kind in ("usage", "failovers"):
        assert metric(url, "laneway_records_dropped_total", kind) == 0
    status, body = get(url + "/admin/failovers?limit=1", ADMIN)
    assert status == 200, body
    assert (body["source"], body["degraded"], body["kept"]) == ("database", None, failed_over)

    # The credential watch lost its connection with the server and is listening again.
    listening = '"event":"listening for key changes'
    wait_for(lambda: procs.log("r1").count(listening) == 2, "the watch is back", tries=600, step=0.1)
    later = keys(database_url, "create", "later")
    wait_for(lambda: get(url + "/v1/models", later)[0] == 200, "a key created after the outage is accepted")

    log = procs.log("r1")
    assert log.count("usage: could not write") == 1, log  # once per outage, not per record or write
    assert log.count("failovers: could not write") == 1, log
    assert log.count("usage: writing works again") == 1, log
    assert log.count("failovers: writing works again") == 1, log
    assert log.count("could not reload API keys and publisher tokens; keeping the ones loaded") == 1, log
    assert log.count("stored responses are unavailable until the database is back") == 1, log
    assert "dropping records" not in log
    assert "Traceback" not in log, log


def while_away(url: str, secret: str) -> None:
    """What this replica says and does while its database is away (the load goes on meanwhile)."""
    wait_for(lambda: metric(url, "laneway_record_write_failures_total", "usage") >= 1, "a failed write")
    wait_for(lambda: metric(url, "laneway_record_write_failures_total", "failovers") >= 1, "a failed write")
    assert metric(url, "laneway_records_buffered", "usage") >= SERVED
    assert metric(url, "laneway_records_buffered", "failovers") >= SERVED // 2
    assert get(url + "/readyz")[0] == 200

    status, body = get(url + "/admin/failovers", ADMIN)
    assert status == 200, body
    assert body["source"] == "memory"
    assert body["kept"] >= SERVED // 2
    assert "the database could not be read" in body["degraded"]
    assert {r["replica"] for r in body["failovers"]} == {"r1"}

    client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:  # store: true (the default) needs it
        client.responses.create(model="direct", input="hi", extra_headers={"x-request-id": "responses-1"})
    assert refused.value.status_code == 503
    said = refused.value.response.json()["error"]
    assert said["code"] == "database_unavailable"
    assert said["message"].startswith("Stored responses are unavailable right now")
    assert "127.0.0.1" not in said["message"]  # where the database is, is the operator's business
    unstored = client.responses.create(
        model="direct", input="hi", store=False, extra_headers={"x-request-id": "responses-2"}
    )
    assert unstored.output_text
    assert get(url + "/admin/usage", ADMIN)[0] == 503
