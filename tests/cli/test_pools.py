"""``laneway pools`` and ``laneway failovers`` against a real running gateway's admin API, each run as
its own process; and their pure helpers directly.

The gateway fronts three simulated upstreams: ``bad`` answers every call with a 500 and ``good``
serves, both behind the route ``r`` (so a request to ``r`` fails over from one to the other), and
``slow`` has one slot and takes a minute to answer, so a request held open over a raw socket keeps
the slot while a second one waits."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest

from laneway.cli.failovers import record_lines, status_code
from laneway.cli.pools import format_wait, top_callers
from tests.cli.test_admin import ADMIN_KEY, _closed_port, admin, laneway, ok, refused
from tests.conftest import CLIENT_KEY, OPENAI_KEY, RunningGateway, Sim

BAD_LANE = "cloud:openai:bad:chat:gpt-4o-mini"
GOOD_LANE = "cloud:openai:good:chat:gpt-4o-mini"
POOL_HEADERS = [
    "POOL",
    "SLOTS",
    "ACTIVE",
    "QUEUED",
    "WAIT P50",
    "WAIT P95",
    "SERVED",
    "REJECTED",
    "TIMED OUT",
    "CANCELLED",
    "TOP QUEUED",
    "REPLICAS",
]


@pytest.fixture
def gw(gateway_factory: Any, sim_factory: Any) -> RunningGateway:
    sims: dict[str, Sim] = {
        "bad": sim_factory(family="openai", api_key=OPENAI_KEY, fail_status=500),
        "good": sim_factory(family="openai", api_key=OPENAI_KEY),
        "slow": sim_factory(family="openai", api_key=OPENAI_KEY, models=["slow-model"], latency=60),
    }
    backends: dict[str, dict[str, Any]] = {
        name: {"provider": "openai", "base_url": sim.url + "/v1", "api_key": OPENAI_KEY}
        for name, sim in sims.items()
    }
    backends["slow"]["slots"] = 1
    config = {
        "auth": {
            "keys": [{"name": "ops", "key": ADMIN_KEY, "admin": True}, {"name": "app", "key": CLIENT_KEY}]
        },
        "backends": backends,
        "routes": {"r": ["bad/*", "good/*"]},
    }
    running: RunningGateway = gateway_factory(config, sims)
    return running


def fail_over(gw: RunningGateway, request_id: str, run_id: str = "run-42") -> None:
    """One request to ``r``: ``bad`` fails it, ``good`` serves it."""
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="r",
            messages=[{"role": "user", "content": "fail over"}],
            extra_headers={"x-request-id": request_id, "x-laneway-run-id": run_id},
        )
    assert reply.choices[0].message.content


@contextmanager
def held(gw: RunningGateway) -> Iterator[None]:
    """A request to ``slow`` sent over a raw socket: it holds (or waits for) a slot until the block
    ends and the connection closes, which the gateway sees as the client leaving."""
    host, port = gw.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "slow-model", "messages": [{"role": "user", "content": "hold"}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {gw.key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + body)
        yield


def pools_json(gw: RunningGateway) -> dict[str, dict[str, Any]]:
    body = json.loads(ok(admin(gw, "pools", "--json")))
    return {p["name"]: p for p in body["pools"]}


def wait_for(gw: RunningGateway, pool: str, **wanted: int) -> dict[str, Any]:
    """Ask ``laneway pools --json`` until ``pool`` shows ``wanted``: bounded by a number of asks."""
    shown: dict[str, Any] = {}
    for _ in range(100):
        shown = pools_json(gw).get(pool, {})
        if all(shown.get(k) == v for k, v in wanted.items()):
            return shown
        time.sleep(0.05)
    raise AssertionError(f"pool {pool} never showed {wanted}: {shown}")


def table(stdout: str) -> list[dict[str, str]]:
    """The rows of a printed table, by header. Headers may hold a space (WAIT P50), so cells are cut
    at the headers' positions rather than split on blanks."""
    header, *rows = stdout.rstrip("\n").splitlines()
    starts = [header.index(name) for name in POOL_HEADERS]
    ends = [*starts[1:], None]
    return [
        {name: row[start:end].strip() for name, start, end in zip(POOL_HEADERS, starts, ends, strict=True)}
        for row in rows
    ]


# --- pools ----------------------------------------------------------------------------------------


def test_pools_before_any_request(gw: RunningGateway) -> None:
    assert "the gateway has no pools yet" in ok(admin(gw, "pools"))
    body = json.loads(ok(admin(gw, "pools", "--json")))
    assert body["pools"] == []
    assert "now" in body


