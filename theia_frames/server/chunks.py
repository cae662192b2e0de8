"""The event store's chunks: Arrow record batches sorted by (timestamp, arrival), written as
compressed Arrow IPC with the size they decode to (checked against their own headers before
anything is decompressed), cut into pieces and tiers for merging; and what a store error means.

Every stored event has an *arrival number*, given by the store in the order events reached it
(within one batch, the order given): events of equal timestamps are kept and returned in that
order. A chunk's arrival numbers are stored beside its Arrow data, not in it (the data goes out
to a reader as stored), as runs of numbers that follow each other (:func:`encode_arrivals`):
a chunk written in one go costs 17 bytes, however many events it holds.

A chunk of the final tier (format 8 on) is stored in parts (:func:`insert_chunk`): the
stream's message headers in ``chunks.data`` and each column's buffers in a row of
``chunk_columns`` of their own, each part with its length and CRC-32 (``chunks.parts``, behind a CRC-32 of its own), so a
reader of some columns reads and checks theirs alone (:func:`read_columns`). The parts joined
are the stream as it was written (:func:`read_stream`).

Every chunk has a checksum (:func:`chunk_checksum`: CRC-32 of its Arrow data, its arrival
numbers, its index entries and its summary, :mod:`theia_frames.server.summaries`) kept beside it and checked each time the chunk is read, before
anything is decoded (:func:`checked_blob`): damaged stored bytes are reported as damage,
naming the chunk's time range and how many events it held, and never reach a decoder.
"""

from __future__ import annotations

import builtins
import datetime
import os
import sqlite3
import struct
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..protocol.arrow import as_event_data, column_cuts, empty_batch, event_schema, ipc_to_batches, missing_values, validate_events
from ..exceptions import DecodeError, StoreError, UsageError


__all__ = [
    "MEMORY",
    "CHUNK_ROWS",
    "MERGE_FANOUT",
    "COMPRESSION",
    "CHUNK_BYTES",
    "FINAL_ROWS",
    "FINAL_BYTES",
    "FINAL_TIER",
    "FIELDS",
    "translate_error",
    "why_unopenable",
    "event_batch",
    "Blob",
    "chunk_checksum",
    "checked_blob",
    "damaged_chunk",
    "from_ipc",
    "whole",
    "insert_chunk",
    "read_stream",
    "read_columns",
    "parts_problem",
    "PART_KEYS",
    "encode_arrivals",
    "decode_arrivals",
    "arrival_order",
    "sort_order",
    "first_of_equal",
    "identity_micros",
    "IDENTITY_MARGIN",
    "same_content",
    "sort_keys",
    "piece_spans",
    "tier",
]


MEMORY = ":memory:"


#: Most events in one stored chunk.
CHUNK_ROWS = 65_536


#: Chunks of one tier that are merged into one chunk of a higher tier.
MERGE_FANOUT = 8


# Stored chunks' buffers are compressed with this (pyarrow's IPC compression).
COMPRESSION = "zstd"


# Most bytes of Arrow data in one chunk (a chunk holds one event at least).
CHUNK_BYTES = 32 * 1024 * 1024


# A chunk this large (rows or bytes) is never merged again. Small enough that
# the largest merge (8 chunks just below it) takes tens of milliseconds: the
# collector's writer merges between commits, so a merge delays the next commit.
FINAL_ROWS = 4_096


FINAL_BYTES = 1024 * 1024


FINAL_TIER = 15


FIELDS = ("id", "timestamp", "source", "tags", "content")


def translate_error(action: str, path: str, exc: Exception) -> StoreError:
    why = why_unopenable(path) if action == "open" else None
    return StoreError(f"cannot {action} the event store {path!r}: {why or exc}")


def why_unopenable(path: str) -> str | None:
    """What is wrong with ``path`` as the file of a store, in words, when it can be told."""
    if path in (MEMORY, ""):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "it is a folder, not a file (give the path of a database file inside it, e.g. events.db)"
    if not os.path.isdir(folder):
        return f"its folder {folder!r} does not exist (create it first)"
    if not os.path.exists(path) and not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder!r} is read-only for this user, so the file cannot be created"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "the file is read-only for this user"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"the file cannot be read ({exc.strerror or exc})"
    if head and head != b"SQLite format 3\x00":
        return "the file is not an event store (not an SQLite database)"
    return None


