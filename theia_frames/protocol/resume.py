"""Resuming a live subscription after a reconnect, without I/O.

:class:`ResumeState` remembers what a subscription delivered (the largest
timestamp, and the ids and timestamps of the recent batches) so that, after
a reconnect, :meth:`ResumeState.resume_filter` says what to ask a ``/find``
for and :meth:`ResumeState.fresh` drops what was already delivered.
:class:`Backoff` is the wait between attempts. The order of a reconnect
(wait, subscribe, catch up) and the rule of giving up are
:class:`~theia_frames.protocol.live.LiveSession`'s.

A resume attempt is a new ``/live`` subscription (what it pushes is buffered)
followed by a ``/find`` of what was stored while away. When either is refused
(e.g. HTTP 503 when the collector's per-address limit is reached) the attempt
closes everything it opened before the stream waits and tries again: a refused
attempt never holds a connection.

>>> import pyarrow as pa
>>> from theia_frames.protocol.arrow import event_schema
>>> from theia_frames.filter import EventFilter
>>> state = ResumeState(margin=5.0, subscribed_at=100.0)
>>> batch = pa.RecordBatch.from_pydict(
...     {"id": ["a", "b"], "timestamp": [110.0, 111.0], "source": ["/s"] * 2, "tags": [""] * 2,
...      "content": ["1", "2"]}, schema=event_schema())
>>> state.fresh(batch, now=0.0).num_rows
2
>>> state.resume_filter(EventFilter(0)).start
106.0
>>> state.recover(batch, now=0.0).num_rows      # repeats of a resume find are dropped
0
>>> state.resumed(now=0.0)
>>> backoff = Backoff(0.05, 2.0, max_retries=None)
>>> 0.025 <= backoff.next_delay(jitter=0.0) <= 0.05
True
>>> backoff.failed(), backoff.failures, backoff.delay
(False, 1, 0.1)
"""

from __future__ import annotations

import random
from collections import deque

import pyarrow as pa
import pyarrow.compute as pc

from ..checks import positive_seconds
from ..exceptions import UsageError
from ..filter import EventFilter
from ..timeparse import EARLIEST_EVENT_TIME

__all__ = ["ResumeState", "Backoff", "check_reconnect_options"]

#: entries of the recent-batches window past which out-of-order entries are pruned
RECENT_COMPACT = 1024


def check_reconnect_options(backoff: float, max_backoff: float, resume_margin: float, max_retries: int | None) -> None:
    """Raise :class:`~theia_frames.exceptions.UsageError` for a bad reconnect setting."""
    positive_seconds("backoff", backoff)
    positive_seconds("max_backoff", max_backoff)
    if max_backoff < backoff:
        raise UsageError(f"max_backoff ({max_backoff}) must not be below backoff ({backoff})")
    if isinstance(resume_margin, bool) or not isinstance(resume_margin, (int, float)) or not resume_margin >= 0:
        raise UsageError(f"resume_margin must be a number of seconds >= 0, got {resume_margin!r}")
    if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0):
        raise UsageError(f"max_retries must be None or a whole number >= 0, got {max_retries!r}")


class Backoff:
    """Exponential backoff with equal jitter: each wait is between half the
    delay and the whole of it; the delay doubles after each failure up to
    ``max_backoff``; more than ``max_retries`` failures in a row give up.

    >>> backoff = Backoff(1.0, 3.0, max_retries=1)
    >>> backoff.next_delay(jitter=0.0), backoff.failed(), backoff.next_delay(jitter=1.0), backoff.failed()
    (0.5, False, 2.0, True)
    """

    def __init__(self, backoff: float, max_backoff: float, max_retries: int | None) -> None:
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retries = max_retries
        self.delay = self.backoff
        self.failures = 0

    def next_delay(self, jitter: float | None = None) -> float:
        """Seconds to wait before the next attempt (``jitter`` in [0, 1), random by default)."""
        jitter = random.random() if jitter is None else jitter
        return self.delay * (0.5 + 0.5 * jitter)

    def failed(self) -> bool:
        """Count a failed attempt; returns whether to give up."""
        self.failures += 1
        self.delay = min(self.delay * 2, self.max_backoff)
        return self.max_retries is not None and self.failures > self.max_retries


