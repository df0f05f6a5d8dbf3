"""``laneway signals`` as its own process, reading the store a config names: while a real gateway
runs in front of a rate-limited sim, from records a ``Signals`` wrote with no server at all, and
against stores that are empty, unusable or hold a record it cannot read."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml

from laneway.cli.signals import format_ms, format_quota
from laneway.clock import SystemClock
from laneway.config.schema import SignalsConfig
from laneway.errors import UpstreamConnectError, classify
from laneway.gateway import GatewayOptions
from laneway.signals.headers import Quota
from laneway.signals.store import PREFIX, Signals
from laneway.storage import FileStore
from tests.conftest import CLIENT_KEY, OPENAI_KEY, RunningGateway

LANEWAY = [sys.executable, "-m", "laneway"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("LANEWAY_")}
HEADERS = [
    "BACKEND",
    "FAMILY",
    "STATUS",
    "REQUESTS",
    "TOKENS",
    "RESET",
    "P50",
    "P95",
    "TTFT P50",
    "AGE",
    "LAST ERROR",
]


def laneway(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*LANEWAY, *args], capture_output=True, text=True, timeout=60, check=False, env=ENV)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def table(stdout: str) -> list[dict[str, str]]:
    """The printed table as dicts, cut at the header's column starts (cells may hold spaces)."""
    header, *rows = stdout.rstrip("\n").splitlines()
    starts = [header.index(name) for name in HEADERS]
    bounds = [*zip(starts, [*starts[1:], None], strict=True)]
    return [{name: row[a:b].strip() for name, (a, b) in zip(HEADERS, bounds, strict=True)} for row in rows]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# --- a running gateway ----------------------------------------------------------------------------


def test_signals_of_a_running_gateway(gateway_factory: Any, sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(family="openai", api_key=OPENAI_KEY, ratelimit="openai", rpm=5, tpm=10_000)
    config = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "auth": {"keys": [{"name": "app", "key": CLIENT_KEY}]},
        "backends": {"oai": {"provider": "openai", "base_url": sim.url + "/v1", "api_key": OPENAI_KEY}},
        "signals": {"flush_interval": 0.05},  # persisted almost at once, by the gateway's own loop
    }
    config_file = write_config(tmp_path / "laneway.yaml", config)
    gw: RunningGateway = gateway_factory(
        config, {"openai": sim}, GatewayOptions(schedule=True, key_reload_interval=3600)
    )
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    # The gateway flushes in its own thread: wait, bounded, until the third call is on disk.
    deadline = time.monotonic() + 30
    while True:
        body = json.loads(ok(laneway("signals", "-c", str(config_file), "--json")))
        shown = {s["backend"]: s for s in body["signals"]}
        if "oai" in shown and shown["oai"]["requests"]["remaining"] == 2:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    assert body["where"] == str(tmp_path / "data" / "cache")
    oai = shown["oai"]
    assert oai["status"] == "available"
    assert oai["requests"]["limit"] == 5
    limiter = sim.app.limiter
    assert oai["tokens"]["remaining"] == 10_000 - limiter.input_tokens - limiter.output_tokens
    assert oai["latency"]["samples"] == 3
    assert 0 < oai["requests"]["reset_in"] <= 60

    (row,) = table(ok(laneway("signals", "-c", str(config_file))))
    assert row["BACKEND"] == "oai"
    assert row["FAMILY"] == "openai"
    assert row["STATUS"] == "available"
    assert row["REQUESTS"] == "2/5"
    assert row["TOKENS"] == f"{oai['tokens']['remaining']}/10000"
    assert row["RESET"].endswith("s")
    assert row["P50"].endswith("ms")
    assert row["TTFT P50"] == "-"  # nothing was streamed
    assert row["LAST ERROR"] == "-"

    filtered = ok(laneway("signals", "-c", str(config_file), "--backend", "nope"))
    assert filtered.strip() == "no signals recorded for backend 'nope' (recorded: oai)"


