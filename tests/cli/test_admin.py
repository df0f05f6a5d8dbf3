"""The operator's commands against a real running gateway's admin API: ``laneway lanes``,
``refresh``, ``backends`` (status) and ``cache``, each run as its own process; and their pure
helpers directly."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from laneway.cli.admin import GatewayUnreachable, normalize_url, url_from_config
from laneway.cli.common import format_age, format_duration, format_remaining
from laneway.cli.lanes import _watch, lane_changes, lane_filters
from tests.conftest import CLIENT_KEY, RunningGateway, Sim, three_family_config

ADMIN_KEY = "lw-test-admin-key"
LANEWAY = [sys.executable, "-m", "laneway"]
# The commands' own environment, so a LANEWAY_URL or LANEWAY_ADMIN_KEY of the shell running the
# tests cannot stand in for what a test passes.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("LANEWAY_")}


@pytest.fixture
def gw(gateway_factory: Any, three_sims: dict[str, Sim], tmp_path: Path) -> RunningGateway:
    """A gateway in front of one sim per family, with an admin key and a client key."""
    config = three_family_config(three_sims, tmp_path / "gw")
    config["auth"] = {
        "keys": [{"name": "ops", "key": ADMIN_KEY, "admin": True}, {"name": "app", "key": CLIENT_KEY}]
    }
    running: RunningGateway = gateway_factory(config, three_sims)
    return running


def laneway(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*LANEWAY, *args], capture_output=True, text=True, timeout=timeout, check=False, env=ENV
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def admin(gw: RunningGateway, *args: str, key: str = ADMIN_KEY) -> subprocess.CompletedProcess[str]:
    return laneway(*args, "--url", gw.url, "--key", key)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command says, with exit status 1."""
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def column(stdout: str, name: str) -> list[str]:
    """One column of a printed table (cells hold no spaces in these tests)."""
    header, *rows = stdout.strip().splitlines()
    index = header.split().index(name)
    return [row.split()[index] for row in rows]


# --- lanes ----------------------------------------------------------------------------------------


def test_lanes_shows_every_sims_models(gw: RunningGateway) -> None:
    out = ok(admin(gw, "lanes"))
    assert out.splitlines()[0].split() == [
        "BACKEND",
        "MODEL",
        "TYPE",
        "TIER",
        "HEALTH",
        "WEIGHT",
        "CONTEXT",
        "LOADED",
        "EXPIRES",
    ]
    for sim in gw.sims.values():
        for model in sim.options.models:
            assert model in column(out, "MODEL")
    assert set(column(out, "BACKEND")) == {"gpu-1", "oai", "claude"}
    assert set(column(out, "HEALTH")) == {"healthy"}
    assert all(cell.endswith(("s", "m")) for cell in column(out, "EXPIRES"))


def test_lanes_filters(gw: RunningGateway) -> None:
    out = ok(admin(gw, "lanes", "--backend", "gpu-1"))
    assert set(column(out, "BACKEND")) == {"gpu-1"}
    assert set(column(out, "MODEL")) == {"llama3.2:3b", "nomic-embed-text:latest"}

    out = ok(admin(gw, "lanes", "--where", "capabilities=embedding"))
    assert sorted(column(out, "MODEL")) == ["nomic-embed-text:latest", "text-embedding-3-small"]
    assert set(column(out, "TYPE")) == {"embedding"}

    out = ok(admin(gw, "lanes", "--tier", "frontier", "--type", "chat", "--wide"))
    assert column(out, "ID") == [
        "frontier:anthropic:claude:chat:claude-haiku-4-5",
        "frontier:anthropic:claude:chat:claude-sonnet-4-6",
    ]
    assert ok(admin(gw, "lanes", "--backend", "nope")).strip() == "no lanes match"


def test_lanes_filter_mistakes_are_one_line(gw: RunningGateway) -> None:
    line = refused(admin(gw, "lanes", "--where", "colour=red"))
    assert "Unknown lane field 'colour'" in line
    assert "(HTTP 400)" in line
    done = admin(gw, "lanes", "--where", "colour")
    assert done.returncode == 2
    assert "'colour' is not FIELD=VALUE" in done.stderr


def test_lanes_json_is_the_gateways_answer(gw: RunningGateway) -> None:
    body = json.loads(ok(admin(gw, "lanes", "--json", "--backend", "oai")))
    assert body["count"] == len(body["lanes"]) == 3
    assert {lane["model"] for lane in body["lanes"]} == {"gpt-4o-mini", "text-embedding-3-small"}
    assert all(lane["id"].startswith("cloud:openai:oai:") for lane in body["lanes"])


