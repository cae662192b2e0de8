"""A live plot of a :class:`~theia_frames.live.frame.LiveFrame` in Jupyter.

:class:`LiveView` is an ipywidgets box: a status line (events, rate, state),
pause/resume and stop buttons, and a matplotlib figure. A timer thread redraws
the figure at most every ``every`` seconds, and only when the frame changed, so
events arriving in between are drawn together, whatever their rate, and the
kernel is never blocked. By default the figure is rendered with Agg to a PNG
shown in an ``ipywidgets.Image``: it needs no frontend extension beyond
ipywidgets, so it shows up in JupyterLab, Notebook 7 and VS Code alike.
``interactive=True`` shows it on ipympl's canvas instead (matplotlib's widget
backend, ``pip install 'theia-frames[widget]'``): zoom, pan and the value under
the pointer, on the same plot; a zoomed or panned view stays where the user put
it while new events arrive, until a span (``last 1 min``, ``last 10 min``,
``all``: the window selector) is chosen again. BENCHMARKS.md has the redraw
cost of both modes.

    >>> import theia_frames as tf
    >>> view = tf.live_plot("ws://127.0.0.1:6433", tf.Filter().match_tag("sensor"))  # doctest: +SKIP
    >>> view                                                                  # doctest: +SKIP

Outside Jupyter (no kernel) the view is a text status line. The status says
what the frame is doing: ``connecting``, ``live`` (the only green one),
``reconnecting since <when> (<s> s, attempt n): <why>``, ``paused``,
``stopped``, ``ended: <why>`` or ``failed: <why>``, the reasons in words. Once
the frame is over, Pause and Stop are disabled.

The default plot (:func:`~theia_frames.live.plotting.default_plot`) draws
numeric readings per source over time, one panel per unit, or event counts
per time bucket per source, with the rules of :func:`theia_frames.plot` (lines
break at gaps, peaks kept, ``tz=`` on the time axis, the periods the frame was
reconnecting shaded); what it leaves out is said on the figure and in the
status line. ``theme="auto"`` (the default) draws on a transparent background
with mid-grey text that reads on JupyterLab's light and dark themes alike: the
kernel cannot know which theme the page shows (``"light"`` or ``"dark"`` pick
one). The status line is one line; its details (why it is reconnecting, what
is not drawn, a plot error) are in its tooltip. ``plot=f`` replaces it: ``f(df, ax)`` draws the current
DataFrame on a fresh matplotlib ``Axes`` (time ticks left to matplotlib's
default are made readable, and margins leave room for titles).

ipywidgets and matplotlib are imported only when a widget is made; without them
:class:`~theia_frames.exceptions.MissingDependencyError` names the extra to install.
"""

from __future__ import annotations

import html
import inspect
import io
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from ..checks import positive_seconds
from ..exceptions import MissingDependencyError, UsageError
from ..frames.plot import GAP_INTERVALS, Theme, check_plot_options, style_figure, time_label
from ..timeparse import DurationLike, to_seconds
from .status import LiveStatus, State
from .plotting import (
    DefaultPlotter,
    choose_freq,
    default_plot,
    fit_margins,
    format_time_axis,
    has_default_date_ticks,
    unit_label,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "LiveView", "ViewedFrame", "view_options", "require_widget", "default_plot", "in_kernel", "choose_freq",
    "unit_label", "format_time_axis",
]

PlotFunction = Callable[["pd.DataFrame", Any], Any]
Mode = Literal["auto", "widget", "text"]
#: The layout engines of a matplotlib ``Figure`` (``None``: fixed margins, which redraw faster).
Layout = Literal["constrained", "compressed", "tight"]

