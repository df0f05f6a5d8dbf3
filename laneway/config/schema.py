"""The YAML config, as pydantic models. Validated once at start-up; one ``Settings`` is passed down.

server:    {host, port, max_body_bytes, log_level, max_header_bytes, max_headers, header_timeout,
            body_timeout, min_body_rate, keepalive_timeout, max_connections, drain_timeout,
            access_log, show_lane_in_errors}
storage:   {database_url, runtime_url, data_dir}   data_dir default: instance_data_dir(the config file)
auth:      {open, keys: [{name, key | key_env | key_hash, caller, admin, max_priority, trusted,
            published_lanes}], metrics_key | metrics_key_env | metrics_key_hash}
backends:  {NAME: {provider, base_url, api_key | api_key_env, tier, models, auto_discover,
                   allow, deny, timeout, connect_timeout, max_connections, weight, model_weights,
                   refresh_interval}}
           models: [name | {name, context_length, capabilities, weight}]
           slots, queue_size, queue_timeout, pool: backend|lane, stream_holds_slot
inventory: {intervals: {FAMILY: s}, lane_ttl_intervals, refresh_deadline, retry_backoff, auth_cooldown,
            model_cache_ttl, miss_refresh_debounce, declared_reload, weights: {tiers, providers}}
signals:   {ttl, refresh_deadline, probe_interval, window, exhausted_for, flush_interval}
routing:   {attempts, deadline, seed, retry_wait, record_prompts, failover_records,
            failover_retention, breaker: {failures, window, cooldown}}
routes:    {NAME: [selector, ...]}     selector: "[backend-glob/]model-glob[@effort]" or a mapping
defaults:  {chat, task, embed}         each a selector or a list of them: the role routes
publishers: {tokens: [{name, token | token_env | token_hash, names, models, join_declared}],
            heartbeat_interval,
            heartbeat_timeout, inactive_retention, sweep_interval, ping_interval, timeout,
            wake_timeout, redispatch_wait, queue_size, queue_timeout, weight}
responses: {retention}                 stored responses of /v1/responses, in seconds (30 days)
"""

from __future__ import annotations

import os
import re
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from laneway.config.access import (
    AuthConfig as AuthConfig,
)
from laneway.config.access import (
    KeyConfig as KeyConfig,
)
from laneway.config.access import (
    PublishersConfig as PublishersConfig,
)
from laneway.config.access import (
    PublisherTokenConfig as PublisherTokenConfig,
)
from laneway.config.cluster import ClusterConfig
from laneway.config.common import (
    NAME_RE as NAME_RE,
)
from laneway.config.common import (
    Capability as Capability,
)
from laneway.config.common import (
    Effort as Effort,
)
from laneway.config.common import (
    Family as Family,
)
from laneway.config.common import (
    Seconds as Seconds,
)
from laneway.config.common import (
    Strict,
)
from laneway.config.common import (
    TierName as TierName,
)
from laneway.config.common import (
    Weight as Weight,
)
from laneway.config.server import (
    ServerConfig as ServerConfig,
)
from laneway.config.server import (
    StorageConfig as StorageConfig,
)
from laneway.config.server import (
    default_data_dir as default_data_dir,
)
from laneway.config.server import (
    instance_data_dir as instance_data_dir,
)

DEFAULT_TIER: dict[str, TierName] = {
    "openai": "cloud",
    "anthropic": "frontier",
    "ollama": "local",
    "virtual": "fleet",
}
# Virtual backends are made by the fleet registry for publishers (validated with this context);
# declaring one in the config or the database is a mistake.
VIRTUAL_CONTEXT = {"virtual": True}


class DeclaredModel(Strict):
    """A model declared on a backend. What is given here wins over what the backend reports."""

    name: str = Field(min_length=1)
    context_length: int | None = Field(default=None, gt=0)
    capabilities: list[Capability] | None = None
    weight: float | None = Field(default=None, ge=0)


def _str_or_mapping(value: Any) -> str:
    """Pick a union member by the input's shape, so a wrong mapping reports its own field
    ("context_length: must be > 0"), not "should be a valid string"."""
    return "str" if isinstance(value, str) else "Mapping"


ModelSpec = Annotated[
    Annotated[str, Tag("str")] | Annotated[DeclaredModel, Tag("Mapping")],
    Discriminator(_str_or_mapping),
]


