"""The asyncio client: :class:`AsyncClient`, on ``websockets``' asyncio implementation.

The same protocol core as the sync :class:`~theia_frames.client.Client`
(:mod:`theia_frames.protocol`): the same filter forms for each peer, the same
local re-check, the same meaning of every message and close, the same
acknowledged sends. Only the transport differs. In a notebook, whose cells
run inside an event loop, it is awaited directly::

    >>> import theia_frames as tf
    >>> async with tf.AsyncClient("ws://127.0.0.1:6433") as client:      # doctest: +SKIP
    ...     await client.send_many(events, wait=True)
    ...     async for event in client.find(tf.Filter(0).match_tag("sensor")):
    ...         print(event.content)
    ...     df = await client.find(tf.Filter(0)).to_dataframe()
    ...     async with client.receive(tf.Filter(0)) as live:
    ...         async for event in live:
    ...             break

``client.find(...)`` returns an :class:`AsyncFindResult` at once; it connects
when first read, awaited (``result = await client.find(...)``, which raises a
refused connection or a rejected filter there) or entered (``async with``).

Differences from the sync client: ``sslopt`` (a websocket-client option) is
not accepted; ``ssl_context``/``cafile`` are. A message is bounded by
``max_message_size`` as a whole (websockets assembles fragments and refuses
a message over the bound, closing with 1009); ``max_fragments`` is accepted
for the same signature and not counted. ``timeout``/``idle_timeout`` count
seconds without a byte, as in the sync client.

The map from ``websockets``' errors to this project's is :func:`open_error`
(connecting) and :func:`closed_error` (a connection that ended).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..batch import SUBPROTOCOL, empty_batch
from ..codec import encode
from ..event import Event
from ..exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    InvalidEventError,
    ProtocolError,
    TheiaError,
    TheiaTimeoutError,
    TransportError,
    UnconfirmedError,
    UsageError,
)
from ..filter import EventFilter
from ..protocol.ledger import SendLedger
from ..protocol.messages import DATA_CLOSE_CODES
from ..protocol.outgoing import arrow_pieces, batch_messages, event_messages
from ..protocol.plain import BULK_MIN, batch_events
from ..protocol.resume import Backoff, ResumeState, check_reconnect_options
from ..protocol.streams import FindState, LiveState, NewestFirst, StreamState
from .options import (
    DEFAULT_BACKOFF,
    DEFAULT_BATCH_SIZE,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_FRAGMENTS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_RESUME_MARGIN,
    DEFAULT_SEND_BATCH,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    UNSET,
    FilterLike,
    as_filter,
    base_url,
    check_settings,
    header_lines,
    tls_options,
    token_header,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from websockets.asyncio.client import ClientConnection

__all__ = ["AsyncClient", "AsyncFindResult", "AsyncLiveStream", "open_error", "closed_error"]

# a live stream looks at aclose() at least this often while nothing arrives
LIVE_SLICE = 0.25
# seconds aclose() waits for the server's close frame
CLOSE_WAIT = 2.0


def _websockets() -> Any:
    # imported on first use: ``import theia_frames`` does not pay for it
    import websockets.asyncio.client
    import websockets.exceptions  # noqa: F401

    return websockets


class Silence(Exception):
    """No byte arrived within the wait (internal; callers decide what it means)."""


# --------------------------------------------------------------------------- the error table


def open_error(exc: BaseException, url: str, timeout: float | None) -> TheiaError:
    """The error of this project for a failed ``websockets`` connect to ``url``.

    >>> open_error(ConnectionRefusedError(), "ws://h/find", 10)
    ConnectError('connection refused by ws://h/find (is a collector running there?)')
    """
    ws = _websockets()
    if isinstance(exc, ws.exceptions.InvalidStatus):
        status = exc.response.status_code
        if status == 401:
            return AuthenticationError(
                f"{url} refused the WebSocket handshake with HTTP status 401: it needs credentials "
                "(AsyncClient(..., token=...))",
                url=url,
            )
        if status == 403:
            return AuthenticationError(f"{url} refused the WebSocket handshake with HTTP status 403: it refused the credentials", url=url)
        return ConnectError(f"{url} refused the WebSocket handshake with HTTP status {status}", url=url)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return TheiaTimeoutError(f"timed out after {timeout} s connecting to {url} (the handshake did not finish)")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connection refused by {url} (is a collector running there?)", url=url)
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"TLS handshake with {url} failed: {exc}", url=url)
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve the host of {url}: {exc}", url=url)
    return ConnectError(f"cannot connect to {url}: {exc}", url=url)


def closed_error(exc: BaseException, url: str, max_message_size: int) -> ProtocolError | None:
    """The error to raise for a connection ``websockets`` closed on our side because
    of what the server sent (a message over the bound, a protocol violation); None otherwise."""
    ws = _websockets()
    if not isinstance(exc, ws.exceptions.ConnectionClosed):
        return None
    sent = exc.sent
    if sent is not None and (exc.rcvd is None or not exc.rcvd_then_sent):
        if sent.code == 1009:
            return ProtocolError(
                f"{url} sent a message of more than {max_message_size} bytes, the client's bound "
                "(AsyncClient(max_message_size=...) raises it)"
            )
        if sent.code in (1002, 1007):
            return ProtocolError(f"{url} broke the WebSocket protocol: {sent.reason or sent.code}")
    return None


def _ended(exc: BaseException) -> tuple[int, str]:
    """The close code and reason the server sent (1006 when it sent none)."""
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is None:
        return 1006, ""
    return rcvd.code, rcvd.reason


def _connection_class() -> type[ClientConnection]:
    """``websockets``' client connection, noting when the last byte arrived."""
    global _CONNECTION
    if _CONNECTION is None:
        base = _websockets().asyncio.client.ClientConnection

        class TimedConnection(base):  # type: ignore[misc, valid-type]
            last_bytes = 0.0

            def data_received(self, data: bytes) -> None:
                self.last_bytes = time.monotonic()
                super().data_received(data)

        _CONNECTION = TimedConnection
    return _CONNECTION


