"""The live widget, headless (Agg; ipywidgets objects made without a kernel), against the real collector."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")

import pandas as pd
import pytest

import theia_frames as tf
from theia_frames.client import Client
from theia_frames.server.collector import serve
from theia_frames.exceptions import MissingDependencyError, UsageError
from theia_frames.frames.convert import EVENT_DTYPES, to_dataframe
from theia_frames.live.frame import LiveFrame, live_plot
from theia_frames.simulation import sensor_events
from theia_frames.live.widget import LiveView, choose_freq, default_plot, in_kernel
from waiting import wait_until

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

SENSORS = tf.Filter().match_tag("sensor")


def send_readings(client: Client, n: int, *, seed: int = 1) -> int:
    return client.send_many(list(sensor_events(n, sources=3, seed=seed)))


@pytest.fixture
def live(collector):
    frame = LiveFrame(collector.url, SENSORS, max_rows=50_000).start()
    yield frame
    frame.stop()


# --------------------------------------------------------------------------- redraws


def test_figure_is_redrawn_when_events_arrive_and_counters_move(live, sender):
    view = live.widget(mode="widget", every=0.05)
    try:
        assert view.redraws == 1  # the empty figure, drawn when the widget is made
        empty = view.png
        assert empty.startswith(b"\x89PNG") and view.image.value == empty
        assert "0 events" in view.status_text()

        n = send_readings(sender, 300)
        assert live.wait_for(n)
        wait_until(lambda: view.redraws >= 2 and view._drawn_version == live.version, what="a redraw")
        assert view.png != empty and view.image.value == view.png
        wait_until(lambda: "300 events" in view.status_line.value, what="the status line")
        assert view.status_text().startswith("live · ")

        before = view.redraws
        n2 = send_readings(sender, 200, seed=2)
        assert live.wait_for(n + n2)
        wait_until(lambda: view.redraws > before and view._drawn_version == live.version, what="a second redraw")
        assert "500 events" in view.status_text()
    finally:
        view.stop()


def test_no_redraw_without_new_data(live, sender):
    view = live.widget(mode="widget", every=0.02)
    try:
        assert live.wait_for(send_readings(sender, 50))
        wait_until(lambda: view._drawn_version == live.version, what="a redraw")
        drawn, ticks = view.redraws, view.ticks
        wait_until(lambda: view.ticks >= ticks + 5, what="timer rounds")
        assert view.redraws == drawn
        assert view.update() is False
    finally:
        view.stop()


def test_pause_stops_redraws_and_resume_restarts_them(live, sender):
    view = live.widget(mode="widget", every=0.02)
    try:
        assert live.wait_for(send_readings(sender, 100))
        wait_until(lambda: view._drawn_version == live.version, what="a redraw")

        view.pause_button.click()
        assert view.paused and live.state == "paused"
        assert view.pause_button.description == "Resume"
        drawn, image, ticks = view.redraws, view.png, view.ticks
        assert live.wait_for(100 + send_readings(sender, 100, seed=2))
        wait_until(lambda: view.ticks >= ticks + 5, what="timer rounds")
        assert view.redraws == drawn and view.png == image
        assert len(live.df) == 100  # frozen while paused
        assert "paused" in view.status_text() and "200 events" in view.status_text()

        view.pause_button.click()
        assert not view.paused and live.state == "running"
        wait_until(lambda: view.redraws > drawn, what="a redraw after resume")
        assert view.png != image
        assert len(live.df) == 200
    finally:
        view.stop()


def test_stop_button_ends_the_timer_the_thread_and_the_socket(collector, sender):
    live = LiveFrame(collector.url, SENSORS).start()
    view = live.widget(mode="widget", every=0.05)
    assert live.wait_for(send_readings(sender, 30))
    view.stop_button.click()
    assert view.stopped and live.state == "stopped"
    assert not live.running
    assert not view._timer.is_alive()
    assert view.pause_button.disabled and view.stop_button.disabled
    assert view._drawn_version == live.version  # the final state is drawn
    assert "stopped" in view.status_line.value
    view.stop()  # idempotent


def test_custom_plot_replaces_the_default(live, sender):
    calls = []

    def plot(df, ax):
        calls.append((df.dtypes.to_dict(), len(df), type(ax).__name__))
        ax.bar(["rows"], [len(df)])

    view = live.widget(plot=plot, mode="widget", every=0.02)
    try:
        assert calls and calls[0][1] == 0
        assert live.wait_for(send_readings(sender, 40))
        wait_until(lambda: any(n == 40 for _, n, _ in calls), what="the custom plot to see the rows")
        dtypes, _, ax_type = calls[-1]
        assert pd.Series(dtypes).equals(pd.Series(EVENT_DTYPES))
        assert ax_type == "Axes"
        assert view._plotter is None  # the default plot never ran
        assert view.last_error is None
    finally:
        view.stop()


def test_a_failing_plot_is_shown_and_the_view_keeps_going(live, sender):
    def plot(df, ax):
        if len(df):
            raise ValueError("no good")

    view = live.widget(plot=plot, mode="widget", every=0.02)
    try:
        assert live.wait_for(send_readings(sender, 10))
        wait_until(lambda: view.last_error is not None, what="the plot error")
        assert "plot error: ValueError: no good" in view.status_text()
        assert view.png.startswith(b"\x89PNG")
        assert view._timer.is_alive()
    finally:
        view.stop()


def test_timer_ends_by_itself_when_the_frame_stops(collector, sender):
    live = LiveFrame(collector.url, SENSORS).start()
    view = LiveView(live, every=0.02, mode="widget", stop_frame=False)
    assert live.wait_for(send_readings(sender, 20))
    live.stop()
    view._timer.join(10)
    assert not view._timer.is_alive()
    assert view._drawn_version == live.version


# --------------------------------------------------------------------------- live_plot and modes


def test_live_plot_one_liner(collector, sender):
    view = live_plot(collector.url, {"tags": ["sensor"]}, every=0.05, mode="widget")
    try:
        assert isinstance(view, LiveView) and view.live.running
        assert view.live._buffer.max_rows == 100_000  # bounded unless told otherwise
        assert view.live.wait_for(send_readings(sender, 60))
        wait_until(lambda: view._drawn_version == view.live.version, what="a redraw")
        bundle = view._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
    finally:
        view.stop()
    assert not view.live.running


def test_outside_jupyter_the_view_is_a_text_status(live, sender):
    assert not in_kernel()
    view = live.widget()  # mode="auto"
    assert view.mode == "text" and view.box is None and view._timer is None
    assert live.wait_for(send_readings(sender, 5))
    assert "5 events" in str(view)
    assert view._repr_mimebundle_() == {"text/plain": view.status_text()}
    assert view.update() is False
    view.stop()
    assert live.state == "stopped"


def test_missing_ipywidgets_names_the_extra(live, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(MissingDependencyError, match=r"theia-frames\[widget\]") as info:
        live.widget(mode="widget")
    assert info.value.extra == "widget" and isinstance(info.value, ImportError)


def test_missing_matplotlib_fails_before_subscribing(collector, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        live_plot(collector.url, SENSORS, mode="widget")


def test_bad_options():
    frame = LiveFrame("ws://127.0.0.1:1")
    with pytest.raises(UsageError, match="every"):
        LiveView(frame, every=0, mode="text")
    with pytest.raises(UsageError, match="mode"):
        LiveView(frame, mode="gui")
    with pytest.raises(UsageError, match="plot"):
        LiveView(frame, plot="line", mode="text")


# --------------------------------------------------------------------------- the default plot


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    return fig


def test_default_plot_draws_readings_per_unit_and_source():
    df = to_dataframe(list(sensor_events(400, sources=4, seed=3)), progress=False)
    fig = _figure()
    default_plot(df, fig.add_subplot())
    assert [a.get_ylabel() for a in fig.axes] == ["%", "°C", "hPa", "ppm"]
    labels = [line.get_label() for a in fig.axes for line in a.get_lines()]
    assert labels == ["/dev/sensors/humidity-2", "/dev/sensors/temp-1", "/dev/sensors/pressure-3", "/dev/sensors/co2-4"]
    fig.canvas.draw()


def test_default_plot_counts_events_when_content_is_not_numeric():
    events = [
        tf.Event(timestamp=1_700_000_000 + i * 0.5, source=f"/var/log/app-{i % 2}", content=f"GET /x {i} ok")
        for i in range(200)
    ]
    fig = _figure()
    default_plot(to_dataframe(events, progress=False), fig.add_subplot())
    (ax,) = fig.axes
    assert ax.get_ylabel() == "events per 2s"
    # stacked areas, one per source, named in the legend
    assert sorted(area.get_label() for area in ax.collections) == ["/var/log/app-0", "/var/log/app-1"]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["/var/log/app-0", "/var/log/app-1"]
    fig.canvas.draw()


def test_default_plot_draws_late_events_in_time_order():
    events = list(sensor_events(50, sources=1, seed=8))
    df = to_dataframe(events[10:] + events[:10], progress=False)  # the first ten arrive last
    fig = _figure()
    default_plot(df, fig.add_subplot())
    x = fig.axes[0].get_lines()[0].get_xdata()
    assert len(x) == 50 and (x[1:] >= x[:-1]).all()


def test_default_plot_thins_points_but_keeps_the_span():
    df = to_dataframe(list(sensor_events(20_000, sources=2, seed=4)), progress=False)
    fig = _figure()
    default_plot(df, fig.add_subplot(), max_points=500)
    for ax in fig.axes:
        (line,) = ax.get_lines()
        x = line.get_xdata()
        assert len(x) <= 501
        assert pd.Timestamp(x[-1], tz="UTC") == df["timestamp"][df["source"] == line.get_label()].iloc[-1]


def test_default_plot_of_no_events():
    fig = _figure()
    default_plot(to_dataframe([], progress=False), fig.add_subplot())
    assert "waiting" in fig.axes[0].texts[0].get_text()


def test_choose_freq():
    assert choose_freq(59) == "1s"
    assert choose_freq(61) == "2s"
    assert choose_freq(10 * 86400) == "6h"
    assert choose_freq(10**9) == "7D"


def test_redraws_reuse_the_axes_while_the_layout_holds():
    from theia_frames.live.plotting import DefaultPlotter

    events = list(sensor_events(600, sources=2, seed=5))
    fig = _figure()
    plotter = DefaultPlotter(fig, 1000)
    plotter.draw(to_dataframe(events[:300], progress=False))
    axes = list(fig.axes)
    plotter.draw(to_dataframe(events, progress=False))
    assert fig.axes == axes
    assert sum(len(line.get_xdata()) for a in fig.axes for line in a.get_lines()) == 600
    plotter.draw(to_dataframe(list(sensor_events(30, sources=3, seed=6)), progress=False))
    assert len(fig.axes) == 3  # a new unit: the panels are laid out again


def test_close_stops_and_closes_the_widgets(live):
    view = live.widget(mode="widget", every=0.05)
    view.close()
    assert view.stopped and not view._timer.is_alive()
    assert view.box.comm is None and view.image.comm is None


# --------------------------------------------------------------------------- what the view says and allows


def controls(view):
    """The state a user sees: the buttons and the status line, read from the ipywidgets model."""
    return {
        "pause": (view.pause_button.description, view.pause_button.disabled),
        "stop": view.stop_button.disabled,
        "status": view.status_line.value,
    }


def test_a_stopped_view_disables_both_buttons_and_pause_stays_pause(collector, sender):
    live = LiveFrame(collector.url, SENSORS).start()
    view = live.widget(mode="widget", every=0.05)
    assert controls(view)["pause"] == ("Pause", False) and controls(view)["stop"] is False
    assert live.wait_for(send_readings(sender, 10))
    view.stop()
    assert controls(view)["pause"] == ("Pause", True) and controls(view)["stop"] is True
    view.pause()  # what the Pause button did when it was still clickable
    assert controls(view)["pause"] == ("Pause", True)
    view.pause_button.click()
    assert controls(view)["pause"] == ("Pause", True)
    assert not view.paused and live.state == "stopped"
    assert "stopped · 10 events" in controls(view)["status"]


def test_a_frame_stopped_elsewhere_disables_the_buttons(collector, sender):
    live = LiveFrame(collector.url, SENSORS).start()
    view = LiveView(live, every=0.02, mode="widget", stop_frame=False)
    view.pause()
    assert controls(view)["pause"] == ("Resume", False)
    live.stop()
    view._timer.join(10)
    assert controls(view)["pause"] == ("Pause", True) and controls(view)["stop"] is True
    view.pause_button.click()
    assert controls(view)["pause"] == ("Pause", True)


def test_a_frame_that_failed_says_why_in_words_and_is_over(collector, sender):
    live = LiveFrame(collector.url, SENSORS, reconnect=False).start()
    view = LiveView(live, every=0.02, mode="widget")
    try:
        assert live.wait_for(send_readings(sender, 5))
        collector.stop()
        view._timer.join(10)
        state = controls(view)
        assert live.state == "failed"
        assert "failed: the collector went away (it was stopped or is restarting)" in state["status"]
        assert "1001" not in state["status"] and "#c62828" in state["status"]
        assert state["pause"] == ("Pause", True) and state["stop"] is True
    finally:
        view.stop()


def test_while_the_collector_is_down_the_view_says_reconnecting_not_running(tmp_path, sender):
    collector = serve(db=tmp_path / "events.db", port=0)
    port = collector.port
    live = LiveFrame(collector.url, SENSORS, receive_options={"backoff": 0.05, "max_backoff": 0.1}).start()
    view = LiveView(live, every=0.02, mode="widget")
    try:
        wait_until(lambda: "#2e7d32" in view.status_line.value, what="the green dot of a live view")
        assert view.status_text().startswith("live · ")
        collector.stop()
        wait_until(lambda: "attempt 3" in view.status_line.value, what="a few reconnection attempts")
        status, line = live.status(), view.status_line.value
        assert status.phase == "reconnecting" and status.attempt >= 3
        assert "reconnecting since " in line and "does not accept connections" in line
        assert view.status_text().startswith("reconnecting since ") and "#2e7d32" not in line  # not "running", not green
        assert controls(view)["pause"] == ("Pause", False)  # still a running frame: it can be paused
        collector = serve(db=tmp_path / "events.db", port=port)
        wait_until(lambda: live.status().phase == "live", what="the frame to come back")
        wait_until(lambda: "#2e7d32" in view.status_line.value and "1 reconnect" in view.status_line.value,
                   what="the status line to say live again")
    finally:
        view.stop()
        collector.stop()


# --------------------------------------------------------------------------- the default plot shows every series


def test_the_default_plot_draws_the_fifth_sensor():
    # notebook 02 simulates five sensors, of five units
    df = to_dataframe(list(sensor_events(500, sources=5, seed=2)), progress=False)
    fig = _figure()
    assert default_plot(df, fig.add_subplot()) == ""
    assert [a.get_ylabel() for a in fig.axes] == ["%", "°C", "hPa", "lx", "ppm"]
    assert sorted(line.get_label() for a in fig.axes for line in a.get_lines()) == sorted(df["source"].unique())
    assert 3 * 1.6 < fig.get_figheight() <= 6.0  # taller, but under the cap the five panels share
    fig.canvas.draw()


def test_what_the_default_plot_leaves_out_is_said(live):
    events = [
        tf.Event(timestamp=1_700_000_000 + i, source=f"/dev/u{i % 10}-s{i % 12}", content=f"{i}.5 u{i % 10}")
        for i in range(1200)
    ]
    df = to_dataframe(events, progress=False)
    fig = _figure()
    left_out = default_plot(df, fig.add_subplot())
    assert len(fig.axes) == 8
    assert left_out.startswith("2 units (")
    assert any(t.get_text() == f"not drawn: {left_out}" for t in fig.texts)

    many = [tf.Event(timestamp=1_700_000_000 + i, source=f"/dev/t{i % 13}", tags=["sensor"], content=f"{i % 30}.5C")
            for i in range(260)]
    assert default_plot(to_dataframe(many, progress=False), _figure().add_subplot()) == "3 sources of °C"
    view = LiveView(live, mode="widget", every=0.02)
    try:
        assert "not drawn" not in view.status_text()
        with Client(live.url) as client:
            assert live.wait_for(client.send_many(many))
        wait_until(lambda: view._drawn_version == live.version, what="a redraw")
        wait_until(lambda: "not drawn: 3 sources of °C" in view.status_line.value, what="the status line")
    finally:
        view.stop()


def test_a_custom_plot_keeps_its_title_and_readable_time_ticks(live, sender):
    def temperatures(df, ax):
        readings = df.theia.extract()
        ax.plot(readings["timestamp"], readings["value"], ".")
        ax.set_title("temperature readings")

    view = live.widget(plot=temperatures, mode="widget", every=0.02)
    try:
        assert live.wait_for(send_readings(sender, 200))
        wait_until(lambda: view._drawn_version == live.version, what="a redraw")
        with view._draw_lock:
            fig = view._figure
            (ax,) = fig.axes
            renderer = fig.canvas.get_renderer()
            assert ax.title.get_window_extent(renderer).y1 <= fig.bbox.y1  # not clipped
            labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels and not any(".000" in label for label in labels), labels
    finally:
        view.stop()


def test_the_title_of_the_view_survives_a_new_layout(live, sender):
    view = live.widget(mode="widget", every=0.02, title="sensors")
    try:
        assert live.wait_for(send_readings(sender, 60))  # three units: the panels are laid out again
        wait_until(lambda: view._drawn_version == live.version, what="a redraw")
        with view._draw_lock:
            fig = view._figure
            assert len(fig.axes) == 3
            assert fig._suptitle is not None and fig._suptitle in fig.texts
            assert fig._suptitle.get_text() == "sensors"
            renderer = fig.canvas.get_renderer()
            assert fig._suptitle.get_window_extent(renderer).y1 <= fig.bbox.y1
    finally:
        view.stop()
