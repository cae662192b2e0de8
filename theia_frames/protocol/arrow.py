"""Batched transfer: many events per WebSocket message, as Arrow IPC streams.

This is the opt-in extension spoken between theia_frames' own client and
collector. It is negotiated with the WebSocket subprotocol :data:`SUBPROTOCOL`:
the client offers it, our collector accepts it, and a peer that does not know
it never sees anything but the plain protocol.

On a connection that negotiated it:

- the collector may send a binary message holding an Arrow IPC stream of one
  or more record batches with :func:`event_schema` wherever the plain
  protocol sends one event (``/find`` and ``/live``);
- the client may send such a message on ``/event`` to publish many events at once;
- everything else (``ok``, error objects, single plain events) is unchanged.

An Arrow IPC stream starts with the continuation marker ``0xFFFFFFFF``; a plain
event starts with ``event:``, so the two are told apart by their first bytes.

Pure functions: nothing here opens a socket or a file. pyarrow is imported
when first needed.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .codec import LINE_BREAKS, TAG_BREAKS, EventColumns
from ..event import Event
from ..exceptions import DecodeError, UsageError, shorten
from ..timeparse import EARLIEST_EVENT_TIME, LATEST_EVENT_TIME

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "SUBPROTOCOL",
    "ARROW_MARKER",
    "event_schema",
    "as_event_data",
    "tag_lists",
    "tag_text",
    "is_arrow_message",
    "columns_to_batch",
    "events_to_batch",
    "batch_to_ipc",
    "ipc_to_batches",
    "batch_to_columns",
    "empty_batch",
    "iter_batch_events",
    "encode_batch",
    "decoded_event_sizes",
    "missing_values",
    "frame_memory_pool",
    "decoded_size",
    "column_cuts",
    "uncarried_rows",
    "outside_event_times",
    "validate_events",
    "DEFAULT_MAX_DECODED",
]

SUBPROTOCOL = "theia-frames.v2"
ARROW_MARKER = b"\xff\xff\xff\xff"
#: Most bytes one Arrow message's buffers may decode to, unless told otherwise
#: (more than the largest message theia_frames' collector sends).
DEFAULT_MAX_DECODED = 256 * 1024 * 1024

_SCHEMA: Any = None


def _pa() -> Any:
    import pyarrow  # a core dependency; imported late because it is slow to import

    return pyarrow


def event_schema() -> pa.Schema:
    """The Arrow schema of a batch of events: the frame's own types where they keep every
    value exactly, so a received batch becomes a frame without conversion.

    ``timestamp`` stays float seconds (what the wire and ``Event`` hold, to the last
    bit); ``source`` is dictionary-encoded (a few sources repeat over many events);
    ``tags`` holds each event's tags as a list (the wire's ``tags:a,b``).

    >>> [f"{f.name}: {f.type}" for f in event_schema()]
    ['id: string', 'timestamp: double', 'source: dictionary<values=string, indices=int32, ordered=0>', 'tags: list<item: string>', 'content: string']
    """
    global _SCHEMA
    if _SCHEMA is None:
        pa = _pa()
        _SCHEMA = pa.schema(
            [
                ("id", pa.string()),
                ("timestamp", pa.float64()),
                ("source", pa.dictionary(pa.int32(), pa.string())),
                ("tags", pa.list_(pa.string())),
                ("content", pa.string()),
            ]
        )
    return _SCHEMA


def tag_lists(text: pa.Array) -> pa.Array:
    """Comma-joined tag text (an Arrow string array, as on the wire) as lists of tags,
    the ``tags`` column of :func:`event_schema`; ``""`` (and a missing value) is no tags,
    as :func:`~theia_frames.protocol.codec.split_tags` reads it.

    >>> tag_lists(_pa().array(["a,b", "", None])).to_pylist()
    [['a', 'b'], [], []]
    """
    pa = _pa()
    pc = pa.compute
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        text = text.cast(pa.string())
    if text.null_count:
        text = pc.fill_null(text, "")
    # Tag sets repeat from event to event: splitting the distinct texts once and
    # taking them by index is about twice as fast then (and a little slower when
    # every text differs, which a sample tells).
    sample = text.slice(0, 4096)
    if len(text) > 4096 and len(pc.unique(sample)) * 8 <= len(sample):
        encoded = pc.dictionary_encode(text)
        return _split_tags(encoded.dictionary).take(encoded.indices)
    return _split_tags(text)


def _split_tags(text: pa.Array) -> pa.Array:
    import numpy as np

    pa = _pa()
    pc = pa.compute
    lists = pc.split_pattern(text, ",")
    empty = pc.equal(text, "")
    if not pc.any(empty).as_py():
        return lists.cast(pa.list_(pa.string()))
    # split_pattern reads "" as one empty tag; on the wire "" means no tags.
    is_empty = empty.to_numpy(zero_copy_only=False)
    lengths = np.where(is_empty, 0, pc.list_value_length(lists).to_numpy(zero_copy_only=False))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    keep = ~is_empty[pc.list_parent_indices(lists).to_numpy()]
    values = pc.list_flatten(lists).filter(pa.array(keep)).cast(pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def tag_text(tags: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Lists of tags as their comma-joined wire text (``[]`` is ``""``).

    >>> tag_text(tag_lists(_pa().array(["a,b", ""]))).to_pylist()
    ['a,b', '']
    """
    return _pa().compute.binary_join(tags, ",")


