"""What the other replicas of a cluster tell this one about publishers' tasks (the messages of
``laneway.virtual.peers``), handed to the part of the fleet they are for. Each handler is quick
(the bus runs them one at a time) and refuses nothing loudly: a message about a task or stream
that is gone meanwhile changes nothing."""

from __future__ import annotations

from typing import Any

from laneway.virtual.dispatch import Dispatcher
from laneway.virtual.peers import UNDELIVERED
from laneway.virtual.relay import Relay
from laneway.virtual.sessions import Sessions


class Inbox:
    def __init__(self, relay: Relay, dispatcher: Dispatcher, sessions: Sessions) -> None:
        self._relay = relay
        self._dispatcher = dispatcher
        self._sessions = sessions

    async def task(self, payload: dict[str, Any]) -> None:
        """A task for a control stream held here: on it, or its requester is told it is not."""
        session_id, epoch = str(payload.get("session")), _int(payload.get("epoch"))
        frame = str(payload.get("frame", "")).encode()
        if self._relay.deliver(session_id, epoch, frame):
            return
        requester = payload.get("requester")
        if isinstance(requester, str) and requester:
            answer = {"task": payload.get("task"), "session": session_id, "epoch": epoch}
            self._relay.peers.tell(requester, UNDELIVERED, answer)

    async def cancel(self, payload: dict[str, Any]) -> None:
        self._relay.cancel_here(str(payload.get("session")), str(payload.get("task")))

    async def undelivered(self, payload: dict[str, Any]) -> None:
        self._dispatcher.undelivered(
            str(payload.get("task")), str(payload.get("session")), _int(payload.get("epoch"))
        )

    async def abandoned(self, payload: dict[str, Any]) -> None:
        self._dispatcher.abandoned(str(payload.get("task")), str(payload.get("session")))

    async def listening(self) -> None:
        """This replica's bus listens again after it was away (``Dispatcher.sent_elsewhere_lost``)."""
        self._dispatcher.sent_elsewhere_lost()

    async def peer_listening(self, payload: dict[str, Any]) -> None:
        """Another replica listens again (``Dispatcher.holder_back``)."""
        replica = payload.get("replica")
        if isinstance(replica, str) and replica:
            self._dispatcher.holder_back(replica)

    def post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A publisher's post for a task of this replica, received by another: its answer."""
        return self._sessions.posted(payload)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
