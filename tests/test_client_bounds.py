"""What a hostile or slow server can make the client do: silence means no byte at all,
the handshake has a deadline, and messages have a size and a fragment bound.

The faults are shown by an upstream-like server (a trickled event) and by a
raw socket peer (``raw_peer.py``) where no real server can be made to show them.
"""

from __future__ import annotations

import struct
import time
import types

import pytest
from raw_peer import OP_BINARY, OP_CONT, OP_TEXT, RawConn, RawPeer, server_frame
from upstream_like import UpstreamLike
from waiting import poll_until

import theia_frames as tf
from theia_frames.protocol.arrow import SUBPROTOCOL, batch_to_ipc, events_to_batch
from theia_frames.client import DEFAULT_MAX_FRAGMENTS, DEFAULT_MAX_MESSAGE_SIZE, Client
from theia_frames.client.transport import DRAIN_MESSAGES as _DRAIN_MESSAGES
from theia_frames.client.transport import RECV_CHUNK as _RECV_CHUNK
from theia_frames.client.transport import Connection as _Connection
from theia_frames.protocol.codec import encode
from theia_frames.event import Event
from theia_frames.exceptions import ProtocolError, TheiaTimeoutError, UsageError
from theia_frames.filter import Filter

T0 = 1_700_000_000.0


def _events(n, *, at=T0, content="x"):
    return [Event(id=f"e{i}", timestamp=at + i, source="/dev/s", content=content) for i in range(n)]


# --------------------------------------------------------------------------- 10: silence is no byte at all


def test_a_large_event_trickled_slower_than_the_idle_timeout_is_not_the_end_of_the_find():
    # 3 events, then a large one written over 1.6 s in 20 pieces, one more, a normal close:
    # with idle_timeout=1 the bytes never stop for long, so the find must hold all five.
    events = _events(3) + _events(1, at=T0 + 3, content="y" * 200_000) + _events(1, at=T0 + 4)
    with UpstreamLike() as server:
        server.events = list(events)
        server.close_find = True
        server.trickle_find = (3, 1.6)
        with Client(server.url, idle_timeout=1.0) as client:
            result = client.find(Filter(T0))
            got = list(result)
    assert [e.id for e in got] == [e.id for e in events]
    assert got[3].content == events[3].content
    assert result.complete and result.ended_by == "close"


def _ok_then_trickled_batch(conn: RawConn) -> None:
    conn.recv_message()
    conn.send_frame(OP_TEXT, b"ok")
    message = batch_to_ipc(events_to_batch(_events(50, content="z" * 2000)))
    conn.trickle(server_frame(OP_BINARY, message), 1.6)
    conn.close(1000)


def test_timeout_while_reading_counts_from_the_last_byte_on_a_batched_connection():
    # a server that negotiated the extension is taken to always close: there the
    # reading `timeout` applies, and it too means "no byte for that long"
    with RawPeer(_ok_then_trickled_batch, subprotocol=SUBPROTOCOL) as peer:
        with Client(peer.url, timeout=1.0) as client:
            result = client.find(Filter(T0))
            assert result.batched
            got = list(result)
    assert len(got) == 50 and result.complete and result.ended_by == "close"


# --------------------------------------------------------------------------- 11: the handshake has a deadline


def test_a_server_that_sends_header_lines_forever_times_out_within_the_timeout():
    def endless_headers(conn: RawConn) -> None:
        conn.send_raw(b"HTTP/1.1 101 Switching Protocols\r\n")
        for i in range(600):  # 30 s at most, stopped by the test long before
            if conn.sock.fileno() < 0:
                return
            conn.send_raw(f"X-Filler-{i}: {'a' * 20}\r\n".encode())
            time.sleep(0.05)

    with RawPeer(endless_headers, handshake=False) as peer:
        began = time.monotonic()
        with pytest.raises(TheiaTimeoutError, match="handshake") as info:
            tf.connect(peer.url, timeout=1.0)
        took = time.monotonic() - began
    assert isinstance(info.value, TimeoutError)
    assert took < 15, f"the handshake was held {took:.1f} s with timeout=1"  # a hang detector only


