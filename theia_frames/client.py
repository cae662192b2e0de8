"""The client: send events to a theia collector, find past ones, receive live ones.

The Python counterpart of the Go ``selene/comm`` client, on websocket-client::

    >>> import theia_frames as tf
    >>> with tf.Client("ws://127.0.0.1:6433") as client:             # doctest: +SKIP
    ...     client.send(tf.Event(source="/dev/sensors/temp-1", tags=["sensor"], content="21.5C"))
    ...     for event in client.find(tf.Filter(0).match_tag("sensor")):
    ...         print(event.content)
    ...     with client.receive(tf.Filter(0)) as live:
    ...         for event in live:
    ...             break
    21.5C

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
``theia-frames.v1`` (see :mod:`theia_frames.batch`). When the server accepts
it, ``send_many`` publishes Arrow batches and ``find``/``receive`` may get
Arrow batches back; otherwise the plain protocol is spoken byte for byte.
``batch=False`` never offers it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import select
import socket
import ssl
import struct
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Union, cast
from urllib.parse import urlsplit, urlunsplit

import websocket

from .batch import ARROW_MARKER, SUBPROTOCOL, batch_to_ipc, columns_to_batch, empty_batch, event_schema, ipc_to_batches
from .codec import (
    EventColumns,
    encode,
    error_text,
    failed_flush,
    flush_request,
    is_ok,
    parse_flush_reply,
    split_tags,
    total_of,
)
from .event import Event
from .exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    DecodeError,
    InvalidEventError,
    ProtocolError,
    ServerError,
    SubscriberTooSlow,
    TheiaError,
    TheiaTimeoutError,
    TransportError,
    UnconfirmedError,
    UsageError,
)
from .filter import EventFilter

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "Client",
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

DEFAULT_URL = "ws://127.0.0.1:6433"
#: Seconds to connect, to send one message, and to wait for the answer to a filter.
DEFAULT_TIMEOUT = 10.0
#: Seconds without a byte after which a ``/find`` on a server that never closes is complete.
DEFAULT_IDLE_TIMEOUT = 3.0
#: The largest message (bytes, all its fragments together) the client accepts from a server.
#: Our collector's messages are far smaller unless its events are large.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
#: The most frames one message may arrive in (neither real peer fragments its messages).
DEFAULT_MAX_FRAGMENTS = 10_000
#: Events per record batch built from plain messages by :meth:`FindResult.iter_batches`.
DEFAULT_BATCH_SIZE = 10_000
#: At most this many events per Arrow message sent by :meth:`Client.send_many`.
DEFAULT_SEND_BATCH = 20_000
#: ... and at most about this many bytes of content per Arrow message (our
#: collector accepts messages of up to 16 MiB by default).
SEND_BATCH_BYTES = 8 * 1024 * 1024
#: Seconds a reconnecting live stream waits before its first attempt; doubled after each failure.
DEFAULT_BACKOFF = 0.05
#: The longest wait between two reconnection attempts, in seconds.
DEFAULT_MAX_BACKOFF = 2.0
#: Seconds before the last timestamp seen from which a reconnected stream fetches what it missed.
DEFAULT_RESUME_MARGIN = 5.0

FilterLike = Union[EventFilter, Mapping[str, Any], None]

_RECV_CHUNK = 256 * 1024
_DRAIN_LIMIT = 8 * 1024 * 1024
# ... and at most about this many messages taken in one read (a flood of tiny messages)
_DRAIN_MESSAGES = 65_536
_LINGER_BYTES = 256 * 1024
# Fewer events than this go out as plain messages even with batched transfer:
# cheaper than an Arrow stream for a handful.
_ARROW_MIN = 32
_FIND_LINGER = 0.002
_SEND_GROUP = 1 << 20
_LIVE_SLICE = 0.25
_CLOSE_WAIT = 2.0
_MAX_KEPT_ERRORS = 1000
# A reconnecting stream's window of delivered batches is compacted beyond this many entries.
_RECENT_COMPACT = 1024
_NORMAL_CLOSE = (1000, 1005)  # 1005: a close frame without a status code, still an orderly close
_TOO_SLOW_CODES = (1013,)  # "try again later", as our collector closes a subscriber that fell behind
# /event closes that are about the data sent (invalid, policy, too big, server error)
_DATA_CLOSE_CODES = (1007, 1008, 1009, 1011)

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_CONTROL = (_OP_CLOSE, _OP_PING, _OP_PONG)
_MAX_CONTROL = 125  # RFC 6455 section 5.5
_TOO_BIG, _POLICY = 1009, 1008

class _Unset:
    """The default of an argument left out: "use the client's setting" (its repr says so)."""

    def __repr__(self) -> str:
        return "<the client's setting>"


_UNSET: Any = _Unset()


# --------------------------------------------------------------------------- URLs


def _base_url(url: str) -> str:
    """The collector's base URL: scheme ws/wss, no trailing slash, no endpoint path."""
    if not isinstance(url, str) or not url.strip():
        raise UsageError(f"a collector URL must be a non-empty string like {DEFAULT_URL!r}, got {url!r}")
    url = url.strip()
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise UsageError(f"a collector URL must start with ws:// or wss://, got {url!r}")
    if not parts.hostname:
        raise UsageError(f"a collector URL needs a host, got {url!r}")
    path = parts.path.rstrip("/")
    for endpoint in ("/event", "/find", "/live"):
        if path.endswith(endpoint):
            path = path[: -len(endpoint)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _header_lines(headers: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [f"{k}: {v}" for k, v in headers.items()]
    return [str(h) for h in headers]


# --------------------------------------------------------------------------- frames


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    if n >= 16384:
        import numpy as np

        out = np.frombuffer(payload, np.uint8).copy()
        words = n // 4
        # the same four key bytes over every aligned word: endianness does not matter
        out[: words * 4].view(np.uint32).__ixor__(np.frombuffer(key, np.uint32)[0])
        out[words * 4 :] ^= np.frombuffer(key[: n - words * 4], np.uint8)
        return out.tobytes()
    reps = key * (n // 4 + 1)
    return (int.from_bytes(payload, "little") ^ int.from_bytes(reps[:n], "little")).to_bytes(n, "little")


def _client_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One final, masked client-to-server frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    return head + key + _mask(payload, key)


class _Silence(Exception):
    """No byte arrived within the wait (internal; callers decide what it means)."""


class _HandshakeDeadline:
    """Cut a handshake off after ``seconds`` in all.

    websocket-client's own timeout bounds each ``recv``, so a server that
    answers ``101`` and then sends header lines one by one, each in time,
    would hold the handshake forever. A watcher thread shuts the socket down
    once the deadline has passed (websocket-client hands the socket over only
    once TCP, and for ``wss://`` TLS, are connected, so the watcher keeps
    trying until the handshake returns: the TLS handshake itself is bounded
    per receive only).
    """

    def __init__(self, ws: websocket.WebSocket, seconds: float) -> None:
        self._ws = ws
        self._done = threading.Event()
        self.expired = False
        self._thread = threading.Thread(target=self._watch, args=(seconds,), name="theia-handshake-deadline", daemon=True)
        self._thread.start()

    def _watch(self, seconds: float) -> None:
        if self._done.wait(seconds):
            return
        self.expired = True
        while True:
            sock = self._ws.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except (OSError, ValueError):
                    pass
            if self._done.wait(0.05):
                return

    def stop(self) -> bool:
        """End the watch; returns whether the deadline had passed."""
        self._done.set()
        return self.expired


def _connect_within(ws: websocket.WebSocket, url: str, timeout: float | None, header: list[str]) -> None:
    """``ws.connect``, raising :class:`TimeoutError` when it took longer than ``timeout`` in all."""
    if timeout is None:
        ws.connect(url, timeout=None, header=header)
        return
    deadline = _HandshakeDeadline(ws, timeout)
    try:
        ws.connect(url, timeout=timeout, header=header)
    except Exception as exc:
        if deadline.stop():
            raise TimeoutError(f"the handshake with {url} took longer than {timeout} s") from exc
        raise
    if deadline.stop():
        # finished just as the deadline shut the socket: the connection is not usable
        ws.shutdown()
        raise TimeoutError(f"the handshake with {url} took longer than {timeout} s")


class _Connection:
    """One WebSocket connection: handshake by websocket-client, frames read and written here.

    websocket-client reads a frame with several small ``recv`` calls; reading
    large chunks and splitting frames in one loop keeps per-message overhead
    low enough for bulk transfers.
    """

    def __init__(
        self,
        ws: websocket.WebSocket,
        url: str,
        negotiated: bool,
        timeout: float | None,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
    ) -> None:
        self.ws = ws
        # open: the handshake has just finished (websocket-client types it as maybe gone)
        self.sock: socket.socket = cast(socket.socket, ws.sock)
        self.url = url
        self.negotiated = negotiated
        self.timeout = timeout
        self.ended = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.failure: BaseException | None = None
        self._buf = bytearray()
        self._chunk = bytearray(_RECV_CHUNK)
        self.max_message = max_message
        self.max_fragments = max_fragments
        self._frag_op = 0
        self._frag = bytearray()
        self._frag_count = 0
        self._sock_timeout: Any = _UNSET
        self._send_lock = threading.Lock()
        self._state = threading.Lock()
        self._reading = False
        self._closed = False
        self._sent_close = False
        #: seconds a read may wait for more data once it has a message (see _read)
        self.linger = 0.0

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        url: str,
        *,
        timeout: float | None,
        headers: list[str],
        offer: bool,
        sslopt: Mapping[str, Any] | None = None,
        on_handshake: Callable[[websocket.WebSocket | None], None] | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
    ) -> _Connection:
        """Connect and shake hands, within ``timeout`` seconds in all; ``on_handshake`` is told the
        socket object while the handshake runs (and ``None`` after), so another thread can abort it.
        ``max_message`` and ``max_fragments`` bound each message received (see the module's Bounds)."""
        header = list(headers)
        if offer:
            # A plain header, not websocket-client's subprotocols= option, which fails
            # the handshake against servers that do not echo the protocol (upstream).
            header.append(f"Sec-WebSocket-Protocol: {SUBPROTOCOL}")
        ws = websocket.WebSocket(sslopt=dict(sslopt or {}), skip_utf8_validation=True, enable_multithread=True)
        if on_handshake is not None:
            on_handshake(ws)
        try:
            _connect_within(ws, url, timeout, header)
        except websocket.WebSocketBadStatusException as exc:
            status = getattr(exc, "status_code", None)
            if status == 401:
                raise AuthenticationError(
                    f"{url} refused the WebSocket handshake with HTTP status 401: "
                    "it needs credentials (Client(..., token=...))",
                    url=url,
                ) from exc
            if status == 403:
                raise AuthenticationError(
                    f"{url} refused the WebSocket handshake with HTTP status 403: it refused the credentials",
                    url=url,
                ) from exc
            raise ConnectError(f"{url} refused the WebSocket handshake with HTTP status {status}", url=url) from exc
        except websocket.WebSocketAddressException as exc:
            raise ConnectError(f"cannot resolve the host of {url}: {exc}", url=url) from exc
        except (TimeoutError, websocket.WebSocketTimeoutException) as exc:
            raise TheiaTimeoutError(f"timed out after {timeout} s connecting to {url} (the handshake did not finish)") from exc
        except ConnectionRefusedError as exc:
            raise ConnectError(f"connection refused by {url} (is a collector running there?)", url=url) from exc
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS handshake with {url} failed: {exc}", url=url) from exc
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            raise ConnectError(f"cannot connect to {url}: {exc}", url=url) from exc
        finally:
            if on_handshake is not None:
                on_handshake(None)
        answered = (ws.getheaders() or {}).get("sec-websocket-protocol", "")
        negotiated = offer and answered.strip().lower() == SUBPROTOCOL
        return cls(ws, url, negotiated, timeout, max_message=max_message, max_fragments=max_fragments)

    # ------------------------------------------------------------------ sending
    def _settimeout(self, timeout: float | None) -> None:
        if timeout != self._sock_timeout:
            self.sock.settimeout(timeout)
            self._sock_timeout = timeout

    def _sendall(self, data: bytes) -> None:
        with self._send_lock:
            if self._closed:
                raise ConnectionClosed(f"the connection to {self.url} is closed", url=self.url)
            try:
                self.sock.sendall(data)
            except TimeoutError as exc:
                raise TheiaTimeoutError(f"timed out after {self.timeout} s sending to {self.url}") from exc
            except OSError as exc:
                self.ended = True
                self.failure = exc
                raise ConnectionClosed(
                    f"the connection to {self.url} was lost while sending: {exc}", url=self.url, code=1006
                ) from exc

    def send_text(self, text: str) -> None:
        self._settimeout(self.timeout)
        self._sendall(_client_frame(_OP_TEXT, text.encode(), os.urandom(4)))

    def send_binary(self, payload: bytes) -> None:
        self._settimeout(self.timeout)
        self._sendall(_client_frame(_OP_BINARY, payload, os.urandom(4)))

    def send_binaries(self, payloads: Sequence[bytes]) -> None:
        """Send many binary messages, written in groups of about a megabyte."""
        self._settimeout(self.timeout)
        keys = os.urandom(4 * len(payloads))
        group: list[bytes] = []
        size = 0
        for i, payload in enumerate(payloads):
            frame = _client_frame(_OP_BINARY, payload, keys[4 * i : 4 * i + 4])
            group.append(frame)
            size += len(frame)
            if size >= _SEND_GROUP:
                self._sendall(b"".join(group))
                group, size = [], 0
        if group:
            self._sendall(b"".join(group))

    def _send_control(self, opcode: int, payload: bytes) -> None:
        # Control frames also go out from the reading thread (pong) or a closing
        # thread; never block long on them.
        frame = _client_frame(opcode, payload, os.urandom(4))
        with self._send_lock:
            if self._closed and opcode != _OP_CLOSE:
                return
            try:
                _, writable, _ = select.select([], [self.sock], [], 1.0)
                if writable:
                    self.sock.send(frame)
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------------ receiving
    def read(self, timeout: float | None, *, idle: bool = True) -> list[bytes | str]:
        """The next complete data messages (binary as bytes, text as str).

        Blocks until at least one message arrives; then also takes whatever else
        has already arrived. Returns ``[]`` once the connection has ended (see
        ``close_code``); raises :class:`_Silence` after ``timeout`` seconds
        in which not a byte arrived (a message arriving slowly is waited for),
        or, with ``idle=False``, after ``timeout`` seconds in all.
        """
        with self._state:
            if self._closed:
                self.ended = True
                return []
            self._reading = True
        try:
            return self._read(timeout, idle)
        finally:
            with self._state:
                self._reading = False
                close_now = self._closed
            if close_now:
                self._close_socket()

    def _read(self, timeout: float | None, idle: bool = True) -> list[bytes | str]:
        out: list[bytes | str] = []
        if self._buf:
            self._parse(out)
        if out or self.ended:
            return out
        deadline = None if timeout is None else time.monotonic() + timeout
        while not out and not self.ended:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if wait is not None and wait <= 0.0:
                raise _Silence()
            if self._recv(wait) and idle and timeout is not None:
                # silence is counted from the last byte, not from the start of a message
                deadline = time.monotonic() + timeout
            if self._buf:
                self._parse(out)
        drained = 0
        while out and not self.ended and drained < _DRAIN_LIMIT and len(out) < _DRAIN_MESSAGES:
            # With `linger`, wait a moment for more while little has arrived:
            # fewer, larger reads when a server sends one small message at a time.
            if not self._readable(self.linger if drained < _LINGER_BYTES else 0.0):
                break
            drained += self._recv(None)
            if self._buf:
                self._parse(out)
        return out

    def poll(self) -> list[bytes | str]:
        """Messages that have already arrived, without waiting (handles ping and close)."""
        out: list[bytes | str] = []
        while not self.ended and len(out) < _DRAIN_MESSAGES and self._readable():
            self._recv(None)
            if self._buf:
                self._parse(out)
        return out

    def _readable(self, wait: float = 0.0) -> bool:
        try:
            if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                return True
            readable, _, _ = select.select([self.sock], [], [], wait)
        except (OSError, ValueError):
            return True  # let recv report what happened
        return bool(readable)

    def _recv(self, timeout: float | None) -> int:
        try:
            self._settimeout(timeout)
            n = self.sock.recv_into(self._chunk)
        except TimeoutError:
            raise _Silence() from None
        except ssl.SSLWantReadError:
            return 0
        except (OSError, ValueError, AttributeError) as exc:
            self._end(1006, "", exc)
            return 0
        if n == 0:
            self._end(1006, "")
            return 0
        self._buf += memoryview(self._chunk)[:n]
        return n

    def _end(self, code: int, reason: str, failure: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            if self.close_code is None:
                self.close_code = code
                self.close_reason = reason
            if failure is not None and self.failure is None:
                self.failure = failure

    def _parse(self, out: list[bytes | str]) -> None:
        buf = self._buf
        end = len(buf)
        pos = 0
        max_message = self.max_message
        with memoryview(buf) as view:
            while end - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                n = b1 & 0x7F
                head = 2
                if n == 126:
                    if end - pos < 4:
                        break
                    n = (buf[pos + 2] << 8) | buf[pos + 3]
                    head = 4
                elif n == 127:
                    if end - pos < 10:
                        break
                    n = int.from_bytes(view[pos + 2 : pos + 10], "big")
                    head = 10
                if b1 & 0x80:
                    raise ProtocolError(f"{self.url} sent a masked frame (servers must not mask)")
                if b0 & 0x70:
                    raise ProtocolError(f"{self.url} sent a frame with reserved bits set (no extension was agreed)")
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                # Everything is checked on the frame header, before its payload is buffered.
                if opcode == _OP_BINARY or opcode == _OP_TEXT:
                    too_big = n > max_message
                elif opcode == _OP_CONT:
                    too_big = n + len(self._frag) > max_message
                elif opcode in _CONTROL:
                    too_big = False
                    if n > _MAX_CONTROL or not fin:
                        raise ProtocolError(
                            f"{self.url} sent a control frame of {n} bytes or fragmented (at most {_MAX_CONTROL}, whole)"
                        )
                else:
                    raise ProtocolError(f"{self.url} sent a frame with unknown opcode {opcode}")
                if too_big:
                    raise self._refuse(
                        _TOO_BIG,
                        f"{self.url} sent a message of more than {self.max_message} bytes, the client's bound "
                        "(Client(max_message_size=...) raises it)",
                    )
                stop = pos + head + n
                if stop > end:
                    break
                pos = stop
                if opcode == _OP_BINARY or opcode == _OP_TEXT:
                    if self._frag_op:
                        raise ProtocolError(f"{self.url} started a new message inside a fragmented one")
                    if fin:
                        payload = view[stop - n : stop].tobytes()
                        out.append(payload if opcode == _OP_BINARY else payload.decode("utf-8", "replace"))
                    else:
                        self._frag_op, self._frag_count = opcode, 1
                        self._frag += view[stop - n : stop]
                elif opcode == _OP_CONT:
                    if not self._frag_op:
                        raise ProtocolError(f"{self.url} sent a continuation frame outside a message")
                    self._frag_count += 1
                    if self._frag_count > self.max_fragments:
                        raise self._refuse(
                            _POLICY,
                            f"{self.url} sent a message in more than {self.max_fragments} fragments, the client's bound "
                            "(Client(max_fragments=...) raises it)",
                        )
                    self._frag += view[stop - n : stop]
                    if fin:
                        whole = bytes(self._frag)
                        out.append(whole if self._frag_op == _OP_BINARY else whole.decode("utf-8", "replace"))
                        self._frag_op, self._frag, self._frag_count = 0, bytearray(), 0
                elif opcode == _OP_PING:
                    self._send_control(_OP_PONG, view[stop - n : stop].tobytes())
                elif opcode == _OP_PONG:
                    pass
                else:  # _OP_CLOSE, the only opcode left
                    payload = view[stop - n : stop].tobytes()
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    reason = payload[2:].decode("utf-8", "replace")
                    if not self._sent_close:
                        self._sent_close = True
                        self._send_control(_OP_CLOSE, payload[:2])
                    self._end(code, reason)
                    pos = end
                    break
        del buf[:pos]

    def _refuse(self, code: int, text: str) -> ProtocolError:
        """A message over a bound: close with ``code`` and drop what was buffered; the error to raise."""
        if not self._sent_close:
            self._sent_close = True
            self._send_control(_OP_CLOSE, struct.pack("!H", code))
        self.ended = True
        self.failure = self.failure or ProtocolError(text)
        self._buf = bytearray()
        self._frag_op, self._frag, self._frag_count = 0, bytearray(), 0
        return ProtocolError(text)

    # ------------------------------------------------------------------ closing
    def close(self, *, wait: float = 0.0) -> None:
        """Close politely (close frame, 1000), from any thread; idempotent.

        With ``wait``, first wait up to that many seconds for the server's own
        close frame, so that nothing we sent is lost to a reset connection.
        """
        with self._state:
            if self._closed:
                return
            reading = self._reading
            if not self.ended and not self._sent_close:
                self._sent_close = True
                send_close = True
            else:
                send_close = False
        if send_close:
            self._send_control(_OP_CLOSE, struct.pack("!H", 1000))
            if wait and not reading:
                deadline = time.monotonic() + wait
                try:
                    while not self.ended:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._read(remaining, False)
                except (_Silence, ProtocolError):
                    pass
        with self._state:
            self._closed = True
            reading = self._reading
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError, AttributeError):
            pass
        if not reading:
            self._close_socket()

    def _close_socket(self) -> None:
        self.ended = True
        try:
            self.sock.close()
        except (OSError, AttributeError):
            pass


# --------------------------------------------------------------------------- streams


class _Stream:
    """What :class:`FindResult` and :class:`LiveStream` share: one read connection,
    message meaning, decoding, the local filter re-check and error bookkeeping."""

    _endpoint = ""

    def __init__(
        self,
        client: Client,
        filter: EventFilter,
        *,
        strict: bool,
        batch_size: int,
        owns_client: bool = False,
    ) -> None:
        self.url = f"{client.url}/{self._endpoint}"
        self.filter = filter
        self.strict = strict
        self.batch_size = batch_size
        self.count = 0
        #: how many events the server said it will send (our collector, when it can
        #: count them from its index; None otherwise): what a progress bar shows
        self.total: int | None = None
        self.skipped = 0
        self.errors: list[TheiaError] = []
        self.complete = False
        self._client = client
        self._owns_client = owns_client
        self._claimed: str | None = None
        self._closed = False
        self._conn, self._pending = self._subscribe()

    @property
    def batched(self) -> bool:
        """Whether the server accepted the batched-transfer extension on this connection."""
        return self._conn.negotiated

    def _filter_message(self, negotiated: bool) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _subscribe(
        self, on_handshake: Callable[[websocket.WebSocket | None], None] | None = None
    ) -> tuple[_Connection, list[bytes]]:
        """Open a connection, send the filter and wait (up to ``timeout``) for
        ``ok`` or an error; returns the connection and the data that came with ``ok``.

        Events that arrive first are kept: ``ok`` is recognised wherever it appears.
        """
        client = self._client
        conn = _Connection.open(
            self.url,
            timeout=client.timeout,
            headers=client._headers,
            offer=client.batch,
            sslopt=client._sslopt,
            on_handshake=on_handshake,
            max_message=client.max_message_size,
            max_fragments=client.max_fragments,
        )
        try:
            conn.send_text(json.dumps(self._filter_message(conn.negotiated)))
            try:
                msgs = conn.read(client.timeout)
            except _Silence:
                raise TheiaTimeoutError(f"{self.url} did not answer the filter within {client.timeout} s") from None
            if not msgs:
                self._check_end(conn)
            # classify now, so that a rejected filter raises from find()/receive()
            return conn, self._classify(msgs)
        except BaseException:
            conn.close()
            raise

    def _classify(self, msgs: list[bytes | str]) -> list[bytes]:
        """The data messages (events, Arrow batches) among ``msgs``; errors raise."""
        data: list[bytes] = []
        append = data.append
        for m in msgs:
            if type(m) is bytes and (m[:6] == b"event:" or m[:4] == ARROW_MARKER):
                append(m)
                continue
            if is_ok(m):
                continue
            total = total_of(m)
            if total is not None:
                self.total = total
                continue
            text = error_text(m)
            if text is not None:
                if text.lower().startswith("subscriber too slow"):
                    raise SubscriberTooSlow(f"{self.url} dropped this subscriber: {text}", url=self.url, code=1013)
                raise ServerError(text, url=self.url)
            append(m if isinstance(m, bytes) else m.encode())
        return data

    def _check_end(self, conn: _Connection | None = None) -> None:
        """The connection ended: return if that was a normal close, raise otherwise."""
        conn = self._conn if conn is None else conn
        if self._closed:
            return
        code = conn.close_code
        if code in _NORMAL_CLOSE:
            self.complete = True
            return
        why = f"closed with code {code}" + (f" ({conn.close_reason})" if conn.close_reason else "")
        if code == 1006:
            why = "dropped" + (f" ({conn.failure})" if conn.failure else " without a close frame")
        if code in _TOO_SLOW_CODES or "slow" in conn.close_reason.lower():
            raise SubscriberTooSlow(
                f"{self.url} dropped this subscriber ({why}): it did not keep up", url=self.url, code=code
            )
        raise ConnectionClosed(f"the connection to {self.url} {why} after {self.count} event(s){self._incomplete}", url=self.url, code=code)

    _incomplete = ""

    def _bad(self, exc: DecodeError) -> None:
        if self.strict:
            raise exc
        self.skipped += 1
        if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append(exc)

    def _data_chunks(self, heartbeat: float | None = None) -> Iterator[list[bytes]]:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ local re-check
    def _checked_plain(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        # a plain peer's matching is wider than ours (docs/protocol.md): every criterion
        return self.filter.match_batch(batch)

    def _checked_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        # our collector matched the patterns; the time range is checked again
        return self.filter.match_time(batch)

    def _arrow(self, message: bytes) -> list[pa.RecordBatch]:
        try:
            # the same bound decoded as on the wire: a small compressed message cannot become a large one
            batches = ipc_to_batches(message, max_decoded=self._client.max_message_size)
        except DecodeError as exc:
            self._bad(exc)
            return []
        return [b for b in (self._checked_batch(b) for b in batches) if b.num_rows]

    def _plain(self, messages: list[bytes]) -> Iterator[pa.RecordBatch]:
        batch = self._checked_plain(_decode_plain(messages, self._bad))
        if batch.num_rows:
            yield batch

    def _decoded(self, accumulate: int, heartbeat: float | None = None) -> Iterator[pa.RecordBatch | None]:
        """Checked record batches in server order, plain messages decoded many at
        a time and Arrow batches passed through; ``None`` for a heartbeat."""
        plain: list[bytes] = []
        for msgs in self._data_chunks(heartbeat):
            if not msgs:
                yield None
                continue
            for m in msgs:
                if m[:4] == ARROW_MARKER:
                    if plain:
                        yield from self._plain(plain)
                        plain = []
                    yield from self._arrow(m)
                else:
                    plain.append(m)
            if len(plain) >= accumulate:
                if accumulate > 1:
                    # whole batches of `accumulate` messages; the rest waits for more
                    cut = len(plain) - len(plain) % accumulate
                    for i in range(0, cut, accumulate):
                        yield from self._plain(plain[i : i + accumulate])
                    plain = plain[cut:]
                else:
                    yield from self._plain(plain)
                    plain = []
        if plain:
            yield from self._plain(plain)

    # ------------------------------------------------------------------ public iteration
    def _claim(self, how: str) -> None:
        if self._claimed is not None:
            raise UsageError(
                f"this {type(self).__name__} was already read with {self._claimed}; "
                "a result can be read once, one way"
            )
        if self._closed:
            raise UsageError(f"this {type(self).__name__} is closed")
        self._claimed = how

    def __iter__(self) -> Iterator[Event]:
        """The events, one :class:`~theia_frames.event.Event` at a time."""
        self._claim("iteration over events")
        return self._events()

    def _events(self) -> Iterator[Event]:
        try:
            for chunk in self._decoded(1):
                if chunk is None:
                    continue
                for event in _batch_events(chunk):
                    if self._closed:
                        return
                    self.count += 1
                    yield event
        finally:
            self.close()

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """The events as :func:`~theia_frames.batch.event_schema` record batches,
        already checked against the filter; no Python object per event."""
        self._claim("iter_batches()")
        return self._batches(self.batch_size, None)

    def _batches(self, accumulate: int, heartbeat: float | None) -> Iterator[pa.RecordBatch]:
        try:
            for chunk in self._decoded(accumulate, heartbeat):
                if self._closed:
                    return
                if chunk is None:
                    yield empty_batch()
                    continue
                self.count += chunk.num_rows
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

    def _release(self, conn: _Connection) -> None:
        conn.close()
        self._client._forget(self)
        if self._owns_client:
            self._client.close()

    @property
    def closed(self) -> bool:
        return self._closed

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


def _pa() -> Any:
    # imported late: slow to import, and not needed to send single events
    import pyarrow
    import pyarrow.compute  # noqa: F401 - makes pyarrow.compute available as an attribute

    return pyarrow


# Fewer plain messages than this are decoded one by one: the bulk decoder's
# fixed cost (a few dozen Arrow kernel calls) only pays off from here on.
_BULK_MIN = 64
_SIZES = r"^event: ?(?P<total>[0-9]{1,15}) (?P<header>[0-9]{1,15}) (?P<content>[0-9]{1,15})$"
_DECIMAL = r"^ ?[0-9]{1,17}(\.[0-9]{1,17})?$"


def _decode_plain(messages: list[bytes], bad: Any) -> pa.RecordBatch:
    """Plain event messages (either dialect) as one record batch, in order.

    Messages that cannot be decoded are passed to ``bad`` (a DecodeError each)
    and left out. Many messages are decoded at once with Arrow kernels when
    they have the usual layout (upstream dialect, or Go dialect with tags);
    any other message goes through :mod:`theia_frames.codec` one by one.
    """
    if len(messages) >= _BULK_MIN:
        try:
            batch, ok = _bulk_decode(messages)
        except (UnicodeError, ValueError, _pa().ArrowException):
            pass  # e.g. a message that is not UTF-8: decode each, to report it precisely
        else:
            pc = _pa().compute
            if pc.all(ok).as_py():
                return batch
            good = batch.filter(ok)
            good_positions = pc.indices_nonzero(ok).to_pylist()
            rest = pc.indices_nonzero(pc.invert(ok)).to_pylist()
            slow, slow_positions = _slow_decode([messages[i] for i in rest], bad)
            positions = good_positions + [rest[i] for i in slow_positions]
            order = sorted(range(len(positions)), key=positions.__getitem__)
            table = _pa().Table.from_batches([good, slow]).take(order)
            return table.combine_chunks().to_batches()[0] if table.num_rows else empty_batch()
    return _slow_decode(messages, bad)[0]


def _slow_decode(messages: list[bytes], bad: Any) -> tuple[pa.RecordBatch, list[int]]:
    """Decode one message at a time; returns the batch and each row's message index."""
    cols = EventColumns()
    positions: list[int] = []
    for i, m in enumerate(messages):
        before = len(cols)
        try:
            cols.append_raw(m)
        except DecodeError as exc:
            # a message holding several events may have added some before failing
            for column in (cols.id, cols.timestamp, cols.source, cols.tags, cols.content):
                del column[before:]
            bad(exc)
            continue
        positions.extend([i] * (len(cols) - before))
    return columns_to_batch(cols), positions


def _bulk_decode(messages: list[bytes]) -> tuple[pa.RecordBatch, pa.Array]:
    """Decode messages of the usual layout with Arrow kernels.

    Returns a batch with a row per message and a mask of the rows that were
    decoded and verified (sizes, keys, timestamp); other rows hold junk.
    Raises if the messages are not all UTF-8.
    """
    pa = _pa()
    pc = pa.compute
    text = pa.array(messages, pa.binary()).cast(pa.string())
    parts = pc.split_pattern(text, "\n", max_splits=5)
    six = pc.equal(pc.list_value_length(parts), 6)
    if not pc.all(six).as_py():
        parts = pc.if_else(six, parts, pa.scalar(["", "", "", "", "", ""], pa.list_(pa.string())))
    pre, id_line, ts_line, source_line, tags_line, rest = (pc.list_element(parts, i) for i in range(6))
    sizes = pc.extract_regex(pre, _SIZES)
    ok = pc.and_(
        pc.and_(six, pc.is_valid(sizes)),
        pc.and_(
            pc.and_(pc.starts_with(id_line, "id:"), pc.starts_with(ts_line, "timestamp:")),
            pc.and_(pc.starts_with(source_line, "source:"), pc.starts_with(tags_line, "tags:")),
        ),
    )
    ts_text = pc.utf8_slice_codeunits(ts_line, 10)
    ok = pc.and_(ok, pc.match_substring_regex(ts_text, _DECIMAL))
    ts = pc.cast(pc.utf8_ltrim(pc.if_else(ok, ts_text, "0"), " "), pa.float64())
    # rows whose preamble did not match hold "" in the fields: read them as 0
    matched = pc.is_valid(sizes)
    total, hsize, csize = (
        pc.cast(pc.if_else(matched, sizes.field(name), "0"), pa.int64()) for name in ("total", "header", "content")
    )
    header_bytes = pc.add(
        pc.add(pc.binary_length(id_line), pc.binary_length(ts_line)),
        pc.add(pc.binary_length(source_line), pc.binary_length(tags_line)),
    )
    rest_bytes = pc.binary_length(rest)
    trailing_newline = pc.and_(pc.equal(rest_bytes, pc.add(csize, 1)), pc.ends_with(rest, "\n"))
    ok = pc.and_(
        ok,
        pc.and_(
            pc.and_(pc.equal(pc.add(header_bytes, 4), hsize), pc.equal(total, pc.add(hsize, csize))),
            pc.or_(trailing_newline, pc.equal(rest_bytes, csize)),
        ),
    )
    content = pc.if_else(trailing_newline, pc.utf8_slice_codeunits(rest, 0, -1), rest)
    batch = pa.RecordBatch.from_arrays(
        [
            pc.utf8_slice_codeunits(id_line, 3),
            ts,
            pc.utf8_slice_codeunits(source_line, 7),
            pc.utf8_slice_codeunits(tags_line, 5),
            content,
        ],
        schema=event_schema(),
    )
    return batch, ok


def _newest_first(batches: Iterator[pa.RecordBatch | None], size: int) -> Iterator[pa.RecordBatch]:
    """The events of ``batches``, newest first, in batches of at most ``size`` rows.

    The batches are spilled to a temporary Arrow file as they arrive (in the
    default temporary folder; about the size of the result's Arrow data), so
    memory holds one batch, not the result; the file is then sorted by
    (timestamp, id), descending, and read back through a memory map: the exact
    reverse of the collector's ascending order, whatever order the peer sent.
    """
    pa = _pa()
    fd, path = tempfile.mkstemp(prefix="theia-frames-desc-", suffix=".arrow")
    os.close(fd)
    try:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, event_schema()) as writer:
            for batch in batches:
                if batch is not None and batch.num_rows:
                    writer.write_batch(batch)
        with pa.memory_map(path) as source:
            table = pa.ipc.open_file(source).read_all()
            if not table.num_rows:
                return
            order = pa.compute.sort_indices(table, sort_keys=[("timestamp", "descending"), ("id", "descending")])
            for i in range(0, len(order), size):
                yield table.take(order[i : i + size]).combine_chunks().to_batches()[0]
    finally:
        os.unlink(path)


def _batch_events(batch: pa.RecordBatch) -> Iterator[Event]:
    d = batch.to_pydict()
    for i, t, s, g, c in zip(d["id"], d["timestamp"], d["source"], d["tags"], d["content"]):
        yield Event(i, t, s, split_tags(g), c)


class FindResult(_Stream):
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

    _endpoint = "find"
    _incomplete = " before the end of the results (the result would be incomplete)"

    def __init__(
        self,
        client: Client,
        filter: EventFilter,
        *,
        strict: bool,
        batch_size: int,
        idle_timeout: float | None,
        owns_client: bool = False,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.ended_by: str | None = None
        super().__init__(client, filter, strict=strict, batch_size=batch_size, owns_client=owns_client)

    def _filter_message(self, negotiated: bool) -> dict[str, Any]:
        return self.filter.for_find(plain=not negotiated)

    def _check_end(self, conn: _Connection | None = None) -> None:
        super()._check_end(conn)
        if self.complete:
            self.ended_by = "close"

    @property
    def _reversing(self) -> bool:
        # A plain peer is asked in ascending order (upstream cannot answer desc).
        return self.filter.order == "desc" and not self._conn.negotiated

    def _decoded(self, accumulate: int, heartbeat: float | None = None) -> Iterator[pa.RecordBatch | None]:
        if not self._reversing:
            return super()._decoded(accumulate, heartbeat)
        return _newest_first(super()._decoded(max(accumulate, self.batch_size), heartbeat), self.batch_size)

    def iter_messages(self) -> Iterator[bytes]:
        if self._reversing:
            raise UsageError(
                f"{self.url} did not accept the extension, so a descending find is read in ascending "
                "order and reversed: iterate or use iter_batches(), not iter_messages()"
            )
        return super().iter_messages()

    def _data_chunks(self, heartbeat: float | None = None) -> Iterator[list[bytes]]:
        conn = self._conn
        # A server that accepted the extension is ours and always closes a /find.
        wait = self._client.timeout if conn.negotiated else self.idle_timeout
        if not conn.negotiated:
            conn.linger = _FIND_LINGER
        pending, self._pending = self._pending, []
        if pending:
            yield pending
        while True:
            try:
                msgs = conn.read(wait)
            except _Silence:
                if self._closed:
                    return
                if conn.negotiated:
                    raise TheiaTimeoutError(
                        f"{self.url} sent nothing for {wait} s before closing the /find (timeout={wait})"
                    ) from None
                self.complete = True
                self.ended_by = "idle"
                return
            if not msgs:
                self._check_end()
                return
            data = self._classify(msgs)
            if data:
                yield data

    def __repr__(self) -> str:
        state = "complete" if self.complete else ("closed" if self._closed else "open")
        return f"<FindResult {self.url} {self.filter.to_json()} count={self.count} {state}>"


class Gap(NamedTuple):
    """Seconds a reconnecting :class:`LiveStream` was away: the last time and in total.

    While it is away, ``last`` is the time since the drop, and ``total`` counts it too.
    """

    last: float
    total: float


class LiveStream(_Stream):
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
    ``last_error`` (what ended the last connection or failed the last attempt).
    """

    _endpoint = "live"

    def __init__(
        self,
        client: Client,
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
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UsageError(f"{name} must be a positive number of seconds, got {value!r}")
        if max_backoff < backoff:
            raise UsageError(f"max_backoff ({max_backoff}) must not be below backoff ({backoff})")
        if isinstance(resume_margin, bool) or not isinstance(resume_margin, (int, float)) or not resume_margin >= 0:
            raise UsageError(f"resume_margin must be a number of seconds >= 0, got {resume_margin!r}")
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0):
            raise UsageError(f"max_retries must be None or a whole number >= 0, got {max_retries!r}")
        self.reconnect = bool(reconnect)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.resume_margin = float(resume_margin)
        self.max_retries = max_retries
        self.reconnects = 0
        self.recovered = 0
        self.last_error: TheiaError | None = None
        self._gap_last = 0.0
        self._gap_total = 0.0
        self._down_since: float | None = None
        # close() may run on another thread while the reader swaps connections or waits
        self._swap = threading.Lock()
        self._wake = threading.Event()
        self._handshake: websocket.WebSocket | None = None
        self._resume_find: FindResult | None = None
        # what was delivered, for dropping repeats after a reconnect (reconnect=True only):
        # the largest timestamp, and (largest timestamp, ids, timestamps) per recent batch
        self._seen_max: float | None = None
        self._recent: deque[tuple[float, pa.Array, pa.Array]] = deque()
        self._recent_kept = 0
        self._resumed: tuple[pa.Array, pa.Array] | None = None
        self._resumed_until = 0.0
        self._subscribed_at = time.time()
        super().__init__(client, filter, strict=strict, batch_size=batch_size, owns_client=owns_client)

    def _filter_message(self, negotiated: bool) -> dict[str, Any]:
        return self.filter.for_live(plain=not negotiated)

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
        wait = _LIVE_SLICE if heartbeat is None else min(_LIVE_SLICE, heartbeat)
        while not self._closed:
            try:
                msgs = conn.read(wait)
            except _Silence:
                if heartbeat is not None and time.monotonic() - last >= heartbeat:
                    last = time.monotonic()
                    yield []
                continue
            if not msgs:
                self._check_end(conn)
                return
            data = self._classify(msgs)
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
                    chunk = self._fresh(chunk)
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
        if isinstance(exc, SubscriberTooSlow) and len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append(exc)

    def _set_handshake(self, ws: websocket.WebSocket | None) -> None:
        self._handshake = ws
        if ws is not None and self._closed:
            raise ConnectionClosed(f"the live stream from {self.url} was closed", url=self.url)

    def _resume(self, cause: TheiaError, heartbeat: float | None) -> Iterator[pa.RecordBatch | None]:
        """Reconnect with backoff until it works (or the caller closes), then
        yield what was stored meanwhile; the buffered live data is left in ``_pending``."""
        self._down_since = time.monotonic()
        self._note_failure(cause)
        self._conn.close()
        self.complete = False
        delay = self.backoff
        failures = 0
        beat = time.monotonic()
        while True:
            # equal jitter: between half the delay and the whole of it
            deadline = time.monotonic() + delay * (0.5 + 0.5 * random.random())
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
            except (TransportError, TheiaTimeoutError) as exc:
                if self._closed:
                    return
                if self._down_since is None:
                    # subscribed again, then lost during the resume find: away again from now
                    self._down_since = time.monotonic()
                if isinstance(exc, AuthenticationError):
                    raise
                failures += 1
                self._note_failure(exc)
                if self.max_retries is not None and failures > self.max_retries:
                    raise ConnectionClosed(
                        f"the live stream from {self.url} gave up reconnecting after {failures} attempt(s) "
                        f"(max_retries={self.max_retries}): {exc}",
                        url=self.url,
                        code=getattr(exc, "code", None),
                    ) from exc
                delay = min(delay * 2, self.max_backoff)
                continue
            return

    def _catch_up(self) -> Iterator[pa.RecordBatch]:
        """One attempt: subscribe again (buffering what is pushed), then find and
        yield what was stored while away; leaves the buffer in ``_pending``."""
        conn, buffered = self._subscribe(self._set_handshake)
        with self._swap:
            if self._closed:
                conn.close()
                return
            self._conn = conn
        self._pending = []
        if self._down_since is not None:
            gap = time.monotonic() - self._down_since
            self._gap_last = gap
            self._gap_total += gap
            self._down_since = None
        self.reconnects += 1
        start = (self._subscribed_at if self._seen_max is None else self._seen_max) - self.resume_margin
        flt = self.filter
        if flt.start is not None:
            start = max(start, flt.start)
        ids: list[pa.Array] = []
        stamps: list[pa.Array] = []
        if flt.end is None or start <= flt.end:
            result = FindResult(
                self._client,
                flt.match_start(max(start, 0.0)).order_asc(),
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
                    buffered += self._classify(conn.poll())
                    fresh = self._fresh(batch, check=True)
                    if fresh.num_rows:
                        ids.append(_pa().concat_arrays([fresh.column(0)]))
                        stamps.append(_pa().concat_arrays([fresh.column(1)]))
                        self.recovered += fresh.num_rows
                        yield fresh
            finally:
                with self._swap:
                    self._resume_find = None
                result.close()
            if self._closed:
                return
        buffered += self._classify(conn.poll())
        pa_ = _pa()
        self._resumed = (
            pa_.concat_arrays(ids) if ids else pa_.array([], pa_.string()),
            pa_.concat_arrays(stamps) if stamps else pa_.array([], pa_.float64()),
        )
        # live events committed before the find's snapshot may still be on their way
        self._resumed_until = time.monotonic() + max(self.resume_margin, 1.0)
        self._pending = buffered

    # ------------------------------------------------------------------ repeats
    def _fresh(self, batch: pa.RecordBatch, *, check: bool = False) -> pa.RecordBatch:
        """``batch`` without the events already delivered; remembers what it returns.

        Outside a resume a subscription never repeats an event, so the check
        runs only on resume finds and for a while after a resume.
        """
        pc = _pa().compute
        if batch.num_rows == 0:
            return batch
        if check or (self._resumed is not None and time.monotonic() < self._resumed_until):
            batch = self._drop_seen(batch)
            if batch.num_rows == 0:
                return batch
        else:
            self._resumed = None
        hi = pc.max(batch.column(1)).as_py()
        if self._seen_max is None or hi > self._seen_max:
            self._seen_max = hi
        cutoff = self._seen_max - self.resume_margin
        recent = self._recent
        if hi >= cutoff:
            # copies: a column of a received batch would keep its whole message alive
            recent.append((hi, _pa().concat_arrays([batch.column(0)]), _pa().concat_arrays([batch.column(1)])))
        while recent and recent[0][0] < cutoff:
            recent.popleft()
        if len(recent) > _RECENT_COMPACT and len(recent) > 2 * self._recent_kept:
            # entries out of order (an early batch with a late timestamp) can hold up
            # the pruning above: drop every entry outside the window now and then
            self._recent = recent = deque(entry for entry in recent if entry[0] >= cutoff)
            self._recent_kept = len(recent)
        return batch

    def _drop_seen(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` without events whose id and timestamp (to the microsecond)
        were delivered within the resume margin or by the last resume."""
        pa_ = _pa()
        pc = pa_.compute
        known_ids = [entry[1] for entry in self._recent]
        known_ts = [entry[2] for entry in self._recent]
        if self._resumed is not None:
            known_ids.append(self._resumed[0])
            known_ts.append(self._resumed[1])
        if not known_ids:
            return batch
        all_ids = pa_.concat_arrays(known_ids)
        if len(all_ids) == 0:
            return batch
        hit = pc.is_in(batch.column(0), value_set=all_ids)
        if not pc.any(hit).as_py():
            return batch
        # rare: an id seen before; it is the same event only with the same timestamp
        hit_ids = batch.column(0).filter(hit)
        near = pc.is_in(all_ids, value_set=hit_ids)
        seen: dict[str, list[float]] = {}
        for i, t in zip(all_ids.filter(near).to_pylist(), pa_.concat_arrays(known_ts).filter(near).to_pylist()):
            seen.setdefault(i, []).append(t)
        ids = batch.column(0).to_pylist()
        stamps = batch.column(1).to_pylist()
        keep = [not any(abs(t - k) <= 1e-6 for k in seen.get(i, ())) for i, t in zip(ids, stamps)]
        return batch.filter(pa_.array(keep, pa_.bool_()))

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


# --------------------------------------------------------------------------- client


def _as_filter(filter: FilterLike) -> EventFilter:
    if filter is None:
        return EventFilter()
    if isinstance(filter, EventFilter):
        return filter
    if isinstance(filter, Mapping):
        return EventFilter.from_dict(filter)
    raise UsageError(f"expected an EventFilter (or a dict, or None), got {type(filter).__name__}")


class Client:
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
    lenient, see the module documentation); ``batch_size`` is the number of
    events per record batch built from plain messages, ``send_batch_size``
    the most events per Arrow message sent; ``max_message_size`` (bytes,
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
        sslopt: Mapping[str, Any] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fragments: int = DEFAULT_MAX_FRAGMENTS,
    ) -> None:
        for name, bound in (("max_message_size", max_message_size), ("max_fragments", max_fragments)):
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                raise UsageError(f"{name} must be a whole number >= 1, got {bound!r}")
        for name, value in (("timeout", timeout), ("idle_timeout", idle_timeout)):
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise UsageError(f"{name} must be a positive number of seconds or None, got {value!r}")
        if batch_size < 1 or send_batch_size < 1:
            raise UsageError("batch_size and send_batch_size must be at least 1")
        self.url = _base_url(url)
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.batch = bool(batch)
        self.strict = bool(strict)
        self.batch_size = int(batch_size)
        self.send_batch_size = int(send_batch_size)
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self._headers = _header_lines(headers) + _token_header(token, headers)
        self._sslopt = _tls_options(self.url, ssl_context, cafile, sslopt)
        self._lock = threading.RLock()
        self._event: _Connection | None = None
        self._streams: weakref.WeakSet[_Stream] = weakref.WeakSet()
        self._streams_lock = threading.Lock()
        self._closed = False
        #: error messages received on /event (the first ``1000`` kept)
        self.errors: list[ServerError] = []
        #: how many error messages about refused events were received on /event
        self.rejected = 0
        self._unreported: list[str] = []
        # Acknowledged sends. Events confirmed stored on connections already closed;
        # on the open one: the last count confirmed, the events sent, how many of those
        # a flush answer covers, and the events sent before each flush still unanswered.
        # Events sent on lost connections that no flush confirmed are in doubt.
        self._confirmed = 0
        self._conn_stored = 0
        self._conn_sent = 0
        self._conn_acked = 0
        self._marks: dict[int, int] = {}
        self._in_doubt = 0
        self._tokens = itertools.count(1)

    def __repr__(self) -> str:
        return f"<Client {self.url}{' closed' if self._closed else ''}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"this client of {self.url} is closed")

    # ------------------------------------------------------------------ /event
    def _event_connection(self) -> _Connection:
        """The shared /event connection, (re)opened when needed; call with the lock held."""
        conn = self._event
        if conn is not None:
            try:
                msgs = conn.poll()
            except ProtocolError:
                msgs = []
                conn.ended = True
            for m in msgs:
                self._absorb(m)
            if conn.ended:
                self._dropped(conn)
            self._raise_refusals()
            if conn.ended:
                code = conn.close_code
                if code in _DATA_CLOSE_CODES:
                    # the server closed because of what we sent: events may be lost, say so
                    reason = f" ({conn.close_reason})" if conn.close_reason else ""
                    raise ConnectionClosed(
                        f"{conn.url} closed the connection with code {code}{reason}; "
                        "events sent before may not have been stored",
                        url=conn.url,
                        code=code,
                    )
                conn = None
        if conn is None:
            conn = _Connection.open(
                f"{self.url}/event",
                timeout=self.timeout,
                headers=self._headers,
                offer=self.batch,
                sslopt=self._sslopt,
                max_message=self.max_message_size,
                max_fragments=self.max_fragments,
            )
            self._event = conn
        return conn

    @property
    def batched(self) -> bool | None:
        """Whether the /event connection negotiated batched transfer (None before it is open)."""
        conn = self._event
        return None if conn is None else conn.negotiated

    @property
    def stored(self) -> int:
        """Events of this client the collector confirmed stored, as of the last flush."""
        return self._confirmed + self._conn_stored

    @property
    def _unconfirmed(self) -> int:
        """Events sent on the open /event connection that no flush answer covers yet."""
        return self._conn_sent - self._conn_acked

    def _dropped(self, conn: _Connection, *, reported: bool = False) -> None:
        """Forget a closed /event connection; what it did not confirm is in doubt
        unless the caller was told already (``reported``)."""
        conn.close()
        if self._event is conn:
            self._event = None
            if not reported:
                self._in_doubt += self._unconfirmed
            self._confirmed += self._conn_stored
            self._conn_stored = self._conn_sent = self._conn_acked = 0
            self._marks.clear()

    def _absorb(self, message: bytes | str) -> tuple[int, bool] | None:
        """Take in one message received on /event: an error is kept, a flush
        answer counted. Returns ``(token, confirmed)`` for the answer to a flush."""
        text = error_text(message)
        if text is not None:
            if len(self.errors) < _MAX_KEPT_ERRORS:
                self.errors.append(ServerError(text, url=f"{self.url}/event"))
            self._unreported.append(text)
            failed = failed_flush(text)
            if failed is not None:
                # the collector could not commit: this flush is answered, and confirms nothing
                return failed, False
            self.rejected += 1
            return None
        reply = parse_flush_reply(message)
        if reply is None:
            return None
        token, stored = reply
        if stored is not None:
            self._conn_stored = max(self._conn_stored, stored)
        # an answer covers everything sent before its flush, and so before every earlier one
        covered = [t for t in self._marks if t <= token]
        for t in covered:
            self._conn_acked = max(self._conn_acked, self._marks.pop(t))
        return token, True

    def _raise_refusals(self) -> None:
        """Raise the error messages not yet reported, once."""
        texts, self._unreported = self._unreported, []
        if not texts:
            return
        failed = [t for t in texts if failed_flush(t) is not None]
        if failed:
            raise ServerError(
                f"the collector could not store the events sent since the last flush: {failed[-1]}",
                url=f"{self.url}/event",
            )
        if len(texts) == 1:
            raise ServerError(f"an event sent earlier was rejected: {texts[0]}", url=f"{self.url}/event")
        raise ServerError(
            f"{len(texts)} messages sent earlier were rejected; the first: {texts[0]}", url=f"{self.url}/event"
        )

    def _sent(self, conn: _Connection, n: int) -> None:
        if conn.negotiated:
            self._conn_sent += n

    def _send_failed(self, conn: _Connection, exc: ConnectionClosed, sent: int) -> ConnectionClosed:
        earlier = self._unconfirmed - (sent if conn.negotiated else 0)
        self._dropped(conn, reported=True)
        note = (
            f"; {earlier} event(s) sent before this call were not confirmed either"
            if conn.negotiated and earlier > 0
            else ""
        )
        return ConnectionClosed(
            f"{exc} (after {sent} event(s) of this call were sent; "
            f"the events of the failed chunk may or may not have arrived{note})",
            url=exc.url,
            code=exc.code,
        )

    def send(self, event: Event, *, wait: bool = False) -> None:
        """Publish one event (a plain message; the upstream format).

        With ``wait=True``, then :meth:`flush` (within ``timeout``): it returns
        once the collector has stored it, and raises what :meth:`flush` raises.
        """
        if not isinstance(event, Event):
            raise InvalidEventError(f"send() expects an Event, got {type(event).__name__}")
        payload = encode(event)
        with self._lock:
            self._check_open()
            conn = self._event_connection()
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
    ) -> int:
        """Publish many events; returns how many were sent.

        ``events`` is any iterable of :class:`~theia_frames.event.Event` (read
        lazily, in chunks), an Arrow batch/table with the event schema, or a
        frame of events: a pandas DataFrame (the frame
        :func:`~theia_frames.frames.to_dataframe` returns, or your own with a
        timestamp column or a DatetimeIndex), a ``pyarrow.Table`` of such
        columns or a Polars frame, read by
        :func:`~theia_frames.frames.to_event_table` (``columns`` maps event
        fields to its columns, e.g. ``{"content": "message"}``; missing ids
        are generated).

        With batched transfer, events go out as Arrow batches of up to
        ``send_batch_size`` events and about 8 MiB (a handful as plain
        messages); otherwise one plain message per event.
        Events the format cannot carry raise
        :class:`~theia_frames.exceptions.InvalidEventError` before their chunk
        is sent. With ``wait=True``, then :meth:`flush` (within ``timeout``).

        >>> client.send_many(df)                                    # doctest: +SKIP
        >>> client.send_many(logs, columns={"timestamp": "time", "content": "message", "source": "host"})  # doctest: +SKIP
        """
        if isinstance(events, Event):
            events = [events]
        elif columns is not None or type(events).__module__.split(".")[0] in ("pandas", "polars", "pyarrow"):
            from .frames import to_event_table

            events = to_event_table(events, columns=columns)
        with self._lock:
            self._check_open()
            sent = self._send_all(events)
            if wait:
                self.flush(self.timeout)
            return sent

    def _send_all(self, events: Iterable[Event] | pa.RecordBatch | pa.Table) -> int:
        conn = self._event_connection()
        sent = 0
        try:
            if hasattr(events, "schema") and hasattr(events, "num_rows"):
                for chunk in _arrow_chunks(events, self.send_batch_size):
                    # slices of at most about SEND_BATCH_BYTES of text (one row at least), as for Events
                    pieces = [chunk]
                    if chunk.nbytes > SEND_BATCH_BYTES:
                        pc = _pa().compute
                        row_bytes = sum(pc.binary_length(chunk.column(k)).to_numpy(zero_copy_only=False) for k in (0, 2, 3, 4))
                        pieces, begin, used = [], 0, 0
                        for row, size in enumerate(row_bytes.tolist()):
                            if used + size + 8 > SEND_BATCH_BYTES and row > begin:
                                pieces.append(chunk.slice(begin, row - begin))
                                begin, used = row, 0
                            used += size + 8
                        pieces.append(chunk.slice(begin))
                    for batch in pieces:
                        conn = self._event_connection()
                        if conn.negotiated:
                            conn.send_binary(batch_to_ipc(batch))
                        else:
                            conn.send_binaries([encode(e) for e in _batch_events(batch)])
                        sent += batch.num_rows
                        self._sent(conn, batch.num_rows)
                return sent
            it = iter(events)
            while True:
                chunk = list(itertools.islice(it, self.send_batch_size))
                if not chunk:
                    return sent
                conn = self._event_connection()
                if conn.negotiated and len(chunk) >= _ARROW_MIN:
                    for batch in _event_batches(chunk, SEND_BATCH_BYTES):
                        conn.send_binary(batch_to_ipc(batch))
                        sent += batch.num_rows
                        self._sent(conn, batch.num_rows)
                else:
                    payloads = []
                    for e in chunk:
                        if not isinstance(e, Event):
                            raise InvalidEventError(f"send_many() expects Events, got {type(e).__name__}")
                        payloads.append(encode(e))
                    conn.send_binaries(payloads)
                    sent += len(chunk)
                    self._sent(conn, len(chunk))
        except ConnectionClosed as exc:
            raise self._send_failed(conn, exc, sent) from exc

    # ------------------------------------------------------------------ acknowledgements
    def flush(self, timeout: float | None = None) -> int:
        """Wait until every event sent so far is committed to the collector's store.

        Returns how many events of this client the collector has confirmed
        stored (0, at once, when nothing was sent), counting an event sent
        again as often as it was sent (the store keeps it once).
        ``timeout``: seconds to wait for the confirmation, ``None`` (the
        default) as long as the connection lives.

        Raises :class:`~theia_frames.exceptions.UnconfirmedError` when the
        ``/event`` connection did not negotiate ``theia-frames.v1`` (the
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
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise UsageError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        with self._lock:
            self._check_open()
            stored = self._flush(timeout, report=True)
            self._raise_refusals()
            return stored

    def _flush(self, timeout: float | None, *, report: bool) -> int:
        """Flush the open /event connection; with ``report``, raise about events
        in doubt on lost connections (once). Call with the lock held."""
        conn = self._event
        if conn is not None and not conn.negotiated:
            raise UnconfirmedError(
                f"{self.url} cannot confirm that events were stored: the /event connection did not "
                f"negotiate {SUBPROTOCOL} (a plain or upstream collector{', or batch=False' if not self.batch else ''}), "
                "and the plain protocol has no acknowledgement"
            )
        if report and self._in_doubt:
            lost, self._in_doubt = self._in_doubt, 0
            raise ConnectionClosed(
                f"the connection to {self.url}/event was lost before {lost} event(s) sent since the last "
                "flush were confirmed: they may or may not have been stored; send them again "
                "(the collector stores an event once per (timestamp, id))",
                url=f"{self.url}/event",
            )
        if conn is None:
            return self.stored
        try:
            for m in conn.poll():
                self._absorb(m)
        except ProtocolError:
            conn.ended = True
        if not self._unconfirmed:
            if conn.ended:
                self._dropped(conn)
            return self.stored
        token = next(self._tokens)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if conn.ended:
                raise ConnectionClosed(f"the connection to {conn.url} has ended", url=conn.url)
            self._marks[token] = self._conn_sent
            conn.send_text(flush_request(token))
            while True:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise _Silence()
                msgs = conn.read(wait, idle=False)  # the flush's timeout is for the whole wait
                if not msgs:
                    break
                for answer in map(self._absorb, msgs):
                    if answer is not None and answer[0] >= token:
                        # confirmed, or refused with the collector's reason (raised by the caller)
                        return self.stored
        except _Silence:
            raise TheiaTimeoutError(
                f"{self.url}/event did not confirm the flush within {timeout} s "
                f"({self._unconfirmed} event(s) not confirmed yet; flush again to keep waiting)"
            ) from None
        except ConnectionClosed:
            pass
        except ProtocolError:
            conn.ended = True
        # the connection ended before the answer
        why = f"code {conn.close_code}" + (f", {conn.close_reason}" if conn.close_reason else "")
        lost = self._unconfirmed
        self._dropped(conn, reported=report)
        if not report:
            return self.stored
        raise ConnectionClosed(
            f"the connection to {self.url}/event ended ({why}) before the flush was confirmed: "
            f"{lost} event(s) sent since the last flush may or may not have been stored; send them again "
            "(the collector stores an event once per (timestamp, id))",
            url=f"{self.url}/event",
            code=conn.close_code,
        )

    # ------------------------------------------------------------------ /find, /live
    def _track(self, stream: _Stream) -> None:
        with self._streams_lock:
            self._streams.add(stream)

    def _forget(self, stream: _Stream) -> None:
        with self._streams_lock:
            self._streams.discard(stream)

    def find(
        self,
        filter: FilterLike = None,
        *,
        strict: bool | None = None,
        idle_timeout: float | None = _UNSET,
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
        if self._unconfirmed:
            with self._lock:
                conn = self._event
                if self._unconfirmed and conn is not None and conn.negotiated:
                    self._flush(self.timeout, report=False)
        result = FindResult(
            self,
            _as_filter(filter),
            strict=self.strict if strict is None else strict,
            batch_size=batch_size or self.batch_size,
            idle_timeout=self.idle_timeout if idle_timeout is _UNSET else idle_timeout,
        )
        self._track(result)
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
            _as_filter(filter),
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
            if not stream._owns_client:
                stream.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._event = self._event, None
        if conn is not None:
            conn.close(wait=_CLOSE_WAIT if self.timeout is None else min(self.timeout, _CLOSE_WAIT))

    @property
    def closed(self) -> bool:
        return self._closed




def _token_header(token: str | None, headers: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if token is None:
        return []
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
        raise UsageError("token must be a non-empty string on one line")
    if any(line.split(":", 1)[0].strip().lower() == "authorization" for line in _header_lines(headers)):
        raise UsageError("give either token= or an Authorization header, not both")
    return [f"Authorization: Bearer {token}"]


def _tls_options(
    url: str,
    ssl_context: ssl.SSLContext | None,
    cafile: str | os.PathLike[str] | None,
    sslopt: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """websocket-client's ``sslopt`` for ``ssl_context``/``cafile``/``sslopt``."""
    if ssl_context is None and cafile is None:
        return None if sslopt is None else dict(sslopt)
    if not url.startswith("wss://"):
        raise UsageError(f"ssl_context and cafile are for wss:// URLs; {url!r} is not encrypted")
    if ssl_context is not None and cafile is not None:
        raise UsageError("give either ssl_context or cafile, not both (load the file into the context)")
    if ssl_context is not None:
        if not isinstance(ssl_context, ssl.SSLContext):
            raise UsageError(f"ssl_context must be an ssl.SSLContext, got {type(ssl_context).__name__}")
        context = ssl_context
    else:
        path = os.fspath(cafile)  # type: ignore[arg-type]
        try:
            context = ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UsageError(f"cannot load the CA file {path!r}: {exc}") from exc
    return {**dict(sslopt or {}), "context": context}


# --------------------------------------------------------------------------- batches to send


def _event_batches(events: list[Event], max_bytes: int) -> Iterator[pa.RecordBatch]:
    """Events as checked record batches of at most about ``max_bytes`` of text each."""
    start = 0
    size = 0
    for i, e in enumerate(events):
        try:
            c = e.content
            size += len(c) if c.isascii() else len(c.encode("utf-8", "replace"))
        except (AttributeError, TypeError):
            pass
        if size >= max_bytes and i + 1 > start:
            yield _checked_event_batch(events[start : i + 1])
            start, size = i + 1, 0
    if start < len(events):
        yield _checked_event_batch(events[start:])


def _first_invalid(events: Sequence[Any]) -> InvalidEventError:
    for e in events:
        if not isinstance(e, Event):
            return InvalidEventError(f"send_many() expects Events, got {type(e).__name__}")
        try:
            encode(e)
        except InvalidEventError as exc:
            return exc
    return InvalidEventError("an event the wire format cannot carry")


def _checked_event_batch(events: Sequence[Event]) -> pa.RecordBatch:
    """Events as one batch, refusing what :func:`~theia_frames.codec.encode` would refuse."""
    import pyarrow as pa

    try:
        tag_lists = [e.tags for e in events]
        tags = [",".join(t) for t in tag_lists]
        # a tag holding a comma would come back as two tags
        if sum(t.count(",") for t in tags) != sum(len(t) - 1 for t in tag_lists if t):
            raise _first_invalid(events)
        arrays = [
            pa.array([e.id for e in events], pa.string()),
            pa.array([float(e.timestamp) for e in events], pa.float64()),
            pa.array([e.source for e in events], pa.string()),
            pa.array(tags, pa.string()),
            pa.array([e.content for e in events], pa.string()),
        ]
    except InvalidEventError:
        raise
    except (AttributeError, TypeError, ValueError, UnicodeError, pa.ArrowException):
        raise _first_invalid(events) from None
    batch = pa.RecordBatch.from_arrays(arrays, schema=event_schema())
    if _invalid_row(batch) is not None:
        raise _first_invalid(events)
    return batch


def _invalid_row(batch: pa.RecordBatch) -> int | None:
    """The first row the wire format cannot carry (line break in id, source or
    tags; a missing value; a timestamp that is not finite), or None."""
    import pyarrow.compute as pc

    if batch.num_rows == 0:
        return None
    bad = pc.invert(pc.is_finite(batch.column(1)))
    for k in (0, 2, 3):
        bad = pc.or_(bad, pc.match_substring_regex(batch.column(k), "[\r\n]"))
    for column in batch.columns:
        if column.null_count:
            bad = pc.or_(bad, pc.is_null(column))
    bad = pc.fill_null(bad, True)
    if not pc.any(bad).as_py():
        return None
    return int(pc.index(bad, True).as_py())


def _arrow_chunks(data: Any, size: int) -> Iterator[pa.RecordBatch]:
    schema = event_schema()
    if not data.schema.equals(schema):
        try:
            data = data.select(schema.names).cast(schema)
        except Exception as exc:
            raise InvalidEventError(f"an Arrow batch to send needs the event schema {schema}: {exc}") from None
    batches = data.to_batches(max_chunksize=size) if hasattr(data, "to_batches") else [data]
    for batch in batches:
        for offset in range(0, batch.num_rows, size):
            chunk = batch.slice(offset, size)
            row = _invalid_row(chunk)
            if row is not None:
                values = {k: v[0] for k, v in chunk.slice(row, 1).to_pydict().items()}
                raise InvalidEventError(
                    f"row {offset + row} of the Arrow data cannot be sent: "
                    "a line break in id, source or tags, a missing value, or a timestamp that is not finite: "
                    f"{ {k: (v[:40] if isinstance(v, str) else v) for k, v in values.items()} }"
                )
            yield chunk


# --------------------------------------------------------------------------- helpers


def _client_kwargs(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    client_keys = {
        "timeout",
        "idle_timeout",
        "headers",
        "token",
        "ssl_context",
        "cafile",
        "batch",
        "strict",
        "batch_size",
        "send_batch_size",
        "sslopt",
        "max_message_size",
        "max_fragments",
    }
    return {k: v for k, v in kw.items() if k in client_keys}, {k: v for k, v in kw.items() if k not in client_keys}


def find(url: str, filter: FilterLike = None, **kw: Any) -> FindResult:
    """Past events from the collector at ``url``; the one-liner for :meth:`Client.find`.

    Keyword arguments go to :class:`Client`. Closing (or fully reading) the
    result closes its client.

    >>> import theia_frames as tf
    >>> df = tf.to_dataframe(tf.find("ws://127.0.0.1:6433", tf.Filter(0)))   # doctest: +SKIP
    """
    client_kw, rest = _client_kwargs(kw)
    if rest:
        raise UsageError(f"unexpected keyword argument(s) for find(): {', '.join(sorted(rest))}")
    client = Client(url, **client_kw)
    try:
        result = FindResult(
            client,
            _as_filter(filter),
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
        with client._lock:
            client._event_connection()
    except BaseException:
        client.close()
        raise
    return client
