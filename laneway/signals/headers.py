"""What an upstream's rate-limit headers say about its quota, per provider family.

This runs on every upstream response, so it is plain dict lookups of lower-case names and
string checks; no regex, and nothing is parsed unless its header is there. A response without
rate-limit headers costs one ``get`` per name we know and returns a shared empty ``RateLimits``.

The wire formats (as the providers send them, checked against captured responses):

- OpenAI (and the OpenAI-compatible servers that copy its headers):
  ``x-ratelimit-{limit,remaining}-{requests,tokens}`` are counts and
  ``x-ratelimit-reset-{requests,tokens}`` are Go ``time.Duration`` strings until the counter is
  whole again (``1s``, ``6m0s``, ``12ms``, ``16m33.562s``, ``23h18m29.144s``). Extra variants
  (``…-tokens_usage_based``, ``…-project-tokens``) are ignored.
- OpenRouter speaks the OpenAI wire format but sends unsuffixed ``x-ratelimit-limit``,
  ``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (requests; the reset is Unix epoch
  *milliseconds*, ``1779321600000``). The suffixed names win when both are present.
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
  with RFC 3339 resets (``2025-08-21T12:40:59Z``). Subscription (OAuth) accounts get the unified
  quota instead: ``anthropic-ratelimit-unified-status`` (``allowed``, ``allowed_warning``,
  ``rejected``), ``-unified-reset`` (Unix epoch *seconds*, ``1754179200``),
  ``-unified-representative-claim`` (``five_hour``, ``seven_day``…) and per-window
  ``-unified-{5h,7d}-{status,reset,utilization}``; only status and reset are kept here.
- Everyone: ``retry-after`` in seconds or as an HTTP date (RFC 9110 §10.2.3), and
  ``retry-after-ms`` (sent by some OpenAI-compatible servers; the official OpenAI and Anthropic
  SDKs read it before ``retry-after``, and so do we), both read by ``laneway.retry_after``, which
  the failure verdict (``laneway.errors.classify``) shares.

An OpenAI-family reset is accepted in either shape under either name: a value ending in a digit
is an absolute epoch (milliseconds from 1e11 up, else seconds), anything else a Go duration from
``now``. A bare small number (``60``) is neither: seconds or milliseconds, we cannot tell, so it
is malformed rather than guessed. An Anthropic reset is RFC 3339 or a bare epoch.

Malformed values never raise and never clear the other fields: the one field is None, which the
signal store (``state.py``) reads as "not reported" and keeps what it knew. That is also why an
absurd number is *dropped*, not clamped: a count above 2**53 (the largest integer a JSON reader
keeps exactly; no real limit comes near it) or a delay beyond Go's longest duration (~292 years)
can only come from a broken upstream, and inventing a ceiling would overwrite a good earlier
value with a made-up one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from laneway.retry_after import MAX_SECONDS
from laneway.retry_after import decimal as _decimal
from laneway.retry_after import retry_at as _retry_at


@dataclass(frozen=True, slots=True)
class Quota:
    """One counter as the upstream reported it. None fields were not reported (distinct from 0)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None  # wall-clock seconds (Unix) when the counter refills


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What one response's headers said about quota. A field left None was not reported."""

    requests: Quota | None = None
    # Anthropic: the tightest of tokens/input-tokens/output-tokens (lowest remaining; its reset)
    tokens: Quota | None = None
    retry_at: float | None = None  # from retry-after / retry-after-ms: wall-clock time to retry at
    unified_status: str | None = None  # Anthropic unified quota: "allowed", "allowed_warning", "rejected"
    unified_reset_at: float | None = None

    @property
    def empty(self) -> bool:
        """Nothing at all was reported (or nothing usable): the caller must keep what it knew."""
        return (
            self.requests is None
            and self.tokens is None
            and self.retry_at is None
            and self.unified_status is None
            and self.unified_reset_at is None
        )


_EMPTY = RateLimits()  # immutable, so one shared instance serves every header-less response

MAX_COUNT = 2**53
_EPOCH_MS_FROM = 1e11  # as seconds that is the year 5138; as milliseconds, 1973
_EPOCH_FROM = 1e9  # 2001-09-09: no real reset is earlier, a smaller bare number is an amount
_EPOCH_UNTIL = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last instant RFC 3339 can write
_MAX_STATUS = 64

# Go's units (time.ParseDuration accepts both micro signs).
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER_CHARS = frozenset("0123456789.")

# Claim names as Anthropic sends them -> the window part of that window's header names.
_CLAIM_WINDOWS = {"five_hour": "5h", "seven_day": "7d", "seven_day_sonnet": "7d_sonnet"}


# -- the parts ----------------------------------------------------------------------------------


