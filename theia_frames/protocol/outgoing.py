"""What to send for events, without I/O: checked Arrow batches or plain messages.

Both clients send through these: :func:`arrow_pieces` cuts Arrow data into
checked batches of at most ``size`` rows and :data:`SEND_BATCH_BYTES` of
message (each batch's source dictionary holds only the sources its rows use:
a table of a million distinct sources is not sent whole with every batch),
:func:`event_messages` turns a chunk of
:class:`~theia_frames.event.Event` objects into the messages to send on a
connection that did or did not negotiate the extension. Events the wire
format cannot carry raise :class:`~theia_frames.exceptions.InvalidEventError`
before their chunk is sent.

>>> from theia_frames.event import Event
>>> msgs = list(event_messages([Event("a", 1.0, "/s", [], "x")], negotiated=False))
>>> [(len(payloads), n, payloads[0][:6]) for payloads, n in msgs]
[(1, 1, b'event:')]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .arrow import as_event_data, batch_to_ipc, decoded_event_sizes, event_schema, outside_event_times, tag_lists, uncarried_rows
from .codec import encode
from ..event import Event
from ..exceptions import InvalidEventError, UsageError
from ..timeparse import event_time_problem
from .arrow import iter_batch_events

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "SEND_BATCH_BYTES",
    "ROW_OVERHEAD",
    "TAG_OVERHEAD",
    "ARROW_MIN",
    "arrow_pieces",
    "used_sources",
    "message_bytes",
    "event_messages",
    "batch_messages",
    "event_batches",
    "checked_event_batch",
    "invalid_row",
    "arrow_chunks",
]

#: the most bytes of events per Arrow message sent (their text, offsets and
#: timestamps): half the collector's default message limit (16 MiB), so that
#: a message of one batch is always well under it
SEND_BATCH_BYTES = 8 * 1024 * 1024
#: the bytes an event takes in an Arrow message besides its text and timestamp
#: (the offsets of id, content and tag list, the source index and the offset
#: of its dictionary entry), and per tag
ROW_OVERHEAD = 20
TAG_OVERHEAD = 4
#: fewer events than this go out as plain messages even with the extension
ARROW_MIN = 32


def batch_messages(batch: pa.RecordBatch, negotiated: bool) -> list[bytes]:
    """The messages that carry ``batch``: one Arrow message, or a plain message per event."""
    if negotiated:
        return [batch_to_ipc(batch)]
    return [encode(e) for e in iter_batch_events(batch)]


def event_messages(chunk: Sequence[Event], negotiated: bool) -> Iterator[tuple[list[bytes], int]]:
    """The messages that carry ``chunk`` (Events), with how many events each group holds."""
    if negotiated and len(chunk) >= ARROW_MIN:
        for batch in event_batches(list(chunk), SEND_BATCH_BYTES):
            yield [batch_to_ipc(batch)], batch.num_rows
        return
    payloads = []
    for e in chunk:
        if not isinstance(e, Event):
            raise InvalidEventError(f"send_many() expects Events, got {type(e).__name__}")
        payloads.append(encode(e))
    yield payloads, len(chunk)


def arrow_pieces(data: Any, size: int) -> Iterator[pa.RecordBatch]:
    """Arrow data with the event schema as checked batches of at most ``size`` rows
    and at most :data:`SEND_BATCH_BYTES` of events (one row at least, however
    large), each with only the sources it uses in its dictionary.

    >>> import pyarrow as pa
    >>> table = pa.table({"id": ["a", "b", "c"], "timestamp": [1.0, 2.0, 3.0],
    ...                   "source": pa.array(["/s1", "/s2", "/s3"]).dictionary_encode(),
    ...                   "tags": [[], [], []], "content": ["x", "y", "z"]}, schema=event_schema())
    >>> [piece.column("source").dictionary.to_pylist() for piece in arrow_pieces(table, 2)]
    [['/s1', '/s2'], ['/s3']]
    """
    import numpy as np

    for chunk in arrow_chunks(data, size):
        if chunk.nbytes + ROW_OVERHEAD * chunk.num_rows <= SEND_BATCH_BYTES:
            yield chunk
            continue
        # the bytes before each row (every row adds some: the sums rise strictly)
        before = np.concatenate([[0], np.cumsum(message_bytes(chunk))])
        # pieces of about equal size, rather than full ones and a small rest
        pieces = -(-int(before[-1]) // SEND_BATCH_BYTES)
        target = min(SEND_BATCH_BYTES, -(-int(before[-1]) // pieces))
        begin, rows = 0, chunk.num_rows
        while begin < rows:
            # the most rows from ``begin`` whose bytes add up to ``target`` at most (one at least)
            end = max(begin + 1, int(np.searchsorted(before, before[begin] + target, side="right")) - 1)
            yield used_sources(chunk.slice(begin, end - begin))
            begin = end


def message_bytes(batch: pa.RecordBatch) -> Any:
    """At most the bytes each event of ``batch`` adds to an Arrow message (its source
    counted whole for every row), as a numpy int64 array."""
    import numpy as np

    tags = batch.column(3)
    counts = np.diff(np.asarray(tags.offsets.to_numpy(), dtype=np.int64))
    return decoded_event_sizes(batch) + ROW_OVERHEAD + TAG_OVERHEAD * counts


def used_sources(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with a source dictionary of only the entries its rows use (``batch``
    itself when it uses them all): a slice of a table keeps the table's whole
    dictionary, which an Arrow message would carry in full."""
    import pyarrow as pa
    import pyarrow.compute as pc

    source = batch.column(2)
    dictionary = source.dictionary
    if len(dictionary) <= 1:
        return batch
    used = pc.unique(source.indices)
    if len(used) == len(dictionary):
        return batch
    indices = pc.index_in(source.indices, value_set=used).cast(source.indices.type)
    compact = pa.DictionaryArray.from_arrays(indices, dictionary.take(used))
    return batch.set_column(2, batch.schema.field(2), compact)