def test_a_live_stream_opened_against_a_slow_handshake_also_times_out():
    def slow_headers(conn: RawConn) -> None:
        conn.send_raw(b"HTTP/1.1 101 Switching Protocols\r\n")
        for _ in range(600):
            conn.send_raw(b"X-Slow: 1\r\n")
            time.sleep(0.05)

    with RawPeer(slow_headers, handshake=False) as peer:
        began = time.monotonic()
        with pytest.raises(TheiaTimeoutError):
            Client(peer.url, timeout=0.5).receive(Filter(T0))
        assert time.monotonic() - began < 15


# --------------------------------------------------------------------------- 12: message size and fragments


def _ok_then(*frames: bytes, hold: float = 10.0):
    """A /find peer: ``ok``, the given raw bytes, then the connection held open (no close)."""

    def script(conn: RawConn) -> None:
        conn.recv_message()
        conn.send_frame(OP_TEXT, b"ok")
        for f in frames:
            conn.send_raw(f)
        conn.sock.settimeout(hold)
        try:
            while True:
                conn.recv_frame()  # until the client closes
        except (OSError, ConnectionError):
            pass

    return script


def test_bounds_are_documented_defaults():
    client = Client("ws://127.0.0.1:1")
    assert client.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 256 * 1024 * 1024
    assert client.max_fragments == DEFAULT_MAX_FRAGMENTS == 10_000
    assert "max_message_size" in Client.__doc__ and "max_fragments" in Client.__doc__
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(UsageError, match="max_message_size"):
            Client("ws://127.0.0.1:1", max_message_size=bad)
        with pytest.raises(UsageError, match="max_fragments"):
            Client("ws://127.0.0.1:1", max_fragments=bad)


@pytest.mark.parametrize("batch", [False, True])
def test_a_frame_announcing_more_than_the_bound_is_refused_before_its_payload_arrives(batch):
    # the header announces 300 MiB; only 64 KiB follow, and the connection stays open:
    # the client must refuse on the header, not wait for (and buffer) the payload
    announced = server_frame(OP_BINARY, b"\xff" * 65536, length=300 * 1024 * 1024)
    with RawPeer(_ok_then(announced), subprotocol=SUBPROTOCOL if batch else None) as peer:
        with Client(peer.url, idle_timeout=5.0, timeout=5.0) as client:
            began = time.monotonic()
            with pytest.raises(ProtocolError, match=f"more than {DEFAULT_MAX_MESSAGE_SIZE} bytes.*max_message_size"):
                list(client.find(Filter(T0)))
            assert time.monotonic() - began < 4  # refused on the header, not after a timeout
        poll_until(lambda: any(op == 8 for op, _ in peer.conns[0].received), timeout=5)
        closes = [data for op, data in peer.conns[0].received if op == 8]
        assert closes and struct.unpack("!H", closes[0][:2])[0] == 1009


def test_max_message_size_can_be_raised_and_counts_all_fragments():
    big = encode(_events(1, content="b" * 300_000)[0])
    halves = server_frame(OP_BINARY, big[:150_000], fin=False) + server_frame(OP_CONT, big[150_000:])
    with RawPeer(_ok_then(halves)) as peer:
        with Client(peer.url, idle_timeout=0.5, max_message_size=200_000) as client:
            with pytest.raises(ProtocolError, match="more than 200000 bytes"):
                list(client.find(Filter(T0)))
        with Client(peer.url, idle_timeout=0.5, max_message_size=400_000) as client:
            got = list(client.find(Filter(T0)))
    assert [len(e.content) for e in got] == [300_000]


def test_a_message_in_too_many_fragments_is_refused():
    raw = encode(_events(1)[0])
    frames = [server_frame(OP_BINARY, raw[:1], fin=False)]
    frames += [server_frame(OP_CONT, b"", fin=False) for _ in range(DEFAULT_MAX_FRAGMENTS)]
    frames.append(server_frame(OP_CONT, raw[1:]))
    with RawPeer(_ok_then(b"".join(frames))) as peer:
        with Client(peer.url, idle_timeout=2.0) as client:
            with pytest.raises(ProtocolError, match=f"more than {DEFAULT_MAX_FRAGMENTS} fragments.*max_fragments"):
                list(client.find(Filter(T0)))
        # raised, the same message is read whole
        with Client(peer.url, idle_timeout=0.5, max_fragments=DEFAULT_MAX_FRAGMENTS + 2) as client:
            assert [e.id for e in client.find(Filter(T0))] == ["e0"]


