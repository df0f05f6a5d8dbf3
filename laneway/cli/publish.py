"""``laneway publish``: make this machine's models lanes of a gateway (docs/publishers.md).

The command checks its input and the local backend before it dials out, so a typo or a stopped
model server is one line on stderr (exit status 2) rather than a publisher that reconnects
forever. Once running it shows its state: on a terminal one status line redrawn in place,
otherwise one log line per change. Ctrl-C or SIGTERM unregisters (best effort) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

import click

from laneway.cli.common import run_async
from laneway.config.schema import NAME_RE

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

if TYPE_CHECKING:  # the command imports the publisher lazily, so `laneway --help` stays fast
    from laneway.providers.base import ModelInfo
    from laneway.publisher.local import Lane, LocalBackend, ProviderChoice, WakeRecipe
    from laneway.publisher.runner import Publisher, PublisherStatus


class BadInput(click.ClickException):
    """Input the command cannot run with: one line on stderr and exit status 2, like a usage
    error, without click's usage block (the line says what to change)."""

    exit_code = 2


def default_name() -> str:
    """This machine's host name, cut to the characters a publisher name may hold."""
    name = _UNSAFE.sub("-", socket.gethostname()).strip("-._")[:63]
    return name or "publisher"


def render(status: PublisherStatus) -> str:
    """``connected to URL as NAME · 2 lanes · 1 in flight · 10 done · last error: ...``"""
    if status.connected:
        head = f"connected to {status.gateway} as {status.name}"
    elif status.retry_in is not None:
        head = f"disconnected from {status.gateway} as {status.name}, retrying in {status.retry_in:g}s"
    else:
        head = f"connecting to {status.gateway} as {status.name}"
    lanes = len(status.lanes)
    parts = [head, f"{lanes} lane{'' if lanes == 1 else 's'}"]
    if status.state != "active":
        parts.append(status.state)
    parts += [f"{status.in_flight} in flight", f"{status.done} done"]
    if status.last_error:
        parts.append(f"last error: {status.last_error}")
    return " · ".join(parts)


class StatusView:
    """Shows each new status: redrawn in place on a terminal, else a line when it changed (task
    counts alone do not make a new line)."""

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self._out = out
        self._tty = tty
        self._last = ""

    def __call__(self, status: PublisherStatus) -> None:
        line = render(status)
        # A log (not a terminal) gets a line when the connection, the state or the last error
        # changes, not for every task started or done: at hundreds of calls a second that was
        # megabytes of log a minute. The line still carries the counts as they are.
        key = line if self._tty else render(replace(status, in_flight=0, done=0))
        if key == self._last:
            return
        self._last = key
        if self._tty:
            width = shutil.get_terminal_size().columns
            # Cut to the width: a wrapped line could not be redrawn by a carriage return.
            self._out.write("\r\x1b[2K" + line[: max(width - 1, 20)])
        else:
            self._out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
        self._out.flush()

    def close(self) -> None:
        """End the redrawn line (once)."""
        if self._tty and self._last:
            self._out.write("\n")
            self._out.flush()
        self._last = ""


