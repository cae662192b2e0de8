"""EventStore: chunks of Arrow events in SQLite, idempotent (timestamp, id), tiers merged,
queries that stream in order and mean what EventFilter means."""

from __future__ import annotations

import math
import sqlite3
import threading

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theia_frames import Event, EventFilter, Filter
from theia_frames.protocol.arrow import event_schema, events_to_batch, ipc_to_batches, iter_batch_events
from theia_frames.protocol.codec import EventColumns
from theia_frames.exceptions import StoreError, UsageError
from theia_frames.server.store import CHUNK_ROWS, FORMAT_VERSION, MERGE_FANOUT, EventStore


def ev(i: int, ts: float, *, tags=("sensor",), source="/dev/s", content="") -> Event:
    return Event(id=f"e{i}", timestamp=ts, source=source, tags=list(tags), content=content or f"c{i}")


def ids(store: EventStore, flt: EventFilter | None = None, **kw) -> list[str]:
    return [i for cols in store.query(flt, **kw) for i in cols.id]


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    path = ":memory:" if request.param == "memory" else tmp_path / "events.db"
    with EventStore(path) as s:
        yield s


# --------------------------------------------------------------------------- writing


def test_add_many_counts_new_events_and_ignores_known_ids(store):
    assert store.add_many([ev(1, 1.0), ev(2, 2.0)]) == 2
    assert store.add_many([ev(2, 2.0), ev(3, 3.0)]) == 1
    assert store.add_many([ev(4, 4.0), ev(4, 4.0)]) == 1  # twice in one call
    assert store.add(ev(5, 5.0)) is True
    assert store.add(ev(5, 5.0)) is False
    assert store.count() == 5
    assert ids(store) == ["e1", "e2", "e3", "e4", "e5"]


def test_add_new_returns_exactly_the_new_rows_in_stored_order(store):
    store.add_many([ev(1, 1.0), ev(3, 3.0)])
    cols = EventColumns()
    for e in [ev(2, 2.0), ev(1, 1.0), ev(4, 0.5), ev(3, 3.0), ev(2, 2.0)]:
        cols.append_event(e)
    new = store.add_new(cols)
    assert new.id == ["e2", "e4"]
    assert new.timestamp == [2.0, 0.5]
    every_new = EventColumns()
    every_new.append_event(ev(9, 9.0))
    assert store.add_new(every_new) is every_new
    assert len(store.add_new(EventColumns())) == 0


def test_fields_round_trip_exactly(store):
    odd = Event(
        id="x:y",
        timestamp=1509989630.6749051,
        source="/var/log/a:b",
        tags=["ä", "", "b c"],
        content="multi\nline\nevent: 1 2 3 ✓",
    )
    store.add(odd)
    store.add(Event(id="none", timestamp=0.1, tags=[]))
    (cols,) = store.query(Filter().order_desc())
    assert list(cols.events()) == [odd, Event(id="none", timestamp=0.1, tags=[])]
    assert cols.tags == ["ä,,b c", ""]  # the comma-joined wire text


def test_add_many_accepts_columns_arrow_and_lazy_iterables(store):
    assert store.add_many(events_to_batch([ev(1, 1.0), ev(2, 2.0)])) == 2
    assert store.add_many(pa.Table.from_batches([events_to_batch([ev(3, 3.0)])])) == 1
    assert store.add_many(ev(i, float(i)) for i in range(4, 60_004)) == 60_000
    assert store.count() == 60_003


def test_arrow_input_is_checked():
    with EventStore() as store:
        with pytest.raises(UsageError, match="columns"):
            store.add_many(pa.table({"id": ["a"]}))
        bad = events_to_batch([ev(1, 1.0)]).set_column(
            2, "source", pa.array([None], pa.string())
        )
        with pytest.raises(UsageError, match="missing values in column 'source'"):
            store.add_many(bad)


def test_arrow_data_that_is_not_valid_is_refused(store):
    from theia_frames.protocol.arrow import event_schema

    not_utf8 = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(b"\0\0\0\0\2\0\0\0"), pa.py_buffer(b"\xff\xfe")])
    text = pa.array(["a"])
    batch = pa.RecordBatch.from_arrays(
        [not_utf8, pa.array([1.0]), text.dictionary_encode(), pa.array([["a"]]), text], schema=event_schema()
    )
    with pytest.raises(UsageError, match="not valid.*UTF8"):
        store.add_many(batch)
    assert store.count() == 0


def test_events_survive_a_restart(tmp_path):
    path = tmp_path / "events.db"
    with EventStore(path) as store:
        store.add_many([ev(1, 1.0), ev(2, 2.0)])
    with EventStore(str(path)) as store:
        assert store.count() == 2
        assert ids(store) == ["e1", "e2"]
        assert store.add_many([ev(2, 2.0), ev(3, 3.0)]) == 1


def test_a_file_store_is_marked_as_ours_and_in_wal_mode(tmp_path):
    path = tmp_path / "events.db"
    EventStore(path).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA application_id").fetchone()[0] == int.from_bytes(b"thfr", "big")
        assert db.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'chunks'").fetchone()
        assert "min_ts REAL" in sql and "data BLOB" in sql
    finally:
        db.close()


def test_non_finite_timestamps_are_refused(store):
    with pytest.raises(UsageError, match="finite"):
        store.add_many([ev(1, 1.0), ev(2, math.nan)])
    with pytest.raises(UsageError, match="finite"):
        store.add_many(events_to_batch([ev(3, math.inf)]))
    assert store.count() == 0


