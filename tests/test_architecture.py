"""The house rules that keep laneway readable, checked on every run (issue 12): small modules and
functions where the request path lives, no import cycle between packages, SSE framed and parsed
in one codec, and one publisher protocol both sides import. Each check names what breaks it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "laneway"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# The packages the request path and the relay live in: their functions stay short.
SHORT_FUNCTIONS = ("routing", "pools", "virtual", "api", "providers", "signals", "inventory", "dialects")


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "migrations" not in p.parts)


def _package(path: Path) -> str | None:
    """The package a module belongs to (``routing``), or None for a top-level module."""
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else None


def _unit(path: Path) -> str:
    """What import cycles are counted between: a package, or a top-level module."""
    return _package(path) or path.stem


def test_no_module_over_500_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}, f"split these modules (lines): {long}"


def test_no_function_over_60_lines_on_the_request_path() -> None:
    long = {}
    for path in _modules():
        if _package(path) not in SHORT_FUNCTIONS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert long == {}, f"split these functions (lines): {long}"


def _imports() -> dict[str, dict[str, str]]:
    """unit -> {imported unit: a file that imports it}; every import counts, lazy or for typing."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for path in _modules():
        here = _unit(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == "laneway":
                    names = [f"laneway.{alias.name}" for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "laneway" and len(parts) > 1 and parts[1] != here:
                    graph[here].setdefault(parts[1], str(path.relative_to(ROOT)))
    return graph


def test_no_import_cycle_between_packages() -> None:
    graph = _imports()
    cycles = []

    def visit(unit: str, trail: list[str]) -> None:
        for nxt in graph.get(unit, {}):
            if nxt == trail[0]:
                cycles.append(" -> ".join([*trail, nxt]))
            elif nxt not in trail and nxt > trail[0]:  # each cycle once, from its smallest unit
                visit(nxt, [*trail, nxt])

    for unit in sorted(graph):
        visit(unit, [unit])
    shown = [f"{c} (first edge in {graph[c.split(' -> ')[0]][c.split(' -> ')[1]]})" for c in cycles]
    assert shown == [], "import cycles between packages:\n" + "\n".join(shown)


def test_sse_is_framed_and_parsed_only_by_the_codec() -> None:
    """Outside ``laneway/sse.py`` nothing writes ``data:``/``event:`` lines or cuts on blank lines.
    The sim frames its own on purpose: it stands in for the real upstreams, and a codec bug it
    shared would be invisible to the tests."""
    markers = (b'b"data: ', b'b"event: ', b'b"\\n\\n"', b'b"\\r\\n\\r\\n"', b'b"data:"', b'b"event:"')
    found = []
    for path in _modules():
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "sim" or rel == Path("sse.py"):
            continue
        text = path.read_bytes()
        found += [f"{rel}: {m.decode()}" for m in markers if m in text]
    assert found == [], "frame or parse SSE with laneway.sse: " + ", ".join(found)


def test_one_publisher_protocol_module_both_sides_import() -> None:
    """The gateway's side (``virtual/``) and the publisher's (``publisher/``) speak through the
    models of ``laneway.publishing.protocol``, which imports neither."""
    users = {"virtual": False, "publisher": False}
    for path in _modules():
        package = _package(path)
        if package in users and b"laneway.publishing.protocol import" in path.read_bytes():
            users[package] = True
    assert users == {"virtual": True, "publisher": True}
    assert not {"virtual", "publisher"} & set(_imports().get("publishing", {}))
