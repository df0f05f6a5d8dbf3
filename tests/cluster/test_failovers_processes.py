"""Failover records and usage are cluster-wide: two real ``laneway serve`` replicas on one
PostgreSQL database (and one Redis prefix), in front of a backend that fails and one that serves,
through a route that tries them in that order. Requests that failed over on r1 are listed by r2's
``/admin/failovers`` (and ``laneway failovers``), each naming r1 as the replica that handled it;
``/admin/usage`` on either replica counts every replica's requests, by replica. Without the
records going to the database, r2 would list only its own."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import openai

from tests.cluster.test_replicas_processes import start_replicas
from tests.conftest import fresh_pg_database
from tests.e2e.test_publish import ADMIN, ENV, LANEWAY, Processes, get, wait_for

MODEL = "gpt-4o-mini"
CHAT: Any = [{"role": "user", "content": "hi"}]


def failing_over(sim_factory: Any) -> dict[str, Any]:
    """The config sections of a route ``r`` over a backend that answers 500 and one that serves."""
    bad = sim_factory(family="openai", models=[MODEL], fail_status=500)
    good = sim_factory(family="openai", models=[MODEL])
    return {
        "backends": {
            "bad": {"provider": "openai", "base_url": bad.url, "weight": 1000},
            "good": {"provider": "openai", "base_url": good.url},
        },
        "routes": {"r": [f"bad/{MODEL}", f"good/{MODEL}"]},
        "routing": {"breaker": {"failures": 1000}},  # every request tries the failing lane first
    }


def chat(url: str, request_id: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="r", messages=CHAT, extra_headers={"x-request-id": request_id}
    )
    assert raw.headers["x-laneway-attempts"] == "2"
    assert raw.parse().choices[0].message.content


def failovers(url: str, **params: str) -> Any:
    query = "&".join(f"{k}={v}" for k, v in {"limit": "100", **params}.items())
    status, body = get(f"{url}/admin/failovers?{query}", ADMIN)
    assert status == 200, body
    return body


def usage_by_replica(url: str) -> dict[str, int]:
    status, body = get(url + "/admin/usage?group_by=replica", ADMIN)
    assert status == 200, body
    return {row["replica"]: row["requests"] for row in body["rows"]}


def test_failover_records_and_usage_are_seen_from_every_replica(sim_factory: Any, tmp_path: Path) -> None:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    procs = Processes(tmp_path)
    urls: dict[str, str] = {}
    with fresh_pg_database() as database_url:
        try:
            _, found = start_replicas(
                procs, tmp_path, database_url, namespace, "r1", "r2", **failing_over(sim_factory)
            )
            urls.update(found)
            for i in range(3):
                chat(urls["r1"], f"req-r1-{i}")
            chat(urls["r2"], "req-r2-0")

            # r1 writes its records within about a second; r2 reads them from the database.
            wait_for(lambda: failovers(urls["r2"])["kept"] == 4, "r2 lists r1's records too", step=0.1)
            body = failovers(urls["r2"])
            assert (body["source"], body["replica"], body["degraded"]) == ("database", "r2", None)
            made = {r["request_id"]: r["replica"] for r in body["failovers"]}
            assert made == {"req-r1-0": "r1", "req-r1-1": "r1", "req-r1-2": "r1", "req-r2-0": "r2"}
            newest = body["failovers"][0]
            assert (newest["request_id"], newest["outcome"]) == ("req-r2-0", "served")
            assert [a["outcome"] for a in newest["attempts"]] == ["failed", "served"]
            assert newest["attempts"][0]["status"] == 500
            assert failovers(urls["r1"])["kept"] == 4  # the same from r1
            only_r1 = failovers(urls["r2"], replica="r1")
            assert (only_r1["kept"], {r["replica"] for r in only_r1["failovers"]}) == (3, {"r1"})

            shown = subprocess.run(
                [*LANEWAY, "failovers", "--url", urls["r2"], "--key", ADMIN, "--replica", "r1"],
                capture_output=True,
                text=True,
                env=ENV,
                timeout=30,
                check=False,
            )
            assert shown.returncode == 0, shown.stderr
            heads = [line for line in shown.stdout.splitlines() if "  request req-" in line]
            assert len(heads) == 3
            assert all(line.endswith("  replica r1") for line in heads), heads

            wait_for(lambda: usage_by_replica(urls["r2"]) == {"r1": 3, "r2": 1}, "usage by replica")
            assert usage_by_replica(urls["r1"]) == {"r1": 3, "r2": 1}
        finally:
            procs.stop_all()
    for name in urls:
        assert "Traceback" not in procs.log(name), procs.log(name)
