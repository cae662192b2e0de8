"""One identity rule, a truthful confirmation: the first stored copy of a (timestamp, id) wins,
the timestamp taken at the microsecond on both dialects; an exact repeat is acknowledged as
already stored and counted apart, a copy with other content is refused and reported; only
stored events reach /live."""

from __future__ import annotations

import json

import pytest
import websocket

from theia_frames import Client, Event, Filter
from theia_frames.exceptions import ServerError
from theia_frames.protocol.arrow import SUBPROTOCOL, events_to_batch
from theia_frames.protocol.codec import encode
from theia_frames.protocol.messages import flush_request, parse_flush_reply
from waiting import poll_until

T0 = 1_700_000_000.0


def _ev(i: str, t: float = T0, content: str = "first", **kw) -> Event:
    return Event(id=i, timestamp=t, source=kw.get("source", "s"), tags=kw.get("tags", ["a"]), content=content)


def _stored(collector) -> list[tuple]:
    return [(e.id, e.timestamp, e.content) for cols in collector.store.query() for e in cols.events()]


def _live(collector) -> websocket.WebSocket:
    ws = websocket.create_connection(collector.url + "/live", timeout=10)
    ws.send(json.dumps({"start": 1}))
    assert ws.recv() == "ok"
    return ws


def test_a_copy_with_other_content_is_refused_and_a_repeat_counted_apart(collector):
    with Client(collector.url) as client:
        first = client.send_many([_ev("x"), _ev("y")], wait=True)
        assert (first, first.stored, first.duplicates) == (2, 2, 0)
        again = client.send_many([_ev("x")], wait=True)  # resent as it is: acknowledged, not stored again
        assert (again, again.stored, again.duplicates) == (1, 0, 1)
        with pytest.raises(ServerError, match=r"1 event\(s\) not stored: an event of the same \(timestamp, id\) is stored with other content.*'x'"):
            client.send_many([_ev("x", content="a correction")], wait=True)
        assert client.ledger.stored == 2 and client.ledger.duplicates == 1
    assert _stored(collector) == [("x", T0, "first"), ("y", T0, "first")]  # the first wins


@pytest.mark.parametrize("arrow", [True, False], ids=["one-arrow-message", "a-message-per-event"])
def test_in_one_batch_the_first_wins_and_stored_counts_only_the_stored(collector, arrow):
    live = _live(collector)
    with Client(collector.url) as client:
        batch = [_ev("a"), _ev("a"), _ev("b"), _ev("a", content="other"), _ev("b", tags=["z"])]
        expected = r"2 event\(s\) not stored: .*first: id 'a'" if arrow else r"2 messages .*rejected.* not stored: .*'a'"
        with pytest.raises(ServerError, match=expected):
            client.send_many(events_to_batch(batch) if arrow else batch, wait=True)
        assert client.ledger.stored == 2 and client.ledger.duplicates == 1
        client.send_many([_ev("c")], wait=True)
    pushed = [live.recv() for _ in range(3)]
    assert pushed == [encode(_ev("a")), encode(_ev("b")), encode(_ev("c"))]  # only the stored reach /live
    live.close()
    assert _stored(collector) == [("a", T0, "first"), ("b", T0, "first"), ("c", T0, "first")]


def test_the_go_dialects_six_decimals_name_the_event_sent_with_its_full_float(collector):
    """Timestamps compared at the microsecond: the Go dialect's 1700000000.123457 and the Arrow
    dialect's 1700000000.1234567 are one event; a copy with other content is refused on both."""
    t = T0 + 0.1234567
    with Client(collector.url) as client:
        client.send_many([_ev("g", t)], wait=True)
    ws = websocket.create_connection(collector.url + "/event", timeout=10, header=[f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"])
    for content in ("first", "changed"):
        header = b"id:g\ntimestamp:1700000000.123457\nsource:s\ntags:a\n"
        ws.send_binary(b"event:%d %d %d\n%s%s" % (len(header) + len(content), len(header), len(content), header, content.encode()))
    ws.send(flush_request(1))
    replies = [ws.recv() for _ in range(2)]
    ws.close()
    assert any("not stored: an event of the same (timestamp, id) is stored with other content" in r for r in replies)
    (reply,) = [parse_flush_reply(r) for r in replies if parse_flush_reply(r) is not None]
    assert reply == (1, 0, 1)  # nothing stored, one acknowledged as already stored
    assert _stored(collector) == [("g", t, "first")]


def test_the_plain_dialect_stores_the_first_copy_only(collector):
    live = _live(collector)
    ws = websocket.create_connection(collector.url + "/event", timeout=10)
    ws.send_binary(encode(_ev("p")))
    ws.send_binary(encode(_ev("p", content="other")))
    ws.send_binary(encode(_ev("q")))
    assert "stored with other content" in json.loads(ws.recv())["error"]
    ws.close()
    assert poll_until(lambda: collector.store.count() == 2)
    assert [live.recv() for _ in range(2)] == [encode(_ev("p")), encode(_ev("q"))]
    live.close()
    with Client(collector.url, batch=False) as client:
        assert [(e.id, e.content) for e in client.find(Filter(1))] == [("p", "first"), ("q", "first")]
