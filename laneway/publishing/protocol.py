"""The publisher protocol: every message between the gateway and a publisher, as pydantic models.

The endpoints (docs/publishers.md), what each one takes and what it answers:

    POST   /v1/publishers/register                          Register   → Registered
    GET    /v1/publishers/sessions/{sid}/control            an SSE stream of EventName events
    POST   /v1/publishers/sessions/{sid}/heartbeat          Heartbeat  → HeartbeatAnswer
    POST   /v1/publishers/sessions/{sid}/tasks/{tid}/chunks Chunks     → Accepted
    POST   /v1/publishers/sessions/{sid}/tasks/{tid}/result Result     → Acknowledged
    DELETE /v1/publishers/sessions/{sid}                                → Acknowledged

Reading (``read``) is strict about values and lenient about fields: a value of the wrong type is
refused, never coerced (the gateway forwards what it reads), while a field a side does not know
is ignored, so an optional field can be added without a new version. A refusal is laneway's
``InvalidRequest`` (400), whose ``param`` is the top-level field and whose message names the
field's full path (``'lanes[1].type' must be one of: chat, completion, embedding``).

Versions: a publisher says in its register which version of the protocol it speaks
(``protocol``), and a gateway refuses one it does not speak, saying which it does. A register
without the field speaks version 1: the protocol as it was before it had a number, which version
1 is, so every publisher written before then keeps working. The gateway answers the version in
``Registered`` (the register's answer and the control stream's ``hello``).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar, get_args

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from laneway.errors import InvalidRequest
from laneway.operations import Operation

PROTOCOL = 1  # the version this laneway speaks
SPOKEN = frozenset({PROTOCOL})  # the versions a gateway of this laneway accepts at register

# The largest control-stream event a publisher reads. A task carries a client's whole request
# (up to the gateway's server.max_body_bytes, 20 MiB by default); a bound still, so that a
# broken peer cannot make a publisher buffer without end.
MAX_EVENT_BYTES = 64 * 1024 * 1024


class EventName(StrEnum):
    """The events of the control stream, and the message each one carries."""

    HELLO = "hello"  # Registered: the session as the gateway has it; always the first event
    TASK = "task"  # TaskEvent: run a call, post its chunks and its result
    WAKE = "wake"  # WakeEvent: run the wake recipe, post a result
    CANCEL = "cancel"  # CancelEvent: its caller left; stop the task and post nothing more for it
    PING = "ping"  # Ping: a keep-alive when nothing else was sent for a while


class SessionState(StrEnum):
    """What a publisher says of itself. Hibernating: its lanes are woken before their next task.
    Draining (in a heartbeat only): it is stopping; no new task, the ones it runs may finish."""

    ACTIVE = "active"
    HIBERNATING = "hibernating"
    DRAINING = "draining"


def _null_is(default: Any) -> BeforeValidator:
    """An explicit ``null`` in a field that may be left out means what leaving it out means."""
    return BeforeValidator(lambda value: default if value is None else value)


Str = Annotated[str, Field(strict=True)]
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
TaskId = Annotated[str, Field(strict=True, min_length=1, description="a task id")]


class Message(BaseModel):
    """A message of the protocol: unknown fields are ignored (see the module's docstring)."""

    model_config = ConfigDict(extra="ignore")

    def wire(self) -> bytes:
        """The message as JSON, a field that is None left out (what is not said is the default,
        as ``read`` takes ``null``). Written by orjson from the validated fields: a task carries a
        whole request body and a chunk post its chunks, which orjson writes about twice as fast as
        pydantic's serializer writes values typed ``Any``."""
        return orjson.dumps(_said(self), default=_said)


def _said(message: Any) -> dict[str, Any]:
    if not isinstance(message, BaseModel):
        raise TypeError(f"{type(message).__name__} is not a protocol message")
    return {name: value for name, value in message.__dict__.items() if value is not None}


# -- register ----------------------------------------------------------------------------------


class LaneOffer(Message):
    """One lane a publisher registers: a model, under the name the gateway publishes, for one
    operation."""

    model: Annotated[
        str,
        Field(strict=True, min_length=1, max_length=256, description="a model name of 1 to 256 characters"),
    ]
    type: Annotated[Operation, Field(description=f"one of: {', '.join(Operation)}")] = Operation.CHAT
    capabilities: Annotated[list[Str] | None, Field(description="a list of capability names")] = None
    context_length: Annotated[int | None, Field(strict=True, gt=0, description="a positive integer")] = None


class Register(Message):
    name: Annotated[str, Field(strict=True, min_length=1, description="the publisher's name (not empty)")]
    session_id: Annotated[
        str | None,
        Field(
            strict=True,
            pattern=r"^[A-Za-z0-9_-]{8,64}$",
            description="8 to 64 of [A-Za-z0-9_-] (the id a previous register returned)",
        ),
    ] = None
    max_concurrency: Annotated[
        int, Field(strict=True, ge=1, le=10_000, description="an integer from 1 to 10000")
    ] = 1
    state: Annotated[
        Literal[SessionState.ACTIVE, SessionState.HIBERNATING],
        _null_is(SessionState.ACTIVE),
        Field(description="one of: active, hibernating"),
    ] = SessionState.ACTIVE
    lanes: Annotated[
        list[LaneOffer],
        Field(min_length=1, description="a list of at least one {model, type, capabilities, context_length}"),
    ]
    protocol: Annotated[int, Field(strict=True, description="a protocol version (an integer)")] = PROTOCOL

    @field_validator("protocol")
    @classmethod
    def _spoken(cls, version: int) -> int:
        if version not in SPOKEN:
            spoken = ", ".join(map(str, sorted(SPOKEN)))
            raise ValueError(
                f"this gateway speaks version {spoken} of the publisher protocol, not {version}: "
                f"run a laneway publish that speaks {spoken}, or upgrade the gateway"
            )
        return version


class LaneStatus(Message):
    """A registered lane as the gateway has it. ``type`` and ``state`` are plain strings here:
    a publisher reads them from gateways of later versions too, which may know more of either."""

    id: Str
    model: Str
    type: Str
    state: Str


class Registered(Message):
    """The answer to a register, and the data of the control stream's ``hello``."""

    session_id: Annotated[str, Field(strict=True, min_length=1, description="the session's id")]
    name: Str
    heartbeat_interval: Annotated[float, Field(strict=True, gt=0, description="seconds")]
    heartbeat_timeout: Annotated[float, Field(strict=True, gt=0, description="seconds")]
    lanes: list[LaneStatus]
    protocol: Int = PROTOCOL  # a gateway from before versions did not say: it spoke 1


# -- heartbeat ---------------------------------------------------------------------------------


class Heartbeat(Message):
    state: Annotated[
        SessionState,
        _null_is(SessionState.ACTIVE),
        Field(description=f"one of: {', '.join(SessionState)}"),
    ] = SessionState.ACTIVE


class HeartbeatAnswer(Message):
    lanes: list[LaneStatus]
    control: Bool  # the session's control stream is open (without one no task can reach it)


# -- the control stream's events ---------------------------------------------------------------


class TaskEvent(Message):
    """A call to run. ``body`` is an OpenAI request whose ``model`` is the published name;
    ``stream`` says whether to post chunks (the body's own ``stream`` says the same)."""

    task_id: TaskId
    lane: Str
    model: Str
    operation: Operation
    stream: Bool
    body: dict[str, Any]


class WakeEvent(Message):
    task_id: TaskId
    model: Str
    lane: Str


class CancelEvent(Message):
    task_id: TaskId


class Ping(Message):
    """No data (``{}``)."""


# -- a task's output ---------------------------------------------------------------------------


class Chunks(Message):
    """A streamed task's next chunks. ``seq`` counts the posts of one task from 0; ``done`` on
    the last one ends the stream with it (the same as a ``{"status": 200}`` result after it)."""

    seq: Annotated[int, Field(strict=True, description="an integer: this post's number, from 0")]
    chunks: Annotated[list[dict[str, Any]], Field(description="a list of OpenAI stream chunk objects")]
    done: Annotated[bool, _null_is(False), Field(strict=True, description="true or false")] = False


class Accepted(Message):
    accepted: Int  # the chunks taken


def _failure_status(value: Any) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599
    return value if ok else 502


def _failure_message(value: Any) -> str:
    return str(value) if value else "the publisher's backend failed"


class Failure(Message):
    """A task that failed: the local backend's HTTP status (502 when it could not be reached,
    504 when it timed out) and what went wrong. Read leniently, whatever its shape: a publisher
    that says a task failed is believed, so the call fails over now rather than at its timeout."""

    status: Annotated[int, BeforeValidator(_failure_status)] = 502
    message: Annotated[str, BeforeValidator(_failure_message)] = "the publisher's backend failed"

    @model_validator(mode="before")
    @classmethod
    def _any_shape(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else {"message": value}


class Result(Message):
    """A task's end: ``{"status": 200, "body": {...}}`` (the whole OpenAI answer of a call that
    was not streamed), ``{"status": 200}`` (a stream ended after its chunks, or a wake
    succeeded), or ``{"error": {...}}`` (beside which ``status`` is ignored)."""

    error: Failure | None = None
    body: Annotated[dict[str, Any] | None, Field(description="an object: the whole OpenAI response")] = None
    # Declared after ``error`` so that its check sees it; checked when left out too.
    status: Annotated[Any, Field(validate_default=True)] = None

    @field_validator("status")
    @classmethod
    def _success_is_200(cls, status: Any, info: ValidationInfo) -> Any:
        if info.data.get("error") is None and status != 200:
            raise ValueError("a result is {'status': 200, ...} or {'error': {...}}")
        return status


class Acknowledged(Message):
    ok: Bool = True


# -- reading -----------------------------------------------------------------------------------

M = TypeVar("M", bound=Message)


def read(message: type[M], data: Any) -> M:
    """``data`` (parsed JSON) as a ``message``; ``InvalidRequest`` naming the first wrong field."""
    try:
        return message.model_validate(data)
    except ValidationError as exc:
        raise _refusal(message, exc.errors(include_url=False)[0]) from None


def _refusal(message: type[Message], error: ErrorDetails) -> InvalidRequest:
    loc = list(error["loc"])
    while loc and isinstance(loc[-1], int):  # an item of a list: its field says what it holds
        loc.pop()
    if not loc:
        return InvalidRequest(f"a {message.__name__} message must be a JSON object")
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)[1:]
    if error["type"] == "value_error":  # a check of ours: its words already say what is wanted
        return InvalidRequest(f"'{where}': {error.get('ctx', {}).get('error')}", param=str(loc[0]))
    expected = _description(message, loc)
    if error["type"] == "missing":
        text = f"'{where}' is required" + (f": {expected}" if expected else "")
    else:
        text = f"'{where}' must be {expected}" if expected else f"'{where}': {error['msg']}"
    return InvalidRequest(text, param=str(loc[0]))


def _description(message: type[Message], loc: Sequence[int | str]) -> str | None:
    """The description of the field at ``loc`` (through nested messages and their lists)."""
    model: type[BaseModel] | None = message
    description = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        description, model = field.description, _message_in(field.annotation)
    return description


def _message_in(annotation: Any) -> type[BaseModel] | None:
    """The message type of a field annotated ``X``, ``list[X]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _message_in(arg)
        if found is not None:
            return found
    return None
