"""``laneway lanes``: a running gateway's live lane inventory, once or as a watch.

The rows are the gateway's own view (``GET /admin/lanes``), not a fresh discovery: what
``laneway models`` would find and what the router routes on can differ, and this shows the latter.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, get_args
from urllib.parse import urlencode

import click

from laneway.cli.admin import AdminClient, admin_options, print_json, redraw
from laneway.cli.common import format_remaining, print_table
from laneway.config.schema import Family
from laneway.inventory.lanes import Health, LaneType, Tier

Lanes = list[dict[str, Any]]

# What a watch reports as "changed"; observed_at and expires_at move on every refresh.
WATCHED_FIELDS = ("health", "weight", "loaded", "context_length", "capabilities")


def lane_filters(named: Mapping[str, str | None], where: Sequence[str]) -> dict[str, str]:
    """The query of ``GET /admin/lanes``: the named options and each ``--where FIELD=VALUE``.
    The gateway checks the field names; the same field given two values is refused here."""
    filters = {field: value for field, value in named.items() if value is not None}
    for item in where:
        field, sep, value = item.partition("=")
        field = field.strip()
        if not sep or not field:
            raise click.BadParameter(f"'{item}' is not FIELD=VALUE", param_hint="--where")
        if filters.get(field, value) != value:
            raise click.BadParameter(
                f"'{field}' is given twice ('{filters[field]}' and '{value}')", param_hint="--where"
            )
        filters[field] = value
    return filters


def _label(lane: Mapping[str, Any]) -> str:
    # backend/model is how a client names a lane's model in a selector; the type tells a chat
    # lane from an embedding lane of the same model.
    return f"{lane['backend']}/{lane['model']} ({lane['type']})"


def lane_changes(before: Lanes, after: Lanes) -> list[str]:
    """What changed between two draws, one line each: ``+`` added, ``-`` removed, ``~`` changed
    (only ``WATCHED_FIELDS``). Lanes are matched by id; lines come in lane order."""
    old = {lane["id"]: lane for lane in before}
    new = {lane["id"]: lane for lane in after}
    lines = []
    for lane_id in sorted(old.keys() | new.keys()):
        was, now = old.get(lane_id), new.get(lane_id)
        if was is None and now is not None:
            lines.append(f"+ {_label(now)}")
        elif now is None and was is not None:
            lines.append(f"- {_label(was)}")
        elif was is not None and now is not None:
            diffs = [
                f"{field} {_cell(was.get(field))} -> {_cell(now.get(field))}"
                for field in WATCHED_FIELDS
                if was.get(field) != now.get(field)
            ]
            if diffs:
                lines.append(f"~ {_label(now)}: {', '.join(diffs)}")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def print_lanes(lanes: Lanes, now: float, *, wide: bool) -> None:
    headers = ["BACKEND", "MODEL", "TYPE", "TIER", "HEALTH", "WEIGHT", "CONTEXT", "LOADED", "EXPIRES"]
    rows = []
    for ln in lanes:
        row = [
            ln["backend"],
            ln["model"],
            ln["type"],
            ln["tier"],
            ln["health"],
            _cell(ln["weight"]),
            _cell(ln["context_length"]),
            _cell(ln["loaded"]),
            format_remaining(ln["expires_at"], now, past="expired"),
        ]
        rows.append([*row, _cell(ln["capabilities"]), ln["id"]] if wide else row)
    print_table([*headers, "CAPABILITIES", "ID"] if wide else headers, rows)


@click.command()
@click.option("--backend", metavar="B", help="Only lanes of this backend.")
@click.option("--model", metavar="M", help="Only lanes of this model (its name upstream).")
@click.option("--tier", type=click.Choice([t.value for t in Tier]), help="Only lanes of this tier.")
@click.option("--family", type=click.Choice(get_args(Family)), help="Only lanes of this provider family.")
@click.option("--type", "lane_type", type=click.Choice([t.value for t in LaneType]), help="Only this type.")
@click.option("--health", type=click.Choice([h.value for h in Health]), help="Only lanes in this health.")
@click.option(
    "--where",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Filter on any lane field (repeatable); a list such as capabilities matches if it holds VALUE.",
)
@click.option("--wide", is_flag=True, help="Also show each lane's capabilities and id.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the gateway's JSON (one line per draw with --watch)."
)
@click.option(
    "--watch", is_flag=True, help="Redraw until Ctrl-C, with the lanes added (+), removed (-), changed (~)."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Time between draws of --watch.",
)
@click.option("--count", type=click.IntRange(min=1), hidden=True, help="Stop --watch after N draws.")
@click.option("--step", is_flag=True, hidden=True, help="Draw again on each line of stdin, not on a timer.")
@admin_options
def lanes(
    backend: str | None,
    model: str | None,
    tier: str | None,
    family: str | None,
    lane_type: str | None,
    health: str | None,
    where: tuple[str, ...],
    wide: bool,
    as_json: bool,
    watch: bool,
    interval: float,
    count: int | None,
    step: bool,
    client: AdminClient,
) -> None:
    """Show a running gateway's lanes: one per backend, model and type.

    These are what the router routes on. WEIGHT is the lane's weight in routing (0: out of
    rotation); EXPIRES is how long until the lane is dropped unless its backend reports it again."""
    # The hidden --count and --step let a test drive a watch without racing its timer.
    named = {
        "backend": backend,
        "model": model,
        "tier": tier,
        "family": family,
        "type": lane_type,
        "health": health,
    }
    filters = lane_filters(named, where)

    def fetch() -> dict[str, Any]:
        return client.get("/admin/lanes", filters)

    if not watch:
        body = fetch()
        if as_json:
            print_json(body)
        elif body["lanes"]:
            print_lanes(body["lanes"], body.get("now", time.time()), wide=wide)
        else:
            click.echo("no lanes match" if filters else "the gateway has no lanes (see `laneway backends`)")
        return

    def pause() -> bool:
        if step:
            return sys.stdin.readline() != ""  # EOF ends the watch
        time.sleep(interval)
        return True

    header = f"{client.base_url}/admin/lanes" + (f"?{urlencode(filters)}" if filters else "")
    try:
        _watch(fetch, pause, header=header, count=count, as_json=as_json, wide=wide)
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends
        pass


def _watch(
    fetch: Callable[[], dict[str, Any]],
    pause: Callable[[], bool],
    *,
    header: str,
    count: int | None,
    as_json: bool,
    wide: bool,
) -> None:
    """The lanes, drawn again and again, with what changed since the last draw."""

    def draw(body: dict[str, Any], previous: dict[str, Any] | None, now: float) -> None:
        print_lanes(body["lanes"], body.get("now", now), wide=wide)
        if previous is not None:
            changes = lane_changes(previous["lanes"], body["lanes"])
            click.echo("\n".join(changes) if changes else "no changes")

    redraw(fetch, pause, key="lanes", draw=draw, header=header, count=count, as_json=as_json)
