"""Usage records: who asked for what, which lane served it, and the tokens it took.

The record itself and what people type to query it (``--since``, ``group_by``). It sits on the
ground floor: routing makes records, storage writes them (``laneway.storage.usage_writer``, off
the request path), the API and the CLI read them, and it imports none of them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

# What usage can be grouped by (the columns of a summary); order is the order of the output.
GROUP_FIELDS = ("caller", "requested", "lane", "backend", "model", "replica")


@dataclass(frozen=True)
class UsageRecord:
    """One served request. Token counts are what the upstream reported (None: it did not say)."""

    at: float  # when the request finished, seconds since the Unix epoch
    caller: str
    requested: str  # the model, route or lane id the client asked for
    lane: str  # the lane that served it
    backend: str
    model: str  # the backend's own model name
    prompt_tokens: int | None
    completion_tokens: int | None
    request_id: str
    attempts: int  # lanes tried, the successful one included
    streamed: bool
    replica: str = ""  # the replica that served it (``cluster.replica_id``); '' if not known


# --- what people type: --since and group_by -----------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: float) -> float:
    """The epoch time ``value`` means: seconds ago (``3600``), a duration ago (``90s``, ``15m``,
    ``1h30m``, ``7d``, ``2w``) or an ISO 8601 time (``2026-11-23T10:00``, UTC unless it carries
    an offset). Raises ValueError with a message that shows the accepted forms. Anything before
    1970 reads as 1970: it means "everything" just the same, and stays a valid datetime."""
    return max(_parse_since(value, now), 0.0)


def _parse_since(value: str, now: float) -> float:
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"'{value}' is not a number of seconds ago (give a positive number)")
        return now - seconds
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return now - sum(float(n) * _UNIT[u] for n, u in parts)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(
            f"'{value}' is not a time: give seconds ago (3600), a duration (90s, 15m, 1h30m, 7d) "
            "or an ISO 8601 time (2026-11-23T10:00, UTC unless it has an offset)"
        ) from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def parse_group_by(value: str) -> list[str]:
    """``"caller,lane"`` → ``["caller", "lane"]``; an empty value groups nothing (one total).
    Raises ValueError naming the first unknown field."""
    fields = [f.strip() for f in value.split(",") if f.strip()]
    for name in fields:
        if name not in GROUP_FIELDS:
            raise ValueError(f"cannot group usage by '{name}'; use any of: {', '.join(GROUP_FIELDS)}")
    return list(dict.fromkeys(fields))  # a field named twice is grouped once
