"""The sync client over sockets: the transport's framing, message meaning, errors, and both peers of the protocol.

Against a server that behaves like the upstream collector (``upstream_like``)
here; against the embedded collector in ``test_client_collector``-style tests
below, which use the ``collector`` fixture.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import types

import pytest

import theia_frames as tf
from raw_peer import read_client_frame, server_frame
from sample import BASE, make_events
from theia_frames.protocol.arrow import event_schema, events_to_batch
from theia_frames.client import (
    DEFAULT_IDLE_TIMEOUT,
    Client,
    FindResult,
    LiveStream,
)
from theia_frames.client.options import base_url as _base_url
from theia_frames.client.transport import Connection as _Connection
from theia_frames.protocol.codec import encode
from theia_frames.event import Event
from theia_frames.exceptions import (
    HandshakeRefused,
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    DecodeError,
    InvalidEventError,
    ProtocolError,
    ServerError,
    TheiaError,
    TheiaTimeoutError,
    UsageError,
)
from theia_frames.filter import EventFilter, Filter
from upstream_like import UpstreamLike
from upstream import UpstreamCollector
from waiting import poll_until
from waiting import poll_until as wait_until

IDLE = 0.3  # idle timeout for servers that never close a /find; keeps tests quick




@pytest.fixture
def upstream():
    """The upstream-like server: for what the real one cannot show (the filters
    and headers it received, injected messages, drops, normal closes)."""
    with UpstreamLike() as server:
        yield server


class RealUpstream:
    """The real upstream collector (file store) of one test, with a way to wait for what it stored."""

    def __init__(self, running):
        self.running = running
        self.url = running.url

    def wait_for_events(self, n, timeout=20.0):
        # it acknowledges nothing and flushes its files about once a second
        return poll_until(lambda: len(list(tf.find(self.url, Filter(1), idle_timeout=IDLE))) >= n, timeout, 0.2)


@pytest.fixture
def real_upstream(tmp_path):
    """A fresh real upstream collector (theia 0.9.2, file store) for one test."""
    if os.environ.get("THEIA_SKIP_UPSTREAM") == "1" and not os.environ.get("CI"):
        pytest.skip("THEIA_SKIP_UPSTREAM=1")
    with UpstreamCollector(tmp_path / "upstream") as running:
        yield RealUpstream(running)


@pytest.fixture
def refused_url():
    """A loopback URL on which nothing listens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"ws://127.0.0.1:{port}"


# --------------------------------------------------------------------------- URLs and options


@pytest.mark.parametrize(
    "given_url, expected",
    [
        ("ws://127.0.0.1:6433", "ws://127.0.0.1:6433"),
        ("ws://127.0.0.1:6433/", "ws://127.0.0.1:6433"),
        ("127.0.0.1:6433", "ws://127.0.0.1:6433"),
        ("ws://127.0.0.1:6433/find", "ws://127.0.0.1:6433"),
        ("wss://example.org/theia/event", "wss://example.org/theia"),
    ],
)
def test_base_url(given_url, expected):
    assert _base_url(given_url) == expected


@pytest.mark.parametrize("bad", ["", "http://127.0.0.1:6433", "ws://", None])
def test_bad_url_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        Client(bad)


@pytest.mark.parametrize("kw", [{"timeout": 0}, {"idle_timeout": -1}, {"timeout": True}, {"batch_size": 0}])
def test_bad_options_are_usage_errors(kw):
    with pytest.raises(UsageError):
        Client("ws://127.0.0.1:1", **kw)


def test_idle_timeout_default_is_documented():
    assert Client("ws://127.0.0.1:1").idle_timeout == DEFAULT_IDLE_TIMEOUT
    assert str(DEFAULT_IDLE_TIMEOUT) in tf.client.__doc__ or "DEFAULT_IDLE_TIMEOUT" in tf.client.__doc__


# --------------------------------------------------------------------------- framing (pure)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    conn = _Connection(types.SimpleNamespace(sock=a), "ws://test/find", False, 5.0)
    yield conn, b
    conn.close()
    b.close()



@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_client_frames_carry_every_length(pair, size):
    conn, peer = pair
    payload = os.urandom(size)
    received = []

    def reader():
        received.append(read_client_frame(peer))

    t = threading.Thread(target=reader)
    t.start()
    conn.send_binary(payload)
    t.join(10)
    assert received == [(2, payload)]



def test_ping_is_answered_and_close_code_recorded(pair):
    conn, peer = pair
    peer.sendall(server_frame(9, b"are you there") + server_frame(2, b"x") + server_frame(8, struct.pack("!H", 1001) + b"bye"))
    assert conn.read(5) == [b"x"]
    assert read_client_frame(peer) == (10, b"are you there")
    assert conn.read(5) == []
    assert conn.ended and conn.close_code == 1001 and conn.close_reason == "bye"
    assert read_client_frame(peer) == (8, struct.pack("!H", 1001))


def test_eof_without_close_frame_is_code_1006(pair):
    conn, peer = pair
    peer.sendall(server_frame(2, b"x"))
    peer.shutdown(socket.SHUT_WR)
    assert conn.read(5) == [b"x"]
    assert conn.read(5) == []
    assert conn.close_code == 1006


