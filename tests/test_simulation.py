"""The sensor simulator: what it makes, and sending it in real time."""

from __future__ import annotations

import re
import threading
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import theia_frames as tf
from theia_frames.client import Client
from theia_frames.protocol.codec import encode
from theia_frames.exceptions import UsageError
from theia_frames.simulation import SENSOR_KINDS, sensor_events, simulate
from upstream_like import UpstreamLike

READING = re.compile(r"-?\d+\.\d(C|%|hPa|ppm|lx)")


@pytest.fixture
def upstream():
    with UpstreamLike() as server:
        yield server


def test_events_look_like_sensor_readings():
    events = list(sensor_events(100, sources=6, rate=50, start=1_700_000_000, seed=3))
    assert len(events) == 100
    assert {e.source for e in events} == {f"/dev/sensors/{k}-{i + 1}" for i, k in enumerate([*SENSOR_KINDS, "temp"])}
    for e in events:
        assert e.tags[0] == "sensor" and e.tags[1] in SENSOR_KINDS and e.tags[2].startswith("site-")
        assert len(e.tags) == 3
        assert READING.fullmatch(e.content)
        unit = SENSOR_KINDS[e.tags[1]][0]
        assert e.content.endswith(unit)
        encode(e)  # every event is sendable


def test_readings_stay_in_their_range():
    for e in sensor_events(2000, sources=5, seed=1, start=0):
        _, _, _, lo, hi = SENSOR_KINDS[e.tags[1]]
        value = float(re.match(r"-?\d+\.\d", e.content).group())
        assert lo - 0.05 <= value <= hi + 0.05


def test_timestamps_are_spaced_by_the_rate():
    events = list(sensor_events(5, rate=4, start=100.0))
    assert [e.timestamp for e in events] == [100.0, 100.25, 100.5, 100.75, 101.0]
    default = list(sensor_events(3, start=10.0))
    assert [round(e.timestamp - 10.0, 6) for e in default] == [0.0, 0.001, 0.002]


def test_start_defaults_to_now():
    import time

    before = time.time()
    first = next(sensor_events())
    assert before <= first.timestamp <= time.time()


def test_ids_are_unique_uuid4_strings():
    events = list(sensor_events(5000, seed=9, start=0))
    assert len({e.id for e in events}) == 5000
    for e in events[:50]:
        assert uuid.UUID(e.id).version == 4 and str(uuid.UUID(e.id)) == e.id


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), sources=st.integers(1, 12), n=st.integers(0, 50))
def test_a_seed_makes_the_same_events(seed, sources, n):
    a = list(sensor_events(n, sources=sources, seed=seed, start=5.0))
    b = list(sensor_events(n, sources=sources, seed=seed, start=5.0))
    assert a == b and len(a) == n


def test_different_seeds_differ():
    a = list(sensor_events(10, seed=1, start=0))
    b = list(sensor_events(10, seed=2, start=0))
    assert [e.id for e in a] != [e.id for e in b]


def test_endless_without_n():
    it = sensor_events(sources=2)
    assert len([next(it) for _ in range(1000)]) == 1000


@pytest.mark.parametrize("kw", [{"n": -1}, {"sources": 0}, {"rate": 0}, {"rate": -5}])
def test_bad_arguments(kw):
    with pytest.raises(UsageError):
        next(sensor_events(**kw))


def test_events_do_not_share_tag_lists():
    a, b, c, d, e = sensor_events(5, sources=4, start=0)
    a.tags.append("changed")
    assert "changed" not in e.tags


def test_simulate_sends_n_events_in_real_time(upstream):
    sent = simulate(upstream.url, rate=500, n=40, sources=3, seed=1, confirm=False)
    assert sent == 40
    assert upstream.wait_for_events(40)
    stamps = [e.timestamp for e in upstream.events]
    assert stamps == sorted(stamps)
    assert all(abs((b - a) - 1 / 500) < 1e-6 for a, b in zip(stamps, stamps[1:]))
    assert {e.source for e in upstream.events} == {"/dev/sensors/temp-1", "/dev/sensors/humidity-2", "/dev/sensors/pressure-3"}


def test_simulate_duration_and_n_take_the_smaller(upstream):
    assert simulate(upstream.url, rate=1000, duration=0.02, n=100, confirm=False) == 20
    assert simulate(upstream.url, rate=1000, duration=1.0, n=7, realtime=False, confirm=False) == 7
    assert upstream.wait_for_events(27)


def test_simulate_with_a_client_leaves_it_open(upstream):
    with Client(upstream.url) as client:
        assert simulate(client, rate=10_000, n=500, realtime=False, seed=2, confirm=False) == 500
        assert not client.closed
        client.send(tf.Event(content="still open"))
    assert upstream.wait_for_events(501)


def test_simulate_stops_when_asked(upstream):
    stop = threading.Event()
    result = []
    t = threading.Thread(target=lambda: result.append(simulate(upstream.url, rate=200, stop=stop, confirm=False)))
    t.start()
    assert upstream.wait_for_events(5)
    stop.set()
    t.join(10)
    assert not t.is_alive() and result[0] >= 5
    assert upstream.wait_for_events(result[0])


@pytest.mark.parametrize("kw", [{"rate": 0}, {"rate": 10, "duration": -1}, {"rate": 10, "realtime": False}])
def test_simulate_bad_arguments(kw):
    with pytest.raises(UsageError):
        simulate("ws://127.0.0.1:1", **kw)


# --------------------------------------------------------------------------- confirmed sends


def test_simulate_returns_once_the_collector_confirmed(collector):
    with Client(collector.url) as client:
        calls = []
        assert simulate(client, rate=10_000, n=300, realtime=False, seed=1, progress=calls.append) == 300
        assert client.stored == 300  # confirmed by a flush answer, not just sent
        assert calls == [300]
    # its own client: what it returns is stored, so another client finds it all at once
    assert simulate(collector.url, rate=2000, n=40, sources=2) == 40
    with Client(collector.url) as other:
        assert sum(1 for _ in other.find(tf.Filter().match_tag("sensor"))) == 340


def test_simulate_progress_counts_every_burst(collector):
    calls = []
    assert simulate(collector.url, rate=1000, n=30, progress=calls.append) == 30
    assert calls == sorted(calls) and calls[-1] == 30


def test_simulate_raises_when_the_collector_did_not_store(full_collector):
    from theia_frames.exceptions import ServerError

    with pytest.raises(ServerError, match="disk is full"):
        simulate(full_collector.url, rate=1000, n=5000, realtime=False)


def test_simulate_to_a_plain_peer_cannot_confirm(upstream):
    from theia_frames.exceptions import UnconfirmedError

    with pytest.raises(UnconfirmedError, match="30 event.s. were sent.*confirm=False"):
        simulate(upstream.url, rate=1000, n=30, realtime=False)
    assert upstream.wait_for_events(30)
