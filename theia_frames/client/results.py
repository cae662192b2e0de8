"""What both clients' results share outside the protocol core: how a result
shows its state (:class:`ResultView`), and the record batches it hands on
(:class:`ResultBatches`, with :class:`NewestFirst` for a descending find a
plain peer answers in ascending order, spilled to a temporary file).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Protocol, TypedDict, Unpack

import pyarrow as pa
import pyarrow.compute as pc

from ..exceptions import TheiaError, UsageError
from ..filter import EventFilter
from ..protocol.arrow import event_schema
from ..protocol.live import Gap, LiveSession
from ..protocol.resume import ResumeState
from ..protocol.streams import FindState, LiveState, StreamState
from .options import DEFAULT_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_RESUME_MARGIN

__all__ = ["ResultView", "LiveView", "ResultBatches", "NewestFirst", "Endpoint", "ReconnectOptions", "find_state", "live_session"]


class Endpoint(Protocol):
    """The settings of a client (either) that its results' state objects take."""

    url: str
    timeout: float | None
    max_message_size: int


def find_state(client: Endpoint, filter: EventFilter, *, strict: bool, batch_size: int, idle_timeout: float | None) -> FindState:
    """The state of a ``/find`` of ``client``."""
    return FindState(
        f"{client.url}/find",
        filter,
        strict=strict,
        batch_size=batch_size,
        idle_timeout=idle_timeout,
        timeout=client.timeout,
        max_decoded=client.max_message_size,
    )


class ReconnectOptions(TypedDict, total=False):
    """Whether and how a live stream reconnects (see :meth:`~theia_frames.client.Client.receive`)."""

    reconnect: bool
    backoff: float
    max_backoff: float
    resume_margin: float
    max_retries: int | None


def live_session(
    client: Endpoint, filter: EventFilter, *, strict: bool, batch_size: int, **options: Unpack[ReconnectOptions]
) -> LiveSession:
    """The session of a ``/live`` subscription of ``client``, subscribed from now on."""
    state = LiveState(f"{client.url}/live", filter, strict=strict, batch_size=batch_size, max_decoded=client.max_message_size)
    return LiveSession(
        state,
        reconnect=options.get("reconnect", False),
        backoff=options.get("backoff", DEFAULT_BACKOFF),
        max_backoff=options.get("max_backoff", DEFAULT_MAX_BACKOFF),
        resume_margin=options.get("resume_margin", DEFAULT_RESUME_MARGIN),
        max_retries=options.get("max_retries"),
        subscribed_at=time.time(),
    )


class ResultView:
    """What a result of either client shows of its :class:`~theia_frames.protocol.streams.StreamState`,
    and its one rule of reading: once, one way (``claim``). Both clients' results are this."""

    state: StreamState
    _claimed: str | None
    _closed: bool

    @property
    def url(self) -> str:
        return self.state.url

    @property
    def filter(self) -> EventFilter:
        return self.state.filter

    @property
    def strict(self) -> bool:
        return self.state.strict

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    @property
    def count(self) -> int:
        """Events yielded so far."""
        return self.state.count

    @property
    def total(self) -> int | None:
        """How many events the server said it will send (our collector, when it can
        count them from its index; None otherwise): what a progress bar shows."""
        return self.state.total

    @property
    def skipped(self) -> int:
        return self.state.skipped

    @property
    def errors(self) -> list[TheiaError]:
        return self.state.errors

    @property
    def complete(self) -> bool:
        return self.state.complete

    @property
    def closed(self) -> bool:
        return self._closed

    def _claim(self, how: str) -> None:
        if self._claimed is not None:
            raise UsageError(
                f"this {type(self).__name__} was already read with {self._claimed}; "
                "a result can be read once, one way"
            )
        if self._closed:
            raise UsageError(f"this {type(self).__name__} is closed")
        self._claimed = how


