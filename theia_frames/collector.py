"""The embedded collector: a theia server in a background thread, one line to start.

    >>> import theia_frames as tf
    >>> with tf.serve(db=":memory:", port=0) as collector:                # doctest: +SKIP
    ...     print(collector.url)
    ws://127.0.0.1:40121

It speaks the protocol of ``docs/protocol.md`` to any peer (the Go client, the
upstream Python client, a plain WebSocket client):

``/event``
    every message is one serialized event (either dialect, binary or text).
    A message that is not an event gets ``{"error": "..."}`` on that
    connection and a log line (logger ``theia_frames.collector``); the
    connection stays open and the events before and after it are stored.
``/find``
    the first message is a JSON filter; the answer is ``ok``, then one binary
    message per stored matching event in the filter's order (``asc`` by
    default, or ``desc``), then a normal close (code 1000).
``/live``
    the first message is a JSON filter; the answer is ``ok``, then every
    matching event stored from then on, as it is stored, until the subscriber
    leaves. A later filter message replaces the filter (answered ``ok``).

A filter that cannot be built (not JSON, an unknown key, a wrong type, an
invalid regex, an end before the start) is answered ``{"error": "..."}``
naming the problem, then the connection is closed (code 1008). Filters mean
what :class:`~theia_frames.filter.EventFilter` says they mean, nothing else.
Any other path is refused at the handshake (HTTP 404, after the token is
checked). Messages larger than ``max_message_size`` close that connection
(code 1009); the server carries on.

Limits: everything one client can make the collector spend is bounded, each
bound an option of :class:`Collector` (and a flag of ``theia-frames serve``):
message size, decoded bytes per message and per event (compressed Arrow
buffers are measured before they are decompressed), patterns per filter and
bytes per pattern, connections in all and per address, idle time, the time a
``/find`` may stall. A refusal names the limit. The collector reads at most
one message ahead per connection and stops reading ``/event`` connections
while 64 MiB received are not yet committed, so its memory stays bounded by
about ``64 MiB + connections x 2 x max_message_size`` above what the store's
caches take. Filters are compiled and matched on worker threads, never on the
event loop; a ``/find`` ends when its client leaves, and a stop ends running
finds at their next stored chunk. RELIABILITY.md has the measurements.

Batched transfer (:mod:`theia_frames.batch`): a client that offers the
subprotocol ``theia-frames.v1`` gets it; then ``/find`` sends Arrow batches
of many events per message (the store's chunks as they are stored, when they
match whole), ``/live`` sends one batch when several events are waiting, and
``/event`` also accepts batches. Clients that do not offer it see the plain
protocol byte for byte; the collector encodes many events at once and writes
their frames together, but a peer sees exactly one frame per event, as if
each had been sent on its own.

Writes go through one writer thread that commits whatever has arrived in one
transaction (group commit) as one chunk of the store (:mod:`theia_frames.store`);
a message the store refuses fails alone: the other senders' events of that
commit are stored and confirmed. Only committed events are pushed to ``/live``.
Every received message gets a sequence number and the writer publishes the
number it has committed through, so :meth:`Collector.flush` can wait for
"everything received so far is stored". A live subscriber holds at most
``live_queue`` events waiting to be sent; one that falls further behind is
sent ``{"error": "subscriber too slow: ..."}`` and closed (code 1013), never
slowing down ingest or the other subscribers.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import functools
import hmac
import json
import logging
import math
import os
import contextlib
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from .background import BackgroundLoop
from .batch import (
    SUBPROTOCOL,
    batch_to_ipc,
    columns_to_batch,
    decoded_event_sizes,
    empty_batch,
    encode_batch,
    ipc_to_batches,
    is_arrow_message,
    uncarried_rows,
)
from .codec import EventColumns, encode, split_tags
from .protocol.messages import CHUNKS_PATH, OK, chunks_reply, flush_failure, flush_reply, is_flush_request, parse_flush_request, total_message
from .deprecation import renamed_arguments, warn_deprecated
from .event import Event
from .exceptions import (
    DecodeError,
    InvalidEventError,
    InvalidFilterError,
    StoreError,
    TheiaTimeoutError,
    TransportError,
    UsageError,
    shorten,
)
from .filter import EventFilter
from .store import MEMORY, EventStore

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from websockets.asyncio.server import Server, ServerConnection
    from websockets.http11 import Request, Response

__all__ = [
    "Collector",
    "serve",
    "ENDPOINTS",
    "DEFAULT_PORT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_LIVE_QUEUE",
    "DEFAULT_FIND_BATCH",
    "DEFAULT_MAX_DECODED_SIZE",
    "DEFAULT_MAX_EVENT_SIZE",
    "DEFAULT_MAX_PATTERNS",
    "DEFAULT_MAX_PATTERN_SIZE",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_ADDRESS",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_FIND_STALL_TIMEOUT",
    "DEFAULT_FIND_WAIT",
]

logger = logging.getLogger("theia_frames.collector")

#: The paths served: the protocol's three, and the extension's :data:`~theia_frames.protocol.messages.CHUNKS_PATH`.
ENDPOINTS = ("/event", "/find", "/live", CHUNKS_PATH)
#: The port of the theia protocol.
DEFAULT_PORT = 6433
#: Largest message accepted from a client, in bytes.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Events a live subscriber may have waiting before it is dropped as too slow.
DEFAULT_LIVE_QUEUE = 10_000
#: Most events per Arrow message on a batched ``/find`` (the most a stored chunk holds).
DEFAULT_FIND_BATCH = 65_536
#: Most bytes the events of one ``/event`` message may decode to (an Arrow batch
#: with compressed buffers is checked before it is decompressed).
DEFAULT_MAX_DECODED_SIZE = 64 * 1024 * 1024
#: Most bytes one event may decode to (its id, source, tags and content, and 8 for its timestamp).
DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024
#: Most patterns in one filter (tags, content, id and source together).
DEFAULT_MAX_PATTERNS = 64
#: Longest pattern in a filter, in bytes of UTF-8.
DEFAULT_MAX_PATTERN_SIZE = 4096
#: Most connections open at once (handshakes past it are answered 503).
DEFAULT_MAX_CONNECTIONS = 512
#: Most connections open at once from one address (loopback clients share one).
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 128
#: Seconds a connection may send nothing before it is closed: an ``/event``
#: connection between messages, a ``/find`` or ``/live`` before its filter.
DEFAULT_IDLE_TIMEOUT = 300.0
#: Seconds a ``/find`` may go without its client taking any of its bytes before it is closed.
DEFAULT_FIND_STALL_TIMEOUT = 30.0
#: Most seconds a ``/find`` matches before it sends what matched so far (or a sign that it is still matching).
DEFAULT_FIND_WAIT = 0.25

# Events read and encoded per step of a plain /find (one frame each, written together).
_PLAIN_CHUNK = 8_192
# Received and not yet committed bytes above which /event connections stop reading.
_PENDING_LIMIT = 64 * 1024 * 1024
# Error messages kept waiting for an /event client that does not read them.
_MAX_WAITING_ERRORS = 1_000
# Seconds a live subscriber's sender may be stuck writing one slice while more than
# live_queue events wait before the subscriber is dropped as too slow.
_STUCK_WRITE = 1.0
# Seconds allowed to send the "too slow" error to a subscriber that is not reading.
_SLOW_NOTICE_TIMEOUT = 1.0
# Seconds a dropped subscriber has to take what was on its way, the notice and
# the close frame; one that reads nothing for that long is cut off.
_SLOW_CLOSE_GRACE = 10.0
_FIND_WORKERS = 4
# Threads that parse and compile filters (off the event loop: a large pattern takes a while).
_FILTER_WORKERS = 2
# Decoded bytes above which the writer commits what it has and decodes the rest for the next commit.
_COMMIT_BYTES = 64 * 1024 * 1024
# Commits the live fan-out may have waiting before the writer waits for it.
_FANOUT_QUEUE = 8
# Seconds the writer waits for the fan-out before the costliest filter's subscriber is dropped.
_FANOUT_WAIT = 0.25
# Store failures remembered for Collector.flush (the newest; counted beyond that).
_MAX_FAILURES_KEPT = 1_000
# Seconds between two log lines about the same kind of refusal (the rest are counted).
_LOG_EVERY = 10.0
# Seconds stop() waits for clients to answer the closing handshake before cutting them off.
_STOP_GRACE = 0.5

_running: weakref.WeakSet[Collector] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # The threads are daemons so a forgotten collector never hangs the
    # interpreter; stopping here still closes the store properly.
    for collector in list(_running):
        try:
            collector.stop()
        except Exception:  # pragma: no cover - best effort at exit
            logger.exception("stopping the collector at %s failed", collector.url)


@renamed_arguments(find_batch_rows="batch_size")
def serve(
    db: str | os.PathLike[str] = MEMORY,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    **options: Any,
) -> Collector:
    """Start a collector in a background thread and return it, running.

    ``db`` is the SQLite file of the store (created if missing) or
    ``":memory:"``; ``port`` defaults to the theia port (6433, ``DEFAULT_PORT``)
    and ``port=0`` picks a free one (see ``.url``). Use it as a
    context manager, or call :meth:`Collector.stop`. ``options`` are those of
    :class:`Collector`.

    >>> with serve(db=":memory:", port=0) as collector:      # doctest: +SKIP
    ...     collector.url
    'ws://127.0.0.1:40121'
    """
    return Collector(db, host=host, port=port, **options).start()


class Collector:
    """A theia collector with an SQLite store, served from a background thread.

    Options:
        ``host``: the address to bind, loopback unless told otherwise.
        ``port``: the port, 6433 (``DEFAULT_PORT``) unless told; 0 picks a free one.
        ``max_message_size``: the largest message accepted, in bytes.
        ``live_queue``: events a live subscriber may have waiting before it is
        dropped as too slow.
        ``batch_size``: most events per Arrow message on a batched
        ``/find``; a stored chunk that matches whole and fits goes out as
        stored, other events are gathered into messages of this many
        (``find_batch_rows``, its old name, still works with a warning).
        ``ping_interval``: seconds between keepalive pings, ``None`` (the
        default) for none: plain ``/event`` clients never read, so they could
        not answer them.
        ``close_timeout``: seconds to wait for a client's close handshake.
        ``token``: a shared secret; when set, every connection must present
        ``Authorization: Bearer <token>`` at the handshake (401 without it,
        403 with a wrong one).
        ``certfile``/``keyfile``: serve ``wss://`` (TLS) with this certificate
        chain and private key (PEM files).

    Limits on what one client can make the collector spend (each refusal is
    an error message naming the limit; the rest of the connection, and every
    other client, carry on):
        ``max_decoded_size``: bytes the events of one ``/event`` message may
        decode to; an Arrow batch whose compressed buffers declare more is
        refused before anything is decompressed.
        ``max_event_size``: bytes one event may decode to; larger events of a
        batch are left out (and reported), a larger plain message is refused.
        ``max_patterns``, ``max_pattern_size``: patterns per filter and bytes
        per pattern; a filter over either is refused (code 1008).
        ``max_connections``, ``max_connections_per_address``: connections open
        at once, in all and from one address; a handshake past either is
        answered HTTP 503.
        ``idle_timeout``: seconds a connection may send nothing (an
        ``/event`` connection between messages, a ``/find`` or ``/live``
        before its filter) before it is closed (code 1008); ``None``: no limit.
        ``find_stall_timeout``: seconds a ``/find`` may go without its client
        taking any of its bytes; then the connection is cut off and the query
        ends (so it stops holding its read snapshot); ``None``: no limit.
        ``find_wait``: most seconds a ``/find`` goes on matching before it
        sends what matched so far, so a selective query is heard from at
        once and never looks silent to its client: when nothing has matched
        yet, a batched ``/find`` sends a batch of no events and a plain one a
        ping.

    Patterns in filters that arrive over the network are compiled with RE2,
    a linear-time engine, so no pattern can make the collector hang; a pattern
    RE2 cannot run (backreferences, lookaround) is refused with an error message.
    Filters are compiled and evaluated off the event loop, so an expensive
    filter slows its own client, not the others.
    """

    @renamed_arguments(find_batch_rows="batch_size")
    def __init__(
        self,
        db: str | os.PathLike[str] = MEMORY,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        live_queue: int = DEFAULT_LIVE_QUEUE,
        batch_size: int = DEFAULT_FIND_BATCH,
        ping_interval: float | None = None,
        close_timeout: float = 2.0,
        token: str | None = None,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        max_decoded_size: int = DEFAULT_MAX_DECODED_SIZE,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        max_patterns: int = DEFAULT_MAX_PATTERNS,
        max_pattern_size: int = DEFAULT_MAX_PATTERN_SIZE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        find_stall_timeout: float | None = DEFAULT_FIND_STALL_TIMEOUT,
        find_wait: float = DEFAULT_FIND_WAIT,
    ) -> None:
        counts = {
            "max_message_size": max_message_size,
            "live_queue": live_queue,
            "batch_size": batch_size,
            "max_decoded_size": max_decoded_size,
            "max_event_size": max_event_size,
            "max_patterns": max_patterns,
            "max_pattern_size": max_pattern_size,
            "max_connections": max_connections,
            "max_connections_per_address": max_connections_per_address,
        }
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive whole number, got {value!r}")
        for name, seconds in (("idle_timeout", idle_timeout), ("find_stall_timeout", find_stall_timeout)):
            if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0):
                raise UsageError(f"{name} must be a positive number of seconds or None, got {seconds!r}")
        self.db = os.fspath(db)
        self.host = host
        self.max_message_size = int(max_message_size)
        self.live_queue = int(live_queue)
        self.batch_size = int(batch_size)
        self.max_decoded_size = int(max_decoded_size)
        self.max_event_size = int(max_event_size)
        self.max_patterns = int(max_patterns)
        self.max_pattern_size = int(max_pattern_size)
        self.max_connections = int(max_connections)
        self.max_connections_per_address = int(max_connections_per_address)
        self.idle_timeout = None if idle_timeout is None else float(idle_timeout)
        self.find_stall_timeout = None if find_stall_timeout is None else float(find_stall_timeout)
        if isinstance(find_wait, bool) or not isinstance(find_wait, (int, float)) or not find_wait > 0:
            raise UsageError(f"find_wait must be a positive number of seconds, got {find_wait!r}")
        self.find_wait = float(find_wait)
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        if token is not None and (not isinstance(token, str) or not token):
            raise UsageError("token must be a non-empty string")
        self._token = token
        self._ssl = _server_ssl_context(certfile, keyfile)
        self._requested_port = int(port)
        self._port: int | None = None
        self.store: EventStore | None = None
        self._writer: _Writer | None = None
        self._fanout: _Fanout | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._filter_pool: ThreadPoolExecutor | None = None
        self._background: BackgroundLoop | None = None
        self._state_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._flush_lock = threading.Lock()
        self._flushed = 0  # the last message Collector.flush() reported on
        # loop-thread state
        self._subscribers: set[_Subscriber] = set()
        self._live: tuple[_Subscriber, ...] = ()  # the same, as the fan-out thread reads it
        self._flushes: list[tuple[int, _EventSink, Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._room: asyncio.Event | None = None
        self._published = 0  # the last message whose commit the loop has taken in
        self._connections: dict[ServerConnection, _Connection] = {}
        self._per_address: dict[str, int] = {}
        self._queries: set[Any] = set()  # the /find queries running
        self._pattern_steps: asyncio.Semaphore | None = None
        self._log = _Throttled(logger)

    # ------------------------------------------------------------------ public
    @property
    def port(self) -> int:
        """The port the collector listens on (the real one when 0 was asked for)."""
        if self._port is None:
            raise UsageError("the collector is not running")
        return self._port

    @property
    def url(self) -> str:
        """The base URL clients connect to, like ``ws://127.0.0.1:6433``."""
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "wss" if self._ssl is not None else "ws"
        return f"{scheme}://{host}:{self.port}"

    @property
    def find_batch_rows(self) -> int:
        """Deprecated name of :attr:`batch_size`."""
        warn_deprecated("Collector.find_batch_rows", "Collector.batch_size")
        return self.batch_size

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    def start(self) -> Collector:
        """Open the store, bind the port and serve from a background thread; returns self."""
        with self._state_lock:
            if self._started:
                raise UsageError("a collector can be started only once")
            self._started = True
        try:
            self.store = EventStore(self.db)
        except BaseException:
            self._stopped = True
            raise
        self._fanout = _Fanout(self)
        self._fanout.start()
        self._writer = _Writer(self.store, self._committed_from_writer, self._fanout, self.max_decoded_size, self.max_event_size)
        self._writer.start()
        self._pool = ThreadPoolExecutor(max_workers=_FIND_WORKERS, thread_name_prefix="theia-frames-find")
        self._filter_pool = ThreadPoolExecutor(max_workers=_FILTER_WORKERS, thread_name_prefix="theia-frames-filter")
        self._background = BackgroundLoop(self._serving, name="theia-frames-collector", on_exit=self._shutdown_threads)
        try:
            self._background.start()
        except OSError as exc:
            self._stopped = True
            hint = ""
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                hint = (
                    "; another program listens there: choose another port, or port 0 (--port 0) for a free"
                    " one, and point the clients at it (the URL it prints, or $THEIA_URL)"
                )
            raise TransportError(
                f"the collector cannot listen on {self.host}:{self._requested_port}: {exc}{hint}",
                url=f"ws://{self.host}:{self._requested_port}",
            ) from exc
        except BaseException:
            self._stopped = True
            raise
        _running.add(self)
        logger.debug("collector listening on %s (store %s)", self.url, self.db)
        return self

    def stop(self) -> None:
        """Stop serving: close every connection and the port, store what was received,
        close the store and join the threads. Idempotent."""
        with self._state_lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
        if self._background is not None:
            self._background.stop()  # from a handler of this collector: asks, does not wait
        _running.discard(self)

    def flush(self, timeout: float | None = 10.0) -> None:
        """Wait until every event received so far is committed to the store.

        Raises :class:`~theia_frames.exceptions.TheiaTimeoutError` after
        ``timeout`` seconds (``None``: wait as long as it takes), and
        :class:`~theia_frames.exceptions.StoreError` when events received
        since the last ``flush()`` could not be stored (a full disk, an event
        the store refuses); it returns only when everything was stored.
        Messages refused as not being events (their senders were told) do
        not count: they were never events to store.
        """
        writer = self._writer
        if writer is None or not self.running:
            raise UsageError("the collector is not running")
        upto = writer.received
        if not writer.wait_committed(upto, timeout):
            raise TheiaTimeoutError(f"the collector at {self.url} did not store its events within {timeout} s")
        with self._flush_lock:
            since, self._flushed = self._flushed, max(self._flushed, upto)
        messages, events, text = writer.failures_between(since, upto)
        if messages:
            raise StoreError(
                f"the collector at {self.url} could not store {events} event(s) of {messages} message(s) "
                f"received since the last flush: {text}"
            )

    def __enter__(self) -> Collector:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self.running:
            return f"<Collector {self.url} db={self.db!r}>"
        return f"<Collector (stopped) db={self.db!r}>"

    # ------------------------------------------------------------------ thread and loop
    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        return None if self._background is None else self._background.loop

    def _shutdown_threads(self) -> None:
        # Every connection is closed: store what is still queued, then close the store.
        for results in list(self._queries):
            results.cancel()  # a query step still running stops at its next chunk
        # The loop has ended: no subscriber is left to match for, and the writer
        # must never wait for the fan-out while it stores what is queued.
        if self._fanout is not None:
            self._fanout.close()
            self._fanout.join()
        if self._writer is not None:
            self._writer.close()
            self._writer.join()
        for pool in (self._pool, self._filter_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.store is not None:
            try:
                self.store.close()
            except StoreError:
                logger.exception("closing the event store failed")

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        """The collector's life on its loop: bind and serve on entry; on exit close
        every connection and the port and end the running finds."""
        self._room = asyncio.Event()
        self._pattern_steps = asyncio.Semaphore(_FIND_WORKERS - 1)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        server: Server = await ws_serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._check_request,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            select_subprotocol=_select_subprotocol,
            compression=None,
            max_size=self.max_message_size,
            # One received message waiting per connection, not websockets' 16: a
            # connection that is not being read holds one message (and the part
            # of the next one already read), so the bound on pending bytes holds.
            max_queue=1,
            ping_interval=self.ping_interval,
            close_timeout=self.close_timeout,
            write_limit=2**20,
            ssl=self._ssl,
        )
        self._port = server.sockets[0].getsockname()[1]
        if self.idle_timeout is not None:
            self._spawn(self._close_idle())
        yield
        for results in list(self._queries):
            results.cancel()
        server.close()  # closes every connection with 1001 (going away)
        try:
            await asyncio.wait_for(server.wait_closed(), _STOP_GRACE)
        except asyncio.TimeoutError:
            # Clients that do not read never answer the close: cut them off.
            for connection in list(getattr(server, "all_connections", server.connections)):
                connection.transport.abort()
            for connection in list(self._connections):
                connection.transport.abort()
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Out of file descriptors, asyncio reports every failed accept with a
        # traceback (and retries each second): one line per _LOG_EVERY instead.
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            self._log.warning("accept", "cannot accept connections: %s", exc)
            return
        loop.default_exception_handler(context)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ admission
    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer the handshake: credentials first, then the path, then the connection limits."""
        try:
            return self._admit(connection, request)
        except Exception as exc:  # a bug must not become a traceback per connection
            self._log.warning("handshake", "refused %s: cannot read its handshake: %s", _peer(connection), exc)
            return connection.respond(HTTPStatus.BAD_REQUEST, "cannot read this handshake\n")

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if self._token is not None:
            presented = request.headers.get_all("Authorization")
            if len(presented) > 1:
                self._log.info("auth", "refused %s: %d Authorization headers", _peer(connection), len(presented))
                return connection.respond(HTTPStatus.BAD_REQUEST, "more than one Authorization header\n")
            if not presented:
                self._log.info("auth", "refused %s: no credentials", _peer(connection))
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "this collector needs a bearer token\n")
                response.headers["WWW-Authenticate"] = 'Bearer realm="theia"'
                return response
            scheme, _, value = presented[0].partition(" ")
            expected = self._token.encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("utf-8", "replace"), expected):
                self._log.info("auth", "refused %s: wrong credentials", _peer(connection))
                return connection.respond(HTTPStatus.FORBIDDEN, "wrong bearer token\n")
        if path not in ENDPOINTS:
            self._log.info("path", "refused %s: unknown path %r", _peer(connection), path[:100])
            return connection.respond(
                HTTPStatus.NOT_FOUND, f"unknown path: this collector serves {', '.join(ENDPOINTS)}\n"
            )
        address = _address(connection)
        if len(self._connections) >= self.max_connections:
            self._log.warning("full", "refused %s: %d connections open (the limit)", _peer(connection), self.max_connections)
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, f"too many connections (this collector serves {self.max_connections})\n"
            )
        if self._per_address.get(address, 0) >= self.max_connections_per_address:
            self._log.warning(
                "full-address", "refused %s: %d connections open from %s (the limit)",
                _peer(connection), self.max_connections_per_address, address,
            )
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"too many connections from {address} (this collector serves {self.max_connections_per_address} per address)\n",
            )
        assert self._loop is not None
        self._connections[connection] = _Connection(address, path, self._loop.time())
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self._spawn(self._forget_when_closed(connection))
        return None

    async def _forget_when_closed(self, connection: ServerConnection) -> None:
        try:
            await connection.wait_closed()
        finally:
            state = self._connections.pop(connection, None)
            if state is not None:
                left = self._per_address.get(state.address, 1) - 1
                if left > 0:
                    self._per_address[state.address] = left
                else:
                    self._per_address.pop(state.address, None)

    async def _close_idle(self) -> None:
        """Close connections that sent nothing for ``idle_timeout`` seconds (one sweep every few seconds)."""
        idle = self.idle_timeout
        assert idle is not None and self._loop is not None
        every = min(idle / 4, 5.0)
        while True:
            await asyncio.sleep(every)
            now = self._loop.time()
            for connection, state in list(self._connections.items()):
                if not state.watched or now - state.last < idle:
                    continue
                state.watched = False
                self._log.info("idle", "closing %s on %s: nothing received for %s s", _peer(connection), state.path, idle)
                self._spawn(_close_quietly(connection, 1008, f"idle for more than {idle:g} s"))

    # ------------------------------------------------------------------ connections
    async def _handle(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path if ws.request is not None else "").path
        batched = ws.subprotocol == SUBPROTOCOL
        state = self._connections.get(ws)
        if state is None:  # pragma: no cover - admitted connections are registered
            assert self._loop is not None
            state = _Connection(_address(ws), path, self._loop.time())
        try:
            if path == "/event":
                await self._on_event(ws, batched, state)
            elif path == "/find":
                await self._on_find(ws, batched, state)
            elif path == "/live":
                await self._on_live(ws, batched, state)
            elif path == CHUNKS_PATH:
                await self._on_chunks(ws, batched)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:
                self._log.warning(
                    "too-large",
                    "%s sent a message larger than %d bytes on %s: connection closed",
                    _peer(ws),
                    self.max_message_size,
                    path,
                )
        except _Stalled:
            pass
        except StoreError as exc:
            logger.error("%s on %s: %s", _peer(ws), path, exc)
            await _send_quietly(ws, _error(str(exc)))
            await ws.close(1011, "store error")

    async def _read_filter(self, ws: ServerConnection, message: str | bytes | None = None) -> EventFilter | None:
        """The client's filter, or None after telling the client what is wrong with it.

        Parsed and compiled on a worker thread, within the limits on patterns.
        """
        if message is None:
            message = await ws.recv()
        loop = asyncio.get_running_loop()
        assert self._filter_pool is not None
        try:
            if len(message) > self._max_filter_length():
                raise InvalidFilterError(
                    f"filter of {len(message)} bytes is longer than this collector accepts "
                    f"({self.max_patterns} patterns of at most {self.max_pattern_size} bytes)"
                )
            flt = await loop.run_in_executor(self._filter_pool, self._build_filter, message)
        except InvalidFilterError as exc:
            self._log.info("filter", "%s sent a bad filter: %s", _peer(ws), shorten(str(exc)))
            await ws.send(_error(str(exc)))
            await ws.close(1008, "invalid filter")
            return None
        return flt

    def _max_filter_length(self) -> int:
        # The longest JSON text a filter within the limits can take: every
        # character of every pattern escaped as \\uXXXX, keys and punctuation.
        return self.max_patterns * (6 * self.max_pattern_size + 8) + 4096

    def _build_filter(self, message: str | bytes) -> EventFilter:
        """A filter from the network, within the limits on patterns (a worker thread)."""
        try:
            obj = json.loads(message)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return EventFilter.from_json(message, engine="re2")  # raises, naming the problem
        if isinstance(obj, dict):
            patterns: list[tuple[str, Any]] = [("content", obj.get("content")), ("id", obj.get("id")), ("source", obj.get("source"))]
            tags = obj.get("tags")
            if isinstance(tags, list):
                patterns += [("tag", t) for t in tags]
            patterns = [(name, p) for name, p in patterns if isinstance(p, str)]
            if len(patterns) > self.max_patterns:
                raise InvalidFilterError(
                    f"filter has {len(patterns)} patterns; this collector accepts at most {self.max_patterns} per filter"
                )
            for name, pattern in patterns:
                size = len(pattern.encode("utf-8", "surrogatepass"))
                if size > self.max_pattern_size:
                    raise InvalidFilterError(
                        f"filter {name} pattern of {size} bytes is longer than this collector accepts "
                        f"({self.max_pattern_size} bytes)"
                    )
        return EventFilter.from_dict(obj, engine="re2")

    # ------------------------------------------------------------------ /event
    async def _on_event(self, ws: ServerConnection, batched: bool, state: _Connection) -> None:
        writer = self._writer
        room = self._room
        loop = self._loop
        assert writer is not None and room is not None and loop is not None
        sink = _EventSink(self, ws)
        try:
            async for message in ws:
                state.last = loop.time()
                if batched and is_flush_request(message):
                    self._flush_request(sink, message, writer.received)
                    continue
                writer.put(sink, message, batched)
                while writer.pending_bytes > _PENDING_LIMIT:
                    # Stop reading until the writer catches up: TCP pushes back on the client
                    # (which is not idle meanwhile: we are not listening).
                    state.watched = False
                    room.clear()
                    await room.wait()
                    state.last, state.watched = loop.time(), True
        finally:
            sink.closed = True

    def _committed_from_writer(self, upto: int, outcomes: list[_Outcome]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._committed, upto, outcomes)
        except RuntimeError:  # the loop has ended: nobody is left to tell
            pass

    def _flush_request(self, sink: _EventSink, message: str, seq: int) -> None:
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

    def _committed(self, upto: int, outcomes: list[_Outcome]) -> None:
        """Take in a commit's outcome (loop thread): counts, error messages, then the flushes it answers."""
        self._published = max(self._published, upto)
        if self._room is not None:
            self._room.set()
        for sink, seq, stored, text, failed in outcomes:
            sink.accepted += stored
            if text is None:
                continue
            if failed:
                sink.failures.append((seq, text))
                if len(sink.failures) > _MAX_WAITING_ERRORS and not sink.closed:
                    # Too many failures no flush has asked about to keep them all: end the
                    # connection; its client holds whatever is unconfirmed as in doubt.
                    sink.closed = True
                    self._spawn(_close_quietly(sink.ws, 1011, "too many events not stored"))
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

    # ------------------------------------------------------------------ /find
    async def _on_find(self, ws: ServerConnection, batched: bool, state: _Connection) -> None:
        flt = await self._read_filter(ws)
        if flt is None:
            return
        state.watched = False  # from now on the stall timeout watches it
        loop = asyncio.get_running_loop()
        store, pool = self.store, self._pool
        assert store is not None and pool is not None
        # Batched: Arrow messages, stored chunks sent as stored. Plain: many events
        # encoded at once into ready WebSocket frames, written together.
        results: Any
        if batched:
            query = functools.partial(store.query_ipc, flt, batch_size=self.batch_size, wait=self.find_wait)
        else:
            query = functools.partial(store.query_batches, flt, batch_size=_PLAIN_CHUNK, wait=self.find_wait)
        results = await loop.run_in_executor(pool, query)
        self._queries.add(results)
        produce = functools.partial(_next_find_output, results, batched)
        slots = None if flt.is_time_only else self._pattern_steps
        running = [False]  # whether the current step reached a worker thread

        async def step() -> bytes | memoryview | None:
            # A step of a find with patterns (Python matching, the costly kind) waits
            # for one of _FIND_WORKERS - 1 places, in turn with the other such finds:
            # each gets a step in its turn, and a worker stays free for time-only finds.
            if slots is None:
                running[0] = True
                return await loop.run_in_executor(pool, produce)
            async with slots:
                running[0] = True
                return await loop.run_in_executor(pool, produce)

        def next_step() -> asyncio.Task[bytes | memoryview | None]:
            running[0] = False
            return loop.create_task(step())

        job: asyncio.Task[bytes | memoryview | None] | None = None
        gone = loop.create_task(ws.wait_closed())
        try:
            await self._send_find(ws, OK, False)
            if batched:
                # what a progress bar needs: sent when the index can tell (a filter of time alone)
                total = await loop.run_in_executor(pool, results.count)
                if total is not None:
                    await self._send_find(ws, total_message(total), False)
            job = next_step()
            while job is not None:
                await asyncio.wait((job, gone), return_when=asyncio.FIRST_COMPLETED)
                if not job.done():
                    return  # the client left: the query ends below, at its next chunk
                try:
                    output = job.result()
                except StoreError:
                    if self._background is not None and self._background.stop_requested:
                        return  # cancelled by the stop: the connection is closing anyway
                    raise
                job = None
                if output is None:
                    break
                # Read and encode the next part while this one is sent.
                job = next_step()
                if not batched and not len(output):
                    await ws.ping()  # still matching: a plain peer has no empty message
                    continue
                await self._send_find(ws, output, not batched)
        finally:
            results.cancel()
            gone.cancel()
            if job is not None:
                if not running[0]:
                    job.cancel()  # still waiting for its turn: it never touched the query
                await asyncio.gather(job, return_exceptions=True)
            await loop.run_in_executor(pool, results.close)
            self._queries.discard(results)
        await ws.close(1000)

    async def _send_find(self, ws: ServerConnection, output: bytes | memoryview | str, frames: bool) -> None:
        """Send a part of a /find (a message, or ready frames when ``frames``); cut the
        connection off when its client takes none of its bytes for ``find_stall_timeout``."""
        send = _write_frames(ws, output) if frames else ws.send(output)  # type: ignore[arg-type]
        stall = self.find_stall_timeout
        if stall is None:
            await send
            return
        task = asyncio.ensure_future(send)
        loop = asyncio.get_running_loop()
        try:
            last, since = -1, loop.time()
            while True:
                done, _ = await asyncio.wait((task,), timeout=min(1.0, stall))
                if done:
                    task.result()
                    return
                waiting = ws.transport.get_write_buffer_size()
                if last < 0 or waiting < last:
                    last, since = waiting, loop.time()  # the client took some
                elif loop.time() - since >= stall:
                    self._log.warning(
                        "stalled", "cutting off /find of %s: it took nothing of its results for %s s", _peer(ws), stall
                    )
                    ws.transport.abort()
                    raise _Stalled()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------ /chunks
    async def _on_chunks(self, ws: ServerConnection, batched: bool) -> None:
        """The extension's layout request: a filter in, the stored chunks of its time range out
        (``{"chunks": [[first, last, events], ...]}``, from the index alone), then a normal close."""
        if not batched:
            await ws.send(_error(f"{CHUNKS_PATH} is part of the {SUBPROTOCOL} extension: offer that subprotocol"))
            await ws.close(1008, "extension not negotiated")
            return
        flt = await self._read_filter(ws)
        if flt is None:
            return
        store, pool = self.store, self._pool
        assert store is not None and pool is not None
        start = -math.inf if flt.start is None else flt.start
        end = math.inf if flt.end is None else flt.end

        def layout() -> str:
            return chunks_reply(
                (c.min_ts, c.max_ts, c.rows) for c in store.chunks() if c.max_ts >= start and c.min_ts <= end
            )

        reply = await asyncio.get_running_loop().run_in_executor(pool, layout)
        await ws.send(reply)
        await ws.close(1000)

    # ------------------------------------------------------------------ /live
    async def _on_live(self, ws: ServerConnection, batched: bool, state: _Connection) -> None:
        flt = await self._read_filter(ws)
        if flt is None:
            return
        state.watched = False  # a subscriber only listens
        sub = _Subscriber(ws, flt, batched, self._published)
        # Registered before "ok": every event stored after the client reads "ok" is pushed.
        self._subscribers.add(sub)
        self._live = tuple(self._subscribers)
        try:
            await ws.send(OK)
            sub.sender = self._spawn(self._live_sender(sub))
            async for message in ws:
                flt = await self._read_filter(ws, message)
                if flt is None:
                    return
                sub.filter = flt
                await ws.send(OK)
        finally:
            self._subscribers.discard(sub)
            self._live = tuple(self._subscribers)
            if sub.sender is not None:
                sub.sender.cancel()

    def _deliver(self, parts: list[tuple[_Subscriber, Any]]) -> None:
        """Hand a commit's matches (computed by the fan-out thread) to their subscribers (loop thread)."""
        for sub, part in parts:
            if sub.dropped or sub not in self._subscribers:
                continue
            if sub.waiting >= self.live_queue and sub.writing:
                # Over its bound while its sender is stuck writing (not merely not yet
                # woken: the fan-out may hand over several commits at once).
                self._drop_slow(sub)
                continue
            sub.pending.append(part)
            sub.waiting += len(part)
            sub.wake.set()

    async def _live_sender(self, sub: _Subscriber) -> None:
        # Events are written in slices of at most live_queue and count as waiting until
        # their slice is written out (flow control included): a subscriber that stops
        # reading holds one slice in its socket buffer, however large a commit was,
        # and the next commit finds it over its bound and drops it.
        ws = sub.ws
        step = self.live_queue
        loop = asyncio.get_running_loop()

        def stuck() -> None:
            # Still writing a slice while more than the bound waits: behind by more
            # than the bound, whether or not another commit comes to notice it.
            if not sub.dropped and sub.writing and sub.waiting >= step:
                self._drop_slow(sub)

        async def write(sending: Awaitable[Any]) -> None:
            watch = loop.call_later(_STUCK_WRITE, stuck)
            try:
                await sending
            finally:
                watch.cancel()

        try:
            while True:
                sub.writing = False
                await sub.wake.wait()
                sub.writing = True
                sub.wake.clear()
                pending, sub.pending = sub.pending, []
                if not pending:
                    continue
                if not sub.batched:
                    for part in pending:
                        for i in range(0, len(part), step):
                            piece = part.slice(i, step)
                            await write(_write_frames(ws, _joined_frames([piece])))
                            sub.waiting -= len(piece)
                elif len(pending) > 1 or len(pending[0]) > 1:
                    batch = pending[0] if len(pending) == 1 else _pa().concat_batches(pending)
                    for i in range(0, batch.num_rows, step):
                        piece = batch.slice(i, step)
                        await write(ws.send(batch_to_ipc(piece)))
                        sub.waiting -= piece.num_rows
                else:
                    # One event waiting: a plain message, as a plain peer would get it.
                    await write(_write_frames(ws, _joined_frames([_plain_frames(pending[0])])))
                    sub.waiting -= 1
        except ConnectionClosed:
            pass

    def _drop_slow(self, sub: _Subscriber, why: str | None = None) -> None:
        """Drop a subscriber: more than ``live_queue`` events waiting, or ``why``."""
        if why is None:
            why = f"more than {self.live_queue} events were waiting to be sent"
        sub.dropped = True
        sub.pending.clear()
        if sub.sender is not None:
            sub.sender.cancel()
        self._log.warning("slow", "dropping live subscriber %s: %s", _peer(sub.ws), why)
        self._spawn(self._close_slow(sub, why))

    async def _close_slow(self, sub: _Subscriber, why: str) -> None:
        text = _error(f"subscriber too slow: {why}; reconnect, and use /find for the events missed")
        try:
            await asyncio.wait_for(sub.ws.send(text), _SLOW_NOTICE_TIMEOUT)
        except Exception:  # timed out or already closed: the close below still ends it
            pass
        try:
            # Writing the close frame waits for the subscriber to read (flow control).
            await asyncio.wait_for(sub.ws.close(1013, "subscriber too slow"), _SLOW_CLOSE_GRACE)
        except asyncio.TimeoutError:
            logger.warning("cutting off live subscriber %s: it read nothing for %s s", _peer(sub.ws), _SLOW_CLOSE_GRACE)
            sub.ws.transport.abort()


