"""Differential tests: the real upstream collector (theia 0.9.2, file store and SQL
store) and this project's collector, holding the same events, must give the same
answers to the same filters through every reading path of the client.

The upstream collector runs in a process of its own (``tests/upstream.py``).
What each server is asked on the wire differs (the plain form of a filter for
upstream, the full form for ours); what the user gets must not.
"""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import theia_frames as tf
from theia_frames.client import Client
from theia_frames.event import Event
from theia_frames.filter import EventFilter, Filter
from upstream import UpstreamCollector
from waiting import wait_until

T0 = 1_700_000_000.0
IDLE = 2.0  # upstream never closes a /find: the silence that ends one
PER_SERVER = 4  # finds at once on one server
SOURCES = ["/dev/sensors/temp-1", "/dev/sensors/hum-2", "/var/log/app.log:main", "/dev/door"]
TAGS = [["sensor", "temp"], ["sensor", "k1"], ["k2"], [], ["k0", "k1", "k2"]]


def content(i: int) -> str:
    kind = i % 5
    if kind == 0:
        return f"{20 + i % 7}.5C"
    if kind == 1:
        return f"line one of {i}\nFAIL two\nthird"
    if kind == 2:
        return f"Tür offen — {i % 9}°"
    if kind == 3:
        return f"{40 + i % 11}.0%"
    return f"ok {i}: 5C reading"


def dataset(n: int = 240, t0: float = T0, step: float = 0.731, prefix: str = "e") -> list[Event]:
    """Sensor-like events over ~3 minutes (several upstream files), in time order."""
    return [
        Event(
            id=f"{prefix}{i:04d}",
            timestamp=round(t0 + i * step, 3),
            source=SOURCES[i % len(SOURCES)],
            tags=TAGS[i % len(TAGS)],
            content=content(i),
        )
        for i in range(n)
    ]


EVENTS = dataset()

# name -> filter; every row must give the same events in the same order on every server
FIND_FILTERS: dict[str, EventFilter] = {
    "start only": Filter(T0),
    "start and end": Filter(T0 + 30).match_end(T0 + 90.5),
    "no start": Filter(),
    "literal tag": Filter(T0).match_tag("sensor"),
    "regex tag": Filter(T0).match_tag("k.+"),
    "regex tag class": Filter(T0).match_tag("k[12]"),
    "several tag patterns": Filter(T0).match_tag("sensor", "k[0-9]"),
    "literal and regex tags": Filter(T0).match_tag("k2", "k.*"),
    "content mid": Filter(T0).match_content("5C"),
    "content at start": Filter(T0).match_content("^Tür"),
    "content across lines": Filter(T0).match_content("one of \\d+\nFAIL"),
    "content end anchor": Filter(T0).match_content("%$"),
    "content flags": Filter(T0).match_content("(?i)fail"),
    "asc": Filter(T0 + 10).match_tag("sensor").order_asc(),
    "desc": Filter(T0).order_desc(),
    "desc with end and content": Filter(T0 + 5).match_end(T0 + 150).match_content("C").order_desc(),
    "desc no start, tag": Filter().match_tag("k1").order_desc(),
    "source": Filter(T0).match_source("/dev/sensors/.*"),
    "nothing matches": Filter(T0).match_tag("absent"),
}


def expected(f: EventFilter, events: list[Event] = EVENTS) -> list[Event]:
    found = sorted((e for e in events if f.matches(e)), key=lambda e: (e.timestamp, e.id))
    return found[::-1] if f.order == "desc" else found


def key(e: Event) -> tuple[Any, ...]:
    # the wire keeps 6 (Go) or 7 (upstream) decimals: compare to the microsecond
    return (e.id, round(e.timestamp * 1e6), e.source, list(e.tags), e.content)


def keys(events: Any) -> list[tuple[Any, ...]]:
    return [key(e) for e in events]


def frame_keys(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    ts = df["timestamp"].astype("int64") // 1000
    return [
        (i, t, s, list(g), c)
        for i, t, s, g, c in zip(df["id"], ts, df["source"].astype(str), df["tags"], df["content"])
    ]


def load(url: str, events: list[Event], timeout: float = 30) -> None:
    with Client(url) as client:
        client.send_many(events)
        if client.batched:
            client.flush()
    # upstream acknowledges nothing: wait until a find sees them all (its file store flushes every second)
    wait_until(
        lambda: len(list(tf.find(url, Filter(min(e.timestamp for e in events)), idle_timeout=IDLE)))
        >= len(events),
        timeout=timeout,
        what=f"{len(events)} events stored at {url}",
    )


@pytest.fixture(scope="module")
def servers(upstream_file: UpstreamCollector, upstream_sql: UpstreamCollector) -> Iterator[dict[str, str]]:
    """The three servers, each holding :data:`EVENTS`."""
    with tf.serve(db=":memory:", port=0) as ours:
        urls = {"upstream-file": upstream_file.url, "upstream-sql": upstream_sql.url, "ours": ours.url}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda url: load(url, EVENTS), urls.values()))
        yield urls


