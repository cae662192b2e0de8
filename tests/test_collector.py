"""The embedded collector against plain WebSocket clients (websocket-client), real sockets.

Nothing here uses the project's Client: the collector is checked against the
wire protocol itself, as the Go client and the upstream Python client speak it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import psutil
import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theia_frames import Event, EventFilter
from theia_frames.protocol.arrow import ARROW_MARKER, SUBPROTOCOL, batch_to_ipc, events_to_batch, ipc_to_batches, iter_batch_events
from theia_frames.protocol.codec import EventColumns, decode, encode
from theia_frames.protocol.messages import total_of
from theia_frames.server.collector import Collector, serve
from theia_frames.exceptions import DecodeError, InvalidEventError, TransportError, UsageError
from theia_frames.server.store import EventStore
from theia_frames.server.chunks import identity_micros
from waiting import wait_until

OFFER = [f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"]
T0 = 1_700_000_000.0
CLOSE = websocket.ABNF.OPCODE_CLOSE


# --------------------------------------------------------------------------- helpers

_request: Any = None


@pytest.fixture(autouse=True)
def _close_clients(request: pytest.FixtureRequest) -> Any:
    # connect() closes its sockets when the test ends, before the collector stops.
    global _request
    _request = request
    yield
    _request = None


def connect(collector: Collector, path: str, *, batched: bool = False, header: list[str] | None = None) -> websocket.WebSocket:
    ws = websocket.create_connection(
        collector.url + path, timeout=10, header=(OFFER if batched else []) + (header or [])
    )
    if _request is not None:
        _request.node.addfinalizer(lambda: (ws.close(), ws.shutdown()))
    return ws


def negotiated(ws: websocket.WebSocket) -> str | None:
    return (ws.getheaders() or {}).get("sec-websocket-protocol")


def read_to_close(ws: websocket.WebSocket, into: list[bytes | str] | None = None) -> tuple[list[bytes | str], int | None]:
    """Every message until the server closes (appended to ``into`` as they come), and the close code."""
    messages: list[bytes | str] = [] if into is None else into
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            ws.shutdown()  # websocket-client answered the close; it leaves the socket open
            return messages, code
        if opcode == websocket.ABNF.OPCODE_TEXT:
            messages.append(data.decode())
        elif opcode == websocket.ABNF.OPCODE_BINARY:
            messages.append(data)


def find(collector: Collector, flt: dict[str, Any] | str, *, batched: bool = False) -> tuple[list[bytes | str], int | None]:
    """``ok`` checked, then the messages of a /find and its close code (the
    extension's announced total, if any, left out)."""
    ws = connect(collector, "/find", batched=batched)
    ws.send(flt if isinstance(flt, str) else json.dumps(flt))
    assert ws.recv() == "ok"
    messages, code = read_to_close(ws)
    if batched and messages and isinstance(messages[0], str) and total_of(messages[0]) is not None:
        messages = messages[1:]
    return messages, code


def find_events(collector: Collector, flt: dict[str, Any], *, batched: bool = False) -> list[Event]:
    messages, code = find(collector, flt, batched=batched)
    assert code == 1000
    events: list[Event] = []
    for m in messages:
        assert isinstance(m, bytes)
        if m[:4] == ARROW_MARKER:
            for b in ipc_to_batches(m):
                events.extend(iter_batch_events(b))
        else:
            events.append(decode(m))
    return events


def subscribe(collector: Collector, flt: dict[str, Any], *, batched: bool = False) -> websocket.WebSocket:
    ws = connect(collector, "/live", batched=batched)
    ws.send(json.dumps(flt))
    assert ws.recv() == "ok"
    return ws


def wait_stored(collector: Collector, n: int) -> None:
    wait_until(lambda: collector.store is not None and collector.store.count() >= n, what=f"{n} events stored")


def sample(n: int, *, start: float = T0, tags: tuple[str, ...] = ("sensor", "temp"), prefix: str = "e") -> list[Event]:
    return [
        Event(id=f"{prefix}{i}", timestamp=start + i, source=f"/dev/sensors/temp-{i % 3}", tags=list(tags), content=f"{20 + i % 10}.5C")
        for i in range(n)
    ]


def server_sockets(port: int) -> list[Any]:
    proc = psutil.Process()
    conns = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") else proc.connections(kind="tcp")
    return [c for c in conns if c.laddr and c.laddr.port == port]


# --------------------------------------------------------------------------- the scenario


def test_done_when_scenario(tmp_path):
    """Sent by a plain client: returned by /find as the upstream bytes then a normal close,
    pushed to a subscriber connected before, and found again after a restart."""
    path = tmp_path / "events.db"
    event = Event(source="/dev/door", tags=["home", "door"], content="unlocked")
    with serve(db=path, port=0) as collector:
        live = subscribe(collector, {"start": 1})
        sender = connect(collector, "/event")
        sender.send_binary(encode(event))
        assert live.recv() == encode(event)
        wait_stored(collector, 1)
        messages, code = find(collector, {"start": 1})
        assert messages == [encode(event)]
        assert code == 1000
        sender.close()
    assert live.recv_data(control_frame=True)[0] == CLOSE  # stop closed the subscriber
    with serve(db=path, port=0) as collector:
        messages, code = find(collector, {"start": 1})
        assert messages == [encode(event)]
        assert code == 1000


def test_the_fixtures(collector, collector_db):
    assert collector.store.in_memory and not collector_db.store.in_memory
    for c in (collector, collector_db):
        assert c.running and c.url == f"ws://127.0.0.1:{c.port}"


# --------------------------------------------------------------------------- /event


def test_bad_event_between_good_ones(collector, caplog):
    caplog.set_level(logging.WARNING, logger="theia_frames.server.collector")
    good = sample(3)
    ws = connect(collector, "/event")
    ws.send_binary(encode(good[0]))
    ws.send_binary(b"event: 99 1 2\nnot really")
    ws.send_binary(encode(good[1]))
    error = json.loads(ws.recv())
    assert error["error"].startswith("invalid event: sizes do not match")
    wait_stored(collector, 2)
    ws.send(encode(good[2]).decode())  # a text frame is an event too; the connection is still open
    wait_stored(collector, 3)
    assert find_events(collector, {"start": 1}) == good
    assert any("bad event" in r.getMessage() and "sizes do not match" in r.getMessage() for r in caplog.records)


@st.composite
def damaged_events(draw: Any) -> bytes:
    """Serialized events, some of them cut, stretched or with bytes changed."""
    # text the format can carry: no lone surrogates (not Unicode), no line breaks in header fields
    event = Event(
        id=draw(st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=8)),
        timestamp=draw(st.floats(0, 2e9)),
        source=draw(st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=8)),
        tags=draw(st.lists(st.text(st.characters(blacklist_characters=",\r\n", blacklist_categories=("Cs",)),
                                   min_size=1, max_size=4), max_size=3)),
        content=draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)),
    )
    data = bytearray(encode(event))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip":
            data[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        if not data:
            break
    return bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=100), damaged_events()))
