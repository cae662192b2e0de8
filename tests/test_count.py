"""Counts where the data is: ``client.count`` against ``bucket(to_dataframe(find))``.

Every filter shape x every ``every``/``by`` x both dialects (our collector counts on its
side; with ``batch=False`` the client counts while the events stream) x sync and async;
against the real upstream collector the client-side count gives the same frame.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import theia_frames as tf
from theia_frames.client import AsyncClient, Client
from theia_frames.event import Event
from theia_frames.exceptions import UsageError
from theia_frames.filter import EventFilter, Filter
from theia_frames.frames.analysis import bucket, count_frame, count_grain
from theia_frames.protocol.arrow import SUBPROTOCOL, events_to_batch
from theia_frames.protocol.count import (
    COUNT_PATH,
    Counter,
    count_reply,
    count_request,
    event_nanoseconds,
    parse_count_reply,
)
from theia_frames.server.collector import serve
from upstream import UpstreamCollector
from waiting import wait_until

T0 = 1_700_000_000.0
SOURCES = [f"/dev/s{i}" for i in range(5)]
TAGS = ["alpha", "beta", "gamma", "zeta"]


def dataset(n: int = 900, seed: int = 7) -> list[Event]:
    """Events over about 15 minutes across an hour boundary, with repeated times,
    untagged events, several tags per event, and a few before 1970."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        t = T0 - 300 + i * 1.013 + rng.random() * 0.5
        if i % 97 == 0:
            t = round(t)  # equal timestamps at bucket edges
        tags = rng.sample(TAGS, rng.randrange(0, 3))
        events.append(
            Event(
                id=f"{rng.getrandbits(128):032x}",
                timestamp=t,
                source=rng.choice(SOURCES),
                tags=tags,
                content=f"reading {i} {'error' if i % 5 == 0 else 'ok'}",
            )
        )
    events += [Event(id=f"old{i}", timestamp=-86_400.0 * 3 + i * 30.7, source=SOURCES[0], tags=["alpha"]) for i in range(4)]
    return events


EVENTS = dataset()

FILTERS = {
    "time-only": Filter(T0 - 1_000),
    "time-range": EventFilter(start=T0, end=T0 + 300),
    "tag": EventFilter(start=T0 - 1_000, tags=("beta",)),
    "content": EventFilter(start=T0 - 1_000, content=r"error$"),
    "source": EventFilter(start=T0 - 1_000, source=r"/dev/s[12]"),
    "desc": EventFilter(start=T0 - 1_000, order="desc"),
    "nothing": EventFilter(start=T0 - 1_000, content="no such reading"),
    "all-times": EventFilter(start=-86_400.0 * 10),
}
EVERIES = [None, "1min", "7min", "1h"]
BYS = [None, "source", "tag"]


def expected(df: pd.DataFrame, every: Any, by: str | None) -> pd.DataFrame:
    if every is not None:
        return bucket(df, every, by=by)
    if by is None:
        return pd.DataFrame({"count": np.array([len(df)], dtype=np.int64)})
    keys = tf.explode_tags(df)["tag"].dropna() if by == "tag" else df["source"]
    per = keys.astype(str).value_counts().sort_index()
    return pd.DataFrame({"count": per.to_numpy(dtype=np.int64)}, index=pd.Index(list(per.index), dtype=object, name=by))


def assert_same(count: Any, df: pd.DataFrame, every: Any, by: str | None) -> None:
    """``count()`` gives ``expected``'s frame, or refuses as it does (too many buckets)."""
    try:
        want = expected(df, every, by)
    except UsageError as exc:
        with pytest.raises(UsageError) as refused:
            count()
        assert str(refused.value) == str(exc)
        return
    pd.testing.assert_frame_equal(count(), want, check_exact=True)


@pytest.fixture(scope="module")
def ours() -> Iterator[str]:
    with serve(db=":memory:", port=0) as collector:
        with Client(collector.url) as client:
            client.send_many(EVENTS)
            client.flush()
        yield collector.url


@pytest.fixture(scope="module")
def finds(ours: str) -> dict[str, pd.DataFrame]:
    with Client(ours) as client:
        return {name: client.find(flt).to_dataframe(progress=False) for name, flt in FILTERS.items()}


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "plain"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_count_is_the_bucket_of_the_find(ours: str, finds: dict[str, pd.DataFrame], name: str, batch: bool) -> None:
    assert (len(finds[name]) == 0) == (name == "nothing")
    with Client(ours, batch=batch) as client:
        for every in EVERIES:
            for by in BYS:
                assert_same(lambda: client.count(FILTERS[name], every, by), finds[name], every, by)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "plain"])
