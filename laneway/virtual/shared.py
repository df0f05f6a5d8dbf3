"""Where the truth about publisher sessions lives: this replica's registry alone (``Solo``, the
embedded default), or a store every replica of a cluster shares, mirrored by each
(``laneway.virtual.mirror``; the store is ``laneway.cluster.fleet``'s, on Redis).

Every change of the sessions goes through ``SharedRegistry.change(name, apply)``: ``apply`` is a
change of the registry (the state machine of ``laneway.virtual.registry``) confined to the
sessions published as ``name``. Alone, it is simply run. In a cluster the registry's sessions of
that name are first made what the store holds, ``apply`` is run on them and what it changed is
written back, so two replicas never both take a name; after a conflict it is run again, on the
newer state. ``apply`` must therefore find what it changes by id or name (the objects may be new
ones) and give the same result when run again on the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from laneway.virtual.records import Session

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Record:
    """The shared record of one publisher name: its sessions and rows (``records.to_record``),
    and the version the store gave it (0: the store holds none). Versions only grow, across
    names: a replica told of two records of one name keeps the later one."""

    version: int
    data: dict[str, Any]


EMPTY: dict[str, Any] = {"sessions": []}


class SessionStore(Protocol):
    """The shared records, and how the other replicas hear of a new one."""

    async def load(self, name: str) -> Record: ...

    async def load_all(self) -> dict[str, Record]: ...

    async def save(
        self, name: str, data: dict[str, Any], expected: int, session_ids: list[str]
    ) -> int | None:
        """Write the record if the stored one is still version ``expected`` (0: none); returns
        its new version, or None when another replica wrote it since. ``session_ids`` are the
        sessions it holds: each is found by id (``name_of``) until the record lapses."""

    async def name_of(self, session_id: str) -> str | None: ...

    async def announce(self, name: str, record: Record) -> None:
        """Tell the other replicas (they mirror it at once, without a read)."""


class SharedRegistry(Protocol):
    async def change(self, name: str, apply: Callable[[], T]) -> T:
        """Run ``apply`` on the sessions of ``name`` as they stand, and make what it changed the
        truth (see the module's docstring). Its errors are raised as they are."""

    def soon(self, name: str, apply: Callable[[], object]) -> None:
        """``apply`` was just run on this replica's registry (it could not wait: a control
        stream ended): make it the truth too, in the background."""

    async def find(self, session_id: str) -> None:
        """Make sure a session this replica has not heard of yet is in its registry, if it
        exists (a publisher registered on one replica and heartbeats on another)."""

    def changed(self, name: str, before: list[Session]) -> None:
        """A change of ``name`` made here is done (``before``: its sessions before it): what this
        replica holds follows the new state (``Sessions.reconcile``)."""


class Solo:
    """One replica alone: its registry is the truth, and every change is simply run."""

    async def change(self, name: str, apply: Callable[[], T]) -> T:
        return apply()

    def soon(self, name: str, apply: Callable[[], object]) -> None:
        pass  # already run, on the only registry there is

    async def find(self, session_id: str) -> None:
        pass

    def changed(self, name: str, before: list[Session]) -> None:
        pass  # what follows a change here was done by whoever made it
