"""A published model served by every replica, through a load balancer, with real processes: three
``laneway serve`` replicas on a fresh PostgreSQL database and a Redis namespace of their own,
behind a real HAProxy doing round-robin (docs/deploy/haproxy.cfg, its addresses from the
environment); ``laneway publish`` publishing through HAProxy, with ``laneway sim --family ollama``
as its local model server; the official ``openai`` SDK as the client.

The publisher's control stream is held by whichever replica HAProxy picked, and its heartbeats
and posts reach all three. Then the replica holding the stream is killed (``kill -9``) while two
requests wait on another: the publisher reconnects through HAProxy and the call is served, while
the stream, which had sent output already, ends with an error event. Last, the new holder is
stopped (SIGTERM): the publisher binds on the last replica."""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.cluster.test_replicas_processes import start_replicas
from tests.conftest import CLIENT_KEY, fresh_pg_database
from tests.e2e.test_inventory import free_port
from tests.e2e.test_publish import ADMIN, ENV, Processes, admin, get, wait_for

# Three replicas, HAProxy, a sim and a publisher, and two reconnects after 5 s of backoff each: more
# than the default minute on a loaded machine.
pytestmark = pytest.mark.timeout(240)

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "haproxy.cfg"
TOKEN = "lw-e2e-cluster-publish-token"
NAME = "e2e-box"
MODEL = "llama3.2:3b"
LANE = f"fleet:virtual:{NAME}:chat:llama3.2%3A3b"
CHAT: Any = [{"role": "user", "content": "say something"}]


