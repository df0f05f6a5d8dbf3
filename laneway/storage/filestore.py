"""A ``KeyValueStore`` in a local directory: the embedded default's runtime state (cached model
lists, signals) survives a restart, and the CLI can read it while the server runs.

Layout, one file per key:

    k.<key, percent-encoded>   the usual name, so ``scan`` filters on names before reading
    h.<sha256 of the key>      when the encoded name would pass ``_MAX_NAME`` (filesystems stop at 255)
    .tmp.*                     a write in progress, or one a crash left behind
    .lock                      taken by every change (see ``_locked``)

The encoding keeps only lowercase letters, digits and ``-_.``; everything else, uppercase letters
included, becomes ``%XX`` of its UTF-8 bytes. Names are therefore plain ASCII (no Unicode
normalisation by the filesystem) and stay distinct on case-insensitive filesystems. Every file
also holds its key, so a hashed name can be read back and a stray file cannot pose as an entry.

A file is ``_MAGIC``, one JSON line ``{"key", "expires_at", "size"}`` and the value's bytes.
``expires_at`` is wall-clock time (``clock.now()``), so a deadline means the same thing to
another process and after a restart. Anything else in a file reads as absent.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from laneway.clock import Clock
from laneway.storage.errors import StoreUnavailable

_T = TypeVar("_T")

_MAGIC = b"laneway-kv 1\n"
_ENTRY = "k."
_HASHED = "h."
_TEMP = ".tmp."
_LOCK = ".lock"
_MAX_NAME = 200  # bytes; leaves room below the usual 255 for whatever a filesystem adds
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_.")
_STALE_TEMP = 60.0  # seconds; a write takes milliseconds, so an older temp file is a crash's leftover
_SWEEP_EVERY = 60.0  # seconds between sweeps of expired entries that nobody reads


@dataclass(frozen=True)
class _Record:
    key: str
    value: bytes
    expires_at: float | None  # on clock.now(); None keeps the entry

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


class FileStore:
    """A ``KeyValueStore`` in ``directory``, with deadlines on the injected clock's wall time.

    File I/O runs in worker threads. A write goes to a temp file in the same directory and is then
    renamed over the entry (``os.replace``), so a reader sees the old value or the new one, never
    half of either. A worker thread cannot be interrupted, so a cancelled caller waits for its
    operation to finish before its cancellation propagates: the operation is whole, and callers'
    operations keep their order. No fsync: this is runtime state, and a file a power loss tears
    reads as absent.

    Expired entries read as absent at once and are removed from disk lazily, by the reads that
    meet them and by a sweep at most every ``_SWEEP_EVERY`` seconds of writes. Files are created
    readable by their owner only.
    """

    def __init__(self, directory: str | Path, clock: Clock) -> None:
        self._dir = Path(directory)
        self._clock = clock
        self._created = False
        self._next_sweep = float("-inf")

    @property
    def directory(self) -> Path:
        return self._dir

    async def get(self, key: str) -> bytes | None:
        return await self._run(functools.partial(self._get, key, self._clock.now()))

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        now = self._clock.now()
        expires_at = None if ttl is None else now + ttl
        await self._run(functools.partial(self._set, key, bytes(value), expires_at, now))

    async def delete(self, key: str) -> bool:
        return await self._run(functools.partial(self._delete, key, self._clock.now()))

    async def scan(self, prefix: str) -> dict[str, bytes]:
        return await self._run(functools.partial(self._scan, prefix, self._clock.now()))

    async def aclose(self) -> None:
        """Nothing to release: no file stays open between operations, and none is in flight
        without a caller waiting for it."""

    def __repr__(self) -> str:
        return f"<FileStore: {self._dir}>"

    async def _run(self, operation: Callable[[], _T]) -> _T:
        worker = asyncio.ensure_future(asyncio.to_thread(operation))
        try:
            return await asyncio.shield(worker)
        except asyncio.CancelledError:
            await _wait_out(worker)
            raise
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot use the runtime store directory {self._dir}: {exc.strerror or exc}; "
                "check that it can be created and written (storage.runtime_url)"
            ) from None

    # --- in a worker thread -----------------------------------------------------------------

    def _get(self, key: str, now: float) -> bytes | None:
        self._create()
        path = self._dir / _file_name(key)
        record = _read(path)
        if record is None or record.key != key:
            return None
        if not record.live(now):
            self._expire(path, now)
            return None
        return record.value

    def _set(self, key: str, value: bytes, expires_at: float | None, now: float) -> None:
        self._create()
        fd, temp = tempfile.mkstemp(prefix=_TEMP, dir=self._dir)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(_pack(key, value, expires_at))
            with self._locked():
                os.replace(temp, self._dir / _file_name(key))
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
            try:
                self._scan("", now)
            except OSError:
                pass  # the write is done; a sweep that fails now is tried again later

    def _delete(self, key: str, now: float) -> bool:
        self._create()
        path = self._dir / _file_name(key)
        with self._locked():
            record = _read(path)
            path.unlink(missing_ok=True)
        return record is not None and record.key == key and record.live(now)

    def _scan(self, prefix: str, now: float) -> dict[str, bytes]:
        """Live entries under ``prefix``; expired entries met and stale temp files are removed."""
        self._create()
        found: dict[str, bytes] = {}
        for name in os.listdir(self._dir):
            path = self._dir / name
            if name.startswith(_TEMP):
                _remove_if_stale(path, now)
                continue
            if name.startswith(_ENTRY):
                key = _key_of_name(name)
                if key is None or not key.startswith(prefix):
                    continue  # the name alone rules it out: no need to read the file
            elif not name.startswith(_HASHED):
                continue  # the lock, or a file that is not ours
            record = _read(path)
            if record is None or not record.key.startswith(prefix) or _file_name(record.key) != name:
                continue
            if record.live(now):
                found[record.key] = record.value
            else:
                self._expire(path, now)
        return dict(sorted(found.items()))

    def _create(self) -> None:
        if not self._created:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._created = True

    def _expire(self, path: Path, now: float) -> None:
        """Remove an expired entry unless it was rewritten meanwhile. Best effort: a reader that may
        not write (the CLI as another user) leaves it for the server."""
        try:
            with self._locked():
                record = _read(path)
                if record is not None and not record.live(now):
                    path.unlink(missing_ok=True)
        except OSError:
            pass

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across threads and processes. Only changes take it: a conditional removal
        (``_expire``, ``_delete``) must not remove a value written between its read and its unlink.
        Readers never wait for it."""
        fd = os.open(self._dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock_file(fd)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


if sys.platform == "win32":
    import msvcrt

    def _lock_file(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)

else:
    import fcntl

    def _lock_file(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # per open file description: threads exclude each other too


async def _wait_out(worker: asyncio.Future[_T]) -> None:
    """Wait until ``worker`` is done, whatever further cancellations arrive meanwhile."""
    while not worker.done():
        try:
            await asyncio.wait([worker])
        except asyncio.CancelledError:
            continue
    if not worker.cancelled():
        worker.exception()  # retrieved: the caller's cancellation is what propagates


def _file_name(key: str) -> str:
    raw = key.encode("utf-8", "surrogatepass")
    encoded = "".join(chr(byte) if byte in _SAFE else f"%{byte:02X}" for byte in raw)
    if len(_ENTRY) + len(encoded) <= _MAX_NAME:
        return _ENTRY + encoded
    return _HASHED + hashlib.sha256(raw).hexdigest()


def _key_of_name(name: str) -> str | None:
    """The key a ``k.`` name spells; None for any other name, or one ``_file_name`` would not write."""
    if not name.startswith(_ENTRY):
        return None
    try:
        key = urllib.parse.unquote_to_bytes(name[len(_ENTRY) :]).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    return key if _file_name(key) == name else None


def _pack(key: str, value: bytes, expires_at: float | None) -> bytes:
    header = json.dumps({"key": key, "expires_at": expires_at, "size": len(value)})
    return _MAGIC + header.encode("ascii") + b"\n" + value


def _read(path: Path) -> _Record | None:
    """The record in ``path``; None if there is none or it is not one this version wrote whole."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if not data.startswith(_MAGIC):
        return None
    header, newline, value = data[len(_MAGIC) :].partition(b"\n")
    try:
        fields = json.loads(header) if newline else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(fields, dict):
        return None
    key, expires_at, size = fields.get("key"), fields.get("expires_at"), fields.get("size")
    if not isinstance(key, str) or size != len(value):
        return None
    if expires_at is not None and not isinstance(expires_at, int | float):
        return None
    return _Record(key, value, None if expires_at is None else float(expires_at))


def _remove_if_stale(path: Path, now: float) -> None:
    try:
        if path.stat().st_mtime < now - _STALE_TEMP:
            path.unlink(missing_ok=True)
    except OSError:
        pass  # finished (renamed away) meanwhile, or not ours to remove
