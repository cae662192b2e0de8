"""Reading the event store: a query's snapshot of the chunks its filter needs (chosen by
the time index, held against merges while it reads), swept in (timestamp, arrival) order and
matched, as record batches or ready Arrow IPC messages.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from ..protocol.arrow import batch_to_ipc, empty_batch
from ..exceptions import StoreError
from ..filter import EventFilter
from .chunks import (
    CHUNK_BYTES,
    FIELDS,
    Blob,
    arrival_order,
    decode_arrivals,
    from_ipc,
    whole,
    piece_spans,
    translate_error,
)
from .summaries import ChunkSummary

__all__ = [
    "SnapshotSource",
    "ChunkMeta",
    "Snapshot",
    "Results",
    "Queries",
    "chunks_sql",
    "OpenChunk",
    "sweep",
    "Gather",
    "Clock",
    "rebatch",
    "ipc_messages",
    "read_ahead",
    "Matcher",
    "Read",
]


_Read = TypeVar("_Read")

# A generation newer than any: a file store's queries see their transaction's snapshot.
_EVERY_GENERATION = 1 << 62


class SnapshotSource(Protocol):
    """What a query's snapshot reads of its :class:`~theia_frames.server.store.EventStore`."""

    path: str
    in_memory: bool
    _lock: threading.Lock
    _closed: bool
    _generation: int
    _snapshots: dict[int, int]
    _db: sqlite3.Connection

    def _writer(self) -> sqlite3.Connection: ...

    def _borrow(self) -> sqlite3.Connection: ...

    def _give_back(self, db: sqlite3.Connection) -> None: ...

    def _purge(self) -> None: ...

    def _blob(self, db: sqlite3.Connection, seq: int) -> Blob: ...

    def _columns(self, db: sqlite3.Connection, seq: int, fields: Sequence[str], threads: bool = True) -> pa.RecordBatch: ...

    def _summary(self, db: sqlite3.Connection, seq: int) -> ChunkSummary | None: ...


class ChunkMeta(NamedTuple):
    seq: int
    min_ts: float
    max_ts: float
    rows: int


