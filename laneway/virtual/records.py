"""Publisher sessions and their rows as data, and as the record one publisher name is kept in.

A *row* is one virtual lane as registered: which session owns it, its state (active,
hibernating, inactive) and what the publisher offered for it (to build the lane from). A
*session* is one publisher connection's registration; ``holder`` is the replica whose control
stream it is bound to (None: none is open), and ``epoch`` counts its binds, so a task sent on an
older bind is known to be lost when it is bound again (``laneway.virtual.dispatch``).

The *record* of a publisher name is every session of that name with its rows, as JSON: the unit
the replicas of a cluster share (``laneway.virtual.mirror``), since the register rules only ever
weigh sessions of one name against each other (a lane id holds its publisher's name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from laneway.inventory.lanes import Health
from laneway.publishing.protocol import LaneOffer, read


class State(StrEnum):
    ACTIVE = "active"
    HIBERNATING = "hibernating"
    INACTIVE = "inactive"
    # A publisher that is stopping: its lanes take no new task (inactive) but the tasks it is
    # running are left to finish (a session state; its rows are inactive).
    DRAINING = "draining"


HEALTH = {
    State.ACTIVE: Health.HEALTHY,
    State.HIBERNATING: Health.HIBERNATING,
    State.INACTIVE: Health.INACTIVE,
}


@dataclass(slots=True)
class Row:
    lane_id: str
    session_id: str
    state: State
    inactive_since: float | None = None
    offer: LaneOffer | None = None  # what the publisher registered (None only in hand-made rows)


@dataclass(slots=True)
class Session:
    id: str
    owner: str  # the publisher token's name
    name: str  # the publisher's name: the lanes' instance id and backend name
    max_concurrency: int
    state: State  # what the publisher last said: active or hibernating
    last_heartbeat: float
    rows: set[str] = field(default_factory=set)  # lane ids it owns
    join_declared: bool = False  # its token may publish models that declared backends serve
    # Registered, its control stream not open yet: not routable, but its name is not up for
    # adoption either, for a heartbeat_timeout (the publisher is connecting).
    connecting: bool = False
    holder: str | None = None  # the replica its control stream is open on (None: closed)
    epoch: int = 0  # bumped at every bind: a task sent on an older one is lost

    @property
    def bound(self) -> bool:
        """Its control stream is open (on ``holder``)."""
        return self.holder is not None

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "session_id": self.id,
            "owner": self.owner,
            "name": self.name,
            "state": self.state,
            "control": self.bound,
            "holder": self.holder or None,  # the replica's id ("": this one, alone)
            "max_concurrency": self.max_concurrency,
            "last_heartbeat": self.last_heartbeat,
            "heartbeat_age": round(now - self.last_heartbeat, 3),
            "lanes": sorted(self.rows),
        }


@dataclass(frozen=True, slots=True)
class SweepResult:
    # Sessions that went inactive (heartbeat timeout): their control streams are to be closed
    # and their tasks in flight given back (the registry does neither: it holds no tasks).
    inactivated: list[Session]
    deleted: list[str]  # lane ids deleted (inactive too long)


# -- the record of one publisher name ------------------------------------------------------------


def to_record(sessions: list[Session], rows: dict[str, Row]) -> dict[str, Any]:
    """``sessions`` (all of one name) and their rows as JSON-ready data, in a stable order (two
    records of the same state are equal)."""
    out = []
    for session in sorted(sessions, key=lambda s: s.id):
        owned = [rows[lane_id] for lane_id in sorted(session.rows) if lane_id in rows]
        out.append(
            {
                "id": session.id,
                "owner": session.owner,
                "name": session.name,
                "max_concurrency": session.max_concurrency,
                "state": str(session.state),
                "last_heartbeat": session.last_heartbeat,
                "join_declared": session.join_declared,
                "connecting": session.connecting,
                "holder": session.holder,
                "epoch": session.epoch,
                "rows": [
                    {
                        "lane": row.lane_id,
                        "state": str(row.state),
                        "inactive_since": row.inactive_since,
                        "offer": _said(row.offer),
                    }
                    for row in owned
                ],
            }
        )
    return {"sessions": out}


def from_record(record: dict[str, Any]) -> tuple[list[Session], list[Row]]:
    """The sessions and rows a record holds (``to_record``'s inverse). A record is written by
    laneway only, so a malformed one is a bug: it raises ``KeyError``/``ValueError``."""
    sessions: list[Session] = []
    rows: list[Row] = []
    for data in record.get("sessions", []):
        session = Session(
            id=data["id"],
            owner=data["owner"],
            name=data["name"],
            max_concurrency=int(data["max_concurrency"]),
            state=State(data["state"]),
            last_heartbeat=float(data["last_heartbeat"]),
            join_declared=bool(data["join_declared"]),
            connecting=bool(data["connecting"]),
            holder=data["holder"],
            epoch=int(data["epoch"]),
        )
        for row in data["rows"]:
            offer = read(LaneOffer, row["offer"]) if row["offer"] is not None else None
            rows.append(Row(row["lane"], session.id, State(row["state"]), row["inactive_since"], offer))
            session.rows.add(row["lane"])
        sessions.append(session)
    return sessions, rows


def _said(offer: LaneOffer | None) -> dict[str, Any] | None:
    if offer is None:
        return None
    return {name: value for name, value in offer.model_dump(mode="json").items() if value is not None}
