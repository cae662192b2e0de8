"""LiveFrame: the bounded buffer on its own, then the frame against the real embedded collector."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theia_frames.batch import events_to_batch
from theia_frames.event import Event
from theia_frames.exceptions import UsageError
from theia_frames.live import EventBuffer, LiveFrame, LiveStatus, parse_window


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