_CONNECTION: Any = None


async def _within(awaitable: Awaitable[Any], seconds: float | None) -> Any:
    """``await awaitable``, raising :class:`TimeoutError` after ``seconds``."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with timeout(seconds):
        return await awaitable


async def _recv(ws: Any, wait: float | None, *, idle: bool = True) -> bytes | str | None:
    """The next message; None once the connection ended; :class:`Silence` after
    ``wait`` seconds without a byte (``idle=False``: in all)."""
    ws_exc = _websockets().exceptions.ConnectionClosed
    if wait is None:
        try:
            return await ws.recv()  # type: ignore[no-any-return]
        except ws_exc:
            return None
    start = time.monotonic()
    remaining = wait
    while True:
        try:
            return await _within(ws.recv(), remaining)  # type: ignore[no-any-return]  # cancelling recv() loses nothing
        except (TimeoutError, asyncio.TimeoutError):
            last = max(ws.last_bytes, start) if idle else start
            remaining = last + wait - time.monotonic()
            if remaining <= 0:
                raise Silence() from None
        except ws_exc:
            return None


# --------------------------------------------------------------------------- results


class _Stream:
    """What :class:`AsyncFindResult` and :class:`AsyncLiveStream` share."""

    state: StreamState

    def __init__(self, client: AsyncClient, state: StreamState) -> None:
        self.state = state
        self._client = client
        self._ws: Any = None
        self._pending: list[bytes] = []
        self._claimed: str | None = None
        self._closed = False
        self._opening: asyncio.Future[None] | None = None

    @property
    def url(self) -> str:
        return self.state.url

    @property
    def filter(self) -> EventFilter:
        return self.state.filter

    @property
    def count(self) -> int:
        return self.state.count

    @property
    def total(self) -> int | None:
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
    def batched(self) -> bool:
        """Whether the server accepted the batched-transfer extension (False before connecting)."""
        return self._ws is not None and self._ws.subprotocol == SUBPROTOCOL

    @property
    def closed(self) -> bool:
        return self._closed

    async def _subscribe(self) -> tuple[Any, list[bytes]]:
        await self._client.flush_before_read()
        ws = await self._client.open(self.state.endpoint)
        try:
            negotiated = ws.subprotocol == SUBPROTOCOL
            await ws.send(self.state.filter_message(negotiated))
            try:
                msg = await _recv(ws, self._client.timeout)
            except Silence:
                raise TheiaTimeoutError(f"{self.url} did not answer the filter within {self._client.timeout} s") from None
            if msg is None:
                self._check_end(ws)
                return ws, []
            return ws, self.state.receive([msg])
        except BaseException:
            await ws.close()
            raise

    async def _open(self) -> None:
        if self._ws is None:
            if self._closed:
                raise UsageError(f"this {type(self).__name__} is closed")
            self._ws, self._pending = await self._subscribe()

    def __await__(self) -> Generator[Any, None, Any]:
        async def opened() -> Any:
            await self._open()
            return self

        return opened().__await__()

    async def __aenter__(self) -> Any:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _check_end(self, ws: Any, exc: BaseException | None = None) -> None:
        if self._closed:
            return
        failure = closed_error(exc, self.url, self._client.max_message_size) if exc is not None else None
        if failure is not None:
            raise failure
        code = ws.close_code if ws.close_code is not None else 1006
        self.state.end(code, ws.close_reason or "", None)

    def _claim(self, how: str) -> None:
        if self._claimed is not None:
            raise UsageError(f"this {type(self).__name__} was already read with {self._claimed}; a result can be read once, one way")
        if self._closed:
            raise UsageError(f"this {type(self).__name__} is closed")
        self._claimed = how

    def _chunks(self, heartbeat: float | None = None) -> AsyncIterator[list[bytes]]:  # pragma: no cover
        raise NotImplementedError

    async def _decoded(self, accumulate: int, heartbeat: float | None = None) -> AsyncIterator[pa.RecordBatch | None]:
        decoder = self.state.decoder(accumulate)
        async for msgs in self._chunks(heartbeat):
            if not msgs:
                yield None
                continue
            for batch in decoder.feed(msgs):
                yield batch
        for batch in decoder.finish():
            yield batch

    def __aiter__(self) -> AsyncIterator[Event]:
        """The events, one :class:`~theia_frames.event.Event` at a time."""
        self._claim("iteration over events")
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        try:
            await self._open()
            async for chunk in self._decoded(self._event_accumulate):
                if chunk is None:
                    continue
                for event in batch_events(chunk):
                    if self._closed:
                        return
                    self.state.count += 1
                    yield event
        finally:
            await self.aclose()

    _event_accumulate = 1

    def iter_batches(self, *, heartbeat: float | None = None) -> AsyncIterator[pa.RecordBatch]:
        """The events as :func:`~theia_frames.batch.event_schema` record batches, checked against the filter."""
        self._claim("iter_batches()")
        return self._batches(self._batch_accumulate, heartbeat)

    @property
    def _batch_accumulate(self) -> int:
        return self.state.batch_size

    async def _batches(self, accumulate: int, heartbeat: float | None) -> AsyncIterator[pa.RecordBatch]:
        try:
            await self._open()
            async for chunk in self._decoded(accumulate, heartbeat):
                if self._closed:
                    return
                if chunk is None:
                    yield empty_batch()
                    continue
                self.state.count += chunk.num_rows
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        ws = self._ws
        self._client.forget(self)
        if ws is not None:
            await _close(ws)


async def _close(ws: Any) -> None:
    try:
        await _within(ws.close(), CLOSE_WAIT)
    except Exception:
        ws.transport.abort()


class _Batches:
    """A find's batches handed from the event loop to a converting thread:
    ``iter_batches()`` for :func:`~theia_frames.frames.to_dataframe`, ``total`` for its progress bar."""

    _END = object()

    def __init__(self, result: AsyncFindResult) -> None:
        self.result = result
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    @property
    def total(self) -> int | None:
        return self.result.total

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class AsyncFindResult(_Stream):
    """The events of a ``/find``, read lazily with ``async for`` (events),
    :meth:`iter_batches` (Arrow record batches) or :meth:`to_dataframe`; once, one way.

    Attributes as on :class:`~theia_frames.client.FindResult`: ``url``,
    ``filter``, ``count``, ``total``, ``skipped``, ``errors``, ``complete``,
    ``ended_by``, ``batched``.
    """

    state: FindState
    _event_accumulate = BULK_MIN

    def __init__(self, client: AsyncClient, filter: EventFilter, *, strict: bool, batch_size: int, idle_timeout: float | None) -> None:
        state = FindState(
            f"{client.url}/find",
            filter,
            strict=strict,
            batch_size=batch_size,
            idle_timeout=idle_timeout,
            timeout=client.timeout,
            max_decoded=client.max_message_size,
        )
        super().__init__(client, state)

    @property
    def ended_by(self) -> str | None:
        return self.state.ended_by

    async def _chunks(self, heartbeat: float | None = None) -> AsyncIterator[list[bytes]]:
        ws = self._ws
        state = self.state
        negotiated = ws.subprotocol == SUBPROTOCOL
        wait = state.wait(negotiated)
        pending, self._pending = self._pending, []
        if pending:
            yield pending
        ws_exc = _websockets().exceptions.ConnectionClosed
        while True:
            try:
                msg = await _recv_raising(ws, wait, ws_exc)
            except Silence:
                if self._closed:
                    return
                state.silence(negotiated)
                return
            except ws_exc as exc:
                self._check_end(ws, exc)
                return
            data = state.receive([msg])
            if data:
                yield data

    async def _decoded(self, accumulate: int, heartbeat: float | None = None) -> AsyncIterator[pa.RecordBatch | None]:
        if not self.state.reversing(self.batched):
            async for batch in super()._decoded(accumulate, heartbeat):
                yield batch
            return
        spill = NewestFirst(self.state.batch_size)
        try:
            async for batch in super()._decoded(max(accumulate, self.state.batch_size), heartbeat):
                spill.add(batch)
            for batch in spill.batches():
                yield batch
        finally:
            spill.discard()

    async def to_arrow(self) -> pa.Table:
        """All the events as one ``pyarrow.Table`` with the event schema."""
        import pyarrow as pa

        from ..batch import event_schema

        batches = [b async for b in self.iter_batches()]
        return pa.Table.from_batches(batches, schema=event_schema())

    async def to_dataframe(
        self,
        *,
        index: str | None = None,
        tz: Any = None,
        columns: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> pd.DataFrame:
        """All the events as one DataFrame, as :func:`~theia_frames.frames.to_dataframe` makes it.

        The batches are converted in a worker thread while they arrive, so the
        event loop (a notebook's) stays free and memory peaks near the frame's size.
        """
        from ..frames import to_dataframe

        handoff = _Batches(self)
        loop = asyncio.get_running_loop()
        converted = loop.run_in_executor(
            None,
            lambda: to_dataframe(handoff, index=index, tz=tz, columns=columns, progress=progress),  # type: ignore[arg-type]
        )
        try:
            async for batch in self.iter_batches():
                handoff.queue.put(batch)
        except BaseException as exc:
            handoff.queue.put(exc)
            try:
                await converted
            except BaseException:
                pass
            raise
        handoff.queue.put(_Batches._END)
        return await converted

    def __repr__(self) -> str:
        state = "complete" if self.complete else ("closed" if self._closed else "open")
        return f"<AsyncFindResult {self.url} {self.filter.to_json()} count={self.count} {state}>"


async def _recv_raising(ws: Any, wait: float | None, ws_exc: Any) -> bytes | str:
    """As :func:`_recv`, raising ``websockets``' ConnectionClosed at the end (its ``rcvd`` tells the close)."""
    if wait is None:
        return await ws.recv()  # type: ignore[no-any-return]
    start = time.monotonic()
    remaining = wait
    while True:
        try:
            return await _within(ws.recv(), remaining)  # type: ignore[no-any-return]
        except (TimeoutError, asyncio.TimeoutError):
            last = max(ws.last_bytes, start)
            remaining = last + wait - time.monotonic()
            if remaining <= 0:
                raise Silence() from None


class AsyncLiveStream(_Stream):
    """Events collected from now on, matching a filter, until the caller stops
    (``break``, :meth:`aclose`, leaving ``async with``); with ``reconnect=True``
    it resumes after a drop exactly as :class:`~theia_frames.client.LiveStream`
    does (same backoff, same resume find, same dropping of repeats).

    Status attributes: ``reconnects``, ``recovered``, ``last_error``, ``connected``.
    """

    state: LiveState

    def __init__(
        self,
        client: AsyncClient,
        filter: EventFilter,
        *,
        strict: bool,
        batch_size: int,
        reconnect: bool,
        backoff: float,
        max_backoff: float,
        resume_margin: float,
        max_retries: int | None,
    ) -> None:
        check_reconnect_options(backoff, max_backoff, resume_margin, max_retries)
        state = LiveState(f"{client.url}/live", filter, strict=strict, batch_size=batch_size, max_decoded=client.max_message_size)
        super().__init__(client, state)
        self.reconnect = bool(reconnect)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retries = max_retries
        self.reconnects = 0
        self.recovered = 0
        self.last_error: TheiaError | None = None
        self.resume = ResumeState(resume_margin, time.time())
        self._down = False

    @property
    def connected(self) -> bool:
        return not self._closed and self._ws is not None and not self._down

    @property
    def _batch_accumulate(self) -> int:
        return 1  # never wait to fill a batch

    async def _chunks(self, heartbeat: float | None = None) -> AsyncIterator[list[bytes]]:
        ws = self._ws
        pending, self._pending = self._pending, []
        if pending:
            yield pending
        last = time.monotonic()
        wait = LIVE_SLICE if heartbeat is None else min(LIVE_SLICE, heartbeat)
        ws_exc = _websockets().exceptions.ConnectionClosed
        while not self._closed:
            try:
                msg = await _recv_raising(ws, wait, ws_exc)
            except Silence:
                if heartbeat is not None and time.monotonic() - last >= heartbeat:
                    last = time.monotonic()
                    yield []
                continue
            except ws_exc as exc:
                self._check_end(ws, exc)
                return
            data = self.state.receive([msg])
            if data:
                last = time.monotonic()
                yield data

    async def _decoded(self, accumulate: int, heartbeat: float | None = None) -> AsyncIterator[pa.RecordBatch | None]:
        if not self.reconnect:
            async for batch in super()._decoded(accumulate, heartbeat):
                yield batch
            return
        while not self._closed:
            cause: TheiaError | None = None
            try:
                async for chunk in super()._decoded(accumulate, heartbeat):
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
                cause = ConnectionClosed(f"{self.url} closed the live stream", url=self.url)
            async for batch in self._resume(cause, heartbeat):
                yield batch

    def _note_failure(self, exc: TheiaError) -> None:
        from ..exceptions import SubscriberTooSlow

        self.last_error = exc
        if isinstance(exc, SubscriberTooSlow):
            self.state.note(exc)

    async def _resume(self, cause: TheiaError, heartbeat: float | None) -> AsyncIterator[pa.RecordBatch | None]:
        self._down = True
        self._note_failure(cause)
        old, self._ws = self._ws, None
        if old is not None:
            await _close(old)
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
                await asyncio.sleep(min(remaining, LIVE_SLICE) if heartbeat is None else min(remaining, heartbeat - (now - beat), LIVE_SLICE))
            if self._closed:
                return
            try:
                async for batch in self._catch_up():
                    yield batch
            except (TransportError, TheiaTimeoutError) as exc:
                if self._closed:
                    return
                self._down = True
                if isinstance(exc, AuthenticationError):
                    raise
                self._note_failure(exc)
                if backoff.failed():
                    raise ConnectionClosed(
                        f"the live stream from {self.url} gave up reconnecting after {backoff.failures} attempt(s) "
                        f"(max_retries={self.max_retries}): {exc}",
                        url=self.url,
                        code=getattr(exc, "code", None),
                    ) from exc
                continue
            return

    async def _catch_up(self) -> AsyncIterator[pa.RecordBatch]:
        import pyarrow as pa_

        ws, buffered = await self._subscribe()
        if self._closed:
            await _close(ws)
            return
        self._ws = ws
        self._down = False
        self.reconnects += 1
        ids: list[pa.Array] = []
        stamps: list[pa.Array] = []
        resume_filter = self.resume.resume_filter(self.filter)
        if resume_filter is not None:
            result = AsyncFindResult(
                self._client, resume_filter, strict=self.state.strict, batch_size=self.state.batch_size, idle_timeout=self._client.idle_timeout
            )
            async for batch in result.iter_batches():
                fresh = self.resume.fresh(batch, check=True, now=time.monotonic())
                if fresh.num_rows:
                    ids.append(pa_.concat_arrays([fresh.column(0)]))
                    stamps.append(pa_.concat_arrays([fresh.column(1)]))
                    self.recovered += fresh.num_rows
                    yield fresh
            if self._closed:
                return
        self.resume.resumed(ids, stamps, time.monotonic())
        # websockets keeps reading the new subscription meanwhile (its queue pauses the socket when full)
        self._pending = buffered

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if not self._down else "reconnecting")
        return f"<AsyncLiveStream {self.url} {self.filter.to_json()} count={self.count} {state}>"


