"""The asyncio client's results: :class:`AsyncFindResult` and :class:`AsyncLiveStream`.

The same state objects as the sync results (:mod:`theia_frames.protocol.streams`,
:class:`~theia_frames.protocol.live.LiveSession`); only the transport differs.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, Unpack

import pyarrow as pa
from websockets.exceptions import ConnectionClosed as WebSocketClosed

from ..protocol.arrow import SUBPROTOCOL, empty_batch, iter_batch_events
from ..event import Event
from ..exceptions import ConnectionClosed, TheiaError, UsageError
from ..filter import EventFilter
from ..protocol.plain import BULK_MIN
from ..protocol.streams import FindState, LiveState, StreamState
from .aio_transport import Silence, close, closed_error, recv, recv_raising
from .results import LiveView, ReconnectOptions, ResultBatches, ResultView, find_state, live_session

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["AsyncStream", "AsyncFindResult", "AsyncLiveStream", "AsyncOwner"]

# a live stream looks at aclose() at least this often while nothing arrives
LIVE_SLICE = 0.25


class AsyncOwner(Protocol):
    """What a result needs from the :class:`~theia_frames.client.aio.AsyncClient` that opened it."""

    url: str
    timeout: float | None
    idle_timeout: float | None
    max_message_size: int

    async def open(self, endpoint: str) -> Any: ...

    async def flush_before_read(self) -> None: ...

    def forget(self, stream: AsyncStream) -> None: ...


class AsyncStream(ResultView):
    """What :class:`AsyncFindResult` and :class:`AsyncLiveStream` share."""

    state: StreamState

    def __init__(self, client: AsyncOwner, state: StreamState) -> None:
        self.state = state
        self._client = client
        self._ws: Any = None
        self._pending: list[bytes] = []
        self._claimed: str | None = None
        self._closed = False
        self._opening: asyncio.Future[None] | None = None

    @property
    def batched(self) -> bool:
        """Whether the server accepted the batched-transfer extension (False before connecting)."""
        return self._ws is not None and self._ws.subprotocol == SUBPROTOCOL

    async def _subscribe(self) -> tuple[Any, list[bytes]]:
        await self._client.flush_before_read()
        ws = await self._client.open(self.state.endpoint)
        try:
            negotiated = ws.subprotocol == SUBPROTOCOL
            try:
                await ws.send(self.state.filter_message(negotiated))
            except WebSocketClosed as exc:
                # closed right after the handshake (a collector shutting down): an end, as when reading
                self._check_end(ws, exc)
                return ws, []
            try:
                msg = await recv(ws, self._client.timeout)
            except Silence:
                raise self.state.unanswered(self._client.timeout) from None
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

    def _chunks(self, heartbeat: float | None = None) -> AsyncIterator[list[bytes]]:  # pragma: no cover
        raise NotImplementedError

    async def _decoded(self, accumulate: int, heartbeat: float | None = None) -> AsyncIterator[pa.RecordBatch | None]:
        """Checked record batches in the order asked; ``None`` for a heartbeat."""
        batches = ResultBatches(self.state, accumulate, negotiated=self.batched)
        try:
            async for msgs in self._chunks(heartbeat):
                if not msgs:
                    yield None
                    continue
                for batch in batches.feed(msgs):
                    yield batch
            for batch in batches.finish():
                yield batch
        finally:
            batches.discard()

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
                for event in iter_batch_events(chunk):
                    if self._closed:
                        return
                    self.state.count += 1
                    yield event
        finally:
            await self.aclose()

    _event_accumulate = 1

    def iter_batches(self, *, heartbeat: float | None = None) -> AsyncIterator[pa.RecordBatch]:
        """The events as :func:`~theia_frames.protocol.arrow.event_schema` record batches, checked against the filter."""
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
            await close(ws)


class _Batches:
    """A find's batches handed from the event loop to a converting thread:
    ``iter_batches()`` for :func:`~theia_frames.frames.convert.to_dataframe`, ``total`` for its progress bar."""

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


class AsyncFindResult(AsyncStream):
    """The events of a ``/find``, read lazily with ``async for`` (events),
    :meth:`iter_batches` (Arrow record batches) or :meth:`to_dataframe`; once, one way.

    Attributes as on :class:`~theia_frames.client.FindResult`: ``url``,
    ``filter``, ``count``, ``total``, ``skipped``, ``errors``, ``complete``,
    ``ended_by``, ``batched``.
    """

    state: FindState
    _event_accumulate = BULK_MIN

    def __init__(self, client: AsyncOwner, filter: EventFilter, *, strict: bool, batch_size: int, idle_timeout: float | None) -> None:
        super().__init__(client, find_state(client, filter, strict=strict, batch_size=batch_size, idle_timeout=idle_timeout))

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
        while True:
            try:
                msg = await recv_raising(ws, wait)
            except Silence:
                if self._closed:
                    return
                state.silence(negotiated)
                return
            except WebSocketClosed as exc:
                self._check_end(ws, exc)
                return
            data = state.receive([msg])
            if data:
                yield data

    async def to_arrow(self, *, columns: Sequence[str] | None = None, progress: bool | None = None) -> pa.Table:
        """All the events as one ``pyarrow.Table`` with the frame's Arrow types, as
        :func:`~theia_frames.frames.convert.to_arrow` makes it (converted in a worker thread while they arrive)."""
        from ..frames.convert import to_arrow

        return await self._converted(lambda source: to_arrow(source, columns=columns, progress=progress))

    async def to_dataframe(
        self,
        *,
        index: Literal["timestamp"] | None = None,
        tz: Any = None,
        columns: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> pd.DataFrame:
        """All the events as one DataFrame, as :func:`~theia_frames.frames.convert.to_dataframe` makes it.

        The batches are converted in a worker thread while they arrive, so the
        event loop (a notebook's) stays free and memory peaks near the frame's size.
        """
        from ..frames.convert import to_dataframe

        return await self._converted(  # type: ignore[no-any-return]
            lambda source: to_dataframe(source, index=index, tz=tz, columns=columns, progress=progress)
        )

    async def _converted(self, convert: Any) -> Any:
        """``convert(source)`` run in a worker thread on this result's batches, handed over as they arrive."""
        handoff = _Batches(self)
        loop = asyncio.get_running_loop()
        converted = loop.run_in_executor(None, convert, handoff)
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


class AsyncLiveStream(LiveView, AsyncStream):
    """Events collected from now on, matching a filter, until the caller stops
    (``break``, :meth:`aclose`, leaving ``async with``); with ``reconnect=True``
    it resumes after a drop exactly as :class:`~theia_frames.client.LiveStream`
    does: the same :class:`~theia_frames.protocol.live.LiveSession` decides.

    Status attributes: ``reconnects``, ``recovered``, ``last_error``, ``error``, ``connected``, ``gap``.
    """

    state: LiveState

    def __init__(self, client: AsyncOwner, filter: EventFilter, *, strict: bool, batch_size: int, **options: Unpack[ReconnectOptions]) -> None:
        self.session = live_session(client, filter, strict=strict, batch_size=batch_size, **options)
        super().__init__(client, self.session.state)
        self._resume_find: AsyncFindResult | None = None

    @property
    def _batch_accumulate(self) -> int:
        return 1  # never wait to fill a batch

    async def _open(self) -> None:
        await super()._open()
        self.session.opened()

    async def _chunks(self, heartbeat: float | None = None) -> AsyncIterator[list[bytes]]:
        ws = self._ws
        pending, self._pending = self._pending, []
        if pending:
            yield pending
        last = time.monotonic()
        wait = LIVE_SLICE if heartbeat is None else min(LIVE_SLICE, heartbeat)
        while not self._closed:
            try:
                msg = await recv_raising(ws, wait)
            except Silence:
                if heartbeat is not None and time.monotonic() - last >= heartbeat:
                    last = time.monotonic()
                    yield []
                continue
            except WebSocketClosed as exc:
                self._check_end(ws, exc)
                return
            data = self.state.receive([msg])
            if data:
                last = time.monotonic()
                yield data

    async def _decoded(self, accumulate: int, heartbeat: float | None = None) -> AsyncIterator[pa.RecordBatch | None]:
        session = self.session
        if not session.reconnect:
            async for batch in super()._decoded(accumulate, heartbeat):
                yield batch
            return
        while not self._closed:
            cause: TheiaError | None = None
            try:
                async for chunk in super()._decoded(accumulate, heartbeat):
                    for fresh in session.deliver(chunk, time.monotonic()):
                        yield fresh
            except ConnectionClosed as exc:  # SubscriberTooSlow included
                cause = exc
            if self._closed:
                return
            code = None if self._ws is None else self._ws.close_code
            session.ended(cause, time.monotonic(), code=code, heartbeat=heartbeat)
            async for batch in self._resume():
                yield batch

    async def _resume(self) -> AsyncIterator[pa.RecordBatch | None]:
        """Do what the session says until the stream is back (or closed, or the
        session gives up), yielding what was stored meanwhile."""
        session = self.session
        old, self._ws = self._ws, None
        if old is not None:
            await close(old)
        while session.waiting:
            step = session.next_step(time.monotonic())
            if step.kind == "beat":
                yield None
            elif step.kind == "sleep":
                await asyncio.sleep(min(step.seconds, LIVE_SLICE))
            else:
                try:
                    async for batch in self._catch_up():
                        yield batch
                except TheiaError as exc:
                    session.attempt_failed(exc, time.monotonic())

    async def _catch_up(self) -> AsyncIterator[pa.RecordBatch]:
        """One attempt, as in the sync :class:`~theia_frames.client.LiveStream`: subscribe
        again, then find what was stored while away; a refused or failed find closes
        the new subscription before the error propagates."""
        session = self.session
        ws, buffered = await self._subscribe()
        if self._closed:
            await close(ws)
            return
        self._ws = ws
        try:
            resume_filter = session.subscribed()
            if resume_filter is not None:
                result = AsyncFindResult(
                    self._client, resume_filter, strict=self.state.strict, batch_size=self.state.batch_size, idle_timeout=self._client.idle_timeout
                )
                self._resume_find = result
                try:
                    async for batch in result.iter_batches():
                        fresh = session.found(batch, time.monotonic())
                        if fresh is not None:
                            yield fresh
                finally:
                    self._resume_find = None
                    await result.aclose()
                if self._closed:
                    return
        except BaseException:
            self._ws = None
            await close(ws)
            raise
        # websockets keeps reading the new subscription meanwhile (its queue pauses the socket when full)
        self._pending = buffered
        last = session.caught_up(time.monotonic())
        if last is not None:
            yield last

    async def aclose(self) -> None:
        """Close the stream, also while it waits to reconnect or reads a resume find; idempotent."""
        find = self._resume_find
        self.session.close()
        await super().aclose()
        if find is not None:
            await find.aclose()

    def __repr__(self) -> str:
        return self._describe()
