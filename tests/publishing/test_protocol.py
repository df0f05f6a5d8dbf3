"""The publisher protocol's messages on their own: what ``read`` refuses and how it says so, what
``wire`` writes, and that every message survives the round trip both sides make."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from laneway.errors import InvalidRequest
from laneway.operations import Operation
from laneway.publishing.protocol import (
    PROTOCOL,
    CancelEvent,
    Chunks,
    Failure,
    Heartbeat,
    HeartbeatAnswer,
    LaneOffer,
    LaneStatus,
    Message,
    Ping,
    Register,
    Registered,
    Result,
    SessionState,
    TaskEvent,
    WakeEvent,
    read,
)

LANES = [{"model": "llama3.2:3b"}]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"lanes": LANES}, "name", "'name' is required: the publisher's name"),
        (
            {"name": "a", "lanes": LANES, "max_concurrency": "2"},
            "max_concurrency",
            "an integer from 1 to 10000",
        ),
        ({"name": "a", "lanes": []}, "lanes", "'lanes' must be a list of at least one"),
        (
            {"name": "a", "lanes": [{"model": "m", "type": "image"}]},
            "lanes",
            "'lanes[0].type' must be one of: chat",
        ),
        (
            {"name": "a", "lanes": [{"model": "m", "capabilities": ["x", 1]}]},
            "lanes",
            "'lanes[0].capabilities'",
        ),
        ({"name": "a", "lanes": [{}]}, "lanes", "'lanes[0].model' is required: a model name"),
        ({"name": "a", "lanes": LANES, "state": "draining"}, "state", "one of: active, hibernating"),
        ({"name": "a", "lanes": LANES, "session_id": "x y"}, "session_id", "8 to 64 of [A-Za-z0-9_-]"),
        (
            {"name": "a", "lanes": LANES, "protocol": 2},
            "protocol",
            "speaks version 1 of the publisher protocol",
        ),
    ],
)
def test_a_refusal_names_the_field_and_what_it_must_be(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        read(Register, body)
    assert (refused.value.status, refused.value.param) == (400, param)
    assert words in refused.value.message


def test_a_message_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="a Chunks message must be a JSON object"):
        read(Chunks, [1, 2])


def test_null_is_what_leaving_a_field_out_means_and_unknown_fields_are_ignored() -> None:
    register = read(Register, {"name": "a", "lanes": LANES, "state": None, "colour": "blue"})
    assert (register.state, register.protocol, register.session_id) == (SessionState.ACTIVE, PROTOCOL, None)
    assert read(Heartbeat, {"state": None}).state == SessionState.ACTIVE
    assert read(Chunks, {"seq": 0, "chunks": [], "done": None}).done is False


def test_a_result_is_a_success_with_status_200_or_an_error_of_any_shape() -> None:
    for wrong in ({}, {"status": 201}, {"status": "200"}):
        with pytest.raises(InvalidRequest) as refused:
            read(Result, wrong)
        assert refused.value.param == "status"
    assert read(Result, {"error": "boom"}).error == Failure(status=502, message="boom")
    failed = read(Result, {"error": {"status": 700}, "status": 503})  # a status beside it: ignored
    assert failed.error == Failure(status=502, message="the publisher's backend failed")
    assert read(Result, {"error": {"status": 429, "message": "busy"}}).error == Failure(
        status=429, message="busy"
    )


def test_wire_leaves_out_what_is_not_said() -> None:
    offer = LaneOffer(model="m")
    assert orjson.loads(offer.wire()) == {"model": "m", "type": "chat"}
    register = Register(name="box", lanes=[offer])
    assert "session_id" not in orjson.loads(register.wire())
    assert orjson.loads(Result(error=Failure(status=503, message="x")).wire()) == {
        "error": {"status": 503, "message": "x"}
    }
    assert Ping().wire() == b"{}"


MESSAGES: list[Message] = [
    Register(
        name="box",
        session_id="ps_0123456789",
        max_concurrency=3,
        state=SessionState.HIBERNATING,
        lanes=[
            LaneOffer(model="m", type=Operation.EMBEDDING, capabilities=["embedding"], context_length=512)
        ],
    ),
    Registered(
        session_id="ps_0123456789",
        name="box",
        heartbeat_interval=30,
        heartbeat_timeout=90,
        lanes=[LaneStatus(id="fleet:virtual:box:chat:m", model="m", type="chat", state="active")],
    ),
    Heartbeat(state=SessionState.DRAINING),
    HeartbeatAnswer(lanes=[], control=True),
    TaskEvent(
        task_id="t_1", lane="l", model="m", operation=Operation.COMPLETION, stream=True, body={"x": [1, None]}
    ),
    WakeEvent(task_id="t_2", model="m", lane="l"),
    CancelEvent(task_id="t_3"),
    Chunks(seq=2, chunks=[{"choices": [{"finish_reason": None}]}], done=True),
    Result(status=200, body={"id": "x"}),
    Result(error=Failure(status=504, message="slow")),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_round_trip(message: Message) -> None:
    assert read(type(message), orjson.loads(message.wire())) == message
