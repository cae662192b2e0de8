"""LiveFrame: the bounded buffer on its own, then the frame against the real embedded collector."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pandas as pd
import psutil
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theia_frames.protocol.arrow import events_to_batch
from theia_frames.client import Client
from theia_frames.server.collector import serve
from theia_frames.event import Event
from theia_frames.exceptions import ConnectError, UsageError
from theia_frames.filter import Filter
from theia_frames.frames.convert import EVENT_DTYPES
from theia_frames.live.frame import EventBuffer, LiveFrame, LiveStatus, parse_window
from theia_frames.simulation import sensor_events
from waiting import wait_until


def make_batch(start: int, n: int, *, t0: float = 1_700_000_000.0, step: float = 0.001) -> pa.RecordBatch:
    return events_to_batch(
        Event(
            id=f"e{i:08d}",
            timestamp=t0 + i * step,
            source=f"/dev/sensors/temp-{i % 4}",
            tags=["sensor", "temp", "site-a"],
            content=f"{20 + i % 10}.5C",
        )
        for i in range(start, start + n)
    )


def ids(table: pa.Table) -> list[str]:
    return table.column("id").to_pylist()


# --------------------------------------------------------------------------- EventBuffer


def test_buffer_keeps_everything_without_bounds():
    buf = EventBuffer()
    for k in range(10):
        buf.append(make_batch(k * 7, 7))
    assert buf.rows == 70 and buf.dropped == 0
    assert ids(buf.table()) == [f"e{i:08d}" for i in range(70)]


def test_buffer_max_rows_keeps_the_newest():
    buf = EventBuffer(max_rows=25)
    for k in range(10):
        buf.append(make_batch(k * 7, 7))
    assert buf.rows == 25 and buf.dropped == 45
    assert ids(buf.table()) == [f"e{i:08d}" for i in range(45, 70)]


def test_buffer_window_is_measured_from_the_newest_timestamp():
    buf = EventBuffer(window="1s")
    buf.append(make_batch(0, 3000))  # 3 s of events, 1 ms apart
    ts = buf.table().column("timestamp").to_pylist()
    assert max(ts) - min(ts) <= 1.0
    assert buf.rows == 1001 and buf.dropped == 1999
    assert buf.newest == pytest.approx(1_700_000_000.0 + 2.999)


def test_buffer_window_drops_late_old_events():
    buf = EventBuffer(window=10)
    buf.append(make_batch(0, 5, t0=1000.0, step=1.0))
    buf.append(make_batch(5, 1, t0=980.0, step=1.0))  # arrives late, already outside the window
    assert ids(buf.table()) == [f"e{i:08d}" for i in range(5)]


def test_buffer_rejects_bad_bounds():
    with pytest.raises(UsageError, match="max_rows"):
        EventBuffer(max_rows=0)
    with pytest.raises(UsageError, match="window"):
        EventBuffer(window="soon")
    with pytest.raises(UsageError, match="event schema"):
        EventBuffer().append(pa.record_batch({"x": [1]}))


def test_parse_window_forms():
    assert parse_window("10min") == 600.0
    assert parse_window(dt.timedelta(seconds=3)) == 3.0
    assert parse_window(2.5) == 2.5
    with pytest.raises(UsageError):
        parse_window(0)
    with pytest.raises(UsageError):
        parse_window(True)


def test_buffer_memory_bound_holds_under_100k_events():
    """100,000 events in batches of mixed sizes: rows, held buffers and chunks stay bounded."""
    max_rows = 5_000
    buf = EventBuffer(max_rows=max_rows)
    # one independent batch per append, as from the network
    sizes = [1, 3, 17, 250, 1_000, 4_000, 9_000]
    start = 0
    allocated_peak = 0
    baseline = pa.total_allocated_bytes()
    k = 0
    while start < 100_000:
        n = min(sizes[k % len(sizes)], 100_000 - start)
        k += 1
        buf.append(make_batch(start, n))
        start += n
        assert buf.rows <= max_rows
        assert buf.retained_rows <= 2 * max_rows
        assert len(buf.batches) <= 20
        allocated_peak = max(allocated_peak, pa.total_allocated_bytes() - baseline)
    assert buf.appended == 100_000
    assert buf.rows == max_rows and buf.dropped == 100_000 - max_rows
    assert ids(buf.table()) == [f"e{i:08d}" for i in range(100_000 - max_rows, 100_000)]
    # what is held is about the kept rows' worth, not the 100,000 events'
    per_row = buf.nbytes / buf.retained_rows
    assert buf.nbytes <= 2 * max_rows * per_row
    assert allocated_peak < 100_000 * per_row / 2


def test_buffer_memory_bound_holds_for_a_window_under_100k_events():
    buf = EventBuffer(window="2s")  # 2,000 events' worth at 1 ms apart
    for start in range(0, 100_000, 500):
        buf.append(make_batch(start, 500))
        assert buf.rows <= 2_001
        assert buf.retained_rows <= 2 * 2_001
    assert buf.rows == 2_001


def test_a_huge_batch_is_copied_down_to_the_bound():
    buf = EventBuffer(max_rows=100)
    buf.append(make_batch(0, 50_000))
    assert buf.rows == 100 and buf.retained_rows == 100


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=40),
    max_rows=st.one_of(st.none(), st.integers(min_value=1, max_value=500)),
    window=st.one_of(st.none(), st.floats(min_value=0.01, max_value=2.0)),
)
def test_buffer_matches_the_naive_model(sizes, max_rows, window):
    buf = EventBuffer(max_rows=max_rows, window=window)
    model: list[tuple[str, float]] = []
    newest = None
    start = 0
    for n in sizes:
        batch = make_batch(start, n, step=0.003)
        start += n
        buf.append(batch)
        model.extend(zip(batch.column("id").to_pylist(), batch.column("timestamp").to_pylist()))
        if n:
            newest = max(newest or -1.0, max(batch.column("timestamp").to_pylist()))
        if window is not None and newest is not None:
            model = [(i, t) for i, t in model if t >= newest - window]
        if max_rows is not None:
            model = model[-max_rows:]
        assert ids(buf.table()) == [i for i, _ in model]
        assert buf.rows == len(model)
        assert buf.retained_rows <= max(2 * buf.rows, 0)
    assert buf.appended == start
    assert buf.dropped == start - buf.rows


def test_status_text():
    status = LiveStatus(state="paused", received=5, rows=5, dropped=0, rate=0.0, errors=1,
                        last_error="X: y", newest=None, lag=None, version=1)
    assert str(status) == "paused · 5 events · 0/s · 5 rows · 1 error"


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError, match="Client or a URL"):
        LiveFrame(42)
    with pytest.raises(UsageError, match="filter"):
        LiveFrame("ws://127.0.0.1:1", "sensor")
    with pytest.raises(UsageError, match="max_rows"):
        LiveFrame("ws://127.0.0.1:1", max_rows=-1)


# --------------------------------------------------------------------------- against the real collector

SENSORS = Filter().match_tag("sensor")


def readings(n: int, *, seed: int = 1, sources: int = 3) -> list[Event]:
    return list(sensor_events(n, sources=sources, seed=seed))


def connections_to(port: int) -> int:
    """This process's open TCP connections to ``port`` on the loopback."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def test_events_arrive_into_the_frame(collector, sender):
    with LiveFrame(collector.url, SENSORS) as live:
        assert live.state == "running" and live.running
        assert len(live.df) == 0 and live.df.dtypes.equals(pd.Series(EVENT_DTYPES))
        sent = sender.send_many(readings(500))
        assert live.wait_for(sent)
        df = live.df
        assert len(df) == 500 and len(live) == 500
        assert df.dtypes.equals(pd.Series(EVENT_DTYPES))
        assert sorted(df["id"]) == sorted(e.id for e in readings(500))
        status = live.status()
        assert (status.state, status.received, status.rows, status.errors) == ("running", 500, 500, 0)
        assert status.newest is not None and status.version == live.version > 0
        assert "500 events" in str(status) and "live · " in repr(live)
    assert live.state == "stopped" and not live.running


