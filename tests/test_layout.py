"""The shape of the package: rooms import downwards only (no import circle, lazy imports included),
converters and engines never import the harness, and no module grows past what a person reads at once."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deploybench"
MAX_LINES = 420  # "about 400": a module past that is two modules


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every deploybench module ``path`` imports, at the top or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {t for t in found if t.startswith("deploybench")}


def _room(module: str) -> str:
    """deploybench.harness.pipeline.worker -> deploybench.harness.pipeline; deploybench.models.x -> deploybench.models."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "harness":
        return ".".join(parts[:3]) if len(parts) > 3 or (PACKAGE / "harness" / parts[2]).is_dir() else \
            "deploybench.harness"
    return ".".join(parts[:2])


def _room_graph() -> dict[str, set[str]]:
    known = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _room(_module_name(path))
        for target in _imports(path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and _room(target) != source and target != "deploybench":
                graph.setdefault(source, set()).add(_room(target))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one room (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_between_rooms():
    assert _cycles(_room_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_converters_and_engines_never_import_the_harness():
    graph = _room_graph()
    for room in ("deploybench.converters", "deploybench.engines", "deploybench.models", "deploybench.tasks"):
        assert not [t for t in graph.get(room, ()) if t.startswith("deploybench.harness")], room


def test_no_module_is_past_about_400_lines():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
