"""Analysis helpers for event frames, as plain functions and as the ``df.theia`` accessor.

Every helper takes a frame in the layout of :func:`~theia_frames.frames.convert.to_dataframe`
(the timestamp as a column or as the index), returns a **new** frame and never
changes its input. Each is also reachable as ``df.theia.<name>(...)``, which
checks the columns it needs and fails with a :class:`~theia_frames.exceptions.UsageError`
naming them::

    >>> df = to_dataframe([
    ...     Event(id="1", timestamp=0.2, source="/dev/t1", tags=["sensor", "temp"], content="21.5C"),
    ...     Event(id="2", timestamp=0.7, source="/dev/t1", tags=["sensor", "temp"], content="22.5C"),
    ...     Event(id="3", timestamp=2.1, source="/dev/door", tags=[], content="door opened"),
    ... ])
    >>> df.theia.extract().theia.bucket("1s", value="value", agg="mean")
                               value
    bucket
    1970-01-01 00:00:00+00:00   22.0
    1970-01-01 00:00:01+00:00    NaN
    1970-01-01 00:00:02+00:00    NaN
    >>> df.theia.tag_counts()
            count
    tag
    sensor      2
    temp        2

The accessor (:class:`~theia_frames.frames.accessor.TheiaAccessor`) is registered
as soon as pandas and theia_frames are both imported, in either order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..event import Event  # noqa: F401  (used by the doctests)
from ..exceptions import UsageError
from ..protocol.count import SECOND, UNSET_BUCKETS, CountResult, too_many_groups_sizes
from ..timeparse import to_seconds
from .convert import EVENT_COLUMNS, sorted_categories, to_dataframe  # noqa: F401

__all__ = [
    "bucket",
    "count_grain",
    "count_frame",
    "explode_tags",
    "tag_matrix",
    "tag_counts",
    "extract",
    "SENSOR_PATTERN",
    "grep",
    "timeline",
    "timeline_frame",
    "timeline_gap",
    "timeline_refused",
]

#: A reading with a unit, e.g. ``"21.5C"``, ``"45.2 %"``, ``"-3e2 hPa"``: groups ``value`` and ``unit``.
SENSOR_PATTERN = r"^\s*(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>[^\d\s]\S*)?\s*$"


# --------------------------------------------------------------------------- checks


def _require(df: Any, columns: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise UsageError(f"{what} takes a DataFrame of events, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UsageError(
            f"{what} needs the column{'s' if len(missing) > 1 else ''} {missing}; the frame has {list(df.columns)}"
        )


def event_times(df: pd.DataFrame, what: str) -> pd.DatetimeIndex:
    """The event times of ``df``: its ``timestamp`` column, else its DatetimeIndex.

    ``what`` names the caller in the error raised for a frame without times.
    """
    if not isinstance(df, pd.DataFrame):
        raise UsageError(f"{what} takes a DataFrame of events, got {type(df).__name__}")
    if "timestamp" in df.columns:
        times = df["timestamp"]
        if not pd.api.types.is_datetime64_any_dtype(times.dtype):
            raise UsageError(f"{what} needs 'timestamp' to hold datetimes, it holds {times.dtype}")
        return pd.DatetimeIndex(times)
    if isinstance(df.index, pd.DatetimeIndex):
        return df.index
    raise UsageError(
        f"{what} needs a 'timestamp' column or a DatetimeIndex; the frame has {list(df.columns)} "
        f"and a {type(df.index).__name__}"
    )


def _in_zone(times: pd.DatetimeIndex, tz: Any) -> pd.DatetimeIndex:
    if tz is None:
        return times
    try:
        if times.tz is None:
            return times.tz_localize("UTC").tz_convert(tz)
        return times.tz_convert(tz)
    except Exception as exc:  # unknown zone names raise several kinds of errors
        raise UsageError(f"unknown time zone {tz!r}: {exc}") from exc


def _delta(value: Any, name: str) -> pd.Timedelta:
    """A non-negative duration (see :func:`~theia_frames.timeparse.to_seconds`; a bare number is seconds)."""
    if value is None:
        return pd.Timedelta(0)
    if isinstance(value, pd.Timedelta) and value is not pd.NaT:
        if value < pd.Timedelta(0):
            raise UsageError(f"invalid {name} {value!r}: must not be negative")
        return value  # exact to the nanosecond
    return pd.Timedelta(round(to_seconds(value, name=name) * 1e9), unit="ns")


# --------------------------------------------------------------------------- bucket



def _frequency(freq: Any) -> Any:
    """``freq`` as pandas reads it, else as a duration of :mod:`theia_frames.timeparse`.

    Pandas' own aliases come first, so ``"1D"`` stays a calendar day in the
    display zone; a number (``90``, ``"90"``: seconds) or a text pandas does
    not take (``"15m"``) is a fixed span.
    """
    if isinstance(freq, str):
        try:
            return pd.tseries.frequencies.to_offset(freq)
        except ValueError:
            pass
    elif not isinstance(freq, (int, float)) or isinstance(freq, bool):
        return freq
    try:
        return pd.Timedelta(round(to_seconds(freq, name="bucket frequency") * 1e9), unit="ns")
    except UsageError:
        return freq  # pandas names the problem


def bucket(
    df: pd.DataFrame,
    freq: str | pd.Timedelta | pd.DateOffset,
    by: str | None = None,
    value: str | None = None,
    agg: str = "count",
    *,
    tz: Any = None,
    max_buckets: int | None = UNSET_BUCKETS,
) -> pd.DataFrame:
    """Events per time bucket, or an aggregate of a numeric column per bucket.

    ``freq`` is a pandas frequency (``"1s"``, ``"5min"``, ``"1h"``, ``"1D"``) or
    a duration of :mod:`theia_frames.timeparse` (``90`` or ``"90"``: seconds, ``"15m"``).
    Buckets are laid out in the display zone ``tz`` (default: the zone of the
    frame's timestamps), so a ``"1D"`` bucket runs from local midnight to local
    midnight, 23 or 25 hours long on the days clocks change.

    Without ``by`` the result has one column: ``count``, or the ``value``
    column's name. ``by="source"``, ``by="tag"`` (one count per tag an event
    has; events without tags are in no tag's column) or any other column name
    gives one column per group instead. Every bucket from the first event's to
    the last event's is present: an empty one holds 0 for counts and NaN for
    an aggregate, so plots show the gap.

    Buckets far outnumbering the events (one event stamped years away from the
    rest) are refused: more than ``max_buckets``, by default more than
    100,000 and more than 100 per event. The error gives the figure and the
    first and last times; ``max_buckets=None`` lays them out all the same.

    ``agg`` is ``"count"`` (events, or non-missing values of ``value``) or any
    pandas aggregation of ``value``: ``"mean"``, ``"sum"``, ``"min"``, ``"max"``,
    ``"median"``, ``"std"``, ``"first"``, ``"last"``, ...

    >>> df = to_dataframe([Event(id=str(i), timestamp=t, source=s)
    ...                    for i, (t, s) in enumerate([(0.5, "a"), (0.9, "b"), (3.2, "a")])])
    >>> bucket(df, "1s")
                               count
    bucket
    1970-01-01 00:00:00+00:00      2
    1970-01-01 00:00:01+00:00      0
    1970-01-01 00:00:02+00:00      0
    1970-01-01 00:00:03+00:00      1
    >>> bucket(df, "2s", by="source")
    source                     a  b
    bucket
    1970-01-01 00:00:00+00:00  1  1
    1970-01-01 00:00:02+00:00  1  0
    """
    what = "bucket"
    times = _in_zone(event_times(df, what), tz)
    if value is not None:
        _require(df, [value], what)
    if not isinstance(agg, str):
        raise UsageError(f"agg must be the name of an aggregation such as 'count' or 'mean', got {agg!r}")
    if value is None and agg != "count":
        raise UsageError(f"agg={agg!r} needs a value column to aggregate (value=...)")
    values = None
    if value is not None:
        values = df[value].reset_index(drop=True)
        numeric_only = agg not in ("count", "first", "last", "nunique", "size")
        if numeric_only and not pd.api.types.is_numeric_dtype(values.dtype):
            raise UsageError(
                f"bucket(value={value!r}, agg={agg!r}) needs a numeric column; {value!r} holds {values.dtype} "
                "(extract() turns readings like '21.5C' into numbers)"
            )

    edges = _bucket_edges(times, freq, len(times), max_buckets)
    n = len(edges)
    slot = np.searchsorted(edges.asi8, times.asi8, side="right") - 1 if n else np.zeros(0, dtype=np.intp)

    if by is None:
        name = "count" if value is None else value
        if values is None:
            return _count_layout(edges, slot, None, None, None)
        per_slot = _aggregate(values, [slot], agg)
        per_slot = per_slot.reindex(range(n), fill_value=0) if agg == "count" else per_slot.reindex(range(n))
        return pd.DataFrame({name: per_slot.to_numpy()}, index=edges)

    if by == "tag" and "tag" not in df.columns:
        _require(df, ["tags"], what)
        exploded = _explode_positions(df)
        keys = exploded["tag"]
        slot = slot[exploded["row"]]
        if values is not None:
            values = values.iloc[exploded["row"]].reset_index(drop=True)
        keep = keys.notna().to_numpy()
        keys, slot = keys[keep].reset_index(drop=True), slot[keep]
        if values is not None:
            values = values[keep].reset_index(drop=True)
    else:
        _require(df, [by], what)
        keys = df[by].reset_index(drop=True)
    if values is None:
        return _count_layout(edges, slot, keys, None, by)
    table = _aggregate(values, [slot, keys], agg)
    if agg == "count":
        wide = table.unstack(fill_value=0).reindex(index=range(n), fill_value=0).astype(np.int64)
    else:
        wide = table.unstack().reindex(index=range(n))
    wide = _with_all_groups(wide, keys, fill=0 if agg == "count" else np.nan)
    wide.index = edges
    wide.columns.name = by
    return wide


#: Buckets :func:`bucket` lays out without being told, at most: more than this many and
#: more than :data:`BUCKETS_PER_EVENT` per event are refused (``max_buckets=None`` allows them).
MAX_BUCKETS = 100_000
#: Buckets per event past which more than :data:`MAX_BUCKETS` buckets are refused.
BUCKETS_PER_EVENT = 100


def _bucket_edges(times: pd.DatetimeIndex, freq: Any, events: int, max_buckets: int | None = None) -> pd.DatetimeIndex:
    """The starts of the buckets from the first of ``times`` to the last: resample knows
    the calendar (local midnights, DST) and the anchoring, from the first and last time alone.
    Refused past ``max_buckets`` (:data:`UNSET_BUCKETS`: the default rule of :func:`bucket`)."""
    limit = None
    if len(times) and max_buckets is not None:
        limit = max(MAX_BUCKETS, BUCKETS_PER_EVENT * events) if max_buckets is UNSET_BUCKETS else int(max_buckets)
        offset = _frequency(freq)
        if isinstance(offset, (pd.Timedelta, pd.offsets.Tick)) and pd.Timedelta(offset).value > 0:
            # a fixed span: the figure before laying anything out
            _check_buckets((times.max().value - times.min().value) // pd.Timedelta(offset).value + 1, limit, freq, events, times)
    try:
        # closed and labelled on the left for every frequency: an edge is where its bucket starts
        # (pandas labels weeks, months' ends, quarters and years by their right end by default)
        resampler = pd.Series(0, index=times).resample(_frequency(freq), closed="left", label="left")
        edges = cast(pd.DatetimeIndex, resampler.size().index)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"invalid bucket frequency {freq!r}: {exc}") from exc
    if limit is not None:
        _check_buckets(len(edges), limit, freq, events, times)
    return edges.rename("bucket")


def _check_buckets(buckets: int, limit: int, freq: Any, events: int, times: pd.DatetimeIndex) -> None:
    if buckets > limit:
        raise UsageError(
            f"bucket({freq!r}) would make {buckets:,} buckets for {events:,} event(s), from {times.min()} to "
            f"{times.max()}; more than {limit:,}. Narrow the frame's time range (an event far from the rest?), "
            "choose a coarser frequency, or pass max_buckets=None to lay them all out"
        )


def _count_layout(
    edges: pd.DatetimeIndex, slot: np.ndarray, keys: pd.Series | None, weights: np.ndarray | None, by: str | None
) -> pd.DataFrame:
    """The frame of counts per bucket (and group): events placed in bucket ``slot`` (and group
    ``keys``), each counting ``weights`` (default 1). The one layout of :func:`bucket`'s counts
    and of a collector's count (:func:`count_frame`)."""
    n = len(edges)
    if keys is None:
        return pd.DataFrame({"count": np.bincount(slot, weights=weights, minlength=n).astype(np.int64)}, index=edges)
    ones = np.ones(len(slot), dtype=np.int64) if weights is None else weights
    table = pd.Series(ones).groupby([slot, keys], observed=True, sort=True).sum()
    wide = table.unstack(fill_value=0)
    wide = wide.reindex(index=range(n), fill_value=0).astype(np.int64)
    wide = _with_all_groups(wide, keys, fill=0)
    wide.index = edges
    wide.columns.name = by
    return wide


_DAY_NS = 86_400 * 10**9


def count_grain(freq: Any) -> int:
    """The span in nanoseconds a count of ``freq`` buckets is counted in (see
    :mod:`theia_frames.protocol.count`): every bucket :func:`bucket` lays out for ``freq``
    in UTC is made of whole spans of it, so counts per span add up to counts per bucket.
    ``None``: 0, no time buckets.

    >>> count_grain("1min"), count_grain("7min"), count_grain("1D"), count_grain("MS"), count_grain(None)
    (60000000000, 60000000000, 86400000000000, 86400000000000, 0)
    """
    if freq is None:
        return 0
    offset = _frequency(freq)
    if isinstance(offset, pd.Timedelta):
        step = int(offset.value)
    elif isinstance(offset, pd.offsets.Tick):
        step = int(offset.nanos)
    elif isinstance(offset, (pd.offsets.BusinessHour, pd.offsets.CustomBusinessHour)):
        step = 10**9  # its hours may start at any second
    elif isinstance(offset, pd.offsets.BaseOffset):
        step = _DAY_NS  # calendar offsets start at midnights (in UTC, the zone of a count)
    else:
        raise UsageError(f"invalid bucket frequency {freq!r}: not a pandas frequency or a duration")
    if step <= 0:
        raise UsageError(f"invalid bucket frequency {freq!r}: must be longer than 0")
    return math.gcd(step, _DAY_NS)


def count_frame(result: CountResult, freq: Any = None, *, max_buckets: int | None = UNSET_BUCKETS) -> pd.DataFrame:
    """The frame of a count (:class:`~theia_frames.protocol.count.CountResult`): with ``freq``
    (the frequency whose :func:`count_grain` it was counted in), the frame :func:`bucket`
    returns for the same events in UTC (and refuses as it does, see ``max_buckets``), ``by`` the count's grouping; without, one row of the
    total (``count``), or one per group (index named after the grouping), groups in order.

    >>> from theia_frames.protocol.arrow import events_to_batch
    >>> from theia_frames.protocol.count import Counter
    >>> events = [Event(id=str(i), timestamp=t, source=s)
    ...           for i, (t, s) in enumerate([(0.5, "a"), (0.9, "b"), (3.2, "a")])]
    >>> counter = Counter(grain=count_grain("2s"), by="source")
    >>> counter.add(events_to_batch(events))
    >>> count_frame(counter.result(), "2s").equals(bucket(to_dataframe(events), "2s", by="source"))
    True
    >>> count_frame(counter.result())
            count
    source
    a           2
    b           1
    """
    slots, groups, counts = result.slots, result.groups, result.counts
    if result.by is None:
        keys = None
    else:
        order = sorted(range(len(result.names)), key=result.names.__getitem__)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        categories = pd.Index([result.names[i] for i in order], dtype=object)
        keys = pd.Series(pd.Categorical.from_codes(rank[groups] if len(groups) else groups, categories=categories))
    if freq is None:
        if keys is None:
            return pd.DataFrame({"count": np.array([result.events], dtype=np.int64)})
        per = pd.Series(counts).groupby(keys, observed=True, sort=True).sum().astype(np.int64)
        per = per.reindex(keys.cat.categories, fill_value=0)
        return pd.DataFrame({"count": per.to_numpy()}, index=pd.Index(list(per.index), dtype=object, name=result.by))
    grain = count_grain(freq)
    if grain != result.grain:
        raise UsageError(f"a count in spans of {result.grain} ns cannot be laid out in {freq!r} buckets (spans of {grain} ns)")
    bounds = [] if result.first is None else [result.first, result.last]
    edges = _bucket_edges(pd.DatetimeIndex(np.array(bounds, dtype="datetime64[ns]")).tz_localize("UTC"), freq, result.events, max_buckets)
    starts = slots * grain
    slot = np.searchsorted(edges.asi8, starts, side="right") - 1 if len(edges) else np.zeros(0, dtype=np.intp)
    return _count_layout(edges, slot, keys, counts, result.by)


def _aggregate(values: pd.Series, keys: list[Any], agg: str) -> pd.Series:
    """``values`` aggregated per group; NaN (not 0) for a group of only missing values."""
    grouped = values.groupby(keys, observed=True, sort=True)
    try:
        out = grouped.agg(agg)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UsageError(f"cannot aggregate with agg={agg!r}: {exc}") from exc
    if agg == "count":
        return out.astype(np.int64)
    if agg in ("sum", "prod"):
        out = out.where(grouped.count() > 0)
    return out.astype(np.float64) if pd.api.types.is_numeric_dtype(out.dtype) else out


def _with_all_groups(wide: pd.DataFrame, keys: pd.Series, fill: Any) -> pd.DataFrame:
    """``wide`` with a column for every category of ``keys`` (observed or not), in order."""
    if isinstance(keys.dtype, pd.CategoricalDtype):
        groups = [c for c in keys.cat.categories]
        wide = wide.reindex(columns=groups, fill_value=fill)
    if isinstance(wide.columns, pd.CategoricalIndex):
        wide.columns = pd.Index(list(wide.columns))
    return wide


# --------------------------------------------------------------------------- tags


def _tag_arrays(df: pd.DataFrame) -> tuple[np.ndarray, pa.Array]:
    """Row position and tag of every (event, tag) pair, and null for events without tags."""
    tags = df["tags"]
    if isinstance(tags.dtype, pd.ArrowDtype) and pa.types.is_list(tags.dtype.pyarrow_dtype):
        lists = pa.array(tags.array)
        if isinstance(lists, pa.ChunkedArray):
            lists = lists.combine_chunks()
    else:
        # Tags as Python lists (a frame built by hand): the same, a little slower.
        try:
            lists = pa.array([list(t) if _is_listlike(t) else [] for t in tags], type=pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise UsageError(f"'tags' must hold lists of strings: {exc}") from exc
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(lists)
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    empty_rows = np.flatnonzero(lengths == 0)
    if len(empty_rows):
        rows = np.concatenate([parents, empty_rows])
        values = pa.concat_arrays([values, pa.nulls(len(empty_rows), pa.string())])
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        values = values.take(pa.array(order))
    else:
        rows = parents
    return rows.astype(np.intp), values


def _is_listlike(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _explode_positions(df: pd.DataFrame) -> dict[str, Any]:
    rows, values = _tag_arrays(df)
    tag = pd.Series(sorted_categories(pa.chunked_array([values], type=pa.string())).to_pandas(), name="tag")
    return {"row": rows, "tag": tag}


def explode_tags(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (event, tag), the ``tags`` column replaced by a ``tag`` column (category).

    An event without tags is kept, as one row with a missing tag. The index of
    each event is repeated on its rows, as ``DataFrame.explode`` does.

    >>> df = to_dataframe([Event(id="1", timestamp=1.0, tags=["a", "b"]), Event(id="2", timestamp=2.0)])
    >>> explode_tags(df)[["id", "tag"]]
      id  tag
    0  1    a
    0  1    b
    1  2  NaN
    """
    _require(df, ["tags"], "explode_tags")
    pos = _explode_positions(df)
    at = list(df.columns).index("tags")
    out = df.iloc[pos["row"]].drop(columns="tags")
    out.insert(at, "tag", pos["tag"].array)
    return cast(pd.DataFrame, out)


def tag_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """One boolean column per tag (sorted by name): whether each event has it; same index as ``df``.

    >>> df = to_dataframe([Event(id="1", timestamp=1.0, tags=["a", "b"]), Event(id="2", timestamp=2.0, tags=["b"])])
    >>> tag_matrix(df)
    tag      a     b
    0     True  True
    1    False  True
    """
    _require(df, ["tags"], "tag_matrix")
    pos = _explode_positions(df)
    codes = pos["tag"].cat.codes.to_numpy()
    categories = list(pos["tag"].cat.categories)
    matrix = np.zeros((len(df), len(categories)), dtype=bool)
    has = codes >= 0
    matrix[pos["row"][has], codes[has]] = True
    out = pd.DataFrame(matrix, index=df.index, columns=pd.Index(categories, dtype=object, name="tag"))
    return out


def tag_counts(df: pd.DataFrame) -> pd.DataFrame:
    """How many events carry each tag, most frequent first (ties by name); events without tags are not counted.

    >>> df = to_dataframe([Event(id="1", timestamp=1.0, tags=["a", "b"]), Event(id="2", timestamp=2.0, tags=["b"])])
    >>> tag_counts(df)
         count
    tag
    b        2
    a        1
    """
    _require(df, ["tags"], "tag_counts")
    tag = _explode_positions(df)["tag"]
    counts = tag.value_counts(sort=False, dropna=True)
    out = pd.DataFrame({"count": counts.to_numpy().astype(np.int64)}, index=pd.Index(list(counts.index), dtype=object, name="tag"))
    order = np.lexsort((out.index.to_numpy(dtype=object).astype(str), -out["count"].to_numpy()))
    return out.iloc[order]


# --------------------------------------------------------------------------- extract


def extract(df: pd.DataFrame, pattern: str | re.Pattern[str] = SENSOR_PATTERN, *, column: str = "content") -> pd.DataFrame:
    """``df`` with one new column per named group of ``pattern``, matched against ``column``.

    A group whose every match is a number becomes ``float64``; the others are
    strings. Where the pattern does not match the new columns are missing.
    :data:`SENSOR_PATTERN` (the default) reads readings like ``"21.5C"`` into
    ``value`` and ``unit``.

    >>> df = to_dataframe([Event(id="1", timestamp=1.0, content="21.5C"),
    ...                    Event(id="2", timestamp=2.0, content="door opened"),
    ...                    Event(id="3", timestamp=3.0, content="1013.2 hPa")])
    >>> extract(df)[["content", "value", "unit"]]
           content   value  unit
    0        21.5C    21.5     C
    1  door opened     NaN  <NA>
    2   1013.2 hPa  1013.2   hPa
    """
    _require(df, [column], "extract")
    try:
        rx = re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise UsageError(f"extract pattern is not a valid regular expression {pattern!r}: {exc}") from exc
    names = list(rx.groupindex)
    if not names:
        raise UsageError(f"extract pattern needs named groups like (?P<value>...): {rx.pattern!r}")
    taken = [n for n in names if n in df.columns]
    if taken:
        raise UsageError(f"extract would overwrite the columns {taken}; rename the groups of the pattern")
    text = df[column]
    if not isinstance(text.dtype, pd.StringDtype):
        text = text.astype(pd.StringDtype("pyarrow"))
    found = text.str.extract(rx, expand=True)
    new: dict[str, pd.Series] = {}
    for name in names:
        col = found[name].astype(pd.StringDtype("pyarrow"))
        present = col.notna()
        numbers = pd.to_numeric(col.where(present, None), errors="coerce")
        if present.any() and numbers.notna().sum() == present.sum():
            new[name] = numbers.astype(np.float64)
        else:
            new[name] = col
    return df.assign(**new)


# --------------------------------------------------------------------------- forensics


def _matches(series: pd.Series, pattern: str, case: bool) -> np.ndarray:
    flags = 0 if case else re.IGNORECASE
    try:
        rx = re.compile(pattern, flags)
    except (re.error, TypeError) as exc:
        raise UsageError(f"grep pattern is not a valid regular expression {pattern!r}: {exc}") from exc
    if isinstance(series.dtype, pd.CategoricalDtype):
        # Match each distinct value once (sources repeat), then spread by code.
        cats = series.cat.categories
        hit = np.fromiter((bool(rx.search(str(c))) for c in cats), dtype=bool, count=len(cats))
        codes = series.cat.codes.to_numpy()
        return np.where(codes >= 0, hit[codes] if len(cats) else False, False)
    text = series if isinstance(series.dtype, pd.StringDtype) else series.astype(pd.StringDtype("pyarrow"))
    try:
        # Arrow's vectorised regex search, where the pattern is in its dialect.
        found = text.str.contains(pattern, case=case, regex=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        found = pd.Series([bool(rx.search(t)) if isinstance(t, str) else False for t in text], dtype=bool)
    return found.fillna(False).to_numpy(dtype=bool)


def grep(
    df: pd.DataFrame,
    pattern: str,
    *,
    column: str = "content",
    context: Any = None,
    before: Any = None,
    after: Any = None,
    case: bool = True,
    same_source: bool = False,
) -> pd.DataFrame:
    """Events whose ``column`` matches ``pattern`` (a regex search), with the events around them.

    ``context`` (a duration: seconds, text like ``"5s"`` or ``"2min"``, a
    ``Timedelta``; see :mod:`theia_frames.timeparse`) adds every event within
    that time span before and after a match; ``before``/``after`` set each side
    on its own. With ``same_source=True`` only events of the matching event's
    source count as context. The result keeps ``df``'s order and index and
    gains a boolean column ``match``: True for matches, False for context.

    >>> df = to_dataframe([Event(id=str(i), timestamp=float(t), content=c) for i, (t, c) in
    ...     enumerate([(0, "boot"), (8, "disk warn"), (10, "disk FAIL"), (11, "retry"), (30, "ok")])])
    >>> grep(df, "FAIL", context="3s")[["timestamp", "content", "match"]]
                      timestamp    content  match
    1 1970-01-01 00:00:08+00:00  disk warn  False
    2 1970-01-01 00:00:10+00:00  disk FAIL   True
    3 1970-01-01 00:00:11+00:00      retry  False
    """
    what = "grep"
    _require(df, [column], what)
    if "match" in df.columns:
        raise UsageError("grep adds a 'match' column, and the frame already has one")
    hit = _matches(df[column], pattern, case)
    before_d = _delta(before if before is not None else context, "before")
    after_d = _delta(after if after is not None else context, "after")
    keep = hit.copy()
    if (before_d > pd.Timedelta(0) or after_d > pd.Timedelta(0)) and hit.any():
        times = event_times(df, what).asi8
        if same_source:
            _require(df, ["source"], what + "(same_source=True)")
            groups = pd.Series(df["source"].to_numpy()).astype("category").cat.codes.to_numpy()
        else:
            groups = np.zeros(len(df), dtype=np.int64)
        for g in np.unique(groups[hit]):
            members = np.flatnonzero(groups == g)
            keep[members] |= _within(times[members], hit[members], before_d.value, after_d.value)
    out = df[keep].copy()
    out["match"] = hit[keep]
    return out


def _within(times: np.ndarray, hit: np.ndarray, before: int, after: int) -> np.ndarray:
    """Which of ``times`` lie in ``[t - before, t + after]`` for some matching ``t`` (vectorised)."""
    order = np.argsort(times, kind="stable")
    ts = times[order]
    centres = times[hit]
    lo = np.searchsorted(ts, centres - before, side="left")
    hi = np.searchsorted(ts, centres + after, side="right")
    cover = np.zeros(len(ts) + 1, dtype=np.int64)
    np.add.at(cover, lo, 1)
    np.add.at(cover, hi, -1)
    inside_sorted = np.cumsum(cover[:-1]) > 0
    inside = np.empty(len(ts), dtype=bool)
    inside[order] = inside_sorted
    return inside


def timeline(df: pd.DataFrame, *, gap: Any = None) -> pd.DataFrame:
    """A summary per source, sorted by source.

    Columns: ``first`` and ``last`` event time, ``count``, ``span`` (last - first),
    ``rate`` (events per second: intervals over the span; NaN for a single
    instant), ``max_gap`` (the longest silence between two events) and ``gaps``
    (how many silences are longer than ``gap``, a duration as ``grep``'s
    ``context`` takes it; by default ten times that source's median interval
    between events at different times: a log written to the second has many
    events per second, and their zero intervals are its resolution, not its pace).

    >>> df = to_dataframe([Event(id=str(i), timestamp=float(t), source=s) for i, (t, s) in
    ...     enumerate([(0, "a"), (1, "a"), (2, "a"), (20, "a"), (5, "b")])])
    >>> timeline(df)[["count", "rate", "max_gap", "gaps"]]
            count  rate         max_gap  gaps
    source
    a           4  0.15 0 days 00:00:18     1
    b           1   NaN             NaT     0
    """
    what = "timeline"
    _require(df, ["source"], what)
    times = event_times(df, what)
    gap_d = timeline_gap(gap)
    frame = pd.DataFrame({"source": df["source"].to_numpy(), "t": times.asi8})
    frame = frame.sort_values(["source", "t"], kind="stable")
    frame["d"] = frame.groupby("source", observed=True, sort=False)["t"].diff()
    rows = []
    for name, part in frame.groupby("source", observed=True, sort=True):
        t = part["t"].to_numpy()
        d = part["d"].dropna().to_numpy()
        limit: float
        if gap_d is not None:
            limit = gap_d.value
        else:
            apart = d[d > 0]
            limit = 10 * float(np.median(apart)) if len(apart) else np.inf
        rows.append(_timeline_row(str(name), int(t[0]), int(t[-1]), len(t), d.max() if len(d) else None, int((d > limit).sum()) if len(d) else 0))
    return _timeline_table(rows, times.tz)


def _timeline_row(source: str, first: int, last: int, count: int, max_gap: Any, gaps: int) -> dict[str, Any]:
    """One source's row of a timeline (times in nanoseconds): its span and rate from the rest."""
    span = last - first
    rate = (count - 1) / (span / 1e9) if span > 0 else np.nan
    return {"source": source, "first": first, "last": last, "count": count, "span": span, "rate": rate, "max_gap": max_gap, "gaps": gaps}


def _timeline_table(rows: list[dict[str, Any]], tz: Any) -> pd.DataFrame:
    """The frame of a timeline's rows (:func:`_timeline_row`), times in zone ``tz`` (None: naive UTC)."""
    out = pd.DataFrame(rows, columns=["source", "first", "last", "count", "span", "rate", "max_gap", "gaps"])
    for col in ("first", "last"):
        stamps = pd.to_datetime(out[col].astype("int64"), unit="ns", utc=True).astype("datetime64[ns, UTC]")
        out[col] = stamps.dt.tz_convert(tz) if tz is not None else stamps.dt.tz_localize(None)
    out["span"] = pd.to_timedelta(out["span"].astype("int64"), unit="ns")
    out["max_gap"] = pd.to_timedelta(out["max_gap"].astype("float64"), unit="ns")
    out["count"] = out["count"].astype(np.int64)
    out["gaps"] = out["gaps"].astype(np.int64)
    out["rate"] = out["rate"].astype(np.float64)
    return out.set_index("source")


def timeline_gap(gap: Any) -> pd.Timedelta | None:
    """``gap`` of :func:`timeline` or :func:`timeline_frame` as a duration (None: each source's own).

    >>> timeline_gap("90s"), timeline_gap(None)
    (Timedelta('0 days 00:01:30'), None)
    """
    return None if gap is None else _delta(gap, "gap")


def timeline_refused(exc: UsageError) -> UsageError:
    """The error of a timeline whose count was refused as too large (others as they are).

    >>> from theia_frames.protocol.count import too_many_groups
    >>> print(timeline_refused(UsageError(too_many_groups(12, 10))))
    timeline refused: its sources are heard in more than 10 (second, source) pairs (at least 12); take a narrower time range, or raise max_groups
    """
    sizes = too_many_groups_sizes(str(exc))
    if sizes is None:
        return exc
    return UsageError(
        f"timeline refused: its sources are heard in more than {sizes[1]:,} (second, source) pairs (at least {sizes[0]:,}); "
        "take a narrower time range, or raise max_groups"
    )


def timeline_frame(result: CountResult, *, gap: Any = None) -> pd.DataFrame:
    """The timeline of a count per second by source with each source's first and last time
    (:class:`~theia_frames.protocol.count.Counter` ``(SECOND, "source", spans=True)``): what
    ``client.timeline(filter)`` returns, counted where the events are. Its columns, against
    :func:`timeline` of the same events (``timeline(to_dataframe(find(filter)), gap=gap)``):

    - ``first``, ``last``, ``count``, ``span``, ``rate``: equal (times at the microsecond, UTC);
    - ``max_gap``, at one-second resolution: the longest step between two consecutive seconds
      holding the source's events (whole seconds; 0 for events all in one second, NaT for a
      single event): less than one second from :func:`timeline`'s;
    - ``gaps``, at one-second resolution: how many runs of seconds without the source's events
      are longer than ``gap`` (by default ten times the source's median step between seconds
      holding events: 10 s for a source heard every second; none for one heard in one second
      only). Each such run is a silence longer than ``gap``, and every silence longer than
      ``gap`` + 2 s holds one: with the same ``gap``, :func:`timeline`'s ``gaps`` for
      ``gap`` + 2 s ≤ this ``gaps`` ≤ :func:`timeline`'s for ``gap``.

    >>> from theia_frames.protocol.arrow import events_to_batch
    >>> from theia_frames.protocol.count import SECOND, Counter
    >>> events = [Event(id=str(i), timestamp=t, source=s) for i, (t, s) in
    ...           enumerate([(0.5, "a"), (1.2, "a"), (2.9, "a"), (20.1, "a"), (5.0, "b")])]
    >>> counter = Counter(SECOND, "source", spans=True)
    >>> counter.add(events_to_batch(events))
    >>> timeline_frame(counter.result(), gap="5s")[["count", "rate", "max_gap", "gaps"]]
            count      rate         max_gap  gaps
    source
    a           4  0.153061 0 days 00:00:18     1
    b           1       NaN             NaT     0
    >>> timeline(to_dataframe(events), gap="5s")[["count", "rate", "max_gap", "gaps"]]
            count      rate                max_gap  gaps
    source
    a           4  0.153061 0 days 00:00:17.200000     1
    b           1       NaN                    NaT     0
    """
    if result.grain != SECOND or result.by != "source" or result.firsts is None or result.lasts is None:
        raise UsageError("a timeline is laid out from a count per second by source with each source's first and last time")
    gap_d = timeline_gap(gap)
    order = np.lexsort((result.slots, result.groups))
    groups, slots, counts = result.groups[order], result.slots[order], result.counts[order]
    bounds = np.searchsorted(groups, np.arange(len(result.names) + 1))
    rows = []
    for name, g in sorted((name, g) for g, name in enumerate(result.names)):
        held = slots[bounds[g] : bounds[g + 1]]
        steps = np.diff(held)
        count = int(counts[bounds[g] : bounds[g + 1]].sum())
        limit: float
        if gap_d is not None:
            limit = gap_d.value
        else:
            limit = 10 * float(np.median(steps)) * SECOND if len(steps) else np.inf
        max_gap = int(steps.max()) * SECOND if len(steps) else (0 if count > 1 else None)
        gaps = int(((steps - 1) * SECOND > limit).sum())
        rows.append(_timeline_row(name, int(result.firsts[g]), int(result.lasts[g]), count, max_gap, gaps))
    return _timeline_table(rows, "UTC")
