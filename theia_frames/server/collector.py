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
    connection and a log line (logger ``theia_frames.server.collector``); the
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
while 64 MiB or 500 messages received are not yet committed (a connection also
lets the others go first every 32 messages), so a flood of plain writers is
slowed by TCP rather than queued ahead of everyone else, and its memory stays bounded by
about ``64 MiB + connections x 2 x max_message_size`` above what the store's
caches take. Filters are compiled and matched on worker threads, never on the
event loop; a ``/find`` ends when its client leaves, and a stop ends running
finds at their next stored chunk. RELIABILITY.md has the measurements.

Batched transfer (:mod:`theia_frames.protocol.arrow`): a client that offers the
subprotocol ``theia-frames.v2`` gets it; then ``/find`` sends Arrow batches
of many events per message (the store's chunks as they are stored, when they
match whole), ``/live`` sends one batch when several events are waiting, and
``/event`` also accepts batches. Clients that do not offer it see the plain
protocol byte for byte; the collector encodes many events at once and writes
their frames together, but a peer sees exactly one frame per event, as if
each had been sent on its own.

Writes go through one writer thread that commits whatever has arrived in one
transaction (group commit) as one chunk of the store (:mod:`theia_frames.server.store`);
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
import contextlib
import errno
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from ..checks import positive_int, positive_seconds
from ..exceptions import StoreError, TheiaTimeoutError, TransportError, UsageError
from ..filter import EventFilter
from ..protocol.arrow import SUBPROTOCOL
from ..protocol.count import COUNT_PATH, DEFAULT_MAX_GROUPS
from ..protocol.messages import (
    CHUNKS_PATH,
    CLOSE_SERVER_ERROR,
    CLOSE_TOO_LARGE,
    EVENT_PATH,
    FIND_PATH,
    LIVE_PATH,
    error_message,
)
from .access import ENDPOINTS, Admission
from .background import BackgroundLoop, StartStop, Tasks
from .count_endpoint import CountEndpoint
from .event_endpoint import EventEndpoint, Published
from .fanout import Fanout, Subscriber
from .filters import FilterReader
from .find_endpoint import ChunksEndpoint, FindEndpoint, FindMemory
from .ingest import Writer
from .live_endpoint import LiveEndpoint
from .output import (
    ConnectionState,
    Endpoint,
    Stalled,
    ThrottledLog,
    peer_name,
    select_subprotocol,
    send_quietly,
    server_ssl_context,
)
from .query import Queries
from .store import MEMORY, EventStore

if TYPE_CHECKING:  # pragma: no cover
    from websockets.asyncio.server import Server, ServerConnection

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
    "DEFAULT_MAX_FIND_MEMORY",
]

logger = logging.getLogger("theia_frames.server.collector")

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
#: Most bytes the running ``/find`` queries together hold read but not yet handed to their sockets.
DEFAULT_MAX_FIND_MEMORY = 256 * 1024 * 1024

_FIND_WORKERS = 4
# Threads that parse and compile filters (off the event loop: a large pattern takes a while).
_FILTER_WORKERS = 2
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


def serve(
    db: str | os.PathLike[str] | EventStore = MEMORY,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    **options: Any,
) -> Collector:
    """Start a collector in a background thread and return it, running.

    ``db`` is the SQLite file of the store (created if missing),
    ``":memory:"``, or an open :class:`~theia_frames.server.store.EventStore`
    (served as it is, and closed when the collector stops); ``port`` defaults to the theia port (6433, ``DEFAULT_PORT``)
    and ``port=0`` picks a free one (see ``.url``). Use it as a
    context manager, or call :meth:`Collector.stop`. ``options`` are those of
    :class:`Collector`.

    >>> with serve(db=":memory:", port=0) as collector:      # doctest: +SKIP
    ...     collector.url
    'ws://127.0.0.1:40121'
    """
    return Collector(db, host=host, port=port, **options).start()