def haproxy(tmp_path: Path, replicas: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """HAProxy on a free port in front of the ``replicas`` (URLs), with the repository's config."""
    port = free_port()
    env = {**ENV, "LANEWAY_LISTEN": f"127.0.0.1:{port}"}
    for i, url in enumerate(replicas, start=1):
        env[f"LANEWAY_REPLICA_{i}"] = url.removeprefix("http://")
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    assert binary is not None, "haproxy is installed on this machine and in CI (Debian's package)"
    checked = subprocess.run(
        [binary, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log = open(tmp_path / "haproxy.log", "ab")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(
        [binary, "-f", str(HAPROXY_CFG), "-db"], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def served_by(tmp_path: Path, path_part: str) -> Counter[str]:
    """How many requests whose path holds ``path_part`` HAProxy sent to each replica (its log)."""
    log = (tmp_path / "haproxy.log").read_text(errors="replace")
    found = re.findall(r" live/(replica-\d) .*\"[A-Z]+ (\S+) HTTP", log)
    return Counter(server for server, path in found if path_part in path)


def healths(urls: dict[str, str]) -> dict[str, str | None]:
    out = {}
    for name, url in urls.items():
        lanes = admin(url, "/admin/lanes")["lanes"]
        out[name] = next((lane["health"] for lane in lanes if lane["id"] == LANE), None)
    return out


def holder(url: str) -> str | None:
    (session,) = admin(url, "/admin/publishers")["publishers"]
    return session["holder"] if session["control"] else None


def streamed(url: str) -> str:
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    try:
        stream = sdk.chat.completions.create(model=MODEL, messages=CHAT, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        sdk.close()


def asked(url: str) -> str:
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)
    try:
        reply = sdk.chat.completions.create(model=MODEL, messages=CHAT)
        return reply.choices[0].message.content or ""
    finally:
        sdk.close()


def status_of(url: str) -> int:
    """The status of a client's GET (HAProxy's own answers are not JSON)."""
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def stream_until_broken(url: str, output: threading.Event) -> tuple[str, str | None]:
    """A streamed call's text, and the error that ended it (None: it ended well); ``output`` is
    set at its first words."""
    text = ""
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)
    try:
        for c in sdk.chat.completions.create(model=MODEL, messages=CHAT, stream=True):
            if c.choices and c.choices[0].delta.content:
                text += c.choices[0].delta.content
                output.set()
    except openai.APIError as exc:
        return text, exc.message
    finally:
        sdk.close()
    return text, None


def sim_stats(local: str) -> Any:
    status, body = get(local + "/_sim/stats")
    assert status == 200, body
    return body


def sim_options(local: str, **options: Any) -> None:
    request = urllib.request.Request(
        local + "/_sim/options",
        data=orjson.dumps(options),
        method="POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200


def test_publish_through_haproxy_served_by_every_replica_and_after_a_kill(tmp_path: Path) -> None:
    namespace = f"laneway-test-{uuid.uuid4().hex[:8]}:"
    procs = Processes(tmp_path)
    urls: dict[str, str] = {}
    killed: set[str] = set()
    with fresh_pg_database() as database_url:
        try:
            started, found = start_replicas(
                procs,
                tmp_path,
                database_url,
                namespace,
                "r1",
                "r2",
                "r3",
                publishers={
                    "tokens": [{"name": "e2e", "token": TOKEN, "names": ["e2e-*"]}],
                    "heartbeat_interval": 1,
                    "heartbeat_timeout": 10,
                    "sweep_interval": 2,
                },
                auth={
                    "keys": [{"name": "ops", "key": ADMIN, "admin": True}, {"name": "app", "key": CLIENT_KEY}]
                },
            )
            urls.update(found)
            balancer, lb = haproxy(tmp_path, list(urls.values()))
            procs.running.append(balancer)
            wait_for(lambda: get(lb + "/healthz")[0] == 200, "HAProxy passes requests on")

            local_port = free_port()
            local = f"http://127.0.0.1:{local_port}"
            procs.start("sim", "sim", "--family", "ollama", "--port", str(local_port))
            wait_for(lambda: get(local + "/api/tags")[0] == 200, "the publisher's local model server answers")
            state = str(tmp_path / "publish-state.json")
            procs.start(
                "publish", "publish", "--gateway", lb, "--token", TOKEN, "--backend", local, "--name", NAME,
                "--model", MODEL, "--max-concurrency", "2", "--state-file", state,
            )  # fmt: skip
            wait_for(lambda: set(healths(urls).values()) == {"healthy"}, "the lane routable on every replica")
            first_holder = holder(urls["r1"])
            assert first_holder in urls
            assert {holder(url) for url in urls.values()} == {first_holder}

            # Heartbeats through HAProxy reach every replica, not only the stream's.
            wait_for(lambda: len(served_by(tmp_path, "/heartbeat")) == 3, "heartbeats on all three replicas")
            # The published model, streamed from each replica (two of which do not hold the
            # control stream: their tasks are relayed, the chunks come back through HAProxy),
            # and through HAProxy.
            for url in [*urls.values(), lb, lb, lb]:
                assert streamed(url), url
            assert asked(lb)
            assert len(served_by(tmp_path, "/chunks")) >= 2  # chunk posts landed on several replicas

            # The holder is killed while two requests wait on another replica: a stream that has
            # sent output to its client, and a call that has not.
            waiting_on = next(name for name in urls if name != first_holder)
            sim_options(local, latency=2, tokens_per_second=2)  # slow: both in flight at the kill
            before = sim_stats(local)["inference_requests"]
            output = threading.Event()
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                streaming = pool.submit(stream_until_broken, urls[waiting_on], output)
                assert output.wait(60), "the stream's first words"
                request = pool.submit(asked, urls[waiting_on])
                wait_for(lambda: sim_stats(local)["inference_requests"] == before + 2, "both at the sim")
                started[first_holder].kill()
                started[first_holder].wait(timeout=10)
                killed.add(first_holder)
                answer = request.result(timeout=120)
                text, error = streaming.result(timeout=120)
            # The stream cannot be replayed: what its client got, then an error event.
            assert text
            assert error is not None
            assert error.startswith("The model's backend broke off its answer"), error
            # The call's first copy died with the holder's stream; the publisher, back through
            # HAProxy on another replica, got it again.
            assert answer
            assert sim_stats(local)["inference_requests"] == before + 3
            alive = {name: url for name, url in urls.items() if name not in killed}
            new_holder = holder(alive[waiting_on])
            assert new_holder in alive
            assert {holder(url) for url in alive.values()} == {new_holder}
            sim_options(local, latency=0, tokens_per_second=0)
            for url in [*alive.values(), lb]:
                assert streamed(url), url

            # Stopped (SIGTERM), the holder closes the stream on its way out: the publisher binds
            # on the last replica, through HAProxy, and the model is served there.
            started[new_holder].send_signal(signal.SIGTERM)
            assert started[new_holder].wait(timeout=30) == 0, procs.log(new_holder)
            (last,) = (name for name in alive if name != new_holder)
            wait_for(lambda: holder(urls[last]) == last, "the publisher bound on the last replica", tries=600)
            assert streamed(urls[last])
            # Ready again (a replica with no routable lane is not, while its publisher reconnects).
            wait_for(lambda: status_of(lb + "/v1/models") == 200, "HAProxy has a ready replica")
            assert streamed(lb)
        finally:
            procs.stop_all()
    for name in urls:
        if name not in killed:
            assert "Traceback" not in procs.log(name), procs.log(name)
    assert "Traceback" not in procs.log("publish"), procs.log("publish")
