"""``laneway serve``: run the gateway."""

from __future__ import annotations

import contextlib
import gc
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from laneway.cli.common import config_option, friendly_errors, run_async, settings_or_exit
from laneway.config.schema import Settings

if TYPE_CHECKING:
    import uvicorn

    from laneway.gateway import Gateway


def gateway_server(gateway: Gateway, **options: Any) -> uvicorn.Server:
    """The uvicorn server of ``laneway serve`` and ``laneway demo``: the gateway's app under the
    ``server:`` limits of the HTTP edge (``laneway.api.edge``); ``options`` are uvicorn's.

    When shutting down it (1) ends the publishers' control streams first (they never end by
    themselves: the graceful shutdown would wait its whole timeout for them) and (2) does not
    re-raise SIGINT/SIGTERM once it stopped, as uvicorn's own does, which would kill the process
    before the gateway's shutdown (the last usage batch, the signals) ran."""
    import uvicorn

    from laneway.api.app import build_app
    from laneway.api.edge import edge_config

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

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if gateway.fleet is not None:
                gateway.fleet.close_streams()
            await super().shutdown(sockets)

    app = build_app(gateway, manage_gateway=False)
    return Server(edge_config(app, gateway.settings.server, timeout_graceful_shutdown=10, **options))


async def serve_gateway(settings: Settings, host: str, port: int) -> None:
    """Start the gateway (a start-up error surfaces here, before anything listens), then serve."""
    from laneway.gateway import Gateway

    gateway = Gateway(settings)
    try:
        await gateway.start()
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