# --- records without a server ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_signals_written_by_a_gateway_that_is_gone(tmp_path: Path) -> None:
    clock = SystemClock()
    signals = Signals(FileStore(tmp_path / "data" / "cache", clock), clock, SignalsConfig())
    spent = {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "5m0s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "9000",
        "x-ratelimit-reset-tokens": "12s",
    }
    lane = "cloud:openai:oai:chat:gpt-4o-mini"
    signals.success("oai", "openai", lane, spent, 0.120)
    signals.first_byte("oai", lane, 0.0042)
    refused = "cannot connect to http://127.0.0.1:11434: connection refused " + "x" * 80
    unreachable = UpstreamConnectError(refused, backend="gpu-1")
    signals.failure("gpu-1", "ollama", None, unreachable, classify(unreachable, now=clock.now()))
    assert await signals.flush() == 2
    config_file = write_config(tmp_path / "laneway.yaml", {"storage": {"data_dir": str(tmp_path / "data")}})

    rows = {r["BACKEND"]: r for r in table(ok(laneway("signals", "-c", str(config_file))))}
    assert list(rows) == ["gpu-1", "oai"]
    oai, gpu = rows["oai"], rows["gpu-1"]
    assert oai["STATUS"] == "exhausted"
    assert oai["REQUESTS"] == "0/5"
    assert oai["TOKENS"] == "9000/10000"
    assert oai["RESET"].startswith("4m5")  # exhausted: until the requests counter refills (5m0s)
    assert (oai["P50"], oai["P95"], oai["TTFT P50"]) == ("120ms", "120ms", "4.2ms")
    assert gpu["STATUS"] == "degraded"
    assert gpu["REQUESTS"] == gpu["RESET"] == gpu["P50"] == "-"
    assert gpu["LAST ERROR"].startswith("cannot connect to http://127.0.0.1:11434")
    assert gpu["LAST ERROR"].endswith("…")
    assert len(gpu["LAST ERROR"]) == 48

    body = json.loads(ok(laneway("signals", "-c", str(config_file), "--json", "--backend", "gpu-1")))
    assert [s["backend"] for s in body["signals"]] == ["gpu-1"]
    assert body["signals"][0]["last_error"] == refused  # whole, unlike the table


def test_a_status_goes_unknown_when_the_record_is_older_than_the_ttl(tmp_path: Path) -> None:
    """The status is worked out at the CLI's clock, not copied from when it was written."""
    store = FileStore(tmp_path / "data" / "cache", SystemClock())
    old = time.time() - 120
    record = {"backend": "oai", "family": "openai", "last_success_at": old, "recorded_at": old}
    asyncio.run(store.set(PREFIX + "oai", orjson.dumps(record)))
    config = {"storage": {"data_dir": str(tmp_path / "data")}, "signals": {"ttl": 60}}
    config_file = write_config(tmp_path / "laneway.yaml", config)
    (row,) = table(ok(laneway("signals", "-c", str(config_file))))
    assert row["STATUS"] == "unknown"
    assert row["AGE"].startswith("2m0")


# --- empty, unusable, unreadable ------------------------------------------------------------------


def test_no_signals_yet_is_a_hint_not_an_error(tmp_path: Path) -> None:
    config_file = write_config(tmp_path / "laneway.yaml", {"storage": {"data_dir": str(tmp_path / "data")}})
    out = ok(laneway("signals", "-c", str(config_file)))
    assert out.strip() == (
        f"no signals recorded yet in {tmp_path / 'data' / 'cache'}; "
        "they appear after the gateway has served or probed a backend"
    )
    assert json.loads(ok(laneway("signals", "-c", str(config_file), "--json")))["signals"] == []


def test_an_unusable_store_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    config_file = write_config(tmp_path / "laneway.yaml", {"storage": {"data_dir": str(blocker)}})
    done = laneway("signals", "-c", str(config_file))
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"Error: cannot use the runtime store directory {blocker / 'cache'}: ")


