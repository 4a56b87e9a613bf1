"""The project's import graph (issue 30): the library never imports a script, no script imports another,
the graph has no cycles, and the command-line plumbing (utils/cli.py) imports nothing of the project.

Read from the source with `ast`, so that imports inside functions count as much as those at the top: a
lazy import hides a cycle from Python, not from a reader.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
# The command lines: thin wrappers over the library. Tests and benchmarks drive them (their main(argv)) as a
# user does, so they are left out of the graph; everything else is the library.
SCRIPTS = ("main", "render_multiview_image", "extract_shapes", "invert", "viewer", "fid_evaluation",
           "import_checkpoint", "dataset_tool")
LEFT_OUT = ("tests", "benchmarks")
CLI_MODULE = "utils.cli"


def project_modules() -> Dict[str, Path]:
    """Dotted name -> file of every module of the project (packages by their __init__), tests and
    benchmarks left out."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in LEFT_OUT or any(part.startswith(".") for part in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: Dict[str, Path]) -> Dict[str, Set[str]]:
    """Module -> the project modules it imports anywhere in its file (`from a.b import c` counts as a.b.c
    when c is a module, else a.b; `import a.b` as a.b)."""
    def project_module(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(project_module(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.update(project_module(f"{node.module}.{alias.name}") for alias in node.names)
        graph[name] = imported - {None, name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_lazy_imports_and_finds_cycles():
    """The checks below can fail: an import inside a function is an edge, and a made-up cycle is found."""
    graph = import_graph(project_modules())
    assert {"shapes.mesh", "shapes.ply", "utils.cli"} <= graph["viewer"]  # viewer.py imports inside functions
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_import_graph_has_no_cycles():
    assert cycles(import_graph(project_modules())) == []


def test_no_module_imports_a_script():
    """Scripts are command lines over the library: neither the library nor another script imports one."""
    graph = import_graph(project_modules())
    assert set(SCRIPTS) <= set(graph)
    offenders = {name: sorted(imported & set(SCRIPTS)) for name, imported in graph.items() if imported & set(SCRIPTS)}
    assert offenders == {}


def test_the_cli_module_imports_nothing_of_the_project():
    """utils/cli.py (CLIError, exit codes, run_cli) can be imported from anywhere without a cycle."""
    assert import_graph(project_modules())[CLI_MODULE] == set()
