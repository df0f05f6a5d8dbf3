"""A small, cheap HTTP/1.1 load generator: keep-alive connections on raw asyncio protocols,
responses parsed by httptools. Cheap enough (tens of thousands of requests per second on one
core) that it is not what limits a benchmark of the gateway; ``bench.overhead`` shows its ceiling.

Each worker owns one connection and sends its next request when the previous answer is complete
(closed loop), recording the total latency and the time to the first body byte (for a stream,
the time to first token).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httptools


@dataclass
class Result:
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50_ms(self) -> float:
        return self.pct(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return self.pct(self.latencies, 0.99) * 1000

    @property
    def ttfb_p50_ms(self) -> float:
        return self.pct(self.ttfb, 0.50) * 1000

    def merge(self, other: Result) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latencies += other.latencies
        self.ttfb += other.ttfb


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.first_body: float = 0.0
        self.lost = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done and not self.done.done():
                self.done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))
        if not self.lost.done():
            self.lost.set_result(None)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        if not self.first_body:
            self.first_body = time.perf_counter()

    def on_message_complete(self) -> None:
        if self.done and not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    async def request(self, payload: bytes) -> tuple[int, float]:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.first_body = 0.0
        self.transport.write(payload)
        status = await self.done
        return status, self.first_body


def build_request(
    host: str, port: int, method: str, path: str, body: bytes, headers: dict[str, str]
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _worker(
    host: str, port: int, payload: bytes, stop_at: float, warmup_until: float, result: Result
) -> None:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, host, port)
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            try:
                status, first = await conn.request(payload)
            except (ConnectionError, httptools.HttpParserError):
                result.errors += 1
                _, conn = await loop.create_connection(_Connection, host, port)
                continue
            end = time.perf_counter()
            if start < warmup_until:
                continue
            if status != 200:
                result.errors += 1
                continue
            result.requests += 1
            result.latencies.append(end - start)
            result.ttfb.append((first or end) - start)
    finally:
        if conn.transport is not None:
            conn.transport.close()


async def run(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    concurrency: int = 1,
    duration: float = 3.0,
    warmup: float = 0.5,
) -> Result:
    """Drive ``concurrency`` closed-loop workers for ``warmup + duration`` seconds."""
    hdrs = {"content-type": "application/json", **(headers or {})}
    payload = build_request(host, port, "POST", path, body, hdrs)
    now = time.perf_counter()
    warmup_until = now + warmup
    stop_at = warmup_until + duration
    result = Result()
    await asyncio.gather(
        *(_worker(host, port, payload, stop_at, warmup_until, result) for _ in range(concurrency))
    )
    result.elapsed = duration
    return result