def as_event_data(data: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """Arrow data with the five event columns (any order, more are left out) in the types
    of :func:`event_schema`: the one reading of what a user hands over as events.

    Besides the schema's own types it reads tags as comma text (``"a,b"``, ``""`` no
    tags), sources as plain text, text as ``large_string``, lists of ``large_string``,
    timestamps as any number of seconds or an Arrow timestamp (a frame's), and another
    dictionary index type. Raises :class:`~theia_frames.exceptions.UsageError` naming
    the column that cannot be read.

    >>> t = _pa().table({"id": ["a"], "timestamp": [1.5], "source": ["s"], "tags": ["x,y"], "content": ["c"]})
    >>> as_event_data(t).column("tags").to_pylist()
    [['x', 'y']]
    """
    pa = _pa()
    schema = event_schema()
    if data.schema.equals(schema):
        return data
    names = data.schema.names
    missing = [f.name for f in schema if f.name not in names]
    if missing:
        raise UsageError(
            f"a batch of events needs the columns {list(schema.names)}; missing {missing} (got {names})"
        )
    table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
    arrays = [_as_field(f, table.column(f.name)) for f in schema]
    if isinstance(data, pa.Table):
        return pa.Table.from_arrays(arrays, schema=schema)
    return pa.RecordBatch.from_arrays([a.combine_chunks() for a in arrays], schema=schema)


def _as_field(field: Any, column: Any) -> Any:
    """One column as the type of ``field`` of the event schema (see :func:`as_event_data`)."""
    pa = _pa()
    pc = pa.compute
    typ, name = column.type, field.name
    if typ.equals(field.type):
        return column
    try:
        if name == "tags" and (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            return pa.chunked_array([tag_lists(c) for c in column.chunks], type=field.type)
        if name == "source" and not pa.types.is_dictionary(typ):
            text = column.cast(pa.string())
            return pa.chunked_array([pc.dictionary_encode(c) for c in text.chunks], type=field.type)
        if name == "timestamp" and pa.types.is_timestamp(typ):
            per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[typ.unit]
            return pc.divide(column.cast(pa.int64()).cast(pa.float64()), per_second)
        return column.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise UsageError(f"column {name!r} of type {typ} cannot be read as {field.type}: {exc}") from None


_POOL: Any = None


def frame_memory_pool() -> pa.MemoryPool:
    """The Arrow memory pool received events are decoded and converted in: jemalloc where
    pyarrow has it, else pyarrow's default pool.

    A find decodes and frees hundreds of megabytes of buffers on the way to its
    frame. jemalloc gives freed pages back to the system within about a second;
    the default pool of pyarrow's wheels (mimalloc) keeps them for reuse, which
    leaves the process holding about twice the frame after a large find
    (``bench/run.py``, case (a): peak RSS growth 2.0x the frame with the
    default pool, 1.4x with this one). Nothing else in the process is changed.

    >>> frame_memory_pool().bytes_allocated() >= 0
    True
    """
    global _POOL
    if _POOL is None:
        pa = _pa()
        try:
            _POOL = pa.jemalloc_memory_pool()
        except (NotImplementedError, pa.ArrowNotImplementedError):
            _POOL = pa.default_memory_pool()
    return _POOL


def is_arrow_message(message: bytes | bytearray | memoryview | str) -> bool:
    """Whether a message is an Arrow IPC stream (a batch) rather than a plain event."""
    return not isinstance(message, str) and bytes(message[:4]) == ARROW_MARKER


def columns_to_batch(cols: EventColumns) -> pa.RecordBatch:
    """Columns of decoded events as one Arrow record batch."""
    pa = _pa()
    return pa.RecordBatch.from_arrays(
        [
            pa.array(cols.id, pa.string()),
            pa.array(cols.timestamp, pa.float64()),
            pa.compute.dictionary_encode(pa.array(cols.source, pa.string())),
            tag_lists(pa.array(cols.tags, pa.string())),
            pa.array(cols.content, pa.string()),
        ],
        schema=event_schema(),
    )


def events_to_batch(events: Iterable[Event]) -> pa.RecordBatch:
    """Events as one Arrow record batch."""
    cols = EventColumns()
    for e in events:
        cols.append_event(e)
    return columns_to_batch(cols)


@functools.cache
def empty_batch() -> pa.RecordBatch:
    """A batch with no rows and the event schema (one, made once: Arrow batches do not change)."""
    return columns_to_batch(EventColumns())


def batch_to_ipc(batch: pa.RecordBatch | pa.Table, *, compression: str | None = None) -> bytes:
    """Serialize a batch (or table) as one Arrow IPC stream message, its buffers
    compressed with ``compression`` (``"zstd"``, ``"lz4"``) when given."""
    pa = _pa()
    sink = pa.BufferOutputStream()
    options = None if compression is None else pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, batch.schema, options=options) as writer:
        writer.write(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def ipc_to_batches(
    message: bytes | bytearray | memoryview,
    *,
    max_decoded: int | None = DEFAULT_MAX_DECODED,
    full: bool = True,
    schema: pa.Schema | None = None,
    fields: Sequence[str] | None = None,
    threads: bool = True,
) -> list[pa.RecordBatch]:
    """The record batches of one Arrow IPC stream message, checked against the event schema
    (or ``schema``); with ``fields``, only those columns, the others not decompressed;
    its buffers decompressed in Arrow's threads (``threads=False``: in the caller's, for a
    caller that decodes several messages at once in threads of its own).

    ``max_decoded`` bounds the bytes the message's buffers decode to (``None``:
    no bound), its dictionaries included. Compressed buffers (LZ4, ZSTD) declare
    their size before their data; the declared sizes are added up from the
    message headers *before* anything is decompressed, so a small message that
    would decode to gigabytes is refused without allocating them. ``full``
    validates every value (:func:`validate_events`: offsets inside the data,
    dictionary indices inside their dictionary, text valid UTF-8: for a peer's
    bytes); ``full=False`` checks the structure only (buffers large enough for
    their arrays), for bytes that were fully validated before they were kept.
    Every error is a :class:`~theia_frames.exceptions.DecodeError` of bounded length.
    """
    pa = _pa()
    expected = event_schema() if schema is None else schema
    batches: list[Any] = []
    decoded = 0
    buffer = pa.py_buffer(message)
    try:
        reader = pa.ipc.MessageReader.open_stream(buffer)
        first = reader.read_next_message()
        if first.type != "schema":
            raise DecodeError(f"invalid Arrow batch (the stream starts with a {first.type} message)", message, 0)
        found = pa.ipc.read_schema(first)
        if not found.equals(expected):
            raise DecodeError(f"Arrow batch has an unexpected schema: {_describe_schema(found)}", message, 0)
        # The headers first, nothing decoded: what every message would decode to.
        for part in reader:
            if part.type not in ("record batch", "dictionary"):
                raise DecodeError(f"invalid Arrow batch (a {part.type} message in a batch of events)", message, 0)
            decoded += _decoded_size(part)
            if max_decoded is not None and decoded > max_decoded:
                raise DecodeError(
                    f"Arrow batch decodes to more than {max_decoded} bytes (the limit on decoded bytes per message)",
                    message,
                    0,
                )
        options = pa.ipc.IpcReadOptions(
            included_fields=None if fields is None else [expected.get_field_index(name) for name in fields],
            use_threads=threads,
        )
        for batch in pa.ipc.open_stream(buffer, options=options, memory_pool=frame_memory_pool()):
            # A peer's bytes are not trusted: offsets inside the data, strings valid UTF-8.
            if full:
                validate_events(batch)
            else:
                batch.validate()
            batches.append(batch)
    except StopIteration:
        raise DecodeError("invalid Arrow batch (no schema)", message, 0) from None
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"invalid Arrow batch ({shorten(str(exc))})", message, 0) from None
    for b in batches:
        for name, column in zip(b.schema.names, b.columns):
            if missing_values(column):
                raise DecodeError(f"Arrow batch has missing values in column {name!r}", message, 0)
    return batches


def missing_values(column: Any) -> int:
    """The missing values of a column, those inside its values included (a dictionary's
    entries, a list's items).

    >>> missing_values(_pa().array([["a", None], None]))
    2
    """
    pa = _pa()
    count = int(column.null_count)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            count += int(chunk.dictionary.null_count)
        elif pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
            count += int(chunk.flatten().null_count)
    return count


def validate_events(batch: pa.RecordBatch) -> None:
    """What pyarrow's ``validate(full=True)`` checks of an event-schema batch, in one
    pass over its bytes: the structure (buffers large enough for their arrays), every
    text's offsets in order and inside its data and its text valid UTF-8 (Arrow's
    validator, as a cast of the same buffers from binary), every list's offsets
    inside its items, every dictionary index inside its dictionary. Raises
    ``pyarrow.ArrowInvalid`` naming the problem.

    >>> validate_events(events_to_batch([Event(id="a", timestamp=1.0, content="été")]))
    """
    import numpy as np

    pa = _pa()
    batch.validate()
    for name, column in zip(batch.schema.names, batch.columns):
        typ = column.type
        if pa.types.is_dictionary(typ):
            _validate_text(name, column.dictionary)
            indices = column.indices
            if len(indices):
                values = np.asarray(indices.fill_null(0).to_numpy(zero_copy_only=False))
                if values.min() < 0 or values.max() >= len(column.dictionary):
                    raise pa.ArrowInvalid(f"column {name!r}: a dictionary index outside its dictionary")
        elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
            offsets_buffer = column.buffers()[1]
            if offsets_buffer is not None and offsets_buffer.size and len(column):
                wide = pa.types.is_large_list(typ)
                count = column.offset + len(column) + 1
                offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32, count=count)[column.offset :]
                if offsets[0] < 0 or offsets[-1] > len(column.values) or (np.diff(offsets) < 0).any():
                    raise pa.ArrowInvalid(f"column {name!r}: list offsets out of order or outside the items")
            _validate_text(name, column.values)
        else:
            _validate_text(name, column)


