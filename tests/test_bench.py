"""The benchmark suite runs end to end at a small size (a smoke test: nothing here is timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def run_bench(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), "--n", "2000", "--repeat", "1", "--json", str(out), *args],
        capture_output=True, text=True, timeout=280,
    )


def test_bench_runs_every_case_at_a_small_size(tmp_path):
    out = tmp_path / "result.json"
    proc = run_bench(out, "--live-rate", "500", "--live-seconds", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["workload"] == "realistic"
    assert set(result["cases"]) == set("abcdefghtpw")
    for case in "abcdehtp":
        assert result["cases"][case]["events"] == 2000
    # this project, DuckDB, this project to Polars and Polars find the same rows
    counts = {name: tuple(r[kind]["events"] for kind in "qkol") for name, r in result["queries"].items()}
    assert all(len(set(c)) == 1 for c in counts.values()), counts
    assert counts["all"][0] == counts["tag all carry"][0] == 2000, counts
    # the rare tag, the error content and the time range are each about 1% (at random)
    for name in ("tag 1%", "content regex 1%", "time 1%"):
        assert 5 <= counts[name][0] <= 45, counts
    assert result["store"]["per_event"] > 0 and result["parquet"]["per_event"] > 0
    assert result["cases"]["f"]["received"] == result["cases"]["f"]["sent"] > 0
    assert "(a) / (d)" in proc.stdout and "(b) / (c)" in proc.stdout and "proj/pl" in proc.stdout


def test_bench_simple_workload_keeps_its_events(tmp_path):
    out = tmp_path / "result.json"
    proc = run_bench(out, "--workload", "simple", "--cases", "tqkol")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["workload"] == "simple" and result["cases"]["t"]["events"] == 2000
    counts = {name: tuple(r[kind]["events"] for kind in "qkol") for name, r in result["queries"].items()}
    assert all(len(set(c)) == 1 for c in counts.values()), counts
    # every 100th event carries the rare tag
    assert counts["tag 1%"][0] == counts["content regex 1%"][0] == 20, counts


def test_realistic_workload_is_like_users_events():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import run
    finally:
        sys.path.remove(str(BENCH.parent))
    pa = pytest.importorskip("pyarrow")
    table = pa.concat_tables(run.realistic_tables(300_000))
    assert table.num_rows == 300_000
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids) and all(len(i) == 32 and int(i, 16) >= 0 for i in ids[:1000])
    assert len(set(table.column("source").to_pylist())) >= 20
    ts = table.column("timestamp").to_numpy()
    gaps = ts[1:] - ts[:-1]
    assert (gaps > 0.0004).all() and (gaps < 0.0016).all() and len({round(g, 6) for g in gaps[:1000]}) > 100
    tags = table.column("tags").to_pylist()
    alarms = sum("alarm" in t for t in tags) / len(tags)
    errors = sum(c.startswith("ERROR") for c in table.column("content").to_pylist()) / len(tags)
    assert 0.008 < alarms < 0.012 and 0.008 < errors < 0.012
    # the same events in every process (each chunk from its own seed)
    assert pa.concat_tables(run.realistic_tables(300_000)).equals(table)
    comma = next(run.realistic_tables(10, comma_tags=True))
    assert all(isinstance(t, str) and "," in t for t in comma.column("tags").to_pylist())


def test_count_and_timeline_benches_run_at_a_small_size(tmp_path):
    bench = BENCH.parent
    count = subprocess.run(
        [sys.executable, str(bench / "count.py"), "--events", "20000", "--repeat", "1", "--dir", str(tmp_path),
         "--json", str(tmp_path / "count.json")],
        capture_output=True, text=True, timeout=280,
    )
    assert count.returncode == 0, count.stdout + count.stderr
    db = tmp_path / "count-20000.db"
    assert db.exists(), sorted(p.name for p in tmp_path.iterdir())
    timeline = subprocess.run(
        [sys.executable, str(bench / "timeline.py"), str(db), "--repeat", "1", "--baseline"],
        capture_output=True, text=True, timeout=280,
    )
    assert timeline.returncode == 0, timeline.stdout + timeline.stderr
    result = json.loads(timeline.stdout.strip().splitlines()[-1])
    assert result["events"] == 20000 and result["sources"] == 20
    assert result["exact_columns_equal"] and result["max_gap_within_1s"]


def _bench_rows(tmp_path, script: str, *args: str, store: bool = True) -> list[dict]:
    """The rows a bench script writes with ``--json``, run at a small size (its store, if
    it keeps one, in ``tmp_path``)."""
    out = tmp_path / f"{script}.json"
    where = ["--dir", str(tmp_path)] if store else []
    run = subprocess.run(
        [sys.executable, str(BENCH.parent / script), *args, "--repeat", "1", *where, "--json", str(out)],
        capture_output=True, text=True, timeout=280,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(out.read_text())["rows"]


def test_the_rare_tag_burst_bench_runs_at_a_small_size(tmp_path):
    rows = _bench_rows(tmp_path, "skip.py", "--events", "20000")
    assert [row["case"] for row in rows] == ["find -> frame", "count by source"]


def test_the_find_bench_runs_at_a_small_size(tmp_path):
    rows = {row["query"]: row for row in _bench_rows(tmp_path, "find.py", "--n", "20000")}
    assert rows["all"]["found"] == rows["tag all carry"]["found"] == 20000
    assert 0 < rows["tag 1%"]["found"] < 1000 and 0 < rows["time 1%"]["found"] <= 200


def test_the_send_table_bench_runs_at_a_small_size(tmp_path):
    rows = {row["step"]: row for row in _bench_rows(tmp_path, "send_table.py", "--n", "30000", "--batch-size", "20000",
                                                    store=False)}
    assert set(rows) == {"prepare", "messages"}
    assert rows["messages"]["messages"] >= 2 and rows["messages"]["bytes"] > 30000 * 50
