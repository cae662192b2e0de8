"""The module graph of the package: no import cycles, no module using another's private names.

Both are read from the source (the AST of every module), not from what happens
to be imported at run time, so a cycle that only a rare import order would
trip over is found all the same. Every import counts: at module level, under
``if TYPE_CHECKING`` (a cycle for the type checker is a cycle of the design)
and inside a function (it runs when the function is called, and ties the two
modules together as much as one at the top).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "theia_frames"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute name of the module an ``from ... import`` statement reads from."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package(importer):
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def targets(importer: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(module, name) pairs of the package that an import statement reads; name is None for a module."""
    found: list[tuple[str, str | None]] = []
    if isinstance(node, ast.Import):
        found.extend((a.name, None) for a in node.names if a.name in MODULES)
        return found
    source = resolve(importer, node)
    if source not in MODULES:
        return found
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        found.append((submodule, None) if submodule in MODULES else (source, alias.name))
    return found


def all_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, wherever it is: at module level, under
    ``if``/``try``, or inside a function or a class."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = graph.setdefault(name, set())
        for node in all_imports(ast.parse(path.read_text(encoding="utf-8"))):
            for module, _ in targets(name, node):
                if module != name:
                    edges.add(module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("import os\nif TYPE_CHECKING:\n    from .frame import LiveFrame\ndef f():\n    from ..client import Client\n")
    found = [targets("theia_frames.live.widget", n) for n in all_imports(tree)]
    assert found == [[], [("theia_frames.live.frame", "LiveFrame")], [("theia_frames.client", "Client")]]


def test_a_function_level_import_closes_a_cycle():
    lazy = {
        "theia_frames.frames.accessor": "def f():\n    from . import analysis\n",
        "theia_frames.frames.analysis": "from .accessor import TheiaAccessor\n",
    }
    graph = {
        name: {m for node in all_imports(ast.parse(source)) for m, _ in targets(name, node)}
        for name, source in lazy.items()
    }
    assert cycles(graph) == [["theia_frames.frames.accessor", "theia_frames.frames.analysis"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "theia_frames.frames.convert" in graph["theia_frames.frames.export"]  # the graph is read at all
    assert cycles(graph) == [], "modules that import each other (function-level imports included)"


def test_no_module_imports_another_modules_private_names():
    offences = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for module, imported in targets(name, node):
                private = imported if imported is not None else module.rsplit(".", 1)[-1]
                if module != name and private.startswith("_") and not private.startswith("__"):
                    offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {private} from {module}")
    assert offences == []
