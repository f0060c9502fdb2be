"""The import graph of `app/` agrees with README's layers: no circle, no arrow upwards.

Layers, lowest first: `app.core` (settings, errors, clients, processes), the record contract
(`app.schemas`), the hops' logic (`app.pipeline`, `app.lake`, `app.analysis`), the services
(`app.infra`: runners and bootstrap), the figures `task status` and the console share
(`app.figures`), then the entry points (API, generator, Airflow runner, status, console). A
module may import its own layer or lower ones, never a higher one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from app.core.config import ROOT

LAYERS = [
    ("app.core",),
    ("app.schemas",),
    ("app.pipeline", "app.lake", "app.analysis"),
    ("app.infra",),
    ("app.figures",),
    (
        "app.api",
        "app.generator",
        "app.airflow_runner",
        "app.airflow_cli",
        "app.housekeeping",
        "app.status",
    ),
    ("app.console",),
]


def layer(module: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to README's layout")


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / "app").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if name != "app":  # the package itself holds nothing
            yield name, path


def imports(path: Path) -> set[str]:
    """Every `app.*` module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("app")}
    return found


def graph() -> dict[str, set[str]]:
    known = dict(modules())
    edges = {}
    for name, path in known.items():
        # `from app.x import y` where y is a module counts as importing app.x.y.
        edges[name] = {m for m in imports(path) if m in known or m.rsplit(".", 1)[0] in known}
        edges[name] = {m if m in known else m.rsplit(".", 1)[0] for m in edges[name]} - {name}
    return edges


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert upward == []


def test_there_is_no_import_circle() -> None:
    edges = graph()
    circles = []
    for start in edges:
        # Depth-first from each module: reaching it again is a circle.
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    circles.append(" -> ".join((*path, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
    assert circles == []
