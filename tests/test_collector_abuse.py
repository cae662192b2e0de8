"""One client must not hurt the collector or anyone else: each limit, scaled down.

Real collectors on free loopback ports, real sockets. Where a fault the real
store cannot be made to show on demand is needed (a full disk, an event too
large for SQLite, a filter that takes long), it is made with SQLite's own
limits (``max_page_count``, ``SQLITE_LIMIT_LENGTH``) or by holding the
store's write lock, never with a fake collector. The full-size attacks, with
memory and latency figures, are ``scripts/attack_*.py`` (see RELIABILITY.md).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pytest
import websocket

from theia_frames import Client, Event, EventFilter, serve
from theia_frames.protocol.arrow import SUBPROTOCOL, batch_to_ipc, events_to_batch, ipc_to_batches
from theia_frames.protocol.codec import decode, encode
from theia_frames.server.collector import Collector
from theia_frames.exceptions import DecodeError, ServerError, StoreError, UsageError
from theia_frames.server.query import Results
from theia_frames.server.store import EventStore
from waiting import poll_until, wait_until

OFFER = [f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"]
T0 = 1_700_000_000.0
CLOSE = websocket.ABNF.OPCODE_CLOSE


def sample(n: int, *, prefix: str = "e", size: int = 10, start: float = T0) -> list[Event]:
    return [Event(id=f"{prefix}{i}", timestamp=start + i, source="/s", tags=["t"], content="x" * size) for i in range(n)]


def compressed(events: list[Event], codec: str = "zstd") -> bytes:
    """The events as one Arrow message with compressed buffers (a small message that decodes large)."""
    batch = events_to_batch(events)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
        writer.write(batch)
    return sink.getvalue().to_pybytes()


@contextmanager
def opened(url: str, *, batched: bool = False, header: list[str] | None = None, **kw: Any) -> Iterator[websocket.WebSocket]:
    ws = websocket.create_connection(url, timeout=10, header=(OFFER if batched else []) + (header or []), **kw)
    try:
        yield ws
    finally:
        ws.close()
        ws.shutdown()


def read_to_close(ws: websocket.WebSocket) -> tuple[list[bytes | str], int | None]:
    messages: list[bytes | str] = []
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == CLOSE:
            return messages, int.from_bytes(data[:2], "big") if len(data) >= 2 else None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            messages.append(data.decode())
        elif opcode == websocket.ABNF.OPCODE_BINARY:
            messages.append(data)


def refused(url: str, **kw: Any) -> websocket.WebSocketBadStatusException:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(url, timeout=10, **kw).close()
    return info.value


def flush(ws: websocket.WebSocket, token: int) -> dict[str, Any]:
    """Ask a batched /event connection for a flush; its answer (error messages before it skipped)."""
    ws.send(json.dumps({"flush": token}))
    while True:
        answer = json.loads(ws.recv())
        if answer.get("flushed") == token or str(answer.get("error", "")).startswith(f"flush {token}:"):
            return answer


@contextmanager
def writer_held(collector: Collector) -> Iterator[None]:
    """Keep the collector's writer from committing (it waits for the store's write lock)."""
    assert collector.store is not None
    lock = collector.store._lock  # the store's own write lock: the writer waits for it as for a slow disk
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- 1. decompression bombs


def test_a_compressed_batch_is_measured_before_it_is_decompressed():
    events = [Event(id="bomb", timestamp=T0, content="x" * (8 << 20))]
    for codec in ("zstd", "lz4"):
        bomb = compressed(events, codec)
        assert len(bomb) < 1 << 20  # small on the wire
        with pytest.raises(DecodeError, match="decodes to more than 1048576 bytes"):
            ipc_to_batches(bomb, max_decoded=1 << 20)
        assert ipc_to_batches(bomb, max_decoded=None)[0].num_rows == 1


def test_a_decompression_bomb_on_event_is_refused_and_the_connection_carries_on():
    with serve(db=":memory:", port=0, max_decoded_size=1 << 20) as collector:
        with opened(collector.url + "/event", batched=True) as ws:
            ws.send_binary(compressed([Event(id="bomb", timestamp=T0, content="x" * (8 << 20))]))
            error = json.loads(ws.recv())["error"]
            assert "decodes to more than 1048576 bytes" in error
            ws.send_binary(compressed(sample(3)))  # small and compressed: fine
            assert flush(ws, 1) == {"flushed": 1, "stored": 3, "rejected": 1}
        assert collector.store is not None and collector.store.count() == 3


def test_events_larger_than_the_limit_per_event_are_left_out_and_named():
    with serve(db=":memory:", port=0, max_event_size=10_000) as collector:
        with opened(collector.url + "/event", batched=True) as ws:
            ws.send_binary(batch_to_ipc(events_to_batch(sample(2) + [Event(id="big", timestamp=T0, content="x" * 20_000)])))
            error = json.loads(ws.recv())["error"]
            assert "1 event(s) of a batch not stored: larger than 10000 bytes" in error and "'big'" in error
            ws.send_binary(encode(Event(id="plain-big", timestamp=T0 + 5, content="y" * 20_000)))
            assert "larger than 10000 bytes" in json.loads(ws.recv())["error"]
            assert flush(ws, 1)["stored"] == 2


# --------------------------------------------------------------------------- 2. one bad message fails alone


def test_a_message_the_store_refuses_fails_alone_in_its_group_commit():
    with serve(db=":memory:", port=0) as collector:
        assert collector.store is not None
        # SQLite refuses a chunk longer than this: a message holding a large event cannot be stored.
        collector.store._db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 200_000)
        with opened(collector.url + "/event", batched=True) as bad, opened(collector.url + "/event", batched=True) as bystander:
            flush(bad, 0)
            flush(bystander, 0)
            writer = collector._writer
            assert writer is not None
            before = writer.received
            with writer_held(collector):
                bad.send_binary(batch_to_ipc(events_to_batch(sample(1, prefix="first"))))
                # The writer takes that one and waits; the next two arrive while it waits: one commit.
                wait_until(lambda: writer.received > before and not writer._queue, what="the writer to wait")
                # (random text: stored chunks are compressed)
                huge = base64.b64encode(os.urandom(300_000)).decode()
                bad.send_binary(batch_to_ipc(events_to_batch([Event(id="huge", timestamp=T0, content=huge)])))
                bystander.send_binary(batch_to_ipc(events_to_batch(sample(50, prefix="ok"))))
                wait_until(lambda: len(collector._writer._queue) == 2, what="both messages to arrive")
            assert flush(bystander, 1) == {"flushed": 1, "stored": 50, "rejected": 0}
            answer = flush(bad, 1)
            assert answer["error"].startswith("flush 1: 1 event(s) not stored:") and "too big" in answer["error"]
        ids = {e.id for cols in collector.store.query() for e in cols.events()}
        assert ids == {"first0"} | {f"ok{i}" for i in range(50)}


# --------------------------------------------------------------------------- 3. a failed commit is not forever


def test_after_a_full_disk_confirmations_are_true_both_ways(tmp_path):
    with serve(db=tmp_path / "full.db", port=0) as collector:
        store = collector.store
        assert store is not None
        with Client(collector.url) as client:
            client.send_many(sample(5, prefix="before"), wait=True)
            with store._lock:  # the writer's connection: a disk with no room left
                pages = store._db.execute("PRAGMA page_count").fetchone()[0]
                store._db.execute(f"PRAGMA max_page_count = {pages}")
            with pytest.raises(ServerError, match="disk is full"):
                client.send_many(sample(200, prefix="lost", size=1000), wait=True)
            with pytest.raises(StoreError, match="could not store 200 event"):
                collector.flush()
            collector.flush()  # nothing failed since: returns
            with store._lock:  # room again
                store._db.execute("PRAGMA max_page_count = 1073741823")
            for round in range(3):
                client.send_many(sample(10, prefix=f"after{round}-"), wait=True)  # confirmed, and true
            collector.flush()
        ids = {e.id for cols in store.query() for e in cols.events()}
        assert not any(i.startswith("lost") for i in ids)
        assert {f"after{r}-{i}" for r in range(3) for i in range(10)} <= ids


# --------------------------------------------------------------------------- 4, 5. filters: bounded, off the loop


@pytest.mark.parametrize("path", ["/find", "/live"])
def test_filters_over_the_pattern_limits_are_refused_naming_the_limit(path):
    with serve(db=":memory:", port=0, max_patterns=4, max_pattern_size=100) as collector:
        cases = [
            ({"start": 1, "tags": ["a", "b", "c", "d", "e"]}, "filter has 5 patterns; this collector accepts at most 4"),
            ({"start": 1, "tags": ["a", "b"], "content": "c", "source": "s", "id": "i"}, "filter has 5 patterns"),
            ({"start": 1, "content": "x" * 101}, "content pattern of 101 bytes is longer than this collector accepts (100 bytes)"),
            ({"start": 1, "tags": ["é" * 51]}, "tag pattern of 102 bytes"),
        ]
        for flt, problem in cases:
            with opened(collector.url + path) as ws:
                ws.send(json.dumps(flt))
                messages, code = read_to_close(ws)
                assert code == 1008 and len(messages) == 1 and problem in json.loads(messages[0])["error"]
                assert "x" * 101 not in messages[0]
        with opened(collector.url + path) as ws:  # a very long filter text is refused before it is parsed
            ws.send(json.dumps({"start": 1, "content": "x" * 1_000_000}))
            assert "longer than this collector accepts" in json.loads(read_to_close(ws)[0][0])["error"]
        with opened(collector.url + path) as ws:
            ws.send(json.dumps({"start": 1, "tags": ["a", "b", "c"], "content": "x" * 100}))
            assert ws.recv() == "ok"


class _HeldFilter(EventFilter):
    """A filter whose compiling or matching waits where a test says: the collector's
    ``filter_type`` seam. ``compile_hold[content]`` / ``match_hold[content]`` is an
    (entered, release) pair of events, or a number of seconds to take."""

    compile_hold: dict[str, Any] = {}
    match_hold: dict[str, Any] = {}

    @staticmethod
    def _hold(how: Any) -> None:
        if isinstance(how, tuple):
            entered, release = how
            entered.set()
            release.wait(30)
        elif how is not None:
            time.sleep(how)

    @classmethod
    def from_dict(cls, obj: Any, **kw: Any) -> EventFilter:
        if isinstance(obj, dict):
            cls._hold(cls.compile_hold.get(obj.get("content")))
        return super().from_dict(obj, **kw)

    def mask_batch(self, batch: Any) -> Any:
        self._hold(self.match_hold.get(self.content))
        return super().mask_batch(batch)


def held_filter(*, compiling: dict[str, Any] | None = None, matching: dict[str, Any] | None = None) -> type[EventFilter]:
    """A :class:`_HeldFilter` class of its own, holding as told."""
    return type("Held", (_HeldFilter,), {"compile_hold": compiling or {}, "match_hold": matching or {}})


def test_a_filter_being_compiled_or_matched_does_not_hold_up_anyone():
    release = threading.Event()
    entered = threading.Event()
    matching = threading.Event()
    held = held_filter(compiling={"slow": (entered, release)}, matching={"slow to match": (matching, release)})
    with serve(db=":memory:", port=0, filter_type=held) as collector, Client(collector.url) as client:
        with opened(collector.url + "/live") as slow:
            slow.send(json.dumps({"start": 1, "content": "slow"}))
            assert entered.wait(10)
            # While that filter is being compiled, another client stores and confirms.
            client.send_many(sample(10), wait=True)
            release.set()
            assert slow.recv() == "ok"

        # Matching: a live filter whose evaluation takes long (made so here) runs
        # off the event loop; ingest and confirmations go on meanwhile.
        release.clear()
        with opened(collector.url + "/live") as slow:
            slow.send(json.dumps({"start": 1, "content": "slow to match"}))
            assert slow.recv() == "ok"
            client.send_many(sample(1, prefix="m"), wait=True)
            assert matching.wait(10)
            client.send_many(sample(10, prefix="n"), wait=True)  # answered while that filter is matched
            release.set()


def test_a_live_filter_too_costly_for_the_rate_of_events_is_dropped_not_waited_for(monkeypatch):
    from theia_frames.server import fanout

    monkeypatch.setattr(fanout, "FANOUT_QUEUE", 1)
    monkeypatch.setattr(fanout, "FANOUT_WAIT", 0.05)
    costly_filter = held_filter(matching={"costly": 0.3})  # as a filter of many patterns over a large commit
    with serve(db=":memory:", port=0, filter_type=costly_filter) as collector, Client(collector.url) as client:
        with opened(collector.url + "/live") as costly, opened(collector.url + "/live") as cheap:
            costly.send(json.dumps({"start": 1, "content": "costly"}))
            cheap.send(json.dumps({"start": 1}))
            assert costly.recv() == "ok" and cheap.recv() == "ok"
            for k in range(10):
                client.send_many(sample(5, prefix=f"r{k}-"), wait=True)
            messages = []
            costly.settimeout(10)
            while not (messages and isinstance(messages[-1], str)):
                messages.append(costly.recv())
            assert "subscriber too slow: its filter takes more matching time" in messages[-1]
            cheap.settimeout(10)
            assert sum(1 for _ in range(50) if cheap.recv()) == 50  # the others get everything


def test_a_stop_while_ingest_waits_for_the_live_fanout_returns(monkeypatch):
    from theia_frames.server import fanout

    release = threading.Event()
    stuck = threading.Event()
    monkeypatch.setattr(fanout, "FANOUT_QUEUE", 1)
    monkeypatch.setattr(fanout, "FANOUT_WAIT", 60.0)  # nobody is dropped meanwhile
    collector = serve(db=":memory:", port=0, filter_type=held_filter(matching={"stuck": (stuck, release)}))
    with opened(collector.url + "/live") as live, opened(collector.url + "/event") as sender:
        live.send(json.dumps({"start": 1, "content": "stuck"}))
        assert live.recv() == "ok"
        writer = collector._writer
        assert writer is not None
        for k in range(5):  # one commit in the fan-out, one waiting, the writer waiting with the next
            sender.send_binary(encode(Event(id=f"w{k}", timestamp=T0 + k, content="stuck")))
            wait_until(lambda: writer.received > k, what="the message to arrive")
            if k == 0:
                assert stuck.wait(10)
        stopper = threading.Thread(target=collector.stop)
        stopper.start()
        wait_until(lambda: collector._loop is not None and collector._loop.is_closed(), what="the event loop to end")
        release.set()  # the filter being matched finishes; nothing may wait for the fan-out now
        stopper.join(30)
        assert not stopper.is_alive(), "the stop never returned"


def _many_chunks(collector: Collector, chunks: int) -> None:
    """Chunks that are never merged (each large enough to be final)."""
    assert collector.store is not None
    for c in range(chunks):
        collector.store.add_many(sample(4096, prefix=f"c{c}-", start=T0 + c * 10_000))


class _ChunkReads(_HeldFilter):
    """A filter that takes ``seconds`` to match each stored chunk (of 4096 events: one
    match each) and counts them in ``reads``."""

    reads: list[int] = []
    seconds = 0.0

    def mask_batch(self, batch: Any) -> Any:
        type(self).reads.append(batch.num_rows)
        time.sleep(self.seconds)
        return super().mask_batch(batch)


def chunk_reads(seconds: float) -> type[_ChunkReads]:
    """A :class:`_ChunkReads` class of its own."""
    return type("ChunkReads", (_ChunkReads,), {"reads": [], "seconds": seconds})


def test_a_find_stops_working_when_its_client_leaves():
    slow = chunk_reads(0.05)
    reads = slow.reads
    with serve(db=":memory:", port=0, filter_type=slow) as collector:
        _many_chunks(collector, 30)
        with opened(collector.url + "/find") as ws:
            ws.send(json.dumps({"start": 1, "content": "matches nothing"}))
            assert ws.recv() == "ok"
        # The scan of 30 chunks (1.5 s) stops at the next chunk after the client left.
        poll_until(lambda: len(reads) >= 30, timeout=2.5)
        assert len(reads) < 30
        collector.stop()  # and a stop does not wait for it either


def test_a_stop_ends_a_running_find_at_its_next_chunk():
    slow = chunk_reads(0.1)
    reads = slow.reads
    collector = serve(db=":memory:", port=0, filter_type=slow)
    _many_chunks(collector, 30)
    with opened(collector.url + "/find") as ws:
        ws.send(json.dumps({"start": 1, "content": "matches nothing"}))
        assert ws.recv() == "ok"
        wait_until(lambda: reads, what="the scan to start")
        collector.stop()
        assert len(reads) < 30


def test_a_stalled_find_is_cut_off_and_its_query_ends():
    with serve(db=":memory:", port=0, find_stall_timeout=1.0) as collector:
        assert collector.store is not None
        collector.store.add_many(sample(30_000, size=1000))  # 30 MB: more than the socket buffers hold
        with opened(collector.url + "/find", sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)) as ws:
            ws.send(json.dumps({"start": 1}))
            assert ws.recv() == "ok"
            wait_until(lambda: not collector._queries, timeout=20, what="the stalled query to end")
            # What was on its way can still be read; then the connection ends without a normal close.
            got = 0
            with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
                while True:
                    opcode, _ = ws.recv_data(control_frame=True)
                    assert opcode != CLOSE, "a cut-off find must not end with a close frame"
                    got += 1
            assert got < 30_000


def test_pending_bytes_bound_memory_one_message_per_connection_waits(monkeypatch):
    from theia_frames.server import event_endpoint

    monkeypatch.setattr(event_endpoint, "_PENDING_LIMIT", 1 << 20)
    message = encode(Event(id="m", timestamp=T0, content="x" * (2 << 20)))
    with serve(db=":memory:", port=0) as collector:
        with writer_held(collector):
            sock = socket.create_connection(("127.0.0.1", collector.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            with opened(collector.url + "/event", socket=sock) as ws:
                # The collector's side of the connection gets a fixed small receive buffer too
                # (the kernel's autotuning could otherwise hold many messages of its own).
                wait_until(lambda: len(collector._connections) == 1, what="the connection to be admitted")
                (server_side,) = list(collector._connections)
                server_side.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                ws.sock.settimeout(1.0)
                sent = 0
                try:
                    for _ in range(40):
                        ws.send_binary(message)
                        sent += 1
                except (socket.timeout, websocket.WebSocketTimeoutException):
                    pass
                # One message in the writer's queue, one waiting in the connection, one being
                # read, the rest in socket buffers: not websockets' 16 waiting messages.
                assert sent < 12, sent


# --------------------------------------------------------------------------- 8. connections


def test_connections_are_capped_in_all_and_per_address():
    with serve(db=":memory:", port=0, max_connections=4, max_connections_per_address=3) as collector:
        url = collector.url + "/event"
        held = [websocket.create_connection(url, timeout=10) for _ in range(3)]
        try:
            error = refused(url)
            assert error.status_code == 503 and b"per address" in (error.resp_body or b"")
            held.append(websocket.create_connection(url, timeout=10, socket=_from("127.0.0.2", collector.port)))
            error = refused(url, socket=_from("127.0.0.3", collector.port))
            assert error.status_code == 503 and b"serves 4" in (error.resp_body or b"")
            held.pop(0).close()
            # the slot is free once the collector has seen the close
            assert poll_until(lambda: _accepted(url), timeout=10)
        finally:
            for ws in held:
                ws.close()


def _from(source: str, port: int) -> socket.socket:
    """A TCP connection to the collector from another loopback address."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _accepted(url: str) -> bool:
    try:
        websocket.create_connection(url, timeout=10).close()
        return True
    except websocket.WebSocketBadStatusException:
        return False