@pytest.fixture(scope="module")
def find_results(servers: dict[str, str]) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Every row of :data:`FIND_FILTERS` on every server, a few at a time per server.

    Each upstream find ends by silence, so one at a time would take a minute;
    but upstream answers finds one after another on its one store thread, and a
    find queued behind too many others hears silence long enough to end it
    (docs/protocol.md): at most :data:`PER_SERVER` at once each."""

    def run(job: tuple[str, str]) -> list[tuple[Any, ...]]:
        name, server = job
        result = tf.find(servers[server], FIND_FILTERS[name], idle_timeout=IDLE)
        got = keys(result)
        assert result.complete, (name, server)
        return got

    def per_server(server: str) -> list[list[tuple[Any, ...]]]:
        with concurrent.futures.ThreadPoolExecutor(PER_SERVER) as pool:
            return list(pool.map(run, [(name, server) for name in FIND_FILTERS]))

    with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
        answers = dict(zip(servers, pool.map(per_server, servers)))
    return {(name, s): answers[s][i] for s in servers for i, name in enumerate(FIND_FILTERS)}


@pytest.mark.parametrize("name", list(FIND_FILTERS))
@pytest.mark.parametrize("server", ["upstream-file", "upstream-sql", "ours"])
def test_find_gives_the_same_events_in_the_same_order_everywhere(find_results, name, server):
    want = keys(expected(FIND_FILTERS[name]))
    assert name == "nothing matches" or want, "each row must select something"
    got = find_results[(name, server)]
    assert len(got) == len(want), f"{server}: {len(got)} events for {name!r}, expected {len(want)}"
    assert got == want


def test_the_reproductions_of_the_upstream_issue_return_the_right_events(find_results):
    # desc, regex tags and a mid-content pattern were 0 events (or ascending) on upstream
    for server in ("upstream-file", "upstream-sql"):
        assert len(find_results[("desc", server)]) == len(EVENTS)
        assert find_results[("desc", server)][0][0] == EVENTS[-1].id
        assert find_results[("regex tag", server)]
        assert find_results[("regex tag class", server)]
        assert find_results[("content mid", server)]


def test_frames_and_chunks_agree_on_every_server(servers):
    f = FIND_FILTERS["desc with end and content"]
    want = keys(expected(f))
    frames = {}
    for server, url in servers.items():
        df = tf.to_dataframe(tf.find(url, f, idle_timeout=IDLE), progress=False)
        assert frame_keys(df) == want, server
        chunks = list(tf.iter_dataframes(tf.find(url, f, idle_timeout=IDLE), batch_size=17, progress=False))
        assert all(len(c) <= 17 for c in chunks)
        pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), df)
        frames[server] = df
    pd.testing.assert_frame_equal(frames["upstream-file"], frames["ours"])
    pd.testing.assert_frame_equal(frames["upstream-sql"], frames["ours"])


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "theia_frames", *args], capture_output=True, text=True, timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_cli_find_agrees_on_every_server(servers):
    f = FIND_FILTERS["regex tag class"]
    want = [k[0] for k in keys(expected(f.order_desc()))]
    for server, url in servers.items():
        done = cli("find", "--url", url, "--start", str(T0), "--tag", "k[12]", "--order", "desc",
                   "--format", "jsonl", "--idle-timeout", str(IDLE))
        assert done.returncode == 0, done.stderr
        ids = [json.loads(line)["id"] for line in done.stdout.splitlines() if line.strip()]
        assert ids == want, server


# ---------------------------------------------------------------------- live
LIVE_FILTERS: dict[str, EventFilter] = {
    "everything": Filter(),
    "literal tag": Filter().match_tag("sensor"),
    "regex tag": Filter().match_tag("k[1]"),
    "content mid": Filter().match_content("5C"),
    "content at start": Filter().match_content("^Tür"),
    "content across lines": Filter().match_content("FAIL two\nthird"),
    "source": Filter().match_source("/dev/sensors/.*"),
    "tag and content": Filter().match_tag("k2").match_content("\\d°"),
}


def collect_live(url: str, filters: dict[str, EventFilter], events: list[Event], start: float) -> dict[str, list]:
    """Subscribe with every filter (a float start each), publish ``events``, and
    read each subscription until it has what it should or falls silent."""
    got: dict[str, list[tuple[Any, ...]]] = {name: [] for name in filters}
    with Client(url) as client:
        streams = {name: client.receive(f.match_start(start)) for name, f in filters.items()}
        want = {name: len(expected(f.match_start(start), events)) for name, f in filters.items()}

        def read(name: str) -> None:
            deadline = time.monotonic() + 20
            quiet_since = None
            for batch in streams[name].iter_batches(heartbeat=0.2):
                if batch.num_rows:
                    got[name].extend(frame_keys(tf.to_dataframe(batch, progress=False)))
                now = time.monotonic()
                if len(got[name]) >= want[name]:
                    quiet_since = quiet_since or now
                    if batch.num_rows:
                        quiet_since = now
                    if now - quiet_since > 1.0:  # nothing more (no extras) for a second
                        break
                if now > deadline:
                    break
            streams[name].close()

        threads = [threading.Thread(target=read, args=(name,)) for name in filters]
        for t in threads:
            t.start()
        time.sleep(0.5)  # upstream registers a filter after its "ok": let every one settle
        with Client(url) as sender:
            sender.send_many(events)
        for t in threads:
            t.join(40)
    return got


@pytest.mark.parametrize("server", ["upstream-file", "upstream-sql", "ours"])
def test_receive_gives_the_same_live_events_everywhere(servers, server):
    now = time.time()
    start = now + 0.25  # a float start: upstream /live takes only whole seconds
    live = dataset(60, t0=now - 5, step=0.2, prefix=f"live-{server}-")
    got = collect_live(servers[server], LIVE_FILTERS, live, start)
    for name, f in LIVE_FILTERS.items():
        want = keys(expected(f.match_start(start), live))
        assert want, name
        assert got[name] == want, f"{server}: {name}"


@pytest.mark.parametrize("server", ["upstream-file", "upstream-sql", "ours"])
def test_live_frame_fills_the_same_on_every_server(servers, server):
    f = Filter().match_tag("k[12]").match_content("°|5C")
    live = dataset(40, t0=time.time(), step=0.05, prefix=f"frame-{server}-")
    frame = tf.LiveFrame(servers[server], f, reconnect=False)
    frame.start()
    try:
        time.sleep(0.5)
        with Client(servers[server]) as sender:
            sender.send_many(live)
        want = keys(expected(f, live))
        wait_until(lambda: len(frame.df) >= len(want), timeout=20, what=f"LiveFrame on {server}")
        assert frame_keys(frame.df) == want
    finally:
        frame.stop()


def test_cli_live_agrees_on_every_server(servers):
    for server, url in servers.items():
        live = dataset(30, t0=time.time(), step=0.1, prefix=f"cli-{server}-")
        f = Filter().match_tag("k.").match_content("5C")
        want = [e.id for e in expected(f, live)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "theia_frames", "live", "--url", url, "--tag", "k.", "--content", "5C",
             "--format", "jsonl", "--limit", str(len(want))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
        )
        try:
            time.sleep(2.0)  # the subprocess imports and subscribes
            with Client(url) as sender:
                sender.send_many(live)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        ids = [json.loads(line)["id"] for line in out.splitlines() if line.strip()]
        assert ids == want, server


# ---------------------------------------------------------------------- what upstream cannot be made to do
def test_upstream_sql_store_find_dies_on_its_first_event_unpatched(tmp_path):
    """theia 0.9.2's SQL store reads timestamps back as text, and its serializer
    cannot format them: ``/find`` answers ``ok``, then logs a TypeError and
    sends nothing. No client can tell that silence from an empty result."""
    with UpstreamCollector(tmp_path / "sql", store="sql", sql_fix=False) as up:
        with Client(up.url) as client:
            client.send_many(EVENTS[:20])
        db = tmp_path / "sql" / "events.db"
        wait_until(lambda: db.exists() and _rows(db) >= 20, timeout=20, what="rows in the SQL store")
        result = tf.find(up.url, Filter(T0), idle_timeout=IDLE)
        assert list(result) == [] and result.ended_by == "idle"
        wait_until(lambda: "must be real number, not str" in up.log, timeout=10, what="the TypeError in its log")


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("select count(*) from events").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_upstream_file_store_find_with_an_end_misses_a_late_event_that_read_store_finds(tmp_path):
    """An event older than the newest file is appended to the first file that
    ends after it: ``<a>-<b>`` then holds an event before ``a``. Upstream's
    ``/find`` with an end before ``a`` skips that file; ``read_store`` does not."""
    with UpstreamCollector(tmp_path / "files") as up:
        with Client(up.url) as client:
            client.send(Event(id="early", timestamp=T0, source="/s", content="x"))
            client.send(Event(id="later", timestamp=T0 + 300, source="/s", content="x"))
            client.send(Event(id="late", timestamp=T0 + 100, source="/s", content="x"))
        wait_until(lambda: len(list(tf.find(up.url, Filter(T0), idle_timeout=IDLE))) == 3, what="3 events")
        files = sorted(p.name for p in (tmp_path / "files").iterdir())
        assert files == [f"{int(T0)}-{int(T0) + 60}", f"{int(T0) + 300}-{int(T0) + 360}"]
        window = Filter(T0 + 100).match_end(T0 + 101)
        assert [e.id for e in tf.find(up.url, window, idle_timeout=IDLE)] == []
        up.stop()
        df = tf.read_store(tmp_path / "files", start=T0 + 100, end=T0 + 101)
        assert df["id"].tolist() == ["late"]


def test_a_pattern_pythons_re_cannot_compile_never_reaches_upstream_live(upstream_file):
    """One upstream /live subscriber whose pattern its ``re`` cannot compile breaks
    /live for every later subscriber; an RE2 filter's patterns are checked on
    the client instead, and the next subscriber still gets its events."""
    start = time.time()
    live = dataset(10, t0=start + 1, step=0.1, prefix="re2-")
    first = EventFilter(start=start, content="\\pL+ offen", source="\\p{Lu}?/.*", engine="re2")
    with Client(upstream_file.url) as client:
        with client.receive(first) as odd:
            time.sleep(0.3)
            with client.receive(Filter(start).match_tag("k2")) as later:
                time.sleep(0.3)
                with Client(upstream_file.url) as sender:
                    sender.send_many(live)
                want = keys(expected(Filter(start).match_tag("k2"), live))
                assert take(later, len(want)) == want
            want = keys(expected(first, live))
            assert len(want) == 2 and take(odd, len(want)) == want


def take(stream: Any, n: int, timeout: float = 15.0) -> list[tuple[Any, ...]]:
    """The first ``n`` events of a live stream, or fewer if ``timeout`` passes first."""
    got: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout
    for batch in stream.iter_batches(heartbeat=0.2):
        if batch.num_rows:
            got.extend(frame_keys(tf.to_dataframe(batch, progress=False)))
        if len(got) >= n or time.monotonic() > deadline:
            break
    return got


def test_events_of_one_second_come_back_in_the_order_sent_on_both_collectors(tmp_path):
    """200 events of one timestamp (ids in no order of their own), sent one by one over the
    plain dialect: the upstream file store and ours return them in the order sent, the
    reverse for desc, and read_store of upstream's folder reads them in that order too."""
    import random

    rng = random.Random(22)
    ids = [f"{rng.getrandbits(48):012x}" for _ in range(200)]
    t = T0 + 5000.25
    events = [Event(id=i, timestamp=t, source="/s", content=str(k)) for k, i in enumerate(ids)]
    # (an event older than the upstream file store's newest file would start a file of its
    # own, which its /find reads first: the events around the tie are sent in time order)
    events.insert(0, Event(id="before", timestamp=t - 1, source="/s", content="b"))
    events.append(Event(id="after", timestamp=t + 1, source="/s", content="a"))
    want = ["before", *ids, "after"]
    with UpstreamCollector(tmp_path / "files") as up, tf.serve(db=":memory:", port=0) as ours:
        for url in (up.url, ours.url):
            with Client(url, batch=False) as client:
                client.send_many(events)
        for url in (up.url, ours.url):
            wait_until(
                lambda: len(list(tf.find(url, Filter(T0), idle_timeout=IDLE))) == len(want), what=f"events at {url}"
            )
        for url in (up.url, ours.url):
            for batch in (True, False):
                with Client(url, batch=batch, idle_timeout=IDLE) as client:
                    assert [e.id for e in client.find(Filter(T0))] == want, (url, batch)
                    assert [e.id for e in client.find(Filter(T0).order_desc())] == want[::-1], (url, batch)
                    df = tf.to_dataframe(client.find(Filter(t).match_end(t)), progress=False)
                    assert df["id"].tolist() == ids, (url, batch)
        up.stop()
        assert tf.read_store(tmp_path / "files")["id"].tolist() == want