class Collector(StartStop):
    """A theia collector with an SQLite store, served from a background thread.

    ``db``: as :func:`serve` takes it (a file, ``":memory:"`` or an open store).

    Options:
        ``host``: the address to bind, loopback unless told otherwise.
        ``port``: the port, 6433 (``DEFAULT_PORT``) unless told; 0 picks a free one.
        ``max_message_size``: the largest message accepted, in bytes.
        ``live_queue``: events a live subscriber may have waiting before it is
        dropped as too slow.
        ``batch_size``: most events per Arrow message on a batched
        ``/find``; a stored chunk that matches whole and fits goes out as
        stored, other events are gathered into messages of this many.
        ``ping_interval``: seconds between keepalive pings, ``None`` (the
        default) for none: plain ``/event`` clients never read, so they could
        not answer them.
        ``close_timeout``: seconds to wait for a client's close handshake.
        ``token``: a shared secret; when set, every connection must present
        ``Authorization: Bearer <token>`` at the handshake (401 without it,
        403 with a wrong one).
        ``certfile``/``keyfile``: serve ``wss://`` (TLS) with this certificate
        chain and private key (PEM files).
        ``filter_type``: the class of the filters built from the peers' JSON,
        :class:`~theia_frames.filter.EventFilter` or a subclass of it (one that
        matches differently, or is instrumented).

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
        ``max_find_memory``: most bytes the running ``/find`` queries together
        hold read but not yet handed to their sockets (256 MiB); at the bound a
        find waits for its parts to be sent before it reads more, and the
        memory is given back to the system when the last find ends.
        ``max_groups``: most (time slot, group) pairs holding events a
        ``/count`` may answer with (1,000,000); a count past it is refused
        with an error message saying so.

    Patterns in filters that arrive over the network are compiled with RE2,
    a linear-time engine, so no pattern can make the collector hang; a pattern
    RE2 cannot run (backreferences, lookaround) is refused with an error message.
    Filters are compiled and evaluated off the event loop, so an expensive
    filter slows its own client, not the others.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | EventStore = MEMORY,
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
        max_groups: int = DEFAULT_MAX_GROUPS,
        max_find_memory: int = DEFAULT_MAX_FIND_MEMORY,
        filter_type: type[EventFilter] = EventFilter,
    ) -> None:
        self._given_store = db if isinstance(db, EventStore) else None
        self.db = db.path if isinstance(db, EventStore) else os.fspath(db)
        self.host = host
        self.max_message_size = positive_int("max_message_size", max_message_size)
        self.live_queue = positive_int("live_queue", live_queue)
        self.batch_size = positive_int("batch_size", batch_size)
        self.max_decoded_size = positive_int("max_decoded_size", max_decoded_size)
        self.max_event_size = positive_int("max_event_size", max_event_size)
        self.max_patterns = positive_int("max_patterns", max_patterns)
        self.max_pattern_size = positive_int("max_pattern_size", max_pattern_size)
        self.max_connections = positive_int("max_connections", max_connections)
        self.max_connections_per_address = positive_int("max_connections_per_address", max_connections_per_address)
        self.max_groups = positive_int("max_groups", max_groups)
        self.max_find_memory = positive_int("max_find_memory", max_find_memory)
        self.idle_timeout = positive_seconds("idle_timeout", idle_timeout, none_ok=True)
        self.find_stall_timeout = positive_seconds("find_stall_timeout", find_stall_timeout, none_ok=True)
        self.find_wait = positive_seconds("find_wait", find_wait)
        if not (isinstance(filter_type, type) and issubclass(filter_type, EventFilter)):
            raise UsageError(f"filter_type must be EventFilter or a subclass of it, got {filter_type!r}")
        self.filter_type = filter_type
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        if token is not None and (not isinstance(token, str) or not token):
            raise UsageError("token must be a non-empty string")
        self._ssl = server_ssl_context(certfile, keyfile)
        self._requested_port = int(port)
        self._port: int | None = None
        self.store: EventStore | None = None
        self._log = ThrottledLog(logger)
        self._tasks = Tasks()
        self._queries = Queries()  # the /find and /count queries running
        self._find_memory = FindMemory(self.max_find_memory)
        self._admission = Admission(
            token=token,
            max_connections=self.max_connections,
            max_connections_per_address=self.max_connections_per_address,
            idle_timeout=self.idle_timeout,
            tasks=self._tasks,
            log=self._log,
        )
        self._endpoints: dict[str, Endpoint] = {}
        self._live: LiveEndpoint | None = None
        self._writer: Writer | None = None
        self._fanout: Fanout | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._filter_pool: ThreadPoolExecutor | None = None
        self._background: BackgroundLoop | None = None
        self._state_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._flush_lock = threading.Lock()
        self._flushed = 0  # the last message Collector.flush() reported on

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
    def started(self) -> bool:
        """True once :meth:`start` was called."""
        return self._started

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`stop`."""
        return self._started and not self._stopped

    def start(self) -> Collector:
        """Open the store, bind the port and serve from a background thread; returns self."""
        with self._state_lock:
            if self._started:
                raise UsageError("a collector can be started only once")
            self._started = True
        try:
            store = self.store = self._given_store if self._given_store is not None else EventStore(self.db)
        except BaseException:
            self._stopped = True
            raise
        background = self._background = BackgroundLoop(
            self._serving, name="theia-frames-collector", on_exit=self._shutdown_threads
        )
        pool = self._pool = ThreadPoolExecutor(max_workers=_FIND_WORKERS, thread_name_prefix="theia-frames-find")
        self._filter_pool = ThreadPoolExecutor(max_workers=_FILTER_WORKERS, thread_name_prefix="theia-frames-filter")
        filters = FilterReader(
            pool=self._filter_pool,
            log=self._log,
            max_patterns=self.max_patterns,
            max_pattern_size=self.max_pattern_size,
            kind=self.filter_type,
        )
        published = Published(background.call_soon, self._tasks)
        live = self._live = LiveEndpoint(filters, published, self._tasks, self._log, live_queue=self.live_queue)
        self._fanout = Fanout(live, background.call_soon)
        self._fanout.start()
        self._writer = Writer(store, published.from_writer, self._fanout, self.max_decoded_size, self.max_event_size)
        self._writer.start()
        self._endpoints = {
            EVENT_PATH: EventEndpoint(self._writer, published, self._tasks, self._log),
            FIND_PATH: FindEndpoint(
                store=store,
                pool=pool,
                filters=filters,
                queries=self._queries,
                memory=self._find_memory,
                # steps of finds with patterns take all but one worker: one stays for time-only finds
                pattern_steps=asyncio.Semaphore(_FIND_WORKERS - 1),
                stopping=lambda: background.stop_requested,
                log=self._log,
                batch_size=self.batch_size,
                find_wait=self.find_wait,
                stall_timeout=self.find_stall_timeout,
            ),
            LIVE_PATH: live,
            CHUNKS_PATH: ChunksEndpoint(store=store, pool=pool, filters=filters),
            COUNT_PATH: CountEndpoint(
                store=store, pool=pool, filters=filters, queries=self._queries, max_groups=self.max_groups
            ),
        }
        assert tuple(self._endpoints) == ENDPOINTS
        try:
            background.start()
        except OSError as exc:
            self._stopped = True
            hint = ""
            if exc.errno == errno.EADDRINUSE:
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

    def __repr__(self) -> str:
        if self.running:
            return f"<Collector {self.url} db={self.db!r}>"
        return f"<Collector (stopped) db={self.db!r}>"

    # ------------------------------------------------------------------ its parts, as tests look at them
    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        return None if self._background is None else self._background.loop

    @property
    def _connections(self) -> dict[ServerConnection, ConnectionState]:
        return self._admission.connections

    @property
    def _subscribers(self) -> set[Subscriber]:
        return set() if self._live is None else self._live.subscribers

    # ------------------------------------------------------------------ thread and loop
    def _shutdown_threads(self) -> None:
        # Every connection is closed: store what is still queued, then close the store.
        self._queries.cancel_all()  # a query step still running stops at its next chunk
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
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        server: Server = await ws_serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._admission.check_request,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            select_subprotocol=select_subprotocol,
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
        self._tasks.spawn(self._admission.close_idle())
        yield
        self._queries.cancel_all()
        server.close()  # closes every connection with CLOSE_GOING_AWAY
        try:
            await asyncio.wait_for(server.wait_closed(), _STOP_GRACE)
        except asyncio.TimeoutError:
            # Clients that do not read never answer the close: cut them off.
            for connection in list(getattr(server, "all_connections", server.connections)):
                connection.transport.abort()
            self._admission.abort_all()
            await server.wait_closed()
        await self._tasks.cancel_all()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Out of file descriptors, asyncio reports every failed accept with a
        # traceback (and retries each second): one line per LOG_EVERY instead.
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            self._log.warning("accept", "cannot accept connections: %s", exc)
            return
        loop.default_exception_handler(context)

    # ------------------------------------------------------------------ connections
    async def _handle(self, ws: ServerConnection) -> None:
        """Route an admitted connection to its path's endpoint; what ends it badly is logged here."""
        path = urlsplit(ws.request.path if ws.request is not None else "").path
        endpoint = self._endpoints.get(path)
        if endpoint is None:  # pragma: no cover - refused at the handshake
            return
        try:
            await endpoint.serve(ws, ws.subprotocol == SUBPROTOCOL, self._admission.state(ws, path))
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CLOSE_TOO_LARGE:
                self._log.warning(
                    "too-large",
                    "%s sent a message larger than %d bytes on %s: connection closed",
                    peer_name(ws),
                    self.max_message_size,
                    path,
                )
        except Stalled:
            pass
        except StoreError as exc:
            logger.error("%s on %s: %s", peer_name(ws), path, exc)
            await send_quietly(ws, error_message(str(exc)))
            await ws.close(CLOSE_SERVER_ERROR, "store error")
