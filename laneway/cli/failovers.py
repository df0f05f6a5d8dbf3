"""``laneway failovers``: the recent failover records (``GET /admin/failovers``).

A request leaves a record when it needed more than one attempt or failed. The records are in the
gateway's SQL database, every replica's (each names the replica that handled the request), kept
for ``routing.failover_retention``: any replica shows them all, and they outlive a restart. When
that replica cannot read its database it answers with its own newest records, from memory, and
this command says so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import click
import orjson

from laneway.cli.admin import AdminClient, admin_options, print_json
from laneway.cli.common import format_age
from laneway.cli.pools import format_wait

ATTEMPT_HEADERS = ["#", "LANE", "OUTCOME", "STATUS", "QUEUED", "ELAPSED", "ERROR"]
DEFAULT_LIMIT = 20
PROMPT_WIDTH = 200  # a recorded prompt is shown cut to this; --json has it whole


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def status_code(attempt: Mapping[str, Any]) -> str:
    """``500/bad_gateway``; either half alone when only it is known; ``-`` for neither."""
    parts = [str(part) for part in (attempt.get("status"), attempt.get("code")) if part is not None]
    return "/".join(parts) or "-"


def attempt_rows(attempts: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            str(a["attempt"]),
            a["lane"],
            a["outcome"],
            status_code(a),
            format_wait(a["queued"]),
            format_wait(a["elapsed"]),
            " ".join(_dash(a["error"]).split()),  # an upstream's message may span lines
        ]
        for a in attempts
    ]


def aligned(rows: Sequence[Sequence[str]], indent: str) -> list[str]:
    """``print_table``'s columns, as lines indented under their record."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def record_lines(record: Mapping[str, Any], now: float) -> list[str]:
    """One record as a block: who asked for what and what came of it, then a line per attempt."""
    at = record["started_at"]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    replica = record.get("replica")
    lines = [
        f"{when} ({format_age(at, now)})  request {_dash(record['request_id'])}  "
        f"run {_dash(record['run_id'])}  caller {record['caller']}"
        + (f"  replica {replica}" if replica else ""),
        f"  requested {record['requested']} ({record['operation']})  outcome {record['outcome']}  "
        f"served by {_dash(record['served_by'])}",
    ]
    lines += aligned([ATTEMPT_HEADERS, *attempt_rows(record["attempts"])], indent="    ")
    if "prompt" in record:  # only when the operator set routing.record_prompts
        lines.append(f"  prompt {_prompt(record['prompt'])}")
    return lines


def _prompt(prompt: object) -> str:
    text = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
    line = " ".join(text.split())
    return line if len(line) <= PROMPT_WIDTH else line[: PROMPT_WIDTH - 1] + "…"


@click.command()
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_LIMIT,
    show_default=True,
    metavar="N",
    help="Show the N newest records.",
)
@click.option("--replica", metavar="ID", help="Only the records of the replica with this id.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON.")
@admin_options
def failovers(limit: int, replica: str | None, as_json: bool, client: AdminClient) -> None:
    """Show the recent failover records, newest first.

    A request leaves one when it needed more than one attempt, or failed. Each record names the
    request, its run and caller, what was asked for and which lane served it, then each attempt:
    its lane, outcome (served, failed, or skipped while the lane's breaker was open), the upstream
    status and error code, the time it queued for a pool slot and the time the call took.
    Every replica's records (from the database), each naming its replica."""
    params = {"limit": str(limit)}
    if replica:
        params["replica"] = replica
    body = client.get("/admin/failovers", params)
    if as_json:
        print_json(body)
        return
    if body.get("degraded"):  # the database could not be read: one replica's, from its memory
        click.echo(f"note: {body['degraded']}", err=True)
    records, kept = body["failovers"], body["kept"]
    if not records:
        click.echo("no failover records (a request that needed more than one attempt, or failed, leaves one)")
        return
    now = body.get("now", time.time())
    blocks = ["\n".join(record_lines(record, now)) for record in records]
    click.echo("\n\n".join(blocks))
    if kept > len(records):
        click.echo(f"\n{len(records)} of {kept} kept records shown; pass --limit to see more")