class Watch:
    """``laneway lanes --watch --step`` as a running process: each line written to its stdin
    draws once more, so a test changes the inventory between two draws without racing a timer.
    Output is read by a thread, so every wait on it is bounded."""

    def __init__(self, gw: RunningGateway, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*LANEWAY, "lanes", "--watch", "--step", *args, "--url", gw.url, "--key", ADMIN_KEY],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            line = self.lines.get(timeout=30)
            assert line is not None, "the watch ended early"
            out.append(line)
        return out

    def rest(self) -> list[str]:
        out = []
        while (line := self.lines.get(timeout=30)) is not None:
            out.append(line)
        return out

    def finish(self) -> tuple[int, str]:
        self.proc.wait(timeout=30)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()


@pytest.fixture
def watch(gw: RunningGateway) -> Iterator[list[Watch]]:
    started: list[Watch] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def test_watch_shows_a_model_added_between_draws(gw: RunningGateway, watch: list[Watch]) -> None:
    lanes_before = len(gw.gateway.inventory)
    w = Watch(gw, "--count", "2")
    watch.append(w)
    first = w.read(2 + lanes_before)  # stamp, table header, one row per lane
    assert f"({lanes_before} lanes;" in first[0]
    assert not any(line.startswith("+ ") for line in first)

    gw.sims["ollama"].options.models.append("llama3.2:1b")
    assert "ok" in ok(admin(gw, "refresh", "gpu-1"))
    assert w.proc.stdin is not None
    w.proc.stdin.write("\n")
    w.proc.stdin.flush()

    second = w.rest()
    code, stderr = w.finish()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    stamps = [line for line in first + second if "/admin/lanes" in line]
    assert len(stamps) == 2
    assert f"({lanes_before + 2} lanes;" in stamps[1]  # the model's chat and completion lanes
    assert "+ gpu-1/llama3.2:1b (chat)" in second
    assert "+ gpu-1/llama3.2:1b (completion)" in second
    assert not any(line.startswith("- ") for line in second)


def test_watch_ends_quietly_on_ctrl_c(gw: RunningGateway, watch: list[Watch]) -> None:
    w = Watch(gw, "--backend", "claude")
    watch.append(w)
    w.read(2 + 2)  # the first draw is out: the watch waits for its next one
    w.proc.send_signal(signal.SIGINT)
    w.rest()
    code, stderr = w.finish()
    assert code == 0
    assert stderr == ""


# --- refresh --------------------------------------------------------------------------------------


def test_refresh_every_backend_and_one(gw: RunningGateway) -> None:
    listed = gw.sims["openai"].stats.requests_by_path["/v1/models"]
    out = ok(admin(gw, "refresh"))
    assert column(out, "BACKEND") == ["claude", "gpu-1", "oai"]
    assert column(out, "RESULT") == ["ok", "ok", "ok"]
    # An operator's refresh asks every upstream, though the gateway's start filled the cache.
    assert column(out, "SOURCE") == ["upstream", "upstream", "upstream"]
    assert gw.sims["openai"].stats.requests_by_path["/v1/models"] == listed + 1

    out = ok(admin(gw, "refresh", "--cached"))
    # Cloud and frontier lists may now come from the cache; Ollama's never.
    assert column(out, "SOURCE") == ["cache", "upstream", "cache"]
    assert gw.sims["openai"].stats.requests_by_path["/v1/models"] == listed + 1

    out = ok(admin(gw, "refresh", "oai", "--no-cache"))  # the old spelling of the default
    assert column(out, "BACKEND") == ["oai"]
    assert column(out, "SOURCE") == ["upstream"]
    assert column(out, "LANES") == ["3"]

    body = json.loads(ok(admin(gw, "refresh", "claude", "--json")))
    assert [st["name"] for st in body["backends"]] == ["claude"]


def test_refresh_of_an_unknown_backend_names_the_declared_ones(gw: RunningGateway) -> None:
    line = refused(admin(gw, "refresh", "nope"))
    assert "No backend named 'nope' (declared: claude, gpu-1, oai)" in line
    assert "(HTTP 404)" in line


def test_refresh_that_fails_exits_1_and_shows_the_cooldown(gw: RunningGateway) -> None:
    from tests.conftest import OPENAI_KEY

    gw.sims["openai"].options.forbidden_keys = [OPENAI_KEY]
    done = admin(gw, "refresh", "oai", "--no-cache")
    assert refused(done) == "Error: refresh failed for oai (1 of 1)"
    assert "answered 403" in done.stdout.splitlines()[1]
    assert column(done.stdout, "COOLDOWN")[0].endswith(("s", "m"))

    status = ok(admin(gw, "backends"))
    row = next(line for line in status.splitlines() if line.startswith("oai "))
    assert "Forbidden" in row
    assert set(column(ok(admin(gw, "lanes", "--backend", "oai")), "HEALTH")) == {"denied"}