def test_only_matching_events_arrive(collector, sender):
    with LiveFrame(collector.url, Filter().match_tag("temp")) as live:
        events = readings(90, sources=3)  # temp, humidity, pressure in turn
        sender.send_many(events)
        sender.send(Event(id="marker", tags=["temp"], content="last"))
        wait_until(lambda: "marker" in set(live.df["id"]), what="the marker")
        assert len(live.df) == 31
        assert set(live.df["source"].astype(str)) == {"/dev/sensors/temp-1", ""}


def test_df_is_cached_until_something_changes(collector, sender, monkeypatch):
    import theia_frames.frames.convert as frames

    builds = []
    real = frames.batches_to_dataframe
    monkeypatch.setattr(frames, "batches_to_dataframe", lambda b, **kw: builds.append(1) or real(b, **kw))
    with LiveFrame(collector.url, SENSORS) as live:
        assert live.wait_for(sender.send_many(readings(50)))
        first = live.df
        n = len(builds)
        for _ in range(10):
            assert live.df.equals(first)
        assert len(builds) == n  # no rebuild: nothing changed
        first["extra"] = 1  # changing a returned frame does not change the cache
        assert "extra" not in live.df.columns
        assert live.wait_for(50 + sender.send_many(readings(5, seed=2)))
        assert len(live.df) == 55 and len(builds) == n + 1