def test_times_before_1970_on_both_collectors(tmp_path):
    """Times before 1970 are accepted on both dialects and found by ours; upstream's SQL
    store finds them too, its file store stores them (files named with negative seconds)
    but its /find never returns them, and read_store of its folder does. A time outside
    the accepted range is refused by the client before anything is sent."""
    from theia_frames.exceptions import InvalidEventError

    events = [
        Event(id="1958", timestamp=-378_691_200.0, source="/s", content="1958-01-01"),
        Event(id="neg", timestamp=-10.5, source="/s", content="just before 1970"),
        Event(id="pos", timestamp=100.0, source="/s", content="after"),
    ]
    with UpstreamCollector(tmp_path / "files") as up_file, UpstreamCollector(tmp_path / "sql", store="sql", sql_fix=True) as up_sql, tf.serve(db=":memory:", port=0) as ours:
        for url in (up_file.url, up_sql.url, ours.url):
            with Client(url) as client:
                client.send_many(events)
                with pytest.raises(InvalidEventError, match="'far'.*outside the accepted range of event times"):
                    client.send(Event(id="far", timestamp=1e11))
        wait_until(lambda: len(list(tf.find(ours.url, Filter()))) == 3, what="3 events in ours")
        wait_until(lambda: len(list(tf.find(up_sql.url, Filter(-20), idle_timeout=IDLE))) == 2, what="2 events in upstream's SQL store")
        for url in (ours.url, up_sql.url):
            assert [e.id for e in tf.find(url, Filter(-20), idle_timeout=IDLE)] == ["neg", "pos"]
            assert [e.id for e in tf.find(url, Filter("1958-01-01").match_end(0), idle_timeout=IDLE)] == ["1958", "neg"]
            assert [e.id for e in tf.find(url, Filter(), idle_timeout=IDLE)] == ["1958", "neg", "pos"]
        wait_until(lambda: len(list(tf.find(up_file.url, Filter(1), idle_timeout=IDLE))) == 1, what="the file store's event")
        assert [e.id for e in tf.find(up_file.url, Filter(-20), idle_timeout=IDLE)] == ["pos"]
        up_file.stop()
        assert tf.read_store(tmp_path / "files")["id"].tolist() == ["1958", "neg", "pos"]
        assert tf.read_store(tmp_path / "files", start=-20, end=0)["id"].tolist() == ["neg"]


