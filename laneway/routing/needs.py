"""What a request needs of the lane that serves it, and which of its candidates can.

Every inbound dialect is translated to the OpenAI body the router serves, so the needs are read
from that one shape (``needs_of``): function tools, a forced tool call, a JSON answer (a schema,
or any object), images, reasoning. A lane serves each need natively, by emulation, or not at
all (``support``): its family's wire format decides the first two (``providers.abilities``),
and a backend that reported its model's capabilities (Ollama's ``/api/show``) can rule a lane
out (reasoning excepted: ``RULES_OUT``). Capabilities guessed from a model's name never rule a
lane out; they only rank it later.

The router drops the candidates that cannot serve (``able``) before any call, and only when none
can does the client get a 422 that says which need no lane meets. Among those left, lanes that
emulate a need rank after those that have it, other facts equal (``tier``), and the header
``x-laneway-emulated`` says which needs the lane that served emulated (``emulated``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from laneway.errors import UnsupportedParameter
from laneway.inventory.lanes import Lane
from laneway.providers.abilities import (
    CAPABILITY,
    PARAM,
    Need,
    Support,
    family_support,
    reported_capabilities,
)
from laneway.routing.resolve import Candidate

# Ranking tiers (``rank.Facts.support``): lower first.
NATIVE, EMULATED, HINTED_LACKING = 0, 1, 2

ProviderOf = Callable[[str], object | None]  # backend name → its provider (None: gone)

# The needs a lane lacking them cannot serve at all. Reasoning is not one: a lane that cannot
# think still answers the question (its adapter leaves thinking off), so it only ranks after
# those that can. Clients ask for thinking on every turn (Claude Code does); ruling such lanes
# out would turn an answer into a 422.
RULES_OUT = frozenset(set(Need) - {Need.REASONING})


def needs_of(body: Mapping[str, Any]) -> frozenset[Need]:
    """The needs of an OpenAI chat body. Tolerant of malformed fields: validating them is the
    adapters' job, and a field that cannot be read needs nothing here. A JSON answer is not
    needed when a tool call is forced: that turn's answer is the tool call."""
    needs: set[Need] = set()
    tools, choice = body.get("tools"), body.get("tool_choice")
    if isinstance(tools, list) and tools and choice != "none":
        needs.add(Need.TOOLS)
        if choice == "required" or isinstance(choice, Mapping):
            needs.add(Need.FORCED_TOOL)
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind in (Need.JSON_SCHEMA, Need.JSON_OBJECT) and Need.FORCED_TOOL not in needs:
        needs.add(Need(kind))
    if _has_images(body.get("messages")):
        needs.add(Need.VISION)
    effort = body.get("reasoning_effort")
    if effort is not None and effort != "none":
        needs.add(Need.REASONING)
    return frozenset(needs)


def _has_images(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list) and any(
            isinstance(part, Mapping) and part.get("type") == "image_url" for part in content
        ):
            return True
    return False


def support(lane: Lane, provider: object | None, need: Need) -> Support:
    """How ``lane`` serves ``need``. NONE only when both the lane (its discovered or declared
    capabilities) and its backend's own report of the model say it lacks the capability."""
    capability = CAPABILITY.get(need)
    if capability is not None and capability not in lane.capabilities:
        reported = reported_capabilities(provider, lane.model)
        if reported is not None and capability not in reported:
            return Support.NONE
    return family_support(lane.family, need)


def able(
    found: tuple[Candidate, ...], needs: frozenset[Need], provider_of: ProviderOf, name: str
) -> tuple[Candidate, ...]:
    """The candidates that can serve every need, in their order; a 422 naming the unmet need and
    the lanes' families when none can."""
    if not needs:
        return found
    kept: list[Candidate] = []
    unmet: dict[Need, set[str]] = {}
    for candidate in found:
        lane = candidate.lane
        provider = provider_of(lane.backend)
        missing = [n for n in sorted(needs) if n in RULES_OUT and support(lane, provider, n) == Support.NONE]
        if not missing:
            kept.append(candidate)
        for need in missing:
            unmet.setdefault(need, set()).add(f"{lane.backend}/{lane.model} ({lane.family})")
    if kept:
        return tuple(kept)
    need = min(unmet)
    lanes = ", ".join(sorted(unmet[need]))
    raise UnsupportedParameter(
        f"No lane for '{name}' can serve this request: it needs {need}, which {lanes} cannot do",
        param=PARAM[need],
    )


def tier(lane: Lane, provider: object | None, needs: frozenset[Need]) -> int:
    """The lane's ranking tier for these needs: native, emulated, or guessed to lack a capability
    (a hint from its name: such a lane is still tried, after the others)."""
    if not needs:
        return NATIVE
    if any(c not in lane.capabilities for n in needs if (c := CAPABILITY.get(n)) is not None):
        return HINTED_LACKING
    if any(support(lane, provider, n) == Support.EMULATED for n in needs):
        return EMULATED
    return NATIVE


def emulated(lane: Lane, needs: Iterable[Need]) -> tuple[str, ...]:
    """The needs ``lane``'s family serves by emulation (for the ``x-laneway-emulated`` header)."""
    return tuple(n.value for n in sorted(needs) if family_support(lane.family, n) == Support.EMULATED)
