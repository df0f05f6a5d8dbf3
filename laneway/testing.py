"""Helpers for tests, ours and our users': run an ASGI app on a loopback port in a thread, and
capture the log lines it writes.

A thread with its own event loop lets synchronous clients (the ``openai`` SDK's ``OpenAI``)
and asynchronous tests share one server without blocking each other.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import orjson
import uvicorn

from laneway.api.edge import EdgeStats, edge_config
from laneway.config.schema import ServerConfig
from laneway.logs import JsonFormatter


class ServerThread:
    """``with ServerThread(app) as url: ...`` serves ``app`` at ``url`` until the block ends.

    With ``edge`` (the ``server:`` settings) it is served as ``laneway serve`` serves the gateway:
    under those connection limits, counting what they cut in ``edge_stats``."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        edge: ServerConfig | None = None,
        edge_stats: EdgeStats | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.edge_stats = edge_stats if edge_stats is not None else EdgeStats()
        if edge is not None:
            config = edge_config(
                app, edge, self.edge_stats, loop="asyncio", lifespan="on", log_level="warning"
            )
        else:
            config = uvicorn.Config(
                app, loop="asyncio", http="httptools", lifespan="on", log_level="warning", access_log=False
            )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"server-{self.port}", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def start(self) -> str:
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} failed to start") from self._error
            self._thread.join(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Lines(logging.Handler):
    def __init__(self, lines: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@contextmanager
def captured_logs(logger: str = "laneway", level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Every line written to ``logger`` (and below) while the block runs, as the JSON lines the
    gateway writes. Each is formatted when it is written, in the thread that writes it, as a real
    handler does: so it holds the request context (``laneway.context``) of the request it was
    written for, which a record formatted later (pytest's ``caplog``) would not."""
    lines: list[dict[str, Any]] = []
    handler = _Lines(lines)
    target = logging.getLogger(logger)
    before = target.level
    target.addHandler(handler)
    target.setLevel(min(level, before) if before else level)
    try:
        yield lines
    finally:
        target.removeHandler(handler)
        target.setLevel(before)
