"""The sync client's results: :class:`FindResult` (a ``/find``) and :class:`LiveStream` (``/live``).

Each holds one connection and a state object of :mod:`theia_frames.protocol.streams`
(what messages and closes mean, decoding, the filter re-check); a live
stream also a :class:`~theia_frames.protocol.live.LiveSession`, which decides
what a reconnecting stream does next. They only move messages and do what
the core says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, Unpack

import pyarrow as pa
import websocket

from ..protocol.arrow import empty_batch, iter_batch_events
from ..event import Event
from ..exceptions import ConnectionClosed, TheiaError, UsageError
from ..filter import EventFilter
from ..protocol.live import Gap
from ..protocol.streams import FindState, LiveState, StreamState
from .results import LiveView, ReconnectOptions, ResultBatches, ResultView, find_state, live_session
from .transport import Connection, Silence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["Stream", "FindResult", "LiveStream", "Gap", "Owner"]

# seconds a /find read lingers for more messages from a plain peer (one message per frame)
FIND_LINGER = 0.002
# a live stream looks at close() at least this often while nothing arrives
LIVE_SLICE = 0.25


class Owner(Protocol):
    """What a result needs from the client that opened it (:class:`~theia_frames.client.sync.Client`)."""

    url: str
    timeout: float | None
    idle_timeout: float | None
    batch: bool
    header_lines: list[str]
    sslopt: dict[str, Any] | None
    max_message_size: int
    max_fragments: int

    def forget(self, stream: Stream) -> None: ...

    def close(self) -> None: ...


class Stream(ResultView):
    """What :class:`FindResult` and :class:`LiveStream` share: one read connection
    and its state, reading once one way, closing."""

    state: StreamState

    def __init__(self, client: Owner, state: StreamState, *, owns_client: bool = False) -> None:
        self.state = state
        self._client = client
        self._owns_client = owns_client
        self._claimed: str | None = None
        self._closed = False
        self._conn, self._pending = self._subscribe()

    @property
    def batched(self) -> bool:
        """Whether the server accepted the batched-transfer extension on this connection."""
        return self._conn.negotiated

    def _subscribe(
        self, on_handshake: Callable[[websocket.WebSocket | None], None] | None = None
    ) -> tuple[Connection, list[bytes]]:
        """Open a connection, send the filter and wait (up to ``timeout``) for
        ``ok`` or an error; returns the connection and the data that came with ``ok``.

        Events that arrive first are kept: ``ok`` is recognised wherever it appears.
        """
        client = self._client
        conn = Connection.open(
            self.url,
            timeout=client.timeout,
            headers=client.header_lines,
            offer=client.batch,
            sslopt=client.sslopt,
            on_handshake=on_handshake,
            max_message=client.max_message_size,
            max_fragments=client.max_fragments,
        )
        try:
            conn.send_text(self.state.filter_message(conn.negotiated))
            try:
                msgs = conn.read(client.timeout)
            except Silence:
                raise self.state.unanswered(client.timeout) from None
            if not msgs:
                self._check_end(conn)
            # classify now, so that a rejected filter raises from find()/receive()
            return conn, self.state.receive(msgs)
        except BaseException:
            conn.close()
            raise

    def _check_end(self, conn: Connection | None = None) -> None:
        """The connection ended: return if that was a normal close, raise otherwise."""
        conn = self._conn if conn is None else conn
        if self._closed:
            return
        self.state.end(conn.close_code, conn.close_reason, conn.failure)

    def _data_chunks(self, heartbeat: float | None = None) -> Iterator[list[bytes]]:  # pragma: no cover
        raise NotImplementedError

    def _decoded(self, accumulate: int, heartbeat: float | None = None) -> Iterator[pa.RecordBatch | None]:
        """Checked record batches in the order asked; ``None`` for a heartbeat."""
        batches = ResultBatches(self.state, accumulate, negotiated=self._conn.negotiated)
        try:
            for msgs in self._data_chunks(heartbeat):
                if not msgs:
                    yield None
                    continue
                yield from batches.feed(msgs)
            yield from batches.finish()
        finally:
            batches.discard()

    # ------------------------------------------------------------------ public iteration

    def __iter__(self) -> Iterator[Event]:
        """The events, one :class:`~theia_frames.event.Event` at a time."""
        self._claim("iteration over events")
        return self._events()

    def _events(self) -> Iterator[Event]:
        state = self.state
        try:
            for chunk in self._decoded(1):
                if chunk is None:
                    continue
                for event in iter_batch_events(chunk):
                    if self._closed:
                        return
                    state.count += 1
                    yield event
        finally:
            self.close()

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """The events as :func:`~theia_frames.protocol.arrow.event_schema` record batches,
        already checked against the filter; no Python object per event."""
        self._claim("iter_batches()")
        return self._batches(self.batch_size, None)

    def _batches(self, accumulate: int, heartbeat: float | None) -> Iterator[pa.RecordBatch]:
        state = self.state
        try:
            for chunk in self._decoded(accumulate, heartbeat):
                if self._closed:
                    return
                if chunk is None:
                    yield empty_batch()
                    continue
                state.count += chunk.num_rows
                yield chunk
        finally:
            self.close()

    def iter_messages(self) -> Iterator[bytes]:
        """The raw data messages as received (plain events and Arrow IPC streams),
        after ``ok`` and error messages are handled; neither decoded nor re-checked."""
        self._claim("iter_messages()")
        return self._messages()

    def _messages(self) -> Iterator[bytes]:
        try:
            for msgs in self._data_chunks():
                yield from msgs
        finally:
            self.close()

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close the connection (from any thread); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._release(self._conn)

    def _release(self, conn: Connection) -> None:
        conn.close()
        self._client.forget(self)
        if self._owns_client:
            self._client.close()

    @property
    def owns_client(self) -> bool:
        """Whether closing this result closes its client (the one-liner :func:`~theia_frames.find`)."""
        return self._owns_client

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self._conn.close()
        except Exception:
            pass


class FindResult(Stream):
    """The events of a ``/find``, in the server's order, read lazily.

    Read it one way, once: iterate for :class:`~theia_frames.event.Event`
    objects, :meth:`iter_batches` for Arrow record batches (what
    :func:`theia_frames.to_dataframe` uses), or :meth:`iter_messages` for the
    raw messages. Attributes: ``url``, ``filter``, ``count`` (events yielded
    so far), ``skipped`` and ``errors`` (undecodable messages, lenient mode),
    ``complete`` (the stream ended normally), ``ended_by`` (``"close"`` or
    ``"idle"``), ``batched``, ``total`` (the number of events our collector
    announced it will send, when it can count them cheaply; else None).
    """

    state: FindState

    def __init__(
        self,
        client: Owner,
        filter: EventFilter,
        *,
        strict: bool,
        batch_size: int,
        idle_timeout: float | None,
        owns_client: bool = False,
    ) -> None:
        state = find_state(client, filter, strict=strict, batch_size=batch_size, idle_timeout=idle_timeout)
        super().__init__(client, state, owns_client=owns_client)

    @property
    def idle_timeout(self) -> float | None:
        return self.state.idle_timeout

    @property
    def ended_by(self) -> str | None:
        """``"close"`` (the server closed normally) or ``"idle"`` (silence on a peer that never closes)."""
        return self.state.ended_by

    def iter_messages(self) -> Iterator[bytes]:
        if self.state.reversing(self._conn.negotiated):
            raise UsageError(
                f"{self.url} did not accept the extension, so a descending find is read in ascending "
                "order and reversed: iterate or use iter_batches(), not iter_messages()"
            )
        return super().iter_messages()

    def _data_chunks(self, heartbeat: float | None = None) -> Iterator[list[bytes]]:
        conn = self._conn
        state = self.state
        wait = state.wait(conn.negotiated)
        if not conn.negotiated:
            conn.linger = FIND_LINGER
        pending, self._pending = self._pending, []
        if pending:
            yield pending
        while True:
            try:
                msgs = conn.read(wait)
            except Silence:
                if self._closed:
                    return
                state.silence(conn.negotiated)
                return
            if not msgs:
                self._check_end()
                return
            data = state.receive(msgs)
            if data:
                yield data

    def to_arrow(self, *, columns: Sequence[str] | None = None, progress: bool | None = None) -> pa.Table:
        """All the events as one ``pyarrow.Table`` with the frame's Arrow types: :func:`theia_frames.to_arrow` of this result."""
        from ..frames.convert import to_arrow

        return to_arrow(self, columns=columns, progress=progress)

    def to_dataframe(
        self,
        *,
        index: Literal["timestamp"] | None = None,
        tz: Any = None,
        columns: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> pd.DataFrame:
        """All the events as one DataFrame: :func:`theia_frames.to_dataframe` of this result."""
        from ..frames.convert import to_dataframe

        return to_dataframe(self, index=index, tz=tz, columns=columns, progress=progress)

    def __repr__(self) -> str:
        state = "complete" if self.complete else ("closed" if self._closed else "open")
        return f"<FindResult {self.url} {self.filter.to_json()} count={self.count} {state}>"


class LiveStream(LiveView, Stream):
    """Events collected from now on, matching a filter, until the caller stops.

    Iterate for :class:`~theia_frames.event.Event` objects, or use
    :meth:`iter_batches`. Stop with ``break``, :meth:`close` (from any thread)
    or by leaving a ``with`` block; the socket is closed within about half a
    second even when nothing arrives. A normal close by the server ends the
    iteration; an abnormal one raises
    :class:`~theia_frames.exceptions.ConnectionClosed` (or
    :class:`~theia_frames.exceptions.SubscriberTooSlow`).

    With ``reconnect=True`` (see :meth:`Client.receive`) the stream goes on
    until the caller stops it, whatever happens to the connection: any end it
    did not ask for (an abnormal or normal close, a dropped socket, a
    :class:`~theia_frames.exceptions.SubscriberTooSlow`, which is also kept in
    ``errors``) is followed by attempts to reconnect. Status attributes:
    ``reconnects`` (completed reconnections), ``gap`` (a :class:`Gap`),
    ``recovered`` (events fetched by resume finds), ``connected``,
    ``last_error`` (what ended the last connection or failed the last attempt),
    ``error`` (what ended the stream when it gave up: more than
    ``max_retries`` failed attempts in a row, or refused credentials).
    An attempt the collector refuses (e.g. its per-address connection limit
    answered 503 to the resume find) closes what it opened before waiting.
    """

    state: LiveState

    def __init__(
        self, client: Owner, filter: EventFilter, *, strict: bool, batch_size: int, owns_client: bool = False, **options: Unpack[ReconnectOptions]
    ) -> None:
        self.session = live_session(client, filter, strict=strict, batch_size=batch_size, **options)
        # close() may run on another thread while the reader swaps connections or waits
        self._swap = threading.Lock()
        self._wake = threading.Event()
        # aborts the handshake under way, if any
        self._abort_handshake: Callable[[], None] | None = None
        self._resume_find: FindResult | None = None
        super().__init__(client, self.session.state, owns_client=owns_client)
        self.session.opened()

    # ------------------------------------------------------------------ reading
    def iter_batches(self, *, heartbeat: float | None = None) -> Iterator[pa.RecordBatch]:
        """A record batch as soon as at least one event is available, holding
        every event already received (it never waits to fill a batch).

        With ``heartbeat`` seconds, an empty batch is also yielded after that
        long without events (also while waiting to reconnect), so a consumer
        can refresh a display.
        """
        self._claim("iter_batches()")
        return self._batches(1, heartbeat)

    def iter_messages(self) -> Iterator[bytes]:
        """The raw data messages as received; not available with ``reconnect=True``,
        which must decode events to drop the repeats of a resume."""
        if self.reconnect:
            raise UsageError("iter_messages() cannot be used with reconnect=True: iterate or use iter_batches()")
        return super().iter_messages()

    def _data_chunks(self, heartbeat: float | None = None) -> Iterator[list[bytes]]:
        conn = self._conn
        pending, self._pending = self._pending, []
        if pending:
            yield pending
        last = time.monotonic()
        wait = LIVE_SLICE if heartbeat is None else min(LIVE_SLICE, heartbeat)
        while not self._closed:
            try:
                msgs = conn.read(wait)
            except Silence:
                if heartbeat is not None and time.monotonic() - last >= heartbeat:
                    last = time.monotonic()
                    yield []
                continue
            if not msgs:
                self._check_end(conn)
                return
            data = self.state.receive(msgs)
            if data:
                last = time.monotonic()
                yield data

    def _decoded(self, accumulate: int, heartbeat: float | None = None) -> Iterator[pa.RecordBatch | None]:
        session = self.session
        if not session.reconnect:
            yield from super()._decoded(accumulate, heartbeat)
            return
        while not self._closed:
            cause: TheiaError | None = None
            try:
                for chunk in super()._decoded(accumulate, heartbeat):
                    yield from session.deliver(chunk, time.monotonic())
            except ConnectionClosed as exc:  # SubscriberTooSlow included
                cause = exc
            if self._closed:
                return
            session.ended(cause, time.monotonic(), code=self._conn.close_code, heartbeat=heartbeat)
            yield from self._resume()

    # ------------------------------------------------------------------ reconnecting
    def _set_handshake(self, ws: websocket.WebSocket | None) -> None:
        self._abort_handshake = None if ws is None else ws.abort
        if ws is not None and self._closed:
            raise ConnectionClosed(f"the live stream from {self.url} was closed", url=self.url)

    def _resume(self) -> Iterator[pa.RecordBatch | None]:
        """Do what the session says until the stream is back (or closed, or the
        session gives up), yielding what was stored meanwhile; the buffered
        live data is left in ``_pending``."""
        session = self.session
        self._conn.close()
        while session.waiting:
            step = session.next_step(time.monotonic())
            if step.kind == "beat":
                yield None
            elif step.kind == "sleep":
                self._wake.wait(step.seconds)
            else:
                try:
                    yield from self._catch_up()
                except TheiaError as exc:
                    session.attempt_failed(exc, time.monotonic())

    def _catch_up(self) -> Iterator[pa.RecordBatch]:
        """One attempt: subscribe again (buffering what is pushed), then find and
        yield what was stored while away; leaves the buffer in ``_pending``.

        When the find is refused or fails, the new subscription is closed before
        the error propagates: a failed attempt holds no connection.
        """
        session = self.session
        conn, buffered = self._subscribe(self._set_handshake)
        with self._swap:
            if self._closed:
                conn.close()
                return
            self._conn = conn
        self._pending = []
        try:
            resume_filter = session.subscribed()
            if resume_filter is not None:
                result = FindResult(
                    self._client,
                    resume_filter,
                    strict=self.strict,
                    batch_size=self.batch_size,
                    idle_timeout=self._client.idle_timeout,
                )
                with self._swap:
                    self._resume_find = result
                if self._closed:
                    result.close()
                try:
                    for batch in result.iter_batches():
                        # keep reading the new subscription, so the collector's queue for it never fills
                        buffered += self.state.receive(conn.poll())
                        fresh = session.found(batch, time.monotonic())
                        if fresh is not None:
                            yield fresh
                finally:
                    with self._swap:
                        self._resume_find = None
                    result.close()
                if self._closed:
                    return
            buffered += self.state.receive(conn.poll())
        except BaseException:
            conn.close()
            raise
        self._pending = buffered
        last = session.caught_up(time.monotonic())
        if last is not None:
            yield last

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close the stream (from any thread), also while it waits to reconnect; idempotent."""
        with self._swap:
            if self._closed:
                return
            self._closed = True
            conn = self._conn
            find = self._resume_find
        self.session.close()
        self._wake.set()
        abort = self._abort_handshake
        if abort is not None:
            try:
                abort()
            except Exception:
                pass
        if find is not None:
            find.close()
        self._release(conn)

    def __repr__(self) -> str:
        return self._describe()
