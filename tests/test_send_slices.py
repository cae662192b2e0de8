"""The send path's checks and sizes of a batch sliced from a larger table see only the
slice's own rows: the same answers as for a copy of the slice, whatever lies around it."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theia_frames.frames.events_table import to_event_table
from theia_frames.protocol.arrow import decoded_event_sizes, event_schema, uncarried_rows

TAG = st.sampled_from(["x", "yz", "", "a,b", "c\n", "d\r", "long-tag-" * 3])


def table_of(tags: list[list[str]]) -> pa.Table:
    n = len(tags)
    return pa.table(
        {
            "id": [f"e{i}" for i in range(n)],
            "timestamp": [1.0 + i for i in range(n)],
            "source": pa.array([f"s{i % 3}" for i in range(n)]).dictionary_encode(),
            "tags": tags,
            "content": ["c" * (i % 5) for i in range(n)],
        },
        schema=event_schema(),
    )


def copied(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(batch.to_pylist(), schema=batch.schema)


@settings(max_examples=150, deadline=None)
@given(tags=st.lists(st.lists(TAG, max_size=3), min_size=1, max_size=30), data=st.data())
def test_a_slice_is_checked_and_sized_as_its_copy(tags, data):
    batch = table_of(tags).combine_chunks().to_batches()[0]
    start = data.draw(st.integers(0, len(tags) - 1))
    length = data.draw(st.integers(1, len(tags) - start))
    piece = batch.slice(start, length)
    mine, theirs = uncarried_rows(piece), uncarried_rows(copied(piece))
    assert (mine is None) == (theirs is None)
    if mine is not None:
        assert mine.tolist() == theirs.tolist()
    assert decoded_event_sizes(piece).tolist() == decoded_event_sizes(copied(piece)).tolist()


def test_bad_tags_around_a_slice_do_not_mark_it():
    tags = [["a\n"]] * 3 + [["ok"], [], ["fine", "too"]] + [["b,c"]] * 3
    batch = table_of(tags).combine_chunks().to_batches()[0]
    assert uncarried_rows(batch.slice(3, 3)) is None
    assert uncarried_rows(batch.slice(2, 3)).tolist() == [True, False, False]
    assert uncarried_rows(batch.slice(5, 2)).tolist() == [False, True]


@pytest.mark.parametrize(
    "text, expected",
    [
        (["web,prod", "db,prod,alarm", ""], [["web", "prod"], ["db", "prod", "alarm"], []]),
        ([" web , prod", "db,", ",x"], [["web", "prod"], ["db"], ["x"]]),
        (["a\t,b", "caf\u00e9 , b"], [["a", "b"], ["caf\u00e9", "b"]]),
        ([None, "a"], [[], ["a"]]),
    ],
)
def test_comma_tags_of_a_table_read_the_same_plain_or_spaced(text, expected):
    table = pa.table({"timestamp": [1.0 + i for i in range(len(text))], "tags": pa.array(text, pa.string())})
    assert to_event_table(table).column("tags").to_pylist() == expected
