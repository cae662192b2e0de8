"""Events as pandas DataFrames: one layout, the same dtypes on every path.

The line people write most::

    >>> df = to_dataframe(client.find(Filter(0)))                    # doctest: +SKIP

Any iterable of :class:`~theia_frames.event.Event` works too::

    >>> df = to_dataframe([Event(id="a", timestamp=1.5, source="/dev/t",
    ...                          tags=["sensor", "temp"], content="21.5C")])
    >>> df.columns.tolist()
    ['timestamp', 'source', 'tags', 'content', 'id']
    >>> df.loc[0, "timestamp"], df.loc[0, "tags"]
    (Timestamp('1970-01-01 00:00:01.500000+0000', tz='UTC'), ['sensor', 'temp'])
    >>> df.dtypes.equals(pd.Series(EVENT_DTYPES))
    True

The columns (see :data:`EVENT_DTYPES`):

==========  =========================================  ===========================================
column      dtype                                      holds
==========  =========================================  ===========================================
timestamp   ``datetime64[ns, UTC]``                    the event time, rounded to the microsecond
source      ``category``                               where the event came from
tags        ``list<string>[pyarrow]``                  the tags, ready for ``explode`` (empty list:
                                                       no tags)
content     ``string[pyarrow]``                        the event text
id          ``string[pyarrow]``                        the event id
==========  =========================================  ===========================================

A find result of theia_frames' own client takes a columnar path: its Arrow
batches become the frame with vectorised kernels (the timestamp conversion,
tag splitting and category encoding run over whole columns), without one
Python object per event. Events given one by one are gathered into the same
Arrow batches first, so both paths give the same frame.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..protocol.arrow import as_event_data, columns_to_batch, event_schema, frame_memory_pool, tag_lists
from ..protocol.codec import EventColumns
from ..checks import positive_int
from ..event import Event
from ..exceptions import MissingDependencyError, UsageError

__all__ = [
    "EVENT_COLUMNS",
    "EVENT_DTYPES",
    "to_dataframe",
    "to_arrow",
    "to_polars",
    "iter_dataframes",
    "batches_to_dataframe",
    "empty_frame",
    "iter_tables",
    "show_progress_default",
    "frame_columns",
    "frame_table",
    "table_to_frame",
    "tag_lists",
    "sorted_categories",
    "with_progress",
    "finish_frame",
]

#: The columns of an event frame, in order: the time first, as time-series tools lead, the id last.
EVENT_COLUMNS: tuple[str, ...] = ("timestamp", "source", "tags", "content", "id")

#: The dtype of every column of an event frame, on every path (empty frames included).
EVENT_DTYPES: dict[str, Any] = {
    "timestamp": pd.DatetimeTZDtype("ns", "UTC"),
    "source": "category",
    "tags": pd.ArrowDtype(pa.list_(pa.string())),
    "content": pd.StringDtype("pyarrow"),
    "id": pd.StringDtype("pyarrow"),
}

# Arrow types of the frame's columns before they become pandas columns.
_TAGS_TYPE = pa.list_(pa.string())
_TS_TYPE = pa.timestamp("ns", tz="UTC")

# Events given one by one are gathered into Arrow batches of this many rows.
_EVENT_BATCH_ROWS = 65_536


def _types_mapper(t: pa.DataType) -> Any:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pd.StringDtype("pyarrow")
    if pa.types.is_list(t):
        return pd.ArrowDtype(t)
    return None


# --------------------------------------------------------------------------- the converter


def _timestamps(seconds: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Float seconds since the epoch as UTC nanosecond timestamps, rounded to the microsecond."""
    try:
        pool = frame_memory_pool()
        micros = pc.round(pc.multiply(seconds, 1e6, memory_pool=pool), memory_pool=pool).cast(pa.int64(), memory_pool=pool)
        nanos = pc.multiply_checked(micros, 1000, memory_pool=pool)
    except pa.ArrowInvalid as exc:
        bad = pc.filter(seconds, pc.invert(pc.fill_null(pc.is_finite(seconds), True)))
        example = bad[0].as_py() if len(bad) else "out of range"
        raise UsageError(
            "event timestamps must be finite seconds since the epoch between the years 1677 and 2262; "
            f"got {example!r}"
        ) from exc
    return nanos.cast(_TS_TYPE, memory_pool=pool)


