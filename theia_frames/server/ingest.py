"""The collector's ingest: received ``/event`` messages decoded and checked
(:class:`Arrivals`, :func:`append_arrow`), committed in groups by the writer thread
(:class:`Writer`), and the answers each sender is owed (:class:`EventSink`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
from websockets.exceptions import ConnectionClosed

from ..protocol.arrow import (
    columns_to_batch,
    decoded_event_sizes,
    empty_batch,
    ipc_to_batches,
    is_arrow_message,
    outside_event_times,
    uncarried_rows,
)
from ..timeparse import event_time_problem
from ..protocol.codec import EventColumns, header_problem
from .fanout import Fanout
from .output import (
    ThrottledLog,
    peer_name,
    plain_frames,
)
from ..exceptions import (
    DecodeError,
    shorten,
)
from ..protocol.messages import error_message, flush_failure, flush_reply
from .store import EventStore

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from websockets.asyncio.server import ServerConnection

__all__ = [
    "SinkOwner",
    "warm_up",
    "MAX_WAITING_ERRORS",
    "COMMIT_BYTES",
    "MAX_FAILURES_KEPT",
    "Arrivals",
    "append_arrow",
    "EventSink",
    "Outcome",
    "Writer",
]


logger = logging.getLogger("theia_frames.server.collector")


class SinkOwner(Protocol):
    """What an event sink uses of its collector."""

    log: ThrottledLog

    def spawn(self, coro: Any) -> asyncio.Task[Any]: ...


def warm_up() -> None:
    """Import what storing and sending events needs (Arrow, and what it loads on
    first use: about a second) before the first event arrives, not when it does."""
    try:
        plain_frames(empty_batch())
    except Exception:  # pragma: no cover - the first real use reports any problem
        logger.exception("preparing the encoders failed")


# Error messages kept waiting for an /event client that does not read them.
MAX_WAITING_ERRORS = 1_000


# Decoded bytes above which the writer commits what it has and decodes the rest for the next commit.
COMMIT_BYTES = 64 * 1024 * 1024


# Store failures remembered for Collector.flush (the newest; counted beyond that).
MAX_FAILURES_KEPT = 1_000


class Arrivals:
    """The events received for one commit, in arrival order: plain events decoded
    into columns, Arrow batches kept as they are."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.cols = EventColumns()
        self.rows = 0
        self.nbytes = 0  # about the bytes of the decoded events

    def __len__(self) -> int:
        return self.rows + len(self.cols)

    def append_raw(self, message: bytes | str) -> str | None:
        """Take the events of a plain message; returns why some were left out (a timestamp
        that is no event time, an id, source or tag the plain dialect cannot carry back), if any."""
        cols = self.cols
        before = len(cols)
        cols.append_raw(message)
        self.nbytes += len(message)

        def problem(k: int) -> str | None:
            return event_time_problem(cols.timestamp[k]) or header_problem(cols.id[k], cols.source[k], cols.tags[k])

        wrong = [k for k in range(before, len(cols)) if problem(k) is not None]
        if not wrong:
            return None
        note = f"event {shorten(repr(cols.id[wrong[0]]))} not stored: {problem(wrong[0])}"
        for k in reversed(wrong):
            for values in (cols.id, cols.timestamp, cols.source, cols.tags, cols.content):
                del values[k]
        if len(wrong) > 1:
            note += f" (and {len(wrong) - 1} more event(s) of the message)"
        return note

    def append_batch(self, batch: pa.RecordBatch) -> None:
        self._gather()
        self.batches.append(batch)
        self.rows += batch.num_rows
        self.nbytes += batch.nbytes

    def _gather(self) -> None:
        if len(self.cols):
            self.batches.append(columns_to_batch(self.cols))
            self.rows += len(self.cols)
            self.cols = EventColumns()

    def batch(self) -> pa.RecordBatch:
        self._gather()
        if not self.batches:
            return empty_batch()
        return self.batches[0] if len(self.batches) == 1 else pa.concat_batches(self.batches)


