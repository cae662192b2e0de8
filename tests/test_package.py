"""The package re-exports every public name of its public modules."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import theia_frames

ROOT = Path(__file__).resolve().parents[1]

PRIVATE_MODULES = {"theia_frames.__main__", "theia_frames.testing.pytest_plugin"}


def public_modules():
    for info in pkgutil.walk_packages(theia_frames.__path__, "theia_frames."):
        name = info.name
        if name in PRIVATE_MODULES or name.rsplit(".", 1)[-1].startswith("_") or ".cli" in name:
            continue
        yield importlib.import_module(name)


def test_every_public_module_has_all():
    for module in public_modules():
        assert hasattr(module, "__all__"), f"{module.__name__} has no __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name}"


def test_top_level_exports_resolve():
    for name in theia_frames.__all__:
        assert getattr(theia_frames, name) is not None
    assert set(theia_frames.__all__) <= set(dir(theia_frames))


def test_core_modules_are_reexported():
    # modules whose every public name belongs at the top level
    for modname in ("event", "filter", "exceptions"):
        module = importlib.import_module(f"theia_frames.{modname}")
        missing = [
            n for n in module.__all__
            if n not in theia_frames.__all__ and not n.isupper() and n not in CORE_INTERNAL
        ]
        assert not missing, f"theia_frames does not re-export {modname}: {missing}"


# names of the core kept in their module on purpose
CORE_INTERNAL = {
    "excerpt", "shorten", "Order", "Engine", "ENGINES", "FilterLike", "as_filter", "max_filter_length",
    "HandshakeRefused", "GaveUp",  # the connect failures in detail, under ConnectError in theia_frames.exceptions
}

# the wire level: every name of these modules stays there, none is top level
WIRE_MODULES = ("protocol.codec", "protocol.messages")

def test_wire_level_names_are_not_top_level():
    for modname in WIRE_MODULES:
        module = importlib.import_module(f"theia_frames.{modname}")
        leaked = sorted(set(module.__all__) & set(theia_frames.__all__))
        assert not leaked, f"wire-level names of theia_frames.{modname} at the top level: {leaked}"


def test_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        theia_frames.nonexistent


def readme_names() -> list[str]:
    """The names in the first column of the README's table of top-level names."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Every top-level name", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split(" | ")[0])]


def test_all_is_what_the_readme_documents():
    names = readme_names()
    assert len(names) == len(set(names)), "a name listed twice"
    exported, documented = set(theia_frames.__all__), set(names)
    assert sorted(exported - documented) == [], "exported, not in the README's table"
    assert sorted(documented - exported) == [], "in the README's table, not exported"


def test_package_ships_py_typed():
    from importlib.resources import files

    assert files("theia_frames").joinpath("py.typed").is_file()


def test_dir_lists_only_public_names():
    names = dir(theia_frames)
    assert names == sorted(theia_frames.__all__)
    for private in ("Any", "TYPE_CHECKING", "annotations", "importlib", "sys"):
        assert private not in names


def test_signatures_read_without_object_addresses():
    import inspect

    for function in (theia_frames.Client.find, theia_frames.Client.receive, theia_frames.Client.__init__):
        text = str(inspect.signature(function))
        assert "object at 0x" not in text, text
    assert "idle_timeout: 'float | None' = <the client's setting>" in str(inspect.signature(theia_frames.Client.find))


ACCESSOR_ORDERS = {
    "theia_frames first": "import theia_frames\nimport pandas as pd\n",
    "pandas first": "import pandas as pd\nimport theia_frames\n",
    "a submodule first": "from theia_frames.server.store import EventStore\nimport pandas as pd\n",
    "a pandas submodule": "import theia_frames\nimport pandas.core.frame\nimport pandas as pd\n",
}


@pytest.mark.parametrize("imports", ACCESSOR_ORDERS.values(), ids=ACCESSOR_ORDERS.keys())
def test_df_theia_is_there_whatever_is_imported_first(imports, tmp_path):
    # pd.read_parquet(...) then df.theia.bucket(...): no other name of theia_frames touched
    script = imports + textwrap.dedent(
        f"""
        import sys
        frame = pd.DataFrame({{"timestamp": pd.to_datetime([0.5, 1.5], unit="s", utc=True), "tags": [["a"], []]}})
        frame.to_parquet({str(tmp_path / "f.parquet")!r})
        df = pd.read_parquet({str(tmp_path / "f.parquet")!r})
        print(df.theia.bucket("1s")["count"].tolist())
        """
    )
    done = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 1]"


def test_import_theia_frames_alone_does_not_import_pandas():
    script = "import sys, theia_frames; print(sorted(m for m in ('pandas', 'pyarrow', 'numpy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_frames_and_analysis_do_not_import_each_other_at_import_time():
    import ast

    def imports(module):
        tree = ast.parse(Path(ROOT, "theia_frames", "frames", f"{module}.py").read_text())
        found = set()
        for node in tree.body:  # module level only: what importing the module runs
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.add(node.module or "")
                found.update(a.name for a in node.names if not node.module)
        return found

    assert "analysis" not in imports("convert")
    assert "convert" in imports("analysis")
    assert not {"analysis", "convert"} & imports("accessor")
