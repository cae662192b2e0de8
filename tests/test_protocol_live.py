"""The live session of the protocol core (theia_frames.protocol.live), without sockets:
its states, deadlines, giving up and resume finds, driven by a fake clock."""

from __future__ import annotations

import pyarrow as pa
import pytest

from theia_frames.exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    GaveUp,
    ServerError,
    SubscriberTooSlow,
    TheiaTimeoutError,
    UsageError,
)
from theia_frames.filter import EventFilter
from theia_frames.protocol.arrow import event_schema
from theia_frames.protocol.live import Gap, LiveSession, Step, retried
from theia_frames.protocol.streams import LiveState

URL = "ws://h/live"
START = 1000.0  # wall-clock time of the first subscription


def batch(ids: list[str], stamps: list[float]) -> pa.RecordBatch:
    n = len(ids)
    return pa.RecordBatch.from_pydict(
        {"id": ids, "timestamp": stamps, "source": ["/s"] * n, "tags": [""] * n, "content": ["c"] * n},
        schema=event_schema(),
    )


def session(filter: EventFilter | None = None, *, jitter: float = 1.0, **options: object) -> LiveSession:
    settings: dict[str, object] = {"reconnect": True, "backoff": 1.0, "max_backoff": 4.0, "resume_margin": 5.0, "max_retries": None}
    settings.update(options)
    state = LiveState(URL, filter or EventFilter(0), strict=False, batch_size=100)
    live = LiveSession(state, subscribed_at=START, jitter=lambda: jitter, **settings)  # type: ignore[arg-type]
    live.opened()
    return live


def refused() -> ConnectError:
    return ConnectError(f"connection refused by {URL}", url=URL, reason="refused")


def test_a_session_is_live_once_opened_and_waits_after_a_drop():
    state = LiveState(URL, EventFilter(0), strict=False, batch_size=100)
    live = LiveSession(state, reconnect=True, backoff=1.0, max_backoff=4.0, resume_margin=5.0, max_retries=None,
                       subscribed_at=START)
    assert live.phase == "subscribing" and not live.connected and live.next_deadline() is None
    live.opened()
    assert live.phase == "live" and live.connected
    state.complete = True
    live.ended(None, now=10.0, code=1001)
    assert live.phase == "waiting" and live.waiting and not live.connected
    assert not state.complete
    assert isinstance(live.last_error, ConnectionClosed) and live.last_error.code == 1001
    assert URL in str(live.last_error)


def test_the_first_attempt_comes_after_the_backoff():
    live = session()
    live.ended(None, now=10.0)
    assert live.next_deadline() == 11.0
    assert live.next_step(10.25) == Step("sleep", 0.75)
    assert live.phase == "waiting"
    assert live.next_step(11.0) == Step("attempt")
    assert live.phase == "subscribing" and not live.waiting and live.next_deadline() is None


def test_a_full_reconnect_counts_the_gap_and_the_reconnection():
    live = session()
    live.ended(None, now=10.0)
    assert live.gap(10.5) == Gap(0.5, 0.5)
    assert live.next_step(11.0).kind == "attempt"
    assert live.subscribed() is not None and live.phase == "catching-up"
    assert live.caught_up(now=12.0) is None
    assert live.phase == "live" and live.connected and live.reconnects == 1 and live.down_since is None
    assert live.gap(99.0) == Gap(2.0, 2.0)
    live.ended(None, now=20.0)
    assert live.gap(21.0) == Gap(1.0, 3.0)


@pytest.mark.parametrize("jitter, factor", [(1.0, 1.0), (0.0, 0.5)], ids=["no-jitter", "most-jitter"])
def test_the_backoff_doubles_up_to_the_maximum_with_jitter(jitter, factor):
    live = session(jitter=jitter, backoff=0.5, max_backoff=2.0)
    now = 0.0
    live.ended(None, now=now)
    waits = []
    for _ in range(5):
        deadline = live.next_deadline()
        assert deadline is not None
        waits.append(deadline - now)
        now = deadline
        assert live.next_step(now).kind == "attempt"
        live.subscribed()
        live.attempt_failed(refused(), now)
    assert waits == pytest.approx([factor * d for d in (0.5, 1.0, 2.0, 2.0, 2.0)])


