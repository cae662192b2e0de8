"""The plotting layer (theia_frames.frames.plot), checked on rendered Agg figures: their structure
(the lines' data, the tick labels) and their pixels; the registry of live frames; the one-line status."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import theia_frames as tf
from theia_frames.exceptions import MissingDependencyError, UsageError
from theia_frames.frames.convert import to_dataframe
from theia_frames.frames.plot import Plotter, break_gaps, downsample, gap_threshold
from theia_frames.live import registry
from theia_frames.live.frame import LiveFrame
from theia_frames.live.status import LiveStatus
from theia_frames.live.widget import LiveView
from theia_frames.server.collector import serve
from waiting import wait_until

mpl = pytest.importorskip("matplotlib")
pytest.importorskip("ipywidgets")
import matplotlib.dates as mdates  # noqa: E402

SENSORS = tf.Filter().match_tag("sensor")
T0 = pd.Timestamp("2024-05-01T00:00:00Z").timestamp()


def readings(times: np.ndarray, values: np.ndarray, unit: str = "C", source: str = "/dev/sensors/t") -> pd.DataFrame:
    return to_dataframe(
        [tf.Event(id=str(i), timestamp=float(t), source=source, tags=["sensor"], content=f"{v:.2f}{unit}")
         for i, (t, v) in enumerate(zip(times, values))],
        progress=False,
    )


def finite_points(line) -> tuple[np.ndarray, np.ndarray]:
    x = mdates.date2num(line.get_xdata()) if np.issubdtype(np.asarray(line.get_xdata()).dtype, np.datetime64) else np.asarray(line.get_xdata(), dtype=float)
    y = np.asarray(line.get_ydata(), dtype=float)
    return x, y


def rendered(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


# --------------------------------------------------------------------------- gaps


def test_a_gap_in_the_data_is_drawn_as_a_break():
    # one reading a second, then nothing for two minutes, then one a second again
    times = np.concatenate([T0 + np.arange(120), T0 + 240 + np.arange(120)])
    fig = tf.plot(readings(times, 20 + np.sin(np.arange(240) / 10)))
    (line,) = fig.axes[0].get_lines()
    x, y = finite_points(line)
    assert np.isnan(y).sum() == 1  # one break
    # no segment between two drawn points spans the hole: every segment joins points at most 1 s apart
    seconds = np.diff(x) * 86400
    joined = ~np.isnan(y[:-1]) & ~np.isnan(y[1:])
    assert seconds[joined].max() < 1.5
    # and the pixels in the middle of the hole are background: no line crosses it
    pixels = rendered(fig)
    ax = fig.axes[0]
    middle = ax.transData.transform((mdates.date2num(np.datetime64(int((T0 + 180) * 1e9), "ns")), 0))[0]
    column = pixels[::-1][:, int(round(middle))]  # rows bottom-up, as display coordinates
    box = ax.get_window_extent()
    inside = column[int(box.y0) + 2:int(box.y1) - 2, :3]
    blue = (inside[:, 2] > 150) & (inside[:, 0] < 100)
    assert not blue.any()


def test_without_gap_detection_the_line_is_unbroken_and_gap_can_be_a_duration():
    times = np.concatenate([T0 + np.arange(50), T0 + 100 + np.arange(50)])
    df = readings(times, np.ones(100))
    assert not np.isnan(finite_points(tf.plot(df, gap=None).axes[0].get_lines()[0])[1]).any()
    assert np.isnan(finite_points(tf.plot(df, gap="10s").axes[0].get_lines()[0])[1]).sum() == 1
    assert not np.isnan(finite_points(tf.plot(df, gap="2min").axes[0].get_lines()[0])[1]).any()
    assert np.isnan(finite_points(tf.plot(df, gap_factor=100).axes[0].get_lines()[0])[1]).sum() == 0


def test_gap_threshold_and_break_gaps():
    x = (np.array([0, 1, 2, 3, 4, 20, 21]) * 1e9).astype("int64")
    assert gap_threshold(x) == 5e9
    xs, ys = break_gaps(x, np.arange(7.0), np.arange(7), gap_threshold(x))
    assert np.isnan(ys[5]) and xs[4] < xs[5] < xs[6]
    with pytest.raises(UsageError, match="gap"):
        gap_threshold(x, "-1s")


# --------------------------------------------------------------------------- peaks


def test_a_year_of_hourly_readings_keeps_every_days_extremes():
    hours = np.arange(365 * 24)
    rng = np.random.default_rng(7)
    values = 10 + 8 * np.sin((hours % 24) / 24 * 2 * np.pi) + 6 * np.sin(hours / 8760 * 2 * np.pi) + rng.normal(0, 1.5, len(hours))
    df = readings(T0 + hours * 3600.0, values)
    fig = tf.plot(df)
    (line,) = fig.axes[0].get_lines()
    y = np.asarray(line.get_ydata(), dtype=float)
    x = np.asarray(line.get_xdata()).astype("datetime64[ns]")
    drawn = pd.Series(y, index=pd.DatetimeIndex(x)).dropna()
    assert len(drawn) < len(df) / 2  # thinned to the width of the figure
    data = pd.Series(np.round(values, 2), index=pd.DatetimeIndex(pd.to_datetime(T0 + hours * 3600.0, unit="s")))
    per_day = data.groupby(data.index.floor("D")).agg(["min", "max"])
    plotted = drawn.groupby(drawn.index.floor("D")).agg(["min", "max"])
    plotted.index = plotted.index.as_unit("ns")
    per_day.index = per_day.index.as_unit("ns")
    pd.testing.assert_frame_equal(plotted, per_day, check_freq=False, check_names=False)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(5, 3000), columns=st.integers(1, 200), seed=st.integers(0, 10_000))
def test_downsampling_keeps_the_global_min_and_max_and_the_ends(n, columns, seed):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.integers(1, 10_000_000_000, n)).astype("int64")
    y = rng.normal(0, 1, n).cumsum()
    for method in ("minmax", "minmaxlttb"):
        idx = downsample(x, y, columns, method=method)
        assert (np.diff(idx) > 0).all()
        assert y[idx].max() == y.max() and y[idx].min() == y.min()
        assert idx[0] == 0 and idx[-1] == n - 1


def test_minmax_keeps_each_columns_extremes():
    rng = np.random.default_rng(3)
    x = (np.sort(rng.uniform(0, 86400, 50_000)) * 1e9).astype("int64")  # a day, irregular
    y = rng.normal(0, 1, len(x))
    idx = downsample(x, y, 96)  # 96 columns of a day: 15-minute columns
    assert len(idx) <= 4 * 96 + 4
    column = x // (900 * 10**9)
    full = pd.Series(y).groupby(column).agg(["min", "max"])
    kept = pd.Series(y[idx]).groupby(column[idx]).agg(["min", "max"])
    pd.testing.assert_frame_equal(kept, full)


def test_the_compiled_method_needs_its_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tsdownsample(name, *args, **kwargs):
        if name == "tsdownsample":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tsdownsample)
    x = np.arange(1000, dtype="int64")
    with pytest.raises(MissingDependencyError, match=r"theia-frames\[plot\]"):
        downsample(x, np.zeros(1000), 10, method="minmaxlttb")


# --------------------------------------------------------------------------- numbers, times, layout


def test_1020_hpa_is_labelled_as_such_without_an_offset():
    times = T0 + np.arange(600.0)
    df = readings(times, 1020 + 0.4 * np.sin(np.arange(600) / 30), unit="hPa", source="/dev/sensors/pressure")
    fig = tf.plot(df)
    rendered(fig)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ax.get_ylabel() == "hPa"
    assert ax.yaxis.get_offset_text().get_text() == ""
    assert labels and all(label.replace("\u2212", "-").startswith("10") for label in labels), labels
    assert any(float(label) > 1019 for label in labels)


def test_a_tz_plot_ticks_in_local_time_and_says_so():
    times = T0 + np.arange(0, 6 * 3600, 60.0)  # 00:00 to 06:00 UTC
    fig = tf.plot(readings(times, np.arange(len(times), dtype=float)), tz="Europe/Berlin")
    rendered(fig)
    ax = fig.axes[-1]
    assert ax.get_xlabel() == "time (Europe/Berlin)"
    ticks = [(loc, t.get_text()) for loc, t in zip(ax.get_xticks(), ax.get_xticklabels())
             if ax.get_xlim()[0] <= loc <= ax.get_xlim()[1]]
    first_loc, first_label = ticks[0]
    local = mdates.num2date(first_loc, tz=__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert first_label == local.strftime("%H:%M")
    assert local.hour in (2, 3)  # CEST: 00:00 UTC is 02:00 in Berlin
    utc = tf.plot(readings(times, np.arange(len(times), dtype=float)))
    rendered(utc)
    assert utc.axes[-1].get_xlabel() == "time (UTC)"
    assert utc.axes[-1].get_xticklabels()[0].get_text() != first_label


def test_second_ticks_say_the_minute_too():
    times = T0 + 37 + np.arange(0, 8, 0.1)
    fig = tf.plot(readings(times, np.ones(len(times))))
    rendered(fig)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert labels and all(label.count(":") == 2 for label in labels), labels


def test_panels_share_a_height_cap_and_legends_sit_outside_the_data():
    df = to_dataframe(list(tf.sensor_events(1000, sources=5, seed=2)), progress=False)
    fig = tf.plot(df, max_height=5.0)
    assert len(fig.axes) == 5 and fig.get_figheight() == 5.0
    rendered(fig)
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
        assert legend.get_window_extent().x1 <= fig.bbox.x1 + 1


def test_themes_colour_the_figure():
    df = to_dataframe(list(tf.sensor_events(100, sources=1, seed=2)), progress=False)
    dark = rendered(tf.plot(df, theme="dark"))
    assert tuple(dark[2, 2, :3]) == (17, 17, 17)
    light = rendered(tf.plot(df, theme="light"))
    assert tuple(light[2, 2, :3]) == (255, 255, 255)
    auto = rendered(tf.plot(df, theme="auto"))
    assert auto[2, 2, 3] == 0  # transparent: the page's own background shows
    with pytest.raises(UsageError, match="theme"):
        tf.plot(df, theme="pink")


def test_counts_as_stacked_areas_or_small_multiples_by_any_column():
    events = [tf.Event(timestamp=T0 + i, source=f"app-{i % 3}", tags=["http", "slow"] if i % 5 == 0 else ["http"],
                       content=f"GET /{i}") for i in range(600)]
    df = to_dataframe(events, progress=False)
    before = df.copy()
    stacked = tf.plot(df)
    (ax,) = stacked.axes
    assert ax.get_ylabel().startswith("events per ")
    assert sorted(c.get_label() for c in ax.collections) == ["app-0", "app-1", "app-2"]
    multiples = tf.plot(df, by="tag", stacked=False)
    assert [a.get_title(loc="left") for a in multiples.axes] == ["http", "slow"]
    totals = [np.nansum(a.get_lines()[0].get_ydata()) for a in multiples.axes]
    assert totals == [600, 120]
    pd.testing.assert_frame_equal(df, before)  # the frame is not changed
    with pytest.raises(UsageError, match="not a column"):
        tf.plot(df, by="pattern")


def test_outages_are_shaded():
    times = T0 + np.arange(300.0)
    fig = tf.plot(readings(times, np.ones(300)), outages=[(T0 + 100, T0 + 130)])
    patches = [p for p in fig.axes[0].patches]
    assert len(patches) == 1
    box = patches[0].get_bbox()
    x0, x1 = box.x0, box.x1
    assert mdates.num2date(x0).timestamp() == pytest.approx(T0 + 100, abs=1e-3)
    assert mdates.num2date(x1).timestamp() == pytest.approx(T0 + 130, abs=1e-3)


def test_bad_options_are_usage_errors():
    df = readings(T0 + np.arange(10.0), np.ones(10))
    for options, word in (({"kind": "pie"}, "kind"), ({"tz": "Mars/Olympus"}, "tz"), ({"max_height": 0.1}, "max_height"),
                          ({"gap": "soon"}, "gap"), ({"method": "lttb"}, "method"), ({"max_points": 2}, "max_points")):
        with pytest.raises(UsageError, match=word):
            tf.plot(df, **options)
    text = to_dataframe([tf.Event(timestamp=T0, content="hello")], progress=False)
    with pytest.raises(UsageError, match="readings"):
        tf.plot(text, kind="readings")


def test_the_live_plotter_and_tf_plot_draw_the_same_lines():
    df = to_dataframe(list(tf.sensor_events(3000, sources=3, seed=4)), progress=False)
    fig = tf.plot(df, figsize=(8, 3.6))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    other = Figure(figsize=(8, 3.6), dpi=96)
    FigureCanvasAgg(other)
    Plotter(other).draw(df)
    for a, b in zip(fig.axes, other.axes):
        np.testing.assert_array_equal(a.get_lines()[0].get_ydata(), b.get_lines()[0].get_ydata())


# --------------------------------------------------------------------------- the registry


def test_live_frames_lists_the_running_frames_and_stop_all_stops_them(collector):
    first = LiveFrame(collector.url, SENSORS).start()
    second = LiveFrame(collector.url, SENSORS).start()
    try:
        assert {id(f) for f in tf.live_frames()} >= {id(first), id(second)}
        second.stop()
        assert id(second) not in {id(f) for f in tf.live_frames()}
        assert tf.stop_all() >= 1
        assert first.state == "stopped" and not first.running
        assert tf.live_frames() == []
    finally:
        first.stop()
        second.stop()


class FakeShell:
    """What the registry reads of an IPython kernel's shell: the request being run."""

    kernel = object()

    def __init__(self) -> None:
        self.parent_header: dict = {}

    def run_cell(self, cell_id: str, msg_id: str) -> None:
        self.parent_header = {"header": {"msg_id": msg_id}, "metadata": {"cellId": cell_id}}


