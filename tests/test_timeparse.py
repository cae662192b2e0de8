"""One time grammar and one duration grammar, wherever a time or a duration is taken."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from theia_frames.frames.analysis import bucket, grep, timeline
from theia_frames.cli import argtypes
from theia_frames.event import Event
from theia_frames.exceptions import InvalidFilterError, UsageError
from theia_frames.filter import Filter
from theia_frames.frames.convert import to_dataframe
from theia_frames.live.frame import EventBuffer, LiveFrame, parse_window
from theia_frames.frames.storefiles import read_store
from theia_frames.timeparse import to_bound, to_epoch, to_seconds

ROOT = Path(__file__).resolve().parents[1]
MAY_1 = 1714521600.0

DURATIONS = [
    (90, 90.0),
    ("90", 90.0),
    (np.int64(90), 90.0),
    (1.5, 1.5),
    ("10min", 600.0),
    ("15m", 900.0),
    ("2h", 7200.0),
    ("1d", 86400.0),
    ("1D", 86400.0),
    ("500ms", 0.5),
    ("1h30m", 5400.0),
    ("2 hours", 7200.0),
    ("10 MIN", 600.0),
    (dt.timedelta(minutes=10), 600.0),
    (pd.Timedelta("10min"), 600.0),
    (np.timedelta64(10, "m"), 600.0),
    (pd.offsets.Minute(10), 600.0),
    (pd.tseries.frequencies.to_offset("5min"), 300.0),
]


@pytest.mark.parametrize("value, seconds", DURATIONS, ids=repr)
def test_one_duration_grammar(value, seconds):
    assert to_seconds(value) == seconds
    assert parse_window(value) == seconds
    assert EventBuffer(window=value).window == seconds
    if isinstance(value, str):
        assert argtypes.duration_arg(value) == seconds
        assert to_epoch("-" + value, now=100_000.0) == 100_000.0 - seconds
        assert argtypes.time_arg("-" + value) == pytest.approx(to_epoch("now") - seconds, abs=5)


@pytest.mark.parametrize(
    "value, words",
    [
        ("-5s", "must not be negative"),
        (-1, "must not be negative"),
        ("soon", "expected seconds (90), text with units"),
        ("5 parsecs", "unknown unit 'parsecs'"),
        ("1M", "'M' could mean minutes or months"),
        (True, "invalid duration True"),
        (float("nan"), "finite"),
        (pd.NaT, "NaT"),
        (np.timedelta64("NaT"), "NaT"),
        (pd.offsets.MonthEnd(), "calendar offset has no fixed length"),
        (object(), "invalid duration"),
    ],
    ids=repr,
)
def test_durations_refused_with_the_reason(value, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        to_seconds(value)


def test_a_bare_number_is_seconds_in_every_analysis_duration():
    df = to_dataframe(
        [Event(id=str(i), timestamp=t, source="s", content=c) for i, (t, c) in
         enumerate([(0, "boot"), (50, "warn"), (100, "FAIL"), (200, "ok"), (400, "ok")])]
    )
    # "90" was 90 ns to pandas: the context held only the match
    assert grep(df, "FAIL", context="90")["content"].tolist() == ["warn", "FAIL"]
    assert grep(df, "FAIL", context=90)["content"].tolist() == ["warn", "FAIL"]
    assert grep(df, "FAIL", context="2min")["content"].tolist() == ["boot", "warn", "FAIL", "ok"]
    assert timeline(df, gap="150")["gaps"].tolist() == [1]
    assert timeline(df, gap=pd.Timedelta("150s"))["gaps"].tolist() == [1]
    assert bucket(df, "90").index[1] - bucket(df, "90").index[0] == pd.Timedelta("90s")
    assert len(bucket(df, "15m")) == 1
    with pytest.raises(UsageError, match="invalid before '-1s': must not be negative"):
        grep(df, "FAIL", before="-1s")


def test_every_of_the_live_view_is_a_duration():
    from theia_frames.live.widget import LiveView

    live = LiveFrame("ws://127.0.0.1:9")
    assert LiveView(live, every="500ms", mode="text").every == 0.5
    assert LiveView(live, every="2", mode="text").every == 2.0
    with pytest.raises(UsageError, match="every"):
        LiveView(live, every="0s", mode="text")


TIMES = [
    MAY_1,
    np.int64(MAY_1),
    np.float32(1714521600),
    dt.datetime(2024, 5, 1),
    dt.date(2024, 5, 1),
    pd.Timestamp("2024-05-01"),
    pd.Timestamp("2024-05-01T02:00", tz="Europe/Berlin"),
    np.datetime64("2024-05-01"),
    "2024-05-01T00:00Z",
    "2024-05-01",
    "1714521600",
]


@pytest.mark.parametrize("value", TIMES, ids=repr)
def test_one_time_grammar(value, tmp_path):
    assert to_epoch(value) == MAY_1
    # a filter takes a calendar time at a frame's precision (timeparse.to_bound)
    assert Filter(value).start == to_bound(value, "start") and abs(Filter(value).start - MAY_1) < 1e-6
    # read_store takes the same times: a file of the day before is skipped by its name
    (tmp_path / f"{int(MAY_1) - 100}-{int(MAY_1) - 90}").write_bytes(b"")
    report = read_store(tmp_path, start=value, progress=False).attrs["theia_report"]
    assert len(report.outside) == 1
    if isinstance(value, str):
        assert argtypes.time_arg(value) == MAY_1


@pytest.mark.parametrize(
    "value, words",
    [
        (True, "invalid time True"),
        (np.bool_(True), "invalid time np.True_"),
        (float("nan"), "not a finite number"),
        (np.float64("inf"), "not a finite number"),
        (pd.NaT, "NaT"),
        (np.datetime64("NaT"), "NaT"),
        ("yesterday", "expected seconds since the epoch"),
        ("-15parsecs", "unknown unit 'parsecs'"),
    ],
    ids=repr,
)
def test_times_refused_with_the_reason(value, words):
    with pytest.raises(UsageError, match=words):
        to_epoch(value)
    with pytest.raises(InvalidFilterError, match="filter start"):
        Filter(value)


def test_the_cli_takes_minutes_as_the_readme_writes_them(collector):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for start in ("-10min", "-15m", "-2h", "2024-05-01T00:00Z"):
        done = subprocess.run(
            [sys.executable, "-m", "theia_frames", "find", "--url", collector.url, "--start", start, "--format", "jsonl"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
        )
        assert done.returncode == 0, (start, done.stderr)


def test_the_grammar_is_free_of_argparse_and_the_adapters_use_it():
    import ast

    tree = ast.parse((ROOT / "theia_frames" / "timeparse.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "argparse" not in imported
    with pytest.raises(__import__("argparse").ArgumentTypeError, match="invalid time 'soon'"):
        argtypes.time_arg("soon")
    with pytest.raises(__import__("argparse").ArgumentTypeError, match="invalid duration '-5s': must not be negative"):
        argtypes.duration_arg("-5s")
