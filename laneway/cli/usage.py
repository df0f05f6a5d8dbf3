"""``laneway usage``: requests and tokens per caller (or lane, model...), from the usage records.

Two ways to the records, and the operator says which:

- ``--url`` (``$LANEWAY_URL``) with an admin ``--key``: a running gateway's ``GET /admin/usage``,
  which reads the database that gateway uses (whatever its config says);
- ``-c FILE`` (``$LANEWAY_CONFIG``) or ``--database-url``: that database, directly. It needs no
  running server and no admin key, and it sees every replica's records.

Given neither, it says so instead of opening a default database: the records are where the server
keeps them, and an empty database created here would only report "no usage". For the same reason
a SQLite file that does not exist is an error, not a new empty database. The gateway writes
records in batches about once a second, so the last second of traffic may be missing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import orjson

from laneway.cli.admin import AdminClient, key_option, timeout_option, url_option
from laneway.cli.common import (
    config_option,
    database_url_option,
    friendly_errors,
    print_table,
    settings_or_exit,
    with_database,
)
from laneway.usage import GROUP_FIELDS, parse_group_by, parse_since

if TYPE_CHECKING:
    from laneway.storage import Database

NO_SOURCE = (
    "laneway usage needs the gateway or its database: pass --url URL --key ADMIN_KEY (or set "
    "LANEWAY_URL) to ask a running gateway, or -c FILE (the server's config) or --database-url URL "
    "to read its database"
)


@click.command()
@click.option(
    "--since",
    metavar="WHEN",
    help="Only records since WHEN: a duration ago (90s, 15m, 1h30m, 7d), seconds ago (3600) or an "
    "ISO 8601 time (2026-11-23T10:00, UTC unless it has an offset). Default: all records.",
)
@click.option(
    "--by",
    "group_by",
    default="caller",
    show_default=True,
    metavar="FIELDS",
    help=f"Group by any of {', '.join(GROUP_FIELDS)}, comma-separated; '' for one total.",
)
@click.option("--replica", metavar="ID", help="Only the requests the replica with this id served.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the shape of GET /admin/usage).")
@url_option
@key_option
@timeout_option
@config_option
@database_url_option
@friendly_errors
def usage(
    since: str | None,
    group_by: str,
    replica: str | None,
    as_json: bool,
    url: str | None,
    admin_key: str | None,
    timeout: float,
    config_path: str | None,
    database_url: str | None,
) -> None:
    """Show requests and tokens per caller (or per lane, model... with --by).

    From a running gateway (--url, --key) or from the database (-c FILE, --database-url). Every
    replica's requests, or one's with --replica (--by replica: side by side).

    Tokens are what the upstreams reported. UNREPORTED counts requests that reported none (an
    OpenAI-compatible stream whose client did not ask for usage), so the sums are a lower bound
    when it is not 0."""
    now = time.time()
    try:
        start = parse_since(since, now) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from None
    try:
        fields = parse_group_by(group_by)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--by'") from None
    if url and database_url:
        raise click.UsageError("give --url (a running gateway) or --database-url (its database), not both")
    if url:
        body, where = _from_gateway(AdminClient(url, admin_key, timeout=timeout), since, fields, replica)
    elif database_url or config_path:
        body, where = _from_database(config_path, database_url, start, fields, now, replica)
    else:
        raise click.ClickException(NO_SOURCE)
    if as_json:
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    _print(body, where, fields)


def _from_gateway(
    client: AdminClient, since: str | None, fields: list[str], replica: str | None
) -> tuple[dict[str, Any], str]:
    params = {"group_by": ",".join(fields)}
    if since is not None:
        params["since"] = since  # the gateway reads it by its own clock, with the same rules
    if replica:
        params["replica"] = replica
    return client.get("/admin/usage", params), client.base_url


def _from_database(
    config_path: str | None,
    database_url: str | None,
    start: float | None,
    fields: list[str],
    now: float,
    replica: str | None,
) -> tuple[dict[str, Any], str]:
    from laneway.storage import sqlite_path

    settings = settings_or_exit(config_path)
    url = database_url or settings.storage.resolved_database_url()
    path = sqlite_path(url)
    if path is not None and not path.exists():
        given = "--database-url" if database_url else f"the config {settings.source}"
        raise click.ClickException(
            f"there is no database at {path.absolute()} ({given}); is that the server's? "
            "Pass the config the server runs with (-c FILE), its --database-url, or --url to ask it"
        )

    async def fetch(db: Database) -> tuple[list[dict[str, Any]], str]:
        after = datetime.fromtimestamp(start, UTC) if start is not None else None
        totals = await db.usage.summary(after, fields, replica=replica or None)
        return [t.as_dict() for t in totals], db.url

    rows, where = with_database(settings, url, fetch)
    return {"now": now, "since": start, "group_by": fields, "replica": replica or None, "rows": rows}, where


def _print(body: dict[str, Any], where: str, fields: list[str]) -> None:
    start = body["since"]
    when = f" since {_when(start)}" if start is not None else ""
    if body.get("replica"):
        when += f" by replica {body['replica']}"
    rows: list[dict[str, Any]] = body["rows"]
    if not rows:
        click.echo(f"no usage recorded{when} in {where}")
        return
    print_table(
        [*(f.upper() for f in fields), "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "UNREPORTED"],
        [
            [
                *(str(row[f]) or "-" for f in fields),  # '': a record older than its column
                str(row["requests"]),
                _tokens(row["prompt_tokens"]),
                _tokens(row["completion_tokens"]),
                str(row["unreported"]),
            ]
            for row in rows
        ],
    )
    if start is not None:
        click.echo(f"(since {_when(start)})", err=True)


def _tokens(count: int | None) -> str:
    return "-" if count is None else str(count)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
