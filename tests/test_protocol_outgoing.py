"""protocol.outgoing: what the clients send, checked before it goes (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sample import BASE, make_events
from theia_frames.event import Event
from theia_frames.exceptions import InvalidEventError
from theia_frames.protocol.arrow import event_schema, events_to_batch
from theia_frames.protocol.codec import encode
from theia_frames.protocol.outgoing import checked_event_batch as _checked_event_batch





def test_checked_event_batch_keeps_events_exactly():
    events = make_events(5) + [Event(id="ü", timestamp=BASE, source="/ü:1", tags=[], content="a\nb")]
    batch = _checked_event_batch(events)
    assert batch.schema.equals(event_schema())
    assert batch.equals(events_to_batch(events))


@pytest.mark.parametrize(
    "bad",
    [
        Event(id="a\nb"),
        Event(source="x\r"),
        Event(tags=["a,b"]),
        Event(tags=["a\n"]),
        Event(timestamp=float("nan")),
        Event(timestamp="soon"),
        Event(content="\ud800"),
        Event(tags=[1]),
    ],
)
def test_checked_event_batch_refuses_what_encode_refuses(bad):
    with pytest.raises(InvalidEventError) as from_encode:
        encode(bad)
    with pytest.raises(InvalidEventError) as from_batch:
        _checked_event_batch(make_events(3) + [bad])
    assert str(from_batch.value) == str(from_encode.value)


def test_checked_event_batch_refuses_non_events():
    with pytest.raises(InvalidEventError, match="expects Events"):
        _checked_event_batch([{"id": "x"}])


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 3000), min_size=1, max_size=300),
    limit=st.integers(2_000, 40_000),
)
def test_arrow_data_is_cut_into_pieces_as_full_as_their_share_allows(lengths, limit):
    """Every row once, in order; each piece within the target share of the limit (or one
    row), and taking the next row would pass it: cut where a row-by-row count would."""
    import pyarrow as pa

    from theia_frames.protocol import outgoing

    table = pa.Table.from_batches([events_to_batch(
        [Event(id=f"e{i}", timestamp=BASE + i, source=f"/s{i % 3}", tags=["t"] * (i % 4), content="x" * n)
         for i, n in enumerate(lengths)])])
    whole = outgoing.message_bytes(table.to_batches()[0]).tolist()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outgoing, "SEND_BATCH_BYTES", limit)
        pieces = list(outgoing.arrow_pieces(table, len(lengths)))
    assert pa.Table.from_batches(pieces).column("id").to_pylist() == table.column("id").to_pylist()
    if len(pieces) == 1:  # small enough to go whole
        return
    total = sum(whole)
    target = min(limit, -(-total // -(-total // limit)))
    at = 0
    for piece in pieces:
        sizes = whole[at : at + piece.num_rows]
        assert sum(sizes) <= target or piece.num_rows == 1
        if at + piece.num_rows < len(whole):
            assert sum(sizes) + whole[at + piece.num_rows] > target
        at += piece.num_rows
