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
                return path[path.index(nxt) :] + [nxt]
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
    assert "ect_scale.train.trainer" in graph and "ect_scale.checkpoint.checkpointer" in graph
    assert "ect_scale.checkpoint.checkpointer" in graph["ect_scale.checkpoint"]  # Relative and absolute forms.
    assert "ect_scale.engine.zero" in graph["ect_scale.train.trainer"]


# The wings of the package, bottom floor first. A wing may import only wings on lower floors (docs/ARCHITECTURE.md).
FLOORS = [
    ["runtime"],
    ["config"],
    ["networks", "data"],
    ["ect"],
    ["precision", "eval", "edm2_import", "toy"],
    ["engine"],
    ["checkpoint"],
    ["train"],
    ["scaling"],
]


def wing_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def wing_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """wing -> the other wings it imports."""
    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        out.setdefault(wing_of(a), set()).update(wing_of(b) for b in targets if wing_of(b) != wing_of(a))
    return out


def test_every_module_lives_in_a_wing_and_wings_only_import_downwards():
    graph = import_graph()
    floor = {w: i for i, ws in enumerate(FLOORS) for w in ws}
    loose = sorted(m for m in graph if m != "ect_scale" and wing_of(m) not in floor)
    assert not loose, f"modules outside the declared wings (add them to a wing, or the wing to FLOORS): {loose}"
    up = sorted(
        f"{a} -> {b}"
        for a, bs in graph.items()
        for b in bs
        if a != "ect_scale" and floor[wing_of(b)] >= floor[wing_of(a)] and wing_of(a) != wing_of(b)
    )
    assert not up, "imports that go sideways or up a floor: " + "; ".join(up)
    assert find_cycle(wing_graph(graph)) is None


def test_package_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_private_name_of_another():
    """`from ect_scale.a import _helper` couples two modules through a name one of them calls private."""
    root = os.path.join(REPO, PACKAGE)
    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE) and node.module != module:
                found += [f"{module}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert os.path.isdir(root) and not found, found
