"""The publisher's parts on their own: lanes from models, SSE decoding, backoff, the state file,
the status line, chunk batching, and the command's refusals of bad input."""

from __future__ import annotations

import asyncio
import io
import os
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from laneway.cli import cli
from laneway.cli.publish import StatusView, default_name, render
from laneway.clock import ManualClock
from laneway.errors import (
    StreamBroken,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from laneway.operations import Operation
from laneway.providers.base import ModelInfo
from laneway.publisher.chunks import ChunkSender
from laneway.publisher.client import gateway_root
from laneway.publisher.local import (
    Lane,
    LocalBackend,
    SSEChunks,
    error_result,
    parse_aliases,
    select_lanes,
    unknown_aliases,
)
from laneway.publisher.runner import Publisher, PublisherStatus, backoff_delay
from laneway.publisher.state import PublisherState, default_state_path, load_state, save_state, session_for

CHAT = frozenset({"chat", "completion"})
MODELS = [
    ModelInfo("llama3.2:3b", CHAT, frozenset({"chat", "completion", "tools"}), 8192),
    ModelInfo("qwen2.5:7b", CHAT),
    ModelInfo("nomic-embed-text:latest", frozenset({"embedding"})),
]


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- lanes ----------------------------------------------------------------------------------------


def test_aliases_parse() -> None:
    assert parse_aliases(["llama3.2:3b=llama-small", " qwen2.5:7b = qwen "]) == {
        "llama3.2:3b": "llama-small",
        "qwen2.5:7b": "qwen",
    }
    assert parse_aliases([]) == {}


@pytest.mark.parametrize("spec", ["llama3.2:3b", "=llama", "llama=", "  =  "])
def test_malformed_alias_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="malformed --alias"):
        parse_aliases([spec])


def test_one_local_name_with_two_aliases_is_refused() -> None:
    with pytest.raises(ValueError, match="two names"):
        parse_aliases(["a=b", "a=c"])


def test_every_model_becomes_one_lane_per_type() -> None:
    lanes = select_lanes(MODELS)
    assert [(lane.published, lane.type) for lane in lanes] == [
        ("llama3.2:3b", "chat"),
        ("llama3.2:3b", "completion"),
        ("qwen2.5:7b", "chat"),
        ("qwen2.5:7b", "completion"),
        ("nomic-embed-text:latest", "embedding"),
    ]
    assert orjson.loads(lanes[0].offer().wire()) == {
        "model": "llama3.2:3b",
        "type": "chat",
        "capabilities": ["chat", "completion", "tools"],
        "context_length": 8192,
    }
    assert orjson.loads(lanes[2].offer().wire()) == {
        "model": "qwen2.5:7b",
        "type": "chat",
    }


def test_filters_match_local_or_published_names_and_aliases_rename() -> None:
    aliases = {"llama3.2:3b": "small", "qwen2.5:7b": "big"}
    lanes = select_lanes(MODELS, ["llama*", "big"], aliases)
    assert {(lane.published, lane.local, lane.type) for lane in lanes} == {
        ("small", "llama3.2:3b", "chat"),
        ("small", "llama3.2:3b", "completion"),
        ("big", "qwen2.5:7b", "chat"),
        ("big", "qwen2.5:7b", "completion"),
    }
    assert select_lanes(MODELS, ["gpt-*"]) == []


def test_two_models_under_one_published_name_are_refused() -> None:
    with pytest.raises(ValueError, match="would both be published as 'chat'"):
        select_lanes(MODELS, aliases={"llama3.2:3b": "chat", "qwen2.5:7b": "chat"})
    # Different types under one name do not collide.
    lanes = select_lanes(MODELS, aliases={"llama3.2:3b": "x", "nomic-embed-text:latest": "x"})
    assert {(lane.published, lane.type) for lane in lanes} >= {("x", "chat"), ("x", "embedding")}


