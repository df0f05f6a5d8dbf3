"""The HTTP client every adapter uses, and the one boundary where foreign errors become ours.

``Upstream`` wraps one ``aiohttp.ClientSession`` per backend (one connection pool each). Every
aiohttp, asyncio-timeout and JSON error raised while talking to a backend is translated here into
``laneway.errors`` (see ``map_errors``); nothing from aiohttp escapes this module.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
import aiohttp.http_exceptions
import orjson

from laneway.errors import (
    StreamBroken,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)


@contextmanager
def map_errors(backend: str, *, in_body: bool = False) -> Iterator[None]:
    """Translate aiohttp/timeout/JSON exceptions raised inside the block. ``in_body``: the
    status line was already received, so a dropped connection is a broken stream."""
    try:
        yield
    except UpstreamError:
        raise
    except TimeoutError:
        raise UpstreamTimeout(f"backend '{backend}' timed out", backend=backend) from None
    except aiohttp.ClientPayloadError:
        # Not aiohttp's words ("Response payload is not completed: <TransferEncodingError...>"):
        # what happened is that the body stopped before its end.
        raise StreamBroken(f"backend '{backend}' broke off its response mid-body", backend=backend) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if in_body:
            raise StreamBroken(f"backend '{backend}' dropped the connection", backend=backend) from None
        raise UpstreamConnectError(f"backend '{backend}' is unreachable: {exc}", backend=backend) from None
    except aiohttp.ClientConnectionError as exc:
        raise UpstreamConnectError(f"backend '{backend}' is unreachable: {exc}", backend=backend) from None
    except aiohttp.ClientError as exc:
        raise UpstreamProtocolError(f"backend '{backend}': {exc}", backend=backend) from None
    except aiohttp.http_exceptions.LineTooLong:
        # An NDJSON line past the reader's limit: never ended, or not a stream we will buffer.
        raise UpstreamProtocolError(
            f"backend '{backend}' sent a line longer than laneway reads", backend=backend
        ) from None
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(
            f"backend '{backend}' answered with invalid JSON", backend=backend
        ) from None


def error_message(body: bytes) -> str:
    """The human message inside an upstream error body, whichever family's shape it has:
    OpenAI ``{"error": {"message"}}``, Anthropic ``{"type": "error", "error": {"message"}}``,
    Ollama ``{"error": "..."}``; else the start of the body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return body[:200].decode("utf-8", "replace")


_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret", re.IGNORECASE)


def credentials_in(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The secrets among request headers: each credential header's value, and its token without
    the scheme (``Bearer sk-…`` → ``sk-…``), so either form is found in what a backend echoes."""
    found: list[str] = []
    for name, value in headers.items():
        if _CREDENTIAL_HEADER.search(name) and value:
            found.append(value)
            _, _, token = value.partition(" ")
            if token.strip():
                found.append(token.strip())
    return tuple(found)


def loads_object(body: bytes, backend: str, what: str = "an answer") -> dict[str, Any]:
    """Parse a JSON object a backend sent (``what``: an answer, a stream event, a stream line),
    or raise UpstreamProtocolError saying which it was and what was wrong with it."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(
            f"backend '{backend}' sent {what} that is not JSON", backend=backend
        ) from None
    if not isinstance(data, dict):
        raise UpstreamProtocolError(
            f"backend '{backend}' sent {what} that is not a JSON object", backend=backend
        )
    return data


class Upstream:
    """One backend's base URL, auth headers, timeouts and connection pool."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_connections: int = 256,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        # The credentials this client sends: never in an error, whatever the backend echoes.
        self.secrets = credentials_in(self.headers)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession must be made inside the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                json_serialize=lambda o: orjson.dumps(o).decode(),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def client_timeout(self, timeout: float | None) -> aiohttp.ClientTimeout:
        """Whole-call timeout for plain requests; for streams the same value bounds each read."""
        t = timeout or self.timeout
        cached = self._timeouts.get(t)
        if cached is None:
            cached = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout, sock_read=t)
            self._timeouts[t] = cached
        return cached

    def _raise_for_status(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        said = error_message(body)
        raise UpstreamStatusError(
            f"backend '{self.name}' answered {status}: {said}",
            backend=self.name,
            upstream_status=status,
            upstream_headers={k.lower(): v for k, v in headers.items()},
            upstream_message=said,
            secrets=self.secrets,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send a request and read the whole answer. Error statuses raise UpstreamStatusError."""
        url = self.base_url + path
        req_headers = {"content-type": "application/json"} if body is not None else {}
        if headers:
            req_headers.update(headers)
        deadline = timeout or self.timeout
        with map_errors(self.name):
            async with asyncio.timeout(deadline):
                async with self.session.request(
                    method, url, data=body, headers=req_headers, timeout=self.client_timeout(deadline)
                ) as resp:
                    data = await resp.read()
                    if resp.status >= 400:
                        self._raise_for_status(resp.status, resp.headers, data)
                    return resp.status, resp.headers, data

    async def get_json(self, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        _, _, data = await self.request("GET", path, timeout=timeout)
        return loads_object(data, self.name)

    async def post_json(
        self,
        path: str,
        payload: Any,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Mapping[str, str], dict[str, Any]]:
        _, resp_headers, data = await self.request(
            "POST", path, body=orjson.dumps(payload), timeout=timeout, headers=headers
        )
        return resp_headers, loads_object(data, self.name)

    async def open_stream(
        self,
        path: str,
        body: bytes,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        expect: tuple[str, ...] = ("text/event-stream",),
    ) -> StreamingBody:
        """POST and wait for the status line. Returns only on a 2xx with an expected content type,
        so every failure up to here happens before the client saw a byte (failover stays possible)."""
        url = self.base_url + path
        req_headers = {"content-type": "application/json"}
        if headers:
            req_headers.update(headers)
        deadline = timeout or self.timeout
        with map_errors(self.name):
            async with asyncio.timeout(self.connect_timeout + deadline):
                resp = await self.session.post(
                    url, data=body, headers=req_headers, timeout=self.client_timeout(deadline)
                )
            try:
                if resp.status >= 400:
                    data = await resp.read()
                    self._raise_for_status(resp.status, resp.headers, data)
                ctype = resp.headers.get("content-type", "")
                if not ctype.startswith(expect):
                    raise UpstreamProtocolError(
                        f"backend '{self.name}' answered a stream request with content-type '{ctype}'",
                        backend=self.name,
                    )
            except BaseException:
                resp.release()
                raise
        return StreamingBody(self.name, resp)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class StreamingBody:
    """The body of an established upstream stream, read as raw chunks or as lines."""

    def __init__(self, backend: str, resp: aiohttp.ClientResponse) -> None:
        self.backend = backend
        self._resp = resp
        self.headers: Mapping[str, str] = resp.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        with map_errors(self.backend, in_body=True):
            async for chunk in self._resp.content.iter_any():
                yield chunk

    async def lines(self) -> AsyncIterator[bytes]:
        """Lines without their line ending; empty lines are kept (SSE needs them)."""
        with map_errors(self.backend, in_body=True):
            async for line in self._resp.content:
                yield line.rstrip(b"\r\n")

    async def aclose(self) -> None:
        # release() would keep the connection for reuse after draining; on an abandoned stream
        # we close it so the upstream sees the client leave and stops generating.
        if not self._resp.closed:
            self._resp.close()
