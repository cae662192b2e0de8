"""A reconnecting ``/live`` subscription's conversation, without I/O: :class:`LiveSession`.

The session decides; the sync and the asyncio streams only do what it says
and tell it what happened. Its :attr:`~LiveSession.phase`::

    subscribing ──opened()──► live ──ended()──► waiting ──next_step(): "attempt"──► subscribing
                                ▲                  ▲                                   │
                                │                  └───attempt_failed() (retried)──────┤
                                └──────caught_up()◄── catching-up ◄──subscribed()──────┘

    attempt_failed() that gives up ─► failed          close() ─► closed (from any phase)

While ``waiting``, :meth:`LiveSession.next_step` says what to do now: ``"sleep"``
(for :attr:`Step.seconds`), ``"beat"`` (hand on an empty batch: the
caller's heartbeat) or ``"attempt"`` (subscribe again); :meth:`LiveSession.next_deadline`
is when the next of those is due. An attempt subscribes (what the new
subscription pushes is buffered by the transport), asks
:meth:`LiveSession.subscribed` for the ``/find`` of what was stored while
away, hands each of its batches to :meth:`LiveSession.found` (which hands on
the one before: the last is handed on by :meth:`LiveSession.caught_up`, once
the stream counts as back) and reports a failure to
:meth:`LiveSession.attempt_failed`, which retries with
:class:`~theia_frames.protocol.resume.Backoff`, or raises: the failure
itself when it is not worth retrying (refused credentials, a server's
error, a protocol error), :class:`~theia_frames.exceptions.GaveUp` after
more than ``max_retries`` failed attempts in a row.

Times are monotonic seconds given by the caller (``now``), so a test drives
the session with a fake clock:

>>> from theia_frames.exceptions import ConnectError
>>> from theia_frames.filter import EventFilter
>>> from theia_frames.protocol.streams import LiveState
>>> state = LiveState("ws://h/live", EventFilter(0), strict=False, batch_size=100)
>>> session = LiveSession(state, reconnect=True, backoff=1.0, max_backoff=4.0, resume_margin=5.0,
...                       max_retries=1, subscribed_at=1000.0, jitter=lambda: 1.0)
>>> session.opened(); session.phase
'live'
>>> session.ended(None, now=10.0, code=1001); session.phase, session.next_deadline()
('waiting', 11.0)
>>> session.next_step(10.5), session.next_step(11.0)
(Step(kind='sleep', seconds=0.5), Step(kind='attempt', seconds=0.0))
>>> session.subscribed().start
995.0
>>> session.attempt_failed(ConnectError("connection refused by ws://h/live", reason="refused"), now=12.0)
>>> session.phase, session.next_deadline(), session.gap(12.0)
('waiting', 14.0, Gap(last=2.0, total=2.0))
>>> session.next_step(14.0).kind, session.subscribed() is not None
('attempt', True)
>>> session.attempt_failed(ConnectError("connection refused by ws://h/live", reason="refused"), now=15.0)
Traceback (most recent call last):
...
theia_frames.exceptions.GaveUp: the live stream from ws://h/live gave up reconnecting after 2 attempt(s) (max_retries=1): connection refused by ws://h/live
>>> session.phase, session.error.attempts
('failed', 2)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal, NamedTuple

import pyarrow as pa

from ..exceptions import (
    AuthenticationError,
    ConnectionClosed,
    GaveUp,
    SubscriberTooSlow,
    TheiaError,
    TheiaTimeoutError,
    TransportError,
)
from ..filter import EventFilter
from .resume import Backoff, ResumeState, check_reconnect_options
from .streams import LiveState

__all__ = ["LiveSession", "Phase", "Step", "Gap", "retried"]

#: Where a live session is (see the module's diagram).
Phase = Literal["subscribing", "live", "waiting", "catching-up", "failed", "closed"]

def retried(exc: BaseException) -> bool:
    """Whether a reconnecting stream tries again after ``exc`` ended an attempt:
    a failed or refused connection and a timeout are retried, refused credentials
    and everything else (a server's error message, a protocol error) are not.

    >>> from theia_frames.exceptions import ServerError
    >>> retried(ConnectionClosed("dropped", code=1006)), retried(ServerError("bad filter"))
    (True, False)
    """
    return isinstance(exc, (TransportError, TheiaTimeoutError)) and not isinstance(exc, AuthenticationError)


class Gap(NamedTuple):
    """Seconds a reconnecting live stream was away: the last time and in total.

    While it is away, ``last`` is the time since the drop, and ``total`` counts it too.
    """

    last: float
    total: float


class Step(NamedTuple):
    """What a waiting session asks for now: ``"sleep"`` ``seconds`` (or until closed),
    hand on a ``"beat"`` (an empty batch), or make an ``"attempt"`` to subscribe again."""

    kind: Literal["sleep", "beat", "attempt"]
    seconds: float = 0.0


class LiveSession:
    """The reconnect/resume policy of one live stream, as explicit states (:data:`Phase`).

    ``state`` is the subscription's :class:`~theia_frames.protocol.streams.LiveState`
    (what its messages mean, kept across connections); ``subscribed_at`` the
    wall-clock time of the first subscription (where a resume starts when
    nothing was delivered yet); ``jitter`` the source of the backoff's jitter
    (in [0, 1), random by default).

    Status attributes: ``reconnects`` (completed reconnections), ``recovered``
    (events handed on from resume finds), ``last_error`` (what ended the last
    connection or failed the last attempt), ``error`` (what ended the stream
    when it gave up), ``down_since`` (when the connection was lost; None while
    connected), ``resume`` (the :class:`~theia_frames.protocol.resume.ResumeState`).
    """

    def __init__(
        self,
        state: LiveState,
        *,
        reconnect: bool,
        backoff: float,
        max_backoff: float,
        resume_margin: float,
        max_retries: int | None,
        subscribed_at: float,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        check_reconnect_options(backoff, max_backoff, resume_margin, max_retries)
        self.state = state
        self.reconnect = bool(reconnect)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.resume_margin = float(resume_margin)
        self.max_retries = max_retries
        self.phase: Phase = "subscribing"
        #: the caller closed the stream: no phase follows "closed"
        self.closed = False
        #: what was delivered, for dropping repeats after a reconnect
        self.resume = ResumeState(self.resume_margin, subscribed_at)
        self.reconnects = 0
        self.recovered = 0
        self.last_error: TheiaError | None = None
        self.error: TheiaError | None = None
        self.down_since: float | None = None
        self._gap_last = 0.0
        self._gap_total = 0.0
        self._jitter = jitter
        self._backoff = Backoff(self.backoff, self.max_backoff, self.max_retries)
        self._deadline = 0.0
        self._heartbeat: float | None = None
        self._beat = 0.0
        self._held: pa.RecordBatch | None = None

    @property
    def url(self) -> str:
        return self.state.url

    @property
    def connected(self) -> bool:
        """Whether the subscription is up and delivering."""
        return self.phase == "live"

    def gap(self, now: float) -> Gap:
        """Seconds without a connection at ``now``: the last gap and the total (see :class:`Gap`)."""
        down = self.down_since
        if down is None:
            return Gap(self._gap_last, self._gap_total)
        current = now - down
        return Gap(current, self._gap_total + current)

    # ------------------------------------------------------------------ live
    def _to(self, phase: Phase) -> None:
        if not self.closed:
            self.phase = phase

    def opened(self) -> None:
        """The first subscription was answered: the stream is live."""
        if self.phase == "subscribing":
            self._to("live")

    def deliver(self, batch: pa.RecordBatch | None, now: float) -> list[pa.RecordBatch | None]:
        """What to hand on of what a subscription's reading gave: a heartbeat
        (None) as it is, a batch without the repeats of a resume (none left: nothing)."""
        if batch is None:
            return [None]
        if self.reconnect:
            batch = self.resume.fresh(batch, now=now)
        return [batch] if batch.num_rows else []

    def ended(self, cause: TheiaError | None, now: float, *, code: int | None = None, heartbeat: float | None = None) -> None:
        """The subscription ended without the caller asking: ``cause`` (None for a
        normal close with ``code``). The session waits for its first attempt;
        ``heartbeat`` is the caller's interval of empty batches meanwhile."""
        if cause is None:
            cause = ConnectionClosed(f"{self.url} closed the live stream", url=self.url, code=code)
        self._note(cause)
        self.state.complete = False
        self.down_since = now
        self._backoff = Backoff(self.backoff, self.max_backoff, self.max_retries)
        self._heartbeat = heartbeat
        self._beat = now
        self._wait(now)

    # ------------------------------------------------------------------ waiting
    @property
    def waiting(self) -> bool:
        """Whether the stream waits for its next attempt (:meth:`next_step` says what to do)."""
        return self.phase == "waiting" and not self.closed

    def _wait(self, now: float) -> None:
        self._to("waiting")
        jitter = None if self._jitter is None else self._jitter()
        self._deadline = now + self._backoff.next_delay(jitter)

    def next_deadline(self) -> float | None:
        """When :meth:`next_step` next has something to do (None unless waiting)."""
        if self.phase != "waiting":
            return None
        if self._heartbeat is None:
            return self._deadline
        return min(self._deadline, self._beat + self._heartbeat)

    def next_step(self, now: float) -> Step:
        """What to do at ``now`` while waiting: sleep, beat, or make the attempt
        (then the phase is ``subscribing``)."""
        if self.phase != "waiting":
            return Step("attempt")
        heartbeat = self._heartbeat
        if heartbeat is not None and now - self._beat >= heartbeat:
            self._beat = now
            return Step("beat")
        remaining = self._deadline - now
        if remaining <= 0:
            self._to("subscribing")
            return Step("attempt")
        if heartbeat is not None:
            remaining = min(remaining, heartbeat - (now - self._beat))
        return Step("sleep", remaining)

    # ------------------------------------------------------------------ an attempt
    def subscribed(self) -> EventFilter | None:
        """The new subscription is open: the ``/find`` of what was stored while away
        (None when the filter's end is already behind); the phase is ``catching-up``."""
        self._to("catching-up")
        self._held = None
        return self.resume.resume_filter(self.state.filter)

    def found(self, batch: pa.RecordBatch, now: float) -> pa.RecordBatch | None:
        """A batch of the resume find arrived: hold it, and hand on (without
        repeats) the one held before, if any events of it are new."""
        held, self._held = self._held, batch
        return None if held is None else self._recover(held, now)

    def caught_up(self, now: float) -> pa.RecordBatch | None:
        """The resume find was read to its end: the stream is back (``live``);
        returns the last batch of the find to hand on, if any events of it are new."""
        held, self._held = self._held, None
        last = None if held is None else self._recover(held, now)
        self.resume.resumed(now)
        if self.down_since is not None:
            gap = now - self.down_since
            self._gap_last = gap
            self._gap_total += gap
            self.down_since = None
        self.reconnects += 1
        self._to("live")
        return last

    def _recover(self, batch: pa.RecordBatch, now: float) -> pa.RecordBatch | None:
        fresh = self.resume.recover(batch, now)
        self.recovered += fresh.num_rows
        return fresh if fresh.num_rows else None

    def attempt_failed(self, exc: TheiaError, now: float) -> None:
        """The attempt failed with ``exc``: wait for the next one, or raise (the
        phase is then ``failed`` and ``error`` what was raised): ``exc`` itself when
        it is not :func:`retried`, :class:`~theia_frames.exceptions.GaveUp` after more
        than ``max_retries`` failed attempts in a row. Once the caller closed the stream,
        a failure is its consequence, and only noted."""
        self._held = None
        self._note(exc)
        if self.closed:
            return
        if not retried(exc):
            self._fail(exc)
            raise exc
        if self._backoff.failed():
            gave_up = GaveUp(
                f"the live stream from {self.url} gave up reconnecting after {self._backoff.failures} attempt(s) "
                f"(max_retries={self.max_retries}): {exc}",
                url=self.url,
                attempts=self._backoff.failures,
                cause=exc,
            )
            self._fail(gave_up)
            raise gave_up from exc
        self._wait(now)

    def _fail(self, error: TheiaError) -> None:
        self.error = error
        self._to("failed")

    def _note(self, exc: TheiaError) -> None:
        self.last_error = exc
        if isinstance(exc, SubscriberTooSlow):
            self.state.note(exc)

    def close(self) -> None:
        """The caller closed the stream (from any thread); idempotent."""
        self.closed = True
        self.phase = "closed"
