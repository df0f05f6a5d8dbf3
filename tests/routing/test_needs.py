"""A request's needs, which lanes can serve them (natively, by emulation, not at all), how that
ranks them, and the verdict on a family's refusal."""

from __future__ import annotations

import random
from typing import Any

import pytest

from laneway.errors import InvalidRequest, UnsupportedParameter, classify
from laneway.inventory.lanes import Lane
from laneway.providers.abilities import Need, Support, family_support, reported_capabilities
from laneway.routing.needs import EMULATED, HINTED_LACKING, NATIVE, able, emulated, needs_of, support, tier
from laneway.routing.rank import Facts, ranked_facts, spread
from laneway.routing.resolve import Candidate

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
USER = [{"role": "user", "content": "hi"}]
IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is it?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
]


def lane(family: str, model: str = "m", capabilities: set[str] | None = None, backend: str = "b") -> Lane:
    caps = {"chat", "tools", "vision", "reasoning"} if capabilities is None else capabilities
    return Lane(
        tier="local", family=family, backend=backend, type="chat", model=model, capabilities=frozenset(caps)
    )


class Reporting:
    """A provider as the needs see one: what its backend reported per model."""

    def __init__(self, reported: dict[str, frozenset[str]]) -> None:
        self.reported = reported


@pytest.mark.parametrize(
    ("body", "needs"),
    [
        ({"messages": USER}, set()),
        ({"messages": USER, "tools": [TOOL]}, {Need.TOOLS}),
        ({"messages": USER, "tools": [TOOL], "tool_choice": "auto"}, {Need.TOOLS}),
        ({"messages": USER, "tools": [TOOL], "tool_choice": "none"}, set()),
        ({"messages": USER, "tools": [], "tool_choice": "required"}, set()),
        ({"messages": USER, "tools": [TOOL], "tool_choice": "required"}, {Need.TOOLS, Need.FORCED_TOOL}),
        (
            {
                "messages": USER,
                "tools": [TOOL],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            },
            {Need.TOOLS, Need.FORCED_TOOL},
        ),
        ({"messages": USER, "response_format": {"type": "json_object"}}, {Need.JSON_OBJECT}),
        ({"messages": USER, "response_format": {"type": "json_schema"}}, {Need.JSON_SCHEMA}),
        ({"messages": USER, "response_format": {"type": "text"}}, set()),
        # a forced tool call is that turn's answer: no JSON is asked of it
        (
            {
                "messages": USER,
                "tools": [TOOL],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            {Need.TOOLS, Need.FORCED_TOOL},
        ),
        ({"messages": IMAGE}, {Need.VISION}),
        ({"messages": USER, "reasoning_effort": "low"}, {Need.REASONING}),
        ({"messages": USER, "reasoning_effort": "none"}, set()),
        # malformed fields need nothing here (the adapters say what is wrong with them)
        ({"messages": "nope", "tools": "nope", "response_format": "json"}, set()),
    ],
)
def test_needs_of(body: dict[str, Any], needs: set[Need]) -> None:
    assert needs_of(body) == needs


def test_family_table() -> None:
    assert family_support("openai", Need.JSON_SCHEMA) == Support.NATIVE
    assert family_support("anthropic", Need.JSON_SCHEMA) == Support.EMULATED
    assert family_support("anthropic", Need.JSON_OBJECT) == Support.EMULATED
    assert family_support("anthropic", Need.FORCED_TOOL) == Support.NATIVE
    assert family_support("ollama", Need.FORCED_TOOL) == Support.EMULATED
    assert family_support("ollama", Need.JSON_SCHEMA) == Support.NATIVE
    # published lanes: their publisher's family is not known here, so OpenAI-like
    assert all(family_support("virtual", need) == Support.NATIVE for need in Need)


def test_only_reported_capabilities_rule_a_lane_out() -> None:
    guessed = lane("openai", capabilities={"chat"})  # the name suggested no tools, no vision
    assert support(guessed, None, Need.TOOLS) == Support.NATIVE  # a hint, not a reason
    assert tier(guessed, None, frozenset({Need.TOOLS})) == HINTED_LACKING  # but it ranks later
    reported = Reporting({"m": frozenset({"chat", "tools"})})
    ollama = lane("ollama", capabilities={"chat", "tools"})
    assert support(ollama, reported, Need.VISION) == Support.NONE
    assert support(ollama, reported, Need.TOOLS) == Support.NATIVE
    assert support(ollama, reported, Need.FORCED_TOOL) == Support.EMULATED
    # an operator who declared vision for the model is believed over the backend's report
    declared = lane("ollama", capabilities={"chat", "vision"})
    assert support(declared, reported, Need.VISION) == Support.NATIVE
    assert reported_capabilities(object(), "m") is None
    assert reported_capabilities(Reporting({}), "m") is None


def test_able_drops_the_lanes_that_cannot_and_keeps_the_order() -> None:
    blind = lane("ollama", "llama3.2:3b", {"chat", "tools"}, backend="gpu-1")
    seeing = lane("openai", "gpt-4o-mini", backend="oai")
    providers = {"gpu-1": Reporting({"llama3.2:3b": frozenset({"chat", "tools"})}), "oai": object()}
    found = (Candidate(blind), Candidate(seeing))
    assert able(found, frozenset(), providers.get, "fast") == found
    assert able(found, frozenset({Need.TOOLS}), providers.get, "fast") == found
    assert able(found, frozenset({Need.VISION}), providers.get, "fast") == (Candidate(seeing),)


def test_reasoning_ranks_but_never_rules_a_lane_out() -> None:
    # Claude Code asks for thinking on every turn: a lane whose model cannot think still answers
    unthinking = lane("ollama", "llama3.2:3b", {"chat", "tools"}, backend="gpu-1")
    providers = {"gpu-1": Reporting({"llama3.2:3b": frozenset({"chat", "tools"})})}
    assert support(unthinking, providers["gpu-1"], Need.REASONING) == Support.NONE
    found = (Candidate(unthinking),)
    assert able(found, frozenset({Need.REASONING, Need.TOOLS}), providers.get, "chat") == found
    assert tier(unthinking, providers["gpu-1"], frozenset({Need.REASONING})) == HINTED_LACKING


def test_no_lane_able_is_a_422_naming_the_need_and_the_lanes() -> None:
    blind = lane("ollama", "llama3.2:3b", {"chat"}, backend="gpu-1")
    providers = {"gpu-1": Reporting({"llama3.2:3b": frozenset({"chat"})})}
    with pytest.raises(UnsupportedParameter) as exc:
        able((Candidate(blind),), frozenset({Need.VISION, Need.TOOLS}), providers.get, "fast")
    assert exc.value.status == 422
    assert exc.value.param == "tools"
    assert "needs tools" in exc.value.message
    assert "gpu-1/llama3.2:3b (ollama)" in exc.value.message


def test_tiers_and_what_is_emulated() -> None:
    json = frozenset({Need.JSON_SCHEMA})
    forced = frozenset({Need.TOOLS, Need.FORCED_TOOL})
    assert tier(lane("openai"), None, json) == NATIVE
    assert tier(lane("anthropic"), None, json) == EMULATED
    assert tier(lane("ollama"), None, json) == NATIVE
    assert tier(lane("ollama"), None, forced) == EMULATED
    assert tier(lane("anthropic"), None, frozenset()) == NATIVE
    assert emulated(lane("anthropic"), json) == ("json_schema",)
    assert emulated(lane("ollama"), forced) == ("forced_tool",)
    assert emulated(lane("openai"), forced | json) == ()


def test_emulating_lanes_rank_after_native_ones_other_facts_equal() -> None:
    facts = {
        "native": Facts("native", 100.0, support=NATIVE),
        "emulated": Facts("emulated", 100.0, support=EMULATED),
        "heavier-emulated": Facts("heavier-emulated", 200.0, support=EMULATED),
    }
    order = [c for c, _ in ranked_facts(["emulated", "native", "heavier-emulated"], facts.__getitem__, 7)]
    assert order == ["heavier-emulated", "native", "emulated"]  # the operator's weight comes first
    # the power of two choices never draws an emulating lane ahead of a native equal
    for seed in range(20):
        ranked = ranked_facts(["emulated", "native"], facts.__getitem__, seed)
        assert spread(ranked, random.Random(seed))[0] == "native"


def test_a_familys_refusal_moves_on_to_the_next_lane_without_blame() -> None:
    verdict = classify(UnsupportedParameter("no JSON mode", param="response_format"), now=0.0)
    assert verdict.retryable
    assert not verdict.unhealthy
    assert not verdict.auth_failure
    assert not verdict.stale_lane
    assert not classify(InvalidRequest("bad"), now=0.0).retryable  # the client's own fault is final