def _validate_text(name: str, column: Any) -> None:
    """A string array's offsets (in order, inside the data) and UTF-8; other types pass."""
    import numpy as np

    pa = _pa()
    wide = pa.types.is_large_string(column.type)
    if not (wide or pa.types.is_string(column.type)):
        return
    validity, offsets_buffer, data = column.buffers()
    n = len(column)
    if offsets_buffer is None or not offsets_buffer.size:
        return  # no values and no offsets (the structural check saw to it)
    count = column.offset + n + 1  # the structural check: the buffer holds this many
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32, count=count)[column.offset :]
    size = 0 if data is None else data.size
    if offsets[0] < 0 or offsets[-1] > size or (np.diff(offsets) < 0).any():
        raise pa.ArrowInvalid(f"column {name!r}: offsets out of order or outside the data")
    raw = pa.Array.from_buffers(
        pa.large_binary() if wide else pa.binary(), n, [validity, offsets_buffer, data], offset=column.offset
    )
    try:
        raw.cast(column.type)
    except pa.ArrowInvalid:
        raise pa.ArrowInvalid(f"column {name!r}: text that is not valid UTF8") from None


def decoded_event_sizes(batch: pa.RecordBatch) -> Any:
    """The decoded bytes of each event of ``batch`` (its four text fields, the tags as
    their comma text, and the 8 bytes of its timestamp), as a numpy int64 array.

    >>> decoded_event_sizes(events_to_batch([Event(id="ab", timestamp=1.0, source="s", tags=["x", "yz"])])).tolist()
    [15]
    """
    import numpy as np

    pc = _pa().compute

    def lengths(column: Any) -> Any:
        return np.asarray(pc.binary_length(column).to_numpy(zero_copy_only=False), dtype=np.int64)

    size = lengths(batch.column(0)) + 8 + lengths(batch.column(4))
    source = batch.column(2)
    size += lengths(source.dictionary)[np.asarray(source.indices.to_numpy(zero_copy_only=False))]
    tags = batch.column(3)
    offsets = np.asarray(tags.offsets.to_numpy(), dtype=np.int64)
    items = _own_items(tags, offsets)
    text = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lengths(items), out=text[1:])
    count = np.diff(offsets)
    own = offsets - offsets[0]
    size += text[own[1:]] - text[own[:-1]] + np.maximum(count - 1, 0)
    return size