def _count(value: str | None) -> int | None:
    """A non-negative integer count, at most ``MAX_COUNT``."""
    if value is None:
        return None
    if not (value.isdigit() and value.isascii()):
        value = value.strip()
        if not (value.isdigit() and value.isascii()):
            return None
    # 17 digits is already past 2**53; the length check also keeps int() off huge strings.
    if len(value) > 17:
        return None
    count = int(value)
    return count if count <= MAX_COUNT else None


def parse_duration(text: str) -> float | None:
    """A Go ``time.Duration`` string -> seconds; None if malformed.

    OpenAI's reset headers are Go's ``Duration.String()``: ``1s``, ``6m0s``, ``20ms``,
    ``1h2m3.5s``, ``59.995s``. Accepted as ``time.ParseDuration`` does: one or more
    ``<decimal><unit>`` parts, units ns/us/µs/ms/s/m/h, an optional ``+``, and a bare ``0``.
    Refused where Go accepts: a ``-`` sign (a negative time-to-reset means nothing). Refused like
    Go: a number without a unit (``60``), an unknown unit (``1x``), more than ~292 years.
    """
    text = text.strip()
    # Fast path for the shapes Duration.String() writes, which is what OpenAI sends:
    # ``<n>ms`` below a second, else ``[<h>h][<m>m]<s>s``. Anything else takes the general loop.
    if text.endswith("ms"):
        number = _decimal(text[:-2])
        if number is not None:
            number /= 1000.0
            return number if number <= MAX_SECONDS else None
    elif text.endswith("s") and text[-2:-1] in _NUMBER_CHARS:
        rest = text[:-1]
        total = 0.0
        if "h" in rest:
            hours, _, rest = rest.partition("h")
            number = _decimal(hours)
            total = 3600.0 * number if number is not None else -1.0
        if "m" in rest and total >= 0.0:
            minutes, _, rest = rest.partition("m")
            number = _decimal(minutes)
            total = total + 60.0 * number if number is not None else -1.0
        number = _decimal(rest) if total >= 0.0 else None
        if number is not None:
            total += number
            return total if total <= MAX_SECONDS else None
    return _parse_duration_parts(text)


def _parse_duration_parts(text: str) -> float | None:
    """The whole of ``time.ParseDuration``'s grammar, one character at a time (the rare path)."""
    if text.startswith("+"):
        text = text[1:]
    if text == "0":
        return 0.0
    total = 0.0
    i, n = 0, len(text)
    if n == 0:
        return None
    while i < n:
        start = i
        while i < n and text[i] in _NUMBER_CHARS:
            i += 1
        number = _decimal(text[start:i])
        if number is None:
            return None
        unit_start = i
        while i < n and text[i] not in _NUMBER_CHARS:
            i += 1
        scale = _UNITS.get(text[unit_start:i])
        if scale is None:
            return None
        total += number * scale
    return total if total <= MAX_SECONDS else None


def _epoch(value: float) -> float | None:
    """A bare number that names an instant: epoch milliseconds from 1e11 up, else epoch seconds."""
    if value >= _EPOCH_MS_FROM:
        value /= 1000.0
    return value if _EPOCH_FROM <= value <= _EPOCH_UNTIL else None


def _instant(value: str | None) -> float | None:
    """An absolute time: RFC 3339 (Anthropic's counters) or a bare epoch (its unified quota)."""
    if value is None:
        return None
    value = value.strip()
    if value[-1:].isdigit():
        number = _decimal(value)
        if number is not None:
            return _epoch(number)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:  # RFC 3339 always has an offset; the providers all mean UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _reset(value: str | None, now: float) -> float | None:
    """An OpenAI-family reset: a Go duration from ``now`` (OpenAI) or a bare epoch (OpenRouter)."""
    if value is None:
        return None
    value = value.strip()
    if value[-1:].isdigit() and value != "0":  # parse_duration takes "0", as Go does
        number = _decimal(value)
        return None if number is None else _epoch(number)
    seconds = parse_duration(value)
    return None if seconds is None else now + seconds


def _quota(limit: int | None, remaining: int | None, reset_at: float | None) -> Quota | None:
    if limit is None and remaining is None and reset_at is None:
        return None
    return Quota(limit, remaining, reset_at)


# -- the families -------------------------------------------------------------------------------