def sorted_categories(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` dictionary-encoded with one sorted dictionary (as ``pd.Categorical`` sorts),
    the Arrow form of a frame's ``category`` column.

    >>> sorted_categories(pa.chunked_array([["b", "a"], ["c", "a"]])).to_pandas().cat.categories.tolist()
    ['a', 'b', 'c']
    """
    return _unified_categories([pc.dictionary_encode(c) for c in column.chunks])


def _unified_categories(chunks: list[pa.DictionaryArray]) -> pa.ChunkedArray:
    """Dictionary chunks (each with its own dictionary) re-indexed into one sorted dictionary
    of the values they hold: a received dictionary may have entries no row uses (a stored
    chunk's sources, of which a filter kept some), which are not categories of the frame."""
    used = [c.dictionary.filter(_held(c)) for c in chunks]
    values = pa.concat_arrays(used) if used else pa.array([], pa.string())
    dictionary = pc.unique(values).drop_null()
    dictionary = dictionary.take(pc.sort_indices(dictionary))
    typ = pa.dictionary(pa.int32(), dictionary.type)
    out = []
    for c in chunks:
        mapping = pc.index_in(c.dictionary, value_set=dictionary).cast(pa.int32())
        out.append(pa.DictionaryArray.from_arrays(mapping.take(c.indices), dictionary))
    return pa.chunked_array(out, type=typ)


def _held(column: pa.DictionaryArray) -> np.ndarray:
    """Which entries of ``column``'s dictionary its rows use (a count per entry: one pass)."""
    indices = column.indices
    if indices.null_count:
        indices = indices.drop_null()
    counts = np.bincount(indices.to_numpy(zero_copy_only=False), minlength=len(column.dictionary))
    return counts > 0


# Batches from the network are small; pandas works better on few large chunks.
# Small batches (plain messages, live increments) are gathered up to this size
# and converted as one chunk; a batch of this size or more is one chunk itself.
_CHUNK_ROWS = 1 << 16
_CHUNK_BYTES = 1 << 28


class _Converter:
    """Event-schema batches into the frame's Arrow columns, a chunk at a time.

    Batches are converted while they arrive, so a stream's received messages can
    be released as it goes: the peak is the frame plus about one chunk, not the
    frame plus the whole transfer. With ``own=True`` every column gets buffers
    of its own (nothing keeps a received message alive); with ``own=False`` a
    large input batch's text columns are shared, not copied. ``large_strings``
    makes the text columns ``large_string``, the layout pandas keeps them in.
    """

    def __init__(self, columns: Sequence[str], *, own: bool, large_strings: bool) -> None:
        self.columns = tuple(columns)
        self.own = own
        self.string_type = pa.large_string() if large_strings else pa.string()
        self.chunks: dict[str, list[Any]] = {name: [] for name in self.columns}
        self.group: list[pa.RecordBatch] = []
        self.rows = 0
        self.size = 0

    def add(self, item: pa.RecordBatch | pa.Table) -> None:
        item = as_event_data(item)
        for batch in item.to_batches() if isinstance(item, pa.Table) else (item,):
            if not batch.num_rows:
                continue
            if self.group and (self.rows + batch.num_rows > _CHUNK_ROWS or self.size + batch.nbytes > _CHUNK_BYTES):
                self._convert()
            self.group.append(batch)
            self.rows += batch.num_rows
            self.size += batch.nbytes
            if self.rows >= _CHUNK_ROWS:
                self._convert()

    def _convert(self) -> None:
        group, self.group, self.rows, self.size = self.group, [], 0, 0
        if not group:
            return
        table = pa.Table.from_batches(group).select(list(self.columns))
        del group
        copied = table.column(0).num_chunks > 1
        if copied:
            table = table.combine_chunks(frame_memory_pool())  # new buffers: the received batches can go
        for name in self.columns:
            column = table.column(name).chunk(0)
            if name == "timestamp":
                out = _timestamps(column)
            elif name in ("tags", "source"):
                # the frame's type already (a list, a dictionary): kept as received
                out = _copied(column) if self.own and not copied and _is_view(column) else column
            else:
                if self.own and not copied and not _owns_buffers(column):
                    column = pa.concat_arrays([column])
                out = column.cast(self.string_type, memory_pool=frame_memory_pool())
            self.chunks[name].append(out)

    def table(self) -> pa.Table:
        self._convert()
        arrays: list[Any] = []
        for name in self.columns:
            chunks = self.chunks[name]
            if name == "source":
                arrays.append(_unified_categories(chunks))
            elif name == "timestamp":
                arrays.append(pa.chunked_array(chunks, type=_TS_TYPE))
            elif name == "tags":
                arrays.append(pa.chunked_array(chunks, type=_TAGS_TYPE))
            else:
                arrays.append(pa.chunked_array(chunks, type=self.string_type))
        self.chunks = {name: [] for name in self.columns}
        return pa.Table.from_arrays(arrays, names=list(self.columns))


def _is_view(column: pa.Array) -> bool:
    """Whether any buffer of ``column`` (a dictionary's, a list's items' too) is a view into another."""
    arrays = [column.indices, column.dictionary] if pa.types.is_dictionary(column.type) else [column]
    return any(b is not None and b.parent is not None for a in arrays for b in a.buffers())


def _copied(column: pa.Array) -> pa.Array:
    """``column`` in buffers of its own (a dictionary's values too, which a concatenation shares)."""
    if pa.types.is_dictionary(column.type):
        return pa.DictionaryArray.from_arrays(pa.concat_arrays([column.indices]), pa.concat_arrays([column.dictionary]))
    return pa.concat_arrays([column])


def _owns_buffers(column: pa.Array) -> bool:
    """Whether a string array's buffers are allocations of their own, no larger than
    its values need: no view into a received message (a decompressed buffer is
    one), so keeping them keeps nothing else alive."""
    if column.offset:
        return False
    buffers = column.buffers()
    if any(b is not None and b.parent is not None for b in buffers):
        return False
    offsets, data = buffers[1], buffers[2]
    if offsets is None or data is None:
        return False
    wide = pa.types.is_large_string(column.type)
    used = np.frombuffer(offsets, dtype=np.int64 if wide else np.int32, count=len(column) + 1)
    return bool(offsets.size <= used.nbytes + 64 and data.size <= int(used[-1]) + 64)


def frame_table(table: pa.Table, columns: Sequence[str] = EVENT_COLUMNS) -> pa.Table:
    """A table with the event schema as a table of the frame's Arrow types
    (``columns`` only): what :func:`table_to_frame` makes the event frame of."""
    converter = _Converter(columns, own=False, large_strings=False)
    converter.add(table)
    return converter.table()


def table_to_frame(table: pa.Table) -> pd.DataFrame:
    """A table of the frame's Arrow types (see :func:`frame_table`) as the event frame,
    its text and list columns kept in Arrow (the dtypes of :data:`EVENT_DTYPES`)."""
    return cast(pd.DataFrame, table.to_pandas(types_mapper=_types_mapper, memory_pool=frame_memory_pool()))


def _convert_batches(
    batches: Iterable[pa.RecordBatch | pa.Table], columns: Sequence[str], *, own: bool
) -> pd.DataFrame:
    converter = _Converter(columns, own=own, large_strings=True)
    for item in batches:
        converter.add(item)
        del item  # converted: a received message is released as the next one arrives
    return table_to_frame(converter.table())


def batches_to_dataframe(
    batches: Iterable[pa.RecordBatch | pa.Table] | pa.RecordBatch | pa.Table,
    *,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Arrow batches with :func:`~theia_frames.protocol.arrow.event_schema` as one event frame.

    This is the converter every path goes through. It is vectorised: float
    seconds become ``datetime64[ns, UTC]`` rounded to the microsecond in one
    kernel, tag text is split into lists in one kernel (``""`` is an empty
    list), sources are dictionary-encoded into a category. Batches are
    converted as they come, a chunk of about 65,536 rows at a time, so an
    iterator of batches is never held whole.

    >>> from theia_frames.protocol.arrow import events_to_batch
    >>> batch = events_to_batch([Event(id="a", timestamp=1.0000004, tags=["x", "y"]),
    ...                          Event(id="b", timestamp=2.0)])
    >>> df = batches_to_dataframe([batch])
    >>> df["timestamp"].tolist()
    [Timestamp('1970-01-01 00:00:01+0000', tz='UTC'), Timestamp('1970-01-01 00:00:02+0000', tz='UTC')]
    >>> df["tags"].tolist()
    [['x', 'y'], []]
    >>> batches_to_dataframe([]).dtypes.equals(pd.Series(EVENT_DTYPES))
    True
    """
    cols = _check_columns(columns)
    if isinstance(batches, (pa.RecordBatch, pa.Table)):
        batches = [batches]
    return _convert_batches(batches, cols, own=False)


def empty_frame(columns: Sequence[str] | None = None) -> pd.DataFrame:
    """An event frame with no rows and the usual dtypes.

    >>> empty_frame().dtypes.equals(pd.Series(EVENT_DTYPES))
    True
    """
    return batches_to_dataframe([], columns=columns)


def frame_columns(columns: Sequence[str] | str | None, index: Any = None) -> tuple[str, ...]:
    """The event columns a frame is built of, for the ``columns`` and ``index``
    options of :func:`to_dataframe` (``index="timestamp"`` needs the timestamp).

    >>> frame_columns(None), frame_columns("source", "timestamp")
    (('timestamp', 'source', 'tags', 'content', 'id'), ('timestamp', 'source'))
    >>> frame_columns(["source", "nope"])
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: unknown event columns ['nope']; the columns are ['timestamp', 'source', 'tags', 'content', 'id']
    """
    cols = _check_columns(columns)
    if index is None:
        return cols
    if index != "timestamp":
        raise UsageError(f"index must be None or 'timestamp', got {index!r}")
    return cols if "timestamp" in cols else ("timestamp", *cols)


def _check_columns(columns: Sequence[str] | str | None) -> tuple[str, ...]:
    if columns is None:
        return EVENT_COLUMNS
    if isinstance(columns, str):
        columns = [columns]
    cols = tuple(columns)
    unknown = [c for c in cols if c not in EVENT_COLUMNS]
    if unknown:
        raise UsageError(f"unknown event columns {unknown}; the columns are {list(EVENT_COLUMNS)}")
    if len(set(cols)) != len(cols):
        raise UsageError(f"event columns listed twice: {list(cols)}")
    return cols


# --------------------------------------------------------------------------- sources


def _event_batches(first: Event, rest: Iterator[Any]) -> Iterator[pa.RecordBatch]:
    cols = EventColumns()
    cols.append_event(first)
    for item in rest:
        if not isinstance(item, Event):
            raise UsageError(f"an iterable of events holds a {type(item).__name__}: {item!r:.80}")
        cols.append_event(item)
        if len(cols) >= _EVENT_BATCH_ROWS:
            yield columns_to_batch(cols)
            cols = EventColumns()
    if len(cols):
        yield columns_to_batch(cols)


def _source_batches(source: Any) -> Generator[pa.RecordBatch | pa.Table, None, None]:
    """The Arrow batches of anything :func:`to_dataframe` accepts, lazily."""
    if isinstance(source, (pa.RecordBatch, pa.Table)):
        yield source
        return
    if isinstance(source, pd.DataFrame):
        raise UsageError("to_dataframe takes events or Arrow batches, not a DataFrame")
    if isinstance(source, (str, bytes, os.PathLike)):
        raise UsageError(
            f"to_dataframe takes events, not a path ({source!r}); read a store folder with read_store(path)"
        )
    if isinstance(source, Event):
        source = [source]
    iter_batches = getattr(source, "iter_batches", None)
    if callable(iter_batches):
        yield from iter_batches()
        return
    try:
        items = iter(source)
    except TypeError:
        raise UsageError(
            "to_dataframe takes a find result, a stream, Arrow batches or an iterable of events; "
            f"got {type(source).__name__}"
        ) from None
    for first in items:
        if isinstance(first, Event):
            yield from _event_batches(first, items)
        elif isinstance(first, (pa.RecordBatch, pa.Table)):
            yield first
            for item in items:
                if not isinstance(item, (pa.RecordBatch, pa.Table)):
                    raise UsageError(f"an iterable of Arrow batches holds a {type(item).__name__}")
                yield item
        else:
            raise UsageError(
                f"to_dataframe takes events or Arrow batches; the iterable holds a {type(first).__name__}"
            )
        return


# --------------------------------------------------------------------------- progress


def _in_jupyter() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too broken to ask is not a notebook to draw in
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _in_ci() -> bool:
    value = os.environ.get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no")


def show_progress_default() -> bool:
    """Whether a progress bar is shown when ``progress=None``: only where a person watches.

    That is a Jupyter kernel or a terminal on stderr, and never under CI (``$CI`` set).
    """
    if _in_ci():
        return False
    if _in_jupyter():
        return True
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def with_progress(
    batches: Iterator[pa.RecordBatch | pa.Table],
    progress: bool | None,
    desc: str = "events",
    *,
    source: Any = None,
) -> Iterator[pa.RecordBatch | pa.Table]:
    """``batches`` as they come, counted on a progress bar: the ``progress`` option of
    :func:`to_dataframe` (``None``: only where a person watches and the query takes a while).

    When ``source`` (a find result) knows how many events are coming (its
    ``total``, announced by our collector), the bar shows a percentage and an ETA.
    """
    delay = 0.0
    if progress is None:
        progress = show_progress_default()
        # Unasked, a bar is drawn only for a query that takes a while.
        delay = 0.5
    if not progress:
        yield from batches
        return
    if _in_jupyter():
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    bar = tqdm(desc=desc, unit=" events", unit_scale=True, delay=delay, leave=True)
    try:
        for b in batches:
            if bar.total is None and getattr(source, "total", None) is not None:
                bar.total = source.total
                bar.refresh()
            bar.update(b.num_rows)
            yield b
    finally:
        bar.close()


# --------------------------------------------------------------------------- public


def finish_frame(df: pd.DataFrame, index: Literal["timestamp"] | None, tz: Any) -> pd.DataFrame:
    """``df`` with the ``index`` and ``tz`` options of :func:`to_dataframe` applied
    (its columns checked by :func:`frame_columns` first)."""
    if tz is not None and "timestamp" in df.columns:
        df["timestamp"] = df["timestamp"].dt.tz_convert(tz)
    if index is not None:
        df = df.set_index("timestamp")
    return df




def to_dataframe(
    source: Any,
    *,
    index: Literal["timestamp"] | None = None,
    tz: Any = None,
    columns: Sequence[str] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Events as one DataFrame with the columns and dtypes of :data:`EVENT_DTYPES`.

    ``source`` is a find result or live stream (anything with ``iter_batches()``,
    consumed through it: the columnar path), an Arrow table, batch or iterable of
    batches with the event schema, or any iterable of :class:`Event`.

    ``index="timestamp"`` makes the timestamp the index; ``tz`` converts the
    timestamps to a display zone (e.g. ``"Europe/Berlin"``; stored values are
    unchanged, only the zone); ``columns`` keeps only those columns (only they
    are converted). ``progress`` shows a bar with the count and rate of events
    (default: only where a person watches, see :func:`show_progress_default`;
    ``False`` never).

    Always one frame; no events give an empty frame with the same dtypes.
    A find result or stream is converted while it arrives, about 65,536 events
    at a time, and each received message is released once converted: memory
    peaks near the size of the frame itself, not the frame plus the transfer.

    >>> evs = [Event(id=str(i), timestamp=1700000000 + i, source=f"s{i % 2}") for i in range(3)]
    >>> to_dataframe(evs, index="timestamp", tz="Europe/Berlin", columns=["source"])
                              source
    timestamp
    2023-11-14 23:13:20+01:00     s0
    2023-11-14 23:13:21+01:00     s1
    2023-11-14 23:13:22+01:00     s0
    >>> to_dataframe([]).shape
    (0, 5)
    """
    cols = frame_columns(columns, index)
    batches = _source_batches(source)
    try:
        # A stream's batches are received messages: the frame takes copies, so each
        # message is released once converted.
        own = callable(getattr(source, "iter_batches", None))
        df = _convert_batches(with_progress(batches, progress, source=source), cols, own=own)
    finally:
        batches.close()
    return finish_frame(df, index, tz)


def to_arrow(
    source: Any,
    *,
    columns: Sequence[str] | None = None,
    progress: bool | None = None,
) -> pa.Table:
    """The events of ``source`` as one ``pyarrow.Table``: the frame :func:`to_dataframe` makes,
    before it becomes pandas (same sources, same values, same order).

    The columns are ``timestamp`` (``timestamp[ns, UTC]``, rounded to the
    microsecond), ``source`` (``dictionary<int32, string>``), ``tags``
    (``list<string>``), ``content`` and ``id`` (``string``); ``columns`` keeps
    only those. A find result is converted while it arrives, as for
    :func:`to_dataframe`.

    >>> table = to_arrow([Event(id="a", timestamp=1.5, source="/dev/t", tags=["x"])])
    >>> table.schema.names, str(table.schema.field("timestamp").type), table.column("tags").to_pylist()
    (['timestamp', 'source', 'tags', 'content', 'id'], 'timestamp[ns, tz=UTC]', [['x']])
    >>> to_arrow([]).num_rows
    0
    """
    cols = _check_columns(columns)
    batches = _source_batches(source)
    try:
        own = callable(getattr(source, "iter_batches", None))
        converter = _Converter(cols, own=own, large_strings=False)
        for item in with_progress(batches, progress, source=source):
            converter.add(item)
            del item
        return converter.table()
    finally:
        batches.close()


def to_polars(
    source: Any,
    *,
    columns: Sequence[str] | None = None,
    progress: bool | None = None,
) -> Any:
    """The events of ``source`` as a ``polars.DataFrame`` (the table of :func:`to_arrow`, shared,
    not copied where Polars can): ``timestamp`` ``Datetime("ns", "UTC")``, ``source``
    ``Categorical``, ``tags`` ``List(String)``, ``content`` and ``id`` ``String``.

    Its columns keep the chunks they were converted in, as :func:`to_dataframe`'s do
    (one per about 65,536 events); ``frame.rechunk()`` makes each one contiguous.

    Needs the ``polars`` extra (else :class:`~theia_frames.exceptions.MissingDependencyError`).

    >>> frame = to_polars([Event(id="a", timestamp=1.5, source="/dev/t", tags=["x"])])
    >>> frame.columns, str(frame.schema["timestamp"])
    (['timestamp', 'source', 'tags', 'content', 'id'], "Datetime(time_unit='ns', time_zone='UTC')")
    """
    try:
        import polars as pl
    except ImportError as exc:
        raise MissingDependencyError("polars", "polars", "to_polars") from exc
    return pl.from_arrow(to_arrow(source, columns=columns, progress=progress), rechunk=False)


def _rebatch(batches: Iterable[pa.RecordBatch | pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``rows`` events (the last one fewer) from batches of any size."""
    schema = event_schema()
    pending: list[pa.RecordBatch] = []
    have = 0
    for item in batches:
        item = as_event_data(item)
        for batch in item.to_batches() if isinstance(item, pa.Table) else (item,):
            while batch.num_rows:
                take = min(rows - have, batch.num_rows)
                pending.append(batch.slice(0, take))
                have += take
                batch = batch.slice(take)
                if have == rows:
                    yield pa.Table.from_batches(pending, schema=schema)
                    pending, have = [], 0
    if have:
        yield pa.Table.from_batches(pending, schema=schema)


def iter_tables(
    source: Any, batch_size: int = 100_000, *, progress: bool | None = None
) -> Iterator[pa.Table]:
    """The events of ``source`` as Arrow tables of at most ``batch_size`` rows (event schema).

    Only one chunk is held at a time; no events yield no tables.
    """
    batch_size = positive_int("batch_size", batch_size)
    batches = _source_batches(source)
    try:
        yield from _rebatch(with_progress(batches, progress, source=source), batch_size)
    finally:
        batches.close()


def iter_dataframes(
    source: Any,
    batch_size: int = 100_000,
    *,
    index: Literal["timestamp"] | None = None,
    tz: Any = None,
    columns: Sequence[str] | None = None,
    progress: bool | None = None,
) -> Iterator[pd.DataFrame]:
    """The events of ``source`` as frames of at most ``batch_size`` rows, for results larger than memory.

    Takes the same sources and options as :func:`to_dataframe`; every frame has
    the same dtypes and only one chunk is held at a time. No events yield no
    frames. Each frame is indexed from 0. Each frame's ``source`` categories
    are the sources it holds, as in every frame: the frames of one query do not
    share a category set (which would need every source before the first frame);
    ``pd.concat`` of frames with different categories makes the column ``object``,
    ``pandas.api.types.union_categoricals`` joins them as categories.

    >>> evs = (Event(id=str(i), timestamp=float(i)) for i in range(5))
    >>> [len(f) for f in iter_dataframes(evs, batch_size=2)]
    [2, 2, 1]
    """
    cols = frame_columns(columns, index)
    for table in iter_tables(source, batch_size, progress=progress):
        yield finish_frame(table_to_frame(frame_table(table, cols)), index, tz)
