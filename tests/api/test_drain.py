"""SIGTERM drains ``laneway serve``: requests in flight finish, relayed ones (served by a
``laneway publish`` over its control stream) included, while new ones get 503 at once; then the
process exits 0. All of it as processes: the gateway and the publisher; the models are sims."""

from __future__ import annotations

import http.client
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.conftest import CLIENT_KEY, Sim
from tests.e2e.test_inventory import free_port
from tests.e2e.test_publish import Processes, get, health, wait_for

ADMIN = "lw-e2e-admin"  # the admin key tests.e2e.test_publish.health uses
TOKEN = "lw-drain-publish-token"
NAME = "drain-box"
HANG_GUARD = 30.0
REPLY = " ".join(f"word{i}" for i in range(20))  # 20 tokens
LONG_REPLY = " ".join(f"word{i}" for i in range(200))


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    yield p
    p.stop_all()


def serve(
    procs: Processes, tmp_path: Path, declared: Sim, **server: Any
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    config = {
        "server": {"port": port, **server},
        "storage": {"data_dir": str(tmp_path / "data")},
        "auth": {"keys": [{"name": "app", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN, "admin": True}]},
        "backends": {"gpu-1": {"provider": "ollama", "base_url": declared.url}},
        # join_declared: the publisher's sim serves gpu-1's embedding model too
        "publishers": {
            "tokens": [{"name": "drain", "token": TOKEN, "names": ["drain-*"], "join_declared": True}]
        },
    }
    (tmp_path / "laneway.yaml").write_text(yaml.safe_dump(config))
    proc = procs.start("serve", "serve", "-c", str(tmp_path / "laneway.yaml"))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(url + "/readyz")[0] == 200, "the gateway is ready")
    return url, proc


def publish(procs: Processes, tmp_path: Path, url: str, local: Sim) -> None:
    procs.start(
        "publish",
        "publish",
        "--gateway",
        url,
        "--token",
        TOKEN,
        "--backend",
        local.url,
        "--name",
        NAME,
        "--alias",
        "llama3.2:3b=team-llama",
        "--max-concurrency",
        "4",
        "--state-file",
        str(tmp_path / "publish-state.json"),
    )
    wait_for(
        lambda: health(url, f"fleet:virtual:{NAME}:chat:team-llama") == "healthy", "the lane is published"
    )


def chat(
    url: str, model: str, *, stream: bool
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=HANG_GUARD)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
    conn.request("POST", "/v1/chat/completions", orjson.dumps(body), headers)
    return conn, conn.getresponse()


class Stream:
    """A streamed chat completion, read event by event: its text so far, and its last event."""

    def __init__(self, url: str, model: str) -> None:
        self.conn, self.response = chat(url, model, stream=True)
        assert self.response.status == 200
        self.text = ""
        self.last: bytes = b""

    def next_event(self) -> bool:
        """Read one ``data:`` event; False at the end of the body."""
        while True:
            line = self.response.readline()
            if not line:
                return False
            if not line.startswith(b"data: "):
                continue
            self.last = line.strip()
            if self.last != b"data: [DONE]":
                chunk = orjson.loads(line[6:])
                for choice in chunk.get("choices") or []:
                    self.text += (choice.get("delta") or {}).get("content") or ""
            return True

    def first_text(self) -> None:
        while not self.text:
            assert self.next_event(), "the stream ended before any text"

    def to_end(self) -> None:
        while self.next_event():
            pass
        self.conn.close()


def call_in_thread(url: str, model: str) -> tuple[threading.Thread, dict[str, Any]]:
    """A non-streamed chat completion on its own thread; ``result`` gets its status and body."""
    result: dict[str, Any] = {}

    def run() -> None:
        conn, response = chat(url, model, stream=False)
        result["status"], result["body"] = response.status, orjson.loads(response.read())
        conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def draining(url: str) -> bool:
    status, body = get(url + "/readyz")
    return (status, body["ready"], body["reason"]) == (503, False, "draining")


