"""Batched transfer: many events per WebSocket message, as Arrow IPC streams.

This is the opt-in extension spoken between theia_frames' own client and
collector. It is negotiated with the WebSocket subprotocol :data:`SUBPROTOCOL`:
the client offers it, our collector accepts it, and a peer that does not know
it never sees anything but the plain protocol.

On a connection that negotiated it:

- the collector may send a binary message holding an Arrow IPC stream of one
  or more record batches with :data:`EVENT_SCHEMA` wherever the plain
  protocol sends one event (``/find`` and ``/live``);
- the client may send such a message on ``/event`` to publish many events at once;
- everything else (``ok``, error objects, single plain events) is unchanged.

An Arrow IPC stream starts with the continuation marker ``0xFFFFFFFF``; a plain
event starts with ``event:``, so the two are told apart by their first bytes.

Pure functions: nothing here opens a socket or a file. pyarrow is imported
when first needed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .codec import EventColumns, split_tags
from ..event import Event
from ..exceptions import DecodeError, shorten

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "SUBPROTOCOL",
    "ARROW_MARKER",
    "event_schema",
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
    "decoded_size",
    "uncarried_rows",
    "validate_events",
    "DEFAULT_MAX_DECODED",
]

SUBPROTOCOL = "theia-frames.v1"
ARROW_MARKER = b"\xff\xff\xff\xff"
#: Most bytes one Arrow message's buffers may decode to, unless told otherwise
#: (more than the largest message theia_frames' collector sends).
DEFAULT_MAX_DECODED = 256 * 1024 * 1024

_SCHEMA: Any = None


def _pa() -> Any:
    import pyarrow  # a core dependency; imported late because it is slow to import

    return pyarrow


def event_schema() -> pa.Schema:
    """The Arrow schema of a batch of events.

    ``tags`` holds each event's comma-joined tag text (``""`` = no tags), as on the wire.
    """
    global _SCHEMA
    if _SCHEMA is None:
        pa = _pa()
        _SCHEMA = pa.schema(
            [
                ("id", pa.string()),
                ("timestamp", pa.float64()),
                ("source", pa.string()),
                ("tags", pa.string()),
                ("content", pa.string()),
            ]
        )
    return _SCHEMA


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
            pa.array(cols.source, pa.string()),
            pa.array(cols.tags, pa.string()),
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


def empty_batch() -> pa.RecordBatch:
    """A batch with no rows and the event schema."""
    return columns_to_batch(EventColumns())


def batch_to_ipc(batch: pa.RecordBatch | pa.Table, *, compression: str | None = None) -> bytes:
    """Serialize a batch (or table) as one Arrow IPC stream message, its buffers
    compressed with ``compression`` (``"zstd"``, ``"lz4"``) when given."""
    pa = _pa()
    sink = pa.BufferOutputStream()
    options = None if compression is None else pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, batch.schema, options=options) as writer:
        writer.write(batch)
    return sink.getvalue().to_pybytes()


def ipc_to_batches(
    message: bytes | bytearray | memoryview, *, max_decoded: int | None = DEFAULT_MAX_DECODED, full: bool = True
) -> list[pa.RecordBatch]:
    """The record batches of one Arrow IPC stream message, checked against the event schema.

    ``max_decoded`` bounds the bytes the message's buffers decode to (``None``:
    no bound). Compressed buffers (LZ4, ZSTD) declare their size before their
    data; the declared sizes are added up from the message headers *before*
    anything is decompressed, so a small message that would decode to
    gigabytes is refused without allocating them. ``full`` validates every
    value (:func:`validate_events`: offsets inside the data, text valid UTF-8: for a peer's bytes);
    ``full=False`` checks the structure only (buffers large enough for their
    arrays), for bytes that were fully validated before they were kept. Every
    error is a :class:`~theia_frames.exceptions.DecodeError` of bounded length.
    """
    pa = _pa()
    batches: list[Any] = []
    decoded = 0
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(message))
        first = reader.read_next_message()
        if first.type != "schema":
            raise DecodeError(f"invalid Arrow batch (the stream starts with a {first.type} message)", message, 0)
        schema = pa.ipc.read_schema(first)
        if not schema.equals(event_schema()):
            raise DecodeError(f"Arrow batch has an unexpected schema: {_describe_schema(schema)}", message, 0)
        for part in reader:
            if part.type != "record batch":
                raise DecodeError(f"invalid Arrow batch (a {part.type} message in a batch of events)", message, 0)
            decoded += _decoded_size(part)
            if max_decoded is not None and decoded > max_decoded:
                raise DecodeError(
                    f"Arrow batch decodes to more than {max_decoded} bytes (the limit on decoded bytes per message)",
                    message,
                    0,
                )
            batch = pa.ipc.read_record_batch(part, schema)
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
            if column.null_count:
                raise DecodeError(f"Arrow batch has missing values in column {name!r}", message, 0)
    return batches


def validate_events(batch: pa.RecordBatch) -> None:
    """What pyarrow's ``validate(full=True)`` checks of an event-schema batch, in one
    pass over its bytes: the structure (buffers large enough for their arrays), every
    text column's offsets in order and inside its data, and its text valid UTF-8
    (Arrow's validator, as a cast of the same buffers from binary). Raises
    ``pyarrow.ArrowInvalid`` naming the problem.

    >>> validate_events(events_to_batch([Event(id="a", timestamp=1.0, content="été")]))
    """
    import numpy as np

    pa = _pa()
    batch.validate()
    for name, column in zip(batch.schema.names, batch.columns):
        wide = pa.types.is_large_string(column.type)
        if not (wide or pa.types.is_string(column.type)):
            continue
        validity, offsets_buffer, data = column.buffers()
        n = len(column)
        if offsets_buffer is None or not offsets_buffer.size:
            continue  # no values and no offsets (the structural check saw to it)
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
    """The decoded bytes of each event of ``batch`` (its four text fields and the
    8 bytes of its timestamp), as a numpy array."""
    pc = _pa().compute
    size = pc.binary_length(batch.column(0)).to_numpy(zero_copy_only=False).astype("int64") + 8
    for i in (2, 3, 4):
        size += pc.binary_length(batch.column(i)).to_numpy(zero_copy_only=False)
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
            if part.type == "record batch":
                total += _decoded_size(part)
    except (pa.ArrowException, OSError) as exc:
        raise DecodeError(f"invalid Arrow batch ({shorten(str(exc))})", message, 0) from None
    return total


def uncarried_rows(batch: pa.RecordBatch) -> Any:
    """The rows of an event-schema batch that the wire format cannot carry, as a numpy
    bool mask, or None when it carries them all (the usual case).

    A row cannot be carried with a line break (``\\n``, ``\\r``) in its id, source
    or tags, a missing value in any column, or a timestamp that is not finite.
    The line breaks are looked for in one scan of each text column's bytes; only
    when one is found are its rows worked out (from the offsets).

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
        finite = np.isfinite(np.asarray(ts.to_numpy(zero_copy_only=False), dtype=np.float64))
        if not finite.all():
            mark(~finite)
    for index in (0, 2, 3):
        rows = _line_break_rows(batch.column(index))
        if rows is not None:
            mark(rows)
    return bad


def _line_break_rows(column: Any) -> Any:
    """Which values of a string column hold a line break (numpy bools), None when none does."""
    import numpy as np

    pa = _pa()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return None
    _, offsets_buffer, data = column.buffers()
    if data is None or not len(column):
        return None
    wide = pa.types.is_large_string(column.type)
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32)[column.offset : column.offset + len(column) + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    raw = memoryview(data)[first:last]
    # A copy and a memchr per byte sought, at memory speed (gigabytes a second).
    text = raw.tobytes()
    if b"\n" not in text and b"\r" not in text:
        return None
    values = np.frombuffer(text, dtype=np.uint8)
    at = np.flatnonzero((values == 10) | (values == 13)) + first
    rows = np.zeros(len(column), dtype=bool)
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
    ``RecordBatch``: field 2 lists the body's buffers (offset, length), field 3
    is present when the buffers are compressed; a compressed buffer starts
    with its uncompressed length (int64, -1 for "stored uncompressed").
    """
    meta = message.metadata.to_pybytes()
    body = message.body
    try:
        root = _fb_table(meta, _u32(meta, 0))
        if _fb_scalar(meta, root, 1, "<B", 0) != 3:  # header_type: RecordBatch
            raise DecodeError("invalid Arrow batch (a record batch message without a record batch header)")
        at_header = _fb_indirect(meta, root, 2)
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


# A minimal flatbuffer reader, for the few fields of the Arrow message header
# read above; every offset is checked against the buffer (struct.error if outside).
def _u32(buf: bytes, at: int) -> int:
    return struct.unpack_from("<I", buf, at)[0]


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
    return EventColumns(d["id"], d["timestamp"], d["source"], d["tags"], d["content"])


def iter_batch_events(batch: pa.RecordBatch | pa.Table) -> Iterator[Event]:
    """The events of a batch as :class:`Event` objects (tags split from their comma text)."""
    d = batch.to_pydict()
    for i, t, s, g, c in zip(d["id"], d["timestamp"], d["source"], d["tags"], d["content"]):
        yield Event(i, t, s, split_tags(g), c)


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
    ids, ts, sources, tags, content = (batch.column(i).cast(pa.large_string()) if i != 1 else batch.column(1) for i in range(5))
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
