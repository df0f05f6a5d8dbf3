"""Streams as the router hands them out: established, first frame already read, observed.

Reading the first frame before handing a stream to the client is what lets a stream that breaks
before its first byte fail over like any failed call. ``ObservedStream`` then replays that frame
and passes the rest through, telling the signals the time to first byte and, if the stream runs
to its end, the total time; and it releases the pool slot when the stream ends or is closed if
the backend's streams hold their slot (``stream_holds_slot``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from laneway.clock import Clock
from laneway.errors import Attribution, LanewayError, classify
from laneway.pools import Slot
from laneway.providers.base import Provider, ReplyStream, Usage
from laneway.signals.store import Signals


async def open_stream(opening: Awaitable[ReplyStream]) -> tuple[ReplyStream, bytes | None]:
    """Establish a stream and read its first frame (None: it ended at once). A failure of either
    closes the stream and raises, before the client saw a byte."""
    stream = await opening
    frames = stream.__aiter__()
    try:
        first: bytes | None = await anext(frames)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await stream.aclose()
        raise
    return stream, first


class ObservedStream:
    def __init__(
        self, inner: ReplyStream, first: bytes | None, provider: Provider, lane: str, slot: Slot | None
    ) -> None:
        self.inner = inner
        self.headers: Mapping[str, str] = inner.headers
        self._first = first
        self._provider = provider
        self._lane = lane
        self._slot = slot
        self._signals: Signals | None = None
        self._clock: Clock | None = None
        self._started = 0.0
        # Called once when the stream ends for any reason, with what the upstream reported of
        # its token usage (complete only if it ran to its end).
        self.on_end: Callable[[Usage | None], None] | None = None
        # Stamped on an error that breaks the stream after it was handed out (the error event).
        self.attribution: Attribution | None = None
        # Told of an error that breaks the stream after it was handed out (the lane's breaker).
        self.on_failure: Callable[[LanewayError], None] | None = None

    def observe(self, signals: Signals, clock: Clock, started: float) -> None:
        """Report to ``signals``: the stream's headers now, its first byte (already read) now, and
        its total time at the end; times from ``started`` (the attempt's start)."""
        self._signals, self._clock, self._started = signals, clock, started
        backend, family = self._provider.name, self._provider.family
        signals.success(backend, family, self._lane, self.headers, None)
        if self._first is not None:
            signals.first_byte(backend, self._lane, clock.monotonic() - started)

    async def _frames(self) -> AsyncIterator[bytes]:
        signals, clock = self._signals, self._clock
        try:
            if self._first is not None:
                yield self._first
            async for frame in self.inner:
                yield frame
        except LanewayError as exc:
            if signals is not None and clock is not None:
                verdict = classify(exc, now=clock.now())
                signals.failure(self._provider.name, self._provider.family, self._lane, exc, verdict)
            if self.on_failure is not None:
                self.on_failure(exc)
            if exc.attribution is None:
                exc.attribution = self.attribution
            raise
        finally:
            self._release()
        if signals is not None and clock is not None:
            signals.stream_ended(self._provider.name, self._lane, clock.monotonic() - self._started)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    def _release(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            usage = getattr(self.inner, "usage", None)
            on_end(usage if isinstance(usage, Usage) else None)

    async def aclose(self) -> None:
        self._release()
        await self.inner.aclose()
