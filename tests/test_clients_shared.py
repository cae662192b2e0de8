"""One behavioural suite for both clients: the sync :class:`Client` and the asyncio
:class:`AsyncClient` must do the same thing against the same peer.

Every test runs with both (``driver``), against our collector, the real upstream
collector (theia 0.9.2, file store) and :class:`~theia_frames.testing.mock.MockServer`
(for the faults the real peers cannot be made to show). A driver gives both
clients one blocking shape; the asyncio one runs every call on one event loop
(``asyncio.Runner``), as a notebook does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest
from waiting import wait_until

import theia_frames as tf
from theia_frames.protocol.arrow import events_to_batch
from theia_frames.client import AsyncClient, Client
from theia_frames.server.collector import serve
from theia_frames.event import Event
from theia_frames.exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    ServerError,
    TheiaTimeoutError,
    UnconfirmedError,
)
from theia_frames.filter import EventFilter, Filter
from theia_frames.testing.mock import MockServer

BASE = 1_700_000_000.0
IDLE = 2.0  # the upstream collector never closes a /find: silence ends it
LIVE_WAIT = 20.0


class SyncDriver:
    name = "sync"

    def __init__(self, url: str, **kw: Any) -> None:
        self.client = Client(url, **kw)

    def send_many(self, events: list[Event], wait: bool = False) -> int:
        return self.client.send_many(events, wait=wait)

    def send(self, event: Event, wait: bool = False) -> None:
        self.client.send(event, wait=wait)

    def flush(self) -> int:
        return self.client.flush(10)

    def find(self, flt: EventFilter, **kw: Any) -> tuple[list[Event], Any]:
        result = self.client.find(flt, **kw)
        return list(result), result

    def frame(self, flt: EventFilter, **kw: Any) -> pd.DataFrame:
        return tf.to_dataframe(self.client.find(flt, **kw), progress=False)

    def arrow(self, flt: EventFilter) -> Any:
        return self.client.find(flt).to_arrow(progress=False)

    def live(self, flt: EventFilter, n: int, during: Callable[[], None] = lambda: None, **kw: Any) -> tuple[list[Event], Any]:
        stream = self.client.receive(flt, **kw)
        timer = threading.Timer(LIVE_WAIT, stream.close)
        timer.start()
        got: list[Event] = []
        try:
            during()
            for event in stream:
                got.append(event)
                if len(got) >= n:
                    break
        finally:
            timer.cancel()
            stream.close()
        return got, stream

    def close(self) -> None:
        self.client.close()


class AsyncDriver:
    name = "async"

    def __init__(self, url: str, **kw: Any) -> None:
        self.runner = asyncio.Runner()
        self.client = self.runner.run(self._make(url, kw))

    @staticmethod
    async def _make(url: str, kw: dict[str, Any]) -> AsyncClient:
        return AsyncClient(url, **kw)

    def send_many(self, events: list[Event], wait: bool = False) -> int:
        return self.runner.run(self.client.send_many(events, wait=wait))

    def send(self, event: Event, wait: bool = False) -> None:
        self.runner.run(self.client.send(event, wait=wait))

    def flush(self) -> int:
        return self.runner.run(self.client.flush(10))

    def find(self, flt: EventFilter, **kw: Any) -> tuple[list[Event], Any]:
        async def run() -> tuple[list[Event], Any]:
            result = self.client.find(flt, **kw)
            return [e async for e in result], result

        return self.runner.run(run())

    def frame(self, flt: EventFilter, **kw: Any) -> pd.DataFrame:
        return self.runner.run(self.client.find(flt, **kw).to_dataframe(progress=False))

    def arrow(self, flt: EventFilter) -> Any:
        return self.runner.run(self.client.find(flt).to_arrow(progress=False))

    def live(self, flt: EventFilter, n: int, during: Callable[[], None] = lambda: None, **kw: Any) -> tuple[list[Event], Any]:
        async def run() -> tuple[list[Event], Any]:
            got: list[Event] = []
            async with self.client.receive(flt, **kw) as stream:
                during()
                try:
                    async with asyncio.timeout(LIVE_WAIT):
                        async for event in stream:
                            got.append(event)
                            if len(got) >= n:
                                break
                except TimeoutError:
                    pass
            return got, stream

        return self.runner.run(run())

    def close(self) -> None:
        try:
            self.runner.run(self.client.aclose())
        finally:
            self.runner.close()


DRIVERS = {"sync": SyncDriver, "async": AsyncDriver}


@pytest.fixture(params=sorted(DRIVERS))
def make_driver(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """A factory of drivers of one kind (``sync`` or ``async``); all are closed after the test."""
    made: list[Any] = []

    def make(url: str, **kw: Any) -> Any:
        driver = DRIVERS[request.param](url, **kw)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


def sensor_events(prefix: str, n: int = 120) -> list[Event]:
    """Events of one test: their own source prefix, tags, multi-line and non-ASCII content."""
    now = time.time() - 60
    return [
        Event(
            id=f"{prefix}-{i:04d}",
            timestamp=round(now + i * 0.25, 3),
            source=f"/shared/{prefix}/{('temp', 'door')[i % 2]}",
            tags=[["sensor", "temp"], ["door"], []][i % 3],
            content=(f"{20 + i % 7}.5C", f"open\nline {i}", f"düse {i}")[i % 3],
        )
        for i in range(n)
    ]


def expected(events: list[Event], flt: EventFilter) -> list[Event]:
    got = [e for e in events if flt.matches(e)]
    return sorted(got, key=lambda e: (e.timestamp, e.id), reverse=flt.order == "desc")


class Peer:
    """One real peer of a test: its URL, how to wait until events are stored, what it confirms."""

    def __init__(self, name: str, url: str, confirms: bool) -> None:
        self.name = name
        self.url = url
        self.confirms = confirms

    def store(self, driver: Any, events: list[Event]) -> None:
        assert driver.send_many(events, wait=self.confirms) == len(events)
        if not self.confirms:
            # the upstream collector acknowledges nothing and writes its files about once a second
            source = Filter(1).match_source(events[0].source.rsplit("/", 1)[0] + "/.*")
            with Client(self.url, idle_timeout=IDLE) as probe:
                wait_until(lambda: len(list(probe.find(source))) >= len(events), 20, "the upstream collector to store the events")


@pytest.fixture(params=["ours", "upstream"])
def peer(request: pytest.FixtureRequest) -> Iterator[Peer]:
    if request.param == "ours":
        with serve(db=":memory:", port=0) as collector:
            yield Peer("ours", collector.url, confirms=True)
    else:
        upstream = request.getfixturevalue("upstream_file_of_module")  # its events stay out of the session's
        yield Peer("upstream", upstream.url, confirms=False)


# --------------------------------------------------------------------------- find


FILTERS = {
    "all": lambda p: Filter(1).match_source(f"/shared/{p}/.*"),
    "tag": lambda p: Filter(1).match_source(f"/shared/{p}/.*").match_tag("temp"),
    "content": lambda p: Filter(1).match_source(f"/shared/{p}/.*").match_content("^open"),
    "desc": lambda p: Filter(1).match_source(f"/shared/{p}/door").order_desc(),
}


def test_find_returns_what_was_stored_in_order(make_driver, peer):
    prefix = uuid.uuid4().hex[:10]
    events = sensor_events(prefix)
    driver = make_driver(peer.url, idle_timeout=IDLE)
    peer.store(driver, events)
    for name, make in FILTERS.items():
        flt = make(prefix)
        got, result = driver.find(flt)
        assert got == expected(events, flt), (driver.name, peer.name, name)
        assert result.complete and result.count == len(got)
        assert result.ended_by == ("close" if peer.name == "ours" else "idle")


def test_to_dataframe_is_the_same_frame(make_driver, peer):
    prefix = uuid.uuid4().hex[:10]
    events = sensor_events(prefix, 90)
    driver = make_driver(peer.url, idle_timeout=IDLE)
    peer.store(driver, events)
    flt = FILTERS["tag"](prefix)
    got = driver.frame(flt)
    want = tf.to_dataframe(expected(events, flt), progress=False)
    # the same values and dtypes (a category's categories are those of the events it holds)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_categorical=False)


def test_to_arrow_is_the_frames_arrow_table(make_driver, peer):
    prefix = uuid.uuid4().hex[:10]
    events = sensor_events(prefix, 60)
    driver = make_driver(peer.url, idle_timeout=IDLE)
    peer.store(driver, events)
    flt = FILTERS["content"](prefix)
    got = driver.arrow(flt)
    want = tf.to_arrow(expected(events, flt))
    assert got.schema.equals(want.schema) and got.num_rows == want.num_rows > 0
    assert got.to_pylist() == want.to_pylist()


# --------------------------------------------------------------------------- send, flush


def test_flush_confirms_only_where_the_peer_can(make_driver, peer):
    prefix = uuid.uuid4().hex[:10]
    driver = make_driver(peer.url, idle_timeout=IDLE)
    driver.send_many(sensor_events(prefix, 40))
    if peer.confirms:
        assert driver.flush() == 40
        driver.send(sensor_events(prefix + "x", 1)[0], wait=True)
        assert driver.flush() == 41
    else:
        with pytest.raises(UnconfirmedError, match="cannot confirm"):
            driver.flush()


def test_a_find_reads_its_own_unconfirmed_writes(make_driver):
    with serve(db=":memory:", port=0) as collector:
        driver = make_driver(collector.url)
        events = sensor_events("own", 50)
        driver.send_many(events)  # not flushed
        got, _ = driver.find(Filter(1))
        assert got == expected(events, Filter(1))


# --------------------------------------------------------------------------- live


def test_live_receives_what_is_sent_after_subscribing(make_driver, peer):
    prefix = uuid.uuid4().hex[:10]
    events = [
        Event(id=f"{prefix}-{i}", source=f"/shared/{prefix}/live", tags=["sensor"], content=f"{i}.0C") for i in range(20)
    ]
    driver = make_driver(peer.url, idle_timeout=IDLE)

    def send() -> None:
        with Client(peer.url) as sender:
            sender.send_many(events)

    flt = Filter(1).match_source(f"/shared/{prefix}/.*")
    got, stream = driver.live(flt, len(events), during=send)
    assert sorted(e.id for e in got) == sorted(e.id for e in events)
    assert stream.count == len(events)


def ev(i: int) -> Event:
    return Event(id=f"e{i}", timestamp=BASE + i, source="/dev/s", tags=["t"], content=f"{i}C")


def test_live_reconnects_resumes_and_drops_repeats(make_driver):
    with MockServer() as mock:
        mock.respond("ok", ev(1), ev(2), path="/live").close_abruptly(path="/live")
        mock.on_live([ev(5)])  # pushed right after the new subscription
        mock.on_find([ev(2), ev(3), ev(4), ev(5)])  # e2 was delivered already, e5 also comes live
        driver = make_driver(mock.url)
        got, stream = driver.live(Filter(BASE), 5, reconnect=True, backoff=0.01, resume_margin=1.0)
        assert [e.id for e in got] == ["e1", "e2", "e3", "e4", "e5"]
        assert stream.reconnects == 1 and stream.recovered == 3
        assert isinstance(stream.last_error, ConnectionClosed)
        finds = [json.loads(r.message) for r in mock.received if r.path == "/find"]
        assert finds == [{"start": BASE + 1, "order": "asc"}]


# --------------------------------------------------------------------------- errors


def test_a_find_cut_off_raises_never_short(make_driver):
    with MockServer() as mock:
        mock.respond("ok", ev(1), ev(2), path="/find").close_abruptly(path="/find")
        driver = make_driver(mock.url, idle_timeout=5)
        with pytest.raises(ConnectionClosed, match="incomplete"):
            driver.find(Filter(1))


def test_an_abnormal_close_code_raises(make_driver):
    with MockServer() as mock:
        mock.respond("ok", ev(1), path="/find").close_with(1011, "store failed", path="/find")
        driver = make_driver(mock.url, idle_timeout=5)
        with pytest.raises(ConnectionClosed, match="1011"):
            driver.find(Filter(1))


def test_a_rejected_filter_raises_server_error(make_driver):
    with MockServer() as mock:
        mock.respond({"error": "invalid value for criteria start"}, path="/find").stall(path="/find")
        driver = make_driver(mock.url)
        with pytest.raises(ServerError, match="invalid value for criteria start"):
            driver.find(Filter(1))


def test_silence_on_our_extension_is_a_timeout(make_driver):
    with MockServer(batch=True) as mock:
        mock.respond("ok", ev(1), path="/find").stall(path="/find")
        driver = make_driver(mock.url, timeout=1.0)
        with pytest.raises(TheiaTimeoutError, match="sent nothing"):
            driver.find(Filter(1))


def free_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"ws://127.0.0.1:{port}"


def test_connection_refused_is_a_connect_error(make_driver):
    driver = make_driver(free_url())
    with pytest.raises(ConnectError, match="refused"):
        driver.find(Filter(1))
    with pytest.raises(ConnectError, match="refused"):
        driver.send_many(sensor_events("refused", 3))


def test_a_refused_token_is_an_authentication_error(make_driver):
    with serve(db=":memory:", port=0, token="s3cret") as collector:
        with pytest.raises(AuthenticationError, match="401"):
            make_driver(collector.url).find(Filter(1))
        with pytest.raises(AuthenticationError, match="403"):
            make_driver(collector.url, token="wrong").find(Filter(1))
        good = make_driver(collector.url, token="s3cret")
        good.send_many(sensor_events("tok", 5), wait=True)
        assert len(good.find(Filter(1))[0]) == 5


def test_a_lost_event_connection_is_reported_by_the_next_flush(make_driver):
    with MockServer(batch=True) as mock:
        mock.respond("ok", path="/event").close_abruptly(path="/event")
        driver = make_driver(mock.url)
        with pytest.raises(ConnectionClosed):
            driver.send_many(sensor_events("lost", 40))
            time.sleep(0.3)
            driver.send_many(sensor_events("lost2", 40))
            driver.flush()


def test_the_same_batches_reach_both_clients_from_our_collector():
    """Not per driver: the two clients, side by side, on one store."""
    events = sensor_events("both", 500)
    with serve(db=":memory:", port=0) as collector:
        with Client(collector.url) as client:
            client.send_many(events, wait=True)
            sync_frame = tf.to_dataframe(client.find(Filter(1)), progress=False)

        async def run() -> pd.DataFrame:
            async with AsyncClient(collector.url) as client:
                return await client.find(Filter(1)).to_dataframe(progress=False)

        async_frame = asyncio.run(run())
    pd.testing.assert_frame_equal(sync_frame, async_frame)
    assert len(sync_frame) == len(events_to_batch(events))
