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

The package's modules: ``aio_transport`` (connections; the map from
``websockets``' errors to this project's), ``aio_streams`` (the results),
``aio`` (the client).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import pyarrow as pa
import websockets.asyncio.client
import websockets.exceptions

from ..checks import positive_seconds
from ..event import Event
from ..exceptions import ConnectError, ConnectionClosed, InvalidEventError, TheiaTimeoutError, UsageError
from ..filter import FilterLike, as_filter
from ..frames.analysis import count_frame, count_grain, timeline_frame, timeline_gap, timeline_refused
from ..protocol.arrow import SUBPROTOCOL
from ..protocol.codec import encode
from ..protocol.count import COUNT_PATH, DEFAULT_MAX_GROUPS, MAX_COUNT_REPLY, SECOND, UNSET_BUCKETS, Counter, CountResult, count_answer, count_request
from ..protocol.ledger import SendLedger, Sent
from ..protocol.messages import CHUNKS_PATH, DATA_CLOSE_CODES, EVENT_PATH
from ..protocol.outgoing import arrow_pieces, batch_messages, event_messages
from .aio_streams import AsyncFindResult, AsyncLiveStream, AsyncStream
from .aio_transport import CLOSE_WAIT, close, closed_error, connection_class, ended_code, open_error, within
from .options import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RESUME_MARGIN,
    MAX_CHUNKS_REPLY,
    UNSET,
    ClientSettings,
    chunks_answer,
    closed_client_error,
    data_close_error,
    events_to_send,
    flush_timeout_error,
    lacks_endpoint,
    unconfirmed_error,
)

__all__ = ["AsyncClient", "AsyncFindResult", "AsyncLiveStream"]