def test_unknown_aliases_are_named() -> None:
    assert unknown_aliases(MODELS, {"llama3.2:3b": "a", "lama3:8b": "b"}) == ["lama3:8b"]


# --- answers --------------------------------------------------------------------------------------


def test_sse_frames_split_or_glued_are_decoded_and_renamed() -> None:
    decoder = SSEChunks("small")
    first = b'data: {"model":"llama3.2:3b","n":1}\n\ndata: {"model":"llama3.2:3b","n":2}\n\ndata: {"mo'
    assert decoder.feed(first) == [{"model": "small", "n": 1}, {"model": "small", "n": 2}]
    assert decoder.feed(b'del":"x","n":3}\r') == []
    assert decoder.feed(b"\n\r\n: keep-alive\n\nevent: x\n\n") == [{"model": "small", "n": 3}]
    assert decoder.feed(b"data: [DONE]\n\n") == []
    assert decoder.feed(b'data: {"n":4}') == []
    assert decoder.close() == [{"n": 4}]  # a last frame without its blank line still counts


def test_sse_error_frames_and_garbage_raise() -> None:
    with pytest.raises(UpstreamError, match="failed mid-stream: out of memory"):
        SSEChunks("m").feed(b'data: {"error": {"message": "out of memory"}}\n\n')
    with pytest.raises(UpstreamProtocolError):
        SSEChunks("m").feed(b"data: {not json\n\n")
    with pytest.raises(UpstreamProtocolError):
        SSEChunks("m").feed(b"data: [1, 2]\n\n")


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (UpstreamStatusError("overloaded", upstream_status=503), 503),
        (UpstreamStatusError("bad request", upstream_status=400), 400),
        (UpstreamTimeout("slow"), 504),
        (StreamBroken("cut"), 502),
        (UpstreamProtocolError("garbage"), 502),
    ],
)
def test_backend_errors_keep_their_status(exc: UpstreamError, status: int) -> None:
    assert orjson.loads(error_result(exc).wire()) == {"error": {"status": status, "message": exc.message}}


def test_gateway_root_accepts_the_clients_base_url() -> None:
    assert gateway_root("https://gw.example/") == "https://gw.example"
    assert gateway_root("https://gw.example/v1") == "https://gw.example"
    assert gateway_root("https://gw.example/laneway/v1/") == "https://gw.example/laneway"


# --- backoff, batching ----------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_delay(n) for n in range(1, 8)] == [5, 10, 20, 40, 60, 60, 60]
    assert [backoff_delay(n, 0.5, 3) for n in range(1, 5)] == [0.5, 1, 2, 3]


@pytest.mark.anyio
async def test_chunks_arriving_during_a_post_go_together_in_the_next() -> None:
    posted: list[tuple[int, list[int]]] = []
    in_flight, release = asyncio.Event(), asyncio.Event()

    async def post(seq: int, chunks: list[dict[str, Any]], done: bool) -> None:
        posted.append((seq, [c["n"] for c in chunks]))
        in_flight.set()
        await release.wait()

    sender = ChunkSender(post)
    running = asyncio.create_task(sender.run())
    sender.put([{"n": 0}])
    await in_flight.wait()  # post 0 is in flight and held
    sender.put([{"n": 1}])
    sender.put([{"n": 2}, {"n": 3}])
    sender.close()
    release.set()
    await running
    assert posted == [(0, [0]), (1, [1, 2, 3])]
    assert sender.posts == 2
    assert not sender.ended  # not final: the caller posts the result


@pytest.mark.anyio
@pytest.mark.parametrize(("pending_at_close", "ended"), [(True, True), (False, False)])
async def test_a_final_close_ends_the_stream_with_the_last_post(pending_at_close: bool, ended: bool) -> None:
    posted: list[tuple[int, int, bool]] = []
    first = asyncio.Event()

    async def post(seq: int, chunks: list[dict[str, Any]], done: bool) -> None:
        posted.append((seq, len(chunks), done))
        first.set()

    sender = ChunkSender(post)
    running = asyncio.create_task(sender.run())
    sender.put([{"n": 0}])
    await first.wait()  # post 0 went out; the sender waits for more
    if pending_at_close:
        sender.put([{"n": 1}])
    sender.close(final=True)
    await running
    assert sender.ended is ended
    assert posted[-1][2] is ended  # only the last post may say done, and says it when it can
    assert all(not done for _, _, done in posted[:-1])