# The colour of the status dot per phase: green only while live; the others in the page's own
# secondary text colour (JupyterLab's theme variable), visible on light and dark themes.
_PHASE_COLOURS = {
    "live": "#2e7d32",
    "paused": "#f9a825",
    "connecting": "#f9a825",
    "reconnecting": "#ef6c00",
    "failed": "#c62828",
}
_OTHER_COLOUR = "var(--jp-ui-font-color2, #8a8a8a)"
#: The spans of the window selector: seconds back from the newest event (None: everything held).
SPANS: dict[str, float | None] = {"last 1 min": 60.0, "last 10 min": 600.0, "all": None}


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (where widgets can be shown).

    >>> in_kernel()
    False
    """
    try:
        from IPython.core import getipython
    except ImportError:
        return False
    find_shell: Callable[[], Any] = getipython.get_ipython  # untyped in IPython
    shell = find_shell()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _require(package: str, feature: str = "the live widget") -> Any:
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingDependencyError(package.split(".")[0], "widget", feature) from exc


_CANVAS: list[Any] = []


def _locked_canvas_class() -> Any:
    """ipympl's canvas, drawing under the view's lock: the kernel's thread draws it on a zoom or
    pan while the view's timer changes the lines."""
    if _CANVAS:
        return _CANVAS[0]
    backend = _require("ipympl.backend_nbagg", "the interactive live widget (interactive=True)")

    class LockedCanvas(backend.Canvas):  # type: ignore[misc, name-defined]
        draw_lock: Any = None

        def draw(self) -> None:
            lock = self.draw_lock
            if lock is None:
                super().draw()
                return
            with lock:
                super().draw()

    _CANVAS.append((LockedCanvas, backend.FigureManager))
    return _CANVAS[0]


# --------------------------------------------------------------------------- the view


class ViewedFrame(Protocol):
    """What a :class:`LiveView` reads of the frame it shows: a
    :class:`~theia_frames.live.frame.LiveFrame` (whose module imports this one,
    so the frame is named here only by what it offers)."""

    @property
    def state(self) -> State: ...

    @property
    def version(self) -> int: ...

    @property
    def df(self) -> pd.DataFrame: ...

    @property
    def outages(self) -> list[tuple[float, float | None]]: ...

    def status(self) -> LiveStatus: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def stop(self) -> None: ...


