"""The publisher's state file: the session id the gateway gave it, so that a restart registers
with the same id and re-adopts its lanes instead of waiting for the old ones to go inactive.

It is a cache, not a source of truth: a missing or unreadable file only costs a fresh session.
It is written atomically (a temporary file in the same directory, then ``os.replace``), so a
publisher killed mid-write leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from laneway.config.schema import default_data_dir

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class PublisherState:
    session_id: str
    gateway: str
    name: str


def default_state_path(name: str) -> Path:
    """``$XDG_DATA_HOME/laneway/publish/NAME.json`` (``~/.local/share`` without XDG_DATA_HOME)."""
    return Path(default_data_dir()) / "publish" / f"{_UNSAFE.sub('-', name)}.json"


def load_state(path: Path) -> PublisherState | None:
    """The saved state, or None when there is none or it cannot be read."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    fields = (data.get("session_id"), data.get("gateway"), data.get("name"))
    if not all(isinstance(f, str) and f for f in fields):
        return None
    session_id, gateway, name = (str(f) for f in fields)
    return PublisherState(session_id=session_id, gateway=gateway, name=name)


def session_for(path: Path, *, gateway: str, name: str) -> str | None:
    """The session id to register with: the saved one when it was made by the same gateway for
    the same name (an id of another gateway means nothing there)."""
    state = load_state(path)
    if state is None or state.gateway != gateway or state.name != name:
        return None
    return state.session_id


def save_state(path: Path, state: PublisherState) -> None:
    """Write ``state`` to ``path`` atomically, creating its directory if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(asdict(state), option=orjson.OPT_INDENT_2))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