# --------------------------------------------------------------------------- the client


class AsyncClient:
    """An asyncio client of one theia collector; an async context manager.

    The arguments are those of :class:`~theia_frames.client.Client` (except
    ``sslopt``), with the same defaults and meanings. Use it from one event
    loop. Attributes: ``stored``, ``rejected``, ``errors``, ``batched``.

    >>> AsyncClient("ws://127.0.0.1:6433")
    <AsyncClient ws://127.0.0.1:6433>
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        headers: Mapping[str, str] | Sequence[str] | None = None,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        cafile: str | os.PathLike[str] | None = None,
        batch: bool = True,
        strict: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        send_batch_size: int = DEFAULT_SEND_BATCH,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
    ) -> None:
        check_settings(
            timeout=timeout,
            idle_timeout=idle_timeout,
            batch_size=batch_size,
            send_batch_size=send_batch_size,
            max_message_size=max_message_size,
            max_fragments=max_fragments,
        )
        self.url = base_url(url)
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.batch = bool(batch)
        self.strict = bool(strict)
        self.batch_size = int(batch_size)
        self.send_batch_size = int(send_batch_size)
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self.header_lines = header_lines(headers) + token_header(token, headers)
        options = tls_options(self.url, ssl_context, cafile, None)
        self._ssl: ssl.SSLContext | None = None if options is None else options.get("context")
        self.ledger = SendLedger(f"{self.url}/event")
        self._event: Any = None
        self._event_reader: asyncio.Task[None] | None = None
        # held while the /event connection is used; notified when a message arrives there
        self._lock = asyncio.Lock()
        self._answers = asyncio.Condition()
        self._streams: set[_Stream] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}{' closed' if self._closed else ''}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"this client of {self.url} is closed")

    @property
    def stored(self) -> int:
        return self.ledger.stored

    @property
    def rejected(self) -> int:
        return self.ledger.rejected

    @property
    def errors(self) -> list[Any]:
        return self.ledger.errors

    @property
    def batched(self) -> bool | None:
        ws = self._event
        return None if ws is None else ws.subprotocol == SUBPROTOCOL

    # ------------------------------------------------------------------ connections
    async def open(self, endpoint: str) -> Any:
        """A new connection to ``endpoint`` (``event``, ``find``, ``live``)."""
        ws_mod = _websockets()
        url = f"{self.url}/{endpoint}"
        headers = [tuple(line.split(":", 1)) for line in self.header_lines]
        try:
            return await ws_mod.asyncio.client.connect(
                url,
                additional_headers=[(k.strip(), v.strip()) for k, v in headers],
                subprotocols=[SUBPROTOCOL] if self.batch else None,
                compression=None,
                max_size=self.max_message_size,
                open_timeout=self.timeout,
                ping_interval=None,
                close_timeout=CLOSE_WAIT,
                ssl=self._ssl if url.startswith("wss://") and self._ssl is not None else None,
                create_connection=_connection_class(),
                proxy=None,
            )
        except Exception as exc:
            raise open_error(exc, url, self.timeout) from exc

    def forget(self, stream: _Stream) -> None:
        self._streams.discard(stream)

    async def flush_before_read(self) -> None:
        """Flush unconfirmed sends before a find (a client reads its own writes);
        what the flush has to report is raised by the next send or flush."""
        ws = self._event
        if self.ledger.unconfirmed and ws is not None and self._negotiated(ws):
            async with self._lock:
                if self.ledger.unconfirmed:
                    await self._flush(self.timeout, report=False)

    async def _event_connection(self) -> Any:
        ws = self._event
        if ws is not None and self._event_reader is not None and self._event_reader.done():
            self._dropped()
            error = self.ledger.refusals()
            if error is not None:
                raise error
            code = ws.close_code
            if code in DATA_CLOSE_CODES:
                raise ConnectionClosed(
                    f"{self.url}/event closed the connection with code {code}; events sent before may not have been stored",
                    url=f"{self.url}/event",
                    code=code,
                )
            ws = None
        error = self.ledger.refusals()
        if error is not None:
            raise error
        if ws is None:
            ws = await self.open("event")
            self._event = ws
            self._event_reader = asyncio.get_running_loop().create_task(self._read_event(ws))
        return ws

    async def _read_event(self, ws: Any) -> None:
        """Take in every message received on /event (flush answers, refusals)."""
        answers = self._answers
        try:
            async for message in ws:
                self.ledger.absorb(message)
                async with answers:
                    answers.notify_all()
        except Exception:
            pass
        finally:
            async with answers:
                answers.notify_all()

    def _dropped(self, *, reported: bool = False) -> None:
        if self._event is not None:
            self._event = None
            self.ledger.dropped(reported=reported)

    def _negotiated(self, ws: Any) -> bool:
        return bool(ws.subprotocol == SUBPROTOCOL)

    async def _send(self, ws: Any, payloads: list[bytes], n: int, sent: int) -> None:
        try:
            for payload in payloads:
                await ws.send(payload)
        except _websockets().exceptions.ConnectionClosed as exc:
            code, _ = _ended(exc)
            error = ConnectionClosed(f"the connection to {self.url}/event was lost while sending: {exc}", url=f"{self.url}/event", code=code)
            failed = self.ledger.send_failed(error, sent, self._negotiated(ws))
            self._dropped(reported=True)
            raise failed from exc
        if self._negotiated(ws):
            self.ledger.sent(n)

    # ------------------------------------------------------------------ sending
    async def send(self, event: Event, *, wait: bool = False) -> None:
        """Publish one event; with ``wait=True``, then :meth:`flush`."""
        if not isinstance(event, Event):
            raise InvalidEventError(f"send() expects an Event, got {type(event).__name__}")
        payload = encode(event)
        lock = self._lock
        async with lock:
            self._check_open()
            ws = await self._event_connection()
            await self._send(ws, [payload], 1, 0)
        if wait:
            await self.flush(self.timeout)

    async def send_many(
        self,
        events: Iterable[Event] | pa.RecordBatch | pa.Table | Any,
        *,
        wait: bool = False,
        columns: Mapping[str, str] | None = None,
    ) -> int:
        """Publish many events (as :meth:`Client.send_many <theia_frames.client.Client.send_many>`); returns how many were sent."""
        if isinstance(events, Event):
            events = [events]
        elif columns is not None or type(events).__module__.split(".")[0] in ("pandas", "polars", "pyarrow"):
            from ..frames import to_event_table

            events = to_event_table(events, columns=columns)
        lock = self._lock
        sent = 0
        async with lock:
            self._check_open()
            if hasattr(events, "schema") and hasattr(events, "num_rows"):
                for batch in arrow_pieces(events, self.send_batch_size):
                    ws = await self._event_connection()
                    await self._send(ws, batch_messages(batch, self._negotiated(ws)), batch.num_rows, sent)
                    sent += batch.num_rows
            else:
                it = iter(events)
                while True:
                    chunk = list(itertools.islice(it, self.send_batch_size))
                    if not chunk:
                        break
                    ws = await self._event_connection()
                    for payloads, n in event_messages(chunk, self._negotiated(ws)):
                        await self._send(ws, payloads, n, sent)
                        sent += n
        if wait:
            await self.flush(self.timeout)
        return sent

    async def flush(self, timeout: float | None = None) -> int:
        """Wait until every event sent so far is stored (as :meth:`Client.flush <theia_frames.client.Client.flush>`)."""
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise UsageError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        lock = self._lock
        async with lock:
            self._check_open()
            stored = await self._flush(timeout, report=True)
            error = self.ledger.refusals()
            if error is not None:
                raise error
            return stored

    async def _flush(self, timeout: float | None, *, report: bool) -> int:
        ledger = self.ledger
        ws = self._event
        answers = self._answers
        if ws is not None and not self._negotiated(ws):
            raise UnconfirmedError(
                f"{self.url} cannot confirm that events were stored: the /event connection did not "
                f"negotiate {SUBPROTOCOL} (a plain or upstream collector{', or batch=False' if not self.batch else ''}), "
                "and the plain protocol has no acknowledgement"
            )
        if report:
            doubt = ledger.doubt_error()
            if doubt is not None:
                raise doubt
        if ws is None or not ledger.unconfirmed:
            return ledger.stored
        reader = self._event_reader

        def ended() -> bool:
            return reader is None or reader.done()

        token, request = ledger.flush_request()
        try:
            await ws.send(request)
        except _websockets().exceptions.ConnectionClosed:
            pass
        else:

            async def answered() -> None:
                async with answers:
                    await answers.wait_for(lambda: ledger.answered >= token or ended())

            try:
                await _within(answered(), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                raise TheiaTimeoutError(
                    f"{self.url}/event did not confirm the flush within {timeout} s "
                    f"({ledger.unconfirmed} event(s) not confirmed yet; flush again to keep waiting)"
                ) from None
            if ledger.answered >= token:
                return ledger.stored
        lost = ledger.lost_error(ws.close_code, "")
        self._dropped(reported=report)
        if not report:
            return ledger.stored
        raise lost

    # ------------------------------------------------------------------ /find, /live
    def find(
        self,
        filter: FilterLike = None,
        *,
        strict: bool | None = None,
        idle_timeout: float | None = UNSET,
        batch_size: int | None = None,
    ) -> AsyncFindResult:
        """Past events matching ``filter``, as an :class:`AsyncFindResult` (connects when first read or awaited).

        Unconfirmed sends of this client are flushed first, so a client reads its own writes.
        """
        self._check_open()
        result = AsyncFindResult(
            self,
            as_filter(filter),
            strict=self.strict if strict is None else strict,
            batch_size=batch_size or self.batch_size,
            idle_timeout=self.idle_timeout if idle_timeout is UNSET else idle_timeout,
        )
        self._streams.add(result)
        return result

    def receive(
        self,
        filter: FilterLike = None,
        *,
        strict: bool | None = None,
        reconnect: bool = False,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        resume_margin: float = DEFAULT_RESUME_MARGIN,
        max_retries: int | None = None,
    ) -> AsyncLiveStream:
        """Events collected from now on, as an :class:`AsyncLiveStream` (``async with``, ``async for``)."""
        self._check_open()
        stream = AsyncLiveStream(
            self,
            as_filter(filter),
            strict=self.strict if strict is None else strict,
            batch_size=self.batch_size,
            reconnect=reconnect,
            backoff=backoff,
            max_backoff=max_backoff,
            resume_margin=resume_margin,
            max_retries=max_retries,
        )
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        """Close the /event connection and every open result or stream; idempotent (does not flush)."""
        for stream in list(self._streams):
            await stream.aclose()
        if self._closed:
            return
        self._closed = True
        ws, self._event = self._event, None
        if ws is not None:
            await _close(ws)
        if self._event_reader is not None:
            try:
                await asyncio.wait_for(self._event_reader, CLOSE_WAIT)
            except Exception:
                pass

    @property
    def closed(self) -> bool:
        return self._closed