class Snapshot:
    """What one query may read: the chunk list taken when it was made, and how to read them.

    A file store's query holds a connection in a read transaction (SQLite's
    snapshot); a ``:memory:`` store's query holds a generation, which keeps
    chunks merged away after it from being deleted.
    """

    def __init__(self, store: SnapshotSource, flt: EventFilter) -> None:
        self.store = store
        self.filter = flt
        self.desc = flt.order == "desc"
        # a filter of sources or tags may rule a chunk out by its summary's names
        self._by_names = bool(flt.tags) or flt.source is not None
        self._db: sqlite3.Connection | None = None
        self._registered = False
        self._done = False
        self._cancelled = False
        try:
            if store.in_memory:
                with store._lock:
                    db = store._writer()
                    generation = store._generation
                    metas = self._select(db, generation)
                    store._snapshots[id(self)] = generation
                    self._registered = True
            else:
                db = store._borrow()
                self._db = db
                db.execute("BEGIN")
                metas = self._select(db, _EVERY_GENERATION)
        except sqlite3.Error as exc:
            self.close()
            raise translate_error("read", store.path, exc) from exc
        except BaseException:
            self.close()
            raise
        if self.desc:
            metas.sort(key=lambda m: (-m.max_ts, -m.seq))
        else:
            metas.sort(key=lambda m: (m.min_ts, m.seq))
        self.metas = metas

    def count(self) -> int | None:
        """How many events this snapshot holds in the filter's time range, for a
        filter of time alone (None for any other): the row counts of the chunks
        inside the range, and a binary search of the chunks at its edges."""
        flt = self.filter
        if not flt.is_time_only:
            return None
        start = -math.inf if flt.start is None else flt.start
        end = math.inf if flt.end is None else flt.end
        n = 0
        for meta in self.metas:
            if meta.min_ts >= start and meta.max_ts <= end:
                n += meta.rows
                continue
            ts = self.columns(meta.seq, ("timestamp",)).column(0).to_numpy()
            n += max(0, int(np.searchsorted(ts, end, side="right")) - int(np.searchsorted(ts, start, side="left")))
        return n

    def _select(self, db: sqlite3.Connection, generation: int) -> list[ChunkMeta]:
        sql, params = chunks_sql(self.filter, generation)
        return [ChunkMeta(*row) for row in db.execute(sql, params)]

    def cancel(self) -> None:
        """Make the next read fail (any thread): a query stops at its next chunk."""
        self._cancelled = True

    def check(self) -> None:
        """Raise StoreError when the query was cancelled."""
        if self._cancelled:
            raise StoreError(f"a query of the event store {self.store.path!r} was cancelled")

    def excludes(self, seq: int) -> bool:
        """Whether chunk ``seq``'s summary shows that none of its events can match the filter:
        its sources or its tags are none that the filter's patterns match
        (:meth:`~theia_frames.filter.EventFilter.may_match`). False for a chunk without a
        summary and for a filter of neither; the chunk is then read."""
        if not self._by_names:
            return False
        summary = self.summary(seq)
        return summary is not None and not self.filter.may_match(summary.by_source.names, summary.by_tag.names)

    def blob(self, seq: int) -> Blob:
        """Chunk ``seq`` as stored, checked."""
        return self._read(seq, self.store._blob)

    def columns(self, seq: int, fields: Sequence[str], threads: bool = True) -> pa.RecordBatch:
        """The events of chunk ``seq`` in the columns ``fields`` alone, checked (``threads``: as
        :func:`~theia_frames.protocol.arrow.ipc_to_batches`)."""
        return self._read(seq, lambda db, seq: self.store._columns(db, seq, fields, threads))

    def summary(self, seq: int) -> ChunkSummary | None:
        """The summary of chunk ``seq``, checked (None: it has none)."""
        return self._read(seq, self.store._summary)

    def _read(self, seq: int, how: Callable[[sqlite3.Connection, int], _Read]) -> _Read:
        store = self.store
        self.check()
        if self._done or store._closed:
            raise StoreError(f"the event store {store.path!r} was closed during a query")
        try:
            if self._db is not None:
                return how(self._db, seq)
            with store._lock:
                if store._closed:
                    raise StoreError(f"the event store {store.path!r} was closed during a query")
                return how(store._db, seq)
        except sqlite3.Error as exc:
            raise translate_error("read", store.path, exc) from exc

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        store = self.store
        db, self._db = self._db, None
        if db is not None:
            try:
                if db.in_transaction:
                    db.execute("COMMIT")
            except sqlite3.Error:
                db.close()
            else:
                store._give_back(db)
        if self._registered:
            store._snapshots.pop(id(self), None)
            # Not waiting for the lock: this may run from a finalizer. When the
            # writer holds it, the next merge deletes what is no longer needed.
            if store._lock.acquire(blocking=False):
                try:
                    store._purge()
                finally:
                    store._lock.release()


