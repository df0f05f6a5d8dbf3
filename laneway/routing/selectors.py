"""Route selectors: ``[backend-glob/]model-glob[@effort]`` or a mapping over tier, provider,
backend and model (each a glob). A route is an ordered chain of selectors and may not name
another route."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from laneway.config.schema import SelectorConfig
from laneway.errors import ConfigError
from laneway.inventory.lanes import Lane

if TYPE_CHECKING:
    from laneway.config.loader import Marks
    from laneway.config.schema import Settings

EFFORTS = ("low", "medium", "high")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True, slots=True)
class Selector:
    model: str = "*"
    backend: str | None = None
    tier: str | None = None
    provider: str | None = None
    effort: str | None = None

    def matches(self, lane: Lane) -> bool:
        return (
            fnmatchcase(lane.model, self.model)
            and (self.backend is None or fnmatchcase(lane.backend, self.backend))
            and (self.tier is None or fnmatchcase(lane.tier, self.tier))
            and (self.provider is None or fnmatchcase(lane.family, self.provider))
        )

    def __str__(self) -> str:
        text = f"{self.backend}/{self.model}" if self.backend else self.model
        extra = [f"{k}={v}" for k, v in (("tier", self.tier), ("provider", self.provider)) if v]
        return text + (f"@{self.effort}" if self.effort else "") + (f" [{', '.join(extra)}]" if extra else "")


def parse_selector(spec: str | SelectorConfig, backend_names: frozenset[str]) -> Selector:
    """Parse one selector. In the string form the part before the first ``/`` is a backend glob
    only if it matches a declared backend; otherwise the whole string is a model glob (model names
    such as ``meta-llama/llama-3.1-8b`` contain ``/``). The mapping form is never ambiguous."""
    if isinstance(spec, SelectorConfig):
        return Selector(
            model=spec.model, backend=spec.backend, tier=spec.tier, provider=spec.provider, effort=spec.effort
        )
    text = spec.strip()
    if not text:
        raise ValueError("a selector may not be empty")
    effort = None
    if "@" in text:
        text, _, effort = text.rpartition("@")
        if effort not in EFFORTS:
            raise ValueError(f"unknown reasoning effort '@{effort}' (use @low, @medium or @high)")
    backend = None
    head, sep, rest = text.partition("/")
    if sep and rest and any(fnmatchcase(name, head) for name in backend_names):
        backend, text = head, rest
    return Selector(model=text, backend=backend, effort=effort)


def parse_routes(settings: Settings, backend_names: frozenset[str]) -> dict[str, tuple[Selector, ...]]:
    return {
        name: tuple(parse_selector(s, backend_names) for s in specs)
        for name, specs in settings.routes.items()
    }


def validate_routes(
    settings: Settings, *, marks: Marks | None = None, extra_backends: frozenset[str] = frozenset()
) -> None:
    """Reject at load time what would only fail at request time: bad selectors, empty routes,
    and a route that names another route (routes do not nest)."""
    marks = marks or {}
    backend_names = frozenset(settings.backends) | extra_backends
    roles = settings.defaults.routes()
    for name, specs in settings.routes.items():
        section = "defaults" if name in roles else "routes"  # role routes are written under defaults
        if not specs:
            raise ConfigError(
                "a route needs at least one selector",
                key=f"{section}.{name}",
                file=settings.source,
                line=marks.get((section, name)),
            )
        for i, spec in enumerate(specs):
            where = {
                "key": f"{section}.{name}[{i}]",
                "file": settings.source,
                "line": marks.get((section, name, i)) or marks.get((section, name)),
            }
            try:
                sel = parse_selector(spec, backend_names)
            except ValueError as exc:
                raise ConfigError(str(exc), **where) from None  # type: ignore[arg-type]
            if sel.backend is None and not (_GLOB_CHARS & set(sel.model)) and sel.model in settings.routes:
                raise ConfigError(
                    f"route '{name}' names route '{sel.model}'; routes may not name other routes "
                    "(list that route's selectors here instead)",
                    **where,  # type: ignore[arg-type]
                )
