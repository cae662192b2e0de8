"""Checking an event store file and salvaging what is intact (``theia-frames check``).

:func:`check_store` reads every chunk of a store file of format 5 to 8 without changing it:
SQLite's own ``PRAGMA integrity_check`` (pages, and every index against its table), then each
chunk: its checksum (format 6 on), its Arrow data validated in full, its row count and first and
last timestamps against its index entries, its timestamps in order, its arrival numbers, its
summary (format 7, when it has one) against its events counted again, each of its parts
against its length and checksum (format 8, a chunk stored in parts). A
chunk that fails any of these is reported with its time range and how many events it held.
:func:`salvage_store` copies every intact chunk, as stored, into a new store file and tells
what it left behind::

    >>> import os, tempfile
    >>> from theia_frames import Event
    >>> from theia_frames.server.store import EventStore
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "events.db")
    >>> with EventStore(path) as store:
    ...     store.add_many([Event(id="a", timestamp=1.0), Event(id="b", timestamp=2.0)])
    2
    >>> report = check_store(path)
    >>> report.ok, report.chunks, report.events
    (True, 1, 2)
    >>> salvage_store(path, os.path.join(folder, "copy.db")).events
    2
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from ..exceptions import DecodeError, StoreError, UsageError
from ..protocol.arrow import event_schema, ipc_to_batches
from .chunks import chunk_checksum, damaged_chunk, decode_arrivals, insert_chunk, parts_problem, read_stream
from .summaries import chunk_summary, read_summary
from .store import APPLICATION_ID, FORMAT_VERSION, EventStore

__all__ = ["ChunkDamage", "CheckReport", "SalvageReport", "check_store", "salvage_store"]

# The formats whose chunks this module reads (older ones are upgraded by opening them).
_READABLE = (5, 6, 7, 8)


class ChunkDamage(NamedTuple):
    """A damaged chunk: its number, its index entries (as stored: maybe damaged too), and why."""

    seq: int
    min_ts: float | None
    max_ts: float | None
    rows: int | None
    reason: str

    def describe(self) -> str:
        if self.min_ts is None or self.max_ts is None or self.rows is None:
            return f"chunk {self.seq} of the event store is damaged ({self.reason}): its index entries cannot be read"
        return str(damaged_chunk(self.seq, self.min_ts, self.max_ts, self.rows, self.reason))


@dataclass
class CheckReport:
    """What :func:`check_store` found: chunks and events intact, damaged chunks, SQLite's
    own findings (``integrity``: empty when it said ok)."""

    path: str
    format: int
    chunks: int = 0
    events: int = 0
    damaged: list[ChunkDamage] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    intact: list[int] = field(default_factory=list)
    #: bytes of the write-ahead log beside the file (``PATH-wal``), None when there is none:
    #: committed transactions not yet folded into the file, part of the store
    wal_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.integrity


@dataclass
class SalvageReport:
    """What :func:`salvage_store` copied (chunks, events) into ``path``, and what it left behind."""

    path: str
    chunks: int
    events: int
    left_behind: list[ChunkDamage]


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA query_only = ON")
    return db


def _shortfall(path: str) -> int:
    """Bytes the file lacks of the size its SQLite header declares (a truncated file)."""
    if not os.path.isfile(path):
        raise UsageError(f"{path!r} is not a file: give the path of an event store")
    with open(path, "rb") as f:
        head = f.read(100)
    if head[:16] != b"SQLite format 3\x00":
        raise StoreError(f"{path!r} is not an event store (not an SQLite database)")
    page = int.from_bytes(head[16:18], "big")
    page = 65_536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    return max(0, page * pages - os.path.getsize(path))


class _Readable:
    """The store file as SQLite can read it: the file itself, or, when it is shorter than
    its header says (truncated, which SQLite refuses as malformed), a temporary copy
    padded with zeros to that size, so the pages that are left can be read."""

    def __init__(self, path: str, report: CheckReport | None) -> None:
        self.path = path
        self._copy: str | None = None
        missing = _shortfall(path)
        if missing:
            handle, self._copy = tempfile.mkstemp(suffix=".db", prefix="theia-frames-check-")
            os.close(handle)
            shutil.copyfile(path, self._copy)
            with open(self._copy, "ab") as f:
                f.truncate(os.path.getsize(path) + missing)
            self.path = self._copy
            if report is not None:
                report.integrity.append(
                    f"the file is {missing:,} bytes shorter than its header says (truncated): "
                    f"read as if padded with zeros"
                )

    def __enter__(self) -> sqlite3.Connection:
        self.db = _connect(self.path)
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()
        if self._copy is not None:
            os.unlink(self._copy)


def _format(db: sqlite3.Connection, path: str) -> int:
    try:
        app = db.execute("PRAGMA application_id").fetchone()[0]
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path!r} cannot be read as an event store: {exc}") from None
    if app != APPLICATION_ID:
        raise StoreError(f"{path!r} is an SQLite database but not a theia_frames event store")
    if version not in _READABLE:
        raise StoreError(
            f"{path!r} is an event store of format {version}; check reads formats 5 to 8 "
            f"(open it once with this version, e.g. theia-frames serve, to upgrade it to {FORMAT_VERSION})"
        )
    return version


def _seqs(db: sqlite3.Connection, report: CheckReport) -> list[int]:
    """The chunks' numbers: from the table, else from either time index, else every number given."""
    for sql in (
        "SELECT seq FROM chunks WHERE died IS NULL ORDER BY seq",
        "SELECT seq FROM chunks INDEXED BY chunks_max_ts WHERE died IS NULL",
        "SELECT seq FROM chunks INDEXED BY chunks_min_ts WHERE died IS NULL",
    ):
        try:
            return sorted(row[0] for row in db.execute(sql))
        except sqlite3.DatabaseError as exc:
            report.integrity.append(f"listing the chunks failed: {exc}")
    try:
        top = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
    except sqlite3.DatabaseError:
        top = None
    return list(range(1, int(top[0]) + 1)) if top else []