class BackendConfig(Strict):
    provider: Family
    base_url: str
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    tier: TierName | None = None
    models: list[ModelSpec] = []
    auto_discover: bool | None = None  # default: true when no models are declared
    allow: list[str] = []
    deny: list[str] = []
    timeout: float = Field(600.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    max_connections: int = Field(256, ge=1)
    weight: float = Field(100.0, ge=0)  # the instance weight
    model_weights: dict[str, Weight] = {}  # model glob -> weight (default 100)
    refresh_interval: float | None = Field(default=None, gt=0)  # default: inventory.intervals[provider]
    # The pool in front of this backend: ``slots`` calls at once (default: 4 for a local tier, 64
    # otherwise), at most ``queue_size`` waiting, each for at most ``queue_timeout`` seconds (the
    # call itself then has ``timeout``). ``pool: lane`` gives every lane its own pool.
    slots: int | None = Field(default=None, ge=1, le=100_000)
    queue_size: int = Field(1000, ge=0, le=1_000_000)
    queue_timeout: float = Field(60.0, gt=0)
    pool: Literal["backend", "lane"] = "backend"
    stream_holds_slot: bool = (
        False  # hold the slot until the stream ends (a GPU box), not just while it starts
    )
    anthropic_version: str = "2023-06-01"

    @field_validator("models")
    @classmethod
    def _unique_models(cls, v: list[str | DeclaredModel]) -> list[str | DeclaredModel]:
        seen: set[str] = set()
        for spec in v:
            name = spec if isinstance(spec, str) else spec.name
            if not name:
                raise ValueError("a model name may not be empty")
            if name in seen:
                raise ValueError(f"model '{name}' is declared twice")
            seen.add(name)
        return v

    @field_validator("provider")
    @classmethod
    def _not_virtual(cls, v: str, info: ValidationInfo) -> str:
        if v == "virtual" and not (info.context or {}).get("virtual"):
            raise ValueError(
                "'virtual' lanes are registered by publishers (laneway publish), not declared; "
                "use openai, ollama or anthropic"
            )
        return v

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
    def pool_slots(self) -> int:
        return self.slots if self.slots is not None else (4 if self.effective_tier == "local" else 64)

    @property
    def discovers(self) -> bool:
        return self.auto_discover if self.auto_discover is not None else not self.models

    @property
    def declared(self) -> dict[str, DeclaredModel]:
        """Declared models by name, each as a ``DeclaredModel`` (a bare name declares nothing else)."""
        return {
            spec.name if isinstance(spec, DeclaredModel) else spec: (
                spec if isinstance(spec, DeclaredModel) else DeclaredModel(name=spec)
            )
            for spec in self.models
        }

    def model_weight(self, model: str) -> float:
        """A declared model's weight, else the first matching ``model_weights`` glob, else 100."""
        spec = self.declared.get(model)
        if spec is not None and spec.weight is not None:
            return spec.weight
        for glob, weight in self.model_weights.items():
            if fnmatchcase(model, glob):
                return weight
        return 100.0

    def resolve_api_key(self) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return self.api_key


class SelectorConfig(Strict):
    """The mapping form of a selector: every field is a glob over the lane's field."""

    tier: str | None = None
    provider: str | None = None
    backend: str | None = None
    model: str = "*"
    effort: Effort | None = None


SelectorSpec = Annotated[
    Annotated[str, Tag("str")] | Annotated[SelectorConfig, Tag("Mapping")],
    Discriminator(_str_or_mapping),
]

DEFAULT_INTERVALS: dict[str, float] = {"ollama": 15.0, "openai": 60.0, "anthropic": 300.0, "virtual": 30.0}


class WeightsConfig(Strict):
    """Tier and provider-family weights (default 100 each); a lane's weight is the product of its
    tier, provider, instance (backend ``weight``) and model weights, times a health factor."""

    tiers: dict[TierName, Weight] = {}
    providers: dict[Family, Weight] = {}


class InventoryConfig(Strict):
    """How the live lane inventory is kept true (discovery, expiry, cooldowns, caches)."""

    intervals: dict[Family, Seconds] = {}  # refresh interval per family; defaults: DEFAULT_INTERVALS
    lane_ttl_intervals: float = Field(3.0, ge=1)  # a lane not re-observed for this many intervals expires
    refresh_deadline: float = Field(10.0, gt=0)  # one backend's refresh, per cycle
    # A failed refresh is retried after this, then twice as long each time, up to the interval.
    retry_backoff: float = Field(1.0, gt=0)
    auth_cooldown: float = Field(300.0, gt=0)  # refreshes skipped after a credential is refused
    model_cache_ttl: float = Field(3600.0, gt=0)  # cloud model lists
    miss_refresh_debounce: float = Field(5.0, ge=0)  # unknown model -> local refresh at most this often
    declared_reload: float = Field(10.0, gt=0)  # how often backends declared in the database are re-read
    weights: WeightsConfig = WeightsConfig()

    def interval(self, backend: BackendConfig) -> float:
        if backend.refresh_interval is not None:
            return backend.refresh_interval
        return self.intervals.get(backend.provider, DEFAULT_INTERVALS[backend.provider])

    def base_weight(self, backend: BackendConfig, model: str) -> float:
        w = self.weights
        return (
            w.tiers.get(backend.effective_tier, 100.0)
            * w.providers.get(backend.provider, 100.0)
            * backend.weight
            * backend.model_weight(model)
        )


class SignalsConfig(Strict):
    """Runtime signals: quota from rate-limit headers, latency windows, status per backend."""

    ttl: Seconds = 300.0  # a signal nobody refreshed for this long is unknown (and leaves the store)
    refresh_deadline: Seconds = 5.0  # one probe of a local backend
    probe_interval: Seconds = 30.0  # how often local backends are probed (/v1/models, /api/tags)
    window: int = Field(128, ge=1, le=100_000)  # latency samples kept per backend and per lane
    exhausted_for: Seconds = 60.0  # a counter at zero without a reset time, or a bare 429
    flush_interval: Seconds = 1.0  # changed signals are persisted this often, off the request path


class BreakerConfig(Strict):
    """Per-lane circuit breaker: ``failures`` within ``window`` seconds open it; after ``cooldown``
    seconds it is half-open (one trial); a success closes it, a failure re-opens it."""

    failures: int = Field(5, ge=1)
    window: Seconds = 60.0
    cooldown: Seconds = 30.0


class RoutingConfig(Strict):
    attempts: int = Field(3, ge=1, le=20)  # lanes tried per request, at most
    deadline: Seconds = 900.0  # a request's whole life, queueing and failover included
    seed: int | None = None  # ranking's tie-break; None: a new seed per process
    # A request whose lanes all asked to be left alone (a 429's or a quota's reset, a 503's
    # Retry-After) waits for the first one back if that is this soon (at most this long in all).
    retry_wait: float = Field(5.0, ge=0)  # 0: never wait
    record_prompts: bool = False  # keep the prompt in failover records (off: it may be sensitive)
    failover_records: int = Field(1000, ge=0, le=1_000_000)  # recent failover records kept in memory
    # Failover records are kept this long in the SQL database (seconds; 7 days), then deleted.
    failover_retention: Seconds = 7 * 86400.0
    breaker: BreakerConfig = BreakerConfig()


class ResponsesConfig(Strict):
    """Stored responses of the Responses API (``store: true``, the default there): kept this
    many seconds (30 days, as OpenAI keeps them), then no longer served and deleted."""

    retention: Seconds = 30 * 86400.0


ROLES = ("chat", "task", "embed")


class DefaultsConfig(Strict):
    """Role routes: ``chat``, ``task`` and ``embed`` become routes a client can ask for by name."""

    chat: SelectorSpec | list[SelectorSpec] | None = None
    task: SelectorSpec | list[SelectorSpec] | None = None
    embed: SelectorSpec | list[SelectorSpec] | None = None

    def routes(self) -> dict[str, list[str | SelectorConfig]]:
        out: dict[str, list[str | SelectorConfig]] = {}
        for role in ROLES:
            value = getattr(self, role)
            if value is not None:
                out[role] = list(value) if isinstance(value, list) else [value]
        return out


class Settings(Strict):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = Field(default_factory=StorageConfig)
    auth: AuthConfig = AuthConfig()
    backends: dict[str, BackendConfig] = {}
    inventory: InventoryConfig = InventoryConfig()
    signals: SignalsConfig = SignalsConfig()
    routing: RoutingConfig = RoutingConfig()
    routes: dict[str, list[SelectorSpec]] = {}
    defaults: DefaultsConfig = DefaultsConfig()
    publishers: PublishersConfig = PublishersConfig()
    responses: ResponsesConfig = ResponsesConfig()
    cluster: ClusterConfig = ClusterConfig()
    source: str | None = Field(default=None, exclude=True)  # the file it came from, for messages
    # The line of every key of that file (set by the loader), for what is checked after loading.
    _marks: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)

    @field_validator("defaults")
    @classmethod
    def _no_clash(cls, v: DefaultsConfig, info: ValidationInfo) -> DefaultsConfig:
        """Naming a role under ``routes`` and ``defaults`` is a mistake, not an override."""
        clash = sorted(set(v.routes()) & set(info.data.get("routes") or {}))
        if clash:
            raise ValueError(f"'{clash[0]}' is also a route under routes; keep one of the two")
        return v

    @model_validator(mode="after")
    def _own_data_dir(self) -> Settings:
        """An instance that does not set ``storage.data_dir`` gets its own, from its config file."""
        if self.source and "data_dir" not in self.storage.model_fields_set:
            storage = self.storage.model_copy(update={"data_dir": instance_data_dir(self.source)})
            storage._derived = True
            object.__setattr__(self, "storage", storage)
        return self

    @model_validator(mode="after")
    def _role_routes(self) -> Settings:
        """``defaults`` become routes."""
        roles = self.defaults.routes()
        if roles:
            object.__setattr__(self, "routes", {**self.routes, **roles})
        return self

    @field_validator("backends", "routes")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"'{name}' is not a valid name (letters, digits, '.', '_', '-'; max 63)")
        return v
