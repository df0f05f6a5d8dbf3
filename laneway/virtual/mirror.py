"""A cluster's publisher sessions: one truth in a shared store, a mirror of it in every replica.

The truth about the sessions of a publisher name (its record, ``laneway.virtual.shared.Record``)
lives in the ``SessionStore`` every replica shares; each replica's ``Registry`` (and so its
inventory's virtual lanes) mirrors it. A change (``change``) is made on the record as stored:
read, made the mirror's, the registry's state machine run on it, written back if the record is
still the version read (compare and set), and announced, so the others mirror it at once without
a read; after a conflict it is made again on the newer record. Changes of one name on one replica
wait for each other (fewer conflicts; each sees the previous one's result).

A record heard of (``received``) is taken when it is newer than the one mirrored; a replica that
starts, or listens again after the bus was away (when it may have missed some), reads them all
(``reload``). Each time the mirror of a name changes, ``reconcile`` makes what this replica holds
follow (``Sessions.reconcile``).

When the store cannot be reached, a change is made on the mirror alone (said once in the log):
publishers keep being served from what this replica knows, and the store's record wins again once
it is back. A session only this replica knew then (registered meanwhile) is written back by the
replica holding its control stream; the others forget what the store no longer has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from laneway.errors import LanewayError
from laneway.storage.errors import StorageError
from laneway.virtual.errors import RelayUnavailable
from laneway.virtual.records import Session
from laneway.virtual.registry import Registry
from laneway.virtual.shared import EMPTY, Record, SessionStore

log = logging.getLogger("laneway.virtual")

T = TypeVar("T")
ATTEMPTS = 8  # conflicts in a row before a change gives up (each means another replica wrote)

Reconcile = Callable[[str, list[Session]], None]


class Mirror:
    """The ``SharedRegistry`` of a cluster replica (``me``): ``registry`` mirrors ``store``."""

    def __init__(self, registry: Registry, store: SessionStore, reconcile: Reconcile, *, me: str) -> None:
        self._registry = registry
        self._store = store
        self._reconcile = reconcile
        self._me = me
        self._versions: dict[str, int] = {}  # by name: the version of the record mirrored
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._away = False  # the store could not be reached last time (said once)

    # -- changes made here ---------------------------------------------------------------------

    async def change(self, name: str, apply: Callable[[], T]) -> T:
        async with self._locks.setdefault(name, asyncio.Lock()):
            for _ in range(ATTEMPTS):
                try:
                    record = await self._store.load(name)
                except StorageError as exc:
                    self._unreachable(exc)
                    return apply()
                self._adopt(name, record)
                result = apply()
                data = self._registry.record(name)
                if data == record.data:
                    return result  # nothing changed: nothing to write
                ids = [s.id for s in self._registry.named(name)]
                try:
                    version = await self._store.save(name, data, record.version, ids)
                except StorageError as exc:
                    self._unreachable(exc)
                    return result
                if version is None:
                    continue  # another replica wrote it meanwhile: again, on its record
                self._reachable()
                self._versions[name] = max(self._versions.get(name, 0), version)
                # Announced once the caller has done what follows here (a control stream bound:
                # a task another replica sends on hearing of it must find the stream open).
                self._spawn(self._store.announce(name, Record(version, data)), f"announce-{name}")
                return result
        raise RelayUnavailable(f"publisher '{name}' is being changed by other replicas; try again")

    def soon(self, name: str, apply: Callable[[], object]) -> None:
        self._spawn(self._soon(name, apply), f"fleet-{name}")

    def _spawn(self, work: Coroutine[Any, Any, None], label: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=label)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _soon(self, name: str, apply: Callable[[], object]) -> None:
        before = self._registry.named(name)
        try:
            await self.change(name, apply)
        except LanewayError as exc:
            log.warning("publisher '%s' not changed in the shared state: %s", name, exc.message)
        self._reconcile(name, before)

    def changed(self, name: str, before: list[Session]) -> None:
        self._reconcile(name, before)

    # -- the shared state, mirrored ------------------------------------------------------------

    def _adopt(self, name: str, record: Record) -> None:
        """Make the mirror of ``name`` the record, unless it is the version mirrored already
        (the mirror may then hold a change of this replica not written yet: kept, and written
        with the next change)."""
        if record.version == self._versions.get(name, 0):
            return
        self._take(name, record)

    def _take(self, name: str, record: Record) -> None:
        before = self._registry.replace(name, record.data)
        if record.version:
            self._versions[name] = record.version
        else:
            self._versions.pop(name, None)
        self._reconcile(name, before)

    async def received(self, name: str, record: Record) -> None:
        """Another replica changed ``name``: mirrored, if newer than what is."""
        if record.version > self._versions.get(name, 0):
            self._take(name, record)

    async def find(self, session_id: str) -> None:
        if session_id in self._registry.sessions:
            return
        try:
            name = await self._store.name_of(session_id)
            if name is not None:
                self._adopt(name, await self._store.load(name))
        except StorageError as exc:
            self._unreachable(exc)

    async def reload(self) -> None:
        """Every record, as the store has it (at start, and after the bus was away)."""
        try:
            records = await self._store.load_all()
        except StorageError as exc:
            self._unreachable(exc)
            return
        for name, record in records.items():
            self._take(name, record)
        for name in {s.name for s in self._registry.sessions.values()} - records.keys():
            if any(s.holder == self._me for s in self._registry.named(name)):
                await self._restore(name)
            else:
                self._take(name, Record(0, EMPTY))

    async def _restore(self, name: str) -> None:
        """Write back the record of a name the store lost, which a session held here is of."""
        data = self._registry.record(name)
        try:
            version = await self._store.save(name, data, 0, [s.id for s in self._registry.named(name)])
            if version is None:  # another replica was first: its record wins
                self._take(name, await self._store.load(name))
                return
        except StorageError as exc:
            self._unreachable(exc)
            return
        self._versions[name] = version
        self._spawn(self._store.announce(name, Record(version, data)), f"announce-{name}")

    def _unreachable(self, exc: StorageError) -> None:
        if not self._away:
            log.warning("publisher sessions are served from this replica's own state: %s", exc.message)
        self._away = True

    def _reachable(self) -> None:
        if self._away:
            log.info("publisher sessions are shared again")
        self._away = False

    async def aclose(self) -> None:
        """Let the changes and announcements under way finish (a replica stopping unbinds the
        sessions it held), for a moment at most."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=2)
        for task in list(self._background):
            task.cancel()
