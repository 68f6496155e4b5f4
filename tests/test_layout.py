"""The import graph of the project's packages, read from the source with `ast` (nothing is imported):

- no import cycles among project modules, counting imports inside functions too (a function-local import
  hides a cycle from Python's import machinery, not from the design);
- the rooms rule: `envs` (verifiers and their sandbox) imports nothing from trainer, shim or inference, and
  `inference` (samplers) imports nothing from envs or trainer.

Imports by string (importlib.import_module, the env registry, Hydra `_target_`s) are not counted.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {"envs": ("trainer", "shim", "inference"), "inference": ("envs", "trainer")}


def project_packages() -> list[str]:
    """The top-level packages pyproject installs (include = ["trainer*", ...])."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in include})


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages ("a.b" for a/b/__init__.py)."""
    modules = {}
    for package in project_packages():
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return (ROOT / name.replace(".", "/")).is_dir() or modules.get(name, Path()).name == "__init__.py"


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(project module, line) for each import anywhere in the file, top level or inside functions."""
    found = []

    def add(target: str, line: int) -> None:
        while target and target not in modules:  # `import a.b.c` where only a.b is a module file
            target = target.rpartition(".")[0]
        if target and target != name:
            found.append((target, line))

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:  # `from pkg import submodule`
                    add(f"{base}.{alias.name}", node.lineno)
                elif base in modules or not _is_package(base, modules):
                    add(base, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line importing it}."""
    modules = project_modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in imports_of(name, path, modules):
            edges.setdefault(target, line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through each strongly connected component with more than one module
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_cycle_in(component, graph) for component in components]


def _cycle_in(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    members, first = set(component), component[0]
    parents = {first: None}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == first:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [*reversed(path), first]
                if child in members and child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return component  # unreachable for a real component


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert {"trainer.cli", "envs.sandbox", "envs.sandbox.runner", "trainer.learner", "inference.types",
            "shim.engine"} <= set(graph)
    assert "envs.sandbox" in graph["envs.program_env"]  # `from envs.sandbox import ...` (the package)
    assert "trainer.distributed" in graph["trainer.learner.state"]  # `from trainer import distributed`


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    source = tmp_path / "fake.py"
    source.write_text("import os\n\n\ndef f():\n    from trainer.learner import LoRALearner\n"
                      "    from . import config\n    import envs.sandbox.runner\n    from torch import nn\n")
    found = {target for target, _ in imports_of("trainer.fake", source, project_modules())}
    assert found == {"trainer.learner", "trainer.config", "envs.sandbox.runner"}


def test_cycle_finder_reports_the_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert _describe(["a", "b", "c", "a"], graph) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among project modules:\n" + "\n".join(_describe(c, graph) for c in cycles)


def test_rooms_rule():
    graph = import_graph()
    broken = [f"{module} imports {target} (line {line})"
              for module, edges in sorted(graph.items()) for target, line in sorted(edges.items())
              if module.split(".")[0] in ROOMS and target.split(".")[0] in ROOMS[module.split(".")[0]]]
    assert not broken, "imports across rooms:\n" + "\n".join(broken)