def test_a_control_frame_over_125_bytes_is_a_protocol_error():
    with RawPeer(_ok_then(server_frame(9, b"p" * 200))) as peer:
        with Client(peer.url, idle_timeout=2.0) as client:
            with pytest.raises(ProtocolError, match="control frame"):
                list(client.find(Filter(T0)))


def test_a_frame_of_an_unknown_opcode_is_refused_on_its_header():
    with RawPeer(_ok_then(server_frame(3, b"", length=300 * 1024 * 1024))) as peer:
        with Client(peer.url, idle_timeout=5.0) as client:
            began = time.monotonic()
            with pytest.raises(ProtocolError, match="unknown opcode 3"):
                list(client.find(Filter(T0)))
            assert time.monotonic() - began < 4  # not after waiting for 300 MiB


class _Flood:
    """A socket that always has more to read: ``data``, a chunk per call, then end of stream."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def fileno(self) -> int:
        return -1  # select() refuses it: the connection takes that as "readable"

    def settimeout(self, timeout) -> None:
        pass

    def recv_into(self, buf) -> int:
        n = min(len(buf), len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


def test_one_read_takes_a_bounded_number_of_tiny_messages():
    flood = _Flood(server_frame(OP_BINARY, b"ab") * 500_000)  # 2 MB, well within the bytes drained at once
    conn = _Connection(types.SimpleNamespace(sock=flood), "ws://test/find", False, 5.0)
    first = conn.read(1.0)
    assert len(first) <= _DRAIN_MESSAGES + _RECV_CHUNK // 4
    total = len(first)
    while True:
        more = conn.read(1.0)
        if not more:
            break
        total += len(more)
    assert total == 500_000  # nothing is lost: the rest comes with the next reads


def test_the_bounds_hold_on_the_event_connection_too():
    def script(conn: RawConn) -> None:
        conn.send_raw(server_frame(OP_TEXT, b"", length=1 << 40))
        conn.sock.settimeout(5)
        try:
            while True:
                conn.recv_frame()
        except (OSError, ConnectionError):
            pass

    with RawPeer(script) as peer:
        with Client(peer.url) as client:
            client.send(Event(id="a", timestamp=T0))

            def closed_after_another_send() -> bool:
                try:
                    client.send(Event(id="b", timestamp=T0))
                except tf.TheiaError:
                    pass
                return any(op == 8 for op, _ in peer.conns[0].received)

            poll_until(closed_after_another_send, timeout=5, interval=0.05)
    codes = [struct.unpack("!H", data[:2])[0] for op, data in peer.conns[0].received if op == 8]
    assert codes[:1] == [1009]


def _compressed(events, codec="zstd"):
    import pyarrow as pa

    batch = events_to_batch(events)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
        writer.write(batch)
    return sink.getvalue().to_pybytes()


def test_a_compressed_arrow_message_that_decodes_past_the_bound_is_refused_before_decompressing():
    from theia_frames.exceptions import DecodeError
    from theia_frames.testing.mock import MockServer

    bomb = _compressed([Event(id="bomb", timestamp=1.0, content="x" * (8 << 20))])
    assert len(bomb) < 1 << 16  # small on the wire, 8 MiB decoded
    good = Event(id="good", timestamp=2.0, content="fine")
    with MockServer(batch=True) as mock:
        mock.on_find([bomb, good])
        with tf.Client(mock.url, max_message_size=1 << 20) as client:
            result = client.find(Filter(1))
            assert [e.id for e in result] == ["good"]
            assert result.skipped == 1 and "decode" in str(result.errors[0]).lower()
    with MockServer(batch=True) as mock:
        mock.on_find([bomb])
        with tf.Client(mock.url, max_message_size=1 << 20, strict=True) as client:
            with pytest.raises(DecodeError):
                list(client.find(Filter(1)))