def test_a_new_drop_starts_the_backoff_again():
    live = session()
    live.ended(None, now=0.0)
    for now in (1.0, 3.0):
        assert live.next_step(now).kind == "attempt"
        live.attempt_failed(refused(), now)
    assert live.next_deadline() == 7.0
    assert live.next_step(7.0).kind == "attempt"
    live.subscribed()
    live.caught_up(7.5)
    live.ended(None, now=8.0)
    assert live.next_deadline() == 9.0


def test_it_gives_up_after_max_retries_with_the_attempts_and_the_cause():
    live = session(max_retries=2)
    live.ended(None, now=0.0)
    failure = None
    for attempt in range(1, 4):
        now = live.next_deadline()
        assert now is not None and live.next_step(now).kind == "attempt"
        live.subscribed()
        failure = ConnectError(f"{URL} refused the WebSocket handshake with HTTP status 503", url=URL)
        if attempt < 3:
            live.attempt_failed(failure, now)
            assert live.phase == "waiting"
    with pytest.raises(GaveUp, match="gave up reconnecting after 3 attempt") as info:
        live.attempt_failed(failure, 100.0)
    error = info.value
    assert isinstance(error, ConnectionClosed)
    assert error.attempts == 3 and error.cause is failure and error.__cause__ is failure
    assert "max_retries=2" in str(error) and "503" in str(error) and error.url == URL
    assert live.phase == "failed" and live.error is error and live.last_error is failure
    assert not live.waiting and live.next_deadline() is None


def test_gave_up_keeps_the_close_code_of_its_cause():
    live = session(max_retries=0)
    live.ended(None, now=0.0)
    live.next_step(1.0)
    with pytest.raises(GaveUp) as info:
        live.attempt_failed(ConnectionClosed("dropped", url=URL, code=1006), 1.0)
    assert info.value.code == 1006


@pytest.mark.parametrize(
    "error",
    [AuthenticationError("401", url=URL, status=401), ServerError("bad filter", url=URL), UsageError("nope")],
    ids=["credentials", "server-error", "usage"],
)
def test_what_is_not_worth_retrying_is_raised_as_it_is(error):
    live = session()
    live.ended(None, now=0.0)
    live.next_step(1.0)
    with pytest.raises(type(error)) as info:
        live.attempt_failed(error, 1.0)
    assert info.value is error and live.error is error and live.phase == "failed"


def test_without_max_retries_it_never_gives_up():
    live = session(max_backoff=1.0)
    live.ended(None, now=0.0)
    for i in range(1, 200):
        assert live.next_step(float(i)).kind == "attempt"
        live.attempt_failed(refused(), float(i))
    assert live.phase == "waiting"


def test_what_is_retried():
    assert retried(refused())
    assert retried(ConnectionClosed("dropped", code=1006))
    assert retried(SubscriberTooSlow("slow", code=1013))
    assert retried(TheiaTimeoutError("no answer"))
    assert not retried(AuthenticationError("403", status=403))
    assert not retried(ServerError("bad filter"))


def test_heartbeats_while_waiting():
    live = session(backoff=4.0, max_backoff=4.0)
    live.ended(None, now=0.0, heartbeat=1.5)
    assert live.next_deadline() == 1.5
    assert live.next_step(0.5) == Step("sleep", 1.0)
    assert live.next_step(1.5) == Step("beat")
    assert live.next_deadline() == 3.0
    assert live.next_step(3.0) == Step("beat")
    assert live.next_step(3.0) == Step("sleep", 1.0)  # the deadline (4.0) comes before the next beat (4.5)
    assert live.next_step(4.0) == Step("attempt")