class Results(Iterator[Any]):
    """An iterator that ends its snapshot when read to the end, closed or dropped."""

    def __init__(self, owner: Any, items: Iterator[Any]) -> None:
        self._owner = owner
        self._items = items

    def __iter__(self) -> Results:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._items)
        except StopIteration:
            self.close()
            raise
        except BaseException:
            self.close()
            raise

    def count(self) -> int | None:
        """How many events the query yields, when its index can tell (see
        :meth:`Snapshot.count`); None otherwise. Call it before reading."""
        count = getattr(self._owner, "count", None)
        return count() if count is not None else None

    def cancel(self) -> None:
        """Stop the query from any thread, even while another thread reads it: the
        reading thread gets :class:`~theia_frames.exceptions.StoreError` at the
        next stored chunk, never a silently short result. Then :meth:`close` it."""
        cancel = getattr(self._owner, "cancel", None)
        if cancel is not None:
            cancel()

    def close(self) -> None:
        """End the query (idempotent); what it holds is released."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()
        self._owner.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - at interpreter exit
            pass


class Queries:
    """The queries a server is running, so that a stop can end them all at their next chunk.

    >>> queries = Queries()
    >>> len(queries), bool(queries)
    (0, False)
    """

    def __init__(self) -> None:
        self._running: set[Results] = set()

    def add(self, results: Results) -> None:
        """Count ``results`` as running."""
        self._running.add(results)

    def discard(self, results: Results) -> None:
        """``results`` has ended."""
        self._running.discard(results)

    def cancel_all(self) -> None:
        """Cancel every running query (any thread): each stops at its next chunk."""
        for results in list(self._running):
            results.cancel()

    def __len__(self) -> int:
        return len(self._running)


def chunks_sql(flt: EventFilter, generation: int) -> tuple[str, list[Any]]:
    """The SQL selecting the chunks that may hold events of ``flt``'s time range.

    A start bound seeks the index on ``max_ts`` (the chunks ending at or
    after it), an end bound alone the index on ``min_ts``.
    """
    where = ["seq <= ?", "(died IS NULL OR died > ?)"]
    params: list[Any] = [generation, generation]
    if flt.start is not None:
        index = "INDEXED BY chunks_max_ts"
        where.append("max_ts >= ?")
        params.append(flt.start)
    elif flt.end is not None:
        index = "INDEXED BY chunks_min_ts"
    else:
        index = ""
    if flt.end is not None:
        where.append("min_ts <= ?")
        params.append(flt.end)
    return f"SELECT seq, min_ts, max_ts, rows FROM chunks {index} WHERE {' AND '.join(where)}", params


class OpenChunk:
    """A chunk being read: its remaining rows in output order, their sort keys ascending.

    A whole chunk (``blob`` given) may hold only some of its columns until it is
    cut: its stored blob goes out with it, and has the rest. The rows' arrival
    numbers (which order rows of equal timestamps) are decoded only when rows of
    this chunk are merged with another's (:meth:`arrivals`), from ``stored``.
    """

    __slots__ = ("batch", "keys", "blob", "stored", "rows", "lo", "hi", "desc", "matched", "_numbers")

    def __init__(
        self,
        batch: pa.RecordBatch,
        keys: np.ndarray,
        blob: Blob | None,
        stored: Blob | None,
        rows: int,
        lo: int,
        desc: bool,
        matched: bool = False,
    ) -> None:
        self.batch = batch
        self.keys = keys
        self.blob = blob
        self.stored = stored
        self.rows = rows  # of the stored chunk; its rows lo <= i < hi are still open
        self.lo = lo
        self.hi = lo + batch.num_rows
        self.desc = desc
        self.matched = matched  # its rows are those of the query's filter already
        self._numbers: np.ndarray | None = None

    def arrivals(self, count: int) -> np.ndarray:
        """The arrival numbers of the next ``count`` rows (in output order)."""
        if self._numbers is None:
            if self.stored is None:
                raise StoreError("a matched chunk was merged with another (a chunk read alone overlaps one)")
            self._numbers = decode_arrivals(self.stored.arrivals, self.rows, self.stored.seq)
        if self.desc:
            return self._numbers[self.hi - count : self.hi][::-1]
        return self._numbers[self.lo : self.lo + count]

    def cut(self, count: int) -> tuple[pa.RecordBatch, Blob | None]:
        """Take the first ``count`` rows off (with the stored blob when that is all of them)."""
        if self.desc:
            self.hi -= count
        else:
            self.lo += count
        if count >= self.batch.num_rows:
            head, blob = self.batch, self.blob
            self.batch = self.batch.slice(0, 0)
            self.keys = self.keys[:0]
        else:
            self.batch = whole(self.batch, self.blob)
            head, blob = self.batch.slice(0, count), None
            self.batch = self.batch.slice(count)
            self.keys = self.keys[count:]
            self.blob = None
        return head, blob


# A query of this many chunks or fewer reads them in its own thread (a thread costs more
# than it saves there).
_INLINE_CHUNKS = 3


class Matcher:
    """How a query's reader threads match a chunk that comes out alone: one that lies inside
    the filter's time range and overlaps no other chunk of the snapshot, so that its rows are
    never merged with another's (the common case: events stored in time order).

    Such a chunk is decompressed in the timestamp and the filter's columns first and matched
    there, in the reader's thread; its other columns are decompressed only when some of its
    events match, and only those events go on. A chunk that matches whole goes on as stored
    (``stored``: for a reader that sends a chunk's stored blob; its other columns are then not
    decompressed at all). Other chunks are read in full and matched by the query's thread.
    """

    __slots__ = ("filter", "stored", "slice", "fields", "rest")

    def __init__(self, flt: EventFilter, stored: bool, slice: int) -> None:
        self.filter = flt
        self.stored = stored
        self.slice = slice  # events matched between two looks at whether the query was cancelled
        self.fields = ["timestamp", *(f for f in FIELDS if f in flt.fields and f != "timestamp")]
        self.rest = [f for f in FIELDS if f not in self.fields]

    def alone(self, metas: list[ChunkMeta]) -> list[bool]:
        """For each chunk of ``metas`` (ascending), whether it is matched by :meth:`read`."""
        start = -math.inf if self.filter.start is None else self.filter.start
        end = math.inf if self.filter.end is None else self.filter.end
        before = -math.inf  # the last event time of the chunks before
        found = []
        for i, meta in enumerate(metas):
            after = i + 1 == len(metas) or metas[i + 1].min_ts > meta.max_ts
            found.append(before < meta.min_ts and after and meta.min_ts >= start and meta.max_ts <= end)
            before = max(before, meta.max_ts)
        return found

    def read(self, snapshot: Snapshot, seq: int) -> Read:
        """Chunk ``seq`` matched: its events that match (all its columns), or the whole chunk
        in the filter's columns with its stored blob (``stored``, all of it matched)."""
        blob = snapshot.blob(seq)
        part = from_ipc(blob, self.fields, threads=False)
        if self.stored and self.filter.is_time_only:  # (the chunk lies inside the time range)
            return Read(part, blob, None, True)
        masks = []
        for at in range(0, part.num_rows, self.slice):
            snapshot.check()
            masks.append(self.filter.mask_batch(part.slice(at, self.slice)))
        mask = np.concatenate(masks) if masks else np.ones(0, dtype=bool)
        if self.stored and mask.all():
            return Read(part, blob, None, True)
        if not mask.any():
            return Read(part.slice(0, 0), None, None, True)
        others = from_ipc(blob, self.rest, threads=False)
        if not mask.all():
            keep = pa.array(mask, pa.bool_())
            part, others = part.filter(keep), others.filter(keep)
        columns = [(part if name in self.fields else others).column(name) for name in FIELDS]
        schema = pa.schema([(part if name in self.fields else others).schema.field(name) for name in FIELDS])
        return Read(pa.RecordBatch.from_arrays(columns, schema=schema), None, None, True)