def test_any_bytes_on_event_are_stored_or_answered_with_an_error(collector, data):
    expected = EventColumns()
    try:
        expected.append_raw(data)
        bad = False
    except DecodeError:
        bad = True
    ws = connect(collector, "/event")
    ws.send_binary(data)
    if bad:
        assert "invalid event" in json.loads(ws.recv())["error"]
    sentinel = Event()
    ws.send_binary(encode(sentinel))
    ws.close()
    wait_until(lambda: list(collector.store.query(EventFilter(id=sentinel.id))), what="the sentinel")
    # an event's identity is its id and its microsecond (docs/protocol.md): an earlier example's
    # event of the same identity is the copy kept
    stored = {(i, int(t)) for cols in collector.store.query() for i, t in zip(cols.id, identity_micros(cols.timestamp))}
    assert {(i, int(t)) for i, t in zip(expected.id, identity_micros(expected.timestamp))} <= stored


def test_the_go_dialect_is_stored_and_sent_back_in_the_upstream_one(collector):
    header = b"id:go-1\ntimestamp:1700000000.250000\nsource:/dev/x:y\ntags:a,b\n"
    go = b"event:%d %d 3\n%sabc" % (len(header) + 3, len(header), header)
    ws = connect(collector, "/event")
    ws.send_binary(go)
    wait_stored(collector, 1)
    event = Event(id="go-1", timestamp=1700000000.25, source="/dev/x:y", tags=["a", "b"], content="abc")
    assert find(collector, {"start": 1})[0] == [encode(event)]


def test_a_resent_event_is_stored_once_and_pushed_once(collector):
    live = subscribe(collector, {"start": 1})
    event, other = sample(2)
    ws = connect(collector, "/event")
    ws.send_binary(encode(event))
    ws.close()
    ws = connect(collector, "/event")  # a client reconnects and resends
    ws.send_binary(encode(event))
    ws.send_binary(encode(other))
    assert live.recv() == encode(event)
    assert live.recv() == encode(other)
    collector.flush()
    assert collector.store.count() == 2
    assert find_events(collector, {"start": 1}) == [event, other]


def test_several_senders_at_once(collector):
    def send(k: int) -> None:
        ws = connect(collector, "/event")
        for e in sample(200, prefix=f"s{k}-"):
            ws.send_binary(encode(e))
        ws.close()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_stored(collector, 800)
    assert len(find_events(collector, {"start": 1}, batched=True)) == 800


