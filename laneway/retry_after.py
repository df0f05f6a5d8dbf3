"""Retry-After, read in one place: by the failure verdict (``laneway.errors.classify``) and by the
rate-limit signals (``laneway.signals.headers``).

RFC 9110 §10.2.3 allows whole seconds or an HTTP date; fractional seconds are accepted too, as the
OpenAI and Anthropic SDKs accept them, and ``retry-after-ms`` (sent by some OpenAI-compatible
servers, and read first by those SDKs) is read before ``retry-after``. Malformed values never
raise: they read as not given.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime

MAX_SECONDS = 9_223_372_036.854775807  # Go's longest time.Duration: no real delay is longer


def decimal(text: str) -> float | None:
    """``12``, ``12.5``, ``.5``, ``12.`` -> float; anything else (signs, exponents, ``nan``,
    ``inf``, ``1_000``, non-ASCII digits, which ``float`` would all accept) -> None."""
    if text.isdigit() and text.isascii():  # the usual case, without the copy below
        return float(text)
    digits = text.replace(".", "", 1)
    if digits.isdigit() and digits.isascii():
        return float(text)
    return None


def parse_retry_after(value: str, now: float) -> float | None:
    """``retry-after`` -> the absolute time to retry at; None if malformed.

    ``0`` means now. A date in the past gives a time at or before ``now``, which the caller
    treats as now.
    """
    value = value.strip()
    seconds = decimal(value)
    if seconds is not None:
        return now + seconds if seconds <= MAX_SECONDS else None
    try:
        parts = email.utils.parsedate_tz(value)
        if parts is None:
            return None
        # An HTTP date is GMT: unlike email.utils.mktime_tz, never fall back to the local zone
        # when the date names none. datetime() also refuses what parsedate_tz lets through
        # (31 February, hour 25).
        moment = datetime(*parts[:6], tzinfo=UTC)
        return moment.timestamp() - (parts[9] or 0)
    except (ValueError, TypeError, OverflowError, IndexError):
        return None


def retry_at(headers: Mapping[str, str], now: float) -> float | None:
    """When a response asked to be retried (wall-clock seconds), or None: ``retry-after-ms``
    first (more precise), then ``retry-after``; a malformed one is skipped. ``headers`` look
    names up case-insensitively or have lower-case keys."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        number = decimal(millis.strip())
        if number is not None and number / 1000.0 <= MAX_SECONDS:
            return now + number / 1000.0
    seconds = headers.get("retry-after")
    return None if seconds is None else parse_retry_after(seconds, now)
