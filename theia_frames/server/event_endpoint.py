"""The collector's ``/event`` endpoint (:class:`EventEndpoint`, a part of
:class:`~theia_frames.server.collector.Collector`): events in, flushes answered once committed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .ingest import MAX_WAITING_ERRORS, EventSink, Outcome, Writer
from .output import ConnectionState, ThrottledLog, close_quietly
from ..protocol.messages import is_flush_request, parse_flush_request

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import ServerConnection

__all__ = [
    "EventEndpoint",
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


class EventEndpoint:
    """The ``/event`` endpoint of the collector: events in, flushes answered once committed."""

    _flushes: list[tuple[int, EventSink, Any]]
    _published: Any
    _room: asyncio.Event | None
    _writer: Writer | None
    _log: ThrottledLog
    if TYPE_CHECKING:  # defined by the Collector
        @property
        def _loop(self) -> asyncio.AbstractEventLoop | None: ...
        def _spawn(self, coro: Any) -> asyncio.Task[Any]: ...

    # ------------------------------------------------------------------ /event
    async def _on_event(self, ws: ServerConnection, batched: bool, state: ConnectionState) -> None:
        writer = self._writer
        room = self._room
        loop = self._loop
        assert writer is not None and room is not None and loop is not None
        sink = EventSink(self, ws)
        budget = _READ_BUDGET
        last = 0  # this connection's last message: what its flush waits for, not the other senders'
        try:
            async for message in ws:
                state.last = loop.time()
                if batched and is_flush_request(message):
                    self._flush_request(sink, message, last)
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

    def _committed_from_writer(self, upto: int, outcomes: list[Outcome]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._committed, upto, outcomes)
        except RuntimeError:  # the loop has ended: nobody is left to tell
            pass

    def _flush_request(self, sink: EventSink, message: str, seq: int) -> None:
        """Answer ``{"flush": token}`` once everything received before it is committed."""
        try:
            token = parse_flush_request(message)
        except ValueError as exc:
            sink.report(str(exc))
            return
        if self._published >= seq:
            sink.acknowledge(token, seq)
        else:
            self._flushes.append((seq, sink, token))

    def _committed(self, upto: int, outcomes: list[Outcome]) -> None:
        """Take in a commit's outcome (loop thread): counts, error messages, then the flushes it answers."""
        self._published = max(self._published, upto)
        if self._room is not None:
            self._room.set()
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
                    self._spawn(close_quietly(sink.ws, 1011, "too many events not stored"))
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
