"""``laneway models``: what the configured backends can serve right now."""

from __future__ import annotations

import click
import orjson

from laneway.cli.common import config_option, friendly_errors, print_table, run_async, settings_or_exit
from laneway.config.schema import BackendConfig, Settings
from laneway.inventory.lanes import Lane


async def discover(settings: Settings) -> tuple[list[Lane], dict[str, str]]:
    """One reconciliation cycle over the config's backends, wired as the gateway wires it
    (``gateway.build_reconciler``) but without a server or a database: nothing cached, nothing
    kept."""
    from laneway.clock import SystemClock
    from laneway.gateway import build_reconciler
    from laneway.inventory.store import Inventory
    from laneway.storage import MemoryStore

    clock = SystemClock()
    store = MemoryStore(clock)

    async def declared() -> dict[str, BackendConfig]:
        return dict(settings.backends)

    inventory = Inventory()
    reconciler = build_reconciler(
        settings, inventory=inventory, runtime=store, cache=store, clock=clock, declared=declared
    )
    try:
        await reconciler.sync_declared()
        statuses = await reconciler.cycle()
    finally:
        await reconciler.aclose()
    errors = {st.name: st.last_error for st in statuses if st.last_error}
    return inventory.lanes(), errors


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def models(config_path: str | None, as_json: bool) -> None:
    """Ask every backend in the config which models it serves (a one-off discovery)."""
    settings = settings_or_exit(config_path)
    if not settings.backends:
        raise click.ClickException("no backends are declared; pass --config FILE (or set LANEWAY_CONFIG)")
    lanes, errors = run_async(discover(settings))
    if as_json:
        rows = [
            {
                "model": ln.model,
                "backend": ln.backend,
                "type": ln.type,
                "context_length": ln.context_length,
                "lane": ln.id,
            }
            for ln in lanes
        ]
        click.echo(orjson.dumps({"lanes": rows, "errors": errors}, option=orjson.OPT_INDENT_2).decode())
    else:
        table = [
            [ln.model, ln.backend, ln.type, str(ln.context_length or "-"), ln.id]
            for ln in sorted(lanes, key=lambda x: (x.model, x.backend, x.type))
        ]
        print_table(["MODEL", "BACKEND", "TYPE", "CONTEXT", "LANE"], table)
        for name, err in errors.items():
            click.echo(f"! {name}: {err}", err=True)
    if errors:
        raise SystemExit(1)