def test_rerunning_a_cell_replaces_the_frame_it_made(collector, monkeypatch):
    import IPython.core.getipython

    shell = FakeShell()
    monkeypatch.setattr(IPython.core.getipython, "get_ipython", lambda: shell)
    shell.run_cell("cell-a", "run-1")
    first = LiveFrame(collector.url, SENSORS).start()
    also_first = LiveFrame(collector.url, SENSORS).start()  # two frames of one run leave each other alone
    shell.run_cell("cell-b", "run-2")
    other_cell = LiveFrame(collector.url, SENSORS).start()
    try:
        assert first.cell == ("cell-a", "run-1") and first.state == also_first.state == "running"
        shell.run_cell("cell-a", "run-3")  # the same cell again
        again = LiveFrame(collector.url, SENSORS).start()
        assert first.state == "stopped" and also_first.state == "stopped"
        assert again.state == "running" and other_cell.state == "running"
        assert {id(f) for f in tf.live_frames()} == {id(again), id(other_cell)}
    finally:
        tf.stop_all()
    assert registry.live_frames() == []


# --------------------------------------------------------------------------- the live view


def test_the_status_line_is_one_line_with_the_details_in_its_tooltip(collector, sender):
    live = LiveFrame(collector.url, SENSORS).start()
    view = LiveView(live, mode="widget", every=0.02)
    try:
        assert live.wait_for(sender.send_many(list(tf.sensor_events(30, sources=2))))
        wait_until(lambda: "30 events" in view.status_line.value, what="the status line")
        value = view.status_line.value
        assert "white-space:nowrap" in value and "text-overflow:ellipsis" in value
        title = value.split('title="', 1)[1].split('"', 1)[0]
        assert "30 events" in title and "30 rows" in title and "0 errors" in title  # everything, on hover
        shown = value.split('<span style="font-family:monospace">', 1)[1].split("</span>", 1)[0]
        assert shown.startswith("live · 30 events") and "rows" not in shown
        assert "\n" not in view.status_brief() and "rows" not in view.status_brief()
    finally:
        view.stop()
    status = LiveStatus(state="running", received=10, rows=10, dropped=0, rate=0.0, errors=0, last_error=None,
                        newest=None, lag=None, version=1, phase="reconnecting", since=T0, gap_last=4.4, attempt=3,
                        reason="the collector does not accept connections (it is not running, or not at this address)")
    assert status.brief == "reconnecting (4.4 s, attempt 3) · 10 events · 0/s"
    assert "does not accept connections" in str(status)


