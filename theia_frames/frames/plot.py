"""Plots of event frames an analyst can trust: :func:`plot` and the layer under every plot of this package.

One :class:`Plotter` draws a static frame (:func:`plot`), the live widget's
figure and the notebooks' plots, so they all follow the same rules:

- **readings per unit**: ``"21.5C"`` and ``"1020.4hPa"`` read with
  :func:`~theia_frames.frames.analysis.extract`, one panel per unit, one line per
  source, the unit on the y axis; numbers shown as they are (no offset such as
  ``+1.02e3`` in a corner);
- **counts** when the content is not numeric: events per time bucket per
  source (or per tag, or per any column such as a pattern), as stacked areas
  or as small multiples;
- **gaps are breaks**: a line never joins two readings further apart than
  ``gap`` (by default five times the series' median interval);
- **peaks are kept**: a long series is cut to about two points per pixel
  column, the minimum and the maximum of each column (:func:`downsample`),
  columns aligned to round times so a day's extremes stay that day's;
- **time in a zone**: ``tz=`` (default UTC) for the ticks, named on the axis
  (``time (Europe/Berlin)``), ticks that say hours and minutes
  (``10:00:05``, never a bare ``05`` that reads as minutes);
- a height cap (panels share it), the legend outside the data, and a
  ``theme`` (``"light"``, ``"dark"``, or ``"auto"``: a transparent background
  with mid-grey text that reads on both, for a notebook whose theme the
  kernel cannot know);
- known outages (a live frame's reconnect periods) shaded.

    >>> import theia_frames as tf
    >>> df = tf.to_dataframe(tf.sensor_events(200, sources=2, seed=1), progress=False)
    >>> fig = tf.plot(df, tz="Europe/Berlin")
    >>> [ax.get_ylabel() for ax in fig.axes], fig.axes[-1].get_xlabel()
    (['%', '°C'], 'time (Europe/Berlin)')

matplotlib is imported only when something is drawn (``pip install
'theia-frames[plot]'``); the figure is a ``matplotlib.figure.Figure`` of its own
(no pyplot), shown by Jupyter as an image. ``tsdownsample`` (in the same
extra) is used by ``downsample(..., method="minmaxlttb")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from ..checks import positive_int, positive_number, positive_seconds
from ..exceptions import MissingDependencyError, UsageError
from ..timeparse import DurationLike, to_seconds
from .analysis import SENSOR_PATTERN, bucket, event_times, extract

__all__ = [
    "plot", "Plotter", "downsample", "break_gaps", "gap_threshold", "choose_freq", "unit_label", "time_label",
    "format_time_axis", "plain_numbers", "has_default_date_ticks", "fit_margins", "style_figure", "Theme", "Kind",
    "Outage", "THEMES", "DOWNSAMPLE_METHODS", "GAP_INTERVALS", "check_plot_options",
]

Theme = Literal["light", "dark", "auto"]
Kind = Literal["auto", "readings", "counts"]
#: A period without data, as (start, end) in seconds since the epoch; ``end`` None while it lasts.
Outage = tuple[float, "float | None"]

#: Colours per theme: figure and axes background (None: transparent), text, grid, outage shading.
THEMES: dict[str, dict[str, Any]] = {
    "light": {"face": "white", "axes": "white", "text": "#222222", "grid": "#b0b0b0", "outage": "#ef6c00"},
    "dark": {"face": "#111111", "axes": "#111111", "text": "#dddddd", "grid": "#555555", "outage": "#ffa040"},
    "auto": {"face": "none", "axes": "none", "text": "#8a8a8a", "grid": "#8a8a8a", "outage": "#ef8a30"},
}
# Series colours that keep their contrast on white and on near-black alike.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")

DOWNSAMPLE_METHODS = ("minmax", "minmaxlttb")

# Time buckets the count plot and the downsampling columns choose from, shortest first.
_FREQS = (
    ("1ms", 0.001), ("2ms", 0.002), ("5ms", 0.005), ("10ms", 0.01), ("20ms", 0.02), ("50ms", 0.05),
    ("100ms", 0.1), ("200ms", 0.2), ("500ms", 0.5), ("1s", 1), ("2s", 2), ("5s", 5), ("10s", 10),
    ("15s", 15), ("30s", 30), ("1min", 60), ("2min", 120), ("5min", 300), ("10min", 600),
    ("15min", 900), ("30min", 1800), ("1h", 3600), ("2h", 7200), ("6h", 21600), ("12h", 43200),
    ("1D", 86400), ("7D", 604800),
)
_COUNT_FREQS = _FREQS[6:]  # counts are bucketed no finer than 100 ms
# Sources drawn at most per panel (the busiest); more would make an unreadable legend.
_MAX_SOURCES = 10
# Panels drawn at most.
_MAX_PANELS = 8
# A panel's height while the figure stays under its cap, and the room for the time axis.
_PANEL_INCHES = 1.6
_AXIS_INCHES = 0.8
# How a unit reads on an axis, where the content's unit is short for it.
_UNIT_LABELS = {"C": "°C", "F": "°F", "degC": "°C", "degF": "°F"}
# A gap, by default: more than this many median intervals between two points of a series.
GAP_INTERVALS = 5.0


# --------------------------------------------------------------------------- the rules, as functions


def choose_freq(span_seconds: float, buckets: int = 60) -> str:
    """A round bucket width (100 ms or more) that cuts ``span_seconds`` into at most about ``buckets`` buckets.

    >>> choose_freq(30), choose_freq(3600), choose_freq(0)
    ('500ms', '1min', '100ms')
    """
    for name, seconds in _COUNT_FREQS:
        if seconds * buckets >= span_seconds:
            return name
    return _COUNT_FREQS[-1][0]


def _column_seconds(span_seconds: float, columns: int) -> float:
    """The narrowest round width (1 ms to 7 days) at least ``span_seconds / columns``."""
    need = span_seconds / max(columns, 1)
    for _, seconds in _FREQS:
        if seconds >= need:
            return seconds
    return need


def unit_label(unit: str) -> str:
    """How a reading's unit reads on an axis: ``"C"`` is ``"°C"``.

    >>> unit_label("C"), unit_label("hPa"), unit_label("")
    ('°C', 'hPa', 'value')
    """
    return _UNIT_LABELS.get(unit, unit) or "value"


def time_label(tz: Any = "UTC") -> str:
    """The x axis label of a plot in ``tz``.

    >>> time_label(), time_label("Europe/Berlin")
    ('time (UTC)', 'time (Europe/Berlin)')
    """
    return f"time ({_tz_name(tz)})"


def _tz_name(tz: Any) -> str:
    if tz is None:
        return "UTC"
    key = getattr(tz, "key", None) or getattr(tz, "zone", None)
    return str(key if key else tz)


def _tzinfo(tz: Any) -> Any:
    """``tz`` as a tzinfo (a name, a tzinfo or None for UTC); an unknown name is a UsageError."""
    import datetime as dt

    if tz is None or tz == "UTC":
        return dt.timezone.utc
    if isinstance(tz, dt.tzinfo):
        return tz
    if isinstance(tz, str):
        import zoneinfo

        try:
            return zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise UsageError(f"tz must be a time zone name such as 'Europe/Berlin', got {tz!r}") from exc
    raise UsageError(f"tz must be a time zone name or a tzinfo, got {tz!r}")


def gap_threshold(x_ns: np.ndarray, gap: DurationLike | Literal["auto"] | None = "auto",
                  factor: float = GAP_INTERVALS) -> float:
    """The distance in nanoseconds beyond which two neighbouring points of a series are a gap (``inf``: never).

    ``gap="auto"``: ``factor`` times the median interval of the series;
    a duration (``"30s"``, ``90``): that; ``None``: no gaps.

    >>> import numpy as np
    >>> x = np.array([0, 1, 2, 3, 10], dtype="int64") * 1_000_000_000
    >>> gap_threshold(x) / 1e9, gap_threshold(x, "2s") / 1e9, gap_threshold(x, None)
    (5.0, 2.0, inf)
    """
    if gap is None:
        return math.inf
    if isinstance(gap, str) and gap == "auto":
        factor = positive_number("gap_factor", factor)
        if len(x_ns) < 3:
            return math.inf
        steps = np.diff(x_ns)
        steps = steps[steps > 0]
        if not len(steps):
            return math.inf
        return float(np.median(steps)) * factor
    return positive_seconds("gap", to_seconds(gap, name="gap")) * 1e9


def downsample(x_ns: np.ndarray, y: np.ndarray, columns: int, *, method: str = "minmax") -> np.ndarray:
    """The indices of the points to draw of a series sorted by time, about two per pixel column, peaks kept.

    ``method="minmax"`` (the default): the time axis is cut into columns of a
    round width (1 ms ... 7 days) no narrower than ``span / columns``, aligned
    to that width (a day's column is a UTC day), and the first, last, lowest
    and highest point of every column are kept: the plotted minimum and
    maximum of each column equal the data's. ``method="minmaxlttb"``:
    tsdownsample's MinMaxLTTB (about ``2 * columns`` points, the shape chosen
    by LTTB among each column's extremes, the global extremes added back), compiled and faster
    on large series; it needs ``pip install 'theia-frames[plot]'``.

    >>> import numpy as np
    >>> x = np.arange(10_000, dtype="int64") * 1_000_000_000
    >>> y = np.sin(np.arange(10_000) / 50.0); y[1234] = 5.0; y[4321] = -5.0
    >>> idx = downsample(x, y, 100)
    >>> len(idx) < 500, float(y[idx].max()), float(y[idx].min()), int(idx[0]), int(idx[-1])
    (True, 5.0, -5.0, 0, 9999)
    """
    n = len(x_ns)
    columns = positive_int("columns", columns)
    if method not in DOWNSAMPLE_METHODS:
        raise UsageError(f"method must be one of {', '.join(DOWNSAMPLE_METHODS)}, got {method!r}")
    if n <= 4 * columns:
        return np.arange(n)
    if method == "minmaxlttb":
        try:
            from tsdownsample import MinMaxLTTBDownsampler
        except ImportError as exc:
            raise MissingDependencyError("tsdownsample", "plot", "downsampling with MinMaxLTTB") from exc
        yv = np.ascontiguousarray(y, dtype=np.float64)
        picked = cast(Any, MinMaxLTTBDownsampler)().downsample(np.ascontiguousarray(x_ns, dtype=np.int64), yv,
                                                    n_out=max(2 * columns, 4))
        # LTTB chooses one point per bucket by area: the global extremes are added back
        return np.unique(np.concatenate((np.asarray(picked, dtype=np.int64), [np.argmin(yv), np.argmax(yv)])))
    x = np.asarray(x_ns, dtype=np.int64)
    width = int(_column_seconds((x[-1] - x[0]) / 1e9, columns) * 1e9)
    col = x // width
    starts = np.flatnonzero(np.concatenate(([True], col[1:] != col[:-1])))
    if len(starts) * 4 >= n:
        return np.arange(n)
    ends = np.append(starts[1:], n) - 1
    yv = np.asarray(y, dtype=np.float64)
    counts = np.diff(np.append(starts, n))
    seg = np.repeat(np.arange(len(starts)), counts)
    lo = np.minimum.reduceat(yv, starts)
    hi = np.maximum.reduceat(yv, starts)
    # the first point of each column that holds its minimum (maximum): flag, then keep one per column
    at_lo = np.flatnonzero(yv == lo[seg])
    at_hi = np.flatnonzero(yv == hi[seg])
    first_lo = at_lo[np.unique(seg[at_lo], return_index=True)[1]]
    first_hi = at_hi[np.unique(seg[at_hi], return_index=True)[1]]
    return np.unique(np.concatenate((starts, ends, first_lo, first_hi)))


def break_gaps(x_ns: np.ndarray, y: np.ndarray, picked: np.ndarray, threshold_ns: float) -> tuple[np.ndarray, np.ndarray]:
    """The points ``picked`` of a series, with a NaN point between two that a gap separates in the full series.

    A gap is a step longer than ``threshold_ns`` between neighbouring points of
    the full series; a line drawn through the result breaks there (matplotlib
    draws no segment to or from a NaN). Returns x (int64 ns) and y (float).

    >>> import numpy as np
    >>> x = np.array([0, 1, 2, 10, 11]) * 1_000_000_000
    >>> xs, ys = break_gaps(x, np.arange(5.0), np.arange(5), 5e9)
    >>> ys.tolist()
    [0.0, 1.0, 2.0, nan, 3.0, 4.0]
    """
    x = np.asarray(x_ns, dtype=np.int64)
    xs, ys = x[picked], np.asarray(y, dtype=np.float64)[picked]
    if not math.isfinite(threshold_ns) or len(x) < 2:
        return xs, ys
    segment = np.concatenate(([0], np.cumsum(np.diff(x) > threshold_ns)))[picked]
    cuts = np.flatnonzero(segment[1:] != segment[:-1]) + 1
    if not len(cuts):
        return xs, ys
    mid = xs[cuts - 1] + (xs[cuts] - xs[cuts - 1]) // 2
    return np.insert(xs, cuts, mid), np.insert(ys, cuts, np.nan)


def plain_numbers(ax: Any) -> None:
    """Readings as they are on ``ax``'s y axis: ``1020``, not ``0`` with ``+1.02e3`` in the corner."""
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    ax.yaxis.set_major_formatter(formatter)


def format_time_axis(ax: Any, tz: Any = "UTC") -> None:
    """Readable time ticks in ``tz`` on ``ax``'s x axis: ``10:57``, ``11:00``, or ``10:57:05``
    at second steps (never a bare ``05`` that reads as minutes), with the date once beside them."""
    import matplotlib.dates as mdates

    zone = _tzinfo(tz)
    # minticks=3: a span of a few minutes is ticked in minutes, not in more seconds than fit
    dates = cast(Any, mdates)  # its locators and formatters are untyped
    locator = dates.AutoDateLocator(minticks=3, maxticks=8, tz=zone)
    formatter = dates.ConciseDateFormatter(
        locator, tz=zone,
        formats=["%Y", "%b", "%d", "%H:%M", "%H:%M", "%H:%M:%S.%f"],
        zero_formats=["", "%Y", "%b", "%d %b", "%H:%M", "%H:%M:%S.%f"],
        offset_formats=["", "%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%d", "%Y-%m-%d"],
    )
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter)


