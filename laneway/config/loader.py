"""Load and validate the YAML config, with errors that name the key, the file and the line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from laneway.config.schema import Settings
from laneway.errors import ConfigError

Marks = dict[tuple[str | int, ...], int]


class _MarkingLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key and sequence item."""


def _compose_marks(node: yaml.Node, path: tuple[str | int, ...], marks: Marks) -> None:
    marks.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            marks[(*path, key)] = key_node.start_mark.line + 1
            _compose_marks(value_node, (*path, key), marks)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _compose_marks(item, (*path, i), marks)


def parse_yaml(text: str, source: str) -> tuple[Any, Marks]:
    try:
        node = yaml.compose(text, Loader=_MarkingLoader)
    except yaml.YAMLError as exc:
        line = None
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            line = mark.line + 1
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=source, line=line) from None
    if node is None:
        return {}, {}
    marks: Marks = {}
    _compose_marks(node, (), marks)
    data = yaml.load(text, Loader=yaml.SafeLoader)
    return data, marks


def _line_for(loc: tuple[str | int, ...], marks: Marks) -> int | None:
    # pydantic adds union-member names to loc (e.g. 'str', 'SelectorConfig'); walk back to a known path.
    for end in range(len(loc), -1, -1):
        if loc[:end] in marks:
            return marks[loc[:end]]
    return None


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    return tuple(
        p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or p in ("str", "list[...]", "[key]")))
    )


def settings_from_data(data: Any, *, source: str, marks: Marks | None = None) -> Settings:
    marks = marks or {}
    if not isinstance(data, dict):
        raise ConfigError(
            "the top level must be a mapping (server, storage, auth, backends, routes)", file=source
        )
    try:
        settings = Settings.model_validate({**data, "source": source})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = _clean_loc(tuple(first["loc"]))
        key = ".".join(str(p) for p in loc) or None
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(msg, key=key, file=source, line=_line_for(loc, marks)) from None
    from laneway.routing.selectors import validate_routes

    validate_routes(settings, marks=marks)
    return settings


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Read ``path`` (or ``$LANEWAY_CONFIG``); with neither, the defaults (no backends)."""
    path = path or os.environ.get("LANEWAY_CONFIG")
    if not path:
        return Settings()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(p)) from None
    data, marks = parse_yaml(text, str(p))
    return settings_from_data(data, source=str(p), marks=marks)
