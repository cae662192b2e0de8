"""The sync client's results: :class:`FindResult` (a ``/find``) and :class:`LiveStream` (``/live``).

Each holds one connection and a state object of :mod:`theia_frames.protocol.streams`
(what messages and closes mean, decoding, the filter re-check); a live
stream that reconnects also a :class:`~theia_frames.protocol.resume.ResumeState`.
They only move messages between the two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import websocket

from ..protocol.arrow import empty_batch, iter_batch_events
from ..event import Event
from ..exceptions import (
    ConnectionClosed,
    SubscriberTooSlow,
    TheiaError,
    TheiaTimeoutError,
    UsageError,
)
from ..filter import EventFilter
from ..protocol.resume import Backoff, ResumeState, check_reconnect_options
from ..protocol.streams import FindState, LiveState, NewestFirst, ResultView, StreamState
from .options import DEFAULT_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_RESUME_MARGIN
from .transport import Connection, Silence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa

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
                raise TheiaTimeoutError(f"{self.url} did not answer the filter within {client.timeout} s") from None
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
        """Checked record batches in server order; ``None`` for a heartbeat."""
        decoder = self.state.decoder(accumulate)
        for msgs in self._data_chunks(heartbeat):
            if not msgs:
                yield None
                continue
            yield from decoder.feed(msgs)
        yield from decoder.finish()

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
        state = FindState(
            f"{client.url}/find",
            filter,
            strict=strict,
            batch_size=batch_size,
            idle_timeout=idle_timeout,
            timeout=client.timeout,
            max_decoded=client.max_message_size,
        )
        super().__init__(client, state, owns_client=owns_client)

    @property
    def idle_timeout(self) -> float | None:
        return self.state.idle_timeout

    @property
    def ended_by(self) -> str | None:
        """``"close"`` (the server closed normally) or ``"idle"`` (silence on a peer that never closes)."""
        return self.state.ended_by

    def _decoded(self, accumulate: int, heartbeat: float | None = None) -> Iterator[pa.RecordBatch | None]:
        if not self.state.reversing(self._conn.negotiated):
            yield from super()._decoded(accumulate, heartbeat)
            return
        spill = NewestFirst(self.batch_size)
        try:
            for batch in super()._decoded(max(accumulate, self.batch_size), heartbeat):
                spill.add(batch)
            yield from spill.batches()
        finally:
            spill.discard()

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


class Gap(NamedTuple):
    """Seconds a reconnecting :class:`LiveStream` was away: the last time and in total.

    While it is away, ``last`` is the time since the drop, and ``total`` counts it too.
    """

    last: float
    total: float


class LiveStream(Stream):
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
        self,
        client: Owner,
        filter: EventFilter,
        *,
        strict: bool,
        batch_size: int,
        reconnect: bool = False,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        resume_margin: float = DEFAULT_RESUME_MARGIN,
        max_retries: int | None = None,
        owns_client: bool = False,
    ) -> None:
        check_reconnect_options(backoff, max_backoff, resume_margin, max_retries)
        self.reconnect = bool(reconnect)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.resume_margin = float(resume_margin)
        self.max_retries = max_retries
        self.reconnects = 0
        self.recovered = 0
        self.last_error: TheiaError | None = None
        #: what ended the stream when it gave up reconnecting (also raised from the iteration)
        self.error: TheiaError | None = None
        self._gap_last = 0.0
        self._gap_total = 0.0
        self._down_since: float | None = None
        # close() may run on another thread while the reader swaps connections or waits
        self._swap = threading.Lock()
        self._wake = threading.Event()
        self._handshake: websocket.WebSocket | None = None
        self._resume_find: FindResult | None = None
        # what was delivered, for dropping repeats after a reconnect (reconnect=True only)
        self.resume = ResumeState(self.resume_margin, time.time())
        state = LiveState(
            f"{client.url}/live", filter, strict=strict, batch_size=batch_size, max_decoded=client.max_message_size
        )
        super().__init__(client, state, owns_client=owns_client)

    # ------------------------------------------------------------------ status
    @property
    def gap(self) -> Gap:
        """Seconds without a connection: the last gap and the total (see :class:`Gap`)."""
        down = self._down_since
        current = 0.0 if down is None else time.monotonic() - down
        return Gap(current if down is not None else self._gap_last, self._gap_total + current)

    @property
    def connected(self) -> bool:
        """Whether the stream is open and not waiting to reconnect."""
        return not self._closed and self._down_since is None

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
        if not self.reconnect:
            yield from super()._decoded(accumulate, heartbeat)
            return
        while not self._closed:
            cause: TheiaError | None = None
            try:
                for chunk in super()._decoded(accumulate, heartbeat):
                    if chunk is None:
                        yield None
                        continue
                    chunk = self.resume.fresh(chunk, now=time.monotonic())
                    if chunk.num_rows:
                        yield chunk
            except ConnectionClosed as exc:  # SubscriberTooSlow included
                cause = exc
            if self._closed:
                return
            if cause is None:
                cause = ConnectionClosed(f"{self.url} closed the live stream", url=self.url, code=self._conn.close_code)
            yield from self._resume(cause, heartbeat)

    # ------------------------------------------------------------------ reconnecting
    def _note_failure(self, exc: TheiaError) -> None:
        self.last_error = exc
        if isinstance(exc, SubscriberTooSlow):
            self.state.note(exc)

    def _set_handshake(self, ws: websocket.WebSocket | None) -> None:
        self._handshake = ws
        if ws is not None and self._closed:
            raise ConnectionClosed(f"the live stream from {self.url} was closed", url=self.url)

    def _resume(self, cause: TheiaError, heartbeat: float | None) -> Iterator[pa.RecordBatch | None]:
        """Reconnect with backoff until it works (or the caller closes, or
        :class:`~theia_frames.protocol.resume.Backoff` gives up), then yield what
        was stored meanwhile; the buffered live data is left in ``_pending``."""
        self._down_since = time.monotonic()
        self._note_failure(cause)
        self._conn.close()
        self.state.complete = False
        backoff = Backoff(self.backoff, self.max_backoff, self.max_retries)
        beat = time.monotonic()
        while True:
            deadline = time.monotonic() + backoff.next_delay()
            while not self._closed:
                now = time.monotonic()
                if heartbeat is not None and now - beat >= heartbeat:
                    beat = now
                    yield None
                    continue
                remaining = deadline - now
                if remaining <= 0:
                    break
                self._wake.wait(remaining if heartbeat is None else min(remaining, heartbeat - (now - beat)))
            if self._closed:
                return
            try:
                yield from self._catch_up()
            except TheiaError as exc:
                if self._closed:
                    return
                self._note_failure(exc)
                try:
                    backoff.after_failure(exc, self.url)
                except TheiaError as final:
                    self.error = final
                    raise
                continue
            return

    def _catch_up(self) -> Iterator[pa.RecordBatch]:
        """One attempt: subscribe again (buffering what is pushed), then find and
        yield what was stored while away; leaves the buffer in ``_pending``.

        When the find is refused or fails, the new subscription is closed before
        the error propagates: a failed attempt holds no connection. The stream
        counts as back (``connected``, ``reconnects``) once the find is read.
        """
        conn, buffered = self._subscribe(self._set_handshake)
        with self._swap:
            if self._closed:
                conn.close()
                return
            self._conn = conn
        self._pending = []
        # the last batch of the find is yielded once the stream is back, so that a
        # consumer that has seen every recovered event also sees the stream connected;
        # a batch counts as delivered only when it is handed on (ResumeState.recover)
        held: pa.RecordBatch | None = None
        try:
            resume_filter = self.resume.resume_filter(self.filter)
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
                        if held is not None:
                            fresh = self._recovered(held)
                            if fresh.num_rows:
                                yield fresh
                        held = batch
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
        last = self._recovered(held) if held is not None else None
        self.resume.resumed(time.monotonic())
        self._pending = buffered
        if self._down_since is not None:
            gap = time.monotonic() - self._down_since
            self._gap_last = gap
            self._gap_total += gap
            self._down_since = None
        self.reconnects += 1
        if last is not None and last.num_rows:
            yield last

    def _recovered(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        fresh = self.resume.recover(batch, time.monotonic())
        self.recovered += fresh.num_rows
        return fresh

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close the stream (from any thread), also while it waits to reconnect; idempotent."""
        with self._swap:
            if self._closed:
                return
            self._closed = True
            conn = self._conn
            find = self._resume_find
        self._wake.set()
        handshake = self._handshake
        if handshake is not None:
            try:
                handshake.abort()
            except Exception:
                pass
        if find is not None:
            find.close()
        self._release(conn)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._down_since is None else "reconnecting")
        extra = f" reconnects={self.reconnects}" if self.reconnect else ""
        return f"<LiveStream {self.url} {self.filter.to_json()} count={self.count}{extra} {state}>"
