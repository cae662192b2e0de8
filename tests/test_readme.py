"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_core_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    block = python_blocks()[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    df = namespace["df"]
    assert len(df) == 10_001
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert "value" in namespace["readings"].columns
    assert "/dev/sensors/temp-1 22.0C" in capsys.readouterr().out


def test_quick_start_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = 'python -m pip install -e ".[test]" && python -m pytest'
    assert test_command in text and test_command in ci
    assert "python -m theia_frames demo" in text
