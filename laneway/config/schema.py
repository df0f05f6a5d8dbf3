"""The YAML config, as pydantic models. Validated once at start-up; one ``Settings`` is passed down.

server:    {host, port, max_body_bytes, log_level}
storage:   {database_url, runtime_url, data_dir}
auth:      {open, keys: [{name, key | key_env | key_hash, caller}]}
backends:  {NAME: {provider, base_url, api_key | api_key_env, tier, models, auto_discover,
                   allow, deny, timeout, connect_timeout, max_connections, weight}}
routes:    {NAME: [selector, ...]}     selector: "[backend-glob/]model-glob[@effort]" or a mapping
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Family = Literal["openai", "ollama", "anthropic"]
TierName = Literal["local", "fleet", "cloud", "frontier", "direct"]
Effort = Literal["low", "medium", "high"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DEFAULT_TIER: dict[str, TierName] = {"openai": "cloud", "anthropic": "frontier", "ollama": "local"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "laneway")


class StorageConfig(_Strict):
    data_dir: str = Field(default_factory=default_data_dir)
    database_url: str | None = None  # default: sqlite:///{data_dir}/laneway.db
    runtime_url: str = "memory://"

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite:", "sqlite+aiosqlite:", "postgresql:", "postgresql+")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v

    @field_validator("runtime_url")
    @classmethod
    def _memory_only(cls, v: str) -> str:
        if v != "memory://":
            raise ValueError("only memory:// is supported so far (redis:// comes with cluster mode)")
        return v

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'laneway.db'}"


class KeyConfig(_Strict):
    """A client API key. Give the secret via an environment variable (``key_env``), as a
    pre-computed ``sha256:<hex>`` hash (``key_hash``), or inline (``key``; for demos)."""

    name: str
    key: str | None = Field(default=None, repr=False)
    key_env: str | None = None
    key_hash: str | None = None
    caller: str | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> KeyConfig:
        given = [k for k in ("key", "key_env", "key_hash") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of key, key_env, key_hash")
        if self.key_hash and not re.fullmatch(r"sha256:[0-9a-f]{64}", self.key_hash):
            raise ValueError("key_hash must look like sha256:<64 hex digits>")
        return self


class AuthConfig(_Strict):
    open: bool = False  # true: no client key needed (development only)
    keys: list[KeyConfig] = []


class BackendConfig(_Strict):
    provider: Family
    base_url: str
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    tier: TierName | None = None
    models: list[str] = []
    auto_discover: bool | None = None  # default: true when no models are declared
    allow: list[str] = []
    deny: list[str] = []
    timeout: float = Field(600.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    max_connections: int = Field(256, ge=1)
    weight: float = Field(100.0, ge=0)
    anthropic_version: str = "2023-06-01"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_key_source(self) -> BackendConfig:
        if self.api_key and self.api_key_env:
            raise ValueError("give api_key or api_key_env, not both")
        return self

    @property
    def effective_tier(self) -> TierName:
        return self.tier or DEFAULT_TIER[self.provider]

    @property
    def discovers(self) -> bool:
        return self.auto_discover if self.auto_discover is not None else not self.models

    def resolve_api_key(self) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return self.api_key


class SelectorConfig(_Strict):
    """The mapping form of a selector: every field is a glob over the lane's field."""

    tier: str | None = None
    provider: str | None = None
    backend: str | None = None
    model: str = "*"
    effort: Effort | None = None


SelectorSpec = Annotated[str | SelectorConfig, Field(union_mode="left_to_right")]


class Settings(_Strict):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = Field(default_factory=StorageConfig)
    auth: AuthConfig = AuthConfig()
    backends: dict[str, BackendConfig] = {}
    routes: dict[str, list[SelectorSpec]] = {}
    source: str | None = Field(default=None, exclude=True)  # the file it came from, for messages

    @field_validator("backends", "routes")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"'{name}' is not a valid name (letters, digits, '.', '_', '-'; max 63)")
        return v
