"""The package's shape, checked from its source with `ast` (nothing is imported, so nothing runs).

1. No import circles among the modules under `service/`. Every import statement counts, wherever it
   stands: at the top, inside a function (a "lazy" import only moves the circle to the first call), in a
   `try`, and under `if TYPE_CHECKING:`. A circle through a TYPE_CHECKING import is still a circle for
   mypy and for a reader, and it turns into a run-time one the day the name is needed at run time, so
   those count too (a module that only needs a type for an annotation can take a Protocol instead).
   Edges are the imports written down: `from service.pkg import name` goes to `service.pkg` (its
   `__init__`), or to `service.pkg.name` when that is a module; the package `__init__` Python runs
   before a submodule is not an edge (a package re-exporting its own modules is no circle).
2. The model layer (`service/language/*`, `service/digits/*`, except each folder's `router.py` and
   `schemas.py`) imports nothing from fastapi, starlette or `service.errors`: it raises its own
   exceptions and `service/errors.py` maps them to HTTP.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "service"
MODEL_LAYERS = ("language", "digits", "inspect")
HTTP_SIDE_FILES = {"router.py", "schemas.py"}
HTTP_MODULES = ("fastapi", "starlette", "service.errors")


@dataclass(frozen=True)
class Import:
    """One imported module, resolved to its absolute dotted name, and where the import is written."""

    target: str
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (a folder under `root`), by dotted name."""
    return {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every module this file imports, at any depth of its syntax tree; relative imports resolved."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from pkg import name` only pkg.
            submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known]
            if len(submodules) < len(node.names):
                found.append(Import(source, node.lineno))
            found.extend(Import(sub, node.lineno) for sub in submodules)
    return found


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module of the same package: line of the first such import}."""
    modules = package_modules(root, package)
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for imp in imports_of(name, path, known):
            if imp.target in known and imp.target != name:
                edges.setdefault(imp.target, imp.line)
            elif imp.target == name:
                edges[name] = imp.line  # a module importing itself
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One circle (first module repeated at the end) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, {})):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, {}):
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest circle through the group's first module, staying inside the group (breadth-first)."""
    members = set(group)
    start = group[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if succ in members and succ not in parents:
                    parents[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no circle found in strongly connected group {group}")


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} imports {b} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def http_imports(root: Path, package: str) -> list[str]:
    """`file:line imports X` for each fastapi / starlette / service.errors import in the model layer."""
    modules = package_modules(root, package)
    known = set(modules)
    found = []
    for name, path in modules.items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in MODEL_LAYERS or path.name in HTTP_SIDE_FILES:
            continue
        for imp in imports_of(name, path, known):
            if any(imp.target == banned or imp.target.startswith(banned + ".") for banned in HTTP_MODULES):
                found.append(f"{path.relative_to(root)}:{imp.line} imports {imp.target}")
    return found


# --- the checks --------------------------------------------------------------------------------


def test_service_has_no_import_cycles() -> None:
    graph = import_graph(ROOT, PACKAGE)
    assert len(graph) > 40, "the graph should cover every module under service/"
    cycles = find_cycles(graph)
    assert not cycles, "import circles under service/:\n" + "\n".join(describe_cycle(c, graph) for c in cycles)


def test_model_layer_imports_no_http() -> None:
    found = http_imports(ROOT, PACKAGE)
    assert not found, "the model layer must not import the HTTP layer:\n" + "\n".join(found)


# --- the checker itself finds what it should -----------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_circles_through_function_type_checking_and_relative_imports_are_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import thing\n",  # re-exporting a submodule: no circle
            "pkg/a.py": "import pkg.b\nthing = 1\n",
            "pkg/b.py": "def late():\n    from .sub import c\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import thing\n",
            "pkg/d.py": "from pkg import a\n",  # `from package import module` is an edge to the module
            "pkg/e.py": "from . import d\nfrom pkg import thing\n",  # a name from the package: an edge to pkg
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.c"] == {"pkg.a": 3}
    assert graph["pkg.d"] == {"pkg.a": 1}
    assert graph["pkg.e"] == {"pkg.d": 1, "pkg": 2}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    assert "pkg.sub.c imports pkg.a (line 3)" in describe_cycle(find_cycles(graph)[0], graph)


def test_a_module_importing_itself_is_a_circle(tmp_path: Path) -> None:
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "def f():\n    import pkg.a\n", "pkg/b.py": "import pkg.a\n"})
    assert find_cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.a"]]


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        (
            "digits/model.py",
            "def f():\n    from service.errors import InvalidInput\n",
            "service/digits/model.py:2 imports service.errors",
        ),
        (
            "language/engine.py",
            "from starlette.requests import Request\n",
            "service/language/engine.py:1 imports starlette.requests",
        ),
        ("digits/jobs.py", "from ..errors import ServiceError\n", "service/digits/jobs.py:1 imports service.errors"),
        ("language/model.py", "import fastapi\n", "service/language/model.py:1 imports fastapi"),
    ],
)
def test_http_imports_in_the_model_layer_are_found(tmp_path: Path, name: str, source: str, expected: str) -> None:
    _write(tmp_path, {"service/__init__.py": "", "service/errors.py": "", f"service/{name}": source})
    _write(
        tmp_path, {"service/digits/router.py": "import fastapi\n", "service/language/schemas.py": "import fastapi\n"}
    )
    assert http_imports(tmp_path, "service") == [expected]