def test_the_async_count_is_the_same_frame(ours: str, finds: dict[str, pd.DataFrame], batch: bool) -> None:
    cases = [(name, every, by) for name in FILTERS for every in EVERIES for by in BYS]

    async def run() -> list[Any]:
        out: list[Any] = []
        async with AsyncClient(ours, batch=batch) as client:
            for name, every, by in cases:
                try:
                    out.append(await client.count(FILTERS[name], every, by))
                except UsageError as exc:
                    out.append(exc)
        return out

    for got, (name, every, by) in zip(asyncio.run(run()), cases, strict=True):
        def again(got: Any = got) -> Any:
            if isinstance(got, Exception):
                raise got
            return got

        assert_same(again, finds[name], every, by)


def test_the_collector_answers_a_count_itself(ours: str) -> None:
    from websockets.sync.client import connect

    grain = count_grain("1min")
    with connect(ours + COUNT_PATH, subprotocols=[SUBPROTOCOL], max_size=None) as ws:  # type: ignore[list-item]
        ws.send(count_request(FILTERS["source"].to_json(), grain, "source"))
        answer = ws.recv()
    result = parse_count_reply(answer)
    assert result is not None and result.events == sum(
        1 for e in EVENTS if e.timestamp >= T0 - 1_000 and e.source in ("/dev/s1", "/dev/s2")
    )
    assert sorted(result.names) == ["/dev/s1", "/dev/s2"]
    assert json.loads(answer)["counted"]["grain"] == grain


def test_a_count_without_the_extension_is_refused(ours: str) -> None:
    from websockets.sync.client import connect

    with connect(ours + COUNT_PATH) as ws:
        assert "theia-frames.v2" in json.loads(ws.recv())["error"]


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "plain"])
def test_too_many_groups_are_refused_clearly(batch: bool) -> None:
    with serve(db=":memory:", port=0, max_groups=10) as collector:
        with Client(collector.url, batch=batch) as client:
            client.send_many(EVENTS[:100])
            client.flush() if client.batched else None
            wait_until(lambda: len(client.find(Filter(1)).to_dataframe(progress=False)) == 100, what="100 events")
            with pytest.raises(UsageError, match=r"count refused: it makes more than 10 \(time slot, group\) pairs"):
                client.count(Filter(1), "1s", "source", max_groups=10)
            assert client.count(Filter(1), "1h", "source", max_groups=10)["/dev/s0"].sum() > 0


def test_a_bad_count_request_is_refused() -> None:
    with pytest.raises(UsageError, match="grouped by nothing, 'source' or 'tag'"):
        count_request("{}", 0, "content")
    with serve(db=":memory:", port=0) as collector, Client(collector.url) as client:
        with pytest.raises(UsageError, match="grouped by"):
            client.count(None, "1min", by="level")
        with pytest.raises(UsageError, match="invalid bucket frequency"):
            client.count(None, "every so often")


def test_an_empty_store_counts_nothing() -> None:
    with serve(db=":memory:", port=0) as collector:
        for batch in (True, False):
            with Client(collector.url, batch=batch) as client:
                empty = client.find(Filter(1)).to_dataframe(progress=False)
                for every in EVERIES:
                    for by in BYS:
                        pd.testing.assert_frame_equal(client.count(Filter(1), every, by), expected(empty, every, by))


def test_times_are_rounded_as_a_frame_rounds_them() -> None:
    seconds = np.array([0.0000005, 0.0000015, 1.0000025, -0.0000005, T0 + 0.1234565, -1e9 - 0.0000005])
    frame = tf.to_dataframe([Event(id=str(i), timestamp=float(t)) for i, t in enumerate(seconds)])
    assert event_nanoseconds(seconds).tolist() == frame["timestamp"].astype("int64").tolist()


@pytest.mark.parametrize("every", ["1s", "7s", "90s", "1D", "MS", "2h", 45, "15m"])
def test_grains_lay_out_like_bucket(every: Any) -> None:
    rng = np.random.default_rng(3)
    times = T0 + np.cumsum(rng.exponential(400.0, size=2_000))
    events = [Event(id=str(i), timestamp=float(t), source=SOURCES[i % 3], tags=TAGS[: i % 3]) for i, t in enumerate(times)]
    df = tf.to_dataframe(events)
    for by in BYS:
        counter = Counter(count_grain(every), by)
        for at in range(0, len(events), 300):
            counter.add(events_to_batch(events[at : at + 300]))
        result = counter.result()
        assert parse_count_reply(count_reply(result)) == result
        pd.testing.assert_frame_equal(
            count_frame(result, every, max_buckets=None), bucket(df, every, by=by, max_buckets=None), check_exact=True
        )


def test_the_counter_keeps_groups_not_events() -> None:
    counter = Counter(count_grain("1min"), "source")
    batch = events_to_batch([Event(id=str(i), timestamp=T0 + i * 0.001, source=SOURCES[i % 5]) for i in range(20_000)])
    for k in range(30):
        counter.add(pa.RecordBatch.from_arrays([batch.column(0), pa.compute.add(batch.column(1), 20.0 * k), *batch.columns[2:]], schema=batch.schema))
    result = counter.result()
    assert result.events == 600_000 and len(result.counts) <= 11 * 5