def test_a_subscriber_too_slow_is_kept_in_the_errors():
    live = session()
    slow = SubscriberTooSlow("too slow", url=URL, code=1013)
    live.ended(slow, now=0.0)
    assert live.state.errors == [slow] and live.last_error is slow


def test_the_resume_find_starts_at_the_subscription_when_nothing_was_delivered():
    live = session(EventFilter(0, tags=["a"]))
    live.ended(None, now=0.0)
    live.next_step(1.0)
    found = live.subscribed()
    assert found is not None and found.start == START - 5.0 and found.tags == ("a",) and found.order == "asc"


def test_the_resume_find_starts_a_margin_before_the_newest_event_delivered():
    live = session(EventFilter(0, order="desc"))
    assert live.deliver(batch(["a", "b"], [1100.0, 1110.0]), now=0.0)[0].num_rows == 2
    live.ended(None, now=1.0)
    live.next_step(2.0)
    found = live.subscribed()
    assert found is not None and found.start == 1105.0 and found.order == "asc"


def test_no_resume_find_once_the_filter_ended():
    live = session(EventFilter(0, 500))
    live.ended(None, now=0.0)
    live.next_step(1.0)
    assert live.subscribed() is None
    assert live.caught_up(1.5) is None and live.phase == "live"


def test_the_batches_of_a_resume_find_are_handed_on_once_without_repeats():
    live = session()
    live.deliver(batch(["a"], [1100.0]), now=0.0)
    live.ended(None, now=1.0)
    live.next_step(2.0)
    live.subscribed()
    assert live.found(batch(["a", "b"], [1100.0, 1101.0]), now=2.0) is None  # held until the next one
    handed = live.found(batch(["c"], [1102.0]), now=2.1)
    assert handed is not None and handed.column("id").to_pylist() == ["b"]
    last = live.caught_up(now=2.2)
    assert last is not None and last.column("id").to_pylist() == ["c"]
    assert live.recovered == 2 and live.connected
    # a live event the find already delivered is a repeat; a new one is not
    assert live.deliver(batch(["c"], [1102.0]), now=2.3) == []
    assert live.deliver(batch(["d"], [1103.0]), now=2.4)[0].column("id").to_pylist() == ["d"]


def test_a_batch_held_when_the_find_fails_is_fetched_again():
    live = session()
    live.ended(None, now=0.0)
    live.next_step(1.0)
    live.subscribed()
    assert live.found(batch(["a"], [1100.0]), now=1.0) is None
    live.attempt_failed(ConnectionClosed("cut off", code=1006), 1.0)
    live.next_step(3.0)
    live.subscribed()
    live.found(batch(["a"], [1100.0]), now=3.0)
    last = live.caught_up(now=3.5)
    assert last is not None and last.column("id").to_pylist() == ["a"] and live.recovered == 1


def test_heartbeats_pass_and_a_stream_without_reconnect_drops_nothing():
    live = session(reconnect=False)
    assert live.deliver(None, now=0.0) == [None]
    once = batch(["a"], [1100.0])
    assert live.deliver(once, now=0.0) == [once]
    assert live.deliver(once, now=0.0) == [once]
    assert live.deliver(batch([], []), now=0.0) == []


def test_closing_ends_every_phase_for_good():
    live = session()
    live.ended(None, now=0.0)
    live.close()
    assert live.phase == "closed" and live.closed and not live.waiting and not live.connected
    live.attempt_failed(refused(), 1.0)  # the consequence of closing: noted, not raised
    live.next_step(5.0)
    live.subscribed()
    live.caught_up(6.0)
    assert live.phase == "closed" and live.error is None


@pytest.mark.parametrize(
    "options, match",
    [
        ({"backoff": 0}, "backoff must be a positive number of seconds"),
        ({"max_backoff": -1}, "max_backoff must be a positive number of seconds"),
        ({"backoff": 2.0, "max_backoff": 1.0}, "must not be below backoff"),
        ({"resume_margin": -1}, "resume_margin"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_bad_reconnect_options_are_usage_errors(options, match):
    with pytest.raises(UsageError, match=match):
        session(**options)