class LiveView(ResultView):
    """What a live stream of either client shows of its :class:`~theia_frames.protocol.live.LiveSession`."""

    session: LiveSession

    @property
    def reconnect(self) -> bool:
        return self.session.reconnect

    @property
    def backoff(self) -> float:
        return self.session.backoff

    @property
    def max_backoff(self) -> float:
        return self.session.max_backoff

    @property
    def resume_margin(self) -> float:
        return self.session.resume_margin

    @property
    def max_retries(self) -> int | None:
        return self.session.max_retries

    @property
    def reconnects(self) -> int:
        """Completed reconnections."""
        return self.session.reconnects

    @property
    def recovered(self) -> int:
        """Events fetched by resume finds."""
        return self.session.recovered

    @property
    def last_error(self) -> TheiaError | None:
        """What ended the last connection or failed the last attempt."""
        return self.session.last_error

    @property
    def error(self) -> TheiaError | None:
        """What ended the stream when it gave up reconnecting (also raised from the iteration)."""
        return self.session.error

    @property
    def resume(self) -> ResumeState:
        """What was delivered, for dropping repeats after a reconnect (``reconnect=True`` only)."""
        return self.session.resume

    @property
    def gap(self) -> Gap:
        """Seconds without a connection: the last gap and the total (see :class:`~theia_frames.protocol.live.Gap`)."""
        return self.session.gap(time.monotonic())

    @property
    def connected(self) -> bool:
        """Whether the stream is open and not waiting to reconnect."""
        return not self._closed and self.session.connected

    def _describe(self) -> str:
        """The stream in a ``repr``: its URL, filter, count, and whether it is open."""
        state = "closed" if self._closed else ("open" if self.session.down_since is None else "reconnecting")
        extra = f" reconnects={self.reconnects}" if self.reconnect else ""
        return f"<{type(self).__name__} {self.url} {self.filter.to_json()} count={self.count}{extra} {state}>"


class NewestFirst:
    """Batches in any order in, the same events newest first out.

    The batches are spilled to a temporary Arrow stream file as they are added (in
    the default temporary folder; about the size of the result's Arrow data; a
    stream, since each batch may bring a dictionary of its own),
    so memory holds one batch, not the result; :meth:`batches` then sorts the
    file by timestamp, stably, and reads it back newest first through a memory
    map in batches of at most ``size`` rows: the exact reverse of the ascending
    order (events of one timestamp in the order they arrived, reversed).

    >>> from theia_frames.protocol.arrow import events_to_batch
    >>> from theia_frames.event import Event
    >>> spill = NewestFirst(2)
    >>> spill.add(events_to_batch([Event("a", 1.0, "/s", [], "x"), Event("b", 3.0, "/s", [], "x")]))
    >>> spill.add(events_to_batch([Event("c", 2.0, "/s", [], "x")]))
    >>> [b.column("id").to_pylist() for b in spill.batches()]
    [['b', 'c'], ['a']]
    """

    def __init__(self, size: int) -> None:
        self.size = size
        fd, self.path = tempfile.mkstemp(prefix="theia-frames-desc-", suffix=".arrow")
        os.close(fd)
        self._sink = pa.OSFile(self.path, "wb")
        self._writer = pa.ipc.new_stream(self._sink, event_schema())

    def add(self, batch: pa.RecordBatch | None) -> None:
        """Spill ``batch`` (None and empty batches are passed over)."""
        if batch is not None and batch.num_rows:
            self._writer.write_batch(batch)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The events added, newest first; the file is removed at the end (or on close)."""
        try:
            self._writer.close()
            self._sink.close()
            with pa.memory_map(self.path) as source:
                table = pa.ipc.open_stream(source).read_all()
                if not table.num_rows:
                    return
                # ascending and stable (ties keep the peer's order, its arrival order), then reversed
                order = pc.sort_indices(table, sort_keys=[("timestamp", "ascending")])[::-1]
                for i in range(0, len(order), self.size):
                    yield table.take(order[i : i + self.size]).combine_chunks().to_batches()[0]
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the spill file (idempotent)."""
        try:
            self._writer.close()
        except Exception:
            pass
        try:
            self._sink.close()
        except Exception:
            pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ResultBatches:
    """A result's data messages in, its record batches out, in the order the caller asked.

    The stream's :class:`~theia_frames.protocol.streams.Decoder` makes the batches;
    when the stream is reversed here (:meth:`~theia_frames.protocol.streams.StreamState.reversing`)
    they are gathered in a :class:`NewestFirst` spill and come out at the end.
    Call :meth:`discard` when done (a ``finally``), whatever happened.
    """

    def __init__(self, state: StreamState, accumulate: int, *, negotiated: bool) -> None:
        reversing = state.reversing(negotiated)
        self._spill = NewestFirst(state.batch_size) if reversing else None
        self._decoder = state.decoder(max(accumulate, state.batch_size) if reversing else accumulate)

    def feed(self, msgs: Sequence[bytes]) -> list[pa.RecordBatch]:
        """The batches to hand on now that ``msgs`` arrived."""
        return self._pass(self._decoder.feed(msgs))

    def finish(self) -> list[pa.RecordBatch] | Iterator[pa.RecordBatch]:
        """The batches left at the end of the stream (all of them when reversed)."""
        rest = self._pass(self._decoder.finish())
        return rest if self._spill is None else self._spill.batches()

    def _pass(self, batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
        if self._spill is None:
            return batches
        for batch in batches:
            self._spill.add(batch)
        return []

    def discard(self) -> None:
        """Remove the spill file, if any (idempotent)."""
        if self._spill is not None:
            self._spill.discard()
