"""The other replicas of a cluster, as the task relay needs them (``Peers``); alone, there are none.

A task stays on the replica that serves its request (its *requester*): its future, its frames,
its checks. When the publisher's control stream is held by another replica (the *holder*), the
task event is told to the holder, which puts it on the stream; a cancel goes the same way. The
publisher's chunk and result posts may reach any replica (they pass through a load balancer):
the task's id names its requester, so the replica that gets a post hands it over (``ask``) and
answers the publisher with the requester's answer, one post at a time, in order.

``laneway.cluster.fleet`` implements ``Peers`` on the cluster's bus; ``NoPeers`` is the embedded
default, where every control stream and every task is this replica's own.

The messages (topic: payload), each a JSON object:

    fleet.task         requester -> holder: {"task", "session", "epoch", "frame", "requester"}
    fleet.cancel       requester -> holder: {"session", "task"}
    fleet.undelivered  holder -> requester: {"task", "session", "epoch"}  (not on that stream)
    fleet.abandoned    any -> requester:    {"task", "session"}  (a post of it got no answer in
                       time: the publisher was told it failed, and stopped the task)
    fleet.listening    one -> all (published): {"replica"}  (it listens again after its bus was
                       away: what was parked for the streams it holds may be sent to it now)
    ask                any -> requester:    {"kind": "chunks"|"result", "session", "task", "post"}
                       answered {"accepted": n} | {"ok": true} | {"error": {"status", "code", ...}}
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from laneway.virtual.errors import UnknownTask

TASK = "fleet.task"
CANCEL = "fleet.cancel"
UNDELIVERED = "fleet.undelivered"
ABANDONED = "fleet.abandoned"
LISTENING = "fleet.listening"


class Peers(Protocol):
    @property
    def me(self) -> str:
        """This replica's id ("" alone: task ids then name no replica)."""

    def tell(
        self, replica: str, topic: str, payload: dict[str, Any], *, lost: Callable[[], None] | None = None
    ) -> None:
        """Send one replica a message, after every one told before (in order); ``lost`` is
        called when it could not be delivered (nobody listens there, or the bus is away)."""

    async def ask(self, replica: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Hand a publisher's post to the requester ``replica`` and return its answer. Raises
        ``UnknownTask`` when nobody listens there (the request is gone with it) and
        ``RelayUnavailable`` when no answer came in time."""

    async def live(self) -> set[str] | None:
        """The ids of the live replicas; None when that cannot be known now."""

    async def aclose(self) -> None: ...


class NoPeers:
    """One replica alone: every control stream and every task is its own."""

    @property
    def me(self) -> str:
        return ""

    def tell(
        self, replica: str, topic: str, payload: dict[str, Any], *, lost: Callable[[], None] | None = None
    ) -> None:
        if lost is not None:
            lost()

    async def ask(self, replica: str, payload: dict[str, Any]) -> dict[str, Any]:
        raise UnknownTask(f"no task '{payload.get('task')}' in flight for this session")

    async def live(self) -> set[str] | None:
        return None

    async def aclose(self) -> None:
        pass


# -- task ids --------------------------------------------------------------------------------------


def new_task_id(requester: str) -> str:
    """``t_<24 hex>``, and when in a cluster ``.<the requester's id, base64url>``: a post that
    reaches another replica finds the request waiting for it without a lookup."""
    task_id = "t_" + secrets.token_hex(12)
    if requester:
        task_id += "." + base64.urlsafe_b64encode(requester.encode()).decode().rstrip("=")
    return task_id


def requester_of(task_id: str) -> str:
    """The replica a task id names ("" when it names none, or nothing readable: a bogus id is
    then looked up, and not found, where it arrived)."""
    _, dot, encoded = task_id.rpartition(".")
    if not dot or not encoded:
        return ""
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""
