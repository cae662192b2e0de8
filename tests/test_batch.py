from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from theia_frames.protocol.arrow import (
    batch_to_columns,
    batch_to_ipc,
    empty_batch,
    event_schema,
    events_to_batch,
    ipc_to_batches,
    is_arrow_message,
    iter_batch_events,
    validate_events,
)
from theia_frames.protocol.codec import encode
from theia_frames.event import Event
from theia_frames.exceptions import DecodeError


def sample(n=5):
    return [Event(id=f"id{i}", timestamp=100.0 + i, source=f"/s/{i % 2}", tags=["a", "b"][: i % 3],
                  content=f"{i}.5C ü") for i in range(n)]


def test_ipc_round_trip():
    events = sample()
    msg = batch_to_ipc(events_to_batch(events))
    assert is_arrow_message(msg)
    assert not is_arrow_message(encode(events[0]))
    assert not is_arrow_message("ok")
    (batch,) = ipc_to_batches(msg)
    assert list(iter_batch_events(batch)) == events
    assert batch_to_columns(batch).tags == ["", "a", "a,b", "", "a"]


def test_empty_batch_has_the_schema():
    b = empty_batch()
    assert b.num_rows == 0 and b.schema.equals(event_schema())
    assert ipc_to_batches(batch_to_ipc(b))[0].num_rows == 0


def test_garbage_and_wrong_schema_are_decode_errors():
    with pytest.raises(DecodeError, match="invalid Arrow batch"):
        ipc_to_batches(b"\xff\xff\xff\xffgarbage")
    other = pa.RecordBatch.from_pydict({"x": [1, 2]})
    with pytest.raises(DecodeError, match="unexpected schema"):
        ipc_to_batches(batch_to_ipc(other))
    nulls = pa.RecordBatch.from_arrays(
        [pa.array([None], pa.string()), pa.array([1.0]), pa.array(["s"]).dictionary_encode(), pa.array([[]], pa.list_(pa.string())), pa.array(["c"])],
        schema=event_schema(),
    )
    with pytest.raises(DecodeError, match="missing values in column 'id'"):
        ipc_to_batches(batch_to_ipc(nulls))
    null_tag = nulls.set_column(0, "id", pa.array(["a"])).set_column(3, "tags", pa.array([["x", None]]))
    with pytest.raises(DecodeError, match="missing values in column 'tags'"):
        ipc_to_batches(batch_to_ipc(null_tag))
    text_tags = pa.RecordBatch.from_pydict({"id": ["a"], "timestamp": [1.0], "source": ["s"], "tags": ["x"], "content": [""]})
    with pytest.raises(DecodeError, match="unexpected schema"):
        ipc_to_batches(batch_to_ipc(text_tags))  # the extension's first version


# --------------------------------------------------------------------------- what the wire format can carry

_WIRE_TEXT = st.one_of(st.none(), st.text(st.sampled_from(list("ab,é\n\r")), max_size=4))


@given(
    rows=st.lists(
        st.tuples(
            _WIRE_TEXT,
            st.sampled_from([1.0, 2.5, math.nan, math.inf, -math.inf, None]),
            _WIRE_TEXT,
            st.one_of(st.none(), st.lists(_WIRE_TEXT, max_size=3)),
            _WIRE_TEXT,
        ),
        max_size=10,
    ),
    cut=st.integers(0, 3),
    large=st.booleans(),
)
def test_uncarried_rows_is_the_row_by_row_rule(rows, cut, large):
    import pyarrow as pa

    from theia_frames.protocol.arrow import uncarried_rows

    text = pa.large_string() if large else pa.string()
    columns = list(zip(*rows)) if rows else [()] * 5
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(list(columns[0]), text),
            pa.array(list(columns[1]), pa.float64()),
            pa.array(list(columns[2]), text).dictionary_encode(),
            pa.array(list(columns[3]), pa.list_(text)),
            pa.array(list(columns[4]), text),
        ],
        names=["id", "timestamp", "source", "tags", "content"],
    ).slice(min(cut, len(rows)))

    def bad(i, ts, source, tags, content):
        if None in (i, ts, source, tags, content) or None in tags or not math.isfinite(ts):
            return True
        return any("\n" in v or "\r" in v for v in (i, source, *tags)) or any("," in t for t in tags)

    expected = [bad(*row) for row in rows[min(cut, len(rows)):]]
    mask = uncarried_rows(batch)
    assert (mask.tolist() if mask is not None else [False] * len(expected)) == expected
    assert (mask is None) == (not any(expected))