def has_default_date_ticks(ax: Any) -> bool:
    """Whether ``ax`` shows times on x with matplotlib's default formatter (a plot function left it)."""
    import matplotlib.dates as mdates

    return isinstance(ax.xaxis.get_major_formatter(), mdates.AutoDateFormatter)


def fit_margins(fig: Any, *, suptitle: bool, legend_inches: float = 0.0) -> None:
    """Fixed margins, in inches, that leave room for the axes' titles, the figure's, and a legend on the right:
    a layout engine would double the cost of every redraw."""
    height, width = fig.get_figheight(), fig.get_figwidth()
    titled = any(a.get_title() or a.get_title("left") or a.get_title("right") for a in fig.axes)
    top_inches = 0.15 + (0.3 if titled else 0.0) + (0.32 if suptitle else 0.0)
    bottom_inches = 0.55
    right = 1 - min((0.15 + legend_inches) / width, 0.45)
    fig.subplots_adjust(left=min(0.85 / width, 0.2), right=right, bottom=min(bottom_inches / height, 0.3),
                        top=max(1 - top_inches / height, 0.5), hspace=0.2 if not titled else 0.45)


def style_figure(fig: Any, theme: Theme = "light") -> None:
    """Colours of ``theme`` on ``fig`` and its axes (background, text, ticks, spines, grid, legends)."""
    colours = _theme(theme)
    text = colours["text"]
    fig.patch.set_facecolor(colours["face"])
    for t in fig.texts:
        t.set_color(text)
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None:
        suptitle.set_color(text)
    for ax in fig.axes:
        ax.set_facecolor(colours["axes"])
        ax.tick_params(colors=text, which="both")
        for spine in ax.spines.values():
            spine.set_color(text)
        for label in (ax.xaxis.label, ax.yaxis.label, ax.title, ax._left_title, ax._right_title,
                      ax.xaxis.get_offset_text(), ax.yaxis.get_offset_text()):
            label.set_color(text)
        for line in ax.get_xgridlines() + ax.get_ygridlines():
            line.set_color(colours["grid"])
        legend = ax.get_legend()
        if legend is not None:
            for t in legend.get_texts():
                t.set_color(text)
        for t in ax.texts:
            if t.get_gid() != "theia-error":
                t.set_color(text)


