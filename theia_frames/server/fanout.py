"""The live fan-out: each commit matched against every live filter on a thread of its
own (:class:`Fanout`), what a subscriber holds (:class:`Subscriber`), and a commit as
the fan-out sees it (:class:`Commit`: each filter's matches and the plain frames, made once).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from .output import plain_frames
from ..filter import EventFilter

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection

__all__ = [
    "FANOUT_QUEUE",
    "FANOUT_WAIT",
    "Commit",
    "Subscriber",
    "FanoutTarget",
    "Fanout",
]


# Commits the live fan-out may have waiting before the writer waits for it.
FANOUT_QUEUE = 8


# Seconds the writer waits for the fan-out before the costliest filter's subscriber is dropped.
FANOUT_WAIT = 0.25


class Commit:
    """Newly stored events as the live fan-out sees them: each filter's matches,
    and the plain frames, made once for every subscriber."""

    def __init__(self, new: pa.RecordBatch) -> None:
        self.new = new
        self._frames: Any = None

    def mask(self, flt: EventFilter) -> Any:
        """True (every event matches), False (none does), or a boolean mask."""
        if flt.is_time_only and flt.start is None and flt.end is None:
            return True
        keep = flt.mask_batch(self.new)
        if keep.all():
            return True
        if not keep.any():
            return False
        return pa.array(keep)

    def frames(self) -> Any:
        if self._frames is None:
            self._frames = plain_frames(self.new)
        return self._frames


class Subscriber:
    """A /live connection: its filter and the events waiting to be sent to it."""

    __slots__ = ("ws", "filter", "batched", "since", "pending", "waiting", "wake", "sender", "writing", "dropped", "cost")

    def __init__(self, ws: ServerConnection, flt: EventFilter, batched: bool, since: int) -> None:
        self.ws = ws
        self.filter = flt
        self.batched = batched
        # the last message whose commit was taken in before it subscribed: not for it
        self.since = since
        # Arrow batches for a batched subscriber, arrays of ready frames for a plain one
        self.pending: list[Any] = []
        self.waiting = 0
        self.wake = asyncio.Event()
        self.sender: asyncio.Task[None] | None = None
        self.writing = False  # its sender is writing (not waiting to be woken)
        self.dropped = False
        self.cost = 0.0  # seconds the fan-out spent matching its filter, recent commits weighing most


logger = logging.getLogger("theia_frames.server.collector")


class FanoutTarget(Protocol):
    """Where the fan-out's matches go: the live subscribers (read from the fan-out thread),
    and what takes their parts and drops the costly ones (called on the loop)."""

    @property
    def live(self) -> tuple[Subscriber, ...]:
        """The subscribers now, as one immutable tuple."""

    def deliver(self, parts: list[tuple[Subscriber, Any]]) -> None:
        """Hand a commit's parts to their subscribers (loop thread)."""

    def drop_slow(self, sub: Subscriber, why: str | None = None) -> None:
        """Drop a subscriber that cannot keep up, telling it ``why`` (loop thread)."""


class Fanout(threading.Thread):
    """The thread that matches each commit against every live filter, off the event
    loop, and hands the matches to the loop: an expensive filter costs this
    thread's time, never the loop's. At most :data:`FANOUT_QUEUE` commits wait
    for it; beyond that the writer waits (and ingest slows) rather than memory grow."""

    def __init__(self, target: FanoutTarget, call_soon: Callable[..., bool]) -> None:
        """``target`` gets the matches; ``call_soon(callback, *args)`` schedules a call on
        the loop from this thread (False once the loop has ended)."""
        super().__init__(name="theia-frames-fanout", daemon=True)
        self.target = target
        self.call_soon = call_soon
        self._queue: deque[tuple[int, pa.RecordBatch]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._matching: tuple[Subscriber | None, float] = (None, 0.0)  # whose filter runs, since when
        self._processed = 0  # commits matched so far
        self._dropped_at = -1  # the value of _processed when a subscriber was last dropped

    def put(self, upto: int, new: pa.RecordBatch) -> None:
        """Hand over a commit's new events (writer thread); waits while the queue is full.

        When it stays full for :data:`FANOUT_WAIT` seconds, the subscriber whose
        filter cost the most matching time is dropped as too slow (its client is
        told why), so one costly filter cannot hold up ingest for everyone.
        """
        if not self.target.live:
            return  # nobody to tell (a subscriber arriving now starts after this commit)
        room = lambda: len(self._queue) < FANOUT_QUEUE or self._closing  # noqa: E731
        with self._cond:
            while not self._cond.wait_for(room, FANOUT_WAIT):
                if self._dropped_at == self._processed:
                    continue  # the last one dropped may still be matched: one at a time
                current, started = self._matching
                now = time.perf_counter()

                def cost(sub: Subscriber) -> float:
                    return sub.cost + (now - started if sub is current else 0.0)

                costly = [sub for sub in self.target.live if not sub.dropped and cost(sub) > 0]
                if not costly:
                    continue
                victim = max(costly, key=cost)
                victim.dropped = True  # the fan-out skips it from now on
                self._dropped_at = self._processed
                why = "its filter takes more matching time than the collector can give it at this rate of events"
                self.call_soon(self.target.drop_slow, victim, why)
            if self._closing:
                return
            self._queue.append((upto, new))
            self._cond.notify_all()

    def close(self) -> None:
        """End the thread: the commits still waiting are dropped, and a writer waiting for room goes on."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def run(self) -> None:
        for upto, new in iter(self._next, None):
            try:
                parts = self._match(upto, new)
            except Exception:  # pragma: no cover - a bug must not stop the live fan-out
                logger.exception("matching stored events against live filters failed")
                continue
            finally:
                self._processed += 1
            if parts and not self.call_soon(self.target.deliver, parts):
                self.close()  # the loop has ended: nobody to deliver to
                return

    def _next(self) -> tuple[int, pa.RecordBatch] | None:
        """The next commit to match, once there is one; None once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closing)
            if self._closing:
                return None
            item = self._queue.popleft()
            self._cond.notify_all()  # room for the writer
            return item

    def _match(self, upto: int, new: pa.RecordBatch) -> list[tuple[Subscriber, Any]]:
        """Each subscriber's part of a commit. Each filter is applied once to the whole
        commit (time-only filters with a vectorised comparison); the plain frames are
        encoded once and shared by every plain subscriber."""
        commit = Commit(new)
        parts = []
        for sub in self.target.live:
            if sub.dropped or sub.since >= upto:
                continue
            started = time.perf_counter()
            self._matching = (sub, started)
            try:
                mask = commit.mask(sub.filter)
            finally:
                self._matching = (None, 0.0)
            sub.cost = 0.5 * sub.cost + (time.perf_counter() - started)
            if mask is False:
                continue
            whole = commit.frames() if not sub.batched else new
            parts.append((sub, whole if mask is True else whole.filter(mask)))
        return parts