def test_add_batch_returns_the_new_events_in_the_order_given(store):
    store.add_many([ev(1, 1.0), ev(3, 3.0)])
    batch = events_to_batch([ev(2, 2.0), ev(1, 1.0), ev(4, 0.5), ev(3, 3.0), ev(2, 2.0, content="again")])
    new = store.add_batch(batch)
    assert new.column("id").to_pylist() == ["e2", "e4"]
    assert new.column("content").to_pylist() == ["c2", "c4"]  # the first of equal events is kept
    assert store.add_batch(batch).num_rows == 0
    fresh = events_to_batch([ev(9, 9.0), ev(8, 8.0)])
    assert store.add_batch(fresh).equals(fresh)


# --------------------------------------------------------------------------- chunks and tiers


def test_a_batch_is_one_chunk_and_a_big_one_several(store):
    store.add_many(events_to_batch([ev(i, float(i)) for i in range(1000)]))
    assert [c.rows for c in store.chunks()] == [1000]
    store.add_many(ev(i, float(i)) for i in range(1000, 1000 + 2 * CHUNK_ROWS + 5))
    chunks = store.chunks()
    assert all(c.rows <= CHUNK_ROWS for c in chunks)
    assert sum(c.rows for c in chunks) == store.count() == 1000 + 2 * CHUNK_ROWS + 5
    # stored sorted: each chunk's time range follows the one before
    assert all(a.max_ts < b.min_ts for a, b in zip(chunks, chunks[1:]))


def test_small_writes_are_merged_tier_by_tier(store):
    n = 700
    for i in range(n):
        assert store.add(ev(i, float(i)))
    chunks = store.chunks()
    assert sum(c.rows for c in chunks) == n == store.count()
    tiers: dict[int, int] = {}
    for c in chunks:
        tiers[c.tier] = tiers.get(c.tier, 0) + 1
    # fewer than MERGE_FANOUT chunks of each tier are left: 700 = 1*512 + 2*64 + 7*8 + 4
    assert all(count < MERGE_FANOUT for count in tiers.values()), tiers
    assert sorted(c.rows for c in chunks) == [1] * 4 + [8] * 7 + [64] * 2 + [512]
    assert ids(store) == [f"e{i}" for i in range(n)]
    assert ids(store, Filter(100.5).match_end(110).order_desc()) == [f"e{i}" for i in range(110, 100, -1)]


def test_a_resend_is_recognised_in_merged_chunks(store):
    for i in range(100):
        store.add(ev(i, float(i)))
    assert store.add_many([ev(i, float(i)) for i in range(-5, 105)]) == 10
    assert store.count() == 110
    assert ids(store) == [f"e{i}" for i in range(-5, 105)]


def test_overlapping_chunks_come_out_merged_in_order(store):
    # Writes whose time ranges overlap (senders with unsynchronised clocks, late
    # events): each write is one chunk, and the chunks' ranges interleave.
    events = []
    for k in range(12):
        batch = [ev(k * 100 + j, k * 10.0 + j * 1.5 - 15.0) for j in range(20)]
        events += batch
        store.add_many(events_to_batch(batch))
    late = [ev(5000 + j, j * 12.5) for j in range(10)]  # one chunk across everything
    events += late
    store.add_many(events_to_batch(late))
    ordered = sorted(events, key=lambda e: e.timestamp)  # stable: ties in arrival order
    assert ids(store, batch_size=7) == [e.id for e in ordered]
    assert ids(store, Filter().order_desc(), batch_size=5) == [e.id for e in reversed(ordered)]
    window = [e.id for e in ordered if 20.0 <= e.timestamp <= 60.0]
    assert ids(store, Filter(20).match_end(60)) == window
    assert ids(store, Filter(20).match_end(60).order_desc()) == window[::-1]


def test_whole_chunks_go_out_as_stored(tmp_path):
    path = tmp_path / "events.db"
    with EventStore(path) as store:
        first = [ev(i, float(i)) for i in range(1000)]
        second = [ev(i, float(i)) for i in range(1000, 1500)]
        store.add_many(events_to_batch(first))
        store.add_many(events_to_batch(second))
        db = sqlite3.connect(path)
        try:
            stored = [row[0] for row in db.execute("SELECT data FROM chunks ORDER BY min_ts")]
        finally:
            db.close()
        assert list(store.query_ipc(Filter(), batch_size=1000)) == stored

        def events_of(messages: list[bytes]) -> list[Event]:
            return [e for m in messages for b in ipc_to_batches(m) for e in iter_batch_events(b)]

        # larger than the query's messages: cut into messages of at most `rows`
        messages = list(store.query_ipc(Filter(), batch_size=300))
        assert [sum(b.num_rows for b in ipc_to_batches(m)) for m in messages] == [300, 300, 300, 300, 300]
        assert events_of(messages) == first + second
        # part of a chunk, or another order: the events, not the stored bytes
        messages = list(store.query_ipc(Filter(900), batch_size=1000))
        assert messages[0] not in stored and messages[1] == stored[1]
        assert events_of(messages) == first[900:] + second
        assert events_of(list(store.query_ipc(Filter(1490).order_desc()))) == second[::-1][:10]


