from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theia_frames.frames import convert as frames
from theia_frames.protocol.arrow import batch_to_ipc, event_schema, events_to_batch, ipc_to_batches
from theia_frames.protocol.codec import decode_columns, encode
from theia_frames.event import Event
from theia_frames.exceptions import UsageError
from theia_frames.frames.convert import (
    EVENT_COLUMNS,
    EVENT_DTYPES,
    batches_to_dataframe,
    empty_frame,
    iter_dataframes,
    show_progress_default,
    to_dataframe,
)
from waiting import wait_until


def sample(n=6):
    return [
        Event(
            id=f"id{i}",
            timestamp=1_700_000_000.0 + i * 0.25,
            source=f"/dev/sensors/{'temp' if i % 2 else 'hum'}-{i % 3}",
            tags=[["sensor", "temp"], [], ["x"]][i % 3],
            content=f"{20 + i}.5C",
        )
        for i in range(n)
    ]


def assert_event_dtypes(df, columns=EVENT_COLUMNS):
    assert list(df.columns) == list(columns)
    for c in columns:
        assert df[c].dtype == EVENT_DTYPES[c], (c, df[c].dtype)


def reference_frame(events):
    """The slow, obvious way: one Python object per value, plain pandas."""
    return pd.DataFrame(
        {
            "timestamp": pd.Series(
                [pd.Timestamp(round(e.timestamp * 1e6), unit="us", tz="UTC") for e in events],
                dtype="datetime64[ns, UTC]",
            ),
            "source": pd.Categorical([e.source for e in events]),
            "tags": pd.array([list(e.tags) for e in events], dtype=pd.ArrowDtype(pa.list_(pa.string()))),
            "content": pd.array([e.content for e in events], dtype=pd.StringDtype("pyarrow")),
            "id": pd.array([e.id for e in events], dtype=pd.StringDtype("pyarrow")),
        }
    )


class FakeResult:
    """The part of a client's FindResult that frames use: ``iter_batches()``."""

    def __init__(self, batches):
        self.batches = batches
        self.iterated = False

    def iter_batches(self):
        self.iterated = True
        yield from self.batches

    def __iter__(self):  # a frame must not take the per-event path
        raise AssertionError("iterated event by event")


# --------------------------------------------------------------------------- dtypes on every path


def test_event_dtypes_are_the_documented_ones():
    assert EVENT_DTYPES["id"] == pd.StringDtype("pyarrow")
    assert EVENT_DTYPES["content"] == pd.StringDtype("pyarrow")
    assert EVENT_DTYPES["timestamp"] == "datetime64[ns, UTC]"
    assert EVENT_DTYPES["source"] == "category"
    assert EVENT_DTYPES["tags"] == pd.ArrowDtype(pa.list_(pa.string()))
    assert tuple(EVENT_DTYPES) == EVENT_COLUMNS


def test_the_frame_leads_with_the_time_and_ends_with_the_id():
    # an 80-column terminal shows timestamp, source, tags and content, not a 36-character id
    assert EVENT_COLUMNS == ("timestamp", "source", "tags", "content", "id")
    df = to_dataframe([Event(id="x", timestamp=1.0)], progress=False)
    assert list(df.columns) == ["timestamp", "source", "tags", "content", "id"]


@pytest.mark.parametrize(
    "make",
    [
        lambda evs: evs,
        lambda evs: iter(evs),
        lambda evs: (e for e in evs),
        lambda evs: events_to_batch(evs),
        lambda evs: pa.Table.from_batches([events_to_batch(evs)]),
        lambda evs: [events_to_batch(evs[:2]), events_to_batch(evs[2:])],
        lambda evs: FakeResult([events_to_batch(evs[:1]), events_to_batch(evs[1:])]),
        lambda evs: ipc_to_batches(batch_to_ipc(events_to_batch(evs))),
    ],
    ids=["list", "iterator", "generator", "batch", "table", "batches", "find-result", "ipc"],
)
@pytest.mark.parametrize("n", [0, 1, 6])
def test_every_path_gives_the_same_frame_and_dtypes(make, n):
    events = sample(n)
    df = to_dataframe(make(events), progress=False)
    assert_event_dtypes(df)
    assert len(df) == n
    pd.testing.assert_frame_equal(df, reference_frame(events))


