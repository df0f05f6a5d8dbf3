"""The ``server:`` and ``storage:`` sections: how this instance listens, and where it keeps state."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator

from laneway.config.common import Seconds, Strict


class ServerConfig(Strict):
    """The HTTP edge. Every limit has a default that a public endpoint can run with; a request over
    one is refused (431 for headers, 413 for a body, 408 for one too slow) or its connection cut,
    and never holds memory or a connection for longer than the limit says."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The HTTP edge (laneway.api.edge, docs/http-edge.md). Each refusal is an OpenAI-shaped error
    # with `connection: close`, and the connection is closed.
    # The request line and headers of one request: one byte more is a 431, and is never buffered.
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_headers: int = Field(100, ge=8, le=10_000)  # header lines in one request: more is a 431
    # The first request's headers must be complete this long after the connection opened (silent:
    # closed; else 408); a later request's this long after its first byte.
    header_timeout: Seconds = 10.0
    body_timeout: Seconds = 30.0  # the longest silence while a request body arrives: 408
    # Bytes/s a body must have averaged once it has taken body_timeout: 408 (0: no rate check).
    min_body_rate: int = Field(1024, ge=0)
    # A keep-alive connection is closed when no next request starts this long after a response.
    keepalive_timeout: Seconds = 5.0
    max_connections: int = Field(4096, ge=1, le=1_000_000)  # open at once; one more is answered 503
    # On SIGTERM/SIGINT: no new client requests (503, /readyz 503 "draining"); those in flight,
    # relayed streams too, have this long to finish; then publishers' control streams end.
    drain_timeout: Seconds = 30.0
    access_log: bool = True  # one structured line per request (logger laneway.access)
    show_lane_in_errors: bool = False  # errors to non-admin keys name the lane (admin keys: always)


def default_data_dir() -> str:
    """laneway's folder under ``$XDG_DATA_HOME`` (``~/.local/share``). Instances do not keep their
    state here but in a folder of their own inside it (``instance_data_dir``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "laneway")


def instance_data_dir(config_file: str | None) -> str:
    """The ``data_dir`` of an instance whose config does not set one: a folder of its own, named
    after its config file and a short hash of that file's absolute path (``laneway-3f2a9c1d``),
    so two configs never share a database, signals or caches by accident and every command given
    the same ``-c FILE`` finds the same folder. ``default`` with no config file."""
    if not config_file:
        return os.path.join(default_data_dir(), "default")
    path = Path(config_file).expanduser().resolve()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip(".-") or "config"
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return os.path.join(default_data_dir(), f"{stem[:40]}-{digest}")


class StorageConfig(Strict):
    # Default: instance_data_dir(the config file), chosen by Settings once the file is known.
    data_dir: str = Field(default_factory=lambda: instance_data_dir(None))
    database_url: str | None = None  # default: sqlite:///{data_dir}/laneway.db
    runtime_url: str = "memory://"
    _derived: bool = PrivateAttr(default=False)

    @property
    def data_dir_derived(self) -> bool:
        """True when the config did not set ``data_dir`` (``instance_data_dir`` chose it)."""
        return self._derived or "data_dir" not in self.model_fields_set

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite:", "sqlite+aiosqlite:", "postgresql:", "postgresql+")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v

    @field_validator("runtime_url")
    @classmethod
    def _runtime_scheme(cls, v: str) -> str:
        if v != "memory://" and not re.match(r"^rediss?://[^/\s]+", v):
            raise ValueError("must be memory:// (one process) or redis://host:port/db (shared by replicas)")
        return v

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'laneway.db'}"