def test_stop_ends_the_thread_and_closes_the_socket(collector, sender):
    sender.send(Event(tags=["warm-up"]))  # the sender's own connection, opened now
    baseline = connections_to(collector.port)
    live = LiveFrame(collector.url, SENSORS).start()
    assert connections_to(collector.port) == baseline + 1
    assert live.wait_for(sender.send_many(readings(20)))
    thread = live._thread
    live.stop()
    assert not thread.is_alive() and not live.running
    assert live.state == "stopped"
    wait_until(lambda: connections_to(collector.port) == baseline, what="the socket to close")
    assert len(live.df) == 20  # what arrived stays readable
    live.stop()  # idempotent
    with pytest.raises(UsageError, match="stopped"):
        live.start()


def test_stop_is_prompt_without_traffic(collector):
    live = LiveFrame(collector.url, SENSORS).start()
    thread = live._thread
    live.stop(timeout=10)
    assert not thread.is_alive()


def test_a_client_given_is_left_open(collector, sender):
    with Client(collector.url) as client:
        with LiveFrame(client, SENSORS) as live:
            assert live.url == collector.url
            assert live.wait_for(sender.send_many(readings(10)))
        assert not client.closed
        assert client.find(SENSORS).iter_batches() is not None


def test_pause_freezes_the_frame_and_resume_catches_up(collector, sender):
    seen = []
    with LiveFrame(collector.url, SENSORS, on_batch=lambda df: seen.append(len(df))) as live:
        assert live.wait_for(sender.send_many(readings(30)))
        wait_until(lambda: sum(seen) == 30, what="the hook")
        live.pause()
        assert live.state == "paused"
        version = live.version
        assert live.wait_for(30 + sender.send_many(readings(40, seed=2)))
        assert live.version == version and len(live.df) == 30
        assert sum(seen) == 30  # hooks wait too
        status = live.status()
        assert status.state == "paused" and status.received == 70 and status.rows == 30
        live.resume()
        assert live.state == "running" and len(live.df) == 70 and live.version != version
        assert sum(seen) == 70 and seen[-1] == 40  # what arrived while paused, in one batch


def test_hooks_get_each_batch_as_a_dataframe(collector, sender):
    frames_seen = []
    with LiveFrame(collector.url, SENSORS) as live:
        hook = live.add_hook(frames_seen.append)

        @live.add_hook
        def broken(df):
            raise RuntimeError("hook failed")

        assert live.wait_for(sender.send_many(readings(200)))
        wait_until(lambda: sum(map(len, frames_seen)) == 200, what="the hook")
        assert all(f.dtypes.equals(pd.Series(EVENT_DTYPES)) for f in frames_seen)
        assert live.status().errors >= 1 and "hook failed" in live.status().last_error
        assert live.state == "running"  # a failing hook does not end the stream
        live.remove_hook(hook)
        live.remove_hook(broken)
        count = len(frames_seen)
        assert live.wait_for(200 + sender.send_many(readings(10, seed=3)))
        assert len(frames_seen) == count


