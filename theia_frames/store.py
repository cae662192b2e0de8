"""The embedded collector's event store: SQLite (standard library), a file or ``:memory:``.

One table of events and one unique index on (timestamp, id): time-range
queries use it, and storing an event again (a client resending after a
reconnect sends the same id and timestamp) never duplicates it::

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

Queries push the time range to SQL and apply the other criteria with
:meth:`EventFilter.matches_fields <theia_frames.filter.EventFilter.matches_fields>`,
so a filter means exactly what it means everywhere else. A query sees the
events stored before it was made, in timestamp order (ties by id; ``desc``
is the exact reverse of ``asc``), read in chunks of :class:`~theia_frames.codec.EventColumns`
without building an :class:`~theia_frames.event.Event` per row.

Why (timestamp, id) and not the id alone: the timestamps of arriving events
mostly grow, so this index is appended to, while an index of random UUIDs is
written all over; at a million events the id index made storing four times
slower. A resend carries the same timestamp, so it is still recognised.

Threads: writes are serialized by a lock (the embedded collector writes from
one thread only); a file store reads through connections of its own, so
readers never wait for the writer (WAL). A ``:memory:`` store has a single
connection, shared under the lock. Timestamps are stored as REAL, tags as
their comma-joined wire text. SQLite errors surface as
:class:`~theia_frames.exceptions.StoreError`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Union

from .codec import EventColumns, split_tags
from .event import Event
from .exceptions import StoreError, UsageError
from .filter import EventFilter

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["EventStore", "DEFAULT_CHUNK_SIZE", "MEMORY"]

MEMORY = ":memory:"
#: Rows read from SQLite per chunk of a query.
DEFAULT_CHUNK_SIZE = 10_000
# Events from an iterable of Event objects are stored in transactions of this many.
_ADD_CHUNK = 50_000
_SCHEMA_VERSION = 1
_FIELDS = ("id", "timestamp", "source", "tags", "content")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        timestamp REAL NOT NULL,
        source TEXT NOT NULL,
        tags TEXT NOT NULL,
        content TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_time_id ON events (timestamp, id)",
)
_INSERT = "INSERT OR IGNORE INTO events (id, timestamp, source, tags, content) VALUES (?, ?, ?, ?, ?)"
_SELECT = "SELECT id, timestamp, source, tags, content FROM events"

EventsLike = Union[EventColumns, Event, Iterable[Event], "pa.RecordBatch", "pa.Table"]


def _translate(action: str, path: str, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"cannot {action} the event store {path!r}: {exc}")


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
        if not self.in_memory:
            db.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL loses no committed data when the process dies,
            # only (possibly) the last transactions when the machine does.
            db.execute("PRAGMA synchronous = NORMAL")
        columns = [row[1] for row in db.execute("PRAGMA table_info(events)")]
        if columns and columns != ["seq", *_FIELDS]:
            db.close()
            raise StoreError(
                f"{self.path!r} holds an 'events' table that is not a theia_frames event store "
                f"(columns: {', '.join(columns)})"
            )
        for statement in _SCHEMA:
            db.execute(statement)
        if not columns:
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _writer(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the event store {self.path!r} is closed")
        return self._db

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A connection to read with; use it under :meth:`_guard`."""
        if self._closed:
            raise StoreError(f"the event store {self.path!r} is closed")
        if self.in_memory:
            yield self._db
            return
        with self._pool_lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._connect()
            db.execute("PRAGMA query_only = ON")
        try:
            yield db
        finally:
            with self._pool_lock:
                if self._closed:
                    db.close()
                else:
                    self._idle.append(db)

    def _guard(self) -> AbstractContextManager[Any]:
        """The lock a read must hold: the shared connection's for ``:memory:``, none for a file."""
        return self._lock if self.in_memory else nullcontext()

    # ------------------------------------------------------------------ writing
    def add(self, event: Event) -> bool:
        """Store one event; False when an event with its id is already stored."""
        return self.add_many([event]) == 1

    def add_many(self, events: EventsLike) -> int:
        """Store events; returns how many were new (ids already stored are ignored).

        ``events`` is :class:`~theia_frames.codec.EventColumns`, a pyarrow
        RecordBatch or Table with the event schema, one :class:`Event`, or any
        iterable of events (consumed lazily, stored in transactions of
        50,000).
        """
        if isinstance(events, EventColumns):
            return len(self.add_new(events))
        if isinstance(events, Event):
            events = [events]
        if hasattr(events, "schema") and hasattr(events, "column"):
            return len(self.add_new(_arrow_columns(events)))
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
        n = len(columns)
        if not n:
            return EventColumns()
        rows = zip(columns.id, columns.timestamp, columns.source, columns.tags, columns.content)
        with self._lock:
            db = self._writer()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    before = db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
                    stored = db.executemany(_INSERT, rows).rowcount
                    if stored == n:
                        new = columns
                    else:
                        # Some ids were stored already: read back exactly the rows this
                        # transaction added (it holds the write lock, so they are ours).
                        new = _to_columns(db.execute(f"{_SELECT} WHERE seq > ? ORDER BY seq", (before,)).fetchall())
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _translate("write to", self.path, exc) from exc
        return new

    # ------------------------------------------------------------------ reading
    def query(self, filter: EventFilter | None = None, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[EventColumns]:
        """The stored events matching ``filter``, in its order, as chunks of columns.

        Sees the events stored before the call (a snapshot), never more. Each
        chunk holds at most ``chunk_size`` events and at least one.
        """
        flt = filter if filter is not None else EventFilter()
        if not isinstance(flt, EventFilter):
            raise UsageError(f"a store query needs an EventFilter, got {type(flt).__name__}")
        if chunk_size < 1:
            raise UsageError(f"chunk_size must be at least 1, got {chunk_size}")
        try:
            with self._reader() as db, self._guard():
                last = db.execute("SELECT max(seq) FROM events").fetchone()[0]
        except sqlite3.Error as exc:
            raise _translate("read", self.path, exc) from exc
        return self._chunks(flt, last, chunk_size)

    def _chunks(self, flt: EventFilter, last: int | None, chunk_size: int) -> Iterator[EventColumns]:
        if last is None:
            return
        sql, params = _query_sql(flt, last)
        time_only = flt.is_time_only
        matches = flt.matches_fields
        guard = self._guard()
        try:
            with self._reader() as db:
                with guard:
                    cursor = db.execute(sql, params)
                try:
                    while True:
                        with guard:
                            if self._closed:
                                raise StoreError(f"the event store {self.path!r} was closed during a query")
                            rows = cursor.fetchmany(chunk_size)
                        if not rows:
                            return
                        cols = _to_columns(rows)
                        if not time_only:
                            cols = cols.take(
                                [
                                    matches(ts, split_tags(tags), content, id_, source)
                                    for id_, ts, source, tags, content in zip(
                                        cols.id, cols.timestamp, cols.source, cols.tags, cols.content
                                    )
                                ]
                            )
                        if len(cols):
                            yield cols
                finally:
                    with guard:
                        cursor.close()
        except sqlite3.Error as exc:
            raise _translate("read", self.path, exc) from exc

    def query_plan(self, filter: EventFilter | None = None) -> str:
        """SQLite's plan for the first chunk of :meth:`query` (shows which index is used)."""
        flt = filter if filter is not None else EventFilter()
        sql, params = _query_sql(flt, 0)
        try:
            with self._reader() as db, self._guard():
                rows = db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        except sqlite3.Error as exc:
            raise _translate("read", self.path, exc) from exc
        return "\n".join(str(row[-1]) for row in rows)

    def count(self) -> int:
        """How many events are stored."""
        try:
            with self._reader() as db, self._guard():
                return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
        except sqlite3.Error as exc:
            raise _translate("read", self.path, exc) from exc

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


def _query_sql(flt: EventFilter, last: int) -> tuple[str, list[Any]]:
    """The SQL of a query: the time range goes to the (timestamp, id) index.

    ``+seq`` keeps the snapshot bound from steering the planner to the rowid;
    the index gives the order, so nothing is sorted.
    """
    where = ["+seq <= ?"]
    params: list[Any] = [last]
    if flt.start is not None:
        where.append("timestamp >= ?")
        params.append(flt.start)
    if flt.end is not None:
        where.append("timestamp <= ?")
        params.append(flt.end)
    direction = "DESC" if flt.order == "desc" else "ASC"
    return f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY timestamp {direction}, id {direction}", params


def _to_columns(rows: list[tuple[Any, ...]]) -> EventColumns:
    if not rows:
        return EventColumns()
    ids, tss, sources, tags, contents = map(list, zip(*rows))
    return EventColumns(ids, tss, sources, tags, contents)


def _arrow_columns(data: Any) -> EventColumns:
    names = list(data.schema.names)
    if names != list(_FIELDS):
        raise UsageError(f"Arrow data to store needs the columns {', '.join(_FIELDS)}; got {', '.join(names)}")
    for name in _FIELDS:
        if data.column(name).null_count:
            raise UsageError(f"Arrow data to store has missing values in column {name!r}")
    return EventColumns(*(data.column(name).to_pylist() for name in _FIELDS))
