"""Serving the sim on a real port, as ``laneway sim`` does."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from laneway.clock import Clock
from laneway.sim.app import build_sim_app
from laneway.sim.options import SimOptions


def bind(host: str, port: int) -> socket.socket:
    """Listen on ``host:port`` now, so a busy port is reported before anything else happens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve_sim(
    options: SimOptions,
    host: str = "127.0.0.1",
    port: int = 9000,
    *,
    clock: Clock | None = None,
    sock: socket.socket | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve a sim until the process is told to stop (SIGINT/SIGTERM: uvicorn shuts down cleanly).

    ``sock``, if given, is an already bound socket (see ``bind``); ``on_ready`` gets the URL.
    """
    app = build_sim_app(options, clock)
    sock = sock if sock is not None else bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        on_ready(f"http://{shown}:{bound_port}")
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
