"""Route selectors: ``[backend-glob/]model-glob[@effort]`` or a mapping over tier, provider,
backend and model (each a glob). A route is an ordered chain of selectors and may not name
another route.

The syntax belongs to the config (a file that loads has selectors that parse); routing matches
them against lanes (``laneway.routing.resolve``), which is why ``matches`` asks only for the four
fields a selector reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Protocol, get_args

from laneway.config.loader import closest, did_you_mean
from laneway.config.schema import Family, SelectorConfig, TierName
from laneway.errors import ConfigError

if TYPE_CHECKING:
    from laneway.config.loader import Marks
    from laneway.config.schema import Settings

EFFORTS = ("low", "medium", "high")
FAMILIES: tuple[str, ...] = get_args(Family)
TIERS: tuple[str, ...] = get_args(TierName)
_GLOB_CHARS = set("*?[")


class Matchable(Protocol):
    """What a selector matches: a lane's fields (``laneway.inventory.lanes.Lane``)."""

    @property
    def model(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def tier(self) -> str: ...
    @property
    def family(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Selector:
    model: str = "*"
    backend: str | None = None
    tier: str | None = None
    provider: str | None = None
    effort: str | None = None

    def matches(self, lane: Matchable) -> bool:
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


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a selector is written: its key, and the file and line, for messages."""

    key: str
    file: str | None
    line: int | None

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, key=self.key, file=self.file, line=self.line)

    def warning(self, message: str) -> str:
        where = self.file + (f":{self.line}" if self.line else "") + ", " if self.file else ""
        return f"config warning in {where}key '{self.key}': {message}"


def _selectors(settings: Settings, marks: Marks) -> Iterator[tuple[str, _Place, list[str | SelectorConfig]]]:
    """Each route's name, where it is written and its selectors."""
    roles = settings.defaults.routes()
    for name, specs in settings.routes.items():
        section = "defaults" if name in roles else "routes"  # role routes are written under defaults
        yield name, _Place(f"{section}.{name}", settings.source, marks.get((section, name))), list(specs)


def _item(route: _Place, i: int, marks: Marks) -> _Place:
    section, _, name = route.key.partition(".")
    return _Place(f"{route.key}[{i}]", route.file, marks.get((section, name, i)) or route.line)


def validate_routes(
    settings: Settings, *, marks: Marks | None = None, extra_backends: frozenset[str] = frozenset()
) -> None:
    """Reject at load time what would only fail at request time: bad selectors, empty routes,
    a route that names another route (routes do not nest), and a ``provider`` or ``tier`` that
    no lane can ever have (those sets are closed: a typo, said with "did you mean")."""
    marks = marks if marks is not None else settings._marks
    backend_names = frozenset(settings.backends) | extra_backends
    for name, route, specs in _selectors(settings, marks):
        if not specs:
            raise route.error("a route needs at least one selector")
        for i, spec in enumerate(specs):
            where = _item(route, i, marks)
            try:
                sel = parse_selector(spec, backend_names)
            except ValueError as exc:
                raise where.error(str(exc)) from None
            if sel.backend is None and not (_GLOB_CHARS & set(sel.model)) and sel.model in settings.routes:
                raise where.error(
                    f"route '{name}' names route '{sel.model}'; routes may not name other routes "
                    "(list that route's selectors here instead)"
                )
            for field, known in (("provider", FAMILIES), ("tier", TIERS)):
                glob = getattr(sel, field)
                if glob is not None and not any(fnmatchcase(value, glob) for value in known):
                    raise where.error(
                        f"{field} '{glob}' matches no {field}{did_you_mean(glob, known)} "
                        f"(one of {', '.join(known)})"
                    )


def route_warnings(settings: Settings, backend_names: frozenset[str]) -> list[str]:
    """What may be a typo but may also come right while running, one line each: a selector whose
    backend matches none of ``backend_names`` (the config's and the database's), and a string
    selector whose part before ``/`` is nearly a backend's name (it is then read as a model name).

    Warnings, not errors: the set of backends is open. ``laneway backends add`` declares one
    while the gateway runs and publishers register their own names at any time, so a selector
    that matches nothing at start may match a minute later; refusing to start would make the
    order of operations matter and take every route down on a restart."""
    marks = settings._marks
    found: list[str] = []
    for _name, route, specs in _selectors(settings, marks):
        for i, spec in enumerate(specs):
            sel = parse_selector(spec, backend_names)
            where = _item(route, i, marks)
            if sel.backend is not None and not any(fnmatchcase(b, sel.backend) for b in backend_names):
                found.append(
                    where.warning(
                        f"backend '{sel.backend}' matches no declared backend"
                        f"{did_you_mean(sel.backend, backend_names)}; the selector serves nothing until "
                        "one is added (laneway backends add) or a publisher of that name registers"
                    )
                )
            elif isinstance(spec, str) and sel.backend is None and "/" in sel.model:
                # Model names hold '/' (meta-llama/llama-3.1-8b): only a glob, or a near miss of a
                # declared name, before the '/' looks like a backend that is not there.
                head, _, rest = spec.strip().partition("/")
                close = closest(head, backend_names)
                if close or _GLOB_CHARS & set(head):
                    hint = f" (did you mean '{close}/{rest}'?)" if close else ""
                    found.append(
                        where.warning(
                            f"'{head}' matches no declared backend, so '{spec}' is read as a model name{hint}"
                        )
                    )
    return found