@pytest.fixture(scope="module")
def upstream_url(upstream_file_of_module: UpstreamCollector) -> str:
    """The module's upstream collector, holding the events (once: it keeps every copy sent)."""
    url = upstream_file_of_module.url
    events = [e for e in EVENTS if e.timestamp > 0]  # the filters compared start after 1970
    with Client(url) as client:
        client.send_many(events)
    wait_until(
        lambda: len(tf.find(url, Filter(1), idle_timeout=1.0).to_dataframe(progress=False)) >= len(events),
        timeout=30,
        what="the events stored upstream",
    )
    return url


def test_upstream_counts_the_same(upstream_url: str, ours: str, finds: dict[str, pd.DataFrame]) -> None:
    url = upstream_url
    with Client(url, idle_timeout=1.0) as client, Client(ours) as ours_client:
        # each count waits out the upstream find's silence (it never closes one): two shapes per filter
        for name in ("time-only", "time-range", "tag", "content", "source", "desc"):
            for every, by in (("1min", "source"), ("7min", "tag") if name != "time-only" else (None, None)):
                got = client.count(FILTERS[name], every, by)
                pd.testing.assert_frame_equal(got, ours_client.count(FILTERS[name], every, by), check_exact=True)
                pd.testing.assert_frame_equal(got, expected(finds[name], every, by), check_exact=True)


@pytest.mark.parametrize("fmt", ["table", "csv", "jsonl", "parquet"])
def test_the_count_command(ours: str, finds: dict[str, pd.DataFrame], fmt: str, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    import io

    from theia_frames.cli import main

    code = main(["count", "--url", ours, "--start", str(T0 - 1_000), "--source", "/dev/s[12]", "--every", "1m", "--by", "source", "--format", fmt])
    assert code == 0
    out = capfdbinary.readouterr().out
    want = expected(finds["source"], "1min", "source")
    if fmt == "csv":
        got = pd.read_csv(io.BytesIO(out))
        assert got.columns.tolist() == ["bucket", "/dev/s1", "/dev/s2"]
        assert got[["/dev/s1", "/dev/s2"]].to_numpy().tolist() == want.to_numpy().tolist()
        assert pd.to_datetime(got["bucket"]).tolist() == want.index.tolist()
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in out.decode().splitlines()]
        assert [[r["/dev/s1"], r["/dev/s2"]] for r in rows] == want.to_numpy().tolist()
    elif fmt == "parquet":
        got = pd.read_parquet(io.BytesIO(out))
        assert got["bucket"].tolist() == want.index.tolist() and got["/dev/s1"].tolist() == want["/dev/s1"].tolist()
    else:
        lines = out.decode().splitlines()
        assert lines[0].split() == ["bucket", "/dev/s1", "/dev/s2"] and len(lines) == len(want) + 1


def test_a_time_only_count_takes_chunks_of_one_slot_from_their_index() -> None:
    from theia_frames.server.store import EventStore

    store = EventStore(":memory:")
    try:
        store.add_many([Event(id=f"a{i}", timestamp=T0 - 200 + i * 0.5) for i in range(100)])  # one minute
        store.add_many([Event(id=f"b{i}", timestamp=T0 + i * 1.7) for i in range(100)])  # three minutes
        grain = count_grain("1min")
        taken: list[int] = []
        counter = Counter(grain)

        def take(first: float, last: float, rows: int) -> bool:
            took = counter.add_span(first, last, rows)
            taken.extend([rows] if took else [])
            return took

        for batch in store.scan(Filter(1), ["timestamp"], taken=take):
            counter.add(batch)
        reference = Counter(grain)
        for batch in store.query_batches(Filter(1)):
            reference.add(batch)
        assert taken == [100] and counter.result() == reference.result()
        by_source = Counter(grain, "source")
        assert not by_source.add_span(T0, T0 + 1, 5)  # grouped counts need the rows
    finally:
        store.close()


# --------------------------------------------------------------------------- timeline

GAPS = ["3s", "10s", "2min"]


