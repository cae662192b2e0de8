"""The module graph of the package: no import cycles, no module using another's private names.

Both are read from the source (the AST of every module), not from what happens
to be imported at run time, so a cycle that only a rare import order would
trip over is found all the same.
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


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs (or a type checker reads) when it is loaded.

    Imports under ``if`` (``TYPE_CHECKING`` included: a cycle for the type
    checker is a cycle of the design) and ``try`` at module level count; an
    import inside a function runs only when it is called.
    """
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for handler in node.handlers:
                    walk(handler.body)
                walk(node.orelse)
                walk(node.finalbody)

    walk(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = graph.setdefault(name, set())
        for node in module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
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
    imports = module_level_imports(tree)
    assert [targets("theia_frames.live.widget", n) for n in imports] == [[], [("theia_frames.live.frame", "LiveFrame")]]


def test_no_import_cycles():
    graph = import_graph()
    assert "theia_frames.frames.convert" in graph["theia_frames.frames.export"]  # the graph is read at all
    assert cycles(graph) == [], "modules that import each other (at module level)"


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
