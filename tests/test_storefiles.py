from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theia_frames.protocol.codec import encode
from theia_frames.event import Event
from theia_frames.exceptions import DecodeError, UsageError
from theia_frames.frames import storefiles
from theia_frames.frames.convert import EVENT_DTYPES, to_dataframe
from theia_frames.frames.storefiles import (
    DamagedStoreWarning,
    StoreReport,
    iter_store_batches,
    read_store,
    store_files,
)

T0 = 1_700_000_000  # a whole second


def events(start, n, step=1.0, source="/dev/sensors/temp-1"):
    return [
        Event(id=f"e{start + i * step:.3f}", timestamp=start + i * step, source=source,
              tags=["sensor", "temp"] if i % 2 else [], content=f"{20 + i}.5C\nsecond line")
        for i in range(n)
    ]


def store_bytes(evs):
    """The upstream file-store layout: each event, then one extra newline."""
    return b"".join(encode(e) + b"\n" for e in evs)


def write_store(folder: Path, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data if isinstance(data, bytes) else store_bytes(data))
    return folder


def ids(df):
    return df["id"].tolist()


@pytest.fixture
def store(tmp_path):
    """Three minutes of events in three files, plus a temporary file of the upstream store."""
    return write_store(
        tmp_path / "store",
        {
            f"{T0}-{T0 + 60}": events(T0, 4, 15),
            f"{T0 + 60}-{T0 + 120}": events(T0 + 60, 4, 15),
            f"{T0 + 120}-{T0 + 180}": events(T0 + 120, 4, 15),
            "tmpab12cd": b"event: partial",
        },
    )


def test_read_store_reads_every_file_into_the_event_frame(store):
    df = read_store(store)
    assert len(df) == 12
    for c, dtype in EVENT_DTYPES.items():
        assert df[c].dtype == dtype
    expected = to_dataframe(events(T0, 4, 15) + events(T0 + 60, 4, 15) + events(T0 + 120, 4, 15))
    pd.testing.assert_frame_equal(df, expected)
    report = df.attrs["theia_report"]
    assert report.ok and report.events == 12 and len(report.files) == 3
    assert report.ignored == ["tmpab12cd"]


def test_files_that_end_before_the_start_are_skipped_by_name(store, monkeypatch):
    opened = []
    real = storefiles._open

    def spy(path):
        if path.parent == store:
            opened.append(path.name)
        return real(path)

    monkeypatch.setattr(storefiles, "_open", spy)
    df = read_store(store, start=T0 + 70, end=T0 + 100)
    # the last file starts after the end, but may hold a late event: it is read
    assert opened == [f"{T0 + 60}-{T0 + 120}", f"{T0 + 120}-{T0 + 180}"]
    assert ids(df) == [f"e{T0 + 75:.3f}", f"e{T0 + 90:.3f}"]
    report = df.attrs["theia_report"]
    assert report.outside == [f"{T0}-{T0 + 60}"]


def test_an_event_appended_late_to_a_newer_file_is_found_in_its_time_range(tmp_path):
    # The upstream collector appends an event older than its newest file to that
    # file, so "<a>-<b>" can hold an event before a (never after b).
    late = Event(id="late", timestamp=T0 + 30.5, source="/dev/x", content="late")
    folder = write_store(tmp_path / "s", {
        f"{T0}-{T0 + 60}": events(T0, 2, 10),
        f"{T0 + 120}-{T0 + 180}": events(T0 + 120, 2, 10) + [late],
    })
    df = read_store(folder, start=T0 + 30, end=T0 + 31)
    assert ids(df) == ["late"]
    assert ids(read_store(folder))[:3] == [f"e{T0:.3f}", f"e{T0 + 10:.3f}", "late"]


def test_time_range_bounds_are_inclusive_and_accept_datetimes_and_text(store):
    start = dt.datetime.fromtimestamp(T0 + 60, dt.timezone.utc)
    df = read_store(store, start=start, end=f"{T0 + 135}")
    assert df["timestamp"].min() == pd.Timestamp(T0 + 60, unit="s", tz="UTC")
    assert df["timestamp"].max() == pd.Timestamp(T0 + 135, unit="s", tz="UTC")
    assert len(df) == 6
    iso = pd.Timestamp(T0 + 150, unit="s", tz="UTC").isoformat()
    assert len(read_store(store, start=iso)) == 2
    with pytest.raises(UsageError, match="before start"):
        read_store(store, start=T0 + 100, end=T0)
    with pytest.raises(UsageError, match="read_store start"):
        read_store(store, start="yesterday-ish")


def test_a_file_whose_last_second_reaches_the_start_is_read(tmp_path):
    # named for its first and last event's whole seconds: the last event is at .7
    folder = write_store(tmp_path / "s", {f"{T0}-{T0 + 5}": events(T0, 2, 5.7)})
    assert len(read_store(folder, start=T0 + 5.5)) == 1


