"""Damaged chunks: never served by a find (batched or plain), found by ``theia-frames check``,
left behind by ``check --salvage``, which copies every intact chunk into a new store."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from theia_frames import Client, Event, Filter
from theia_frames.cli import main
from theia_frames.exceptions import StoreError, TheiaError
from theia_frames.protocol.arrow import events_to_batch
from theia_frames.server.collector import serve
from theia_frames.server.store import EventStore

from old_formats import join_parts

T0 = 1_700_000_000.0


def _events(first: int, count: int, t: float) -> list[Event]:
    return [
        Event(id=f"e{first + i}", timestamp=t + i * 0.001, source=f"s{i % 3}", tags=["a", f"t{i % 5}"], content=f"c {i} " * 3)
        for i in range(count)
    ]


def _store(path: Path) -> list[list[Event]]:
    """A store of three chunks that do not overlap: 500, 2,000 and 500 events."""
    parts = [_events(0, 500, T0), _events(500, 2_000, T0 + 10), _events(2_500, 500, T0 + 20)]
    with EventStore(path) as store:
        for part in parts:
            store.add_batch(events_to_batch(part), compact=False)
    return parts


def _keys(events) -> list[tuple]:
    return [(e.id, e.timestamp, e.source, tuple(e.tags), e.content) for e in events]


def _flip(path: Path, seq: int, column: str, offset: int) -> bytes:
    """Flip one byte of chunk ``seq``'s blob ``column`` at ``offset``; returns the blob as it was."""
    db = sqlite3.connect(path)
    try:
        (old,) = db.execute(f"SELECT {column} FROM chunks WHERE seq = ?", (seq,)).fetchone()
        new = bytearray(old)
        new[offset % len(new)] ^= 0x5A
        db.execute(f"UPDATE chunks SET {column} = ? WHERE seq = ?", (bytes(new), seq))
        db.commit()
    finally:
        db.close()
    return old


def _put(path: Path, seq: int, column: str, blob: bytes) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(f"UPDATE chunks SET {column} = ? WHERE seq = ?", (blob, seq))
        db.commit()
    finally:
        db.close()