def test_a_query_keeps_its_snapshot_while_chunks_are_merged(store):
    for i in range(MERGE_FANOUT - 1):
        store.add(ev(i, float(i)))
    before = [c.seq for c in store.chunks()]
    reading = store.query(Filter(), batch_size=1)
    first = next(reading)
    store.add(ev(100, 100.0))  # the eighth small chunk: the tier is merged
    assert [c.seq for c in store.chunks()] != before
    rest = [i for cols in reading for i in cols.id]
    assert first.id + rest == [f"e{i}" for i in range(MERGE_FANOUT - 1)]
    assert ids(store) == [f"e{i}" for i in range(MERGE_FANOUT - 1)] + ["e100"]
    # once no query needs them, the merged-away chunks are gone
    db = store._db
    assert db.execute("SELECT count(*) FROM chunks").fetchone()[0] == len(store.chunks())


# --------------------------------------------------------------------------- reading


def test_order_asc_and_desc_with_ties_in_the_order_given(store):
    store.add_many([ev(5, 2.0), ev(2, 1.0), ev(3, 2.0), ev(4, 3.0), ev(1, 2.0)])
    assert ids(store) == ["e2", "e5", "e3", "e1", "e4"]
    assert ids(store, Filter().order_asc()) == ["e2", "e5", "e3", "e1", "e4"]
    assert ids(store, Filter().order_desc()) == ["e4", "e1", "e3", "e5", "e2"]


def test_the_same_id_at_another_time_is_another_event(store):
    assert store.add_many([ev(1, 1.0), ev(1, 2.0), ev(1, 1.0)]) == 2
    assert [c.timestamp for c in store.query()] == [[1.0, 2.0]]


def test_time_bounds_are_inclusive(store):
    store.add_many([ev(i, float(i)) for i in range(10)])
    assert ids(store, Filter(3).match_end(5)) == ["e3", "e4", "e5"]
    assert ids(store, Filter(3).match_end(5).order_desc()) == ["e5", "e4", "e3"]
    assert ids(store, Filter(8.5)) == ["e9"]
    assert ids(store, EventFilter(end=0.0)) == ["e0"]
    assert ids(store, Filter(100)) == []


def test_chunks_hold_at_most_batch_size_and_never_zero(store):
    store.add_many([ev(i, float(i % 7), tags=["a" if i % 3 else "b"]) for i in range(1000)])
    chunks = list(store.query(Filter(), batch_size=64))
    assert [len(c) for c in chunks] == [64] * 15 + [40]
    sparse = list(store.query(Filter().match_tag("b"), batch_size=64))
    assert all(0 < len(c) <= 64 for c in sparse)
    assert sum(len(c) for c in sparse) == 334
    with pytest.raises(UsageError):
        store.query(Filter(), batch_size=0)


def test_a_query_sees_the_events_stored_before_it_was_made(store):
    store.add_many([ev(i, float(i)) for i in range(100)])
    chunks = store.query(Filter(), batch_size=10)
    first = next(chunks)
    store.add_many([ev(i, float(i)) for i in range(100, 200)])
    rest = [i for c in chunks for i in c.id]
    assert first.id + rest == [f"e{i}" for i in range(100)]
    assert len(ids(store)) == 200


def test_an_empty_store_answers_nothing(store):
    assert ids(store) == []
    assert ids(store, Filter(5).order_desc()) == []
    assert store.count() == 0


def test_criteria_mean_what_eventfilter_means(store):
    events = [
        Event(id="a", timestamp=1.0, source="/dev/temp-1", tags=["sensor", "temp-1"], content="21.5C"),
        Event(id="b", timestamp=2.0, source="/dev/hum", tags=["sensor", "humidity"], content="45%"),
        Event(id="c", timestamp=3.0, source="/dev/temp-2", tags=["temp-2"], content="x 22C y"),
    ]
    store.add_many(events)
    filters = [
        Filter().match_tag("temp.+"),
        Filter().match_tag("temp"),  # full match: no tag is exactly "temp"
        Filter().match_tag("sensor", "temp-\\d"),
        Filter().match_content(r"\d+C"),  # found anywhere
        Filter().match_content("^22"),
        EventFilter(source="/dev/temp-.*"),
        EventFilter(id="[ab]"),
    ]
    for f in filters:
        assert ids(store, f) == [e.id for e in events if f.matches(e)], f


# The time indexes of the chunks, as SQLite reports its plan.


@pytest.mark.parametrize(
    "flt, seek",
    [
        (Filter(5), "USING INDEX chunks_max_ts (max_ts>?)"),
        (Filter(5).match_end(10), "USING INDEX chunks_max_ts (max_ts>?)"),
        (Filter(5).match_end(10).order_desc(), "USING INDEX chunks_max_ts (max_ts>?)"),
        (EventFilter(end=10.0), "USING INDEX chunks_min_ts (min_ts<?)"),
        (Filter(5).match_tag("x").match_content("y"), "USING INDEX chunks_max_ts (max_ts>?)"),
    ],
)
def test_time_ranges_use_the_chunk_indexes(store, flt, seek):
    for i in range(20):
        store.add_many(events_to_batch([ev(i * 10 + j, float(i * 10 + j)) for j in range(10)]))
    plan = store.query_plan(flt)
    assert seek in plan, plan
    assert "TEMP B-TREE" not in plan


def test_a_query_without_a_time_range_reads_every_chunk(store):
    assert "USING INDEX" not in store.query_plan(Filter())


def test_many_equal_timestamps_are_read_once_each(store):
    store.add_many([ev(i, 5.0) for i in range(5000)])
    given = [f"e{i}" for i in range(5000)]
    assert ids(store, Filter(1), batch_size=100) == given
    assert ids(store, Filter(1).order_desc(), batch_size=99) == given[::-1]


