"""The package's import graph has no cycle: no module of `ect_scale` imports (directly or through others) a module
that imports it back. Every import counts, at module level, inside functions and under `TYPE_CHECKING` alike:
each is a dependency of the design, even when it is lazy. `import a.b.c` and `from a.b import c` point at the
module they name (`a.b.c`, or `a.b` when `c` is not a module); the implicit import of a parent package's
`__init__` is not counted (see docs/ARCHITECTURE.md, "Dependencies")."""

from __future__ import annotations

import ast
import os

from tests.conftest import REPO

PACKAGE = "ect_scale"


def _modules() -> dict[str, str]:
    """Module name -> file path for every module of the package."""
    root = os.path.join(REPO, PACKAGE)
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), REPO)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(folder, name)
    return out


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """The package modules that `module` imports anywhere in its source."""
    is_package = path.endswith("__init__.py")
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {m for m in found if m in known and m != module}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done.
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_walker_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_covers_the_package():
    graph = import_graph()
    assert "ect_scale.trainer" in graph and "ect_scale.checkpoint.checkpointer" in graph
    assert "ect_scale.checkpoint.checkpointer" in graph["ect_scale.checkpoint"]  # Relative and absolute forms.
    assert "ect_scale.engine" in graph["ect_scale.trainer"]


def test_package_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
