"""The package's layout rules (issue 13, CONTRIBUTING.md): no import circles between bench's
modules (function-level imports included), no private name of one module used by another, and
the concept tables importable without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bench"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the bench modules it imports (anywhere in its body, ``__import__`` too)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                graph[name] |= {t for t in [node.module, *(f"{node.module}.{a.name}"
                                                          for a in node.names)] if t in found}
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in found}
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id == "__import__" and node.args
                  and isinstance(node.args[0], ast.Constant) and node.args[0].value in found):
                graph[name].add(node.args[0].value)  # bench.cli's sub-command parsers
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    assert cycles(import_graph(modules())) == []


def test_the_cycle_check_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def private_uses(found: dict[str, Path]) -> list[str]:
    """``from bench.x import _name`` and ``module._name`` of a bench module, outside it."""
    problems = []
    for name, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}  # local name -> bench module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in found:
                for a in node.names:
                    target = f"{node.module}.{a.name}"
                    if target in found:
                        aliases[a.asname or a.name] = target
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        problems.append(f"{name}: from {node.module} import {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in found and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__") and aliases[node.value.id] != name):
                problems.append(f"{name}: {node.value.id}.{node.attr}")
    return problems


def test_no_private_names_across_modules() -> None:
    assert private_uses(modules()) == []


def test_tables_and_analysis_import_without_torch() -> None:
    code = ("import sys; import bench.evaluate.metric_table, bench.setting_kinds, bench.keys, "
            "bench.analysis.tables, bench.analysis.audit, bench.analysis.load; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "False"