# Property: the store returns exactly the matching events, in order.

_TAGS = st.lists(st.sampled_from(["a", "b", "ab", "temp-1"]), max_size=3)
_EVENTS = st.lists(
    st.tuples(st.integers(0, 6), _TAGS, st.sampled_from(["", "21C", "x1y", "hello"]), st.sampled_from(["/s/1", "/s/2"])),
    max_size=40,
)
_FILTERS = st.builds(
    lambda start, span, tags, content, source, order: EventFilter(
        start=start,
        end=None if span is None or start is None else start + span,
        tags=tuple(tags),
        content=content,
        source=source,
        order=order,
    ),
    st.one_of(st.none(), st.integers(0, 6).map(float)),
    st.one_of(st.none(), st.integers(0, 4)),
    st.lists(st.sampled_from(["a", "a.*", "temp-\\d", "b"]), max_size=2),
    st.sampled_from([None, "\\d", "^x", "C$", "l+"]),
    st.sampled_from([None, "/s/1", "/s/.*"]),
    st.sampled_from([None, "asc", "desc"]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_EVENTS, flt=_FILTERS, chunk=st.integers(1, 7))
def test_query_equals_filtering_the_sorted_events(rows, flt, chunk):
    events = [
        Event(id=f"e{n}", timestamp=float(ts), source=src, tags=tags, content=content)
        for n, (ts, tags, content, src) in enumerate(rows)
    ]
    with EventStore() as store:
        store.add_many(events)
        # ties in the order given; desc is the exact reverse
        expected = [e.id for e in sorted(events, key=lambda e: e.timestamp) if flt.matches(e)]
        if flt.order == "desc":
            expected.reverse()
        assert ids(store, flt, batch_size=chunk) == expected


# Property: however the events were written (many small writes, overlapping,
# repeated), the store holds the first of each (timestamp, id) and returns them in order
# (events of equal timestamps in the order they were stored).

_WRITES = st.lists(
    st.lists(
        st.tuples(st.integers(0, 12), st.sampled_from("abcdef"), st.sampled_from(["x", "y"])),
        min_size=1,
        max_size=12,
    ),
    min_size=1,
    max_size=24,
)


@settings(max_examples=60, deadline=None)
@given(writes=_WRITES, start=st.one_of(st.none(), st.integers(0, 12)), desc=st.booleans(), chunk=st.integers(1, 9))
def test_any_sequence_of_writes_is_stored_once_and_read_in_order(writes, start, desc, chunk):
    first: dict[tuple[float, str], Event] = {}
    with EventStore() as store:
        for write in writes:
            events = [Event(id=i, timestamp=ts / 2, content=c) for ts, i, c in write]
            expected_new = []
            for e in events:
                if (e.timestamp, e.id) not in first:
                    first[(e.timestamp, e.id)] = e
                    expected_new.append(e)
            assert store.add_many(events) == len(expected_new)
        flt = EventFilter(start=None if start is None else start / 2, order="desc" if desc else None)
        # by timestamp, ties in the order they were first stored
        expected = [e for e in sorted(first.values(), key=lambda e: e.timestamp) if flt.matches(e)]
        if desc:
            expected.reverse()
        got = [e for cols in store.query(flt, batch_size=chunk) for e in cols.events()]
        assert [(e.timestamp, e.id, e.content) for e in got] == [(e.timestamp, e.id, e.content) for e in expected]
        assert store.count() == len(first)


# Property: chunks matched in the reader's threads (those that overlap no other) and chunks
# merged and matched by the query's thread give the events of filtering them one by one,
# in order, through both readers (batches, and the collector's stored messages).

_CHUNKS = st.lists(
    st.tuples(
        st.integers(0, 40),  # where the chunk starts (half seconds)
        st.integers(1, 12),  # its events
        st.integers(1, 3),  # half seconds between them (overlapping chunks and equal times)
    ),
    min_size=1,
    max_size=9,
)


@settings(max_examples=80, deadline=None)
@given(
    chunks=_CHUNKS,
    start=st.one_of(st.none(), st.integers(0, 40)),
    span=st.one_of(st.none(), st.integers(0, 30)),
    content=st.sampled_from([None, "[02468]$", "^c1", "nothing", "."]),
    tags=st.sampled_from([(), ("even",), ("t.*",)]),
    desc=st.booleans(),
)
def test_chunks_matched_where_they_are_read_give_the_events_of_the_filter(chunks, start, span, content, tags, desc):
    events = []
    with EventStore() as store:
        for k, (first, count, step) in enumerate(chunks):
            batch = [
                Event(
                    id=f"e{k}-{i}", timestamp=(first + i * step) / 2, source="/s",
                    tags=["even" if i % 2 == 0 else "odd"], content=f"c{k}{i}",
                )
                for i in range(count)
            ]
            store.add_batch(events_to_batch(batch), compact=False)
            events += batch
        end = None if start is None or span is None else (start + span) / 2
        flt = EventFilter(
            start=None if start is None else start / 2, end=end, content=content, tags=tags,
            order="desc" if desc else None,
        )
        # by timestamp, ties in the order stored; desc is the exact reverse
        expected = [e.id for e in sorted(events, key=lambda e: e.timestamp) if flt.matches(e)]
        if desc:
            expected.reverse()
        assert ids(store, flt, batch_size=5) == expected
        sent = [b for m in store.query_ipc(flt, batch_size=5) for b in ipc_to_batches(m)]
        assert [i for b in sent for i in b.column("id").to_pylist()] == expected
        assert all(b.schema.equals(event_schema()) for b in sent if b.num_rows)


# --------------------------------------------------------------------------- threads


def test_readers_and_a_writer_at_the_same_time(store):
    store.add_many([ev(i, float(i)) for i in range(2000)])
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(20):
                got = ids(store, Filter(0).match_end(1999), batch_size=300)
                assert got == [f"e{i}" for i in range(2000)]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for k in range(20):
        store.add_many([ev(i, 5000.0 + i) for i in range(2000 + k * 100, 2100 + k * 100)])
    for t in readers:
        t.join()
    assert not errors
    assert store.count() == 4000


# --------------------------------------------------------------------------- errors


def test_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="notes.txt"):
        EventStore(path)