def test_pools_table_shows_the_slot_holder_and_who_waits(gw: RunningGateway) -> None:
    fail_over(gw, "req-pools")
    with held(gw):
        wait_for(gw, "slow", active=1)
        with held(gw):
            wait_for(gw, "slow", queued=1)
            out = ok(admin(gw, "pools"))
        wait_for(gw, "slow", queued=0, cancelled=1)
    wait_for(gw, "slow", active=0)

    assert out.splitlines()[0].split("  ")[0] == "POOL"
    rows = {row["POOL"]: row for row in table(out)}
    assert list(rows) == ["bad", "good", "slow"]
    assert rows["slow"] == {
        "POOL": "slow",
        "SLOTS": "1",
        "ACTIVE": "1",
        "QUEUED": "1",
        "WAIT P50": "0.0ms",
        "WAIT P95": "0.0ms",
        "SERVED": "1",
        "REJECTED": "0",
        "TIMED OUT": "0",
        "CANCELLED": "0",
        "TOP QUEUED": "app=1",
        "REPLICAS": "-",  # this replica's own pool (cluster mode: who holds and queues what)
    }
    for name in ("bad", "good"):  # the request to r went through both, one attempt each
        assert (rows[name]["SLOTS"], rows[name]["ACTIVE"], rows[name]["SERVED"]) == ("64", "0", "1")
        assert rows[name]["TOP QUEUED"] == "-"


def test_pools_json_is_the_gateways_answer(gw: RunningGateway) -> None:
    fail_over(gw, "req-json")
    pools = pools_json(gw)
    assert sorted(pools) == ["bad", "good"]
    assert pools["good"]["served"] == 1
    assert pools["good"]["queued_by_caller"] == {}
    assert set(pools["good"]) == {
        "name",
        "slots",
        "active",
        "queued",
        "queued_by_caller",
        "wait_p50",
        "wait_p95",
        "served",
        "rejected",
        "timed_out",
        "cancelled",
        "scope",
        "active_here",
        "queued_here",
    }
    assert pools["good"]["scope"] == "replica"


def test_pools_watch_draws_until_its_count(gw: RunningGateway) -> None:
    fail_over(gw, "req-watch")
    out = ok(admin(gw, "pools", "--watch", "--interval", "0.1", "--count", "2"))
    stamps = [line for line in out.splitlines() if "/admin/pools" in line]
    assert len(stamps) == 2
    assert all(line.endswith("(2 pools; Ctrl-C to stop)") for line in stamps)
    assert sum(line.startswith("POOL ") for line in out.splitlines()) == 2

    out = ok(admin(gw, "pools", "--watch", "--json", "--interval", "0.1", "--count", "2"))
    draws = [json.loads(line) for line in out.splitlines()]
    assert len(draws) == 2
    assert all("at" in d and len(d["pools"]) == 2 for d in draws)


# --- failovers ------------------------------------------------------------------------------------


def test_failovers_show_each_attempt(gw: RunningGateway) -> None:
    assert "no failover records" in ok(admin(gw, "failovers"))
    fail_over(gw, "req-failover-1")

    lines = ok(admin(gw, "failovers")).splitlines()
    assert len(lines) == 5, lines  # the record's two lines, the attempts' header and two attempts
    assert "request req-failover-1  run run-42  caller app" in lines[0]
    assert lines[0].endswith(f"  replica {gw.gateway.replicas.id}")  # which replica handled it
    assert lines[0].split("  ")[0].endswith("s ago)")
    assert lines[1] == f"  requested r (chat)  outcome served  served by {GOOD_LANE}"
    assert lines[2].split() == ["#", "LANE", "OUTCOME", "STATUS", "QUEUED", "ELAPSED", "ERROR"]
    first, second = lines[3].split(), lines[4].split()
    assert first[:4] == ["1", BAD_LANE, "failed", "500/bad_gateway"]
    assert "500" in " ".join(first[6:])  # the upstream's words
    assert second[:4] == ["2", GOOD_LANE, "served", "-"]
    assert second[6:] == ["-"]  # no error
    assert all(cell.endswith(("ms", "s")) for cell in first[4:6] + second[4:6])