def event_batch(data: Any, validated: bool = False) -> pa.RecordBatch:
    """``data`` (RecordBatch or Table) as one RecordBatch of the event schema; UsageError if it is not one."""
    names = list(data.schema.names)
    if names != list(FIELDS):
        raise UsageError(f"Arrow data to store needs the columns {', '.join(FIELDS)}; got {', '.join(names)}")
    for name in FIELDS:
        if missing_values(data.column(name)):
            raise UsageError(f"Arrow data to store has missing values in column {name!r}")
    schema = event_schema()
    try:
        data = as_event_data(data)
    except UsageError as exc:
        raise UsageError(f"Arrow data to store cannot be read with the event schema: {exc}") from None
    if isinstance(data, pa.Table):
        batches = data.to_batches()
        if not batches:
            return pa.RecordBatch.from_pylist([], schema=schema)
        data = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
    try:
        # A pass over the bytes, and what is stored is read by every kernel
        # that serves it: offsets past the data or text that is not UTF-8 stay out.
        if validated:
            data.validate()
        else:
            validate_events(data)
    except pa.ArrowInvalid as exc:
        raise UsageError(f"Arrow data to store is not valid: {exc}") from exc
    return data


class Blob(NamedTuple):
    """A stored chunk as read: its number, its Arrow IPC stream, the bytes it decodes to, and
    its events' arrival numbers (:func:`encode_arrivals`)."""

    seq: int
    data: builtins.bytes
    bytes: int
    arrivals: builtins.bytes = b""


def chunk_checksum(
    data: builtins.bytes, nbytes: int, arrivals: builtins.bytes, min_ts: float, max_ts: float, rows: int,
    summary: builtins.bytes | None = None,
) -> int:
    """The checksum of a stored chunk: CRC-32 of its Arrow data, its arrival numbers, its
    index entries (first and last timestamp, events, decoded bytes) and its summary (None:
    it has none; the checksum is then the one of a chunk stored before summaries were kept),
    so a changed byte in any of them is seen. About 3 GB/s: a few milliseconds for a million
    events' chunks.

    >>> chunk_checksum(b"data", 4, b"R", 1.0, 2.0, 1) == chunk_checksum(b"dbta", 4, b"R", 1.0, 2.0, 1)
    False
    >>> chunk_checksum(b"data", 4, b"R", 1.0, 2.0, 1) == chunk_checksum(b"data", 4, b"R", 1.0, 2.0, 1, b"S")
    False
    """
    crc = zlib.crc32(data)
    crc = zlib.crc32(arrivals, crc)
    # + 0.0 makes -0.0 into 0.0: SQLite stores a REAL -0.0 as 0.0, so the index reads back 0.0
    crc = zlib.crc32(struct.pack("<ddqq", min_ts + 0.0, max_ts + 0.0, rows, nbytes), crc)
    return zlib.crc32(summary or b"", crc)


