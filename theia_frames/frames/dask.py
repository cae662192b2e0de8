"""Events as a Dask DataFrame: one partition per time slice, fetched by the worker that computes it.

:func:`to_dask` builds a lazy ``dask.dataframe.DataFrame`` with the dtypes of
:func:`~theia_frames.frames.convert.to_dataframe` (``index="timestamp"``), from one
collector, several collectors (merged), or an upstream file store folder::

    >>> import theia_frames as tf
    >>> ddf = tf.to_dask("ws://127.0.0.1:6433", tf.Filter("2024-05-01"))     # doctest: +SKIP
    >>> ddf.groupby("source").size().compute()                                # doctest: +SKIP

Each partition is one slice ``[a, b)`` of the filter's time range (the last
one ``[a, b]``), with known divisions on the sorted ``timestamp`` index, so
``ddf.loc["2024-05-01 10:00":"2024-05-01 11:00"]`` and ``resample`` read only
the partitions they need. The graph holds only the slice bounds, the filter
and the source: the events travel from the collector (or the store's files)
straight to the worker that computes a partition, never through the process
that built the frame.

How the slices are cut (:mod:`theia_frames.frames.partitions`): a collector of
this project tells how many events its stored chunks hold over time (the
extension's ``/chunks`` request, :func:`~theia_frames.frames.partitions.chunk_counts`),
and the slices are cut so that each holds about ``partition_events`` events
(or so that there are ``npartitions`` of equal count); a peer that cannot tell
(the upstream collector) is sliced by time, ``partition`` long (default one
hour; then the filter needs a start and an end). An upstream store folder is
sliced by its file names and sizes the same way.

The frame is the events stored when :func:`to_dask` was called, as far as its
time range goes: a filter without an end ends at the newest event the
collectors' indexes held then (events stored later, and later than that, are
not in it); a filter without a start starts at the oldest.

A peer that cannot tell its layout is also one that answers ``/find``
requests one at a time and ends them by silence (the upstream collector, see
docs/protocol.md "One find at a time"): partitions fetched at once queue there,
so give the workers' clients an ``idle_timeout`` above the time a slice takes
(``source_options={"idle_timeout": 60}``), or run one worker thread.

Several collectors: every partition fetches its slice from each of them and
keeps one event per ``(timestamp, id)``, as a store does, in ``(timestamp,
id)`` order.

On the frame, ``ddf.theia`` offers the helpers that work partition by
partition (see :class:`DaskTheiaAccessor`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..protocol.arrow import event_schema
from ..checks import positive_int
from ..client.options import split_client_options
from ..client.sync import Client
from .partitions import (
    DEFAULT_PARTITION_EVENTS,
    MAX_PARTITIONS,
    STORE_EVENT_BYTES,
    chunk_counts,
    store_files_for,
    store_layout,
    time_slices,
)
from ..exceptions import MissingDependencyError, UsageError
from ..filter import EventFilter, FilterLike, as_filter
from .convert import batches_to_dataframe, empty_frame, finish_frame

__all__ = [
    "to_dask",
    "slice_filter",
    "DaskTheiaAccessor",
]

# A slice is fetched a microsecond wider on each side: the frame rounds timestamps to
# the microsecond, and the slice is cut on the rounded values.
_US = 1e-6


def _dask() -> Any:
    try:
        import dask.dataframe as dd
    except ImportError as exc:
        raise MissingDependencyError("dask", "dask", "to_dask") from exc
    return dd


# --------------------------------------------------------------------------- what a worker runs


@dataclass(frozen=True)
class _Slice:
    """One partition: what the worker that computes it needs, and nothing more (it is pickled)."""

    kind: str  # "collectors" or "store"
    where: tuple[str, ...]  # collector URLs, or the store's file paths to read
    filter: dict[str, Any]
    engine: str
    lo_us: int
    hi_us: int
    last: bool
    columns: tuple[str, ...] | None
    options: tuple[tuple[str, Any], ...]

    def fetch_filter(self) -> EventFilter:
        return slice_filter(EventFilter.from_dict(self.filter, engine=self.engine), self.lo_us, self.hi_us)  # type: ignore[arg-type]


# The least positive time: a slice's start of 0 becomes minus it (0 is no start at all).
_NO_START_BELOW = 5e-324


def slice_filter(flt: EventFilter, lo_us: int, hi_us: int) -> EventFilter:
    """What a partition over ``[lo_us, hi_us]`` (microseconds) fetches of ``flt``: its patterns,
    the time range of both, a microsecond wider on each side (the frame's rounding).

    >>> slice_filter(EventFilter(content="x"), -20_000_000, 1).start  # before 1970: a start all the same
    -20.000001
    >>> slice_filter(EventFilter(), 1, 5_000_000).start < 0  # a start of 0 would be none: just below it
    True
    """
    lo = lo_us * _US - _US
    hi = hi_us * _US + _US
    start = lo if flt.start is None else max(flt.start, lo)
    end = hi if flt.end is None else min(flt.end, hi)
    return EventFilter(
        # a start of 0 means none, on the wire too: the greatest time below 0 instead, so that
        # events before 1970 (event times like any other) stay in the partitions before
        start=start if start != 0 else -_NO_START_BELOW,
        end=max(end, start),  # the slices lie inside the filter's range: only rounding can cross them
        tags=flt.tags,
        content=flt.content,
        id=flt.id,
        source=flt.source,
        engine=flt.engine,
    )


def _first_event_time(urls: Sequence[str], flt: EventFilter, options: Mapping[str, Any]) -> float | None:
    """The earliest time of the first event each collector sends for ``flt`` (ascending), None when none has one."""
    first: float | None = None
    for url in urls:
        with Client(url, **dict(options)) as client:
            with client.find(flt.order_asc()) as result:
                for batch in result.iter_batches():
                    if batch.num_rows:
                        t = float(pc.min(batch.column("timestamp")).as_py())
                        first = t if first is None else min(first, t)
                        break
    return first


def _collector_table(url: str, flt: EventFilter, options: Mapping[str, Any]) -> pa.Table:
    with Client(url, **dict(options)) as client:
        result = client.find(flt)
        batches = list(result.iter_batches())
    return pa.Table.from_batches(batches, schema=event_schema())


def _store_table(paths: Sequence[str], flt: EventFilter, options: Mapping[str, Any]) -> pa.Table:
    from .storefiles import iter_store_batches

    batches = []
    for path in paths:
        for batch in iter_store_batches(path, start=flt.start, end=flt.end, **dict(options)):
            batch = flt.match_batch(batch)
            if batch.num_rows:
                batches.append(batch)
    return pa.Table.from_batches(batches, schema=event_schema())


def _unique_sorted(table: pa.Table, dedupe: bool) -> pa.Table:
    """``table`` in ``(timestamp, id)`` order (stable), with one event per ``(timestamp, id)`` when ``dedupe``."""
    if table.num_rows < 2:
        return table
    order = pc.sort_indices(table, sort_keys=[("timestamp", "ascending"), ("id", "ascending")])
    table = table.take(order)
    if not dedupe:
        return table
    ts = table.column("timestamp").to_numpy()
    ids = table.column("id")
    same = np.zeros(table.num_rows, dtype=bool)
    same[1:] = ts[1:] == ts[:-1]
    if same.any():
        same_id = pc.equal(ids.slice(1), ids.slice(0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
        same[1:] &= same_id
        table = table.filter(pa.array(~same))
    return table


def _load(part: _Slice) -> pd.DataFrame:
    """The frame of one partition (runs on the worker)."""
    flt = part.fetch_filter()
    options = dict(part.options)
    if part.kind == "collectors":
        tables = [_collector_table(url, flt, options) for url in part.where]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        table = _unique_sorted(table, dedupe=len(part.where) > 1)
    else:
        # the store keeps events in arrival order: sorted here, stably (as read_store does)
        table = _store_table(part.where, flt, options)
        if table.num_rows > 1:
            table = table.take(pc.sort_indices(table, sort_keys=[("timestamp", "ascending")]))
    df = batches_to_dataframe([table], columns=part.columns)
    ts = df["timestamp"].array.asi8 if len(df) else np.zeros(0, dtype=np.int64)
    lo, hi = part.lo_us * 1000, part.hi_us * 1000
    keep = (ts >= lo) & ((ts <= hi) if part.last else (ts < hi))
    if not keep.all():
        df = df[keep]
    return finish_frame(df.reset_index(drop=True), "timestamp", None)


def _meta(columns: tuple[str, ...] | None) -> pd.DataFrame:
    from dask.dataframe.utils import UNKNOWN_CATEGORIES

    meta = finish_frame(empty_frame(columns), "timestamp", None)
    if "source" in meta.columns:
        meta["source"] = pd.Categorical([], categories=[UNKNOWN_CATEGORIES])
    return meta


# --------------------------------------------------------------------------- sources


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and "://" in value


def to_dask(
    source: str | os.PathLike[str] | Sequence[str],
    filter: FilterLike = None,
    *,
    partition: Any = None,
    npartitions: int | None = None,
    partition_events: int = DEFAULT_PARTITION_EVENTS,
    columns: Sequence[str] | None = None,
    source_options: Mapping[str, Any] | None = None,
    timeout: float | None = 10.0,
) -> Any:
    """The events of ``filter`` (None: all) as a lazy ``dask.dataframe.DataFrame``, indexed by
    ``timestamp`` with known divisions, with the dtypes of ``to_dataframe(..., index="timestamp")``.

    ``source`` is a collector URL, a list of collector URLs (their events
    merged, one per ``(timestamp, id)``), or an upstream file store folder (a
    :class:`pathlib.Path`, or a text naming an existing folder; read as
    :func:`~theia_frames.frames.storefiles.read_store` reads it). See the module
    documentation for how it is sliced: ``partition`` (a pandas frequency,
    such as ``"1h"``) forces slices of that length; ``npartitions`` asks for
    that many; else about ``partition_events`` events each where the source
    can tell, :data:`~theia_frames.frames.partitions.DEFAULT_PARTITION` long otherwise. ``columns`` keeps only
    those event columns (the timestamp is the index). ``source_options`` go to
    each worker's :class:`~theia_frames.client.Client` (``token``, ``cafile``,
    ``timeout``, ...; they are pickled with the graph, so no ``ssl_context``
    on a distributed cluster) and, for a store, to
    :func:`~theia_frames.frames.storefiles.iter_store_batches` (``strict``,
    ``max_event_size``). ``timeout`` bounds each layout request.

    Without the ``dask`` extra this raises
    :class:`~theia_frames.exceptions.MissingDependencyError`.
    """
    dd = _dask()
    flt = as_filter(filter)
    if flt.order == "desc":
        raise UsageError("a Dask frame is sorted by time: to_dask takes no descending filter")
    npartitions = positive_int("npartitions", npartitions, none_ok=True)
    if npartitions is not None and npartitions > MAX_PARTITIONS:
        raise UsageError(f"npartitions={npartitions} is more than {MAX_PARTITIONS}")
    if partition is not None and npartitions is not None:
        raise UsageError("give partition= or npartitions=, not both")
    partition_events = positive_int("partition_events", partition_events)
    cols = None if columns is None else tuple(c for c in (columns if not isinstance(columns, str) else [columns]) if c != "timestamp")
    empty_frame(cols)  # checks the names
    options = dict(source_options or {})
    wire = {k: v for k, v in flt.to_dict().items() if k != "order"}

    if isinstance(source, str) and not _is_url(source) and not os.path.exists(source) and ("/" in source or os.sep in source):
        raise UsageError(f"to_dask: no such store folder {source!r} (a collector URL starts with ws:// or wss://)")
    if isinstance(source, os.PathLike) or (isinstance(source, str) and not _is_url(source) and os.path.exists(source)):
        named, weights = store_layout(source, flt)
        # a file may hold events older than its name says (a late event): without a start, the
        # first slice reaches back to the epoch
        first = min((lo for _, lo, _ in named), default=0.0)
        start = flt.start if flt.start is not None else first
        end = flt.end if flt.end is not None else max((hi for _, _, hi in named), default=start)
        end = max(end, start)
        divisions = time_slices(
            start, end, counts=weights if partition is None else None, npartitions=npartitions,
            partition=partition, partition_events=partition_events * STORE_EVENT_BYTES,
        )
        if flt.start is None and divisions[0].value > 0:
            divisions[0] = pd.Timestamp(0, tz="UTC")
        slices = []
        for i, (a, b) in enumerate(zip(divisions, divisions[1:])):
            last = i == len(divisions) - 2
            files = store_files_for(named, a.value / 1e9, b.value / 1e9, last)
            slices.append(
                _Slice("store", files, wire, flt.engine, a.value // 1000, b.value // 1000, last, cols, tuple(options.items()))
            )
    else:
        urls = [source] if isinstance(source, str) else list(source)
        if not urls or not all(isinstance(u, str) for u in urls):
            raise UsageError(
                "to_dask takes a collector URL, a list of collector URLs or a store folder; "
                f"got {source!r:.100}" + ("" if _is_url(source) or not isinstance(source, str) else " (no such folder)")
            )
        counts: list[tuple[float, float, float]] | None = []
        for url in urls:
            got = chunk_counts(url, flt, **{**split_client_options(options)[0], "timeout": timeout})
            if got is None:
                counts = None
                break
            assert counts is not None
            counts.extend(got)
        if counts is not None:
            # the data's own extent within the filter's range: its chunks' first and last times
            known = [c for c in counts if c[2] > 0]
            held_from = min((lo for lo, _, _ in known), default=None)
            held_to = max((hi for _, hi, _ in known), default=None)
            start = flt.start if flt.start is not None else (0.0 if held_from is None else held_from)
            if held_from is not None and held_from > start:
                start = held_from
            end = flt.end if flt.end is not None else (start if held_to is None else held_to)
            if held_to is not None and held_to < end:
                end = held_to
            end = max(end, start)
        else:
            if flt.end is None:
                raise UsageError(
                    "a collector that cannot tell its layout (such as the upstream one) is sliced by time: "
                    "give the filter an end (it starts at the first event that matches)"
                )
            # the data's own start within the filter's range: the first event a find sends
            held_from = _first_event_time(urls, flt, options)
            start = flt.start if flt.start is not None else (flt.end if held_from is None else held_from)
            if held_from is not None and held_from > start:
                start = min(held_from, flt.end)
            end = max(flt.end, start)
        divisions = time_slices(
            start, end, counts=counts, npartitions=npartitions, partition=partition, partition_events=partition_events
        )
        slices = [
            _Slice("collectors", tuple(urls), wire, flt.engine, a.value // 1000, b.value // 1000,
                   i == len(divisions) - 2, cols, tuple(options.items()))
            for i, (a, b) in enumerate(zip(divisions, divisions[1:]))
        ]
    return dd.from_map(_load, slices, meta=_meta(cols), divisions=tuple(divisions), label="theia-events")


# --------------------------------------------------------------------------- ddf.theia


def _per_partition(ddf: Any, func: Callable[..., pd.DataFrame], *args: Any, **kwargs: Any) -> Any:
    meta = func(ddf._meta, *args, **kwargs)
    return ddf.map_partitions(func, *args, meta=meta, **kwargs)


class DaskTheiaAccessor:
    """``ddf.theia`` on a Dask frame: the helpers of :mod:`theia_frames.frames.analysis` that work one
    partition at a time, each run on every partition by the worker that holds it.

    - :meth:`explode_tags`, :meth:`extract`, :meth:`grep` (without context):
      lazy, partition by partition.
    - :meth:`bucket`: counted per partition and summed (a bucket that spans
      two partitions is added up); ``agg`` ``"count"``, ``"sum"``, ``"min"``
      or ``"max"``, which combine exactly. Its result is one row per bucket,
      small: it is computed and returned as a pandas frame.
    - :meth:`patterns`: the miner is trained once on the distinct masked lines of
      all partitions (a pass that returns only them and their counts), then
      applied per partition, lazily; the ids equal the in-memory call's.
    - Not here: ``grep`` with ``context``/``before``/``after`` (context reaches
      across partition boundaries), ``timeline`` (its runs do too),
      ``tag_matrix`` (one column per tag of the whole frame) and
      ``tag_counts`` (``ddf.theia.explode_tags()["tag"].value_counts()`` counts
      the same lazily). They raise :class:`~theia_frames.exceptions.UsageError`
      saying so; compute the frame (or a ``loc`` slice of it) first.
    """

    def __init__(self, ddf: Any) -> None:
        self._ddf = ddf

    def explode_tags(self) -> Any:
        """See :func:`~theia_frames.frames.analysis.explode_tags` (per partition)."""
        from .analysis import explode_tags

        ddf = self._ddf
        meta = explode_tags(ddf._meta)
        if "tag" in meta.columns:
            from dask.dataframe.utils import UNKNOWN_CATEGORIES

            meta["tag"] = pd.Categorical([], categories=[UNKNOWN_CATEGORIES])
        return ddf.map_partitions(explode_tags, meta=meta)

    def extract(
        self, pattern: Any = None, *, column: str = "content", numeric: Sequence[str] | None = None
    ) -> Any:
        """See :func:`~theia_frames.frames.analysis.extract` (per partition). A partition cannot see the
        others, so the type of each group is fixed: the groups named in ``numeric`` are
        ``float64`` (a value that is no number is missing), the others text. ``numeric``
        defaults to ``("value",)`` with the default :data:`~theia_frames.frames.analysis.SENSOR_PATTERN`,
        none otherwise."""
        import re

        from .analysis import SENSOR_PATTERN, extract

        rx_pattern = SENSOR_PATTERN if pattern is None else pattern
        if numeric is None:
            numeric = ("value",) if pattern is None else ()
        try:
            names = list(re.compile(rx_pattern).groupindex)
        except (re.error, TypeError) as exc:
            raise UsageError(f"extract pattern is not a valid regular expression {rx_pattern!r}: {exc}") from exc
        unknown = [n for n in numeric if n not in names]
        if unknown:
            raise UsageError(f"extract numeric= names groups the pattern does not have: {unknown}")
        numbers = tuple(numeric)
        return _per_partition(self._ddf, _typed_extract, rx_pattern, column, names, numbers)

    def grep(self, pattern: str, **options: Any) -> Any:
        """See :func:`~theia_frames.frames.analysis.grep` (per partition; no context)."""
        from .analysis import grep

        for name in ("context", "before", "after"):
            if options.get(name) is not None:
                raise UsageError(
                    f"grep({name}=...) on a Dask frame: the events around a match may be in the next partition; "
                    "compute the frame (or a .loc time slice of it) and grep that"
                )
        return _per_partition(self._ddf, grep, pattern, **options)

    def bucket(self, freq: Any, by: str | None = None, value: str | None = None, agg: str = "count", *, tz: Any = None) -> pd.DataFrame:
        """See :func:`~theia_frames.frames.analysis.bucket`: counted per partition, summed, computed."""
        from .analysis import bucket

        combine = {"count": "sum", "sum": "sum", "min": "min", "max": "max"}
        if agg not in combine:
            raise UsageError(
                f"bucket(agg={agg!r}) on a Dask frame: only {sorted(combine)} combine across partitions; "
                "compute the frame first for others"
            )
        bucket(self._ddf._meta, freq, by=by, value=value, agg=agg, tz=tz)  # checks the arguments here
        pieces: list[pd.DataFrame] = [
            p for p in _each_partition(self._ddf, bucket, freq, by=by, value=value, agg=agg, tz=tz) if len(p)
        ]
        if not pieces:
            return bucket(self._ddf._meta, freq, by=by, value=value, agg=agg, tz=tz)
        joined = pd.concat(pieces)
        counts = agg == "count"
        out: pd.DataFrame = joined.groupby(level=0, sort=True).agg(combine[agg])
        # every bucket from the first to the last, laid out by bucket itself
        ends = pd.DataFrame({"timestamp": pd.DatetimeIndex([out.index[0], out.index[-1]])})
        edges = bucket(ends, freq, tz=tz, max_buckets=None).index  # the first and last times alone: any number
        out = out.reindex(edges, fill_value=0 if counts else np.nan)
        if counts:
            out = out.fillna(0).astype(np.int64)
        if by is not None:
            out.columns.name = by
        return out

    def patterns(
        self,
        column: str = "content",
        *,
        miner: Any = None,
        learn: bool = True,
        masks: Any = None,
        sim_th: float | None = None,
        depth: int | None = None,
    ) -> Any:
        """See :func:`~theia_frames.frames.patterns.patterns`: the same ids as the call on the whole
        frame in memory. The miner is trained once, here, on the distinct masked lines of every
        partition with their counts summed (one pass over the data, which returns only the
        shapes and their counts), in the order the in-memory call mines them; then every
        partition is given its patterns by that trained miner, lazily. ``learn=False`` skips
        the training and applies ``miner`` as it is."""
        from .patterns import PatternMiner

        given = {k: v for k, v in {"masks": masks, "sim_th": sim_th, "depth": depth}.items() if v is not None}
        if miner is None:
            miner = PatternMiner(**given)
        elif not isinstance(miner, PatternMiner) or given:
            raise UsageError("patterns(miner=...) takes a PatternMiner, and no masks, sim_th or depth beside it")
        if column not in self._ddf.columns:
            raise UsageError(f"patterns needs the column {column!r}; the frame has {list(self._ddf.columns)}")
        if learn:
            pieces = _each_partition(self._ddf, _shape_counts, column, miner)
            counts = pd.concat(pieces).groupby(level=0, sort=False).sum() if pieces else pd.Series(dtype=np.int64)
            miner.learn([str(s) for s in counts.index], counts.to_numpy(dtype=np.int64))
        meta = miner.patterns(self._ddf._meta, column, learn=False)
        from dask.dataframe.utils import UNKNOWN_CATEGORIES

        for name in ("pattern", "pattern_id"):
            meta[name] = pd.Categorical([], categories=[UNKNOWN_CATEGORIES])
        return self._ddf.map_partitions(_apply_patterns, column, miner, meta=meta)

    def _unsupported(self, name: str, why: str) -> Any:
        raise UsageError(f"{name} on a Dask frame: {why}; compute the frame (or a .loc time slice of it) first")

    def timeline(self, *args: Any, **kwargs: Any) -> Any:
        """Not on a Dask frame: a run of events reaches across partition boundaries."""
        return self._unsupported("timeline", "a run of events reaches across partition boundaries")

    def tag_matrix(self) -> Any:
        """Not on a Dask frame: its columns are every tag of the whole frame."""
        return self._unsupported("tag_matrix", "its columns are every tag of the whole frame")

    def tag_counts(self) -> Any:
        """Not on a Dask frame: ``ddf.theia.explode_tags()["tag"].value_counts()`` counts the same."""
        return self._unsupported("tag_counts", 'ddf.theia.explode_tags()["tag"].value_counts() counts the same lazily')


def _typed_extract(df: pd.DataFrame, pattern: Any, column: str, names: list[str], numeric: tuple[str, ...]) -> pd.DataFrame:
    from .analysis import extract

    out = extract(df, pattern, column=column)
    for name in names:
        if name in numeric:
            out[name] = pd.to_numeric(out[name], errors="coerce").astype(np.float64)
        else:
            out[name] = out[name].astype(pd.StringDtype("pyarrow"))
    return out


def _shape_counts(df: pd.DataFrame, column: str, miner: Any) -> pd.Series:
    shapes, rows = miner.shapes(df[column])
    return pd.Series(np.bincount(rows[rows >= 0], minlength=len(shapes)).astype(np.int64), index=pd.Index(shapes, dtype=object))


def _apply_patterns(df: pd.DataFrame, column: str, miner: Any) -> pd.DataFrame:
    frame: pd.DataFrame = miner.patterns(df, column, learn=False)
    return frame


def _each_partition(ddf: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """``func(partition, *args, **kwargs)`` of every partition of ``ddf``, computed by the workers."""
    from dask.base import compute
    from dask.delayed import delayed

    return list(compute(*[delayed(func)(p, *args, **kwargs) for p in ddf.to_delayed()]))  # type: ignore[no-untyped-call]


def _register() -> None:
    try:
        from dask.dataframe.extensions import register_dataframe_accessor
    except ImportError:  # pragma: no cover - no dask: nothing to register on
        return
    register_dataframe_accessor("theia")(DaskTheiaAccessor)  # type: ignore[no-untyped-call]


_register()