# --- backends status ------------------------------------------------------------------------------


def test_bare_backends_is_status(gw: RunningGateway) -> None:
    out = ok(admin(gw, "backends"))
    assert out.splitlines()[0].split() == [
        "NAME",
        "PROVIDER",
        "TIER",
        "LANES",
        "LAST",
        "REFRESH",
        "SOURCE",
        "COOLDOWN",
        "ERROR",
    ]
    assert column(out, "NAME") == ["claude", "gpu-1", "oai"]
    assert column(out, "PROVIDER") == ["anthropic", "ollama", "openai"]
    assert column(out, "LANES") == ["2", "3", "3"]
    assert ok(admin(gw, "backends", "status")).splitlines()[0] == out.splitlines()[0]

    body = json.loads(ok(admin(gw, "backends", "--json")))
    assert {st["name"]: st["last_error"] for st in body["backends"]} == {
        "claude": None,
        "gpu-1": None,
        "oai": None,
    }


def test_backends_help_still_lists_the_sub_commands() -> None:
    out = ok(laneway("backends", "--help"))
    for sub in ("status", "list", "add", "remove"):
        assert f"  {sub} " in out


# --- cache ----------------------------------------------------------------------------------------


def test_cache_list_and_clear(gw: RunningGateway) -> None:
    out = ok(admin(gw, "cache", "list"))
    assert column(out, "BACKEND") == ["claude", "oai"]  # the gateway's start cached both
    assert column(out, "MODELS") == ["2", "2"]
    assert json.loads(ok(admin(gw, "cache", "list", "--json")))["ttl"] == 3600

    assert (
        ok(admin(gw, "cache", "clear", "oai")).strip() == "invalidated 1 cached model list of backend 'oai'"
    )
    assert column(ok(admin(gw, "cache", "list")), "BACKEND") == ["claude"]
    assert ok(admin(gw, "cache", "clear")).strip() == "invalidated 1 cached model list"
    assert "cache is empty" in ok(admin(gw, "cache", "list"))
    assert ok(admin(gw, "cache", "clear")).strip() == "invalidated 0 cached model lists"

    # The next refresh asks the provider, and caches its answer again.
    assert column(ok(admin(gw, "refresh", "oai")), "SOURCE") == ["upstream"]
    assert column(ok(admin(gw, "cache", "list")), "BACKEND") == ["oai"]


# --- keys, addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("lanes",), ("refresh",), ("backends",), ("cache", "clear")])
def test_a_non_admin_key_is_told_what_to_pass(gw: RunningGateway, command: tuple[str, ...]) -> None:
    line = refused(admin(gw, *command, key=CLIENT_KEY))
    assert "may not use the admin API" in line
    assert "(HTTP 403)" in line
    assert line.endswith("pass an admin key with --key or LANEWAY_ADMIN_KEY")


def test_no_key_at_all_is_told_what_to_pass(gw: RunningGateway) -> None:
    line = refused(laneway("lanes", "--url", gw.url))
    assert "(HTTP 401)" in line
    assert line.endswith("pass an admin key with --key or LANEWAY_ADMIN_KEY")