@pytest.mark.anyio
async def test_reconnect_backoff_on_the_injected_clock() -> None:
    """A gateway that never answers: the waits are 5, 10, 20, 40, 60, 60 s of the clock."""
    clock = ManualClock()
    waits: list[float] = []

    def record(status: PublisherStatus) -> None:
        if status.retry_in is not None:
            waits.append(status.retry_in)

    backend = LocalBackend.build(dead_url(), "ollama")
    publisher = Publisher(
        gateway=dead_url(),
        token="t",
        backend=backend,
        lanes=[Lane("m", "m", Operation.CHAT)],
        name="box",
        clock=clock,
        on_status=record,
    )
    run = asyncio.create_task(publisher.run())
    try:
        for n in range(1, 7):
            async with asyncio.timeout(5):
                while len(waits) < n:  # noqa: ASYNC110 - the status is the only signal
                    await asyncio.sleep(0.005)
            assert publisher.status.connected is False
            assert publisher.status.last_error is not None
            clock.advance(waits[-1])
        assert waits[:6] == [5, 10, 20, 40, 60, 60]
    finally:
        publisher.stop()
        async with asyncio.timeout(5):
            await run
        await backend.aclose()


# --- the state file -------------------------------------------------------------------------------


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "box.json"
    assert load_state(path) is None
    save_state(path, PublisherState(session_id="ps_1234abcd", gateway="https://gw", name="box"))
    save_state(path, PublisherState(session_id="ps_5678efgh", gateway="https://gw", name="box"))
    assert load_state(path) == PublisherState(session_id="ps_5678efgh", gateway="https://gw", name="box")
    assert os.listdir(path.parent) == ["box.json"]
    assert session_for(path, gateway="https://gw", name="box") == "ps_5678efgh"
    assert session_for(path, gateway="https://other", name="box") is None
    assert session_for(path, gateway="https://gw", name="other") is None


@pytest.mark.parametrize("content", [b"{half", b"[]", b'{"session_id": 3, "gateway": "g", "name": "n"}'])
def test_unreadable_state_file_is_no_state(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "box.json"
    path.write_bytes(content)
    assert load_state(path) is None


def test_default_state_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_state_path("alice-laptop") == tmp_path / "laneway" / "publish" / "alice-laptop.json"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert (
        default_state_path("box")
        == tmp_path / "home" / ".local" / "share" / "laneway" / "publish" / "box.json"
    )


# --- what the user sees ---------------------------------------------------------------------------


def test_status_line() -> None:
    status = PublisherStatus(
        gateway="https://gw.example",
        name="alice-laptop",
        connected=True,
        lanes=("a", "b"),
        in_flight=1,
        done=10,
        last_error="heartbeat: the gateway did not answer in time",
    )
    assert render(status) == (
        "connected to https://gw.example as alice-laptop · 2 lanes · 1 in flight · 10 done"
        " · last error: heartbeat: the gateway did not answer in time"
    )
    waiting = PublisherStatus(
        gateway="https://gw", name="box", lanes=("a",), retry_in=20, state="hibernating"
    )
    assert render(waiting) == (
        "disconnected from https://gw as box, retrying in 20s · 1 lane · hibernating · 0 in flight · 0 done"
    )


def test_status_view_redraws_on_a_terminal_and_logs_otherwise() -> None:
    first = PublisherStatus(gateway="https://gw", name="box")
    second = PublisherStatus(gateway="https://gw", name="box", connected=True)
    tty, log = io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (log, False)):
        view = StatusView(out, tty=is_tty)
        for status in (first, first, second):
            view(status)
        view.close()
    assert tty.getvalue().count("\r\x1b[2K") == 2
    assert tty.getvalue().endswith("connected to https://gw as box · 0 lanes · 0 in flight · 0 done\n")
    lines = log.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [render(first), render(second)]


