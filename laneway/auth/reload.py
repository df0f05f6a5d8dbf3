"""Keeping the running gateway's client keys and publisher tokens current.

The config file's keys and tokens are fixed for the process's life; the database's (``laneway
keys create``, ``laneway publishers tokens create``) are read again every ``interval`` seconds,
so a key created or revoked with the CLI reaches a running server within one interval. Both are
read before either is applied: a failed read leaves both as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from laneway.auth.keys import KeyEntries, KeyRing, merge_key_entries, stored_key_entries
from laneway.auth.tokens import PublisherGrant, PublisherTokens
from laneway.clock import Clock
from laneway.errors import LanewayError
from laneway.storage import Database

log = logging.getLogger("laneway")


class KeyReloader:
    def __init__(
        self,
        db: Database,
        keys: KeyRing,
        tokens: PublisherTokens,
        config: KeyEntries,
        clock: Clock,
        *,
        interval: float = 5.0,
        on_reload: Callable[[], object] = lambda: None,
    ) -> None:
        self.db = db
        self.keys = keys
        self.tokens = tokens
        self.config = config  # the config file's keys, as hashes (``config_key_hashes``)
        self.clock = clock
        self.interval = interval
        # Called after each reload: the fleet cuts off the sessions of revoked publisher tokens.
        self.on_reload = on_reload

    async def reload(self) -> None:
        stored = await self.db.keys.active()
        tokens = await self.db.publisher_tokens.active()
        callers, admins, grants = merge_key_entries(self.config, stored_key_entries(stored))
        self.keys.replace(callers, admins=admins, grants=grants)
        self.tokens.replace_stored(
            {h: PublisherGrant(t.name, t.names, t.models, t.join_declared) for h, t in tokens.items()}
        )
        self.on_reload()

    async def run(self) -> None:
        """Forever. One warning when the database starts failing, one line when it is back: not a
        line (let alone a traceback) every interval of an outage."""
        failing = False
        while True:
            await self.clock.sleep(self.interval)
            try:
                await self.reload()
            except LanewayError as exc:  # the database may be away for a while; keep the keys we have
                if not failing:
                    log.warning(
                        "could not reload API keys and publisher tokens; keeping the ones loaded",
                        extra={"error": exc.message},
                    )
                failing = True
            except Exception:  # a bug, not an outage: its traceback once per interval is the point
                log.exception("could not reload API keys and publisher tokens")
            else:
                if failing:
                    log.info("API keys and publisher tokens reloaded again")
                failing = False
