"""The packages of `antibody` import only the packages below them: the allowed edges are a
table here, and a new edge (an arrow up the layers, or a shortcut nobody decided on) fails
until the table says why it is there."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "antibody"

# package -> the packages it may import (lazily inside functions too: a cycle is a cycle)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),  # the error types: imports nothing of ours
    "infra": {"errors"},  # files, progress bars
    "config": {"errors", "infra"},
    "models": {"config"},
    "data": {"config", "infra", "models"},
    "methods": {"config", "data", "models"},
    "evaluation": {"config", "data", "infra", "models"},
    "app": {"config", "data", "evaluation", "infra", "methods", "models"},
    "cli": {"app"},
    "__main__": {"cli"},
}


def package_edges() -> dict[str, set[str]]:
    """Every `antibody.<package>` each package imports, from the source (no import runs)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).parts
        package = parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")
                if top[0] == "antibody" and len(top) > 1 and top[1] != package:
                    edges[package].add(top[1])
    return dict(edges)


def test_every_package_imports_only_what_the_table_allows():
    edges = package_edges()
    new = {pkg: sorted(targets - ALLOWED.get(pkg, set())) for pkg, targets in edges.items()}
    assert not {pkg: t for pkg, t in new.items() if t}, f"edges the table does not allow: {new}"
    # and the table holds no edge the code no longer has (it stays the map of the code)
    stale = {pkg: sorted(allowed - edges.get(pkg, set())) for pkg, allowed in ALLOWED.items()}
    assert not {pkg: t for pkg, t in stale.items() if t}, f"edges allowed but unused: {stale}"


def test_the_edge_scan_sees_lazy_imports_and_the_bottom_imports_nothing():
    edges = package_edges()
    assert "errors" not in edges  # antibody/errors.py imports nothing of ours
    assert "models" in edges["data"]  # only inside functions (the cache root, an upload's tokenizer)