def test_memory_bound_holds_under_100k_events(collector, sender):
    max_rows = 10_000
    events = list(sensor_events(100_000, sources=4, seed=9))
    with LiveFrame(collector.url, SENSORS, max_rows=max_rows) as live:
        peak = [0]

        def watch(_df):
            buf = live._buffer
            peak[0] = max(peak[0], buf.retained_rows)
            assert buf.rows <= max_rows

        live.add_hook(watch)
        # in steps the collector's live queue always holds (it drops a subscriber
        # with more than 10,000 events waiting); the frame sees batches of all sizes
        for start in range(0, len(events), 5_000):
            sender.send_many(events[start : start + 5_000])
            assert live.wait_for(start + 5_000, timeout=60)
        status = live.status()
        assert status.received == 100_000
        assert status.rows == max_rows == len(live.df)
        assert status.dropped == 90_000
        assert peak[0] <= 2 * max_rows
        assert live._buffer.retained_rows <= 2 * max_rows
        assert list(live.df["id"]) == [e.id for e in events[-max_rows:]]


def test_window_rolls_off_old_rows(collector, sender):
    with LiveFrame(collector.url, SENSORS, window="1s") as live:
        events = list(sensor_events(3000, sources=2, rate=1000, start=time.time(), seed=4))
        assert live.wait_for(sender.send_many(events))
        df = live.df
        span = (df["timestamp"].max() - df["timestamp"].min()).total_seconds()
        assert span <= 1.0 and len(df) == 1001


def test_reads_are_safe_while_the_consumer_writes(collector, sender):
    problems = []
    done = threading.Event()

    with LiveFrame(collector.url, SENSORS) as live:

        def reader():
            last = 0
            try:
                while not done.is_set():
                    n = len(live.df)
                    assert n >= last
                    last = n
                    live.status()
                    live.table.num_rows
            except Exception as exc:  # reported to the test below
                problems.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        events = readings(20_000, seed=5)
        for start in range(0, len(events), 500):
            sender.send_many(events[start : start + 500])
            if start % 5_000 == 0:
                assert live.wait_for(start + 500, timeout=60)
        assert live.wait_for(20_000, timeout=60)
        done.set()
        for t in threads:
            t.join()
        assert not problems
        assert len(live.df) == 20_000


def test_connection_refused_is_raised_by_start(collector):
    url = collector.url
    collector.stop()
    live = LiveFrame(url, SENSORS)
    with pytest.raises(ConnectError):
        live.start()
    assert live.state == "new"


def test_collector_going_away_ends_the_frame_without_reconnect(collector, sender):
    live = LiveFrame(collector.url, SENSORS, reconnect=False).start()
    assert live.wait_for(sender.send_many(readings(10)))
    collector.stop()
    wait_until(lambda: not live.running, what="the consumer to end")
    assert live.state in ("ended", "failed")
    assert live.wait_for(11, timeout=1) is False
    assert len(live.df) == 10
    live.stop()


def test_frame_survives_collector_restarts_with_nothing_missing_or_repeated(tmp_path):
    db = tmp_path / "events.db"
    collector = serve(db=db, port=0)
    port = collector.port
    events = readings(1_200, seed=9)
    sent = 0
    try:
        with LiveFrame(collector.url, SENSORS, receive_options={"max_backoff": 0.2}) as live:
            for restart in range(3):
                with Client(collector.url) as client:
                    chunk = events[sent : sent + 300]
                    client.send_many(chunk, wait=True)
                    sent += len(chunk)
                collector.stop()
                with Client(f"ws://127.0.0.1:{port}", timeout=1) as client:
                    with pytest.raises(ConnectError):
                        client.send_many(events[:1])
                collector = serve(db=db, port=port)
                wait_until(lambda: live.status().reconnects == restart + 1, what="the frame to reconnect")
            with Client(collector.url) as client:
                client.send_many(events[sent:], wait=True)
            wait_until(lambda: live.status().received >= len(events), what="every event")
            status = live.status()
            df = live.df
    finally:
        collector.stop()
    assert sorted(df["id"]) == sorted(e.id for e in events)  # nothing missing, nothing twice
    assert status.reconnects == 3 and status.gap_total > 0
    assert "reconnect" in str(status)


# --------------------------------------------------------------------------- the phase a user needs to know