def append_arrow(arrivals: Arrivals, message: bytes, max_decoded: int, max_event: int) -> str | None:
    """Take the events of an Arrow batch message; returns a note on rows left out, if any.

    A message decoding to more than ``max_decoded`` bytes is refused whole
    (DecodeError, before anything is decompressed); events of more than
    ``max_event`` bytes are left out.
    """
    left_out = 0
    first_bad = ""
    too_large = 0
    wrong_time = 0
    first_time = ""
    for batch in ipc_to_batches(message, max_decoded=max_decoded):
        if not batch.num_rows:
            continue
        times = outside_event_times(batch.column(1))
        if times is not None:
            # told apart from the other problems: the event and the accepted range are named
            row = int(times.argmax())
            value = batch.column(1)[row].as_py()
            if not wrong_time and value is not None:
                first_time = f"event {shorten(repr(batch.column(0)[row].as_py()))}: {event_time_problem(value)}"
            if value is not None:
                times &= ~batch.column(1).is_null().to_numpy(zero_copy_only=False)
                wrong_time += int(times.sum())
                batch = batch.filter(pa.array(~times))
                if not batch.num_rows:
                    continue
        large = decoded_event_sizes(batch) > max_event
        if large.any():
            too_large += int(large.sum())
            if not left_out:
                first_bad = batch.filter(pa.array(large)).column(0)[0].as_py()
            left_out += int(large.sum())
            batch = batch.filter(pa.array(~large))
            if not batch.num_rows:
                continue
        # Rows the plain format cannot carry would break plain /find and /live peers.
        bad = uncarried_rows(batch)
        if bad is not None:
            if not left_out:
                first_bad = batch.filter(pa.array(bad)).column(0)[0].as_py()
            left_out += int(bad.sum())
            batch = batch.filter(pa.array(~bad))
        if batch.num_rows:
            arrivals.append_batch(batch)
    notes = []
    if wrong_time:
        notes.append(f"{wrong_time} event(s) of a batch not stored: {first_time}")
    if left_out:
        why = "a line break in id, source or a tag, a comma in a tag, or a missing value"
        if too_large == left_out:
            why = f"larger than {max_event} bytes (the limit per event)"
        elif too_large:
            why = f"larger than {max_event} bytes (the limit per event), or {why}"
        notes.append(f"{left_out} event(s) of a batch not stored: {why} (first: id {shorten(repr(first_bad))})")
    return "; ".join(notes) or None


class EventSink:
    """An /event connection as the writer sees it: where its error messages go."""

    __slots__ = (
        "collector", "ws", "peer", "errors", "sending", "closed", "dropped", "accepted", "rejected", "duplicates", "failures",
    )

    def __init__(self, collector: SinkOwner, ws: ServerConnection) -> None:
        self.collector = collector
        self.ws = ws
        self.peer = peer_name(ws)
        self.errors: deque[str] = deque()
        self.sending = False
        self.closed = False
        self.dropped = 0
        # counted on the loop thread from each commit's outcome: events stored, messages
        # refused, and the store failures (message number, reason) no flush answer told of yet
        self.accepted = 0
        self.rejected = 0
        self.duplicates = 0  # exact repeats of stored events: acknowledged, not stored again
        self.failures: list[tuple[int, str]] = []

    def acknowledge(self, token: Any, seq: int) -> None:
        """Answer a flush request made after message ``seq``: everything up to it is
        committed (loop thread). The answer tells of the store failures among those
        messages, once: a failed commit does not fail the flushes after it."""
        told = [text for at, text in self.failures if at <= seq]
        if told:
            self.failures = [(at, text) for at, text in self.failures if at > seq]
            more = f" (and {len(told) - 1} more message(s) not stored)" if len(told) > 1 else ""
            self._queue(error_message(flush_failure(token, f"{told[-1]}{more}")))
        else:
            self._queue(flush_reply(token, self.accepted, self.rejected, self.duplicates))

    def report(self, text: str) -> None:
        """Queue an error message for the client (loop thread)."""
        self._queue(error_message(text))

    def _queue(self, message: str) -> None:
        if self.closed:
            return
        if len(self.errors) >= MAX_WAITING_ERRORS:
            # A client that never reads must not make us hold its errors forever.
            self.dropped += 1
            return
        self.errors.append(message)
        if not self.sending:
            self.sending = True
            self.collector.spawn(self._send())

    async def _send(self) -> None:
        try:
            while self.errors:
                await self.ws.send(self.errors.popleft())
        except ConnectionClosed:
            self.errors.clear()
        finally:
            self.sending = False


# What a commit did with one received message: (sink, message number, events
# stored, error text or None, True when the text is a store failure rather
# than a message refused as not being events, events that were exact repeats
# of stored ones).
Outcome = tuple["EventSink", int, int, "str | None", bool, int]


def conflict_note(batch: pa.RecordBatch, conflicting: Any) -> str | None:
    """The error text of the events of ``batch`` left out as copies, with other content,
    of an event stored under the same identity (None when there are none)."""
    rows = conflicting.nonzero()[0]
    if not len(rows):
        return None
    first = int(rows[0])
    return (
        f"{len(rows)} event(s) not stored: an event of the same (timestamp, id) is stored with other "
        f"content, and the first stored is kept (first: id {shorten(repr(batch.column(0)[first].as_py()))} "
        f"at {batch.column(1)[first].as_py()!r})"
    )


