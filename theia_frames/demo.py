"""The demo: a collector, a few sensors, a DataFrame, a summary and a plot, in a few seconds.

``theia-frames demo`` (or :func:`run_demo`) starts an embedded collector on a
temporary database, simulates a few sensors sending readings for a few
seconds, queries the readings back into a DataFrame, prints a bucketed summary
table, writes a PNG plot of the readings (and the events as Parquet) and says
where it wrote them::

    >>> result = run_demo("out", seconds=3)                         # doctest: +SKIP
    collector listening on ws://127.0.0.1:40121 (temporary database)
    ...
    wrote the plot to out/theia-demo.png

The plot needs matplotlib (``pip install 'theia-frames[plot]'``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from .checks import positive_number, positive_seconds
from .frames.analysis import bucket, extract
from .exceptions import MissingDependencyError, TheiaError, UsageError
from .frames.export import write_events
from .frames.convert import to_dataframe

__all__ = ["run_demo", "DemoResult", "plot_readings"]

PLOT_NAME = "theia-demo.png"
EVENTS_NAME = "theia-demo-events.parquet"


@dataclass
class DemoResult:
    """What the demo made: the events as a frame, the summary table, and the files written."""

    frame: pd.DataFrame
    summary: pd.DataFrame
    plot: Path
    events_file: Path
    sent: int
    url: str


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "plot", "the demo's plot") from exc
    return Figure


def plot_readings(readings: pd.DataFrame, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """A PNG of sensor readings with :func:`theia_frames.plot`: one panel per unit, a line per source,
    the unit on each y axis, the time axis in UTC and named so.

    ``readings`` is an event frame with the columns :func:`~theia_frames.frames.analysis.extract`
    adds (``value``, ``unit``). Draws on a figure of its own (the Agg canvas): it
    neither needs nor changes a pyplot backend.
    """
    _figure_class()
    from .frames.plot import plot

    for column in ("timestamp", "source", "value"):
        if column not in readings.columns:
            raise UsageError(f"plot_readings needs the column {column!r}; the frame has {list(readings.columns)}")
    fig = plot(readings, kind="readings", theme="light", figsize=(9, 3.6), max_height=7.0,
               title=title or "theia sensor readings")
    target = Path(path)
    fig.savefig(target, dpi=100)
    return target


def _short(source: str) -> str:
    return source.rsplit("/", 1)[-1]


def summary_table(readings: pd.DataFrame, freq: str) -> pd.DataFrame:
    """Mean reading per source per bucket, columns named ``<sensor> [unit]``, plus the events per bucket."""
    means = bucket(readings, freq, by="source", value="value", agg="mean")
    units = readings.dropna(subset=["unit"]).groupby("source", observed=True)["unit"].first()
    means.columns = [f"{_short(str(s))} [{units.get(s, '')}]" for s in means.columns]
    means = means.round(1)
    means["events"] = bucket(readings, freq)["count"]
    means.index = pd.DatetimeIndex(means.index).strftime("%H:%M:%S.%f").str[:-5]
    means.index.name = "bucket (UTC)"
    return means


def run_demo(
    out: str | os.PathLike[str] = "out",
    *,
    seconds: float = 3.0,
    rate: float = 100.0,
    sources: int = 4,
    freq: str | None = None,
    stream: TextIO | None = None,
) -> DemoResult:
    """Run the demo; write the plot and the events into the folder ``out`` (made if missing).

    Sends ``rate`` events per second from ``sources`` simulated sensors for
    ``seconds`` seconds to a fresh embedded collector, then queries them back.
    Progress and the summary go to ``stream`` (default: stdout).
    """
    seconds = positive_seconds("seconds", seconds)
    rate = positive_number("rate", rate, unit="events per second")
    _figure_class()  # fail before starting anything when the plot cannot be drawn
    from .client import Client
    from .server.collector import serve
    from .filter import Filter
    from .simulation import simulate

    say = stream if stream is not None else sys.stdout
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    freq = freq or ("1s" if seconds >= 4 else "500ms")
    with tempfile.TemporaryDirectory(prefix="theia-demo-") as tmp:
        db = Path(tmp) / "demo.db"
        with serve(db=str(db), port=0) as collector:
            print(f"collector listening on {collector.url} (temporary database {db})", file=say)
            print(f"simulating {sources} sensors at {rate:g} events/s for {seconds:g} s ...", file=say, flush=True)
            start = time.time()
            # simulate() returns once the collector confirmed every event stored, so the
            # query below, from another client, finds them all
            sent = simulate(collector.url, rate=rate, duration=seconds, sources=sources)
            print(f"sent {sent} events (confirmed stored)", file=say)
            with Client(collector.url) as client:
                df = to_dataframe(client.find(Filter(start).match_tag("sensor")), progress=False)
            url = collector.url
    if len(df) != sent:
        raise TheiaError(f"the demo's collector confirmed {sent} events stored, but a query found {len(df)}")
    print(f"queried {len(df)} events into a DataFrame ({df.memory_usage(deep=True).sum() / 1024:.0f} KiB)", file=say)
    readings = extract(df)
    summary = summary_table(readings, freq)
    print(f"\nmean reading per {freq} bucket:", file=say)
    print(summary.to_string(), file=say)
    events_file = folder / EVENTS_NAME
    write_events(df, events_file)
    plot = plot_readings(readings, folder / PLOT_NAME, title=f"{sources} simulated sensors, {seconds:g} s")
    print(f"\nwrote the events to {events_file}", file=say)
    print(f"wrote the plot to {plot}", file=say)
    return DemoResult(frame=df, summary=summary, plot=plot, events_file=events_file, sent=sent, url=url)
