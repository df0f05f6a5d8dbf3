"""``laneway cache``: a running gateway's model-list cache.

Only cloud and frontier backends' model lists are cached (default one hour), under the backend's
name, its endpoint (provider family and base URL) and a fingerprint of its credential. Clearing an
entry makes that backend's next refresh ask its provider; so does every ``laneway refresh`` (it
asks the upstreams unless given ``--cached``), without clearing.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import click

from laneway.cli.admin import AdminClient, admin_options, print_json
from laneway.cli.common import format_age, format_remaining, print_table


@click.group()
def cache() -> None:
    """The model-list cache of a running gateway."""


def cache_rows(entries: list[dict[str, Any]], ttl: float, now: float) -> list[list[str]]:
    return [
        [
            e["backend"],
            e["credential"],
            str(e["models"]),
            format_age(e["cached_at"], now),
            format_remaining(e["cached_at"] + ttl, now, past="expired"),
        ]
        for e in entries
    ]


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON.")
@admin_options
def list_cache(as_json: bool, client: AdminClient) -> None:
    """Show the cached model lists.

    CREDENTIAL is a fingerprint of the key the list was fetched with, never the key: a rotated
    key misses the cache at once."""
    body = client.get("/admin/model-cache")
    if as_json:
        print_json(body)
    elif not body["entries"]:
        click.echo("the model-list cache is empty (only cloud and frontier backends' lists are cached)")
    else:
        print_table(
            ["BACKEND", "CREDENTIAL", "MODELS", "CACHED", "EXPIRES"],
            cache_rows(body["entries"], body["ttl"], time.time()),
        )


@cache.command("clear")
@click.argument("backend", required=False)
@admin_options
def clear_cache(backend: str | None, client: AdminClient) -> None:
    """Forget BACKEND's cached model list (default: every backend's).

    The lanes stay as they are; the next refresh asks the provider."""
    if backend:
        n = client.delete(f"/admin/model-cache/{quote(backend, safe='')}")["invalidated"]
        click.echo(f"invalidated {_entries(n)} of backend '{backend}'")
    else:
        n = client.delete("/admin/model-cache")["invalidated"]
        click.echo(f"invalidated {_entries(n)}")


def _entries(n: int) -> str:
    return f"{n} cached model list" + ("" if n == 1 else "s")