def assert_timeline_relates(got: pd.DataFrame, df: pd.DataFrame, gap: Any = None) -> None:
    """``client.timeline``'s frame against ``timeline`` of the find's frame: first, last, count,
    span and rate equal; max_gap within a second; gaps between those of gap + 2 s and of gap."""
    want = tf.timeline(df, gap=gap)
    exact = ["first", "last", "count", "span", "rate"]
    pd.testing.assert_frame_equal(got[exact], want[exact], check_exact=True)
    assert got.columns.tolist() == want.columns.tolist()
    assert (got["max_gap"].isna() == want["max_gap"].isna()).all()
    apart = (got["max_gap"] - want["max_gap"]).dropna().abs()
    assert (apart < pd.Timedelta(seconds=1)).all(), apart.max()
    if gap is not None:
        wider = tf.timeline(df, gap=pd.Timedelta(gap) + pd.Timedelta(seconds=2))
        assert (wider["gaps"] <= got["gaps"]).all() and (got["gaps"] <= want["gaps"]).all()


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "plain"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_the_timeline_is_the_timeline_of_the_find(ours: str, finds: dict[str, pd.DataFrame], name: str, batch: bool) -> None:
    with Client(ours, batch=batch) as client, Client(ours, batch=not batch) as other:
        for gap in [None, *GAPS]:
            got = client.timeline(FILTERS[name], gap=gap)
            assert_timeline_relates(got, finds[name], gap)
            pd.testing.assert_frame_equal(got, other.timeline(FILTERS[name], gap=gap), check_exact=True)


def test_the_timeline_at_one_second_resolution() -> None:
    """Silences are runs of seconds without events: 3.0 then 9.9 is a step of 6 seconds
    (5 empty ones), 9.9 then 10.1 a step of one (none empty)."""
    events = [Event(id=str(i), timestamp=T0 + t, source="/s") for i, t in enumerate([3.0, 9.9, 10.1, 10.5, 30.2])]
    with serve(db=":memory:", port=0) as collector, Client(collector.url) as client:
        client.send_many(events)
        client.flush()
        got = client.timeline(Filter(1), gap="4s")
        five = client.timeline(Filter(1), gap="5s")
        df = client.find(Filter(1)).to_dataframe(progress=False)
    assert got.loc["/s", "max_gap"] == pd.Timedelta(seconds=20)  # 10 -> 30
    assert tf.timeline(df).loc["/s", "max_gap"] == pd.Timedelta(seconds=19.7)
    assert got.loc["/s", "gaps"] == 2  # 5 and 19 empty seconds
    assert five.loc["/s", "gaps"] == 1  # 19 empty seconds
    assert_timeline_relates(got, df, "4s")


def test_the_async_timeline_is_the_same_frame(ours: str) -> None:
    async def run() -> list[pd.DataFrame]:
        async with AsyncClient(ours) as client, AsyncClient(ours, batch=False) as plain:
            return [await client.timeline(FILTERS["time-range"], gap="10s"), await plain.timeline(FILTERS["time-range"], gap="10s")]

    on_collector, client_side = asyncio.run(run())
    with Client(ours) as client:
        want = client.timeline(FILTERS["time-range"], gap="10s")
    pd.testing.assert_frame_equal(on_collector, want, check_exact=True)
    pd.testing.assert_frame_equal(client_side, want, check_exact=True)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "plain"])
def test_a_timeline_of_too_many_seconds_is_refused_clearly(batch: bool) -> None:
    with serve(db=":memory:", port=0, max_groups=10) as collector, Client(collector.url, batch=batch) as client:
        client.send_many(EVENTS[:100])
        client.flush() if client.batched else None
        wait_until(lambda: len(client.find(Filter(1)).to_dataframe(progress=False)) == 100, what="100 events")
        with pytest.raises(UsageError, match=r"timeline refused: its sources are heard in more than 10 \(second, source\) pairs \(at least \d+\)"):
            client.timeline(Filter(1), max_groups=10)
        with pytest.raises(UsageError, match="invalid gap"):
            client.timeline(Filter(1), gap="soon")
        assert client.timeline(EventFilter(start=T0 - 300, end=T0 - 297), max_groups=10)["count"].sum() == 3


def test_a_count_reply_with_spans_that_do_not_fit_is_not_a_count() -> None:
    counter = Counter(1_000_000_000, "source", spans=True)
    counter.add(events_to_batch(EVENTS[:50]))
    reply = json.loads(count_reply(counter.result()))
    assert parse_count_reply(json.dumps(reply)) == counter.result()
    first_after_last = [reply["counted"]["lasts"][0] + 1, *reply["counted"]["firsts"][1:]]
    for key, value in (("firsts", first_after_last), ("lasts", []), ("lasts", None)):
        broken = json.loads(json.dumps(reply))
        broken["counted"][key] = value
        assert parse_count_reply(json.dumps(broken)) is None


def test_upstream_timelines_the_same(upstream_url: str, ours: str, finds: dict[str, pd.DataFrame]) -> None:
    url = upstream_url
    with Client(url, idle_timeout=1.0) as client, Client(ours) as ours_client:
        for name in ("time-only", "source"):
            got = client.timeline(FILTERS[name], gap="10s")
            pd.testing.assert_frame_equal(got, ours_client.timeline(FILTERS[name], gap="10s"), check_exact=True)
            assert_timeline_relates(got, finds[name], "10s")