def test_the_status_follows_the_connection_down_and_back(tmp_path):
    collector = serve(db=tmp_path / "events.db", port=0)
    port = collector.port
    options = {"backoff": 0.05, "max_backoff": 0.1}
    try:
        with LiveFrame(collector.url, SENSORS, receive_options=options) as live:
            assert live.status().phase == "live" and str(live.status()).startswith("live · ")
            collector.stop()
            lost = time.time()
            wait_until(lambda: live.status().phase == "reconnecting", what="the frame to see the drop")
            wait_until(lambda: live.status().attempt >= 3, what="three attempts")
            status = live.status()
            assert status.state == "running"  # the frame itself goes on
            assert lost - 1 <= status.since <= time.time()
            assert status.reason == "the collector does not accept connections (it is not running, or not at this address)"
            assert str(status).startswith("reconnecting since ") and f"attempt {status.attempt}" in str(status)
            live.pause()
            assert live.status().phase == "reconnecting" and str(live.status()).split(" · ")[1] == "paused"
            live.resume()
            collector = serve(db=tmp_path / "events.db", port=port)
            wait_until(lambda: live.status().phase == "live", what="the frame to come back")
            assert live.status().attempt == 0 and live.status().reconnects == 1
        assert live.status().phase == "stopped"
    finally:
        collector.stop()


def test_every_failed_attempt_is_counted(tmp_path):
    # the attempt count comes from the stream's failures as the consumer sees them
    collector = serve(db=tmp_path / "events.db", port=0)
    live = LiveFrame(collector.url, SENSORS, receive_options={"backoff": 0.05, "max_backoff": 0.05}).start()
    try:
        collector.stop()
        wait_until(lambda: live.status().phase == "reconnecting", what="the drop")
        seen: list = []
        stream = live._stream
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            error = stream.last_error
            if not seen or seen[-1] is not error:
                seen.append(error)
            time.sleep(0.001)
        attempt = live.status().attempt
        failed = len(seen) - 1  # the first is the drop (or, if this loop started late, the first failure)
        assert failed >= 10
        # the frame sees a failure at the next heartbeat (one may be in flight): a missed one would accumulate
        assert abs(attempt - (failed + 1)) <= 1, (attempt, failed)
    finally:
        live.stop()
        collector.stop()


def test_giving_up_is_said_in_words(collector):
    url = collector.url
    live = LiveFrame(url, SENSORS, receive_options={"backoff": 0.05, "max_backoff": 0.05, "max_retries": 2}).start()
    collector.stop()
    wait_until(lambda: live.state == "failed", what="the frame to give up")
    text = str(live.status())
    assert text.startswith("failed: gave up reconnecting after 3 attempts: the collector does not accept connections")
    live.stop()


def test_connecting_and_not_started():
    live = LiveFrame("ws://127.0.0.1:9", SENSORS)
    assert live.status().phase == "new" and str(live.status()).startswith("not started · ")
    live._connecting = True  # what start() sets while it subscribes
    assert live.status().phase == "connecting"


def test_the_words_for_a_stream_error():
    from theia_frames.exceptions import ConnectionClosed, SubscriberTooSlow
    from theia_frames.live.frame import in_words

    assert in_words(ConnectionClosed("closed with code 1001", code=1001)) == (
        "the collector went away (it was stopped or is restarting)")
    assert in_words(ConnectionClosed("dropped", code=None)).startswith("the connection dropped without a goodbye")
    assert in_words(SubscriberTooSlow("too slow", code=1013)).startswith("the collector dropped this subscription")
    assert "code" not in in_words(ConnectionClosed("closed with code 1011", code=1011))


def test_the_words_come_from_the_errors_kind_and_attributes_not_their_text():
    from theia_frames.exceptions import ConnectError, ConnectionClosed, GaveUp, HandshakeRefused
    from theia_frames.live.frame import in_words

    refused = ConnectError("no words to match here", reason="refused")
    assert in_words(refused) == "the collector does not accept connections (it is not running, or not at this address)"
    assert in_words(ConnectError("refused TLS resolve", reason="unknown-host")) == "the collector's host name is unknown"
    assert in_words(ConnectError("x", reason="tls")) == "the secure connection to the collector failed (TLS)"
    assert in_words(ConnectError("x", reason="timeout")) == "the collector does not answer (connecting timed out)"
    assert in_words(ConnectError("boom", reason="other")) == "the collector cannot be reached: boom"
    assert in_words(HandshakeRefused("x", status=503)) == (
        "the server refused the subscription (HTTP status 503): is it a theia collector?")
    assert in_words(GaveUp("x", attempts=4, cause=refused)) == f"gave up reconnecting after 4 attempts: {in_words(refused)}"
    assert in_words(GaveUp("x", attempts=2, cause=None)) == "gave up reconnecting after 2 attempts"
    assert in_words(ConnectionClosed("x", code=4000)) == "the connection closed (code 4000)"
