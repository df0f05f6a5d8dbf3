"""``laneway publish`` against a gateway stand-in and the simulated upstream, both on loopback.

The stand-in implements the gateway's half of docs/publishers.md in memory (register, control
stream, heartbeat, chunks, result, unregister) and records what it receives; the test feeds the
control stream through ``StandIn.send``. The local backend is the real sim, reached through
laneway's own adapters. Nothing is mocked; waits are bounded polls, never timed assertions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from laneway.publisher.client import GatewayError
from laneway.publisher.local import Lane, LocalBackend, WakeRecipe, select_lanes
from laneway.publisher.runner import Publisher, PublisherStatus
from laneway.publisher.state import load_state
from laneway.testing import ServerThread
from tests.conftest import Sim

pytestmark = pytest.mark.anyio

TOKEN = "pub-token-alice"
REPLY = "one two three four five six"
CHAT = [{"role": "user", "content": "hi"}]
PING_EVERY = 0.1  # the stand-in's keep-alive: it also lets a stream notice its client left


def error(status: int, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None, "param": None}}
    return JSONResponse(body, status_code=status)


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


@dataclass
class StandIn:
    """The gateway's side of the protocol, in memory. Handlers run in the server's thread;
    the lists are appended there and read by the test (appends are atomic)."""

    registers: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    chunk_posts: list[tuple[str, int, list[dict[str, Any]]]] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    control_opens: list[str] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    max_open: int = 0  # most tasks seen between their first chunk and their result at once
    _open: set[str] = field(default_factory=set)
    _next_seq: dict[str, int] = field(default_factory=dict)
    _streams: dict[str, asyncio.Queue[tuple[str, dict[str, Any]] | None]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the test's side (any thread) ---------------------------------------------------------

    def send(self, session_id: str, event: str, data: dict[str, Any]) -> None:
        assert self._loop is not None, "no control stream was ever opened"
        self._loop.call_soon_threadsafe(self._deliver, session_id, (event, data))

    def drop(self, session_id: str) -> None:
        """End the session's control stream, as a gateway restart or a proxy would."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, session_id, None)

    def forget(self, session_id: str) -> None:
        """Forget the session: its next heartbeat is answered 404."""
        self.sessions.discard(session_id)

    def close_all(self) -> None:
        if self._loop is not None:
            for sid in list(self._streams):
                self.drop(sid)

    def _deliver(self, session_id: str, item: tuple[str, dict[str, Any]] | None) -> None:
        queue = self._streams.get(session_id)
        if queue is not None:
            queue.put_nowait(item)

    # -- the app ------------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = [
            Route("/v1/publishers/register", self.register, methods=["POST"]),
            Route("/v1/publishers/sessions/{sid}/control", self.control, methods=["GET"]),
            Route("/v1/publishers/sessions/{sid}/heartbeat", self.heartbeat, methods=["POST"]),
            Route("/v1/publishers/sessions/{sid}/tasks/{tid}/chunks", self.chunks, methods=["POST"]),
            Route("/v1/publishers/sessions/{sid}/tasks/{tid}/result", self.result, methods=["POST"]),
            Route("/v1/publishers/sessions/{sid}", self.delete, methods=["DELETE"]),
        ]
        return Starlette(routes=routes)

    @staticmethod
    def _authorised(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    async def register(self, request: Request) -> Response:
        if not self._authorised(request):
            return error(401, "invalid publisher token")
        body = await request.json()
        self.registers.append(body)
        sid = body.get("session_id") or f"ps_{uuid.uuid4().hex[:16]}"
        self.sessions.add(sid)
        lanes = [
            {
                "id": f"fleet:virtual:{body['name']}:{lane['type']}:{quote(lane['model'], safe='')}",
                "model": lane["model"],
                "type": lane["type"],
                "state": body.get("state", "active"),
            }
            for lane in body["lanes"]
        ]
        return JSONResponse(
            {
                "session_id": sid,
                "name": body["name"],
                "heartbeat_interval": 30,
                "heartbeat_timeout": 90,
                "lanes": lanes,
            }
        )

    async def control(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        if not self._authorised(request):
            return error(401, "invalid publisher token")
        if sid not in self.sessions:
            return error(404, f"unknown session {sid}")
        self._loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self._streams[sid] = queue  # a second stream replaces the first
        self.control_opens.append(sid)

        async def events() -> AsyncIterator[bytes]:
            yield sse("hello", {"session_id": sid, "name": "x", "heartbeat_interval": 30, "lanes": []})
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), PING_EVERY)
                except TimeoutError:
                    yield sse("ping", {})
                    continue
                if item is None:
                    return
                yield sse(*item)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def heartbeat(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        if sid not in self.sessions:
            return error(404, f"unknown session {sid}")
        self.heartbeats.append({"session_id": sid, **(await request.json())})
        return JSONResponse({"lanes": [], "control": True})

    async def chunks(self, request: Request) -> Response:
        tid = request.path_params["tid"]
        body = await request.json()
        with self._lock:
            expected = self._next_seq.get(tid, 0)
            if body["seq"] != expected or tid in self.results:
                return error(409, f"seq {body['seq']} is not the next one ({expected})")
            self._next_seq[tid] = expected + 1
            self._open.add(tid)
            self.max_open = max(self.max_open, len(self._open))
            if body.get("done") is True:  # the stream's end, as the protocol allows
                self.results[tid] = {"status": 200}
                self._open.discard(tid)
        self.chunk_posts.append((tid, body["seq"], body["chunks"]))
        return JSONResponse({"accepted": len(body["chunks"])})

    async def result(self, request: Request) -> Response:
        tid = request.path_params["tid"]
        body = await request.json()
        with self._lock:
            if tid in self.results:
                return error(409, "result posted twice")
            self.results[tid] = body
            self._open.discard(tid)
        return JSONResponse({"ok": True})

    async def delete(self, request: Request) -> Response:
        self.deletes.append(request.path_params["sid"])
        return JSONResponse({"ok": True})

    # -- reading what was received ------------------------------------------------------------

    def chunks_of(self, task_id: str) -> list[tuple[int, list[dict[str, Any]]]]:
        return [(seq, chunks) for tid, seq, chunks in self.chunk_posts if tid == task_id]


@dataclass
class Gateway:
    url: str
    standin: StandIn


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    standin = StandIn()
    thread = ServerThread(standin.app())
    url = thread.start()
    try:
        yield Gateway(url, standin)
    finally:
        standin.close_all()
        thread.stop()


async def eventually(predicate: Callable[[], Any], what: str, *, timeout: float = 5.0) -> Any:
    """Poll ``predicate`` until it is truthy; fail naming ``what`` if it never is."""
    async with asyncio.timeout(timeout):
        # Polled: what it waits for happens in another thread (the servers'), no event to await.
        while not (value := predicate()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return value


def dead_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@asynccontextmanager
async def backend_of(sim: Sim, **kwargs: Any) -> AsyncIterator[tuple[LocalBackend, list[Lane]]]:
    backend, models = await LocalBackend.connect(sim.url, **kwargs)
    try:
        yield backend, select_lanes(models, aliases={"llama3.2:3b": "llama-small"})
    finally:
        await backend.aclose()


@asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[Publisher]:
    """Run ``publisher`` for the block, then stop it (it unregisters) and wait for it."""
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        publisher.stop()
        async with asyncio.timeout(5):
            await task


def make(gw: Gateway, backend: LocalBackend, lanes: list[Lane], **kwargs: Any) -> Publisher:
    kwargs.setdefault("name", "alice-laptop")
    return Publisher(gateway=gw.url, token=TOKEN, backend=backend, lanes=lanes, **kwargs)


async def connected(gw: Gateway, publisher: Publisher, opens: int = 1) -> str:
    """Wait for the ``opens``-th control stream and for the publisher to have read its hello."""
    await eventually(lambda: len(gw.standin.control_opens) >= opens, "control stream opened")
    await eventually(lambda: publisher.status.connected, "publisher connected")
    return gw.standin.control_opens[-1]


def task(
    task_id: str, model: str, operation: str, body: dict[str, Any], stream: bool = False
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "lane": "-",
        "model": model,
        "operation": operation,
        "stream": stream,
        "body": body,
    }


def chat_task(task_id: str, *, stream: bool = False) -> dict[str, Any]:
    body = {"model": "llama-small", "messages": CHAT, "stream": stream}
    return task(task_id, "llama-small", "chat", body, stream)


# --- discovery ------------------------------------------------------------------------------------


async def test_registers_discovered_lanes_filtered_and_aliased(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama")
    backend, models = await LocalBackend.connect(sim.url)
    try:
        assert backend.family == "ollama"
        lanes = select_lanes(models, ["llama*"], {"llama3.2:3b": "llama-small"})
        async with running(make(gateway, backend, lanes, max_concurrency=2)) as pub:
            await connected(gateway, pub)
            (reg,) = gateway.standin.registers
            assert reg["name"] == "alice-laptop"
            assert reg["max_concurrency"] == 2
            assert reg["state"] == "active"
            assert reg["protocol"] == 1  # the version of the publisher protocol it speaks
            assert "session_id" not in reg
            assert sorted((lane["model"], lane["type"]) for lane in reg["lanes"]) == [
                ("llama-small", "chat"),
                ("llama-small", "completion"),
            ]
            assert all(lane["context_length"] == 8192 for lane in reg["lanes"])
            assert "tools" in reg["lanes"][0]["capabilities"]
            assert pub.status.lanes == (
                "fleet:virtual:alice-laptop:chat:llama-small",
                "fleet:virtual:alice-laptop:completion:llama-small",
            )
    finally:
        await backend.aclose()


async def test_openai_backend_explicit_and_auto_fallback(sim_factory: Any) -> None:
    sim = sim_factory(family="openai", api_key="local-key")
    backend, models = await LocalBackend.connect(sim.url + "/v1", "openai", api_key="local-key")
    await backend.aclose()
    assert backend.family == "openai"
    assert {m.id for m in models} == {"gpt-4o-mini", "text-embedding-3-small"}

    async def openai_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "qwen2.5-7b", "object": "model"}]})

    only_openai = Starlette(routes=[Route("/v1/models", openai_models)])
    with ServerThread(only_openai) as url:
        backend, models = await LocalBackend.connect(url)  # /api/tags is a 404 here
        await backend.aclose()
    assert backend.family == "openai"
    assert [m.id for m in models] == ["qwen2.5-7b"]


