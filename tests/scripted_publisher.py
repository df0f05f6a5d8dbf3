"""A publisher the test drives by hand over the real protocol (HTTP and SSE against the real
gateway), to put the gateway in exact situations: a drop mid-task, a late result, a failed wake.
``laneway publish`` itself is tested in test_publisher_*.py and test_publish_e2e.py.

Every call may go to another gateway than ``url`` (``at=``): a replica of a cluster, as a load
balancer would send it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson


class ScriptedPublisher:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.http = aiohttp.ClientSession()
        self.session_id: str | None = None
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None, at: str | None = None
    ) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {self.token if token is None else token}"}
        data = orjson.dumps(body) if body is not None else None
        url = (at or self.url).rstrip("/") + path
        async with self.http.request(method, url, data=data, headers=headers) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None

    async def register(self, *, at: str | None = None, **body: Any) -> dict[str, Any]:
        body.setdefault("name", "alice-laptop")
        body.setdefault("lanes", [{"model": "alice-llama:1b", "type": "chat"}])
        if self.session_id is not None:
            body.setdefault("session_id", self.session_id)
        status, answer = await self.call("POST", "/v1/publishers/register", body, at=at)
        assert status == 200, answer
        self.session_id = answer["session_id"]
        return dict(answer)

    @property
    def base(self) -> str:
        return f"/v1/publishers/sessions/{self.session_id}"

    async def connect(self, *, at: str | None = None) -> None:
        """Open the control stream and read its events into ``events`` until ``drop``."""
        self.connected.clear()
        self._reader = asyncio.create_task(self._read(at or self.url))
        name, _ = await self.next("hello")
        assert name == "hello"

    async def _read(self, url: str) -> None:
        headers = {"authorization": f"Bearer {self.token}"}
        async with self.http.get(
            url.rstrip("/") + self.base + "/control",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as resp:
            assert resp.status == 200, await resp.text()
            self.connected.set()
            event = ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    await self.events.put((event, orjson.loads(line[6:])))

    async def next(self, kind: str, *, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        """The next event of ``kind`` (pings skipped; anything else is a test failure)."""
        while True:
            name, data = await asyncio.wait_for(self.events.get(), timeout)
            if name == "ping":
                continue
            assert name == kind, (name, data)
            return name, data

    async def task(self, *, timeout: float = 10.0) -> dict[str, Any]:
        return (await self.next("task", timeout=timeout))[1]

    async def drop(self) -> None:
        """Close the control stream the way a killed process would: the connection just goes."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None

    async def result(self, task_id: str, body: dict[str, Any], *, at: str | None = None) -> tuple[int, Any]:
        return await self.call("POST", f"{self.base}/tasks/{task_id}/result", body, at=at)

    async def chunks(
        self, task_id: str, seq: int, chunks: list[dict[str, Any]], *, at: str | None = None
    ) -> tuple[int, Any]:
        body = {"seq": seq, "chunks": chunks}
        return await self.call("POST", f"{self.base}/tasks/{task_id}/chunks", body, at=at)

    async def heartbeat(self, state: str = "active", *, at: str | None = None) -> tuple[int, Any]:
        return await self.call("POST", f"{self.base}/heartbeat", {"state": state}, at=at)

    async def aclose(self) -> None:
        await self.drop()
        await self.http.close()


def completion(model: str, text: str = "hello from the publisher") -> dict[str, Any]:
    return {
        "id": "chatcmpl-pub",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def chunk(model: str, text: str, *, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-pub",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }


def embedding(model: str, n: int = 1) -> dict[str, Any]:
    return {
        "object": "list",
        "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(n)],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