def test_a_find_result_is_read_through_its_batches():
    result = FakeResult([events_to_batch(sample(3))])
    df = to_dataframe(result, progress=False)
    assert result.iterated and len(df) == 3


def test_empty_frame_has_the_dtypes():
    assert_event_dtypes(empty_frame())
    assert_event_dtypes(to_dataframe([]))
    assert_event_dtypes(batches_to_dataframe([]))
    assert_event_dtypes(to_dataframe(FakeResult([])))
    assert_event_dtypes(to_dataframe(events_to_batch([])))
    df = to_dataframe([], index="timestamp")
    assert isinstance(df.index, pd.DatetimeIndex) and str(df.index.tz) == "UTC" and df.index.dtype == "datetime64[ns, UTC]"


def test_decoded_wire_events_take_the_same_path():
    events = sample(4)
    cols = decode_columns([encode(e) for e in events])
    from theia_frames.protocol.arrow import columns_to_batch

    pd.testing.assert_frame_equal(to_dataframe(columns_to_batch(cols)), reference_frame(events))


# --------------------------------------------------------------------------- values


def test_timestamps_are_rounded_to_the_microsecond_without_a_per_row_step():
    events = [Event(id="a", timestamp=1509989630.6749051), Event(id="b", timestamp=0.0000005),
              Event(id="c", timestamp=0.0000015), Event(id="d", timestamp=-1.25)]
    ts = to_dataframe(events)["timestamp"]
    assert ts[0] == pd.Timestamp("2017-11-06 17:33:50.674905", tz="UTC")
    assert ts[1].value == 0 and ts[2].value == 2000  # half to even, like round()
    assert ts[3] == pd.Timestamp("1969-12-31 23:59:58.75", tz="UTC")


def test_tags_follow_the_wire_meaning():
    # "" is no tags; other empty pieces are kept, as the codec reads them
    batch = pa.RecordBatch.from_pydict(
        {"id": ["a", "b", "c", "d"], "timestamp": [1.0] * 4, "source": ["s"] * 4,
         "tags": ["", "x,y", "x,,y", ","], "content": [""] * 4},
    )  # sources and tags as text
    assert to_dataframe(batch)["tags"].tolist() == [[], ["x", "y"], ["x", "", "y"], ["", ""]]


def test_tags_path_for_repeated_tag_sets_matches_the_direct_split():
    n = 10_000
    tags = ["sensor,temp", "", "sensor,humidity,site-a", "x"] * (n // 4)
    batch = pa.RecordBatch.from_pydict(
        {"id": [str(i) for i in range(n)], "timestamp": np.arange(n, dtype=float), "source": ["s"] * n,
         "tags": tags, "content": [""] * n},
    )  # sources and tags as text
    got = to_dataframe(batch)["tags"].tolist()
    assert got == [t.split(",") if t else [] for t in tags]


def test_sources_are_sorted_categories():
    df = to_dataframe([Event(id="1", timestamp=1, source="b"), Event(id="2", timestamp=2, source="a"),
                       Event(id="3", timestamp=3, source="b")])
    assert list(df["source"].cat.categories) == ["a", "b"]
    assert df["source"].tolist() == ["b", "a", "b"]


def test_missing_values_in_a_hand_made_table_do_not_crash():
    table = pa.table({"id": ["a", None], "timestamp": [1.0, None], "source": [None, "s"],
                      "tags": [None, "t"], "content": ["x", None]})
    df = to_dataframe(table)
    assert_event_dtypes(df)
    assert df["tags"].tolist() == [[], ["t"]]
    assert df["timestamp"].isna().tolist() == [False, True]
    assert df["source"].isna().tolist() == [True, False]


def test_a_table_with_other_column_order_and_types_is_conformed():
    table = pa.table({"content": pa.array(["c"], pa.large_string()), "timestamp": pa.array([2], pa.int64()),
                      "id": ["i"], "extra": [1], "source": ["s"], "tags": ["a"]})
    df = to_dataframe(table)
    assert_event_dtypes(df)
    assert df.loc[0, "timestamp"] == pd.Timestamp(2, unit="s", tz="UTC")


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e300])
def test_impossible_timestamps_are_a_usage_error(bad):
    table = pa.table({"id": ["a"], "timestamp": [bad], "source": ["s"], "tags": [""], "content": [""]})
    with pytest.raises(UsageError, match="timestamps must be finite"):
        to_dataframe(table)


