"""The ``df.theia`` accessor: the helpers of :mod:`theia_frames.frames.analysis` and
:mod:`theia_frames.frames.patterns` on any DataFrame.

Registered with pandas when pandas and theia_frames are both imported,
whichever comes first (``import theia_frames`` alone does not import pandas):

    >>> import theia_frames, pandas as pd
    >>> frame = pd.DataFrame({"timestamp": pd.to_datetime([0.5, 1.5], unit="s", utc=True), "tags": [["a"], ["a", "b"]]})
    >>> frame.theia.tag_counts()["count"].tolist()
    [2, 1]

This module needs only pandas; the helpers' modules are imported on first use, so
importing pandas does not import them.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

__all__ = ["TheiaAccessor"]


@pd.api.extensions.register_dataframe_accessor("theia")
class TheiaAccessor:
    """The helpers of :mod:`theia_frames.frames.analysis` as ``df.theia.<name>(...)``; each checks
    the columns it needs and never changes the frame.

    >>> from theia_frames import Event, to_dataframe
    >>> to_dataframe([Event(id="1", timestamp=1.0, tags=["a"])]).theia.tag_counts()["count"].tolist()
    [1]
    """

    def __init__(self, df: pd.DataFrame) -> None:
        self._df = df

    def bucket(self, freq: Any, by: str | None = None, value: str | None = None, agg: str = "count", **options: Any) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.analysis.bucket` (``tz=``, ``max_buckets=``)."""
        from . import analysis

        return analysis.bucket(self._df, freq, by=by, value=value, agg=agg, **options)

    def explode_tags(self) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.analysis.explode_tags`."""
        from . import analysis

        return analysis.explode_tags(self._df)

    def tag_matrix(self) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.analysis.tag_matrix`."""
        from . import analysis

        return analysis.tag_matrix(self._df)

    def tag_counts(self) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.analysis.tag_counts`."""
        from . import analysis

        return analysis.tag_counts(self._df)

    def extract(self, pattern: str | re.Pattern[str] | None = None, *, column: str = "content") -> pd.DataFrame:
        """See :func:`~theia_frames.frames.analysis.extract` (``pattern`` defaults to its ``SENSOR_PATTERN``)."""
        from . import analysis

        return analysis.extract(self._df, analysis.SENSOR_PATTERN if pattern is None else pattern, column=column)

    def grep(self, pattern: str, **options: Any) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.analysis.grep`."""
        from . import analysis

        return analysis.grep(self._df, pattern, **options)

    def timeline(self, *, gap: Any = None) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.analysis.timeline`."""
        from . import analysis

        return analysis.timeline(self._df, gap=gap)

    def patterns(self, column: str = "content", **options: Any) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.patterns.patterns`."""
        from . import patterns

        return patterns.patterns(self._df, column, **options)

    def pattern_counts(self, every: Any = None, by: str | None = None, **options: Any) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.patterns.pattern_counts`."""
        from . import patterns

        return patterns.pattern_counts(self._df, every, by, **options)

    def compare_patterns(self, window: Any, **options: Any) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.patterns.compare_patterns`: this frame is the baseline, and
        ``window`` a frame or a ``(start, end)`` pair of times cut out of it."""
        from . import patterns

        return patterns.compare_patterns(self._df, window, **options)

    def rare_patterns(self, max_count: int = 3, **options: Any) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.patterns.rare_patterns`."""
        from . import patterns

        return patterns.rare_patterns(self._df, max_count, **options)