def test_a_log_gets_no_line_per_task_but_a_terminal_shows_the_counts() -> None:
    tty, log = io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (log, False)):
        view = StatusView(out, tty=is_tty)
        for n in range(50):  # 50 tasks start and end on a connected publisher
            view(PublisherStatus(gateway="https://gw", name="box", connected=True, in_flight=1, done=n))
            view(PublisherStatus(gateway="https://gw", name="box", connected=True, in_flight=0, done=n + 1))
        view(PublisherStatus(gateway="https://gw", name="box", done=50, last_error="lost"))
        view.close()
    assert tty.getvalue().count("\r\x1b[2K") == 101
    lines = [line.split(" ", 1)[1] for line in log.getvalue().splitlines()]
    assert lines == [
        "connected to https://gw as box · 0 lanes · 1 in flight · 0 done",
        "connecting to https://gw as box · 0 lanes · 0 in flight · 50 done · last error: lost",
    ]


def test_default_name_is_the_sanitised_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Alice's MacBook Pro.local")
    assert default_name() == "Alice-s-MacBook-Pro.local"
    monkeypatch.setattr(socket, "gethostname", lambda: "---")
    assert default_name() == "publisher"


# --- bad input ------------------------------------------------------------------------------------


def publish(*args: str, token: str | None = "tok") -> Result:
    runner = CliRunner(
        env={"LANEWAY_PUBLISH_TOKEN": token, "LANEWAY_GATEWAY": None, "LANEWAY_BACKEND_API_KEY": None}
    )
    return runner.invoke(cli, ["publish", *args], catch_exceptions=False)


def refused(result: Result) -> str:
    """The one line a user sees for input the command cannot run with: exit status 2."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1
    return result.stderr


def test_refuses_to_run_without_a_token() -> None:
    assert "no publisher token" in refused(publish("--gateway", "http://gw", token=None))


def test_refuses_to_run_without_a_gateway() -> None:
    assert "no gateway" in refused(publish())
    assert "--gateway must be an http" in refused(publish("--gateway", "gw.example"))


def test_refuses_a_malformed_alias() -> None:
    message = refused(publish("--gateway", "http://gw", "--alias", "llama3.2:3b"))
    assert "malformed --alias 'llama3.2:3b': expected LOCAL=PUBLISHED" in message


def test_refuses_both_wake_recipes() -> None:
    message = refused(publish("--gateway", "http://gw", "--wake-command", "true", "--wake-url", "http://x"))
    assert "not both" in message


def test_refuses_a_bad_name() -> None:
    assert "--name '-x'" in refused(publish("--gateway", "http://gw", "--name", "-x"))


def test_refuses_an_unreachable_backend() -> None:
    url = dead_url()
    message = refused(publish("--gateway", "http://gw", "--backend", url))
    assert f"no model server answers at {url}" in message


def test_refuses_when_filters_leave_no_model(sim_factory: Any) -> None:
    sim = sim_factory(family="ollama")
    message = refused(publish("--gateway", dead_url(), "--backend", sim.url, "--model", "gpt-*"))
    assert "no models to publish" in message
    assert "llama3.2:3b, nomic-embed-text:latest" in message


def test_refuses_aliases_that_collide(sim_factory: Any) -> None:
    sim = sim_factory(family="ollama", models=["llama3.2:3b", "qwen2.5:7b"])
    message = refused(
        publish(
            "--gateway",
            dead_url(),
            "--backend",
            sim.url,
            "--alias",
            "llama3.2:3b=x",
            "--alias",
            "qwen2.5:7b=x",
        )
    )
    assert "would both be published as 'x'" in message
