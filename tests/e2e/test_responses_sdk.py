"""End to end: the official openai SDK's ``client.responses`` through laneway to a simulated
upstream of each family (Ollama, OpenAI, Anthropic): string and item input, instructions,
streaming (the event order checked, the SDK's stream helper parsing it), function calls over
two turns chained by ``previous_response_id``, ``text.format``, retrieve and delete, the errors,
and a stream that breaks mid-way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import CLIENT_KEY, RunningGateway, three_family_config

FAMILY_MODELS = [
    pytest.param("llama3.2:3b", "gpu-1", id="ollama"),
    pytest.param("gpt-4o-mini", "oai", id="openai"),
    pytest.param("claude-sonnet-4-6", "claude", id="anthropic"),
]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
OTHER_KEY = "lw-another-callers-key"


def client(gw: RunningGateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key or gw.key, max_retries=0)


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_string_input_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    raw = client(gw).responses.with_raw_response.create(model=model, input="Say hello to laneway")
    response = raw.parse()
    assert raw.headers["x-laneway-backend"] == backend
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == model
    assert "You said: Say hello to laneway" in response.output_text
    [message] = response.output
    assert message.type == "message"
    assert message.content[0].type == "output_text"
    assert response.usage is not None
    assert response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_item_input_and_instructions_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    response = client(gw).responses.create(
        model=model,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "First question"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "An answer"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Second question"}],
            },
        ],
        max_output_tokens=200,
        temperature=0.2,
    )
    assert response.instructions == "Be brief."
    assert response.output_text.endswith("You said: Second question")
    assert response.temperature == 0.2


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_max_output_tokens_cut_is_incomplete(gw: RunningGateway, model: str, backend: str) -> None:
    response = client(gw).responses.create(
        model=model, input="Tell me a long story please", max_output_tokens=2
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_stream_event_order_each_family(gw: RunningGateway, model: str, backend: str) -> None:
    events = list(client(gw).responses.create(model=model, input="Stream to me", stream=True))
    kinds = [e.type for e in events]
    squeezed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]  # one delta stands for many
    assert squeezed == TEXT_EVENTS
    assert kinds.count("response.output_text.delta") > 1
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == text
    assert "You said: Stream to me" in text
    assert done.response.usage is not None
    assert done.response.usage.output_tokens > 0


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_stream_helper_and_final_response(gw: RunningGateway, model: str, backend: str) -> None:
    with client(gw).responses.stream(model=model, input="Stream to me", instructions="Be kind.") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas)
    assert final.status == "completed"
    # A streamed response is stored when it completes.
    assert client(gw).responses.retrieve(final.id).output_text == final.output_text


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_function_call_over_two_turns_with_previous_response_id(
    gw: RunningGateway, model: str, backend: str
) -> None:
    sdk = client(gw)
    first = sdk.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "sim"}
    assert call.id.startswith("fc_")
    second = sdk.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny and 21 degrees"}],
        tools=[WEATHER],
    )
    assert second.previous_response_id == first.id
    assert "The tool said: sunny and 21 degrees" in second.output_text
    # The chain reached the lane: the first turn is still in the conversation it answered.
    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS)
def test_function_call_streamed(gw: RunningGateway, model: str, backend: str) -> None:
    with client(gw).responses.stream(model=model, input="Weather in Oslo?", tools=[WEATHER]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert kinds.index("response.function_call_arguments.done") < kinds.index("response.output_item.done")
    [call] = [item for item in final.output if item.type == "function_call"]
    assert json.loads(call.arguments) == {"city": "sim"}


def test_item_input_with_a_function_call_and_its_output_without_storage(gw: RunningGateway) -> None:
    """What Codex sends (``store: false``): the whole conversation each turn, calls included."""
    response = client(gw).responses.create(
        model="claude-sonnet-4-6",
        store=False,
        input=[
            {"role": "user", "content": "Weather in Rome?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Rome"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "rainy"},
        ],
        tools=[WEATHER],
    )
    assert "The tool said: rainy" in response.output_text
    with pytest.raises(openai.NotFoundError):
        client(gw).responses.retrieve(response.id)  # store: false keeps nothing


@pytest.mark.parametrize(("model", "backend"), FAMILY_MODELS[:2])
def test_text_format_json_schema(gw: RunningGateway, model: str, backend: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response = client(gw).responses.create(
        model=model,
        input="Name a city",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    assert response.status == "completed"
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"


def test_retrieve_and_delete(gw: RunningGateway) -> None:
    sdk = client(gw)
    created = sdk.responses.create(model="gpt-4o-mini", input="Remember me")
    fetched = sdk.responses.retrieve(created.id)
    assert fetched.id == created.id
    assert fetched.output_text == created.output_text
    sdk.responses.delete(created.id)  # the SDK returns None for a 200 {"deleted": true}
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(created.id)


def test_errors(gw: RunningGateway) -> None:
    sdk = client(gw)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(model="gpt-4o-mini", input="hi", temperature="hot")  # type: ignore[arg-type]
    assert bad.value.param == "temperature"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(
            model="gpt-4o-mini", input="hi", tools=[{"type": "file_search", "vector_store_ids": []}]
        )
    assert "file_search" in bad.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.responses.create(model="gpt-4o-mini", input="hi", previous_response_id="resp_nope")
    assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model="gpt-4o-mini")  # type: ignore[call-overload]


def test_another_callers_response_is_not_found(
    gateway_factory: Any, three_sims: dict[str, Any], tmp_path: Path
) -> None:
    keys = {"keys": [{"name": "tests", "key": CLIENT_KEY}, {"name": "other", "key": OTHER_KEY}]}
    gw = gateway_factory(three_family_config(three_sims, tmp_path / "gw", auth=keys), three_sims)
    mine = client(gw).responses.create(model="gpt-4o-mini", input="Mine")
    theirs = client(gw, OTHER_KEY)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model="gpt-4o-mini", input="hi", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(mine.id)
    assert client(gw).responses.retrieve(mine.id).id == mine.id


def test_a_stream_that_breaks_midway_ends_with_response_failed(
    gateway_factory: Any, sim_factory: Any
) -> None:
    sim = sim_factory(
        family="openai", reply="one two three four five", malformed_after_chunks=2, tokens_per_second=20
    )
    backends = {"oai": {"provider": "openai", "base_url": sim.url}}
    gw = gateway_factory({"auth": {"keys": [{"name": "tests", "key": CLIENT_KEY}]}, "backends": backends})
    events = list(client(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[0].type == "response.created"
    assert "response.output_text.delta" in [e.type for e in events]
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed"
    assert last.response.error is not None
    assert last.response.error.message.startswith("The model's backend answered with something laneway")
    assert [e.sequence_number for e in events] == list(range(len(events)))