def test_idle_connections_are_closed_subscribers_are_not():
    with serve(db=":memory:", port=0, idle_timeout=0.5) as collector:
        with opened(collector.url + "/event") as quiet, opened(collector.url + "/find") as no_filter, opened(
            collector.url + "/live"
        ) as live:
            live.send(json.dumps({"start": 1}))
            assert live.recv() == "ok"
            for ws in (quiet, no_filter):
                ws.settimeout(15)
                assert read_to_close(ws) == ([], 1008)
            with Client(collector.url) as client:
                client.send(Event(id="late", timestamp=T0), wait=True)
            assert b"late" in live.recv()


def test_a_flood_of_refused_clients_logs_a_few_lines(caplog):
    with serve(db=":memory:", port=0, token="s3cret") as collector:
        with caplog.at_level(logging.INFO, logger="theia_frames.server.collector"):
            for _ in range(50):
                assert refused(collector.url + "/event").status_code == 401
        lines = [r for r in caplog.records if "refused" in r.getMessage()]
        assert 1 <= len(lines) <= 2


# --------------------------------------------------------------------------- 9. handshakes and echoes


def test_two_authorization_headers_are_a_bad_request_not_a_traceback(caplog):
    with serve(db=":memory:", port=0, token="s3cret") as collector:
        with caplog.at_level(logging.INFO):
            error = refused(collector.url + "/event", header=["Authorization: Bearer s3cret", "Authorization: Bearer s3cret"])
        assert error.status_code == 400
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_the_token_is_checked_before_the_path():
    with serve(db=":memory:", port=0, token="s3cret") as collector:
        error = refused(collector.url + "/nowhere")
        assert error.status_code == 401 and b"/event" not in (error.resp_body or b"")
        error = refused(collector.url + "/nowhere", header=["Authorization: Bearer s3cret"])
        assert error.status_code == 404


