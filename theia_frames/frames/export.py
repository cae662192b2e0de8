"""Write events to Parquet, CSV or JSON Lines, streaming, and read such files back.

:func:`write_events` takes whatever :func:`~theia_frames.frames.convert.to_dataframe`
takes (a find result, Arrow batches, events) or an event DataFrame, and writes
it chunk by chunk, so memory stays flat however long the result; the format
comes from the file's extension::

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.parquet"
    >>> evs = [Event(id="a", timestamp=1.5, source="/dev/t", tags=["sensor"], content="21.5C"),
    ...        Event(id="b", timestamp=2.0, source="/dev/t", content="22C")]
    >>> write_events(evs, path)
    2
    >>> read_events(path).equals(to_dataframe(evs))
    True

The layouts:

- Parquet: ``id`` string, ``timestamp`` timestamp[us, UTC], ``source`` string,
  ``tags`` list<string>, ``content`` string (one row group per chunk).
- CSV: a header line, timestamps in ISO-8601 UTC with microseconds
  (``2023-11-14T22:13:20.000000Z``), tags joined with commas as on the wire
  (empty: no tags), text quoted where needed (content may span lines).
- JSON Lines: one object per line, ``{"id": ..., "timestamp": "...Z",
  "source": ..., "tags": [...], "content": ...}``.

A file is written under a temporary name and renamed when complete, so a
failed write (a dropped connection mid-query) never leaves a short file that
looks whole; it is created with the user's umask, like any other tool's output.
:class:`EventWriter` writes the same layouts to a stream as events arrive (the
command line's ``--format`` output).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..protocol.arrow import event_schema
from ..checks import positive_int
from ..event import Event  # noqa: F401  (used by the doctests)
from ..exceptions import UsageError
from .convert import (  # noqa: F401  (to_dataframe: the doctests)
    EVENT_COLUMNS,
    empty_frame,
    frame_table,
    iter_tables,
    sorted_categories,
    table_to_frame,
    tag_lists,
    to_dataframe,
)

__all__ = ["write_events", "read_events", "EventWriter", "FORMATS", "format_for", "PARTITION_KEYS", "MAX_DATASET_PARTITIONS"]

#: Formats by file extension.
FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


#: What a dataset may be partitioned by: the UTC date of the events, their source, or both.
PARTITION_KEYS: tuple[str, ...] = ("date", "source")
#: Most partitions (folders) one chunk of events may write to: a source per event could
#: otherwise make a folder per event.
MAX_DATASET_PARTITIONS = 10_000


def format_for(path: str | os.PathLike[str], format: str | None = None, *, option: str = "format=") -> str:
    """The format to write ``path`` in: ``format`` if given, else from the extension.

    ``option`` is how the caller's user names the format in an error message
    (``"format="`` for this module's functions, ``"--format"`` on the command line).

    >>> format_for("out/events.parquet"), format_for("x.ndjson"), format_for("x.txt", "csv")
    ('parquet', 'jsonl', 'csv')
    """
    known = sorted(set(FORMATS.values()))
    if format is not None:
        fmt = format.lower().lstrip(".")
        if fmt not in known:
            raise UsageError(f"unknown export format {format!r}; choose one of {known}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(
            f"cannot tell the format of {str(path)!r} from its extension; "
            f"use one of {', '.join(sorted(FORMATS))} or give {option} ({', '.join(known)})"
        )
    return FORMATS[suffix]


# --------------------------------------------------------------------------- chunks to write


def _dataframe_chunks(df: pd.DataFrame, rows: int) -> Generator[pa.Table, None, None]:
    if df.index.name == "timestamp" and "timestamp" not in df.columns:
        df = df.reset_index()
        # the event columns first, in their usual order, as from to_dataframe
        first = [c for c in EVENT_COLUMNS if c in df.columns]
        df = df[first + [c for c in df.columns if c not in first]]
    for start in range(0, max(len(df), 1), rows):
        part = df.iloc[start : start + rows]
        try:
            table = pa.Table.from_pandas(part, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise UsageError(f"cannot export this DataFrame: {exc}") from exc
        yield table
        if not len(df):
            return


def _event_chunks(source: Any, rows: int, progress: bool | None) -> Generator[pa.Table, None, None]:
    got_any = False
    for table in iter_tables(source, rows, progress=progress):
        got_any = True
        yield frame_table(table)
    if not got_any:
        yield frame_table(event_schema().empty_table())


def _plain(table: pa.Table) -> pa.Table:
    """The frame's Arrow table as it is written: timestamps in microseconds, categories as text."""
    arrays, names = [], []
    for name, column in zip(table.column_names, table.columns):
        t = column.type
        if pa.types.is_timestamp(t):
            column = column.cast(pa.timestamp("us", tz=t.tz or "UTC"), safe=False)
        elif pa.types.is_dictionary(t):
            column = column.cast(t.value_type)
        if pa.types.is_large_string(column.type):
            column = column.cast(pa.string())
        arrays.append(column)
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _iso(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Timestamps as ISO-8601 text in UTC: ``2023-11-14T22:13:20.000000Z``."""
    text = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.string())
    return pc.replace_substring(text, " ", "T", max_replacements=1)


def _texts(table: pa.Table, *, join_lists: bool) -> pa.Table:
    arrays = []
    for column in table.columns:
        t = column.type
        if pa.types.is_timestamp(t):
            column = _iso(column)
        elif join_lists and (pa.types.is_list(t) or pa.types.is_large_list(t)):
            column = pc.binary_join(pc.fill_null(column, pa.scalar([], t)), ",")
        arrays.append(column)
    return pa.Table.from_arrays(arrays, names=table.column_names)


# --------------------------------------------------------------------------- writers


def _like(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in the schema of the file's first chunk (a chunk of a DataFrame may infer other types)."""
    if table.schema.equals(schema):
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise UsageError(f"a chunk of events does not fit the file's columns {schema.names}: {exc}") from exc


class _ParquetSink:
    # ``target`` is a path or a binary stream (left open)
    def __init__(self, target: Any) -> None:
        self.target = target
        self.writer: Any = None
        self.schema: Any = None

    def write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        table = _plain(table)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(self.target, table.schema)
        self.writer.write_table(_like(table, self.schema))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _CsvSink:
    def __init__(self, target: Any) -> None:
        self.target = target
        self.writer: Any = None
        self.schema: Any = None

    def write(self, table: pa.Table) -> None:
        import pyarrow.csv as pcsv

        table = _texts(_plain(table), join_lists=True)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pcsv.CSVWriter(self.target, table.schema)
        self.writer.write_table(_like(table, self.schema))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _JsonlSink:
    def __init__(self, target: Any) -> None:
        self.own = isinstance(target, (str, os.PathLike))
        self.file = open(target, "wb") if self.own else target

    def write(self, table: pa.Table) -> None:
        table = _texts(_plain(table), join_lists=False)
        names = table.column_names
        columns = [c.to_pylist() for c in table.columns]
        dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str).encode
        lines = []
        for row in zip(*columns):
            record = {n: (None if isinstance(v, float) and math.isnan(v) else v) for n, v in zip(names, row)}
            lines.append(dumps(record))
        if lines:
            self.file.write(("\n".join(lines) + "\n").encode("utf-8"))

    def close(self) -> None:
        if self.own:
            self.file.close()


def _part_file(folder: Path, name: str) -> str:
    """Create an empty file to write ``name`` under, in ``folder``, with the user's umask
    (a temporary file would be private, mode 0600, and keep that mode when renamed)."""
    for _ in range(100):
        path = folder / f".{name}.{secrets.token_hex(4)}.part"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return str(path)
    raise UsageError(f"cannot make a temporary file for {name!r} in {str(folder)!r}")  # pragma: no cover


_SINKS = {"parquet": _ParquetSink, "csv": _CsvSink, "jsonl": _JsonlSink}


class EventWriter:
    """Writes events to a binary stream (or a file) in one format, batch by batch, as they come.

    The writer behind :func:`write_events` and the command line's ``--format``
    output: the same layouts (see the module documentation) wherever the
    events go. ``target`` is a path or a binary stream (such as
    ``sys.stdout.buffer``; it is flushed after each write and left open);
    ``format`` is ``"parquet"``, ``"csv"`` or ``"jsonl"``. :meth:`write`
    takes record batches or tables with :func:`~theia_frames.protocol.arrow.event_schema`
    (what :meth:`FindResult.iter_batches <theia_frames.client.FindResult.iter_batches>`
    yields). A context manager; ``count`` is the number of events written.

    >>> import io
    >>> from theia_frames.protocol.arrow import events_to_batch
    >>> out = io.BytesIO()
    >>> with EventWriter(out, "csv") as writer:
    ...     writer.write(events_to_batch([Event(id="a", timestamp=1.5, tags=["x", "y"], content="21.5C")]))
    1
    >>> print(out.getvalue().decode())
    "timestamp","source","tags","content","id"
    "1970-01-01T00:00:01.500000Z","","x,y","21.5C","a"
    <BLANKLINE>
    """

    def __init__(self, target: str | os.PathLike[str] | BinaryIO, format: str) -> None:
        self.format = format_for("", format)
        self.count = 0
        self._stream = None if isinstance(target, (str, os.PathLike)) else target
        self._sink: Any = _SINKS[self.format](target)
        self._written = False

    def write(self, events: pa.RecordBatch | pa.Table) -> int:
        """Write a batch (or table) of events; returns how many."""
        table = events if isinstance(events, pa.Table) else pa.Table.from_batches([events])
        return self._write_frame_table(frame_table(table))

    def _write_frame_table(self, table: pa.Table) -> int:
        self._sink.write(table)
        self._written = True
        self.count += table.num_rows
        if self._stream is not None:
            self._stream.flush()
        return int(table.num_rows)

    def close(self) -> None:
        """Finish the output (a Parquet footer, a CSV header when nothing was written)."""
        if not self._written:
            self._sink.write(frame_table(event_schema().empty_table()))
            self._written = True
        self._sink.close()
        if self._stream is not None:
            self._stream.flush()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_events(
    source: Any,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    batch_size: int = 100_000,
    progress: bool | None = None,
    partition_by: Sequence[str] | None = None,
) -> int:
    """Write events to ``path`` as Parquet, CSV or JSON Lines; returns how many were written.

    ``source`` is anything :func:`~theia_frames.frames.convert.to_dataframe` takes, or an
    event DataFrame (its other columns, such as those :func:`~theia_frames.frames.analysis.extract`
    adds, are written too). It is read and written ``batch_size`` events at a
    time.
    ``format`` (``"parquet"``, ``"csv"``, ``"jsonl"``) defaults to the one
    the extension names (see :data:`FORMATS`). No events still write a valid
    file (a Parquet schema, a CSV header).

    ``partition_by=("date",)``, ``("source",)`` or ``("date", "source")``
    writes a hive-partitioned Parquet dataset instead: ``path`` is a folder
    (that must not exist yet) of ``date=2024-05-01/source=.../part-N.parquet``
    files, ``date`` the UTC day of the events (a ``date32`` key), a source
    written URI-encoded in its folder name (``/dev/t`` is ``%2Fdev%2Ft``).
    Dask, DuckDB, Polars and pyarrow read it back as one table (the key
    columns from the folder names). The folder is written under a temporary
    name and renamed when complete. One chunk may write to at most
    :data:`MAX_DATASET_PARTITIONS` partitions.
    """
    if partition_by is not None:
        return _write_dataset(source, path, format=format, batch_size=batch_size, progress=progress, keys=partition_by)
    fmt = format_for(path, format)
    batch_size = positive_int("batch_size", batch_size)
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"cannot write events to {str(target)!r}: it is a folder")
    if isinstance(source, pd.DataFrame):
        chunks = _dataframe_chunks(source, batch_size)
    else:
        chunks = _event_chunks(source, batch_size, progress)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"cannot write events to {str(target)!r}: no folder {str(folder)!r}")
    tmp = _part_file(folder, target.name)
    try:
        with EventWriter(tmp, fmt) as writer:
            for table in chunks:
                writer._write_frame_table(table)
        os.replace(tmp, target)
    except BaseException:
        chunks.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return writer.count