def decoded_size(message: bytes | bytearray | memoryview) -> int:
    """The bytes the record batches of one Arrow IPC stream message decode to, read
    from their headers (as :func:`ipc_to_batches` bounds them; nothing is decompressed).

    >>> b = events_to_batch([Event(id="a", timestamp=1.0, content="x" * 1000)])
    >>> decoded_size(batch_to_ipc(b, compression="zstd")) == decoded_size(batch_to_ipc(b)) > 1000
    True
    """
    pa = _pa()
    total = 0
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(message))
        for part in reader:
            if part.type in ("record batch", "dictionary"):
                total += _decoded_size(part)
    except (pa.ArrowException, OSError) as exc:
        raise DecodeError(f"invalid Arrow batch ({shorten(str(exc))})", message, 0) from None
    return total


def outside_event_times(timestamps: pa.Array) -> Any:
    """The rows of float seconds that are no event time (not finite, or outside the accepted
    range :data:`~theia_frames.timeparse.EARLIEST_EVENT_TIME` to
    :data:`~theia_frames.timeparse.LATEST_EVENT_TIME`), as a numpy bool mask, or None when
    every one is.

    >>> outside_event_times(_pa().array([-10.0, 1e11, float("nan")])).tolist()
    [False, True, True]
    """
    import numpy as np

    ts = np.asarray(timestamps.to_numpy(zero_copy_only=False), dtype=np.float64)
    inside = (ts >= EARLIEST_EVENT_TIME) & (ts < LATEST_EVENT_TIME)
    return None if inside.all() else ~inside


