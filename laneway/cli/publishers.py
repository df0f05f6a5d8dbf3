"""``laneway publishers``: a running gateway's publisher sessions (``GET /admin/publishers``).

One row per session: the publisher's name, the token that opened it, its state, whether its
control stream is open, its last heartbeat, its lanes by state and its tasks in flight. The
sessions live in the gateway's memory, so each replica shows the publishers connected to it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import click

from laneway.cli.admin import AdminClient, admin_options, print_json
from laneway.cli.common import format_age, print_table

HEADERS = ["NAME", "OWNER", "STATE", "CONTROL", "HEARTBEAT", "LANES", "IN FLIGHT", "SESSION"]


def lanes_summary(lanes: list[Mapping[str, Any]]) -> str:
    """``2 active, 1 inactive``; ``-`` for none."""
    counts = Counter(str(lane["state"]) for lane in lanes)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "-"


def rows(publishers: list[Mapping[str, Any]], now: float) -> list[list[str]]:
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
        ]
        for p in publishers
    ]


@click.command()
@click.option("--lanes", "show_lanes", is_flag=True, help="List each session's lanes too.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON.")
@admin_options
def publishers(show_lanes: bool, as_json: bool, client: AdminClient) -> None:
    """Show a running gateway's publishers (``laneway publish`` sessions) and their lanes.

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
    print_table(HEADERS, rows(found, now))
    if body.get("pending_tasks"):
        click.echo(f"\n{body['pending_tasks']} task(s) waiting for their publisher to come back")
    if show_lanes:
        for p in found:
            click.echo(f"\n{p['name']} ({p['session_id']})")
            print_table(["LANE", "TYPE", "STATE"], [[ln["id"], ln["type"], ln["state"]] for ln in p["lanes"]])
