"""What a :class:`~theia_frames.live.frame.LiveFrame` is doing, in words: :class:`LiveStatus` and :func:`in_words`.

A :class:`LiveStatus` is a frozen snapshot of the frame's state and counters;
``str()`` of it is the status line the widget shows. :func:`in_words` says
what an error of a live stream means, in words a user can act on.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Literal

from ..exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    GaveUp,
    HandshakeRefused,
    ProtocolError,
    ServerError,
    SubscriberTooSlow,
    TheiaTimeoutError,
)
from ..protocol.messages import CLOSE_DROPPED, CLOSE_WORDS

__all__ = ["LiveStatus", "Phase", "State", "in_words"]


State = Literal["new", "running", "paused", "stopped", "ended", "failed"]
#: What a user needs to know, which :attr:`LiveStatus.phase` says: ``running`` is
#: ``live`` while connected and ``reconnecting`` while the collector is away.
Phase = Literal["new", "connecting", "live", "reconnecting", "paused", "stopped", "ended", "failed"]

#: What each :attr:`~theia_frames.exceptions.ConnectError.reason` means (``handshake``
#: is a :class:`~theia_frames.exceptions.HandshakeRefused`, said with its status).
_CONNECT_WORDS = {
    "refused": "the collector does not accept connections (it is not running, or not at this address)",
    "unknown-host": "the collector's host name is unknown",
    "tls": "the secure connection to the collector failed (TLS)",
    "timeout": "the collector does not answer (connecting timed out)",
}


def in_words(exc: BaseException | None) -> str:
    """What an error of a live stream means, in words a user can act on.

    It reads the error's kind and attributes (``GaveUp.attempts`` and ``.cause``,
    ``ConnectError.reason``, ``HandshakeRefused.status``, ``ConnectionClosed.code``),
    never its message.

    >>> in_words(ConnectionClosed("the connection to ws://h:1 closed with code 1001", code=1001))
    'the collector went away (it was stopped or is restarting)'
    >>> in_words(ConnectError("connection refused by ws://h:1 (is a collector running there?)", reason="refused"))
    'the collector does not accept connections (it is not running, or not at this address)'
    >>> in_words(HandshakeRefused("ws://h:1/live refused the WebSocket handshake with HTTP status 503", status=503))
    'the server refused the subscription (HTTP status 503): is it a theia collector?'
    """
    if exc is None:
        return ""
    if isinstance(exc, SubscriberTooSlow):
        return "the collector dropped this subscription: it fell too far behind the events"
    if isinstance(exc, AuthenticationError):
        return "the collector refused the credentials"
    if isinstance(exc, GaveUp):
        why = f": {in_words(exc.cause)}" if exc.cause is not None else ""
        return f"gave up reconnecting after {exc.attempts} attempts{why}"
    if isinstance(exc, HandshakeRefused):
        return f"the server refused the subscription (HTTP status {exc.status}): is it a theia collector?"
    if isinstance(exc, ConnectError):
        return _CONNECT_WORDS.get(exc.reason, f"the collector cannot be reached: {exc}")
    if isinstance(exc, ConnectionClosed):
        code = CLOSE_DROPPED if exc.code is None else exc.code
        return CLOSE_WORDS.get(code, f"the connection closed (code {code})")
    if isinstance(exc, TheiaTimeoutError):
        return "the collector did not answer in time"
    if isinstance(exc, ServerError):
        return f"the collector reported an error: {exc.text}"
    if isinstance(exc, ProtocolError):
        return f"the collector sent something that is not the theia protocol: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _clock(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).strftime("%H:%M:%S")


@dataclass(frozen=True)
class LiveStatus:
    """A snapshot of a :class:`~theia_frames.live.frame.LiveFrame`'s state and counters; ``str()`` is the status line.

    >>> print(LiveStatus(state="running", received=12345, rows=10000, dropped=2345, rate=1234.4,
    ...                  errors=0, last_error=None, newest=None, lag=None, version=7, phase="live"))
    live · 12,345 events · 1,234/s · 10,000 rows · 0 errors
    >>> print(LiveStatus(state="running", received=10, rows=10, dropped=0, rate=0.0, errors=0, last_error=None,
    ...                  newest=None, lag=None, version=1, phase="reconnecting", since=1714521600.0, gap_last=4.4,
    ...                  attempt=3, reason="the collector does not accept connections"))
    reconnecting since 00:00:00 UTC (4.4 s, attempt 3): the collector does not accept connections · 10 events · 0/s · 10 rows · 0 errors
    """

    state: State
    #: events received since start
    received: int
    #: rows held now
    rows: int
    #: rows rolled off by max_rows/window
    dropped: int
    #: events per second over the last few seconds
    rate: float
    #: errors seen (events the stream could not decode, failed hooks, a broken stream)
    errors: int
    last_error: str | None
    #: newest event timestamp held (seconds since the epoch)
    newest: float | None
    #: seconds between the newest event's timestamp and now (clock skew included)
    lag: float | None
    version: int
    #: times the subscription came back after the connection dropped
    reconnects: int = 0
    #: seconds away: during the last drop (so far, while away), and in total
    gap_last: float = 0.0
    gap_total: float = 0.0
    #: events fetched after a reconnect that were stored while away
    recovered: int = 0
    #: what the frame is doing (see :data:`Phase`); empty: the one ``state`` implies
    phase: Phase | Literal[""] = ""
    #: while reconnecting: when the connection was lost (seconds since the epoch)
    since: float | None = None
    #: while reconnecting: the attempt being waited for or made (1 = the first)
    attempt: int = 0
    #: why it is reconnecting, ended or failed, in words (see :func:`in_words`)
    reason: str | None = None

    @property
    def headline(self) -> str:
        """The first part of the status line: the phase, and what a user needs to know about it."""
        phase = self.phase or {"running": "live"}.get(self.state, self.state)
        if phase == "reconnecting":
            since = f" since {_clock(self.since)} UTC" if self.since is not None else ""
            text = f"reconnecting{since} ({self.gap_last:,.1f} s, attempt {max(self.attempt, 1)})"
            if self.reason:
                text += f": {self.reason}"
            return text + (" · paused" if self.state == "paused" else "")
        if phase == "new":
            return "not started"
        if phase == "ended":
            return f"ended: {self.reason or 'the collector closed the stream'}"
        if phase == "failed":
            return f"failed: {self.reason or self.last_error or 'the stream broke'}"
        return phase

    @property
    def brief(self) -> str:
        """The status in a few words, for one line: the phase (how long and which attempt while
        reconnecting, not why), the events and the rate; ``str()`` has everything.

        >>> LiveStatus(state="running", received=10, rows=10, dropped=0, rate=0.0, errors=0, last_error=None,
        ...            newest=None, lag=None, version=1, phase="reconnecting", since=1714521600.0, gap_last=4.4,
        ...            attempt=3, reason="the collector does not accept connections").brief
        'reconnecting (4.4 s, attempt 3) · 10 events · 0/s'
        """
        phase = self.phase or {"running": "live"}.get(self.state, self.state)
        if phase == "reconnecting":
            head = f"reconnecting ({self.gap_last:,.1f} s, attempt {max(self.attempt, 1)})"
        elif phase in ("failed", "ended"):
            head = phase
        else:
            head = self.headline
        text = f"{head} · {self.received:,} events · {self.rate:,.0f}/s"
        if self.errors:
            text += f" · {self.errors:,} error{'' if self.errors == 1 else 's'}"
        return text

    def __str__(self) -> str:
        text = (
            f"{self.headline} · {self.received:,} events · {self.rate:,.0f}/s · "
            f"{self.rows:,} rows · {self.errors:,} error{'' if self.errors == 1 else 's'}"
        )
        if self.reconnects:
            text += (
                f" · {self.reconnects:,} reconnect{'' if self.reconnects == 1 else 's'}"
                f" ({self.gap_total:,.1f} s away, {self.recovered:,} recovered)"
            )
        return text
