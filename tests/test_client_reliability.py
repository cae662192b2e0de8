"""The client's reliability features: acknowledged sends, reconnecting live streams, tokens and TLS.

Scripted peers (``MockServer``, the upstream-like server) where the test needs
an answer the real collector would not give on cue; the real embedded
collector everywhere else, restarted on the same port and database file for
the reconnect tests. Deadlines only detect a hang; nothing is timed.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading
import time
from pathlib import Path

import pytest

import theia_frames as tf
from theia_frames.protocol.arrow import ipc_to_batches, is_arrow_message
from theia_frames.client import DEFAULT_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_RESUME_MARGIN, AsyncClient, Client, Gap
from theia_frames.server.collector import serve
from theia_frames.event import Event
from theia_frames.exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    ServerError,
    SubscriberTooSlow,
    TheiaError,
    TheiaTimeoutError,
    UnconfirmedError,
    UsageError,
)
from theia_frames.filter import Filter
from theia_frames.testing.mock import MockServer
from upstream_like import UpstreamLike
from scripts_loader import load_script
from waiting import poll_until as wait_until

BASE = 1_700_000_000.0


def make_events(n, *, start=BASE, step=0.001, prefix="e"):
    return [
        Event(id=f"{prefix}{i}", timestamp=start + i * step, source="/dev/sensors/s", tags=["sensor"], content=f"{i}C")
        for i in range(n)
    ]


def count_events(message) -> int:
    if isinstance(message, bytes) and is_arrow_message(message):
        return sum(b.num_rows for b in ipc_to_batches(message))
    return 1


class FlushingPeer:
    """A /event handler for MockServer that answers flushes like our collector.

    ``refuse(message)`` picks messages to refuse with an error message;
    ``answer(token, state)`` may replace the answer to a flush.
    """

    def __init__(self, refuse=lambda message: False, answer=None) -> None:
        self.stored = 0
        self.rejected = 0
        self.flushes: list[int] = []
        self.refuse = refuse
        self.answer = answer

    def __call__(self, message):
        if isinstance(message, str) and message.startswith('{"flush"'):
            token = json.loads(message)["flush"]
            self.flushes.append(token)
            if self.answer is not None:
                return self.answer(token, self)
            return {"flushed": token, "stored": self.stored, "rejected": self.rejected}
        if self.refuse(message):
            self.rejected += 1
            return {"error": "invalid event: refused by the test"}
        self.stored += count_events(message)
        return None


def flushing_mock(peer: FlushingPeer | None = None) -> tuple[MockServer, FlushingPeer]:
    peer = peer or FlushingPeer()
    return MockServer(batch=True).handle(peer, path="/event"), peer


# --------------------------------------------------------------------------- flush, scripted


def test_flush_with_nothing_sent_returns_0_without_connecting():
    with MockServer(batch=True) as mock, Client(mock.url) as client:
        assert client.flush() == 0
        assert client.flush(timeout=0.1) == 0
        assert mock.connections == 0


def test_flush_sends_increasing_tokens_and_returns_the_confirmed_count():
    mock, peer = flushing_mock()
    with mock, Client(mock.url) as client:
        client.send_many(make_events(500))
        assert client.flush() == 500
        client.send(Event(id="one", timestamp=BASE))
        assert client.flush(timeout=5) == 501
        assert client.stored == 501
        # nothing sent since: answered without asking the peer again
        assert client.flush() == 501
    assert peer.flushes == [1, 2]
    flushes = [r.message for r in mock.received if isinstance(r.message, str)]
    assert flushes == ['{"flush": 1}', '{"flush": 2}']


def test_send_and_send_many_with_wait_flush():
    mock, peer = flushing_mock()
    with mock, Client(mock.url) as client:
        client.send(Event(id="a", timestamp=BASE), wait=True)
        assert peer.flushes == [1] and client.stored == 1
        assert client.send_many(make_events(40), wait=True) == 40
        assert peer.flushes == [1, 2] and client.stored == 41
        assert tf.send(mock.url, make_events(3), wait=True) == 3
    # the flush goes after the events it covers
    kinds = ["flush" if isinstance(r.message, str) else "event" for r in mock.received]
    assert kinds[:2] == ["event", "flush"] and kinds[-1] == "flush"


@pytest.mark.parametrize("peer_kind", ["upstream", "plain mock", "batch=False"])
def test_flush_against_a_peer_that_cannot_confirm_raises(peer_kind):
    if peer_kind == "upstream":
        server = UpstreamLike().start()
        url, stop, kw = server.url, server.stop, {}
    elif peer_kind == "plain mock":
        mock = MockServer()
        url, stop, kw = mock.url, mock.terminate, {}
    else:
        mock = MockServer(batch=True)
        url, stop, kw = mock.url, mock.terminate, {"batch": False}
    try:
        with Client(url, **kw) as client:
            client.send(Event(timestamp=BASE))
            with pytest.raises(UnconfirmedError, match="cannot confirm") as info:
                client.flush()
            assert url in str(info.value)
            with pytest.raises(UnconfirmedError):
                client.send(Event(timestamp=BASE), wait=True)
            # never pretends: asking again does not change the answer
            with pytest.raises(UnconfirmedError):
                client.flush()
            # reading needs no flush against such a peer
            client.send(Event(id="x", timestamp=BASE + 1))
    finally:
        stop()


def test_refused_events_are_kept_counted_and_raised_once():
    peer = FlushingPeer(refuse=lambda m: isinstance(m, bytes) and b"id:bad" in m)
    mock, _ = flushing_mock(peer)
    with mock, Client(mock.url) as client:
        # one call, so no refusal can come back between the sends (that would raise from a send)
        client.send_many([Event(id="good", timestamp=BASE), Event(id="bad", timestamp=BASE + 1),
                          Event(id="bad", timestamp=BASE + 2)])
        with pytest.raises(ServerError, match="2 messages sent earlier were rejected") as info:
            client.flush()
        assert "refused by the test" in str(info.value)
        assert client.rejected == 2
        assert [e.text for e in client.errors] == ["invalid event: refused by the test"] * 2
        assert client.stored == 1
        # raised once: the next flush confirms and says nothing more
        assert client.flush() == 1
        client.send(Event(id="good2", timestamp=BASE + 3))
        assert client.flush() == 2


def test_a_refusal_noticed_before_a_send_raises_from_that_send():
    peer = FlushingPeer(refuse=lambda m: isinstance(m, bytes) and b"id:bad" in m)
    mock, _ = flushing_mock(peer)
    with mock, Client(mock.url) as client:
        client.send(Event(id="bad", timestamp=BASE))
        mock.wait_requests(1)
        assert wait_until(lambda: client._event._readable())
        with pytest.raises(ServerError, match="rejected"):
            client.send(Event(id="next", timestamp=BASE + 1))
        assert client.rejected == 1
        assert client.flush() == 0  # reported once, not again


def test_a_failed_commit_is_never_confirmed():
    def answer(token, peer):
        return {"error": f"flush {token}: events not stored: database or disk is full"}

    mock, _ = flushing_mock(FlushingPeer(answer=answer))
    with mock, Client(mock.url) as client:
        client.send_many(make_events(50))
        with pytest.raises(ServerError, match="could not store.*disk is full"):
            client.flush()
        assert client.stored == 0
        with pytest.raises(ServerError, match="disk is full"):
            client.flush()  # still not confirmed: asked again, refused again


def test_a_confirmation_for_an_earlier_flush_covers_only_what_came_before_it():
    answers = {}

    def answer(token, peer):
        # the first flush is answered late, together with the second
        answers[token] = {"flushed": token, "stored": peer.stored, "rejected": 0}
        if token == 1:
            return None
        return [answers[1], answers[token]]

    mock, _ = flushing_mock(FlushingPeer(answer=answer))
    with mock, Client(mock.url) as client:
        client.send_many(make_events(40))
        with pytest.raises(TheiaTimeoutError, match="did not confirm"):
            client.flush(timeout=0.3)
        assert client.stored == 0
        client.send_many(make_events(40, prefix="f"))
        assert client.flush() == 80


def test_flush_timeout_loses_nothing():
    mock, peer = flushing_mock(FlushingPeer(answer=lambda token, peer: None))
    with mock, Client(mock.url) as client:
        client.send_many(make_events(40))
        with pytest.raises(TheiaTimeoutError, match="40 event") as info:
            client.flush(timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert client.unconfirmed == 40


def test_connection_lost_before_the_confirmation_says_so():
    mock, peer = flushing_mock()
    mock.close_abruptly(path="/event")  # the first connection drops after its first message
    with mock, Client(mock.url) as client:
        client.send(Event(id="lost?", timestamp=BASE))
        mock.wait_requests(1)
        with pytest.raises(ConnectionClosed, match="1 event.*may or may not have been stored") as info:
            client.flush()
        assert "send them again" in str(info.value)
        assert client.flush() == 0  # reported once; nothing else is unconfirmed


def test_events_on_a_connection_lost_between_sends_are_reported_by_the_next_flush():
    mock, peer = flushing_mock()
    mock.close_abruptly(path="/event").next_connection(path="/event")
    with mock, Client(mock.url) as client:
        client.send(Event(id="first", timestamp=BASE))
        assert wait_until(lambda: client._event._readable())
        # the dead connection is replaced without a word; the event sent on it is in doubt
        client.send(Event(id="second", timestamp=BASE + 1))
        mock.wait_requests(2)
        assert mock.connections == 2
        with pytest.raises(ConnectionClosed, match="lost before 1 event"):
            client.flush()
        assert client.flush() == peer.stored
        assert peer.flushes == [1]


class BrokenSocket:
    """A socket whose writes fail as if the peer had gone; everything else is the real one."""

    def __init__(self, sock) -> None:
        self._sock = sock

    def sendall(self, data) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_a_send_that_fails_reports_earlier_unconfirmed_events_too():
    mock, peer = flushing_mock()
    with mock, Client(mock.url) as client:
        client.send_many(make_events(40))
        conn = client._event
        conn.sock = BrokenSocket(conn.sock)
        with pytest.raises(ConnectionClosed, match="after 0 event.*40 event.*not confirmed either") as info:
            client.send_many(make_events(100, prefix="f"))
        assert isinstance(info.value.__cause__, ConnectionClosed)
        # reported by that exception: the next flush has nothing more to say
        assert client.flush() == 0
        assert client.send_many(make_events(10, prefix="g"), wait=True) == 10


def test_find_flushes_first_on_a_negotiated_connection():
    mock, peer = flushing_mock()
    mock.on_find([])
    with mock, Client(mock.url) as client:
        client.send_many(make_events(40))
        list(client.find(Filter(1)))
        client.send(Event(id="x", timestamp=BASE))
        list(client.find(Filter(1)))
        list(client.find(Filter(1)))  # nothing new to flush
    paths = [(r.path, "flush" if r.path == "/event" and isinstance(r.message, str) else "") for r in mock.received]
    assert [p for p in paths if p[0] == "/find" or p[1]] == [
        ("/event", "flush"),
        ("/find", ""),
        ("/event", "flush"),
        ("/find", ""),
        ("/find", ""),
    ]


def test_find_skips_the_flush_silently_against_a_plain_peer():
    with MockServer() as mock:
        mock.on_find([])
        with Client(mock.url) as client:
            client.send(Event(timestamp=BASE))
            assert list(client.find(Filter(1))) == []
        assert not any(isinstance(r.message, str) and "flush" in r.message for r in mock.received)


# --------------------------------------------------------------------------- flush, real collector


def test_10000_events_flushed_are_all_found_by_another_client(collector):
    events = make_events(10_000)
    with Client(collector.url) as sender:
        assert sender.send_many(events) == 10_000
        assert sender.flush() == 10_000
        # no polling: the confirmation means committed
        with Client(collector.url) as other:
            assert list(other.find(Filter(BASE))) == events


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "plain"])
def test_a_client_reads_its_own_writes(collector, batch):
    with Client(collector.url, batch=batch) as client:
        client.send_many(make_events(5_000))
        if batch:
            assert sum(b.num_rows for b in client.find(Filter(BASE)).iter_batches()) == 5_000
        else:
            with pytest.raises(UnconfirmedError):
                client.flush()


def test_rejections_are_counted_with_the_collector(collector):
    with Client(collector.url) as client:
        client.send(Event(id="fine", timestamp=BASE))
        conn = client._event
        conn.send_binary(b"this is not an event")
        client._sent(conn, 1)
        with pytest.raises(ServerError, match="rejected: invalid event"):
            client.flush()
        assert client.rejected == 1 and client.stored == 1
        client.send(Event(id="after", timestamp=BASE + 1), wait=True)
        assert client.stored == 2


def test_resending_after_a_restart_stores_everything_once(tmp_path):
    db = tmp_path / "events.db"
    first = serve(db=db, port=0)
    port = first.port
    events = make_events(3_000)
    with Client(first.url) as client:
        client.send_many(events[:1_000], wait=True)
        client.send_many(events[1_000:2_000])
        first.stop()
        second = restart(db, port)
        try:
            with pytest.raises(ConnectionClosed):
                client.flush()
            # resend what was not confirmed; the store keeps one of each (timestamp, id)
            client.send_many(events[1_000:], wait=True)
            assert [e.id for e in tf.find(second.url, Filter(1))] == [e.id for e in events]
        finally:
            second.stop()


def restart(db, port, timeout=10.0, **options):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return serve(db=db, port=port, **options)
        except TheiaError:
            if time.monotonic() > deadline:
                pytest.skip(f"port {port} could not be bound again")
            time.sleep(0.05)


# --------------------------------------------------------------------------- reconnect, scripted


def ev(i, **kw):
    return Event(id=f"e{i}", timestamp=BASE + i, source="/dev/s", tags=["t"], content=f"{i}C", **kw)


def test_receive_options_are_checked():
    with MockServer() as mock:
        mock.on_live([])
        with Client(mock.url) as client:
            for kw in ({"backoff": 0}, {"max_backoff": -1}, {"backoff": 2, "max_backoff": 1}, {"resume_margin": -1},
                       {"max_retries": -1}, {"max_retries": 1.5}, {"backoff": True}):
                with pytest.raises(UsageError):
                    client.receive(Filter(1), reconnect=True, **kw)
            stream = client.receive(Filter(1), reconnect=True)
            assert (stream.backoff, stream.max_backoff, stream.resume_margin, stream.max_retries) == (
                DEFAULT_BACKOFF,
                DEFAULT_MAX_BACKOFF,
                DEFAULT_RESUME_MARGIN,
                None,
            )
            assert stream.reconnects == 0 and stream.recovered == 0 and stream.gap == Gap(0.0, 0.0)
            assert stream.connected
            with pytest.raises(UsageError, match="reconnect=True"):
                stream.iter_messages()
            stream.close()
            assert not stream.connected


def test_resume_fetches_what_was_missed_and_drops_repeats():
    with MockServer() as mock:
        mock.respond("ok", ev(1), ev(2), path="/live").close_abruptly(path="/live")
        mock.on_live([ev(5)])  # pushed right after the new subscription: buffered during the find
        mock.on_find([ev(2), ev(3), ev(4), ev(5)])  # e2 was delivered already, e5 also comes live
        with Client(mock.url) as client:
            stream = client.receive(Filter(BASE), reconnect=True, backoff=0.01, resume_margin=1.0)
            events = iter(stream)
            got = [next(events).id for _ in range(5)]
            assert got == ["e1", "e2", "e3", "e4", "e5"]
            assert stream.reconnects == 1 and stream.recovered == 3
            assert stream.gap.last > 0 and stream.gap.total == stream.gap.last
            assert isinstance(stream.last_error, ConnectionClosed) and stream.errors == []
            # the live stream goes on, without repeating e5
            assert mock.push(ev(6)) == 1
            assert next(events).id == "e6"
            stream.close()
        find = [json.loads(r.message) for r in mock.received if r.path == "/find"]
        # from the last timestamp seen less the margin, in ascending order
        assert find == [{"start": BASE + 1, "order": "asc"}]


def test_a_repeat_is_the_same_id_at_the_same_time():
    other_e3 = Event(id="e3", timestamp=BASE + 30, content="another event with the same id")
    with MockServer() as mock:
        mock.respond("ok", ev(3), path="/live").close_abruptly(path="/live")
        mock.on_live([])
        mock.on_find([ev(3), other_e3])
        with Client(mock.url) as client:
            with client.receive(Filter(BASE), reconnect=True, backoff=0.01) as stream:
                events = iter(stream)
                assert [next(events), next(events)] == [ev(3), other_e3]


def test_nothing_seen_yet_resumes_from_the_subscription_time():
    recent = Event(id="recent", timestamp=time.time())
    with MockServer() as mock:
        mock.respond("ok", path="/live").close_abruptly(path="/live")
        mock.on_live([])
        mock.on_find([ev(1), recent])  # e1 is older than the resume start: the client drops it
        with Client(mock.url) as client:
            before = time.time()
            with client.receive(Filter(1), reconnect=True, backoff=0.01, resume_margin=2.0) as stream:
                assert next(iter(stream)) == recent
        start = json.loads(next(r.message for r in mock.received if r.path == "/find"))["start"]
        assert before - 2.0 - 1 <= start <= time.time() - 2.0


def test_too_slow_is_a_drop_with_reconnect_and_is_recorded():
    with MockServer() as mock:
        mock.respond("ok", ev(1), path="/live").close_with(1013, "subscriber too slow", path="/live")
        mock.on_live([ev(3)])
        mock.on_find([ev(2)])
        with Client(mock.url) as client:
            with client.receive(Filter(BASE), reconnect=True, backoff=0.01) as stream:
                events = iter(stream)
                assert [next(events).id for _ in range(3)] == ["e1", "e2", "e3"]
                assert len(stream.errors) == 1 and isinstance(stream.errors[0], SubscriberTooSlow)
                assert stream.reconnects == 1


def test_a_normal_close_is_followed_by_a_reconnect_too():
    with MockServer() as mock:
        mock.respond("ok", ev(1), path="/live").close_with(1000, path="/live")
        mock.on_live([ev(2)])
        mock.on_find([])
        with Client(mock.url) as client:
            with client.receive(Filter(BASE), reconnect=True, backoff=0.01) as stream:
                events = iter(stream)
                assert [next(events).id for _ in range(2)] == ["e1", "e2"]


def test_refused_credentials_are_not_retried():
    with MockServer() as mock:
        mock.respond("ok", path="/live").close_abruptly(path="/live")
        mock.reject(401, path="/live")
        with Client(mock.url) as client:
            stream = client.receive(Filter(1), reconnect=True, backoff=0.01)
            with pytest.raises(AuthenticationError, match="401"):
                list(stream)


def test_gives_up_after_max_retries():
    with MockServer() as mock:
        mock.respond("ok", path="/live").close_abruptly(path="/live")
        mock.reject(503, path="/live")
        with Client(mock.url) as client:
            stream = client.receive(Filter(1), reconnect=True, backoff=0.01, max_backoff=0.02, max_retries=2)
            with pytest.raises(ConnectionClosed, match="gave up reconnecting after 3 attempt") as info:
                list(stream)
            assert isinstance(info.value.__cause__, ConnectError) and "503" in str(info.value)
            assert stream.reconnects == 0 and isinstance(stream.last_error, ConnectError)


class RecordingWake(threading.Event):
    """The event a reconnecting stream waits on; records how long each wait was asked to last."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[float] = []

    def wait(self, timeout=None):
        self.asked.append(timeout)
        return super().wait(timeout)


