"""``laneway publishers``: a running gateway's publisher sessions (``GET /admin/publishers``), and
``laneway publishers tokens``: the publisher tokens issued from the database.

The sessions (the default sub-command, ``sessions``): one row per session: the publisher's name,
the token that opened it, its state, whether its control stream is open, its last heartbeat, its
lanes by state and its tasks in flight (for the requests of the replica asked). Alone, a gateway
shows the publishers connected to it; in a cluster every replica shows every publisher, and
HOLDER names the replica its control stream is open on.

The tokens work on the database directly, like ``laneway keys``: a token's secret is shown once,
when it is created, and only its hash is stored. A running gateway picks up new and revoked tokens
with its client keys, within a few seconds. The config file's ``publishers.tokens`` live in the file.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from laneway.cli.admin import AdminClient, admin_options, print_json
from laneway.cli.common import (
    DefaultCommandGroup,
    config_option,
    database_url_option,
    format_age,
    format_when,
    friendly_errors,
    print_table,
    settings_or_exit,
    with_database,
)

if TYPE_CHECKING:  # the storage stack is imported only by the commands that use it
    from laneway.storage import Database
    from laneway.storage.publisher_tokens import StoredPublisherToken

HEADERS = ["NAME", "OWNER", "STATE", "CONTROL", "HEARTBEAT", "LANES", "IN FLIGHT", "SESSION"]


def lanes_summary(lanes: list[Mapping[str, Any]]) -> str:
    """``2 active, 1 inactive``; ``-`` for none."""
    counts = Counter(str(lane["state"]) for lane in lanes)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "-"


def rows(publishers: list[Mapping[str, Any]], now: float, *, holders: bool = False) -> list[list[str]]:
    return [
        [
            p["name"],
            p["owner"],
            p["state"],
            "open" if p["control"] else "closed",
            format_age(p["last_heartbeat"], now),
            lanes_summary(p["lanes"]),
            str(p["tasks_in_flight"]),
            p["session_id"],
            *([p.get("holder") or "-"] if holders else []),
        ]
        for p in publishers
    ]


@click.group(cls=DefaultCommandGroup, default_command="sessions")
def publishers() -> None:
    """Publishers: a running gateway's sessions, and the publisher tokens in the database.

    With no sub-command: `sessions`, from a running gateway."""


@publishers.command("sessions")
@click.option("--lanes", "show_lanes", is_flag=True, help="List each session's lanes too.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON.")
@admin_options
def sessions(show_lanes: bool, as_json: bool, client: AdminClient) -> None:
    """Show a running gateway's publishers (``laneway publish`` sessions) and their lanes (also:
    `laneway publishers`).

    STATE is what the publisher last said (active or hibernating); its lanes go inactive when its
    control stream closes or it misses heartbeats, and are deleted after publishers.inactive_retention."""
    body = client.get("/admin/publishers")
    if as_json:
        print_json(body)
        return
    found = body["publishers"]
    if not found:
        click.echo("no publishers (run `laneway publish --gateway URL --token T` on a machine with a model)")
        return
    now = body.get("now", time.time())
    holders = any(p.get("holder") for p in found)  # a cluster's: which replica holds each stream
    print_table(HEADERS + ["HOLDER"] * holders, rows(found, now, holders=holders))
    if body.get("pending_tasks"):
        click.echo(f"\n{body['pending_tasks']} task(s) waiting for their publisher to come back")
    if show_lanes:
        for p in found:
            click.echo(f"\n{p['name']} ({p['session_id']})")
            print_table(["LANE", "TYPE", "STATE"], [[ln["id"], ln["type"], ln["state"]] for ln in p["lanes"]])


# --- tokens ------------------------------------------------------------------------------------


@publishers.group("tokens")
def tokens() -> None:
    """Publisher tokens stored in the database (for `laneway publish --token`)."""


@tokens.command("create")
@click.argument("name")
@click.option(
    "--names",
    "names",
    multiple=True,
    metavar="GLOB",
    help="A publisher name the token may register, a glob (repeatable; at least one).",
)
@click.option(
    "--models",
    "models",
    multiple=True,
    metavar="GLOB",
    help="A model name the token may publish, a glob (repeatable; default: all).",
)
@click.option(
    "--join-declared",
    "join_declared",
    is_flag=True,
    help="May also publish a model a declared backend serves, sharing its traffic and prompts "
    "(default: such a model is refused).",
)
@config_option
@database_url_option
@friendly_errors
def create_token(
    name: str,
    names: tuple[str, ...],
    models: tuple[str, ...],
    join_declared: bool,
    config_path: str | None,
    database_url: str | None,
) -> None:
    """Create a publisher token called NAME and print its secret (once).

    NAME owns the sessions the token opens. Quote the globs: --names 'alice-*'."""
    if not names:
        # Checked here, not by click, so it is one line like every other refusal.
        raise click.ClickException(
            "give at least one publisher name the token may register: --names GLOB (e.g. --names 'alice-*')"
        )
    settings = settings_or_exit(config_path)

    async def create(db: Database) -> tuple[StoredPublisherToken, str]:
        return await db.publisher_tokens.create(name, names, models or ("*",), join_declared=join_declared)

    token, secret = with_database(settings, database_url, create)
    # The secret alone on stdout, so `TOKEN=$(laneway publishers tokens create ...)` works; the
    # words go to stderr.
    joins = ", may join declared models" if token.join_declared else ""
    click.echo(
        f"created publisher token {token.id} (name {token.name}, names {', '.join(token.names)}, "
        f"models {', '.join(token.models)}{joins})",
        err=True,
    )
    click.echo(secret)
    click.echo("This secret cannot be shown again: store it now. Publish with it:", err=True)
    click.echo(
        '  laneway publish --gateway URL --token "$TOKEN" --backend http://localhost:11434 '
        f"--name NAME  (NAME matching {' or '.join(token.names)})",
        err=True,
    )


@tokens.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_option
@database_url_option
@friendly_errors
def list_tokens(
    include_revoked: bool, as_json: bool, config_path: str | None, database_url: str | None
) -> None:
    """List publisher tokens in the database (active ones, unless --all).

    Secrets are never shown, only their first characters. The config file's tokens are not listed."""
    settings = settings_or_exit(config_path)

    async def fetch(db: Database) -> list[StoredPublisherToken]:
        return await db.publisher_tokens.list(include_revoked=include_revoked)

    stored = with_database(settings, database_url, fetch)
    if as_json:
        click.echo(json.dumps([_as_json(t) for t in stored], indent=2))
        return
    if not stored:
        click.echo(
            "no publisher tokens (create one with `laneway publishers tokens create NAME --names GLOB`)"
        )
        return
    print_table(
        ["ID", "NAME", "NAMES", "MODELS", "JOIN DECLARED", "PREFIX", "CREATED", "REVOKED"],
        [
            [
                t.id,
                t.name,
                ",".join(t.names),
                ",".join(t.models),
                "yes" if t.join_declared else "no",
                t.prefix + "...",
                format_when(t.created_at),
                format_when(t.revoked_at),
            ]
            for t in stored
        ],
    )


@tokens.command("revoke")
@click.argument("id_or_name")
@config_option
@database_url_option
@friendly_errors
def revoke_token(id_or_name: str, config_path: str | None, database_url: str | None) -> None:
    """Revoke a publisher token by id (or, failing that, by name).

    A running gateway refuses it within a few seconds, and cuts off the sessions it opened: their
    control streams close and their lanes go inactive."""
    settings = settings_or_exit(config_path)

    async def revoke(db: Database) -> tuple[bool, str]:
        return await db.publisher_tokens.revoke(id_or_name), db.url

    revoked, url = with_database(settings, database_url, revoke)
    if not revoked:
        raise click.ClickException(
            f"no active publisher token with id or name '{id_or_name}' in the database at {url}"
        )
    click.echo(f"revoked publisher token '{id_or_name}'")


def _as_json(t: StoredPublisherToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "names": list(t.names),
        "models": list(t.models),
        "join_declared": t.join_declared,
        "prefix": t.prefix,
        "created_at": t.created_at.isoformat(),
        "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
    }
