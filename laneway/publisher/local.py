"""The publisher's local backend: which family it speaks, which of its models become lanes, and
running one relayed call against it.

The backend is reached through laneway's own provider adapters, so a publisher speaks to Ollama or
to an OpenAI-compatible server exactly as the gateway would, and every answer comes back in the
OpenAI format the gateway relays. The gateway publishes a model under its *published* name (an
alias, when ``--alias`` maps one); the backend only knows its *local* name. This module is the one
place that maps between the two: requests go out with the local name, answers come back with the
published one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from laneway.clock import Clock
from laneway.config.schema import BackendConfig
from laneway.errors import (
    LanewayError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from laneway.operations import OPERATIONS, Operation
from laneway.providers.base import Call, ModelInfo, Provider, ReplyStream, answer
from laneway.providers.base import stream as open_stream
from laneway.providers.http import Upstream, loads_object
from laneway.providers.registry import build_provider
from laneway.publishing.protocol import Failure, LaneOffer, Result
from laneway.sse import Decoder, EventTooLarge

ProviderChoice = Literal["auto", "ollama", "openai"]
BACKEND_NAME = "local"  # how the adapters name this backend in their error messages


class LocalBackendError(LanewayError):
    """The local backend cannot be used: nothing answers at its URL in a family we speak."""


# --- lanes ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lane:
    """One (model, type) this publisher offers. ``published`` is the name the gateway routes by;
    ``local`` is the backend's own name for the same model. A lane's type is the operation its
    tasks run."""

    published: str
    local: str
    type: Operation
    capabilities: frozenset[str] = frozenset()
    context_length: int | None = None

    def offer(self) -> LaneOffer:
        """The lane as the register call lists it."""
        return LaneOffer(
            model=self.published,
            type=self.type,
            capabilities=sorted(self.capabilities) or None,
            context_length=self.context_length,
        )


def parse_aliases(values: Iterable[str]) -> dict[str, str]:
    """``["llama3.2:3b=llama-small", ...]`` → ``{"llama3.2:3b": "llama-small"}``. Raises
    ``ValueError`` naming the first malformed entry: one without ``=``, with an empty side, or a
    local name given twice (which of the two would the user mean?)."""
    aliases: dict[str, str] = {}
    for value in values:
        local, sep, published = (part.strip() for part in value.partition("="))
        if not sep or not local or not published:
            raise ValueError(f"malformed --alias {value!r}: expected LOCAL=PUBLISHED, e.g. llama3.2:3b=llama")
        if local in aliases and aliases[local] != published:
            raise ValueError(f"--alias gives '{local}' two names: '{aliases[local]}' and '{published}'")
        aliases[local] = published
    return aliases


def select_lanes(
    models: Sequence[ModelInfo], globs: Sequence[str] = (), aliases: Mapping[str, str] | None = None
) -> list[Lane]:
    """The lanes to register: one per (model, type) of every model whose local or published name
    matches one of ``globs`` (all models when there are none), named by ``aliases``.

    Raises ``ValueError`` when two local models would be published under one name with the same
    type: the gateway could not tell them apart.
    """
    aliases = aliases or {}
    lanes: list[Lane] = []
    owner: dict[tuple[str, str], str] = {}  # (published, type) -> local name
    for info in models:
        published = aliases.get(info.id, info.id)
        if globs and not any(fnmatchcase(info.id, g) or fnmatchcase(published, g) for g in globs):
            continue
        for lane_type in Operation:
            if lane_type not in info.types:
                continue
            first = owner.setdefault((published, lane_type), info.id)
            if first != info.id:
                raise ValueError(f"'{first}' and '{info.id}' would both be published as '{published}'")
            lanes.append(Lane(published, info.id, lane_type, info.capabilities, info.context_length))
    return lanes


def unknown_aliases(models: Sequence[ModelInfo], aliases: Mapping[str, str]) -> list[str]:
    """The local names ``--alias`` maps that the backend does not serve (likely a typo)."""
    served = {info.id for info in models}
    return sorted(local for local in aliases if local not in served)


# --- answers ------------------------------------------------------------------------------------------


def error_result(exc: UpstreamError) -> Result:
    """The result of a call the backend failed: its own status when it answered with one, 504
    when it timed out, 502 when it could not be reached or answered garbage."""
    if isinstance(exc, UpstreamStatusError):
        status = exc.upstream_status
    elif isinstance(exc, UpstreamTimeout):
        status = 504
    else:
        status = 502
    return Result(error=Failure(status=status, message=exc.message))


def renamed(obj: Any, published: str) -> Any:
    """``obj`` with its ``model`` field set to the published name (objects without one stay as
    they are: the gateway sends its clients the name it published, never the local one)."""
    if isinstance(obj, dict) and "model" in obj:
        obj["model"] = published
    return obj


class SSEChunks:
    """Turns OpenAI SSE bytes into chunk objects. The OpenAI adapter passes the upstream's bytes
    through as they arrive, so an event may come split over several reads or several events in
    one; the codec (``laneway.sse.Decoder``) hands over whole events only. ``[DONE]`` is dropped:
    the gateway ends its own stream. An ``{"error": ...}`` event (how OpenAI-compatible servers
    fail mid-stream) raises."""

    def __init__(self, published: str) -> None:
        self._published = published
        self._decoder = Decoder()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        try:
            events = self._decoder.feed(data)
        except EventTooLarge as exc:
            raise UpstreamProtocolError(f"the local backend's stream: {exc}", backend=BACKEND_NAME) from None
        return [chunk for event in events if (chunk := self._decode(event.data)) is not None]

    def close(self) -> list[dict[str, Any]]:
        """Whatever whole event is left (a server may omit the last blank line)."""
        return [chunk for event in self._decoder.close() if (chunk := self._decode(event.data)) is not None]

    def _decode(self, payload: bytes) -> dict[str, Any] | None:
        if payload.strip() == b"[DONE]":
            return None
        chunk = loads_object(payload, BACKEND_NAME, "a stream frame")
        error = chunk.get("error")
        if error is not None and "choices" not in chunk:
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(f"the local backend failed mid-stream: {message}", backend=BACKEND_NAME)
        renamed(chunk, self._published)
        return chunk


# --- waking it ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WakeRecipe:
    """How to wake the local backend: run ``command`` (a shell command) or POST ``url``, then
    poll the backend's model list every ``poll_interval`` until it answers; all of it within
    ``timeout`` seconds. With neither, a wake only waits for the backend to answer."""

    command: str | None = None
    url: str | None = None
    timeout: float = 300.0
    poll_interval: float = 2.0


class WakeFailed(Exception):
    """The wake recipe itself failed (its command exited non-zero, its URL refused)."""


# --- the backend --------------------------------------------------------------------------------------


def _config(family: str, url: str, api_key: str | None, timeout: float) -> BackendConfig:
    return BackendConfig.model_validate(
        {"provider": family, "base_url": url, "api_key": api_key, "timeout": timeout}
    )


class LocalBackend:
    """The model server on this machine, behind one laneway provider adapter."""

    def __init__(self, provider: Provider, *, family: str, url: str, probe_timeout: float = 10.0) -> None:
        self.provider = provider
        self.family = family
        self.url = url
        self.probe_timeout = probe_timeout

    @classmethod
    def build(
        cls, url: str, family: str, *, api_key: str | None = None, timeout: float = 600.0
    ) -> LocalBackend:
        """A backend of a known family, without calling it (a wake may have to start it first)."""
        provider = build_provider(BACKEND_NAME, _config(family, url, api_key, timeout))
        return cls(provider, family=family, url=url)

    @classmethod
    async def connect(
        cls,
        url: str,
        provider: ProviderChoice = "auto",
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        discovery_timeout: float = 30.0,
    ) -> tuple[LocalBackend, list[ModelInfo]]:
        """Find the backend's family and its models. ``auto`` tries Ollama's ``/api/tags`` first,
        then ``/v1/models``: an Ollama server answers both, an OpenAI-compatible one only the
        second. Raises ``LocalBackendError`` when nothing usable answers."""
        families = ["ollama", "openai"] if provider == "auto" else [provider]
        failures: list[str] = []
        for family in families:
            backend = cls.build(url, family, api_key=api_key, timeout=timeout)
            try:
                async with asyncio.timeout(discovery_timeout):
                    models = await backend.provider.list_models()
            except (UpstreamError, TimeoutError) as exc:
                await backend.aclose()
                reason = exc.message if isinstance(exc, UpstreamError) else "no answer in time"
                failures.append(f"{family}: {reason}")
                continue
            except BaseException:
                await backend.aclose()
                raise
            return backend, models
        raise LocalBackendError(f"no model server answers at {url} ({'; '.join(failures)})")

    async def answers(self) -> bool:
        """Whether the backend answers its model list right now (waiting for a wake to finish)."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                await self.provider.probe()
        except (UpstreamError, TimeoutError):
            return False
        return True

    def _call(self, lane: Lane, body: Mapping[str, Any], streamed: bool, timeout: float | None) -> Call:
        local_body = {**body, "model": lane.local}
        if OPERATIONS[lane.type].streams:  # say which it is; an operation that never streams has no flag
            local_body["stream"] = streamed
        return Call(model=lane.local, body=local_body, timeout=timeout)

    async def reply(
        self, lane: Lane, body: Mapping[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The complete answer of a call that is not streamed, named by the published name."""
        reply = await answer(self.provider, lane.type, self._call(lane, body, False, timeout))
        parsed = loads_object(reply.body, BACKEND_NAME)
        renamed(parsed, lane.published)
        return parsed

    @asynccontextmanager
    async def stream(
        self, lane: Lane, body: Mapping[str, Any], *, timeout: float | None = None
    ) -> AsyncIterator[AsyncGenerator[list[dict[str, Any]], None]]:
        """A streamed call: yields an iterator of chunk batches (one per read from the backend),
        each chunk named by the published name. The backend stream is closed on leaving the block,
        however it is left, so a cancelled task stops the generation."""
        opened = await open_stream(self.provider, lane.type, self._call(lane, body, True, timeout))
        batches = _batches(opened, SSEChunks(lane.published))
        try:
            yield batches
        finally:
            try:
                await batches.aclose()
            finally:
                await opened.aclose()

    async def wake(self, recipe: WakeRecipe, clock: Clock) -> None:
        """Run ``recipe``, then wait until the backend answers its model list. Unbounded: the
        caller bounds it (``laneway.clock.within``), and cancelling it kills the command."""
        if recipe.command is not None:
            await _run_command(recipe.command)
        elif recipe.url is not None:
            target = Upstream(name="wake-url", base_url=recipe.url, timeout=recipe.timeout)
            try:
                await target.request("POST", "")
            except UpstreamError as exc:
                raise WakeFailed(f"the wake URL failed: {exc.message}") from None
            finally:
                await target.aclose()
        while not await self.answers():
            await clock.sleep(recipe.poll_interval)

    async def aclose(self) -> None:
        await self.provider.aclose()


async def _batches(stream: ReplyStream, decoder: SSEChunks) -> AsyncGenerator[list[dict[str, Any]], None]:
    async for data in stream:
        chunks = decoder.feed(data)
        if chunks:
            yield chunks
    tail = decoder.close()
    if tail:
        yield tail


async def _run_command(command: str) -> None:
    """Run a wake command in its own process group, so that a cancelled wake kills all of it
    (the shell and whatever it started), not just the shell."""
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        raise
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        detail = f": {lines[-1]}" if lines else ""
        raise WakeFailed(f"the wake command exited with status {proc.returncode}{detail}")