def _time_text(seconds: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return repr(seconds)


def damaged_chunk(seq: int, min_ts: float, max_ts: float, rows: int, why: str) -> StoreError:
    """The error of a damaged chunk: its time range and how many events it held.

    >>> print(damaged_chunk(3, 0.0, 1.5, 10, "its checksum does not match"))
    chunk 3 of the event store is damaged (its checksum does not match): it held 10 events from 1970-01-01T00:00:00Z to 1970-01-01T00:00:01.500000Z (timestamps 0.0 to 1.5), which are not served
    """
    return StoreError(
        f"chunk {seq} of the event store is damaged ({why}): it held {rows} events from "
        f"{_time_text(min_ts)} to {_time_text(max_ts)} (timestamps {min_ts!r} to {max_ts!r}), which are not served"
    )


def checked_blob(
    seq: int, data: builtins.bytes, nbytes: int, arrivals: builtins.bytes, min_ts: float, max_ts: float, rows: int,
    checksum: int, summary: builtins.bytes | None = None,
) -> Blob:
    """A stored chunk as read, once its checksum matches; StoreError (:func:`damaged_chunk`) when not."""
    if chunk_checksum(data, nbytes, arrivals, min_ts, max_ts, rows, summary) != checksum:
        raise damaged_chunk(seq, min_ts, max_ts, rows, "its checksum does not match")
    return Blob(seq, data, nbytes, arrivals)


def from_ipc(blob: Blob, fields: Sequence[str] | None = None, threads: bool = True) -> pa.RecordBatch:
    """The events of a stored chunk (only the columns ``fields``, when given: the others
    are not decompressed); StoreError when it is damaged or would decode to more than
    it did when it was stored (checked before decompressing). ``threads``: as
    :func:`~theia_frames.protocol.arrow.ipc_to_batches`."""
    return _decoded(blob.seq, blob.data, blob.bytes, fields, threads)


def _decoded(
    seq: int, data: builtins.bytes | memoryview, nbytes: int, fields: Sequence[str] | None, threads: bool = True
) -> pa.RecordBatch:
    try:
        # Validated in full when stored: the structure is what a damaged file could break.
        batches = ipc_to_batches(data, max_decoded=nbytes, full=False, fields=fields, threads=threads)
    except DecodeError as exc:
        raise StoreError(f"chunk {seq} of the event store is damaged: {exc}") from None
    if len(batches) == 1:
        return batches[0]
    if not batches:
        empty = empty_batch()
        return empty if fields is None else empty.select(list(fields))
    return pa.concat_batches(batches)


#: A chunk's column part i (FIELDS order) is row ``seq * PART_KEYS + i`` of chunk_columns.
PART_KEYS = 8


def insert_chunk(
    db: sqlite3.Connection, *, tier: int, min_ts: float, max_ts: float, rows: int, data: builtins.bytes, nbytes: int,
    arrivals: builtins.bytes, last_arrival: int, summary: builtins.bytes | None, parts: bool,
) -> int:
    """Store a chunk (its Arrow stream ``data`` and index entries); returns its number.

    With ``parts`` (a chunk of the final tier), the stream is stored cut by column
    (:func:`~theia_frames.protocol.arrow.column_cuts`): its headers in ``chunks.data``, each
    column's buffers in a row of ``chunk_columns``, and every part's length and CRC-32 in
    ``chunks.parts``; else (or when the stream cannot be cut) whole in ``chunks.data``. The
    chunk's checksum is the one of the whole stream either way."""
    checksum = chunk_checksum(data, nbytes, arrivals, min_ts, max_ts, rows, summary)
    cuts = column_cuts(data) if parts else None
    pieces = [data] if cuts is None else [data[a:b] for a, b in zip(cuts, cuts[1:])]
    layout = None if cuts is None else _pack_parts(pieces)
    cursor = db.execute(
        "INSERT INTO chunks (tier, min_ts, max_ts, rows, data, bytes, arrivals, last_arrival, checksum, parts) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (tier, min_ts, max_ts, rows, pieces[0], nbytes, arrivals, last_arrival, checksum, layout),
    )
    seq = int(cursor.lastrowid or 0)
    if len(pieces) > 1:
        db.executemany(
            "INSERT INTO chunk_columns (key, data) VALUES (?, ?)",
            [(seq * PART_KEYS + i, piece) for i, piece in enumerate(pieces[1:])],
        )
    if summary is not None:
        db.execute("INSERT INTO summaries (seq, summary) VALUES (?, ?)", (seq, summary))
    return seq


def _pack_parts(pieces: Sequence[builtins.bytes]) -> builtins.bytes:
    """``chunks.parts``: each part's length and CRC-32, headers first, then a CRC-32 of these
    (a damaged length would move the parts read after it)."""
    packed = struct.pack(f"<{2 * len(pieces)}I", *(v for piece in pieces for v in (len(piece), zlib.crc32(piece))))
    return packed + struct.pack("<I", zlib.crc32(packed))


def _unpack_parts(layout: builtins.bytes) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The lengths and CRC-32s of ``chunks.parts``; None when it does not match its own CRC-32."""
    packed, tail = layout[:-4], layout[-4:]
    if len(layout) % 8 != 4 or struct.unpack("<I", tail)[0] != zlib.crc32(packed):
        return None
    values = struct.unpack(f"<{len(packed) // 4}I", packed)
    return values[0::2], values[1::2]


def read_stream(db: sqlite3.Connection, seq: int, head: builtins.bytes, parts: builtins.bytes | None) -> builtins.bytes:
    """The whole Arrow stream of chunk ``seq`` whose ``chunks.data`` is ``head`` and
    ``chunks.parts`` is ``parts``: its parts joined (unchecked: the chunk's checksum is)."""
    if parts is None:
        return head
    pieces = db.execute(
        "SELECT data FROM chunk_columns WHERE key >= ? AND key < ? ORDER BY key",
        (seq * PART_KEYS, (seq + 1) * PART_KEYS),
    ).fetchall()
    return b"".join([head, *(row[0] for row in pieces)])


def read_columns(db: sqlite3.Connection, seq: int, fields: Sequence[str], threads: bool = True) -> pa.RecordBatch | None:
    """The events of chunk ``seq`` in the columns ``fields`` alone, read from its headers and
    those columns' parts (each checked against its length and CRC-32 first; the other
    columns are neither read nor decoded). None when the chunk is stored whole (read it
    with its checksum). StoreError (:func:`damaged_chunk`) when a part read does not match.
    ``threads``: as :func:`~theia_frames.protocol.arrow.ipc_to_batches`."""
    row = db.execute("SELECT data, parts, bytes, min_ts, max_ts, rows FROM chunks WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        raise StoreError(f"chunk {seq} is missing from the event store")
    head, layout, nbytes, min_ts, max_ts, rows = row
    if layout is None:
        return None
    wanted = sorted({FIELDS.index(name) for name in fields})
    found = dict(
        db.execute(
            f"SELECT key - ?, data FROM chunk_columns WHERE key IN ({','.join('?' * len(wanted))})",
            (seq * PART_KEYS, *(seq * PART_KEYS + i for i in wanted)),
        ).fetchall()
    )
    pieces = {0: head, **{i + 1: found.get(i) for i in wanted}}
    lengths = _checked_parts(layout, pieces)
    if isinstance(lengths, str):
        raise damaged_chunk(seq, min_ts, max_ts, rows, lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    # zeros (pages the system gives zeroed when first touched) where the other columns were:
    # only the columns ``fields`` are decoded
    view = np.zeros(starts[-1], dtype=np.uint8).data
    for part, data in pieces.items():
        view[starts[part] : starts[part + 1]] = data
    return _decoded(seq, view, nbytes, fields, threads)


def parts_problem(db: sqlite3.Connection, seq: int, head: builtins.bytes, layout: builtins.bytes) -> str | None:
    """What is wrong with the parts of chunk ``seq`` stored in parts (``chunks.data`` ``head``,
    ``chunks.parts`` ``layout``), in words; None when every part matches its length and CRC-32."""
    rows = db.execute(
        "SELECT key - ?, data FROM chunk_columns WHERE key >= ? AND key < ?",
        (seq * PART_KEYS, seq * PART_KEYS, (seq + 1) * PART_KEYS),
    ).fetchall()
    why = _checked_parts(layout, {0: head, **{key + 1: data for key, data in rows}}, whole=True)
    return why if isinstance(why, str) else None


def _checked_parts(
    layout: builtins.bytes, pieces: dict[int, builtins.bytes | None], whole: bool = False
) -> tuple[int, ...] | str:
    """Every part's length when ``pieces`` (part number: bytes; 0 the headers) match
    ``chunks.parts`` (with ``whole``: and are all of them); else what is wrong, in words."""
    unpacked = _unpack_parts(layout)
    if unpacked is None or len(unpacked[0]) != len(FIELDS) + 1:
        return "its list of parts is damaged"
    lengths, crcs = unpacked
    if whole and sorted(pieces) != list(range(len(lengths))):
        return "a part of it is missing"
    for part, data in pieces.items():
        if data is None or part >= len(lengths):
            return "a part of it is missing"
        if len(data) != lengths[part] or zlib.crc32(data) != crcs[part]:
            return "its checksum does not match"
    return lengths


def whole(piece: pa.RecordBatch, blob: Blob | None) -> pa.RecordBatch:
    """A piece of a query with all its columns: a chunk that matched whole may come with
    only the columns its matching needed, and its stored blob, the rest."""
    if blob is None or piece.num_columns == len(FIELDS):
        return piece
    return from_ipc(blob)


def encode_arrivals(arrivals: np.ndarray) -> bytes:
    """A chunk's arrival numbers (int64, in its row order) as stored: runs of numbers that
    follow each other, as pairs (the run's first number less the one before's, its length),
    compressed when they are many.
    A chunk written in one go is one run (17 bytes, however many events it holds).

    >>> import numpy as np
    >>> data = encode_arrivals(np.arange(5, 65_541))
    >>> len(data), decode_arrivals(data, 65_536, seq=1)[[0, -1]].tolist()
    (17, [5, 65540])
    >>> decode_arrivals(encode_arrivals(np.array([7, 3, 4, 5, 1])), 5, seq=1).tolist()
    [7, 3, 4, 5, 1]
    """
    numbers = np.asarray(arrivals, dtype=np.int64)
    starts = np.flatnonzero(np.diff(numbers) != 1) + 1
    starts = np.concatenate([np.zeros(1, dtype=np.int64), starts])
    lengths = np.diff(np.append(starts, len(numbers)))
    firsts = np.diff(numbers[starts], prepend=np.int64(0))  # interleaved runs repeat their steps
    pairs = np.stack([firsts, lengths], axis=1).astype("<i8").tobytes()
    if len(pairs) <= _RAW_RUNS_BYTES:
        return b"R" + pairs
    packed = pa.compress(pairs, codec=COMPRESSION, asbytes=True)
    return b"Z" + len(pairs).to_bytes(8, "little") + bytes(packed)


# Runs stored as they are up to this many bytes (16 per run), compressed beyond.
_RAW_RUNS_BYTES = 256


def decode_arrivals(data: bytes, rows: int, seq: int) -> np.ndarray:
    """The ``rows`` arrival numbers of chunk ``seq`` (:func:`encode_arrivals`); StoreError when
    they are damaged (checked before anything is decompressed: at most one run per row)."""

    def damaged(why: str) -> StoreError:
        return StoreError(f"the arrival numbers of chunk {seq} of the event store are damaged: {why}")

    kind, body = data[:1], data[1:]
    if kind == b"Z":
        size = int.from_bytes(body[:8], "little")
        if size > 16 * rows or size % 16:
            raise damaged(f"{size} bytes of runs for {rows} events")
        try:
            body = pa.decompress(body[8:], decompressed_size=size, codec=COMPRESSION, asbytes=True)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise damaged(str(exc)) from None
    elif kind != b"R":
        raise damaged("not a known layout")
    if len(body) % 16 or len(body) > 16 * rows:
        raise damaged(f"{len(body)} bytes of runs for {rows} events")
    pairs = np.frombuffer(body, dtype="<i8").reshape(-1, 2)
    firsts, lengths = np.cumsum(pairs[:, 0]), pairs[:, 1]
    if (lengths < 1).any() or int(lengths.sum()) != rows:
        raise damaged(f"runs of {int(lengths.sum())} numbers for {rows} events")
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(firsts - offsets, lengths) + np.arange(rows, dtype=np.int64)


def arrival_order(ts: np.ndarray, arrivals: np.ndarray, desc: bool = False) -> np.ndarray:
    """The permutation putting events in the store's order: by timestamp, then arrival
    (arrival numbers are unique, so ``desc`` is the exact reverse of ascending).

    >>> import numpy as np
    >>> arrival_order(np.array([2.0, 1.0, 2.0]), np.array([1, 9, 0])).tolist()
    [1, 2, 0]
    """
    order = np.lexsort((arrivals, ts))
    return order[::-1] if desc else order


def sort_order(ts: np.ndarray) -> np.ndarray | None:
    """The stable permutation sorting events by timestamp (events of equal timestamps keep
    their order); None when they are sorted already.

    >>> import numpy as np
    >>> sort_order(np.array([2.0, 1.0, 2.0, 1.0])).tolist(), sort_order(np.array([1.0, 1.0]))
    ([1, 3, 0, 2], None)
    """
    if len(ts) < 2 or bool((ts[1:] >= ts[:-1]).all()):
        return None
    return np.argsort(ts, kind="stable")


def identity_micros(ts: np.ndarray) -> np.ndarray:
    """The microsecond of each event time, the timestamp an event's identity holds
    (``seconds * 1e6`` rounded half to even: :func:`~theia_frames.timeparse.frame_micros`,
    for columns), so the Go dialect's six decimals and the full float of the Arrow one
    name the same event.

    >>> import numpy as np
    >>> identity_micros(np.array([1714521600.0000004, 1714521600.0, 2.5e-6])).tolist()
    [1714521600000000, 1714521600000000, 2]
    """
    return np.rint(np.asarray(ts, dtype=np.float64) * 1e6).astype(np.int64)


#: Seconds around a batch's first and last event time within which a stored event may
#: share an event's microsecond (half a microsecond, and a float's spacing at 2262).
IDENTITY_MARGIN = 4e-6


def first_of_equal(
    srt: pa.RecordBatch, sts: np.ndarray, given: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """In events sorted by timestamp, all but the first of equal identity (:func:`sort_keys`)
    turned off: ``(keep, first)``, ``first[i]`` the row whose copy row ``i`` is (itself when
    kept); None if none repeat. The first in the order the events were given is kept:
    ``given[i]`` is row ``i``'s place in that order (None: the sorted order is it). Copies
    of one identity may differ in time by less than a microsecond, so sorting by time
    alone may have put a later one first."""
    micros = identity_micros(sts)
    ties = np.nonzero(micros[1:] == micros[:-1])[0]
    if not len(ties):
        return None
    # only rows sharing a microsecond with a neighbour can repeat: their keys, sorted stably
    rows = np.union1d(ties, ties + 1)
    keys = sort_keys(sts[rows], srt.column(0).take(rows))
    order = pc.sort_indices(keys).to_numpy()
    ranked = keys.take(order)
    same = pc.equal(ranked.slice(1), ranked.slice(0, len(ranked) - 1)).to_numpy(zero_copy_only=False)
    if not same.any():
        return None
    starts = np.concatenate([[True], ~same])
    # within each run of equal keys, the rows in the order given
    places = rows[order] if given is None else given[rows[order]]
    order = order[np.lexsort((places, np.cumsum(starts)))]
    keep = np.ones(len(sts), dtype=bool)
    keep[rows[order[1:][same]]] = False
    # each ranked position's run start: the row kept for it
    run_start = np.maximum.accumulate(np.where(starts, np.arange(len(ranked)), 0))
    first = np.arange(len(sts))
    first[rows[order]] = rows[order[run_start]]
    return keep, first


def sort_keys(ts: np.ndarray, ids: pa.Array) -> pa.Array:
    """One binary key per event, its identity: the microsecond of its timestamp
    (:func:`identity_micros`, 8 bytes), then its id."""
    raw = np.ascontiguousarray(identity_micros(ts).astype(">i8")).view(np.uint8)
    stamps = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), len(ts), [None, pa.py_buffer(raw)])
    return pc.binary_join_element_wise(stamps.cast(pa.binary()), ids.cast(pa.binary()), b"")


def same_content(a: pa.RecordBatch, b: pa.RecordBatch) -> np.ndarray:
    """Whether each row of ``a`` has the source, tags and content of the same row of ``b``
    (two copies of one identity: an exact repeat, or a copy with other content)."""

    def text(column: Any) -> Any:
        return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column

    def equal(x: Any, y: Any) -> Any:
        return np.asarray(pc.fill_null(pc.equal(x, y), False).to_numpy(zero_copy_only=False), dtype=bool)

    source = equal(text(a.column(2)), text(b.column(2)))
    content = equal(a.column(4), b.column(4))
    tags_a, tags_b = a.column(3), b.column(3)
    lengths = equal(pc.list_value_length(tags_a), pc.list_value_length(tags_b))
    # tags hold no commas (the event schema's rule): joined at commas, equal lists are equal texts
    joined = equal(pc.binary_join(tags_a, ","), pc.binary_join(tags_b, ","))
    same: np.ndarray = source & content & lengths & joined
    return same


def piece_spans(rows: int, nbytes: int) -> list[tuple[int, int]]:
    """Row ranges splitting ``rows`` events (``nbytes`` of data) into chunks of about equal size."""
    count = max(1, -(-rows // CHUNK_ROWS), -(-nbytes // CHUNK_BYTES))
    count = min(count, rows)
    size = -(-rows // count)
    return [(at, min(at + size, rows)) for at in range(0, rows, size)]


def tier(rows: int, nbytes: int) -> int:
    """The merge tier of a chunk: 0 for fewer than 8 events, +1 per factor 8; final when large."""
    if rows >= FINAL_ROWS or nbytes >= FINAL_BYTES:
        return FINAL_TIER
    tier = 0
    while rows >= MERGE_FANOUT ** (tier + 1):
        tier += 1
    return tier