@dataclass(eq=False, repr=False)
class AsyncClient(ClientSettings):
    """An asyncio client of one theia collector; an async context manager.

    The arguments are those of :class:`~theia_frames.client.Client` (except
    ``sslopt``), with the same defaults and meanings. Use it from one event
    loop. Attributes: ``stored``, ``rejected``, ``errors``, ``batched``.

    >>> AsyncClient("ws://127.0.0.1:6433")
    <AsyncClient ws://127.0.0.1:6433>
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.ledger = SendLedger(f"{self.url}{EVENT_PATH}")
        self._event: Any = None
        self._event_reader: asyncio.Task[None] | None = None
        # held while the /event connection is used; notified when a message arrives there
        self._lock = asyncio.Lock()
        self._answers = asyncio.Condition()
        self._streams: set[AsyncStream] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}{' closed' if self._closed else ''}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise closed_client_error(self.url)

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
    async def open(self, endpoint: str, *, max_message: int | None = None) -> Any:
        """A new connection to ``endpoint`` (``event``, ``find``, ``live``, or a path such as ``/chunks``);
        ``max_message`` bounds each message received (default: ``max_message_size``)."""
        url = f"{self.url}/{endpoint.lstrip('/')}"
        headers = [line.split(":", 1) for line in self.header_lines]
        try:
            return await websockets.asyncio.client.connect(
                url,
                additional_headers=[(k.strip(), v.strip()) for k, v in headers],
                subprotocols=[SUBPROTOCOL] if self.batch else None,  # type: ignore[list-item]
                compression=None,
                max_size=self.max_message_size if max_message is None else max_message,
                open_timeout=self.timeout,
                ping_interval=None,
                close_timeout=CLOSE_WAIT,
                ssl=self.tls if url.startswith("wss://") else None,
                create_connection=connection_class(),
                **_NO_PROXY,
            )
        except Exception as exc:
            raise open_error(exc, url, self.timeout) from exc

    def forget(self, stream: AsyncStream) -> None:
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
                raise data_close_error(f"{self.url}{EVENT_PATH}", code, "")
            ws = None
        error = self.ledger.refusals()
        if error is not None:
            raise error
        if ws is None:
            ws = await self.open(EVENT_PATH)
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
        except websockets.exceptions.ConnectionClosed as exc:
            code, _ = ended_code(exc)
            url = f"{self.url}{EVENT_PATH}"
            error = ConnectionClosed(f"the connection to {url} was lost while sending: {exc}", url=url, code=code)
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
        time_format: str | Sequence[str] | None = None,
        tz: Any = None,
    ) -> Sent:
        """Publish many events (as :meth:`Client.send_many <theia_frames.client.Client.send_many>`); returns how many were sent (a :class:`~theia_frames.protocol.ledger.Sent`)."""
        events = events_to_send(events, columns, time_format, tz)
        lock = self._lock
        sent = 0
        async with lock:
            self._check_open()
            before = self.ledger.counts()
            if hasattr(events, "schema") and hasattr(events, "num_rows"):
                for batch in arrow_pieces(events, self.batch_size):
                    ws = await self._event_connection()
                    await self._send(ws, batch_messages(batch, self._negotiated(ws)), batch.num_rows, sent)
                    sent += batch.num_rows
            else:
                it = iter(events)
                while True:
                    chunk = list(itertools.islice(it, self.batch_size))
                    if not chunk:
                        break
                    ws = await self._event_connection()
                    for payloads, n in event_messages(chunk, self._negotiated(ws)):
                        await self._send(ws, payloads, n, sent)
                        sent += n
        if wait:
            await self.flush(self.timeout)
            return Sent.confirmed(sent, self.ledger, before)
        return Sent(sent)

    async def flush(self, timeout: float | None = None) -> int:
        """Wait until every event sent so far is stored (as :meth:`Client.flush <theia_frames.client.Client.flush>`)."""
        positive_seconds("timeout", timeout, none_ok=True)
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
            raise unconfirmed_error(self.url, self.batch)
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
        except websockets.exceptions.ConnectionClosed:
            pass
        else:

            async def answered() -> None:
                async with answers:
                    await answers.wait_for(lambda: ledger.answered >= token or ended())

            try:
                await within(answered(), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                raise flush_timeout_error(self.url, timeout, ledger.unconfirmed) from None
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

    async def count(
        self,
        filter: FilterLike = None,
        every: Any = None,
        by: str | None = None,
        *,
        max_groups: int = DEFAULT_MAX_GROUPS,
        max_buckets: int | None = UNSET_BUCKETS,
    ) -> pd.DataFrame:
        """How many events match ``filter``, in all, per time bucket of ``every``, per ``by``
        (``"source"`` or ``"tag"``) or both: :meth:`theia_frames.client.Client.count`'s frame,
        counted on our collector, else here while the events arrive."""
        self._check_open()
        grain = count_grain(every)
        result = await self._counted(filter, grain, by, max_groups)
        return count_frame(result, every, max_buckets=max_buckets)

    async def timeline(self, filter: FilterLike = None, *, gap: Any = None, max_groups: int = DEFAULT_MAX_GROUPS) -> pd.DataFrame:
        """A summary per source of the events matching ``filter``: :meth:`theia_frames.client.Client.timeline`'s
        frame, counted on our collector, else here while the events arrive."""
        self._check_open()
        timeline_gap(gap)
        try:
            result = await self._counted(filter, SECOND, "source", max_groups, spans=True)
        except UsageError as exc:
            raise timeline_refused(exc) from None
        return timeline_frame(result, gap=gap)

    async def _counted(self, filter: FilterLike, grain: int, by: str | None, max_groups: int, spans: bool = False) -> CountResult:
        """The count of ``filter`` (as :meth:`Client._counted <theia_frames.client.Client._counted>`)."""
        flt = as_filter(filter)
        request = count_request(flt.to_json(), grain, by, spans)
        await self.flush_before_read()
        result = await self._count_on_collector(request, grain, by, spans) if self.batch else None
        if result is None:
            counter = Counter(grain, by, max_groups, spans=spans)
            found = self.find(replace(flt, order=None))  # a count is the same in either order
            try:
                async for batch in found.iter_batches():
                    counter.add(batch)
            finally:
                await found.aclose()
            result = counter.result()
        return result

    async def _count_on_collector(self, request: str, grain: int, by: str | None, spans: bool) -> CountResult | None:
        """The collector's count (None from a peer without the extension's ``/count``)."""
        answered, answer = await self._ask(COUNT_PATH, request, MAX_COUNT_REPLY, None)  # a count takes what it takes
        return count_answer(answer, grain, by, self.url, spans) if answered else None

    async def chunks(self, filter: FilterLike = None) -> list[tuple[float, float, int]] | None:
        """The collector's layout over ``filter``'s time range (as :meth:`Client.chunks
        <theia_frames.client.Client.chunks>`); None from a peer without the extension's ``/chunks``."""
        self._check_open()
        answered, answer = await self._ask(CHUNKS_PATH, as_filter(filter).to_json(), MAX_CHUNKS_REPLY, self.timeout)
        return chunks_answer(answer, f"{self.url}{CHUNKS_PATH}") if answered else None

    async def _ask(self, path: str, request: str, max_reply: int, wait: float | None) -> tuple[bool, bytes | str | None]:
        """One request to an extension's ``path`` on a connection of its own, and its one answer
        (as :meth:`Client._ask <theia_frames.client.Client._ask>`)."""
        try:
            ws = await self.open(path, max_message=min(self.max_message_size, max_reply))
        except ConnectError as exc:
            if lacks_endpoint(exc):
                return False, None
            raise
        try:
            if ws.subprotocol != SUBPROTOCOL:
                return False, None
            await ws.send(request)
            try:
                answer: bytes | str | None = await within(ws.recv(), wait)
            except (TimeoutError, asyncio.TimeoutError):
                raise TheiaTimeoutError(f"{self.url}{path} did not answer within {wait} s") from None
            except websockets.exceptions.ConnectionClosed as exc:
                error = closed_error(exc, f"{self.url}{path}", max_reply)
                if error is not None:
                    raise error from exc
                answer = None
        finally:
            await close(ws)
        return True, answer

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
            await close(ws)
        if self._event_reader is not None:
            try:
                await asyncio.wait_for(self._event_reader, CLOSE_WAIT)
            except Exception:
                pass

    @property
    def closed(self) -> bool:
        return self._closed


# ``proxy=None`` where ``websockets`` has proxies (15.0 on): a collector is reached directly, as the sync client does
_NO_PROXY: dict[str, Any] = {"proxy": None} if "proxy" in inspect.signature(websockets.asyncio.client.connect).parameters else {}
