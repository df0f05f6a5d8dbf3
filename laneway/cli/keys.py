"""``laneway keys``: create, list and revoke client API keys.

A key's secret is shown once, when it is created; the database keeps only its hash. On PostgreSQL
every running replica picks up a new or revoked key as soon as the change commits (a notification:
``laneway.cluster.credentials``); on SQLite the gateway re-reads the hashes every
``auth.reload_interval`` (5 s).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from laneway.cli.common import (
    config_option,
    database_url_option,
    format_when,
    friendly_errors,
    print_table,
    settings_or_exit,
    with_database,
)

if TYPE_CHECKING:
    from laneway.storage import Database, StoredKey


@click.group()
def keys() -> None:
    """Client API keys stored in the database."""


@keys.command("create")
@click.argument("name")
@click.option("--caller", metavar="C", help="Who requests with this key are for (fair share); default NAME.")
@click.option("--admin", is_flag=True, help="May use the admin API (/admin/..., `laneway lanes`, ...).")
@click.option(
    "--trusted", is_flag=True, help="May name a sub-caller with x-laneway-caller (fair share, usage)."
)
@click.option(
    "--max-priority",
    "max_priority",
    type=click.IntRange(0, 9),
    default=0,
    show_default=True,
    metavar="N",
    help="The highest x-laneway-priority it may ask for (0-9); higher asks are lowered to N.",
)
@click.option(
    "--no-published-lanes",
    "no_published_lanes",
    is_flag=True,
    help="Never served by published models (laneway publish): its prompts stay on declared backends.",
)
@config_option
@database_url_option
@friendly_errors
def create_key(
    name: str,
    caller: str | None,
    admin: bool,
    trusted: bool,
    max_priority: int,
    no_published_lanes: bool,
    config_path: str | None,
    database_url: str | None,
) -> None:
    """Create a key called NAME and print its secret (once).

    With no options it may call models, at priority 0, as NAME; the options grant what
    auth.keys can (admin, trusted, max_priority, published_lanes). A running gateway picks it up
    within a few seconds."""
    settings = settings_or_exit(config_path)

    async def create(db: Database) -> tuple[StoredKey, str]:
        return await db.keys.create(
            name,
            caller=caller,
            admin=admin,
            trusted=trusted,
            max_priority=max_priority,
            published_lanes=not no_published_lanes,
        )

    key, secret = with_database(settings, database_url, create)
    # The secret alone on stdout, so `KEY=$(laneway keys create ci)` works; the words go to stderr.
    click.echo(f"created key {key.id} (name {key.name}, caller {key.caller}, {grants(key)})", err=True)
    click.echo(secret)
    click.echo("This secret cannot be shown again: store it now.", err=True)


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_option
@database_url_option
@friendly_errors
def list_keys(
    include_revoked: bool, as_json: bool, config_path: str | None, database_url: str | None
) -> None:
    """List keys (active ones, unless --all).

    Secrets are never shown, only their first characters."""
    settings = settings_or_exit(config_path)

    async def fetch(db: Database) -> list[StoredKey]:
        return await db.keys.list(include_revoked=include_revoked)

    stored = with_database(settings, database_url, fetch)
    if as_json:
        click.echo(json.dumps([_as_json(k) for k in stored], indent=2))
        return
    if not stored:
        click.echo("no keys (create one with `laneway keys create NAME`)")
        return
    print_table(
        ["ID", "NAME", "CALLER", "GRANTS", "PREFIX", "CREATED", "REVOKED"],
        [
            [
                k.id,
                k.name,
                k.caller,
                grants(k),
                k.prefix + "...",
                format_when(k.created_at),
                format_when(k.revoked_at),
            ]
            for k in stored
        ],
    )


def grants(k: StoredKey) -> str:
    """``admin,trusted,priority<=3,no-published-lanes``; ``-`` for a key that may only call models."""
    words = [
        *(["admin"] if k.admin else []),
        *(["trusted"] if k.trusted else []),
        *([f"priority<={k.max_priority}"] if k.max_priority else []),
        *([] if k.published_lanes else ["no-published-lanes"]),
    ]
    return ",".join(words) or "-"


@keys.command("revoke")
@click.argument("id_or_name")
@config_option
@database_url_option
@friendly_errors
def revoke_key(id_or_name: str, config_path: str | None, database_url: str | None) -> None:
    """Revoke a key by id (or, failing that, by name)."""
    settings = settings_or_exit(config_path)

    async def revoke(db: Database) -> tuple[bool, str]:
        return await db.keys.revoke(id_or_name), db.url

    revoked, url = with_database(settings, database_url, revoke)
    if not revoked:
        raise click.ClickException(f"no active key with id or name '{id_or_name}' in the database at {url}")
    click.echo(f"revoked key '{id_or_name}'")


def _as_json(k: StoredKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "caller": k.caller,
        "admin": k.admin,
        "trusted": k.trusted,
        "max_priority": k.max_priority,
        "published_lanes": k.published_lanes,
        "prefix": k.prefix,
        "created_at": k.created_at.isoformat(),
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
    }