# --------------------------------------------------------------------------- options


def test_index_tz_and_columns():
    events = sample(3)
    df = to_dataframe(events, index="timestamp", tz="Europe/Berlin", columns=["source", "content"])
    assert list(df.columns) == ["source", "content"]
    assert df.index.name == "timestamp" and str(df.index.tz) == "Europe/Berlin"
    assert df.index[0] == pd.Timestamp(events[0].timestamp, unit="s", tz="UTC")
    df2 = to_dataframe(events, tz="America/New_York")
    assert str(df2["timestamp"].dt.tz) == "America/New_York"
    assert df2["timestamp"].dt.tz_convert("UTC").equals(to_dataframe(events)["timestamp"])
    only = to_dataframe(events, columns=["tags"])
    assert list(only.columns) == ["tags"] and only["tags"].dtype == EVENT_DTYPES["tags"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"columns": ["nope"]}, "unknown event columns"),
        ({"columns": ["id", "id"]}, "listed twice"),
        ({"index": "source"}, "index must be None or 'timestamp'"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        to_dataframe(sample(2), **kwargs)


@pytest.mark.parametrize(
    "source, message",
    [
        ("/var/lib/theia", "read_store"),
        (42, "got int"),
        ([1, 2], "holds a int"),
        ([Event(id="a"), "b"], "holds a str"),
        (pd.DataFrame(), "not a DataFrame"),
        (pa.table({"x": [1]}), "missing"),
    ],
)
def test_bad_sources(source, message):
    with pytest.raises(UsageError, match=message):
        to_dataframe(source, progress=False)


def test_a_single_event_is_a_frame_of_one():
    assert len(to_dataframe(Event(id="a", timestamp=1.0))) == 1


# --------------------------------------------------------------------------- chunks


def test_iter_dataframes_chunks_with_the_same_dtypes():
    events = sample(10)
    chunks = list(iter_dataframes(events, batch_size=4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    for c in chunks:
        assert_event_dtypes(c)
    whole = pd.concat(chunks, ignore_index=True)
    whole["source"] = whole["source"].astype("category")
    pd.testing.assert_frame_equal(whole, to_dataframe(events), check_categorical=False)
    assert list(iter_dataframes([], batch_size=4)) == []


def test_iter_dataframes_splits_and_joins_batches():
    batches = [events_to_batch(sample(7)), events_to_batch(sample(1)), events_to_batch(sample(3))]
    sizes = [len(c) for c in iter_dataframes(FakeResult(batches), batch_size=5, progress=False)]
    assert sizes == [5, 5, 1]


def test_iter_dataframes_holds_one_chunk_at_a_time():
    consumed = []

    def source():
        for i in range(100):
            consumed.append(i)
            yield events_to_batch([Event(id=str(i), timestamp=float(i))])

    chunks = iter_dataframes(FakeResult(source()), batch_size=10, progress=False)
    first = next(chunks)
    assert len(first) == 10 and len(consumed) == 10
    next(chunks)
    assert len(consumed) == 20
    chunks.close()


def test_iter_dataframes_options():
    (df,) = iter_dataframes(sample(3), index="timestamp", tz="UTC", columns=["id"])
    assert list(df.columns) == ["id"] and df.index.name == "timestamp"
    with pytest.raises(UsageError, match="batch_size"):
        list(iter_dataframes(sample(3), batch_size=0))


# --------------------------------------------------------------------------- progress


def test_progress_is_off_where_nobody_watches(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert show_progress_default() is False
    monkeypatch.delenv("CI")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert show_progress_default() is False

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    assert show_progress_default() is True
    monkeypatch.setenv("CI", "1")
    assert show_progress_default() is False
    monkeypatch.setenv("CI", "false")
    assert show_progress_default() is True


def test_progress_bar_shows_count_and_rate(capsys):
    to_dataframe(FakeResult([events_to_batch(sample(3)), events_to_batch(sample(2))]), progress=True)
    err = capsys.readouterr().err
    assert "events" in err and "5" in err and "/s" in err


def test_progress_false_prints_nothing(capsys):
    to_dataframe(sample(3), progress=False)
    assert capsys.readouterr().err == ""


def test_default_progress_prints_nothing_in_a_non_interactive_run(capsys, monkeypatch):
    monkeypatch.setenv("CI", "true")
    to_dataframe(sample(3))
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- the columnar path equals the reference

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_line = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
_tag = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=",\r\n"), min_size=1, max_size=6)
_events = st.lists(
    st.builds(
        Event,
        id=_line,
        timestamp=st.floats(min_value=-2e9, max_value=4e9, allow_nan=False, allow_infinity=False),
        source=st.sampled_from(["/dev/a", "/dev/b", "ü:1", ""]) | _line,
        tags=st.lists(_tag, max_size=4),
        content=_text,
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(_events, st.integers(min_value=1, max_value=7))
def test_columnar_path_equals_the_reference_path(events, split):
    batches = [events_to_batch(events[i : i + split]) for i in range(0, len(events), split)]
    via_batches = to_dataframe(FakeResult(batches), progress=False)
    via_events = to_dataframe(iter(events), progress=False)
    expected = reference_frame(events)
    pd.testing.assert_frame_equal(via_batches, expected)
    pd.testing.assert_frame_equal(via_events, expected)


@settings(max_examples=40, deadline=None)
@given(_events, st.integers(min_value=1, max_value=9))
def test_chunks_concatenate_to_the_whole(events, size):
    chunks = list(iter_dataframes(events, batch_size=size, progress=False))
    assert all(len(c) <= size for c in chunks)
    assert sum(len(c) for c in chunks) == len(events)
    if events:
        whole = pd.concat(chunks, ignore_index=True)
        expected = reference_frame(events)
        for c in ("id", "timestamp", "content"):
            pd.testing.assert_series_equal(whole[c], expected[c])
        assert whole["source"].astype(str).tolist() == [e.source for e in events]
        assert whole["tags"].tolist() == [list(e.tags) for e in events]


def _chunks(series):
    return series.array._pa_array.num_chunks


def test_many_small_batches_are_merged_into_few_chunks():
    batches = [events_to_batch([Event(id=str(i), timestamp=float(i), source="s")]) for i in range(50)]
    df = to_dataframe(FakeResult(batches), progress=False)
    assert len(df) == 50 and df["id"].tolist() == [str(i) for i in range(50)]
    assert _chunks(df["content"]) == 1 and _chunks(df["tags"]) == 1


def _big_batch(n, source_of, start=0):
    return pa.record_batch(
        {"id": [f"e{start + i}" for i in range(n)], "timestamp": np.arange(start, start + n, dtype=float),
         "source": [source_of(i) for i in range(n)], "tags": ["a,b"] * n, "content": ["21.5C"] * n},
        schema=event_schema(),
    )


def test_chunks_with_different_sources_share_one_sorted_category():
    rows = frames._CHUNK_ROWS + 10
    batches = [
        _big_batch(rows, lambda i: f"z{i % 3}", 0),
        _big_batch(rows, lambda i: None if i % 7 == 0 else f"m{i % 2}", rows),
        _big_batch(rows, lambda i: "a", 2 * rows),
    ]
    df = to_dataframe(FakeResult(batches), progress=False)
    assert list(df["source"].cat.categories) == ["a", "m0", "m1", "z0", "z1", "z2"]
    expected = [s for b in batches for s in b.column("source").to_pylist()]
    assert df["source"].astype(object).where(df["source"].notna(), None).tolist() == expected
    assert df["id"].tolist() == [f"e{i}" for i in range(3 * rows)]


def test_a_large_table_is_converted_without_copying_its_text():
    batch = _big_batch(frames._CHUNK_ROWS * 2, lambda i: "s")
    df = to_dataframe(batch)
    data = df["id"].array._pa_array.chunk(0).buffers()[2]
    assert _chunks(df["id"]) == 1
    assert data.address == batch.column(0).buffers()[2].address


def test_received_batches_are_released_as_they_are_converted():
    """A stream's messages are not all held until the end: the peak stays near the frame."""
    import gc
    import weakref

    held = []

    def received():
        for k in range(4):
            ipc = batch_to_ipc(_big_batch(frames._CHUNK_ROWS, lambda i: "s", k * frames._CHUNK_ROWS))
            message = np.frombuffer(ipc, dtype=np.uint8).copy()  # a message buffer we can watch
            held.append(weakref.ref(message))
            (batch,) = ipc_to_batches(message)
            del message, ipc
            if k:
                gc.collect()
                assert held[k - 1]() is None, f"message {k - 1} is still alive after it was converted"
            yield batch
            del batch

    df = to_dataframe(FakeResult(received()), progress=False)
    assert len(df) == 4 * frames._CHUNK_ROWS
    assert df["id"].iloc[-1] == f"e{4 * frames._CHUNK_ROWS - 1}"
    gc.collect()
    assert all(ref() is None for ref in held)


def test_a_decompressed_message_is_kept_not_copied_and_a_plain_one_is_copied():
    """A compressed message decodes into buffers of its own: the frame keeps them (no copy,
    nothing else kept alive); an uncompressed one is a view of the message: copied."""
    batch = _big_batch(frames._CHUNK_ROWS, lambda i: "s")
    for compression, kept in (("zstd", True), (None, False)):
        (received,) = ipc_to_batches(batch_to_ipc(batch, compression=compression))
        df = to_dataframe(FakeResult(iter([received])), progress=False)
        data = df["content"].array._pa_array.chunk(0).buffers()[2]
        assert (data.address == received.column(4).buffers()[2].address) is kept, compression
        assert df["content"].tolist() == batch.column(4).to_pylist()


def test_frames_module_registers_the_accessor():
    df = to_dataframe(sample(2))
    assert hasattr(df, "theia")
    assert frames.__all__


# --------------------------------------------------------------------------- against the real collector


def _stored(collector, n, timeout=10.0):
    wait_until(lambda: collector.store.count() >= n, timeout, what=f"the collector to store {n} events")


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "plain"])
def test_a_find_result_of_the_real_collector(collector, batch):
    from theia_frames.client import Client
    from theia_frames.filter import Filter
    from theia_frames.simulation import sensor_events

    events = list(sensor_events(700, sources=3, rate=1000, start=1_700_000_000, seed=2))
    with Client(collector.url, batch=batch) as client:
        client.send_many(events)
        _stored(collector, len(events))
        df = to_dataframe(client.find(Filter(1_700_000_000)), progress=False)
        pd.testing.assert_frame_equal(df, reference_frame(events))
        temps = to_dataframe(client.find(Filter(1_700_000_000).match_tag("temp")), progress=False)
        assert len(temps) > 0 and set(temps["source"].astype(str)) == {"/dev/sensors/temp-1"}
        empty = to_dataframe(client.find(Filter(1_800_000_000)), progress=False)
        assert len(empty) == 0
        for c in EVENT_COLUMNS:
            assert empty[c].dtype == EVENT_DTYPES[c]
        chunks = list(iter_dataframes(client.find(Filter(1_700_000_000)), batch_size=300, progress=False))
        assert [len(c) for c in chunks] == [300, 300, 100]


def test_the_progress_bar_shows_a_percentage_when_the_collector_announces_a_total(capsys):
    from theia_frames.client import Client
    from theia_frames.server.collector import serve
    from theia_frames.filter import Filter
    from theia_frames.simulation import sensor_events

    with serve(db=":memory:", port=0, batch_size=500) as running, Client(running.url) as client:
        client.send_many(sensor_events(2_000, start=1_700_000_000), wait=True)
        df = to_dataframe(client.find(Filter(1_700_000_000)), progress=True)
        assert len(df) == 2_000
        assert "100%" in capsys.readouterr().err
        to_dataframe(client.find(Filter(1_700_000_000).match_tag("sensor")), progress=True)
        assert "%" not in capsys.readouterr().err  # no total for a filter the index cannot count


# --------------------------------------------------------------------------- order of events of one instant


def test_events_of_one_instant_come_back_in_the_order_given():
    import theia_frames as tf

    for _ in range(3):
        with tf.serve(db=":memory:", port=0) as s, tf.Client(s.url) as c:
            c.send_many(
                pd.DataFrame({"timestamp": [pd.Timestamp("2015-12-10 06:55:46")] * 5, "content": list("12345")}), wait=True
            )
            assert tf.to_dataframe(c.find(tf.Filter(0)), progress=False).content.tolist() == list("12345")


def test_ties_come_back_in_arrival_order_on_every_client_path(collector_db):
    """Two senders interleaving small writes of a few instants (ids random, so an order by
    id would show): merged chunks of several tiers, read batched, plain and async, asc and
    desc, all in arrival order (desc its exact reverse)."""
    import asyncio
    import random

    import theia_frames as tf
    from theia_frames.server.store import MERGE_FANOUT

    rng = random.Random(5)
    t0 = 1_700_000_000.0
    arrived: list[Event] = []
    with tf.Client(collector_db.url) as a, tf.Client(collector_db.url, batch=False) as b:
        for k in range(MERGE_FANOUT**2 + 3):
            events = [
                Event(id=f"{rng.getrandbits(40):x}", timestamp=t0 + rng.choice([0.0, 0.5, 0.5, 1.0]), content=str(k))
                for _ in range(rng.randint(1, 4))
            ]
            sender = a if k % 2 else b
            sender.send_many(events)
            if sender is b:
                _stored(collector_db, len(arrived) + len(events))
            else:
                a.flush()
            arrived += events
    assert any(c.tier > 0 for c in collector_db.store.chunks())
    want = [e.id for e in sorted(arrived, key=lambda e: e.timestamp)]
    asc, desc = tf.Filter(t0), tf.Filter(t0).order_desc()
    for batch in (True, False):
        with tf.Client(collector_db.url, batch=batch, batch_size=7) as client:
            assert [e.id for e in client.find(asc)] == want, batch
            assert [e.id for e in client.find(desc)] == want[::-1], batch
            assert tf.to_dataframe(client.find(desc), progress=False)["id"].tolist() == want[::-1], batch
            chunks = tf.iter_dataframes(client.find(asc), batch_size=10, progress=False)
            assert [i for df in chunks for i in df["id"]] == want, batch

    async def read() -> tuple[list[str], list[str]]:
        async with tf.AsyncClient(collector_db.url) as client:
            up = [e.id async for e in client.find(asc)]
            down = (await client.find(desc).to_dataframe(progress=False))["id"].tolist()
            return up, down

    assert asyncio.run(read()) == (want, want[::-1])


# --------------------------------------------------------------------------- categories: the values held


def test_a_frames_categories_are_the_sources_it_holds():
    """A received dictionary may hold sources no row uses (a stored chunk's, of which a
    filter kept some): they are not categories of the frame."""
    dictionary = pa.array(["/a", "/b", "/c", "/d"])
    batch = pa.record_batch(
        [
            pa.array(["e0", "e1"]),
            pa.array([1.0, 2.0]),
            pa.DictionaryArray.from_arrays(pa.array([2, 0], pa.int32()), dictionary),
            pa.array([[], []], pa.list_(pa.string())),
            pa.array(["x", "y"]),
        ],
        schema=event_schema(),
    )
    df = batches_to_dataframe([batch, batch.slice(1)])
    assert df["source"].cat.categories.tolist() == ["/a", "/c"]
    assert df["source"].astype(str).tolist() == ["/c", "/a", "/a"]
    chunks = list(iter_dataframes(FakeResult([batch.slice(0, 1), batch.slice(1)]), batch_size=1, progress=False))
    assert [c["source"].cat.categories.tolist() for c in chunks] == [["/c"], ["/a"]]


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "plain"])
def test_a_filtered_find_has_only_the_sources_it_holds_on_every_path(collector, batch):
    import asyncio

    import theia_frames as tf

    f = tf.Filter(1_700_000_000).match_tag("alert")
    live = tf.LiveFrame(collector.url, f, batch=batch)
    live.start()
    wait_until(lambda: live.status().phase == "live", what="the live frame subscribed")
    events = [Event(id=f"e{i}", timestamp=1_700_000_000.0 + i, source=f"/s/{i % 9}", tags=["alert"] if i % 9 < 2 else ["x"])
              for i in range(90)]
    with tf.Client(collector.url) as client:
        client.send_many(events, wait=True)
    with tf.Client(collector.url, batch=batch) as client:
        df = tf.to_dataframe(client.find(f), progress=False)
        assert df["source"].cat.categories.tolist() == ["/s/0", "/s/1"] and len(df) == 20
        for chunk in tf.iter_dataframes(client.find(f), batch_size=3, progress=False):
            assert sorted(chunk["source"].cat.categories) == sorted(set(chunk["source"].astype(str)))

    async def read():
        async with tf.AsyncClient(collector.url, batch=batch) as client:
            return await client.find(f).to_dataframe(progress=False)

    assert asyncio.run(read())["source"].cat.categories.tolist() == ["/s/0", "/s/1"]
    wait_until(lambda: len(live.df) == 20, what="20 events in the live frame")
    live.stop()
    assert live.df["source"].cat.categories.tolist() == ["/s/0", "/s/1"]