def _summary(db: sqlite3.Connection, seq: int, version: int) -> bytes | None:
    """The stored summary of chunk ``seq`` (format 7), None when it has none."""
    if version < 7:
        return None
    row = db.execute("SELECT summary FROM summaries WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else bytes(row[0])


def _check_chunk(db: sqlite3.Connection, seq: int, version: int) -> tuple[int, ChunkDamage | None] | None:
    """``(events, damage or None)`` of chunk ``seq``; None when there is no such chunk."""
    try:
        meta = db.execute("SELECT min_ts, max_ts, rows FROM chunks WHERE seq = ? AND died IS NULL", (seq,)).fetchone()
    except sqlite3.DatabaseError as exc:
        return 0, ChunkDamage(seq, None, None, None, f"SQLite cannot read it: {exc}")
    if meta is None:
        return None
    min_ts, max_ts, rows = meta

    def damage(reason: str) -> tuple[int, ChunkDamage]:
        return 0, ChunkDamage(seq, min_ts, max_ts, rows, reason)

    try:
        checksum = "checksum" if version >= 6 else "0"
        layout = "parts" if version >= 8 else "NULL"
        head, parts, nbytes, arrivals, last_arrival, stored_sum = db.execute(
            f"SELECT data, {layout}, bytes, arrivals, last_arrival, {checksum} FROM chunks WHERE seq = ?", (seq,)
        ).fetchone()
        data = read_stream(db, seq, head, parts)
        summary = _summary(db, seq, version)
        why = None if parts is None else parts_problem(db, seq, head, parts)
    except sqlite3.DatabaseError as exc:
        return damage(f"SQLite cannot read it: {exc}")
    if version >= 6 and chunk_checksum(data, nbytes, arrivals, min_ts, max_ts, rows, summary) != stored_sum:
        return damage("its checksum does not match")
    if why is not None:
        return damage(f"a part of it read alone does not match: {why}")
    try:
        batches = ipc_to_batches(data, max_decoded=nbytes, full=True)
    except DecodeError as exc:
        return damage(f"its Arrow data is invalid: {exc}")
    count = sum(b.num_rows for b in batches)
    if count != rows:
        return damage(f"it holds {count} events, its index says {rows}")
    if not count:
        return damage("it holds no events")
    if any(b.schema != event_schema() for b in batches):
        return damage("its Arrow data is not of the event schema")
    ts = np.concatenate([b.column(1).to_numpy() for b in batches])
    if bool((ts[1:] < ts[:-1]).any()):
        return damage("its timestamps are out of order")
    if float(ts[0]) != min_ts or float(ts[-1]) != max_ts:
        return damage(f"its events run from {float(ts[0])!r} to {float(ts[-1])!r}, its index says {min_ts!r} to {max_ts!r}")
    try:
        numbers = decode_arrivals(arrivals, rows, seq)
    except StoreError as exc:
        return damage(str(exc))
    if int(numbers.max()) != last_arrival:
        return damage(f"its newest arrival number is {int(numbers.max())}, its index says {last_arrival}")
    if summary is not None:
        try:
            stored = read_summary(summary, seq, min_ts, max_ts, rows)
        except StoreError as exc:
            return damage(str(exc))
        again = chunk_summary(pa.concat_batches(batches), min_ts, max_ts)
        if again is None or read_summary(again, seq, min_ts, max_ts, rows) != stored:
            return damage("its summary does not count its events")
    return rows, None


def check_store(path: str | os.PathLike[str]) -> CheckReport:
    """Verify every chunk of the store file ``path`` and SQLite's integrity (reads only)."""
    path = os.fspath(path)
    report = CheckReport(path, 0)
    wal = path + "-wal"
    if os.path.isfile(wal) and os.path.getsize(wal):
        report.wal_bytes = os.path.getsize(wal)
    with _Readable(path, report) as db:
        report.format = _format(db, path)
        try:
            found = [row[0] for row in db.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            found = [f"integrity_check failed: {exc}"]
        report.integrity.extend(line for line in found if line != "ok")
        for seq in _seqs(db, report):
            result = _check_chunk(db, seq, report.format)
            if result is None:
                continue
            events, damage = result
            report.chunks += 1
            if damage is None:
                report.events += events
                report.intact.append(seq)
            else:
                report.damaged.append(damage)
    return report


def salvage_store(path: str | os.PathLike[str], new: str | os.PathLike[str]) -> SalvageReport:
    """Copy every intact chunk of the store file ``path`` (:func:`check_store`), as stored, into
    the new store file ``new`` (which must not exist), in one transaction."""
    path, new = os.fspath(path), os.fspath(new)
    if os.path.exists(new):
        raise UsageError(f"{new!r} exists: salvage writes a new store file, give a path that does not exist")
    if os.path.abspath(new) == os.path.abspath(path):
        raise UsageError("the salvaged store must be a new file, not the checked one")
    report = check_store(path)
    EventStore(new).close()
    events = 0
    left = list(report.damaged)
    with _Readable(path, None) as source:
        target = sqlite3.connect(new, isolation_level=None)
        try:
            target.execute("BEGIN IMMEDIATE")
            for seq in report.intact:
                try:
                    layout = "parts" if report.format >= 8 else "NULL"
                    row: Any = source.execute(
                        f"SELECT tier, min_ts, max_ts, rows, data, {layout}, bytes, arrivals, last_arrival FROM chunks WHERE seq = ?",
                        (seq,),
                    ).fetchone()
                    data = read_stream(source, seq, row[4], row[5])
                    summary = _summary(source, seq, report.format)
                except sqlite3.DatabaseError as exc:
                    left.append(ChunkDamage(seq, None, None, None, f"SQLite cannot read it: {exc}"))
                    continue
                tier, min_ts, max_ts, rows, _, parts, nbytes, arrivals, last_arrival = row
                insert_chunk(
                    target, tier=tier, min_ts=min_ts, max_ts=max_ts, rows=rows, data=data, nbytes=nbytes,
                    arrivals=arrivals, last_arrival=last_arrival, summary=summary, parts=parts is not None,
                )
                events += rows
            target.execute("COMMIT")
        except BaseException:
            if target.in_transaction:
                target.execute("ROLLBACK")
            raise
        finally:
            target.close()
    return SalvageReport(new, len(report.intact) - (len(left) - len(report.damaged)), events, left)