_LINE_BREAKS = LINE_BREAKS.encode()
_TAG_BREAKS = TAG_BREAKS.encode()


def uncarried_rows(batch: pa.RecordBatch) -> Any:
    """The rows of an event-schema batch that the wire format cannot carry, as a numpy
    bool mask, or None when it carries them all (the usual case).

    A row cannot be carried with a line break (``\\n``, ``\\r``) in its id, source
    or a tag, a comma in a tag (it would come back as two): the rule of
    :func:`~theia_frames.protocol.codec.header_problem`; nor with a missing value
    anywhere, or a timestamp that is not an event time (:func:`outside_event_times`). The bytes are looked for in one
    scan of each text's data (a dictionary's entries once, a list's items once);
    only when one is found are its rows worked out (from the offsets).

    >>> b = events_to_batch([Event(id="a", timestamp=1.0), Event(id="b\\n", timestamp=2.0)])
    >>> uncarried_rows(b).tolist(), uncarried_rows(b.slice(0, 1))
    ([False, True], None)
    """
    import numpy as np

    pa = _pa()
    n = batch.num_rows
    if not n:
        return None
    bad: Any = None

    def mark(rows: Any) -> None:
        nonlocal bad
        if bad is None:
            bad = np.zeros(n, dtype=bool)
        bad |= rows

    for column in batch.columns:
        if column.null_count:
            mark(np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool))
    ts = batch.column(1)
    if pa.types.is_floating(ts.type):
        times = outside_event_times(ts)
        if times is not None:
            mark(times)
    rows = _found_rows(batch.column(0), _LINE_BREAKS)
    if rows is not None:
        mark(rows)
    source = batch.column(2)
    entries = _found_rows(source.dictionary, _LINE_BREAKS, nulls=True)
    if entries is not None:
        mark(entries[np.asarray(source.indices.fill_null(0).to_numpy(zero_copy_only=False))])
    tags = batch.column(3)
    offsets = np.asarray(tags.offsets.to_numpy(), dtype=np.int64)
    # only the batch's own items: a slice of a table keeps the whole table's items
    items = _found_rows(_own_items(tags, offsets), _TAG_BREAKS, nulls=True)
    if items is not None:
        at = np.flatnonzero(items) + int(offsets[0])
        if len(at):
            rows = np.zeros(n, dtype=bool)
            rows[np.searchsorted(offsets, at, side="right") - 1] = True
            mark(rows)
    return bad


