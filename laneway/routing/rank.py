"""Ranking: the order in which a request's candidate lanes are tried.

A pure function of the candidates and what is known about each (``Facts``): no clock, no I/O, so
it is tested on its own. In order of precedence:

1. exhausted lanes are dropped (until their reset: the signals say when);
2. available before unknown before degraded;
3. higher lane weight first (tier x provider x instance x model x health);
4. how it serves what the request needs (``routing.needs.tier``): natively, then by emulation
   (an Anthropic lane's JSON mode, an Ollama lane's forced tool call), then lanes whose model's
   name suggests it lacks a needed capability (a hint only: they are still tried);
5. shorter queue first;
6. less busy first: the share of its pool's slots in use, in quarters, so a lane with a few slots
   (a GPU box, a publisher's laptop) that is already serving yields the next request to an idle
   equal, while a 64-slot cloud pool lets latency decide until it is a quarter full;
7. lower recent p50 first, compared in 25% steps so noise does not reorder equals (a lane without
   samples counts as fast, so new lanes get traffic and learn their latency);
8. more quota remaining first (a share of the limit; unknown counts as full);
9. a seeded tie-break: one seed gives one order (tests, reproducible incidents), different seeds
   (replicas) different ones.

A route's selectors stay in their order: ranking happens within each selector's group.

Then ``spread`` shares the load between the best lanes that are equals (same group and weight,
available or not yet known): a fixed order would send every request to the first of them. It
picks the first lane by the power of two choices: two of the equals drawn at random (from the
router's seeded generator), the less loaded of the two first: fewer queued, then fewer of its
slots in use, then (only when one is at least twice as slow, so noise does not starve a lane
whose samples are stale) the faster. The rest keep their ranked order, for failover. Lanes of
different support tiers are never equals: an emulating lane is not drawn before a native one.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_STATUS_ORDER = {"available": 0, "unknown": 1, "degraded": 2}
_P50_STEP = math.log(1.25)


@dataclass(frozen=True, slots=True)
class Facts:
    lane_id: str
    weight: float
    status: str = "unknown"  # available | degraded | exhausted | unknown
    p50: float | None = None  # seconds
    quota_share: float | None = None  # remaining / limit, 0..1
    queued: int = 0
    busy: float = 0.0  # slots in use / slots of its pool, 0..1
    group: int = 0  # the route selector that chose it (0 for a plain model name)
    support: int = 0  # how it serves the request's needs: 0 natively, 1 by emulation, 2 hinted lacking


def _tiebreak(seed: int, lane_id: str) -> bytes:
    return hashlib.blake2b(lane_id.encode(), digest_size=8, key=seed.to_bytes(8, "big", signed=True)).digest()


def _p50_step(p50: float | None) -> int:
    if p50 is None or p50 <= 0:
        return -(10**9)
    return math.floor(math.log(p50) / _P50_STEP)


def rank_key(facts: Facts, seed: int) -> tuple[int, int, float, int, int, int, int, float, bytes]:
    return (
        facts.group,
        _STATUS_ORDER.get(facts.status, 1),
        -facts.weight,
        facts.support,
        facts.queued,
        math.floor(facts.busy * 4),
        _p50_step(facts.p50),
        -(1.0 if facts.quota_share is None else facts.quota_share),
        _tiebreak(seed, facts.lane_id),
    )


def rank(candidates: Sequence[T], facts: Callable[[T], Facts], seed: int) -> list[T]:
    """The candidates worth trying, best first; exhausted ones are left out."""
    return [c for c, _ in ranked_facts(candidates, facts, seed)]


def ranked_facts(candidates: Sequence[T], facts: Callable[[T], Facts], seed: int) -> list[tuple[T, Facts]]:
    """``rank``, with each candidate's facts."""
    known = [(c, facts(c)) for c in candidates]
    usable = [(c, f) for c, f in known if f.status != "exhausted"]
    usable.sort(key=lambda cf: rank_key(cf[1], seed))
    return usable


def spread(ranked: list[tuple[T, Facts]], rng: random.Random) -> list[T]:
    """``ranked`` with its first lane chosen by the power of two choices among the leading equals."""
    head = ranked[0][1] if ranked else None
    equals = 0
    while equals < len(ranked) and head is not None and _equal(ranked[equals][1], head):
        equals += 1
    if equals < 2:
        return [c for c, _ in ranked]
    a, b = rng.sample(range(equals), 2)
    first = a if _lighter(ranked[a][1], ranked[b][1]) else b
    return [ranked[first][0], *(c for i, (c, _) in enumerate(ranked) if i != first)]


def _equal(x: Facts, y: Facts) -> bool:
    return (
        x.group == y.group and _healthy(x) == _healthy(y) and x.weight == y.weight and x.support == y.support
    )


def _healthy(facts: Facts) -> bool:
    """Available and unknown (nothing observed yet) count as equals here: else the first lane to
    answer would keep all the traffic, and its equals would never get the chance to be known."""
    return facts.status in ("available", "unknown")


def _lighter(x: Facts, y: Facts) -> bool:
    """Is ``x`` at most as loaded as ``y``? A tie goes to ``x`` (the first drawn)."""
    if (x.queued, x.busy) != (y.queued, y.busy):
        return (x.queued, x.busy) < (y.queued, y.busy)
    x50, y50 = x.p50 or 0.0, y.p50 or 0.0  # a lane without samples counts as fast
    return not (x50 > 0 and x50 >= 2 * y50)