# --------------------------------------------------------------------------- helpers


def _server_ssl_context(
    certfile: str | os.PathLike[str] | None, keyfile: str | os.PathLike[str] | None
) -> ssl.SSLContext | None:
    if certfile is None and keyfile is None:
        return None
    if certfile is None:
        raise UsageError("keyfile was given without certfile: TLS needs both")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(os.fspath(certfile), None if keyfile is None else os.fspath(keyfile))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate {os.fspath(certfile)!r}: {exc}") from exc
    return context


def _select_subprotocol(connection: ServerConnection, offered: Any) -> Any:
    # websockets refuses clients that offer nothing when the server has
    # subprotocols; plain peers must be served, so "none" is a valid answer.
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def _peer(ws: ServerConnection) -> str:
    try:
        address = ws.remote_address
    except Exception:  # pragma: no cover - transport already gone
        return "a client"
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _error(text: str) -> str:
    return json.dumps({"error": text})


async def _send_quietly(ws: ServerConnection, message: str | bytes) -> None:
    try:
        await ws.send(message)
    except ConnectionClosed:
        pass


def _pa() -> Any:
    # imported late, as everywhere in the package: slow to import
    import pyarrow
    import pyarrow.compute  # noqa: F401 - makes pyarrow.compute an attribute

    return pyarrow