class Read(NamedTuple):
    """A chunk as :func:`read_ahead` gives it: its events (``chunk``), its stored blob when it
    goes on whole (``whole``) and the blob its arrival numbers are read from (``stored``;
    None for a chunk :class:`Matcher` matched, which is never merged), and whether its
    events are matched already (``matched``: they are those of the filter)."""

    chunk: pa.RecordBatch
    whole: Blob | None
    stored: Blob | None
    matched: bool


# Chunks a query's reader threads decode ahead of the one in use, when it matches in them.
_MATCH_AHEAD = 2

# Seconds a query's thread waits for the chunk read next before it may look at the clock
# (a chunk matched row by row in a reader thread takes longer: see :func:`read_ahead`).
_POLL = 0.05


def read_ahead(snapshot: Snapshot, matcher: Matcher | None = None) -> Iterator[Read | None]:
    """The snapshot's chunks in order, each read and decoded while the one before is used;
    a chunk that its summary rules out (:meth:`Snapshot.excludes`) as no events, unread.

    The next chunk is read and decompressed in a thread of its own (Arrow and SQLite let go
    of the interpreter meanwhile), so a query's decoding overlaps its matching and sending:
    at most one decoded chunk ahead (:data:`~theia_frames.server.chunks.CHUNK_BYTES`), and
    one thread per query of more than three chunks while it runs. With a ``matcher``, the
    chunks it takes (:meth:`Matcher.alone`) are matched in those threads: two of them, two
    chunks ahead (one for a filter of time alone, which matches nothing there; a query of
    three chunks or fewer is read in its own thread, and takes the matcher only for a
    filter of time alone, so that its matching stays in slices between looks at the clock). While the
    chunk next in order is still being read, None comes every :data:`_POLL` seconds, so
    that the query's thread can look at the clock (a reader with a ``wait``).
    """
    metas = snapshot.metas
    threaded = len(metas) > _INLINE_CHUNKS
    alone = [False] * len(metas)
    # in the query's own thread, only what takes no matching (a find of time alone)
    if matcher is not None and (threaded or matcher.filter.is_time_only):
        alone = matcher.alone(metas)

    def read(i: int) -> Read:
        seq = metas[i].seq
        if snapshot.excludes(seq):
            return Read(empty_batch(), None, None, True)
        if matcher is not None and alone[i]:
            return matcher.read(snapshot, seq)
        blob = snapshot.blob(seq)
        return Read(from_ipc(blob), blob, blob, False)

    if not threaded:
        for i in range(len(metas)):
            yield read(i)
        return

    def done(future: Future[Read]) -> Iterator[Read | None]:
        while not wait_for([future], timeout=_POLL).done:
            yield None
        yield future.result()

    # matching takes a thread of its own; reading alone (a filter of time) does not
    ahead = _MATCH_AHEAD if any(alone) and matcher is not None and not matcher.filter.is_time_only else 1
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="theia-frames-read-ahead")
    pending: deque[Future[Read]] = deque()
    try:
        for i in range(len(metas)):
            pending.append(pool.submit(read, i))
            if len(pending) > ahead:
                yield from done(pending.popleft())
        while pending:
            yield from done(pending.popleft())
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def sweep(snapshot: Snapshot, matcher: Matcher | None = None) -> Iterator[tuple[pa.RecordBatch, Blob | None, bool]]:
    """The snapshot's events in the time range, in order, as pieces (batch, stored blob or
    None, whether its events are matched already).

    Chunks are opened in the order of their first event (last, for ``desc``);
    before the next one is opened, every open row that comes before its first
    event is emitted. A chunk that overlaps no other comes out as stored; rows
    of overlapping chunks are merged, so memory holds only the chunks that
    overlap the current position.

    With a :class:`Matcher` (not for ``desc``), the chunks it takes come out matched;
    one that matches whole may hold only the filter's columns: its blob has the
    others, which are decompressed only when needed (:func:`~theia_frames.server.chunks.whole`).
    """
    flt, desc, metas = snapshot.filter, snapshot.desc, snapshot.metas
    start = -math.inf if flt.start is None else flt.start
    end = math.inf if flt.end is None else flt.end
    opened: list[OpenChunk] = []
    nothing = empty_batch()
    chunks = read_ahead(snapshot, None if desc else matcher)
    i = 0
    while i < len(metas) or opened:
        if i < len(metas):
            meta = metas[i]
            i += 1
            read = next(chunks)
            while read is None:  # still being read: the reader may look at the clock
                yield nothing, None, True
                read = next(chunks)
            if not read.chunk.num_rows:  # none of its events match: the reader may look at the clock
                yield nothing, None, True
            else:
                ts = read.chunk.column("timestamp").to_numpy()
                lo = 0 if meta.min_ts >= start else int(np.searchsorted(ts, start, side="left"))
                hi = len(ts) if meta.max_ts <= end else int(np.searchsorted(ts, end, side="right"))
                if lo < hi:
                    is_whole = read.whole is not None and lo == 0 and hi == len(ts) and not desc
                    chunk = read.chunk if is_whole else whole(read.chunk, read.whole)
                    part = chunk.slice(lo, hi - lo)
                    if desc:
                        part = part.take(np.arange(hi - lo - 1, -1, -1))
                        keys = -ts[lo:hi][::-1]
                    else:
                        keys = ts[lo:hi]
                    opened.append(
                        OpenChunk(part, keys, read.whole if is_whole else None, read.stored, len(ts), lo, desc, read.matched)
                    )
            if i < len(metas):
                nxt = metas[i]
                boundary = -nxt.max_ts if desc else nxt.min_ts
            else:
                boundary = None
        else:
            boundary = None
        counts = [
            item.batch.num_rows if boundary is None else int(np.searchsorted(item.keys, boundary, side="left"))
            for item in opened
        ]
        # rows of several chunks are merged by (timestamp, arrival): their numbers are read then only
        merging = sum(1 for count in counts if count) > 1
        heads = []
        arrivals = []
        matched = True
        for item, count in zip(opened, counts):
            if count:
                if merging:
                    arrivals.append(item.arrivals(count))
                heads.append(item.cut(count))
                matched = matched and item.matched
        opened = [item for item in opened if item.batch.num_rows]
        if len(heads) == 1:
            yield heads[0][0], heads[0][1], matched
        elif heads:
            merged = pa.concat_batches([whole(h, b) for h, b in heads])
            order = arrival_order(merged.column("timestamp").to_numpy(), np.concatenate(arrivals), desc)
            yield merged.take(order), None, matched


