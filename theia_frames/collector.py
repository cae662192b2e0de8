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
Any other path is refused at the handshake (HTTP 404). Messages larger than
``max_message_size`` close that connection (code 1009); the server carries on.

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
only committed events are pushed to ``/live``.
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
import functools
import hmac
import json
import logging
import os
import ssl
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from .batch import (
    SUBPROTOCOL,
    batch_to_ipc,
    columns_to_batch,
    empty_batch,
    encode_batch,
    ipc_to_batches,
    is_arrow_message,
)
from .codec import OK, EventColumns, encode, split_tags
from .event import Event
from .exceptions import (
    DecodeError,
    InvalidEventError,
    InvalidFilterError,
    StoreError,
    TheiaTimeoutError,
    TransportError,
    UsageError,
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
]

logger = logging.getLogger("theia_frames.collector")

ENDPOINTS = ("/event", "/find", "/live")
#: The port of the theia protocol.
DEFAULT_PORT = 6433
#: Largest message accepted from a client, in bytes.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Events a live subscriber may have waiting before it is dropped as too slow.
DEFAULT_LIVE_QUEUE = 10_000
#: Most events per Arrow message on a batched ``/find`` (the most a stored chunk holds).
DEFAULT_FIND_BATCH = 65_536

# Events read and encoded per step of a plain /find (one frame each, written together).
_PLAIN_CHUNK = 8_192
# Received and not yet committed bytes above which /event connections stop reading.
_PENDING_LIMIT = 64 * 1024 * 1024
# Error messages kept waiting for an /event client that does not read them.
_MAX_WAITING_ERRORS = 1_000
# Seconds allowed to send the "too slow" error to a subscriber that is not reading.
_SLOW_NOTICE_TIMEOUT = 1.0
# Seconds a dropped subscriber has to take what was on its way, the notice and
# the close frame; one that reads nothing for that long is cut off.
_SLOW_CLOSE_GRACE = 10.0
_FIND_WORKERS = 4
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
    db: str | os.PathLike[str] = MEMORY,
    host: str = "127.0.0.1",
    port: int = 0,
    **options: Any,
) -> Collector:
    """Start a collector in a background thread and return it, running.

    ``db`` is the SQLite file of the store (created if missing) or
    ``":memory:"``; ``port=0`` picks a free port (see ``.url``). Use it as a
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
        ``port``: the port; 0 picks a free one.
        ``max_message_size``: the largest message accepted, in bytes.
        ``live_queue``: events a live subscriber may have waiting before it is
        dropped as too slow.
        ``find_batch_rows``: most events per Arrow message on a batched
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

    Patterns in filters that arrive over the network are compiled with RE2,
    a linear-time engine, so no pattern can make the collector hang; a pattern
    RE2 cannot run (backreferences, lookaround) is refused with an error message.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] = MEMORY,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        live_queue: int = DEFAULT_LIVE_QUEUE,
        find_batch_rows: int = DEFAULT_FIND_BATCH,
        ping_interval: float | None = None,
        close_timeout: float = 2.0,
        token: str | None = None,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
    ) -> None:
        if max_message_size < 1 or live_queue < 1 or find_batch_rows < 1:
            raise UsageError("max_message_size, live_queue and find_batch_rows must be positive")
        self.db = os.fspath(db)
        self.host = host
        self.max_message_size = int(max_message_size)
        self.live_queue = int(live_queue)
        self.find_batch_rows = int(find_batch_rows)
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
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._state_lock = threading.Lock()
        self._started = False
        self._stopped = False
        # loop-thread state
        self._subscribers: set[_Subscriber] = set()
        self._flushes: list[tuple[int, _EventSink, Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._room: asyncio.Event | None = None

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
        self._writer = _Writer(self.store, self._committed_from_writer)
        self._writer.start()
        self._pool = ThreadPoolExecutor(max_workers=_FIND_WORKERS, thread_name_prefix="theia-frames-find")
        self._thread = threading.Thread(target=self._run, name="theia-frames-collector", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._stopped = True
            exc = self._startup_error
            raise TransportError(
                f"the collector cannot listen on {self.host}:{self._requested_port}: {exc}",
                url=f"ws://{self.host}:{self._requested_port}",
            ) from exc
        _running.add(self)
        logger.info("collector listening on %s (store %s)", self.url, self.db)
        return self

    def stop(self) -> None:
        """Stop serving: close every connection and the port, store what was received,
        close the store and join the threads. Idempotent."""
        with self._state_lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
        loop, stop = self._loop, self._stop_requested
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop already ended
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        _running.discard(self)

    def flush(self, timeout: float | None = 10.0) -> None:
        """Wait until every event received so far is committed to the store.

        Raises :class:`~theia_frames.exceptions.TheiaTimeoutError` after
        ``timeout`` seconds (``None``: wait as long as it takes).
        """
        writer = self._writer
        if writer is None or not self.running:
            raise UsageError("the collector is not running")
        if not writer.wait_committed(writer.received, timeout):
            raise TheiaTimeoutError(f"the collector at {self.url} did not store its events within {timeout} s")

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
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # pragma: no cover - a bug; keep the caller from hanging
            logger.exception("the collector's event loop failed")
            if not self._ready.is_set():
                self._startup_error = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._shutdown_threads()
                self._ready.set()

    def _shutdown_threads(self) -> None:
        # Every connection is closed: store what is still queued, then close the store.
        if self._writer is not None:
            self._writer.close()
            self._writer.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self.store is not None:
            try:
                self.store.close()
            except StoreError:
                logger.exception("closing the event store failed")

    async def _main(self) -> None:
        self._stop_requested = asyncio.Event()
        self._room = asyncio.Event()
        try:
            server: Server = await ws_serve(
                self._handle,
                self.host,
                self._requested_port,
                process_request=self._check_path,
                subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                select_subprotocol=_select_subprotocol,
                compression=None,
                max_size=self.max_message_size,
                ping_interval=self.ping_interval,
                close_timeout=self.close_timeout,
                write_limit=2**20,
                ssl=self._ssl,
            )
        except OSError as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_requested.wait()
        server.close()  # closes every connection with 1001 (going away)
        try:
            await asyncio.wait_for(server.wait_closed(), _STOP_GRACE)
        except asyncio.TimeoutError:
            # Clients that do not read never answer the close: cut them off.
            for connection in list(getattr(server, "all_connections", server.connections)):
                connection.transport.abort()
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path not in ENDPOINTS:
            logger.info("refused %s: unknown path %r", _peer(connection), path)
            return connection.respond(
                HTTPStatus.NOT_FOUND, f"unknown path {path!r}: this collector serves {', '.join(ENDPOINTS)}\n"
            )
        if self._token is not None:
            presented = request.headers.get("Authorization")
            if presented is None:
                logger.info("refused %s on %s: no credentials", _peer(connection), path)
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "this collector needs a bearer token\n")
                response.headers["WWW-Authenticate"] = 'Bearer realm="theia"'
                return response
            scheme, _, value = presented.partition(" ")
            expected = self._token.encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
                logger.info("refused %s on %s: wrong credentials", _peer(connection), path)
                return connection.respond(HTTPStatus.FORBIDDEN, "wrong bearer token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path if ws.request is not None else "").path
        batched = ws.subprotocol == SUBPROTOCOL
        try:
            if path == "/event":
                await self._on_event(ws, batched)
            elif path == "/find":
                await self._on_find(ws, batched)
            elif path == "/live":
                await self._on_live(ws, batched)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:
                logger.warning(
                    "%s sent a message larger than %d bytes on %s: connection closed",
                    _peer(ws),
                    self.max_message_size,
                    path,
                )
        except StoreError as exc:
            logger.error("%s on %s: %s", _peer(ws), path, exc)
            await _send_quietly(ws, _error(str(exc)))
            await ws.close(1011, "store error")

    async def _read_filter(self, ws: ServerConnection, message: str | bytes | None = None) -> EventFilter | None:
        """The client's filter, or None after telling the client what is wrong with it."""
        if message is None:
            message = await ws.recv()
        try:
            return EventFilter.from_json(message, engine="re2")
        except InvalidFilterError as exc:
            logger.info("%s sent a bad filter: %s", _peer(ws), exc)
            await ws.send(_error(str(exc)))
            await ws.close(1008, "invalid filter")
            return None

    # ------------------------------------------------------------------ /event
    async def _on_event(self, ws: ServerConnection, batched: bool) -> None:
        writer = self._writer
        room = self._room
        assert writer is not None and room is not None
        sink = _EventSink(self, ws)
        try:
            async for message in ws:
                if batched and isinstance(message, str) and message.startswith('{"flush"'):
                    self._flush_request(sink, message, writer.received)
                    continue
                writer.put(sink, message, batched)
                while writer.pending_bytes > _PENDING_LIMIT:
                    # Stop reading until the writer catches up: TCP pushes back on the client.
                    room.clear()
                    await room.wait()
        finally:
            sink.closed = True

    def _committed_from_writer(self, upto: int, new: EventColumns, errors: list[tuple[_EventSink, str]]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._committed, upto, new, errors)
        except RuntimeError:  # the loop has ended: nobody is left to tell
            pass

    def _flush_request(self, sink: _EventSink, message: str, seq: int) -> None:
        """Answer ``{"flush": token}`` once everything received before it is committed."""
        try:
            token = json.loads(message)["flush"]
        except (ValueError, KeyError, TypeError):
            sink.report(f"invalid flush request: {message[:80]!r}")
            return
        if self._writer is not None and self._writer.committed >= seq:
            sink.acknowledge(token)
        else:
            self._flushes.append((seq, sink, token))

    def _committed(self, upto: int, new: EventColumns, errors: list[tuple[_EventSink, str]]) -> None:
        if self._room is not None:
            self._room.set()
        for sink, text in errors:
            sink.report(text)
        if self._flushes:
            waiting = []
            for seq, sink, token in self._flushes:
                if seq <= upto:
                    sink.acknowledge(token)
                else:
                    waiting.append((seq, sink, token))
            self._flushes = waiting
        if len(new) and self._subscribers:
            self._publish(new)

    # ------------------------------------------------------------------ /find
    async def _on_find(self, ws: ServerConnection, batched: bool) -> None:
        flt = await self._read_filter(ws)
        if flt is None:
            return
        loop = asyncio.get_running_loop()
        store, pool = self.store, self._pool
        assert store is not None and pool is not None
        # Batched: Arrow messages, stored chunks sent as stored. Plain: many events
        # encoded at once into ready WebSocket frames, written together.
        results: Any
        if batched:
            results = await loop.run_in_executor(pool, functools.partial(store.query_ipc, flt, rows=self.find_batch_rows))
        else:
            results = await loop.run_in_executor(pool, functools.partial(store.query_batches, flt, rows=_PLAIN_CHUNK))
        produce = functools.partial(_next_find_output, results, batched)
        job: asyncio.Future[bytes | memoryview | None] | None = None
        try:
            await ws.send(OK)
            job = loop.run_in_executor(pool, produce)
            while job is not None:
                output = await job
                job = None
                if output is None:
                    break
                # Read and encode the next part while this one is sent.
                job = loop.run_in_executor(pool, produce)
                if batched:
                    await ws.send(output)
                else:
                    await _write_frames(ws, output)
        finally:
            if job is not None:
                await asyncio.gather(job, return_exceptions=True)
            await loop.run_in_executor(pool, results.close)
        await ws.close(1000)

    # ------------------------------------------------------------------ /live
    async def _on_live(self, ws: ServerConnection, batched: bool) -> None:
        flt = await self._read_filter(ws)
        if flt is None:
            return
        sub = _Subscriber(ws, flt, batched)
        # Registered before "ok": every event stored after the client reads "ok" is pushed.
        self._subscribers.add(sub)
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
            if sub.sender is not None:
                sub.sender.cancel()

    def _publish(self, new: pa.RecordBatch) -> None:
        """Hand newly stored events to every subscriber whose filter matches them.

        Each filter is applied once to the whole commit (time-only filters with
        a vectorised comparison); the plain frames are encoded once per commit
        and shared by every plain subscriber.
        """
        commit = _Commit(new)
        for sub in list(self._subscribers):
            if sub.dropped:
                continue
            mask = commit.mask(sub.filter)
            if mask is False:
                continue
            if sub.waiting >= self.live_queue:
                self._drop_slow(sub)
                continue
            whole = commit.frames() if not sub.batched else new
            part = whole if mask is True else whole.filter(mask)
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
        try:
            while True:
                await sub.wake.wait()
                sub.wake.clear()
                pending, sub.pending = sub.pending, []
                if not pending:
                    continue
                if not sub.batched:
                    for part in pending:
                        for i in range(0, len(part), step):
                            piece = part.slice(i, step)
                            await _write_frames(ws, _joined_frames([piece]))
                            sub.waiting -= len(piece)
                elif len(pending) > 1 or len(pending[0]) > 1:
                    batch = pending[0] if len(pending) == 1 else _pa().concat_batches(pending)
                    for i in range(0, batch.num_rows, step):
                        piece = batch.slice(i, step)
                        await ws.send(batch_to_ipc(piece))
                        sub.waiting -= piece.num_rows
                else:
                    # One event waiting: a plain message, as a plain peer would get it.
                    await _write_frames(ws, _joined_frames([_plain_frames(pending[0])]))
                    sub.waiting -= 1
        except ConnectionClosed:
            pass

    def _drop_slow(self, sub: _Subscriber) -> None:
        sub.dropped = True
        sub.pending.clear()
        if sub.sender is not None:
            sub.sender.cancel()
        logger.warning(
            "dropping live subscriber %s: more than %d events waiting", _peer(sub.ws), self.live_queue
        )
        self._spawn(self._close_slow(sub))

    async def _close_slow(self, sub: _Subscriber) -> None:
        text = _error(
            f"subscriber too slow: more than {self.live_queue} events were waiting to be sent; "
            "reconnect, and use /find for the events missed"
        )
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