def test_a_flipped_byte_anywhere_in_a_chunk_is_never_served_as_data(tmp_path):
    """One byte flipped at many offsets of the middle chunk's stored bytes: every find, batched
    and plain, of the whole store and of the intact chunks alone, either returns exactly the
    stored events or raises an error naming the damaged chunk's events; never altered, never short."""
    path = tmp_path / "events.db"
    parts = _store(path)
    everything = _keys([e for part in parts for e in part])
    first_only = _keys(parts[0])
    with sqlite3.connect(path) as db:
        size = db.execute("SELECT length(data) FROM chunks WHERE seq = 2").fetchone()[0]
    rng = random.Random(7)
    offsets = sorted({0, 1, 8, size // 2, size - 1, *rng.sample(range(size), 30)})
    outcomes = {"exact": 0, "refused": 0}
    with serve(db=path, port=0) as collector:
        clients = [Client(collector.url), Client(collector.url, batch=False)]
        try:
            for column, where in [("data", offsets), ("arrivals", [0, 3, 9])]:
                for offset in where:
                    old = _flip(path, 2, column, offset)
                    try:
                        for client in clients:
                            # the intact chunk alone is served exactly
                            assert _keys(client.find(Filter(T0).match_end(T0 + 5))) == first_only
                            try:
                                got = _keys(client.find(Filter(T0)))
                            except TheiaError as exc:
                                assert "chunk 2 of the event store is damaged" in str(exc)
                                assert "it held 2000 events" in str(exc)
                                outcomes["refused"] += 1
                            else:
                                assert got == everything  # never altered, never short
                                outcomes["exact"] += 1
                    finally:
                        _put(path, 2, column, old)
            for client in clients:  # restored: served in full again
                assert _keys(client.find(Filter(T0))) == everything
        finally:
            for client in clients:
                client.close()
    # CRC-32 sees every one-byte change: each find of the damaged chunk was refused
    assert outcomes == {"exact": 0, "refused": 2 * (len(offsets) + 3)}


def test_a_changed_index_entry_is_damage_too(tmp_path):
    path = tmp_path / "events.db"
    _store(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE chunks SET rows = 1999 WHERE seq = 2")
    with EventStore(path) as store:
        with pytest.raises(StoreError, match="chunk 2 of the event store is damaged .its checksum does not match.: it held 1999 events"):
            list(store.query(Filter(T0)))


def test_a_store_of_format_5_is_upgraded_with_checksums(tmp_path):
    path = tmp_path / "events.db"
    parts = _store(path)
    with sqlite3.connect(path) as db:  # format 5 had no checksums (nor summaries, nor parts)
        join_parts(db)
        db.execute("ALTER TABLE chunks DROP COLUMN checksum")
        db.execute("DROP TRIGGER chunks_summaries")
        db.execute("DROP TABLE summaries")
        db.execute("PRAGMA user_version = 5")
    with EventStore(path) as store:
        assert [e.id for cols in store.query() for e in cols.events()] == [e.id for part in parts for e in part]
    _flip(path, 1, "data", 100)
    with EventStore(path) as store:
        with pytest.raises(StoreError, match="chunk 1 of the event store is damaged"):
            list(store.query())


def test_check_reports_each_damaged_chunk_and_salvage_copies_the_intact_ones(tmp_path, capsys):
    path = tmp_path / "events.db"
    parts = _store(path)
    assert main(["check", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 chunks checked, 3,000 events intact" in out and "integrity_check: ok" in out
    _flip(path, 2, "data", 700)
    assert main(["check", "--db", str(path), "--salvage", str(tmp_path / "rescued.db")]) == 1
    out = capsys.readouterr().out
    assert "damaged: chunk 2 of the event store is damaged (its checksum does not match): it held 2000 events" in out
    assert "1 of 3 chunks damaged (2,000 events)" in out
    assert "salvaged 2 chunks (1,000 events)" in out and "left behind: chunk 2" in out
    assert main(["check", "--db", str(tmp_path / "rescued.db")]) == 0
    with EventStore(tmp_path / "rescued.db") as store:
        got = [e.id for cols in store.query() for e in cols.events()]
        assert got == [e.id for e in parts[0] + parts[2]]
        store.add_many(_events(9_000, 3, T0 + 30))  # a store like any: it takes events
        assert store.count() == 1_003
    # salvage never overwrites
    assert main(["check", "--db", str(path), "--salvage", str(tmp_path / "rescued.db")]) == 1
    assert "exists" in capsys.readouterr().err


def test_check_sees_damage_behind_a_matching_checksum(tmp_path, capsys):
    """A chunk damaged while its store had no checksums (format 5), its data validated in full."""
    path = tmp_path / "events.db"
    _store(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE chunks SET rows = 7, checksum = 0 WHERE seq = 3")
        db.execute("ALTER TABLE chunks DROP COLUMN checksum")
        db.execute("DROP TRIGGER chunks_summaries")
        db.execute("DROP TABLE summaries")
        db.execute("PRAGMA user_version = 5")
    assert main(["check", "--db", str(path)]) == 1
    out = capsys.readouterr().out
    assert "format 5" in out and "chunk 3 of the event store is damaged (it holds 500 events, its index says 7)" in out


def test_check_on_a_truncated_file_reports_and_salvages_what_it_can(tmp_path, capsys):
    path = tmp_path / "events.db"
    parts = _store(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * 0.9))
    code = main(["check", "--db", str(path), "--salvage", str(tmp_path / "rescued.db")])
    out = capsys.readouterr().out
    assert code == 1 and "SQLite integrity_check: ok" not in out
    with EventStore(tmp_path / "rescued.db") as store:
        got = {e.id for cols in store.query() for e in cols.events()}
    every = {e.id: e for part in parts for e in part}
    assert got <= set(every) and "salvaged" in out


def test_check_of_something_that_is_not_a_store(tmp_path, capsys):
    (tmp_path / "x.db").write_bytes(b"hello")
    assert main(["check", "--db", str(tmp_path / "x.db")]) == 1
    assert "not an event store" in capsys.readouterr().err
    assert main(["check", "--db", str(tmp_path / "missing.db")]) == 1
    assert "is not a file" in capsys.readouterr().err


def test_the_write_ahead_log_is_part_of_the_store_until_a_normal_stop(tmp_path, capsys):
    """What is confirmed lives in the file and its -wal together; a normal stop folds the log
    into the file (and removes it), so the file alone then holds every event."""
    import subprocess
    import sys

    path = tmp_path / "events.db"
    # a process that commits and dies without closing (as after SIGKILL): its -wal holds the commits
    code = (
        "import os, sys; from theia_frames.server.store import EventStore; from theia_frames import Event\n"
        f"s = EventStore({str(path)!r}); s.add_many([Event(id=str(i), timestamp=1.0 + i) for i in range(100)])\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    wal = Path(str(path) + "-wal")
    assert wal.stat().st_size > 0
    assert main(["check", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "write-ahead log" in out and "100 events intact" in out
    with EventStore(path) as store:  # opened and closed normally: the log is folded in
        assert store.count() == 100
    assert not wal.exists() or wal.stat().st_size == 0
    assert main(["check", "--db", str(path)]) == 0
    assert "write-ahead log" not in capsys.readouterr().out
