"""The sync client: :class:`Client`, and the one-liners :func:`find`, :func:`send`, :func:`connect`.

Sending goes through :mod:`theia_frames.protocol.outgoing` (what to send) and
:class:`~theia_frames.protocol.ledger.SendLedger` (what is confirmed); the
connection is :class:`~theia_frames.client.transport.Connection`.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from ..checks import positive_seconds
from ..event import Event
from ..exceptions import ConnectError, ConnectionClosed, InvalidEventError, ProtocolError, TheiaTimeoutError, UsageError
from ..filter import EventFilter, FilterLike, as_filter
from ..frames.analysis import count_frame, count_grain, timeline_frame, timeline_gap, timeline_refused
from ..protocol.codec import encode
from ..protocol.count import COUNT_PATH, DEFAULT_MAX_GROUPS, MAX_COUNT_REPLY, SECOND, UNSET_BUCKETS, Counter, CountResult, count_answer, count_request
from ..protocol.ledger import SendLedger, Sent
from ..protocol.messages import CHUNKS_PATH, DATA_CLOSE_CODES, EVENT_PATH
from ..protocol.outgoing import arrow_pieces, batch_messages, event_messages
from .options import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RESUME_MARGIN,
    DEFAULT_URL,
    MAX_CHUNKS_REPLY,
    UNSET,
    SyncSettings,
    chunks_answer,
    closed_client_error,
    data_close_error,
    events_to_send,
    flush_timeout_error,
    lacks_endpoint,
    split_client_options,
    unconfirmed_error,
)
from .streams import FindResult, LiveStream, Stream
from .transport import Connection, Silence

__all__ = ["Client", "find", "send", "connect"]

# seconds close() waits for the server's close frame on /event, so nothing sent is lost to a reset
CLOSE_WAIT = 2.0


@dataclass(eq=False, repr=False)
class Client(SyncSettings):
    """A client of one theia collector; a context manager, safe to share between threads.

    ``url`` is the collector's base URL (``ws://host:6433``, or ``wss://`` for
    TLS); ``timeout`` (seconds, default 10, ``None`` = wait forever) bounds
    connecting, sending one message, waiting for the answer to a filter and
    the flush made by ``send(..., wait=True)``; ``idle_timeout`` (default 3 s,
    ``None`` = wait for the close) is the silence after which a ``/find`` on a
    server that never closes (upstream) is complete; ``headers`` are extra
    HTTP headers for the handshake; ``token`` is sent as ``Authorization:
    Bearer <token>`` (a server refusing it raises
    :class:`~theia_frames.exceptions.AuthenticationError`); ``ssl_context``
    (an :class:`ssl.SSLContext`) or ``cafile`` (a PEM file of the
    certificates to trust, e.g. a self-signed collector's own) verify a
    ``wss://`` server, which is otherwise checked against the system's
    trusted certificates; ``sslopt`` passes other TLS options to
    websocket-client; ``batch=False`` never offers the batched-transfer
    extension (and so cannot have sends confirmed); ``strict=True`` raises
    on the first undecodable message instead of skipping it (default:
    lenient, see the module documentation); ``batch_size`` is the most
    events per record batch, both ways: per batch built from plain messages
    received and per Arrow message sent; ``max_message_size`` (bytes,
    default 256 MiB, also the most an Arrow message may decode to) and
    ``max_fragments`` (default 10,000) bound each message received (a larger one raises
    :class:`~theia_frames.exceptions.ProtocolError` naming the bound; see
    the module's Bounds). ``timeout`` and ``idle_timeout`` count seconds
    without a byte while reading; the handshake must finish within
    ``timeout`` in all.

    Attributes about sending: ``stored`` (events confirmed stored by the
    last flush), ``rejected`` (error messages received about refused
    events), ``errors`` (those errors, :class:`~theia_frames.exceptions.ServerError`).

    >>> Client("ws://127.0.0.1:6433")
    <Client ws://127.0.0.1:6433>
    >>> Client("wss://127.0.0.1:6433", token="s3cret").flush()   # nothing sent yet
    0
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        #: held while the /event connection is used (sends, flushes)
        self.lock = threading.RLock()
        self._event: Connection | None = None
        self._streams: weakref.WeakSet[Stream] = weakref.WeakSet()
        self._streams_lock = threading.Lock()
        self._closed = False
        self.ledger = SendLedger(f"{self.url}{EVENT_PATH}")

    def __repr__(self) -> str:
        return f"<Client {self.url}{' closed' if self._closed else ''}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise closed_client_error(self.url)

    # ------------------------------------------------------------------ /event
    @property
    def errors(self) -> list[Any]:
        """Error messages received on /event (the first 1,000), as ServerError."""
        return self.ledger.errors

    @property
    def rejected(self) -> int:
        """How many error messages about refused events were received on /event."""
        return self.ledger.rejected

    def event_connection(self) -> Connection:
        """The shared /event connection, (re)opened when needed; call with :attr:`lock` held."""
        conn = self._event
        if conn is not None:
            try:
                msgs = conn.poll()
            except ProtocolError:
                msgs = []
                conn.ended = True
            for m in msgs:
                self.ledger.absorb(m)
            if conn.ended:
                self._dropped(conn)
            self._raise_refusals()
            if conn.ended:
                code = conn.close_code
                if code in DATA_CLOSE_CODES:
                    # the server closed because of what we sent: events may be lost, say so
                    raise data_close_error(conn.url, code, conn.close_reason)
                conn = None
        if conn is None:
            conn = self.open(EVENT_PATH)
            self._event = conn
        return conn

    def open(self, path: str, *, offer: bool | None = None, max_message: int | None = None) -> Connection:
        """A new connection to the endpoint ``path`` (``EVENT_PATH``, ...) with this client's settings;
        ``offer`` the batched-transfer extension (default: ``batch``), ``max_message`` bounds each
        message received (default: ``max_message_size``)."""
        return Connection.open(
            f"{self.url}{path}",
            timeout=self.timeout,
            headers=self.header_lines,
            offer=self.batch if offer is None else offer,
            sslopt=self.sslopt,
            max_message=self.max_message_size if max_message is None else max_message,
            max_fragments=self.max_fragments,
        )

    @property
    def batched(self) -> bool | None:
        """Whether the /event connection negotiated batched transfer (None before it is open)."""
        conn = self._event
        return None if conn is None else conn.negotiated

    @property
    def stored(self) -> int:
        """Events of this client the collector confirmed stored, as of the last flush."""
        return self.ledger.stored

    @property
    def unconfirmed(self) -> int:
        """Events sent on the open /event connection that no flush answer covers yet."""
        return self.ledger.unconfirmed

    def _dropped(self, conn: Connection, *, reported: bool = False) -> None:
        """Forget a closed /event connection; what it did not confirm is in doubt
        unless the caller was told already (``reported``)."""
        conn.close()
        if self._event is conn:
            self._event = None
            self.ledger.dropped(reported=reported)

    def _raise_refusals(self) -> None:
        """Raise the error messages not yet reported, once."""
        error = self.ledger.refusals()
        if error is not None:
            raise error

    def _sent(self, conn: Connection, n: int) -> None:
        if conn.negotiated:
            self.ledger.sent(n)

    def _send_failed(self, conn: Connection, exc: ConnectionClosed, sent: int) -> ConnectionClosed:
        error = self.ledger.send_failed(exc, sent, conn.negotiated)
        self._dropped(conn, reported=True)
        return error

    def send(self, event: Event, *, wait: bool = False) -> None:
        """Publish one event (a plain message; the upstream format).

        With ``wait=True``, then :meth:`flush` (within ``timeout``): it returns
        once the collector has stored it, and raises what :meth:`flush` raises.
        """
        if not isinstance(event, Event):
            raise InvalidEventError(f"send() expects an Event, got {type(event).__name__}")
        payload = encode(event)
        with self.lock:
            self._check_open()
            conn = self.event_connection()
            try:
                conn.send_binary(payload)
            except ConnectionClosed as exc:
                raise self._send_failed(conn, exc, 0) from exc
            self._sent(conn, 1)
            if wait:
                self.flush(self.timeout)

    def send_many(
        self,
        events: Iterable[Event] | pa.RecordBatch | pa.Table | Any,
        *,
        wait: bool = False,
        columns: Mapping[str, str] | None = None,
        time_format: str | Sequence[str] | None = None,
        tz: Any = None,
    ) -> Sent:
        """Publish many events; returns how many were sent (a :class:`~theia_frames.protocol.ledger.Sent`:
        an ``int``; after ``wait=True`` with ``.stored``, the new events stored, and
        ``.duplicates``, the exact repeats of stored events acknowledged as already stored).

        ``events`` is any iterable of :class:`~theia_frames.event.Event` (read
        lazily, in chunks), an Arrow batch/table with the event schema, or a
        frame of events: a pandas DataFrame (the frame
        :func:`~theia_frames.frames.convert.to_dataframe` returns, or your own with a
        timestamp column or a DatetimeIndex), a ``pyarrow.Table`` of such
        columns or a Polars frame, read by
        :func:`~theia_frames.frames.events_table.to_event_table` (``columns`` maps event
        fields to its columns, e.g. ``{"content": "message"}``; missing ids
        are generated; ``time_format`` reads text times, e.g.
        ``"%d/%b/%Y:%H:%M:%S %z"``, ``"epoch_ms"``, and ``tz`` is the zone of
        times without an offset). :func:`~theia_frames.frames.logs.read_log`
        makes such a frame from a log file.

        With batched transfer, events go out as Arrow batches of up to
        ``batch_size`` events and about 8 MiB (a handful as plain
        messages); otherwise one plain message per event.
        Events the format cannot carry raise
        :class:`~theia_frames.exceptions.InvalidEventError` before their chunk
        is sent. With ``wait=True``, then :meth:`flush` (within ``timeout``).

        >>> client.send_many(df)                                    # doctest: +SKIP
        >>> client.send_many(logs, columns={"timestamp": "time", "content": "message", "source": "host"})  # doctest: +SKIP
        """
        events = events_to_send(events, columns, time_format, tz)
        with self.lock:
            self._check_open()
            before = self.ledger.counts()
            sent = self._send_all(events)
            if wait:
                self.flush(self.timeout)
                return Sent.confirmed(sent, self.ledger, before)
            return Sent(sent)

    def _send_all(self, events: Iterable[Event] | pa.RecordBatch | pa.Table) -> int:
        conn = self.event_connection()
        sent = 0
        try:
            if hasattr(events, "schema") and hasattr(events, "num_rows"):
                for batch in arrow_pieces(events, self.batch_size):
                    conn = self.event_connection()
                    conn.send_binaries(batch_messages(batch, conn.negotiated))
                    sent += batch.num_rows
                    self._sent(conn, batch.num_rows)
                return sent
            it = iter(events)
            while True:
                chunk = list(itertools.islice(it, self.batch_size))
                if not chunk:
                    return sent
                conn = self.event_connection()
                for payloads, n in event_messages(chunk, conn.negotiated):
                    conn.send_binaries(payloads)
                    sent += n
                    self._sent(conn, n)
        except ConnectionClosed as exc:
            raise self._send_failed(conn, exc, sent) from exc

    # ------------------------------------------------------------------ acknowledgements
    def flush(self, timeout: float | None = None) -> int:
        """Wait until every event sent so far is committed to the collector's store.

        Returns how many events of this client the collector has confirmed
        stored (0, at once, when nothing was sent): new events only; an exact
        repeat of a stored event (one sent again) is acknowledged as already
        stored and counted apart (``ledger.duplicates``), and a copy with other
        content is refused (:class:`~theia_frames.exceptions.ServerError`: the
        first stored is kept).
        ``timeout``: seconds to wait for the confirmation, ``None`` (the
        default) as long as the connection lives.

        Raises :class:`~theia_frames.exceptions.UnconfirmedError` when the
        ``/event`` connection did not negotiate ``theia-frames.v2`` (the
        upstream collector, ``batch=False``): such a peer cannot confirm;
        :class:`~theia_frames.exceptions.ConnectionClosed` when the
        connection was lost before the events sent since the last successful
        flush were confirmed (send them again: the collector stores an event
        once per ``(timestamp, id)``);
        :class:`~theia_frames.exceptions.ServerError` when the collector
        refused messages sent since (``.rejected``, ``.errors``) or could not
        commit; :class:`~theia_frames.exceptions.TheiaTimeoutError` after
        ``timeout`` seconds (nothing is lost: flush again).

        >>> Client("ws://127.0.0.1:6433").flush()
        0
        """
        positive_seconds("timeout", timeout, none_ok=True)
        with self.lock:
            self._check_open()
            stored = self._flush(timeout, report=True)
            self._raise_refusals()
            return stored

    def _flush(self, timeout: float | None, *, report: bool) -> int:
        """Flush the open /event connection; with ``report``, raise about events
        in doubt on lost connections (once). Call with the lock held."""
        conn = self._event
        ledger = self.ledger
        if conn is not None and not conn.negotiated:
            raise unconfirmed_error(self.url, self.batch)
        if report:
            doubt = ledger.doubt_error()
            if doubt is not None:
                raise doubt
        if conn is None:
            return ledger.stored
        try:
            for m in conn.poll():
                ledger.absorb(m)
        except ProtocolError:
            conn.ended = True
        if not ledger.unconfirmed:
            if conn.ended:
                self._dropped(conn)
            return ledger.stored
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if conn.ended:
                raise ConnectionClosed(f"the connection to {conn.url} has ended", url=conn.url)
            token, request = ledger.flush_request()
            conn.send_text(request)
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise Silence()
                msgs = conn.read(wait, idle=False)  # the flush's timeout is for the whole wait
                if not msgs:
                    break
                for answer in map(ledger.absorb, msgs):
                    if answer is not None and answer[0] >= token:
                        # confirmed, or refused with the collector's reason (raised by the caller)
                        return ledger.stored
        except Silence:
            raise flush_timeout_error(self.url, timeout, ledger.unconfirmed) from None
        except ConnectionClosed:
            pass
        except ProtocolError:
            conn.ended = True
        # the connection ended before the answer
        lost = ledger.lost_error(conn.close_code, conn.close_reason)
        self._dropped(conn, reported=report)
        if not report:
            return ledger.stored
        raise lost

    # ------------------------------------------------------------------ /find, /live
    def _track(self, stream: Stream) -> None:
        with self._streams_lock:
            self._streams.add(stream)

    def forget(self, stream: Stream) -> None:
        """Stop tracking a result or stream that closed."""
        with self._streams_lock:
            self._streams.discard(stream)

    def find(
        self,
        filter: FilterLike = None,
        *,
        strict: bool | None = None,
        idle_timeout: float | None = UNSET,
        batch_size: int | None = None,
    ) -> FindResult:
        """Past events matching ``filter`` (None: all), as a lazily read :class:`FindResult`.

        The connection is opened and the filter answered before this returns:
        a refused connection or a rejected filter raises here. When this
        client sent events not yet confirmed on a connection that can confirm
        them, it flushes first (within ``timeout``), so the result holds them;
        what that flush has to report is raised by the next send or flush.

        On a peer that did not accept the extension (the upstream collector)
        the filter is sent in the form every upstream store matches at least
        as widely and each event is re-checked here, so it means the same as
        on this project's collector; ``order_desc()`` is asked ascending and
        reversed here (docs/protocol.md).
        """
        self._check_open()
        self._read_own_writes()
        result = FindResult(
            self,
            as_filter(filter),
            strict=self.strict if strict is None else strict,
            batch_size=batch_size or self.batch_size,
            idle_timeout=self.idle_timeout if idle_timeout is UNSET else idle_timeout,
        )
        self._track(result)
        return result

    def _read_own_writes(self) -> None:
        """Flush this client's unconfirmed sends (within ``timeout``) where they can be confirmed,
        so what it reads next holds them; what that flush has to report is raised later."""
        if self.ledger.unconfirmed:
            with self.lock:
                conn = self._event
                if self.ledger.unconfirmed and conn is not None and conn.negotiated:
                    self._flush(self.timeout, report=False)

    def count(
        self,
        filter: FilterLike = None,
        every: Any = None,
        by: str | None = None,
        *,
        max_groups: int = DEFAULT_MAX_GROUPS,
        max_buckets: int | None = UNSET_BUCKETS,
    ) -> pd.DataFrame:
        """How many events match ``filter``: in all, per time bucket of ``every`` (a pandas
        frequency such as ``"1min"`` or a duration such as ``"15m"``), per ``by="source"`` or
        per ``by="tag"``, or both: the frame ``bucket(to_dataframe(self.find(filter)), every,
        by=by)`` returns for the same events (UTC), without ``every`` one row per group
        (see :func:`~theia_frames.frames.analysis.count_frame`).

        Our collector counts where the events are and sends the counts alone
        (the extension's ``/count``, docs/protocol.md); a peer that cannot
        (the upstream collector, a client with ``batch=False``) sends the
        events and they are counted here as they arrive, in memory that does
        not grow with them. A count past ``max_groups`` (time slot, group)
        pairs holding events (the collector's own limit on its side) raises
        :class:`~theia_frames.exceptions.UsageError`, and so do more buckets than
        ``bucket()`` lays out unasked (``max_buckets``, see
        :func:`~theia_frames.frames.analysis.bucket`).
        """
        self._check_open()
        grain = count_grain(every)
        result = self._counted(filter, grain, by, max_groups)
        return count_frame(result, every, max_buckets=max_buckets)

    def timeline(self, filter: FilterLike = None, *, gap: Any = None, max_groups: int = DEFAULT_MAX_GROUPS) -> pd.DataFrame:
        """A summary per source of the events matching ``filter``, as
        ``timeline(to_dataframe(self.find(filter)), gap=gap)``, counted where the events are
        (as :meth:`count`: a count per second by source, with each source's first and last
        event time): ``first``, ``last``, ``count``, ``span`` and ``rate`` are equal to
        :func:`~theia_frames.frames.analysis.timeline`'s, ``max_gap`` and ``gaps`` are measured
        at one-second resolution (see :func:`~theia_frames.frames.analysis.timeline_frame`
        for how they relate). ``max_groups`` bounds the (second, source) pairs holding events.
        """
        self._check_open()
        timeline_gap(gap)
        try:
            result = self._counted(filter, SECOND, "source", max_groups, spans=True)
        except UsageError as exc:
            raise timeline_refused(exc) from None
        return timeline_frame(result, gap=gap)

    def _counted(self, filter: FilterLike, grain: int, by: str | None, max_groups: int, spans: bool = False) -> CountResult:
        """The count of ``filter`` in ``grain`` by ``by``: the collector's, else counted here
        while the events of a find arrive (a peer without the extension's ``/count``)."""
        flt = as_filter(filter)
        request = count_request(flt.to_json(), grain, by, spans)
        self._read_own_writes()
        result = self._count_on_collector(request, grain, by, spans) if self.batch else None
        if result is None:
            counter = Counter(grain, by, max_groups, spans=spans)
            found = self.find(dataclasses.replace(flt, order=None))  # a count is the same in either order
            try:
                for batch in found.iter_batches():
                    counter.add(batch)
            finally:
                found.close()
            result = counter.result()
        return result

    def _count_on_collector(self, request: str, grain: int, by: str | None, spans: bool) -> CountResult | None:
        """The collector's count (None from a peer without the extension's ``/count``)."""
        answered, answer = self._ask(COUNT_PATH, request, MAX_COUNT_REPLY, None)  # a count takes what it takes
        return count_answer(answer, grain, by, self.url, spans) if answered else None

    def chunks(self, filter: FilterLike = None) -> list[tuple[float, float, int]] | None:
        """How many events the collector holds over ``filter``'s time range, from its index:
        ``(first timestamp, last timestamp, events)`` of its stored chunks (or of runs of
        neighbouring chunks, at most :data:`~theia_frames.protocol.messages.MAX_CHUNK_ENTRIES`),
        in time order; None from a peer without the extension's ``/chunks`` (the upstream collector).

        Only the time range of ``filter`` is used: the counts are of every event in a chunk, an
        upper bound for a filter with patterns, and a chunk at the edge of the range is counted
        whole. An error answer raises :class:`~theia_frames.exceptions.ServerError`, an answer
        that is not a layout (or longer than one can be) :class:`~theia_frames.exceptions.ProtocolError`.
        """
        self._check_open()
        answered, answer = self._ask(CHUNKS_PATH, as_filter(filter).to_json(), MAX_CHUNKS_REPLY, self.timeout)
        return chunks_answer(answer, f"{self.url}{CHUNKS_PATH}") if answered else None

    def _ask(self, path: str, request: str, max_reply: int, wait: float | None) -> tuple[bool, bytes | str | None]:
        """Send one request on a connection of its own to an extension's ``path`` and read the one answer
        (within ``wait`` seconds): (False, None) from a peer without the path or the extension, else
        (True, the answer, or None when the connection ended without one)."""
        try:
            conn = self.open(path, offer=True, max_message=min(self.max_message_size, max_reply))
        except ConnectError as exc:
            if lacks_endpoint(exc):
                return False, None
            raise
        try:
            if not conn.negotiated:
                return False, None
            conn.send_text(request)
            messages = conn.read(wait, idle=False)
        except Silence:
            raise TheiaTimeoutError(f"{conn.url} did not answer within {wait} s") from None
        finally:
            conn.close()
        return True, messages[0] if messages else None

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
    ) -> LiveStream:
        """Events collected from now on that match ``filter``, as a :class:`LiveStream`.

        The filter's start is sent as whole seconds (the upstream collector
        accepts only integers there); events before the real start are dropped
        here. The first connection is made before this returns (a refused one
        raises here).

        ``reconnect=True`` keeps the stream going when the connection drops
        (the server stops or restarts, the network fails, the collector drops
        a subscriber too slow): it waits ``backoff`` seconds (default 0.05),
        doubling after each failed attempt up to ``max_backoff`` (default
        2 s), each wait shortened by a random jitter of up to half, and tries
        again, without limit, or up to ``max_retries`` failed attempts in a
        row (then raises :class:`~theia_frames.exceptions.ConnectionClosed`).
        Once back it subscribes again first (buffering what is pushed), then
        fetches with a ``/find`` the events stored from the largest timestamp
        it delivered less ``resume_margin`` seconds (default 5; it covers
        events whose timestamps arrive out of order), yields those, then the
        buffered ones, then goes on live. An event already delivered (same id
        and timestamp) is not yielded again. (Against the upstream collector,
        which never closes a ``/find``, each resume waits ``idle_timeout``
        for the end of the find.) A refused token
        (:class:`~theia_frames.exceptions.AuthenticationError`), a rejected
        filter or a protocol violation are not retried.

        >>> client = Client("ws://127.0.0.1:6433")
        >>> with client.receive(reconnect=True, max_backoff=5) as stream:   # doctest: +SKIP
        ...     for event in stream:
        ...         print(event.content, stream.reconnects, stream.gap.total)
        """
        self._check_open()
        stream = LiveStream(
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
        self._track(stream)
        return stream

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close the /event connection and every open result or stream; idempotent.

        It does not flush: call :meth:`flush` first to know that what was sent is stored.
        """
        with self._streams_lock:
            streams = list(self._streams)
            self._streams = weakref.WeakSet()
        for stream in streams:
            if not stream.owns_client:
                stream.close()
        with self.lock:
            if self._closed:
                return
            self._closed = True
            conn, self._event = self._event, None
        if conn is not None:
            conn.close(wait=CLOSE_WAIT if self.timeout is None else min(self.timeout, CLOSE_WAIT))

    @property
    def closed(self) -> bool:
        return self._closed


def find(url: str, filter: FilterLike = None, **kw: Any) -> FindResult:
    """Past events from the collector at ``url``; the one-liner for :meth:`Client.find`.

    Keyword arguments go to :class:`Client`. Closing (or fully reading) the
    result closes its client.

    >>> import theia_frames as tf
    >>> df = tf.to_dataframe(tf.find("ws://127.0.0.1:6433", tf.Filter(0)))   # doctest: +SKIP
    """
    client_kw, rest = split_client_options(kw)
    if rest:
        raise UsageError(f"unexpected keyword argument(s) for find(): {', '.join(sorted(rest))}")
    client = Client(url, **client_kw)
    try:
        result = FindResult(
            client,
            as_filter(filter),
            strict=client.strict,
            batch_size=client.batch_size,
            idle_timeout=client.idle_timeout,
            owns_client=True,
        )
    except BaseException:
        client.close()
        raise
    return result


def send(url: str, events: Event | Iterable[Event], *, wait: bool = False, **kw: Any) -> int:
    """Publish one event or many to the collector at ``url``; returns how many were sent.

    With ``wait=True`` it returns once the collector confirmed them stored
    (see :meth:`Client.flush`). Other keyword arguments go to :class:`Client`.

    >>> import theia_frames as tf
    >>> tf.send("ws://127.0.0.1:6433", tf.Event(source="/dev/door", content="open"))   # doctest: +SKIP
    1
    """
    with Client(url, **kw) as client:
        if isinstance(events, Event):
            client.send(events, wait=wait)
            return 1
        return client.send_many(events, wait=wait)


def connect(url: str = DEFAULT_URL, **kw: Any) -> Client:
    """A :class:`Client` whose /event connection is already open (fails fast if it cannot be).

    >>> import theia_frames as tf
    >>> client = tf.connect("ws://127.0.0.1:6433")      # doctest: +SKIP
    """
    client = Client(url, **kw)
    try:
        with client.lock:
            client.event_connection()
    except BaseException:
        client.close()
        raise
    return client
