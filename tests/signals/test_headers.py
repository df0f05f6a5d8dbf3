"""Rate-limit headers: real header sets per family, the sim's own headers, Go durations,
retry-after, and malformed values (each one spoils only its own field, never raises).

The fixtures below are header sets as the providers sent them, copied from public captures; each
says where it comes from. ``NOW`` is the injected wall clock, fixed.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from laneway.clock import ManualClock
from laneway.retry_after import parse_retry_after
from laneway.signals.headers import (
    MAX_COUNT,
    Quota,
    RateLimits,
    parse_duration,
    parse_rate_limits,
)
from laneway.sim.ratelimit import WINDOW, RateLimiter, Verdict

NOW = 1_750_000_000.0


def near(seconds: float, within: float = 1e-6) -> float:
    """A reset time compared within ``within`` seconds (durations in ms meet float addition)."""
    return cast(float, pytest.approx(seconds, abs=within))


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# -- real header sets ---------------------------------------------------------------------------

# OpenAI's rate-limit guide, "Rate limits in headers" (platform.openai.com/docs/guides/rate-limits):
# the sample values of its header table.
OPENAI_DOCS = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
}

# A chat completion's raw headers, as printed by the openai SDK in
# community.openai.com/t/how-to-get-rate-limit-reset-time-for-response-api/1268905 (May 2025);
# note the ``_usage_based`` variants, which we ignore.
OPENAI_CAPTURED = {
    "date": "Mon, 26 May 2025 05:00:04 GMT",
    "content-type": "application/json",
    "transfer-encoding": "chunked",
    "connection": "keep-alive",
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-limit-tokens": "160000",
    "x-ratelimit-limit-tokens_usage_based": "160000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-remaining-tokens": "159976",
    "x-ratelimit-remaining-tokens_usage_based": "159976",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-reset-tokens": "9ms",
    "x-ratelimit-reset-tokens_usage_based": "9ms",
}

# A tier-2 account's headers ("Request 2", 2023-12-03) from
# community.openai.com/t/what-is-new-field-in-rate-limits-x-ratelimit-reset-tokens-usage-based/541210:
# a multi-part Go duration on the token reset.
OPENAI_TIER2 = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-limit-tokens": "1500000",
    "x-ratelimit-limit-tokens_usage_based": "1500000",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-remaining-tokens": "1482750",
    "x-ratelimit-remaining-tokens_usage_based": "1490773",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-reset-tokens": "16m33.562s",
    "x-ratelimit-reset-tokens_usage_based": "8m51.438s",
}

# OpenRouter's free-tier daily cap: the headers it copies into a 429's ``error.metadata.headers``,
# spelled as it spells them (the shape reported in Gitlawb/openclaude#936; these values from a
# captured "free-models-per-day" 429 quoted in public code). Reset = Unix epoch milliseconds.
OPENROUTER_DAILY = {
    "X-RateLimit-Limit": "50",
    "X-RateLimit-Remaining": "0",
    "X-RateLimit-Reset": "1779321600000",
}
# OpenRouter's per-minute cap on a busy :free model ("limited to 15 requests per minute"), same source kind.
OPENROUTER_RPM = {
    "X-RateLimit-Limit": "15",
    "X-RateLimit-Remaining": "0",
    "X-RateLimit-Reset": "1789138080000",
}

# A 200 from api.anthropic.com recorded 2025-08-21 by tidyllm's test suite
# (tests/testthat/claude/api.anthropic.com/v1/messages-e050b5-POST.R, via rdrr.io/cran/tidyllm).
ANTHROPIC_CAPTURED = {
    "date": "Thu, 21 Aug 2025 12:41:00 GMT",
    "content-type": "application/json",
    "content-encoding": "gzip",
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "anthropic-ratelimit-input-tokens-remaining": "80000",
    "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-output-tokens-limit": "16000",
    "anthropic-ratelimit-output-tokens-remaining": "16000",
    "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:41:00Z",
    "anthropic-ratelimit-requests-limit": "1000",
    "anthropic-ratelimit-requests-remaining": "999",
    "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-tokens-limit": "96000",
    "anthropic-ratelimit-tokens-remaining": "96000",
    "anthropic-ratelimit-tokens-reset": "2025-08-21T12:40:59Z",
    "request-id": "req_011CSLsW7mFqvHHnzrKdKjAE",
    "via": "1.1 google",
    "cf-cache-status": "DYNAMIC",
    "server": "cloudflare",
}

# A 429 from api.anthropic.com, 2024-03-26, quoted in full in anthropics/anthropic-sdk-typescript#357
# (it had no retry-after then; the maintainers say in PR #358 that 429s now always carry one).
ANTHROPIC_429 = {
    "anthropic-ratelimit-requests-limit": "5",
    "anthropic-ratelimit-requests-remaining": "0",
    "anthropic-ratelimit-requests-reset": "2024-03-26T20:00:00Z",
    "anthropic-ratelimit-tokens-limit": "25000",
    "anthropic-ratelimit-tokens-remaining": "16000",
    "anthropic-ratelimit-tokens-reset": "2024-03-26T20:00:00Z",
    "cf-cache-status": "DYNAMIC",
    "connection": "keep-alive",
    "content-length": "305",
    "content-type": "application/json",
    "date": "Tue, 26 Mar 2024 19:59:59 GMT",
    "request-id": "req_01T5fCVnYdf9X5ZW6KayReBK",
    "server": "cloudflare",
    "via": "1.1 google",
    "x-should-retry": "true",
}

# A subscription (Claude Code OAuth) 200, 2025-08-02, from a public HTTP capture of claude-cli 1.0.62:
# the unified quota only, its reset in Unix epoch seconds.
ANTHROPIC_UNIFIED_EARLY = {
    "date": "Sat, 02 Aug 2025 20:27:04 GMT",
    "content-type": "application/json",
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-unified-fallback-percentage": "0.5",
    "anthropic-ratelimit-unified-reset": "1754179200",
    "request-id": "req_011CRjWg8gmowrHs23BDytyU",
}

# A later subscription 200 with the per-window headers (a verbatim capture of 2026-07-03 quoted in
# public research notes; anthropics/claude-code#12829 and #42108 name the same headers).
ANTHROPIC_UNIFIED_ALLOWED = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-5h-status": "allowed",
    "anthropic-ratelimit-unified-5h-reset": "1783063800",
    "anthropic-ratelimit-unified-5h-utilization": "0.01",
    "anthropic-ratelimit-unified-7d-status": "allowed",
    "anthropic-ratelimit-unified-7d-reset": "1783116000",
    "anthropic-ratelimit-unified-7d-utilization": "0.57",
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-unified-fallback-percentage": "0.5",
    "anthropic-ratelimit-unified-reset": "1783063800",
    "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
    "anthropic-ratelimit-unified-overage-status": "rejected",
}

# A subscription 429 with the five-hour window spent, as used for a test fixture in public code;
# the same names and shapes appear in the captures quoted by Yeachan-Heo/gajae-code#2444
# (5h-status=rejected, 5h-utilization=1.08, retry-after=13262) and router-for-me/CLIProxyAPI#3148.
ANTHROPIC_UNIFIED_REJECTED = {
    "anthropic-ratelimit-unified-5h-reset": "1785518400",
    "anthropic-ratelimit-unified-5h-status": "rejected",
    "anthropic-ratelimit-unified-5h-surpassed-threshold": "1.0",
    "anthropic-ratelimit-unified-5h-utilization": "1.01",
    "anthropic-ratelimit-unified-7d-reset": "1786006800",
    "anthropic-ratelimit-unified-7d-status": "allowed",
    "anthropic-ratelimit-unified-7d-utilization": "0.69",
    "anthropic-ratelimit-unified-fallback-percentage": "0.5",
    "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
    "anthropic-ratelimit-unified-overage-status": "rejected",
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-unified-reset": "1785518400",
    "anthropic-ratelimit-unified-status": "rejected",
    "retry-after": "7835",
    "x-robots-tag": "none",
    "x-should-retry": "true",
}

# What a response without any rate-limit header looks like (an OpenAI 200 of 2024-09-10 quoted in
# community.openai.com/t/x-ratelimit-headers-missing/935514, cookies shortened).
NO_RATE_LIMIT_HEADERS = {
    "date": "Tue, 10 Sep 2024 23:58:08 GMT",
    "content-type": "application/json",
    "access-control-expose-headers": "X-Request-ID",
    "openai-organization": "studiosity",
    "openai-processing-ms": "1032",
    "openai-version": "2020-10-01",
    "strict-transport-security": "max-age=15552000; includeSubDomains; preload",
    "x-request-id": "req_deaa3616cbd15d33b4db96b3ba74d2b4",
    "cf-cache-status": "DYNAMIC",
    "set-cookie": "__cf_bm=hYY77LPW86IH; path=/; HttpOnly; Secure; SameSite=None",
    "x-content-type-options": "nosniff",
    "server": "cloudflare",
    "cf-ray": "8c135d3eeec4a97a-SYD",
    "alt-svc": 'h3=":443"; ma=86400',
}


def ci(headers: Mapping[str, str]) -> CIMultiDictProxy[str]:
    """What aiohttp hands over: ``ClientResponse.headers`` is a ``CIMultiDictProxy``."""
    return CIMultiDictProxy(CIMultiDict(headers))


# -- per family ---------------------------------------------------------------------------------


def test_openai_docs_sample() -> None:
    assert parse_rate_limits("openai", OPENAI_DOCS, NOW) == RateLimits(
        requests=Quota(limit=60, remaining=59, reset_at=NOW + 1),
        tokens=Quota(limit=150000, remaining=149984, reset_at=NOW + 360),
    )


def test_openai_captured_response() -> None:
    limits = parse_rate_limits("openai", ci(OPENAI_CAPTURED), NOW)
    assert limits.requests == Quota(5000, 4999, near(NOW + 0.012))
    assert limits.tokens == Quota(160000, 159976, near(NOW + 0.009))
    assert limits.retry_at is None
    assert limits.unified_status is None
    assert limits.unified_reset_at is None


def test_openai_multi_part_duration() -> None:
    limits = parse_rate_limits("openai", OPENAI_TIER2, NOW)
    assert limits.requests == Quota(500, 499, near(NOW + 0.12))
    assert limits.tokens == Quota(1500000, 1482750, near(NOW + 16 * 60 + 33.562))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (OPENROUTER_DAILY, Quota(50, 0, 1779321600.0)),
        (OPENROUTER_RPM, Quota(15, 0, 1789138080.0)),
    ],
)
def test_openrouter_unsuffixed_headers_count_requests(headers: dict[str, str], expected: Quota) -> None:
    assert parse_rate_limits("openai", ci(headers), NOW) == RateLimits(requests=expected)


def test_openai_suffixed_names_win_over_openrouter_ones() -> None:
    both = {**OPENAI_DOCS, **{k.lower(): v for k, v in OPENROUTER_DAILY.items()}}
    assert parse_rate_limits("openai", both, NOW) == parse_rate_limits("openai", OPENAI_DOCS, NOW)
    # Tokens only (suffixed) and the unsuffixed request counter do not exclude each other.
    tokens_only = {k: v for k, v in both.items() if not k.endswith("-requests")}
    limits = parse_rate_limits("openai", tokens_only, NOW)
    assert limits.requests == Quota(50, 0, 1779321600.0)
    assert limits.tokens == Quota(150000, 149984, NOW + 360)


@pytest.mark.parametrize(
    ("name", "value", "reset_at"),
    [
        ("x-ratelimit-reset", "1m0s", NOW + 60),  # an OpenRouter-style header with a duration
        ("x-ratelimit-reset", "1779321600", 1779321600.0),  # epoch seconds (the GitHub convention)
        ("x-ratelimit-reset-requests", "1779321600000", 1779321600.0),  # OpenAI name, epoch ms
        ("x-ratelimit-reset-requests", "0", NOW),  # Go's bare zero
        ("x-ratelimit-reset-requests", "0s", NOW),
        ("x-ratelimit-reset-requests", "59.995s", NOW + 59.995),
    ],
)
def test_either_reset_shape_is_accepted(name: str, value: str, reset_at: float) -> None:
    limits = parse_rate_limits("openai", {name: value}, NOW)
    assert limits.requests == Quota(None, None, near(reset_at))


def test_anthropic_captured_response_takes_the_tightest_token_counter() -> None:
    limits = parse_rate_limits("anthropic", ci(ANTHROPIC_CAPTURED), NOW)
    assert limits == RateLimits(
        requests=Quota(1000, 999, utc(2025, 8, 21, 12, 40, 59)),
        # tokens 96000, input 80000, output 16000 remaining: output runs out first
        tokens=Quota(16000, 16000, utc(2025, 8, 21, 12, 41, 0)),
    )


def test_anthropic_429() -> None:
    reset = utc(2024, 3, 26, 20, 0, 0)
    assert parse_rate_limits("anthropic", ANTHROPIC_429, NOW) == RateLimits(
        requests=Quota(5, 0, reset), tokens=Quota(25000, 16000, reset)
    )
    with_retry = {**ANTHROPIC_429, "retry-after": "1"}
    assert parse_rate_limits("anthropic", with_retry, NOW).retry_at == NOW + 1


def test_anthropic_unified_quota() -> None:
    assert parse_rate_limits("anthropic", ANTHROPIC_UNIFIED_EARLY, NOW) == RateLimits(
        unified_status="allowed", unified_reset_at=1754179200.0
    )
    assert parse_rate_limits("anthropic", ci(ANTHROPIC_UNIFIED_ALLOWED), NOW) == RateLimits(
        unified_status="allowed", unified_reset_at=1783063800.0
    )
    assert parse_rate_limits("anthropic", ANTHROPIC_UNIFIED_REJECTED, NOW) == RateLimits(
        retry_at=NOW + 7835, unified_status="rejected", unified_reset_at=1785518400.0
    )


@pytest.mark.parametrize(
    ("claim", "reset_at"),
    [("five_hour", 1783063800.0), ("seven_day", 1783116000.0), ("opus_someday", None)],
)
def test_unified_reset_falls_back_to_the_representative_window(claim: str, reset_at: float | None) -> None:
    """Some responses carry the per-window headers without the top-level reset."""
    headers = {k: v for k, v in ANTHROPIC_UNIFIED_ALLOWED.items() if k != "anthropic-ratelimit-unified-reset"}
    headers["anthropic-ratelimit-unified-representative-claim"] = claim
    limits = parse_rate_limits("anthropic", headers, NOW)
    assert limits.unified_status == "allowed"
    assert limits.unified_reset_at == reset_at


def test_unified_status_is_kept_as_sent() -> None:
    headers = {"anthropic-ratelimit-unified-status": "allowed_warning"}
    assert parse_rate_limits("anthropic", headers, NOW) == RateLimits(unified_status="allowed_warning")


@pytest.mark.parametrize(
    ("counters", "expected"),
    [
        # equal remaining: the later reset binds
        (
            {
                "tokens": ("100", "0", "2025-01-01T00:00:10Z"),
                "input-tokens": ("50", "0", "2025-01-01T00:00:30Z"),
            },
            Quota(50, 0, utc(2025, 1, 1, 0, 0, 30)),
        ),
        # only limits reported: the first counter stands for all
        (
            {"tokens": ("100", "", ""), "output-tokens": ("10", "", "")},
            Quota(100, None, None),
        ),
        # a counter without remaining does not beat one with it
        (
            {"tokens": ("100", "", ""), "output-tokens": ("10", "7", "")},
            Quota(10, 7, None),
        ),
    ],
)
def test_anthropic_tightest_token_counter(counters: dict[str, tuple[str, str, str]], expected: Quota) -> None:
    headers = {}
    for counter, values in counters.items():
        for part, value in zip(("limit", "remaining", "reset"), values, strict=True):
            if value:
                headers[f"anthropic-ratelimit-{counter}-{part}"] = value
    assert parse_rate_limits("anthropic", headers, NOW).tokens == expected


def test_anthropic_reset_shapes() -> None:
    def reset_of(value: str) -> float | None:
        quota = parse_rate_limits("anthropic", {"anthropic-ratelimit-requests-reset": value}, NOW).requests
        return None if quota is None else quota.reset_at

    assert reset_of("2024-03-26T20:00:00Z") == utc(2024, 3, 26, 20, 0, 0)
    assert reset_of("2024-03-26T22:00:00+02:00") == utc(2024, 3, 26, 20, 0, 0)
    assert reset_of("2024-03-26T20:00:00.5Z") == utc(2024, 3, 26, 20, 0, 0) + 0.5
    assert reset_of("1711483200") == utc(2024, 3, 26, 20, 0, 0)  # the unified quota's epoch seconds
    assert reset_of("60") is None


def test_times_without_a_zone_are_utc_not_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        headers = {"anthropic-ratelimit-requests-reset": "2024-03-26T20:00:00"}
        quota = parse_rate_limits("anthropic", headers, NOW).requests
        assert quota == Quota(reset_at=utc(2024, 3, 26, 20, 0, 0))
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00", NOW) == utc(2015, 10, 21, 7, 28, 0)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_ollama_and_unknown_families_read_only_retry_after() -> None:
    headers = {**OPENAI_DOCS, **ANTHROPIC_CAPTURED}
    assert parse_rate_limits("ollama", headers, NOW) == RateLimits()
    assert parse_rate_limits("ollama", {**headers, "retry-after": "5"}, NOW) == RateLimits(retry_at=NOW + 5)
    assert parse_rate_limits("gemini", {**headers, "retry-after": "5"}, NOW) == RateLimits(retry_at=NOW + 5)


def test_families_do_not_read_each_others_headers() -> None:
    assert parse_rate_limits("openai", ANTHROPIC_CAPTURED, NOW).empty
    assert parse_rate_limits("anthropic", OPENAI_DOCS, NOW).empty


@pytest.mark.parametrize("family", ["openai", "anthropic", "ollama"])
def test_no_rate_limit_headers_is_empty(family: str) -> None:
    for headers in (NO_RATE_LIMIT_HEADERS, ci(NO_RATE_LIMIT_HEADERS), {}):
        limits = parse_rate_limits(family, headers, NOW)
        assert limits == RateLimits()
        assert limits.empty


def test_empty_means_nothing_at_all() -> None:
    assert RateLimits().empty
    assert not RateLimits(requests=Quota()).empty
    assert not RateLimits(retry_at=NOW).empty
    assert not RateLimits(unified_status="allowed").empty
    assert not RateLimits(unified_reset_at=NOW).empty


def test_header_names_are_case_insensitive() -> None:
    title = {k.title(): v for k, v in OPENAI_DOCS.items()}  # X-Ratelimit-Limit-Requests...
    shouting = {k.upper(): v for k, v in ANTHROPIC_UNIFIED_REJECTED.items()}
    assert parse_rate_limits("openai", ci(title), NOW) == parse_rate_limits("openai", OPENAI_DOCS, NOW)
    assert parse_rate_limits("openai", CIMultiDict(title), NOW) == parse_rate_limits(
        "openai", OPENAI_DOCS, NOW
    )
    assert parse_rate_limits("anthropic", ci(shouting), NOW) == parse_rate_limits(
        "anthropic", ANTHROPIC_UNIFIED_REJECTED, NOW
    )
    lowered = {k.lower(): v for k, v in OPENROUTER_DAILY.items()}
    assert parse_rate_limits("openai", ci(OPENROUTER_DAILY), NOW) == parse_rate_limits("openai", lowered, NOW)


def test_remaining_above_limit_is_kept_and_zero_is_not_missing() -> None:
    headers = {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "11"}
    assert parse_rate_limits("openai", headers, NOW).requests == Quota(10, 11, None)
    headers = {"x-ratelimit-limit-tokens": "0", "x-ratelimit-remaining-tokens": "0"}
    assert parse_rate_limits("openai", headers, NOW).tokens == Quota(0, 0, None)


def test_counts_up_to_2_53_are_kept_beyond_are_dropped() -> None:
    """Beyond 2**53 no real counter can be, and a JSON reader would not keep it exact: such a
    value is dropped (the earlier signal stays), not clamped to an invented ceiling."""
    ok = {"x-ratelimit-limit-tokens": str(MAX_COUNT), "x-ratelimit-remaining-tokens": "150000000000"}
    assert parse_rate_limits("openai", ok, NOW).tokens == Quota(MAX_COUNT, 150_000_000_000, None)
    over = {"x-ratelimit-limit-tokens": str(MAX_COUNT + 1), "x-ratelimit-remaining-tokens": "1"}
    assert parse_rate_limits("openai", over, NOW).tokens == Quota(None, 1, None)


# -- the sim's own headers ----------------------------------------------------------------------


def sim_headers(verdict: Verdict) -> CIMultiDictProxy[str]:
    return ci(CIMultiDict((name.decode(), value.decode()) for name, value in verdict.headers))


def test_sim_openai_headers_round_trip() -> None:
    clock = ManualClock(start=1_700_000_000.0)
    limiter = RateLimiter(clock)
    window_end = clock.now() + WINDOW
    for used in (1, 2, 3):
        limits = parse_rate_limits("openai", sim_headers(limiter.admit("openai", 3, 1000, 1, 6)), clock.now())
        assert limits == RateLimits(
            requests=Quota(3, 3 - used, near(window_end, within=1e-3)),
            tokens=Quota(1000, 1000 - 7 * used, near(window_end, within=1e-3)),
        )

    clock.advance(20.5)
    refused = limiter.admit("openai", 3, 1000, 1, 6)
    assert not refused.allowed
    limits = parse_rate_limits("openai", sim_headers(refused), clock.now())
    assert limits.requests == Quota(3, 0, near(window_end, within=1e-3))  # "39.5s" from now
    assert limits.retry_at == clock.now() + 40  # whole seconds, rounded up

    clock.advance(40)  # a new window
    limits = parse_rate_limits("openai", sim_headers(limiter.admit("openai", 3, 0, 1, 6)), clock.now())
    assert limits == RateLimits(requests=Quota(3, 2, near(clock.now() + WINDOW, within=1e-3)))


def test_sim_anthropic_headers_round_trip() -> None:
    clock = ManualClock(start=1_700_000_000.0)
    limiter = RateLimiter(clock)
    window_end = clock.now() + WINDOW  # an integer here, so the sim's whole-second RFC 3339 is exact
    limits = parse_rate_limits(
        "anthropic", sim_headers(limiter.admit("anthropic", 5, 100, 1, 6)), clock.now()
    )
    # tokens 93, input 99, output 94 remaining: the combined counter is the tightest
    assert limits == RateLimits(requests=Quota(5, 4, window_end), tokens=Quota(100, 93, window_end))

    clock.advance(12.25)
    limits = parse_rate_limits(
        "anthropic", sim_headers(limiter.admit("anthropic", 5, 100, 50, 0)), clock.now()
    )
    # tokens 43, input 49, output 94
    assert limits == RateLimits(requests=Quota(5, 3, window_end), tokens=Quota(100, 43, window_end))
    # 43 left and 50 asked: admitted all the same (the sim only refuses a window already full)
    assert limiter.admit("anthropic", 5, 100, 50, 0).allowed
    refused = limiter.admit("anthropic", 5, 100, 1, 0)
    assert not refused.allowed
    limits = parse_rate_limits("anthropic", sim_headers(refused), clock.now())
    assert limits.tokens == Quota(100, 0, window_end)
    assert limits.retry_at == clock.now() + math.ceil(window_end - clock.now())


def test_sim_openrouter_headers_round_trip() -> None:
    clock = ManualClock(start=1_700_000_000.0)
    limiter = RateLimiter(clock)
    window_end = clock.now() + WINDOW
    for used in (1, 2):
        verdict = limiter.admit("openrouter", 2, 0, 1, 6)
        limits = parse_rate_limits("openai", sim_headers(verdict), clock.now())
        assert limits == RateLimits(requests=Quota(2, 2 - used, window_end))
        clock.advance(1.5)
    refused = limiter.admit("openrouter", 2, 0, 1, 6)
    limits = parse_rate_limits("openai", sim_headers(refused), clock.now())
    assert limits == RateLimits(requests=Quota(2, 0, window_end), retry_at=clock.now() + 57)


# -- durations and retry-after ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("0", 0.0),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("300us", 300e-6),
        ("300\u00b5s", 300e-6),  # MICRO SIGN
        ("300\u03bcs", 300e-6),  # GREEK SMALL LETTER MU: Go accepts both
        ("1ns", 1e-9),
        ("59.995s", 59.995),
        ("16m33.562s", 993.562),
        ("23h18m29.144s", 23 * 3600 + 18 * 60 + 29.144),
        ("1h0m0s", 3600.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("+1s", 1.0),
        ("1m1h", 3660.0),  # Go takes any order
        ("1s1s", 2.0),
        (" 6m0s ", 360.0),
        ("9223372036s", 9223372036.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "60",
        "1x",
        "--1s",
        "-1s",
        "s",
        "ms",
        ".s",
        "1.2.3s",
        "1 s",
        "nan",
        "inf",
        "infs",
        "1e3s",
        "0x10s",
        "1_000s",
        "\u0663s",  # ARABIC-INDIC DIGIT THREE: float() would take it
        "\uff11s",  # FULLWIDTH DIGIT ONE
        "1h2",
        "99999999999999999999999s",
        "9223372037s",  # just past Go's longest duration
        "1" + "0" * 400 + "h",
    ],
)
def test_malformed_durations(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("value", "retry_at"),
    [
        ("120", NOW + 120),
        ("0", NOW),
        ("1.5", NOW + 1.5),  # not RFC 9110, but the OpenAI and Anthropic SDKs accept it
        (" 30 ", NOW + 30),
        ("Wed, 21 Oct 2015 07:28:00 GMT", utc(2015, 10, 21, 7, 28, 0)),  # IMF-fixdate, in the past
        ("Fri, 31 Dec 1999 23:59:59 GMT", utc(1999, 12, 31, 23, 59, 59)),  # RFC 9110's example
        ("Sunday, 06-Nov-94 08:49:37 GMT", utc(1994, 11, 6, 8, 49, 37)),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", utc(1994, 11, 6, 8, 49, 37)),  # obsolete asctime
        ("Sun, 15 Jun 2025 16:46:40 GMT", NOW + 6000),
    ],
)
def test_retry_after(value: str, retry_at: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(retry_at)


def test_retry_after_in_the_past_is_not_in_the_future() -> None:
    at = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW)
    assert at is not None
    assert at <= NOW
    assert parse_retry_after("Sun, 15 Jun 2025 16:46:40 GMT", NOW) == NOW + 6000


@pytest.mark.parametrize(
    "value",
    [
        "",
        "soon",
        "-5",
        "+5",
        "1e3",
        "nan",
        "inf",
        "99999999999999999999999",
        "Wed, 21 Oct 99999 07:28:00 GMT",
        "Wed, 32 Oct 2015 07:28:00 GMT",
        "\u0663",
    ],
)
def test_malformed_retry_after(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


def test_retry_after_ms_is_preferred_and_a_bad_one_is_skipped() -> None:
    for family in ("openai", "anthropic", "ollama"):
        both = {"retry-after-ms": "1500", "retry-after": "2"}
        assert parse_rate_limits(family, both, NOW).retry_at == NOW + 1.5
        bad_ms = {"retry-after-ms": "soon", "retry-after": "2"}
        assert parse_rate_limits(family, bad_ms, NOW).retry_at == NOW + 2
        assert parse_rate_limits(family, {"retry-after-ms": "0"}, NOW).retry_at == NOW
        assert parse_rate_limits(family, {"retry-after-ms": "-1"}, NOW).empty


# -- malformed values spoil only their own field ------------------------------------------------

BAD_COUNTS = [
    "",
    " ",
    "garbage",
    "-1",
    "--1",
    "+5",
    "1.5",
    "1e3",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "0x10",
    "1_000",
    "\u0663",
    "\uff11\uff12",
    "\x00",
    "99999999999999999999999",
]
BAD_RESETS = [*BAD_COUNTS, "60", "1x", "--1s", "-1s", "1e3s", "59.5.5s", "garbage s"]
# retry-after takes fractional and unit-less seconds, and dates; what is left is malformed there
BAD_RETRY_AFTER = [v for v in BAD_RESETS if v not in ("1.5", "60")] + ["Wed, 32 Oct 2015 07:28:00 GMT"]

# header -> (field of RateLimits, field of Quota or None)
Fields = dict[str, tuple[str, str | None]]
OPENAI_FIELDS: Fields = {
    "x-ratelimit-limit-requests": ("requests", "limit"),
    "x-ratelimit-remaining-requests": ("requests", "remaining"),
    "x-ratelimit-reset-requests": ("requests", "reset_at"),
    "x-ratelimit-limit-tokens": ("tokens", "limit"),
    "x-ratelimit-remaining-tokens": ("tokens", "remaining"),
    "x-ratelimit-reset-tokens": ("tokens", "reset_at"),
    "retry-after": ("retry_at", None),
}
OPENROUTER_FIELDS: Fields = {
    "x-ratelimit-limit": ("requests", "limit"),
    "x-ratelimit-remaining": ("requests", "remaining"),
    "x-ratelimit-reset": ("requests", "reset_at"),
}
ANTHROPIC_FIELDS: Fields = {
    "anthropic-ratelimit-requests-limit": ("requests", "limit"),
    "anthropic-ratelimit-requests-remaining": ("requests", "remaining"),
    "anthropic-ratelimit-requests-reset": ("requests", "reset_at"),
    "anthropic-ratelimit-tokens-limit": ("tokens", "limit"),
    "anthropic-ratelimit-tokens-remaining": ("tokens", "remaining"),
    "anthropic-ratelimit-tokens-reset": ("tokens", "reset_at"),
    "retry-after": ("retry_at", None),
}
UNIFIED_FIELDS: Fields = {
    "anthropic-ratelimit-unified-reset": ("unified_reset_at", None),
    "retry-after": ("retry_at", None),
}


def _cases() -> list[Any]:
    bases: list[tuple[str, dict[str, str], Fields]] = [
        ("openai", {**OPENAI_DOCS, "retry-after": "20"}, OPENAI_FIELDS),
        ("openai", {k.lower(): v for k, v in OPENROUTER_DAILY.items()}, OPENROUTER_FIELDS),
        ("anthropic", {**ANTHROPIC_429, "retry-after": "20"}, ANTHROPIC_FIELDS),
        ("anthropic", ANTHROPIC_UNIFIED_REJECTED, UNIFIED_FIELDS),
    ]
    cases = []
    for family, base, fields in bases:
        for header, path in fields.items():
            if header == "retry-after":
                bad_values = BAD_RETRY_AFTER
            elif header.endswith("-reset") or "-reset-" in header:
                bad_values = BAD_RESETS
            else:
                bad_values = BAD_COUNTS
            for bad in bad_values:
                cases.append(pytest.param(family, base, header, bad, path, id=f"{header}={bad!r}"))
    return cases


@pytest.mark.parametrize(("family", "base", "header", "bad", "path"), _cases())
def test_a_malformed_value_spoils_only_its_field(
    family: str, base: dict[str, str], header: str, bad: str, path: tuple[str, str | None]
) -> None:
    good = parse_rate_limits(family, base, NOW)
    spoilt = parse_rate_limits(family, {**base, header: bad}, NOW)
    outer, inner = path
    assert getattr(good, outer) is not None
    if inner is None:
        expected = dataclasses.replace(good, **{outer: None})
    else:
        quota = getattr(good, outer)
        assert getattr(quota, inner) is not None
        expected = dataclasses.replace(good, **{outer: dataclasses.replace(quota, **{inner: None})})
    assert spoilt == expected


@pytest.mark.parametrize("bad", ["", "   ", "x" * 65])
def test_a_malformed_unified_status_spoils_only_itself(bad: str) -> None:
    spoilt = parse_rate_limits(
        "anthropic", {**ANTHROPIC_UNIFIED_REJECTED, "anthropic-ratelimit-unified-status": bad}, NOW
    )
    assert spoilt == RateLimits(retry_at=NOW + 7835, unified_reset_at=1785518400.0)


def test_a_counter_with_only_malformed_values_is_not_reported() -> None:
    headers = {
        "x-ratelimit-limit-tokens": "many",
        "x-ratelimit-remaining-tokens": "-3",
        "x-ratelimit-reset-tokens": "later",
    }
    assert parse_rate_limits("openai", headers, NOW).empty


# -- never raises -------------------------------------------------------------------------------

ALL_NAMES = [
    *OPENAI_FIELDS,
    *OPENROUTER_FIELDS,
    *ANTHROPIC_FIELDS,
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
    "anthropic-ratelimit-unified-status",
    "anthropic-ratelimit-unified-reset",
    "anthropic-ratelimit-unified-representative-claim",
    "anthropic-ratelimit-unified-5h-reset",
    "anthropic-ratelimit-unified-7d-reset",
    "retry-after-ms",
]
FRAGMENTS = [
    *"0123456789.-+ :,TZe",
    "h",
    "m",
    "s",
    "ms",
    "us",
    "\u00b5",
    "\u03bc",
    "ns",
    "nan",
    "inf",
    "GMT",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "2024-03-26T20:00:00Z",
    "+02:00",
    "five_hour",
    "seven_day",
    "\u0663",
    "\uff11",
    "\x00",
    "\u2028",
    "9" * 30,
    "1779321600000",
]


def test_never_raises_on_random_values() -> None:
    """hypothesis is not a dependency here, so a seeded fuzz: random values built from fragments
    that sit near the parsers' edges, for every family, must give a well-formed RateLimits."""
    rng = random.Random(20250826)
    for _ in range(4000):
        headers = {
            name: "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 6)))
            for name in rng.sample(ALL_NAMES, rng.randint(1, 8))
        }
        for family in ("openai", "anthropic", "ollama"):
            limits = parse_rate_limits(family, headers, NOW)
            for quota in (limits.requests, limits.tokens):
                if quota is not None:
                    for count in (quota.limit, quota.remaining):
                        assert count is None or 0 <= count <= MAX_COUNT
                    assert quota.reset_at is None or math.isfinite(quota.reset_at)
            for moment in (limits.retry_at, limits.unified_reset_at):
                assert moment is None or math.isfinite(moment)
        for value in headers.values():
            seconds = parse_duration(value)
            assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
            at = parse_retry_after(value, NOW)
            assert at is None or math.isfinite(at)