class Gather:
    """Pieces gathered into batches of exactly ``rows`` events."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.waiting: list[pa.RecordBatch] = []
        self.count = 0
        self.nbytes = 0  # the bytes of the events waiting (kept as they come: many small pieces)

    def add(self, piece: pa.RecordBatch) -> list[pa.RecordBatch]:
        """Take a piece; returns the batches of ``rows`` events now complete."""
        self.waiting.append(piece)
        self.count += piece.num_rows
        self.nbytes += piece.nbytes
        rows = self.rows
        if self.count < rows:
            return []
        whole = self._joined()
        full = self.count - self.count % rows
        self.waiting = [whole.slice(full)] if full < self.count else []
        self.count -= full
        self.nbytes = sum(piece.nbytes for piece in self.waiting)
        return [whole.slice(at, rows) for at in range(0, full, rows)]

    def rest(self) -> pa.RecordBatch | None:
        """What is left (fewer than ``rows`` events), or None; empties the gathering."""
        if not self.count:
            return None
        whole = self._joined()
        self.waiting, self.count, self.nbytes = [], 0, 0
        return whole

    def _joined(self) -> pa.RecordBatch:
        return self.waiting[0] if len(self.waiting) == 1 else pa.concat_batches(self.waiting)


class Clock:
    """When a query last yielded, and whether its ``wait`` has passed since."""

    __slots__ = ("wait", "last")

    def __init__(self, wait: float | None) -> None:
        self.wait = wait
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.wait is not None and time.monotonic() - self.last >= self.wait

    def reset(self) -> None:
        self.last = time.monotonic()


def rebatch(
    pieces: Iterator[tuple[pa.RecordBatch, Blob | None]], rows: int, wait: float | None = None
) -> Iterator[pa.RecordBatch]:
    """Pieces as batches of exactly ``rows`` events (the last one: what is left);
    what is gathered (maybe nothing) whenever ``wait`` seconds pass without a batch."""
    gather = Gather(rows)
    clock = Clock(wait)
    for piece, blob in pieces:
        piece = whole(piece, blob)
        if piece.num_rows:
            for batch in gather.add(piece):
                yield batch
                clock.reset()
        if clock.due():
            rest = gather.rest()
            yield piece.slice(0, 0) if rest is None else rest
            clock.reset()
    rest = gather.rest()
    if rest is not None:
        yield rest


def ipc_messages(
    pieces: Iterator[tuple[pa.RecordBatch, Blob | None]], rows: int, wait: float | None = None
) -> Iterator[bytes]:
    """Pieces as IPC messages of at most ``rows`` events and about :data:`CHUNK_BYTES`
    bytes at most (a reader bounds what one message may decode to); a whole stored
    chunk as stored; what is gathered (maybe nothing) whenever ``wait`` seconds
    pass without a message."""
    gather = Gather(rows)
    clock = Clock(wait)
    for piece, blob in pieces:
        if blob is not None and piece.num_rows <= rows:
            rest = gather.rest()
            if rest is not None:
                yield batch_to_ipc(rest)
            yield blob.data
            clock.reset()
            continue
        piece = whole(piece, blob)
        if piece.num_rows:
            for start, stop in piece_spans(piece.num_rows, piece.nbytes):
                part = piece.slice(start, stop - start)
                if gather.count and gather.nbytes + part.nbytes > CHUNK_BYTES:
                    rest = gather.rest()
                    if rest is not None:
                        yield batch_to_ipc(rest)
                        clock.reset()
                for batch in gather.add(part):
                    yield batch_to_ipc(batch)
                    clock.reset()
        if clock.due():
            rest = gather.rest()
            yield batch_to_ipc(piece.slice(0, 0) if rest is None else rest)
            clock.reset()
    rest = gather.rest()
    if rest is not None:
        yield batch_to_ipc(rest)