def test_a_single_file_can_be_read(store):
    df = read_store(store / f"{T0 + 60}-{T0 + 120}")
    assert len(df) == 4
    other = store.parent / "events.log"
    other.write_bytes(store_bytes(events(5, 2)))
    assert len(read_store(other)) == 2


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UsageError, match="no such store"):
        read_store(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    df = read_store(tmp_path / "empty")
    assert len(df) == 0 and df["timestamp"].dtype == EVENT_DTYPES["timestamp"]
    assert df.attrs["theia_report"].ok


def test_events_are_sorted_by_time_stably(tmp_path):
    late, early = events(T0 + 30, 1), events(T0 + 10, 1)
    same = [Event(id=f"same{i}", timestamp=T0 + 20, source="s") for i in range(3)]
    folder = write_store(tmp_path / "s", {f"{T0}-{T0 + 60}": late + same + early})
    assert ids(read_store(folder)) == [early[0].id, "same0", "same1", "same2", late[0].id]
    assert ids(read_store(folder, sort=False))[0] == late[0].id


def test_frame_options_pass_through(store):
    df = read_store(store, index="timestamp", tz="Europe/Berlin", columns=["source"])
    assert list(df.columns) == ["source"] and str(df.index.tz) == "Europe/Berlin"


# --------------------------------------------------------------------------- damage


@pytest.fixture
def damaged(tmp_path):
    good = events(T0, 3, 10)
    middle = events(T0 + 60, 4, 10)
    data = store_bytes(middle[:2]) + b"GARBAGE\x00\xff in the middle\n" + store_bytes(middle[2:])
    tail = events(T0 + 120, 3, 10)
    cut = store_bytes(tail)
    cut = cut[: len(cut) - 20]  # the last event loses its end
    folder = write_store(
        tmp_path / "damaged",
        {f"{T0}-{T0 + 60}": good, f"{T0 + 60}-{T0 + 120}": data, f"{T0 + 120}-{T0 + 180}": cut},
    )
    return folder, good + middle + tail[:2], len(store_bytes(middle[:2])), len(store_bytes(tail[:2]))


def test_damaged_files_give_every_intact_event_and_a_report(damaged):
    folder, intact, garbage_at, cut_at = damaged
    with pytest.warns(DamagedStoreWarning) as caught:
        df = read_store(folder)
    assert ids(df) == [e.id for e in intact]
    report = df.attrs["theia_report"]
    assert not report.ok and report.events == len(intact)
    assert [(d.file, d.offset) for d in report.damage] == [
        (f"{T0 + 60}-{T0 + 120}", garbage_at),
        (f"{T0 + 120}-{T0 + 180}", cut_at),
    ]
    assert "no preamble" in report.damage[0].reason
    assert "truncated event" in report.damage[1].reason
    assert report.skipped_bytes > 0
    message = str(caught[0].message)
    assert f"{T0 + 60}-{T0 + 120}: byte {garbage_at}" in message and "truncated" in message
    assert "2 damaged region(s)" in report.summary()


def test_the_report_object_passed_in_is_filled(damaged):
    folder, *_ = damaged
    report = StoreReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedStoreWarning)
        df = read_store(folder, report=report)
    assert df.attrs["theia_report"] is report and len(report.damage) == 2


def test_strict_raises_naming_the_file(damaged):
    folder, *_ = damaged
    with pytest.raises(DecodeError, match=f"{T0 + 60}-{T0 + 120}: no preamble"):
        read_store(folder, strict=True)


def test_bad_utf8_is_skipped(tmp_path):
    evs = events(T0, 3)
    raw = bytearray(store_bytes(evs))
    second = len(store_bytes(evs[:1]))
    raw[raw.index(b"21.5C")] = 0xFF  # invalid UTF-8 in the second event's content
    folder = write_store(tmp_path / "s", {f"{T0}-{T0 + 60}": bytes(raw)})
    with pytest.warns(DamagedStoreWarning):
        df = read_store(folder)
    assert ids(df) == [evs[0].id, evs[2].id]
    (d,) = df.attrs["theia_report"].damage
    # the skipped region starts where the damaged event starts
    assert "not valid UTF-8" in d.reason and d.offset == second


def test_an_unreadable_entry_is_reported_not_raised(tmp_path, monkeypatch):
    folder = write_store(tmp_path / "s", {f"{T0}-{T0 + 60}": events(T0, 2), f"{T0 + 60}-{T0 + 120}": events(T0 + 60, 2)})
    real = storefiles._open

    def failing(path):
        if path.name.startswith(str(T0 + 60)):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(storefiles, "_open", failing)
    with pytest.warns(DamagedStoreWarning, match="Permission denied"):
        df = read_store(folder)
    assert len(df) == 2


def test_store_files_and_batches(store):
    report = StoreReport()
    files = store_files(store, start=T0 + 61, report=report)
    assert [f.first for f in files] == [T0 + 60, T0 + 120]
    batches = list(iter_store_batches(store, end=T0 + 59))
    assert sum(b.num_rows for b in batches) == 4


# --------------------------------------------------------------------------- properties

