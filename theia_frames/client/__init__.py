"""The client: send events to a theia collector, find past ones, receive live ones.

The Python counterpart of the Go ``selene/comm`` client: :class:`Client` (sync,
on websocket-client) and :class:`AsyncClient` (asyncio, on websockets), thin
transports over one protocol core (:mod:`theia_frames.protocol`)::

    >>> import theia_frames as tf
    >>> with tf.Client("ws://127.0.0.1:6433") as client:             # doctest: +SKIP
    ...     client.send(tf.Event(source="/dev/sensors/temp-1", tags=["sensor"], content="21.5C"))
    ...     for event in client.find(tf.Filter(0).match_tag("sensor")):
    ...         print(event.content)
    ...     with client.receive(tf.Filter(0)) as live:
    ...         for event in live:
    ...             break
    21.5C

The package: ``options`` (the option table both clients take, and the rules
around a connection that are not I/O: what a failed connection means, what is
sent, how one-question replies are read), ``sync`` (:class:`Client` and the
one-liners) over ``transport`` (its connection) with ``streams``
(:class:`FindResult`, :class:`LiveStream`), ``aio`` (:class:`AsyncClient`)
over ``aio_transport`` with ``aio_streams``.

It works with both peers of the protocol (``docs/protocol.md``): this project's
collector and the upstream Python collector.

Sending
    :meth:`Client.send` and :meth:`Client.send_many` share one ``/event``
    connection, opened on first use. A connection found closed before a send
    is reopened transparently; one that fails *during* a send raises
    :class:`~theia_frames.exceptions.ConnectionClosed` naming the URL (the
    events of that call, and those sent before it and not yet confirmed, may
    or may not have arrived), and the next send reopens it. An error message
    the collector sends about a refused event is kept in
    :attr:`Client.errors`, counted in :attr:`Client.rejected` and raised once
    as :class:`~theia_frames.exceptions.ServerError` from the next send or flush.

Acknowledged sends
    The plain protocol has no acknowledgement. This project's collector
    confirms storage when the ``/event`` connection negotiated batched
    transfer: :meth:`Client.flush` returns only once every event sent so far
    is committed to its store, and returns how many events of this client it
    has confirmed; ``send(event, wait=True)`` and ``send_many(events,
    wait=True)`` send, then flush. Against a peer that cannot confirm (the
    upstream collector, or ``batch=False``) ``flush()`` raises
    :class:`~theia_frames.exceptions.UnconfirmedError`; it never pretends.
    When the connection is lost before a confirmation, the next flush raises
    :class:`~theia_frames.exceptions.ConnectionClosed`: send the events since
    the last successful flush again (the collector stores an event once per
    ``(timestamp, id)``, so a repeat does no harm). :meth:`Client.find`
    flushes first when this client has unconfirmed sends, so a client reads
    its own writes.

Finding
    :meth:`Client.find` returns a :class:`FindResult`, read lazily. It is
    complete when the server closes the connection normally (code 1000), as
    this project's collector does after the last event. The upstream collector
    never closes a ``/find``: there the result ends after ``idle_timeout``
    seconds in which not a byte arrived (default 3 s, :data:`DEFAULT_IDLE_TIMEOUT`;
    raise it for a slow upstream store, whose first event may take a while). A server
    that accepted the batched-transfer extension is this project's collector,
    which always closes; on such a connection silence is never taken as the
    end, and ``timeout`` seconds without a byte raise
    :class:`~theia_frames.exceptions.TheiaTimeoutError`. A message that is
    still arriving, however slowly, is never cut off by either. An abnormal close, a
    dropped socket or an error message from the server raises; a result is
    never silently short.

Receiving
    :meth:`Client.receive` returns a :class:`LiveStream` that yields events as
    they are collected, until the caller stops it (``break``, ``.close()``,
    leaving a ``with`` block); it closes its socket within about half a second
    even when no events arrive. With ``reconnect=True`` it survives the
    server going away: it reconnects with exponential backoff and jitter,
    subscribes again, fetches what was stored meanwhile with a ``/find`` from
    the last timestamp it saw (less ``resume_margin`` seconds), and drops
    the events it already delivered; ``.reconnects``, ``.gap`` and
    ``.recovered`` tell what happened.

Bounds
    What a server can make the client hold is bounded: a message larger than
    ``max_message_size`` bytes (default 256 MiB,
    :data:`DEFAULT_MAX_MESSAGE_SIZE`) or sent in more than ``max_fragments``
    frames (default 10,000, :data:`DEFAULT_MAX_FRAGMENTS`) raises
    :class:`~theia_frames.exceptions.ProtocolError` naming the bound as soon
    as its frame headers say so, before the payload is buffered, and the
    connection is closed (1009 / 1008). The handshake (connecting, TLS, the
    HTTP answer) must finish within ``timeout`` seconds in all, however the
    server paces its bytes.

Access
    ``Client(url, token=...)`` sends ``Authorization: Bearer <token>`` at the
    handshake; ``wss://`` URLs use TLS, verified with ``ssl_context`` (an
    :class:`ssl.SSLContext`) or ``cafile`` (a PEM file of trusted
    certificates) or the system's trusted certificates. A server that refuses
    the credentials (HTTP 401 or 403) raises
    :class:`~theia_frames.exceptions.AuthenticationError` naming the URL.

Every event received is checked again against the caller's filter, so a
result means the same whichever server answered (the upstream collector's
matching differs by endpoint and store). Plain messages are checked with
:meth:`EventFilter.matches_fields <theia_frames.filter.EventFilter.matches_fields>`.
Arrow batches come only from this project's collector, which applies the same
:class:`~theia_frames.filter.EventFilter`; they are checked with a vectorised
time-range test only (which also drops the events before a fractional start on
``/live``, where the start is sent as whole seconds).

Per-event problems (a message that is not an event among good ones) are
handled *leniently* by default, like the Go client, which reports them and
carries on: the message is skipped, counted in ``.skipped`` and its
:class:`~theia_frames.exceptions.DecodeError` kept in ``.errors``. With
``strict=True`` the first one raises.

Batched transfer: the client offers the WebSocket subprotocol
``theia-frames.v2`` (see :mod:`theia_frames.protocol.arrow`). When the server accepts
it, ``send_many`` publishes Arrow batches and ``find``/``receive`` may get
Arrow batches back; otherwise the plain protocol is spoken byte for byte.
``batch=False`` never offers it.
"""

from .options import (
    DEFAULT_BACKOFF,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_FRAGMENTS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_RESUME_MARGIN,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
)
from .aio import AsyncClient, AsyncFindResult, AsyncLiveStream
from .streams import FindResult, Gap, LiveStream
from .sync import Client, connect, find, send

__all__ = [
    "Client",
    "AsyncClient",
    "AsyncFindResult",
    "AsyncLiveStream",
    "FindResult",
    "LiveStream",
    "Gap",
    "find",
    "send",
    "connect",
    "DEFAULT_URL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_RESUME_MARGIN",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_FRAGMENTS",
]