def test_an_oversized_message_closes_that_connection_only(caplog):
    with serve(port=0, max_message_size=1000) as collector:
        ws = connect(collector, "/event")
        ws.send_binary(encode(Event(content="x" * 2000)))
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == CLOSE and int.from_bytes(data[:2], "big") == 1009
        small = sample(1)[0]
        ws = connect(collector, "/event")
        ws.send_binary(encode(small))
        wait_stored(collector, 1)
        assert find_events(collector, {"start": 1}) == [small]


def test_flush_waits_for_what_was_received(collector):
    ws = connect(collector, "/event", batched=True)
    ws.send_binary(batch_to_ipc(events_to_batch(sample(5000))))
    wait_until(lambda: collector._writer.received >= 1, what="the message to arrive")
    collector.flush()
    assert collector.store.count() == 5000


# --------------------------------------------------------------------------- /find


@pytest.mark.parametrize("batched", [False, True], ids=["plain", "batched"])
def test_find_order_asc_and_desc(collector, batched):
    events = sample(10)
    tie = Event(id="tie", timestamp=events[4].timestamp, tags=["sensor"], content="same second")
    collector.store.add_many(events + [tie])
    asc = events[:5] + [tie] + events[5:]
    assert find_events(collector, {"start": 1}, batched=batched) == asc
    assert find_events(collector, {"start": 1, "order": "asc"}, batched=batched) == asc
    assert find_events(collector, {"start": 1, "order": "desc"}, batched=batched) == asc[::-1]


@pytest.mark.parametrize("batched", [False, True], ids=["plain", "batched"])
def test_find_filters_mean_what_eventfilter_means(collector, batched):
    events = sample(30) + sample(10, start=T0 + 0.5, tags=("door",), prefix="d")
    collector.store.add_many(events)
    filters = [
        {"start": T0 + 3, "end": T0 + 7},
        {"start": 1, "tags": ["temp"]},
        {"start": 1, "tags": ["te.*"], "content": "^2[34]"},
        {"start": 1, "content": "5C"},
        {"start": 1.0e-06, "tags": ["door"], "order": "desc"},
    ]
    for f in filters:
        flt = EventFilter.from_dict(f)
        expected = sorted((e for e in events if flt.matches(e)), key=lambda e: e.timestamp)
        if f.get("order") == "desc":
            expected.reverse()
        assert find_events(collector, f, batched=batched) == expected, f


def test_find_without_matches_is_ok_then_a_normal_close(collector):
    assert find(collector, {"start": T0}) == ([], 1000)
    assert find(collector, {"start": T0}, batched=True) == ([], 1000)


def test_find_accepts_filters_as_both_peers_send_them(collector):
    events = sample(5)
    collector.store.add_many(events)
    # the upstream Python client: an int start, every key present
    upstream = {"start": int(T0), "end": None, "tags": None, "content": None, "order": "asc"}
    assert find_events(collector, upstream) == events
    # the Go client: floats, empty fields left out
    assert find_events(collector, {"start": T0 + 1.5}) == events[2:]
    # binary frame holding the filter
    ws = connect(collector, "/find")
    ws.send_binary(json.dumps({"start": T0 + 4}).encode())
    assert ws.recv() == "ok"
    messages, code = read_to_close(ws)
    assert messages == [encode(events[4])] and code == 1000


def test_a_big_batched_find_comes_in_a_few_arrow_messages():
    with serve(port=0, batch_size=1000) as collector:
        events = sample(4500)
        collector.store.add_many(events)
        messages, code = find(collector, {"start": 1}, batched=True)
        assert code == 1000
        assert [sum(b.num_rows for b in ipc_to_batches(m)) for m in messages] == [1000] * 4 + [500]
        assert [e for m in messages for b in ipc_to_batches(m) for e in iter_batch_events(b)] == events
        # a sparse filter still fills its messages
        messages, _ = find(collector, {"start": 1, "source": "/dev/sensors/temp-1"}, batched=True)
        assert [sum(b.num_rows for b in ipc_to_batches(m)) for m in messages] == [1000, 500]


def _rare_store(collector: Collector, n: int) -> None:
    """``n`` events in one stored batch, the last of them alone saying ``rare`` (in its content:
    every chunk is read and matched; a rare tag would rule chunks out by their summaries)."""
    import pyarrow as pa

    assert collector.store is not None
    collector.store.add_batch(
        pa.table({
            "id": [f"e{i}" for i in range(n)], "timestamp": [T0 + i / 1000 for i in range(n)],
            "source": ["/dev/t"] * n, "tags": ["sensor,temp"] * n, "content": ["21.5C"] * (n - 1) + ["a rare 21.5C"],
        })
    )