_events = st.lists(
    st.builds(
        Event,
        id=st.text(alphabet="abc123-", min_size=1, max_size=8),
        timestamp=st.floats(min_value=T0, max_value=T0 + 59, allow_nan=False),
        source=st.sampled_from(["/dev/a", "/var/log/x:y"]),
        tags=st.lists(st.sampled_from(["a", "b", "sensor"]), max_size=3, unique=True),
        content=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_events, st.data())
def test_a_cut_never_loses_an_intact_event_silently(tmp_path, evs, data):
    raw = store_bytes(evs)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    ends = []
    pos = 0
    for e in evs:
        pos += len(encode(e))
        ends.append(pos)  # an event is intact when its bytes (but the last newline) are all there
        pos += 1
    folder = tmp_path / f"cut{cut}-{len(raw)}"
    write_store(folder, {f"{T0}-{T0 + 60}": raw[:cut]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedStoreWarning)
        df = read_store(folder, sort=False)
    intact = [e.id for e, end in zip(evs, ends) if end - 1 <= cut]
    assert ids(df) == intact
    report = df.attrs["theia_report"]
    lost_part = cut not in [0] + [end - 1 for end in ends] + ends + [end + 1 for end in ends]
    if lost_part:
        assert not report.ok
    assert report.events == len(intact)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_events, st.data())
def test_garbage_between_events_is_reported_and_skipped(tmp_path, evs, data):
    garbage = data.draw(st.binary(min_size=1, max_size=30).filter(lambda b: b.strip(b"\r\n") and b"event:" not in b))
    at = data.draw(st.integers(min_value=0, max_value=len(evs)))
    raw = store_bytes(evs[:at]) + garbage + b"\n" + store_bytes(evs[at:])
    folder = tmp_path / f"g{abs(hash((raw, at)))}"
    write_store(folder, {f"{T0}-{T0 + 60}": raw})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedStoreWarning)
        df = read_store(folder, sort=False)
    assert ids(df) == [e.id for e in evs]
    report = df.attrs["theia_report"]
    assert len(report.damage) == 1


# --------------------------------------------------------------------------- theia-frames import


def test_import_command_loads_a_damaged_store_into_a_database(damaged, tmp_path, capsys):
    from theia_frames.cli import main
    from theia_frames.client import Client
    from theia_frames.server.collector import serve
    from theia_frames.filter import Filter

    folder, intact, garbage_at, _ = damaged
    db = tmp_path / "events.db"
    assert main(["import", str(folder), "--db", str(db)]) == 1  # something was skipped
    out, err = capsys.readouterr()
    assert f"imported {len(intact)} events into {db}" in out
    assert f"{T0 + 60}-{T0 + 120}: byte {garbage_at}: no preamble" in err
    # importing again adds nothing twice
    assert main(["import", str(folder), "--db", str(db), "--quiet"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedStoreWarning)
        expected = read_store(folder)
    with serve(db=str(db), port=0) as collector:
        assert collector.store.count() == len(intact)
        with Client(collector.url) as client:
            df = to_dataframe(client.find(Filter(T0)), progress=False)
    expected.attrs.clear()
    pd.testing.assert_frame_equal(df, expected)


def test_import_command_with_a_time_range_and_errors(store, tmp_path, capsys):
    from theia_frames.cli import main
    from theia_frames.server.store import EventStore

    db = tmp_path / "part.db"
    assert main(["import", str(store), "--db", str(db), "--start", str(T0 + 60), "--end", str(T0 + 119)]) == 0
    assert "imported 4 events" in capsys.readouterr().out
    with EventStore(str(db)) as s:
        assert s.count() == 4
    assert main(["import", str(tmp_path / "nope"), "--db", str(tmp_path / "x.db")]) == 1
    assert "no such store" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(st.floats(min_value=1.6e9, max_value=1.8e9, allow_nan=False), min_size=1, max_size=8))
def test_a_time_read_from_the_frame_finds_its_event_in_read_store(tmp_path_factory, times):
    """read_store bounds follow the filter's rule: a time taken from its own frame (rounded
    to the microsecond; the file holds the float seconds) finds the event as start and end."""
    folder = tmp_path_factory.mktemp("store")
    evs = [Event(id=f"e{i}", timestamp=t) for i, t in enumerate(times)]
    (folder / f"{int(min(times))}-{int(max(times)) + 60}").write_bytes(store_bytes(evs))
    df = read_store(folder, progress=False)
    for shown, event_id in zip(df["timestamp"], df["id"]):
        assert event_id in read_store(folder, start=shown, end=shown, progress=False)["id"].tolist()


def test_ties_in_a_store_file_keep_the_files_order(tmp_path):
    evs = [Event(id=i, timestamp=1_700_000_000.0 + (0.5 if i in "qx" else 0.0)) for i in "zqaxm"]
    (tmp_path / "1700000000-1700000060").write_bytes(store_bytes(evs))
    assert read_store(tmp_path, progress=False)["id"].tolist() == ["z", "a", "m", "q", "x"]