def _partition_keys(keys: Any) -> tuple[str, ...]:
    if isinstance(keys, str):
        keys = (keys,)
    try:
        chosen = tuple(keys)
    except TypeError:
        raise UsageError(f"partition_by must be a tuple of {list(PARTITION_KEYS)}, got {keys!r}") from None
    unknown = [k for k in chosen if k not in PARTITION_KEYS]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise UsageError(f"partition_by must name one or more of {list(PARTITION_KEYS)} once each, got {keys!r}")
    return chosen


def _keyed(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """A chunk as written to a dataset: plain types, with the ``date`` key added when asked."""
    table = _plain(table)
    if "date" in keys:
        if "date" in table.column_names:
            raise UsageError("partition_by=('date',) adds a 'date' column, and the events already have one")
        if "timestamp" not in table.column_names:
            raise UsageError("partition_by=('date',) needs the events' timestamp column")
        table = table.append_column("date", table.column("timestamp").cast(pa.date32()))
    if "source" in keys and "source" not in table.column_names:
        raise UsageError("partition_by=('source',) needs the events' source column")
    return table


def _write_dataset(
    source: Any, path: str | os.PathLike[str], *, format: str | None, batch_size: int, progress: bool | None,
    keys: Any,
) -> int:
    import pyarrow.dataset as ds

    chosen = _partition_keys(keys)
    if format is not None and format_for("", format) != "parquet":
        raise UsageError(f"a partitioned dataset is written as Parquet, not {format!r}")
    batch_size = positive_int("batch_size", batch_size)
    target = Path(path)
    if target.exists():
        raise UsageError(f"cannot write a dataset to {str(target)!r}: it exists (a dataset is written to a new folder)")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write a dataset to {str(target)!r}: no folder {str(parent)!r}")
    chunks = _dataframe_chunks(source, batch_size) if isinstance(source, pd.DataFrame) else _event_chunks(source, batch_size, progress)
    tmp = Path(_part_file(parent, target.name))
    os.unlink(tmp)
    count = 0
    schema: Any = None

    def batches() -> Generator[pa.RecordBatch, None, None]:
        nonlocal count
        for table in chunks:
            table = _keyed(table, chosen)
            table = _like(table, schema)
            count += table.num_rows
            yield from table.to_batches()

    try:
        first = next(chunks)
        schema = _keyed(first, chosen).schema
        chunks = _chain(first, chunks)
        partitioning = ds.partitioning(pa.schema([schema.field(k) for k in chosen]), flavor="hive")
        try:
            ds.write_dataset(
                batches(), tmp, schema=schema, format="parquet", partitioning=partitioning,
                basename_template="part-{i}.parquet", max_partitions=MAX_DATASET_PARTITIONS,
                existing_data_behavior="error", create_dir=True,
            )
        except pa.ArrowInvalid as exc:
            raise UsageError(f"cannot write the dataset {str(target)!r}: {exc}") from exc
        if not tmp.exists():
            tmp.mkdir()  # no events: an empty dataset
        os.rename(tmp, target)
    except BaseException:
        chunks.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


def _chain(first: pa.Table, rest: Generator[pa.Table, None, None]) -> Generator[pa.Table, None, None]:
    yield first
    yield from rest


# --------------------------------------------------------------------------- reading back


def _to_frame_types(table: pa.Table) -> pa.Table:
    """A table read from an export, with the event columns in the frame's Arrow types."""
    arrays, names = [], []
    for name, column in zip(table.column_names, table.columns):
        t = column.type
        if name == "timestamp":
            if pa.types.is_string(t) or pa.types.is_large_string(t):
                column = column.cast(pa.timestamp("us", tz="UTC"))
            if pa.types.is_timestamp(column.type):
                column = column.cast(pa.timestamp("ns", tz="UTC"))
        elif name == "source":
            column = sorted_categories(column.cast(pa.string()))
        elif name == "tags":
            if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
                column = pa.chunked_array(
                    [tag_lists(c.cast(pa.string())) for c in column.chunks], type=pa.list_(pa.string())
                )
            else:
                column = column.cast(pa.list_(pa.string()))
        elif name in ("id", "content") and (pa.types.is_null(t) or pa.types.is_large_string(t)):
            column = column.cast(pa.string())
        if name in ("id", "content"):
            column = pc.fill_null(column, "") if column.null_count else column
        arrays.append(column)
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def read_events(path: str | os.PathLike[str], *, format: str | None = None) -> pd.DataFrame:
    """Read a file :func:`write_events` wrote back into an event frame with the usual dtypes.

    Columns other than the event columns are kept as read.
    """
    fmt = format_for(path, format)
    target = Path(path)
    if not target.is_file():
        raise UsageError(f"no such file: {str(target)!r}")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(target)
        elif fmt == "csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(
                target,
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in EVENT_COLUMNS}, strings_can_be_null=False
                ),
            )
        else:
            import pyarrow.json as pjson

            if target.stat().st_size == 0:
                return empty_frame()
            schema = pa.schema(
                [("timestamp", pa.string()), ("source", pa.string()), ("tags", pa.list_(pa.string())),
                 ("content", pa.string()), ("id", pa.string())]
            )
            table = pjson.read_json(target, parse_options=pjson.ParseOptions(explicit_schema=schema))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"cannot read {str(target)!r} as {fmt}: {exc}") from exc
    return table_to_frame(_to_frame_types(table))
