"""Posting a streamed task's chunks to the gateway: in order, one post in flight, batched."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Post = Callable[[int, list[dict[str, Any]], bool], Awaitable[None]]


class ChunkSender:
    """Posts one streamed task's chunks in order, one post in flight: chunks that arrive during a
    post go together in the next one, so a slow gateway link batches instead of queueing posts.

    ``close(final=True)`` (the backend's stream ended well) makes the last post say ``done``, so
    the stream needs no separate result post; ``ended`` tells whether that happened (it does not
    when everything had been posted already: then the caller posts the result)."""

    def __init__(self, post: Post) -> None:
        self._post = post
        self._pending: list[dict[str, Any]] = []
        self._ready = asyncio.Event()
        self._closed = False
        self._final = False
        self.posts = 0  # the seq of the next post
        self.ended = False  # a post said done

    def put(self, chunks: list[dict[str, Any]]) -> None:
        self._pending.extend(chunks)
        self._ready.set()

    def close(self, *, final: bool = False) -> None:
        """No more chunks: ``run`` returns once what is pending has been posted."""
        self._closed, self._final = True, final
        self._ready.set()

    async def run(self) -> None:
        while True:
            if self._pending:
                batch, self._pending = self._pending, []
                done = self._closed and self._final
                await self._post(self.posts, batch, done)
                self.posts += 1
                self.ended = done
            elif self._closed:
                return
            else:
                await self._ready.wait()
                self._ready.clear()
