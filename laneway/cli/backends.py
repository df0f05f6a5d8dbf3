"""``laneway backends``: list, add and remove declared backends; ``status`` of the live ones.

Backends come from two places: the config file (edited by hand, read-only here) and the database
(managed with these commands). A name may be declared in only one of them. ``list``, ``add`` and
``remove`` work on that declared state without a server; ``status`` (the default) asks a running
gateway what its refreshes of them found.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, get_args

import click
from pydantic import ValidationError

from laneway.cli.admin import AdminClient, admin_options, print_json
from laneway.cli.common import (
    DefaultCommandGroup,
    config_option,
    database_url_option,
    format_age,
    format_remaining,
    friendly_errors,
    print_table,
    settings_or_exit,
    with_database,
)
from laneway.config.schema import NAME_RE, BackendConfig, Family, Settings, TierName

if TYPE_CHECKING:  # the storage stack is imported only by the commands that use it
    from laneway.storage import Database, StoredBackend


def _origin(settings: Settings) -> str:
    return settings.source or "the config file"


@click.group(cls=DefaultCommandGroup, default_command="status")
def backends() -> None:
    """Backends: live status, and the declared ones (config file, database).

    With no sub-command: `status`, from a running gateway."""


@backends.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON.")
@admin_options
def backend_status(as_json: bool, client: AdminClient) -> None:
    """What a running gateway's last refresh of each backend found (also: `laneway backends`).

    LAST REFRESH is the last successful one; SOURCE is where its model list came from (upstream
    or cache); COOLDOWN is how long refreshes stay paused after the credentials were refused. In
    a cluster, LEADER is the replica that refreshes and probes it for all of them."""
    body = client.get("/admin/backends")
    if as_json:
        print_json(body)
        return
    if not body["backends"]:
        click.echo("the gateway has no backends (declare some in the config or with `laneway backends add`)")
        return
    headers = ["NAME", "PROVIDER", "TIER", "LANES", "LAST REFRESH", "SOURCE", "COOLDOWN", "ERROR"]
    rows = status_rows(body["backends"], body.get("now", time.time()))
    if any(st.get("leader") for st in body["backends"]):  # cluster mode: who leads each one's discovery
        headers.insert(-1, "LEADER")
        for row, st in zip(rows, body["backends"], strict=True):
            row.insert(-1, st["leader"] or "-")
    print_table(headers, rows)


def status_rows(statuses: list[dict[str, Any]], now: float) -> list[list[str]]:
    return [
        [
            st["name"],
            st["family"],
            st["tier"],
            str(st["lanes"]),
            format_age(st["last_refresh"], now),
            st["source"] or "-",
            format_remaining(st["cooldown_until"], now),
            st["last_error"] or "-",
        ]
        for st in statuses
    ]


@backends.command("list")
@config_option
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def list_backends(config_path: str | None, database_url: str | None, as_json: bool) -> None:
    """Show declared backends and where each is declared.

    SOURCE is "config" (the config file) or "db" (added with `laneway backends add`)."""
    settings = settings_or_exit(config_path)

    async def fetch(db: Database) -> list[StoredBackend]:
        return await db.backends.list()

    stored = with_database(settings, database_url, fetch)
    rows: list[dict[str, Any]] = []
    for name, cfg in sorted(settings.backends.items()):
        rows.append(_row(name, cfg, "config"))
    for sb in stored:
        # The gateway lets the config file win when both declare a name.
        source = "db (shadowed by config)" if sb.name in settings.backends else "db"
        rows.append(_row(sb.name, sb.config, source))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no backends declared (add one with `laneway backends add` or in the config file)")
        return
    print_table(
        ["NAME", "PROVIDER", "BASE_URL", "TIER", "SOURCE"],
        [[r["name"], r["provider"], r["base_url"], r["tier"], r["source"]] for r in rows],
    )


def _row(name: str, cfg: BackendConfig, source: str) -> dict[str, Any]:
    return {
        "name": name,
        "provider": cfg.provider,
        "base_url": cfg.base_url,
        "tier": cfg.effective_tier,
        "models": cfg.model_dump(mode="json", include={"models"})["models"],
        "api_key_env": cfg.api_key_env,
        "source": source,
    }


@backends.command("add")
@click.argument("name")
@click.option("--provider", required=True, type=click.Choice(get_args(Family)), help="Provider family.")
@click.option("--base-url", "base_url", required=True, metavar="URL", help="The backend's base URL.")
@click.option(
    "--api-key-env", "api_key_env", metavar="VAR", help="Environment variable that holds the API key."
)
@click.option("--tier", type=click.Choice(get_args(TierName)), help="Tier (default: by provider).")
@click.option("--model", "models", multiple=True, metavar="M", help="A model it serves (repeatable).")
@config_option
@database_url_option
@friendly_errors
def add_backend(
    name: str,
    provider: str,
    base_url: str,
    api_key_env: str | None,
    tier: str | None,
    models: tuple[str, ...],
    config_path: str | None,
    database_url: str | None,
) -> None:
    """Declare backend NAME in the database.

    No restart is needed: a running gateway picks it up within inventory.declared_reload seconds
    (10 by default), or at once on `laneway refresh`, and refreshes it then."""
    if not NAME_RE.match(name):
        raise click.ClickException(
            f"'{name}' is not a valid backend name (letters, digits, '.', '_', '-'; at most 63)"
        )
    given = {"provider": provider, "base_url": base_url, "api_key_env": api_key_env, "tier": tier}
    try:
        cfg = BackendConfig.model_validate(
            {**{k: v for k, v in given.items() if v is not None}, "models": list(models)}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        message = first["msg"].removeprefix("Value error, ")
        if field:
            option = "--" + ("model" if field == "models" else field.replace("_", "-"))
            raise click.ClickException(f"invalid {option} ({field}): {message}") from None
        raise click.ClickException(f"invalid backend: {message}") from None
    settings = settings_or_exit(config_path)
    if name in settings.backends:
        raise click.ClickException(f"backend '{name}' is already declared in {_origin(settings)}")

    async def store(db: Database) -> None:
        await db.backends.add(name, cfg)

    with_database(settings, database_url, store)
    click.echo(f"added backend '{name}' ({cfg.provider}, {cfg.base_url}, tier {cfg.effective_tier})")


@backends.command("remove")
@click.argument("name")
@config_option
@database_url_option
@friendly_errors
def remove_backend(name: str, config_path: str | None, database_url: str | None) -> None:
    """Remove backend NAME from the database.

    A running gateway drops it, and its lanes, within inventory.declared_reload seconds (10 by
    default), or at once on `laneway refresh`."""
    settings = settings_or_exit(config_path)
    if name in settings.backends:
        raise click.ClickException(
            f"backend '{name}' is declared in {_origin(settings)}; edit the file to remove it"
        )

    async def remove(db: Database) -> tuple[bool, str]:
        return await db.backends.remove(name), db.url

    removed, url = with_database(settings, database_url, remove)
    if not removed:
        raise click.ClickException(f"no backend named '{name}' in the database at {url}")
    click.echo(f"removed backend '{name}'")
