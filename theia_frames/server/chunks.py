"""The event store's chunks: Arrow record batches sorted by (timestamp, id), written as
compressed Arrow IPC with the size they decode to (checked against their own headers before
anything is decompressed), cut into pieces and tiers for merging; and what a store error means.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..protocol.arrow import as_event_data, empty_batch, event_schema, ipc_to_batches, missing_values, validate_events
from ..exceptions import DecodeError, StoreError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

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
    "numpy_module",
    "pyarrow_module",
    "event_batch",
    "Blob",
    "from_ipc",
    "whole",
    "sort_indices",
    "sort_order",
    "first_of_equal",
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


def numpy_module() -> Any:
    import numpy

    return numpy


def pyarrow_module() -> Any:
    import pyarrow
    import pyarrow.compute  # noqa: F401 - makes pyarrow.compute an attribute

    return pyarrow


def event_batch(data: Any, validated: bool = False) -> pa.RecordBatch:
    """``data`` (RecordBatch or Table) as one RecordBatch of the event schema; UsageError if it is not one."""
    pa = pyarrow_module()
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
    """A stored chunk as read: its number, its Arrow IPC stream, the bytes it decodes to."""

    seq: int
    data: bytes
    bytes: int


def from_ipc(blob: Blob, fields: Sequence[str] | None = None) -> pa.RecordBatch:
    """The events of a stored chunk (only the columns ``fields``, when given: the others
    are not decompressed); StoreError when it is damaged or would decode to more than
    it did when it was stored (checked before decompressing)."""
    pa = pyarrow_module()
    try:
        # Validated in full when stored: the structure is what a damaged file could break.
        batches = ipc_to_batches(blob.data, max_decoded=blob.bytes, full=False, fields=fields)
    except DecodeError as exc:
        raise StoreError(f"chunk {blob.seq} of the event store is damaged: {exc}") from None
    if len(batches) == 1:
        return batches[0]
    if not batches:
        empty = empty_batch()
        return empty if fields is None else empty.select(list(fields))
    return pa.concat_batches(batches)


def whole(piece: pa.RecordBatch, blob: Blob | None) -> pa.RecordBatch:
    """A piece of a query with all its columns: a chunk that matched whole may come with
    only the columns its matching needed, and its stored blob, the rest."""
    if blob is None or piece.num_columns == len(FIELDS):
        return piece
    return from_ipc(blob)


def sort_indices(batch: pa.RecordBatch, desc: bool = False) -> pa.Array:
    order = "descending" if desc else "ascending"
    return pyarrow_module().compute.sort_indices(batch, sort_keys=[("timestamp", order), ("id", order)])


def sort_order(batch: pa.RecordBatch, ts: np.ndarray) -> np.ndarray | None:
    """The permutation sorting ``batch`` by (timestamp, id), stably; None when it is sorted already."""
    np = numpy_module()
    if len(ts) < 2:
        return None
    step = ts[1:] >= ts[:-1]
    if step.all():
        ties = np.nonzero(ts[1:] == ts[:-1])[0]
        if not len(ties):
            return None
        ids = batch.column(0)
        pc = pyarrow_module().compute
        before = ids.take(ties)
        after = ids.take(ties + 1)
        if pc.all(pc.less_equal(before, after)).as_py():
            return None
    return sort_indices(batch).to_numpy()


def first_of_equal(srt: pa.RecordBatch, sts: np.ndarray) -> np.ndarray | None:
    """In sorted events, all but the first of equal (timestamp, id) turned off; None if none repeat."""
    np = numpy_module()
    ties = np.nonzero(sts[1:] == sts[:-1])[0]
    if not len(ties):
        return None
    pc = pyarrow_module().compute
    ids = srt.column(0)
    same = pc.equal(ids.take(ties), ids.take(ties + 1)).to_numpy(zero_copy_only=False)
    if not same.any():
        return None
    keep = np.ones(len(sts), dtype=bool)
    keep[ties[same] + 1] = False
    return keep


def sort_keys(ts: np.ndarray, ids: pa.Array) -> pa.Array:
    """One binary key per event: its timestamp's 8 bytes (-0.0 read as 0.0), then its id."""
    np = numpy_module()
    pa = pyarrow_module()
    raw = np.ascontiguousarray((ts + 0.0).astype(">f8")).view(np.uint8)
    stamps = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), len(ts), [None, pa.py_buffer(raw)])
    return pa.compute.binary_join_element_wise(stamps.cast(pa.binary()), ids.cast(pa.binary()), b"")


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
