"""``laneway refresh``: make a running gateway refresh its backends now, not at their interval.

Useful after pulling a model into Ollama or rotating a cloud key: the answer says, per backend,
how many lanes it has now and whether the model list came from the upstream or the cache. An
operator who asks for a refresh wants today's list, so every backend is asked, cloud ones
included; ``--cached`` lets a cloud backend answer from the model-list cache instead.
"""

from __future__ import annotations

import time
from typing import Any

import click

from laneway.cli.admin import AdminClient, admin_options, print_json
from laneway.cli.common import format_remaining, print_table


def refresh_rows(statuses: list[dict[str, Any]], now: float) -> list[list[str]]:
    return [
        [
            st["name"],
            str(st["lanes"]),
            # After a failed refresh the status still holds the source of the last good one.
            "-" if st["last_error"] else st["source"] or "-",
            format_remaining(st["cooldown_until"], now),
            st["last_error"] or "ok",
        ]
        for st in sorted(statuses, key=lambda st: st["name"])
    ]


@click.command()
@click.argument("backend", required=False)
@click.option(
    "--cached",
    is_flag=True,
    help="Let cloud backends answer from their cached model list (default: ask every upstream).",
)
# The default since --cached exists; still accepted so scripts written for it keep working.
@click.option("--no-cache", "no_cache", is_flag=True, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON.")
@admin_options
def refresh(backend: str | None, cached: bool, no_cache: bool, as_json: bool, client: AdminClient) -> None:
    """Refresh a running gateway's backends now, and show what each found.

    Refreshes BACKEND, or every backend, asking each upstream for its models (--cached: a cloud
    backend's cached list will do), and waits for the result (as long as the slowest backend's
    refresh deadline). COOLDOWN is how long refreshes stay paused after the backend refused its
    credentials.

    Exit status 1 if any refreshed backend reports an error; the others are refreshed anyway."""
    if cached and no_cache:
        raise click.UsageError("--cached and --no-cache contradict each other; give one")
    params = {"backend": backend} if backend else {}
    params["cache"] = "true" if cached else "false"
    statuses: list[dict[str, Any]] = client.post("/admin/refresh", params)["backends"]
    if as_json:
        print_json({"backends": statuses})
    elif not statuses:
        click.echo("the gateway has no backends to refresh")
    else:
        print_table(["BACKEND", "LANES", "SOURCE", "COOLDOWN", "RESULT"], refresh_rows(statuses, time.time()))
    failed = [st["name"] for st in statuses if st["last_error"]]
    if failed:
        raise click.ClickException(
            f"refresh failed for {', '.join(sorted(failed))} ({len(failed)} of {len(statuses)})"
        )
