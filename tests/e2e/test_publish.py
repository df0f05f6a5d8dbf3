"""The whole story with separate processes: ``laneway serve``, ``laneway sim --family ollama`` (the
publisher's local model server) and ``laneway publish``, and the official ``openai`` SDK as the
client. A second simulated Ollama, declared in the gateway's config, is where requests fail over
to when the publisher is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml

from tests.conftest import CLIENT_KEY, Sim
from tests.e2e.test_inventory import free_port

ADMIN = "lw-e2e-admin"
TOKEN = "lw-e2e-publish-token"
LANEWAY = [sys.executable, "-m", "laneway"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("LANEWAY_")}
NAME = "e2e-box"
CHAT_LANE = f"fleet:virtual:{NAME}:chat:team-llama"
CHAT: Any = [{"role": "user", "content": "say something"}]


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen([*LANEWAY, *args], stdout=log, stderr=subprocess.STDOUT, env=ENV)
        log.close()
        self.running.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    yield p
    p.stop_all()


def wait_for(check: Callable[[], bool], what: str, *, tries: int = 400, step: float = 0.05) -> None:
    """Poll ``check`` a bounded number of times (no timing is asserted, only that it happens)."""
    for _ in range(tries):
        try:
            if check():
                return
        except OSError:  # not listening yet (urllib's errors are OSErrors)
            pass
        time.sleep(step)
    raise AssertionError(f"never happened: {what}")


def get(url: str, key: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null")


def admin(url: str, path: str) -> Any:
    status, body = get(url + path, ADMIN)
    assert status == 200, body
    return body


def health(url: str, lane_id: str) -> str | None:
    lanes = admin(url, "/admin/lanes")["lanes"]
    return next((lane["health"] for lane in lanes if lane["id"] == lane_id), None)


def test_publish_serve_and_sim_as_processes(procs: Processes, sim_factory: Any, tmp_path: Path) -> None:
    # The publisher's machine: a simulated Ollama in its own process.
    local_port = free_port()
    procs.start("sim", "sim", "--family", "ollama", "--port", str(local_port))
    local = f"http://127.0.0.1:{local_port}"
    wait_for(lambda: get(local + "/api/tags")[0] == 200, "the sim answers")

    # The gateway, with one declared Ollama of its own (the failover target).
    declared: Sim = sim_factory(family="ollama")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = {
        "server": {"port": port},
        "storage": {"data_dir": str(tmp_path / "data")},
        "auth": {"keys": [{"name": "app", "key": CLIENT_KEY}, {"name": "ops", "key": ADMIN, "admin": True}]},
        "backends": {"gpu-1": {"provider": "ollama", "base_url": declared.url}},
        # join_declared: its embedding model is also gpu-1's (the chat model is aliased apart)
        "publishers": {
            "tokens": [{"name": "e2e", "token": TOKEN, "names": ["e2e-*"], "join_declared": True}]
        },
        "routes": {
            "team": [{"backend": NAME, "model": "team-llama"}, {"backend": "gpu-1", "model": "llama3.2:3b"}]
        },
    }
    (tmp_path / "laneway.yaml").write_text(yaml.safe_dump(config))
    procs.start("serve", "serve", "-c", str(tmp_path / "laneway.yaml"))
    wait_for(lambda: get(url + "/readyz")[0] == 200, "the gateway is ready")

    publish_args = [
        "publish",
        "--gateway",
        url,
        "--token",
        TOKEN,
        "--backend",
        local,
        "--name",
        NAME,
        "--alias",
        "llama3.2:3b=team-llama",
        "--max-concurrency",
        "2",
        "--state-file",
        str(tmp_path / "publish-state.json"),
    ]
    publisher = procs.start("publish", *publish_args)
    wait_for(lambda: health(url, CHAT_LANE) == "healthy", "the published lane is routable")
    (session,) = admin(url, "/admin/publishers")["publishers"]
    assert session["name"] == NAME
    assert {lane["id"] for lane in session["lanes"]} == {
        CHAT_LANE,
        f"fleet:virtual:{NAME}:completion:team-llama",
        f"fleet:virtual:{NAME}:embedding:nomic-embed-text%3Alatest",
    }

    sdk = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    try:
        raw = sdk.chat.completions.with_raw_response.create(model="team-llama", messages=CHAT)
        assert raw.headers["x-laneway-lane"] == CHAT_LANE
        reply = raw.parse()
        assert reply.model == "team-llama"
        assert reply.choices[0].message.content
        assert reply.usage is not None
        assert reply.usage.completion_tokens > 0

        stream = sdk.chat.completions.create(model="team-llama", messages=CHAT, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text

        emb = sdk.embeddings.create(model="nomic-embed-text:latest", input=["a", "b"])
        assert len(emb.data) == 2
        assert len(emb.data[0].embedding) > 0
        before = declared.stats.inference_requests

        # Killed (no goodbye): the control stream drops, the lanes are inactive at once.
        publisher.send_signal(signal.SIGKILL)
        publisher.wait(timeout=10)
        wait_for(lambda: health(url, CHAT_LANE) == "inactive", "inactive after the kill")
        with pytest.raises(openai.APIStatusError) as err:
            sdk.chat.completions.create(model="team-llama", messages=CHAT)
        assert err.value.status_code == 503
        assert f"{NAME} (inactive)" in err.value.message
        served = sdk.chat.completions.with_raw_response.create(model="team", messages=CHAT)
        assert served.headers["x-laneway-backend"] == "gpu-1"  # the route fails over
        assert declared.stats.inference_requests == before + 1

        # Restarted: the state file's session id re-adopts the same lanes.
        procs.start("publish-again", *publish_args)
        wait_for(lambda: health(url, CHAT_LANE) == "healthy", "re-adopted after the restart")
        (again,) = admin(url, "/admin/publishers")["publishers"]
        assert again["session_id"] == session["session_id"]
        assert {lane["id"] for lane in again["lanes"]} == {lane["id"] for lane in session["lanes"]}
        raw = sdk.chat.completions.with_raw_response.create(model="team", messages=CHAT)
        assert raw.headers["x-laneway-lane"] == CHAT_LANE
    finally:
        sdk.close()
    # Stopping the gateway ends the publisher's control stream first, instead of waiting out the
    # graceful-shutdown timeout for a stream that never ends by itself.
    gateway = procs.running[1]
    gateway.send_signal(signal.SIGTERM)
    assert gateway.wait(timeout=30) == 0
    assert "graceful shutdown exceeded" not in procs.log("serve")
    assert "Traceback" not in procs.log("serve")
    assert "Traceback" not in procs.log("publish")
