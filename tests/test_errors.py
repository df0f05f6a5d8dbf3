"""What a failure means: ``laneway.errors.classify``, the one place that decides it."""

from __future__ import annotations

import pytest

from laneway.errors import (
    InvalidRequest,
    QueueFull,
    QueueTimeout,
    StreamBroken,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    Verdict,
    classify,
)

NOW = 1_750_000_000.0


def status(code: int, message: str = "nope", **headers: str) -> UpstreamStatusError:
    return UpstreamStatusError(message, backend="b", upstream_status=code, upstream_headers=headers)


def test_what_counts_as_an_auth_failure() -> None:
    assert classify(status(401), now=NOW).auth_failure
    assert classify(status(403), now=NOW).auth_failure
    assert classify(status(400, "backend 'b' answered 400: Invalid API Key provided"), now=NOW).auth_failure
    assert classify(status(500, "upstream said: invalid credentials"), now=NOW).auth_failure
    assert not classify(status(500, "internal error"), now=NOW).auth_failure
    assert not classify(status(429, "rate limited"), now=NOW).auth_failure
    timeout = UpstreamTimeout("backend 'b' timed out (unauthorized?)", backend="b")
    assert not classify(timeout, now=NOW).auth_failure


def test_a_refused_credential_fails_over_but_is_not_the_lanes_ill_health() -> None:
    # The credential is laneway's, not the client's: another backend's may serve the request.
    # The cooldown takes the lanes out of rotation, so the breaker does not count it.
    assert classify(status(401), now=NOW) == Verdict(retryable=True, auth_failure=True)
    assert classify(status(403), now=NOW) == Verdict(retryable=True, auth_failure=True)


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamConnectError("refused", backend="b"),
        UpstreamTimeout("timed out", backend="b"),
        StreamBroken("dropped", backend="b"),
        UpstreamProtocolError("garbage", backend="b"),
        status(500),
        status(502),
        status(503),  # no Retry-After: ill health like any 5xx
        status(529),
        status(408),
        status(409),
    ],
    ids=lambda e: type(e).__name__ + str(getattr(e, "upstream_status", "")),
)
def test_a_failure_of_the_backend_is_retried_and_counts_against_it(exc: UpstreamStatusError) -> None:
    assert classify(exc, now=NOW) == Verdict(retryable=True, unhealthy=True)


def test_a_404_marks_the_lane_stale_and_is_retried() -> None:
    assert classify(status(404), now=NOW) == Verdict(retryable=True, stale_lane=True)


def test_a_429_is_quota_with_the_wait_it_asked_for() -> None:
    assert classify(status(429), now=NOW) == Verdict(retryable=True, rate_limited=True)
    assert classify(status(429, **{"retry-after": "7"}), now=NOW).retry_after == 7
    assert classify(status(429, **{"retry-after-ms": "250"}), now=NOW).retry_after == 0.25
    dated = status(429, **{"retry-after": "Sun, 15 Jun 2025 15:07:00 GMT"})  # NOW is 15:06:40
    assert classify(dated, now=NOW).retry_after == 20
    past = status(429, **{"retry-after": "Sun, 15 Jun 2025 15:00:00 GMT"})
    assert classify(past, now=NOW).retry_after == 0
    assert classify(status(429, **{"retry-after": "soon"}), now=NOW).retry_after is None


@pytest.mark.parametrize("code", [503, 529])
def test_a_503_that_says_when_to_come_back_is_unavailability_not_quota_nor_ill_health(code: int) -> None:
    assert classify(status(code, **{"retry-after": "2"}), now=NOW) == Verdict(
        retryable=True, unavailable=True, retry_after=2
    )
    assert classify(status(500, **{"retry-after": "2"}), now=NOW) == Verdict(retryable=True, unhealthy=True)


@pytest.mark.parametrize("code", [400, 413, 422])
def test_the_clients_fault_is_final(code: int) -> None:
    assert classify(status(code), now=NOW) == Verdict()


def test_a_busy_pool_moves_on_and_laneways_own_errors_are_final() -> None:
    assert classify(QueueFull("full", retry_after=1), now=NOW) == Verdict(retryable=True)
    assert classify(QueueTimeout("waited", retry_after=1), now=NOW) == Verdict(retryable=True)
    assert classify(InvalidRequest("bad"), now=NOW) == Verdict()