def test_an_unreadable_record_is_skipped_and_said(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data" / "cache", SystemClock())
    asyncio.run(store.set(PREFIX + "torn", b"{not json"))
    asyncio.run(store.set(PREFIX + "oai", b'{"backend": "oai", "family": "openai"}'))
    config_file = write_config(tmp_path / "laneway.yaml", {"storage": {"data_dir": str(tmp_path / "data")}})
    done = laneway("signals", "-c", str(config_file))
    assert done.returncode == 0
    assert done.stderr.strip() == "skipped 1 unreadable signal record(s)"
    (row,) = table(done.stdout)
    assert (row["BACKEND"], row["STATUS"], row["REQUESTS"], row["AGE"]) == ("oai", "unknown", "-", "-")


# --- pure helpers ---------------------------------------------------------------------------------


def test_cell_formats() -> None:
    assert format_quota(None) == "-"
    assert format_quota(Quota()) == "-"
    assert format_quota(Quota(limit=5, remaining=2)) == "2/5"
    assert format_quota(Quota(remaining=0)) == "0/?"
    assert format_ms(None) == "-"
    assert format_ms(0.0042) == "4.2ms"
    assert format_ms(1.5) == "1500ms"


# --- instances apart by default ---------------------------------------------------------------------


def test_two_configs_without_a_data_dir_keep_their_state_apart(
    sim_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither config sets storage.data_dir, and both files are called laneway.yaml: each instance
    still gets a folder of its own, and ``signals -c B`` does not list A's backends."""
    from laneway.api.app import GatewayApp
    from laneway.config import load_settings
    from laneway.gateway import Gateway
    from laneway.testing import ServerThread

    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    env = {**ENV, "XDG_DATA_HOME": str(xdg)}
    sim = sim_factory(family="ollama")
    auth = {"keys": [{"name": "app", "key": CLIENT_KEY}]}
    a, b = tmp_path / "a" / "laneway.yaml", tmp_path / "b" / "laneway.yaml"
    for path, name in ((a, "gpu-a"), (b, "gpu-b")):
        path.parent.mkdir()
        write_config(path, {"auth": auth, "backends": {name: {"provider": "ollama", "base_url": sim.url}}})
    dir_a, dir_b = load_settings(a).storage.data_dir, load_settings(b).storage.data_dir
    assert dir_a != dir_b
    assert Path(dir_a).parent == Path(dir_b).parent == xdg / "laneway"
    assert load_settings(a).storage.data_dir == dir_a  # the same file, the same folder, every time

    caplog.set_level("INFO", logger="laneway")
    options = GatewayOptions(schedule=False, key_reload_interval=3600)
    server = ServerThread(GatewayApp(lambda: Gateway.open(load_settings(a), options=options)))
    url = server.start()
    try:
        with openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
            client.chat.completions.create(model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}])
    finally:
        server.stop()  # the gateway's shutdown persists its signals
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data_dir ")]
    assert said == [f"data_dir {dir_a} (derived from the config file; set storage.data_dir to choose)"]

    def signals(config: Path) -> dict[str, Any]:
        done = subprocess.run(
            [*LANEWAY, "signals", "-c", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=env,
        )
        body: dict[str, Any] = json.loads(done.stdout)
        return body

    mine, theirs = signals(a), signals(b)
    assert [s["backend"] for s in mine["signals"]] == ["gpu-a"]
    assert mine["where"] == str(Path(dir_a) / "cache")
    assert theirs["signals"] == []
    assert theirs["where"] == str(Path(dir_b) / "cache")


def test_a_database_left_in_the_shared_folder_is_pointed_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An instance upgraded from when every instance shared ~/.local/share/laneway is told where
    its old database is and how to keep using it, instead of silently starting empty."""
    from laneway.config import load_settings
    from laneway.gateway import log_storage

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    config = write_config(tmp_path / "laneway.yaml", {})
    caplog.set_level("INFO", logger="laneway")
    log_storage(load_settings(config))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]

    legacy = tmp_path / "xdg" / "laneway" / "laneway.db"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"")
    log_storage(load_settings(config))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"a database of an earlier laneway is at {legacy}" in warning
    assert f"set storage.data_dir: {legacy.parent} to keep using it" in warning

    caplog.clear()
    chosen = write_config(tmp_path / "chosen.yaml", {"storage": {"data_dir": str(tmp_path / "mine")}})
    log_storage(load_settings(chosen))  # a data_dir the operator chose: nothing to point at
    assert [r.getMessage() for r in caplog.records] == [f"data_dir {tmp_path / 'mine'} (storage.data_dir)"]
