"""The one operation map: what laneway can be asked to do, and everything derived from it.

An operation is a kind of call (chat, completion, embedding). From this map come the lane types
(a lane's ``type`` is the operation it serves), the provider call each one makes (and its
streaming call, if it streams), the OpenAI path a client posts it to, and the task a publisher is
sent. Adding an operation is adding one row here and the provider method it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Operation(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


@dataclass(frozen=True, slots=True)
class OperationSpec:
    operation: Operation
    path: str  # the OpenAI path a client posts it to
    call: str  # the Provider method that answers it whole
    stream: str | None  # the Provider method that streams it (None: it never streams)

    @property
    def streams(self) -> bool:
        return self.stream is not None


OPERATIONS: dict[Operation, OperationSpec] = {
    Operation.CHAT: OperationSpec(Operation.CHAT, "/v1/chat/completions", "chat", "stream_chat"),
    Operation.COMPLETION: OperationSpec(
        Operation.COMPLETION, "/v1/completions", "complete", "stream_complete"
    ),
    Operation.EMBEDDING: OperationSpec(Operation.EMBEDDING, "/v1/embeddings", "embed", None),
}

LANE_TYPES: frozenset[str] = frozenset(op.value for op in Operation)


def operation(name: str) -> Operation | None:
    """The operation (or lane type) called ``name``; None if laneway has none of that name."""
    try:
        return Operation(name)
    except ValueError:
        return None