def _warm_up() -> None:
    """Import what storing and sending events needs (Arrow, and what it loads on
    first use: about a second) before the first event arrives, not when it does."""
    try:
        _plain_frames(empty_batch())
    except Exception:  # pragma: no cover - the first real use reports any problem
        logger.exception("preparing the encoders failed")



def _plain_messages(cols: EventColumns) -> list[bytes | str]:
    """One upstream-encoded event per message; an event the format cannot carry becomes an error."""
    out: list[bytes | str] = []
    append = out.append
    for id_, ts, source, tags, content in zip(cols.id, cols.timestamp, cols.source, cols.tags, cols.content):
        try:
            append(encode(Event(id_, ts, source, split_tags(tags), content)))
        except InvalidEventError as exc:
            append(_error(f"stored event {id_!r} cannot be sent in the plain format: {exc}"))
    return out


# WebSocket opcodes with the FIN bit: a whole binary or text message in one frame.
_BINARY_FRAME = 0x82
_TEXT_FRAME = 0x81


def _frames(payloads: Any, opcodes: Any) -> Any:
    """Each payload as one complete, unmasked WebSocket frame (a large_binary array).

    ``opcodes`` is one first byte for all, or a numpy array of one per payload.
    """
    import numpy as np

    pa = _pa()
    pc = pa.compute
    payloads = payloads.cast(pa.large_binary())
    n = len(payloads)
    size = pc.binary_length(payloads).to_numpy(zero_copy_only=False).astype(np.int64)
    head = np.where(size < 126, 2, np.where(size < 65536, 4, 10))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(head, out=offsets[1:])
    out = np.zeros(int(offsets[-1]), dtype=np.uint8)
    at = offsets[:-1]
    out[at] = opcodes
    small = size < 126
    out[at[small] + 1] = size[small]
    medium = ~small & (size < 65536)
    out[at[medium] + 1] = 126
    out[at[medium] + 2] = size[medium] >> 8
    out[at[medium] + 3] = size[medium] & 0xFF
    large = size >= 65536
    if large.any():
        out[at[large] + 1] = 127
        for k in range(8):
            out[at[large] + 2 + k] = (size[large] >> (8 * (7 - k))) & 0xFF
    heads = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out)])
    return pc.binary_join_element_wise(heads, payloads, pa.scalar(b"", pa.large_binary()))


