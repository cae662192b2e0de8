"""The embedded collector's event store: SQLite (standard library), a file or ``:memory:``.

Events are kept in *chunks*: each chunk is one row of an SQLite table holding
an Arrow IPC stream of events (:func:`~theia_frames.protocol.arrow.event_schema`:
sources as a dictionary, tags as lists; sorted by timestamp, then arrival; its
buffers compressed with ZSTD, about 21 bytes per sensor-like event) with its first and last timestamp, its row count,
the bytes it decodes to, its events' arrival numbers
(:func:`~theia_frames.server.chunks.encode_arrivals`) and a checksum of all of these
(:func:`~theia_frames.server.chunks.chunk_checksum`), checked each time the chunk is read and
before anything of it is decoded: a damaged chunk raises
:class:`~theia_frames.exceptions.StoreError` naming its time range and how many events it held,
and is never served as data. A chunk is read only when the sizes its Arrow
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

Identity: an event is its (timestamp, id), the timestamp at the microsecond
(:func:`~theia_frames.server.chunks.identity_micros`: the Go dialect's six decimals and the
Arrow dialect's full float name the same event). The first stored copy wins: storing it again
(a client resending after a reconnect) never duplicates it, and a copy with other content
(source, tags or content) is left out too, told apart (:meth:`EventStore.store_batch`), so the
collector can refuse it; the same id at another time is another event. A new batch is checked against the
stored chunks whose time range overlaps its own, with vectorised Arrow
kernels; for events arriving in time order that is the newest chunk at most. The check
compares identity keys: those of the newest chunks are held in memory
(:attr:`EventStore.key_index`, at most
:data:`~theia_frames.server.keyindex.KEY_INDEX_BYTES`), those of any other chunk are read
from its id and timestamp columns; a chunk's content is decompressed only when one of
its keys is the batch's, to tell an exact repeat from a copy with other content.

Small writes (a few events per commit) make small chunks; chunks are merged
by size tiers, as in a log-structured merge tree: when :data:`MERGE_FANOUT`
chunks of one tier exist they become one chunk of a higher tier, up to
:data:`CHUNK_ROWS` rows. An event is rewritten once per tier, so the cost of
keeping the chunks few stays logarithmic. A batch of many events is stored as
a chunk that is never merged again.

A chunk that will not be merged again (the final tier) is stored with its summary
(:mod:`~theia_frames.server.summaries`: its events counted per second by source and by
tag, a few kilobytes in a table of their own, under the chunk's checksum), from which
:meth:`EventStore.scan` lets a count of time alone take the chunk without reading it.

Queries select the chunks overlapping the time range with an index (see
:meth:`EventStore.query_plan`) and stream them in order with bounded memory:
chunks whose time ranges overlap are merged as they are read, everything else
is passed on as stored (zero-copy slices). The time range is applied with
binary search on the sorted timestamps; the other criteria with
:meth:`EventFilter.mask_batch <theia_frames.filter.EventFilter.mask_batch>`
(Arrow kernels over whole columns), so a filter means exactly what it means
everywhere else. A query sees the
events stored before it was made, in timestamp order, events of the same
timestamp in the order they arrived (``desc`` is the exact reverse of ``asc``)::

    >>> store = EventStore(":memory:")
    >>> store.add_many([Event(id=i, timestamp=5.0) for i in "zax"]) + store.add_many([Event(id="b", timestamp=5.0)])
    4
    >>> [cols.id for cols in store.query(Filter(1))], [cols.id for cols in store.query(Filter(1).order_desc())]
    ([['z', 'a', 'x', 'b']], [['b', 'x', 'a', 'z']])
    >>> store.close()

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

import os
import sqlite3
import threading
from collections import deque
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..timeparse import event_time_problem
from ..protocol.arrow import outside_event_times, batch_to_columns, batch_to_ipc, columns_to_batch, decoded_size, empty_batch, ipc_to_batches
from ..protocol.codec import EventColumns
from ..event import Event
from ..exceptions import DecodeError, StoreError, UsageError
from ..filter import EventFilter, as_filter
from .chunks import PART_KEYS, insert_chunk, read_columns, read_stream, MEMORY, CHUNK_ROWS, MERGE_FANOUT, Blob, checked_blob, chunk_checksum, COMPRESSION, FIELDS, FINAL_TIER, arrival_order, decode_arrivals, encode_arrivals, event_batch, first_of_equal, from_ipc, identity_micros, IDENTITY_MARGIN, same_content, sort_keys, piece_spans, sort_order, tier, translate_error, whole
from .keyindex import KEY_INDEX_BYTES, ChunkKeys, KeyIndex
from .summaries import ChunkSummary, chunk_summary, read_summary
from .query import Matcher, Results, Snapshot, chunks_sql, ipc_messages, rebatch, sweep

__all__ = [
    "EventStore",
    "ChunkInfo",
    "Stored",
    "DEFAULT_CHUNK_SIZE",
    "CHUNK_ROWS",
    "MERGE_FANOUT",
    "MEMORY",
    "FORMAT_VERSION",
    "APPLICATION_ID",
]

#: Rows per batch of a query, unless asked otherwise.
DEFAULT_CHUNK_SIZE = 10_000
#: The layout of the database, kept in its ``user_version``. Format 5 keeps chunks
#: in the event schema of the extension's second version (sources as a dictionary,
#: tags as lists), compressed (ZSTD), with the bytes they decode to and their
#: events' arrival numbers (events of equal timestamps in the order they arrived).
#: Format 6 adds each chunk's checksum (:func:`~theia_frames.server.chunks.chunk_checksum`).
#: Format 7 adds chunks' summaries (:mod:`~theia_frames.server.summaries`), in a table of their
#: own (a chunk without one, as a chunk still to be merged, has no row there: only chunks of the
#: final tier are summarized).
#: A store of format 2 (uncompressed chunks, tags as comma text), 3 (compressed,
#: tags as text), 4 (no arrival numbers), 5 (no checksums) or 6 (no summaries) is upgraded when it
#: is opened, in one transaction: chunks of formats 2 and 3 are rewritten, the events of every
#: chunk are numbered in their stored order (chunk by chunk, oldest chunk first), and
#: every chunk's checksum is computed (over the bytes as they are then). No chunk is rewritten
#: for its summary: the chunks stored before have none (a count reads them, as it did), and
#: a chunk without one has the checksum it had.
#: Format 8 stores chunks of the final tier in parts, a column in each
#: (:func:`~theia_frames.server.chunks.insert_chunk`), so a count or a filter reads only the
#: columns it needs; a store of format 7 opens without a rewrite (its chunks stay whole, a
#: merge stores in parts what it writes).
FORMAT_VERSION = 8

# Events matched between two looks at whether the query was cancelled: a pattern
# matched row by row takes about a tenth of a second for these; Arrow kernels
# take a few milliseconds for four times as many (a whole chunk, usually).
_MATCH_SLICE = 16_384
_KERNEL_SLICE = 65_536
# Bytes the write-ahead log is cut back to after a checkpoint.
_WAL_SIZE_LIMIT = 64 * 1024 * 1024
# Events from an iterable of Event objects are stored in batches of this many.
_ADD_CHUNK = 50_000
# The formats an opened store is upgraded from.
_UPGRADABLE = (2, 3, 4, 5, 6, 7)
#: "thfr": marks a database as a theia_frames event store (SQLite ``application_id``).
APPLICATION_ID = 0x74686672
_PREVIOUS_LAYOUT = ["seq", *FIELDS]

def _text_tags_schema() -> pa.Schema:
    """The chunks' schema in formats 2 and 3: sources as text, tags as comma text."""
    return pa.schema([(name, pa.float64() if name == "timestamp" else pa.string()) for name in FIELDS])