# --- tasks ----------------------------------------------------------------------------------------


async def test_chat_embedding_and_streamed_chat(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama", reply=REPLY)
    async with backend_of(sim) as (backend, lanes), running(make(gateway, backend, lanes)) as pub:
        sid = await connected(gateway, pub)
        results = gateway.standin.results

        gateway.standin.send(sid, "task", chat_task("t-chat"))
        await eventually(lambda: "t-chat" in results, "chat result")
        answer = results["t-chat"]
        assert answer["status"] == 200
        assert answer["body"]["model"] == "llama-small"  # the published name, not llama3.2:3b
        assert answer["body"]["choices"][0]["message"]["content"] == REPLY

        embed = {"model": "nomic-embed-text:latest", "input": "hello"}
        gateway.standin.send(sid, "task", task("t-embed", "nomic-embed-text:latest", "embedding", embed))
        await eventually(lambda: "t-embed" in results, "embedding result")
        assert results["t-embed"]["status"] == 200
        assert len(results["t-embed"]["body"]["data"][0]["embedding"]) == 16

        gateway.standin.send(sid, "task", chat_task("t-stream", stream=True))
        await eventually(lambda: "t-stream" in results, "stream result")
        assert results["t-stream"] == {"status": 200}
        posts = gateway.standin.chunks_of("t-stream")
        assert [seq for seq, _ in posts] == list(range(len(posts)))
        chunks = [chunk for _, batch in posts for chunk in batch]
        assert {c["model"] for c in chunks} == {"llama-small"}
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == REPLY
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        await eventually(lambda: pub.status.done == 3 and pub.status.in_flight == 0, "three tasks done")


async def test_backend_errors_are_posted_with_their_status(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama", fail_status=503)
    async with backend_of(sim) as (backend, lanes):
        unreachable = LocalBackend.build(dead_url(), "ollama")
        try:
            async with running(make(gateway, backend, lanes)) as pub:
                sid = await connected(gateway, pub)
                gateway.standin.send(sid, "task", chat_task("t-503"))
                gateway.standin.send(sid, "task", chat_task("t-503-stream", stream=True))
                gateway.standin.send(sid, "task", task("t-unknown", "nope", "chat", {"model": "nope"}))
                results = gateway.standin.results
                await eventually(lambda: len(results) == 3, "three results")
                assert results["t-503"]["error"]["status"] == 503
                assert "503" in results["t-503"]["error"]["message"]
                assert results["t-503-stream"]["error"]["status"] == 503
                assert results["t-unknown"]["error"]["status"] == 404
            async with running(make(gateway, unreachable, lanes)) as pub:
                sid = await connected(gateway, pub, opens=2)
                gateway.standin.send(sid, "task", chat_task("t-502"))
                await eventually(lambda: "t-502" in results, "unreachable result")
                assert results["t-502"]["error"]["status"] == 502
        finally:
            await unreachable.aclose()


async def test_a_task_it_cannot_read_is_refused_at_once_naming_the_field(
    sim_factory: Any, gateway: Gateway
) -> None:
    sim = sim_factory(family="ollama", reply=REPLY)
    async with backend_of(sim) as (backend, lanes), running(make(gateway, backend, lanes)) as pub:
        sid = await connected(gateway, pub)
        unreadable = {**chat_task("t-odd"), "stream": "yes"}  # a string where the protocol has a boolean
        gateway.standin.send(sid, "task", unreadable)
        gateway.standin.send(sid, "task", {"lane": "-"})  # no task id: nothing to answer
        await eventually(lambda: "t-odd" in gateway.standin.results, "the refusal")
        error = gateway.standin.results["t-odd"]["error"]
        assert error["status"] == 400
        assert "'stream'" in error["message"]
        assert sim.stats.inference_requests == 0  # never run
        await eventually(lambda: "'task_id'" in (pub.status.last_error or ""), "the second one noted")
        gateway.standin.send(sid, "task", chat_task("t-fine"))  # and it goes on serving
        await eventually(lambda: "t-fine" in gateway.standin.results, "the next task's result")
        assert gateway.standin.results["t-fine"]["status"] == 200


async def test_a_stream_broken_midway_posts_its_chunks_then_an_error(
    sim_factory: Any, gateway: Gateway
) -> None:
    sim = sim_factory(family="ollama", reply=REPLY, drop_after_chunks=3)
    async with backend_of(sim) as (backend, lanes), running(make(gateway, backend, lanes)) as pub:
        sid = await connected(gateway, pub)
        gateway.standin.send(sid, "task", chat_task("t-cut", stream=True))
        await eventually(lambda: "t-cut" in gateway.standin.results, "the cut stream's result")
        assert gateway.standin.results["t-cut"]["error"]["status"] == 502
        chunks = [c for _, batch in gateway.standin.chunks_of("t-cut") for c in batch]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "one two three"


async def test_cancel_stops_a_streaming_task(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama", reply=" ".join(["word"] * 200), tokens_per_second=20)
    async with backend_of(sim) as (backend, lanes), running(make(gateway, backend, lanes)) as pub:
        sid = await connected(gateway, pub)
        gateway.standin.send(sid, "task", chat_task("t-slow", stream=True))
        await eventually(lambda: gateway.standin.chunks_of("t-slow"), "first chunks")
        assert pub.status.in_flight == 1
        gateway.standin.send(sid, "cancel", {"task_id": "t-slow"})
        await eventually(lambda: sim.stats.streams_cancelled == 1, "the sim saw the stream closed")
        await eventually(lambda: pub.status.in_flight == 0, "no task in flight")
        assert "t-slow" not in gateway.standin.results
        assert sim.stats.streams_completed == 0
        # The slot is free again: the next task runs.
        sim.options.tokens_per_second = 0
        gateway.standin.send(sid, "task", chat_task("t-next"))
        await eventually(lambda: "t-next" in gateway.standin.results, "the next task's result")


async def test_max_concurrency_is_respected(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama", reply=REPLY, tokens_per_second=40)
    async with (
        backend_of(sim) as (backend, lanes),
        running(make(gateway, backend, lanes, max_concurrency=2)) as pub,
    ):
        sid = await connected(gateway, pub)
        for i in range(5):
            gateway.standin.send(sid, "task", chat_task(f"t{i}", stream=True))
        await eventually(lambda: len(gateway.standin.results) == 5, "five results")
        assert all(r == {"status": 200} for r in gateway.standin.results.values())
        assert gateway.standin.max_open == 2  # two ran side by side, never three
        assert sim.stats.streams_completed == 5
        await eventually(lambda: pub.status.done == 5, "five tasks done")


# --- the connection -------------------------------------------------------------------------------


async def test_heartbeat_404_registers_again_with_the_same_session(
    sim_factory: Any, gateway: Gateway
) -> None:
    sim = sim_factory(family="ollama")
    async with (
        backend_of(sim) as (backend, lanes),
        running(make(gateway, backend, lanes, heartbeat_interval=0.05)) as pub,
    ):
        sid = await connected(gateway, pub)
        await eventually(lambda: gateway.standin.heartbeats, "a heartbeat")
        assert gateway.standin.heartbeats[0] == {"session_id": sid, "state": "active"}
        gateway.standin.forget(sid)
        await eventually(lambda: len(gateway.standin.registers) == 2, "a second register")
        assert gateway.standin.registers[1]["session_id"] == sid
        await connected(gateway, pub, opens=2)
        assert gateway.standin.control_opens == [sid, sid]


async def test_dropped_control_stream_reconnects(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama")
    statuses: list[PublisherStatus] = []
    async with backend_of(sim) as (backend, lanes):
        publisher = make(gateway, backend, lanes, backoff_base=0.01, on_status=statuses.append)
        async with running(publisher) as pub:
            sid = await connected(gateway, pub)
            gateway.standin.drop(sid)
            await connected(gateway, pub, opens=2)
            assert [r.get("session_id") for r in gateway.standin.registers] == [None, sid]
            # After a good connection the first wait is the base of the backoff.
            assert [s.retry_in for s in statuses if s.retry_in is not None] == [0.01]
            assert [s.connected for s in statuses if s.retry_in is not None] == [False]
            assert pub.status.last_error == "the gateway closed the control stream"


async def test_refused_token_is_fatal(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama")
    async with backend_of(sim) as (backend, lanes):
        publisher = Publisher(gateway=gateway.url, token="wrong", backend=backend, lanes=lanes, name="x")
        with pytest.raises(GatewayError) as refused:
            await publisher.run()
    assert refused.value.status_code == 401
    assert "invalid publisher token" in refused.value.message
    assert gateway.standin.deletes == []


async def test_session_id_is_kept_in_the_state_file(
    sim_factory: Any, gateway: Gateway, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama")
    state_file = tmp_path / "state" / "alice-laptop.json"
    async with backend_of(sim) as (backend, lanes):
        async with running(make(gateway, backend, lanes, state_file=state_file)) as pub:
            sid = await connected(gateway, pub)
        assert gateway.standin.deletes == [sid]  # stopped cleanly: unregistered
        saved = load_state(state_file)
        assert saved is not None
        assert (saved.session_id, saved.gateway, saved.name) == (sid, gateway.url, "alice-laptop")
        async with running(make(gateway, backend, lanes, state_file=state_file)) as pub:
            await connected(gateway, pub, opens=2)
            assert gateway.standin.registers[1]["session_id"] == sid
            assert pub.status.session_id == sid
        # Another name does not take this name's session.
        async with running(make(gateway, backend, lanes, state_file=state_file, name="bob")) as pub:
            await connected(gateway, pub, opens=3)
            assert "session_id" not in gateway.standin.registers[2]
    assert sorted(os.listdir(state_file.parent)) == ["alice-laptop.json"]  # no temporary files left


# --- wake and hibernation -------------------------------------------------------------------------


async def test_wake_command_then_backend_answers(sim_factory: Any, gateway: Gateway, tmp_path: Path) -> None:
    sim = sim_factory(family="ollama")
    marker = tmp_path / "woke"
    recipe = WakeRecipe(command=f"touch {marker}", timeout=5, poll_interval=0.01)
    async with (
        backend_of(sim) as (backend, lanes),
        running(make(gateway, backend, lanes, wake=recipe)) as pub,
    ):
        sid = await connected(gateway, pub)
        gateway.standin.send(sid, "wake", {"task_id": "w1", "model": "llama-small", "lane": "-"})
        await eventually(lambda: "w1" in gateway.standin.results, "wake result")
        assert gateway.standin.results["w1"] == {"status": 200}
        assert marker.exists()


async def test_wake_url_is_posted(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama")
    calls: list[str] = []

    async def wake(request: Request) -> Response:
        calls.append(request.method)
        return JSONResponse({"ok": True})

    with ServerThread(Starlette(routes=[Route("/wake", wake, methods=["POST"])])) as plug:
        recipe = WakeRecipe(url=plug + "/wake", timeout=5, poll_interval=0.01)
        async with (
            backend_of(sim) as (backend, lanes),
            running(make(gateway, backend, lanes, wake=recipe)) as pub,
        ):
            sid = await connected(gateway, pub)
            gateway.standin.send(sid, "wake", {"task_id": "w1", "model": "llama-small", "lane": "-"})
            await eventually(lambda: "w1" in gateway.standin.results, "wake result")
    assert gateway.standin.results["w1"] == {"status": 200}
    assert calls == ["POST"]


async def test_wake_failures_are_posted(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama")
    failing = WakeRecipe(command="echo 'no GPU box here' >&2; exit 1", timeout=5)
    results = gateway.standin.results
    async with (
        backend_of(sim) as (backend, lanes),
        running(make(gateway, backend, lanes, wake=failing)) as pub,
    ):
        sid = await connected(gateway, pub)
        gateway.standin.send(sid, "wake", {"task_id": "w-cmd", "model": "llama-small", "lane": "-"})
        await eventually(lambda: "w-cmd" in results, "wake result")
    assert results["w-cmd"]["error"]["status"] == 502
    assert results["w-cmd"]["error"]["message"] == "the wake command exited with status 1: no GPU box here"

    asleep = LocalBackend.build(dead_url(), "ollama")
    never = WakeRecipe(timeout=0.3, poll_interval=0.02)
    try:
        async with running(make(gateway, asleep, lanes, wake=never)) as pub:
            sid = await connected(gateway, pub, opens=2)
            gateway.standin.send(sid, "wake", {"task_id": "w-late", "model": "llama-small", "lane": "-"})
            await eventually(lambda: "w-late" in results, "wake result")
    finally:
        await asleep.aclose()
    assert results["w-late"]["error"]["status"] == 504
    assert "did not answer within 0.3s" in results["w-late"]["error"]["message"]


async def test_hibernate_after_announces_it_and_a_wake_ends_it(sim_factory: Any, gateway: Gateway) -> None:
    sim = sim_factory(family="ollama")
    recipe = WakeRecipe(timeout=5, poll_interval=0.01)
    states: list[str] = []

    def record(status: PublisherStatus) -> None:
        if not states or states[-1] != status.state:
            states.append(status.state)

    async with backend_of(sim) as (backend, lanes):
        publisher = make(gateway, backend, lanes, hibernate_after=0.1, wake=recipe, on_status=record)
        async with running(publisher) as pub:
            sid = await connected(gateway, pub)
            await eventually(lambda: gateway.standin.heartbeats, "a heartbeat at once")
            # The interval is 30 s: this beat is the announcement, sent as soon as it went idle.
            assert gateway.standin.heartbeats[0] == {"session_id": sid, "state": "hibernating"}
            gateway.standin.send(sid, "wake", {"task_id": "w1", "model": "llama-small", "lane": "-"})
            await eventually(lambda: "w1" in gateway.standin.results, "wake result")
            assert gateway.standin.results["w1"] == {"status": 200}
            assert states[:3] == ["active", "hibernating", "active"]
            # Idle again: it hibernates again, and a new register would say so.
            await eventually(lambda: len(gateway.standin.heartbeats) >= 2, "a second announcement")
            assert gateway.standin.heartbeats[1]["state"] == "hibernating"


# --- the command ----------------------------------------------------------------------------------


async def test_cli_publishes_and_unregisters_on_sigterm(
    sim_factory: Any, gateway: Gateway, tmp_path: Path
) -> None:
    sim = sim_factory(family="ollama")
    args = [
        sys.executable, "-m", "laneway", "publish",
        "--gateway", gateway.url, "--backend", sim.url, "--name", "cli-box",
        "--model", "llama*", "--alias", "llama3.2:3b=llama-small",
        "--state-file", str(tmp_path / "cli-box.json"),
    ]  # fmt: skip
    env = {**os.environ, "LANEWAY_PUBLISH_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            while not any(" connected to " in line for line in seen):
                seen.append((await proc.stdout.readline()).decode())
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    sid = gateway.standin.control_opens[0]
    assert gateway.standin.deletes == [sid]
    # Not a terminal: one log line per change, each a timestamp and the status.
    assert (
        seen[-1].split(" ", 1)[1]
        == f"connected to {gateway.url} as cli-box · 2 lanes · 0 in flight · 0 done\n"
    )
    assert seen[0].split(" ", 1)[1].startswith(f"connecting to {gateway.url} as cli-box")
    assert out.decode().splitlines()[-1] == f"stopped: cli-box left {gateway.url} (0 tasks done)"
    assert "Traceback" not in err.decode()