def _plain_frames(batch: pa.RecordBatch) -> Any:
    """One frame per event of ``batch``, exactly what a plain peer gets for it.

    A binary frame holding the upstream encoding; for an event the plain
    format cannot carry (a line break in id, source or tags) a text frame
    with an error, as :func:`_plain_messages` says.
    """
    pa = _pa()
    if not batch.num_rows:
        return pa.array([], pa.large_binary())
    if uncarried_rows(batch) is not None:
        import numpy as np

        from .batch import batch_to_columns

        messages = _plain_messages(batch_to_columns(batch))
        opcodes = np.array([_TEXT_FRAME if isinstance(m, str) else _BINARY_FRAME for m in messages], dtype=np.uint8)
        payloads = pa.array([m.encode() if isinstance(m, str) else m for m in messages], pa.large_binary())
        return _frames(payloads, opcodes)
    return _frames(encode_batch(batch), _BINARY_FRAME)


def _joined_frames(parts: list[Any]) -> memoryview:
    """The bytes of frame arrays, one after the other (no copy for a single array)."""
    import numpy as np

    views = []
    for frames in parts:
        if not len(frames):
            continue
        offsets = np.frombuffer(frames.buffers()[1], dtype=np.int64)
        first, last = int(offsets[frames.offset]), int(offsets[frames.offset + len(frames)])
        views.append(memoryview(frames.buffers()[2])[first:last])
    if len(views) == 1:
        return views[0]
    return memoryview(b"".join(views))


