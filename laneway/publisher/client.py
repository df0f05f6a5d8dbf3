"""The publisher's HTTP calls to the gateway, one method per endpoint of docs/publishers.md.

This module is the boundary where aiohttp lives: every transport failure and every error answer
becomes a ``GatewayError`` carrying the gateway's status (None when no answer came) and the
message of its OpenAI-shaped error body, so the runner decides on statuses, never on exceptions
of an HTTP client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from laneway.errors import InvalidRequest, LanewayError
from laneway.providers.http import error_message
from laneway.publishing.protocol import (
    MAX_EVENT_BYTES,
    Chunks,
    Heartbeat,
    HeartbeatAnswer,
    Message,
    Register,
    Registered,
    Result,
    SessionState,
    read,
)
from laneway.sse import Decoder, Event, EventTooLarge

ControlEvent = tuple[str, dict[str, Any]]  # an event's name and its data (a JSON object)


class GatewayError(LanewayError):
    """A protocol call failed. ``status_code`` is the gateway's HTTP status, or None when the
    gateway could not be reached or its answer could not be read."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@contextmanager
def _map_errors(what: str) -> Iterator[None]:
    try:
        yield
    except GatewayError:
        raise
    except TimeoutError:
        raise GatewayError(f"{what}: the gateway did not answer in time") from None
    except aiohttp.ClientError as exc:
        raise GatewayError(f"{what}: {exc or type(exc).__name__}") from None
    except orjson.JSONDecodeError:
        raise GatewayError(f"{what}: the gateway answered with invalid JSON") from None
    except InvalidRequest as exc:  # an answer that is not the protocol's message
        raise GatewayError(
            f"{what}: the gateway's answer is not one this publisher reads: {exc.message}"
        ) from None
    except EventTooLarge as exc:
        raise GatewayError(f"{what}: {exc}") from None


def gateway_root(url: str) -> str:
    """The gateway's root URL; a trailing ``/v1`` (the clients' base URL) is accepted too."""
    root = url.rstrip("/")
    return root.removesuffix("/v1")


class GatewayClient:
    """One gateway, one publisher token, one connection pool."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        control_idle_timeout: float = 90.0,
    ) -> None:
        self.url = gateway_root(url)
        self._headers = {"authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        # The control stream lives for hours; what bounds it is silence: the gateway sends a
        # ping every 15 s, so a read that waits this long means a dead link, not a quiet one.
        self._control_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=control_idle_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Made lazily: a ClientSession belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    def _session_path(self, session_id: str, rest: str = "") -> str:
        return f"{self.url}/v1/publishers/sessions/{quote(session_id, safe='')}{rest}"

    def _task_path(self, session_id: str, task_id: str, leaf: str) -> str:
        return self._session_path(session_id, f"/tasks/{quote(task_id, safe='')}/{leaf}")

    async def _call(
        self,
        method: str,
        url: str,
        what: str,
        payload: Message | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One request and its JSON answer; an error status raises ``GatewayError``."""
        data = payload.wire() if payload is not None else None
        headers = {"content-type": "application/json"} if data is not None else None
        limit = aiohttp.ClientTimeout(total=timeout) if timeout is not None else self._timeout
        with _map_errors(what):
            async with self.session.request(method, url, data=data, headers=headers, timeout=limit) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise GatewayError(
                        f"{what}: the gateway answered {resp.status}: {error_message(body)}",
                        status_code=resp.status,
                    )
                answer = orjson.loads(body) if body.strip() else {}
        if not isinstance(answer, dict):
            raise GatewayError(f"{what}: the gateway answered with JSON that is not an object")
        return answer

    async def register(self, request: Register) -> Registered:
        what = "register"
        answer = await self._call("POST", f"{self.url}/v1/publishers/register", what, request)
        with _map_errors(what):
            return read(Registered, answer)

    async def heartbeat(self, session_id: str, state: SessionState) -> HeartbeatAnswer:
        what = "heartbeat"
        beat = Heartbeat(state=state)
        answer = await self._call("POST", self._session_path(session_id, "/heartbeat"), what, beat)
        with _map_errors(what):
            return read(HeartbeatAnswer, answer)

    async def post_chunks(self, session_id: str, task_id: str, post: Chunks) -> None:
        await self._call(
            "POST", self._task_path(session_id, task_id, "chunks"), f"chunks of task {task_id}", post
        )

    async def post_result(self, session_id: str, task_id: str, result: Result) -> None:
        await self._call(
            "POST", self._task_path(session_id, task_id, "result"), f"result of task {task_id}", result
        )

    async def unregister(self, session_id: str, *, timeout: float = 5.0) -> None:
        await self._call("DELETE", self._session_path(session_id), "unregister", timeout=timeout)

    async def control(self, session_id: str) -> AsyncGenerator[ControlEvent, None]:
        """The control stream as ``(event, data)`` pairs, until the gateway closes it. Raises
        ``GatewayError`` when it cannot be opened or breaks off. Use it with
        ``contextlib.aclosing`` so that leaving the loop closes the connection at once."""
        what = "control stream"
        with _map_errors(what):
            async with self.session.get(
                self._session_path(session_id, "/control"),
                headers={"accept": "text/event-stream"},
                timeout=self._control_timeout,
            ) as resp:
                if resp.status >= 400:
                    body = await resp.read()
                    raise GatewayError(
                        f"{what}: the gateway answered {resp.status}: {error_message(body)}",
                        status_code=resp.status,
                    )
                ctype = resp.headers.get("content-type", "")
                if not ctype.startswith("text/event-stream"):
                    raise GatewayError(f"{what}: the gateway answered with content-type '{ctype}'")
                # Whole events only: one the gateway cut off when the stream ended is dropped.
                decoder = Decoder(max_bytes=MAX_EVENT_BYTES)
                async for data in resp.content.iter_any():
                    for event in decoder.feed(data):
                        yield event.event, _event_data(event)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _event_data(event: Event) -> dict[str, Any]:
    parsed = event.json()
    if not isinstance(parsed, dict):
        raise GatewayError("control stream: an event's data is not a JSON object")
    return parsed