def _own_items(lists: Any, offsets: Any) -> Any:
    """The items of a list array's own rows (``lists.values`` is every item of the
    array it was sliced from), from its ``offsets`` as numpy."""
    first = int(offsets[0])
    return lists.values.slice(first, int(offsets[-1]) - first)


def _found_rows(column: Any, sought: bytes, nulls: bool = False) -> Any:
    """Which values of a string array hold one of the bytes ``sought`` (or are missing,
    with ``nulls``), as numpy bools; None when none does."""
    import numpy as np

    pa = _pa()
    found = None
    if nulls and column.null_count:
        found = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    _, offsets_buffer, data = column.buffers()
    if data is None or not len(column):
        return found
    wide = pa.types.is_large_string(column.type)
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32)[column.offset : column.offset + len(column) + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    # A copy and a memchr per byte sought, at memory speed (gigabytes a second).
    text = memoryview(data)[first:last].tobytes()
    if not any(bytes((b,)) in text for b in sought):
        return found
    values = np.frombuffer(text, dtype=np.uint8)
    hit = np.zeros(len(values), dtype=bool)
    for b in sought:
        hit |= values == b
    at = np.flatnonzero(hit) + first
    rows = np.zeros(len(column), dtype=bool) if found is None else found
    rows[np.searchsorted(offsets, at, side="right") - 1] = True
    return rows


def _describe_schema(schema: pa.Schema) -> str:
    # A schema of 60,000 columns must not be echoed back and logged whole.
    names = schema.names
    shown = ", ".join(f"{f.name}: {f.type}" for f in list(schema)[:8])
    more = f", ... ({len(names)} fields)" if len(names) > 8 else ""
    return shorten(shown + more)


def _decoded_size(message: Any) -> int:
    """The bytes the buffers of an Arrow record batch message decode to, read from
    its metadata (a flatbuffer) and, for compressed buffers, from the length
    each one declares before its data; nothing is decompressed.

    The metadata is an ``org.apache.arrow.flatbuf.Message`` whose header is a
    ``RecordBatch`` (or a ``DictionaryBatch``, whose field 1 is one): field 2 lists the body's buffers (offset, length), field 3
    is present when the buffers are compressed; a compressed buffer starts
    with its uncompressed length (int64, -1 for "stored uncompressed").
    """
    meta = message.metadata.to_pybytes()
    body = message.body
    try:
        root = _fb_table(meta, _u32(meta, 0))
        kind = _fb_scalar(meta, root, 1, "<B", 0)  # header_type: 2 DictionaryBatch, 3 RecordBatch
        at_header = _fb_indirect(meta, root, 2) if kind in (2, 3) else None
        if kind == 2 and at_header is not None:
            # a DictionaryBatch: its field 1 is the RecordBatch of the dictionary's values
            at_header = _fb_indirect(meta, _fb_table(meta, at_header), 1)
        if at_header is None:
            raise DecodeError("invalid Arrow batch (a record batch message without a record batch header)")
        header = _fb_table(meta, at_header)
        compressed = _fb_field(meta, header, 3) is not None
        at = _fb_indirect(meta, header, 2)
        if at is None:
            return 0
        count = _u32(meta, at)
        if at + 4 + 16 * count > len(meta):
            raise DecodeError("invalid Arrow batch (its buffer list runs past its metadata)")
        lengths = struct.unpack_from(f"<{2 * count}q", meta, at + 4)
    except struct.error:
        raise DecodeError("invalid Arrow batch (damaged metadata)") from None
    total = 0
    size = 0 if body is None else body.size
    for offset, length in zip(lengths[0::2], lengths[1::2]):
        if offset < 0 or length < 0 or offset + length > size:
            raise DecodeError("invalid Arrow batch (a buffer outside the message body)")
        if not compressed or length == 0:
            total += length
            continue
        if length < 8:
            raise DecodeError("invalid Arrow batch (a compressed buffer without its length)")
        (declared,) = struct.unpack("<q", body.slice(offset, 8).to_pybytes())
        if declared == -1:
            total += length - 8
        elif declared < 0:
            raise DecodeError("invalid Arrow batch (a compressed buffer of negative length)")
        else:
            total += declared
    return total


def column_cuts(stream: bytes | bytearray | memoryview, schema: pa.Schema | None = None) -> list[int] | None:
    """Where an Arrow IPC stream of one record batch splits by column: ``[0, h, c1, ...,
    len(stream)]``, so that ``stream[0:h]`` holds every message header (the schema, the
    dictionaries, the batch's metadata) and ``stream[h:c1]``, ``stream[c1:c2]``, ... the
    buffers of the schema's top-level fields in order (the end-of-stream marker goes with
    the last). None when the stream is not one record batch of ``schema`` (the event schema
    when not given) whose buffers follow each other field after field.

    Read from the messages' metadata alone (nothing is decompressed): a reader of some
    columns can be given the header and their parts only, the rest of the body left as
    zeros (:func:`ipc_to_batches` with ``fields`` does not read another field's buffers).

    >>> data = batch_to_ipc(events_to_batch([Event("a", 1.0, "s", ["t"], "c")]), compression="zstd")
    >>> cuts = column_cuts(data)
    >>> len(cuts), cuts[0], cuts[-1] == len(data), cuts == sorted(cuts)
    (7, 0, True, True)
    """
    expected = event_schema() if schema is None else schema
    counts = [_buffer_count(field.type) for field in expected]
    if any(count is None for count in counts):
        return None
    buf = bytes(stream)
    at = 0
    firsts: list[int] | None = None
    try:
        while True:
            (marker,) = struct.unpack_from("<I", buf, at)
            if marker == 0xFFFFFFFF:
                (length,) = struct.unpack_from("<i", buf, at + 4)
                at += 8
            else:
                length, at = marker, at + 4
            if length == 0:
                break
            meta = buf[at : at + length]
            if len(meta) != length or length < 0:
                return None
            root = _fb_table(meta, _u32(meta, 0))
            kind = _fb_scalar(meta, root, 1, "<B", 0)
            body_length = _fb_scalar(meta, root, 3, "<q", 0)
            body = at + length
            if kind == 3:
                if firsts is not None:
                    return None  # a second record batch
                header = _fb_table(meta, _fb_indirect(meta, root, 2) or 0)
                vector = _fb_indirect(meta, header, 2)
                if vector is None:
                    return None
                number = _u32(meta, vector)
                if number != sum(c for c in counts if c is not None):
                    return None
                offsets = struct.unpack_from(f"<{2 * number}q", meta, vector + 4)[0::2]
                firsts, k = [], 0
                for count in counts:
                    firsts.append(body + offsets[k])
                    k += count or 0
            elif firsts is not None:
                return None  # a message after the record batch
            at = body + body_length
    except struct.error:
        return None
    if firsts is None or at > len(buf):
        return None
    cuts = [0, *firsts, len(buf)]
    if any(b < a for a, b in zip(cuts, cuts[1:])):
        return None
    return cuts


def _buffer_count(kind: Any) -> int | None:
    """The buffers an array of Arrow type ``kind`` has in an IPC body (None: a type not counted here)."""
    pa = _pa()
    if pa.types.is_dictionary(kind):
        return 2
    if pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        return 3
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        child = _buffer_count(kind.value_type)
        return None if child is None else 2 + child
    if pa.types.is_primitive(kind) and not pa.types.is_boolean(kind):
        return 2
    return None


# A minimal flatbuffer reader, for the few fields of the Arrow message header
# read above; every offset is checked against the buffer (struct.error if outside).
def _u32(buf: bytes, at: int) -> int:
    value: int = struct.unpack_from("<I", buf, at)[0]
    return value


def _fb_table(buf: bytes, at: int) -> tuple[int, int, int]:
    """A table at ``at``: (its position, its vtable's position, the vtable's size)."""
    vtable = at - struct.unpack_from("<i", buf, at)[0]
    (vsize,) = struct.unpack_from("<H", buf, vtable)
    return at, vtable, vsize


def _fb_field(buf: bytes, table: tuple[int, int, int], index: int) -> int | None:
    """Where field ``index`` of a table is, None when absent."""
    at, vtable, vsize = table
    slot = 4 + 2 * index
    if slot + 2 > vsize:
        return None
    (offset,) = struct.unpack_from("<H", buf, vtable + slot)
    return at + offset if offset else None


def _fb_scalar(buf: bytes, table: tuple[int, int, int], index: int, fmt: str, default: int) -> int:
    at = _fb_field(buf, table, index)
    return default if at is None else struct.unpack_from(fmt, buf, at)[0]


def _fb_indirect(buf: bytes, table: tuple[int, int, int], index: int) -> int | None:
    """The position a table's offset field (a table, a vector) points to."""
    at = _fb_field(buf, table, index)
    return None if at is None else at + _u32(buf, at)


def batch_to_columns(batch: pa.RecordBatch | pa.Table) -> EventColumns:
    """A batch as plain Python columns (one object per value; for small batches)."""
    d = batch.to_pydict()
    return EventColumns(d["id"], d["timestamp"], d["source"], [",".join(t) for t in d["tags"]], d["content"])


def iter_batch_events(batch: pa.RecordBatch | pa.Table) -> Iterator[Event]:
    """The events of a batch as :class:`Event` objects."""
    d = batch.to_pydict()
    for i, t, s, g, c in zip(d["id"], d["timestamp"], d["source"], d["tags"], d["content"]):
        yield Event(i, t, s, g, c)


def _timestamp_texts(ts: Any) -> Any:
    """``f"{t:.7f}"`` for every float of a numpy array, as an Arrow string array.

    Integer and fraction parts are computed apart (both exactly), the fraction
    rounded to 7 digits; the rare values too close to a rounding tie for the
    float product to decide, and values beyond 2**62, are formatted by Python.
    """
    import numpy as np

    pa = _pa()
    pc = pa.compute
    magnitude = np.abs(ts)
    huge = ~(magnitude < 2.0**62)
    magnitude = np.where(huge, 0.0, magnitude)
    whole = np.floor(magnitude)
    scaled = (magnitude - whole) * 1e7  # the subtraction is exact; the product within 2e-9
    digits = np.rint(scaled)
    near_tie = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    carry = digits >= 1e7
    whole = whole + carry
    digits = np.where(carry, 0.0, digits)
    text = pc.binary_join_element_wise(
        pc.if_else(pa.array(np.signbit(ts)), "-", ""),
        pc.cast(pa.array(whole.astype(np.int64)), pa.string()),
        ".",
        pc.utf8_lpad(pc.cast(pa.array(digits.astype(np.int64)), pa.string()), 7, "0"),
        "",
    )
    exact = huge | near_tie
    if exact.any():
        values = pa.array([f"{t:.7f}" for t in ts[exact]], pa.string())
        text = pc.replace_with_mask(text, pa.array(exact), values)
    return text


def encode_batch(batch: pa.RecordBatch) -> pa.Array:
    """Every event of ``batch`` in the upstream encoding, as :func:`~theia_frames.protocol.codec.encode`
    writes it, byte for byte, computed with Arrow kernels over whole columns (no Python per event);
    a ``large_string`` array, one value per event.

    >>> from theia_frames.protocol.codec import encode
    >>> events = [Event(id="a", timestamp=1.25, source="s", tags=["x", "y"], content="21.5C"),
    ...           Event(id="b", timestamp=1700000000.1234567, content="é\\nz")]
    >>> [v.as_py().encode() for v in encode_batch(events_to_batch(events))] == [encode(e) for e in events]
    True
    """
    pa = _pa()
    pc = pa.compute
    ids, ts, content = batch.column(0).cast(pa.large_string()), batch.column(1), batch.column(4).cast(pa.large_string())
    sources = batch.column(2).dictionary_decode().cast(pa.large_string())
    tags = tag_text(batch.column(3)).cast(pa.large_string())
    stamps = _timestamp_texts(ts.to_numpy()).cast(pa.large_string())
    # "id:" "\ntimestamp: " "\nsource:" "\ntags:" "\n": 30 bytes around the four values
    header = pc.add(
        pc.add(pc.binary_length(ids), pc.binary_length(stamps)),
        pc.add(pc.add(pc.binary_length(sources), pc.binary_length(tags)), 30),
    )
    size = pc.binary_length(content)

    def text(n: Any) -> Any:
        return pc.cast(n, pa.large_string())

    def literal(value: str) -> Any:
        return pa.scalar(value, pa.large_string())

    return pc.binary_join_element_wise(
        literal("event: "), text(pc.add(header, size)), literal(" "), text(header), literal(" "), text(size),
        literal("\nid:"), ids, literal("\ntimestamp: "), stamps, literal("\nsource:"), sources,
        literal("\ntags:"), tags, literal("\n"), content, literal("\n"),
        literal(""),
    )