def _strings(offsets: list[int], data: bytes, length: int | None = None) -> pa.Array:
    n = len(offsets) - 1 if length is None else length
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(np.array(offsets, np.int32).tobytes()), pa.py_buffer(data)])


@pytest.mark.parametrize(
    "column",
    [
        _strings([0, 5, 2, 6], b"abcdef"),  # offsets out of order, the last inside the data
        _strings([-1], b"", 0),  # no values, a negative offset
        _strings([0, 1, 3], b"a\xc3(\xa9"),  # a value that is not UTF-8 (each byte run alone is not)
        _strings([0, 1, 2], b"\xc3\xa9"),  # valid UTF-8 as a whole, not value by value
    ],
    ids=["out of order", "negative, no rows", "not UTF-8", "a character split between values"],
)
@pytest.mark.parametrize("where", ["id", "source", "tags"])
def test_validate_events_refuses_what_full_validation_refuses(column, where):
    n = len(column)
    text = pa.array(["a"] * n, pa.string())
    if where == "id":
        arrays = [column, text.dictionary_encode(), pa.array([["a"]] * n)]
    elif where == "source":  # the text is a dictionary's
        arrays = [text, pa.DictionaryArray.from_arrays(pa.array(range(n), pa.int32()), column), pa.array([["a"]] * n)]
    else:  # the text is a list's items
        lists = pa.ListArray.from_arrays(pa.array(range(n + 1), pa.int32()), column)
        arrays = [text, text.dictionary_encode(), lists]
    b = pa.RecordBatch.from_arrays(
        [arrays[0], pa.array([1.0] * n), arrays[1], arrays[2], text], schema=event_schema()
    )
    with pytest.raises(pa.ArrowInvalid):
        b.validate(full=True)
    b.validate()  # structurally sound: only the values are wrong
    with pytest.raises(pa.ArrowInvalid):
        validate_events(b)
    with pytest.raises(DecodeError):
        ipc_to_batches(batch_to_ipc(b))


def test_dictionary_indices_outside_the_dictionary_and_list_offsets_out_of_order_are_refused():
    text = pa.array(["a", "b"])
    lists = pa.array([["x"], ["y"]])
    outside = pa.DictionaryArray.from_arrays(pa.array([0, 5], pa.int32()), pa.array(["s"]), safe=False)
    negative = pa.DictionaryArray.from_arrays(pa.array([0, -1], pa.int32()), pa.array(["s"]), safe=False)
    backwards = pa.ListArray.from_buffers(
        pa.list_(pa.string()), 2, [None, pa.py_buffer(np.array([0, 2, 1], np.int32).tobytes())], children=[pa.array(["x", "y"])]
    )
    for source, tags, why in ((outside, lists, "dictionary"), (negative, lists, "dictionary"), (text.dictionary_encode(), backwards, "list")):
        b = pa.RecordBatch.from_arrays([text, pa.array([1.0, 2.0]), source, tags, text], schema=event_schema())
        with pytest.raises(pa.ArrowInvalid, match=why):
            validate_events(b)
        with pytest.raises(DecodeError):
            ipc_to_batches(batch_to_ipc(b))


def test_validate_events_takes_a_sliced_batch():
    b = events_to_batch([Event(id=f"é{i}", timestamp=float(i), tags=["a", "b"]) for i in range(5)])
    validate_events(b.slice(2, 2))
    validate_events(b.slice(5))
