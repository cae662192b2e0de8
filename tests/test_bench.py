"""The benchmark suite runs end to end at a small size (a smoke test: nothing here is timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_bench_runs_every_case_at_a_small_size(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--n", "2000", "--repeat", "1", "--live-rate", "500",
         "--live-seconds", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert set(result["cases"]) == set("abcdefghtpw")
    for case in "abcdehtp":
        assert result["cases"][case]["events"] == 2000
    counts = {name: (r["q"]["events"], r["k"]["events"]) for name, r in result["queries"].items()}
    assert all(q == k for q, k in counts.values()) and counts["tag 1%"][0] == 20, counts
    assert result["store"]["per_event"] > 0 and result["parquet"]["per_event"] > 0
    assert result["cases"]["f"]["received"] == result["cases"]["f"]["sent"] > 0
    assert "(a) / (d)" in proc.stdout and "(b) / (c)" in proc.stdout