@pytest.mark.parametrize("jitter, factor", [(1.0, 1.0), (0.0, 0.5)], ids=["no-jitter", "most-jitter"])
def test_backoff_doubles_up_to_the_maximum_with_jitter(monkeypatch, jitter, factor):
    monkeypatch.setattr("theia_frames.protocol.resume.random.random", lambda: jitter)
    with MockServer() as mock:
        mock.respond("ok", path="/live").close_abruptly(path="/live")
        mock.reject(503, path="/live")
        with Client(mock.url) as client:
            stream = client.receive(Filter(1), reconnect=True, backoff=0.02, max_backoff=0.08, max_retries=5)
            stream._wake = wake = RecordingWake()
            with pytest.raises(ConnectionClosed, match="gave up reconnecting after 6 attempt"):
                list(stream)
    # one wait before each of the 6 attempts: 0.02 doubling to at most 0.08, less up to half for jitter
    asked = [a for a in wake.asked if a > 0.002]  # a timer may wake a hair early: the rest is waited again
    assert asked == pytest.approx([factor * d for d in (0.02, 0.04, 0.08, 0.08, 0.08, 0.08)], abs=0.005)


def test_close_stops_a_stream_waiting_to_reconnect():
    with MockServer() as mock:
        mock.respond("ok", path="/live").close_abruptly(path="/live")
        mock.reject(503, path="/live")
        with Client(mock.url) as client:
            stream = client.receive(Filter(1), reconnect=True, backoff=30.0, max_backoff=30.0)
            beats = []
            reader = threading.Thread(target=lambda: beats.extend(stream.iter_batches(heartbeat=0.05)))
            reader.start()
            assert wait_until(lambda: not stream.connected and len(beats) >= 3)
            assert all(b.num_rows == 0 for b in beats)  # heartbeats go on while away
            assert stream.gap.last > 0
            closed_at = time.monotonic()
            stream.close()
            reader.join(5)
            assert not reader.is_alive()
            assert time.monotonic() - closed_at < 2.0


