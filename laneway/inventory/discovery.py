"""Discovery, the pure part: a backend's lanes computed from what its upstream reports.

Declared models constrain a backend unless it auto-discovers; declared context length and
capabilities win over observed ones; allow/deny lists filter (and are checked again at
dispatch); a model that is declared but missing upstream is reported, not silently dropped.
No I/O here: the refresher fetches, this decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from laneway.config.schema import BackendConfig, DeclaredModel, InventoryConfig
from laneway.inventory.lanes import Lane
from laneway.providers.base import ModelInfo

# Capabilities that are also lane types: a declared capability list says which lanes exist.
_TYPED = ("chat", "completion", "embedding")


def model_allowed(config: BackendConfig, model: str) -> bool:
    """The backend's model policy: deny wins, then an allow list (if any) must match."""
    if config.deny and any(fnmatchcase(model, pat) for pat in config.deny):
        return False
    return not config.allow or any(fnmatchcase(model, pat) for pat in config.allow)


def _apply_declared(info: ModelInfo, spec: DeclaredModel) -> ModelInfo:
    """What the operator declared wins over what the backend (or the name) suggests."""
    types, caps = set(info.types), set(info.capabilities)
    if spec.capabilities is not None:
        caps = set(spec.capabilities)
        types = {t for t in _TYPED if t in caps} or types
    return ModelInfo(
        id=info.id,
        types=frozenset(types),
        capabilities=frozenset(caps),
        context_length=spec.context_length or info.context_length,
        loaded=info.loaded,
    )


@dataclass(frozen=True, slots=True)
class Discovered:
    lanes: list[Lane]
    missing: list[str]  # declared models the backend does not have
    excluded: list[str]  # models the backend has that its allow/deny policy excludes


def lanes_for(
    name: str,
    config: BackendConfig,
    models: list[ModelInfo],
    *,
    inventory: InventoryConfig,
    now: float,
) -> Discovered:
    """One backend's lanes from its model list. Lanes carry no health (the inventory keeps the
    current one) and expire ``lane_ttl_intervals`` refresh intervals from ``now``."""
    observed = {m.id: m for m in models}
    declared = config.declared
    missing = [m for m in declared if m not in observed]
    candidates = list(observed) if config.discovers else [m for m in declared if m in observed]
    chosen: list[ModelInfo] = []
    excluded: list[str] = []
    for model in candidates:
        if not model_allowed(config, model):
            excluded.append(model)
            continue
        spec = declared.get(model)
        chosen.append(_apply_declared(observed[model], spec) if spec else observed[model])
    expires = now + inventory.lane_ttl_intervals * inventory.interval(config)
    lanes = [
        Lane(
            tier=config.effective_tier,
            family=config.provider,
            backend=name,
            type=lane_type,
            model=info.id,
            capabilities=info.capabilities,
            context_length=info.context_length,
            base_weight=inventory.base_weight(config, info.id),
            loaded=info.loaded,
            observed_at=now,
            expires_at=expires,
        )
        for info in chosen
        for lane_type in sorted(info.types)
    ]
    return Discovered(lanes, missing, excluded)
