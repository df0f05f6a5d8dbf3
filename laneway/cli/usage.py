"""``laneway usage``: requests and tokens per caller (or lane, model...), from the usage records.

Read straight from the database the config names (or ``--database-url``), not from the admin API:
it needs no running server and no admin key, and it sees every replica's records. The gateway
writes records in batches about once a second, so the last second of traffic may be missing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
import orjson

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
    from laneway.storage.usage_repo import UsageTotals


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the shape of GET /admin/usage).")
@config_option
@database_url_option
@friendly_errors
def usage(
    since: str | None, group_by: str, as_json: bool, config_path: str | None, database_url: str | None
) -> None:
    """Show requests and tokens per caller (or per lane, model... with --by).

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
    settings = settings_or_exit(config_path)

    async def fetch(db: Database) -> tuple[list[UsageTotals], str]:
        after = datetime.fromtimestamp(start, UTC) if start is not None else None
        return await db.usage.summary(after, fields), db.url

    totals, where = with_database(settings, database_url, fetch)
    if as_json:
        body = {"now": now, "since": start, "group_by": fields, "rows": [t.as_dict() for t in totals]}
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    when = f" since {_when(start)}" if start is not None else ""
    if not totals:
        click.echo(f"no usage recorded{when} in {where}")
        return
    print_table(
        [*(f.upper() for f in fields), "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "UNREPORTED"],
        [
            [
                *(t.group[f] for f in fields),
                str(t.requests),
                _tokens(t.prompt_tokens),
                _tokens(t.completion_tokens),
                str(t.unreported),
            ]
            for t in totals
        ],
    )
    if start is not None:
        click.echo(f"(since {_when(start)})", err=True)


def _tokens(count: int | None) -> str:
    return "-" if count is None else str(count)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