def test_a_selective_batched_find_sends_what_it_has_after_find_wait():
    # Matching 300,000 events takes longer than find_wait (1 ms here, 0.25 s by
    # default): the collector says it is still matching before the one match.
    with serve(db=":memory:", port=0, find_wait=0.001) as collector:
        _rare_store(collector, 300_000)
        messages, code = find(collector, {"start": 1, "content": "ra.e"}, batched=True)
    assert code == 1000 and len(messages) >= 2
    rows = [sum(b.num_rows for b in ipc_to_batches(m)) for m in messages]
    assert rows[0] == 0 and sum(rows) == 1
    assert [e.id for m in messages for b in ipc_to_batches(m) for e in iter_batch_events(b)] == ["e299999"]


def test_a_selective_plain_find_pings_after_find_wait():
    with serve(db=":memory:", port=0, find_wait=0.001) as collector:
        _rare_store(collector, 300_000)
        ws = connect(collector, "/find")
        ws.send(json.dumps({"start": 1, "content": "ra.e"}))
        assert ws.recv() == "ok"
        opcodes = []
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            opcodes.append(opcode)
            if opcode == CLOSE:
                break
            if opcode == websocket.ABNF.OPCODE_BINARY:
                assert decode(data).id == "e299999"
    assert opcodes[0] == websocket.ABNF.OPCODE_PING and opcodes.count(websocket.ABNF.OPCODE_BINARY) == 1


def test_find_wait_must_be_positive():
    for bad in (0, -1, None, "1"):
        with pytest.raises(UsageError, match="find_wait"):
            Collector(find_wait=bad)


def test_a_client_leaving_in_the_middle_of_a_find(collector):
    collector.store.add_many(sample(20_000))
    ws = connect(collector, "/find")
    ws.send(json.dumps({"start": 1}))
    assert ws.recv() == "ok"
    ws.recv()
    ws.close()
    assert len(find_events(collector, {"start": 1}, batched=True)) == 20_000


# The plain /find writes many ready-made frames at once; a peer must see exactly
# what one `send` per message wrote: one unmasked frame per event, nothing else.

