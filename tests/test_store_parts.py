"""Chunks stored in parts (format 8): a stream cut by column and joined again is the stream;
a reader of some columns decodes them from their parts alone, each checked; a damaged part
is damage to whoever reads it, and to ``check``; merges take their parts with them; a store
of format 7 opens without a rewrite."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theia_frames.event import Event
from theia_frames.exceptions import StoreError
from theia_frames.filter import EventFilter, Filter
from theia_frames.protocol.arrow import batch_to_ipc, column_cuts, events_to_batch, ipc_to_batches
from theia_frames.server.chunks import COMPRESSION, FIELDS, FINAL_ROWS, read_columns, read_stream
from theia_frames.server.store import FORMAT_VERSION, EventStore
from theia_frames.server.verify import check_store

from old_formats import join_parts

T0 = 1_700_000_000.0

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00,"), max_size=12)
events = st.lists(
    st.builds(
        Event,
        id=st.text(alphabet="0123456789abcdef", min_size=1, max_size=8),
        timestamp=st.floats(min_value=0.0, max_value=4e9, allow_nan=False),
        source=texts,
        tags=st.lists(texts.filter(bool), max_size=3),
        content=texts,
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events)
def test_a_stream_cut_by_column_decodes_each_column_from_its_parts_alone(batch_events: list[Event]) -> None:
    data = batch_to_ipc(events_to_batch(batch_events), compression=COMPRESSION)
    cuts = column_cuts(data)
    assert cuts is not None and cuts[0] == 0 and cuts[-1] == len(data) and len(cuts) == len(FIELDS) + 2
    whole = ipc_to_batches(data, full=False)[0]
    for size in (1, 2, 3):
        for fields in itertools.combinations(FIELDS, size):
            # the headers and these columns' parts; zeros elsewhere
            stream = bytearray(len(data))
            stream[: cuts[1]] = data[: cuts[1]]
            for name in fields:
                i = FIELDS.index(name) + 1
                stream[cuts[i] : cuts[i + 1]] = data[cuts[i] : cuts[i + 1]]
            got = ipc_to_batches(bytes(stream), full=False, fields=list(fields))[0]
            assert got.equals(whole.select(list(fields)))


def test_a_stream_that_is_not_one_batch_of_the_event_schema_is_not_cut() -> None:
    batch = events_to_batch([Event("a", 1.0, "s", ["t"], "c")])
    two = pa.ipc.new_stream(sink := pa.BufferOutputStream(), batch.schema)
    two.write_batch(batch)
    two.write_batch(batch)
    two.close()
    assert column_cuts(sink.getvalue().to_pybytes()) is None
    other = pa.RecordBatch.from_pydict({"x": [1]})
    assert column_cuts(batch_to_ipc(other)) is None
    assert column_cuts(batch_to_ipc(other), other.schema) is not None
    assert column_cuts(b"\xff\xff\xff\xff\x10\x00") is None


def many(n: int, seed: int, start: float = T0) -> list[Event]:
    rng = np.random.default_rng(seed)
    times = np.sort(start + rng.random(n) * n / 100.0)
    return [
        Event(f"{seed}-{i}", float(t), f"/s{i % 4}", ["a"] if i % 3 else [], "error here" if i % 9 == 0 else "fine")
        for i, t in enumerate(times)
    ]


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    path = tmp_path / "events.db"
    with EventStore(path) as store:
        store.add_many(many(2 * FINAL_ROWS + 100, 1))
        for k in range(8):  # small chunks, merged into one of the final tier
            store.add_many(many(600, 10 + k, T0 + 1_000 + 10 * k))
    return path


def _parted(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT seq FROM chunks WHERE parts IS NOT NULL ORDER BY seq")]


def _all(store: EventStore) -> pa.Table:
    return pa.Table.from_batches(list(store.query_batches(Filter(1))))


def test_chunks_of_the_final_tier_are_stored_in_parts_and_read_back_as_stored(stored: Path) -> None:
    parted = _parted(stored)
    assert len(parted) >= 2  # the large write and the merge
    with sqlite3.connect(stored) as db:
        keys = [row[0] for row in db.execute("SELECT key FROM chunk_columns ORDER BY key")]
        # five columns each; the parts of the small chunks merged away went with them
        assert keys == [seq * 8 + i for seq in parted for i in range(len(FIELDS))]
        for seq in parted:
            head, layout = db.execute("SELECT data, parts FROM chunks WHERE seq = ?", (seq,)).fetchone()
            data = read_stream(db, seq, head, layout)
            assert column_cuts(data) is not None
            whole = ipc_to_batches(data, full=False)[0]
            for fields in (["timestamp"], ["source", "content"], list(FIELDS)):
                assert read_columns(db, seq, fields).equals(whole.select(fields))
    with EventStore(stored) as store:
        table = _all(store)
        assert table.num_rows == 2 * FINAL_ROWS + 100 + 8 * 600
        assert store.query_plan()  # the chunks' index still reads
    assert check_store(stored).ok


def _damage(path: Path, seq: int, column: str) -> None:
    with sqlite3.connect(path) as db:
        key = seq * 8 + FIELDS.index(column)
        (data,) = db.execute("SELECT data FROM chunk_columns WHERE key = ?", (key,)).fetchone()
        data = bytearray(data)
        data[len(data) // 2] ^= 0x20
        db.execute("UPDATE chunk_columns SET data = ? WHERE key = ?", (bytes(data), key))


def _scan_rows(store: EventStore, flt: EventFilter, fields: list[str]) -> int:
    return sum(batch.num_rows for batch in store.scan(flt, fields))


def test_a_damaged_part_is_damage_to_its_readers_and_to_check(stored: Path) -> None:
    seq = _parted(stored)[0]
    with EventStore(stored) as store:
        errors = _scan_rows(store, EventFilter(start=1, content="error"), ["timestamp"])
    _damage(stored, seq, "content")
    with EventStore(stored) as store:
        with pytest.raises(StoreError, match=rf"chunk {seq} of the event store is damaged \(its checksum does not match\)"):
            _scan_rows(store, EventFilter(start=1, content="error"), ["timestamp"])
        with pytest.raises(StoreError, match=rf"chunk {seq} of the event store is damaged"):
            _all(store)
        # a reader of other columns reads and checks theirs: its answer is whole
        assert _scan_rows(store, EventFilter(start=1, source="/s1"), ["timestamp"]) > 0
    report = check_store(stored)
    assert [(d.seq, d.reason) for d in report.damaged] == [(seq, "its checksum does not match")]
    assert errors > 0


def test_a_damaged_list_of_parts_is_damage_even_when_the_data_is_intact(stored: Path) -> None:
    seq = _parted(stored)[0]
    with sqlite3.connect(stored) as db:
        (layout,) = db.execute("SELECT parts FROM chunks WHERE seq = ?", (seq,)).fetchone()
    for at in (0, 4, len(layout) - 5, len(layout) - 1):  # the headers' length, their CRC, the content's CRC, the list's
        damaged = bytearray(layout)
        damaged[at] ^= 0x01
        with sqlite3.connect(stored) as db:
            db.execute("UPDATE chunks SET parts = ? WHERE seq = ?", (bytes(damaged), seq))
        with EventStore(stored) as store:
            # whoever reads the chunk's columns alone: whichever they are
            for flt, fields in ((EventFilter(start=1, content="error"), ["timestamp"]), (EventFilter(start=1, source="/s1"), ["timestamp"])):
                with pytest.raises(StoreError, match=rf"chunk {seq} of the event store is damaged \(its list of parts is damaged\): it held"):
                    _scan_rows(store, flt, fields)
            # a find reads it whole, its data intact: served
            assert _all(store).num_rows == 2 * FINAL_ROWS + 100 + 8 * 600
        report = check_store(stored)
        assert [(d.seq, d.reason) for d in report.damaged] == [
            (seq, "a part of it read alone does not match: its list of parts is damaged")
        ]


def test_a_missing_part_is_damage(stored: Path) -> None:
    seq = _parted(stored)[-1]
    with sqlite3.connect(stored) as db:
        db.execute("DELETE FROM chunk_columns WHERE key = ?", (seq * 8 + FIELDS.index("tags"),))
    with EventStore(stored) as store:
        with pytest.raises(StoreError, match=rf"chunk {seq} of the event store is damaged"):
            _scan_rows(store, EventFilter(start=1, tags=["a"]), ["timestamp"])
    assert [d.seq for d in check_store(stored).damaged] == [seq]


def test_a_store_of_format_7_opens_without_a_rewrite_and_stores_new_chunks_in_parts(stored: Path) -> None:
    with EventStore(stored) as store:
        before = _all(store)
    with sqlite3.connect(stored) as db:
        join_parts(db)
        db.execute("PRAGMA user_version = 7")
    with EventStore(stored) as store:
        assert _all(store).equals(before)
        assert _scan_rows(store, EventFilter(start=1, content="error"), ["timestamp"]) == sum(
            1 for c in before.column("content").to_pylist() if "error" in c
        )
        store.add_many(many(FINAL_ROWS + 10, 99, T0 + 5_000))
    assert len(_parted(stored)) == 1
    with sqlite3.connect(stored) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION == 8
    assert check_store(stored).ok