def test_without_reconnect_a_drop_still_raises():
    with MockServer() as mock:
        mock.respond("ok", ev(1), path="/live").close_abruptly(path="/live")
        with Client(mock.url) as client:
            stream = client.receive(Filter(BASE))
            with pytest.raises(ConnectionClosed):
                list(stream)


# --------------------------------------------------------------------------- reconnect, real collector


def test_live_stream_survives_restarts_with_the_collector(tmp_path):
    db = tmp_path / "events.db"
    collector = serve(db=db, port=0)
    port = collector.port
    received: list[str] = []
    try:
        with Client(collector.url) as client:
            stream = client.receive(Filter(1), reconnect=True, backoff=0.01, max_backoff=0.1)
            reader = threading.Thread(
                target=lambda: [received.extend(b.column("id").to_pylist()) for b in stream.iter_batches()]
            )
            reader.start()
            now = time.time()
            sent = 0
            for round_ in range(3):
                with Client(collector.url) as sender:
                    sender.send_many(make_events(300, start=now + round_, prefix=f"r{round_}-"), wait=True)
                sent += 300
                assert wait_until(lambda: len(received) >= sent // 2)
                collector.stop()
                collector = restart(db, port)
                assert wait_until(lambda: stream.reconnects == round_ + 1)
            assert wait_until(lambda: len(received) >= sent)
            time.sleep(0.1)
            stream.close()
            reader.join(5)
        stored = [e.id for e in tf.find(collector.url, Filter(1))]
        assert len(stored) == sent
        assert sorted(received) == sorted(stored)
    finally:
        collector.stop()


@pytest.mark.parametrize("consumer", ["stream", "liveframe"])
def test_reconnect_proof_scaled_nothing_missing_nothing_twice(tmp_path, consumer):
    """scripts/proof_reconnect.py at CI size: 2,000 events, 3 restarts while a sender writes."""
    proof = load_script("proof_reconnect")
    result = proof.run(events=2_000, restarts=3, rate=500.0, consumer=consumer, workdir=str(tmp_path))
    assert result.ok, result.format()
    assert result.stored == result.confirmed == result.distinct == result.received == 2_000
    assert result.missing == result.duplicated == result.extra == 0
    assert result.reconnects == 3 and result.restarts_while_sending >= 1


# --------------------------------------------------------------------------- reconnect under the per-address limit

CAP = 3  # connections per address: a stream's /live and its resume /find need two


class Subscriber(threading.Thread):
    """A reconnecting stream read on its own thread, with the sync or the asyncio client."""

    def __init__(self, url, kind, **options) -> None:
        super().__init__(daemon=True)
        self.url, self.kind, self.options = url, kind, options
        self.ids: list[str] = []
        self.stream = None
        self.failure: BaseException | None = None
        self.ready = threading.Event()
        self.loop = None

    def run(self) -> None:
        try:
            if self.kind == "sync":
                with Client(self.url) as client:
                    self.stream = client.receive(Filter(1), reconnect=True, **self.options)
                    self.ready.set()
                    for batch in self.stream.iter_batches():
                        self.ids.extend(batch.column("id").to_pylist())
            else:
                asyncio.run(self._run_async())
        except TheiaError as exc:
            self.failure = exc
        finally:
            self.ready.set()

    async def _run_async(self) -> None:
        async with AsyncClient(self.url) as client:
            stream = await client.receive(Filter(1), reconnect=True, **self.options)
            self.stream, self.loop = stream, asyncio.get_running_loop()
            self.ready.set()
            async for batch in stream.iter_batches():
                self.ids.extend(batch.column("id").to_pylist())

    def stop(self) -> None:
        if self.is_alive() and self.stream is not None:
            if self.kind == "sync":
                self.stream.close()
            else:
                asyncio.run_coroutine_threadsafe(self.stream.aclose(), self.loop).result(5)
        self.join(10)
        assert not self.is_alive()


def open_connections(collector) -> int:
    """Connections the collector holds open (all of them from this address)."""
    return len(collector._connections)


def start_subscriber(collector, kind, **options) -> Subscriber:
    sub = Subscriber(collector.url, kind, **options)
    sub.start()
    assert sub.ready.wait(10) and sub.stream is not None, sub.failure
    return sub


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_refused_resume_closes_what_it_opened_retries_and_comes_back(tmp_path, kind):
    db = tmp_path / "events.db"
    collector = serve(db=db, port=0, max_connections_per_address=CAP)
    port = collector.port
    now = time.time()
    before, away, after = (make_events(100, start=now + k, prefix=f"{k}-") for k in range(3))
    # the first attempt comes 0.5-1 s after the drop: the collector is back by then
    sub = start_subscriber(collector, kind, backoff=1.0, max_backoff=1.0)
    holders = []
    try:
        with Client(collector.url) as sender:
            sender.send_many(before, wait=True)
        assert wait_until(lambda: len(sub.ids) == 100)
        collector.stop()
        collector = restart(db, port, max_connections_per_address=CAP)
        # hold all but one of the address's connections: a sender's /event and a plain /live
        sender = Client(collector.url)
        holders.append(sender)
        sender.send_many(away[:50], wait=True)
        holders.append(Client(collector.url).receive(Filter(1)))
        # the stream's new /live takes the last connection; its resume find is refused
        assert wait_until(lambda: "503" in str(sub.stream.last_error))
        assert not sub.stream.connected and sub.failure is None
        # the refused attempt closed its /live before waiting: only the holders remain
        assert wait_until(lambda: open_connections(collector) == CAP - 1)
        sender.send_many(away[50:], wait=True)
        seen = set()
        for _ in range(20):  # more refused attempts come and go, none stays open
            seen.add(open_connections(collector))
            time.sleep(0.05)
        assert seen <= {CAP - 1, CAP}
        assert sub.stream.reconnects == 0
        holders.pop().close()  # a connection is free again: the next attempt succeeds
        assert wait_until(lambda: sub.stream.connected and sub.stream.reconnects == 1)
        sender.send_many(after, wait=True)
        assert wait_until(lambda: len(sub.ids) >= 300)
        time.sleep(0.2)
        expected = [e.id for e in before + away + after]
        assert sorted(sub.ids) == sorted(expected)  # nothing missing, nothing twice
        assert sub.stream.recovered == 100 and sub.failure is None
        sub.stop()
        for holder in holders:
            holder.close()
        holders.clear()
        assert wait_until(lambda: open_connections(collector) == 0)
    finally:
        sub.stop()
        for holder in holders:
            holder.close()
        collector.stop()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_resume_refused_past_max_retries_fails_loudly_and_holds_nothing(tmp_path, kind):
    db = tmp_path / "events.db"
    collector = serve(db=db, port=0, max_connections_per_address=CAP)
    port = collector.port
    sub = start_subscriber(collector, kind, backoff=1.0, max_backoff=1.0, max_retries=2)
    holders = []
    try:
        collector.stop()
        collector = restart(db, port, max_connections_per_address=CAP)
        holders = [Client(collector.url).receive(Filter(1)) for _ in range(CAP - 1)]
        sub.join(15)
        assert not sub.is_alive()
        assert isinstance(sub.failure, ConnectionClosed) and "gave up reconnecting after 3 attempt" in str(sub.failure)
        assert sub.stream.error is sub.failure and "503" in str(sub.failure)
        assert isinstance(sub.failure.__cause__, ConnectError)
        assert wait_until(lambda: open_connections(collector) == CAP - 1)  # the holders only
        for holder in holders:
            holder.close()
        assert wait_until(lambda: open_connections(collector) == 0)
    finally:
        sub.stop()
        for holder in holders:
            holder.close()
        collector.stop()


def test_a_live_frame_whose_resume_is_refused_past_max_retries_shows_failed(tmp_path):
    from theia_frames.live.frame import LiveFrame

    db = tmp_path / "events.db"
    collector = serve(db=db, port=0, max_connections_per_address=CAP)
    port = collector.port
    frame = LiveFrame(collector.url, Filter(1), receive_options={"backoff": 1.0, "max_backoff": 1.0, "max_retries": 1})
    holders = []
    try:
        frame.start()
        collector.stop()
        collector = restart(db, port, max_connections_per_address=CAP)
        holders = [Client(collector.url).receive(Filter(1)) for _ in range(CAP - 1)]
        assert wait_until(lambda: frame.state == "failed", timeout=15)
        status = str(frame.status())
        assert "failed" in status and "gave up reconnecting" in status, status
        assert wait_until(lambda: open_connections(collector) == CAP - 1)
        frame.stop()
        for holder in holders:
            holder.close()
        assert wait_until(lambda: open_connections(collector) == 0)
    finally:
        frame.stop()
        for holder in holders:
            holder.close()
        collector.stop()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_resume_find_cut_off_midway_loses_nothing_and_repeats_nothing(kind):
    with MockServer() as mock:
        mock.respond("ok", ev(1), path="/live").close_abruptly(path="/live")
        mock.on_live([])
        mock.respond("ok", ev(2), ev(3), ev(4), path="/find").close_abruptly(path="/find")  # cut off in the middle
        mock.on_find([ev(2), ev(3), ev(4), ev(5)])
        options = {"reconnect": True, "backoff": 0.01, "resume_margin": 1.0}
        # a batch per event: the first find hands some on before it is cut off
        if kind == "sync":
            with Client(mock.url, batch_size=1) as client:
                with client.receive(Filter(BASE), **options) as stream:
                    timer = threading.Timer(20, stream.close)  # a lost event would leave it waiting
                    timer.start()
                    got = []
                    for event in stream:
                        got.append(event.id)
                        if len(got) == 5:
                            break
                    timer.cancel()
                    reconnects = stream.reconnects
        else:
            async def read():
                async with AsyncClient(mock.url, batch_size=1) as client:
                    async with client.receive(Filter(BASE), **options) as stream:
                        ids = []
                        async for event in stream:
                            ids.append(event.id)
                            if len(ids) == 5:
                                return ids, stream.reconnects

            got, reconnects = asyncio.run(asyncio.wait_for(read(), 20))
    # what the first find sent before it was cut off is sent again by the second, and delivered once
    assert got == ["e1", "e2", "e3", "e4", "e5"] and reconnects == 1
    assert len([r for r in mock.received if r.path == "/find"]) == 2


def test_restart_cap_proof_scaled_none_stuck_leaked_missing_or_twice(tmp_path):
    """scripts/proof_restart_cap.py at CI size: 10 subscribers (sync and asyncio) through
    2 restarts of a collector process that serves 12 connections per address."""
    proof = load_script("proof_restart_cap")
    result = proof.run(subscribers=10, restarts=2, rate=500.0, every=4.0, settle=20.0, cap=12, workdir=str(tmp_path))
    assert result.ok, result.format()
    assert result.stored == result.sent > 0 and result.restarts == 2
    assert result.stuck == result.missing == result.duplicated == result.extra == result.leaked == result.leaked_clients == 0


def test_live_repeats_of_a_resume_find_are_dropped_however_late_they_come():
    """The collector pushes commits in order: the repeats of what a resume find
    delivered come before the first later event, however long after the find."""
    from theia_frames.protocol.arrow import event_schema
    from theia_frames.protocol.resume import ResumeState
    import pyarrow as pa

    def batch(ids, stamps):
        return pa.RecordBatch.from_pydict(
            {"id": ids, "timestamp": stamps, "source": ["/s"] * len(ids), "tags": [""] * len(ids), "content": ["x"] * len(ids)},
            schema=event_schema(),
        )

    state = ResumeState(margin=1.0, subscribed_at=BASE)
    state.resume_filter(Filter(1))
    assert state.recover(batch(["a", "b", "c"], [BASE + 1, BASE + 2, BASE + 3]), now=0.0).num_rows == 3
    state.resumed(now=0.0)
    # the pushes of a busy collector lag far behind the find: still repeats
    assert state.fresh(batch(["b", "c"], [BASE + 2, BASE + 3]), now=100.0).num_rows == 0
    # the first later event: every repeat has come; the check ends after it
    later = state.fresh(batch(["c", "d"], [BASE + 3, BASE + 4]), now=101.0)
    assert later.column(0).to_pylist() == ["d"]
    assert state.fresh(batch(["e"], [BASE + 5]), now=102.0).num_rows == 1
    assert state._resumed is None


# --------------------------------------------------------------------------- access


def test_token_becomes_a_bearer_header():
    with UpstreamLike() as server:
        with Client(server.url, token="s3cret") as client:
            client.send(Event())
        with Client(server.url, token="s3cret", headers={"X-Team": "sensors"}) as client:
            client.send(Event())
        assert server.headers[0]["Authorization"] == "Bearer s3cret"
        assert server.headers[1]["Authorization"] == "Bearer s3cret"
        assert server.headers[1]["X-Team"] == "sensors"


@pytest.mark.parametrize("kw", [{"token": ""}, {"token": "a\nb"}, {"token": 5},
                                {"token": "t", "headers": {"authorization": "Basic x"}}])
def test_bad_token_options_are_usage_errors(kw):
    with pytest.raises(UsageError):
        Client("ws://127.0.0.1:1", **kw)


def test_tokens_with_the_collector():
    with serve(db=":memory:", port=0, token="s3cret") as collector:
        with pytest.raises(AuthenticationError, match="401") as info:
            tf.send(collector.url, Event())
        assert collector.url in str(info.value) and "token" in str(info.value)
        with pytest.raises(AuthenticationError, match="403"):
            tf.find(collector.url, Filter(1), token="wrong")
        with pytest.raises(AuthenticationError, match="403"):
            Client(collector.url, token="wrong").receive(Filter(1))
        with Client(collector.url, token="s3cret") as client:
            client.send_many(make_events(100), wait=True)
            assert len(list(client.find(Filter(1)))) == 100
            with client.receive(Filter(1), reconnect=True) as stream:
                client.send(Event(id="live", timestamp=time.time()))
                assert next(iter(stream)).id == "live"


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return _self_signed_openssl(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "theia test collector")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certfile, keyfile


def _self_signed_openssl(tmp_path: Path) -> tuple[Path, Path]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("neither the cryptography package nor the openssl command is available to make a certificate")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(keyfile), "-out", str(certfile), "-days", "1", "-subj", "/CN=theia test collector",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return certfile, keyfile


@pytest.fixture
def tls_collector(tmp_path):
    certfile, keyfile = _self_signed(tmp_path)
    with serve(db=":memory:", port=0, certfile=certfile, keyfile=keyfile, token="s3cret") as collector:
        yield collector, certfile


def test_tls_with_a_ca_file(tls_collector):
    collector, certfile = tls_collector
    assert collector.url.startswith("wss://")
    with Client(collector.url, cafile=certfile, token="s3cret") as client:
        assert client.send_many(make_events(2_000), wait=True) == 2_000
        assert client.batched
        assert list(client.find(Filter(BASE))) == make_events(2_000)
        with client.receive(Filter(1)) as stream:
            client.send(Event(id="live", timestamp=time.time()))
            assert next(iter(stream)).id == "live"


def test_tls_with_an_ssl_context(tls_collector):
    collector, certfile = tls_collector
    context = ssl.create_default_context(cafile=str(certfile))
    assert tf.send(collector.url, make_events(10), ssl_context=context, token="s3cret", wait=True) == 10
    result = tf.find(collector.url, Filter(1), ssl_context=context, token="s3cret", batch=False)
    assert [e.id for e in result] == [e.id for e in make_events(10)]


def test_tls_refuses_an_untrusted_certificate(tls_collector):
    collector, _ = tls_collector
    with pytest.raises(ConnectError, match="TLS|certificate") as info:
        tf.send(collector.url, Event(), token="s3cret")
    assert collector.url in str(info.value)


def test_tls_token_still_checked(tls_collector):
    collector, certfile = tls_collector
    with pytest.raises(AuthenticationError, match="401"):
        tf.send(collector.url, Event(), cafile=certfile)


@pytest.mark.parametrize(
    "url, kw, match",
    [
        ("ws://127.0.0.1:1", {"cafile": "x.pem"}, "wss://"),
        ("wss://127.0.0.1:1", {"cafile": "/no/such/ca.pem"}, "CA file"),
        ("wss://127.0.0.1:1", {"ssl_context": "not a context"}, "SSLContext"),
        ("wss://127.0.0.1:1", {"ssl_context": ssl.create_default_context(), "cafile": "x.pem"}, "not both"),
    ],
)
def test_bad_tls_options_are_usage_errors(url, kw, match):
    with pytest.raises(UsageError, match=match):
        Client(url, **kw)


def test_the_window_of_delivered_events_stays_bounded():
    import pyarrow as pa

    from theia_frames.protocol.arrow import event_schema

    def batch(ids, ts):
        return pa.RecordBatch.from_arrays(
            [pa.array(ids), pa.array(ts, pa.float64()), pa.array(["s"] * len(ids)).dictionary_encode(),
             pa.array([[]] * len(ids), pa.list_(pa.string())), pa.array(["c"] * len(ids))],
            schema=event_schema(),
        )

    with MockServer() as mock:
        mock.on_live([])
        with Client(mock.url) as client, client.receive(Filter(1), reconnect=True, resume_margin=1.0) as stream:
            def fresh(batch, check=False):
                return stream.resume.fresh(batch, check=check, now=time.monotonic())

            # one event far in the future, then many ordinary ones: none of those is kept
            fresh(batch(["future"], [BASE + 10_000]))
            for i in range(5_000):
                fresh(batch([f"x{i}"], [BASE + i / 1000]))
            assert stream.resume.window <= 1
            # out of order within the window: kept, then compacted once they age out
            for i in range(5_000):
                fresh(batch([f"y{i}"], [BASE + 10_000 - 0.5]))
            fresh(batch(["later"], [BASE + 20_000]))
            for i in range(3_000):
                fresh(batch([f"z{i}"], [BASE + 20_000 + i / 1000]))
            assert stream.resume.window <= 2_100
            # repeats within the window are recognised by id and timestamp
            again = fresh(batch(["z2999", "z2999", "new"], [BASE + 20_002.999, BASE + 20_000.5, BASE + 20_003]),
                  check=True)
            assert again.column("id").to_pylist() == ["z2999", "new"]
