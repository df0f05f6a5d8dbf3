"""The ``laneway`` command. Each sub-command lives in its own module and imports what it needs
lazily, so ``laneway --help`` stays fast."""

from __future__ import annotations

import importlib
from typing import Any

import click

# command name -> (module, attribute)
_COMMANDS: dict[str, tuple[str, str]] = {
    "backends": ("laneway.cli.backends", "backends"),
    "cache": ("laneway.cli.cache", "cache"),
    "demo": ("laneway.cli.demo", "demo"),
    "failovers": ("laneway.cli.failovers", "failovers"),
    "keys": ("laneway.cli.keys", "keys"),
    "lanes": ("laneway.cli.lanes", "lanes"),
    "models": ("laneway.cli.models", "models"),
    "pools": ("laneway.cli.pools", "pools"),
    "publishers": ("laneway.cli.publishers", "publishers"),
    "publish": ("laneway.cli.publish", "publish"),
    "refresh": ("laneway.cli.refresh", "refresh"),
    "replicas": ("laneway.cli.replicas", "replicas"),
    "serve": ("laneway.cli.serve", "serve"),
    "signals": ("laneway.cli.signals", "signals"),
    "sim": ("laneway.cli.sim", "sim"),
    "usage": ("laneway.cli.usage", "usage"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        command: click.Command = getattr(module, target[1])
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="laneway")
def cli() -> None:
    """laneway: one OpenAI- and Anthropic-compatible endpoint in front of every model you can reach."""


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="laneway")