# --------------------------------------------------------------------------- a frame's time as a filter bound

_example = iter(range(1_000_000))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    times=st.lists(
        st.one_of(
            st.floats(min_value=1.6e9, max_value=1.8e9, allow_nan=False),
            st.floats(min_value=-3e9, max_value=3e9, allow_nan=False),
        ),
        min_size=1,
        max_size=12,
    ),
    batch=st.booleans(),
)
def test_a_time_taken_from_a_frame_finds_its_event_on_the_collector(collector, times, batch):
    """Times read from a frame (rounded to the microsecond; the wire holds the float seconds)
    used as start and end: the collector returns the event they came from, and only events
    a frame shows at that microsecond."""
    import theia_frames as tf
    from theia_frames.timeparse import frame_micros

    prefix = f"x{next(_example)}-"
    events = [Event(id=f"{prefix}{i}", timestamp=t) for i, t in enumerate(times)]
    with tf.Client(collector.url, batch=batch) as client:
        client.send_many(events, wait=batch)
        if not batch:
            _stored_ids(collector, prefix, len(events))
        df = tf.to_dataframe(client.find(tf.Filter().match_id(f"{prefix}.*")), index="timestamp", progress=False)
        assert len(df) == len(events)
        for i, (shown, event_id) in enumerate(zip(df.index, df["id"])):
            same = tf.Filter(shown).match_end(df.index[i]).match_id(f"{prefix}.*")
            found = [e.id for e in client.find(same)]
            assert event_id in found
            t = next(e.timestamp for e in events if e.id == event_id)
            assert sorted(found) == sorted(e.id for e in events if frame_micros(e.timestamp) == frame_micros(t))


def _stored_ids(collector, prefix, n, timeout=10.0):
    from theia_frames.filter import Filter

    def stored() -> bool:
        return sum(len(c) for c in collector.store.query(Filter().match_id(f"{prefix}.*"))) >= n

    wait_until(stored, timeout, what=f"the collector to store the events {prefix}*")
