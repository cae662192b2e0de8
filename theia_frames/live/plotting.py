"""The default plot of a :class:`~theia_frames.live.widget.LiveView`: :func:`default_plot` and its helpers.

The default plot draws numeric readings (``"21.5C"`` reads as °C, ``"45.2%"``)
per source over time, one panel per unit, or, when the content is not
numeric, event counts per time bucket per source; what it leaves out (beyond
eight units, or ten sources a panel) is said on the figure. A
:class:`DefaultPlotter` keeps the axes between redraws and only changes the
lines' data while the panels stay the same. :func:`format_time_axis` and
:func:`fit_margins` make any plot function's figure readable.

matplotlib, numpy and pandas are imported only when something is drawn.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "DefaultPlotter", "choose_freq", "default_plot", "fit_margins", "format_time_axis", "has_default_date_ticks",
    "unit_label",
]

# Time buckets the count plot chooses from, shortest first.
_FREQS = (
    ("100ms", 0.1), ("200ms", 0.2), ("500ms", 0.5), ("1s", 1), ("2s", 2), ("5s", 5), ("10s", 10),
    ("15s", 15), ("30s", 30), ("1min", 60), ("2min", 120), ("5min", 300), ("10min", 600),
    ("15min", 900), ("30min", 1800), ("1h", 3600), ("2h", 7200), ("6h", 21600), ("12h", 43200),
    ("1D", 86400), ("7D", 604800),
)
# Sources drawn at most per panel (the busiest); more would make an unreadable legend.
_MAX_SOURCES = 10
# Panels (one per unit) drawn at most; the figure grows by a panel's height for each.
_MAX_PANELS = 8
_PANEL_INCHES = 1.6
# How a unit reads on an axis, where the content's unit is short for it.
_UNIT_LABELS = {"C": "°C", "F": "°F", "degC": "°C", "degF": "°F"}


def choose_freq(span_seconds: float, buckets: int = 60) -> str:
    """A round bucket width that cuts ``span_seconds`` into at most about ``buckets`` buckets.

    >>> choose_freq(30), choose_freq(3600), choose_freq(0)
    ('500ms', '1min', '100ms')
    """
    for name, seconds in _FREQS:
        if seconds * buckets >= span_seconds:
            return name
    return _FREQS[-1][0]


def _thin(df: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """At most ``max_points`` rows per source, evenly spread over each source's rows (last row kept)."""
    import numpy as np

    if len(df) <= max_points:
        return df
    codes = df["source"].cat.codes.to_numpy() if hasattr(df["source"], "cat") else df["source"].factorize()[0]
    picks = []
    for code in np.unique(codes):
        idx = np.flatnonzero(codes == code)
        if len(idx) > max_points:
            step = math.ceil(len(idx) / max_points)
            idx = np.unique(np.append(idx[::-step][::-1], idx[-1]))
        picks.append(idx)
    return df.iloc[np.sort(np.concatenate(picks))]


def _busiest_sources(df: pd.DataFrame) -> tuple[list[str], int]:
    """The busiest sources (at most ``_MAX_SOURCES``) and how many others there are."""
    counts = df["source"].astype(str).value_counts()
    return list(counts.index[:_MAX_SOURCES]), max(len(counts) - _MAX_SOURCES, 0)


def unit_label(unit: str) -> str:
    """How a reading's unit reads on an axis: ``"C"`` is ``"°C"``.

    >>> unit_label("C"), unit_label("hPa"), unit_label("")
    ('°C', 'hPa', 'value')
    """
    return _UNIT_LABELS.get(unit, unit) or "value"