def test_failovers_json_and_limit(gw: RunningGateway) -> None:
    fail_over(gw, "req-older")
    fail_over(gw, "req-newer", run_id="run-43")

    body = json.loads(ok(admin(gw, "failovers", "--json")))
    assert body["kept"] == 2
    assert (body["source"], body["degraded"]) == ("database", None)
    assert {r["replica"] for r in body["failovers"]} == {gw.gateway.replicas.id}
    newest, oldest = body["failovers"]
    assert (newest["request_id"], newest["run_id"]) == ("req-newer", "run-43")
    assert oldest["request_id"] == "req-older"
    assert [a["outcome"] for a in newest["attempts"]] == ["failed", "served"]
    assert [a["lane"] for a in newest["attempts"]] == [BAD_LANE, GOOD_LANE]
    assert newest["attempts"][0]["status"] == 500
    assert (newest["outcome"], newest["served_by"]) == ("served", GOOD_LANE)
    assert "prompt" not in newest  # routing.record_prompts is off

    out = ok(admin(gw, "failovers", "--limit", "1"))
    assert "req-newer" in out
    assert "req-older" not in out
    assert out.rstrip().endswith("1 of 2 kept records shown; pass --limit to see more")
    assert len(json.loads(ok(admin(gw, "failovers", "--limit", "1", "--json")))["failovers"]) == 1

    done = admin(gw, "failovers", "--limit", "0")
    assert done.returncode == 2
    assert "--limit" in done.stderr


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [("pools",), ("pools", "--json"), ("failovers",), ("failovers", "--json")]
)
def test_a_non_admin_key_is_told_what_to_pass(gw: RunningGateway, command: tuple[str, ...]) -> None:
    line = refused(admin(gw, *command, key=CLIENT_KEY))
    assert "may not use the admin API" in line
    assert "(HTTP 403)" in line
    assert line.endswith("pass an admin key with --key or LANEWAY_ADMIN_KEY")


def test_no_key_is_told_what_to_pass(gw: RunningGateway) -> None:
    for command in ("pools", "failovers"):
        line = refused(laneway(command, "--url", gw.url))
        assert "(HTTP 401)" in line


@pytest.mark.parametrize("command", [("pools",), ("pools", "--watch"), ("failovers",)])
def test_an_unreachable_gateway_is_one_line(command: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    line = refused(laneway(*command, "--url", url, "--key", ADMIN_KEY))
    assert line.startswith(f"Error: cannot reach the gateway at {url}: ")


def test_both_commands_are_listed() -> None:
    out = ok(laneway("--help"))
    assert "  pools " in out
    assert "  failovers " in out


# --- pure helpers ---------------------------------------------------------------------------------


def test_format_wait() -> None:
    assert format_wait(None) == "-"
    assert format_wait(0) == "0.0ms"
    assert format_wait(0.0042) == "4.2ms"
    assert format_wait(0.42) == "420ms"
    assert format_wait(3.25) == "3.2s"
    assert format_wait(65) == "1m05s"


def test_top_callers() -> None:
    assert top_callers({}) == "-"
    assert top_callers({"app": 2}) == "app=2"
    assert top_callers({"b": 1, "a": 1, "flood": 40}) == "flood=40,a=1,b=1"
    assert top_callers({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}) == "e=5,d=4,c=3,+2 more"


def test_status_code() -> None:
    assert status_code({"status": 500, "code": "bad_gateway"}) == "500/bad_gateway"
    assert status_code({"status": None, "code": "queue_full"}) == "queue_full"
    assert status_code({"status": None, "code": None}) == "-"


def test_a_record_with_a_skipped_lane_and_a_prompt() -> None:
    record = {
        "request_id": "req-1",
        "run_id": None,
        "caller": "app",
        "requested": "r",
        "operation": "chat",
        "started_at": 1000.0,
        "attempts": [
            {
                "attempt": 0,
                "lane": BAD_LANE,
                "backend": "bad",
                "outcome": "skipped",
                "error": "breaker open",
                "code": None,
                "status": None,
                "queued": 0.0,
                "elapsed": 0.0,
            },
            {
                "attempt": 1,
                "lane": GOOD_LANE,
                "backend": "good",
                "outcome": "failed",
                "error": "upstream said\nno",
                "code": "upstream_timeout",
                "status": None,
                "queued": 1.5,
                "elapsed": 30.0,
            },
        ],
        "outcome": "failed",
        "served_by": None,
        "prompt": [{"role": "user", "content": "x" * 500}],
    }
    lines = record_lines(record, now=1012.0)
    assert lines[0].endswith("(12s ago)  request req-1  run -  caller app")
    assert lines[1] == "  requested r (chat)  outcome failed  served by -"
    assert lines[3].split() == ["0", BAD_LANE, "skipped", "-", "0.0ms", "0.0ms", "breaker", "open"]
    assert lines[4].split()[2:] == ["failed", "upstream_timeout", "1.5s", "30.0s", "upstream", "said", "no"]
    assert lines[5].startswith('  prompt [{"role":"user","content":"xxx')
    assert lines[5].endswith("…")
    assert len(lines[5]) == len("  prompt ") + 200
