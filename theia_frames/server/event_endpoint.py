"""The collector's ``/event`` endpoint (:class:`EventEndpoint`): events in, flushes answered
once committed; and what the loop knows of the writer's commits (:class:`Published`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .background import Tasks
from .ingest import MAX_WAITING_ERRORS, EventSink, Outcome, Writer
from .output import ConnectionState, ThrottledLog, close_quietly
from ..protocol.messages import CLOSE_SERVER_ERROR, is_flush_request, parse_flush_request

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection

__all__ = [
    "EventEndpoint",
    "Published",
]


# Received and not yet committed bytes above which /event connections stop reading.
_PENDING_LIMIT = 64 * 1024 * 1024
# Received and not yet committed messages above which /event connections stop reading:
# what waits for the writer is a fraction of a second of its work, so a sender's
# confirmation (which waits for everything received before it) is never far behind,
# and many plain writers (one event per message) are slowed by TCP, not queued.
_PENDING_MESSAGES = 500
# Messages one /event connection may take in a row before it lets the loop serve others.
_READ_BUDGET = 32


class Published:
    """The writer's commits as the event loop takes them in: the last message committed,
    each commit's outcome told to its senders, the flushes it answers, and the sign that
    the writer has room again.

    ``call_soon(callback, *args)`` schedules a call on the loop from the writer's thread
    (False once the loop has ended); ``tasks`` runs the closes it decides on.
    """

    def __init__(self, call_soon: Callable[..., bool], tasks: Tasks) -> None:
        self.call_soon = call_soon
        self.tasks = tasks
        self.upto = 0  # the last message whose commit the loop has taken in
        self.room = asyncio.Event()  # set at each commit: the writer took some of its queue
        self._flushes: list[tuple[int, EventSink, Any]] = []

    def from_writer(self, upto: int, outcomes: list[Outcome]) -> None:
        """A commit's outcome, handed over by the writer's thread."""
        self.call_soon(self.committed, upto, outcomes)  # False: the loop has ended, nobody is left to tell

    def flush_request(self, sink: EventSink, message: str, seq: int) -> None:
        """Answer ``{"flush": token}`` once everything received before it is committed."""
        try:
            token = parse_flush_request(message)
        except ValueError as exc:
            sink.report(str(exc))
            return
        if self.upto >= seq:
            sink.acknowledge(token, seq)
        else:
            self._flushes.append((seq, sink, token))

    def committed(self, upto: int, outcomes: list[Outcome]) -> None:
        """Take in a commit's outcome (loop thread): counts, error messages, then the flushes it answers."""
        self.upto = max(self.upto, upto)
        self.room.set()
        for sink, seq, stored, text, failed, repeats in outcomes:
            sink.accepted += stored
            sink.duplicates += repeats
            if text is None:
                continue
            if failed:
                sink.failures.append((seq, text))
                if len(sink.failures) > MAX_WAITING_ERRORS and not sink.closed:
                    # Too many failures no flush has asked about to keep them all: end the
                    # connection; its client holds whatever is unconfirmed as in doubt.
                    sink.closed = True
                    self.tasks.spawn(close_quietly(sink.ws, CLOSE_SERVER_ERROR, "too many events not stored"))
            else:
                sink.rejected += 1
            sink.report(text)
        if self._flushes:
            waiting = []
            for seq, sink, token in self._flushes:
                if seq <= upto:
                    sink.acknowledge(token, seq)
                else:
                    waiting.append((seq, sink, token))
            self._flushes = waiting


class EventEndpoint:
    """The ``/event`` endpoint of the collector: each message handed to ``writer``, a
    connection's reading paused while too much waits for it; ``published`` answers the
    flushes. It is the owner of its connections' sinks (their ``log`` and ``spawn``)."""

    def __init__(self, writer: Writer, published: Published, tasks: Tasks, log: ThrottledLog) -> None:
        self.writer = writer
        self.published = published
        self.tasks = tasks
        self.log = log

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` on the loop (a sink's error messages)."""
        return self.tasks.spawn(coro)

    async def serve(self, ws: ServerConnection, batched: bool, state: ConnectionState) -> None:
        """Take the connection's events until it ends."""
        writer = self.writer
        room = self.published.room
        loop = asyncio.get_running_loop()
        sink = EventSink(self, ws)
        budget = _READ_BUDGET
        last = 0  # this connection's last message: what its flush waits for, not the other senders'
        try:
            async for message in ws:
                state.last = loop.time()
                if batched and is_flush_request(message):
                    self.published.flush_request(sink, message, last)
                    continue
                last = writer.put(sink, message, batched)
                budget -= 1
                if not budget:
                    budget = _READ_BUDGET
                    await asyncio.sleep(0)  # the others' turn: a finder's or a sender's step waits for no flood
                while writer.pending_bytes > _PENDING_LIMIT or writer.pending_messages > _PENDING_MESSAGES:
                    # Stop reading until the writer catches up: TCP pushes back on the client
                    # (which is not idle meanwhile: we are not listening).
                    state.watched = False
                    room.clear()
                    await room.wait()
                    state.last, state.watched = loop.time(), True
        finally:
            sink.closed = True