def _plain_event(id: str, seconds: float, content: str) -> bytes:
    """An event in the upstream dialect written by hand: the client refuses to encode a far time."""
    header = f"id:{id}\ntimestamp:{seconds:.7f}\nsource:/s\ntags:\n".encode()
    body = content.encode()
    return b"event: %d %d %d\n" % (len(header) + len(body), len(header), len(body)) + header + body + b"\n"


def test_a_far_time_a_peer_stored_is_reported_and_never_blanks_a_frame(tmp_path):
    """Upstream stores any time (the selene CLI sends milliseconds as seconds): a find and a
    LiveFrame of it skip and report that event, and hold every good one."""
    import websocket

    now = time.time()
    far = now * 1000
    with UpstreamCollector(tmp_path / "files") as up:
        live = tf.LiveFrame(up.url, Filter(), window="10min", reconnect=False)
        live.start()
        try:
            wait_until(lambda: live.status().phase == "live", what="the live frame subscribed")
            ws = websocket.create_connection(up.url + "/event", timeout=10)
            try:
                for i, seconds in enumerate([now, now + 0.5, far, now + 1.0]):
                    ws.send_binary(_plain_event(f"e{i}", seconds, f"reading {i}"))
            finally:
                ws.close()
            wait_until(lambda: len(live.df) == 3 and live.status().errors >= 1, what="3 rows and 1 error in the live frame")
            assert live.df["id"].tolist() == ["e0", "e1", "e3"]
        finally:
            live.stop()
        # the file store writes a little after /live pushed them
        wait_until(lambda: len(list(tf.find(up.url, Filter(now - 10), idle_timeout=IDLE))) == 3, what="3 events found")
        result = Client(up.url).find(Filter(now - 10), idle_timeout=IDLE)
        df = tf.to_dataframe(result)
        assert df["id"].tolist() == ["e0", "e1", "e3"]
        assert result.skipped == 1 and "'e2'" in str(result.errors[0]) and "outside the accepted range" in str(result.errors[0])
        with pytest.raises(tf.DecodeError, match="'e2'.*outside the accepted range"):
            tf.to_dataframe(Client(up.url).find(Filter(now - 10), idle_timeout=IDLE, strict=True))