async def _write_frames(ws: ServerConnection, frames: bytes | memoryview) -> None:
    """Write complete, ready-made data frames at once, with the connection's flow control.

    The frames are what :meth:`send` would write for each message (the
    collector negotiates no compression), so peers see the same bytes; one
    write instead of one per message is what makes plain transfers fast.
    """
    if not len(frames):
        return
    async with ws.send_context():
        ws.send_data()  # anything the protocol has queued goes first
        ws.transport.write(frames)


def _next_find_output(results: Iterator[Any], batched: bool) -> bytes | memoryview | None:
    """The next output of a /find (None when done); runs on a worker thread.

    Batched: one Arrow IPC message. Plain: the frames of the next events.
    """
    item = next(results, None)
    if item is None or batched:
        return item
    return _joined_frames([_plain_frames(item)])


class _Arrivals:
    """The events received for one commit, in arrival order: plain events decoded
    into columns, Arrow batches kept as they are."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.cols = EventColumns()
        self.rows = 0
        self.nbytes = 0  # about the bytes of the decoded events

    def __len__(self) -> int:
        return self.rows + len(self.cols)

    def append_raw(self, message: bytes | str) -> None:
        self.cols.append_raw(message)
        self.nbytes += len(message)

    def append_batch(self, batch: pa.RecordBatch) -> None:
        self._gather()
        self.batches.append(batch)
        self.rows += batch.num_rows
        self.nbytes += batch.nbytes

    def _gather(self) -> None:
        if len(self.cols):
            self.batches.append(columns_to_batch(self.cols))
            self.rows += len(self.cols)
            self.cols = EventColumns()

    def batch(self) -> pa.RecordBatch:
        self._gather()
        if not self.batches:
            return empty_batch()
        return self.batches[0] if len(self.batches) == 1 else _pa().concat_batches(self.batches)


def _append_arrow(arrivals: _Arrivals, message: bytes, max_decoded: int, max_event: int) -> str | None:
    """Take the events of an Arrow batch message; returns a note on rows left out, if any.

    A message decoding to more than ``max_decoded`` bytes is refused whole
    (DecodeError, before anything is decompressed); events of more than
    ``max_event`` bytes are left out.
    """
    pa = _pa()
    left_out = 0
    first_bad = ""
    too_large = 0
    for batch in ipc_to_batches(message, max_decoded=max_decoded):
        if not batch.num_rows:
            continue
        large = decoded_event_sizes(batch) > max_event
        if large.any():
            too_large += int(large.sum())
            if not left_out:
                first_bad = batch.filter(pa.array(large)).column(0)[0].as_py()
            left_out += int(large.sum())
            batch = batch.filter(pa.array(~large))
            if not batch.num_rows:
                continue
        # Rows the plain format cannot carry would break plain /find and /live peers.
        bad = uncarried_rows(batch)
        if bad is not None:
            if not left_out:
                first_bad = batch.filter(pa.array(bad)).column(0)[0].as_py()
            left_out += int(bad.sum())
            batch = batch.filter(pa.array(~bad))
        if batch.num_rows:
            arrivals.append_batch(batch)
    if left_out:
        why = "a line break in id, source or tags, or a timestamp that is not finite"
        if too_large == left_out:
            why = f"larger than {max_event} bytes (the limit per event)"
        elif too_large:
            why = f"larger than {max_event} bytes (the limit per event), or {why}"
        return f"{left_out} event(s) of a batch not stored: {why} (first: id {shorten(repr(first_bad))})"
    return None


class _Commit:
    """Newly stored events as the live fan-out sees them: each filter's matches,
    and the plain frames, made once for every subscriber."""

    def __init__(self, new: pa.RecordBatch) -> None:
        self.new = new
        self._frames: Any = None

    def mask(self, flt: EventFilter) -> Any:
        """True (every event matches), False (none does), or a boolean mask."""
        if flt.is_time_only and flt.start is None and flt.end is None:
            return True
        keep = flt.mask_batch(self.new)
        if keep.all():
            return True
        if not keep.any():
            return False
        return _pa().array(keep)

    def frames(self) -> Any:
        if self._frames is None:
            self._frames = _plain_frames(self.new)
        return self._frames


class _EventSink:
    """An /event connection as the writer sees it: where its error messages go."""

    __slots__ = (
        "collector", "ws", "peer", "errors", "sending", "closed", "dropped", "accepted", "rejected", "failures",
    )

    def __init__(self, collector: Collector, ws: ServerConnection) -> None:
        self.collector = collector
        self.ws = ws
        self.peer = _peer(ws)
        self.errors: deque[str] = deque()
        self.sending = False
        self.closed = False
        self.dropped = 0
        # counted on the loop thread from each commit's outcome: events stored, messages
        # refused, and the store failures (message number, reason) no flush answer told of yet
        self.accepted = 0
        self.rejected = 0
        self.failures: list[tuple[int, str]] = []

    def acknowledge(self, token: Any, seq: int) -> None:
        """Answer a flush request made after message ``seq``: everything up to it is
        committed (loop thread). The answer tells of the store failures among those
        messages, once: a failed commit does not fail the flushes after it."""
        told = [text for at, text in self.failures if at <= seq]
        if told:
            self.failures = [(at, text) for at, text in self.failures if at > seq]
            more = f" (and {len(told) - 1} more message(s) not stored)" if len(told) > 1 else ""
            self._queue(_error(flush_failure(token, f"{told[-1]}{more}")))
        else:
            self._queue(flush_reply(token, self.accepted, self.rejected))

    def report(self, text: str) -> None:
        """Queue an error message for the client (loop thread)."""
        self._queue(_error(text))

    def _queue(self, message: str) -> None:
        if self.closed:
            return
        if len(self.errors) >= _MAX_WAITING_ERRORS:
            # A client that never reads must not make us hold its errors forever.
            self.dropped += 1
            return
        self.errors.append(message)
        if not self.sending:
            self.sending = True
            self.collector._spawn(self._send())

    async def _send(self) -> None:
        try:
            while self.errors:
                await self.ws.send(self.errors.popleft())
        except ConnectionClosed:
            self.errors.clear()
        finally:
            self.sending = False


class _Subscriber:
    """A /live connection: its filter and the events waiting to be sent to it."""

    __slots__ = ("ws", "filter", "batched", "since", "pending", "waiting", "wake", "sender", "writing", "dropped", "cost")

    def __init__(self, ws: ServerConnection, flt: EventFilter, batched: bool, since: int) -> None:
        self.ws = ws
        self.filter = flt
        self.batched = batched
        # the last message whose commit was taken in before it subscribed: not for it
        self.since = since
        # Arrow batches for a batched subscriber, arrays of ready frames for a plain one
        self.pending: list[Any] = []
        self.waiting = 0
        self.wake = asyncio.Event()
        self.sender: asyncio.Task[None] | None = None
        self.writing = False  # its sender is writing (not waiting to be woken)
        self.dropped = False
        self.cost = 0.0  # seconds the fan-out spent matching its filter, recent commits weighing most


# What a commit did with one received message: (sink, message number, events
# stored, error text or None, True when the text is a store failure rather
# than a message refused as not being events).
_Outcome = tuple["_EventSink", int, int, "str | None", bool]


class _Writer(threading.Thread):
    """The one thread that writes to the store: decodes what arrived, commits it in one go.

    Every message handed over gets a sequence number (``received``); after
    each commit ``committed`` is the number of the last message stored, so a
    caller can wait for "everything received so far". What arrived is
    committed in groups of at most about :data:`_COMMIT_BYTES` decoded bytes.
    When a group cannot be stored, each sender's events are stored alone,
    then each message alone: a message the store refuses fails by itself.
    """

    def __init__(self, store: EventStore, on_commit: Any, fanout: _Fanout, max_decoded: int, max_event: int) -> None:
        super().__init__(name="theia-frames-writer", daemon=True)
        self.store = store
        self.on_commit = on_commit
        self.fanout = fanout
        self.max_decoded = max_decoded
        self.max_event = max_event
        self.received = 0
        self.committed = 0
        self.pending_bytes = 0
        lock = threading.Lock()
        self._work = threading.Condition(lock)  # the writer waits here for messages
        self._stored = threading.Condition(lock)  # callers wait here for commits
        self._queue: list[tuple[int, _EventSink, bytes | str, bool]] = []
        # store failures: (message number, events, reason), the newest kept
        self._failures: deque[tuple[int, int, str]] = deque(maxlen=_MAX_FAILURES_KEPT)
        self._closing = False
        self._done = False

    def put(self, sink: _EventSink, message: bytes | str, batched: bool) -> int:
        """Hand over one received message; returns its sequence number."""
        with self._work:
            self.received += 1
            self.pending_bytes += len(message)
            self._queue.append((self.received, sink, message, batched))
            self._work.notify()
            return self.received

    def wait_committed(self, seq: int, timeout: float | None) -> bool:
        """Wait until message ``seq`` is committed; False on timeout or when the writer ended first."""
        with self._stored:
            self._stored.wait_for(lambda: self.committed >= seq or self._done, timeout)
            return self.committed >= seq

    def failures_between(self, after: int, upto: int) -> tuple[int, int, str]:
        """Store failures of messages ``after < seq <= upto``: (messages, events, the last reason)."""
        with self._stored:
            found = [(events, text) for seq, events, text in self._failures if after < seq <= upto]
        if not found:
            return 0, 0, ""
        return len(found), sum(events for events, _ in found), found[-1][1]

    def close(self) -> None:
        """Store what is queued, then end the thread."""
        with self._work:
            self._closing = True
            self._work.notify()

    def run(self) -> None:
        try:
            _warm_up()
            self._loop()
        finally:
            with self._stored:
                self._done = True
                self._stored.notify_all()

    def _loop(self) -> None:
        while True:
            with self._work:
                while not self._queue and not self._closing:
                    self._work.wait()
                if not self._queue:
                    return
                items, self._queue = self._queue, []
            at = 0
            while at < len(items):
                at = self._commit_from(items, at)

    def _commit_from(self, items: list[tuple[int, _EventSink, bytes | str, bool]], at: int) -> int:
        """Decode and commit ``items[at:]`` up to the bytes of one commit; returns where it stopped."""
        nbytes = 0
        decoded = 0
        arrivals = _Arrivals()
        spans: list[tuple[_EventSink, int, int, int, str | None]] = []  # sink, seq, first row, end row, problem
        while at < len(items) and decoded < _COMMIT_BYTES:
            seq, sink, message, batched = items[at]
            at += 1
            nbytes += len(message)
            before, size = len(arrivals), arrivals.nbytes
            problem = self._decode(arrivals, message, batched)
            decoded += arrivals.nbytes - size
            if problem is not None:
                self._warn_bad(sink, problem)
            spans.append((sink, seq, before, len(arrivals), problem))
        upto = spans[-1][1]
        batch = arrivals.batch()
        new, failed = self._store(batch, spans)
        outcomes: list[_Outcome] = []
        for index, (sink, seq, first, end, problem) in enumerate(spans):
            if index in failed:
                text = f"{end - first} event(s) not stored: {failed[index]}"
                outcomes.append((sink, seq, 0, text, True))
            else:
                outcomes.append((sink, seq, end - first, problem, False))
        with self._stored:
            for index, reason in failed.items():
                self._failures.append((spans[index][1], spans[index][3] - spans[index][2], reason))
            self.committed = upto
            self.pending_bytes -= nbytes
            self._stored.notify_all()
        self.on_commit(upto, outcomes)
        if new.num_rows:
            self.fanout.put(upto, new)
            try:
                self.store.compact()
            except Exception as exc:  # the events are stored; merging is retried after the next commit
                logger.error("merging stored chunks failed: %s", exc)
        return at

    def _store(self, batch: pa.RecordBatch, spans: list[tuple[_EventSink, int, int, int, str | None]]) -> tuple[pa.RecordBatch, dict[int, str]]:
        """Commit ``batch``: the new events, and the spans that could not be stored (index: reason)."""
        if not batch.num_rows:
            return batch, {}
        try:
            # One transaction, one chunk: no SQL per event. Merging small
            # chunks waits until the commit is published. Arrow batches were
            # validated in full when they were read, plain events were parsed:
            # the store need not validate them again.
            return self.store.add_batch(batch, compact=False, validated=True), {}
        except Exception as exc:
            logger.error("%d event(s) could not be stored together (%s); storing each sender's alone", batch.num_rows, exc)
        pa = _pa()
        by_sink: dict[int, list[int]] = {}
        for index, (sink, _, first, end, _) in enumerate(spans):
            if end > first:
                by_sink.setdefault(id(sink), []).append(index)
        stored: list[Any] = []
        failed: dict[int, str] = {}

        def attempt(indexes: list[int]) -> str | None:
            parts = [batch.slice(spans[i][2], spans[i][3] - spans[i][2]) for i in indexes]
            try:
                part = parts[0] if len(parts) == 1 else pa.concat_batches(parts)
                stored.append(self.store.add_batch(part, compact=False, validated=True))
                return None
            except Exception as exc:
                return shorten(str(exc))

        for indexes in by_sink.values():
            reason = attempt(indexes)
            if reason is None:
                continue
            if len(indexes) == 1:
                failed[indexes[0]] = reason
                continue
            for index in indexes:
                alone = attempt([index])
                if alone is not None:
                    failed[index] = alone
        for index, reason in failed.items():
            sink, _, first, end, _ = spans[index]
            self._warn_bad(sink, f"{end - first} event(s) not stored: {reason}", store=True)
        stored = [b for b in stored if b.num_rows]
        if not stored:
            return empty_batch(), failed
        return (stored[0] if len(stored) == 1 else pa.concat_batches(stored)), failed

    def _warn_bad(self, sink: _EventSink, problem: str, store: bool = False) -> None:
        if store:
            sink.collector._log.error("store", "events from %s on /event not stored: %s", sink.peer, problem)
        else:
            sink.collector._log.warning("bad-event", "bad event from %s on /event: %s", sink.peer, problem)

    def _decode(self, arrivals: _Arrivals, message: bytes | str, batched: bool) -> str | None:
        try:
            if batched and is_arrow_message(message):
                return _append_arrow(arrivals, message, self.max_decoded, self.max_event)  # type: ignore[arg-type]
            size = len(message)
            if isinstance(message, str) and 4 * size > self.max_event:
                size = len(message.encode("utf-8", "surrogatepass"))
            if size > self.max_event:
                return f"event of {size} bytes not stored: larger than {self.max_event} bytes (the limit per event)"
            arrivals.append_raw(message)
            return None
        except DecodeError as exc:
            return f"invalid event: {exc}"
        except Exception as exc:  # pragma: no cover - a bug must not stop the writer
            logger.exception("unexpected error decoding an event")
            return f"event not stored: {shorten(str(exc))}"


class _Fanout(threading.Thread):
    """The thread that matches each commit against every live filter, off the event
    loop, and hands the matches to the loop: an expensive filter costs this
    thread's time, never the loop's. At most :data:`_FANOUT_QUEUE` commits wait
    for it; beyond that the writer waits (and ingest slows) rather than memory grow."""

    def __init__(self, collector: Collector) -> None:
        super().__init__(name="theia-frames-fanout", daemon=True)
        self.collector = collector
        self._queue: deque[tuple[int, pa.RecordBatch]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._matching: tuple[_Subscriber | None, float] = (None, 0.0)  # whose filter runs, since when
        self._processed = 0  # commits matched so far
        self._dropped_at = -1  # the value of _processed when a subscriber was last dropped

    def put(self, upto: int, new: pa.RecordBatch) -> None:
        """Hand over a commit's new events (writer thread); waits while the queue is full.

        When it stays full for :data:`_FANOUT_WAIT` seconds, the subscriber whose
        filter cost the most matching time is dropped as too slow (its client is
        told why), so one costly filter cannot hold up ingest for everyone.
        """
        if not self.collector._live:
            return  # nobody to tell (a subscriber arriving now starts after this commit)
        room = lambda: len(self._queue) < _FANOUT_QUEUE or self._closing  # noqa: E731
        with self._cond:
            while not self._cond.wait_for(room, _FANOUT_WAIT):
                if self._dropped_at == self._processed:
                    continue  # the last one dropped may still be matched: one at a time
                current, started = self._matching
                now = time.perf_counter()

                def cost(sub: _Subscriber) -> float:
                    return sub.cost + (now - started if sub is current else 0.0)

                costly = [sub for sub in self.collector._live if not sub.dropped and cost(sub) > 0]
                if not costly:
                    continue
                victim = max(costly, key=cost)
                victim.dropped = True  # the fan-out skips it from now on
                self._dropped_at = self._processed
                loop = self.collector._loop
                if loop is not None:
                    why = "its filter takes more matching time than the collector can give it at this rate of events"
                    try:
                        loop.call_soon_threadsafe(self.collector._drop_slow, victim, why)
                    except RuntimeError:  # the loop has ended
                        pass
            if self._closing:
                return
            self._queue.append((upto, new))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if self._closing:
                    return
                upto, new = self._queue.popleft()
                self._cond.notify_all()
            try:
                parts = self._match(upto, new)
            except Exception:  # pragma: no cover - a bug must not stop the live fan-out
                logger.exception("matching stored events against live filters failed")
                continue
            finally:
                self._processed += 1
            if parts:
                loop = self.collector._loop
                try:
                    if loop is not None:
                        loop.call_soon_threadsafe(self.collector._deliver, parts)
                except RuntimeError:  # the loop has ended: nobody to deliver to
                    self.close()
                    return

    def _match(self, upto: int, new: pa.RecordBatch) -> list[tuple[_Subscriber, Any]]:
        """Each subscriber's part of a commit. Each filter is applied once to the whole
        commit (time-only filters with a vectorised comparison); the plain frames are
        encoded once and shared by every plain subscriber."""
        commit = _Commit(new)
        parts = []
        for sub in self.collector._live:
            if sub.dropped or sub.since >= upto:
                continue
            started = time.perf_counter()
            self._matching = (sub, started)
            try:
                mask = commit.mask(sub.filter)
            finally:
                self._matching = (None, 0.0)
            sub.cost = 0.5 * sub.cost + (time.perf_counter() - started)
            if mask is False:
                continue
            whole = commit.frames() if not sub.batched else new
            parts.append((sub, whole if mask is True else whole.filter(mask)))
        return parts


class _Stalled(Exception):
    """A /find whose client took none of its bytes for the stall timeout (the connection is cut off)."""


class _Connection:
    """What the collector knows of an open connection: where from, which endpoint, when
    it last sent something, and whether the idle timeout applies to it."""

    __slots__ = ("address", "path", "last", "watched")

    def __init__(self, address: str, path: str, now: float) -> None:
        self.address = address
        self.path = path
        self.last = now
        self.watched = True


class _Throttled:
    """Log lines of one kind at most once per :data:`_LOG_EVERY` seconds, the rest counted:
    a flood of bad clients must not become a flood of log."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def _emit(self, level: int, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -_LOG_EVERY) < _LOG_EVERY:
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return
            self._last[kind] = now
            skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += f" (and {skipped} more like it in the last {_LOG_EVERY:g} s)"
        self._log.log(level, message, *args)

    def info(self, kind: str, message: str, *args: Any) -> None:
        self._emit(logging.INFO, kind, message, *args)

    def warning(self, kind: str, message: str, *args: Any) -> None:
        self._emit(logging.WARNING, kind, message, *args)

    def error(self, kind: str, message: str, *args: Any) -> None:
        self._emit(logging.ERROR, kind, message, *args)


def _address(ws: ServerConnection) -> str:
    try:
        address = ws.remote_address
    except Exception:  # pragma: no cover - transport already gone
        return "?"
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address)


async def _close_quietly(ws: ServerConnection, code: int, reason: str) -> None:
    try:
        await ws.close(code, reason)
    except Exception:  # pragma: no cover - already closed
        pass
