"""What every CLI command shares: the --config option and turning laneway errors into messages."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from laneway.config import Settings, load_settings
from laneway.errors import LanewayError

if TYPE_CHECKING:  # the storage stack is imported only by the commands that use it
    from laneway.storage import Database

P = ParamSpec("P")
T = TypeVar("T")

config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="LANEWAY_CONFIG",
    default=None,
    help="YAML config file (default: $LANEWAY_CONFIG, else built-in defaults).",
)


def settings_or_exit(config_path: str | None) -> Settings:
    try:
        return load_settings(config_path)
    except LanewayError as exc:
        raise click.ClickException(exc.message) from None


def friendly_errors(func: Callable[P, T]) -> Callable[P, T]:
    """Show a LanewayError as one line on stderr with exit status 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except LanewayError as exc:
            raise click.ClickException(exc.message) from None

    return wrapper


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)


database_url_option = click.option(
    "--database-url",
    "database_url",
    envvar="LANEWAY_DATABASE_URL",
    default=None,
    metavar="URL",
    help="Database to use instead of the config's storage.database_url (sqlite:///... or postgresql://...).",
)


def with_database(
    settings: Settings, database_url: str | None, work: Callable[[Database], Awaitable[T]]
) -> T:
    """Open the declared-state database (migrating it if needed), run ``work(db)``, close it."""
    from laneway.storage import Database

    url = database_url or settings.storage.resolved_database_url()

    async def run() -> T:
        db = await Database.open(url)
        try:
            return await work(db)
        finally:
            await db.aclose()

    return run_async(run())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


class DefaultCommandGroup(click.Group):
    """A group that runs ``default_command`` when it is given no sub-command, or only options:
    ``laneway backends --json`` means ``laneway backends status --json``. ``--help`` on the group
    still shows the group's help, with its sub-commands."""

    def __init__(self, *args: Any, default_command: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ctx.help_option_names):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


# --- times, as an operator reads them -----------------------------------------------------------
# The admin API gives wall-clock seconds; these take ``now`` as an argument so they stay pure.


def format_duration(seconds: float) -> str:
    """``44s``, ``3m12s``, ``2h05m``, ``3d04h``: two units at most, never negative."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_age(at: float | None, now: float, *, never: str = "never") -> str:
    """How long ago ``at`` was: ``12s ago``. A time slightly ahead of ours (clock skew between
    the gateway and this machine) reads ``0s ago``."""
    return never if at is None else f"{format_duration(now - at)} ago"


def format_when(at: datetime | None) -> str:
    """A stored timestamp as people read it: ``2026-11-23 21:58:09Z``; ``-`` for none."""
    return at.strftime("%Y-%m-%d %H:%M:%SZ") if at is not None else "-"


def format_remaining(until: float | None, now: float, *, past: str = "-") -> str:
    """How long until ``until``: ``44s``; ``-`` when there is no deadline, ``past`` once it passed."""
    if until is None:
        return "-"
    return format_duration(until - now) if until > now else past
