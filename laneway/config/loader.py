"""Load and validate the YAML config, with errors that name the key, the file and the line."""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from laneway.config.schema import Settings
from laneway.errors import ConfigError

Marks = dict[tuple[str | int, ...], int]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` that ``word`` was most likely meant to be (``base-url``:
    ``base_url``), or None when none is close."""
    options = sorted(set(choices))
    normal = word.lower().replace("-", "_")
    close = [normal] if normal in options else difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'base_url'?)`` for the closest of ``choices``, or nothing."""
    close = closest(word, choices)
    return f" (did you mean '{close}'?)" if close else ""


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
        first = _first_error(exc.errors(), marks)
        loc = _clean_loc(tuple(first["loc"]))
        key = ".".join(str(p) for p in loc) or None
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = _unknown_key(loc)
        raise ConfigError(msg, key=key, file=source, line=_line_for(loc, marks)) from None
    from laneway.config.selectors import validate_routes  # it imports this module's helpers

    validate_routes(settings, marks=marks)
    settings._marks = marks  # for what is checked later, at start (selectors against the database)
    return settings


def _first_error(errors: list[ErrorDetails], marks: Marks) -> ErrorDetails:
    """The error to show: an unknown key before anything else, since it usually explains the
    rest (``base-url:`` also makes ``base_url`` "required"), the first in the file; else
    pydantic's first."""
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if not unknown:
        return errors[0]
    return min(unknown, key=lambda e: _line_for(_clean_loc(tuple(e["loc"])), marks) or 0)


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    known = _fields_at(loc[:-1])
    word = str(loc[-1]) if loc else ""
    hint = did_you_mean(word, known)
    if not hint and known:
        hint = f" (this section takes: {', '.join(sorted(known))})"
    return f"unknown key '{word}'{hint}"


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """The field names of the config section at ``loc`` (``("backends", "gpu-1")``: a backend's)."""
    tp: Any = Settings
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return []
    return [name for c in _members(tp) if _is_model(c) for name in c.model_fields if name != "source"]


def _members(tp: Any) -> list[Any]:
    """The types a value of ``tp`` may be: Annotated unwrapped, unions and optionals split."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [tp]


def _step(tp: Any, part: str | int) -> Any:
    for member in _members(tp):
        if _is_model(member) and isinstance(part, str) and part in member.model_fields:
            return member.model_fields[part].annotation
        if get_origin(member) is dict and isinstance(part, str):
            return get_args(member)[1]
        if get_origin(member) is list and isinstance(part, int):
            return get_args(member)[0]
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


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
