"""The package type-checks: ``python -m mypy theia_frames`` (config in pyproject.toml) reports no errors.

mypy keeps its cache in ``.mypy_cache`` at the repository root, so a run
after the first checks only what changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_reports_no_errors():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-pretty", "--no-color-output", "--no-error-summary", "theia_frames"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MYPY_FORCE_COLOR": "0"},
    )
    errors = [line for line in done.stdout.splitlines() if ": error: " in line]
    assert done.returncode == 0 and errors == [], done.stdout + done.stderr