def test_a_missing_directory(tmp_path):
    with pytest.raises(StoreError, match="cannot open"):
        EventStore(tmp_path / "no" / "such" / "dir" / "events.db")


def test_a_database_with_another_events_table(tmp_path):
    path = tmp_path / "upstream.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE events (id TEXT PRIMARY KEY, timestamp FLOAT, tags TEXT, source TEXT, content TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a theia_frames event store"):
        EventStore(path)


def test_a_store_of_the_earlier_per_event_layout(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, timestamp REAL NOT NULL, "
        "source TEXT NOT NULL, tags TEXT NOT NULL, content TEXT NOT NULL)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="earlier layout"):
        EventStore(path)


def test_another_programs_database(tmp_path):
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE chunks (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a theia_frames event store.*chunks"):
        EventStore(path)


def test_a_store_of_another_format_version(tmp_path):
    path = tmp_path / "future.db"
    EventStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"format {FORMAT_VERSION + 1}"):
        EventStore(path)


def test_a_closed_store_raises_ours(store):
    store.add(ev(1, 1.0))
    chunks = store.query(Filter())
    store.close()
    store.close()  # idempotent
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        store.add(ev(2, 2.0))
    with pytest.raises(StoreError, match="closed"):
        store.count()
    with pytest.raises(StoreError, match="closed"):
        list(chunks)
    assert "closed" in repr(store)


def test_query_needs_an_eventfilter(store):
    with pytest.raises(UsageError, match="EventFilter"):
        store.query({"start": 1})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- compressed chunks


def test_stored_chunks_are_compressed_to_a_few_bytes_per_sensor_event(tmp_path):
    from theia_frames.simulation import sensor_events

    n = 65_536
    with EventStore(tmp_path / "events.db") as store:
        store.add_many(list(sensor_events(n, sources=4, rate=1000.0, start=1.7e9, seed=7)))
        db = sqlite3.connect(tmp_path / "events.db")
        stored, decoded = db.execute("SELECT sum(length(data)), sum(bytes) FROM chunks").fetchone()
        db.close()
    assert stored / n <= 25 and decoded > 4 * stored  # about 15.5 bytes an event; 107 uncompressed


def _bomb_chunk(tmp_path, declared_bytes: int) -> str:
    """A store of one chunk whose recorded decoded size is ``declared_bytes``."""
    path = str(tmp_path / "bomb.db")
    with EventStore(path) as store:
        store.add_many([ev(1, 1.0, content="x" * 100_000)])
    db = sqlite3.connect(path)
    db.execute("UPDATE chunks SET bytes = ?", (declared_bytes,))
    db.commit()
    db.close()
    _reseal(path)
    return path


def _reseal(path) -> None:
    """Recompute every chunk's checksum: damage done before the chunk had one (format 5),
    which only the checks behind the checksum can see."""
    from theia_frames.server.chunks import chunk_checksum

    db = sqlite3.connect(path)
    for seq, data, nbytes, arrivals, lo, hi, rows, summary in db.execute(
        "SELECT seq, data, bytes, arrivals, min_ts, max_ts, rows, (SELECT summary FROM summaries WHERE summaries.seq = chunks.seq) FROM chunks"
    ).fetchall():
        db.execute(
            "UPDATE chunks SET checksum = ? WHERE seq = ?", (chunk_checksum(data, nbytes, arrivals, lo, hi, rows, summary), seq)
        )
    db.commit()
    db.close()


def test_a_chunk_decoding_to_more_than_it_recorded_is_refused_before_decompressing(tmp_path):
    path = _bomb_chunk(tmp_path, 10_000)  # its ZSTD buffers declare about 100,000 bytes
    with EventStore(path) as store:
        with pytest.raises(StoreError, match="chunk 1 of the event store is damaged: .*decodes to more than 10000"):
            ids(store)
        with pytest.raises(StoreError, match="damaged"):
            store.add_many([ev(2, 1.0)])  # de-duplication reads the chunk too


@pytest.mark.parametrize("version", [2, 3])
def test_a_store_of_an_earlier_format_is_upgraded_when_opened(tmp_path, version):
    """Formats 2 (uncompressed chunks) and 3 (ZSTD) kept sources and tags as text: every
    chunk is rewritten in the event schema when the store is opened."""
    import pyarrow as pa

    from theia_frames.protocol.arrow import batch_to_ipc, decoded_size

    path = tmp_path / f"v{version}.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE chunks (seq INTEGER PRIMARY KEY AUTOINCREMENT, tier INTEGER NOT NULL, min_ts REAL NOT NULL, "
        "max_ts REAL NOT NULL, rows INTEGER NOT NULL, died INTEGER, data BLOB NOT NULL"
        + (", bytes INTEGER NOT NULL)" if version == 3 else ")")
    )
    db.execute("CREATE INDEX chunks_max_ts ON chunks (max_ts)")
    db.execute("CREATE INDEX chunks_min_ts ON chunks (min_ts)")
    db.execute("CREATE INDEX chunks_open ON chunks (tier) WHERE died IS NULL AND tier < 15")
    text = pa.schema([(n, pa.float64() if n == "timestamp" else pa.string()) for n in ("id", "timestamp", "source", "tags", "content")])
    old = pa.RecordBatch.from_pylist(
        [
            {"id": "e1", "timestamp": 1.0, "source": "/s/a", "tags": "x,y", "content": "one"},
            {"id": "e2", "timestamp": 2.0, "source": "/s/b", "tags": "", "content": "two"},
        ],
        schema=text,
    )
    if version == 2:
        db.execute("INSERT INTO chunks (tier, min_ts, max_ts, rows, data) VALUES (0, 1.0, 2.0, 2, ?)", (batch_to_ipc(old),))
    else:
        blob = batch_to_ipc(old, compression="zstd")
        db.execute(
            "INSERT INTO chunks (tier, min_ts, max_ts, rows, data, bytes) VALUES (0, 1.0, 2.0, 2, ?, ?)",
            (blob, decoded_size(blob)),
        )
    db.execute("PRAGMA application_id = 1952999026")  # "thfr"
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    with EventStore(path) as store:
        batches = list(store.query_batches(Filter()))
        assert all(b.schema.equals(event_schema()) for b in batches)
        assert [(e.id, e.source, e.tags, e.content) for b in batches for e in iter_batch_events(b)] == [
            ("e1", "/s/a", ["x", "y"], "one"),
            ("e2", "/s/b", [], "two"),
        ]
        assert store.add_many([ev(2, 2.0), ev(3, 3.0)]) == 1
        assert ids(store) == ["e1", "e2", "e3"]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION == 8
    db.close()