ODD_EVENTS = [
    Event(id="plain", timestamp=T0 + 0.25, source="/dev/a", tags=["a", "b"], content="21.5C"),
    Event(id="no-tags", timestamp=T0 + 1.0000001, source="/var/log/a:b", tags=[], content=""),
    Event(id="ünï", timestamp=T0 + 2.123456789, source="/dev/ß", tags=["ä", "", "b c"], content="line\nbreak ✓"),
    Event(id="medium", timestamp=T0 + 3, content="m" * 300),  # 16-bit frame length
    Event(id="large", timestamp=T0 + 4, content="l" * 70_000),  # 64-bit frame length
    Event(id="old", timestamp=0.5, content="before 1970 + 1 s"),
]


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A server frame as websockets writes it for one message (unmasked, no extension)."""
    from websockets.frames import Frame, Opcode

    return Frame(Opcode(opcode), payload).serialize(mask=False, extensions=[])


def raw_find(collector: Collector, flt: dict[str, Any]) -> bytes:
    """Every byte the collector writes after the handshake of a plain /find, to the end."""
    sock = socket.create_connection(("127.0.0.1", collector.port), timeout=10)
    try:
        sock.sendall(
            b"GET /find HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, data = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101")
        filter_frame = websocket.ABNF.create_frame(json.dumps(flt), websocket.ABNF.OPCODE_TEXT).format()
        sock.sendall(filter_frame)
        close = ws_frame(8, (1000).to_bytes(2, "big"))
        while not data.endswith(close):
            chunk = sock.recv(1 << 20)
            assert chunk, "the connection ended without a normal close"
            data += chunk
        return data
    finally:
        sock.close()


def test_a_plain_find_writes_exactly_one_frame_per_event(collector):
    unsendable = Event(id="bad\nid", timestamp=T0 + 5, content="stored directly, not via /event")
    many = sample(3000, start=T0 + 10)
    collector.store.add_many(ODD_EVENTS + [unsendable] + many)
    expected = ws_frame(1, b"ok")
    for e in sorted(ODD_EVENTS + [unsendable] + many, key=lambda e: (e.timestamp, e.id)):
        try:
            expected += ws_frame(2, encode(e))
        except InvalidEventError as exc:
            assert e is unsendable
            text = json.dumps({"error": f"stored event {e.id!r} cannot be sent in the plain format: {exc}"})
            expected += ws_frame(1, text.encode())
    expected += ws_frame(8, (1000).to_bytes(2, "big"))
    assert raw_find(collector, {"start": 0.1}) == expected
    # and websocket-client reads the same messages, desc too
    messages, code = find(collector, {"start": 1, "order": "desc"})
    assert code == 1000
    assert [m for m in messages if isinstance(m, bytes)] == [encode(e) for e in (many[::-1] + ODD_EVENTS[4::-1])]


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.builds(
            Event,
            id=st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=10),
            timestamp=st.one_of(
                # every accepted event time (timeparse.EARLIEST_EVENT_TIME to LATEST_EVENT_TIME)
                st.floats(-9_214_560_000.0, 9_214_646_399.0, allow_nan=False),
                st.integers(0, 2**40).map(lambda k: k / 1024),
                st.sampled_from([0.0, -0.0, 0.00390625, 0.99999995, 1e-8, -9_214_560_000.0, 9_214_646_399.9999]),
            ),
            source=st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=10),
            tags=st.lists(st.text(st.characters(blacklist_characters=",\r\n", blacklist_categories=("Cs",)), max_size=5), max_size=3),
            content=st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_plain_frames_are_the_bytes_send_writes(events):
    from theia_frames.server.output import joined_frames, plain_frames

    frames = bytes(joined_frames([plain_frames(events_to_batch(events))]))
    assert frames == b"".join(ws_frame(2, encode(e)) for e in events)


# --------------------------------------------------------------------------- bad filters


BAD_FILTERS = [
    ("{not json", "not valid JSON"),
    ('["a"]', "must be a JSON object"),
    ('{"start": 1, "limit": 5}', "unknown filter key(s): limit"),
    ('{"start": "yesterday"}', "start must be a number"),
    ('{"start": 1, "tags": "sensor"}', "tags must be a list of strings"),
    ('{"start": 1, "tags": ["("]}', "not a valid regular expression"),
    ('{"start": 1, "content": "[a-"}', "content is not a valid regular expression"),
    ('{"start": 10, "end": 5}', "end 5.0 is before start 10.0"),
    ('{"start": 1, "order": "random"}', "order must be 'asc' or 'desc'"),
]


@pytest.mark.parametrize("path", ["/find", "/live"])
@pytest.mark.parametrize("text, problem", BAD_FILTERS, ids=[p for _, p in BAD_FILTERS])
def test_a_bad_filter_gets_an_error_naming_the_problem(collector, path, text, problem):
    ws = connect(collector, path)
    ws.send(text)
    messages, code = read_to_close(ws)
    assert len(messages) == 1
    assert problem in json.loads(messages[0])["error"]
    assert code == 1008


# --------------------------------------------------------------------------- /live


@pytest.mark.parametrize("batched", [False, True], ids=["plain", "batched"])
def test_live_pushes_only_matching_events_stored_after_subscribing(collector, batched):
    before = Event(id="before", timestamp=T0, tags=["temp"])
    collector.store.add(before)
    temps = subscribe(collector, {"start": int(T0), "tags": ["temp"]}, batched=batched)
    doors = subscribe(collector, {"start": int(T0), "tags": ["door"]}, batched=batched)
    ws = connect(collector, "/event")
    temp, door = Event(id="t", timestamp=T0 + 1, tags=["temp"]), Event(id="d", timestamp=T0 + 2, tags=["door"])
    ws.send_binary(encode(temp))
    ws.send_binary(encode(door))
    # one event pending at a time: a single plain message even when batched
    assert temps.recv() == encode(temp)
    assert doors.recv() == encode(door)


def test_live_accepts_the_upstream_keys(collector):
    live = subscribe(collector, {"id": "keep-.*", "source": "/dev/a", "start": int(T0), "end": int(T0) + 100})
    ws = connect(collector, "/event")
    skipped = Event(id="skip-1", timestamp=T0 + 1, source="/dev/a")
    wrong_source = Event(id="keep-2", timestamp=T0 + 1, source="/dev/b")
    kept = Event(id="keep-3", timestamp=T0 + 1, source="/dev/a")
    for e in (skipped, wrong_source, kept):
        ws.send_binary(encode(e))
    assert live.recv() == encode(kept)


def test_live_sends_a_burst_as_one_batch_when_negotiated_and_singles_otherwise(collector):
    burst = sample(100)
    batched = subscribe(collector, {"start": 1}, batched=True)
    plain = subscribe(collector, {"start": 1})
    ws = connect(collector, "/event", batched=True)
    ws.send_binary(batch_to_ipc(events_to_batch(burst)))  # one message: one commit
    message = batched.recv()
    assert message[:4] == ARROW_MARKER
    assert [e for b in ipc_to_batches(message) for e in iter_batch_events(b)] == burst
    assert [plain.recv() for _ in burst] == [encode(e) for e in burst]


def test_a_later_filter_replaces_the_first(collector):
    live = subscribe(collector, {"start": 1, "tags": ["a"]})
    live.send(json.dumps({"start": 1, "tags": ["b"]}))
    assert live.recv() == "ok"
    ws = connect(collector, "/event")
    a, b = Event(id="a", timestamp=T0, tags=["a"]), Event(id="b", timestamp=T0, tags=["b"])
    ws.send_binary(encode(a))
    ws.send_binary(encode(b))
    assert live.recv() == encode(b)


def test_a_subscriber_that_leaves_is_forgotten(collector):
    live = subscribe(collector, {"start": 1})
    wait_until(lambda: len(collector._subscribers) == 1, what="the subscriber")
    live.close()
    wait_until(lambda: not collector._subscribers, what="the subscriber to be forgotten")
    ws = connect(collector, "/event")
    ws.send_binary(encode(sample(1)[0]))
    wait_stored(collector, 1)


def test_a_slow_subscriber_is_dropped_without_slowing_anyone(caplog):
    caplog.set_level(logging.WARNING, logger="theia_frames.server.collector")
    content = "x" * (256 * 1024)
    with serve(port=0, live_queue=20, close_timeout=20) as collector:
        slow = subscribe(collector, {"start": 1})  # never reads until dropped
        fast = subscribe(collector, {"start": 1})
        fast_got: list[bytes | str] = []
        fast_end: list[Any] = []

        def read_fast() -> None:
            fast_end.append(read_to_close(fast, fast_got)[1])

        reader = threading.Thread(target=read_fast)
        reader.start()
        sender = connect(collector, "/event")

        def dropped() -> bool:
            return any("dropping live subscriber" in r.getMessage() for r in caplog.records)

        sent = 0
        while not dropped():
            assert sent < 1000, "the slow subscriber was never dropped"
            sender.send_binary(encode(Event(id=f"big-{sent}", timestamp=T0 + sent, content=content)))
            sent += 1
            wait_until(lambda: collector.store.count() >= sent, what="the event to be stored")
        # the slow one gets what was already on its way, then the error and 1013
        messages, code = read_to_close(slow)
        assert code == 1013
        assert "subscriber too slow" in json.loads(messages[-1])["error"]
        assert all(m[:6] == b"event:" for m in messages[:-1])
        # ingest and the other subscriber went on
        for k in range(sent, sent + 5):
            sender.send_binary(encode(Event(id=f"big-{k}", timestamp=T0 + k, content=content)))
        wait_until(lambda: collector.store.count() >= sent + 5, what="more events stored")
        wait_until(lambda: len(fast_got) >= sent + 5, what="the fast subscriber to get every event")
    reader.join(10)
    assert [decode(m).id for m in fast_got] == [f"big-{k}" for k in range(sent + 5)]  # type: ignore[arg-type]
    assert fast_end == [1001]  # going away: the collector stopped


# --------------------------------------------------------------------------- handshake and extension


def test_an_unknown_path_is_refused_at_the_handshake(collector):
    for path in ("/", "/events", "/find/x"):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(collector.url + path, timeout=5)
        assert info.value.status_code == 404
    # a query string does not change the endpoint
    ws = connect(collector, "/find?from=test")
    ws.send(json.dumps({"start": 1}))
    assert ws.recv() == "ok"
    assert read_to_close(ws) == ([], 1000)


def test_the_extension_is_accepted_when_offered_and_only_then(collector):
    collector.store.add_many(sample(3))
    for path in ("/event", "/find", "/live"):
        assert negotiated(connect(collector, path, batched=True)) == SUBPROTOCOL
        assert negotiated(connect(collector, path)) is None
        other = connect(collector, path, header=["Sec-WebSocket-Protocol: chat, superchat"])
        assert negotiated(other) is None
        both = connect(collector, path, header=[f"Sec-WebSocket-Protocol: chat, {SUBPROTOCOL}"])
        assert negotiated(both) == SUBPROTOCOL


def test_a_plain_client_never_sees_arrow(collector):
    live = subscribe(collector, {"start": 1})
    ws = connect(collector, "/event", batched=True)
    burst = sample(50)
    ws.send_binary(batch_to_ipc(events_to_batch(burst)))
    pushed = [live.recv() for _ in burst]
    found, code = find(collector, {"start": 1})
    for messages in (pushed, found):
        assert messages == [encode(e) for e in burst]


def test_batched_event_connections_take_batches_and_single_events(collector):
    ws = connect(collector, "/event", batched=True)
    ws.send_binary(batch_to_ipc(events_to_batch(sample(1000))))
    ws.send_binary(encode(Event(id="single", timestamp=T0 + 5000)))
    wait_stored(collector, 1001)
    assert len(find_events(collector, {"start": 1}, batched=True)) == 1001


def test_a_batch_on_a_plain_connection_is_not_an_event(collector):
    ws = connect(collector, "/event")
    ws.send_binary(batch_to_ipc(events_to_batch(sample(3))))
    assert "no preamble" in json.loads(ws.recv())["error"]
    assert collector.store.count() == 0


def test_rows_of_a_batch_the_plain_format_cannot_carry_are_left_out(collector):
    events = sample(4)
    events[1].source = "/dev/a\nb"
    events[2].timestamp = float("nan")
    ws = connect(collector, "/event", batched=True)
    ws.send_binary(batch_to_ipc(events_to_batch(events)))
    error = json.loads(ws.recv())["error"]
    # each problem told apart: the time names its event
    assert "1 event(s) of a batch not stored: a line break" in error and "'e1'" in error
    assert "1 event(s) of a batch not stored: event 'e2': timestamp nan is not a finite number" in error
    collector.flush()
    assert find_events(collector, {"start": 1}) == [events[0], events[3]]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "plain"])
def test_an_id_the_plain_dialect_cannot_carry_back_is_refused_per_event_on_both(collector, batched):
    events = [Event(id="good1", timestamp=1.0), Event(id="cr\r", timestamp=2.0), Event(id="good2", timestamp=3.0),
              Event(id="in\rside", timestamp=4.0), Event(id="good3", timestamp=5.0, source="/s\r")]
    ws = connect(collector, "/event", batched=batched)
    if batched:
        ws.send_binary(batch_to_ipc(events_to_batch(events)))
        texts = [json.loads(ws.recv())["error"]]
        assert "3 event(s) of a batch not stored: a line break" in texts[0]
    else:
        # the client refuses such an event before sending: the bytes are written by hand here
        for e in events:
            header = f"id:{e.id}\ntimestamp: {e.timestamp:.7f}\nsource:{e.source}\ntags:\n".encode()
            ws.send_binary(b"event: %d %d 0\n%s\n" % (len(header), len(header), header))
        texts = [json.loads(ws.recv())["error"] for _ in range(3)]
        assert "event 'cr\\r' not stored: event id must not contain a line break" in texts[0]
        assert "event 'in\\rside' not stored" in texts[1] and "event source must not contain a line break" in texts[2]
    wait_stored(collector, 2)
    # a plain /find serves every stored event as an event, on both dialects
    assert [e.id for e in find_events(collector, {"start": 0})] == ["good1", "good2"]
    assert [e.id for e in find_events(collector, {"start": 0}, batched=True)] == ["good1", "good2"]


@pytest.mark.parametrize("batch", [True, False], ids=["arrow", "plain"])
def test_the_client_refuses_an_id_with_a_carriage_return_before_sending(collector, batch):
    from theia_frames import Client

    with Client(collector.url, batch=batch) as client:
        with pytest.raises(InvalidEventError, match="line break"):
            client.send_many([Event(id="ok", timestamp=1.0), Event(id="a\rb", timestamp=2.0)], wait=batch)
        with pytest.raises(InvalidEventError, match="line break"):
            client.send(Event(id="a\r", timestamp=3.0), wait=batch)
        client.send_many([Event(id="fine", timestamp=4.0)], wait=batch)  # the plain dialect cannot confirm
    wait_stored(collector, 1)
    assert [e.id for e in find_events(collector, {"start": 0})] == ["fine"]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "plain"])
def test_an_event_outside_the_accepted_times_is_refused_by_name_and_one_before_1970_is_found(collector, batched):
    events = [
        Event(id="old", timestamp=-10.5, content="before 1970"),
        Event(id="far", timestamp=1e11, content="year 5138"),
        Event(id="early", timestamp=-9_300_000_000.0, content="year 1675"),
        Event(id="1958", timestamp=-378_691_200.0, content="1958-01-01"),
    ]
    ws = connect(collector, "/event", batched=batched)
    if batched:
        ws.send_binary(batch_to_ipc(events_to_batch(events)))
        (text,) = [json.loads(ws.recv())["error"]]
        assert "2 event(s) of a batch not stored: event 'far'" in text  # the first one named
    else:
        # the client refuses such an event before sending: the bytes are written by hand here
        for e in events:
            header = f"id:{e.id}\ntimestamp: {e.timestamp:.7f}\nsource:\ntags:\n".encode()
            ws.send_binary(b"event: %d %d 0\n%s\n" % (len(header), len(header), header))
        text = " ".join(json.loads(ws.recv())["error"] for _ in range(2))
        assert "event 'far' not stored" in text and "event 'early' not stored" in text
    assert "outside the accepted range of event times, from 1678-01-01T00:00Z (inclusive) to 2262-01-01T00:00Z (exclusive)" in text
    wait_stored(collector, 2)
    assert [e.id for e in find_events(collector, {"start": -20})] == ["old"]
    assert [e.id for e in find_events(collector, {"start": -400_000_000, "end": 0})] == ["1958", "old"]
    assert [e.id for e in find_events(collector, {})] == ["1958", "old"]


def test_a_damaged_batch_is_reported(collector):
    ws = connect(collector, "/event", batched=True)
    ws.send_binary(ARROW_MARKER + b"\x00" * 20)
    assert "invalid Arrow batch" in json.loads(ws.recv())["error"]
    ws.send_binary(encode(sample(1)[0]))
    wait_stored(collector, 1)


# --------------------------------------------------------------------------- lifetime


def test_stop_leaves_no_thread_and_no_socket():
    threads_before = set(threading.enumerate())
    collector = serve(port=0)
    port = collector.port
    collector.store.add_many(sample(10_000))
    live = subscribe(collector, {"start": 1}, batched=True)
    sender = connect(collector, "/event")
    sender.send_binary(encode(Event(id="last")))
    slow_find = connect(collector, "/find")
    slow_find.send(json.dumps({"start": 1}))
    assert slow_find.recv() == "ok"
    assert server_sockets(port)
    collector.stop()
    collector.stop()  # idempotent
    assert not collector.running
    assert set(threading.enumerate()) <= threads_before
    assert server_sockets(port) == []
    assert collector.store.closed
    pushed, code = read_to_close(live)
    assert code == 1001  # going away
    assert [decode(m).id for m in pushed] in ([], ["last"])  # type: ignore[arg-type]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises(UsageError):
        collector.flush()


def test_stop_stores_what_was_received(tmp_path):
    path = tmp_path / "events.db"
    collector = serve(db=path, port=0)
    ws = connect(collector, "/event", batched=True)
    ws.send_binary(batch_to_ipc(events_to_batch(sample(20_000))))
    wait_until(lambda: collector._writer.received >= 1, what="the batch to arrive")
    collector.stop()
    with EventStore(path) as store:
        assert store.count() == 20_000


def test_binds_loopback_by_default_and_reports_a_busy_port(collector):
    assert collector.host == "127.0.0.1"
    assert [s.laddr.ip for s in server_sockets(collector.port) if s.status == psutil.CONN_LISTEN] == ["127.0.0.1"]
    with pytest.raises(TransportError, match=f"cannot listen on 127.0.0.1:{collector.port}"):
        serve(port=collector.port)
    with pytest.raises(UsageError):
        collector.start()


def test_the_context_manager_and_repr():
    collector = Collector(port=0)
    assert "stopped" in repr(collector)
    with collector as running:
        assert running is collector and collector.url in repr(collector)
    assert not collector.running


# --------------------------------------------------------------------------- command line


def test_the_serve_command(tmp_path):
    path = tmp_path / "cli.db"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "theia_frames", "serve", "--db", str(path), "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on ws://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("listening on ", 1)[1].split()[0]
        event = Event(id="cli", timestamp=T0, content="via the command line")
        ws = websocket.create_connection(url + "/event", timeout=10)
        ws.send_binary(encode(event))
        ws.close()

        def found() -> bool:
            f = websocket.create_connection(url + "/find", timeout=10)
            f.send(json.dumps({"start": 1}))
            assert f.recv() == "ok"
            return read_to_close(f)[0] == [encode(event)]

        wait_until(found, what="the event to be found")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    with EventStore(path) as store:
        assert store.count() == 1


def test_a_batched_find_by_time_announces_how_many_events_it_sends():
    from theia_frames.client import Client
    from theia_frames.filter import Filter
    from theia_frames.simulation import sensor_events

    t0 = 1_700_000_000
    with serve(db=":memory:", port=0, batch_size=1_000) as running:
        with Client(running.url) as client:
            client.send_many(sensor_events(5_000, start=t0, rate=100), wait=True)
            # a later commit whose chunk overlaps the first in time
            client.send_many(sensor_events(100, start=t0 + 15.005, rate=100, seed=1), wait=True)
            for f in (Filter(), Filter(t0 + 10).match_end(t0 + 20), Filter(t0 + 49.99), Filter(t0 + 60)):
                result = client.find(f)
                n = len(list(result))
                assert result.total == n, f
            tagged = client.find(Filter(t0).match_tag("sensor"))
            assert len(list(tagged)) == 5_100 and tagged.total is None
        with Client(running.url, batch=False) as plain:
            result = plain.find(Filter(t0))
            assert len(list(result)) == 5_100 and result.total is None


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda tmp: tmp / "missing" / "events.db", "does not exist (create it first)"),
        (lambda tmp: (tmp / "folder.db").mkdir() or tmp / "folder.db", "it is a folder, not a file"),
        (lambda tmp: (tmp / "x.db").write_text("not sqlite") and tmp / "x.db", "not an event store (not an SQLite database)"),
    ],
    ids=["missing folder", "a folder", "not a store"],
)
def test_the_serve_command_says_why_a_store_cannot_be_opened(tmp_path, make, says):
    done = subprocess.run(
        [sys.executable, "-m", "theia_frames", "serve", "--db", str(make(tmp_path)), "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_serve_command_on_a_busy_port_suggests_another(collector):
    done = subprocess.run(
        [sys.executable, "-m", "theia_frames", "serve", "--db", ":memory:", "--port", str(collector.port)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and "address already in use" in done.stderr
    assert "--port 0" in done.stderr and "THEIA_URL" in done.stderr
