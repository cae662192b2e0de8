"""to_dask: partitions fetched by the workers, from real collectors on loopback ports and store folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import websocket

import theia_frames as tf
from theia_frames.protocol.arrow import SUBPROTOCOL
from theia_frames.protocol.codec import encode_many
from theia_frames.protocol.messages import CHUNKS_PATH, MAX_CHUNK_ENTRIES, chunks_reply, coalesce_chunks, parse_chunks_reply
from theia_frames.server.collector import serve
from theia_frames.frames.dask import to_dask
from theia_frames.frames.partitions import chunk_counts, time_slices
from theia_frames.event import Event
from theia_frames.exceptions import MissingDependencyError, ProtocolError, UsageError
from theia_frames.filter import EventFilter
from theia_frames.frames.convert import EVENT_DTYPES, to_dataframe
from theia_frames.frames.storefiles import read_store
from theia_frames.testing.mock import MockServer

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")

T0 = 1_700_000_000.0
SOURCES = ["/dev/sensors/temp-1", "/dev/door", "/var/log/a:b"]


def events(n: int, *, start: float = T0, step: float = 0.37, prefix: str = "e") -> list[Event]:
    return [
        Event(
            id=f"{prefix}{i:06d}",
            timestamp=start + i * step,
            source=SOURCES[i % 3],
            tags=[["sensor", "temp"], [], ["door"]][i % 3],
            content=[f"{20 + i % 7}.5C", "door opened", "FAIL disk"][i % 3],
        )
        for i in range(n)
    ]


def stored(url: str, evs: list[Event]) -> None:
    with tf.Client(url) as client:
        client.send_many(evs)
        client.flush()


def reference(url: str, flt: EventFilter | None = None) -> pd.DataFrame:
    return to_dataframe(tf.find(url, flt if flt is not None else EventFilter()), index="timestamp")


def same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert got.dtypes.to_dict() == want.dtypes.to_dict()
    assert str(got.index.dtype) == str(want.index.dtype) == "datetime64[ns, UTC]"
    got = got.assign(source=got["source"].astype(str))
    want = want.assign(source=want["source"].astype(str))
    pd.testing.assert_frame_equal(got, want)


@pytest.fixture
def threads():
    with dask.config.set(scheduler="threads"):
        yield


# --------------------------------------------------------------------------- the layout request


def test_chunks_reply_is_bounded_and_its_parser_refuses_what_is_not_a_layout():
    many = [(float(i), float(i) + 0.5, 3) for i in range(3 * MAX_CHUNK_ENTRIES + 5)]
    entries = parse_chunks_reply(chunks_reply(many))
    assert entries is not None and len(entries) <= MAX_CHUNK_ENTRIES
    assert sum(n for _, _, n in entries) == 3 * len(many)
    assert entries[0][0] == 0.0 and entries[-1][1] == many[-1][1]
    assert coalesce_chunks([(1.0, 2.0, 1)] * 3, limit=1) == [(1.0, 2.0, 3)]
    too_many = json.dumps({"chunks": [[1.0, 2.0, 1]] * (MAX_CHUNK_ENTRIES + 1)})
    for bad in (too_many, '{"chunks": [[1, 2]]}', '{"chunks": [[1, 2, -1]]}', '{"chunks": [[1, 2, true]]}',
                '{"chunks": [[1, "2", 1]]}', '{"chunks": 3}', '{"chunks": [], "x": 1}', b'{"chunks": []}'):
        assert parse_chunks_reply(bad) is None, bad


def test_the_collector_counts_its_chunks_over_a_time_range(collector):
    evs = events(3000, step=1.0)
    stored(collector.url, evs)
    everything = chunk_counts(collector.url)
    assert everything is not None and sum(n for _, _, n in everything) == 3000
    assert min(lo for lo, _, _ in everything) == T0 and max(hi for _, hi, _ in everything) == T0 + 2999
    later = chunk_counts(collector.url, EventFilter(start=T0 + 2999.5))
    assert later == []
    assert chunk_counts(collector.url, EventFilter(end=T0 - 1)) == []


def test_the_layout_request_needs_the_extension(collector):
    ws = websocket.create_connection(collector.url + CHUNKS_PATH, timeout=5)
    try:
        ws.send("{}")
        answer = ws.recv()
        assert "theia-frames.v2" in json.loads(answer)["error"]
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 1008
    finally:
        ws.close()
    ws = websocket.create_connection(collector.url + CHUNKS_PATH, timeout=5, subprotocols=[SUBPROTOCOL])
    try:
        ws.send('{"content": "("}')
        assert "error" in json.loads(ws.recv())  # a filter it cannot build: an error, as on /find
    finally:
        ws.close()


def test_a_plain_peer_has_no_layout_and_is_sliced_by_time(threads):
    evs = events(40, step=1.0)
    mock = MockServer().on_find(evs)
    with mock:
        assert chunk_counts(mock.url) is None
        with pytest.raises(UsageError, match="give the filter an end"):
            to_dask(mock.url)
        ddf = to_dask(mock.url, EventFilter(start=T0, end=T0 + 39), partition="10s")
        assert ddf.npartitions == 4 and ddf.known_divisions
        got = ddf.compute()
        # from 1970 or no start: the partitions start at the first event the peer sends
        for flt in (EventFilter(start=1, end=T0 + 39), EventFilter(end=T0 + 39)):
            open_start = to_dask(mock.url, flt, partition="10s")
            assert open_start.npartitions == 4 and open_start.divisions[0] == pd.Timestamp(T0, unit="s", tz="UTC")
            assert open_start.compute()["id"].tolist() == [e.id for e in evs]
    assert got["id"].tolist() == [e.id for e in evs]


def test_a_layout_answer_longer_than_a_layout_can_be_is_refused():
    mock = MockServer(batch=True).respond("x" * (MAX_CHUNK_ENTRIES * 90), path=CHUNKS_PATH)
    with mock:
        with pytest.raises(ProtocolError):
            chunk_counts(mock.url)


# --------------------------------------------------------------------------- slices


def test_slices_by_count_hold_about_equal_counts():
    counts = [(0.0, 10.0, 9000), (10.0, 100.0, 1000)]
    cuts = time_slices(0.0, 100.0, counts=counts, npartitions=10)
    assert len(cuts) == 11 and cuts[0].value == 0 and cuts[-1].value == 100 * 10**9
    assert cuts[9].value <= 10 * 10**9  # nine slices in the dense first tenth
    by_events = time_slices(0.0, 100.0, counts=counts, partition_events=2500)
    assert len(by_events) == 5
    assert [t.value for t in time_slices(5.0, 5.0)] == [5 * 10**9, 5 * 10**9]
    with pytest.raises(UsageError, match="at most"):
        time_slices(0.0, 10.0**7, partition="1s")


# --------------------------------------------------------------------------- one collector


def test_to_dask_is_to_dataframe_partition_by_partition(collector, threads):
    stored(collector.url, events(5000))
    flt = EventFilter(start=T0 + 100.123456, end=T0 + 1500.5).match_tag("sensor|door")
    ddf = to_dask(collector.url, flt, npartitions=5)
    assert ddf.npartitions == 5 and ddf.known_divisions
    assert ddf.index.dtype == EVENT_DTYPES["timestamp"]
    assert {c: str(t) for c, t in ddf.dtypes.items()} == {c: str(t) for c, t in EVENT_DTYPES.items() if c != "timestamp"}
    want = reference(collector.url, flt)
    same_frame(ddf.compute(), want)
    sizes = ddf.map_partitions(len).compute().tolist()
    assert sum(sizes) == len(want) and max(sizes) - min(sizes) <= len(want) // 5
    # partition by partition: each holds exactly the events of its division
    for i, part in enumerate(ddf.partitions):
        frame = part.compute()
        lo, hi = ddf.divisions[i], ddf.divisions[i + 1]
        assert ((frame.index >= lo) & ((frame.index <= hi) if i == ddf.npartitions - 1 else (frame.index < hi))).all()


def test_partitions_are_cut_from_the_collectors_counts(collector, threads):
    # dense then sparse: equal time slices would be lopsided, equal counts are not
    # (the counts are as fine as the stored chunks: here one per send)
    stored(collector.url, events(3000, step=0.01))
    stored(collector.url, events(1000, start=T0 + 1000, step=5.0, prefix="s"))
    ddf = to_dask(collector.url, partition_events=1000)
    sizes = ddf.map_partitions(len).compute().tolist()
    assert sum(sizes) == 4000 and len(sizes) == 4
    assert max(sizes) < 1600 and min(sizes) > 400, sizes
    by_time = to_dask(collector.url, npartitions=4, partition=None)
    assert by_time.npartitions == 4


def test_loc_on_time_reads_only_its_partitions_and_resample_works(collector, threads):
    stored(collector.url, events(2000, step=1.0))
    ddf = to_dask(collector.url, partition="5min")
    a, b = pd.Timestamp(T0 + 600, unit="s", tz="UTC"), pd.Timestamp(T0 + 800, unit="s", tz="UTC")
    part = ddf.loc[a:b]
    assert part.npartitions < ddf.npartitions
    want = reference(collector.url).loc[a:b]
    same_frame(part.compute(), want)
    per_minute = ddf["id"].resample("1min").count().compute()
    expected = reference(collector.url)["id"].resample("1min").count()
    pd.testing.assert_series_equal(per_minute, expected, check_dtype=False, check_freq=False)


def test_nothing_stored_is_one_empty_partition_with_the_dtypes(collector, threads):
    ddf = to_dask(collector.url)
    got = ddf.compute()
    assert len(got) == 0 and ddf.npartitions == 1
    assert got.dtypes.to_dict() == reference(collector.url).dtypes.to_dict()


def test_bad_arguments_are_our_errors(collector):
    for kw in ({"npartitions": 0}, {"npartitions": True}, {"partition_events": 0}, {"partition": "1h", "npartitions": 2}):
        with pytest.raises(UsageError):
            to_dask(collector.url, **kw)
    with pytest.raises(UsageError, match="descending"):
        to_dask(collector.url, EventFilter().order_desc())
    with pytest.raises(UsageError, match="no such store folder"):
        to_dask("/no/such/store")
    with pytest.raises(UsageError):
        to_dask(collector.url, columns=["nope"])


def test_without_dask_the_error_names_the_extra(monkeypatch, collector):
    monkeypatch.setitem(sys.modules, "dask.dataframe", None)
    with pytest.raises(MissingDependencyError) as caught:
        to_dask(collector.url)
    assert caught.value.extra == "dask" and "theia-frames[dask]" in str(caught.value)


# --------------------------------------------------------------------------- several collectors


def test_several_collectors_are_merged_one_event_per_timestamp_and_id(threads):
    evs = events(3000, step=0.5)
    with serve(db=":memory:", port=0) as a, serve(db=":memory:", port=0) as b, serve(db=":memory:", port=0) as both:
        stored(a.url, evs[:2000])
        stored(b.url, evs[1000:])  # a third of the events in both
        stored(both.url, evs)
        # the same id at another time is another event, kept from each
        again = Event(id=evs[0].id, timestamp=evs[0].timestamp + 0.25, source="/dev/door")
        stored(b.url, [again])
        stored(both.url, [again])
        ddf = to_dask([a.url, b.url], npartitions=3)
        got = ddf.compute()
        want = reference(both.url)
    assert len(got) == 3001
    same_frame(got, want)


# --------------------------------------------------------------------------- a store folder


def write_store(folder: Path, files: dict[str, list[Event]]) -> None:
    folder.mkdir()
    for name, evs in files.items():
        (folder / name).write_bytes(encode_many(evs))


def test_a_store_folder_is_sliced_by_its_files_with_late_events_found(tmp_path, threads):
    evs = events(600, step=1.0)
    late = Event(id="late", timestamp=T0 + 250.5, source="/dev/door", content="late")
    files = {
        f"{int(T0)}-{int(T0) + 199}": evs[:200],
        # a gap, then a file holding a late event older than its name's first second
        f"{int(T0) + 300}-{int(T0) + 599}": evs[300:] + [late],
        f"{int(T0) + 200}-{int(T0) + 240}": evs[200:241],
    }
    folder = tmp_path / "store"
    write_store(folder, files)
    want = read_store(folder, index="timestamp")
    for kw in ({"partition": "1min"}, {"npartitions": 3}, {}):
        ddf = to_dask(folder, **kw)
        assert ddf.known_divisions
        same_frame(ddf.compute(), want)
    flt = EventFilter(start=T0 + 240, end=T0 + 320)
    ddf = to_dask(folder, flt, partition="20s")
    assert "late" in ddf.compute()["id"].tolist()
    same_frame(ddf.compute(), read_store(folder, start=T0 + 240, end=T0 + 320, index="timestamp"))
    ddf = to_dask(str(folder), flt.match_content("late|FAIL"))
    assert set(ddf.compute()["content"]) == {"late", "FAIL disk"}


# --------------------------------------------------------------------------- ddf.theia


def test_the_accessor_runs_the_helpers_per_partition(collector, threads):
    stored(collector.url, events(900, step=1.0))
    ddf = to_dask(collector.url, npartitions=4)
    df = reference(collector.url)
    pd.testing.assert_frame_equal(ddf.theia.bucket("1min"), df.theia.bucket("1min"))
    by = ddf.theia.bucket("2min", by="source")
    want = df.theia.bucket("2min", by="source")
    pd.testing.assert_frame_equal(by[sorted(by.columns)], want[sorted(want.columns)], check_names=False, check_column_type=False)
    exploded = ddf.theia.explode_tags().compute()
    want_exploded = df.theia.explode_tags()
    assert exploded["tag"].astype(str).tolist() == want_exploded["tag"].astype(str).tolist()
    readings = ddf.theia.extract().compute()
    want_readings = df.theia.extract()
    np.testing.assert_array_equal(readings["value"].to_numpy(), want_readings["value"].to_numpy(dtype=float))
    assert readings["value"].dtype == np.float64
    hits = ddf.theia.grep("FAIL").compute()
    assert hits["id"].tolist() == df.theia.grep("FAIL")["id"].tolist()
    with pytest.raises(UsageError, match="next partition"):
        ddf.theia.grep("FAIL", context="5s")
    for name in ("tag_counts", "tag_matrix", "timeline"):
        with pytest.raises(UsageError, match="Dask frame"):
            getattr(ddf.theia, name)()
    with pytest.raises(UsageError, match="combine"):
        ddf.theia.bucket("1min", value="x", agg="mean")


# --------------------------------------------------------------------------- a real cluster


def test_a_local_cluster_of_worker_processes_gives_the_same_answers(collector):
    distributed = pytest.importorskip("distributed")
    stored(collector.url, events(4000, step=0.5))
    df = reference(collector.url)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        ddf = to_dask(collector.url, npartitions=4)
        sizes = ddf.groupby("source", observed=True).size().compute()
        want = df.groupby("source", observed=True).size()
        assert sizes.sort_index().to_dict() == want.sort_index().to_dict()
        per_minute = ddf["id"].resample("1min").count().compute()
        pd.testing.assert_series_equal(
            per_minute, df["id"].resample("1min").count(), check_dtype=False, check_freq=False
        )
        pd.testing.assert_frame_equal(ddf.theia.bucket("1min"), df.theia.bucket("1min"))
        # the partitions are fetched and held by the workers, both of them
        held = ddf.persist()
        distributed.wait(held)
        holders = {w for workers in client.who_has(held).values() for w in workers}
        assert len(holders) == 2
        assert len(held.compute()) == len(df)


def test_partitions_follow_the_datas_extent(collector, threads):
    # a few minutes of data: an open filter from 1970 in 20 s partitions, and 1 h ones from far before
    evs = events(600, step=0.5)
    stored(collector.url, evs)
    ddf = to_dask(collector.url, EventFilter(start=1), partition="20s")
    assert 15 <= ddf.npartitions <= 17
    assert ddf.divisions[0] <= pd.Timestamp(T0, unit="s", tz="UTC") < ddf.divisions[1]
    got = ddf.compute()
    same_frame(got, reference(collector.url, EventFilter(start=1)))
    assert len(got) == 600
    hourly = to_dask(collector.url, EventFilter(start=T0 - 30 * 86_400), partition="1h")
    assert hourly.npartitions <= 2 and len(hourly.compute()) == 600


def test_partitions_before_1970_do_not_overlap(collector, threads):
    evs = events(400, start=-100.0, step=0.5)  # from 100 s before the epoch to 100 s after
    stored(collector.url, evs)
    ddf = to_dask(collector.url, EventFilter(start=-1_000.0), partition="20s")
    assert ddf.npartitions >= 10
    got = ddf.compute()
    assert len(got) == 400 and got["id"].is_unique
    assert sorted(got["id"]) == sorted(e.id for e in evs)


def test_a_partition_before_1970_fetches_its_own_range():
    from theia_frames.frames.dask import slice_filter

    flt = slice_filter(EventFilter(content="x"), -40_000_000, -20_000_000)
    assert flt.start == pytest.approx(-40.000001) and flt.end == pytest.approx(-19.999999)
    at_epoch = slice_filter(EventFilter(), 1, 20_000_000)
    assert at_epoch.start is not None and at_epoch.start < 0 and at_epoch.to_dict()["start"] < 0


def test_upstream_is_sliced_from_its_first_event(upstream_file_of_module, threads):
    evs = events(60, start=T0 + 500_000, step=1.0, prefix="up")
    with tf.Client(upstream_file_of_module.url) as client:
        client.send_many(evs)
    url = upstream_file_of_module.url
    flt = EventFilter(start=1, end=T0 + 500_059)
    from waiting import wait_until

    wait_until(lambda: len(to_dataframe(tf.find(url, flt, idle_timeout=1.0))) == 60, what="the events upstream")
    ddf = to_dask(url, flt, partition="20s", source_options={"idle_timeout": 1.0})
    assert ddf.npartitions == 3 and ddf.divisions[0] == pd.Timestamp(T0 + 500_000, unit="s", tz="UTC")
    assert sorted(ddf.compute()["id"]) == sorted(e.id for e in evs)