def test_a_query_reads_its_chunks_one_ahead_in_order_and_leaves_no_thread(tmp_path):
    """Chunks are read and decoded in a thread of their own while the one before is used
    (in two threads, two chunks ahead, when they are matched there): the same events in
    the same order, and the threads end with the query, read to its end or abandoned."""
    from theia_frames.server.query import Matcher, read_ahead

    def readers():
        return [t for t in threading.enumerate() if t.name.startswith("theia-frames-read-ahead")]

    with EventStore(tmp_path / "events.db") as store:
        for k in range(8):
            store.add_batch(events_to_batch([ev(10 * k + i, float(10 * k + i)) for i in range(10)]), compact=False)
        assert len(store.chunks()) == 8
        assert ids(store) == [f"e{i}" for i in range(80)]
        for matcher, threads in [(None, 1), (Matcher(EventFilter(content="[02468]$"), False, 1000), 2)]:
            snapshot = store._snapshot(Filter() if matcher is None else matcher.filter, 100)
            try:
                chunks = read_ahead(snapshot, matcher)
                first = next(chunks)
                assert 1 <= len(readers()) <= threads, "the next chunks are read in threads of their own"
                assert first.matched == (matcher is not None)
                expected = [f"e{i}" for i in range(10) if matcher is None or i % 2 == 0]
                assert first.chunk.column("id").to_pylist() == expected
                if matcher is not None:
                    rest = [read.chunk for read in chunks if read is not None]
                    assert [e for c in rest for e in c.column("id").to_pylist()] == [f"e{i}" for i in range(10, 80, 2)]
                    assert not readers()
                    continue
                chunks.close()  # abandoned after one chunk
                assert not readers()
            finally:
                snapshot.close()
            assert not readers()


def test_a_query_whose_chunks_are_slow_to_match_still_hears_from_them(tmp_path, monkeypatch):
    """While a chunk is matched in a reader thread, the query's thread is given an empty
    piece now and then (it looks at the clock: a find's ``wait``), and is stopped by a
    cancel between two slices of a chunk's matching."""
    import time

    from theia_frames.server import query

    with EventStore(tmp_path / "events.db") as store:
        for k in range(6):
            store.add_batch(events_to_batch([ev(10 * k + i, float(10 * k + i)) for i in range(10)]), compact=False)
        read = query.Matcher.read

        def slow(self, snapshot, seq):  # type: ignore[no-untyped-def]
            time.sleep(0.3)
            return read(self, snapshot, seq)

        monkeypatch.setattr(query.Matcher, "read", slow)
        flt = EventFilter(content="[02468]$")
        batches = store.query_batches(flt, batch_size=1000, wait=0.1)
        sizes = [b.num_rows for b in batches]
        assert sum(sizes) == 30 and sizes.count(0) >= 3, sizes
        monkeypatch.setattr(query.Matcher, "read", read)
        with pytest.raises(StoreError, match="cancelled"):
            results = store.query_batches(flt, batch_size=1)
            next(results)
            results.cancel()
            list(results)