def test_a_huge_schema_is_not_echoed_back_or_logged_whole(collector, caplog):
    schema = pa.schema([(f"column_{i}", pa.string()) for i in range(20_000)])
    message = batch_to_ipc(pa.RecordBatch.from_pylist([], schema=schema))
    with caplog.at_level(logging.WARNING, logger="theia_frames.server.collector"):
        with opened(collector.url + "/event", batched=True) as ws:
            ws.send_binary(message)
            error = ws.recv()
    assert "unexpected schema" in error and len(error) < 1000
    assert all(len(r.getMessage()) < 1000 for r in caplog.records)


# --------------------------------------------------------------------------- options and the command


def test_limits_must_be_sensible():
    for options in ({"max_patterns": 0}, {"max_connections": -1}, {"idle_timeout": 0}, {"find_stall_timeout": "1"}, {"max_event_size": 1.5}):
        with pytest.raises(UsageError):
            Collector(**options)


def test_the_serve_command_takes_the_limits_says_it_listens_once_and_stops_on_sigterm(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.getcwd())
    command = [sys.executable, "-m", "theia_frames", "serve", "--db", str(tmp_path / "s.db"), "--port", "0",
               "--log-level", "info", "--max-patterns", "1", "--idle-timeout", "none", "--find-stall-timeout", "5",
               "--find-wait", "0.1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "listening on ws://127.0.0.1:" in line, line
        url = line.split("listening on ", 1)[1].split()[0]
        with opened(url + "/find") as ws:
            ws.send(json.dumps({"start": 1, "tags": ["a", "b"]}))
            assert "at most 1 per filter" in ws.recv()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        rest = proc.stdout.read()
        assert "listening on" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_a_batched_find_sends_messages_of_bounded_bytes(monkeypatch):
    # A reader bounds what one message may decode to (ipc_to_batches' max_decoded):
    # gathered events go out in messages of about the store's chunk bytes at most.
    from theia_frames.server import chunks as store_chunks
    from theia_frames.server import query as store_query

    store = EventStore(":memory:")
    store.add_many([Event(id=f"e{i}", timestamp=T0 + i, content=("x" if i % 2 else "y") * 5000) for i in range(2000)])
    for module in (store_chunks, store_query):
        monkeypatch.setattr(module, "CHUNK_BYTES", 1 << 20)  # for reading only (stored chunks follow the real one)
    messages = list(store.query_ipc(EventFilter(content="x")))
    assert sum(b.num_rows for m in messages for b in ipc_to_batches(m)) == 1000
    assert len(messages) > 1 and max(len(m) for m in messages) < 1.2 * (1 << 20)
    store.close()


# --------------------------------------------------------------------------- concurrent finds: a memory total


class _StepsCounted(EventStore):
    """A store that counts the parts its queries hand out (each a step of a /find): the
    collector's store is one of its dependencies."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.steps: list[int] = []

    def query_batches(self, *args: Any, **kwargs: Any) -> Any:
        results = super().query_batches(*args, **kwargs)

        def counted() -> Iterator[Any]:
            for part in results:
                self.steps.append(1)
                yield part

        return Results(results, counted())


def test_finds_wait_for_room_in_their_memory_total_and_lose_nothing():
    counting = _StepsCounted(":memory:")
    steps = counting.steps
    small = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
    with serve(db=counting, port=0, max_find_memory=1) as collector:
        assert collector.store is not None
        collector.store.add_many(sample(30_000, size=1000))  # parts of megabytes: more than socket buffers hold
        memory = collector._find_memory
        with opened(collector.url + "/find", sockopt=small) as a, opened(collector.url + "/find", sockopt=small) as b:
            for ws in (a, b):
                ws.send(json.dumps({"start": 1}))
                assert ws.recv() == "ok"
            # Neither reads: each holds its first part, being sent, and reads nothing ahead.
            wait_until(lambda: len(steps) >= 2 and memory.held > 0, what="both stalled finds to hold a part")
            with opened(collector.url + "/find") as c:
                c.send(json.dumps({"start": 1}))
                assert c.recv() == "ok"
                result: list[Any] = []
                reader = threading.Thread(target=lambda: result.append(read_to_close(c)))
                reader.start()
                # Its first part comes without waiting; then, sent, it waits for the stalled ones.
                wait_until(lambda: memory.waits >= 1, what="the third find to wait for room")
                assert len(steps) == 3 and memory.held >= memory.limit and not result
                a.close()
                b.close()
                # The stalled finds end, their bytes are given back, the third goes on to the end.
                reader.join(60)
        got, code = result[0]
        assert code == 1000
        assert [decode(m).id for m in got] == [f"e{i}" for i in range(30_000)]
        wait_until(lambda: memory.held == 0 and not collector._queries, what="the finds to give back their bytes")


def test_the_find_memory_bound_must_be_a_positive_count():
    with pytest.raises(UsageError, match="max_find_memory"):
        Collector(max_find_memory=0)


# --------------------------------------------------------------------------- many plain writers: backpressure


def test_a_plain_writer_is_not_read_while_its_events_wait_and_nothing_is_lost(monkeypatch):
    from theia_frames.server import event_endpoint

    monkeypatch.setattr(event_endpoint, "_PENDING_MESSAGES", 50)
    monkeypatch.setattr(event_endpoint, "_READ_BUDGET", 7)  # the reader also yields to the loop on its way
    events = sample(20_000, size=1000)  # 20 MB: more than the socket buffers hold
    with serve(db=":memory:", port=0) as collector:
        writer = collector._writer
        assert writer is not None
        with opened(collector.url + "/event") as ws:
            done: list[int] = []

            def send_all() -> None:
                for event in events:
                    ws.send_binary(encode(event))  # one event per message, never reading, as Go watchers send
                done.append(1)

            sender = threading.Thread(target=send_all)
            with writer_held(collector):
                sender.start()
                wait_until(lambda: writer.received > 50, what="the writer's queue to fill")
                # The reads stop at the bound: TCP holds the rest back, the sender cannot finish.
                assert not poll_until(lambda: writer.received > 51 or done, timeout=1.0), writer.received
            sender.join(60)
            assert done
            wait_until(lambda: writer.received == len(events), timeout=60, what="every message to be read")
        collector.flush(timeout=60)
        assert collector.store is not None
        stored = [i for cols in collector.store.query(EventFilter(start=1)) for i in cols.id]
    assert stored == [e.id for e in events]


def test_readers_of_many_concurrent_finds_are_closed_when_they_end_but_a_few(tmp_path):
    from theia_frames.server import store as store_module

    store = EventStore(str(tmp_path / "s.db"))
    try:
        store.add_many(sample(100))
        readers = [store._borrow() for _ in range(10)]
        assert all(db.execute("PRAGMA cache_size").fetchone()[0] == -store_module._READER_CACHE_KIB for db in readers)
        for db in readers:
            store._give_back(db)
        assert len(store._idle) == store_module._IDLE_READERS < 10
    finally:
        store.close()
