"""What each provider family can do for what a request needs: natively, by emulation, or not.

A request's needs (``Need``: computed from its OpenAI body by ``routing.needs``) are the things a
lane must be able to do to serve it at all. Families differ in how: OpenAI's API has them all;
Anthropic's has no JSON mode, which its adapter emulates with a forced tool whose input is the
answer; Ollama cannot force a tool call, which its adapter emulates with ``format`` (the tool's
parameters as the answer's JSON schema). The router drops lanes that cannot serve a need and
ranks those that emulate one after those that have it, other facts equal.

This is data, kept next to the adapters that do the emulating, so a change to one is a change
to the other. A family not in the table is taken to be OpenAI-compatible (as published lanes
are, whose publisher's own family is not known here).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum


class Need(StrEnum):
    """Something a request needs of the lane that serves it. The value names it in errors and
    in the ``x-laneway-emulated`` header."""

    TOOLS = "tools"  # function tools the model may call
    FORCED_TOOL = "forced_tool"  # tool_choice "required" or a named function
    JSON_SCHEMA = "json_schema"  # response_format json_schema
    JSON_OBJECT = "json_object"  # response_format json_object
    VISION = "vision"  # image parts in the messages
    REASONING = "reasoning"  # reasoning_effort set (not "none")


class Support(IntEnum):
    """How a lane serves a need; lower ranks first."""

    NATIVE = 0
    EMULATED = 1
    NONE = 2


_EMULATED: Mapping[str, frozenset[Need]] = {
    "anthropic": frozenset({Need.JSON_SCHEMA, Need.JSON_OBJECT}),  # anthropic_request: a forced tool
    "ollama": frozenset({Need.FORCED_TOOL}),  # ollama_request: format = the tool's schema
}

# The lane capability (``providers.capabilities``, what discovery reports) a need depends on.
CAPABILITY: Mapping[Need, str] = {
    Need.TOOLS: "tools",
    Need.FORCED_TOOL: "tools",
    Need.VISION: "vision",
    Need.REASONING: "reasoning",
}

# The request parameter a need comes from: the ``param`` of a 422 that says no lane can serve it.
PARAM: Mapping[Need, str] = {
    Need.TOOLS: "tools",
    Need.FORCED_TOOL: "tool_choice",
    Need.JSON_SCHEMA: "response_format",
    Need.JSON_OBJECT: "response_format",
    Need.VISION: "messages",
    Need.REASONING: "reasoning_effort",
}


def family_support(family: str, need: Need) -> Support:
    """How a lane of ``family`` serves ``need``, as far as its wire format goes (the model behind
    it may still lack the capability: see ``reported_capabilities``)."""
    return Support.EMULATED if need in _EMULATED.get(family, frozenset()) else Support.NATIVE


def reported_capabilities(provider: object, model: str) -> frozenset[str] | None:
    """The capabilities ``provider``'s backend itself reported for ``model`` at its last discovery
    (Ollama's ``/api/show`` lists them), or None when it reported none: capabilities guessed from
    a model's name are hints for ranking, never a reason to leave a lane out. A provider that
    knows keeps them in a ``reported`` mapping (model → capabilities)."""
    reported = getattr(provider, "reported", None)
    if not isinstance(reported, Mapping):
        return None
    found = reported.get(model)
    return found if isinstance(found, frozenset) else None