@pytest.mark.parametrize(
    "flt",
    [
        Filter(),
        Filter(5),
        EventFilter(tags=("all",)),
        EventFilter(tags=("odd",)),
        EventFilter(tags=("second",)),
        EventFilter(content="^1"),
        EventFilter(source="/dev/b", tags=("all",)),
        EventFilter(id="e1.*"),
        EventFilter(tags=("none",)),
    ],
    ids=["all", "time", "tag every event", "tag some", "tag one chunk", "content", "source and tag", "id", "nothing"],
)
@pytest.mark.parametrize("batch_size", [1000, 7])
def test_what_goes_out_as_stored_is_matched_on_the_columns_the_filter_reads(tmp_path, flt, batch_size):
    """The collector's path decompresses a chunk in the filter's columns first, and in
    full only when it does not match whole: the same events as the full path, and a
    chunk that matches whole goes out as stored."""

    def event(i: int, ts: float, chunk: str) -> Event:
        tags = ["all", chunk, *(["odd"] if i % 2 else [])]
        return Event(id=f"e{i}", timestamp=ts, source="/dev/b" if i % 3 else "/dev/a", tags=tags, content=f"{i} C")

    path = tmp_path / "events.db"
    with EventStore(path) as store:
        store.add_batch(events_to_batch([event(i, float(i), "first") for i in range(40)]), compact=False)
        store.add_batch(events_to_batch([event(i, float(i), "second") for i in range(40, 80)]), compact=False)
        store.add_batch(events_to_batch([event(i, float(i - 60) + 0.5, "late") for i in range(80, 100)]), compact=False)
        store.add_batch(events_to_batch([event(i, float(i), "third") for i in range(100, 140)]), compact=False)
        expected = [e for b in store.query_batches(flt, batch_size=batch_size) for e in iter_batch_events(b)]
        messages = list(store.query_ipc(flt, batch_size=batch_size))
        got = [e for m in messages for b in ipc_to_batches(m) for e in iter_batch_events(b)]
        assert got == expected
        assert got == sorted((e for e in store_events(store) if flt.matches(e)), key=lambda e: (e.timestamp, e.id))
        db = sqlite3.connect(path)
        try:
            stored = {row[0] for row in db.execute("SELECT data FROM chunks")}
        finally:
            db.close()
        whole_chunks = sum(m in stored for m in messages)
        if batch_size == 1000 and flt.tags == ("second",):
            assert whole_chunks == 1
        if batch_size == 1000 and flt.tags == ("all",) and flt.source is None:
            assert whole_chunks == 2  # the second and third: the first overlaps the late chunk


def store_events(store: EventStore) -> list[Event]:
    return [e for b in store.query_batches(Filter()) for e in iter_batch_events(b)]


# --------------------------------------------------------------------------- arrival order


def test_events_of_one_instant_come_back_in_arrival_order_across_writes_and_merges(store):
    """Ties are kept in the order events arrived: within a write in the order given, across
    writes in the order of the writes, through merges of every tier, asc and desc."""
    import random

    rng = random.Random(7)
    arrived: list[str] = []
    n = 0
    for _ in range(MERGE_FANOUT**2 + 5):  # enough small writes for merges of two tiers
        size = rng.randint(1, 5)
        batch = []
        for _ in range(size):
            # ids in no order of their own: random text, so an order by id would show
            e = Event(id=f"{rng.getrandbits(40):x}", timestamp=rng.choice([5.0, 6.0, 6.0, 7.5]), content=str(n))
            batch.append(e)
            n += 1
        arrived += [e.id for e in batch]
        store.add_many(batch)
        store.add_many(batch[:1])  # a resend is stored once and keeps its first place
    stored = {i: k for k, i in enumerate(arrived)}
    assert any(c.tier > 0 for c in store.chunks())  # merged
    expected = sorted(arrived, key=lambda i: (store_ts(store, i), stored[i]))
    for batch_size in (1, 7, 1000):
        assert ids(store, batch_size=batch_size) == expected
        assert ids(store, Filter().order_desc(), batch_size=batch_size) == expected[::-1]
    assert ids(store, Filter(6).match_end(6)) == [i for i in expected if store_ts(store, i) == 6.0]


def store_ts(store: EventStore, event_id: str) -> float:
    (cols,) = store.query(Filter().match_id(event_id))
    return cols.timestamp[0]


def test_overlapping_writes_of_one_instant_merge_by_arrival_when_read(tmp_path):
    """Chunks that overlap are merged while a query reads them (not by the writer): rows of
    equal timestamps still come out in arrival order, and desc is the exact reverse."""
    with EventStore(tmp_path / "events.db") as store:
        arrived = []
        for k in range(5):
            batch = [Event(id=f"{(k * 37 + j * 11) % 97:02d}", timestamp=float(j % 3), content=str(k)) for j in range(9)]
            store.add_batch(events_to_batch(batch), compact=False)
            arrived += batch
        assert len(store.chunks()) == 5
        expected = [e.id for e in sorted(arrived, key=lambda e: e.timestamp)]
        assert ids(store) == expected
        assert ids(store, Filter().order_desc(), batch_size=4) == expected[::-1]
        assert ids(store, Filter().match_content("[13]")) == [
            e.id for e in sorted(arrived, key=lambda e: e.timestamp) if e.content in "13"
        ]
        got = [e.id for m in store.query_ipc(Filter(), batch_size=5) for b in ipc_to_batches(m) for e in iter_batch_events(b)]
        assert got == expected
        assert store.compact() >= 0
        assert ids(store) == expected


