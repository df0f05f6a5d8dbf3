"""The ``auth:`` and ``publishers:`` sections: client keys, the metrics key, publisher tokens and
the lifecycle of what publishers publish."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from laneway.config.common import Seconds, Strict, Weight, one_secret


class KeyConfig(Strict):
    """A client API key. Give the secret via an environment variable (``key_env``), as a
    pre-computed ``sha256:<hex>`` hash (``key_hash``), or inline (``key``; for demos)."""

    name: str
    key: str | None = Field(default=None, repr=False)
    key_env: str | None = None
    key_hash: str | None = None
    caller: str | None = None
    admin: bool = False  # may call /admin/... (inventory, refresh, caches)
    max_priority: int = Field(0, ge=0, le=9)  # the highest x-laneway-priority this key may ask for
    trusted: bool = False  # may name a sub-caller with x-laneway-caller (fair share, usage, attribution)
    # May be served by lanes people publish (laneway publish): false keeps this key's prompts on
    # declared backends only.
    published_lanes: bool = True

    @model_validator(mode="after")
    def _exactly_one_source(self) -> KeyConfig:
        one_secret(self, "key")
        return self


class AuthConfig(Strict):
    open: bool = False  # true: no client key needed (development only)
    keys: list[KeyConfig] = []
    # How often keys and publisher tokens are re-read from the database. On PostgreSQL a change
    # also reaches every replica at once (cluster.credentials): then this is only the backstop.
    reload_interval: Seconds = 5.0
    # GET /metrics: open unless one of these is given; then it needs this key or an admin key.
    metrics_key: str | None = Field(default=None, repr=False)
    metrics_key_env: str | None = None
    metrics_key_hash: str | None = None

    @model_validator(mode="after")
    def _one_metrics_key(self) -> AuthConfig:
        if any((self.metrics_key, self.metrics_key_env, self.metrics_key_hash)):
            one_secret(self, "metrics_key")
        return self


class PublisherTokenConfig(Strict):
    """A publisher token (``laneway publish --token``): not a client key. ``names`` are globs over
    the publisher names it may register, ``models`` over the model names it may publish."""

    name: str = Field(min_length=1)  # the owner of the sessions it opens
    token: str | None = Field(default=None, repr=False)
    token_env: str | None = None
    token_hash: str | None = None
    names: list[str] = Field(min_length=1)
    models: list[str] = ["*"]
    # May publish a model name that a declared backend serves, its lanes then sharing that
    # model's traffic (and prompts). Off: such a model is refused at register, and never routed.
    join_declared: bool = False

    @model_validator(mode="after")
    def _exactly_one_source(self) -> PublisherTokenConfig:
        one_secret(self, "token")
        return self


class PublishersConfig(Strict):
    """Virtual lanes: who may publish, and the lifecycle of what they publish (docs/publishers.md)."""

    tokens: list[PublisherTokenConfig] = []
    heartbeat_interval: Seconds = 30.0  # what publishers are told to keep
    heartbeat_timeout: Seconds = 90.0  # no heartbeat this long: the publisher's lanes go inactive
    inactive_retention: Seconds = 4 * 3600.0  # inactive this long: deleted
    sweep_interval: Seconds = 15.0
    ping_interval: Seconds = 15.0  # keep-alive events on the control stream
    timeout: Seconds = 600.0  # a relayed call, never past the request's deadline
    wake_timeout: Seconds = 300.0
    # A call whose publisher dropped (or is offline) waits this long for it to come back, unless
    # another lane of the same model can serve it at once; then it fails over (or gets 503).
    redispatch_wait: Seconds = 30.0
    queue_size: int = Field(1000, ge=0, le=1_000_000)
    queue_timeout: Seconds = 60.0
    weight: Weight = 100.0  # the instance weight of every virtual lane

    @field_validator("heartbeat_timeout")
    @classmethod
    def _timeout_after_interval(cls, v: float, info: ValidationInfo) -> float:
        interval = info.data.get("heartbeat_interval")
        if interval is not None and v <= interval:
            raise ValueError(f"must be longer than heartbeat_interval ({interval:g}s)")
        return v
