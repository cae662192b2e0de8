"""protocol.outgoing: what the clients send, checked before it goes (no sockets)."""

from __future__ import annotations

import pytest

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