class ResumeState:
    """What a reconnecting subscription delivered, to resume without loss or repeats.

    ``margin`` is the resume margin in seconds (events whose timestamps arrive
    out of order by up to that much are still found and deduplicated);
    ``subscribed_at`` the wall-clock time of the first subscription (where a
    resume starts when nothing was delivered yet). Times given as ``now`` are
    monotonic seconds.
    """

    def __init__(self, margin: float, subscribed_at: float) -> None:
        self.margin = float(margin)
        self.subscribed_at = subscribed_at
        #: the largest timestamp delivered
        self.seen_max: float | None = None
        # (largest timestamp, ids, timestamps) per recent batch
        self._recent: deque[tuple[float, pa.Array, pa.Array]] = deque()
        self._recent_kept = 0
        self._resumed: tuple[pa.Array, pa.Array] | None = None
        self._resumed_until = 0.0
        # the largest timestamp the last resume find delivered, and whether a live
        # event past it arrived since (then every repeat has arrived: see fresh())
        self._resumed_max: float | None = None
        self._passed = False
        # (ids, timestamps) the resume find under way delivered
        self._finding: list[tuple[pa.Array, pa.Array]] = []

    @property
    def window(self) -> int:
        """How many recent batches are remembered (bounded by the resume margin)."""
        return len(self._recent)

    def resume_filter(self, filter: EventFilter) -> EventFilter | None:
        """The ``/find`` that fetches what was stored while away, or None when the
        filter's end is already behind. Starts a resume: what an earlier, failed
        find delivered is in the recent window and dropped as repeats."""
        self._finding = []
        start = (self.subscribed_at if self.seen_max is None else self.seen_max) - self.margin
        if filter.start is not None:
            start = max(start, filter.start)
        if filter.end is not None and start > filter.end:
            return None
        return filter.match_start(max(start, EARLIEST_EVENT_TIME)).order_asc()

    def recover(self, batch: pa.RecordBatch, now: float) -> pa.RecordBatch:
        """A batch of a resume find without what was delivered already. Call it when
        the batch is handed to the consumer, not before: what it returns counts as
        delivered (a batch held back and lost with its find is fetched again)."""
        fresh = self.fresh(batch, check=True, now=now)
        if fresh.num_rows:
            self._finding.append((pa.concat_arrays([fresh.column(0)]), pa.concat_arrays([fresh.column(1)])))
        return fresh

    def resumed(self, now: float) -> None:
        """The resume find was read to its end: live events committed before its
        snapshot may still arrive, and are dropped as repeats (see :meth:`fresh`).
        A find that failed is forgotten by the next one's first :meth:`recover`."""
        finding, self._finding = self._finding, []
        self._resumed = (
            pa.concat_arrays([f[0] for f in finding]) if finding else pa.array([], pa.string()),
            pa.concat_arrays([f[1] for f in finding]) if finding else pa.array([], pa.float64()),
        )
        self._resumed_until = now + max(self.margin, 1.0)
        self._resumed_max = pc.max(self._resumed[1]).as_py() if len(self._resumed[1]) else None
        self._passed = False

    def fresh(self, batch: pa.RecordBatch, *, check: bool = False, now: float) -> pa.RecordBatch:
        """``batch`` without the events already delivered; remembers what it returns.

        Outside a resume a subscription never repeats an event, so the check
        runs only on resume finds (``check=True``) and after a resume, until
        both a while has passed and a live event later than anything the
        resume find delivered has arrived. The collector pushes the commits
        to a subscriber in commit order, so the events the find's snapshot
        also held (the only possible repeats) all come before that one, however
        far the pushes lag behind: a wall-clock window alone would let a late
        repeat through on a busy collector or a slow consumer.
        """
        if batch.num_rows == 0:
            return batch
        hi = pc.max(batch.column(1)).as_py()
        if check or self._resumed is not None:
            if not check and (self._resumed_max is None or hi > self._resumed_max):
                self._passed = True
            batch = self._drop_seen(batch)
            if not check and self._passed and now >= self._resumed_until:
                self._resumed = None
            if batch.num_rows == 0:
                return batch
            hi = pc.max(batch.column(1)).as_py()
        if self.seen_max is None or hi > self.seen_max:
            self.seen_max = hi
        cutoff = self.seen_max - self.margin
        recent = self._recent
        if hi >= cutoff:
            # copies: a column of a received batch would keep its whole message alive
            recent.append((hi, pa.concat_arrays([batch.column(0)]), pa.concat_arrays([batch.column(1)])))
        while recent and recent[0][0] < cutoff:
            recent.popleft()
        if len(recent) > RECENT_COMPACT and len(recent) > 2 * self._recent_kept:
            # entries out of order (an early batch with a late timestamp) can hold up
            # the pruning above: drop every entry outside the window now and then
            self._recent = recent = deque(entry for entry in recent if entry[0] >= cutoff)
            self._recent_kept = len(recent)
        return batch

    def _drop_seen(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` without events whose id and timestamp (to the microsecond)
        were delivered within the resume margin or by the last resume."""
        # a repeat has the timestamp of an event delivered, so none is past the largest:
        # the live events that follow a resume are passed without building a set
        if self.seen_max is None or pc.min(batch.column(1)).as_py() > self.seen_max + 1e-6:
            return batch
        known_ids = [entry[1] for entry in self._recent]
        known_ts = [entry[2] for entry in self._recent]
        if self._resumed is not None:
            known_ids.append(self._resumed[0])
            known_ts.append(self._resumed[1])
        if not known_ids:
            return batch
        all_ids = pa.concat_arrays(known_ids)
        if len(all_ids) == 0:
            return batch
        hit = pc.is_in(batch.column(0), value_set=all_ids)
        if not pc.any(hit).as_py():
            return batch
        # rare: an id seen before; it is the same event only with the same timestamp
        hit_ids = batch.column(0).filter(hit)
        near = pc.is_in(all_ids, value_set=hit_ids)
        seen: dict[str, list[float]] = {}
        for i, t in zip(all_ids.filter(near).to_pylist(), pa.concat_arrays(known_ts).filter(near).to_pylist()):
            seen.setdefault(i, []).append(t)
        ids = batch.column(0).to_pylist()
        stamps = batch.column(1).to_pylist()
        keep = [not any(abs(t - k) <= 1e-6 for k in seen.get(i, ())) for i, t in zip(ids, stamps)]
        return batch.filter(pa.array(keep, pa.bool_()))
