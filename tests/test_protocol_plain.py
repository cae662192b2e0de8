"""protocol.plain: decoding many plain messages at once equals decoding each (no sockets)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sample import BASE, make_events
from theia_frames.event import Event
from theia_frames.exceptions import DecodeError
from theia_frames.protocol import plain
from theia_frames.protocol.arrow import event_schema, iter_batch_events
from theia_frames.protocol.codec import encode





def go_dialect(e: Event) -> bytes:
    header = f"id:{e.id}\ntimestamp:{e.timestamp:.6f}\nsource:{e.source}\n"
    if e.tags:
        header += f"tags:{','.join(e.tags)}\n"
    h, c = header.encode(), e.content.encode()
    return b"event:%d %d %d\n%s%s" % (len(h) + len(c), len(h), len(c), h, c)


line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)
tag_text = st.text(st.characters(blacklist_characters="\r\n,", blacklist_categories=("Cs",)), min_size=1, max_size=8)
events_strategy = st.builds(
    Event,
    id=line_text,
    timestamp=st.one_of(
        st.floats(min_value=0, max_value=4e9, allow_nan=False),
        st.floats(min_value=1.5e9, max_value=1.9e9, allow_nan=False),
    ),
    source=line_text,
    tags=st.lists(tag_text, max_size=3),
    content=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
)


def reference(messages):
    """What decoding each message on its own gives: events, or None for a DecodeError."""
    from theia_frames.protocol.codec import decode_stream

    out = []
    for m in messages:
        try:
            if not m.strip(b"\r\n"):
                raise DecodeError("an empty message is not an event")
            out.append(decode_stream(m))
        except DecodeError:
            out.append(None)
    return out


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.one_of(
            events_strategy.map(encode),
            events_strategy.map(go_dialect),
            st.sampled_from([b"garbage", b"event: 1 2 3\n", b"\xff\xfe not utf-8", encode(Event(id="x")) + b"junk"]),
            st.binary(max_size=60),
        ),
        min_size=0,
        max_size=150,
    )
)
def test_bulk_decoding_equals_decoding_each_message(messages):
    from theia_frames.protocol.plain import decode_plain as _decode_plain

    # around enough well-formed messages that the bulk decoder is used
    usual = [encode(e) for e in make_events(64)]
    messages = usual[:32] + messages + usual[32:]
    errors = []
    batch = _decode_plain(messages, errors.append)
    expected = reference(messages)
    assert len(errors) == sum(1 for r in expected if r is None)
    want = [e for r in expected if r for e in r]
    from theia_frames.protocol.arrow import iter_batch_events as batch_events

    got = list(batch_events(batch))
    assert got == want
    assert batch.schema.equals(event_schema())


def test_bulk_decoding_is_used_for_many_messages(monkeypatch):
    calls = []
    real = plain.slow_decode
    monkeypatch.setattr(plain, "slow_decode", lambda m, bad: calls.append(len(m)) or real(m, bad))
    events = make_events(1000)
    batch = plain.decode_plain([encode(e) for e in events] + [b"bad"], lambda exc: None)
    assert batch.num_rows == 1000 and calls == [1]
    assert list(iter_batch_events(batch)) == events
