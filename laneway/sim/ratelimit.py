"""A fixed-window rate limiter and the three real header formats that report it.

One 60 s window per sim, started by the first request after a reset and driven by the injected
clock (``monotonic`` for the window, ``now`` for the wall-clock reset times in headers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from laneway.clock import Clock
from laneway.sim.wire import rfc3339

WINDOW = 60.0

Headers = list[tuple[bytes, bytes]]


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration``, as OpenAI's reset headers do: ``20ms``, ``59.5s``, ``6m0s``."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(slots=True)
class Verdict:
    allowed: bool
    headers: Headers
    retry_after: int = 0  # seconds; set when not allowed


class RateLimiter:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._start: float | None = None
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0

    def reset(self) -> None:
        self._start = None
        self.requests = self.input_tokens = self.output_tokens = 0

    def _seconds_left(self) -> float:
        now = self._clock.monotonic()
        if self._start is None or now - self._start >= WINDOW:
            self._start = now
            self.requests = self.input_tokens = self.output_tokens = 0
        return self._start + WINDOW - now

    def admit(self, fmt: str, rpm: int, tpm: int, input_tokens: int, output_tokens: int) -> Verdict:
        """Count one request of ``input_tokens + output_tokens`` if the window has room for it.

        The window is full when its requests reached ``rpm`` or its tokens reached ``tpm``
        (0 = unlimited). Headers describe the window after this request.
        """
        left = self._seconds_left()
        full = (rpm > 0 and self.requests >= rpm) or (
            tpm > 0 and self.input_tokens + self.output_tokens >= tpm
        )
        if not full:
            self.requests += 1
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
        headers = self._headers(fmt, rpm, tpm, left)
        if full:
            retry_after = max(1, math.ceil(left))
            headers.append((b"retry-after", str(retry_after).encode()))
            return Verdict(False, headers, retry_after)
        return Verdict(True, headers)

    def _headers(self, fmt: str, rpm: int, tpm: int, left: float) -> Headers:
        used_tokens = self.input_tokens + self.output_tokens
        counters: list[tuple[str, int, int]] = []  # (name, limit, remaining)
        if rpm > 0:
            counters.append(("requests", rpm, max(0, rpm - self.requests)))
        if tpm > 0:
            counters.append(("tokens", tpm, max(0, tpm - used_tokens)))
        if fmt == "openai":
            reset = go_duration(left)
            return [
                header
                for name, limit, remaining in counters
                for header in (
                    (f"x-ratelimit-limit-{name}".encode(), str(limit).encode()),
                    (f"x-ratelimit-remaining-{name}".encode(), str(remaining).encode()),
                    (f"x-ratelimit-reset-{name}".encode(), reset.encode()),
                )
            ]
        if fmt == "anthropic":
            reset_at = rfc3339(math.ceil(self._clock.now() + left)).encode()
            if tpm > 0:
                counters.append(("input-tokens", tpm, max(0, tpm - self.input_tokens)))
                counters.append(("output-tokens", tpm, max(0, tpm - self.output_tokens)))
            return [
                header
                for name, limit, remaining in counters
                for header in (
                    (f"anthropic-ratelimit-{name}-limit".encode(), str(limit).encode()),
                    (f"anthropic-ratelimit-{name}-remaining".encode(), str(remaining).encode()),
                    (f"anthropic-ratelimit-{name}-reset".encode(), reset_at),
                )
            ]
        # openrouter: one requests counter, reset as Unix epoch milliseconds
        if rpm <= 0:
            return []
        reset_ms = str(math.ceil((self._clock.now() + left) * 1000)).encode()
        return [
            (b"x-ratelimit-limit", str(rpm).encode()),
            (b"x-ratelimit-remaining", str(max(0, rpm - self.requests)).encode()),
            (b"x-ratelimit-reset", reset_ms),
        ]
