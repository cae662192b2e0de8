"""A stored chunk's summary: its events counted per second by source and by tag, kept beside it
(the store's ``summaries`` table), so that a count of time alone reads a few kilobytes of a
chunk instead of its columns.

The summary is two counts of the chunk's events made by the counting kernel
(:class:`~theia_frames.protocol.count.Counter`, grain :data:`~theia_frames.protocol.count.SECOND`,
with ``spans``): per (second, source) and per (second, tag), each group with its first and
last event time (nanoseconds, at the microsecond, as the kernel rounds them). A count whose
grain is a whole number of seconds (or 0) takes a chunk lying wholly inside its filter's time
range from these (:meth:`~theia_frames.protocol.count.Counter.add_counts`), with the result it
would have had from the events.

The store summarizes the chunks it will not merge again (the final tier: thousands of events,
see :func:`~theia_frames.server.chunks.tier`); smaller ones are merged soon, and read meanwhile.
A summary is kept only when it is much smaller than the chunk: at most one (second, group)
pair per :data:`SUMMARY_SHARE` events and :data:`SUMMARY_BYTES` bytes per event before
compression (a chunk of a few events per second, or of many sources or tags, has none and is
read as before). Stored as numbers (int64) and names, compressed
(ZSTD), behind a CRC-32 of the summary and its chunk's index entries (first and last
timestamp, events): it is checked before anything of it is decompressed and a damaged summary
is reported as a damaged chunk (:func:`~theia_frames.server.chunks.damaged_chunk`). The chunk's
own checksum covers the summary too (:func:`~theia_frames.server.chunks.chunk_checksum`).

>>> from theia_frames import Event
>>> from theia_frames.protocol.arrow import events_to_batch
>>> batch = events_to_batch([Event(id=str(i), timestamp=i / 100, source="s", tags=["t"]) for i in range(400)])
>>> data = chunk_summary(batch, 0.0, 3.99)
>>> summary = read_summary(data, 1, 0.0, 3.99, 400)
>>> summary.counts("source").counts.tolist(), summary.counts("tag").names
([100, 100, 100, 100], ['t'])
>>> sparse = events_to_batch([Event(id=str(i), timestamp=float(i)) for i in range(400)])
>>> chunk_summary(sparse, 0.0, 399.0) is None  # an event a second: fewer than 8 a pair, not kept
True
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from ..protocol.count import SECOND, Counter, CountResult
from .chunks import COMPRESSION, damaged_chunk

__all__ = ["SUMMARY_SHARE", "SUMMARY_BYTES", "ChunkSummary", "chunk_summary", "read_summary", "summary_counting"]

#: Events a chunk holds at least per (second, group) pair of its summary (else it has none).
SUMMARY_SHARE = 8
#: Most bytes per event a chunk's summary takes before compression (else it has none).
SUMMARY_BYTES = 16

# b"S", the CRC-32, the payload's size before compression: then the compressed payload.
_HEAD = struct.Struct("<cIq")
# the payload's first numbers: (second, group) pairs by source and by tag, names of each
_SIZES = struct.Struct("<4q")


class ChunkSummary(NamedTuple):
    """A chunk's events counted per second (:data:`~theia_frames.protocol.count.SECOND`)
    by source and by tag, with each group's first and last time."""

    by_source: CountResult
    by_tag: CountResult

    @staticmethod
    def grouping(by: str | None) -> str:
        """The grouping of the count a count grouped ``by`` takes (an ungrouped one: by source)."""
        return "tag" if by == "tag" else "source"

    def counts(self, by: str | None) -> CountResult:
        """The count a count grouped ``by`` takes (:meth:`grouping`)."""
        return self.by_tag if self.grouping(by) == "tag" else self.by_source


def summary_counting(counter: Counter) -> Callable[[ChunkSummary], bool] | None:
    """What counts a chunk's summary into ``counter`` (a store scan's ``summarized``), or None
    when the counter cannot take a summary (a grain that is not whole seconds).

    >>> summary_counting(Counter(60 * SECOND, "tag")) is not None, summary_counting(Counter(SECOND // 10))
    (True, None)
    """
    if not counter.takes(SECOND, ChunkSummary.grouping(counter.by), True):
        return None
    by = counter.by

    def count(summary: ChunkSummary) -> bool:
        return counter.add_counts(summary.counts(by))

    return count


def _index_entries(min_ts: float, max_ts: float, rows: int) -> bytes:
    # + 0.0: SQLite stores a REAL -0.0 as 0.0
    return struct.pack("<ddq", min_ts + 0.0, max_ts + 0.0, rows)