class Writer(threading.Thread):
    """The one thread that writes to the store: decodes what arrived, commits it in one go.

    Every message handed over gets a sequence number (``received``); after
    each commit ``committed`` is the number of the last message stored, so a
    caller can wait for "everything received so far". What arrived is
    committed in groups of at most about :data:`COMMIT_BYTES` decoded bytes.
    When a group cannot be stored, each sender's events are stored alone,
    then each message alone: a message the store refuses fails by itself.
    """

    def __init__(self, store: EventStore, on_commit: Any, fanout: Fanout, max_decoded: int, max_event: int) -> None:
        super().__init__(name="theia-frames-writer", daemon=True)
        self.store = store
        self.on_commit = on_commit
        self.fanout = fanout
        self.max_decoded = max_decoded
        self.max_event = max_event
        self.received = 0
        self.committed = 0
        self.pending_bytes = 0
        lock = threading.Lock()
        self._work = threading.Condition(lock)  # the writer waits here for messages
        self._stored = threading.Condition(lock)  # callers wait here for commits
        self._queue: list[tuple[int, EventSink, bytes | str, bool]] = []
        # store failures: (message number, events, reason), the newest kept
        self._failures: deque[tuple[int, int, str]] = deque(maxlen=MAX_FAILURES_KEPT)
        self._closing = False
        self._done = False

    @property
    def pending_messages(self) -> int:
        """Messages handed over and not yet committed."""
        return self.received - self.committed

    def put(self, sink: EventSink, message: bytes | str, batched: bool) -> int:
        """Hand over one received message; returns its sequence number."""
        with self._work:
            self.received += 1
            self.pending_bytes += len(message)
            self._queue.append((self.received, sink, message, batched))
            self._work.notify()
            return self.received

    def wait_committed(self, seq: int, timeout: float | None) -> bool:
        """Wait until message ``seq`` is committed; False on timeout or when the writer ended first."""
        with self._stored:
            self._stored.wait_for(lambda: self.committed >= seq or self._done, timeout)
            return self.committed >= seq

    def failures_between(self, after: int, upto: int) -> tuple[int, int, str]:
        """Store failures of messages ``after < seq <= upto``: (messages, events, the last reason)."""
        with self._stored:
            found = [(events, text) for seq, events, text in self._failures if after < seq <= upto]
        if not found:
            return 0, 0, ""
        return len(found), sum(events for events, _ in found), found[-1][1]

    def close(self) -> None:
        """Store what is queued, then end the thread."""
        with self._work:
            self._closing = True
            self._work.notify()

    def run(self) -> None:
        try:
            warm_up()
            self._loop()
        finally:
            with self._stored:
                self._done = True
                self._stored.notify_all()

    def _loop(self) -> None:
        while True:
            with self._work:
                while not self._queue and not self._closing:
                    self._work.wait()
                if not self._queue:
                    return
                items, self._queue = self._queue, []
            at = 0
            while at < len(items):
                at = self._commit_from(items, at)

    def _commit_from(self, items: list[tuple[int, EventSink, bytes | str, bool]], at: int) -> int:
        """Decode and commit ``items[at:]`` up to the bytes of one commit; returns where it stopped."""
        nbytes = 0
        decoded = 0
        arrivals = Arrivals()
        spans: list[tuple[EventSink, int, int, int, str | None]] = []  # sink, seq, first row, end row, problem
        while at < len(items) and decoded < COMMIT_BYTES:
            seq, sink, message, batched = items[at]
            at += 1
            nbytes += len(message)
            before, size = len(arrivals), arrivals.nbytes
            problem = self._decode(arrivals, message, batched)
            decoded += arrivals.nbytes - size
            if problem is not None:
                self._warn_bad(sink, problem)
            spans.append((sink, seq, before, len(arrivals), problem))
        upto = spans[-1][1]
        batch = arrivals.batch()
        new, failed, repeated, conflicting = self._store(batch, spans)
        outcomes: list[Outcome] = []
        for index, (sink, seq, first, end, problem) in enumerate(spans):
            if index in failed:
                text = f"{end - first} event(s) not stored: {failed[index]}"
                outcomes.append((sink, seq, 0, text, True, 0))
            else:
                repeats = int(repeated[first:end].sum())
                clashes = conflicting[first:end]
                note = conflict_note(batch.slice(first, end - first), clashes)
                if note is not None:
                    self._warn_bad(sink, note)
                    problem = note if problem is None else f"{problem}; {note}"
                outcomes.append((sink, seq, end - first - repeats - int(clashes.sum()), problem, False, repeats))
        with self._stored:
            for index, reason in failed.items():
                self._failures.append((spans[index][1], spans[index][3] - spans[index][2], reason))
            self.committed = upto
            self.pending_bytes -= nbytes
            self._stored.notify_all()
        self.on_commit(upto, outcomes)
        if new.num_rows:
            self.fanout.put(upto, new)
            try:
                self.store.compact()
            except Exception as exc:  # the events are stored; merging is retried after the next commit
                logger.error("merging stored chunks failed: %s", exc)
        return at

    def _store(
        self, batch: pa.RecordBatch, spans: list[tuple[EventSink, int, int, int, str | None]]
    ) -> tuple[pa.RecordBatch, dict[int, str], Any, Any]:
        """Commit ``batch``: the new events, the spans that could not be stored (index: reason),
        and which rows were left out as exact repeats and as copies with other content."""
        repeated = np.zeros(batch.num_rows, dtype=bool)
        conflicting = np.zeros(batch.num_rows, dtype=bool)
        if not batch.num_rows:
            return batch, {}, repeated, conflicting
        try:
            # One transaction, one chunk: no SQL per event. Merging small
            # chunks waits until the commit is published. Arrow batches were
            # validated in full when they were read, plain events were parsed:
            # the store need not validate them again.
            done = self.store.store_batch(batch, compact=False, validated=True)
            return done.new, {}, done.repeated, done.conflicting
        except Exception as exc:
            logger.error("%d event(s) could not be stored together (%s); storing each sender's alone", batch.num_rows, exc)
            by_sink: dict[int, list[int]] = {}
        for index, (sink, _, first, end, _) in enumerate(spans):
            if end > first:
                by_sink.setdefault(id(sink), []).append(index)
        stored: list[Any] = []
        failed: dict[int, str] = {}

        def attempt(indexes: list[int]) -> str | None:
            parts = [batch.slice(spans[i][2], spans[i][3] - spans[i][2]) for i in indexes]
            try:
                part = parts[0] if len(parts) == 1 else pa.concat_batches(parts)
                done = self.store.store_batch(part, compact=False, validated=True)
                stored.append(done.new)
                at = 0
                for i in indexes:
                    first, end = spans[i][2], spans[i][3]
                    repeated[first:end] = done.repeated[at : at + end - first]
                    conflicting[first:end] = done.conflicting[at : at + end - first]
                    at += end - first
                return None
            except Exception as exc:
                return shorten(str(exc))

        for indexes in by_sink.values():
            reason = attempt(indexes)
            if reason is None:
                continue
            if len(indexes) == 1:
                failed[indexes[0]] = reason
                continue
            for index in indexes:
                alone = attempt([index])
                if alone is not None:
                    failed[index] = alone
        for index, reason in failed.items():
            sink, _, first, end, _ = spans[index]
            self._warn_bad(sink, f"{end - first} event(s) not stored: {reason}", store=True)
        stored = [b for b in stored if b.num_rows]
        if not stored:
            return empty_batch(), failed, repeated, conflicting
        return (stored[0] if len(stored) == 1 else pa.concat_batches(stored)), failed, repeated, conflicting

    def _warn_bad(self, sink: EventSink, problem: str, store: bool = False) -> None:
        if store:
            sink.collector.log.error("store", "events from %s on /event not stored: %s", sink.peer, problem)
        else:
            sink.collector.log.warning("bad-event", "bad event from %s on /event: %s", sink.peer, problem)

    def _decode(self, arrivals: Arrivals, message: bytes | str, batched: bool) -> str | None:
        try:
            if batched and is_arrow_message(message):
                return append_arrow(arrivals, message, self.max_decoded, self.max_event)  # type: ignore[arg-type]
            size = len(message)
            if isinstance(message, str) and 4 * size > self.max_event:
                size = len(message.encode("utf-8", "surrogatepass"))
            if size > self.max_event:
                return f"event of {size} bytes not stored: larger than {self.max_event} bytes (the limit per event)"
            return arrivals.append_raw(message)
        except DecodeError as exc:
            return f"invalid event: {exc}"
        except Exception as exc:  # pragma: no cover - a bug must not stop the writer
            logger.exception("unexpected error decoding an event")
            return f"event not stored: {shorten(str(exc))}"