def test_a_reconnect_is_an_outage_shaded_on_the_live_plot(tmp_path, sender):
    collector = serve(db=tmp_path / "events.db", port=0)
    port = collector.port
    live = LiveFrame(collector.url, SENSORS, receive_options={"backoff": 0.05, "max_backoff": 0.1}).start()
    view = LiveView(live, mode="widget", every=0.02)
    try:
        with tf.Client(collector.url) as client:
            assert live.wait_for(client.send_many(list(tf.sensor_events(50, sources=1, start=T0))))
        collector.stop()
        wait_until(lambda: live.outages, what="the frame to notice")
        assert live.outages[-1][1] is None
        collector = serve(db=tmp_path / "events.db", port=port)
        wait_until(lambda: live.outages[-1][1] is not None, what="the frame to come back")
        assert live.status().phase == "live"
        (start, end), = live.outages
        assert end is not None and end > start
        view.update(force=True)
        with view._draw_lock:
            assert [len(ax.patches) for ax in view._figure.axes] == [1]
    finally:
        view.stop()
        collector.stop()


def test_the_window_selector_shows_the_newest_span(collector, sender):
    live = LiveFrame(collector.url, SENSORS).start()
    view = LiveView(live, mode="widget", every=10)
    try:
        events = list(tf.sensor_events(1200, sources=1, start=T0, rate=1))  # twenty minutes, one a second
        assert live.wait_for(sender.send_many(events))
        view.update(force=True)
        spans = {}
        for span in ("last 1 min", "last 10 min", "all"):
            view.span_buttons.value = span  # what a click does
            with view._draw_lock:
                lo, hi = view._figure.axes[0].get_xlim()
            spans[span] = (hi - lo) * 86400
        assert 55 < spans["last 1 min"] < 75 and 550 < spans["last 10 min"] < 700 and spans["all"] > 1150
        with pytest.raises(UsageError, match="span"):
            view.show_span("1 hour")
    finally:
        view.stop()


