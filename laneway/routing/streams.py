"""Streams as the router hands them out: established, first frame already read, observed.

Reading the first frame before handing a stream to the client is what lets a stream that breaks
before its first byte fail over like any failed call. ``ObservedStream`` then replays that frame
and passes the rest through, telling the signals the time to first byte and, if the stream runs
to its end, the total time. When the backend's streams hold their slot to their end
(``stream_holds_slot``) the attempt hands the slot over to the stream, which releases it when the
stream ends or is closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from laneway.clock import Clock
from laneway.errors import Attribution, LanewayError, Verdict, classify
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
    """``inner`` with its ``first`` frame replayed, observed for the signals (from ``started``,
    the attempt's start on ``clock.monotonic()``). ``slot`` is the pool slot it holds to its end,
    if its backend wants that. An error that breaks it after it was handed out is classified once:
    the signals and ``on_failure`` (the lane's breaker) are told, and the error carries
    ``attribution``. ``on_end`` is called once when it ends for any reason, with what the upstream
    reported of its token usage (complete only if it ran to its end)."""

    def __init__(
        self,
        inner: ReplyStream,
        first: bytes | None,
        provider: Provider,
        lane: str,
        slot: Slot | None,
        *,
        signals: Signals,
        clock: Clock,
        started: float,
        attribution: Attribution,
        on_failure: Callable[[Verdict], None],
        on_end: Callable[[Usage | None], None],
    ) -> None:
        self.inner = inner
        self.headers: Mapping[str, str] = inner.headers
        self.dialect = inner.dialect
        self._first = first
        self._provider = provider
        self._lane = lane
        self._slot = slot
        self._signals = signals
        self._clock = clock
        self._started = started
        self.attribution = attribution
        self._on_failure = on_failure
        self._on_end: Callable[[Usage | None], None] | None = on_end
        backend, family = provider.name, provider.family
        signals.success(backend, family, lane, self.headers, None)
        if first is not None:
            signals.first_byte(backend, lane, clock.monotonic() - started)

    async def _frames(self) -> AsyncIterator[bytes]:
        try:
            if self._first is not None:
                yield self._first
            async for frame in self.inner:
                yield frame
        except LanewayError as exc:
            verdict = classify(exc, now=self._clock.now())
            self._signals.failure(self._provider.name, self._provider.family, self._lane, exc, verdict)
            self._on_failure(verdict)
            if exc.attribution is None:
                exc.attribution = self.attribution
            raise
        finally:
            self._release()
        self._signals.stream_ended(self._provider.name, self._lane, self._clock.monotonic() - self._started)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    def _release(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            usage = getattr(self.inner, "usage", None)
            on_end(usage if isinstance(usage, Usage) else None)

    async def aclose(self) -> None:
        self._release()
        await self.inner.aclose()