def chunk_summary(batch: pa.RecordBatch, min_ts: float, max_ts: float) -> bytes | None:
    """The summary of a chunk about to be stored (its events, first and last timestamp), as
    stored; None when it would not be much smaller than the chunk (:data:`SUMMARY_SHARE`)."""
    rows = batch.num_rows
    if rows < SUMMARY_SHARE:
        return None
    by_source = Counter(SECOND, "source", max_groups=rows, spans=True)
    by_source.add(batch.select(["timestamp", "source"]))
    sources = by_source.result()
    if len(sources.counts) * SUMMARY_SHARE > rows:
        return None
    by_tag = Counter(SECOND, "tag", max_groups=rows, spans=True)
    by_tag.add(batch.select(["timestamp", "tags"]))
    tags = by_tag.result()
    if (len(sources.counts) + len(tags.counts)) * SUMMARY_SHARE > rows:
        return None
    names = [name.encode("utf-8") for name in sources.names + tags.names]
    numbers = np.concatenate(
        [
            np.array([len(sources.counts), len(tags.counts), len(sources.names), len(tags.names)], dtype=np.int64),
            sources.slots, sources.groups, sources.counts, tags.slots, tags.groups, tags.counts,
            *(part for part in (sources.firsts, sources.lasts, tags.firsts, tags.lasts) if part is not None),
            np.array([len(name) for name in names], dtype=np.int64),
        ]
    ).astype("<i8")
    payload = numbers.tobytes() + b"".join(names)
    if len(payload) > SUMMARY_BYTES * rows:
        return None
    packed = bytes(pa.compress(payload, codec=COMPRESSION, asbytes=True))
    crc = zlib.crc32(packed, zlib.crc32(_index_entries(min_ts, max_ts, rows)))
    return _HEAD.pack(b"S", crc, len(payload)) + packed


def read_summary(data: bytes, seq: int, min_ts: float, max_ts: float, rows: int) -> ChunkSummary:
    """The summary of chunk ``seq`` (its index entries given) as stored; StoreError
    (:func:`~theia_frames.server.chunks.damaged_chunk`) when it is damaged: its CRC-32
    checked before it is decompressed, its parts against each other and the chunk's events."""

    def damaged(why: str) -> Exception:
        return damaged_chunk(seq, min_ts, max_ts, rows, f"its summary {why}")

    if len(data) < _HEAD.size:
        raise damaged("is cut short")
    kind, crc, size = _HEAD.unpack_from(data)
    packed = data[_HEAD.size :]
    if kind != b"S" or crc != zlib.crc32(packed, zlib.crc32(_index_entries(min_ts, max_ts, rows))):
        raise damaged("does not match its checksum")
    if not _SIZES.size <= size <= SUMMARY_BYTES * rows:
        raise damaged(f"declares {size} bytes")
    try:
        payload = pa.decompress(packed, decompressed_size=size, codec=COMPRESSION, asbytes=True)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise damaged(f"cannot be read ({exc})") from None
    n_src, n_tag, n_src_names, n_tag_names = _SIZES.unpack_from(payload)
    count = 3 * (n_src + n_tag) + 3 * (n_src_names + n_tag_names)
    if min(n_src, n_tag, n_src_names, n_tag_names) < 0 or _SIZES.size + 8 * count > len(payload):
        raise damaged("has sizes that do not fit")
    numbers = np.frombuffer(payload, dtype="<i8", count=count, offset=_SIZES.size).astype(np.int64)
    parts = np.split(numbers, np.cumsum([n_src] * 3 + [n_tag] * 3 + [n_src_names] * 2 + [n_tag_names] * 2))
    src_slots, src_groups, src_counts, tag_slots, tag_groups, tag_counts, src_firsts, src_lasts, tag_firsts, tag_lasts, lengths = parts
    text = payload[_SIZES.size + 8 * count :]
    if len(lengths) != n_src_names + n_tag_names or (lengths < 0).any() or int(lengths.sum()) != len(text):
        raise damaged("has names that do not fit")
    ends = np.cumsum(lengths).tolist()
    try:
        names = [text[a:b].decode("utf-8") for a, b in zip([0, *ends[:-1]], ends)]
    except UnicodeDecodeError:
        raise damaged("has names that are not UTF-8") from None
    if (
        n_src < 1
        or int(src_counts.sum()) != rows
        or (src_counts < 1).any()
        or (tag_counts < 1).any()
        or (src_groups < 0).any()
        or (tag_groups < 0).any()
        or (n_src and int(src_groups.max()) >= n_src_names)
        or (n_tag and int(tag_groups.max()) >= n_tag_names)
        or (src_firsts > src_lasts).any()
        or (tag_firsts > tag_lasts).any()
    ):
        raise damaged("does not add up to its chunk's events")
    first, last = int(src_firsts.min()), int(src_lasts.max())
    by_source = CountResult(SECOND, "source", names[:n_src_names], src_slots, src_groups, src_counts, first, last, rows, src_firsts, src_lasts)
    by_tag = CountResult(SECOND, "tag", names[n_src_names:], tag_slots, tag_groups, tag_counts, first, last, rows, tag_firsts, tag_lasts)
    return ChunkSummary(by_source, by_tag)