def assert_refused_while_draining(url: str) -> None:
    conn, response = chat(url, "llama3.2:3b", stream=False)
    body = orjson.loads(response.read())
    conn.close()
    assert response.status == 503, body
    assert body["error"]["code"] == "draining"
    assert response.getheader("retry-after") == "1"


def test_sigterm_lets_relayed_calls_in_flight_finish_and_refuses_new_ones(
    procs: Processes, sim_factory: Any, tmp_path: Path
) -> None:
    local = sim_factory(family="ollama", reply=REPLY, tokens_per_second=5)  # the publisher's model: ~4 s
    url, gateway = serve(procs, tmp_path, sim_factory(family="ollama"))
    publish(procs, tmp_path, url, local)

    stream = Stream(url, "team-llama")
    stream.first_text()  # it has produced output: a relayed stream that cannot be replayed
    local.options.latency = 2.0  # the next call is still in flight at the SIGTERM
    thread, result = call_in_thread(url, "team-llama")
    wait_for(lambda: local.stats.inference_requests == 2, "both calls reached the publisher's model")

    gateway.send_signal(signal.SIGTERM)
    wait_for(lambda: draining(url), "/readyz says draining")
    assert_refused_while_draining(url)

    stream.to_end()
    assert stream.text == REPLY
    assert stream.last == b"data: [DONE]"
    thread.join(HANG_GUARD)
    assert result["status"] == 200, result
    assert result["body"]["choices"][0]["message"]["content"] == REPLY
    assert gateway.wait(timeout=HANG_GUARD) == 0
    log = procs.log("serve")
    assert "Traceback" not in log
    assert "graceful shutdown exceeded" not in log
    assert "Traceback" not in procs.log("publish")


def test_sigterm_lets_a_declared_backends_stream_finish(
    procs: Processes, sim_factory: Any, tmp_path: Path
) -> None:
    declared = sim_factory(family="ollama", reply=REPLY, tokens_per_second=10)
    url, gateway = serve(procs, tmp_path, declared)
    stream = Stream(url, "llama3.2:3b")
    stream.first_text()
    gateway.send_signal(signal.SIGTERM)
    wait_for(lambda: draining(url), "/readyz says draining")
    assert_refused_while_draining(url)
    stream.to_end()
    assert stream.text == REPLY
    assert stream.last == b"data: [DONE]"
    assert gateway.wait(timeout=HANG_GUARD) == 0
    assert "Traceback" not in procs.log("serve")


def test_a_second_signal_cuts_the_drain_short(procs: Processes, sim_factory: Any, tmp_path: Path) -> None:
    declared = sim_factory(family="ollama", reply=LONG_REPLY, tokens_per_second=5)  # 40 s of stream
    url, gateway = serve(procs, tmp_path, declared, drain_timeout=120)
    stream = Stream(url, "llama3.2:3b")
    stream.first_text()
    gateway.send_signal(signal.SIGTERM)
    wait_for(lambda: draining(url), "/readyz says draining")
    gateway.send_signal(signal.SIGINT)
    assert gateway.wait(timeout=HANG_GUARD) == 0
    stream.to_end()
    assert stream.text != LONG_REPLY  # cut, where a drain would have waited for all of it
    assert "drain cut short" in procs.log("serve")


def test_the_drain_ends_after_drain_timeout(procs: Processes, sim_factory: Any, tmp_path: Path) -> None:
    declared = sim_factory(family="ollama", reply=LONG_REPLY, tokens_per_second=5)  # 40 s of stream
    url, gateway = serve(procs, tmp_path, declared, drain_timeout=1)
    stream = Stream(url, "llama3.2:3b")
    stream.first_text()
    gateway.send_signal(signal.SIGTERM)
    assert gateway.wait(timeout=HANG_GUARD) == 0
    stream.to_end()
    assert stream.text != LONG_REPLY
    assert "drain timed out with 1 requests in flight" in procs.log("serve")