def test_interactive_mode_draws_on_ipympls_canvas_and_keeps_a_zoom(collector, sender):
    pytest.importorskip("ipympl")
    live = LiveFrame(collector.url, SENSORS).start()
    view = LiveView(live, mode="widget", every=10, interactive=True, theme="light")
    try:
        assert type(view.canvas).__name__ == "LockedCanvas" and view.image is view.canvas
        assert live.wait_for(sender.send_many(list(tf.sensor_events(600, sources=1, start=T0, rate=1))))
        view.update(force=True)
        ax = view._figure.axes[0]
        full = ax.get_xlim()
        zoomed = (full[0] + (full[1] - full[0]) * 0.25, full[0] + (full[1] - full[0]) * 0.5)
        ax.set_xlim(zoomed)  # what the zoom tool does
        assert live.wait_for(600 + sender.send_many(list(tf.sensor_events(60, sources=1, start=T0 + 600, rate=1))))
        view.update(force=True)
        assert ax.get_xlim() == pytest.approx(zoomed)  # new events do not undo the zoom
        assert live.wait_for(660 + sender.send_many(list(tf.sensor_events(60, sources=1, start=T0 + 660, rate=1))))
        view.update(force=True)
        assert ax.get_xlim() == pytest.approx(zoomed)  # nor do the next ones
        view.show_span("all")  # choosing a span follows the newest events again
        assert ax.get_xlim()[1] > full[1]
        assert view.redraws >= 3 and view.png == b""
    finally:
        view.close()


