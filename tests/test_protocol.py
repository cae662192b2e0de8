"""The protocol core driven without sockets: frames, streams, the send ledger, resuming."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theia_frames.protocol.codec import encode
from theia_frames.protocol.messages import flush_failure, flush_reply, total_message
from theia_frames.event import Event
from theia_frames.exceptions import ConnectionClosed, DecodeError, ProtocolError, ServerError, SubscriberTooSlow, TheiaTimeoutError
from theia_frames.filter import Filter
from theia_frames.protocol import FindState, FrameReader, LiveState, ResumeState, SendLedger
from theia_frames.protocol.wsframes import OP_CLOSE, OP_PONG, MessageTooBig

BASE = 1_700_000_000.0


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


# --------------------------------------------------------------------------- frames


def test_a_message_over_the_bound_is_refused_from_its_header_alone():
    reader = FrameReader("ws://h", max_message=1000, max_fragments=4)
    reader.feed(server_frame(2, b"x" * 1001)[:4])  # the header only: the payload never needs to arrive
    with pytest.raises(MessageTooBig) as info:
        reader.messages()
    assert info.value.code == 1009 and "1000 bytes" in str(info.value)


def test_too_many_fragments_are_refused():
    reader = FrameReader("ws://h", max_message=1000, max_fragments=3)
    reader.feed(server_frame(2, b"a", fin=False) + server_frame(0, b"b", fin=False) + server_frame(0, b"c", fin=False)
                + server_frame(0, b"d"))
    with pytest.raises(MessageTooBig) as info:
        reader.messages()
    assert info.value.code == 1008


def test_ping_is_answered_and_close_is_echoed_once():
    reader = FrameReader("ws://h", max_message=1000, max_fragments=3)
    reader.feed(server_frame(9, b"hi") + server_frame(1, b"ok") + server_frame(8, (1001).to_bytes(2, "big") + b"bye")
                + server_frame(1, b"after the close"))
    assert reader.messages() == ["ok"]
    assert reader.replies == [(OP_PONG, b"hi"), (OP_CLOSE, (1001).to_bytes(2, "big"))]
    assert (reader.close_code, reader.close_reason) == (1001, "bye")
    assert reader.messages() == []


@pytest.mark.parametrize("frame", [bytes([0x82, 0x81, 0, 0, 0, 0, 0]), bytes([0xC2, 0]), bytes([0x83, 0])])
def test_protocol_violations_raise(frame):
    reader = FrameReader("ws://h", max_message=1000, max_fragments=3)
    reader.feed(frame)
    with pytest.raises(ProtocolError):
        reader.messages()


# --------------------------------------------------------------------------- streams


events = st.builds(
    lambda i, dt, tags, content: Event(id=f"e{i}", timestamp=BASE + dt, source="/s", tags=tags, content=content),
    st.integers(0, 10_000),
    st.integers(0, 1000),
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20),
)


@settings(max_examples=60, deadline=None)
@given(
    sent=st.lists(events, max_size=120),
    accumulate=st.sampled_from([1, 7, 64, 10_000]),
    cuts=st.lists(st.integers(0, 200), max_size=6),
    tag=st.sampled_from([None, "a", "b"]),
)
def test_a_find_yields_exactly_the_matching_events_in_order(sent, accumulate, cuts, tag):
    flt = Filter(BASE + 100) if tag is None else Filter(BASE + 100).match_tag(tag)
    state = FindState("ws://h/find", flt, strict=False, batch_size=accumulate)
    wire: list[bytes | str] = ["ok", total_message(len(sent))] + [encode(e) for e in sent]
    decoder = state.decoder(accumulate)
    out = []
    points = sorted({c % (len(wire) + 1) for c in cuts}) + [len(wire)]
    last = 0
    for p in points:
        out += decoder.feed(state.receive(wire[last:p]))
        last = p
    out += decoder.finish()
    got = [(r["id"], r["timestamp"]) for b in out for r in b.to_pylist()]
    assert got == [(e.id, e.timestamp) for e in sent if flt.matches(e)]
    assert state.total == len(sent)
    state.end(1000, "", None)
    assert state.complete and state.ended_by == "close"


def test_message_and_close_meanings():
    state = FindState("ws://h/find", Filter(1), strict=True, batch_size=10, idle_timeout=2.0, timeout=5.0)
    with pytest.raises(ServerError, match="bad filter"):
        state.receive([json.dumps({"error": "bad filter"})])
    with pytest.raises(ConnectionClosed, match="incomplete"):
        state.end(1006, "", None)
    assert not state.complete
    state.silence(negotiated=False)
    assert state.complete and state.ended_by == "idle"
    with pytest.raises(TheiaTimeoutError, match="sent nothing for 5.0 s"):
        FindState("ws://h/find", Filter(1), strict=True, batch_size=10, timeout=5.0).silence(negotiated=True)
    live = LiveState("ws://h/live", Filter(1), strict=False, batch_size=10)
    with pytest.raises(SubscriberTooSlow):
        live.receive(['{"error": "subscriber too slow: 10000 events waiting"}'])
    with pytest.raises(SubscriberTooSlow):
        live.end(1013, "", None)
    assert json.loads(live.filter_message(negotiated=False)) == {"start": 1}


def test_a_bad_message_is_counted_or_raised():
    lenient = FindState("ws://h/find", Filter(1), strict=False, batch_size=10)
    decoder = lenient.decoder(1)
    assert decoder.feed(lenient.receive([b"event: 5 5 0\nnope!"])) == []
    assert lenient.skipped == 1 and len(lenient.errors) == 1
    strict = FindState("ws://h/find", Filter(1), strict=True, batch_size=10)
    with pytest.raises(DecodeError, match="header"):
        strict.decoder(1).feed(strict.receive([b"event: 5 5 0\nnope!"]))


# --------------------------------------------------------------------------- the send ledger


operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 50)),
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("answer"), st.integers(0, 3)),
        st.tuples(st.just("fail"), st.integers(0, 3)),
        st.tuples(st.just("drop"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_the_ledger_never_confirms_what_was_not_stored(ops):
    """A model collector stores every event it receives; the ledger's ``stored``
    is never more than that, and unconfirmed events are reported when lost."""
    ledger = SendLedger("ws://h/event")
    on_connection = 0  # events the model collector received on the open connection
    stored_before = 0  # events stored on connections already closed
    flushes: list[tuple[int, int]] = []  # (token, events received when it was asked)
    reported = 0
    for op, arg in ops:
        if op == "send":
            ledger.sent(arg)
            on_connection += arg
        elif op == "flush":
            token, text = ledger.flush_request()
            assert json.loads(text) == {"flush": token}
            flushes.append((token, on_connection))
        elif op in ("answer", "fail") and flushes:
            token, received = flushes.pop(min(arg, len(flushes) - 1))
            if op == "answer":
                assert ledger.absorb(flush_reply(token, received, 0)) == (token, True)
                assert ledger.answered >= token
            else:
                assert ledger.absorb(json.dumps({"error": flush_failure(token, "disk full")})) == (token, False)
                assert isinstance(ledger.refusals(), ServerError)
        elif op == "drop":
            before = ledger.unconfirmed
            ledger.dropped()
            error = ledger.doubt_error()
            assert (error is None) == (before == 0)
            reported += before
            stored_before += on_connection
            on_connection, flushes = 0, []
        assert 0 <= ledger.unconfirmed <= on_connection
        assert ledger.stored <= stored_before + on_connection
    assert reported <= sum(arg for op, arg in ops if op == "send")


# --------------------------------------------------------------------------- resuming


@settings(max_examples=60, deadline=None)
@given(
    delivered=st.lists(st.integers(0, 200), min_size=1, max_size=60, unique=True),
    missed=st.lists(st.integers(0, 260), max_size=60, unique=True),
)
def test_a_resume_yields_each_event_once(delivered, missed):
    import pyarrow as pa

    from theia_frames.protocol.arrow import event_schema

    def batch(ids):
        return pa.RecordBatch.from_pydict(
            {"id": [f"e{i}" for i in ids], "timestamp": [BASE + i / 10 for i in ids], "source": ["/s"] * len(ids),
             "tags": [""] * len(ids), "content": ["c"] * len(ids)},
            schema=event_schema(),
        )

    state = ResumeState(margin=30.0, subscribed_at=BASE)
    seen: list[str] = []
    for i in sorted(delivered):
        seen += state.fresh(batch([i]), now=0.0).column("id").to_pylist()
    resume = state.resume_filter(Filter(1))
    assert resume is not None and resume.start == max(BASE + max(delivered) / 10 - 30.0, 1)
    # the resume find returns what it stored from its start: some delivered events again, some missed ones
    found = sorted(i for i in set(delivered) | set(missed) if BASE + i / 10 >= resume.start)
    seen += state.fresh(batch(found), check=True, now=0.0).column("id").to_pylist()
    assert len(seen) == len(set(seen))
    assert set(seen) == {f"e{i}" for i in set(delivered) | set(found)}


def test_a_resume_of_events_before_1970_starts_before_1970():
    import pyarrow as pa

    from theia_frames.protocol.arrow import event_schema

    state = ResumeState(margin=30.0, subscribed_at=1_700_000_000.0)
    old = pa.RecordBatch.from_pydict(
        {"id": ["a"], "timestamp": [-1_000.0], "source": ["/s"], "tags": [""], "content": ["c"]}, schema=event_schema()
    )
    state.fresh(old, now=0.0)
    resume = state.resume_filter(Filter("1950-01-01"))
    assert resume is not None and resume.start == -1_030.0
