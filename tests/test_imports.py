"""The layers' import rules, read from the source with `ast` (nothing is imported):

- the engine (`dsa_core`) imports neither the history (`storage`), the web app (`ui`, `gradio`) nor the command line
  (`cli`); `dsa_core/__main__.py` is the one exception, the launcher of `python -m dsa_core` that no module imports;
- the history imports no front end, and the two front ends (`ui`, `cli`) do not import each other;
- no import loop among the modules of dsa_core, ui, storage and cli;
- a short name given to an imported module (`import torch.nn.functional as F`) means that module in every file of
  the repository, tests and benchmarks included.

Both rules count imports at module level and inside functions alike: an import deferred into a function still ties
the two modules together, and a loop hidden that way is still a loop to a reader. Imports under `if TYPE_CHECKING:`
never run and are left out.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dsa_core", "ui", "storage", "cli")
# package → what it must not import, at any depth of its modules
FORBIDDEN = {
    "dsa_core": ("storage", "ui", "cli", "gradio"),
    "storage": ("ui", "cli", "gradio"),
    "ui": ("cli",),
    "cli": ("ui", "gradio"),
}
ENTRY_POINTS = {"dsa_core.__main__"}  # launchers: they import a front end, and nothing imports them


def project_modules() -> dict[str, Path]:
    """Dotted name → file, for every module of the packages (a package is its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(path: Path, module: str) -> list[tuple[str, int]]:
    """(dotted name, line) of everything `module` imports, TYPE_CHECKING blocks left out. `from a import b` gives
    `a.b`: the caller decides whether that is a module or a name in `a`."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            found.extend((f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module → {project module it imports: first line}. `from pkg import name` points at the submodule
    pkg.name when there is one, else at pkg."""
    graph = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for name, line in imported_names(path, module):
            target = name if name in modules else name.rpartition(".")[0]
            if target in modules and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest loop per strongly connected component of the graph (Tarjan, then a breadth-first search back to
    the component's first module), each as [a, b, ..., a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # recursive: the graph is a few hundred modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        start = min(component)
        came_from: dict[str, str] = {}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            if start in graph[v]:
                path = [start]
                while v != start:
                    path.append(v)
                    v = came_from[v]
                cycles.append([start, *reversed(path[1:]), start])
                break
            for w in sorted(graph[v]):
                if w in component and w not in came_from and w != start:
                    came_from[w] = v
                    queue.append(w)
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    steps = [f"{a} (line {graph[a][b]} of {modules[a].relative_to(ROOT)}) imports {b}"
             for a, b in zip(cycle, cycle[1:])]
    return " → ".join(cycle) + "\n    " + "\n    ".join(steps)


@pytest.mark.parametrize("package", FORBIDDEN)
def test_a_layer_imports_only_the_layers_below_it(package):
    modules = project_modules()
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in modules.items() if module.split(".")[0] == package and module not in ENTRY_POINTS
        for name, line in imported_names(path, module) if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not offences, f"{package} must not import {', '.join(FORBIDDEN[package])}:\n" + "\n".join(offences)


def test_no_import_loop_among_the_projects_modules():
    modules = project_modules()
    graph = import_graph(modules)
    assert graph["cli.main"] and graph["ui.workspace"], "the graph is empty: the parsing went wrong"
    cycles = find_cycles(graph)
    assert not cycles, "import loops:\n" + "\n".join(describe(c, graph, modules) for c in cycles)


def test_an_import_alias_means_one_module_everywhere():
    meanings: dict[str, dict[str, list[str]]] = {}  # alias → what it stands for → files
    folders = (*PACKAGES, "tests", "bench")
    files = [*ROOT.glob("*.py"), *(p for folder in folders for p in (ROOT / folder).rglob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    if alias.asname and alias.asname != alias.name.rpartition(".")[2]:
                        name = f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
                        meanings.setdefault(alias.asname, {}).setdefault(name, []).append(
                            str(path.relative_to(ROOT)))
    clashes = {alias: names for alias, names in meanings.items() if len(names) > 1}
    assert not clashes, "aliases that name more than one module:\n" + "\n".join(
        f"{alias}: " + "; ".join(f"{name} in {', '.join(sorted(set(files)))}" for name, files in names.items())
        for alias, names in clashes.items())


def test_a_loop_is_found_and_shown_from_its_first_module():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]  # a module importing itself is not a loop between modules
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []
