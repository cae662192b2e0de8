"""The embedded collector's event store: SQLite (standard library), a file or ``:memory:``.

Events are kept in *chunks*: each chunk is one row of an SQLite table holding
an Arrow IPC stream of events (:func:`~theia_frames.batch.event_schema`,
sorted by timestamp, ties by id; its buffers compressed with ZSTD, about 15
bytes per sensor-like event) with its first and last timestamp, its row count
and the bytes it decodes to. A chunk is read only when the sizes its Arrow
headers declare add up to no more than that (checked before anything is
decompressed), so stored bytes cannot be made to decode to gigabytes. Storing a batch is one chunk insert, reading is whole chunks, and
no SQL runs per event::

    >>> from theia_frames import Event, Filter
    >>> store = EventStore(":memory:")
    >>> store.add_many([Event(id="a", timestamp=1.0, tags=["x"]), Event(id="b", timestamp=2.0)])
    2
    >>> store.add_many([Event(id="a", timestamp=1.0)])  # already stored: ignored
    0
    >>> [cols.id for cols in store.query(Filter(1.5))]
    [['b']]
    >>> [cols.id for cols in store.query(Filter().match_tag("x").order_desc())]
    [['a']]
    >>> store.count()
    2
    >>> store.close()

Identity: an event is its (timestamp, id). Storing it again (a client resending
after a reconnect sends the same id and timestamp) never duplicates it; the
same id at another time is another event. A new batch is checked against the
stored chunks whose time range overlaps its own, with vectorised Arrow
kernels; for events arriving in time order that is the newest chunk at most.

Small writes (a few events per commit) make small chunks; chunks are merged
by size tiers, as in a log-structured merge tree: when :data:`MERGE_FANOUT`
chunks of one tier exist they become one chunk of a higher tier, up to
:data:`CHUNK_ROWS` rows. An event is rewritten once per tier, so the cost of
keeping the chunks few stays logarithmic. A batch of many events is stored as
a chunk that is never merged again.

Queries select the chunks overlapping the time range with an index (see
:meth:`EventStore.query_plan`) and stream them in order with bounded memory:
chunks whose time ranges overlap are merged as they are read, everything else
is passed on as stored (zero-copy slices). The time range is applied with
binary search on the sorted timestamps; the other criteria with
:meth:`EventFilter.mask_batch <theia_frames.filter.EventFilter.mask_batch>`
(Arrow kernels over whole columns), so a filter means exactly what it means
everywhere else. A query sees the
events stored before it was made, in timestamp order (ties by id; ``desc``
is the exact reverse of ``asc``).

Threads: writes are serialized by a lock (the embedded collector writes from
one thread only). A file store reads through connections of its own, each
query in a read transaction of its own, so readers see a snapshot and never
wait for the writer (WAL). A ``:memory:`` store has a single connection,
shared under the lock; chunks merged away while a query may still read them
are kept until it ends. SQLite and Arrow errors surface as
:class:`~theia_frames.exceptions.StoreError`.

The file is marked as ours (SQLite ``application_id``) with a format version;
opening a database that is not a theia_frames event store (or one of another
format) raises :class:`~theia_frames.exceptions.StoreError` saying so.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from .batch import batch_to_columns, batch_to_ipc, columns_to_batch, decoded_size, event_schema, ipc_to_batches
from .codec import EventColumns
from .deprecation import renamed_arguments
from .event import Event
from .exceptions import DecodeError, StoreError, UsageError
from .filter import EventFilter

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

__all__ = [
    "EventStore",
    "ChunkInfo",
    "DEFAULT_CHUNK_SIZE",
    "CHUNK_ROWS",
    "MERGE_FANOUT",
    "MEMORY",
    "FORMAT_VERSION",
]

MEMORY = ":memory:"
#: Rows per batch of a query, unless asked otherwise.
DEFAULT_CHUNK_SIZE = 10_000
#: Most events in one stored chunk.
CHUNK_ROWS = 65_536
#: Chunks of one tier that are merged into one chunk of a higher tier.
MERGE_FANOUT = 8
#: The layout of the database, kept in its ``user_version``. Format 3 keeps chunks
#: compressed (ZSTD) with the bytes they decode to; a store of format 2 is
#: upgraded when it is opened (its chunks are read as they are).
FORMAT_VERSION = 3
# Stored chunks' buffers are compressed with this (pyarrow's IPC compression).
_COMPRESSION = "zstd"

# Most bytes of Arrow data in one chunk (a chunk holds one event at least).
_CHUNK_BYTES = 32 * 1024 * 1024
# A chunk this large (rows or bytes) is never merged again. Small enough that
# the largest merge (8 chunks just below it) takes tens of milliseconds: the
# collector's writer merges between commits, so a merge delays the next commit.
_FINAL_ROWS = 4_096
_FINAL_BYTES = 1024 * 1024
_FINAL_TIER = 15
# Events matched between two looks at whether the query was cancelled (Arrow
# kernels match them in a few milliseconds; a pattern matched row by row, in
# about a tenth of a second).
_MATCH_SLICE = 16_384
# Bytes the write-ahead log is cut back to after a checkpoint.
_WAL_SIZE_LIMIT = 64 * 1024 * 1024
# Events from an iterable of Event objects are stored in batches of this many.
_ADD_CHUNK = 50_000
# The format an opened store is upgraded from.
_UPGRADABLE = 2
# "thfr": marks a database as a theia_frames event store.
_APPLICATION_ID = 0x74686672
# A generation newer than any: a file store's queries see their transaction's snapshot.
_EVERY_GENERATION = 1 << 62
_FIELDS = ("id", "timestamp", "source", "tags", "content")
_PREVIOUS_LAYOUT = ["seq", *_FIELDS]

_SCHEMA = (
    # seq never reuses a number (AUTOINCREMENT): a query's generation is the
    # last seq it may see. died is the generation that merged the chunk away
    # (only while a query of a :memory: store may still read it).
    """CREATE TABLE chunks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        tier INTEGER NOT NULL,
        min_ts REAL NOT NULL,
        max_ts REAL NOT NULL,
        rows INTEGER NOT NULL,
        died INTEGER,
        data BLOB NOT NULL,
        bytes INTEGER NOT NULL
    )""",
    "CREATE INDEX chunks_max_ts ON chunks (max_ts)",
    "CREATE INDEX chunks_min_ts ON chunks (min_ts)",
    f"CREATE INDEX chunks_open ON chunks (tier) WHERE died IS NULL AND tier < {_FINAL_TIER}",
)

EventsLike = Union[EventColumns, Event, Iterable[Event], "pa.RecordBatch", "pa.Table"]


class ChunkInfo(NamedTuple):
    """One stored chunk, as :meth:`EventStore.chunks` describes it."""

    seq: int
    tier: int
    rows: int
    min_ts: float
    max_ts: float


def _translate(action: str, path: str, exc: Exception) -> StoreError:
    why = _why_unopenable(path) if action == "open" else None
    return StoreError(f"cannot {action} the event store {path!r}: {why or exc}")


def _why_unopenable(path: str) -> str | None:
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


def _np() -> Any:
    import numpy

    return numpy


def _pa() -> Any:
    import pyarrow
    import pyarrow.compute  # noqa: F401 - makes pyarrow.compute an attribute

    return pyarrow


class EventStore:
    """Events in SQLite: ``path`` is a file (created if missing) or ``":memory:"``.

    A context manager; :meth:`close` when done. Events in a file survive a
    restart.
    """

    def __init__(self, path: str | os.PathLike[str] = MEMORY) -> None:
        self.path = os.fspath(path)
        self.in_memory = self.path in (MEMORY, "")
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        # :memory: only: the newest generation, the generation of every open query,
        # and whether merged-away chunks are waiting for those queries to end
        self._generation = 0
        self._snapshots: dict[int, int] = {}
        self._dead = False
        try:
            self._db = self._connect()
            self._setup(self._db)
        except sqlite3.Error as exc:
            raise _translate("open", self.path, exc) from exc

    # ------------------------------------------------------------------ connections
    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are begun and committed explicitly.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            db.execute("PRAGMA cache_size = -65536")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _setup(self, db: sqlite3.Connection) -> None:
        try:
            self._check_format(db)
            if not self.in_memory:
                db.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL loses no committed data when the process dies,
                # only (possibly) the last transactions when the machine does.
                db.execute("PRAGMA synchronous = NORMAL")
                # A write-ahead log that grew (while a long query held its snapshot)
                # is cut back to this size at the next checkpoint, not kept.
                db.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
            db.execute("BEGIN IMMEDIATE")
            try:
                # Checked again under the write lock: another process may have created it.
                if not self._check_format(db):
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                elif db.execute("PRAGMA user_version").fetchone()[0] == _UPGRADABLE:
                    # Format 2 chunks are uncompressed: they decode to no more than their own length.
                    db.execute("ALTER TABLE chunks ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")
                    db.execute("UPDATE chunks SET bytes = length(data)")
                    db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._generation = self._newest(db)
        except BaseException:
            db.close()
            raise

    def _check_format(self, db: sqlite3.Connection) -> bool:
        """True for one of our stores, False for an empty database; raises for anything else."""
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if not tables:
            return False
        app = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if app != _APPLICATION_ID:
            if "events" in tables:
                columns = [row[1] for row in db.execute("PRAGMA table_info(events)")]
                if columns == _PREVIOUS_LAYOUT:
                    raise StoreError(
                        f"{self.path!r} holds events in an earlier layout of the theia_frames store "
                        f"(one row per event), which this version does not read; "
                        f"start a new store file"
                    )
                raise StoreError(
                    f"{self.path!r} holds an 'events' table that is not a theia_frames event store "
                    f"(columns: {', '.join(columns)})"
                )
            raise StoreError(
                f"{self.path!r} is an SQLite database but not a theia_frames event store "
                f"(tables: {', '.join(sorted(tables))})"
            )
        if version == _UPGRADABLE:
            return True  # upgraded under the write lock, in _setup
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{self.path!r} is a theia_frames event store of format {version}; "
                f"this version reads format {FORMAT_VERSION}"
            )
        return True

    @staticmethod
    def _newest(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT coalesce(max(seq), 0) FROM chunks").fetchone()[0])

    def _writer(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the event store {self.path!r} is closed")
        return self._db

    def _borrow(self) -> sqlite3.Connection:
        """A connection of its own for one query of a file store."""
        if self._closed:
            raise StoreError(f"the event store {self.path!r} is closed")
        with self._pool_lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._connect()
            db.execute("PRAGMA query_only = ON")
        return db

    def _give_back(self, db: sqlite3.Connection) -> None:
        with self._pool_lock:
            if self._closed:
                db.close()
            else:
                self._idle.append(db)

    # ------------------------------------------------------------------ writing
    def add(self, event: Event) -> bool:
        """Store one event; False when it is already stored."""
        return self.add_many([event]) == 1

    def add_many(self, events: EventsLike) -> int:
        """Store events; returns how many were new (events already stored are ignored).

        ``events`` is :class:`~theia_frames.codec.EventColumns`, a pyarrow
        RecordBatch or Table with the event schema, one :class:`Event`, or any
        iterable of events (consumed lazily, stored in batches of 50,000).
        """
        if isinstance(events, EventColumns):
            return len(self.add_new(events))
        if isinstance(events, Event):
            events = [events]
        if hasattr(events, "schema") and hasattr(events, "column"):
            return self.add_batch(events).num_rows  # type: ignore[arg-type]
        total = 0
        cols = EventColumns()
        for event in events:
            cols.append_event(event)
            if len(cols) >= _ADD_CHUNK:
                total += len(self.add_new(cols))
                cols = EventColumns()
        return total + len(self.add_new(cols))

    def add_new(self, columns: EventColumns) -> EventColumns:
        """Store events in one transaction; returns those that were new, in the order given.

        When every event was new the result is ``columns`` itself.
        """
        if not len(columns):
            return EventColumns()
        new = self.add_batch(columns_to_batch(columns))
        if new.num_rows == len(columns):
            return columns
        return batch_to_columns(new)

    def add_batch(
        self, data: pa.RecordBatch | pa.Table, *, compact: bool = True, validated: bool = False
    ) -> pa.RecordBatch:
        """Store a batch of events in one transaction; returns the new ones, in the order given.

        ``data`` has the event schema's columns (other string and float types
        are cast). Events already stored, and repeats within ``data``, are left
        out (the first of equal events is kept). When every event was new the
        result holds all of ``data``. With ``compact`` (the default) small
        chunks are merged afterwards (:meth:`compact`); a caller that wants its
        commit published first passes False and compacts later. ``validated``:
        the caller has validated ``data`` in full already (pyarrow's
        ``validate(full=True)``, as :func:`~theia_frames.batch.ipc_to_batches`
        does), so it is not done again.
        """
        np = _np()
        batch = _event_batch(data, validated)
        n = batch.num_rows
        if not n:
            return batch
        ts = batch.column(1).to_numpy()
        if not np.isfinite(ts).all():
            bad = ts[~np.isfinite(ts)][0]
            raise UsageError(f"event timestamps to store must be finite numbers, got {bad!r}")
        order = _sort_order(batch, ts)
        srt = batch if order is None else batch.take(order)
        sts = ts if order is None else ts[order]
        keep = _first_of_equal(srt, sts)
        with self._lock:
            db = self._writer()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    keep = self._unseen(db, srt, sts, keep)
                    new = srt if keep is None else srt.filter(keep)
                    if new.num_rows:
                        self._insert(db, new)
                    generation = self._newest(db)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, _pa().ArrowException) as exc:
                raise _translate("write to", self.path, exc) from exc
            self._generation = generation
        if compact and new.num_rows:
            self.compact()
        if keep is None:
            return batch
        if order is None:
            return batch.filter(keep)
        given = np.zeros(n, dtype=bool)
        given[order] = keep
        return batch.filter(given)

    def _unseen(
        self, db: sqlite3.Connection, srt: pa.RecordBatch, sts: np.ndarray, keep: np.ndarray | None
    ) -> np.ndarray | None:
        """``keep`` with the rows already stored turned off (None: keep all)."""
        np = _np()
        pc = _pa().compute
        lo, hi = float(sts[0]), float(sts[-1])
        candidates = db.execute(
            "SELECT seq, min_ts, max_ts FROM chunks WHERE max_ts >= ? AND min_ts <= ? AND died IS NULL", (lo, hi)
        ).fetchall()
        for seq, cmin, cmax in candidates:
            b_lo = int(np.searchsorted(sts, cmin, side="left"))
            b_hi = int(np.searchsorted(sts, cmax, side="right"))
            if b_lo >= b_hi:
                continue
            chunk = _from_ipc(self._blob(db, seq))
            cts = chunk.column(1).to_numpy()
            c_lo, c_hi = np.searchsorted(cts, lo, side="left"), np.searchsorted(cts, hi, side="right")
            if c_lo >= c_hi:
                continue
            # Equal timestamps first (cheap), then the (timestamp, id) keys of those rows only.
            part = np.isin(sts[b_lo:b_hi], cts[c_lo:c_hi])
            if not part.any():
                continue
            rows = np.nonzero(part)[0] + b_lo
            ours = _keys(sts[rows], srt.column(0).take(rows))
            theirs = _keys(cts[c_lo:c_hi], chunk.column(0).slice(c_lo, c_hi - c_lo))
            seen = pc.is_in(ours, value_set=theirs).to_numpy(zero_copy_only=False)
            if seen.any():
                if keep is None:
                    keep = np.ones(len(sts), dtype=bool)
                keep[rows[seen]] = False
        return keep

    def _insert(self, db: sqlite3.Connection, batch: pa.RecordBatch) -> None:
        """Insert sorted events as one chunk, or several when they are too many for one."""
        ts = batch.column(1).to_numpy()
        for start, stop in _pieces(batch.num_rows, batch.nbytes):
            piece = batch.slice(start, stop - start)
            data = batch_to_ipc(piece, compression=_COMPRESSION)
            db.execute(
                "INSERT INTO chunks (tier, min_ts, max_ts, rows, data, bytes) VALUES (?, ?, ?, ?, ?, ?)",
                (_tier(piece.num_rows, piece.nbytes), float(ts[start]), float(ts[stop - 1]), piece.num_rows,
                 data, decoded_size(data)),
            )

    @staticmethod
    def _blob(db: sqlite3.Connection, seq: int) -> _Blob:
        row = db.execute("SELECT data, bytes FROM chunks WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise StoreError(f"chunk {seq} is missing from the event store")
        return _Blob(seq, row[0], row[1])

    def compact(self) -> int:
        """Merge small chunks, tier by tier, while some tier holds :data:`MERGE_FANOUT` of them.

        Returns the number of merges. Each merge is a transaction of its own.
        """
        merges = 0
        while self._merge_one():
            merges += 1
        return merges

    def _merge_one(self) -> bool:
        pa = _pa()
        with self._lock:
            db = self._writer()
            self._purge()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute(
                        f"SELECT tier FROM chunks WHERE died IS NULL AND tier < {_FINAL_TIER} "
                        "GROUP BY tier HAVING count(*) >= ? ORDER BY tier LIMIT 1",
                        (MERGE_FANOUT,),
                    ).fetchone()
                    if row is None:
                        db.execute("COMMIT")
                        return False
                    chunks = db.execute(
                        "SELECT seq, min_ts, max_ts FROM chunks WHERE died IS NULL AND tier = ? "
                        f"AND tier < {_FINAL_TIER} ORDER BY min_ts, seq",
                        (row[0],),
                    ).fetchall()
                    merged = pa.concat_batches([_from_ipc(self._blob(db, seq)) for seq, _, _ in chunks])
                    disjoint = all(a[2] < b[1] for a, b in zip(chunks, chunks[1:]))
                    if not disjoint:
                        merged = merged.take(_sort_indices(merged))
                    # The merged chunks cannot share an event: no de-duplication here.
                    self._insert(db, merged)
                    seqs = [seq for seq, _, _ in chunks]
                    marks = ",".join("?" * len(seqs))
                    generation = self._newest(db)
                    if self.in_memory and self._snapshots:
                        # Open queries may still read them: kept until they end.
                        db.execute(f"UPDATE chunks SET died = ? WHERE seq IN ({marks})", (generation, *seqs))
                        self._dead = True
                    else:
                        db.execute(f"DELETE FROM chunks WHERE seq IN ({marks})", seqs)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, pa.ArrowException) as exc:
                raise _translate("write to", self.path, exc) from exc
            self._generation = generation
        return True

    def _purge(self) -> None:
        """Delete merged-away chunks no open query can read any more (``:memory:``, under the lock)."""
        if self._closed or not self._dead:
            return
        oldest = min(self._snapshots.values(), default=None)
        try:
            if oldest is None:
                self._db.execute("DELETE FROM chunks WHERE died IS NOT NULL")
                self._dead = False
            else:
                self._db.execute("DELETE FROM chunks WHERE died <= ?", (oldest,))
        except sqlite3.Error:  # pragma: no cover - retried at the next merge
            pass

    # ------------------------------------------------------------------ reading
    @renamed_arguments(chunk_size="batch_size")
    def query(self, filter: EventFilter | None = None, *, batch_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[EventColumns]:
        """The stored events matching ``filter``, in its order, as chunks of columns.

        Sees the events stored before the call (a snapshot), never more. Each
        chunk holds at most ``batch_size`` events and at least one; every chunk
        but the last holds exactly ``batch_size`` (``chunk_size``, its old
        name, still works with a warning).
        """
        batches = self.query_batches(filter, batch_size=batch_size)
        return _Results(batches, (batch_to_columns(b) for b in batches))

    @renamed_arguments(rows="batch_size")
    def query_batches(
        self, filter: EventFilter | None = None, *, batch_size: int = DEFAULT_CHUNK_SIZE, wait: float | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The stored events matching ``filter``, in its order, as Arrow record batches.

        Like :meth:`query`: a snapshot taken by the call; every batch but the
        last holds exactly ``batch_size`` events (``rows``, its old name, still
        works with a warning). The result has a ``close()``
        method; closing it (or reading it to the end) ends the snapshot.

        ``wait``: most seconds the query may go on matching without yielding;
        then it yields what matched so far (a batch of fewer than
        ``batch_size`` events, or of none when nothing has), so a reader of a
        selective query hears from it in time. ``None`` (the default): batches
        of ``batch_size`` only.
        """
        snapshot = self._snapshot(filter, batch_size, wait)
        return _Results(snapshot, _rebatch(self._matching(snapshot), batch_size, wait))

    @renamed_arguments(rows="batch_size")
    def query_ipc(
        self, filter: EventFilter | None = None, *, batch_size: int = CHUNK_ROWS, wait: float | None = None
    ) -> Iterator[bytes]:
        """The stored events matching ``filter``, in its order, as Arrow IPC stream messages.

        Each message holds at most ``batch_size`` events (``rows``, its old
        name, still works with a warning). A stored chunk that
        matches whole goes out exactly as it is stored (no decoding, no
        copying); other events are gathered into messages of ``batch_size`` events.
        ``wait`` is that of :meth:`query_batches` (a message of no events says
        that the query is still matching).
        """
        snapshot = self._snapshot(filter, batch_size, wait)
        return _Results(snapshot, _ipc_messages(self._matching(snapshot), batch_size, wait))

    def _snapshot(self, filter: EventFilter | None, rows: int, wait: float | None = None) -> _Snapshot:
        flt = filter if filter is not None else EventFilter()
        if not isinstance(flt, EventFilter):
            raise UsageError(f"a store query needs an EventFilter, got {type(flt).__name__}")
        if rows < 1:
            raise UsageError(f"a query's batch_size must be at least 1, got {rows}")
        if wait is not None and not wait > 0:
            raise UsageError(f"a query's wait must be a positive number of seconds or None, got {wait!r}")
        return _Snapshot(self, flt)

    def _matching(self, snapshot: _Snapshot) -> Iterator[tuple[pa.RecordBatch, bytes | None]]:
        """The snapshot's events in order, the criteria other than time applied.

        A piece of no events now and then (after each slice matched) lets a
        reader look at the clock while nothing matches.
        """
        flt = snapshot.filter
        pieces = _sweep(snapshot)
        if flt.is_time_only:
            yield from pieces
            return
        pa, np = _pa(), _np()
        for piece, blob in pieces:
            # In slices, so that a cancelled query stops within one slice's matching.
            parts: list[Any] = []
            for at in range(0, piece.num_rows, _MATCH_SLICE):
                if parts:
                    yield piece.slice(0, 0), None
                snapshot.check()
                parts.append(flt.mask_batch(piece.slice(at, _MATCH_SLICE)))
            mask = np.concatenate(parts) if parts else np.ones(0, dtype=bool)
            if mask.all():
                yield piece, blob
            elif mask.any():
                yield piece.filter(pa.array(mask, pa.bool_())), None
            else:
                yield piece.slice(0, 0), None

    def query_plan(self, filter: EventFilter | None = None) -> str:
        """SQLite's plan for selecting the chunks of :meth:`query` (shows which index is used)."""
        flt = filter if filter is not None else EventFilter()
        sql, params = _chunks_sql(flt, 0)
        try:
            with self._lock:
                rows = self._writer().execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        except sqlite3.Error as exc:
            raise _translate("read", self.path, exc) from exc
        return "\n".join(str(row[-1]) for row in rows)

    def count(self) -> int:
        """How many events are stored."""
        try:
            with self._lock:
                db = self._writer()
                return int(db.execute("SELECT coalesce(sum(rows), 0) FROM chunks WHERE died IS NULL").fetchone()[0])
        except sqlite3.Error as exc:
            raise _translate("read", self.path, exc) from exc

    def chunks(self) -> list[ChunkInfo]:
        """The stored chunks, oldest first (how the events are laid out, for tests and tuning)."""
        try:
            with self._lock:
                rows = self._writer().execute(
                    "SELECT seq, tier, rows, min_ts, max_ts FROM chunks WHERE died IS NULL ORDER BY seq"
                ).fetchall()
        except sqlite3.Error as exc:
            raise _translate("read", self.path, exc) from exc
        return [ChunkInfo(*row) for row in rows]

    # ------------------------------------------------------------------ lifetime
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the store (idempotent); a file store's write-ahead log is folded in."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._pool_lock:
                idle, self._idle = self._idle, []
            try:
                for db in idle:
                    db.close()
                self._db.close()
            except sqlite3.Error as exc:
                raise _translate("close", self.path, exc) from exc

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"EventStore({self.path!r}, {state})"


# --------------------------------------------------------------------------- queries


class _Meta(NamedTuple):
    seq: int
    min_ts: float
    max_ts: float
    rows: int


class _Snapshot:
    """What one query may read: the chunk list taken when it was made, and how to read them.

    A file store's query holds a connection in a read transaction (SQLite's
    snapshot); a ``:memory:`` store's query holds a generation, which keeps
    chunks merged away after it from being deleted.
    """

    def __init__(self, store: EventStore, flt: EventFilter) -> None:
        self.store = store
        self.filter = flt
        self.desc = flt.order == "desc"
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
            raise _translate("read", store.path, exc) from exc
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
        np = _np()
        start = -math.inf if flt.start is None else flt.start
        end = math.inf if flt.end is None else flt.end
        n = 0
        for meta in self.metas:
            if meta.min_ts >= start and meta.max_ts <= end:
                n += meta.rows
                continue
            ts = _from_ipc(self.blob(meta.seq)).column(1).to_numpy()
            n += max(0, int(np.searchsorted(ts, end, side="right")) - int(np.searchsorted(ts, start, side="left")))
        return n

    def _select(self, db: sqlite3.Connection, generation: int) -> list[_Meta]:
        sql, params = _chunks_sql(self.filter, generation)
        return [_Meta(*row) for row in db.execute(sql, params)]

    def cancel(self) -> None:
        """Make the next read fail (any thread): a query stops at its next chunk."""
        self._cancelled = True

    def check(self) -> None:
        """Raise StoreError when the query was cancelled."""
        if self._cancelled:
            raise StoreError(f"a query of the event store {self.store.path!r} was cancelled")

    def blob(self, seq: int) -> _Blob:
        store = self.store
        self.check()
        if self._done or store._closed:
            raise StoreError(f"the event store {store.path!r} was closed during a query")
        try:
            if self._db is not None:
                return store._blob(self._db, seq)
            with store._lock:
                if store._closed:
                    raise StoreError(f"the event store {store.path!r} was closed during a query")
                return store._blob(store._db, seq)
        except sqlite3.Error as exc:
            raise _translate("read", store.path, exc) from exc

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


class _Results(Iterator[Any]):
    """An iterator that ends its snapshot when read to the end, closed or dropped."""

    def __init__(self, owner: Any, items: Iterator[Any]) -> None:
        self._owner = owner
        self._items = items

    def __iter__(self) -> _Results:
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
        :meth:`_Snapshot.count`); None otherwise. Call it before reading."""
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


def _chunks_sql(flt: EventFilter, generation: int) -> tuple[str, list[Any]]:
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


class _Open:
    """A chunk being read: its remaining rows in output order, their sort keys ascending."""

    __slots__ = ("batch", "keys", "blob")

    def __init__(self, batch: pa.RecordBatch, keys: np.ndarray, blob: bytes | None) -> None:
        self.batch = batch
        self.keys = keys
        self.blob = blob

    def cut(self, count: int) -> tuple[pa.RecordBatch, bytes | None]:
        """Take the first ``count`` rows off (with the stored blob when that is all of them)."""
        if count >= self.batch.num_rows:
            head, blob = self.batch, self.blob
            self.batch = self.batch.slice(0, 0)
            self.keys = self.keys[:0]
        else:
            head, blob = self.batch.slice(0, count), None
            self.batch = self.batch.slice(count)
            self.keys = self.keys[count:]
            self.blob = None
        return head, blob


def _sweep(snapshot: _Snapshot) -> Iterator[tuple[pa.RecordBatch, bytes | None]]:
    """The snapshot's events in the time range, in order, as pieces (batch, stored blob or None).

    Chunks are opened in the order of their first event (last, for ``desc``);
    before the next one is opened, every open row that comes before its first
    event is emitted. A chunk that overlaps no other comes out as stored; rows
    of overlapping chunks are merged, so memory holds only the chunks that
    overlap the current position.
    """
    np = _np()
    flt, desc, metas = snapshot.filter, snapshot.desc, snapshot.metas
    start = -math.inf if flt.start is None else flt.start
    end = math.inf if flt.end is None else flt.end
    opened: list[_Open] = []
    i = 0
    while i < len(metas) or opened:
        if i < len(metas):
            meta = metas[i]
            i += 1
            blob = snapshot.blob(meta.seq)
            chunk = _from_ipc(blob)
            ts = chunk.column(1).to_numpy()
            lo = 0 if meta.min_ts >= start else int(np.searchsorted(ts, start, side="left"))
            hi = len(ts) if meta.max_ts <= end else int(np.searchsorted(ts, end, side="right"))
            if lo < hi:
                whole = lo == 0 and hi == len(ts) and not desc
                part = chunk.slice(lo, hi - lo)
                if desc:
                    part = part.take(np.arange(hi - lo - 1, -1, -1))
                    keys = -ts[lo:hi][::-1]
                else:
                    keys = ts[lo:hi]
                opened.append(_Open(part, keys, blob.data if whole else None))
            if i < len(metas):
                nxt = metas[i]
                boundary = -nxt.max_ts if desc else nxt.min_ts
            else:
                boundary = None
        else:
            boundary = None
        heads = []
        for item in opened:
            count = item.batch.num_rows if boundary is None else int(np.searchsorted(item.keys, boundary, side="left"))
            if count:
                heads.append(item.cut(count))
        opened = [item for item in opened if item.batch.num_rows]
        if len(heads) == 1:
            yield heads[0]
        elif heads:
            merged = _pa().concat_batches([h for h, _ in heads])
            yield merged.take(_sort_indices(merged, desc)), None


class _Gather:
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
        return self.waiting[0] if len(self.waiting) == 1 else _pa().concat_batches(self.waiting)


class _Clock:
    """When a query last yielded, and whether its ``wait`` has passed since."""

    __slots__ = ("wait", "last")

    def __init__(self, wait: float | None) -> None:
        self.wait = wait
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.wait is not None and time.monotonic() - self.last >= self.wait

    def reset(self) -> None:
        self.last = time.monotonic()


def _rebatch(
    pieces: Iterator[tuple[pa.RecordBatch, bytes | None]], rows: int, wait: float | None = None
) -> Iterator[pa.RecordBatch]:
    """Pieces as batches of exactly ``rows`` events (the last one: what is left);
    what is gathered (maybe nothing) whenever ``wait`` seconds pass without a batch."""
    gather = _Gather(rows)
    clock = _Clock(wait)
    for piece, _ in pieces:
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


def _ipc_messages(
    pieces: Iterator[tuple[pa.RecordBatch, bytes | None]], rows: int, wait: float | None = None
) -> Iterator[bytes]:
    """Pieces as IPC messages of at most ``rows`` events and about :data:`_CHUNK_BYTES`
    bytes at most (a reader bounds what one message may decode to); a whole stored
    chunk as stored; what is gathered (maybe nothing) whenever ``wait`` seconds
    pass without a message."""
    gather = _Gather(rows)
    clock = _Clock(wait)
    for piece, blob in pieces:
        if blob is not None and piece.num_rows <= rows:
            rest = gather.rest()
            if rest is not None:
                yield batch_to_ipc(rest)
            yield blob
            clock.reset()
            continue
        if piece.num_rows:
            for start, stop in _pieces(piece.num_rows, piece.nbytes):
                part = piece.slice(start, stop - start)
                if gather.count and gather.nbytes + part.nbytes > _CHUNK_BYTES:
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


# --------------------------------------------------------------------------- Arrow helpers


def _event_batch(data: Any, validated: bool = False) -> pa.RecordBatch:
    """``data`` (RecordBatch or Table) as one RecordBatch of the event schema; UsageError if it is not one."""
    pa = _pa()
    names = list(data.schema.names)
    if names != list(_FIELDS):
        raise UsageError(f"Arrow data to store needs the columns {', '.join(_FIELDS)}; got {', '.join(names)}")
    for name in _FIELDS:
        if data.column(name).null_count:
            raise UsageError(f"Arrow data to store has missing values in column {name!r}")
    schema = event_schema()
    if not data.schema.equals(schema):
        try:
            data = data.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise UsageError(f"Arrow data to store cannot be read with the event schema: {exc}") from exc
    if isinstance(data, pa.Table):
        batches = data.to_batches()
        if not batches:
            return pa.RecordBatch.from_pylist([], schema=schema)
        data = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
    try:
        # A pass over the bytes, and what is stored is read by every kernel
        # that serves it: offsets past the data or text that is not UTF-8 stay out.
        data.validate(full=not validated)
    except pa.ArrowInvalid as exc:
        raise UsageError(f"Arrow data to store is not valid: {exc}") from exc
    return data


class _Blob(NamedTuple):
    """A stored chunk as read: its number, its Arrow IPC stream, the bytes it decodes to."""

    seq: int
    data: bytes
    bytes: int


def _from_ipc(blob: _Blob) -> pa.RecordBatch:
    """The events of a stored chunk; StoreError when it is damaged or would decode
    to more than it did when it was stored (checked before decompressing)."""
    pa = _pa()
    try:
        # Validated in full when stored: the structure is what a damaged file could break.
        batches = ipc_to_batches(blob.data, max_decoded=blob.bytes, full=False)
    except DecodeError as exc:
        raise StoreError(f"chunk {blob.seq} of the event store is damaged: {exc}") from None
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=event_schema())
    return pa.concat_batches(batches)


def _sort_indices(batch: pa.RecordBatch, desc: bool = False) -> pa.Array:
    order = "descending" if desc else "ascending"
    return _pa().compute.sort_indices(batch, sort_keys=[("timestamp", order), ("id", order)])


def _sort_order(batch: pa.RecordBatch, ts: np.ndarray) -> np.ndarray | None:
    """The permutation sorting ``batch`` by (timestamp, id), stably; None when it is sorted already."""
    np = _np()
    if len(ts) < 2:
        return None
    step = ts[1:] >= ts[:-1]
    if step.all():
        ties = np.nonzero(ts[1:] == ts[:-1])[0]
        if not len(ties):
            return None
        ids = batch.column(0)
        pc = _pa().compute
        before = ids.take(ties)
        after = ids.take(ties + 1)
        if pc.all(pc.less_equal(before, after)).as_py():
            return None
    return _sort_indices(batch).to_numpy()


def _first_of_equal(srt: pa.RecordBatch, sts: np.ndarray) -> np.ndarray | None:
    """In sorted events, all but the first of equal (timestamp, id) turned off; None if none repeat."""
    np = _np()
    ties = np.nonzero(sts[1:] == sts[:-1])[0]
    if not len(ties):
        return None
    pc = _pa().compute
    ids = srt.column(0)
    same = pc.equal(ids.take(ties), ids.take(ties + 1)).to_numpy(zero_copy_only=False)
    if not same.any():
        return None
    keep = np.ones(len(sts), dtype=bool)
    keep[ties[same] + 1] = False
    return keep


def _keys(ts: np.ndarray, ids: pa.Array) -> pa.Array:
    """One binary key per event: its timestamp's 8 bytes (-0.0 read as 0.0), then its id."""
    np = _np()
    pa = _pa()
    raw = np.ascontiguousarray((ts + 0.0).astype(">f8")).view(np.uint8)
    stamps = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), len(ts), [None, pa.py_buffer(raw)])
    return pa.compute.binary_join_element_wise(stamps.cast(pa.binary()), ids.cast(pa.binary()), b"")


def _pieces(rows: int, nbytes: int) -> list[tuple[int, int]]:
    """Row ranges splitting ``rows`` events (``nbytes`` of data) into chunks of about equal size."""
    count = max(1, -(-rows // CHUNK_ROWS), -(-nbytes // _CHUNK_BYTES))
    count = min(count, rows)
    size = -(-rows // count)
    return [(at, min(at + size, rows)) for at in range(0, rows, size)]


def _tier(rows: int, nbytes: int) -> int:
    """The merge tier of a chunk: 0 for fewer than 8 events, +1 per factor 8; final when large."""
    if rows >= _FINAL_ROWS or nbytes >= _FINAL_BYTES:
        return _FINAL_TIER
    tier = 0
    while rows >= MERGE_FANOUT ** (tier + 1):
        tier += 1
    return tier