@click.command("publish")
@click.option(
    "--gateway",
    envvar="LANEWAY_GATEWAY",
    metavar="URL",
    help="The gateway to publish on. Env: LANEWAY_GATEWAY.",
)
@click.option(
    "--token",
    envvar="LANEWAY_PUBLISH_TOKEN",
    help="A publisher token of that gateway. Env: LANEWAY_PUBLISH_TOKEN.",
)
@click.option(
    "--backend",
    "backend_url",
    default="http://localhost:11434",
    show_default=True,
    metavar="URL",
    help="The local model server (an OpenAI-compatible one may end in /v1).",
)
@click.option(
    "--provider",
    type=click.Choice(["auto", "ollama", "openai"]),
    default="auto",
    show_default=True,
    help="Its API: auto tries Ollama's /api/tags, then /v1/models.",
)
@click.option(
    "--api-key",
    envvar="LANEWAY_BACKEND_API_KEY",
    default=None,
    help="A key the local server wants. Env: LANEWAY_BACKEND_API_KEY.",
)
@click.option("--name", default=None, help="The publisher's name (default: this host's name).")
@click.option(
    "--model", "model_globs", multiple=True, metavar="GLOB", help="Publish only matching models (repeatable)."
)
@click.option(
    "--alias",
    "alias_specs",
    multiple=True,
    metavar="LOCAL=PUBLISHED",
    help="Publish the local model LOCAL as PUBLISHED (repeatable).",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Tasks run at once (the gateway's pool slots for this publisher).",
)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the session id is kept (default: $XDG_DATA_HOME/laneway/publish/NAME.json).",
)
@click.option("--wake-command", default=None, metavar="CMD", help="Shell command that wakes the backend.")
@click.option("--wake-url", default=None, metavar="URL", help="URL to POST to wake the backend.")
@click.option(
    "--wake-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds a wake may take, until the backend answers.",
)
@click.option(
    "--hibernate-after",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Announce hibernation after this long without a task.",
)
@click.option(
    "--refresh-interval",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Ask the backend for its models this often and publish what changed (a model pulled or "
    "removed); 0: never.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="On Ctrl-C or SIGTERM, let tasks in flight finish for this long (no new ones come); "
    "a second Ctrl-C stops at once.",
)
@click.option("--heartbeat-interval", type=click.FloatRange(min=0, min_open=True), default=30.0, hidden=True)
def publish(
    gateway: str | None,
    token: str | None,
    backend_url: str,
    provider: str,
    api_key: str | None,
    name: str | None,
    model_globs: tuple[str, ...],
    alias_specs: tuple[str, ...],
    max_concurrency: int,
    state_file: Path | None,
    wake_command: str | None,
    wake_url: str | None,
    wake_timeout: float,
    hibernate_after: float | None,
    refresh_interval: float,
    drain_timeout: float,
    heartbeat_interval: float,
) -> None:
    """Publish this machine's models on a laneway gateway, as lanes of tier fleet.

    It dials out (the gateway never connects here), runs the calls the gateway relays against
    the local backend, and keeps the session across restarts through its state file."""
    from laneway.publisher.local import WakeRecipe, parse_aliases
    from laneway.publisher.state import default_state_path

    gateway, token = _checked(gateway, token, backend_url)
    name = name or default_name()
    if not NAME_RE.match(name):
        raise BadInput(f"--name {name!r}: use 1-63 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    if wake_command and wake_url:
        raise BadInput("give --wake-command or --wake-url, not both")
    try:
        aliases = parse_aliases(alias_specs)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    recipe = WakeRecipe(command=wake_command, url=wake_url, timeout=wake_timeout)
    run_async(
        _publish(
            gateway=gateway,
            token=token,
            backend_url=backend_url,
            provider=cast("ProviderChoice", provider),
            api_key=api_key,
            name=name,
            model_globs=model_globs,
            aliases=aliases,
            max_concurrency=max_concurrency,
            state_file=state_file or default_state_path(name),
            wake=recipe,
            hibernate_after=hibernate_after,
            refresh_interval=refresh_interval,
            drain_timeout=drain_timeout,
            heartbeat_interval=heartbeat_interval,
        )
    )


def _checked(gateway: str | None, token: str | None, backend_url: str) -> tuple[str, str]:
    """The gateway and the token, both given; the URLs, URLs."""
    if not gateway:
        raise BadInput("no gateway: give --gateway URL or set LANEWAY_GATEWAY")
    if not re.match(r"^https?://[^/\s]+", gateway):
        raise BadInput(f"--gateway must be an http:// or https:// URL, not {gateway!r}")
    if not token:
        raise BadInput("no publisher token: give --token or set LANEWAY_PUBLISH_TOKEN")
    if not re.match(r"^https?://[^/\s]+", backend_url):
        raise BadInput(f"--backend must be an http:// or https:// URL, not {backend_url!r}")
    return gateway, token


def _first_lanes(
    models: list[ModelInfo], globs: tuple[str, ...], aliases: dict[str, str], backend_url: str
) -> list[Lane]:
    """The lanes to publish at the start: refused (exit status 2) when the filters leave none or
    two models would be published under one name; an alias of no model is a warning."""
    from laneway.publisher.local import select_lanes, unknown_aliases

    try:
        lanes = select_lanes(models, globs, aliases)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if not lanes:
        served = ", ".join(sorted(m.id for m in models)) or "none"
        raise BadInput(f"no models to publish at {backend_url} after --model filters (it serves: {served})")
    for local in unknown_aliases(models, aliases):
        click.echo(f"warning: --alias names '{local}', which {backend_url} does not serve", err=True)
    return lanes


@contextlib.contextmanager
def _stopped_by_signals(publisher: Publisher) -> Iterator[None]:
    """Ctrl-C and SIGTERM stop ``publisher`` (a second one cuts its drain short) in the block."""
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, publisher.stop)
            handled.append(signum)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows, or not the main thread
            pass
    try:
        yield
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


async def _lanes_now(backend: LocalBackend, globs: tuple[str, ...], aliases: dict[str, str]) -> list[Lane]:
    """What the backend serves now, as lanes, with the same filters and aliases as at the start."""
    from laneway.publisher.local import select_lanes

    return select_lanes(await backend.provider.list_models(), globs, aliases)


async def _publish(
    *,
    gateway: str,
    token: str,
    backend_url: str,
    provider: ProviderChoice,
    api_key: str | None,
    name: str,
    model_globs: tuple[str, ...],
    aliases: dict[str, str],
    max_concurrency: int,
    state_file: Path,
    wake: WakeRecipe,
    hibernate_after: float | None,
    refresh_interval: float,
    drain_timeout: float,
    heartbeat_interval: float,
) -> None:
    from laneway.publisher.client import GatewayError
    from laneway.publisher.local import LocalBackend, LocalBackendError
    from laneway.publisher.runner import Publisher

    try:
        backend, models = await LocalBackend.connect(backend_url, provider, api_key=api_key)
    except LocalBackendError as exc:
        raise BadInput(exc.message) from None
    view = StatusView(sys.stdout, tty=sys.stdout.isatty())
    try:
        lanes = _first_lanes(models, model_globs, aliases, backend_url)
        publisher = Publisher(
            gateway=gateway,
            token=token,
            backend=backend,
            lanes=lanes,
            name=name,
            max_concurrency=max_concurrency,
            state_file=state_file,
            wake=wake,
            hibernate_after=hibernate_after,
            drain_timeout=drain_timeout,
            rediscover=lambda: _lanes_now(backend, model_globs, aliases),
            rediscover_interval=refresh_interval,
            heartbeat_interval=heartbeat_interval,
            on_status=view,
        )
        view(publisher.status)
        try:
            with _stopped_by_signals(publisher):
                await publisher.run()
        except GatewayError as exc:
            raise BadInput(f"the gateway refused to register '{name}': {exc.message}") from None
        view.close()
        done = publisher.status.done
        click.echo(f"stopped: {name} left {gateway} ({done} task{'' if done == 1 else 's'} done)")
    finally:
        view.close()
        await backend.aclose()
