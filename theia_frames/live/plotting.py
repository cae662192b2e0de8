"""The default plot of a :class:`~theia_frames.live.widget.LiveView`: :func:`default_plot`.

The live view draws with the same layer as :func:`theia_frames.plot`
(:mod:`theia_frames.frames.plot`): numeric readings (``"21.5C"`` reads as °C,
``"45.2%"``) per source over time, one panel per unit, or, when the content is
not numeric, event counts per time bucket per source; lines break at gaps,
peaks survive downsampling, the time axis is in a named zone, and what is left
out (beyond eight units, or ten sources a panel) is said on the figure.
:class:`DefaultPlotter` is that layer's :class:`~theia_frames.frames.plot.Plotter`,
kept between redraws.

matplotlib is imported only when something is drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..frames.plot import (
    Plotter,
    choose_freq,
    fit_margins,
    format_time_axis,
    has_default_date_ticks,
    unit_label,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "DefaultPlotter", "choose_freq", "default_plot", "fit_margins", "format_time_axis", "has_default_date_ticks",
    "unit_label",
]

#: The live view's plotter: :class:`theia_frames.frames.plot.Plotter`.
DefaultPlotter = Plotter


def default_plot(df: pd.DataFrame, ax: Any, *, max_points: int | None = 1000, **options: Any) -> str:
    """Draw numeric readings per source over time, or event counts per time bucket per source.

    Readings with several units get one panel each, in name order (the figure
    of ``ax`` is split and made taller up to a cap of 6 inches that the panels
    share; at most eight units, the most frequent). At most ``max_points``
    points per source are drawn (the lowest and highest of each time column
    kept), and at most ten sources per panel (the busiest). What is left out is
    said on the figure and returned (``""`` when everything is drawn). Other
    keyword arguments are :class:`~theia_frames.frames.plot.Plotter`'s
    (``tz=``, ``gap=``, ``theme=``, ...).

    >>> from matplotlib.figure import Figure
    >>> from theia_frames.frames.convert import to_dataframe
    >>> from theia_frames.simulation import sensor_events
    >>> fig = Figure()
    >>> default_plot(to_dataframe(sensor_events(40, sources=2, seed=1), progress=False), fig.add_subplot())
    ''
    >>> [a.get_ylabel() for a in fig.axes]
    ['%', '°C']
    """
    plotter = Plotter(ax.figure, max_points, **options)
    plotter.draw(df, ax)
    return plotter.left_out
