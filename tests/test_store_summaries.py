"""Chunk summaries: a time-only count of whole-second grain takes the chunks inside its range
from their summaries, with the result of counting their events; damaged summaries are damage;
stores of format 6 (no summaries) open and count as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import theia_frames as tf
from theia_frames.client import Client
from theia_frames.event import Event
from theia_frames.exceptions import ServerError, StoreError
from theia_frames.filter import EventFilter, Filter
from theia_frames.frames.analysis import bucket, count_frame, count_grain
from theia_frames.protocol.arrow import events_to_batch
from theia_frames.protocol.count import Counter
from theia_frames.server import count_endpoint
from theia_frames.server.chunks import FINAL_TIER, MERGE_FANOUT, chunk_checksum, read_stream
from theia_frames.server.collector import serve
from theia_frames.server.store import FORMAT_VERSION, EventStore
from theia_frames.server.summaries import SUMMARY_SHARE, ChunkSummary, chunk_summary, read_summary, summary_counting

from old_formats import join_parts

T0 = 1_700_000_000.0
SOURCES = [f"/dev/s{i}" for i in range(5)]
TAGS = ["alpha", "beta", "gamma", "zeta"]
BYS = [None, "source", "tag"]
# a chunk's summary, in SQL over the chunks table
SUMMARY = "(SELECT summary FROM summaries WHERE summaries.seq = chunks.seq)"
WHOLE_SECONDS = ["1s", "1min", "1h", None]


def dense(n: int, start: float, per_second: float, seed: int, sources: list[str] = SOURCES) -> list[Event]:
    """``n`` events from ``start``, about ``per_second`` a second, some untagged, some with two tags,
    times rounded to the second now and then (events on a slot's edge)."""
    rng = np.random.default_rng(seed)
    times = start + np.sort(rng.random(n)) * (n / per_second)
    times[:: 37] = np.round(times[:: 37])
    times = np.sort(times)
    return [
        Event(
            id=f"{seed}-{i}",
            timestamp=float(t),
            source=sources[int(rng.integers(len(sources)))],
            tags=list(rng.choice(TAGS, size=int(rng.integers(0, 3)), replace=False)),
            content="error" if i % 7 == 0 else "ok",
        )
        for i, t in enumerate(times)
    ]


def fill(store: EventStore) -> list[Event]:
    """Chunks with summaries (large batches), a chunk merged from small ones (the small ones have
    none, the merged one has), a chunk of many sources and one of an event a second (none),
    overlapping chunks, and small chunks not merged yet (none)."""
    events: list[Event] = []
    for k in range(3):
        batch = dense(6_000, T0 + k * 400.0, 200.0, seed=k)
        store.add_batch(events_to_batch(batch))
        events += batch
    for k in range(MERGE_FANOUT**2):  # merged by tiers into one chunk of the final tier
        batch = dense(64, T0 + 1_300.1 + k * 2.0, 256.0, seed=100 + k, sources=SOURCES[:2])
        store.add_batch(events_to_batch(batch))
        events += batch
    many = dense(5_000, T0 + 1_400.0, 100.0, seed=200, sources=[f"/many/{i}" for i in range(1_500)])
    sparse = [Event(id=f"sparse{i}", timestamp=T0 + 1_500.0 + i, source="/dev/s0", tags=["alpha"]) for i in range(5_000)]
    overlapping = dense(4_500, T0 + 5.0, 200.0, seed=300)  # inside the first chunk's time range
    small = dense(300, T0 + 7_000.0, 100.0, seed=400)
    for batch in (many, sparse, overlapping, small):
        store.add_batch(events_to_batch(batch))
        events += batch
    return events


@pytest.fixture(scope="module")
def filled() -> Iterator[EventStore]:
    store = EventStore(":memory:")
    fill(store)
    yield store
    store.close()


def summarized_chunks(store: EventStore) -> tuple[int, int]:
    """(chunks, chunks with a summary)."""
    row = store._db.execute(f"SELECT count(*), count({SUMMARY}) FROM chunks WHERE died IS NULL").fetchone()
    return int(row[0]), int(row[1])


def scan_count(store: EventStore, flt: EventFilter, grain: int, by: str | None) -> tuple[Any, int]:
    """The count of a scan as the collector makes it, and how many chunks it took from summaries
    (and, in ``spans_taken``, from their index rows)."""
    counter = Counter(grain, by)
    counting = summary_counting(counter)
    used = []
    spans_taken.clear()

    def span(first: float, last: float, rows: int) -> bool:
        took = counter.add_span(first, last, rows)
        spans_taken.extend([True] if took else [])
        return took

    def count(summary: ChunkSummary) -> bool:
        assert counting is not None
        took = counting(summary)
        used.append(took)
        return took

    fields = ["timestamp"] + ([] if by is None else ["source" if by == "source" else "tags"])
    for batch in store.scan(flt, fields, taken=span, summarized=None if counting is None else count):
        counter.add(batch)
    return counter.result(), sum(used)


spans_taken: list[bool] = []


def summarized_inside(store: EventStore, flt: EventFilter) -> int:
    """How many chunks with a summary lie wholly inside ``flt``'s time range."""
    start = -np.inf if flt.start is None else flt.start
    end = np.inf if flt.end is None else flt.end
    rows = store._db.execute(f"SELECT min_ts, max_ts FROM chunks WHERE {SUMMARY} IS NOT NULL AND died IS NULL").fetchall()
    return sum(1 for lo, hi in rows if lo >= start and hi <= end)


def reference(store: EventStore, flt: EventFilter, grain: int, by: str | None) -> Any:
    counter = Counter(grain, by)
    for batch in store.query_batches(flt):
        counter.add(batch)
    return counter.result()


def assert_same_result(got: Any, want: Any, every: Any) -> None:
    assert (got.events, got.first, got.last) == (want.events, want.first, want.last)
    pd.testing.assert_frame_equal(count_frame(got, every, max_buckets=None), count_frame(want, every, max_buckets=None), check_exact=True)


def test_the_store_keeps_summaries_where_they_are_much_smaller(filled: EventStore) -> None:
    chunks, summarized = summarized_chunks(filled)
    assert 0 < summarized < chunks
    # the summaries of chunks merged away went with them
    assert filled._db.execute("SELECT count(*) FROM summaries").fetchone()[0] == summarized
    rows = {seq: rows for seq, _, rows, _, _ in filled.chunks()}
    for seq, data, lo, hi in filled._db.execute("SELECT seq, summary, min_ts, max_ts FROM summaries JOIN chunks USING (seq)"):
        summary = read_summary(data, seq, lo, hi, rows[seq])
        pairs = len(summary.by_source.counts) + len(summary.by_tag.counts)
        assert pairs * SUMMARY_SHARE <= rows[seq] and summary.by_source.events == rows[seq]
    # the chunk of many sources, the one of an event a second and the small one have none
    assert [lo for (lo,) in filled._db.execute(f"SELECT min_ts FROM chunks WHERE {SUMMARY} IS NULL ORDER BY min_ts")] == [
        pytest.approx(T0 + 1_400.0, abs=1.0), T0 + 1_500.0, pytest.approx(T0 + 7_000.0, abs=1.0)
    ]
    assert [t for (t,) in filled._db.execute("SELECT tier FROM summaries JOIN chunks USING (seq)")] == [FINAL_TIER] * (chunks - 3)


FILTERS = {
    "all": Filter(1),
    "cutting chunks": EventFilter(start=T0 + 10.5, end=T0 + 1_301.7),
    "inside one chunk": EventFilter(start=T0 + 402.0, end=T0 + 420.0),
}


@pytest.mark.parametrize("every", WHOLE_SECONDS)
@pytest.mark.parametrize("by", BYS)
@pytest.mark.parametrize("name", list(FILTERS))
def test_a_time_only_count_of_whole_seconds_takes_summaries_with_the_same_result(
    filled: EventStore, name: str, by: str | None, every: Any
) -> None:
    flt = FILTERS[name]
    grain = 0 if every is None else count_grain(every)
    got, used = scan_count(filled, flt, grain, by)
    assert_same_result(got, reference(filled, flt, grain, by), every)
    inside = summarized_inside(filled, flt)
    assert inside > 0 or name == "inside one chunk"  # that chunk is cut by the range: read
    # each summarized chunk inside the range is taken unread: from its index row (ungrouped,
    # its events in one slot) or its summary
    if by is None:
        assert used + len(spans_taken) >= inside and used <= inside
    else:
        assert used == inside


@pytest.mark.parametrize("every", ["500ms", "1500ms"])
def test_a_grain_of_parts_of_seconds_reads_the_chunks(filled: EventStore, every: str) -> None:
    got, used = scan_count(filled, Filter(1), count_grain(every), "source")
    assert used == 0
    assert_same_result(got, reference(filled, Filter(1), count_grain(every), "source"), every)


def test_a_filter_beyond_time_reads_the_chunks(filled: EventStore) -> None:
    flt = EventFilter(start=1, content="error")
    counter = Counter(count_grain("1min"), "tag")
    offered: list[Any] = []
    for batch in filled.scan(flt, ["timestamp", "tags"], summarized=offered.append):
        counter.add(batch)
    assert offered == []
    assert_same_result(counter.result(), reference(filled, flt, count_grain("1min"), "tag"), "1min")


def test_summaries_give_each_groups_first_and_last_time(filled: EventStore) -> None:
    for by in ("source", "tag"):
        got, want = Counter(count_grain("1min"), by, spans=True), Counter(count_grain("1min"), by, spans=True)
        counting = summary_counting(got)
        assert counting is not None
        for batch in filled.scan(Filter(1), ["timestamp", "source", "tags"], summarized=counting):
            got.add(batch)
        for batch in filled.query_batches(Filter(1)):
            want.add(batch)
        g, w = got.result(), want.result()
        assert sorted(zip(g.names, g.firsts.tolist(), g.lasts.tolist())) == sorted(zip(w.names, w.firsts.tolist(), w.lasts.tolist()))
    # a counter keeping spans does not take a count without them
    assert not Counter(count_grain("1min"), "source", spans=True).add_counts(reference(filled, Filter(1), 1_000_000_000, "source"))


@pytest.fixture
def store_file(tmp_path: Path) -> tuple[Path, list[Event]]:
    path = tmp_path / "events.db"
    with EventStore(path) as store:
        events = fill(store)
    return path, events


@pytest.fixture
def used(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each summary the collector's counts were offered was taken."""
    used: list[bool] = []
    real = count_endpoint.summary_counting

    def recording(counter: Counter) -> Any:
        counting = real(counter)
        if counting is None:
            return None

        def count(summary: ChunkSummary) -> bool:
            used.append(counting(summary))
            return used[-1]

        return count

    monkeypatch.setattr(count_endpoint, "summary_counting", recording)
    return used


@pytest.mark.parametrize("batch", [True, False], ids=["on the collector", "client-side"])
def test_the_collector_counts_from_summaries_what_bucket_counts(store_file: tuple[Path, list[Event]], batch: bool, used: list[bool]) -> None:
    path, _ = store_file
    with serve(db=str(path), port=0) as collector, Client(collector.url, batch=batch) as client:
        for flt in FILTERS.values():
            df = client.find(flt).to_dataframe(progress=False)
            for every in ("1s", "1min", "1h"):
                for by in BYS:
                    pd.testing.assert_frame_equal(client.count(flt, every, by, max_buckets=None), bucket(df, every, by=by, max_buckets=None), check_exact=True)
    assert any(used) == batch


@pytest.mark.parametrize("batch", [True, False], ids=["on the collector", "client-side"])
def test_the_collector_makes_timelines_from_summaries(store_file: tuple[Path, list[Event]], batch: bool, used: list[bool]) -> None:
    path, _ = store_file
    exact = ["first", "last", "count", "span", "rate"]
    with serve(db=str(path), port=0) as collector, Client(collector.url, batch=batch) as client:
        for flt in FILTERS.values():
            got = client.timeline(flt, gap="5s")
            want = tf.timeline(client.find(flt).to_dataframe(progress=False), gap="5s")
            pd.testing.assert_frame_equal(got[exact], want[exact], check_exact=True)
            assert ((got["max_gap"] - want["max_gap"]).dropna().abs() < pd.Timedelta(seconds=1)).all()
            with Client(collector.url, batch=not batch) as other:
                pd.testing.assert_frame_equal(got, other.timeline(flt, gap="5s"), check_exact=True)
    assert any(used)  # the collector's timelines (here or in the other client) took summaries


def _summary_of(path: Path) -> int:
    """The first chunk with a summary."""
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT min(seq) FROM summaries").fetchone()[0])


def test_a_damaged_summary_is_damage(store_file: tuple[Path, list[Event]]) -> None:
    path, _ = store_file
    seq = _summary_of(path)
    with sqlite3.connect(path) as db:
        (old,) = db.execute("SELECT summary FROM summaries WHERE seq = ?", (seq,)).fetchone()
        damaged = bytearray(old)
        damaged[len(damaged) // 2] ^= 0x5A
        db.execute("UPDATE summaries SET summary = ? WHERE seq = ?", (bytes(damaged), seq))
    with EventStore(path) as store:
        # counted from the summary: its own checksum
        with pytest.raises(StoreError, match=rf"chunk {seq} of the event store is damaged \(its summary does not match its checksum\): it held \d+ events"):
            scan_count(store, Filter(1), count_grain("1min"), "source")
        # read whole: the chunk's checksum covers its summary
        with pytest.raises(StoreError, match=rf"chunk {seq} of the event store is damaged \(its checksum does not match\)"):
            list(store.query_batches(Filter(1)))
    with serve(db=str(path), port=0) as collector, Client(collector.url) as client:
        with pytest.raises(ServerError, match=rf"chunk {seq} of the event store is damaged"):
            client.count(Filter(1), "1min", "source")


def test_a_summary_taken_away_is_damage(store_file: tuple[Path, list[Event]]) -> None:
    path, _ = store_file
    seq = _summary_of(path)
    with EventStore(path) as store:
        expected = reference(store, Filter(1), count_grain("1min"), "source")
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM summaries WHERE seq = ?", (seq,))
    with EventStore(path) as store:
        # a count then reads the chunk's columns, checked by their own checksums: the same answer
        got, _ = scan_count(store, Filter(1), count_grain("1min"), "source")
        assert_same_result(got, expected, "1min")
        # read whole: the chunk's checksum covers its summary
        with pytest.raises(StoreError, match=rf"chunk {seq} of the event store is damaged \(its checksum does not match\)"):
            list(store.query_batches(Filter(1)))
    from theia_frames.server.verify import check_store

    assert [(d.seq, d.reason) for d in check_store(path).damaged] == [(seq, "its checksum does not match")]


def test_a_summary_of_other_events_is_damage(store_file: tuple[Path, list[Event]]) -> None:
    """A summary whose checksums match but which does not count its chunk's events."""
    path, _ = store_file
    seq = _summary_of(path)
    with sqlite3.connect(path) as db:
        head, parts, nbytes, arrivals, lo, hi, rows = db.execute(
            "SELECT data, parts, bytes, arrivals, min_ts, max_ts, rows FROM chunks WHERE seq = ?", (seq,)
        ).fetchone()
        data = read_stream(db, seq, head, parts)
        other = dense(rows, lo, 200.0, seed=999)
        summary = chunk_summary(events_to_batch(other), lo, hi)
        assert summary is not None
        db.execute(
            "UPDATE chunks SET checksum = ? WHERE seq = ?", (chunk_checksum(data, nbytes, arrivals, lo, hi, rows, summary), seq)
        )
        db.execute("UPDATE summaries SET summary = ? WHERE seq = ?", (summary, seq))
    from theia_frames.server.verify import check_store

    report = check_store(path)
    assert [(d.seq, d.reason) for d in report.damaged] == [(seq, "its summary does not count its events")]


def test_a_store_of_format_6_opens_and_counts_and_summarizes_new_chunks(store_file: tuple[Path, list[Event]]) -> None:
    path, events = store_file
    with sqlite3.connect(path) as db:  # as format 6 stored it: no summaries, checksums without them, no parts
        join_parts(db)
        for seq, data, nbytes, arrivals, lo, hi, rows in db.execute(
            "SELECT seq, data, bytes, arrivals, min_ts, max_ts, rows FROM chunks"
        ).fetchall():
            db.execute("UPDATE chunks SET checksum = ? WHERE seq = ?", (chunk_checksum(data, nbytes, arrivals, lo, hi, rows), seq))
        db.execute("DROP TRIGGER chunks_summaries")
        db.execute("DROP TABLE summaries")
        db.execute("PRAGMA user_version = 6")
    with EventStore(path) as store:
        assert summarized_chunks(store)[1] == 0
        for by in BYS:
            got, used = scan_count(store, Filter(1), count_grain("1min"), by)
            assert used == 0
            assert_same_result(got, reference(store, Filter(1), count_grain("1min"), by), "1min")
        store.add_batch(events_to_batch(dense(5_000, T0 + 9_000.0, 200.0, seed=500)))
        assert summarized_chunks(store)[1] == 1
        got, used = scan_count(store, Filter(1), count_grain("1min"), "source")
        assert used == 1
        assert_same_result(got, reference(store, Filter(1), count_grain("1min"), "source"), "1min")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION == 8
    from theia_frames.server.verify import check_store

    assert check_store(path).ok