# The newest arrival number is read from this index at each write.
_ARRIVAL_INDEX = "CREATE INDEX chunks_arrival ON chunks (last_arrival)"

# Chunk summaries, in a table of their own: read without walking the pages of the chunk's data
# (a column after a large blob is reached through all of its pages). Gone with their chunk.
_SUMMARIES = (
    "CREATE TABLE summaries (seq INTEGER PRIMARY KEY, summary BLOB NOT NULL)",
    "CREATE TRIGGER chunks_summaries AFTER DELETE ON chunks BEGIN DELETE FROM summaries WHERE seq = old.seq; END",
)

# The columns of chunks stored in parts (row seq * PART_KEYS + the column's place), and each
# part's length and CRC-32 (chunks.parts; NULL: the chunk is whole in chunks.data). Gone with their chunk.
_PARTS = (
    "ALTER TABLE chunks ADD COLUMN parts BLOB",
    "CREATE TABLE chunk_columns (key INTEGER PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TRIGGER chunks_columns AFTER DELETE ON chunks BEGIN "
    f"DELETE FROM chunk_columns WHERE key >= old.seq * {PART_KEYS} AND key < (old.seq + 1) * {PART_KEYS}; END",
)

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
        bytes INTEGER NOT NULL,
        arrivals BLOB NOT NULL,
        last_arrival INTEGER NOT NULL,
        checksum INTEGER NOT NULL
    )""",
    "CREATE INDEX chunks_max_ts ON chunks (max_ts)",
    "CREATE INDEX chunks_min_ts ON chunks (min_ts)",
    f"CREATE INDEX chunks_open ON chunks (tier) WHERE died IS NULL AND tier < {FINAL_TIER}",
    _ARRIVAL_INDEX,
    *_SUMMARIES,
    *_PARTS,
)

EventsLike = Union[EventColumns, Event, Iterable[Event], "pa.RecordBatch", "pa.Table"]


class Stored(NamedTuple):
    """What :meth:`EventStore.store_batch` did with a batch: ``new``, the events stored (in
    the order given); for each event given, whether it was left out as an exact ``repeated``
    copy of an event stored (or of one before it in the batch: same identity, source, tags
    and content) or as a ``conflicting`` one (same identity, other content)."""

    new: pa.RecordBatch
    repeated: np.ndarray
    conflicting: np.ndarray


def _among(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in ``sorted_set`` (a sorted, non-empty array)."""
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return np.asarray(sorted_set[at] == values)


