"""``laneway pools``: a running gateway's pools (``GET /admin/pools``), once or as a watch.

One row per pool: a backend's, or a lane's for a backend with ``pool: lane``. A pool exists once a
request first went through it, so a gateway that has served nothing shows none.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import click

from laneway.cli.admin import AdminClient, admin_options, print_json, redraw
from laneway.cli.common import format_duration, print_table

HEADERS = [
    "POOL",
    "SLOTS",
    "ACTIVE",
    "QUEUED",
    "WAIT P50",
    "WAIT P95",
    "SERVED",
    "REJECTED",
    "TIMED OUT",
    "CANCELLED",
    "TOP QUEUED",
    "REPLICAS",
]
TOP_CALLERS = 3  # callers named in TOP QUEUED; the rest are counted; --json has them all


def format_wait(seconds: float | None) -> str:
    """``-`` (no samples), ``0.4ms``, ``12ms``, ``3.2s``, ``1m05s``."""
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_duration(seconds)


def top_callers(queued_by_caller: Mapping[str, int], n: int = TOP_CALLERS) -> str:
    """``app=12,ops=3,+2 more``: the callers with the most requests queued, most first (ties by
    name); ``-`` when nobody waits."""
    ranked = sorted(queued_by_caller.items(), key=lambda item: (-item[1], item[0]))
    shown = [f"{caller}={count}" for caller, count in ranked[:n]]
    if len(ranked) > n:
        shown.append(f"+{len(ranked) - n} more")
    return ",".join(shown) or "-"


def pool_rows(pools: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            p["name"],
            str(p["slots"]),
            str(p["active"]),
            str(p["queued"]),
            format_wait(p["wait_p50"]),
            format_wait(p["wait_p95"]),
            str(p["served"]),
            str(p["rejected"]),
            str(p["timed_out"]),
            str(p["cancelled"]),
            top_callers(p["queued_by_caller"]),
            replica_shares(p.get("replicas")),
        ]
        for p in pools
    ]


def replica_shares(replicas: Mapping[str, Mapping[str, int]] | None) -> str:
    """``r1=2,r2=1+3q``: the slots each replica holds and (``+Nq``) the requests it has queued,
    for a pool counted across the cluster; ``-`` for a pool of this replica alone."""
    if not replicas:
        return "-"
    return ",".join(
        f"{name}={share.get('held', 0)}" + (f"+{share['queued']}q" if share.get("queued") else "")
        for name, share in replicas.items()
    )


def print_pools(pools: list[dict[str, Any]]) -> None:
    if pools:
        print_table(HEADERS, pool_rows(pools))
    else:
        click.echo("the gateway has no pools yet (a backend's pool appears with its first request)")


@click.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print the gateway's JSON (one line per draw with --watch)."
)
@click.option("--watch", is_flag=True, help="Redraw until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Time between draws of --watch.",
)
@click.option("--count", type=click.IntRange(min=1), hidden=True, help="Stop --watch after N draws.")
@admin_options
def pools(as_json: bool, watch: bool, interval: float, count: int | None, client: AdminClient) -> None:
    """Show a running gateway's pools: slots, who holds and who waits, what became of requests.

    ACTIVE counts the slots held; QUEUED the requests waiting for one. WAIT P50 and P95 are how
    long recent requests waited for their slot. SERVED, REJECTED (the queue was full), TIMED OUT
    (waited queue_timeout) and CANCELLED (the caller left while queued) count since the pool was
    created. TOP QUEUED names the callers with the most requests waiting."""

    def fetch() -> dict[str, Any]:
        return client.get("/admin/pools")

    if not watch:
        body = fetch()
        if as_json:
            print_json(body)
        else:
            print_pools(body["pools"])
        return

    def pause() -> bool:
        time.sleep(interval)
        return True

    try:
        redraw(
            fetch,
            pause,
            key="pools",
            draw=lambda body, _previous, _now: print_pools(body["pools"]),
            header=f"{client.base_url}/admin/pools",
            count=count,
            as_json=as_json,
        )
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends
        pass
