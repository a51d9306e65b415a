"""How the package's modules depend on each other, read from the source with ``ast`` (nothing is imported).

- The import graph of ``src/image_classification`` is a DAG: every ``import`` statement counts,
  at module level or inside a function, so a circle cannot hide behind an import in a function.
- Code outside ``pipelines/`` does not import from ``image_classification.pipelines``: a pipeline's
  nodes orchestrate shared modules, never the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "image_classification"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE
PIPELINES = f"{PACKAGE}.pipelines"
# the command line lists the pipeline folders to name them in its errors; it is an entry point, as
# pipeline_registry.py is, not code the pipelines use
ENTRY_POINTS = {f"{PACKAGE}.cli"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, whether it is a package's ``__init__``)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


MODULES = _modules()


def _known(name: str) -> str | None:
    """The package module ``name`` is, or is an attribute of (``a.b.func`` -> ``a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(module: str) -> list[tuple[str, int]]:
    """(dotted name, line) of everything ``module`` imports, wherever the statement is.

    ``from a.b import c`` imports ``a.b.c`` where that is a module, else ``a.b``; relative imports
    are resolved against the module's package.
    """
    path, is_package = MODULES[module]
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.append((submodule if submodule in MODULES else base, node.lineno))
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    graph = {}
    for module in MODULES:
        targets = {_known(name) for name, _ in imported_names(module) if name.split(".")[0] == PACKAGE}
        graph[module] = {target for target in targets if target and target != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None for a DAG."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_is_found_and_its_graph_has_edges():
    graph = import_graph()
    assert f"{PACKAGE}.runtime.fast_path" in graph
    assert f"{PACKAGE}.runtime.parity" in graph[f"{PACKAGE}.runtime.fast_path"]


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("module", sorted(name for name in MODULES if not name.startswith(PIPELINES)
                                          and name not in ENTRY_POINTS))
def test_shared_code_does_not_import_a_pipeline(module):
    offending = [f"line {line}: {name}" for name, line in imported_names(module)
                 if name == PIPELINES or name.startswith(f"{PIPELINES}.")]
    assert not offending, f"{module} imports pipeline code ({'; '.join(offending)}); move what it needs to a shared module"