def _no_tags(n: int) -> Iterator[list[str]]:
    empty: list[str] = []
    for _ in range(n):
        yield empty


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


def _has_line_break(column: Any) -> bool:
    pc = _pa().compute
    return bool(pc.any(pc.match_substring(column, "\n")).as_py() or pc.any(pc.match_substring(column, "\r")).as_py())


def _plain_frames(batch: pa.RecordBatch) -> Any:
    """One frame per event of ``batch``, exactly what a plain peer gets for it.

    A binary frame holding the upstream encoding; for an event the plain
    format cannot carry (a line break in id, source or tags) a text frame
    with an error, as :func:`_plain_messages` says.
    """
    pa = _pa()
    if not batch.num_rows:
        return pa.array([], pa.large_binary())
    if any(_has_line_break(batch.column(i)) for i in (0, 2, 3)):
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


def _may_hold_line_break(column: Any) -> bool:
    """Whether a string column's bytes hold a line break anywhere (a fast scan of its data buffer)."""
    data = column.buffers()[2]
    if data is None:
        return False
    raw = data.to_pybytes()
    return b"\n" in raw or b"\r" in raw


class _Arrivals:
    """The events received for one commit, in arrival order: plain events decoded
    into columns, Arrow batches kept as they are."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.cols = EventColumns()
        self.rows = 0

    def __len__(self) -> int:
        return self.rows + len(self.cols)

    def append_raw(self, message: bytes | str) -> None:
        self.cols.append_raw(message)

    def append_batch(self, batch: pa.RecordBatch) -> None:
        self._gather()
        self.batches.append(batch)
        self.rows += batch.num_rows

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


def _append_arrow(arrivals: _Arrivals, message: bytes) -> str | None:
    """Take the events of an Arrow batch message; returns a note on rows left out, if any."""
    pc = _pa().compute
    left_out = 0
    first_bad = ""
    for batch in ipc_to_batches(message):
        if not batch.num_rows:
            continue
        # Rows the plain format cannot carry would break plain /find and /live peers.
        # Row by row only when a quick look at the whole column finds something.
        bad = None
        finite = pc.is_finite(batch.column(1))
        if not pc.all(finite).as_py():
            bad = pc.invert(finite)
        for index in (0, 2, 3):
            column = batch.column(index)
            if _may_hold_line_break(column):
                breaks = pc.match_substring_regex(column, "[\r\n]")
                bad = breaks if bad is None else pc.or_(bad, breaks)
        if bad is not None and pc.any(bad).as_py():
            n_bad = pc.sum(bad).as_py()
            if not left_out:
                first_bad = batch.filter(bad).column(0)[0].as_py()
            left_out += n_bad
            batch = batch.filter(pc.invert(bad))
        if batch.num_rows:
            arrivals.append_batch(batch)
    if left_out:
        return (
            f"{left_out} event(s) of a batch not stored: a line break in id, source or tags, "
            f"or a timestamp that is not finite (first: id {first_bad!r})"
        )
    return None


class _Commit:
    """Newly stored events as the live fan-out sees them: each filter's matches,
    and the plain frames, made once for every subscriber."""

    def __init__(self, new: pa.RecordBatch) -> None:
        self.new = new
        self._fields: tuple[list[Any], ...] | None = None
        self._tag_lists: list[list[str]] | None = None
        self._frames: Any = None

    def mask(self, flt: EventFilter) -> Any:
        """True (every event matches), False (none does), or a boolean mask."""
        import numpy as np

        new = self.new
        if flt.is_time_only:
            if flt.start is None and flt.end is None:
                return True
            ts = new.column(1).to_numpy()
            keep = np.ones(len(ts), dtype=bool)
            if flt.start is not None:
                keep &= ts >= flt.start
            if flt.end is not None:
                keep &= ts <= flt.end
        else:
            if self._fields is None:
                d = new.to_pydict()
                self._fields = (d["timestamp"], d["content"], d["id"], d["source"], d["tags"])
            ts, content, ids, sources, tag_text = self._fields
            if flt.tags and self._tag_lists is None:
                self._tag_lists = [split_tags(t) for t in tag_text]
            tags = self._tag_lists if flt.tags else _no_tags(len(ts))
            match = flt.matches_fields
            keep = np.fromiter(
                (match(t, g, c, i, s) for t, g, c, i, s in zip(ts, tags, content, ids, sources)),
                dtype=bool,
                count=len(ts),
            )
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
        "collector", "ws", "peer", "errors", "sending", "closed", "dropped", "accepted", "rejected", "failure",
    )

    def __init__(self, collector: Collector, ws: ServerConnection) -> None:
        self.collector = collector
        self.ws = ws
        self.peer = _peer(ws)
        self.errors: deque[str] = deque()
        self.sending = False
        self.closed = False
        self.dropped = 0
        # counted by the writer thread: events decoded, messages refused, the last store failure
        self.accepted = 0
        self.rejected = 0
        self.failure: str | None = None

    def acknowledge(self, token: Any) -> None:
        """Answer a flush request: everything before it is committed (loop thread)."""
        if self.failure is not None:
            self._queue(_error(f"flush {token}: {self.failure}"))
        else:
            self._queue(json.dumps({"flushed": token, "stored": self.accepted, "rejected": self.rejected}))

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

    __slots__ = ("ws", "filter", "batched", "pending", "waiting", "wake", "sender", "dropped")

    def __init__(self, ws: ServerConnection, flt: EventFilter, batched: bool) -> None:
        self.ws = ws
        self.filter = flt
        self.batched = batched
        # Arrow batches for a batched subscriber, arrays of ready frames for a plain one
        self.pending: list[Any] = []
        self.waiting = 0
        self.wake = asyncio.Event()
        self.sender: asyncio.Task[None] | None = None
        self.dropped = False


class _Writer(threading.Thread):
    """The one thread that writes to the store: decodes what arrived, commits it in one go.

    Every message handed over gets a sequence number (``received``); after
    each commit ``committed`` is the number of the last message stored, so a
    caller can wait for "everything received so far".
    """

    def __init__(self, store: EventStore, on_commit: Any) -> None:
        super().__init__(name="theia-frames-writer", daemon=True)
        self.store = store
        self.on_commit = on_commit
        self.received = 0
        self.committed = 0
        self.pending_bytes = 0
        lock = threading.Lock()
        self._work = threading.Condition(lock)  # the writer waits here for messages
        self._stored = threading.Condition(lock)  # callers wait here for commits
        self._queue: list[tuple[_EventSink, bytes | str, bool]] = []
        self._closing = False
        self._done = False

    def put(self, sink: _EventSink, message: bytes | str, batched: bool) -> int:
        """Hand over one received message; returns its sequence number."""
        with self._work:
            self.received += 1
            self.pending_bytes += len(message)
            self._queue.append((sink, message, batched))
            self._work.notify()
            return self.received

    def wait_committed(self, seq: int, timeout: float | None) -> bool:
        """Wait until message ``seq`` is committed; False on timeout or when the writer ended first."""
        with self._stored:
            self._stored.wait_for(lambda: self.committed >= seq or self._done, timeout)
            return self.committed >= seq

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
                upto = self.received
            nbytes = 0
            arrivals = _Arrivals()
            errors: list[tuple[_EventSink, str]] = []
            for sink, message, batched in items:
                nbytes += len(message)
                before = len(arrivals)
                problem = self._decode(arrivals, message, batched)
                sink.accepted += len(arrivals) - before
                if problem is not None:
                    sink.rejected += 1
                    logger.warning("bad event from %s on /event: %s", sink.peer, problem)
                    errors.append((sink, problem))
            new = empty_batch()
            try:
                # One transaction, one chunk: no SQL per event. Merging small
                # chunks waits until the commit is published.
                new = self.store.add_batch(arrivals.batch(), compact=False)
            except Exception as exc:
                logger.error("%d event(s) not stored: %s", len(arrivals), exc)
                for sink in {id(s): s for s, _, _ in items}.values():
                    sink.failure = f"events not stored: {exc}"
                    errors.append((sink, sink.failure))
            with self._stored:
                self.committed = upto
                self.pending_bytes -= nbytes
                self._stored.notify_all()
            self.on_commit(upto, new, errors)
            if new.num_rows:
                try:
                    self.store.compact()
                except Exception as exc:  # the events are stored; merging is retried after the next commit
                    logger.error("merging stored chunks failed: %s", exc)

    @staticmethod
    def _decode(arrivals: _Arrivals, message: bytes | str, batched: bool) -> str | None:
        try:
            if batched and is_arrow_message(message):
                return _append_arrow(arrivals, message)  # type: ignore[arg-type]
            arrivals.append_raw(message)
            return None
        except DecodeError as exc:
            return f"invalid event: {exc}"
        except Exception as exc:  # pragma: no cover - a bug must not stop the writer
            logger.exception("unexpected error decoding an event")
            return f"event not stored: {exc}"