def event_batches(events: list[Event], max_bytes: int) -> Iterator[pa.RecordBatch]:
    """Events as checked record batches of at most about ``max_bytes`` of text each."""
    start = 0
    size = 0
    for i, e in enumerate(events):
        try:
            c = e.content
            size += len(c) if c.isascii() else len(c.encode("utf-8", "replace"))
        except (AttributeError, TypeError):
            pass
        if size >= max_bytes and i + 1 > start:
            yield checked_event_batch(events[start : i + 1])
            start, size = i + 1, 0
    if start < len(events):
        yield checked_event_batch(events[start:])


def first_invalid(events: Sequence[Any]) -> InvalidEventError:
    for e in events:
        if not isinstance(e, Event):
            return InvalidEventError(f"send_many() expects Events, got {type(e).__name__}")
        try:
            encode(e)
        except InvalidEventError as exc:
            return exc
    return InvalidEventError("an event the wire format cannot carry")


def checked_event_batch(events: Sequence[Event]) -> pa.RecordBatch:
    """Events as one batch, refusing what :func:`~theia_frames.protocol.codec.encode` would refuse."""
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401 - makes pyarrow.compute an attribute

    try:
        lists = [e.tags for e in events]
        tags = [",".join(t) for t in lists]
        # a tag holding a comma would come back as two tags
        if sum(t.count(",") for t in tags) != sum(len(t) - 1 for t in lists if t):
            raise first_invalid(events)
        arrays = [
            pa.array([e.id for e in events], pa.string()),
            pa.array([float(e.timestamp) for e in events], pa.float64()),
            pa.compute.dictionary_encode(pa.array([e.source for e in events], pa.string())),
            tag_lists(pa.array(tags, pa.string())),
            pa.array([e.content for e in events], pa.string()),
        ]
    except InvalidEventError:
        raise
    except (AttributeError, TypeError, ValueError, UnicodeError, pa.ArrowException):
        raise first_invalid(events) from None
    batch = pa.RecordBatch.from_arrays(arrays, schema=event_schema())
    if invalid_row(batch) is not None:
        raise first_invalid(events)
    return batch


def invalid_row(batch: pa.RecordBatch) -> int | None:
    """The first row the wire format cannot carry (line break in id, source or
    tags; a missing value; a timestamp that is no event time), or None: the first of
    :func:`~theia_frames.protocol.arrow.uncarried_rows`."""
    bad = uncarried_rows(batch)
    if bad is None:
        return None
    return int(bad.argmax())


def arrow_chunks(data: Any, size: int) -> Iterator[pa.RecordBatch]:
    try:
        data = as_event_data(data)
    except UsageError as exc:
        raise InvalidEventError(f"Arrow data to send: {exc}") from None
    batches = data.to_batches(max_chunksize=size) if hasattr(data, "to_batches") else [data]
    for batch in batches:
        for offset in range(0, batch.num_rows, size):
            # checked with only its own sources: not a scan of the whole table's per chunk
            chunk = used_sources(batch.slice(offset, size))
            times = outside_event_times(chunk.column(1)) if chunk.num_rows else None
            if times is not None and (value := chunk.column(1)[int(times.argmax())].as_py()) is not None:
                at = int(times.argmax())
                raise InvalidEventError(
                    f"row {offset + at} of the Arrow data cannot be sent: event {chunk.column(0)[at].as_py()!r}: "
                    f"{event_time_problem(value)}"
                )
            row = invalid_row(chunk)
            if row is not None:
                values = {k: v[0] for k, v in chunk.slice(row, 1).to_pydict().items()}
                raise InvalidEventError(
                    f"row {offset + row} of the Arrow data cannot be sent: "
                    "a line break in id, source or a tag, a comma in a tag, or a missing value: "
                    f"{ {k: (v[:40] if isinstance(v, str) else v) for k, v in values.items()} }"
                )
            yield chunk
