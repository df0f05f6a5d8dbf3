"""The HTTP edge (``laneway.api.edge``): the gateway as ``laneway serve`` serves it, probed with raw
sockets the way an attacker (or a broken client) would: oversized and endless headers, slowloris,
dribbled and stalled bodies, idle keep-alive connections, a connection flood. Timeouts here are a
fraction of a second; the only time asserted is "cut before the hang guard"."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from laneway.api.edge import EdgeLimits
from laneway.config import settings_from_data
from laneway.config.schema import ServerConfig
from laneway.errors import ConfigError
from tests.conftest import CLIENT_KEY, RunningGateway
from tests.e2e.test_inventory import free_port
from tests.e2e.test_publish import Processes, get, wait_for

HANG_GUARD = 10.0  # seconds a socket waits before the test calls it a hang
FAST = {"header_timeout": 0.5, "body_timeout": 0.5, "keepalive_timeout": 0.5}
GET = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n"


@pytest.fixture
def edge(gateway_factory: Any, sim_factory: Any, tmp_path: Path) -> Any:
    """``edge(**server)``: a gateway in front of one simulated OpenAI, under these ``server:`` limits."""

    def start(**server: Any) -> RunningGateway:
        sim = sim_factory(family="openai")
        config = {
            "server": server,
            "storage": {"data_dir": str(tmp_path / f"gw-{free_port()}")},
            "auth": {"keys": [{"name": "tests", "key": CLIENT_KEY}]},
            "backends": {"oai": {"provider": "openai", "base_url": sim.url + "/v1"}},
        }
        running: RunningGateway = gateway_factory(config, {"openai": sim})
        return running

    return start


class Conn:
    """A raw client connection to the gateway; ``response`` reads one whole response of a
    keep-alive connection, ``to_eof`` all that comes until the gateway closes it."""

    def __init__(self, gw: RunningGateway) -> None:
        port = int(gw.url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
        self.unread = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def read_more(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the gateway held the connection; unread: {self.unread[:200]!r}") from None
        self.unread += data
        return data

    def response(self) -> bytes:
        while b"\r\n\r\n" not in self.unread:
            assert self.read_more(), f"closed mid-response: {self.unread!r}"
        head, rest = self.unread.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            assert self.read_more(), f"closed mid-body: {self.unread!r}"
            rest = self.unread.split(b"\r\n\r\n", 1)[1]
        self.unread = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]

    def to_eof(self) -> bytes:
        while self.read_more():
            pass
        out, self.unread = self.unread, b""
        return out


def read_to_eof(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def error_code(response: bytes) -> str:
    code: str = orjson.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["code"]
    return code


def request(gw: RunningGateway, raw: bytes) -> bytes:
    with Conn(gw) as conn:
        conn.send(raw)
        return conn.response()


def chat_head(length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + CLIENT_KEY.encode() + b"\r\ncontent-length: %d\r\n\r\n" % length
    )


CHAT_BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi " * 300}]})


# -- the limits as data --------------------------------------------------------------------------


def test_a_body_is_cut_after_body_timeout_of_silence_or_once_it_is_slower_than_min_body_rate() -> None:
    limits = EdgeLimits(body_timeout=30, min_body_rate=1000)
    # Silent for body_timeout since its last byte.
    assert limits.body_deadline(started=0, last_data=100, received=10**9) == 130
    # Steady but slow: 5,000 bytes by t=45 average 111 B/s; cut where the average reaches 1000 B/s.
    assert limits.body_deadline(started=40, last_data=45, received=5000) == 70  # not before body_timeout
    assert limits.body_deadline(started=0, last_data=59, received=60_000) == 60
    # min_body_rate 0: only silence counts.
    assert EdgeLimits(body_timeout=30, min_body_rate=0).body_deadline(0, 59, 1) == 89


def test_every_refusal_is_an_openai_error_with_connection_close() -> None:
    answer = EdgeLimits(max_header_bytes=2048).refusal("header_too_large")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in head
    assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) == len(body)
    error = orjson.loads(body)["error"]
    assert error["code"] == "header_too_large"
    assert "2048 bytes" in error["message"]
    assert b"retry-after: 1" in EdgeLimits().refusal("too_many_connections")


def test_the_defaults_are_the_edge_limits_of_a_public_endpoint() -> None:
    limits = EdgeLimits.of(ServerConfig())
    assert limits == EdgeLimits()
    assert (limits.max_header_bytes, limits.max_headers, limits.max_connections) == (64 * 1024, 100, 4096)
    assert (limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) == (10, 30, 5)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("max_header_bytes", 100), ("max_headers", 0), ("header_timeout", 0), ("min_body_rate", -1)],
)
def test_a_bad_limit_is_a_config_error_that_names_its_key(setting: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"key 'server.{setting}'"):
        settings_from_data({"server": {setting: value}}, source="laneway.yaml")


# -- headers -------------------------------------------------------------------------------------


def test_a_head_over_max_header_bytes_is_answered_431_and_closed_and_nothing_more_is_buffered(
    edge: Any,
) -> None:
    gw = edge(max_header_bytes=4096)
    big = b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx-big: " + b"a" * 100_000  # never finished
    with Conn(gw) as conn:
        conn.send(big)
        answer = conn.to_eof()
    assert status(answer) == 431
    assert error_code(answer) == "header_too_large"
    assert b"connection: close" in answer
    # The parser was never given more than the limit of that head.
    assert gw.edge.largest_head <= 4096
    # Just under the limit, in pieces: served, on the same server.
    fits = b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx-fits: " + b"a" * 3900 + b"\r\n\r\n"
    with Conn(gw) as conn:
        for i in range(0, len(fits), 1000):
            conn.send(fits[i : i + 1000])
        assert status(conn.response()) == 200
    assert gw.edge.cut["header_too_large"] == 1


def test_more_than_max_headers_header_lines_is_431(edge: Any) -> None:
    gw = edge(max_headers=20)
    lines = b"".join(b"x-h%d: 1\r\n" % i for i in range(20))  # with host: 21
    answer = request(gw, b"GET /healthz HTTP/1.1\r\nhost: gw\r\n" + lines + b"\r\n")
    assert status(answer) == 431
    assert error_code(answer) == "too_many_headers"
    lines = b"".join(b"x-h%d: 1\r\n" % i for i in range(19))  # with host: 20
    assert status(request(gw, b"GET /healthz HTTP/1.1\r\nhost: gw\r\n" + lines + b"\r\n")) == 200
    # Counted for the operator (/metrics is open: no metrics key configured).
    metrics = request(gw, b"GET /metrics HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
    assert b'laneway_http_connections_cut_total{reason="too_many_headers"} 1.0' in metrics


def test_half_a_header_line_is_cut_after_header_timeout(edge: Any) -> None:
    gw = edge(**FAST)
    with Conn(gw) as conn:
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: g")
        answer = conn.to_eof()
    assert status(answer) == 408
    assert error_code(answer) == "header_timeout"
    with Conn(gw) as conn:  # connected and silent: closed, nothing to answer
        assert conn.to_eof() == b""
    assert request(gw, GET).startswith(b"HTTP/1.1 200 ")


async def _slowloris(port: int, connections: int) -> list[bytes]:
    """``connections`` clients that each send a head one byte every 0.1 s, never finishing it (the
    classic slowloris: never silent, never done). Returns what each received before the close."""

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n" + b"x" * 10_000

        async def dribble() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.1)

        dribbling = asyncio.create_task(dribble())
        try:
            return await asyncio.wait_for(reader.read(), HANG_GUARD)
        finally:
            dribbling.cancel()
            writer.close()

    return await asyncio.gather(*(one() for _ in range(connections)))


def test_fifty_slowloris_connections_are_all_cut_after_header_timeout(edge: Any) -> None:
    gw = edge(**FAST)
    answers = asyncio.run(_slowloris(int(gw.url.rsplit(":", 1)[1]), 50))
    assert [status(a) for a in answers] == [408] * 50
    assert gw.edge.cut["header_timeout"] == 50
    assert request(gw, GET).startswith(b"HTTP/1.1 200 ")


def test_a_keep_alive_connection_is_cut_after_header_timeout_counted_from_a_new_heads_first_byte(
    edge: Any,
) -> None:
    gw = edge(header_timeout=0.5, keepalive_timeout=5)
    with Conn(gw) as conn:
        conn.send(GET)
        assert status(conn.response()) == 200
        conn.send(b"GET /healthz HTTP/1.1\r\nhost")  # the next request never finishes its head
        answer = conn.to_eof()
    assert status(answer) == 408


# -- bodies --------------------------------------------------------------------------------------


def test_a_body_dribbled_slower_than_min_body_rate_is_cut_with_408(edge: Any) -> None:
    # One byte every 0.1 s: never silent for body_timeout, but 10 B/s against 1024 B/s.
    gw = edge(**FAST, min_body_rate=1024)
    with Conn(gw) as conn:
        conn.send(chat_head(len(CHAT_BODY)))
        conn.sock.settimeout(0.1)  # the pace of the dribble, and a look for an answer
        with contextlib.suppress(ConnectionError):
            for byte in CHAT_BODY[:50]:  # 5 s of it: ten times body_timeout
                conn.send(bytes([byte]))
                try:
                    conn.unread += conn.sock.recv(65536)
                    break  # answered
                except TimeoutError:
                    continue
            else:
                raise AssertionError("a body dribbled at 10 B/s was never cut")
        conn.sock.settimeout(HANG_GUARD)
        answer = conn.to_eof()
    assert status(answer) == 408
    assert error_code(answer) == "body_timeout"
    assert gw.edge.cut["body_timeout"] == 1


def test_a_body_that_stops_for_longer_than_body_timeout_is_cut_with_408(edge: Any) -> None:
    gw = edge(**FAST)
    with Conn(gw) as conn:
        conn.send(chat_head(len(CHAT_BODY)) + CHAT_BODY[:100])
        answer = conn.to_eof()
    assert status(answer) == 408
    assert error_code(answer) == "body_timeout"


def test_a_body_with_a_pause_shorter_than_body_timeout_is_served(edge: Any) -> None:
    gw = edge(body_timeout=2, min_body_rate=100)
    with Conn(gw) as conn:
        conn.send(chat_head(len(CHAT_BODY)) + CHAT_BODY[:100])
        time.sleep(0.3)
        conn.send(CHAT_BODY[100:])
        answer = conn.response()
    assert status(answer) == 200


def test_a_slow_answer_and_a_long_stream_are_never_cut_by_the_edge_timeouts(
    edge: Any, sim_factory: Any
) -> None:
    # The timers watch what the client sends; a response taking its time is the upstream's.
    gw = edge(**FAST)
    sim = gw.sims["openai"]
    sim.options.latency, sim.options.tokens_per_second = 1.0, 5  # 2 x header and body timeout
    sim.options.reply = "one two three four five six seven"
    with Conn(gw) as conn:
        conn.send(chat_head(len(CHAT_BODY)) + CHAT_BODY)
        assert status(conn.response()) == 200
        body = orjson.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        )
        conn.send(chat_head(len(body)) + body)
        conn.sock.settimeout(HANG_GUARD)
        while not conn.unread.endswith(b"0\r\n\r\n"):  # the chunked body's end
            assert conn.read_more(), f"cut mid-stream: {conn.unread[-300:]!r}"
    assert conn.unread.startswith(b"HTTP/1.1 200 ")
    assert b"data: [DONE]" in conn.unread
    assert b"seven" in conn.unread


# -- connections ---------------------------------------------------------------------------------


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(edge: Any) -> None:
    gw = edge(keepalive_timeout=0.5)
    with Conn(gw) as conn:
        conn.sock.settimeout(3)  # uvicorn's own default would wait 5 s
        conn.send(GET)
        first = conn.response()
        assert status(first) == 200
        assert b"connection: close" not in first
        assert conn.to_eof() == b""


def test_pipelined_requests_are_still_answered_in_order(edge: Any) -> None:
    gw = edge(max_header_bytes=4096)
    with Conn(gw) as conn:
        conn.send(GET + b"GET /nowhere HTTP/1.1\r\nhost: gw\r\n\r\n" + GET)
        assert [status(conn.response()) for _ in range(3)] == [200, 404, 200]


def test_connections_beyond_max_connections_are_refused_while_those_under_it_work(edge: Any) -> None:
    gw = edge(max_connections=8, header_timeout=30, keepalive_timeout=30)
    held = [Conn(gw) for _ in range(8)]
    try:
        for conn in held:  # each of them a working keep-alive connection
            conn.send(GET)
            assert status(conn.response()) == 200
        with Conn(gw) as extra:
            answer = extra.to_eof()
        assert status(answer) == 503
        assert error_code(answer) == "too_many_connections"
        assert b"retry-after: 1" in answer
        for conn in held:  # still served
            conn.send(GET)
            assert status(conn.response()) == 200
        held.pop().sock.close()

        def room_again() -> bool:
            with Conn(gw) as conn:
                conn.send(GET)
                return status(conn.response()) == 200

        wait_for(room_again, "a closed connection frees its place")
    finally:
        for conn in held:
            conn.sock.close()


# -- memory, measured on a `laneway serve` process -----------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    yield p
    p.stop_all()


def test_fifty_unfinished_one_mib_heads_do_not_grow_the_gateway_beyond_the_header_limit(
    procs: Processes, tmp_path: Path
) -> None:
    # The probe's finding: 200 connections with an unfinished 1 MiB head added 197 MB and were
    # held. Here: 50 of them against the default 64 KiB limit (50 x 1 MiB would be 50 MiB).
    port = free_port()
    config = {"server": {"port": port}, "storage": {"data_dir": str(tmp_path / "data")}, "backends": {}}
    (tmp_path / "laneway.yaml").write_text(yaml.safe_dump(config))
    serve = procs.start("serve", "serve", "-c", str(tmp_path / "laneway.yaml"))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(url + "/healthz")[0] == 200, "the gateway answers")
    for _ in range(20):
        get(url + "/healthz")
    before = rss_bytes(serve.pid)
    head = b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx-big: " + b"a" * (1024 * 1024)
    socks = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
            socks.append(sock)
            with contextlib.suppress(ConnectionError):
                sock.sendall(head)
        grown = rss_bytes(serve.pid) - before
        # At most 50 x 64 KiB (3.2 MiB) was ever held; without the limit this grew by ~30 MiB.
        assert grown < 8 * 1024 * 1024, f"the gateway grew by {grown / 2**20:.1f} MiB"
        answers = [read_to_eof(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert [status(a) for a in answers] == [431] * 50
    assert "Traceback" not in procs.log("serve")