def test_silence_is_reported(pair):
    conn, _ = pair
    from theia_frames.client.transport import Silence as _Silence

    with pytest.raises(_Silence):
        conn.read(0.05)


@pytest.mark.parametrize(
    "frame, message",
    [
        (server_frame(2, b"x", masked=True), "masked"),
        (server_frame(2, b"x", rsv=0x40), "reserved"),
        (server_frame(0, b"x"), "continuation"),
        (server_frame(5, b"x"), "opcode"),
    ],
)
def test_protocol_violations_raise(pair, frame, message):
    conn, peer = pair
    peer.sendall(frame)
    with pytest.raises(ProtocolError, match=message):
        conn.read(5)



# --------------------------------------------------------------------------- connection errors


def test_connection_refused_names_the_url(refused_url):
    with Client(refused_url) as client:
        with pytest.raises(ConnectError, match="refused") as info:
            client.send(Event())
    assert refused_url in str(info.value)
    assert info.value.url == f"{refused_url}/event"
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    with pytest.raises(ConnectError, match=refused_url):
        tf.find(refused_url, Filter(1))
    with pytest.raises(ConnectError, match=refused_url):
        Client(refused_url).receive()
    with pytest.raises(ConnectError, match=refused_url):
        tf.connect(refused_url)


def test_dns_failure_is_a_connect_error(monkeypatch):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(ConnectError, match="no-such-host.invalid"):
        tf.send("ws://no-such-host.invalid:6433", Event())


