"""A value that fits a JSON schema, for the sim's tool arguments and JSON answers.

A real model under constrained decoding (OpenAI's structured outputs, Ollama's ``format``, a
forced tool) answers with JSON its schema accepts; clients such as instructor and pydantic-ai
validate it against their models. So the sim must too, deterministically: ``fill`` gives the
first value the schema allows. Objects get their required properties (all of them when none
are listed as required but ``additionalProperties`` is false, as strict schemas say), strings
"sim" (or the first enum value, or a value of a known ``format``), numbers their minimum (or 1),
arrays ``minItems`` items (at least one), and ``anyOf``/``oneOf`` their first branch that is not
null. ``$ref`` to ``#/$defs/...`` and ``#/definitions/...`` is followed (a recursive schema stops
at a depth where it may: an optional property is left out, an array left empty).
"""

from __future__ import annotations

import json
from typing import Any

_MAX_DEPTH = 8
_FORMATS = {
    "date": "2025-01-01",
    "date-time": "2025-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "sim@example.com",
    "uri": "https://example.com/sim",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def fill(schema: Any) -> Any:
    """The sim's value for ``schema`` (``{}`` or a non-schema: an empty object)."""
    if not isinstance(schema, dict) or not schema:
        return {}
    return _value(schema, schema, 0)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    for _ in range(_MAX_DEPTH):
        if not isinstance(ref, str) or not ref.startswith("#/"):
            break
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            break
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        ref = target.get("$ref")
    return schema


def _type_of(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        return str(kinds[0]) if kinds else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


def _value(schema: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return next((v for v in enum if v is not None), enum[0])
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return _value(_branch(branches, root), root, depth + 1)
    every = schema.get("allOf")
    if isinstance(every, list) and every:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in every:
            if isinstance(part, dict):
                merged = _merge(merged, _resolve(part, root))
        return _value(merged, root, depth + 1)
    return _typed(schema, root, depth)


def _branch(branches: list[Any], root: dict[str, Any]) -> dict[str, Any]:
    """The first branch that is not ``null`` (a model fills in what an Optional field holds)."""
    schemas = [_resolve(b, root) for b in branches if isinstance(b, dict)]
    for branch in schemas:
        if branch.get("type") != "null":
            return branch
    return schemas[0] if schemas else {}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {**a, **b}
    if isinstance(a.get("properties"), dict) and isinstance(b.get("properties"), dict):
        out["properties"] = {**a["properties"], **b["properties"]}
    if "required" in a or "required" in b:
        out["required"] = [*(a.get("required") or []), *(b.get("required") or [])]
    return out


def _typed(schema: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
    kind = _type_of(schema)
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "sim"  # a schema that says nothing of its type accepts a string


def _object(schema: dict[str, Any], root: dict[str, Any], depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    if isinstance(required, list):
        names = [n for n in required if isinstance(n, str) and n in properties]
    else:
        names = list(properties) if schema.get("additionalProperties") is False else []
    out: dict[str, Any] = {}
    for name in names:
        spec = properties[name]
        if isinstance(spec, dict):
            out[name] = _value(spec, root, depth + 1) if depth < _MAX_DEPTH else _shallow(spec, root)
    return out


def _shallow(schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """Past the depth limit: the smallest value the schema's type allows."""
    kind = _type_of(_resolve(schema, root))
    return {"object": {}, "array": [], "integer": 0, "number": 0, "boolean": False, "null": None}.get(
        kind or "", ""
    )


def _array(schema: dict[str, Any], root: dict[str, Any], depth: int) -> list[Any]:
    items = schema.get("items")
    least = schema.get("minItems")
    count = least if isinstance(least, int) and least > 0 else 1
    if depth >= _MAX_DEPTH or not isinstance(items, dict):
        return [] if not isinstance(least, int) or least <= 0 else ["sim"] * least
    return [_value(items, root, depth + 1) for _ in range(count)]


def _string(schema: dict[str, Any]) -> str:
    known = _FORMATS.get(str(schema.get("format")))
    if known is not None:
        return known
    text = "sim"
    least = schema.get("minLength")
    if isinstance(least, int) and least > len(text):
        text = text * (least // len(text) + 1)
    most = schema.get("maxLength")
    if isinstance(most, int) and most >= 0:
        text = text[:most]
    return text


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    value: float = 1
    for key, step in (("minimum", 0), ("exclusiveMinimum", 1)):
        bound = schema.get(key)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            value = bound + step
    most = schema.get("maximum")
    if isinstance(most, int | float) and not isinstance(most, bool) and value > most:
        value = most
    return int(value) if integer else value


def json_text(schema: Any) -> str:
    """``fill(schema)`` as the text of an answer, spaced as a model writes it (the sim's tokens
    are whitespace-separated words, so a stream of it comes in several pieces)."""
    return json.dumps(fill(schema))


def output_schema(kind: Any, schema: Any) -> dict[str, Any] | None:
    """The schema a JSON answer must fit, from a request's ask: OpenAI's ``response_format`` type
    and ``json_schema.schema``, or Ollama's ``format`` ("json" or a schema). ``{}``: any object;
    None: no JSON asked for."""
    if kind in ("json_object", "json"):
        return {}
    if kind == "json_schema" or kind == "schema":
        return schema if isinstance(schema, dict) else {}
    return None