def test_the_url_comes_from_the_config_when_not_given(gw: RunningGateway, tmp_path: Path) -> None:
    config = tmp_path / "laneway.yaml"
    port = int(gw.url.rsplit(":", 1)[1])
    config.write_text(yaml.safe_dump({"server": {"host": "0.0.0.0", "port": port}}))
    out = ok(laneway("backends", "--config", str(config), "--key", ADMIN_KEY))
    assert column(out, "NAME") == ["claude", "gpu-1", "oai"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("command", [("lanes",), ("refresh",), ("backends", "status"), ("cache", "list")])
def test_an_unreachable_gateway_is_one_line(command: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    line = refused(laneway(*command, "--url", url, "--key", ADMIN_KEY))
    assert line.startswith(f"Error: cannot reach the gateway at {url}: ")
    assert line.endswith("is `laneway serve` running? (pass --url or set LANEWAY_URL)")


def test_a_gateway_that_never_answers_times_out() -> None:
    with socket.socket() as sock:  # listens, never accepts: the request is sent, no answer comes
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        line = refused(laneway("refresh", "--url", url, "--timeout", "0.2"))
    assert line == (
        f"Error: the gateway at {url} did not answer within 0.2s "
        "(a refresh waits for the slowest backend; pass --timeout to wait longer)"
    )


# --- pure helpers ---------------------------------------------------------------------------------


def _lane(model: str, backend: str = "gpu-1", type: str = "chat", **fields: Any) -> dict[str, Any]:
    lane = {
        "id": f"local:ollama:{backend}:{type}:{model}",
        "backend": backend,
        "model": model,
        "type": type,
        "tier": "local",
        "health": "healthy",
        "weight": 100.0,
        "loaded": None,
        "context_length": 8192,
        "capabilities": [],
        "expires_at": 1000.0,
    }
    return {**lane, **fields}


def test_lane_changes() -> None:
    a, b, c = _lane("a"), _lane("b"), _lane("c", type="embedding")
    assert lane_changes([a, b], [a, b]) == []
    assert lane_changes([a, b], [b, c]) == ["- gpu-1/a (chat)", "+ gpu-1/c (embedding)"]
    assert lane_changes([], [a]) == ["+ gpu-1/a (chat)"]
    # A refresh moves the expiry of every lane; that is not a change.
    assert lane_changes([a], [{**a, "expires_at": 2000.0, "observed_at": 1.0}]) == []
    opened = {**a, "health": "open", "weight": 0.0, "loaded": True}
    assert lane_changes([a], [opened]) == [
        "~ gpu-1/a (chat): health healthy -> open, weight 100 -> 0, loaded - -> yes"
    ]


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(44.9) == "44s"
    assert format_duration(60) == "1m00s"
    assert format_duration(192) == "3m12s"
    assert format_duration(2 * 3600 + 5 * 60 + 59) == "2h05m"
    assert format_duration(3 * 86400 + 4 * 3600) == "3d04h"
    assert format_duration(-5) == "0s"


def test_format_age_and_remaining() -> None:
    assert format_age(None, 100.0) == "never"
    assert format_age(88.0, 100.0) == "12s ago"
    assert format_age(101.0, 100.0) == "0s ago"  # the gateway's clock is a little ahead of ours
    assert format_remaining(None, 100.0) == "-"
    assert format_remaining(144.0, 100.0) == "44s"
    assert format_remaining(99.0, 100.0) == "-"
    assert format_remaining(99.0, 100.0, past="expired") == "expired"


def test_lane_filters() -> None:
    named = {"backend": "gpu-1", "model": None}
    assert lane_filters(named, []) == {"backend": "gpu-1"}
    assert lane_filters(named, ["capabilities=embedding", "id=a=b"]) == {
        "backend": "gpu-1",
        "capabilities": "embedding",
        "id": "a=b",
    }
    assert lane_filters(named, ["backend=gpu-1"]) == {"backend": "gpu-1"}
    with pytest.raises(click.BadParameter, match="given twice"):
        lane_filters(named, ["backend=oai"])
    with pytest.raises(click.BadParameter, match="not FIELD=VALUE"):
        lane_filters(named, ["=x"])


def test_gateway_urls() -> None:
    assert url_from_config("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert url_from_config("::", 8080) == "http://127.0.0.1:8080"
    assert url_from_config("::1", 9000) == "http://[::1]:9000"
    assert url_from_config("gw.internal", 80) == "http://gw.internal:80"
    assert normalize_url("gw.internal:8080/") == "http://gw.internal:8080"
    assert normalize_url("https://gw.example/") == "https://gw.example"


def test_a_watch_outlives_a_gateway_restart(capsys: pytest.CaptureFixture[str]) -> None:
    """After the first draw, a gateway that cannot be reached is reported and asked again."""
    answers: list[dict[str, Any] | None] = [
        {"lanes": [_lane("a")], "count": 1},
        None,
        {"lanes": [_lane("a"), _lane("b")], "count": 2},
    ]

    def fetch() -> dict[str, Any]:
        answer = answers.pop(0)
        if answer is None:
            raise GatewayUnreachable("cannot reach the gateway at http://gw: refused")
        return answer

    _watch(fetch, lambda: True, header="gw", count=3, as_json=False, wide=False)
    out = capsys.readouterr().out
    assert "! cannot reach the gateway at http://gw: refused" in out
    assert "(unreachable; Ctrl-C to stop)" in out
    assert out.rstrip().endswith("+ gpu-1/b (chat)")  # compared with the last draw that answered


def test_a_watch_that_cannot_start_is_an_error() -> None:
    def fetch() -> dict[str, Any]:
        raise GatewayUnreachable("cannot reach the gateway at http://gw: refused")

    with pytest.raises(GatewayUnreachable):
        _watch(fetch, lambda: True, header="gw", count=3, as_json=False, wide=False)


def test_a_json_watch_prints_one_line_per_draw(capsys: pytest.CaptureFixture[str]) -> None:
    answers = [{"lanes": [], "count": 0}, {"lanes": [_lane("a")], "count": 1}]
    _watch(lambda: answers.pop(0), lambda: True, header="gw", count=2, as_json=True, wide=False)
    draws = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["count"] for d in draws] == [0, 1]
    assert all("at" in d for d in draws)