def _http_server(response: bytes):
    """A loopback TCP server answering every connection with ``response``
    (or nothing at all when it is empty); returns (url, stop)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.05)
    stop = threading.Event()
    held = []

    def run():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            held.append(c)
            if response:
                c.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                c.sendall(response)
        srv.close()
        for c in held:
            c.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def halt():
        stop.set()
        t.join(5)

    return f"ws://127.0.0.1:{srv.getsockname()[1]}", halt


@pytest.mark.parametrize(
    "status, error",
    [(b"404 Not Found", ConnectError), (b"403 Forbidden", AuthenticationError), (b"401 Unauthorized", AuthenticationError)],
)
def test_handshake_refusal(status, error):
    url, halt = _http_server(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    try:
        with pytest.raises(error, match=url) as info:
            tf.find(url, Filter(1))
        assert status[:3].decode() in str(info.value)
    finally:
        halt()


def test_connect_errors_carry_their_reason(refused_url, monkeypatch):
    with pytest.raises(ConnectError) as refused:
        tf.connect(refused_url)
    assert refused.value.reason == "refused"
    url, halt = _http_server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    try:
        with pytest.raises(HandshakeRefused) as handshake:
            tf.connect(url)
    finally:
        halt()
    assert handshake.value.reason == "handshake" and handshake.value.status == 404

    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(ConnectError) as unknown:
        tf.connect("ws://no-such-host.invalid:6433")
    assert unknown.value.reason == "unknown-host"


def test_not_websocket_is_a_connect_error():
    url, halt = _http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    try:
        with pytest.raises(ConnectError, match=url):
            tf.send(url, Event())
    finally:
        halt()


def test_handshake_timeout_is_a_timeout_error():
    url, halt = _http_server(b"")
    try:
        with pytest.raises(TheiaTimeoutError, match=url) as info:
            Client(url, timeout=0.2).receive()
        assert isinstance(info.value, TimeoutError)
    finally:
        halt()


def test_users_never_see_websocket_errors(refused_url):
    import websocket

    with pytest.raises(TheiaError) as info:
        tf.send(refused_url, Event())
    assert not isinstance(info.value, websocket.WebSocketException)


# --------------------------------------------------------------------------- against an upstream-like collector


def test_send_find_round_trip_with_a_server_that_never_closes(real_upstream):
    events = make_events(500)
    with Client(real_upstream.url, idle_timeout=IDLE) as client:
        assert client.send_many(events) == 500
        assert client.batched is False
        assert real_upstream.wait_for_events(500)
        result = client.find(Filter(BASE))
        assert isinstance(result, FindResult)
        assert list(result) == events
    assert result.complete and result.ended_by == "idle" and result.count == 500
    assert not result.batched
    assert result.closed


def test_offers_the_extension_as_a_plain_header_and_survives_a_server_that_ignores_it(upstream):
    with Client(upstream.url, idle_timeout=IDLE) as client:
        client.send(Event(timestamp=BASE))
        assert client.batched is False
    assert upstream.headers[0].get("Sec-WebSocket-Protocol") == "theia-frames.v2"
    with Client(upstream.url, batch=False) as client:
        client.send(Event(timestamp=BASE))
    assert "Sec-WebSocket-Protocol" not in upstream.headers[1]


def test_extra_headers_are_sent(upstream):
    with Client(upstream.url, headers={"Authorization": "Bearer t0ken"}) as client:
        client.send(Event())
    with Client(upstream.url, headers=["X-Team: sensors"]) as client:
        client.send(Event())
    assert upstream.headers[0]["Authorization"] == "Bearer t0ken"
    assert upstream.headers[1]["X-Team"] == "sensors"


def test_find_without_start_still_works_upstream(real_upstream):
    events = make_events(3)
    tf.send(real_upstream.url, events)
    assert real_upstream.wait_for_events(3)
    assert list(tf.find(real_upstream.url, None, idle_timeout=IDLE)) == events
    assert list(tf.find(real_upstream.url, EventFilter(start=0), idle_timeout=IDLE)) == events


def test_find_without_start_sends_the_earliest_event_time_as_start(upstream):
    # upstream refuses a missing or zero start; the earliest accepted event time means none
    from theia_frames.timeparse import EARLIEST_EVENT_TIME

    list(tf.find(upstream.url, None, idle_timeout=IDLE))
    list(tf.find(upstream.url, EventFilter(start=0), idle_timeout=IDLE))
    assert len(upstream.filters) == 2
    assert all(criteria["start"] == EARLIEST_EVENT_TIME for _, criteria in upstream.filters)


def test_every_event_is_rechecked_locally(real_upstream):
    # the real_upstream /find skips the tag test for events without tags and
    # matches content with a search: the client applies the one meaning
    tagged = Event(id="t", timestamp=BASE + 1, tags=["sensor"], content="21C")
    untagged = Event(id="u", timestamp=BASE + 2, tags=[], content="21C")
    late = Event(id="l", timestamp=BASE + 9, tags=["sensor"], content="21C")
    tf.send(real_upstream.url, [tagged, untagged, late])
    assert real_upstream.wait_for_events(3)
    f = Filter(BASE).match_tag("sensor").match_end(BASE + 5)
    assert [e.id for e in tf.find(real_upstream.url, f, idle_timeout=IDLE)] == ["t"]
    batches = list(tf.find(real_upstream.url, f, idle_timeout=IDLE).iter_batches())
    assert sum(b.num_rows for b in batches) == 1
    assert [e.id for e in tf.find(real_upstream.url, Filter(BASE + 1.5).match_end(BASE + 5), idle_timeout=IDLE)] == ["u"]


def test_iter_batches_yields_event_schema_batches(real_upstream):
    events = make_events(2500)
    tf.send(real_upstream.url, events)
    assert real_upstream.wait_for_events(2500)
    with Client(real_upstream.url, idle_timeout=IDLE, batch_size=1000) as client:
        result = client.find(Filter(BASE))
        batches = list(result.iter_batches())
    assert all(b.schema.equals(event_schema()) for b in batches)
    assert [b.num_rows for b in batches][-1] <= 1000 and sum(b.num_rows for b in batches) == 2500
    table = __import__("pyarrow").Table.from_batches(batches)
    assert table.column("id").to_pylist() == [e.id for e in events]
    assert table.column("tags").to_pylist()[:2] == [["sensor", "k0"], ["sensor", "k1"]]
    assert result.count == 2500


def test_result_is_read_once_one_way(upstream):
    with Client(upstream.url, idle_timeout=IDLE) as client:
        result = client.find(Filter(1))
        list(result)
        with pytest.raises(UsageError, match="once"):
            list(result.iter_batches())
        with pytest.raises(UsageError):
            list(result)


def test_raw_messages_are_available(real_upstream):
    events = make_events(3)
    tf.send(real_upstream.url, events)
    assert real_upstream.wait_for_events(3)
    messages = list(tf.find(real_upstream.url, Filter(1), idle_timeout=IDLE).iter_messages())
    assert messages == [encode(e) for e in events]


def test_a_descending_find_on_a_plain_peer_is_the_exact_reverse_of_ascending(upstream):
    # Upstream cannot answer desc: the client asks ascending, spills and sorts.
    # The peer's order here is arrival order, with a late event and a tie.
    arrivals = [Event(id=f"e{i}", timestamp=BASE + t, content="x") for i, t in enumerate([1, 2, 5, 3, 5, 4, 0.5])]
    upstream.events.extend(arrivals)
    f = Filter(BASE).match_end(BASE + 4.5).order_desc()
    with Client(upstream.url, idle_timeout=IDLE, batch_size=2) as client:
        got = [e.id for e in client.find(f)]
        batches = list(client.find(Filter(BASE).order_desc()).iter_batches())
    assert got == ["e5", "e3", "e1", "e0", "e6"]
    assert all(b.num_rows <= 2 for b in batches)
    ids = [i for b in batches for i in b.column("id").to_pylist()]
    assert ids == ["e4", "e2", "e5", "e3", "e1", "e0", "e6"]  # the tie at +5: the reverse of its arrival order
    assert all("desc" not in json.dumps(sent) for _, sent in upstream.filters)


def test_raw_messages_of_a_descending_find_on_a_plain_peer_are_refused(upstream):
    with Client(upstream.url, idle_timeout=IDLE) as client:
        with pytest.raises(UsageError, match="iter_batches"):
            client.find(Filter(BASE).order_desc()).iter_messages()


def test_a_plain_peer_is_sent_only_patterns_every_upstream_store_reads_at_least_as_widely(upstream):
    f = Filter(BASE).match_tag("sensor", "k[12]").match_content("5C").match_source("/dev/.*")
    with Client(upstream.url, idle_timeout=IDLE) as client:
        list(client.find(f))
        with client.receive(f):
            pass
    (_, find), (_, live) = upstream.filters
    assert find == {"start": BASE, "tags": ["sensor"], "content": "\\A(?s:.*?)(?:5C)(?s:.*)", "source": "/dev/.*"}
    assert live == {"start": int(BASE), "tags": ["sensor"], "content": "\\A(?s:.*?)(?:5C)(?s:.*)", "source": "/dev/.*"}
    # an RE2 filter's patterns may mean something else to Python's re: only literal tags go
    with Client(upstream.url, idle_timeout=IDLE) as client:
        list(client.find(EventFilter(start=BASE, tags=("sensor", "x+"), content="\\pL", engine="re2")))
    assert upstream.filters[-1] == ("find", {"start": BASE, "tags": ["sensor"]})


@pytest.mark.parametrize("error", ['{"error": "store is down"}', '{"error": true, "message": "store is down"}'])
@pytest.mark.parametrize("where", ["find_prefix", "find_suffix"])
def test_error_messages_anywhere_raise_server_error(upstream, error, where):
    tf.send(upstream.url, make_events(5))
    assert upstream.wait_for_events(5)
    setattr(upstream, where, [error])
    with pytest.raises(ServerError) as info:
        list(tf.find(upstream.url, Filter(1), idle_timeout=IDLE))
    assert info.value.text == "store is down"
    assert upstream.url in str(info.value)


def test_extra_ok_and_go_dialect_are_understood(upstream):
    tf.send(upstream.url, make_events(2))
    assert upstream.wait_for_events(2)
    upstream.find_prefix = ["ok", b"ok"]
    header = b"id:g\ntimestamp:1700000100.500000\nsource:s:1\ntags:a,b\n"
    upstream.find_suffix = [b"event:%d %d 3\n%sabc" % (len(header) + 3, len(header), header)]
    result = tf.find(upstream.url, Filter(1), idle_timeout=IDLE)
    got = list(result)
    assert result.skipped == 0
    assert [e.id for e in got] == ["e0", "e1", "g"]
    assert got[-1] == Event(id="g", timestamp=1700000100.5, source="s:1", tags=["a", "b"], content="abc")


def test_undecodable_messages_lenient_by_default(upstream):
    tf.send(upstream.url, make_events(3))
    assert upstream.wait_for_events(3)
    upstream.find_prefix = [b"garbage that is not an event", b"event: 99 1 1\nx"]
    result = tf.find(upstream.url, Filter(1), idle_timeout=IDLE)
    assert [e.id for e in result] == ["e0", "e1", "e2"]
    assert result.skipped == 2
    assert all(isinstance(e, DecodeError) for e in result.errors)
    assert "garbage" in result.errors[0].excerpt
    batches = tf.find(upstream.url, Filter(1), idle_timeout=IDLE)
    assert sum(b.num_rows for b in batches.iter_batches()) == 3 and batches.skipped == 2


def test_undecodable_messages_strict(upstream):
    tf.send(upstream.url, make_events(3))
    assert upstream.wait_for_events(3)
    upstream.find_suffix = [b"garbage"]
    with pytest.raises(DecodeError, match="preamble"):
        list(tf.find(upstream.url, Filter(1), idle_timeout=IDLE, strict=True))
    with Client(upstream.url, idle_timeout=IDLE) as client:
        with pytest.raises(DecodeError):
            list(client.find(Filter(1), strict=True).iter_batches())


def test_dropped_find_raises_instead_of_a_short_result(upstream):
    tf.send(upstream.url, make_events(50))
    assert upstream.wait_for_events(50)
    upstream.drop_find_after = 20
    result = tf.find(upstream.url, Filter(1), idle_timeout=5)
    got = []
    with pytest.raises(ConnectionClosed) as info:
        for event in result:
            got.append(event)
    assert len(got) <= 20
    assert info.value.code == 1006 and upstream.url in str(info.value)
    assert not result.complete
    with pytest.raises(ConnectionClosed):
        list(tf.find(upstream.url, Filter(1), idle_timeout=5).iter_batches())


def test_normal_close_completes_the_find_without_waiting(upstream):
    tf.send(upstream.url, make_events(4))
    assert upstream.wait_for_events(4)
    upstream.close_find = True
    result = tf.find(upstream.url, Filter(1), idle_timeout=60)
    assert len(list(result)) == 4
    assert result.complete and result.ended_by == "close"


def test_idle_timeout_none_waits_for_the_close(upstream):
    tf.send(upstream.url, make_events(2))
    assert upstream.wait_for_events(2)
    upstream.close_find = True
    result = tf.find(upstream.url, Filter(1), idle_timeout=None)
    assert len(list(result)) == 2 and result.ended_by == "close"


def test_find_rejected_by_the_server_raises_from_find(upstream):
    # a filter whose start the upstream collector refuses (reproduced with a raw dict)
    from theia_frames.client.transport import Connection as _Connection

    conn = _Connection.open(f"{upstream.url}/find", timeout=5, headers=[], offer=False)
    conn.send_text(json.dumps({"end": 5}))
    msgs = conn.read(5)
    conn.close()
    assert msgs == ['{"error": "Missing start timestamp"}']


def test_live_floors_the_start_and_drops_earlier_events(upstream):
    with Client(upstream.url) as client:
        stream = client.receive(EventFilter(start=BASE + 0.5, order="desc").match_tag("sensor"))
        assert isinstance(stream, LiveStream)
        kind, criteria = upstream.filters[-1]
        assert kind == "live" and criteria == {"start": int(BASE), "tags": ["sensor"]}
        client.send_many(
            [
                Event(id="early", timestamp=BASE + 0.2, tags=["sensor"]),
                Event(id="other", timestamp=BASE + 0.7, tags=["x"]),
                Event(id="good", timestamp=BASE + 0.7, tags=["sensor"]),
            ]
        )
        with stream:
            for event in stream:
                assert event.id == "good"
                break
        assert stream.closed and stream.count == 1
    assert wait_until(lambda: upstream.live_subscribers == 0)


def test_live_with_a_concurrent_sender_upstream(real_upstream):
    events = make_events(300, start=time.time())
    got = []
    with Client(real_upstream.url) as client:
        with client.receive(Filter(BASE)) as stream:
            sender = threading.Thread(target=client.send_many, args=(events,))
            sender.start()
            for event in stream:
                got.append(event)
                if len(got) == len(events):
                    break
            sender.join(10)
    assert got == events


def test_live_iter_batches_yields_what_has_arrived(upstream):
    with Client(upstream.url) as client, client.receive(Filter(1)) as stream:
        batches = stream.iter_batches()
        client.send(Event(id="one", timestamp=BASE))
        first = next(batches)
        assert first.num_rows == 1 and first.column("id").to_pylist() == ["one"]
        client.send_many(make_events(10))
        total = 0
        for batch in batches:
            total += batch.num_rows
            if total >= 10:
                break
        assert total == 10 and stream.count == 11
    assert stream.closed


def test_live_heartbeat_yields_empty_batches(upstream):
    with Client(upstream.url) as client, client.receive(Filter(1)) as stream:
        batches = stream.iter_batches(heartbeat=0.05)
        assert next(batches).num_rows == 0


def test_live_close_from_another_thread_stops_it_promptly(upstream):
    with Client(upstream.url) as client:
        stream = client.receive(Filter(1))
        done = threading.Event()
        got = []

        def consume():
            for event in stream:
                got.append(event)
            done.set()

        t = threading.Thread(target=consume)
        t.start()
        assert wait_until(lambda: upstream.live_subscribers == 1)
        stream.close()
        t.join(5)
        assert done.is_set() and got == []
    assert wait_until(lambda: upstream.live_subscribers == 0)


def test_live_without_close_from_the_iterating_thread(upstream):
    with Client(upstream.url) as client:
        with client.receive(Filter(1)) as stream:
            client.send_many(make_events(3))
            for event in stream:
                stream.close()
        assert stream.count == 1


def test_live_error_from_the_server_raises_from_receive(upstream, monkeypatch):
    # the upstream /live refuses a fractional start; our for_live() never sends one,
    # so provoke the error by replacing the filter message
    from theia_frames.protocol.streams import LiveState

    monkeypatch.setattr(LiveState, "filter_message", lambda self, negotiated: '{"start": 1.5}')
    client = Client(upstream.url)
    with pytest.raises(ServerError, match="invalid value for criteria start"):
        client.receive(Filter(1))
    client.close()


def test_server_normal_close_ends_live_iteration(upstream):
    with Client(upstream.url) as client:
        stream = client.receive(Filter(1))
        upstream.kick()
        assert list(stream) == []
        assert stream.complete


def test_event_connection_is_reused_and_reopened(upstream):
    with Client(upstream.url) as client:
        client.send(Event(id="a", timestamp=BASE))
        client.send(Event(id="b", timestamp=BASE))
        assert upstream.wait_for_events(2)
        assert len(upstream.headers) == 1
        upstream.kick()
        assert wait_until(lambda: client._event is not None and client._event._readable())
        client.send(Event(id="c", timestamp=BASE))
        assert upstream.wait_for_events(3)
        assert [e.id for e in upstream.events] == ["a", "b", "c"]
        assert len(upstream.headers) == 2


def test_send_after_the_server_is_gone_fails_loudly(refused_url):
    server = UpstreamLike().start()
    client = Client(server.url)
    client.send(Event())
    url = server.url
    server.stop()
    assert wait_until(lambda: client._event._readable())
    with pytest.raises(ConnectError, match=url):
        client.send(Event())
    client.close()


def test_send_is_thread_safe(upstream):
    with Client(upstream.url) as client:
        threads = [
            threading.Thread(target=client.send_many, args=(make_events(200, prefix=f"t{k}-"),)) for k in range(4)
        ] + [threading.Thread(target=lambda: [client.send(e) for e in make_events(50, prefix="single-")])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert upstream.wait_for_events(850)
    assert len({e.id for e in upstream.events}) == 850


def test_send_rejects_what_cannot_be_sent(upstream):
    with Client(upstream.url) as client:
        with pytest.raises(InvalidEventError):
            client.send(Event(source="a\nb"))
        with pytest.raises(InvalidEventError):
            client.send({"content": "x"})
        with pytest.raises(InvalidEventError):
            client.send_many([Event(), "not an event"])


def test_large_and_non_ascii_events_upstream(real_upstream):
    big = Event(id="big-ü", timestamp=BASE, source="/dev/ß:1", tags=["ü", "日本"], content="é" * 500_000)
    odd = Event(id="ид-1", timestamp=BASE + 1, source="/датчик/温度", tags=["тег", "🌡"], content="21,5 °C\nzweite Zeile 🙂")
    tf.send(real_upstream.url, [big, odd])
    assert real_upstream.wait_for_events(2)
    got = list(tf.find(real_upstream.url, Filter(1).match_content("é+|Zeile"), idle_timeout=IDLE))
    assert got == [big, odd]


def test_client_close_closes_open_streams(upstream):
    client = Client(upstream.url, idle_timeout=IDLE)
    stream = client.receive(Filter(1))
    result = client.find(Filter(1))
    client.close()
    assert stream.closed and result.closed and client.closed
    with pytest.raises(UsageError, match="closed"):
        client.send(Event())
    with pytest.raises(UsageError):
        client.find(Filter(1))
    client.close()


def test_module_helpers(real_upstream):
    assert tf.send(real_upstream.url, Event(id="one", timestamp=BASE)) == 1
    assert tf.send(real_upstream.url, make_events(3)) == 3
    assert real_upstream.wait_for_events(4)
    result = tf.find(real_upstream.url, Filter(BASE), idle_timeout=IDLE)
    assert [e.id for e in result][:2] == ["one", "e0"]
    assert result.closed and result._client.closed
    client = tf.connect(real_upstream.url)
    assert isinstance(client, Client) and client._event is not None
    client.close()
    with pytest.raises(UsageError, match="unexpected"):
        tf.find(real_upstream.url, Filter(1), nonsense=1)


def test_find_accepts_a_dict_filter(real_upstream):
    tf.send(real_upstream.url, make_events(4))
    assert real_upstream.wait_for_events(4)
    got = list(tf.find(real_upstream.url, {"start": BASE, "tags": ["k1"]}, idle_timeout=IDLE))
    assert [e.id for e in got] == ["e1", "e3"]
    with pytest.raises(UsageError):
        tf.find(real_upstream.url, "start=1")


def test_send_many_arrow_data_without_the_extension(upstream):
    events = make_events(7)
    tf.send(upstream.url, events_to_batch(events))
    assert upstream.wait_for_events(7)
    assert upstream.events == events


def test_result_repr_and_context_manager(upstream):
    with tf.find(upstream.url, Filter(1), idle_timeout=IDLE) as result:
        assert "FindResult" in repr(result) and "open" in repr(result)
    assert result.closed
    with pytest.raises(UsageError, match="closed"):
        list(result)



# --------------------------------------------------------------------------- edge cases, scripted (MockServer)


def test_arrow_batches_pass_through_and_are_time_checked():
    from theia_frames.testing.mock import MockServer

    events = make_events(10)
    with MockServer(batch=True) as mock:
        mock.on_find([events_to_batch(events[:6]), encode(events[6]), events_to_batch(events[7:])])
        with Client(mock.url) as client:
            result = client.find(Filter(BASE + 0.0015).match_end(BASE + 0.0085))
            assert result.batched
            batches = list(result.iter_batches())
    ids = [i for b in batches for i in b.column("id").to_pylist()]
    assert ids == [f"e{i}" for i in range(2, 9)]
    assert result.complete and result.ended_by == "close"


def test_a_broken_arrow_batch_is_a_per_message_error():
    from theia_frames.testing.mock import MockServer

    with MockServer(batch=True) as mock:
        mock.on_find([b"\xff\xff\xff\xff broken", encode(Event(id="ok", timestamp=BASE))])
        with Client(mock.url) as client:
            result = client.find(Filter(1))
            assert [e.id for e in result] == ["ok"]
            assert result.skipped == 1 and "Arrow" in str(result.errors[0])


def test_silence_on_a_negotiated_find_is_a_timeout_not_the_end():
    from theia_frames.testing.mock import MockServer

    with MockServer(batch=True) as mock:
        mock.respond("ok", encode(Event(timestamp=BASE)), path="/find").stall(path="/find")
        with Client(mock.url, timeout=0.3, idle_timeout=0.1) as client:
            result = client.find(Filter(1))
            with pytest.raises(TheiaTimeoutError, match="/find"):
                list(result)


def test_going_away_mid_find_raises():
    from theia_frames.testing.mock import MockServer

    with MockServer() as mock:
        mock.respond("ok", *make_events(3), path="/find").close_with(1001, "server stop", path="/find")
        with pytest.raises(ConnectionClosed, match="1001") as info:
            list(tf.find(mock.url, Filter(1)))
        assert info.value.code == 1001


def test_subscriber_too_slow():
    from theia_frames.exceptions import SubscriberTooSlow
    from theia_frames.testing.mock import MockServer

    with MockServer() as mock:
        mock.respond("ok", path="/live").close_with(1013, "subscriber too slow", path="/live")
        with Client(mock.url) as client:
            with pytest.raises(SubscriberTooSlow):
                list(client.receive(Filter(1)))


def test_no_answer_to_the_filter_is_a_timeout():
    from theia_frames.testing.mock import MockServer

    with MockServer() as mock:
        mock.stall(path="/find")
        with pytest.raises(TheiaTimeoutError, match="did not answer"):
            tf.find(mock.url, Filter(1), timeout=0.2)


# --------------------------------------------------------------------------- against the embedded collector


def wait_for_count(url, n, *, batch=True, timeout=30.0):
    """Poll with /find until the collector holds ``n`` events (sending is not acknowledged)."""

    def count():
        with Client(url, batch=batch) as client:
            return sum(b.num_rows for b in client.find(Filter(1)).iter_batches())

    assert wait_until(lambda: count() >= n, timeout=timeout, interval=0.05), f"the collector did not store {n} events"


@pytest.fixture(params=[True, False], ids=["batched", "plain"])
def batch(request):
    return request.param


def test_round_trip_of_10000_events_exactly(collector, batch):
    events = make_events(10_000)
    events[7] = Event(id="ü-7", timestamp=BASE + 0.007, source="/dev/ß:1", tags=[], content="")
    with Client(collector.url, batch=batch) as client:
        assert client.send_many(events) == 10_000
        assert client.batched is batch
        wait_for_count(collector.url, 10_000, batch=batch)
        result = client.find(Filter(BASE))
        got = list(result)
        assert result.batched is batch and result.complete and result.ended_by == "close"
        assert got == events
        table = __import__("pyarrow").Table.from_batches(list(client.find(Filter(BASE)).iter_batches()))
    assert table.num_rows == 10_000
    assert table.column("id").to_pylist() == [e.id for e in events]
    assert table.column("timestamp").to_pylist() == [e.timestamp for e in events]
    assert table.column("tags").to_pylist() == [e.tags for e in events]


def test_round_trip_through_the_other_mode(collector):
    # sent batched, found plain, and the other way round: the same events
    a, b = make_events(300, prefix="a"), make_events(300, start=BASE + 10, prefix="b")
    with Client(collector.url, batch=True) as client:
        client.send_many(a)
    with Client(collector.url, batch=False) as client:
        client.send_many(b)
    wait_for_count(collector.url, 600)
    assert list(tf.find(collector.url, Filter(1), batch=False)) == a + b
    assert list(tf.find(collector.url, Filter(1), batch=True)) == a + b


def test_filters_order_and_local_recheck_with_the_collector(collector, batch):
    events = make_events(200)
    tf.send(collector.url, events, batch=batch)
    wait_for_count(collector.url, 200)
    f = Filter(BASE + 0.0505).match_end(BASE + 0.150).match_tag("k1").match_content(r"^\d*[37]\.5C$").order_desc()
    expected = [e for e in reversed(events) if f.matches(e)]
    assert expected
    assert list(tf.find(collector.url, f, batch=batch)) == expected
    batches = list(tf.find(collector.url, f, batch=batch).iter_batches())
    assert [i for b in batches for i in b.column("id").to_pylist()] == [e.id for e in expected]
    assert list(tf.find(collector.url, Filter(BASE + 1000), batch=batch)) == []


def test_large_content_and_non_ascii_everywhere(collector, batch):
    megabyte = Event(id="mb", timestamp=BASE, source="/dev/big", tags=["big"], content="x" * 1_000_000)
    wide = Event(id="wide", timestamp=BASE + 1, source="/dev/wide", tags=["ü"], content="ü🌡" * 150_000)
    odd = Event(
        id="ид-日本-🙂",
        timestamp=BASE + 2,
        source="/датчик/温度:ß",
        tags=["тег", "🌡", "café"],
        content="21,5 °C\nzweite Zeile 🙂\u2028event: 1 2 3",
    )
    with Client(collector.url, batch=batch) as client:
        client.send(megabyte)
        client.send_many([wide, odd])
        wait_for_count(collector.url, 3)
        assert list(client.find(Filter(1))) == [megabyte, wide, odd]
        assert list(client.find(Filter(1).match_tag("🌡").match_content("Zeile 🙂"))) == [odd]
        assert list(client.find(Filter(1).match_tag("ü"))) == [wide]


def test_live_with_a_concurrent_sender(collector, batch):
    events = make_events(2000, start=time.time())
    got = []
    with Client(collector.url, batch=batch) as client:
        with client.receive(Filter(BASE).match_tag("sensor")) as stream:
            sender = threading.Thread(target=lambda: [client.send_many(events[i : i + 100]) for i in range(0, 2000, 100)])
            sender.start()
            for event in stream:
                got.append(event)
                if len(got) == len(events):
                    break
            sender.join(10)
    assert got == events


def test_live_batches_with_a_concurrent_sender(collector, batch):
    events = make_events(1000, start=time.time())
    rows = 0
    with Client(collector.url, batch=batch) as client, client.receive(Filter(1)) as stream:
        sender = threading.Thread(target=client.send_many, args=(events,))
        sender.start()
        ids = []
        for b in stream.iter_batches():
            assert b.schema.equals(event_schema())
            ids += b.column("id").to_pylist()
            rows += b.num_rows
            if rows >= len(events):
                break
        sender.join(10)
    assert ids == [e.id for e in events]


def test_live_drops_events_before_a_fractional_start(collector, batch):
    now = time.time()
    start = int(now) + 0.5
    with Client(collector.url, batch=batch) as client:
        with client.receive(Filter(start)) as stream:
            client.send_many(
                [
                    Event(id="before", timestamp=int(now) + 0.2),
                    Event(id="after", timestamp=int(now) + 0.7),
                ]
            )
            assert next(iter(stream)).id == "after"


def test_live_close_from_another_thread_with_the_collector(collector):
    with Client(collector.url) as client:
        stream = client.receive(Filter(1))
        t = threading.Thread(target=lambda: list(stream))
        t.start()
        stream.close()
        t.join(5)
        assert not t.is_alive()


def test_collector_stopped_in_the_middle_of_a_find_raises(batch):
    from theia_frames.server.collector import serve

    n = 200_000
    # small batches, and a reader that waits for the stop: the find is still
    # being sent (held up by the unread socket) when the collector stops,
    # whatever the loopback buffers can hold
    collector = serve(db=":memory:", port=0, batch_size=1_000)
    try:
        with Client(collector.url) as client:
            client.send_many(make_events(n))
        wait_for_count(collector.url, n)
        result = tf.find(collector.url, Filter(1), batch=batch)
        batches = result.iter_batches()
        got = next(batches).num_rows
        assert got < n
        stopper = threading.Thread(target=collector.stop)
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive()
        with pytest.raises(ConnectionClosed) as info:
            for b in batches:
                got += b.num_rows
        assert got < n and not result.complete
        assert info.value.code != 1000 and collector.url in str(info.value)
    finally:
        collector.stop()


def test_bad_event_reported_on_the_next_send(collector):
    with Client(collector.url, batch=False) as client:
        client.send(Event(id="fine", timestamp=BASE))
        client._event.send_binary(b"this is not an event")
        with pytest.raises(ServerError, match="rejected"):
            assert wait_until(lambda: client._event._readable())
            client.send(Event(id="after", timestamp=BASE))
        client.send(Event(id="later", timestamp=BASE + 1))
    wait_for_count(collector.url, 2)
    assert [e.id for e in tf.find(collector.url, Filter(1))] == ["fine", "later"]


def test_event_connection_reopened_after_the_collector_restarts():
    from theia_frames.server.collector import serve

    first = serve(db=":memory:", port=0)
    port = first.port
    with Client(first.url) as client:
        client.send(Event(id="one", timestamp=BASE))
        wait_for_count(first.url, 1)
        first.stop()
        assert wait_until(lambda: client._event is None or client._event._readable())
        try:
            second = serve(db=":memory:", port=port)
        except TheiaError:
            pytest.skip("the port was taken in between")
        with second:
            client.send(Event(id="two", timestamp=BASE))
            wait_for_count(second.url, 1)
            assert [e.id for e in tf.find(second.url, Filter(1))] == ["two"]


def test_module_helpers_with_the_collector(collector):
    assert tf.send(collector.url, make_events(5)) == 5
    client = tf.connect(collector.url)
    assert client.batched is True
    client.send(Event(id="last", timestamp=BASE + 1))
    client.close()
    wait_for_count(collector.url, 6)
    result = tf.find(collector.url, Filter(BASE))
    assert [e.id for e in result][-1] == "last" and result.complete


def test_batched_send_uses_arrow_for_many_and_plain_for_a_few():
    from theia_frames.protocol.arrow import is_arrow_message
    from theia_frames.testing.mock import MockServer

    few, many = make_events(5, prefix="f"), make_events(500, prefix="m")
    with MockServer(batch=True) as mock:
        with Client(mock.url) as client:
            client.send_many(few)
            client.send_many(many)
            assert client.batched
        mock.wait_requests(6)
        kinds = [is_arrow_message(r.message) for r in mock.received]
        assert kinds == [False] * 5 + [True]
        assert mock.events("/event") == few + many


def test_subscriber_too_slow_error_message():
    from theia_frames.exceptions import SubscriberTooSlow
    from theia_frames.testing.mock import MockServer

    with MockServer() as mock:
        mock.respond("ok", {"error": "subscriber too slow: 10000 events waiting"}, path="/live")
        with Client(mock.url) as client:
            with pytest.raises(SubscriberTooSlow, match="10000 events waiting") as info:
                list(client.receive(Filter(1)))
    assert isinstance(info.value, ConnectionClosed) and info.value.code == 1013


def test_too_slow_with_the_collector():
    from theia_frames.server.collector import serve
    from theia_frames.exceptions import SubscriberTooSlow

    with serve(db=":memory:", port=0, live_queue=10) as collector:
        with Client(collector.url, batch=False) as client:
            stream = client.receive(Filter(1))
            # the subscriber does not read while far more than fits in the socket
            # buffers is published (100 MB: loopback receive buffers grow to 32 MiB
            # on an idle machine): the collector's queue for it overflows
            for i in range(100):
                client.send_many([Event(id=f"b{i}-{k}", content="x" * 1000) for k in range(1000)])
            with pytest.raises(SubscriberTooSlow):
                for _ in stream:
                    pass
