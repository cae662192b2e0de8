"""The bounded columnar buffer behind a :class:`~theia_frames.live.frame.LiveFrame`: :class:`EventBuffer`.

The buffer is a list of Arrow record batches, not a DataFrame: appending is
O(batch), and small batches are merged with their neighbours as the buffer
grows (each row is copied O(log n) times in all), so the consumer keeps up
with tens of thousands of events per second. A version counter says when
something changed.

Memory is bounded by ``max_rows`` and/or ``window``: older rows roll off, and
the Arrow memory held stays below twice what the kept rows need. No thread,
no socket::

    >>> from theia_frames.protocol.arrow import events_to_batch
    >>> from theia_frames.event import Event
    >>> buf = EventBuffer(max_rows=3)
    >>> for i in range(5):
    ...     buf.append(events_to_batch([Event(id=str(i), timestamp=float(i))]))
    >>> buf.rows, buf.dropped, buf.table().column("id").to_pylist()
    (3, 2, ['2', '3', '4'])
    >>> buf = EventBuffer(window="2s")
    >>> buf.append(events_to_batch([Event(id=str(i), timestamp=float(i)) for i in range(10)]))
    >>> buf.table().column("timestamp").to_pylist()
    [7.0, 8.0, 9.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..protocol.arrow import event_schema
from ..checks import positive_int, positive_seconds
from ..exceptions import UsageError
from ..timeparse import DurationLike, to_seconds

__all__ = ["EventBuffer", "parse_window"]


def parse_window(window: DurationLike | None) -> float | None:
    """A time window as seconds, read by :func:`~theia_frames.timeparse.to_seconds`:
    a number of seconds (also as text: ``"90"`` is 90 s), a ``timedelta``, or text such as ``"10min"``.

    >>> from datetime import timedelta
    >>> parse_window("10min"), parse_window(90), parse_window("90"), parse_window(timedelta(hours=1)), parse_window(None)
    (600.0, 90.0, 90.0, 3600.0, None)
    >>> parse_window("-1s")
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: invalid window '-1s': must not be negative
    """
    if window is None:
        return None
    return positive_seconds("window", to_seconds(window, name="window"))


@dataclass
class _Chunk:
    batch: Any  # pyarrow.RecordBatch
    base_rows: int  # rows of the buffers it holds (more than num_rows when sliced)
    tmin: float
    tmax: float


class EventBuffer:
    """A bounded, append-only columnar buffer of events (not thread-safe by itself).

    Rows are kept in arrival order as Arrow record batches of
    :func:`~theia_frames.protocol.arrow.event_schema`. At most ``max_rows`` rows are
    kept, and with ``window`` only rows whose timestamp is within ``window`` of
    the newest timestamp seen; the oldest roll off first.

    Memory: every chunk but the oldest holds exactly its rows; the oldest is
    copied as soon as its rows use less than half of its buffers, so
    :attr:`retained_rows` (rows' worth of memory held) stays below
    ``2 * rows``. New chunks are merged into older ones of at most their
    size, which keeps the number of chunks logarithmic in the number of rows.
    """

    def __init__(self, *, max_rows: int | None = None, window: DurationLike | None = None) -> None:
        self.max_rows = positive_int("max_rows", max_rows, none_ok=True)
        self.window = parse_window(window)
        self._chunks: list[_Chunk] = []
        self.rows = 0
        #: rows that rolled off so far
        self.dropped = 0
        #: rows appended so far
        self.appended = 0
        #: bumped by every change
        self.version = 0
        #: the newest event timestamp seen (seconds), or None
        self.newest: float | None = None

    # -------------------------------------------------------------- reading
    @property
    def batches(self) -> tuple[Any, ...]:
        """The record batches held, oldest first (immutable; safe to keep)."""
        return tuple(c.batch for c in self._chunks)

    @property
    def retained_rows(self) -> int:
        """Rows' worth of Arrow buffers held (``rows`` plus the unused part of a sliced chunk)."""
        return sum(c.base_rows for c in self._chunks)

    @property
    def nbytes(self) -> int:
        """Bytes of Arrow buffers held."""
        return sum(c.batch.get_total_buffer_size() for c in self._chunks)

    def table(self) -> pa.Table:
        """The rows held as one Arrow table (zero-copy)."""
        return pa.Table.from_batches(self.batches, schema=event_schema())

    def __len__(self) -> int:
        return self.rows

    # -------------------------------------------------------------- writing
    def append(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Add a batch (or table) of events, then roll off what the bounds exclude."""
        if isinstance(batch, pa.Table):
            batches = batch.to_batches()
        else:
            batches = [batch]
        for b in batches:
            n = b.num_rows
            if not n:
                continue
            if not b.schema.equals(event_schema()):
                raise UsageError(f"a batch of events must have the event schema, got {b.schema}")
            tmin, tmax = _min_max(b)
            self._chunks.append(_Chunk(b, n, tmin, tmax))
            self.rows += n
            self.appended += n
            if self.newest is None or tmax > self.newest:
                self.newest = tmax
            self._merge_tail()
        self._roll_off()
        self.version += 1

    def clear(self) -> None:
        """Drop every row (counted in :attr:`dropped`)."""
        self.dropped += self.rows
        self._chunks.clear()
        self.rows = 0
        self.version += 1

    def _merge_tail(self) -> None:
        # A binary-counter merge: while the newest chunk is at least as large as
        # the one before it, merge the two. Each row takes part in O(log n) merges.
        chunks = self._chunks
        while len(chunks) >= 2 and chunks[-2].batch.num_rows <= chunks[-1].batch.num_rows:
            b, a = chunks.pop(), chunks.pop()
            merged = pa.concat_batches([a.batch, b.batch])  # copies: frees sliced-off rows
            chunks.append(_Chunk(merged, merged.num_rows, min(a.tmin, b.tmin), max(a.tmax, b.tmax)))

    def _roll_off(self) -> None:
        chunks = self._chunks
        if self.window is not None and self.newest is not None and chunks:
            cutoff = self.newest - self.window
            kept: list[_Chunk] = []
            for c in chunks:
                if c.tmax < cutoff:
                    self._drop(c.batch.num_rows)
                elif c.tmin < cutoff:
                    kept.append(self._filter_chunk(c, cutoff))
                else:
                    kept.append(c)
            chunks[:] = [c for c in kept if c.batch.num_rows]
        if self.max_rows is not None and self.rows > self.max_rows:
            excess = self.rows - self.max_rows
            while chunks and chunks[0].batch.num_rows <= excess:
                excess -= chunks[0].batch.num_rows
                self._drop(chunks.pop(0).batch.num_rows)
            if excess:
                head = chunks[0]
                sliced = head.batch.slice(excess)
                self._drop(excess)
                if 2 * sliced.num_rows < head.base_rows:
                    sliced = pa.concat_batches([sliced])  # copy: release the rolled-off rows
                    base = sliced.num_rows
                else:
                    base = head.base_rows
                tmin, tmax = _min_max(sliced)
                chunks[0] = _Chunk(sliced, base, tmin, tmax)

    def _filter_chunk(self, c: _Chunk, cutoff: float) -> _Chunk:
        before = c.batch.num_rows
        kept = c.batch.filter(pc.greater_equal(c.batch.column(1), cutoff))  # filter copies
        self._drop(before - kept.num_rows)
        if not kept.num_rows:
            return _Chunk(kept, 0, c.tmin, c.tmax)
        tmin, tmax = _min_max(kept)
        return _Chunk(kept, kept.num_rows, tmin, tmax)

    def _drop(self, n: int) -> None:
        self.rows -= n
        self.dropped += n


def _min_max(batch: Any) -> tuple[float, float]:
    mm = pc.min_max(batch.column(1))
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    return (float("inf"), float("-inf")) if lo is None else (lo, hi)
