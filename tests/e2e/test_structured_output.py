"""End to end: structured output on every family, through laneway to the sims, with the clients
people use for it: the openai SDK's ``.parse`` (JSON schema), instructor in its default mode
(a forced tool call), pydantic-ai in its default output mode (a tool it must call) and with
``NativeOutput`` (JSON schema). And a route whose first lane cannot serve a request's needs is
served by the next one, never answering 422 unless none can."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import instructor
import openai
import pytest
from pydantic import BaseModel, Field
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.conftest import RunningGateway, Sim, three_family_config

OLLAMA, ANTHROPIC, OPENAI = "llama3.2:3b", "claude-sonnet-4-6", "gpt-4o-mini"
ASK: Any = [{"role": "user", "content": "Describe a city as JSON."}]
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
LOOK: Any = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        ],
    }
]


class Landmark(BaseModel):
    name: str
    built: int


class City(BaseModel):
    """A city (ints, floats, bools, nested models and lists: the sim must fill all faithfully)."""

    name: str
    population: int = Field(ge=0)
    area_km2: float
    capital: bool
    landmarks: list[Landmark]


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)


def inference(gw: RunningGateway, family: str) -> int:
    return int(gw.sims[family].stats.inference_requests)


# --- the openai SDK's .parse: response_format json_schema ---------------------------------------


@pytest.mark.parametrize(("model", "emulated"), [(ANTHROPIC, "json_schema"), (OLLAMA, None), (OPENAI, None)])
def test_openai_parse_on_every_family(gw: RunningGateway, model: str, emulated: str | None) -> None:
    raw = client(gw).chat.completions.with_raw_response.parse(model=model, messages=ASK, response_format=City)
    completion = raw.parse()
    message = completion.choices[0].message
    assert isinstance(message.parsed, City)
    assert message.parsed.landmarks
    assert not message.tool_calls
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers.get("x-laneway-emulated") == emulated


@pytest.mark.parametrize("model", [ANTHROPIC, OLLAMA])
def test_openai_parse_streamed(gw: RunningGateway, model: str) -> None:
    with client(gw).chat.completions.stream(model=model, messages=ASK, response_format=City) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1  # it came in pieces, as content
    parsed = final.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert final.choices[0].finish_reason == "stop"


def test_emulation_is_said_on_streams_too(gw: RunningGateway) -> None:
    with client(gw).chat.completions.with_streaming_response.create(
        model=ANTHROPIC, messages=ASK, response_format={"type": "json_object"}, stream=True
    ) as response:
        assert response.headers["x-laneway-emulated"] == "json_object"
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "{}"  # the sim's object for "any object"
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": City.model_json_schema()}}]
    with client(gw).chat.completions.with_streaming_response.create(
        model=OLLAMA, messages=ASK, tools=tools, tool_choice="required", stream=True
    ) as response:
        assert response.headers["x-laneway-emulated"] == "forced_tool"
        chunks = [c for c in response.parse() if c.choices]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    City.model_validate_json("".join(tc.function.arguments or "" for tc in calls if tc.function))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --- instructor, default mode (TOOLS: a named, forced tool) -------------------------------------


@pytest.mark.parametrize(("model", "family"), [(OLLAMA, "ollama"), (ANTHROPIC, "anthropic")])
def test_instructor_default_mode(gw: RunningGateway, model: str, family: str) -> None:
    patched = instructor.from_openai(client(gw))
    before = inference(gw, family)
    city = patched.chat.completions.create(model=model, response_model=City, messages=ASK, max_retries=0)
    assert isinstance(city, City)
    assert city.landmarks[0].built == 1
    assert inference(gw, family) == before + 1  # served by that lane, at the first try


def test_instructor_on_an_ollama_lane_is_emulated(gw: RunningGateway) -> None:
    raw = client(gw).chat.completions.with_raw_response.create(
        model=OLLAMA,
        messages=ASK,
        tools=[{"type": "function", "function": {"name": "City", "parameters": City.model_json_schema()}}],
        tool_choice={"type": "function", "function": {"name": "City"}},
    )
    assert raw.headers["x-laneway-emulated"] == "forced_tool"
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_")
    City.model_validate_json(call.function.arguments)  # type: ignore[union-attr]


# --- pydantic-ai: its default output (a tool), and NativeOutput ---------------------------------


def agent_model(gw: RunningGateway, model: str) -> OpenAIChatModel:
    return OpenAIChatModel(model, provider=OpenAIProvider(base_url=gw.v1, api_key=gw.key))


@pytest.mark.parametrize(("model", "family"), [(OLLAMA, "ollama"), (ANTHROPIC, "anthropic")])
def test_pydantic_ai_default_output(gw: RunningGateway, model: str, family: str) -> None:
    agent = Agent(agent_model(gw, model), output_type=City)
    before = inference(gw, family)
    result = agent.run_sync("Describe a city.")
    assert isinstance(result.output, City)
    assert inference(gw, family) == before + 1


def test_pydantic_ai_native_output_on_an_anthropic_lane(gw: RunningGateway) -> None:
    agent = Agent(agent_model(gw, ANTHROPIC), output_type=NativeOutput(City))
    before = inference(gw, "anthropic")
    result = agent.run_sync("Describe a city.")
    assert isinstance(result.output, City)
    assert inference(gw, "anthropic") == before + 1


# --- routes: a lane that cannot is not a candidate ----------------------------------------------


@pytest.fixture
def routed(gateway_factory: Any, three_sims: dict[str, Sim], tmp_path: Path) -> RunningGateway:
    routes = {"fast": ["gpu-1/llama3.2:*", "oai/gpt-4o-mini"], "local": ["gpu-1/llama3.2:*"]}
    config = three_family_config(three_sims, tmp_path / "gw", routes=routes)
    running: RunningGateway = gateway_factory(config, three_sims)
    return running


def test_a_forced_tool_on_the_route_is_served_by_its_ollama_lane(routed: RunningGateway) -> None:
    """The issue's case: tool_choice required on `fast` answered 422 from its Ollama lane."""
    tools: Any = [{"type": "function", "function": {"name": "City", "parameters": City.model_json_schema()}}]
    raw = client(routed).chat.completions.with_raw_response.create(
        model="fast", messages=ASK, tools=tools, tool_choice="required"
    )
    assert raw.headers["x-laneway-backend"] == "gpu-1"
    assert raw.headers["x-laneway-emulated"] == "forced_tool"
    assert raw.parse().choices[0].finish_reason == "tool_calls"


