"""The way back: a frame of events as the Arrow table the client sends.

:func:`to_event_table` takes a pandas DataFrame (the frame
:func:`~theia_frames.frames.convert.to_dataframe` returns, or one of your own), a
``pyarrow.Table``/``RecordBatch`` or a Polars frame, reads each event field
from the column :data:`EVENT_FIELDS` names (or the column it is mapped to),
and returns a table with :func:`~theia_frames.protocol.arrow.event_schema`, which
:meth:`Client.send_many <theia_frames.client.Client.send_many>` sends.
A value that cannot become an event field fails with an error naming the
column and the row.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..protocol.arrow import event_schema, tag_lists
from ..exceptions import InvalidEventError, MissingDependencyError, UsageError
from ..timeparse import parse_times, time_format_has_year

__all__ = ["EVENT_FIELDS", "to_event_table", "new_event_ids", "seconds_of_ns"]


#: The fields of an event, which ``to_event_table(columns=...)`` maps to a frame's columns.
EVENT_FIELDS: tuple[str, ...] = ("timestamp", "source", "tags", "content", "id")

# Bytes of text looked at per step where a check scans a column's bytes.
_SCAN_SLICE = 1 << 20



def new_event_ids(n: int) -> pa.Array:
    """``n`` new random event ids at once: UUID4 text, as :func:`~theia_frames.event.new_event_id` makes one.

    >>> ids = new_event_ids(2)
    >>> len(ids), len(ids[0].as_py()), ids[0].as_py()[14], ids[0] != ids[1]
    (2, 36, '4', True)
    """
    # 122 random bits each from a generator seeded with 256 bits of the system's randomness:
    # as unlikely to repeat as uuid4's, and faster than asking the system for every byte
    generator = np.random.default_rng(int.from_bytes(os.urandom(32), "big"))
    words = generator.integers(0, np.iinfo(np.uint64).max, size=2 * n, dtype=np.uint64, endpoint=True)
    raw = words.view(np.uint8).reshape(n, 16)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # the RFC 4122 variant
    digits = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype=np.uint8).reshape(n, 32)
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    text = np.concatenate([digits[:, :8], dash, digits[:, 8:12], dash, digits[:, 12:16], dash, digits[:, 16:20], dash, digits[:, 20:]], axis=1)
    data = pa.py_buffer(text.tobytes())
    offsets = pa.py_buffer(np.arange(0, 36 * (n + 1), 36, dtype=np.int32).tobytes())
    return pa.Array.from_buffers(pa.string(), n, [None, offsets, data])


def seconds_of_ns(ns: np.ndarray) -> np.ndarray:
    """Nanoseconds since the epoch (int64) as float seconds, the nearest float to each
    (whole seconds and their fraction apart: one rounding, not two).

    >>> seconds_of_ns(np.array([1714521600123000000])).tolist()
    [1714521600.123]
    """
    whole, part = np.divmod(ns.astype(np.int64), 1_000_000_000)
    return whole.astype(np.float64) + part.astype(np.float64) / 1e9


def _arrow_types(t: pa.DataType) -> Any:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pd.ArrowDtype(t)
    return None


def _as_pandas(data: Any) -> pd.DataFrame:
    """``data`` (a pandas, Polars or Arrow frame) as a pandas DataFrame, lists kept as Arrow lists."""
    if isinstance(data, pd.DataFrame):
        return data
    module = type(data).__module__.split(".")[0]
    if module == "polars":
        try:
            import polars  # noqa: F401  (a Polars frame converts itself, with pyarrow)
        except ImportError as exc:  # pragma: no cover - a Polars frame without Polars
            raise MissingDependencyError("polars", "polars", "sending a Polars frame") from exc
        if hasattr(data, "collect"):  # a LazyFrame
            data = data.collect()
        data = data.to_arrow()
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return cast(pd.DataFrame, data.to_pandas(types_mapper=_arrow_types))
    raise UsageError(
        f"expected a pandas DataFrame, a pyarrow Table or a Polars DataFrame, got {type(data).__name__}"
    )


def _seconds_of(values: Any, what: str, time_format: Any = None, tz: Any = None) -> np.ndarray:
    """Event times (datetimes, naive = UTC or ``tz``; numbers = seconds; ISO text; text of ``time_format``) as float seconds."""
    if isinstance(values, pd.Index):
        values = values.to_series(index=pd.RangeIndex(len(values)))
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise UsageError(f"{what} holds booleans, not times")
    if pd.api.types.is_datetime64_any_dtype(dtype) and tz is not None and getattr(dtype, "tz", None) is None:
        try:
            values = values.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
        except Exception as exc:  # an unknown zone name
            raise UsageError(f"invalid tz {tz!r}: {exc}") from None
    elif time_format is not None or (tz is not None and not pd.api.types.is_datetime64_any_dtype(dtype)):
        if time_format is not None and not all(map(time_format_has_year, _formats(time_format))):
            raise UsageError(f"time_format {time_format!r} has no year: put the year in the times, or read them with read_log(year=...)")
        values = values.reset_index(drop=True)
        stamps = parse_times(values, time_format, tz=tz)
        bad = stamps.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            wanted = "ISO-8601" if time_format is None else repr(time_format)
            raise InvalidEventError(f"{what}: row {row} holds {values.iloc[row]!r}, which does not read as {wanted} ({int(bad.sum())} such row(s))")
        return seconds_of_ns(stamps.dt.as_unit("ns").astype("int64").to_numpy())
    if pd.api.types.is_numeric_dtype(dtype):
        seconds = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        if not pd.api.types.is_datetime64_any_dtype(dtype):
            try:
                values = pd.to_datetime(values, utc=True, format="ISO8601")
            except (ValueError, TypeError) as exc:
                raise UsageError(
                    f"{what} must hold datetimes, seconds since the epoch or ISO-8601 text; "
                    f"for other text give time_format= (strptime, e.g. '%b %d %H:%M:%S %Y'): {exc}"
                ) from exc
        stamps = pd.DatetimeIndex(values)
        if stamps.tz is None:
            stamps = stamps.tz_localize("UTC")
        missing = stamps.isna()
        seconds = stamps.as_unit("ns").asi8.astype(np.float64) / 1e9
        seconds[missing] = np.nan
    bad = ~np.isfinite(seconds)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InvalidEventError(f"{what} is missing or not finite in row {row}: {values.iloc[row]!r}")
    return np.asarray(seconds, dtype=np.float64)


def _text_of(values: pd.Series, what: str) -> pa.Array:
    """A column as Arrow text (numbers as their text); a missing value stays missing."""
    if isinstance(values.dtype, pd.ArrowDtype) and pa.types.is_list(values.dtype.pyarrow_dtype):
        raise UsageError(f"{what} holds lists, not text")
    try:
        text = values.astype(pd.StringDtype("pyarrow"))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} cannot be read as text: {exc}") from exc
    array = pa.array(text.array)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.cast(pa.string())


def _tags_of(values: pd.Series, what: str) -> pa.Array:
    """Tags (lists, or comma text like ``"a,b"``) as the event schema's lists of tags."""
    dtype = values.dtype
    if isinstance(dtype, pd.ArrowDtype) and (pa.types.is_list(dtype.pyarrow_dtype) or pa.types.is_large_list(dtype.pyarrow_dtype)):
        lists = pa.array(values.array)
    elif isinstance(dtype, (pd.StringDtype, pd.CategoricalDtype)) or (
        isinstance(dtype, pd.ArrowDtype) and pa.types.is_string(dtype.pyarrow_dtype)
    ):
        return tag_lists(_comma_text(_text_of(values, what)))
    else:
        items: list[Any] = []
        for v in values.tolist():
            if isinstance(v, str):
                items.append([t for t in re.split(r"\s*,\s*", v.strip()) if t])
            elif isinstance(v, (list, tuple, np.ndarray)):
                items.append(list(v))
            elif v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                items.append([])
            else:
                raise UsageError(f"{what} must hold lists of tags or comma text like 'a,b', got {v!r}")
        try:
            lists = pa.array(items, type=pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise UsageError(f"{what} must hold lists of strings: {exc}") from exc
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lists = lists.cast(pa.list_(pa.string()))
    flat = pc.list_flatten(lists)
    bad = pc.fill_null(pc.match_substring_regex(flat, "[,\r\n]"), False)
    if pc.any(bad).as_py():
        at = int(pc.index(bad, True).as_py())
        row = int(pc.list_parent_indices(lists)[at].as_py())
        raise InvalidEventError(f"{what}: a tag must not contain a comma or line break, row {row} has {flat[at].as_py()!r}")
    return pc.fill_null(lists, pa.scalar([], pa.list_(pa.string()))) if lists.null_count else lists


def _comma_text(text: pa.Array) -> pa.Array:
    """Comma text with the spaces around its commas and ends, and the commas at its
    ends, taken out: ``" a , b,"`` is ``"a,b"``.

    >>> _comma_text(pa.array([" a , b,", "x,y", None])).to_pylist()
    ['a,b', 'x,y', '']
    """
    text = pc.fill_null(text, "")
    if _plain_comma_text(text):
        return text
    text = pc.replace_substring_regex(pc.utf8_trim_whitespace(text), "\\s*,\\s*", ",")
    return pc.replace_substring_regex(text, "^,+|,+$", "")


def _plain_comma_text(text: pa.Array) -> bool:
    """Whether comma text is already as :func:`_comma_text` makes it, told from its
    bytes in one pass (no space, control or non-ASCII byte anywhere, no value
    starting or ending with a comma) rather than by two regex replacements."""
    if not pa.types.is_string(text.type):
        return False
    _, offsets_buffer, data = text.buffers()
    if data is None or not len(text):
        return True
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[text.offset : text.offset + len(text) + 1]
    values = np.frombuffer(data, dtype=np.uint8)[int(offsets[0]) : int(offsets[-1])]
    # a byte b <= 32 or >= 128 is one whose b - 33 (mod 256) is >= 95; a slice at a time
    # keeps the temporary array in cache
    for at in range(0, len(values), _SCAN_SLICE):
        if bool((values[at : at + _SCAN_SLICE] - np.uint8(33) >= 95).any()):
            return False
    return not (pc.any(pc.starts_with(text, ",")).as_py() or pc.any(pc.ends_with(text, ",")).as_py())


def _formats(time_format: Any) -> list[Any]:
    return list(time_format) if isinstance(time_format, (list, tuple)) else [time_format]


def to_event_table(
    data: Any,
    *,
    columns: Mapping[str, str] | None = None,
    time_format: str | Sequence[str] | None = None,
    tz: Any = None,
) -> pa.Table:
    """A frame of events as an Arrow table with :func:`~theia_frames.protocol.arrow.event_schema`,
    the form :meth:`Client.send_many <theia_frames.client.Client.send_many>` sends.

    ``data`` is a pandas DataFrame (the frame :func:`to_dataframe` returns, or
    one of your own), a ``pyarrow.Table``/``RecordBatch`` or a Polars frame.
    ``columns`` maps an event field to the frame's column holding it, e.g.
    ``{"content": "message", "source": "host"}``; unmapped fields are read
    from the columns of their own name, and when absent:

    - ``timestamp``: the frame's DatetimeIndex (required otherwise); datetimes
      (naive ones are UTC, aware ones in any zone), seconds since the epoch, or
      ISO-8601 text; other text with ``time_format`` (strptime text such as
      ``"%d/%b/%Y:%H:%M:%S"``, a list of them, ``"epoch"`` or ``"epoch_ms"``, as
      :func:`~theia_frames.timeparse.parse_times` reads them); ``tz`` is the zone of
      times without an offset (default UTC);
    - ``source``: ``""``; ``tags``: none (a column holds lists, or comma text like
      ``"a,b"``); ``content``: ``""`` (numbers become their text);
    - ``id``: a new id per event (also where the column has a missing value).

    Other columns are ignored. A table that already has the event schema is
    returned as it is. Times in a frame are microseconds: an event whose time
    had finer digits comes back with the rounded time, which a store (where
    an event is its exact timestamp and id) keeps as another event.

    >>> df = pd.DataFrame({"when": pd.to_datetime(["2024-05-01T00:00:00", "2024-05-01T00:00:01.5"], format="ISO8601"),
    ...                    "message": ["21.5C", "22.0C"], "tags": ["sensor,temp", ""]})
    >>> table = to_event_table(df, columns={"timestamp": "when", "content": "message"})
    >>> table.select(["timestamp", "tags", "content"]).to_pylist()[1]
    {'timestamp': 1714521601.5, 'tags': [], 'content': '22.0C'}
    >>> logs = pd.DataFrame({"time": ["10/Oct/2000:13:55:36"], "message": ["GET /"]})
    >>> to_event_table(logs, columns={"timestamp": "time", "content": "message"},
    ...                time_format="%d/%b/%Y:%H:%M:%S", tz="America/Denver").column("timestamp").to_pylist()
    [971207736.0]
    """
    if isinstance(data, (pa.Table, pa.RecordBatch)) and not columns and data.schema.equals(event_schema()) and time_format is None and tz is None:
        return data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
    names = {name: name for name in EVENT_FIELDS}
    if columns is not None:
        if not isinstance(columns, Mapping):
            raise UsageError(f"columns must map event fields to column names, got {columns!r}")
        unknown = [k for k in columns if k not in EVENT_FIELDS]
        if unknown:
            raise UsageError(f"columns maps unknown event fields {unknown}; the fields are {list(EVENT_FIELDS)}")
        names.update(columns)
    df = _as_pandas(data)
    for field_name, column in names.items():
        if columns and field_name in columns and column not in df.columns:
            raise UsageError(f"columns maps {field_name!r} to {column!r}, which the frame does not have: {list(df.columns)}")
    rows = len(df)

    ts_name = names["timestamp"]
    if ts_name in df.columns:
        times: Any = df[ts_name]
    elif (columns is None or "timestamp" not in columns) and isinstance(df.index, pd.DatetimeIndex):
        times = df.index
    else:
        raise UsageError(
            f"events need a time: a {ts_name!r} column or a DatetimeIndex "
            f"(or columns={{'timestamp': ...}}); the frame has {list(df.columns)} and a {type(df.index).__name__}"
        )
    seconds = _seconds_of(times, f"column {ts_name!r}" if ts_name in df.columns else "the index", time_format, tz)

    def text(field_name: str) -> pa.Array | None:
        column = names[field_name]
        if column not in df.columns:
            return None
        return _text_of(df[column], f"column {column!r}")

    source = text("source")
    content = text("content")
    ids = text("id")
    if ids is None:
        ids = new_event_ids(rows)
    elif ids.null_count:
        ids = pc.coalesce(ids, new_event_ids(rows))
    tags_column = names["tags"]
    tags = _tags_of(df[tags_column], f"column {tags_column!r}") if tags_column in df.columns else None
    empty = pa.repeat("", rows) if source is None or content is None or tags is None else None
    arrays = [
        ids,
        pa.array(seconds, pa.float64()),
        pc.dictionary_encode(empty if source is None else pc.fill_null(source, "")),
        tag_lists(empty) if tags is None else tags,
        empty if content is None else pc.fill_null(content, ""),
    ]
    return pa.Table.from_arrays(arrays, schema=event_schema())
