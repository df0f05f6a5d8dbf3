"""``laneway replicas``: the live replicas of a running gateway (``GET /admin/replicas``).

One row per replica whose lease has not lapsed (``cluster.lease_ttl``): its id, where it is
reached, its version, when it started, its last heartbeat, the publishers' control streams it
holds and the pool slots its requests use. The replica that answered is marked with ``*``. In the
embedded default (``memory://``) the list is that one replica; replicas that share a Redis
(``storage.runtime_url: redis://...``) all see each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from laneway.cli.admin import AdminClient, admin_options, print_json
from laneway.cli.common import format_age, print_table

HEADERS = ["REPLICA", "ADDRESS", "VERSION", "STARTED", "HEARTBEAT", "CONTROL STREAMS", "SLOTS"]


def replica_rows(body: Mapping[str, Any]) -> list[list[str]]:
    now, answered = body["now"], body["replica"]
    return [
        [
            ("* " if r["id"] == answered else "  ") + r["id"],
            r["address"],
            r["version"],
            format_age(r["started"], now),
            format_age(r["heartbeat"], now),
            str(r["control_streams"]),
            str(r["slots_leased"]),
        ]
        for r in body["replicas"]
    ]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON.")
@admin_options
def replicas(as_json: bool, client: AdminClient) -> None:
    """Show the live replicas: who is in the cluster, and what each one holds (* answered)."""
    body = client.get("/admin/replicas")
    if as_json:
        print_json(body)
        return
    print_table(HEADERS, replica_rows(body))