def test_a_store_of_format_4_is_numbered_in_its_stored_order_when_opened(tmp_path):
    """Format 4 had no arrival numbers: its events are numbered in their stored order (chunk
    by chunk, oldest first), events stored afterwards come after them, and merges keep that."""
    from theia_frames.protocol.arrow import batch_to_ipc, decoded_size

    path = tmp_path / "v4.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE chunks (seq INTEGER PRIMARY KEY AUTOINCREMENT, tier INTEGER NOT NULL, min_ts REAL NOT NULL, "
        "max_ts REAL NOT NULL, rows INTEGER NOT NULL, died INTEGER, data BLOB NOT NULL, bytes INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX chunks_max_ts ON chunks (max_ts)")
    db.execute("CREATE INDEX chunks_min_ts ON chunks (min_ts)")
    db.execute("CREATE INDEX chunks_open ON chunks (tier) WHERE died IS NULL AND tier < 15")
    # format 4 kept ties by id: each chunk sorted by (timestamp, id)
    chunks = [
        [ev(1, 1.0), ev(3, 2.0), ev(7, 2.0)],
        [ev(2, 2.0), ev(5, 2.0), ev(4, 3.0)],
    ]
    for events in chunks:
        blob = batch_to_ipc(events_to_batch(events), compression="zstd")
        db.execute(
            "INSERT INTO chunks (tier, min_ts, max_ts, rows, data, bytes) VALUES (0, ?, ?, ?, ?, ?)",
            (events[0].timestamp, events[-1].timestamp, len(events), blob, decoded_size(blob)),
        )
    db.execute("PRAGMA application_id = 1952999026")  # "thfr"
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    with EventStore(path) as store:
        assert ids(store) == ["e1", "e3", "e7", "e2", "e5", "e4"]
        assert store.add_many([ev(6, 2.0), ev(5, 2.0)]) == 1
        assert ids(store) == ["e1", "e3", "e7", "e2", "e5", "e6", "e4"]
        for i in range(MERGE_FANOUT):
            store.add_many([ev(100 + i, 2.0)])
        assert len(store.chunks()) < 3 + MERGE_FANOUT  # merged
        expected = ["e1", "e3", "e7", "e2", "e5", "e6", *(f"e{100 + i}" for i in range(MERGE_FANOUT)), "e4"]
        assert ids(store) == expected
        assert ids(store, Filter().order_desc()) == expected[::-1]
    with EventStore(path) as store:  # reopened: numbering goes on after the newest
        store.add_many([ev(200, 2.0)])
        assert ids(store)[-2:] == ["e200", "e4"]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION == 8
    db.close()


def test_damaged_arrival_numbers_are_a_store_error(tmp_path):
    path = tmp_path / "events.db"
    with EventStore(path) as store:
        store.add_batch(events_to_batch([ev(1, 1.0), ev(2, 2.0)]), compact=False)
        store.add_batch(events_to_batch([ev(3, 1.5), ev(4, 2.0)]), compact=False)
    db = sqlite3.connect(path)
    db.execute("UPDATE chunks SET arrivals = x'00112233' WHERE seq = 1")
    db.commit()
    db.close()
    with EventStore(path) as store:
        with pytest.raises(StoreError, match="chunk 1 of the event store is damaged .its checksum does not match.: it held 2 events"):
            ids(store)
    _reseal(path)
    with EventStore(path) as store:
        with pytest.raises(StoreError, match="arrival numbers of chunk 1"):
            ids(store)


_COPY = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from([0.0, 0.3e-6, 1e-6, 2.2e-6]),  # 0 and 0.3 µs are one microsecond
    st.sampled_from(["x", "y"]),
    st.sampled_from([["t"], ["t", "u"]]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_COPY, min_size=1, max_size=8), min_size=1, max_size=3))
def test_the_first_copy_of_an_identity_wins_and_each_later_one_is_a_repeat_or_a_conflict(batches):
    """Against a model: events in the order sent, identity (microsecond, id), the first stored;
    a later copy is a repeat when its source, tags and content are those of the first, else a conflict."""
    t0 = 1_700_000_000.0
    first: dict[tuple[int, str], tuple] = {}
    stored: list[tuple] = []
    with EventStore() as store:
        for batch in batches:
            events = [Event(id=i, timestamp=t0 + dt, source="s", tags=list(tags), content=c) for i, dt, c, tags in batch]
            out = store.store_batch(events_to_batch(events))
            want_repeat, want_conflict, want_new = [], [], []
            for e in events:
                key = (round((e.timestamp) * 1e6), e.id)
                body = (e.source, tuple(e.tags), e.content)
                if key not in first:
                    first[key] = body
                    stored.append((e.id, e.timestamp, *body))
                    want_new.append(e.id)
                    want_repeat.append(False)
                    want_conflict.append(False)
                else:
                    want_repeat.append(first[key] == body)
                    want_conflict.append(first[key] != body)
            assert out.repeated.tolist() == want_repeat
            assert out.conflicting.tolist() == want_conflict
            assert out.new.column(0).to_pylist() == want_new
        got = [(e.id, e.timestamp, e.source, tuple(e.tags), e.content) for cols in store.query() for e in cols.events()]
    assert sorted(got, key=lambda r: (r[1], r[0])) == sorted(stored, key=lambda r: (r[1], r[0]))


def test_a_chunk_whose_first_time_is_minus_zero_reads_back_intact():
    from theia_frames.event import Event
    from theia_frames.filter import Filter
    from theia_frames.server.store import EventStore

    store = EventStore(":memory:")
    store.add_many([Event(id="z", timestamp=-0.0), Event(id="p", timestamp=5.0)])
    assert sorted(i for cols in store.query(Filter()) for i in cols.id) == ["p", "z"]
    store.close()