def _readings(df: pd.DataFrame) -> pd.DataFrame | None:
    """timestamp, source, value (float) and unit of the rows whose content is a reading, or None."""
    import numpy as np
    import pandas as pd

    from ..frames.analysis import SENSOR_PATTERN, extract

    # Readings repeat ("21.5C"): match each distinct text once, then spread by code.
    codes, uniques = pd.factorize(df["content"], use_na_sentinel=True)
    found = extract(pd.DataFrame({"content": uniques.astype(pd.StringDtype("pyarrow"))}), SENSOR_PATTERN)
    if "value" not in found.columns or not len(found):
        return None
    value = pd.to_numeric(found["value"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    unit = (
        found["unit"].astype("string").fillna("").to_numpy(dtype=object)
        if "unit" in found.columns
        else np.full(len(found), "", dtype=object)
    )
    value = np.where(codes >= 0, value[codes], np.nan)
    ok = ~np.isnan(value)
    if ok.sum() * 2 < len(df):  # mostly not readings: count events instead
        return None
    out = pd.DataFrame(
        {
            "timestamp": _naive_utc(df["timestamp"])[ok],
            "source": df["source"].astype(str).to_numpy()[ok],
            "value": value[ok],
            "unit": unit[codes[ok]],
        }
    )
    # late events arrive out of order; lines are drawn in time order
    if not out["timestamp"].is_monotonic_increasing:
        out = out.sort_values("timestamp", kind="stable", ignore_index=True)
    return out


def _naive_utc(times: Any) -> Any:
    """Timestamps as naive UTC ``datetime64[ns]`` values: matplotlib converts those
    in one go, but tz-aware ones one Timestamp object at a time."""
    import numpy as np
    import pandas as pd

    index = pd.DatetimeIndex(times)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return np.asarray(index, dtype="datetime64[ns]")


def default_plot(df: pd.DataFrame, ax: Any, *, max_points: int = 1000) -> str:
    """Draw numeric readings per source over time, or event counts per time bucket per source.

    Readings with several units get one panel each, in name order (the figure
    of ``ax`` is split, and made taller where the panels need it, about 1.6
    inches each; at most eight units, the most frequent). At most ``max_points`` points
    per source are drawn, evenly spread, and at most ten sources per panel
    (the busiest). What is left out is said on the figure and returned (``""``
    when everything is drawn).

    >>> from matplotlib.figure import Figure
    >>> from theia_frames.frames.convert import to_dataframe
    >>> from theia_frames.simulation import sensor_events
    >>> fig = Figure()
    >>> default_plot(to_dataframe(sensor_events(40, sources=2, seed=1), progress=False), fig.add_subplot())
    ''
    >>> [a.get_ylabel() for a in fig.axes]
    ['%', '°C']
    """
    plotter = DefaultPlotter(ax.figure, max_points)
    plotter.draw(df, ax)
    return plotter.left_out


class DefaultPlotter:
    """The default plot, kept between redraws.

    While the panels (units, sources, bucket width) stay the same, only the
    lines' data change: rebuilding axes and their ticks is most of the cost of
    a redraw.
    """

    def __init__(self, figure: Any, max_points: int) -> None:
        self.figure = figure
        self.max_points = max_points
        self._layout: tuple[Any, ...] | None = None
        self._lines: dict[tuple[str, str], Any] = {}
        self._axes: list[Any] = []
        self._base_height = figure.get_figheight()
        self._note: Any = None
        #: what the last drawing left out, in words ("" when nothing)
        self.left_out = ""

    def draw(self, df: pd.DataFrame, ax: Any = None) -> None:
        if df.empty:
            self._reset(ax)
            ax = self._axes[0]
            ax.text(0.5, 0.5, "waiting for events…", ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_axis_off()
            self._layout = ("empty",)
            self._say_left_out("")
            return
        readings = _readings(_thin(df, self.max_points))
        if readings is not None:
            self._draw_readings(readings, ax)
        else:
            self._draw_counts(df, ax)

    def _reset(self, ax: Any, panels: int = 1) -> None:
        fig = self.figure
        height = max(self._base_height, 0.8 + _PANEL_INCHES * panels)
        if abs(fig.get_figheight() - height) > 1e-6:
            fig.set_figheight(height)
        if ax is not None and panels == 1:
            for other in list(fig.axes):
                if other is not ax:
                    fig.delaxes(other)
            ax.clear()
            self._axes = [ax]
        else:
            fig.clear()
            self._axes = list(fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0])
        if self._note is not None and self._note in fig.texts:
            self._note.remove()  # the single-panel path keeps the figure, and its note
        self._note = None
        self._lines = {}

    def _say_left_out(self, text: str) -> None:
        self.left_out = text
        if not text:
            if self._note is not None:
                self._note.set_text("")
            return
        if self._note is None:
            self._note = self.figure.text(0.99, 0.005, "", ha="right", va="bottom", fontsize="x-small", color="0.35")
        self._note.set_text(f"not drawn: {text}")

    def _draw_readings(self, readings: pd.DataFrame, ax: Any) -> None:
        # the most frequent units (ties by name), shown in name order so panels stay put
        counts = readings["unit"].value_counts()
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        units = sorted(str(u) for u, _ in ranked[:_MAX_PANELS])
        hidden_units = sorted(str(u) for u, _ in ranked[_MAX_PANELS:])
        series: dict[tuple[str, str], pd.DataFrame] = {}
        hidden_sources: list[str] = []
        for unit, rows in readings.groupby("unit", sort=True):
            if str(unit) not in units:
                continue
            shown, others = _busiest_sources(rows)
            if others:
                hidden_sources.append(f"{others} source{'s' if others > 1 else ''} of {unit_label(str(unit))}")
            for source, part in rows.groupby("source", sort=True):
                if source in shown:
                    series[str(unit), str(source)] = part
        layout = ("readings", tuple(units), tuple(series))
        if layout != self._layout:
            self._reset(ax, len(units))
            for unit, axis in zip(units, self._axes):
                for (u, source), rows in series.items():
                    if u == unit:
                        (self._lines[u, source],) = axis.plot(
                            rows["timestamp"].to_numpy(), rows["value"].to_numpy(), label=source, linewidth=1.2
                        )
                axis.set_ylabel(unit_label(unit))
                axis.grid(True, alpha=0.3)
                axis.legend(loc="upper left", fontsize="x-small", ncol=2, frameon=False)
                format_time_axis(axis)
            self._axes[-1].set_xlabel("time (UTC)")
            self._layout = layout
        else:
            for key, rows in series.items():
                self._lines[key].set_data(rows["timestamp"].to_numpy(), rows["value"].to_numpy())
            self._rescale()
        parts = []
        if hidden_units:
            parts.append(f"{len(hidden_units)} unit{'s' if len(hidden_units) > 1 else ''} ({', '.join(map(unit_label, hidden_units))})")
        self._say_left_out("; ".join(parts + hidden_sources))

    def _draw_counts(self, df: pd.DataFrame, ax: Any) -> None:
        from ..frames.analysis import bucket

        ts = df["timestamp"]
        freq = choose_freq((ts.max() - ts.min()).total_seconds())
        counts = _as_wide_counts(bucket(df, freq, by="source"))
        busiest, others = _busiest_sources(df)
        sources = [s for s in busiest if s in counts.columns]
        layout = ("counts", freq, tuple(sources))
        if layout != self._layout:
            self._reset(ax)
            axis = self._axes[0]
            for source in sources:
                (self._lines["", source],) = axis.step(
                    _naive_utc(counts.index), counts[source].to_numpy(), where="post", label=source, linewidth=1.2
                )
            axis.set_ylabel(f"events per {freq}")
            axis.set_xlabel("time (UTC)")
            axis.grid(True, alpha=0.3)
            if sources:
                axis.legend(loc="upper left", fontsize="x-small", ncol=2, frameon=False)
            format_time_axis(axis)
            axis.set_ylim(bottom=0)
            self._layout = layout
        else:
            for source in sources:
                self._lines["", source].set_data(_naive_utc(counts.index), counts[source].to_numpy())
            self._rescale()
            self._axes[0].set_ylim(bottom=0)
        self._say_left_out(f"{others} quieter source{'s' if others > 1 else ''}" if others else "")

    def _rescale(self) -> None:
        for axis in self._axes:
            axis.relim()
            axis.autoscale_view()


def _as_wide_counts(counted: pd.DataFrame) -> pd.DataFrame:
    """Counts from ``bucket(..., by="source")`` with plain string column names."""
    frame = counted.copy()
    frame.columns = [str(c) for c in frame.columns]
    return frame


def format_time_axis(ax: Any) -> None:
    """Readable time ticks on ``ax``'s x axis: ``10:57``, ``:05``, ``:10`` with the date once, not ``57:12.000000``."""
    import matplotlib.dates as mdates

    # minticks=3: a span of a few minutes is ticked in minutes, not in more seconds than fit
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def has_default_date_ticks(ax: Any) -> bool:
    """Whether ``ax`` shows times on x with matplotlib's default formatter (a plot function left it)."""
    import matplotlib.dates as mdates

    return isinstance(ax.xaxis.get_major_formatter(), mdates.AutoDateFormatter)


def fit_margins(fig: Any, *, suptitle: bool) -> None:
    """Fixed margins, in inches, that leave room for the axes' titles and the figure's:
    a layout engine would double the cost of every redraw."""
    height = fig.get_figheight()
    titled = any(a.get_title() or a.get_title("left") or a.get_title("right") for a in fig.axes)
    top_inches = 0.12 + (0.3 if titled else 0.0) + (0.32 if suptitle else 0.0)
    bottom_inches = 0.5
    fig.subplots_adjust(left=0.1, right=0.98, bottom=min(bottom_inches / height, 0.3),
                        top=max(1 - top_inches / height, 0.5), hspace=0.15 if not titled else 0.45)