def _openai(headers: Mapping[str, str], now: float) -> RateLimits:
    get = headers.get
    limit_requests = get("x-ratelimit-limit-requests")
    remaining_requests = get("x-ratelimit-remaining-requests")
    reset_requests = get("x-ratelimit-reset-requests")
    limit_tokens = get("x-ratelimit-limit-tokens")
    remaining_tokens = get("x-ratelimit-remaining-tokens")
    reset_tokens = get("x-ratelimit-reset-tokens")
    if limit_requests is None and remaining_requests is None and reset_requests is None:
        # No suffixed request counter: maybe OpenRouter's unsuffixed one (it counts requests).
        limit_requests = get("x-ratelimit-limit")
        remaining_requests = get("x-ratelimit-remaining")
        reset_requests = get("x-ratelimit-reset")
    requests = tokens = None
    if limit_requests is not None or remaining_requests is not None or reset_requests is not None:
        requests = _quota(_count(limit_requests), _count(remaining_requests), _reset(reset_requests, now))
    if limit_tokens is not None or remaining_tokens is not None or reset_tokens is not None:
        tokens = _quota(_count(limit_tokens), _count(remaining_tokens), _reset(reset_tokens, now))
    retry_at = _retry_at(headers, now)
    if requests is None and tokens is None and retry_at is None:
        return _EMPTY
    return RateLimits(requests=requests, tokens=tokens, retry_at=retry_at)


def _names(counter: str) -> tuple[str, str, str]:
    prefix = "anthropic-ratelimit-" + counter
    return prefix + "-limit", prefix + "-remaining", prefix + "-reset"


_REQUESTS, _TOKENS, _INPUT_TOKENS, _OUTPUT_TOKENS = (
    _names(counter) for counter in ("requests", "tokens", "input-tokens", "output-tokens")
)


def _anthropic_counter(headers: Mapping[str, str], names: tuple[str, str, str]) -> Quota | None:
    limit = headers.get(names[0])
    remaining = headers.get(names[1])
    reset = headers.get(names[2])
    if limit is None and remaining is None and reset is None:
        return None
    return _quota(_count(limit), _count(remaining), _instant(reset))


def _tightest(*counters: Quota | None) -> Quota | None:
    """The counter that runs out first: lowest remaining; on a tie the later reset (both must
    refill before a request of that size fits). Counters without a remaining count only matter
    when no counter has one: then the first reported one stands for all."""
    best: Quota | None = None
    first: Quota | None = None
    for quota in counters:
        if quota is None:
            continue
        if first is None:
            first = quota
        if quota.remaining is None:
            continue
        if (
            best is None
            or best.remaining is None  # never: only counters with a remaining count get here
            or quota.remaining < best.remaining
            or (quota.remaining == best.remaining and (quota.reset_at or 0.0) > (best.reset_at or 0.0))
        ):
            best = quota
    return best if best is not None else first


def _anthropic(headers: Mapping[str, str], now: float) -> RateLimits:
    requests = _anthropic_counter(headers, _REQUESTS)
    tokens = _tightest(
        _anthropic_counter(headers, _TOKENS),
        _anthropic_counter(headers, _INPUT_TOKENS),
        _anthropic_counter(headers, _OUTPUT_TOKENS),
    )
    retry_at = _retry_at(headers, now)

    status = headers.get("anthropic-ratelimit-unified-status")
    if status is not None:
        status = status.strip()
        if not status or len(status) > _MAX_STATUS:
            status = None
    reset_text = headers.get("anthropic-ratelimit-unified-reset")
    if reset_text is None:
        # Some responses carry only the per-window headers: use the window Anthropic names as
        # the binding one.
        window = _CLAIM_WINDOWS.get(headers.get("anthropic-ratelimit-unified-representative-claim") or "")
        if window is not None:
            reset_text = headers.get(f"anthropic-ratelimit-unified-{window}-reset")
    unified_reset_at = _instant(reset_text)

    if (
        requests is None
        and tokens is None
        and retry_at is None
        and status is None
        and unified_reset_at is None
    ):
        return _EMPTY
    return RateLimits(requests, tokens, retry_at, status, unified_reset_at)


def parse_rate_limits(family: str, headers: Mapping[str, str], now: float) -> RateLimits:
    """Read one response's rate-limit headers. Never raises.

    ``family`` picks the header set: ``"openai"`` (also OpenRouter, Groq, vLLM…: OpenAI's
    suffixed names and OpenRouter's unsuffixed ones are told apart by which are present),
    ``"anthropic"``, and ``"ollama"`` or any other family (only ``retry-after``). ``headers`` must
    look names up case-insensitively (aiohttp's ``CIMultiDictProxy``) or have lower-case keys.
    ``now`` is the injected clock's wall time; relative resets become ``now + seconds``.
    """
    if family == "openai":
        return _openai(headers, now)
    if family == "anthropic":
        return _anthropic(headers, now)
    retry_at = _retry_at(headers, now)
    return _EMPTY if retry_at is None else RateLimits(retry_at=retry_at)