def test_a_lane_that_cannot_is_passed_over_before_any_call(routed: RunningGateway) -> None:
    before = inference(routed, "ollama")
    raw = client(routed).chat.completions.with_raw_response.create(model="fast", messages=LOOK)
    assert raw.headers["x-laneway-backend"] == "oai"  # the Ollama model reported no vision
    assert raw.headers["x-laneway-attempts"] == "1"
    assert "x-laneway-emulated" not in raw.headers
    assert inference(routed, "ollama") == before


def test_a_lane_whose_family_refuses_fails_over_to_the_next(routed: RunningGateway) -> None:
    """Two tools defining one name differently cannot share one Ollama format: the Ollama lane
    refuses (422) without calling its backend, and the route moves on to its OpenAI lane."""

    def tool(name: str, kind: str) -> dict[str, Any]:
        params = {
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/X"}},
            "$defs": {"X": {"type": kind}},
        }
        return {"type": "function", "function": {"name": name, "parameters": params}}

    clashing: Any = [tool("a", "string"), tool("b", "integer")]
    before = inference(routed, "ollama")
    raw = client(routed).chat.completions.with_raw_response.create(
        model="fast", messages=ASK, tools=clashing, tool_choice="required"
    )
    assert raw.headers["x-laneway-backend"] == "oai"
    assert raw.headers["x-laneway-attempts"] == "2"
    assert raw.parse().choices[0].finish_reason == "tool_calls"
    assert inference(routed, "ollama") == before
    # with no other lane, the refusal is what the client gets
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        client(routed).chat.completions.create(
            model="local",
            messages=ASK,
            tools=[tool("a", "string"), tool("b", "integer")],
            tool_choice="required",
        )
    assert exc.value.code == "unsupported_parameter"  # type: ignore[attr-defined]


def test_when_no_lane_can_the_422_names_the_need(routed: RunningGateway) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        client(routed).chat.completions.create(model="local", messages=LOOK)
    assert exc.value.code == "unsupported_parameter"  # type: ignore[attr-defined]
    assert exc.value.param == "messages"  # type: ignore[attr-defined]
    assert "vision" in exc.value.message
    assert "ollama" in exc.value.message
    assert inference(routed, "ollama") == 0