def _theme(theme: str) -> dict[str, Any]:
    if theme not in THEMES:
        raise UsageError(f"theme must be one of {', '.join(map(repr, THEMES))}, got {theme!r}")
    return THEMES[theme]


def _naive_utc(times: Any) -> np.ndarray:
    """Timestamps as naive UTC ``datetime64[ns]`` values: matplotlib converts those
    in one go, but tz-aware ones one Timestamp object at a time."""
    index = pd.DatetimeIndex(times)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return np.asarray(index, dtype="datetime64[ns]")


def _readings(df: pd.DataFrame) -> pd.DataFrame | None:
    """timestamp (naive UTC), source and unit (categories), value (float) of the rows whose content
    is a reading, in time order, or None when most rows are not readings."""

    if "value" in df.columns and pd.api.types.is_numeric_dtype(df["value"]):
        value = df["value"].to_numpy(dtype=float, na_value=np.nan)
        unit = pd.Categorical(df["unit"].astype("string").fillna("") if "unit" in df.columns else [""] * len(df))
    else:
        if "content" not in df.columns:
            return None
        # Readings repeat ("21.5C"): match each distinct text once, then spread by code.
        codes, uniques = pd.factorize(df["content"], use_na_sentinel=True)
        found = extract(pd.DataFrame({"content": uniques.astype(pd.StringDtype("pyarrow"))}), SENSOR_PATTERN)
        if "value" not in found.columns or not len(found):
            return None
        distinct = pd.to_numeric(found["value"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        value = np.where(codes >= 0, distinct[np.maximum(codes, 0)], np.nan)
        unit_codes, unit_names = pd.factorize(
            found["unit"].astype("string").fillna("") if "unit" in found.columns else pd.Series([""] * len(found)))
        unit = pd.Categorical.from_codes(np.where(codes >= 0, unit_codes[np.maximum(codes, 0)], 0),
                                         categories=pd.Index(np.asarray(unit_names, dtype=object)).astype(str))
    ok = ~np.isnan(value)
    if ok.sum() * 2 < len(df) or not ok.any():  # mostly not readings: count events instead
        return None
    source: Any
    if "source" in df.columns:
        given = df["source"] if isinstance(df["source"].dtype, pd.CategoricalDtype) else df["source"].astype("category")
        source_codes, categories = given.cat.codes.to_numpy(), given.cat.categories.astype(str)
        source = pd.Categorical.from_codes(source_codes[ok], categories=categories)
    else:
        source = pd.Categorical([""] * int(ok.sum()))
    out = pd.DataFrame({"timestamp": _naive_utc(event_times(df, "a plot"))[ok], "source": source, "value": value[ok],
                        "unit": unit[ok]})
    # late events arrive out of order; lines are drawn in time order
    if not out["timestamp"].is_monotonic_increasing:
        out = out.sort_values("timestamp", kind="stable", ignore_index=True)
    return out


# --------------------------------------------------------------------------- the plotter


def check_plot_options(
    *,
    max_points: int | None = None,
    kind: str = "auto",
    tz: Any = "UTC",
    gap: DurationLike | Literal["auto"] | None = "auto",
    gap_factor: float = GAP_INTERVALS,
    theme: str = "light",
    max_height: float = 6.0,
    method: str = "minmax",
) -> None:
    """Raise :class:`~theia_frames.exceptions.UsageError` naming the first option of :func:`plot` that is wrong.

    >>> check_plot_options(theme="pink")
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: theme must be one of 'light', 'dark', 'auto', got 'pink'
    """
    if kind not in ("auto", "readings", "counts"):
        raise UsageError(f"kind must be 'auto', 'readings' or 'counts', got {kind!r}")
    if max_points is not None and (not isinstance(max_points, int) or max_points < 4):
        raise UsageError(f"max_points must be an integer of at least 4 or None, got {max_points!r}")
    if not (isinstance(max_height, (int, float)) and max_height > _AXIS_INCHES):
        raise UsageError(f"max_height must be more than {_AXIS_INCHES} inches, got {max_height!r}")
    if method not in DOWNSAMPLE_METHODS:
        raise UsageError(f"method must be one of {', '.join(DOWNSAMPLE_METHODS)}, got {method!r}")
    _theme(theme)
    _tzinfo(tz)
    gap_threshold(np.zeros(0, dtype=np.int64), gap, gap_factor)
    positive_number("gap_factor", gap_factor)



class Plotter:
    """The plot of event frames on one matplotlib figure, kept between redraws (see the module docs).

    While the panels (units, sources, bucket width) stay the same, only the
    lines' data change: rebuilding axes and their ticks is most of the cost of
    a redraw. ``max_points``: points per series at most (None: about two per
    pixel column of the axes); the other options are :func:`plot`'s.
    """

    def __init__(
        self,
        figure: Any,
        max_points: int | None = None,
        *,
        kind: Kind = "auto",
        by: str = "source",
        stacked: bool = True,
        tz: Any = "UTC",
        gap: DurationLike | Literal["auto"] | None = "auto",
        gap_factor: float = GAP_INTERVALS,
        theme: Theme = "light",
        max_height: float = 6.0,
        method: str = "minmax",
    ) -> None:
        check_plot_options(max_points=max_points, kind=kind, tz=tz, gap=gap, gap_factor=gap_factor, theme=theme,
                           max_height=max_height, method=method)
        self.figure = figure
        self.max_points = max_points
        self.kind = kind
        self.by = by
        self.stacked = stacked
        self.tz = tz
        self._zone = _tzinfo(tz)
        self.gap = gap
        self.gap_factor = gap_factor
        self.theme = theme
        self.max_height = max_height
        self.method = method
        self._layout: tuple[Any, ...] | None = None
        self._lines: dict[tuple[str, str], Any] = {}
        self._fills: list[Any] = []
        self._spans: list[Any] = []
        self._axes: list[Any] = []
        self._base_height = min(figure.get_figheight(), max_height)
        self._note: Any = None
        self.legend_inches = 0.0
        #: the x limits each axis was last given here; other limits mean the user zoomed or panned
        self._auto_xlim: dict[int, tuple[float, float]] = {}
        self._zoomed = False
        #: what the last drawing left out, in words ("" when nothing)
        self.left_out = ""

    # ------------------------------------------------------------------ drawing
    def draw(self, df: pd.DataFrame, ax: Any = None, *, outages: Sequence[Outage] = ()) -> None:
        """Draw ``df`` (on ``ax`` when one panel does, else on the figure's panels); shade ``outages``."""
        if df.empty:
            self._reset(ax)
            ax = self._axes[0]
            ax.text(0.5, 0.5, "waiting for events…", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            self._layout = ("empty",)
            self._say_left_out("")
            self._finish()
            return
        readings = None if self.kind == "counts" else _readings(df)
        if readings is None and self.kind == "readings":
            raise UsageError("kind='readings' needs numeric readings in the content (such as '21.5C'); "
                             "most rows have none: use kind='counts'")
        # asked once, before anything here changes the limits (a new layout forgets the zoom)
        zoomed = self.user_zoomed
        if readings is not None:
            self._draw_readings(readings, ax)
        else:
            self._draw_counts(df, ax)
        times = event_times(df, "a plot")
        self._shade(outages, times.min().timestamp())
        self._rescale(keep_x=zoomed and self._zoomed)
        if self._layout and self._layout[0] == "counts":
            for axis in self._axes:
                axis.set_ylim(bottom=0)
        if not self._zoomed:
            self._auto_xlim = {id(axis): axis.get_xlim() for axis in self._axes}
        self._finish()

    def follow(self) -> None:
        """Follow the data again on the next draw, wherever the user zoomed or panned."""
        self._zoomed = False
        self._auto_xlim = {id(axis): axis.get_xlim() for axis in self._axes}

    @property
    def user_zoomed(self) -> bool:
        """Whether an axis was given other x limits than this plotter gave it (zoomed or panned by hand),
        since the panels were laid out or :meth:`follow` was called."""
        if not self._zoomed:
            for axis in self._axes:
                expected = self._auto_xlim.get(id(axis))
                if expected is not None and not _close(axis.get_xlim(), expected):
                    self._zoomed = True
                    break
        return self._zoomed

    def _columns(self, axis: Any) -> int:
        if self.max_points is not None:
            return max(self.max_points // 4, 1)
        fig = self.figure
        width_px = fig.get_figwidth() * fig.dpi * axis.get_position().width
        return max(int(width_px), 50)

    def _series(self, x: np.ndarray, y: np.ndarray, axis: Any) -> tuple[np.ndarray, np.ndarray]:
        """A series as drawn: downsampled, peaks kept, NaN at gaps; x as datetime64[ns]."""
        x_ns = x.astype("datetime64[ns]").view("int64")
        picked = downsample(x_ns, y, self._columns(axis), method=self.method)
        threshold = gap_threshold(x_ns, self.gap, self.gap_factor)
        xs, ys = break_gaps(x_ns, y, picked, threshold)
        if self.max_points is not None and len(xs) > self.max_points + 1:
            # a hard cap: the extremes first, then evenly
            keep = np.unique(np.concatenate((np.linspace(0, len(xs) - 1, self.max_points - 2).astype(int),
                                             [int(np.nanargmin(ys)), int(np.nanargmax(ys))])))
            xs, ys = xs[keep], ys[keep]
        return xs.view("datetime64[ns]"), ys

    def _reset(self, ax: Any, panels: int = 1) -> None:
        fig = self.figure
        natural = _AXIS_INCHES + _PANEL_INCHES * panels
        height = max(self._base_height, min(natural, self.max_height))
        if abs(fig.get_figheight() - height) > 1e-6:
            fig.set_figheight(height)
        if ax is not None and panels == 1 and ax.figure is fig:
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
        self._fills = []
        self._spans = []
        self._auto_xlim = {}
        self._zoomed = False

    def _say_left_out(self, text: str) -> None:
        self.left_out = text
        if not text:
            if self._note is not None:
                self._note.set_text("")
            return
        if self._note is None:
            self._note = self.figure.text(0.99, 0.005, "", ha="right", va="bottom", fontsize="x-small")
        self._note.set_text(f"not drawn: {text}")

    def _axis_setup(self, axis: Any, ylabel: str, *, last: bool) -> None:
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
        plain_numbers(axis)
        format_time_axis(axis, self._zone)
        if last:
            axis.set_xlabel(time_label(self.tz))

    def _legend(self, axis: Any) -> None:
        handles, labels = axis.get_legend_handles_labels()
        if not handles:
            return
        fig = self.figure
        rows = max(int(axis.get_position().height * fig.get_figheight() * 72 / 9.5), 1)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="x-small",
                    ncol=math.ceil(len(handles) / rows), frameon=False, handlelength=1.2)

    def _draw_readings(self, readings: pd.DataFrame, ax: Any) -> None:
        # the most frequent units (ties by name), shown in name order so panels stay put
        counts = readings["unit"].value_counts()
        counts = counts[counts > 0]
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        units = sorted(str(u) for u, _ in ranked[:_MAX_PANELS])
        hidden_units = sorted(str(u) for u, _ in ranked[_MAX_PANELS:])
        series: dict[tuple[str, str], pd.DataFrame] = {}
        hidden_sources: list[str] = []
        for unit, rows in readings.groupby("unit", sort=True, observed=True):
            if str(unit) not in units:
                continue
            shown, others = _busiest(rows["source"])
            if others:
                hidden_sources.append(f"{others} source{'s' if others > 1 else ''} of {unit_label(str(unit))}")
            for source, part in rows.groupby("source", sort=True, observed=True):
                if source in shown:
                    series[str(unit), str(source)] = part
        layout = ("readings", tuple(units), tuple(series))
        if layout != self._layout:
            self._reset(ax, len(units))
            for i, (unit, axis) in enumerate(zip(units, self._axes)):
                colour = 0
                for (u, source), rows in series.items():
                    if u == unit:
                        xs, ys = self._series(rows["timestamp"].to_numpy(), rows["value"].to_numpy(), axis)
                        (self._lines[u, source],) = axis.plot(xs, ys, label=source, linewidth=1.2,
                                                              color=_PALETTE[colour % len(_PALETTE)])
                        colour += 1
                self._axis_setup(axis, unit_label(unit), last=i == len(units) - 1)
            self._layout = layout
            self._place_legends()
        else:
            for key, rows in series.items():
                axis = self._lines[key].axes
                self._lines[key].set_data(*self._series(rows["timestamp"].to_numpy(), rows["value"].to_numpy(), axis))
        parts = []
        if hidden_units:
            parts.append(f"{len(hidden_units)} unit{'s' if len(hidden_units) > 1 else ''} ({', '.join(map(unit_label, hidden_units))})")
        self._say_left_out("; ".join(parts + hidden_sources))

    def _draw_counts(self, df: pd.DataFrame, ax: Any) -> None:

        ts = event_times(df, "a plot")
        freq = choose_freq((ts.max() - ts.min()).total_seconds())
        if self.by != "tag" and self.by not in df.columns:
            raise UsageError(f"by={self.by!r} is not a column of the frame; it has {list(df.columns)} (or by='tag')")
        counted = bucket(df, freq, by=self.by, tz=self._zone)
        counted.columns = [str(c) for c in counted.columns]
        totals = counted.sum().sort_values(ascending=False, kind="stable")
        groups = [str(g) for g in totals.index[:_MAX_SOURCES]]
        others = max(len(totals) - _MAX_SOURCES, 0)
        groups.sort()
        x = _naive_utc(counted.index)
        noun = {"source": "source", "tag": "tag"}.get(self.by, f"{self.by} value")
        ylabel = f"events per {freq}"
        panels = 1 if self.stacked else max(len(groups), 1)
        layout = ("counts", freq, tuple(groups), self.stacked)
        if layout != self._layout:
            self._reset(ax, panels)
            for i, group in enumerate(groups if not self.stacked else []):
                axis = self._axes[i]
                (self._lines["", group],) = axis.step(x, counted[group].to_numpy(), where="post", linewidth=1.2,
                                                      color=_PALETTE[i % len(_PALETTE)])
                axis.set_title(group, loc="left", fontsize="small")
                self._axis_setup(axis, ylabel if i == panels // 2 else "", last=i == panels - 1)
                axis.set_ylim(bottom=0)
            if self.stacked:
                self._axis_setup(self._axes[0], ylabel, last=True)
            self._layout = layout
        if self.stacked:
            axis = self._axes[0]
            for fill in self._fills:
                fill.remove()
            values = np.vstack([counted[g].to_numpy(dtype=float) for g in groups]) if groups else np.zeros((0, len(x)))
            self._fills = list(axis.stackplot(x, values, labels=groups, step="post", linewidth=0,
                                              colors=_PALETTE[: max(len(groups), 1)]))
            if not axis.get_legend() and groups:
                self._place_legends()
        else:
            for group in groups:
                self._lines["", group].set_data(x, counted[group].to_numpy())
        self._say_left_out(f"{others} quieter {noun}{'s' if others > 1 else ''}" if others else "")

    def _place_legends(self) -> None:
        small_multiples = bool(self._layout) and self._layout[0] == "counts" and not self.stacked  # type: ignore[index]
        for axis in self._axes:
            if not small_multiples:
                self._legend(axis)
        self.legend_inches = self._measure_legends()

    def _measure_legends(self) -> float:
        """The width of the widest legend, in inches (a margin is left for it on the right)."""
        legends = [a.get_legend() for a in self._axes if a.get_legend() is not None]
        if not legends:
            return 0.0
        canvas = self.figure.canvas
        renderer = canvas.get_renderer() if hasattr(canvas, "get_renderer") else None
        if renderer is None:
            return 1.8
        return float(max(leg.get_window_extent(renderer).width for leg in legends) / self.figure.dpi + 0.1)

    def _shade(self, outages: Sequence[Outage], first: float) -> None:
        """Shade the outages, from the first time drawn on (older ones would only widen the axis)."""
        for span in self._spans:
            span.remove()
        self._spans = []
        if not outages or not self._axes or self._layout == ("empty",):
            return
        colour = _theme(self.theme)["outage"]
        now = None
        for start, end in outages:
            if end is None:
                import time

                now = now if now is not None else time.time()
                end = now
            if end < first:
                continue
            x0 = np.datetime64(int(max(start, first) * 1e9), "ns")
            x1 = np.datetime64(int(end * 1e9), "ns")
            for axis in self._axes:
                self._spans.append(axis.axvspan(x0, x1, color=colour, alpha=0.18, linewidth=0, zorder=0))

    def _rescale(self, *, keep_x: bool) -> None:
        for axis in self._axes:
            xlim = axis.get_xlim()
            axis.set_autoscalex_on(not keep_x)  # a zoom turned it off; following the data turns it on
            axis.relim()
            axis.autoscale_view()
            if keep_x:
                axis.set_xlim(xlim)

    def _finish(self) -> None:
        style_figure(self.figure, self.theme)


def _close(a: tuple[float, float], b: tuple[float, float]) -> bool:
    # a zoom or pan moves a limit by far more than a millionth of the range; rounding does not
    span = abs(b[1] - b[0]) or 1.0
    return all(math.isclose(x, y, rel_tol=1e-12, abs_tol=span * 1e-6) for x, y in zip(a, b))


def _busiest(sources: pd.Series) -> tuple[list[str], int]:
    """The busiest sources (at most ten) and how many others there are."""
    counts = sources.value_counts()
    counts = counts[counts > 0]
    counts.index = counts.index.astype(str)
    counts = counts.sort_values(ascending=False, kind="stable")
    return list(counts.index[:_MAX_SOURCES]), max(len(counts) - _MAX_SOURCES, 0)


# --------------------------------------------------------------------------- the public one-liner


def plot(
    df: pd.DataFrame,
    *,
    kind: Kind = "auto",
    by: str = "source",
    stacked: bool = True,
    tz: Any = "UTC",
    gap: DurationLike | Literal["auto"] | None = "auto",
    gap_factor: float = GAP_INTERVALS,
    theme: Theme = "light",
    figsize: tuple[float, float] = (9.0, 3.6),
    max_height: float = 6.0,
    dpi: int = 96,
    max_points: int | None = None,
    method: str = "minmax",
    outages: Sequence[Outage] = (),
    title: str | None = None,
) -> Any:
    """A matplotlib ``Figure`` of an event frame: readings per unit, or counts per bucket (see the module docs).

    ``kind``: ``"readings"`` (values read from the content with
    :func:`~theia_frames.frames.analysis.extract`, or the frame's own ``value``
    and ``unit`` columns), ``"counts"``, or ``"auto"`` (readings when most rows
    have one). Counts are per ``by`` (``"source"``, ``"tag"``, or any column,
    e.g. a pattern's), ``stacked`` areas in one panel or, with
    ``stacked=False``, small multiples. ``tz``: the zone of the time axis.
    ``gap``: ``"auto"`` (``gap_factor`` median intervals), a duration, or None
    (lines never break). ``theme``: ``"light"``, ``"dark"`` or ``"auto"``
    (transparent). ``max_height``: the figure's height cap in inches, shared by
    the panels. ``max_points``: points per series at most (default: two per
    pixel column, min and max kept). ``outages``: (start, end) periods in
    seconds since the epoch, shaded. The frame is not changed.

    >>> import theia_frames as tf
    >>> logs = tf.to_dataframe([tf.Event(timestamp=1_700_000_000 + i, source=f"app-{i % 3}", content="GET /")
    ...                         for i in range(300)], progress=False)
    >>> fig = tf.plot(logs, stacked=False)
    >>> [ax.get_title(loc="left") for ax in fig.axes]
    ['app-0', 'app-1', 'app-2']
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "plot", "tf.plot") from exc
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    plotter = Plotter(fig, max_points, kind=kind, by=by, stacked=stacked, tz=tz, gap=gap, gap_factor=gap_factor,
                      theme=theme, max_height=max_height, method=method)
    plotter.draw(df, outages=outages)
    if title:
        fig.suptitle(title)
    fit_margins(fig, suptitle=bool(title), legend_inches=plotter.legend_inches)
    style_figure(fig, theme)
    return fig
