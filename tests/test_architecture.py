"""The package map checks itself: no import cycles, the core never imports a front end.

Walks ``cellsparse_app/`` with :mod:`ast` (nothing is imported), so it also catches imports
that only run inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

PACKAGE = Path(__file__).resolve().parents[1] / "cellsparse_app"
#: The front ends: thin adapters that format inputs and outputs for people and programs.
FRONT_ENDS = ("cellsparse_app.ui", "cellsparse_app.api", "cellsparse_app.cli")
#: Web frameworks only a front end may import.
WEB_FRAMEWORKS = ("gradio", "fastapi", "starlette", "uvicorn")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _at_module_level(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return False
    return True


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, whether the import runs when the module is imported) for every import
    in ``path``; ``from pkg import sub`` resolves to ``pkg.sub`` when that is a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        if _in_type_checking(node, parents):
            continue
        eager = _at_module_level(node, parents)
        found += [(target, eager) for target in targets]
    return found


def import_graph(*, eager_only: bool) -> dict[str, set[str]]:
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target, eager in imports_of(name, path, modules):
            if eager_only and not eager:
                continue
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name:
                    edges.add(prefix)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package importing its own submodules (re-exports) is not a cycle.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def is_front_end(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FRONT_ENDS)


def test_the_walker_sees_real_edges():
    graph = import_graph(eager_only=True)
    assert "cellsparse_app.data.labels" in graph["cellsparse_app.data.annotations"]
    assert "cellsparse_app.session.workspace" in graph["cellsparse_app.ui.context"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_modules():
    """Counting the imports inside functions too: a cycle hidden in a function is still one."""
    cycle = find_cycle(import_graph(eager_only=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_never_imports_a_front_end_or_a_web_framework():
    modules = all_modules()
    offences = []
    for name, path in modules.items():
        if is_front_end(name):
            continue
        for target, _ in imports_of(name, path, modules):
            top = target.split(".")[0]
            if top in WEB_FRAMEWORKS or is_front_end(target):
                offences.append(f"{name} imports {target}")
    assert offences == []


def test_the_web_app_never_imports_the_rest_server():
    """``api.server`` may mount the web app (it is where both are put together); the web app
    and the other REST modules stay apart."""
    modules = all_modules()
    offences = [f"{name} imports {target}"
                for name, path in modules.items() if is_front_end(name)
                for target, _ in imports_of(name, path, modules)
                if (name.startswith("cellsparse_app.ui")
                    and target.startswith("cellsparse_app.api"))
                or (name.startswith("cellsparse_app.api.") and name != "cellsparse_app.api.server"
                    and target.startswith("cellsparse_app.ui"))]
    assert offences == []


def test_no_module_shadows_the_standard_library():
    import sys

    shadowing = sorted(p.stem for p in PACKAGE.rglob("*.py")
                       if p.stem in sys.stdlib_module_names and p.stem != "__init__")
    assert shadowing == []


def test_the_example_assets_ship_as_package_data():
    from cellsparse_app.ui.context import ASSETS_DIR

    assert ASSETS_DIR.is_relative_to(PACKAGE)
    globs = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["cellsparse_app"]
    shipped = {p for pattern in globs for p in PACKAGE.glob(pattern)}
    assert (ASSETS_DIR / "example_nuclei.png") in shipped
    assert (ASSETS_DIR / "example_nuclei_labels.tif") in shipped
