from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from theia_frames.frames.analysis import extract
from theia_frames.cli import main
from theia_frames.demo import EVENTS_NAME, PLOT_NAME, plot_readings, run_demo, summary_table
from theia_frames.exceptions import MissingDependencyError, TheiaError, UsageError
from theia_frames.frames.export import read_events
from theia_frames.frames.convert import EVENT_DTYPES, to_dataframe
from theia_frames.simulation import sensor_events

PNG = b"\x89PNG\r\n\x1a\n"


def test_run_demo_end_to_end(tmp_path):
    out = io.StringIO()
    result = run_demo(tmp_path / "out", seconds=1, rate=200, sources=3, stream=out)
    text = out.getvalue()
    assert result.sent == 200
    df = result.frame
    assert len(df) == result.sent
    for c, dtype in EVENT_DTYPES.items():
        assert df[c].dtype == dtype
    assert df["source"].nunique() == 3
    assert result.plot == tmp_path / "out" / PLOT_NAME
    assert result.plot.read_bytes().startswith(PNG)
    assert f"wrote the plot to {result.plot}" in text
    assert "collector listening on ws://127.0.0.1:" in text
    assert "mean reading per 500ms bucket" in text
    assert result.summary["events"].sum() == result.sent
    assert [c for c in result.summary.columns if c != "events"] == [
        "humidity-2 [%]", "pressure-3 [hPa]", "temp-1 [C]",
    ]
    assert len(read_events(result.events_file)) == result.sent


def test_demo_command(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seconds", "0.5", "--rate", "40", "--sources", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote the plot to {tmp_path / PLOT_NAME}" in printed
    assert (tmp_path / PLOT_NAME).read_bytes().startswith(PNG)


def test_demo_runs_as_a_fresh_process(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = root
    proc = subprocess.run(
        [sys.executable, "-m", "theia_frames", "demo", "--seconds", "0.5", "--rate", "40", "--out", "pics"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=None if sys.platform == "win32" else (lambda: os.umask(0o002)),
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "pics" / PLOT_NAME).is_file()
    assert "wrote the plot to pics" in proc.stdout
    assert "sent 20 events (confirmed stored)" in proc.stdout and "queried 20 events" in proc.stdout
    if sys.platform != "win32":
        # the user's umask, like any other tool's output (not a private temporary file's 0600)
        for name in (PLOT_NAME, EVENTS_NAME):
            assert (tmp_path / "pics" / name).stat().st_mode & 0o777 == 0o664, name


def test_the_demo_never_reports_fewer_queried_than_sent(tmp_path, monkeypatch):
    import theia_frames.simulation as simulation

    real = simulation.simulate
    monkeypatch.setattr(simulation, "simulate", lambda *a, **kw: real(*a, **kw) + 1)  # one event "lost"
    with pytest.raises(TheiaError, match="confirmed 21 events stored, but a query found 20"):
        run_demo(tmp_path, seconds=0.5, rate=40, stream=io.StringIO())


def test_a_missing_matplotlib_names_the_extra_before_starting_anything(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingDependencyError, match=r"theia-frames\[plot\]") as info:
        run_demo(tmp_path / "never", seconds=1, stream=io.StringIO())
    assert info.value.extra == "plot"
    assert not (tmp_path / "never").exists()
    assert main(["demo", "--out", str(tmp_path / "never")]) == 1


def test_demo_argument_checks(tmp_path):
    with pytest.raises(UsageError, match="seconds"):
        run_demo(tmp_path, seconds=0)
    with pytest.raises(SystemExit):
        main(["demo", "--seconds", "-1"])


def test_summary_and_plot_of_simulated_readings(tmp_path):
    readings = extract(to_dataframe(sensor_events(120, sources=4, rate=40, start=1_700_000_000, seed=3)))
    table = summary_table(readings, "1s")
    assert list(table.index) == ["22:13:20.0", "22:13:21.0", "22:13:22.0"]
    assert table["events"].tolist() == [40, 40, 40]
    assert "temp-1 [C]" in table.columns
    path = plot_readings(readings, tmp_path / "r.png")
    assert path.read_bytes().startswith(PNG)
    with pytest.raises(UsageError, match="value"):
        plot_readings(to_dataframe([]), tmp_path / "x.png")
