"""A chunk whose summary shows that none of its events can match a filter of sources or tags
(none of its sources or of its tags is one the filter's patterns match) is not read, by a
find or a count: the answers are those of every event matched one by one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theia_frames.event import Event
from theia_frames.filter import EventFilter
from theia_frames.protocol.arrow import events_to_batch
from theia_frames.server.chunks import FINAL_ROWS
from theia_frames.server.store import EventStore

T0 = 1_700_000_000.0
CHUNKS = 6


def _chunk(k: int) -> list[Event]:
    """A chunk of the final tier: sources /s{k}a and /s{k}b, tags t{k} and common; the last
    chunk has a few ``incident`` events, one untagged."""
    rng = np.random.default_rng(k)
    times = np.sort(T0 + 100 * k + rng.random(FINAL_ROWS + 50) * 90)
    events = [
        Event(f"{k}-{i}", float(t), f"/s{k}{'ab'[i % 2]}", [f"t{k}", "common"] if i % 5 else [], f"line {i}")
        for i, t in enumerate(times)
    ]
    if k == CHUNKS - 1:
        for i in range(0, 40, 4):
            e = events[i]
            events[i] = Event(e.id, e.timestamp, e.source, [*e.tags, "incident"], e.content)
    return events


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Event]]:
    path = tmp_path_factory.mktemp("skip") / "events.db"
    every: list[Event] = []
    with EventStore(path) as store:
        for k in range(CHUNKS):
            events = _chunk(k)
            store.add_batch(events_to_batch(events))
            every += events
        # a small chunk (no summary: always read) holding an incident too
        late = [Event(f"late-{i}", T0 + 10_000 + i, "/late", ["incident"] if i == 3 else [], "x") for i in range(10)]
        store.add_batch(events_to_batch(late), compact=False)
        every += late
    return path, every


def _reads(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The chunks read from now on (whole or by column)."""
    read: list[int] = []
    blob, columns = EventStore._blob, EventStore._columns

    def counted_blob(db, seq, *a, **k):  # type: ignore[no-untyped-def]
        read.append(seq)
        return blob(db, seq, *a, **k)

    def counted_columns(db, seq, *a, **k):  # type: ignore[no-untyped-def]
        read.append(seq)
        return columns(db, seq, *a, **k)

    monkeypatch.setattr(EventStore, "_blob", staticmethod(counted_blob))
    monkeypatch.setattr(EventStore, "_columns", staticmethod(counted_columns))
    return read


def _ids(store: EventStore, flt: EventFilter) -> list[str]:
    return [i for batch in store.query_batches(flt) for i in batch.column("id").to_pylist()]


def _counted(store: EventStore, flt: EventFilter) -> int:
    return sum(batch.num_rows for batch in store.scan(flt, ["timestamp"]))


def _expected(events: list[Event], flt: EventFilter) -> list[str]:
    return [e.id for e in sorted(events, key=lambda e: e.timestamp) if flt.matches(e)]


def test_a_rare_tag_reads_only_the_chunks_that_hold_it(stored: tuple[Path, list[Event]], monkeypatch: pytest.MonkeyPatch) -> None:
    path, events = stored
    with EventStore(path) as store:
        chunks = store.chunks()
        assert len(chunks) == CHUNKS + 1
        read = _reads(store, monkeypatch)
        flt = EventFilter(start=1, tags=("incident",))
        assert _ids(store, flt) == _expected(events, flt)
        assert len(set(read)) == 2  # the last large chunk and the small one without a summary
        read.clear()
        assert _counted(store, flt) == len(_expected(events, flt)) == 11
        assert len(set(read)) == 2
        read.clear()
        # a source pattern: one chunk's two sources
        flt = EventFilter(start=1, source="/s2[ab]")
        assert _ids(store, flt) == _expected(events, flt)
        assert len(set(read)) == 2
        read.clear()
        # a tag every chunk holds: every chunk read
        assert _counted(store, EventFilter(start=1, tags=("common",))) == len(_expected(events, EventFilter(tags=("common",))))
        assert len(set(read)) == CHUNKS + 1


names = st.sampled_from(["", ".*", "t1", "t[0-2]", "t.", "common", "incident", "/s1a", "/s[13]b", "/s.*", "/late", "nope", "T1"])


@settings(max_examples=60, deadline=None)
@given(tags=st.lists(names, max_size=2), source=st.one_of(st.none(), names), engine=st.sampled_from(["re", "re2"]))
def test_skipping_by_summary_never_loses_an_event(stored: tuple[Path, list[Event]], tags: list[str], source: str | None, engine: str) -> None:
    path, events = stored
    flt = EventFilter(start=1, tags=tuple(tags), source=source, engine=engine)  # type: ignore[arg-type]
    expected = _expected(events, flt)
    with EventStore(path) as store:
        assert _ids(store, flt) == expected
        assert _counted(store, flt) == len(expected)