class LiveView:
    """A live view of a :class:`~theia_frames.live.frame.LiveFrame` (see the module docs).

    ``mode``: ``"widget"`` builds the ipywidgets box (works without a kernel,
    e.g. headless with ``MPLBACKEND=Agg``), ``"text"`` only a status line,
    ``"auto"`` (default) the widget inside a Jupyter kernel and text elsewhere.
    ``stop_frame``: the Stop button (and :meth:`stop`) also stops the frame.
    ``interactive``: ipympl's canvas (zoom, pan, hover) instead of a PNG.
    ``span``: the window selector's first choice (a key of :data:`SPANS`).
    ``tz``, ``gap``, ``gap_factor``, ``theme``, ``max_height``: the default
    plot's, as for :func:`theia_frames.plot`.

    Attributes kept for inspection: :attr:`redraws` (figures drawn),
    :attr:`png` (the last image), :attr:`ticks` (timer rounds), :attr:`last_error`
    (the last exception of a plot function; shown in the status line).
    """

    def __init__(
        self,
        live: ViewedFrame,
        plot: PlotFunction | None = None,
        every: DurationLike = 0.5,
        *,
        mode: Mode = "auto",
        figsize: tuple[float, float] = (8.0, 3.6),
        dpi: int = 96,
        layout: Layout | None = None,
        max_points: int = 1000,
        stop_frame: bool = True,
        title: str | None = None,
        interactive: bool = False,
        span: str = "all",
        tz: Any = "UTC",
        gap: DurationLike | Literal["auto"] | None = "auto",
        gap_factor: float = GAP_INTERVALS,
        theme: Theme = "auto",
        max_height: float = 6.0,
    ) -> None:
        every_seconds = positive_seconds("every", to_seconds(every, name="every"))
        if plot is not None and not callable(plot):
            raise UsageError(f"plot must be a function plot(df, ax), got {plot!r}")
        if mode not in ("auto", "widget", "text"):
            raise UsageError(f"mode must be 'auto', 'widget' or 'text', got {mode!r}")
        if span not in SPANS:
            raise UsageError(f"span must be one of {', '.join(map(repr, SPANS))}, got {span!r}")
        self.live = live
        self.plot = plot
        self.interactive = bool(interactive)
        self.span = span
        self.theme = theme
        self._plot_options: dict[str, Any] = dict(tz=tz, gap=gap, gap_factor=gap_factor, theme=theme,
                                                  max_height=max_height)
        check_plot_options(max_points=max_points, **self._plot_options)
        self.every = every_seconds
        self.max_points = max_points
        self.stop_frame = stop_frame
        self.title = title
        self._layout = layout
        self.mode: Literal["widget", "text"] = ("widget" if in_kernel() else "text") if mode == "auto" else mode
        self.redraws = 0
        self.ticks = 0
        self.png: bytes = b""
        self.last_error: BaseException | None = None
        self._drawn_version: int | None = None
        self._last_draw = -math.inf
        self._paused = False
        self._stopped = False
        self._draw_lock = threading.RLock()
        self._halt = threading.Event()
        self._timer: threading.Thread | None = None
        self.box: Any = None
        self.image: Any = None
        self.status_line: Any = None
        self.pause_button: Any = None
        self.stop_button: Any = None
        self.span_buttons: Any = None
        self.canvas: Any = None
        self._figure: Any = None
        self._plotter: DefaultPlotter | None = None
        #: seconds the last redraw took (plot and PNG)
        self.draw_seconds = 0.0
        if self.mode == "widget":
            self._build(figsize, dpi)
            self._timer = threading.Thread(target=self._loop, name="theia-live-view", daemon=True)
            self._timer.start()

    # ------------------------------------------------------------------ building
    def _build(self, figsize: tuple[float, float], dpi: int) -> None:
        widgets = _require("ipywidgets")
        _require("matplotlib")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # A Figure of its own: no pyplot, so the notebook's backend is left alone and
        # nothing needs a GUI; the PNG mode draws it on the timer's thread alone.
        self._figure = Figure(figsize=figsize, dpi=dpi, layout=self._layout)
        if self.interactive:
            canvas_class, manager_class = _locked_canvas_class()
            self.canvas = canvas_class(self._figure)
            self.canvas.draw_lock = self._draw_lock
            manager_class(self.canvas, 0)
            self.canvas.resizable = False  # the plot sets its own height
            self.canvas.header_visible = False
            self.canvas.toolbar_visible = "visible"
            self.image = self.canvas
        else:
            FigureCanvasAgg(self._figure)
            self.image = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width=f"{int(figsize[0] * dpi)}px"))
        self.status_line = widgets.HTML(
            value=self._status_html(), layout=widgets.Layout(flex="1 1 auto", min_width="0", overflow="hidden"))
        self.span_buttons = widgets.ToggleButtons(
            options=list(SPANS), value=self.span, tooltips=["the newest minute", "the newest ten minutes", "every row held"],
            style={"button_width": "82px"}, layout=widgets.Layout(width="auto", flex="0 0 auto"))
        self.span_buttons.observe(lambda change: self.show_span(change["new"]), names="value")
        self.pause_button = widgets.Button(description="Pause", icon="pause", tooltip="freeze the plot and the frame")
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="warning", tooltip="end the live stream")
        self.pause_button.on_click(lambda _: self.resume() if self._paused else self.pause())
        self.stop_button.on_click(lambda _: self.stop())
        for button in (self.pause_button, self.stop_button):
            button.layout = widgets.Layout(width="auto", flex="0 0 auto")
        controls = widgets.HBox(
            [self.pause_button, self.stop_button, self.span_buttons, self.status_line],
            layout=widgets.Layout(align_items="center", flex_flow="row nowrap", width="100%"),
        )
        self.box = widgets.VBox([controls, self.image])
        self._draw()

    # ------------------------------------------------------------------ control
    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stopped(self) -> bool:
        return self._stopped

    def show_span(self, span: str) -> None:
        """Show the newest minute, ten minutes, or everything held (a key of :data:`SPANS`); redraws now.

        A view zoomed or panned by hand follows the newest events again.
        """
        if span not in SPANS:
            raise UsageError(f"span must be one of {', '.join(map(repr, SPANS))}, got {span!r}")
        with self._draw_lock:
            self.span = span
            if self.span_buttons is not None and self.span_buttons.value != span:
                self.span_buttons.value = span
            if self._plotter is not None:
                self._plotter.follow()
            if self.mode == "widget":
                self._draw()
            self._update_status()

    def pause(self) -> None:
        """Stop redrawing and freeze the frame (events keep arriving into its buffer).

        Only a running frame pauses: on a stopped, ended or failed one nothing changes.
        """
        self.live.pause()
        self._paused = self.live.state == "paused"
        self._update_status()

    def resume(self) -> None:
        """Redraw again, starting with what arrived while paused."""
        self._paused = False
        self.live.resume()
        self._update_status()

    @property
    def _finished(self) -> bool:
        return self._stopped or self.live.state in ("stopped", "ended", "failed")

    def _sync_controls(self) -> None:
        """The buttons as the frame is: Pause/Resume while it runs, both disabled once it is over."""
        if self.pause_button is None:
            return
        finished = self._finished
        if finished:
            self._paused = False
        label = ("Resume", "play", "show what arrived and carry on") if self._paused else (
            "Pause", "pause", "freeze the plot and the frame")
        for button, value in ((self.pause_button, not finished), (self.stop_button, not finished)):
            if button.disabled == value:
                button.disabled = not value
        if (self.pause_button.description, self.pause_button.icon, self.pause_button.tooltip) != label:
            self.pause_button.description, self.pause_button.icon, self.pause_button.tooltip = label

    def stop(self) -> None:
        """Stop the timer (and the frame, with ``stop_frame``), after one last redraw."""
        if self._stopped:
            return
        self._stopped = True
        self._halt.set()
        if self.stop_frame:
            self.live.stop()
        timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join(10.0)
        if self.mode == "widget":
            self._paused = False
            self.update(force=True)

    def close(self) -> None:
        """Stop, and close the widgets (they disappear from the notebook)."""
        self.stop()
        if self.box is not None:
            self.box.close()
            for w in (self.image, self.status_line, self.pause_button, self.stop_button, self.span_buttons):
                w.close()

    # ------------------------------------------------------------------ drawing
    def update(self, force: bool = False) -> bool:
        """Refresh the status line and redraw if the frame changed; True if the figure was redrawn.

        Without ``force`` it does not redraw while paused, nor sooner than
        ``every`` seconds after the previous redraw.
        """
        with self._draw_lock:
            drew = False
            if self.mode == "widget":
                changed = self.live.version != self._drawn_version
                # never more often than `every`, nor busier than a third of the time
                gap = max(self.every, 2.0 * self.draw_seconds)
                due = time.monotonic() - self._last_draw >= gap * 0.95
                if force or (changed and due and not self._paused):
                    self._draw()
                    drew = True
            self._update_status()
            return drew

    def _draw(self) -> None:
        with self._draw_lock:
            self._draw_locked()

    def _shown(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows of the chosen span: back from the newest event."""
        seconds = SPANS[self.span]
        if seconds is None or df.empty:
            return df
        import pandas as pd

        cutoff = df["timestamp"].max() - pd.Timedelta(seconds=seconds)
        return cast("pd.DataFrame", df[df["timestamp"] >= cutoff])

    def _draw_locked(self) -> None:
        fig = self._figure
        version = self.live.version
        df = self._shown(self.live.df)
        started = time.perf_counter()
        legend_inches = 0.0
        try:
            if self.plot is None:
                if self._plotter is None:
                    self._plotter = DefaultPlotter(fig, self.max_points, **self._plot_options)
                self._plotter.draw(df, outages=self.live.outages)
                legend_inches = self._plotter.legend_inches
            else:
                fig.clear()
                self.plot(df, fig.add_subplot())
                for axis in fig.axes:
                    if has_default_date_ticks(axis):
                        format_time_axis(axis, self._plot_options["tz"])
                        if not axis.get_xlabel():
                            axis.set_xlabel(time_label(self._plot_options["tz"]))
            if self.title:
                fig.suptitle(self.title)
            if self._layout is None:
                fit_margins(fig, suptitle=bool(self.title), legend_inches=legend_inches)
            style_figure(fig, self.theme)
        except Exception as exc:  # a broken plot function must not stop the view
            self.last_error = exc
            self._plotter = None
            fig.clear()
            ax = fig.add_subplot()
            ax.text(0.5, 0.5, f"plot failed: {type(exc).__name__}: {exc}", ha="center", va="center",
                    transform=ax.transAxes, color="firebrick", wrap=True, gid="theia-error")
            ax.set_axis_off()
        if self.canvas is not None:
            # ipympl renders and sends the changed pixels to the page
            self.canvas.draw()
        else:
            buf = io.BytesIO()
            # light compression: the image changes every redraw, so encoding speed matters more than size
            fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1}, facecolor=fig.get_facecolor())
            self.png = buf.getvalue()
            self.image.value = self.png
        self._drawn_version = version
        self._last_draw = time.monotonic()
        self.draw_seconds = time.perf_counter() - started
        self.redraws += 1

    def _loop(self) -> None:
        while not self._halt.wait(self.every):
            self.ticks += 1
            try:
                self.update()
            except Exception as exc:  # keep the timer alive; the status line shows it
                self.last_error = exc
            if self.live.state in ("stopped", "ended", "failed") and self.live.version == self._drawn_version:
                self._update_status()
                break

    # ------------------------------------------------------------------ status
    def status_text(self) -> str:
        """The status line as plain text: the frame's :class:`~theia_frames.live.frame.LiveStatus`,
        then the view's own counters and a plot error, if any."""
        return self._status_text(self.live.status())

    def _status_text(self, status: Any) -> str:
        text = str(status)
        if self.mode == "widget":
            text += f" · {self.redraws:,} redraws"
        if self._paused and status.state == "running":
            text = "paused (view) · " + text
        left_out = self._plotter.left_out if self._plotter is not None and self.plot is None else ""
        if left_out:
            text += f" · not drawn: {left_out}"
        if self.last_error is not None:
            text += f" · plot error: {type(self.last_error).__name__}: {self.last_error}"
        return text

    def status_brief(self) -> str:
        """The status line as it shows, on one line: the phase, the events and the rate (and a
        pointer to the details, which are in its tooltip: :meth:`status_text`)."""
        return self._status_brief(self.live.status())

    def _status_brief(self, status: LiveStatus) -> str:
        text = status.brief
        if self._paused and status.state == "running":
            text = "paused (view) · " + text
        left_out = self._plotter.left_out if self._plotter is not None and self.plot is None else ""
        if self.last_error is not None:
            text += " · plot error (hover for details)"
        elif left_out:
            text += " · some series not drawn (hover)"
        return text

    def _status_html(self) -> str:
        status = self.live.status()
        colour = _PHASE_COLOURS.get(status.phase, _OTHER_COLOUR)
        full = html.escape(self._status_text(status), quote=True)
        return (
            f'<div title="{full}" style="white-space:nowrap;overflow:hidden;text-overflow:ellipsis">'
            f'<span style="color:{colour}">&#9679;</span> '
            f'<span style="font-family:monospace">{html.escape(self._status_brief(status))}</span></div>'
        )

    def _update_status(self) -> None:
        if self.status_line is not None:
            value = self._status_html()
            if value != self.status_line.value:
                self.status_line.value = value
        self._sync_controls()

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        if self.box is not None:
            return cast(dict[str, Any], self.box._repr_mimebundle_(include=include, exclude=exclude))
        return {"text/plain": self.status_text()}

    def __repr__(self) -> str:
        return f"<LiveView {self.status_text()}>"

    def __str__(self) -> str:
        return self.status_text()


def view_options() -> set[str]:
    """The names of the keyword arguments :class:`LiveView` takes (besides the frame).

    >>> {"every", "title", "interactive"} <= view_options()
    True
    """
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name for p in inspect.signature(LiveView).parameters.values() if p.kind in keyword} - {"live"}


def require_widget(mode: Mode, *, interactive: bool = False) -> None:
    """Raise :class:`~theia_frames.exceptions.MissingDependencyError` naming the extra to install
    when a view in ``mode`` would need a package that is not installed.

    >>> require_widget("text")
    """
    if mode == "widget" or (mode == "auto" and in_kernel()):
        _require("ipywidgets")
        _require("matplotlib")
        if interactive:
            _locked_canvas_class()
