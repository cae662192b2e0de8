"""docs/protocol.md's "Where each rule lives in the code" names real homes.

Every backticked name in the table's right column is imported: a module
(``protocol.codec``, relative to the package, or ``theia_frames.filter``), or a
name inside one (``protocol.codec.header_problem``). A name in parentheses
after a module is looked up in that module first (``theia_frames.timeparse``
(``to_bound``)), then as a path of its own. A rule moved without the table
following fails here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
HEADING = "## Where each rule lives in the code"


def table_rows() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    assert HEADING in text, f"{DOC} lost its section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and line.startswith("|") and not set(cells[1]) <= set("- ") and cells[1] != "module":
            rows.append((cells[0], cells[1]))
    return rows


def absolute(name: str) -> str:
    return name if name.startswith("theia_frames") else f"theia_frames.{name}"


def resolve(path: str) -> object:
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = absolute(path).split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(path)


def names_in(cell: str) -> list[str]:
    return [n for n in re.findall(r"`([^`]+)`", cell) if re.fullmatch(r"[A-Za-z_][\w.]*", n)]


ROWS = table_rows()


def test_the_table_has_rows() -> None:
    assert len(ROWS) >= 15


@pytest.mark.parametrize("rule,cell", ROWS, ids=[r[0][:50] for r in ROWS])
def test_every_named_home_exists(rule: str, cell: str) -> None:
    names = names_in(cell)
    assert names, f"the row {rule!r} names no module"
    module: ModuleType | None = None
    for name in names:
        if module is not None and "." not in name and hasattr(module, name):
            continue
        if module is not None and hasattr(module, name.split(".")[0]):
            obj: object = module
            for attr in name.split("."):
                obj = getattr(obj, attr)
            continue
        obj = resolve(name)  # raises, naming what is missing
        if isinstance(obj, ModuleType):
            module = obj
        else:
            module = importlib.import_module(getattr(obj, "__module__", None) or absolute(name).rsplit(".", 1)[0])
