"""The store's index of identity keys: bounded, held for the newest chunks, rebuilt from the
chunks after a restart, and never what decides a duplicate (a chunk whose keys are not held
is read)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theia_frames import Event
from theia_frames.exceptions import UsageError
from theia_frames.protocol.arrow import events_to_batch
from theia_frames.server.keyindex import KEY_INDEX_BYTES, ChunkKeys, KeyIndex
from theia_frames.server.store import EventStore

T0 = 1_700_000_000.0


def ev(i: int | str, ts: float, content: str = "c") -> Event:
    return Event(id=str(i), timestamp=ts, source="/s", tags=["t"], content=content)


def keys(n: int, start: float = 0.0) -> ChunkKeys:
    return ChunkKeys.of(start + np.arange(n, dtype=np.float64), pa.array([f"id{i}" for i in range(n)]))


def outcome(store: EventStore, events: list[Event]) -> tuple[list[str], list[bool], list[bool]]:
    done = store.store_batch(events_to_batch(events))
    return done.new.column(0).to_pylist(), done.repeated.tolist(), done.conflicting.tolist()


def test_the_index_holds_at_most_its_limit_and_lets_the_oldest_chunks_go():
    one = keys(100)
    index = KeyIndex(limit=3 * one.nbytes)
    for seq in (5, 1, 9, 7):
        index.put(seq, keys(100))
    assert sorted(index.seqs()) == [5, 7, 9]
    assert index.nbytes == 3 * one.nbytes <= index.limit
    index.drop([7, 42])
    assert sorted(index.seqs()) == [5, 9] and index.nbytes == 2 * one.nbytes
    index.put(3, keys(100))
    index.put(1, keys(100))  # older than every chunk held: let go first
    assert sorted(index.seqs()) == [3, 5, 9]
    index.put(11, keys(10_000))  # larger than the limit by itself: not held, nor anything older
    assert index.seqs() == [] and index.nbytes == 0
    index.put(2, keys(3))
    index.clear()
    assert len(index) == 0 and index.nbytes == 0
    assert KeyIndex().limit == KEY_INDEX_BYTES == 32 * 1024 * 1024
    with pytest.raises(UsageError, match="limit must be a positive whole number"):
        KeyIndex(0)


def test_chunk_keys_are_the_identity_microseconds_and_keys():
    got = ChunkKeys.of(np.array([1.0, 1.0000004, 2.0]), pa.array(["a", "a", "b"]))
    assert got.micros.tolist() == [1_000_000, 1_000_000, 2_000_000]
    keys = got.keys(np.arange(3))
    assert keys[0] == keys[1] != keys[2]


def test_a_commit_holds_its_chunks_keys_and_a_merge_replaces_them():
    with EventStore(":memory:") as store:
        for i in range(20):
            store.add_many([ev(i, T0 + i)])
        live = {c.seq for c in store.chunks()}
        assert set(store.key_index.seqs()) == live  # merged-away chunks are forgotten
        held = {seq: len(store.key_index.get(seq).micros) for seq in live}
        assert held == {c.seq: c.rows for c in store.chunks()}


def test_the_store_keeps_its_index_within_its_bound():
    with EventStore(":memory:", key_index_bytes=4_000) as store:
        for i in range(40):
            store.add_batch(events_to_batch([ev(f"{i}-{k}", T0 + i + k / 100) for k in range(20)]), compact=False)
        assert store.key_index.nbytes <= 4_000
        assert 0 < len(store.key_index) < len(store.chunks())
        assert max(store.key_index.seqs()) == max(c.seq for c in store.chunks())  # the newest held


def test_repeats_and_copies_are_found_in_chunks_whose_keys_are_not_held():
    with EventStore(":memory:", key_index_bytes=1) as store:  # no chunk's keys fit
        store.add_many([ev("a", T0, "first"), ev("b", T0 + 1)])
        assert len(store.key_index) == 0
        assert outcome(store, [ev("a", T0 + 1e-7, "first"), ev("b", T0 + 1, "other"), ev("c", T0)]) == (
            ["c"], [True, False, False], [False, True, False])
        assert store.count() == 3


def test_keys_evicted_or_forgotten_between_writes_change_nothing():
    with EventStore(":memory:") as store:
        store.add_many([ev("a", T0, "first"), ev("b", T0 + 1)])
        store.key_index.clear()
        assert outcome(store, [ev("a", T0, "first"), ev("b", T0 + 1, "other")]) == ([], [True, False], [False, True])
        assert len(store.key_index) == 1  # the chunk read is held from now on
        assert outcome(store, [ev("a", T0, "x"), ev("b", T0 + 1, "c")]) == ([], [False, True], [True, False])


def test_after_a_restart_the_keys_are_read_from_the_chunks(tmp_path):
    path = tmp_path / "events.db"
    with EventStore(path) as store:
        store.add_many([ev(i, T0 + i) for i in range(10)])
    with EventStore(path) as store:
        assert len(store.key_index) == 0
        assert outcome(store, [ev(3, T0 + 3), ev(4, T0 + 4, "other"), ev(10, T0 + 10)]) == (
            ["10"], [True, False, False], [False, True, False])
        assert {c.seq for c in store.chunks()} == set(store.key_index.seqs())


_EVENT = st.tuples(
    st.sampled_from(["a", "b", "c", "d"]),
    st.sampled_from([0.0, 0.3e-6, 1e-6, 1.0, 2.5]),
    st.sampled_from(["x", "y"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_EVENT, min_size=1, max_size=6), min_size=1, max_size=6), st.integers(0, 5))
def test_a_store_decides_as_a_store_holding_no_keys(batches, forget_at):
    """Whatever the index holds, every write ends as it ends when no keys are held at all."""
    with EventStore(":memory:") as indexed, EventStore(":memory:", key_index_bytes=1) as plain:
        for at, batch in enumerate(batches):
            if at == forget_at:
                indexed.key_index.clear()
            events = [ev(i, T0 + dt, content) for i, dt, content in batch]
            assert outcome(indexed, events) == outcome(plain, events)
        assert indexed.count() == plain.count()
