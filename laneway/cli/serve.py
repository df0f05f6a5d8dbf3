"""``laneway serve``: run the gateway."""

from __future__ import annotations

import contextlib
import gc
import signal
import socket
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from laneway.cli.common import config_option, friendly_errors, run_async, settings_or_exit
from laneway.config.schema import Settings

if TYPE_CHECKING:
    import uvicorn

    from laneway.gateway import Gateway

_CLOSE_GRACE = 0.5  # seconds uvicorn is given beyond the drain, to close the connections


def gateway_server(gateway: Gateway, **options: Any) -> uvicorn.Server:
    """The uvicorn server of ``laneway serve`` and ``laneway demo``: the gateway's app under the
    ``server:`` limits of the HTTP edge (``laneway.api.edge``); ``options`` are uvicorn's.

    On SIGTERM or SIGINT it drains (``laneway.api.drain``): it stops taking client requests
    (``/readyz`` and new requests answer 503) and, while still listening (a relayed stream's
    chunks arrive as its publisher's posts), waits up to ``server.drain_timeout`` for those in
    flight, relayed ones included. Then it ends the publishers' control streams (they never end
    by themselves) and lets uvicorn close the listeners and the connections, within what is left
    of the drain time. A second signal cuts the drain short. Unlike uvicorn's own server it does
    not re-raise the signal once stopped, which would kill the process before the gateway's
    shutdown (the last usage batch, the signals) ran."""
    import uvicorn

    from laneway.api.app import build_app
    from laneway.api.drain import DrainGuard
    from laneway.api.edge import EdgeStats, edge_config

    stats = EdgeStats()  # what the edge cuts, counted in /metrics
    guard = DrainGuard(build_app(gateway, edge=stats), gateway)
    server_settings = gateway.settings.server

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit:
                self.force_exit = True  # the second signal: stop waiting
            self.should_exit = True

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            left = await guard.drain(gateway.clock, server_settings.drain_timeout, lambda: self.force_exit)
            gateway.fleet.close_streams()
            # What is left of the drain, and a moment for the connections to close.
            self.config.timeout_graceful_shutdown = max(left, _CLOSE_GRACE)  # type: ignore[assignment]
            await super().shutdown(sockets)

    return Server(edge_config(guard, server_settings, stats, **options))


async def serve_gateway(settings: Settings, host: str, port: int) -> None:
    """Open the gateway (a start-up error surfaces here, before anything listens), then serve."""
    from laneway.gateway import Gateway

    gateway = await Gateway.open(settings)
    try:
        server = gateway_server(gateway, host=host, port=port)
        # Everything built at start-up lives as long as the process: move it out of the cyclic
        # collector's sight, and collect less often. Measured with bench.overhead at concurrency
        # 64: p99 fell from ~100 ms (full collections of the start-up heap) to ~36 ms.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        await server.serve()
        if not server.started:
            raise click.ClickException(f"could not listen on {host}:{port} (is the port in use?)")
    finally:
        await gateway.aclose()


@click.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (default: server.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: server.port, 8080).")
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True)
@friendly_errors
def serve(config_path: str | None, host: str | None, port: int | None, log_format: str) -> None:
    """Run the gateway in front of the backends declared in the config and the database."""
    from laneway import logs

    settings = settings_or_exit(config_path)
    logs.configure(settings.server.log_level, json=log_format == "json")
    try:
        run_async(
            serve_gateway(
                settings, host or settings.server.host, settings.server.port if port is None else port
            )
        )
    except KeyboardInterrupt:
        pass