def test_redraws_follow_new_data_while_an_outage_is_shaded():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = T0 + np.arange(600.0)
    df = readings(times, np.sin(np.arange(600) / 20))
    fig = Figure()
    FigureCanvasAgg(fig)
    plotter = Plotter(fig)
    for end in (200, 300, 400, 600):  # the frame grows while the collector is away since T0 + 150
        plotter.draw(df.iloc[:end], outages=[(T0 + 150, None)])
        ax = fig.axes[0]
        assert mdates.num2date(ax.get_xlim()[1]).timestamp() >= T0 + end - 1
        assert not plotter.user_zoomed
    ax.set_xlim(ax.get_xlim()[0], ax.get_xlim()[0] + 0.001)  # a zoom by hand
    plotter.draw(df)
    assert plotter.user_zoomed


def test_interactive_without_ipympl_names_the_extra_before_subscribing(collector, monkeypatch):
    import sys

    from theia_frames.live import widget

    monkeypatch.setitem(sys.modules, "ipympl.backend_nbagg", None)
    monkeypatch.setattr(widget, "_CANVAS", [])
    with pytest.raises(MissingDependencyError, match=r"theia-frames\[widget\]") as info:
        tf.live_plot(collector.url, SENSORS, mode="widget", interactive=True)
    assert info.value.package == "ipympl"
    assert tf.live_frames() == []  # nothing was left subscribed
