"""What a ``SharedPool`` asks of the cluster's count of its slots: the ``Ledger`` and its answers.
``laneway.cluster.slots.RedisSlots`` is the ledger on Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

GRANTED, QUEUED, FULL = 1, 0, 2  # acquire's outcomes
LEFT, HOLDS, GAVE_BACK = 0, 1, 2  # leave's outcomes (-1: unknown ticket)


@dataclass(frozen=True, slots=True)
class Answer:
    """A ledger's answer: the outcome, and the pool's cluster-wide count as of that moment."""

    outcome: int
    held: int  # slots held across the cluster
    queued: int  # requests waiting across the cluster
    replicas: int = 1  # replicas alive (for the local share, should the ledger go away)
    # Tickets of the replica that asked, granted by this very change (a slot its call freed went
    # to another request of its own): told here rather than by a message.
    granted: tuple[str, ...] = ()
    elsewhere: int = 0  # of the requests queued, those queued by other replicas


@dataclass(frozen=True, slots=True)
class Synced:
    granted: list[str]  # tickets of this replica that hold a lease now
    held: int
    queued: int
    next_lapse: float | None  # seconds until the pool's first lease lapses (None: it has none)
    replicas: int  # replicas alive (for the local share while the ledger is away)
    elsewhere: int = 0  # requests other replicas have queued


class Ledger(Protocol):
    """The cluster's count of every pool's slots and its fair queue. Each call is atomic; each
    raises ``StoreUnavailable`` when the ledger cannot be reached."""

    replica: str

    def ticket(self) -> str: ...

    async def acquire(
        self, pool: str, slots: int, ticket: str, caller: str, priority: int, queue_size: int
    ) -> Answer: ...

    async def leave(self, pool: str, slots: int, ticket: str, *, give_back: bool) -> Answer:
        """Take ``ticket`` out of the queue; if it holds a lease (granted meanwhile), say so, and
        with ``give_back`` release it (a slot given back is how every slot comes back)."""

    async def sync(
        self,
        pool: str,
        slots: int,
        held: Sequence[str],
        gone: Sequence[str],
        queued: Sequence[tuple[str, int, str]],
    ) -> Synced: ...

    async def transfer(self, pool: str, slots: int, lease: str, ticket: str) -> Answer:
        """The slot of ``lease`` went, on this replica, to the request of the queued ``ticket``:
        the lease becomes the ticket's (its queue entry goes). If the ticket was granted a slot
        of its own meanwhile, the lease is given back instead (outcome 2)."""

    async def census(self, pool: str) -> dict[str, tuple[int, int]]:
        """Replica -> (leases it holds, tickets it has queued), read now."""
