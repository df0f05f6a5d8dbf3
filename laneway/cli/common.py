"""What every CLI command shares: the --config option and turning laneway errors into messages."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import click

from laneway.config import Settings, load_settings
from laneway.errors import LanewayError

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