# Chunks EventStore.scan reads ahead of its reader, each in a thread of its own.
_SCAN_AHEAD = 2


class ChunkInfo(NamedTuple):
    """One stored chunk, as :meth:`EventStore.chunks` describes it."""

    seq: int
    tier: int
    rows: int
    min_ts: float
    max_ts: float


# Page cache of a connection that reads for one query (KiB), and readers kept idle for the next ones.
_READER_CACHE_KIB = 2048
_IDLE_READERS = 4


class EventStore:
    """Events in SQLite: ``path`` is a file (created if missing) or ``":memory:"``.

    A context manager; :meth:`close` when done. Events in a file survive a
    restart.
    """

    def __init__(self, path: str | os.PathLike[str] = MEMORY, *, key_index_bytes: int = KEY_INDEX_BYTES) -> None:
        self.path = os.fspath(path)
        #: The identity keys of the newest chunks (:class:`~theia_frames.server.keyindex.KeyIndex`),
        #: at most ``key_index_bytes`` of them: the duplicate check reads the chunks of other keys.
        self.key_index = KeyIndex(key_index_bytes)
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
            raise translate_error("open", self.path, exc) from exc

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
            with _write_transaction(db):
                # Checked again under the write lock: another process may have created it.
                if not self._check_format(db):
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                elif db.execute("PRAGMA user_version").fetchone()[0] in _UPGRADABLE:
                    self._upgrade(db)
            self._generation = self._newest(db)
        except BaseException:
            db.close()
            raise

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Rewrite a store of an earlier format as :data:`FORMAT_VERSION` (inside the caller's
        transaction): chunks of formats 2 and 3 read in their old schema and stored again in
        the event schema; every event numbered in its stored order (oldest chunk first)."""
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version < 5:
            self._number_arrivals(db, version)
        if version < 6:
            db.execute("ALTER TABLE chunks ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0")
            rows = db.execute("SELECT seq, data, bytes, arrivals, min_ts, max_ts, rows FROM chunks").fetchall()
            for seq, data, nbytes, arrivals, min_ts, max_ts, count in rows:
                checksum = chunk_checksum(data, nbytes, arrivals, min_ts, max_ts, count)
                db.execute("UPDATE chunks SET checksum = ? WHERE seq = ?", (checksum, seq))
        if version < 7:
            # no summaries for the chunks stored before: their checksums as they are
            for statement in _SUMMARIES:
                db.execute(statement)
        # the chunks stored before stay whole
        for statement in _PARTS:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")

    def _number_arrivals(self, db: sqlite3.Connection, version: int) -> None:
        """Formats 2 to 4 as format 5: chunks rewritten in the event schema, events numbered."""
        if version == 2:
            # Format 2 chunks are uncompressed: they decode to no more than their own length.
            db.execute("ALTER TABLE chunks ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")
            db.execute("UPDATE chunks SET bytes = length(data)")
        db.execute("ALTER TABLE chunks ADD COLUMN arrivals BLOB NOT NULL DEFAULT x''")
        db.execute("ALTER TABLE chunks ADD COLUMN last_arrival INTEGER NOT NULL DEFAULT 0")
        db.execute(_ARRIVAL_INDEX)
        old = _text_tags_schema()
        numbered = 0
        for seq, rows in db.execute("SELECT seq, rows FROM chunks ORDER BY seq").fetchall():
            if version < 4:
                blob = self._blob(db, seq, checked=False)
                try:
                    parts = ipc_to_batches(blob.data, max_decoded=blob.bytes, full=False, schema=old)
                except DecodeError as exc:
                    raise StoreError(f"chunk {seq} of the event store {self.path!r} is damaged: {exc}") from None
                batch = event_batch(pa.Table.from_batches(parts, schema=old), validated=True)
                data = batch_to_ipc(batch, compression=COMPRESSION)
                db.execute("UPDATE chunks SET data = ?, bytes = ? WHERE seq = ?", (data, decoded_size(data), seq))
            arrivals = np.arange(numbered + 1, numbered + rows + 1, dtype=np.int64)
            numbered += rows
            db.execute(
                "UPDATE chunks SET arrivals = ?, last_arrival = ? WHERE seq = ?",
                (encode_arrivals(arrivals), numbered, seq),
            )

    def _check_format(self, db: sqlite3.Connection) -> bool:
        """True for one of our stores, False for an empty database; raises for anything else."""
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if not tables:
            return False
        app = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if app != APPLICATION_ID:
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
        if version in _UPGRADABLE:
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
            # A query reads each chunk once: a small page cache per reader, so many
            # concurrent finds do not each keep their own copy of the file.
            db.execute(f"PRAGMA cache_size = -{_READER_CACHE_KIB}")
        return db

    def _give_back(self, db: sqlite3.Connection) -> None:
        with self._pool_lock:
            if self._closed or len(self._idle) >= _IDLE_READERS:
                db.close()  # past a few idle readers, their memory goes back when the finds end
            else:
                self._idle.append(db)

    # ------------------------------------------------------------------ writing
    def add(self, event: Event) -> bool:
        """Store one event; False when it is already stored."""
        return self.add_many([event]) == 1

    def add_many(self, events: EventsLike) -> int:
        """Store events; returns how many were new (events already stored are ignored).

        ``events`` is :class:`~theia_frames.protocol.codec.EventColumns`, a pyarrow
        RecordBatch or Table with the event schema, one :class:`Event`, or any
        iterable of events (consumed lazily, stored in batches of 50,000).
        """
        if isinstance(events, EventColumns):
            return len(self.add_new(events))
        if isinstance(events, Event):
            events = [events]
        if hasattr(events, "schema") and hasattr(events, "column"):
            table: Any = events
            return int(self.add_batch(table).num_rows)
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
        ``validate(full=True)``, as :func:`~theia_frames.protocol.arrow.ipc_to_batches`
        does), so it is not done again.
        """
        return self.store_batch(data, compact=compact, validated=validated).new

    def store_batch(
        self, data: pa.RecordBatch | pa.Table, *, compact: bool = True, validated: bool = False
    ) -> Stored:
        """:meth:`add_batch`, telling what became of each event (:class:`Stored`): stored,
        an exact repeat of a stored event (or of one before it in ``data``), or a copy of
        one with other content (left out: the first stored is kept).

        >>> from theia_frames.protocol.arrow import events_to_batch
        >>> store = EventStore(":memory:")
        >>> store.add_many([Event(id="a", timestamp=1.0, content="first")])
        1
        >>> out = store.store_batch(events_to_batch([
        ...     Event(id="a", timestamp=1.0000001, content="first"),   # the same microsecond: a repeat
        ...     Event(id="a", timestamp=1.0, content="other"),         # other content: left out
        ...     Event(id="b", timestamp=1.0)]))
        >>> out.new.column(0).to_pylist(), out.repeated.tolist(), out.conflicting.tolist()
        (['b'], [True, False, False], [False, True, False])
        >>> store.close()
        """
        batch = event_batch(data, validated)
        n = batch.num_rows
        none = np.zeros(n, dtype=bool)
        if not n:
            return Stored(batch, none, none)
        ts = batch.column(1).to_numpy()
        wrong = outside_event_times(batch.column(1))
        if wrong is not None:
            row = int(wrong.argmax())
            raise UsageError(f"event {batch.column(0)[row].as_py()!r} cannot be stored: {event_time_problem(float(ts[row]))}")
        order = sort_order(ts)
        srt = batch if order is None else batch.take(order)
        sts = ts if order is None else ts[order]
        found = first_of_equal(srt, sts, order)
        keep: Any = None
        repeated, conflicting = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)  # in sorted order
        if found is not None:
            keep, copy_of = found
            dropped = np.flatnonzero(~keep)
            same = same_content(srt.take(dropped), srt.take(copy_of[dropped]))
            repeated[dropped[same]] = True
            conflicting[dropped[~same]] = True
        with self._lock:
            db = self._writer()
            try:
                with _write_transaction(db):
                    keep = self._unseen(db, srt, sts, keep, repeated, conflicting)
                    new = srt if keep is None else srt.filter(keep)
                    inserted: list[tuple[int, ChunkKeys]] = []
                    if new.num_rows:
                        # numbered in the order given, after every event stored before
                        first = self._last_arrival(db) + 1
                        arrivals = np.arange(first, first + n, dtype=np.int64) if order is None else order + first
                        inserted = self._insert(db, new, arrivals if keep is None else arrivals[keep])
                    generation = self._newest(db)
            except (sqlite3.Error, pa.ArrowException) as exc:
                raise translate_error("write to", self.path, exc) from exc
            self._generation = generation
            for seq, keys in inserted:  # committed: their numbers are theirs for good
                self.key_index.put(seq, keys)
        if compact and new.num_rows:
            self.compact()
        if order is not None:
            given = np.empty(n, dtype=np.int64)
            given[order] = np.arange(n)
            repeated, conflicting = repeated[given], conflicting[given]
        if keep is None:
            return Stored(batch, repeated, conflicting)
        return Stored(batch.filter(~(repeated | conflicting)), repeated, conflicting)

    def _unseen(
        self,
        db: sqlite3.Connection,
        srt: pa.RecordBatch,
        sts: np.ndarray,
        keep: np.ndarray | None,
        repeated: np.ndarray,
        conflicting: np.ndarray,
    ) -> np.ndarray | None:
        """``keep`` with the rows already stored (the same identity: :func:`~theia_frames.server.chunks.sort_keys`)
        turned off (None: keep all); each of them marked in ``repeated`` or ``conflicting``
        by whether the stored copy has its content."""
        lo, hi = float(sts[0]) - IDENTITY_MARGIN, float(sts[-1]) + IDENTITY_MARGIN
        candidates = db.execute(
            "SELECT seq, min_ts, max_ts FROM chunks WHERE max_ts >= ? AND min_ts <= ? AND died IS NULL", (lo, hi)
        ).fetchall()
        micros = identity_micros(sts)
        for seq, cmin, cmax in candidates:
            b_lo = int(np.searchsorted(sts, cmin - IDENTITY_MARGIN, side="left"))
            b_hi = int(np.searchsorted(sts, cmax + IDENTITY_MARGIN, side="right"))
            if b_lo >= b_hi:
                continue
            stored_keys = self._chunk_keys(db, seq)
            # the chunk's rows within the batch's microseconds (both in time order)
            c_lo = int(np.searchsorted(stored_keys.micros, micros[b_lo], side="left"))
            c_hi = int(np.searchsorted(stored_keys.micros, micros[b_hi - 1], side="right"))
            if c_lo >= c_hi:
                continue
            # Equal microseconds first (cheap), then the identity keys of those rows only.
            theirs_micros = stored_keys.micros[c_lo:c_hi]
            ours_micros = micros[b_lo:b_hi]
            part = _among(ours_micros, theirs_micros)
            if not part.any():
                continue
            rows = np.nonzero(part)[0] + b_lo
            ours = sort_keys(sts[rows], srt.column(0).take(rows))
            theirs_rows = np.nonzero(_among(theirs_micros, ours_micros))[0] + c_lo
            at = pc.index_in(ours, value_set=stored_keys.keys(theirs_rows)).to_numpy(zero_copy_only=False)
            seen = ~np.isnan(at.astype(np.float64))
            if seen.any():
                if keep is None:
                    keep = np.ones(len(sts), dtype=bool)
                hit = rows[seen]
                keep[hit] = False
                # only now is the chunk's content read: an exact repeat or a copy with other content
                stored = from_ipc(self._blob(db, seq)).take(theirs_rows[at[seen].astype(np.int64)])
                same = same_content(srt.take(hit), stored)
                repeated[hit], conflicting[hit] = same, ~same
        return keep

    def _chunk_keys(self, db: sqlite3.Connection, seq: int) -> ChunkKeys:
        """The identity keys of stored chunk ``seq``: from :attr:`key_index`, or read from the
        chunk (its id and timestamp columns alone) and held there from now on."""
        keys = self.key_index.get(seq)
        if keys is None:
            chunk = self._columns(db, seq, ("id", "timestamp"))
            keys = ChunkKeys.of(chunk.column("timestamp").to_numpy(), chunk.column("id"))
            self.key_index.put(seq, keys)
        return keys

    def _insert(self, db: sqlite3.Connection, batch: pa.RecordBatch, arrivals: np.ndarray) -> list[tuple[int, ChunkKeys]]:
        """Insert events sorted by (timestamp, arrival) as one chunk, or several when they are too
        many for one; returns each chunk's number and keys, for :attr:`key_index` once committed."""
        ts = batch.column(1).to_numpy()
        inserted: list[tuple[int, ChunkKeys]] = []
        for start, stop in piece_spans(batch.num_rows, batch.nbytes):
            piece = batch.slice(start, stop - start)
            data = batch_to_ipc(piece, compression=COMPRESSION)
            numbers = arrivals[start:stop]
            nbytes, runs = decoded_size(data), encode_arrivals(numbers)
            first, last = float(ts[start]), float(ts[stop - 1])
            level = tier(piece.num_rows, piece.nbytes)
            # a chunk still to be merged (small, soon gone) is not summarized: its merge is
            summary = chunk_summary(piece, first, last) if level == FINAL_TIER else None
            # and is stored whole: it is read whole by that merge
            seq = insert_chunk(
                db, tier=level, min_ts=first, max_ts=last, rows=piece.num_rows, data=data, nbytes=nbytes,
                arrivals=runs, last_arrival=int(numbers.max()), summary=summary, parts=level == FINAL_TIER,
            )
            inserted.append((seq, ChunkKeys.of(ts[start:stop], piece.column(0))))
        return inserted

    @staticmethod
    def _last_arrival(db: sqlite3.Connection) -> int:
        """The newest arrival number given (0 before the first event)."""
        return int(db.execute("SELECT coalesce(max(last_arrival), 0) FROM chunks").fetchone()[0])

    @staticmethod
    def _blob(db: sqlite3.Connection, seq: int, checked: bool = True) -> Blob:
        """Chunk ``seq`` as stored, its checksum checked (unless ``checked`` is False: an
        upgrade reading a format that had none)."""
        if not checked:
            row = db.execute("SELECT data, bytes, arrivals FROM chunks WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                raise StoreError(f"chunk {seq} is missing from the event store")
            return Blob(seq, row[0], row[1], row[2])
        row = db.execute(
            "SELECT data, parts, bytes, arrivals, min_ts, max_ts, rows, checksum, "
            "(SELECT summary FROM summaries WHERE summaries.seq = chunks.seq) FROM chunks WHERE seq = ?",
            (seq,),
        ).fetchone()
        if row is None:
            raise StoreError(f"chunk {seq} is missing from the event store")
        return checked_blob(seq, read_stream(db, seq, row[0], row[1]), *row[2:])

    @staticmethod
    def _columns(db: sqlite3.Connection, seq: int, fields: Sequence[str], threads: bool = True) -> pa.RecordBatch:
        """The events of chunk ``seq`` in the columns ``fields`` alone, checked: from their parts
        alone when it is stored in parts, else from the whole chunk (``threads``: as
        :func:`~theia_frames.protocol.arrow.ipc_to_batches`)."""
        batch = read_columns(db, seq, fields, threads)
        return from_ipc(EventStore._blob(db, seq), fields, threads) if batch is None else batch

    @staticmethod
    def _summary(db: sqlite3.Connection, seq: int) -> ChunkSummary | None:
        """The summary of chunk ``seq``, checked (None: it has none)."""
        row = db.execute(
            "SELECT summary, min_ts, max_ts, rows FROM summaries JOIN chunks USING (seq) WHERE seq = ?", (seq,)
        ).fetchone()
        return None if row is None else read_summary(row[0], seq, row[1], row[2], row[3])

    def compact(self) -> int:
        """Merge small chunks, tier by tier, while some tier holds :data:`MERGE_FANOUT` of them.

        Returns the number of merges. Each merge is a transaction of its own.
        """
        merges = 0
        while self._merge_one():
            merges += 1
        return merges

    def _merge_one(self) -> bool:
        with self._lock:
            db = self._writer()
            self._purge()
            try:
                with _write_transaction(db):
                    row = db.execute(
                        f"SELECT tier FROM chunks WHERE died IS NULL AND tier < {FINAL_TIER} "
                        "GROUP BY tier HAVING count(*) >= ? ORDER BY tier LIMIT 1",
                        (MERGE_FANOUT,),
                    ).fetchone()
                    if row is None:
                        return False
                    chunks = db.execute(
                        "SELECT seq, min_ts, max_ts FROM chunks WHERE died IS NULL AND tier = ? "
                        f"AND tier < {FINAL_TIER} ORDER BY min_ts, seq",
                        (row[0],),
                    ).fetchall()
                    blobs = [self._blob(db, seq) for seq, _, _ in chunks]
                    parts = [from_ipc(blob) for blob in blobs]
                    merged = pa.concat_batches(parts)
                    arrivals = np.concatenate(
                        [decode_arrivals(blob.arrivals, part.num_rows, blob.seq) for blob, part in zip(blobs, parts)]
                    )
                    disjoint = all(a[2] < b[1] for a, b in zip(chunks, chunks[1:]))
                    if not disjoint:
                        order = arrival_order(merged.column(1).to_numpy(), arrivals)
                        merged, arrivals = merged.take(order), arrivals[order]
                    # The merged chunks cannot share an event: no de-duplication here.
                    inserted = self._insert(db, merged, arrivals)
                    seqs = [seq for seq, _, _ in chunks]
                    marks = ",".join("?" * len(seqs))
                    generation = self._newest(db)
                    if self.in_memory and self._snapshots:
                        # Open queries may still read them: kept until they end.
                        db.execute(f"UPDATE chunks SET died = ? WHERE seq IN ({marks})", (generation, *seqs))
                        self._dead = True
                    else:
                        db.execute(f"DELETE FROM chunks WHERE seq IN ({marks})", seqs)
            except (sqlite3.Error, pa.ArrowException) as exc:
                raise translate_error("write to", self.path, exc) from exc
            self._generation = generation
            self.key_index.drop(seqs)
            for seq, keys in inserted:
                self.key_index.put(seq, keys)
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
    def query(self, filter: EventFilter | None = None, *, batch_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[EventColumns]:
        """The stored events matching ``filter``, in its order, as chunks of columns.

        Sees the events stored before the call (a snapshot), never more. Each
        chunk holds at most ``batch_size`` events and at least one; every chunk
        but the last holds exactly ``batch_size``.
        """
        batches = self.query_batches(filter, batch_size=batch_size)
        return Results(batches, (batch_to_columns(b) for b in batches))

    def query_batches(
        self, filter: EventFilter | None = None, *, batch_size: int = DEFAULT_CHUNK_SIZE, wait: float | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The stored events matching ``filter``, in its order, as Arrow record batches.

        Like :meth:`query`: a snapshot taken by the call; every batch but the
        last holds exactly ``batch_size`` events. The result has a ``close()``
        method; closing it (or reading it to the end) ends the snapshot.

        ``wait``: most seconds the query may go on matching without yielding;
        then it yields what matched so far (a batch of fewer than
        ``batch_size`` events, or of none when nothing has), so a reader of a
        selective query hears from it in time. ``None`` (the default): batches
        of ``batch_size`` only.
        """
        snapshot = self._snapshot(filter, batch_size, wait)
        return Results(snapshot, rebatch(self._matching(snapshot), batch_size, wait))

    def query_ipc(
        self, filter: EventFilter | None = None, *, batch_size: int = CHUNK_ROWS, wait: float | None = None
    ) -> Iterator[bytes]:
        """The stored events matching ``filter``, in its order, as Arrow IPC stream messages.

        Each message holds at most ``batch_size`` events. A stored chunk that
        matches whole goes out exactly as it is stored (no decoding, no
        copying); other events are gathered into messages of ``batch_size`` events.
        ``wait`` is that of :meth:`query_batches` (a message of no events says
        that the query is still matching).
        """
        snapshot = self._snapshot(filter, batch_size, wait)
        return Results(snapshot, ipc_messages(self._matching(snapshot, stored=True), batch_size, wait))

    def scan(
        self,
        filter: EventFilter | None = None,
        fields: Iterable[str] | None = None,
        *,
        taken: Callable[[float, float, int], bool] | None = None,
        summarized: Callable[[ChunkSummary], bool] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The stored events matching ``filter``, chunk by chunk in no particular order and not
        merged, in the columns ``fields`` and those the filter reads (None: all): for reductions,
        such as counts, that need neither order nor whole events. A snapshot taken by the call,
        read as :meth:`query_batches` reads (its checks), with ``close()`` and ``cancel()``.

        For a filter of time alone, each chunk inside its time range is first offered, in the
        reader's thread, to ``taken`` as its first and last timestamp and its number of events
        (its index row), then (not taken) to ``summarized`` as its summary, checked
        (:mod:`~theia_frames.server.summaries`; a chunk without one is not offered); a chunk
        either takes (True) is not read."""
        snapshot = self._snapshot(filter, 1)
        return Results(snapshot, self._scanned(snapshot, fields, taken, summarized))

    def _scanned(
        self,
        snapshot: Snapshot,
        fields: Iterable[str] | None,
        taken: Callable[[float, float, int], bool] | None = None,
        summarized: Callable[[ChunkSummary], bool] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        flt = snapshot.filter
        columns = None
        if fields is not None:
            wanted = set(fields) | set(flt.fields) | {"timestamp"}
            columns = [f for f in FIELDS if f in wanted]
        start = -np.inf if flt.start is None else flt.start
        end = np.inf if flt.end is None else flt.end

        def read(meta: Any) -> Any:
            if snapshot.excludes(meta.seq):
                # its summary rules it out: no event of it can match
                batch = empty_batch()
                return batch if columns is None else batch.select(columns)
            # decoded in this thread: the chunks ahead are decoded in threads of their own
            if columns is None:
                chunk = from_ipc(snapshot.blob(meta.seq), threads=False)
            else:
                chunk = snapshot.columns(meta.seq, columns, threads=False)
            if meta.min_ts < start or meta.max_ts > end:
                ts = chunk.column("timestamp").to_numpy()
                chunk = chunk.filter(pa.array((ts >= start) & (ts <= end), pa.bool_()))
            if not flt.is_time_only and chunk.num_rows:
                chunk = chunk.filter(pa.array(flt.mask_batch(chunk), pa.bool_()))
            return chunk

        def counted(meta: Any) -> bool:
            """Whether a chunk inside the time range was taken without reading it."""
            if taken is not None and taken(meta.min_ts, meta.max_ts, meta.rows):
                return True
            if summarized is None:
                return False
            summary = snapshot.summary(meta.seq)
            return summary is not None and summarized(summary)

        metas = snapshot.metas
        if (taken is not None or summarized is not None) and flt.is_time_only:
            metas = [m for m in metas if not (m.min_ts >= start and m.max_ts <= end and counted(m))]
        if len(metas) < 2:
            yield from (read(meta) for meta in metas)
            return
        # the next chunks are read, decompressed and matched in threads of their own (Arrow
        # and SQLite let go of the interpreter) while the reader uses this one: two chunks ahead
        pool = ThreadPoolExecutor(max_workers=_SCAN_AHEAD, thread_name_prefix="theia-frames-scan")
        pending: deque[Any] = deque()
        try:
            for meta in metas:
                pending.append(pool.submit(read, meta))
                if len(pending) > _SCAN_AHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)

    def _snapshot(self, filter: EventFilter | None, rows: int, wait: float | None = None) -> Snapshot:
        flt = as_filter(filter, what="a store query's filter", dict_ok=False)
        if rows < 1:
            raise UsageError(f"a query's batch_size must be at least 1, got {rows}")
        if wait is not None and not wait > 0:
            raise UsageError(f"a query's wait must be a positive number of seconds or None, got {wait!r}")
        return Snapshot(self, flt)

    def _matching(
        self, snapshot: Snapshot, stored: bool = False
    ) -> Iterator[tuple[pa.RecordBatch, Blob | None]]:
        """The snapshot's events in order, the criteria other than time applied.

        A piece of no events now and then (after each slice matched, and for each
        chunk matched in the reader's threads) lets a reader look at the clock while
        nothing matches. A chunk that comes out alone is matched where it is read, in
        the filter's columns first (:class:`~theia_frames.server.query.Matcher`); with
        ``stored`` (a reader that sends a whole chunk's stored blob), one that matches
        whole goes on as stored (:func:`~theia_frames.server.chunks.whole`).
        """
        flt = snapshot.filter
        size = _KERNEL_SLICE if flt.matched_by_kernels else _MATCH_SLICE
        pieces = sweep(snapshot, Matcher(flt, stored, size) if stored or not flt.is_time_only else None)
        if flt.is_time_only:
            yield from ((piece, blob) for piece, blob, _ in pieces)
            return
        nothing = empty_batch()
        for piece, blob, matched in pieces:
            if matched:
                yield piece, blob
                continue
            # In slices, so that a cancelled query stops within one slice's matching.
            parts: list[Any] = []
            for at in range(0, piece.num_rows, size):
                if parts:
                    yield nothing, None
                snapshot.check()
                parts.append(flt.mask_batch(piece.slice(at, size)))
            mask = np.concatenate(parts) if parts else np.ones(0, dtype=bool)
            if mask.all():
                yield piece, blob
            elif mask.any():
                yield whole(piece, blob).filter(pa.array(mask, pa.bool_())), None
            else:
                yield nothing, None

    def query_plan(self, filter: EventFilter | None = None) -> str:
        """SQLite's plan for selecting the chunks of :meth:`query` (shows which index is used)."""
        flt = filter if filter is not None else EventFilter()
        sql, params = chunks_sql(flt, 0)
        try:
            with self._lock:
                rows = self._writer().execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        except sqlite3.Error as exc:
            raise translate_error("read", self.path, exc) from exc
        return "\n".join(str(row[-1]) for row in rows)

    def count(self) -> int:
        """How many events are stored."""
        try:
            with self._lock:
                db = self._writer()
                return int(db.execute("SELECT coalesce(sum(rows), 0) FROM chunks WHERE died IS NULL").fetchone()[0])
        except sqlite3.Error as exc:
            raise translate_error("read", self.path, exc) from exc

    def chunks(self) -> list[ChunkInfo]:
        """The stored chunks, oldest first (how the events are laid out, for tests and tuning)."""
        try:
            with self._lock:
                rows = self._writer().execute(
                    "SELECT seq, tier, rows, min_ts, max_ts FROM chunks WHERE died IS NULL ORDER BY seq"
                ).fetchall()
        except sqlite3.Error as exc:
            raise translate_error("read", self.path, exc) from exc
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
                raise translate_error("close", self.path, exc) from exc

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"EventStore({self.path!r}, {state})"


@contextmanager
def _write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that holds the write lock from its start: committed when the
    block ends (returns included), rolled back when it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


# --------------------------------------------------------------------------- Arrow helpers


