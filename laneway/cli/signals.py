"""``laneway signals``: every backend's quota, latency and status, as the gateway last persisted them.

Read straight from the store the config names (the local cache directory in the embedded default,
Redis in cluster mode), not from the admin API: it works without an admin key, while the server
runs in another process, and after it stopped. What it shows is therefore as old as the last flush
(``signals.flush_interval``, one second by default); AGE says how old each backend's is. Status is
worked out again here, at this machine's clock, so a backend nobody has heard from for longer
than ``signals.ttl`` reads ``unknown`` even if the gateway is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import click
import orjson

from laneway.cli.admin import print_json
from laneway.cli.common import (
    config_option,
    format_duration,
    format_remaining,
    friendly_errors,
    print_table,
    run_async,
    settings_or_exit,
)
from laneway.config.schema import Settings
from laneway.signals.headers import Quota
from laneway.signals.state import BackendSignal, Status

_ERROR_WIDTH = 48  # LAST ERROR is a hint; the full message is in --json
_UNREADABLE = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError)


@dataclass
class Persisted:
    where: str  # the directory or the (redacted) Redis URL, for messages
    signals: list[BackendSignal]
    unreadable: int  # records that could not be read (another version's, or torn)


def read_persisted(settings: Settings) -> Persisted:
    """The persisted signals of the gateway ``settings`` describe; ``StoreUnavailable`` if the
    store cannot be used."""
    from laneway.clock import SystemClock
    from laneway.signals.store import read_persisted as scan
    from laneway.storage import FileStore, open_stores
    from laneway.storage.redisstore import redact_redis_url

    storage = settings.storage
    runtime, store = open_stores(storage.runtime_url, storage.data_dir, SystemClock())
    where = str(store.directory) if isinstance(store, FileStore) else redact_redis_url(storage.runtime_url)

    async def read() -> tuple[list[BackendSignal], int]:
        try:
            return await scan(store, settings.signals.window)
        finally:
            await store.aclose()
            if runtime is not store:
                await runtime.aclose()

    found, unreadable = run_async(read())
    return Persisted(where, found, unreadable)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the shape of GET /admin/signals).")
@click.option("--backend", metavar="B", help="Only this backend.")
@config_option
@friendly_errors
def signals(as_json: bool, backend: str | None, config_path: str | None) -> None:
    """Show each backend's runtime signal: status, quota left, latency, last error.

    Read from the gateway's store, so it needs no running server and no key. REQUESTS and TOKENS
    are remaining/limit as the provider last reported them; RESET is when the soonest counter
    resets (for an exhausted backend: when it is usable again); P50, P95 and TTFT P50 are over the
    recent window; AGE is how long ago anything was last observed."""
    settings = settings_or_exit(config_path)
    persisted = read_persisted(settings)
    if persisted.unreadable:
        click.echo(f"skipped {persisted.unreadable} unreadable signal record(s)", err=True)
    shown = [s for s in persisted.signals if backend is None or s.backend == backend]
    now, ttl = time.time(), settings.signals.ttl
    if as_json:
        print_json(
            {
                "now": now,
                "ttl": ttl,
                "where": persisted.where,
                "signals": [s.as_dict(now, ttl) for s in shown],
            }
        )
    elif shown:
        print_table(
            [
                "BACKEND",
                "FAMILY",
                "STATUS",
                "REQUESTS",
                "TOKENS",
                "RESET",
                "P50",
                "P95",
                "TTFT P50",
                "AGE",
                "LAST ERROR",
            ],
            [signal_row(s, now, ttl) for s in shown],
        )
    elif persisted.signals:
        known = ", ".join(s.backend for s in persisted.signals)
        click.echo(f"no signals recorded for backend '{backend}' (recorded: {known})")
    else:
        click.echo(
            f"no signals recorded yet in {persisted.where}; "
            "they appear after the gateway has served or probed a backend"
        )


def signal_row(sig: BackendSignal, now: float, ttl: float) -> list[str]:
    status = sig.status(now, ttl)
    latency, ttft = sig.latency.summary(), sig.ttft.summary()
    return [
        sig.backend,
        sig.family,
        status,
        format_quota(sig.requests),
        format_quota(sig.tokens),
        _reset(sig, status, now),
        format_ms(latency.p50),
        format_ms(latency.p95),
        format_ms(ttft.p50),
        "-" if sig.recorded_at is None else format_duration(now - sig.recorded_at),
        _short(sig.last_error),
    ]


def format_quota(quota: Quota | None) -> str:
    """``remaining/limit``; ``?`` for a half the provider did not report, ``-`` for neither."""
    if quota is None or (quota.remaining is None and quota.limit is None):
        return "-"

    def part(n: int | None) -> str:
        return "?" if n is None else str(n)

    return f"{part(quota.remaining)}/{part(quota.limit)}"


def format_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def _reset(sig: BackendSignal, status: Status, now: float) -> str:
    if status is Status.EXHAUSTED:
        return format_remaining(sig.exhausted_until, now)
    upcoming = [q.reset_at for q in (sig.requests, sig.tokens) if q and q.reset_at and q.reset_at > now]
    return format_remaining(min(upcoming), now) if upcoming else "-"


def _short(text: str | None) -> str:
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= _ERROR_WIDTH else line[: _ERROR_WIDTH - 1] + "…"
