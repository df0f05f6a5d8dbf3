"""Publisher sessions and their virtual lanes: the lifecycle state machine.

A *row* is one virtual lane as registered (``laneway.virtual.records``): which session owns it and
its state (active, hibernating, inactive). The lane itself lives in the inventory (tier ``fleet``, provider
``virtual``, instance = the publisher's name), with the state mirrored into its health so the
router needs nothing special: inactive lanes weigh 0, hibernating ones half.

Register is an upsert honouring the sticky session id (the reference's rules):

- the same session reactivates its rows in place;
- rows of another session may be adopted only when that session is inactive;
- a declared backend's name, or a name another live session publishes, is never taken (409).

Heartbeats bump a session and revive it if its control stream is open; a missing heartbeat for
``heartbeat_timeout`` makes its rows inactive, a closed control stream at once; rows inactive
for ``inactive_retention`` are deleted. Every transition is driven by the injected clock and every
sweep is idempotent. No I/O here: the relay carries tasks; ``sessions`` and ``dispatch`` use the
two together.

In a cluster every replica's registry is a mirror of the shared state (``laneway.virtual.mirror``):
the sessions of one publisher name are replaced at once (``replace``) by what the shared store
holds, and a change is this state machine run on them and written back. So every change here
must give the same result when run again on the same state (it may be, after a conflict).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Collection
from typing import Any

from laneway.auth.tokens import PublisherGrant
from laneway.clock import Clock
from laneway.config.schema import InventoryConfig, PublishersConfig
from laneway.errors import PermissionDenied
from laneway.inventory.lanes import Health, Lane, Tier, compose_lane_id
from laneway.inventory.store import Inventory
from laneway.publishing.protocol import LaneOffer, LaneStatus, Register
from laneway.virtual.errors import Conflict, UnknownSession
from laneway.virtual.records import HEALTH, Row, Session, State, SweepResult, from_record, to_record

__all__ = ["FAMILY", "Registry", "Row", "Session", "State", "SweepResult"]

log = logging.getLogger("laneway.virtual")

FAMILY = "virtual"


class Registry:
    def __init__(
        self,
        inventory: Inventory,
        clock: Clock,
        settings: PublishersConfig,
        *,
        weights: InventoryConfig | None = None,
        declared: Callable[[], Collection[str]] = frozenset,
        serves_declared: Callable[[str], bool] = lambda model: False,
    ) -> None:
        self.inventory = inventory
        self.clock = clock
        self.settings = settings
        self.weights = weights or InventoryConfig()
        self.declared = declared  # the declared backends' names: never shadowed
        # Does a declared backend serve this model? Its traffic (and prompts) are not a
        # publisher's to take, unless the token says so (join_declared).
        self.serves_declared = serves_declared
        self.sessions: dict[str, Session] = {}
        self.rows: dict[str, Row] = {}

    # -- reading -------------------------------------------------------------------------------

    def session(self, session_id: str, grant: PublisherGrant) -> Session:
        """The caller's session; 404 if unknown, 403 if another token's."""
        session = self.sessions.get(session_id)
        if session is None:
            raise UnknownSession(f"no publisher session '{session_id}': register again")
        if session.owner != grant.owner:
            raise PermissionDenied(f"publisher session '{session_id}' belongs to another publisher token")
        return session

    def owner_of(self, lane_id: str) -> Session | None:
        row = self.rows.get(lane_id)
        return self.sessions.get(row.session_id) if row is not None else None

    def state_of(self, lane_id: str) -> State | None:
        row = self.rows.get(lane_id)
        return row.state if row is not None else None

    def named(self, name: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.name == name]

    def names(self) -> set[str]:
        """Publisher names that have rows (the virtual backends)."""
        return {s.name for s in self.sessions.values() if s.rows}

    def lanes_of(self, session: Session) -> list[LaneStatus]:
        out: list[LaneStatus] = []
        for lane_id in sorted(session.rows):
            lane, row = self.inventory.get(lane_id), self.rows[lane_id]
            if lane is not None:
                out.append(LaneStatus(id=lane_id, model=lane.model, type=lane.type, state=row.state))
        return out

    # -- register ------------------------------------------------------------------------------

    def register(self, grant: PublisherGrant, request: Register) -> Session:
        """The sticky upsert; all or nothing: every rule is checked before anything is written."""
        self._check_scope(grant, request)
        now = self.clock.now()
        session = self._session_for(grant, request, now)
        self._check_name_free(session, now)
        # Checked: now write. A new session object is only kept from here on.
        self.sessions[session.id] = session
        session.max_concurrency, session.last_heartbeat = request.max_concurrency, now
        session.state = State(request.state)
        session.join_declared = grant.join_declared
        session.connecting = not session.bound
        self._write_rows(session, request.lanes, now)
        log.info(
            "publisher registered",
            extra={
                "publisher": session.name,
                "session": session.id,
                "lanes": len(session.rows),
                "state": session.state,
            },
        )
        return session

    def _check_scope(self, grant: PublisherGrant, request: Register) -> None:
        """The token's scope, and what a declared backend has: its name and (unless the token
        may join them) its models."""
        grant.check_name(request.name)
        for offer in request.lanes:
            grant.check_model(offer.model)
        if not grant.join_declared:
            taken = sorted({offer.model for offer in request.lanes if self.serves_declared(offer.model)})
            if taken:
                raise Conflict(
                    f"a declared backend of this gateway serves {', '.join(map(repr, taken))}; this "
                    "publisher token may not publish those models (leave them out, or ask the operator "
                    "for a token with join_declared)",
                    param="lanes",
                )
        if request.name in self.declared():
            raise Conflict(
                f"'{request.name}' is a declared backend of this gateway; a publisher may not shadow it "
                "(publish under another --name)",
                param="name",
            )

    def _check_name_free(self, session: Session, now: float) -> None:
        """No other session that is still alive publishes under the name."""
        for other in self.sessions.values():
            if other.name == session.name and other.id != session.id and other.rows and self._alive(other):
                raise Conflict(
                    f"'{session.name}' is published by another session that is still active (last "
                    f"heartbeat {now - other.last_heartbeat:.0f}s ago); it can be adopted once that "
                    f"session has been silent for {self.settings.heartbeat_timeout:g}s",
                    param="name",
                )

    def _write_rows(self, session: Session, offers: list[LaneOffer], now: float) -> None:
        """The session's rows and lanes as registered: new and adopted ones written first, then
        the ones it no longer lists deleted."""
        # Routable only once tasks can reach it: until its control stream opens, inactive.
        row_state = session.state if session.bound else State.INACTIVE
        wanted = {self._lane_id(session.name, offer): offer for offer in offers}
        written: list[Lane] = []
        for lane_id, offer in wanted.items():
            row = self.rows.get(lane_id)
            if row is not None and row.session_id != session.id:  # adopted from an inactive session
                previous = self.sessions.get(row.session_id)
                if previous is not None:
                    previous.rows.discard(lane_id)
                    self._forget_if_empty(previous)
                log.info(
                    "virtual lane adopted", extra={"lane": lane_id, "from": row.session_id, "to": session.id}
                )
            self.rows[lane_id] = Row(
                lane_id, session.id, row_state, None if row_state != State.INACTIVE else now, offer
            )
            session.rows.add(lane_id)
            written.append(self._lane(session.name, offer, row_state, now))
        self.inventory.write_lanes(written)
        dropped = [lane_id for lane_id in session.rows if lane_id not in wanted]
        for lane_id in dropped:  # no longer served by this publisher: write first, then delete
            session.rows.discard(lane_id)
            self.rows.pop(lane_id, None)
        self.inventory.delete_lanes(dropped, reason="publisher no longer registers it")

    def _session_for(self, grant: PublisherGrant, request: Register, now: float) -> Session:
        session_id, name = request.session_id, request.name
        if session_id is None:
            session_id = "ps_" + secrets.token_hex(16)
        existing = self.sessions.get(session_id)
        if existing is None:  # new, or one the gateway forgot (it restarted): taken as is
            return Session(session_id, grant.owner, name, request.max_concurrency, State(request.state), now)
        if existing.owner != grant.owner:
            raise PermissionDenied(f"publisher session '{session_id}' belongs to another publisher token")
        if existing.name != name:
            raise Conflict(
                f"session '{session_id}' publishes as '{existing.name}', not '{name}'", param="session_id"
            )
        return existing

    @staticmethod
    def _lane_id(name: str, offer: LaneOffer) -> str:
        return compose_lane_id(
            tier=Tier.FLEET, provider_family=FAMILY, instance_id=name, type=offer.type, model=offer.model
        )

    def _lane(self, name: str, offer: LaneOffer, state: State, now: float) -> Lane:
        # tier x provider x instance x model, as for declared lanes (every virtual model weighs 100)
        w = self.weights.weights
        weight = w.tiers.get("fleet", 100.0) * w.providers.get("virtual", 100.0) * self.settings.weight
        weight *= 100.0
        return Lane(
            tier=Tier.FLEET,
            family=FAMILY,
            backend=name,
            type=offer.type,
            model=offer.model,
            capabilities=frozenset(offer.capabilities or ()) | {offer.type},
            context_length=offer.context_length,
            base_weight=weight,
            health=HEALTH[state],
            observed_at=now,
            expires_at=None,  # the registry ends a virtual lane, never the inventory's expiry sweep
        )

    def _alive(self, session: Session) -> bool:
        if session.connecting and self.clock.now() - session.last_heartbeat < self.settings.heartbeat_timeout:
            return True
        return any(self.rows[i].state != State.INACTIVE for i in session.rows if i in self.rows)

    # -- life signs ----------------------------------------------------------------------------

    def heartbeat(self, grant: PublisherGrant, session_id: str, state: State) -> Session:
        """A sign of life: bumps the session; revives its rows if its control stream is open
        (without one no task could reach it); ``state`` says if it hibernates."""
        session = self.session(session_id, grant)
        session.last_heartbeat = self.clock.now()
        session.state = state
        if session.bound or state == State.DRAINING:
            self._apply(session)
        return session

    def bind(self, session: Session, holder: str) -> None:
        """Its control stream opened on the replica ``holder``: a sign of life, and tasks can
        reach it. A new epoch: what was sent on an earlier bind is lost."""
        session.holder, session.connecting = holder, False
        session.epoch += 1
        session.last_heartbeat = self.clock.now()
        self._apply(session)

    def _apply(self, session: Session) -> None:
        """The session's own state onto its rows. Draining: inactive, its tasks left running."""
        if session.state == State.DRAINING:
            self._inactivate(session, "draining")
        else:
            self._set_rows(session, session.state)

    def unbind(self, session: Session, *, reason: str) -> None:
        """Its control stream closed (or it said goodbye): inactive at once. Its tasks in flight
        are not the registry's: the caller gives them back (``Dispatcher.session_down``)."""
        session.holder, session.connecting = None, False
        self._inactivate(session, reason)

    def unbind_held(self, session_id: str, holder: str, epoch: int, *, reason: str) -> Session | None:
        """``unbind`` the session if its control stream is still the one ``holder`` opened at
        ``epoch`` (not one opened since, here or elsewhere); returns it if it was."""
        session = self.sessions.get(session_id)
        if session is None or session.holder != holder or session.epoch != epoch:
            return None
        self.unbind(session, reason=reason)
        return session

    def awake(self, session: Session) -> None:
        """A wake succeeded: active, with a fresh heartbeat."""
        session.state = State.ACTIVE
        session.last_heartbeat = self.clock.now()
        self._set_rows(session, State.ACTIVE)

    def _set_rows(self, session: Session, state: State) -> None:
        changed = [self.rows[i] for i in session.rows if i in self.rows and self.rows[i].state != state]
        for row in changed:
            row.state, row.inactive_since = state, None
        if changed:
            self.inventory.set_health([r.lane_id for r in changed], HEALTH[state])
            log.info("publisher lanes %s", state, extra={"publisher": session.name, "session": session.id})

    def _inactivate(self, session: Session, reason: str) -> None:
        now = self.clock.now()
        changed = [
            self.rows[i] for i in session.rows if i in self.rows and self.rows[i].state != State.INACTIVE
        ]
        for row in changed:
            row.state, row.inactive_since = State.INACTIVE, now
        if changed:
            self.inventory.set_health([r.lane_id for r in changed], Health.INACTIVE)
            log.warning(
                "publisher lanes inactive",
                extra={"publisher": session.name, "session": session.id, "reason": reason},
            )

    # -- the sweep -----------------------------------------------------------------------------

    def sweep(self, names: Collection[str] | None = None) -> SweepResult:
        """Heartbeat-stale sessions go inactive; rows inactive past the retention are deleted.
        Only the publishers ``names`` when given (None: all). Idempotent: a second sweep at the
        same time changes nothing."""
        now = self.clock.now()
        inactivated: list[Session] = []
        for session in self._stale(now):
            if names is not None and session.name not in names:
                continue
            self._inactivate(session, f"no heartbeat for {now - session.last_heartbeat:.0f}s")
            # Silent too long: a control stream the gateway still thinks open is a dead
            # connection (or its heartbeats are lost). The caller closes it, so a live
            # publisher reconnects and registers again.
            session.holder = None
            inactivated.append(session)
        deleted = [lane_id for lane_id, name in self._expired(now).items() if names is None or name in names]
        for lane_id in deleted:
            row = self.rows.pop(lane_id)
            owner = self.sessions.get(row.session_id)
            if owner is not None:
                owner.rows.discard(lane_id)
                self._forget_if_empty(owner)
        if deleted:
            self.inventory.delete_lanes(deleted, reason="publisher inactive too long")
        return SweepResult(inactivated, deleted)

    def due(self) -> set[str]:
        """The publishers (by name) that a sweep now would change."""
        now = self.clock.now()
        return {s.name for s in self._stale(now)} | set(self._expired(now).values())

    def _stale(self, now: float) -> list[Session]:
        """Sessions silent for ``heartbeat_timeout`` that still count as alive or bound. A
        draining session whose heartbeats stopped while its control stream looks open counts
        too: its tasks in flight must go back to pending."""
        cutoff = now - self.settings.heartbeat_timeout
        return [
            s
            for s in list(self.sessions.values())
            if s.last_heartbeat <= cutoff and (self._alive(s) or s.bound)
        ]

    def _expired(self, now: float) -> dict[str, str]:
        """Rows inactive past ``inactive_retention``: lane id -> publisher name."""
        expired = now - self.settings.inactive_retention
        return {
            row.lane_id: owner.name if (owner := self.sessions.get(row.session_id)) else ""
            for row in self.rows.values()
            if row.state == State.INACTIVE
            and row.inactive_since is not None
            and row.inactive_since <= expired
        }

    def _forget_if_empty(self, session: Session) -> None:
        if not session.rows and not session.bound:
            self.sessions.pop(session.id, None)

    def forget(self, name: str) -> list[str]:
        """Drop every row published as ``name`` (it became a declared backend: declared wins)."""
        gone = [
            row.lane_id
            for row in self.rows.values()
            if (s := self.sessions.get(row.session_id)) and s.name == name
        ]
        for lane_id in gone:
            row = self.rows.pop(lane_id)
            owner = self.sessions.get(row.session_id)
            if owner is not None:
                owner.rows.discard(lane_id)
        for session in [s for s in self.sessions.values() if s.name == name]:
            self.sessions.pop(session.id, None)
        self.inventory.delete_lanes(gone, reason="a declared backend took the name")
        return gone

    # -- the shared state (a cluster's mirror) -------------------------------------------------

    def record(self, name: str) -> dict[str, Any]:
        """The sessions published as ``name``, with their rows, as their shared record."""
        return to_record(self.named(name), self.rows)

    def replace(self, name: str, record: dict[str, Any]) -> list[Session]:
        """Make the sessions published as ``name`` what ``record`` holds (the shared state), and
        their lanes to match: a row new or changed is written, one gone deleted; a lane whose
        row did not change is left alone (its health may be a breaker's). Returns the sessions it
        replaced."""
        sessions, rows = from_record(record)
        before = self.named(name)
        old_rows = {
            lane_id: self.rows.pop(lane_id) for s in before for lane_id in s.rows if lane_id in self.rows
        }
        for session in before:
            del self.sessions[session.id]
        for session in sessions:
            self.sessions[session.id] = session
        now = self.clock.now()
        written = []
        for row in rows:
            self.rows[row.lane_id] = row
            old = old_rows.get(row.lane_id)
            changed = old is None or (old.state, old.offer) != (row.state, row.offer)
            if changed and row.offer is not None:
                written.append(self._lane(name, row.offer, row.state, now))
        self.inventory.write_lanes(written)
        self.inventory.delete_lanes(set(old_rows) - self.rows.keys(), reason="its publisher's session ended")
        return before
